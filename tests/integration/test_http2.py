"""HTTP/2 downstream (issue 16): h2 by ALPN on TLS listeners and h2c with
prior knowledge on plain ones, next to HTTP/1.1 on the same port; streams
through the same routing, plugins, Lua, limits and access log as HTTP/1;
flow control tied to back-pressure; limits, malformed requests and floods
(each with a parallel well-behaved client and the metric that counts it);
reload and drain with open streams.

Clients: curl (--http2-prior-knowledge, --http2 over TLS), h2load, and
h2client.py (frames built by hand on python3-h2's hyperframe and hpack).
The upstream is harness.Upstream (HTTP/1.1, recording what it received).
Run by hand with:

    SIDEKICK_BIN=build/sidekick /usr/bin/python3 -m pytest -q tests/integration/test_http2.py
"""

import hashlib
import os
import re
import shutil
import signal
import socket
import ssl
import subprocess
import threading
import time
import types
from pathlib import Path

import pytest

import h2client
from certs import PKI
from h2client import H2Client, literal, table_size_update
from harness import (PLUGIN_DIR, RawClient, Reply, curl, echo_handler, free_port, http_request, iter_pattern,
                     metric_value, missing_fixtures, parse_prometheus, pattern_sha256, sk_ini, wait_for)
from hyperframe.frame import (ContinuationFrame, DataFrame, HeadersFrame, PingFrame, PriorityFrame,
                              RstStreamFrame, SettingsFrame, WindowUpdateFrame)

SANITIZED = bool(os.environ.get("SIDEKICK_SANITIZED"))
H2LOAD = shutil.which("h2load") or "/usr/bin/h2load"
ERR = "sidekick_http2_protocol_errors_total"
WAIT = 15.0  # upper bound for anything asynchronous (ASan, a busy machine)

BASE = """\
[listener h]
address = 127.0.0.1:{h}
{listener}

[route ping]
listener = h
path = /ping
respond = 200 pong

[route all]
listener = h
cluster = up
{route}

[cluster up]
endpoints = 127.0.0.1:{up}
{cluster}
"""


def ini(listener="", route="", cluster="", **kw):
    return sk_ini(BASE.replace("{listener}", listener).replace("{route}", route).replace("{cluster}", cluster),
                  **kw)


def metrics(sk):
    return parse_prometheus(sk.admin_get("/metrics").body.decode())


def err_count(sk, reason):
    return metric_value(metrics(sk), ERR, reason=reason) or 0


def wait_err(sk, reason, at_least=1):
    ok = wait_for(lambda: err_count(sk, reason) >= at_least, WAIT)
    assert ok, f"{ERR}{{reason={reason}}} = {err_count(sk, reason)}, wanted >= {at_least}"


def h2curl(port, path="/", *args, scheme="http", host="127.0.0.1"):
    """curl with HTTP/2 (prior knowledge on http, ALPN on https): status,
    headers text, body."""
    proto = ["--http2-prior-knowledge"] if scheme == "http" else ["--http2"]
    res = curl(*proto, "-i", "--path-as-is", *args, f"{scheme}://{host}:{port}{path}")
    out = res.stdout
    head, _, body = out.partition(b"\r\n\r\n")
    return res, head.decode(errors="replace"), body


def assert_healthy(sk, port=None):
    """A well-behaved client gets answers: HTTP/2 on a new connection and HTTP/1.1."""
    port = port or sk.port("h")
    r = h2client.get(port, "/ping", timeout=WAIT)
    assert r.status == 200 and bytes(r.body) == b"pong", r
    r1 = http_request(port, "GET", "/ping", timeout=WAIT)
    assert r1.status == 200 and r1.body == b"pong", r1


def log_lines(path):
    out = []
    if not Path(path).exists():
        return out
    import json
    for line in Path(path).read_text().splitlines():
        if line.strip():
            out.append(json.loads(line))
    return out


# --------------------------------------------------------------------------
# the protocol on the wire


def test_prior_knowledge_and_http1_on_one_port(sidekick, upstream, tmp_path):
    """curl --http2-prior-knowledge and HTTP/1.1 on the same listener; what
    the upstream got; the access log says HTTP/2."""
    up = upstream(echo_handler("app"))
    log = tmp_path / "access.log"
    sk = sidekick(ini(access_log=str(log)), up=up.port)
    port = sk.port("h")
    res, head, body = h2curl(port, "/a/../b?x=1", "-H", "X-Test: one", "-H", "Cookie: a=1",
                             "-H", "Cookie: b=2")
    assert res.returncode == 0, res.stderr
    assert head.startswith("HTTP/2 200"), head
    assert body == b"app GET /b?x=1"
    assert "x-upstream: up" in head.lower()
    r1 = http_request(port, "GET", "/c")
    assert r1.status == 200 and r1.body == b"app GET /c"
    assert up.wait_requests(2)
    q = up.requests[0]
    assert q.version == "HTTP/1.1" and q.method == "GET" and q.target == "/b?x=1"
    assert q.header_all("host") == [f"127.0.0.1:{port}"]
    assert q.header("x-test") == "one"
    assert q.header_all("cookie") == ["a=1; b=2"]  # joined for the HTTP/1 hop (RFC 9113 8.2.3)
    assert q.header("x-forwarded-proto") == "http"
    assert q.header("x-forwarded-for") == "127.0.0.1"
    assert q.header("x-request-id")
    assert not [n for n, _ in q.headers if n.startswith(":")]
    assert wait_for(lambda: len(log_lines(log)) >= 2, WAIT)
    lines = log_lines(log)
    assert lines[0]["protocol"] == "HTTP/2" and lines[0]["status"] == 200, lines[0]
    assert lines[0]["path"] == "/a/../b?x=1" and lines[0]["authority"] == f"127.0.0.1:{port}"
    assert lines[0]["route"] == "all" and lines[0]["bytes_sent"] > 0 and lines[0]["bytes_received"] > 0
    assert lines[1]["protocol"] == "HTTP/1.1"
    m = metrics(sk)
    assert metric_value(m, "sidekick_http2_connections_total") == 1
    assert metric_value(m, "sidekick_http2_streams_total") == 1


def test_local_replies_and_response_headers(sidekick, upstream):
    """Local replies (respond, 404 no_route) and upstream headers in HTTP/2
    form: lower-case names, no connection-specific fields, content-length."""
    up = upstream(lambda req: Reply(headers=[("Content-Type", "text/x-test"), ("X-Mixed-Case", "v"),
                                             ("Keep-Alive", "timeout=5"), ("Connection", "keep-alive")],
                                    body=b"hello"))
    sk = sidekick(ini(), up=up.port)
    with H2Client(sk.port("h")) as c:
        s1 = c.request("GET", "/ping")
        s2 = c.request("GET", "/x")
        s3 = c.request("HEAD", "/x")
        r1, r2, r3 = c.response(s1), c.response(s2), c.response(s3)
    assert r1.status == 200 and bytes(r1.body) == b"pong" and r1.header("content-type") == "text/plain", r1
    assert r2.status == 200 and bytes(r2.body) == b"hello", r2
    names = [n for n, _ in r2.headers]
    assert all(n == n.lower() for n in names), names
    assert "connection" not in names and "keep-alive" not in names and "transfer-encoding" not in names
    assert r2.header("content-type") == "text/x-test" and r2.header("x-mixed-case") == "v"
    assert r2.header("content-length") == "5"
    assert r3.status == 200 and r3.header("content-length") == "5" and bytes(r3.body) == b"", r3


def test_no_route_and_respond(sidekick, upstream, tmp_path):
    body = """\
[listener h]
address = 127.0.0.1:{h}

[route only]
listener = h
host = only.test
respond = 201 made
"""
    sk = sidekick(sk_ini(body))
    with H2Client(sk.port("h")) as c:
        a = c.response(c.request("GET", "/", authority="only.test"))
        b = c.response(c.request("GET", "/", authority="other.test"))
        d = c.response(c.request("GET", "/", authority="only.test:8080"))
    assert a.status == 201 and bytes(a.body) == b"made", a
    assert b.status == 404 and b.header("x-sidekick-reason") == "no_route", b
    assert d.status == 201, d  # the route's host is matched without the port


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    p = PKI(tmp_path_factory.mktemp("pki"))
    ns = types.SimpleNamespace(pki=p)
    ns.ca = p.ca("ca")
    ns.server = p.leaf("server", ns.ca, dns=["backend.test"])
    return ns


def tls_ini(pki, alpn=None, **kw):
    extra = f"alpn = {alpn}\n" if alpn else ""
    body = BASE.replace("{listener}", "tls = srv").replace("{route}", "").replace("{cluster}", "") + (
        f"\n[tls srv]\ncert = {pki.server.chain}\nkey = {pki.server.key}\n{extra}")
    return sk_ini(body, **kw)


def test_tls_alpn_h2_and_http11(sidekick, upstream, pki):
    """h2 by ALPN (curl --http2, a raw client), http/1.1 when the client
    offers only that, on one TLS listener; the upstream sees https."""
    up = upstream(echo_handler("app"))
    sk = sidekick(tls_ini(pki), up=up.port)
    port = sk.port("h")
    args = ["--cacert", str(pki.ca.cert), "--resolve", f"backend.test:{port}:127.0.0.1"]
    res, head, body = h2curl(port, "/x", *args, scheme="https", host="backend.test")
    assert res.returncode == 0, res.stderr
    assert head.startswith("HTTP/2 200"), head
    assert body == b"app GET /x"
    res = curl("--http1.1", "-i", *args, f"https://backend.test:{port}/y")
    assert res.stdout.startswith(b"HTTP/1.1 200"), res.stdout[:200]
    ctx = ssl.create_default_context(cafile=str(pki.ca.cert))
    ctx.set_alpn_protocols(["h2", "http/1.1"])
    with H2Client(port, tls=ctx, server_hostname="backend.test") as c:
        assert c.alpn == "h2"
        r = c.response(c.request("GET", "/z", authority="backend.test"))
        assert r.status == 200 and bytes(r.body) == b"app GET /z", r
    assert up.wait_requests(3)
    for q in up.requests:
        assert q.header("x-forwarded-proto") == "https", q.headers


def test_tls_alpn_http11_only(sidekick, upstream, pki):
    """alpn = http/1.1 on the [tls] section: curl --http2 falls back to HTTP/1.1."""
    up = upstream(echo_handler("app"))
    sk = sidekick(tls_ini(pki, alpn="http/1.1"), up=up.port)
    port = sk.port("h")
    args = ["--cacert", str(pki.ca.cert), "--resolve", f"backend.test:{port}:127.0.0.1"]
    res, head, body = h2curl(port, "/x", *args, scheme="https", host="backend.test")
    assert head.startswith("HTTP/1.1 200"), head


def test_request_bodies(sidekick, upstream):
    """POST with content-length, and without (chunked towards the HTTP/1
    upstream); what the upstream received."""
    up = upstream(lambda req: Reply(body=f"{req.body_len} {req.chunked}".encode()))
    sk = sidekick(ini(), up=up.port)
    with H2Client(sk.port("h")) as c:
        a = c.request("POST", "/a", headers=[("content-length", "11")], body=b"hello world")
        b = c.request("POST", "/b", end=False)
        c.send_body(b, b"abc", end=False)
        c.send_body(b, b"defgh", end=False)
        c.send_body(b, b"", end=True)
        ra, rb = c.response(a), c.response(b)
    assert ra.status == 200 and bytes(ra.body) == b"11 False", ra
    assert rb.status == 200 and bytes(rb.body) == b"8 True", rb
    reqs = {q.path: q for q in up.requests}
    assert reqs["/a"].body == b"hello world" and reqs["/a"].header("content-length") == "11"
    assert reqs["/b"].body == b"abcdefgh" and reqs["/b"].header("transfer-encoding") == "chunked"


def test_curl_post_and_expect_continue(sidekick, upstream, tmp_path):
    up = upstream(lambda req: Reply(body=f"{req.body_len} {req.body_sha256}".encode()), store_limit=0)
    sk = sidekick(ini(), up=up.port)
    size = 3 * 1024 * 1024 + 7
    f = tmp_path / "body"
    with open(f, "wb") as out:
        for piece in iter_pattern(size):
            out.write(piece)
    res, head, body = h2curl(sk.port("h"), "/up", "--data-binary", f"@{f}", "-H", "Expect: 100-continue")
    assert head.startswith("HTTP/2 100") or head.startswith("HTTP/2 200"), head
    assert body.endswith(f"{size} {pattern_sha256(size)}".encode()), body[-200:]


# --------------------------------------------------------------------------
# load and concurrency


@pytest.mark.parametrize("conns,streams,n", [(1, 10, 2000), (10, 100, 5000)])
def test_h2load(sidekick, upstream, conns, streams, n, tmp_path):
    up = upstream(lambda req: Reply(body=b"x" * 100))
    log = tmp_path / "access.log"
    # up to conns x streams upstream connections open at once (HTTP/1 carries
    # one request each): the test upstream's accept backlog (256) makes some
    # connects wait for a SYN retransmission (1 s)
    sk = sidekick(ini(access_log=str(log), cluster="connect_timeout = 10s"), up=up.port)
    res = subprocess.run([H2LOAD, "-n", str(n), "-c", str(conns), "-m", str(streams),
                          f"http://127.0.0.1:{sk.port('h')}/load"],
                         capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr + res.stdout
    assert re.search(rf"requests: {n} total, {n} started, {n} done, {n} succeeded, 0 failed", res.stdout), \
        res.stdout
    assert f"status codes: {n} 2xx" in res.stdout, res.stdout
    assert wait_for(lambda: len(up.requests) >= n, WAIT)
    assert wait_for(lambda: len(log_lines(log)) >= n, WAIT)
    lines = log_lines(log)
    assert all(line["protocol"] == "HTTP/2" and line["status"] == 200 for line in lines)
    assert metric_value(metrics(sk), "sidekick_http2_streams_total") == n


def test_100_concurrent_streams_on_one_connection(sidekick, upstream):
    """100 streams open at once on one connection: the upstream holds every
    request until all 100 have arrived, so they were all in flight together."""
    n = 100
    arrived = threading.Semaphore(0)
    release = threading.Event()

    def handler(req):
        arrived.release()
        release.wait(WAIT)
        return Reply(body=req.target.encode())

    up = upstream(handler)
    sk = sidekick(ini(), up=up.port)
    with H2Client(sk.port("h")) as c:
        ids = [c.request("GET", f"/s/{i}") for i in range(n)]

        def all_arrived():
            for _ in range(n):
                if not arrived.acquire(timeout=WAIT):
                    return False
            return True
        waiter = threading.Thread(target=lambda: setattr(waiter, "ok", all_arrived()))
        waiter.start()
        # read frames while the upstream waits (SETTINGS, WINDOW_UPDATE)
        c.wait(lambda: not waiter.is_alive(), WAIT * 2)
        waiter.join()
        release.set()
        assert getattr(waiter, "ok", False), "not all 100 requests reached the upstream together"
        assert c.wait(lambda: all(c.streams[i].done for i in ids), WAIT)
        for i, sid in enumerate(ids):
            r = c.streams[sid]
            assert r.status == 200 and bytes(r.body) == f"/s/{i}".encode(), r
    assert c.server_settings.get(h2client.MAX_CONCURRENT_STREAMS) == 100


def test_max_concurrent_streams(sidekick, upstream):
    """max_concurrent_streams = 2: SETTINGS says so. A third stream opened
    before the client acknowledged the SETTINGS is refused (RST_STREAM
    REFUSED_STREAM) and the connection goes on; one opened after it did is a
    connection error (nghttp2's reading of RFC 9113 5.1.2: the client broke
    a limit it acknowledged), with GOAWAY PROTOCOL_ERROR."""
    release = threading.Event()
    up = upstream(lambda req: (release.wait(WAIT), Reply(body=b"ok"))[1])
    sk = sidekick(ini(listener="max_concurrent_streams = 2"), up=up.port)
    with H2Client(sk.port("h")) as c:
        # three streams at once, before reading (and acknowledging) anything
        a, b, x = c.request("GET", "/1"), c.request("GET", "/2"), c.request("GET", "/3")
        assert c.wait(lambda: c.streams[x].done, WAIT)
        assert c.server_settings[h2client.MAX_CONCURRENT_STREAMS] == 2
        assert c.streams[x].reset == h2client.REFUSED_STREAM, c.streams[x]
        assert up.wait_requests(2, WAIT)
        release.set()
        assert c.response(a).status == 200 and c.response(b).status == 200
        release.clear()
        a, b = c.request("GET", "/4"), c.request("GET", "/5")
        assert up.wait_requests(4, WAIT)
        c.request("GET", "/6")
        assert c.wait(lambda: c.goaways, WAIT)
        assert c.goaways[0].error_code == h2client.PROTOCOL_ERROR
        release.set()
    wait_err(sk, "refused_stream")
    wait_err(sk, "protocol_error")
    assert_healthy(sk)
