"""Access log: one JSON object per request, its fields, its destinations."""

import time

import pytest

from harness import echo_handler, http_request, sk_ini, wait_for

BODY = """\
[listener main]
address = 127.0.0.1:{listen}

[route api]
listener = main
prefix = /api/
cluster = backend

[route ping]
listener = main
path = /ping
respond = 200 pong

[cluster backend]
endpoints = 127.0.0.1:{up}
"""

FIELDS = ["time", "generation", "listener", "route", "cluster", "endpoint", "client", "method",
          "authority", "path", "status", "reason", "bytes_received", "bytes_sent",
          "duration_ms", "upstream_duration_ms", "request_id"]


def run_requests(sk):
    p = sk.port("listen")
    r1 = http_request(p, "GET", "/api/one?x=1", host="svc.test", headers={"X-Request-Id": "rid-1"})
    r2 = http_request(p, "POST", "/api/two", host="svc.test", body=b"0123456789")
    r3 = http_request(p, "GET", "/nothing-here", host="svc.test")
    return r1, r2, r3


def by_path(lines, prefix):
    found = [l for l in lines if str(l.get("path", "")).startswith(prefix)]
    assert len(found) == 1, f"{prefix}: {found} in {lines}"
    return found[0]


def check_lines(lines, sk, up):
    assert len(lines) == 3, lines
    for l in lines:
        missing = [f for f in FIELDS if f not in l]
        assert not missing, f"missing {missing} in {l}"
        assert l["generation"] == 1
        assert l["listener"] == "main"
        assert str(l["client"]).startswith("127.0.0.1")
        assert l["authority"] == "svc.test"
        assert isinstance(l["duration_ms"], (int, float)) and l["duration_ms"] >= 0
        assert isinstance(l["bytes_received"], int) and l["bytes_received"] > 0
        assert isinstance(l["bytes_sent"], int) and l["bytes_sent"] > 0
        assert isinstance(l["time"], (str, int, float)) and l["time"]

    one = by_path(lines, "/api/one")
    assert one["method"] == "GET"
    assert one["route"] == "api" and one["cluster"] == "backend"
    assert one["endpoint"] == up.addr
    assert one["status"] == 200
    assert one["reason"] is None
    assert one["request_id"] == "rid-1"
    assert isinstance(one["upstream_duration_ms"], (int, float))

    two = by_path(lines, "/api/two")
    assert two["method"] == "POST"
    assert two["status"] == 200 and two["reason"] is None
    # the id the upstream received (generated) is the one logged
    upreq = [q for q in up.requests if q.path == "/api/two"][0]
    assert upreq.header("x-request-id")
    assert two["request_id"] == upreq.header("x-request-id")
    assert two["bytes_received"] >= 10  # at least the body

    miss = by_path(lines, "/nothing-here")
    assert miss["status"] == 404
    assert miss["reason"] == "no_route"
    assert miss["route"] in (None, "")
    assert miss["upstream_duration_ms"] in (None, 0)
    assert miss["request_id"]


@pytest.fixture
def up(upstream):
    return upstream(echo_handler("up"))


def test_access_log_to_relative_path(sidekick, up, tmp_path):
    sk = sidekick(sk_ini(BODY, access_log="logs-access.json"), up=up.port)
    run_requests(sk)
    assert sk.stop() == 0
    path = tmp_path / "logs-access.json"  # next to the config, not the cwd
    assert path.exists(), list(tmp_path.iterdir())
    check_lines(sk.access_log_lines(path), sk, up)
    assert sk.stdout_bytes() == b""


def test_access_log_relative_path_is_relative_to_config(sidekick, upstream, tmp_path):
    """The config lives in a subdirectory; the process runs elsewhere."""
    up = upstream(echo_handler("up"))
    sub = tmp_path / "conf"
    sub.mkdir()
    sk = sidekick(sk_ini(BODY, access_log="../alog.json"), name="conf/sk.ini", up=up.port)
    http_request(sk.port("listen"), "GET", "/api/x")
    assert sk.stop() == 0
    assert (tmp_path / "alog.json").exists(), list(tmp_path.rglob("*"))
    assert len(sk.access_log_lines(tmp_path / "alog.json")) == 1


def test_access_log_stdout(sidekick, up):
    sk = sidekick(sk_ini(BODY, access_log="stdout"), up=up.port)
    run_requests(sk)
    assert sk.stop() == 0
    check_lines(sk.access_log_lines(), sk, up)


def test_access_log_written_promptly(sidekick, up):
    """Lines appear while the process runs (log shippers tail the file)."""
    sk = sidekick(sk_ini(BODY, access_log="stdout"), up=up.port)
    http_request(sk.port("listen"), "GET", "/api/prompt")
    assert wait_for(lambda: len(sk.access_log_lines()) == 1, 3), sk.stdout_bytes()


def test_access_log_local_reply_respond(sidekick, up):
    sk = sidekick(sk_ini(BODY, access_log="stdout"), up=up.port)
    http_request(sk.port("listen"), "GET", "/ping")
    assert sk.stop() == 0
    [l] = sk.access_log_lines()
    assert l["route"] == "ping"
    assert l["status"] == 200
    assert l["path"] == "/ping"


def test_access_log_upstream_failure_reason(sidekick):
    from harness import free_port
    sk = sidekick(sk_ini(BODY, access_log="stdout"), up=free_port())
    r = http_request(sk.port("listen"), "GET", "/api/down")
    assert r.status == 502
    assert sk.stop() == 0
    [l] = sk.access_log_lines()
    assert l["status"] == 502
    assert l["reason"] == "upstream_connect_failure"
    assert l["route"] == "api" and l["cluster"] == "backend"


def test_access_log_off(sidekick, up, tmp_path):
    sk = sidekick(sk_ini(BODY, access_log="off"), up=up.port)
    run_requests(sk)
    time.sleep(0.3)
    assert sk.stop() == 0
    assert sk.stdout_bytes() == b""
    assert not list(tmp_path.glob("*.json"))


def test_access_log_byte_counts_exact(sidekick, up):
    from harness import RawClient, build_request
    sk = sidekick(sk_ini(BODY, access_log="stdout"), up=up.port)
    req = build_request("POST", "/api/bytes", [("X-Pad", "p" * 33)], b"0123456789")
    with RawClient(sk.port("listen")) as c:
        c.send(req)
        r = c.read_response()
    assert sk.stop() == 0
    [l] = sk.access_log_lines()
    assert l["bytes_received"] == len(req), (l, len(req))
    assert l["bytes_sent"] == len(r.raw_head) + len(r.body), l


def test_access_log_malformed_request(sidekick, up):
    from harness import raw_exchange
    sk = sidekick(sk_ini(BODY, access_log="stdout"), up=up.port)
    resp, _ = raw_exchange(sk.port("listen"), b"GET / HTTP/1.1\r\nHost: x\r\nX-A: a\r\n b\r\n\r\n")
    assert resp.status == 400
    assert sk.stop() == 0
    [l] = sk.access_log_lines()
    assert l["status"] == 400 and l["reason"] == "bad_request"
    assert str(l["client"]).startswith("127.0.0.1")


def test_access_log_json_escaping(sidekick, up):
    """Quotes, backslashes and non-ASCII bytes in logged fields keep every
    line valid JSON with the right values. (A Host with quotes or
    backslashes is invalid and refused with 400; its line must be valid
    JSON too.)"""
    from harness import RawClient
    sk = sidekick(sk_ini(BODY, access_log="stdout"), up=up.port)
    with RawClient(sk.port("listen")) as c:
        c.send(b'GET /api/a"b\\c HTTP/1.1\r\nHost: x\r\nX-Request-Id: id"\\x\r\n\r\n')
        r1 = c.read_response()
        c.send(b"GET /api/caf\xc3\xa9 HTTP/1.1\r\nHost: x\r\n\r\n")
        r2 = c.read_response()
    with RawClient(sk.port("listen")) as c:
        c.send(b'GET /api/q"\\ HTTP/1.1\r\nHost: h"o\\st\r\n\r\n')
        r3 = c.read_response()
    assert r1.status == 200 and r2.status == 200 and r3.status == 400
    assert sk.stop() == 0
    lines = sk.access_log_lines()  # raises on invalid JSON
    assert len(lines) == 3
    assert lines[0]["path"] == '/api/a"b\\c'
    assert lines[0]["request_id"] == 'id"\\x'
    assert lines[1]["path"] == "/api/caf\u00e9"
    assert lines[2]["status"] == 400 and lines[2]["reason"] == "bad_request"
    assert lines[2]["path"] == '/api/q"\\'


def test_access_log_trace_id_from_traceparent(sidekick, up):
    """Without a tracing plugin, trace_id is the trace-id field of the
    traceparent sent upstream, only when it is 32 lowercase hex digits, not
    all zero."""
    sk = sidekick(sk_ini(BODY, access_log="stdout"), up=up.port)
    p = sk.port("listen")
    t = "4bf92f3577b34da6a3ce929d0e0e4736"
    cases = [
        (f"00-{t}-00f067aa0ba902b7-01", t),
        (f"01-{t}-00f067aa0ba902b7-01-more", t),
        (f"00-{t.upper()}-00f067aa0ba902b7-01", None),
        (f"00-{'0' * 32}-00f067aa0ba902b7-01", None),
        (f"00-{t[:31]}x-00f067aa0ba902b7-01", None),
        (f"00-{t}x-00f067aa0ba902b7-01", None),
    ]
    for i, (tp, _) in enumerate(cases):
        http_request(p, "GET", f"/api/t{i}", headers={"traceparent": tp})
    assert wait_for(lambda: len(sk.access_log_lines()) == len(cases))
    for i, (_, want) in enumerate(cases):
        assert by_path(sk.access_log_lines(), f"/api/t{i}")["trace_id"] == want, cases[i]
