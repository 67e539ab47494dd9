"""How an export file is written: the CSV columns and cells, or JSONL lines.

Apart from ``export`` (which selects records and writes the files beside
them) because ``verify --proof`` rebuilds an export's bytes from the proven
records to check that the file beside the proof holds exactly those
(:mod:`exporter.transparency.proof`): both must share this one definition.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Iterable

from exporter.cost import Pricing, engine_seconds
from exporter.record import RECORD_FIELDS, dumps_line

# Next to the tokens: the request's share of engine time and its cost at the
# --gpu-hour-price given to export (exporter/cost.py); the full ``engine``
# object is its own column further on.
_AFTER = RECORD_FIELDS.index("completion_tokens") + 1
DERIVED_COLUMNS = ("engine_seconds", "cost")
CSV_COLUMNS = RECORD_FIELDS[:_AFTER] + DERIVED_COLUMNS + RECORD_FIELDS[_AFTER:] + ("seq", "hash")
_FORMULA_START = ("=", "+", "-", "@", "\t", "\r")


def neutralise(text: str) -> str:
    """Stop Excel/LibreOffice evaluating a cell as a formula (CSV injection)."""
    return "'" + text if text.startswith(_FORMULA_START) else text


def _cell(value) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, (dict, list)):
        return json.dumps(value, ensure_ascii=False, separators=(",", ":"))
    return neutralise(str(value))


def csv_row(rec: dict, pricing: Pricing | None = None) -> list[str]:
    derived = {"engine_seconds": engine_seconds(rec),
               "cost": pricing.cost(rec) if pricing is not None else None}
    return [_cell(derived[col] if col in derived else rec.get(col)) for col in CSV_COLUMNS]


def write_records(records: Iterable[dict], sink, fmt: str, bom: bool, pricing: Pricing | None = None) -> int:
    count = 0
    if fmt == "csv":
        if bom:
            sink.write("\ufeff")
        writer = csv.writer(sink, lineterminator="\r\n", quoting=csv.QUOTE_MINIMAL)
        writer.writerow(CSV_COLUMNS)
        for rec in records:
            writer.writerow(csv_row(rec, pricing))
            count += 1
    else:
        for rec in records:
            sink.write(dumps_line(rec) + "\n")
            count += 1
    return count
