"""Wire the log's outside parties: witnesses (``--witness``) and trusted time
(``--tsa-url``) onto a TransparencyLog's hooks.

The log calls each listener in its writer thread with every checkpoint it
signs; the pool and the stamper only take a reference there and do the
network in their own threads, so a slow or dead witness or TSA never delays
a record. Cosignatures and tokens go back into the log's append-only store.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field


@dataclass
class Publishers:
    parties: list = field(default_factory=list)  # WitnessPool, TsaStamper

    def close(self, timeout: float = 5.0) -> None:
        """Give each a last try with the newest checkpoint (the shutdown one), then stop."""
        deadline = time.monotonic() + timeout
        for party in self.parties:
            party.close(max(0.1, deadline - time.monotonic()))


def attach(log, settings, registry, clock=time.time) -> Publishers:
    """Start what ``settings`` asks for on ``log`` (anything with add_listener,
    consistency_proof, add_cosignatures and add_timestamp)."""
    out = Publishers()
    if settings.witnesses:
        from .witness_client import WitnessPool
        pool = WitnessPool(list(settings.witnesses), log.consistency_proof, log.add_cosignatures, registry,
                           clock, timeout=settings.witness_timeout)
        log.add_listener(pool.submit)
        out.parties.append(pool)
    if settings.tsa_url:
        from .tsa import TsaStamper
        stamper = TsaStamper(settings.tsa_url, log.add_timestamp, registry, interval=settings.tsa_interval,
                             ca_file=str(settings.tsa_ca_file) if settings.tsa_ca_file else None)
        log.add_listener(stamper.submit)
        out.parties.append(stamper)
    return out
