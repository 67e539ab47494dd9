"""What a request cost: its share of engine time priced per GPU-hour (pure).

``cost = engine.share_seconds × engine.devices × price / 3600``, with
``price`` from ``--gpu-hour-price`` or the model's ``--gpu-hour-price-model
MODEL=PRICE`` override. ``share_seconds`` is the request's share of the
engine's busy time (every engine step's duration split equally among the
requests in its batch: exporter/statlogger/share.py), so the costs of all
requests add up to the priced busy time of the engine. Unknown (no engine
data, no price for the model) → None, never 0.

One implementation for the metrics (``vllm_audit_cost_total``) and the CSV
export's ``cost`` column.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from exporter.record import MAX_MEASURE


class PricingError(ValueError):
    pass


@dataclass(frozen=True)
class Pricing:
    default: float | None = None  # per GPU-hour
    per_model: dict = field(default_factory=dict)  # model -> per GPU-hour

    @property
    def enabled(self) -> bool:
        return self.default is not None or bool(self.per_model)

    def price(self, model) -> float | None:
        if isinstance(model, str) and model in self.per_model:
            return self.per_model[model]
        return self.default

    def cost(self, rec: dict) -> float | None:
        seconds = engine_gpu_seconds(rec)
        price = self.price(rec.get("model"))
        if seconds is None or price is None:
            return None
        return seconds * price / 3600.0


def engine_seconds(rec: dict) -> float | None:
    """The record's share of engine time, or None."""
    engine = rec.get("engine")
    if not isinstance(engine, dict):
        return None
    s = engine.get("share_seconds")
    # Not math.isfinite: that raises OverflowError for an int beyond any
    # float (a forged line), which stopped the pipeline.
    if s.__class__ not in (int, float) or not 0 <= s <= MAX_MEASURE:
        return None
    return float(s)


def engine_gpu_seconds(rec: dict) -> float | None:
    """Share × the engine's devices (tensor × pipeline parallel), or None."""
    s = engine_seconds(rec)
    if s is None:
        return None
    devices = rec["engine"].get("devices")
    if devices.__class__ is not int or not 1 <= devices <= MAX_MEASURE:
        return None
    return s * devices


def _amount(text: str, what: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise PricingError(f"{what}: expected a number, got {text!r}") from None
    if not math.isfinite(value) or value < 0:
        raise PricingError(f"{what}: must be a finite number >= 0, got {text!r}")
    return value


def parse_pricing(default: float | str | None, overrides: list[str] | None) -> Pricing:
    """``--gpu-hour-price`` and the ``MODEL=PRICE`` overrides, validated."""
    # Empty means unset (compose passes ${VLLM_AUDIT_GPU_HOUR_PRICE:-} as "").
    text = None if default is None else str(default).strip()
    base = _amount(text, "--gpu-hour-price") if text else None
    per_model: dict[str, float] = {}
    for item in overrides or ():
        model, sep, price = item.rpartition("=")
        if not sep or not model.strip():
            raise PricingError(f"--gpu-hour-price-model: expected MODEL=PRICE, got {item!r}")
        model = model.strip()
        if model in per_model:
            raise PricingError(f"--gpu-hour-price-model: {model!r} given twice")
        per_model[model] = _amount(price.strip(), f"--gpu-hour-price-model {model}")
    return Pricing(base, per_model)
