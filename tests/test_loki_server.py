"""The fake Loki is only useful if it is as strict as Loki: check that."""

import gzip
import json
import time

import httpx
import pytest

try:
    from tests.loki_server import LokiServer
except ImportError:
    from loki_server import LokiServer

NOW = time.time()
TS = str(int(NOW) * 10**9)


def push(srv, body, *, gz=True, headers=None):
    data = json.dumps(body).encode()
    h = {"Content-Type": "application/json", **(headers or {})}
    if gz:
        data, h["Content-Encoding"] = gzip.compress(data), "gzip"
    return httpx.post(srv.url + "/loki/api/v1/push", content=data, headers=h, timeout=5)


@pytest.fixture
def srv():
    with LokiServer(clock=lambda: NOW) as s:
        yield s


def test_accepts_valid_push_and_deduplicates(srv):
    body = {"streams": [{"stream": {"service_name": "a"}, "values": [[TS, "x"], [TS, "x"], [TS, "y"]]}]}
    assert push(srv, body).status_code == 204
    assert push(srv, body, gz=False).status_code == 204
    assert sorted(srv.lines()) == ["x", "y"] and srv.received == 6


@pytest.mark.parametrize("values", [[[int(TS), "x"]], [["12.5", "x"]], [[TS, 5]], [[TS, "x", {"k": 1}]], [[TS]]])
def test_shape_errors_reject_whole_request(srv, values):
    body = {"streams": [{"stream": {"a": "b"}, "values": [[TS, "ok"]]}, {"stream": {"a": "c"}, "values": values}]}
    r = push(srv, body)
    assert r.status_code == 400 and srv.lines() == []


def test_partial_400_stores_valid_streams_and_entries(srv):
    old = str(int(NOW - 8 * 86400) * 10**9)
    new = str(int(NOW + 3600) * 10**9)
    body = {"streams": [
        {"stream": {"ok": "1"}, "values": [[TS, "good"], [TS, "z" * (256 * 1024 + 1)], [old, "old"], [new, "new"]]},
        {"stream": {"bad-name": "1"}, "values": [[TS, "lost"]]},
        {"stream": {f"l{i}": "v" for i in range(15)}, "values": [[TS, "too many labels"]]},
    ]}
    r = push(srv, body)
    assert r.status_code == 400
    for needle in ("Max entry size", "too old", "too new", "invalid label name", "label names"):
        assert needle in r.text
    assert srv.lines() == ["good"]


def test_too_far_behind_is_per_stream(srv):
    late = str(int(NOW - 7200) * 10**9)
    push(srv, {"streams": [{"stream": {"s": "1"}, "values": [[TS, "a"]]}]})
    r = push(srv, {"streams": [{"stream": {"s": "1"}, "values": [[late, "b"]]},
                              {"stream": {"s": "2"}, "values": [[late, "c"]]}]})
    assert r.status_code == 400 and "too far behind" in r.text
    assert sorted(srv.lines()) == ["a", "c"]


def test_auth_tenant_and_faults():
    with LokiServer(clock=lambda: NOW, tenant="t1", authorization="Bearer k") as s:
        body = {"streams": [{"stream": {"a": "b"}, "values": [[TS, "x"]]}]}
        assert push(s, body).status_code == 401
        assert push(s, body, headers={"Authorization": "Bearer k"}).text == "no org id"
        ok = {"Authorization": "Bearer k", "X-Scope-OrgID": "t1"}
        s.fail_next(260)
        assert push(s, body, headers=ok).status_code == 260 and s.lines() == []
        assert push(s, body, headers=ok).status_code == 204 and s.lines() == ["x"]


def test_refuse_connections_until_clock_passes():
    clock = [NOW]
    with LokiServer(clock=lambda: clock[0]) as s:
        s.refuse_connections(30)
        with pytest.raises(httpx.ConnectError):
            httpx.get(s.url + "/ready", timeout=2)
        s.tick()
        with pytest.raises(httpx.ConnectError):
            httpx.get(s.url + "/ready", timeout=2)
        clock[0] += 31
        s.tick()
        assert httpx.get(s.url + "/ready", timeout=2).status_code == 200


def test_query_range(srv):
    push(srv, {"streams": [{"stream": {"service_name": "v", "model": "m"}, "values": [[TS, "x"]]},
                          {"stream": {"service_name": "v", "model": "n"}, "values": [[TS, "y"]]}]})
    r = httpx.get(srv.url + "/loki/api/v1/query_range",
                  params={"query": '{service_name="v",model="n"}', "limit": 10})
    res = r.json()["data"]["result"]
    assert [v[1] for s in res for v in s["values"]] == ["y"]
