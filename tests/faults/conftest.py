"""Fixtures of the fault-injection suite (see harness.py)."""

from __future__ import annotations

import pytest

from .harness import START, Exporter, FakeClock, LokiServer


@pytest.fixture
def clock():
    return FakeClock(START)


@pytest.fixture
def loki(clock):
    srv = LokiServer(clock=clock)
    srv.start()
    clock.hooks.append(srv.tick)  # a refused-connections outage ends as the fake time passes
    yield srv
    srv.stop()


@pytest.fixture
def make_exporter(tmp_path, clock, loki):
    made = []

    def make(**kw):
        kw.setdefault("loki", loki)
        exp = Exporter(tmp_path, clock, **kw)
        made.append(exp)
        return exp

    yield make
    for exp in made:
        if exp.rt is not None:
            exp.crash()


@pytest.fixture
def ref_dir(tmp_path_factory):
    return tmp_path_factory.getbasetemp() / "faults-reference"
