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
        time.sleep(0.1)  # each piece in a read of its own: the end alone too
        c.send_body(b, b"defgh", end=False)
        time.sleep(0.1)
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


# --------------------------------------------------------------------------
# plugins and Lua on HTTP/2 streams

LUA = """\
local M = {}
function M.on_request(r)
  if r:path() == "/lua/deny" then
    return r:respond(403, "no\\n", { ["content-type"] = "text/x-lua" })
  end
  r:set_header("x-lua", r:method() .. " " .. r:host())
end
function M.on_response(r)
  r:set_response_header("x-lua-resp", tostring(r:status()))
end
return M
"""

PLUGINS = """\
[plugin a]
load = fx_headers.so
tag = a

[plugin p]
load = fx_pause.so
delay_ms = 50

[listener h]
address = 127.0.0.1:{h}
plugins = a

[route lua]
listener = h
prefix = /lua/
cluster = up
plugins = p
lua = f.lua

[cluster up]
endpoints = 127.0.0.1:{up}
"""


def test_plugins_and_lua_on_h2(sidekick, upstream, tmp_path):
    """A listener plugin, a pausing route plugin (the request body waits for
    it) and a Lua filter run on HTTP/2 requests as on HTTP/1 ones."""
    missing = missing_fixtures(["fx_headers", "fx_pause"])
    assert not missing, f"fixture plugins not built in {PLUGIN_DIR}: {missing}"
    lua_dir = tmp_path / "lua"
    lua_dir.mkdir()
    (lua_dir / "f.lua").write_text(LUA)
    up = upstream(lambda req: Reply(body=b"got " + (req.body or b"")))
    sk = sidekick(sk_ini(PLUGINS, extra=f"plugin_dir = {PLUGIN_DIR}\nlua_dir = {lua_dir}"), up=up.port)
    body = b"b" * 50000  # arrives while fx_pause holds the request: held by the codec
    with H2Client(sk.port("h")) as c:
        a = c.request("POST", "/lua/x", authority="svc.test", headers=[("content-length", str(len(body)))],
                      body=body)
        d = c.request("GET", "/lua/deny")
        ra, rd = c.response(a, WAIT), c.response(d, WAIT)
    assert ra.status == 200 and bytes(ra.body) == b"got " + body, ra
    assert ra.header("x-chain-resp") == "a" and ra.header("x-lua-resp") == "200", ra
    assert rd.status == 403 and bytes(rd.body) == b"no\n" and rd.header("content-type") == "text/x-lua", rd
    [q] = up.requests
    assert q.header("x-chain") == "a" and q.header("x-paused") == "50"
    assert q.header("x-lua") == "POST svc.test"
    assert q.body == body


# --------------------------------------------------------------------------
# the request head: pseudo-headers, normalisation, malformed requests


def raw_request(c, fields, end_stream=True, sid=None):
    """HEADERS with exactly these fields (hpack-encoded as given)."""
    sid = sid or c.new_id()
    c.raw_headers(sid, c.headers_block(fields), end_stream=end_stream)
    return sid


def test_authority_host_and_path(sidekick, upstream):
    up = upstream(echo_handler("app"))
    sk = sidekick(ini(), up=up.port)
    with H2Client(sk.port("h")) as c:
        both = c.request("GET", "/both", authority="auth.test", headers=[("host", "other.test")])
        hostonly = raw_request(c, [(":method", "GET"), (":scheme", "http"), (":path", "/hostonly"),
                                   ("host", "h.test:81")])
        # an http URI needs an authority (RFC 9113 8.3.1): malformed
        none = raw_request(c, [(":method", "GET"), (":scheme", "http"), (":path", "/none")])
        two = raw_request(c, [(":method", "GET"), (":scheme", "http"), (":path", "/two"),
                              ("host", "a.test"), ("host", "b.test")])
        bad = c.request("GET", "/bad", authority="a b")
        userinfo = c.request("GET", "/u", authority="u@x.test")
        dots = c.request("GET", "/a/%2e%2e/b/./c")
        slash = c.request("GET", "/a%2Fb")
        above = c.request("GET", "/../x")
        connect = raw_request(c, [(":method", "CONNECT"), (":authority", "x.test:443")])
        rs = {sid: c.response(sid) for sid in (both, hostonly, none, two, bad, userinfo, dots, slash, above,
                                               connect)}
    assert rs[both].status == 200 and rs[hostonly].status == 200
    assert rs[none].reset == h2client.PROTOCOL_ERROR, rs[none]
    # nghttp2 finds some of these malformed itself (a stream error), the
    # codec the others (400 bad_request, as HTTP/1 does)
    for sid in (two, bad, userinfo, slash, above):
        r = rs[sid]
        assert (r.status == 400 and r.header("x-sidekick-reason") == "bad_request") or \
            r.reset == h2client.PROTOCOL_ERROR, r
    assert rs[dots].status == 200 and bytes(rs[dots].body) == b"app GET /b/c", rs[dots]
    assert rs[connect].status == 501, rs[connect]
    reqs = {q.path: q for q in up.requests}
    assert reqs["/both"].header_all("host") == ["auth.test"]   # :authority wins over host
    assert reqs["/hostonly"].header_all("host") == ["h.test:81"]
    assert set(reqs) == {"/both", "/hostonly", "/b/c"}


@pytest.mark.parametrize("case", ["no_path", "no_method", "no_scheme", "uppercase", "connection", "keep_alive",
                                  "transfer_encoding", "te_gzip", "pseudo_after_regular", "unknown_pseudo",
                                  "duplicate_path", "response_pseudo", "empty_path", "cl_mismatch",
                                  "cl_too_long", "newline_in_value"])
def test_malformed_request_is_a_stream_error(sidekick, upstream, case):
    """RFC 9113 8.1.1: a malformed request is a stream error (RST_STREAM
    PROTOCOL_ERROR); nothing reaches the upstream, the connection goes on,
    and it is counted."""
    up = upstream(echo_handler("app"))
    sk = sidekick(ini(), up=up.port)
    base = [(":method", "GET"), (":scheme", "http"), (":authority", "t.test"), (":path", "/m")]
    with H2Client(sk.port("h")) as c:
        sid = c.new_id()
        body = None
        if case == "no_path":
            block = c.headers_block(base[:3])
        elif case == "no_method":
            block = c.headers_block(base[1:])
        elif case == "no_scheme":
            block = c.headers_block([base[0], base[2], base[3]])
        elif case == "uppercase":
            block = c.headers_block(base) + literal(b"X-Upper", b"1")
        elif case == "connection":
            block = c.headers_block(base + [("connection", "keep-alive")])
        elif case == "keep_alive":
            block = c.headers_block(base + [("keep-alive", "timeout=5")])
        elif case == "transfer_encoding":
            block = c.headers_block(base + [("transfer-encoding", "chunked")])
        elif case == "te_gzip":
            block = c.headers_block(base + [("te", "gzip")])
        elif case == "pseudo_after_regular":
            block = c.headers_block(base[:3] + [("x-a", "1"), (":path", "/m")])
        elif case == "unknown_pseudo":
            block = c.headers_block(base + [(":foo", "bar")])
        elif case == "duplicate_path":
            block = c.headers_block(base + [(":path", "/n")])
        elif case == "response_pseudo":
            block = c.headers_block(base + [(":status", "200")])
        elif case == "empty_path":
            block = c.headers_block(base[:3] + [(":path", "")])
        elif case == "newline_in_value":
            block = c.headers_block(base) + literal(b"x-nl", b"a\r\nb")
        else:  # content-length against the DATA that follows
            block = c.headers_block([(":method", "POST")] + base[1:] + [("content-length", "10")])
            body = b"12345" if case == "cl_mismatch" else b"x" * 20
        c.raw_headers(sid, block, end_stream=body is None)
        if body is not None:
            c.send_body(sid, body)
        r = c.response(sid, WAIT)
        assert r.reset == h2client.PROTOCOL_ERROR, r
        assert not c.goaways, c.goaways
        ok = c.response(c.request("GET", "/after"))  # the connection goes on
        assert ok.status == 200, ok
    assert [q.path for q in up.requests if q.path != "/after"] in ([], ["/m"]), up.requests
    if body is None:
        assert [q.path for q in up.requests] == ["/after"]
    wait_err(sk, "stream_error")


def test_connection_errors(sidekick, upstream):
    """Frames that break the connection (RFC 9113 5.4.1): GOAWAY
    PROTOCOL_ERROR (or FRAME_SIZE_ERROR), counted; others carry on."""
    up = upstream(echo_handler("app"))
    sk = sidekick(ini(), up=up.port)
    port = sk.port("h")
    cases = [
        ("data_on_stream_0", lambda c: c.send_raw(b"\x00\x00\x01\x00\x00\x00\x00\x00\x00x"),
         h2client.PROTOCOL_ERROR),
        ("even_stream", lambda c: c.raw_headers(2, c.headers_block([(":method", "GET"), (":scheme", "http"),
                                                                     (":path", "/")])),
         h2client.PROTOCOL_ERROR),
        ("oversized_frame", lambda c: c.send_raw(struct_frame(0, 1, 0x4, 1, b"\x00" * 20000)),
         h2client.FRAME_SIZE_ERROR),
        ("bad_settings", lambda c: c.send_raw(struct_frame(0x4, 0, 0, 0, b"\x00\x04\xff\xff\xff\xff")),
         h2client.FLOW_CONTROL_ERROR),
        ("window_overflow", lambda c: (c.window_update(0, 0x7fffffff), c.window_update(0, 0x7fffffff)),
         h2client.FLOW_CONTROL_ERROR),
    ]
    for name, send, code in cases:
        with H2Client(port) as c:
            assert c.wait(lambda: c.settings_acked >= 1, WAIT)
            send(c)
            assert c.wait(lambda: c.goaways, WAIT), name
            assert c.goaways[0].error_code == code, (name, c.goaways)
            assert c.wait_closed(WAIT), name
    wait_err(sk, "protocol_error", len(cases))
    assert_healthy(sk)


def struct_frame(ftype, flags, sid, length_override, payload):
    """A raw frame; length_override 1 = the payload's real length."""
    import struct
    n = len(payload)
    return struct.pack(">I", n)[1:] + bytes([ftype, flags]) + struct.pack(">I", sid) + payload


def test_zero_window_update_on_a_stream(sidekick, upstream):
    """A zero WINDOW_UPDATE on a stream is a stream error (RFC 9113 6.9),
    which nghttp2 makes a connection error (allowed by RFC 9113 5.4.1): the
    open stream is cut, the connection ends with GOAWAY PROTOCOL_ERROR."""
    release = threading.Event()
    up = upstream(lambda req: (release.wait(WAIT), Reply(body=b"ok"))[1])
    sk = sidekick(ini(), up=up.port)
    with H2Client(sk.port("h")) as c:
        sid = c.request("GET", "/w")
        assert up.wait_requests(1, WAIT)
        c.window_update(sid, 0)
        assert c.wait(lambda: c.goaways, WAIT)
        assert c.goaways[0].error_code == h2client.PROTOCOL_ERROR, c.goaways
        assert c.wait_closed(WAIT)
    release.set()
    wait_err(sk, "protocol_error")
    assert_healthy(sk)


# --------------------------------------------------------------------------
# limits


def test_header_limits(sidekick, upstream):
    """max_header_bytes / max_headers as for HTTP/1 (431), a long :path
    (414), max_body_bytes (413, by content-length and by DATA)."""
    up = upstream(echo_handler("app"))
    sk = sidekick(ini(listener="max_header_bytes = 4k\nmax_headers = 10\nmax_body_bytes = 1k"), up=up.port)
    with H2Client(sk.port("h")) as c:
        big = c.request("GET", "/big", headers=[("x-big", "v" * 5000)])
        many = c.request("GET", "/many", headers=[(f"x-h{i}", "1") for i in range(12)])
        longpath = c.request("GET", "/" + "p" * 5000)
        cl = c.request("POST", "/cl", headers=[("content-length", "2000")], end=False)
        data = c.request("POST", "/data", end=False)
        c.send_body(data, b"d" * 1500)
        ok = c.request("GET", "/ok", headers=[(f"x-h{i}", "1") for i in range(8)])
        rs = {sid: c.response(sid, WAIT) for sid in (big, many, longpath, cl, data, ok)}
    assert rs[big].status == 431 and rs[big].header("x-sidekick-reason") == "headers_too_large", rs[big]
    assert rs[many].status == 431, rs[many]
    assert rs[longpath].status == 414 and rs[longpath].header("x-sidekick-reason") == "uri_too_long"
    assert rs[cl].status == 413 and rs[cl].header("x-sidekick-reason") == "body_too_large", rs[cl]
    assert rs[data].status == 413, rs[data]
    assert rs[ok].status == 200, rs[ok]
    assert [q.path for q in up.requests] in (["/ok"], ["/data", "/ok"], ["/ok", "/data"])
    assert err_count(sk, "headers_too_large") == 2


def test_hpack_bomb_is_bounded(sidekick, upstream):
    """HPACK table abuse: one 4000-byte field put into the dynamic table,
    then referenced 100 times in one header block (a few hundred bytes on
    the wire, 400 kB decoded): 431 on that stream, counted, the connection
    (and its HPACK state) goes on."""
    up = upstream(echo_handler("app"))
    sk = sidekick(ini(), up=up.port)
    with H2Client(sk.port("h")) as c:
        first = c.request("GET", "/seed", headers=[("x-bomb", "B" * 4000)])  # indexed by the encoder
        r = c.response(first, WAIT)
        assert r.status == 200, r
        # the field is now the newest entry of the dynamic table (62: index
        # byte 0xbe); the other fields go as literals so that it stays there
        block = (literal(b":method", b"GET") + literal(b":scheme", b"http") + literal(b":authority", b"t.test")
                 + literal(b":path", b"/bomb") + b"\xbe" * 100)
        sid = c.new_id()
        c.raw_headers(sid, block)
        r = c.response(sid, WAIT)
        assert r.status == 431, r
        after = c.response(c.request("GET", "/after", headers=[("x-bomb", "B" * 4000)]), WAIT)
        assert after.status == 200, after
    assert [q.path for q in up.requests] == ["/seed", "/after"]
    wait_err(sk, "headers_too_large")


def test_hpack_table_size_abuse(sidekick, upstream):
    """A dynamic table size update above the SETTINGS_HEADER_TABLE_SIZE we
    allow (4096) is a COMPRESSION_ERROR for the connection."""
    up = upstream(echo_handler("app"))
    sk = sidekick(ini(), up=up.port)
    with H2Client(sk.port("h")) as c:
        sid = c.new_id()
        block = table_size_update(1 << 20) + c.headers_block([(":method", "GET"), (":scheme", "http"),
                                                              (":path", "/")])
        c.raw_headers(sid, block)
        assert c.wait(lambda: c.goaways, WAIT)
        assert c.goaways[0].error_code == h2client.COMPRESSION_ERROR, c.goaways
    wait_err(sk, "compression_error")
    assert_healthy(sk)
    assert not up.requests


# --------------------------------------------------------------------------
# bodies: streaming with flow control tied to back-pressure

HWM_LIMIT_KB = 30 * 1024  # as test_large.py; sanitizer builds use far more memory: not checked there


def check_hwm(sk):
    hwm = sk.vmhwm_kb()
    print(f"sidekick VmHWM = {hwm} kB")
    if not SANITIZED:
        assert hwm < HWM_LIMIT_KB, f"VmHWM {hwm} kB >= {HWM_LIMIT_KB} kB"


BIG = 50 * 1024 * 1024


@pytest.fixture(scope="module")
def big_sha():
    return pattern_sha256(BIG)


def test_slow_reading_client_of_50mb(sidekick, upstream, big_sha):
    """A 50 MB response to a client that stops reading for a while (a wide
    window: the socket pushes back), then reads it all: sidekick's memory
    stays bounded, the body arrives whole."""
    up = upstream(lambda req: Reply(stream_size=BIG))
    sk = sidekick(ini(route="timeout = 120s"), up=up.port)
    with H2Client(sk.port("h"), settings={h2client.INITIAL_WINDOW_SIZE: 0x7fffffff}, timeout=60) as c:
        c.window_update(0, 0x7fffffff - 65535)
        sid = c.request("GET", "/big")
        c.streams[sid].keep_body = False
        assert c.wait(lambda: c.streams[sid].status is not None, WAIT)
        time.sleep(1.5)  # not reading: the proxy must stop reading the upstream
        mid = sk.vmhwm_kb()
        assert up.wait_requests(1)
        r = c.response(sid, 120)
    assert r.status == 200 and r.ended, r
    assert r.body_len == BIG and r.sha.hexdigest() == big_sha
    print(f"VmHWM after the pause: {mid} kB")
    check_hwm(sk)


def test_flow_controlled_client_of_50mb(sidekick, upstream, big_sha):
    """The same with the default 64 KiB windows given back only as the
    client consumes (WINDOW_UPDATE by hand), slowly at first."""
    up = upstream(lambda req: Reply(stream_size=BIG))
    sk = sidekick(ini(route="timeout = 120s"), up=up.port)
    with H2Client(sk.port("h"), auto_window=False, timeout=60) as c:
        sid = c.request("GET", "/big")
        st = c.streams[sid]
        st.keep_body = False
        assert c.wait(lambda: st.body_len >= 65535 or st.done, WAIT)
        assert st.body_len == 65535  # the initial window, not a byte more
        time.sleep(1.0)
        assert c.wait(lambda: st.body_len >= 65535, 0.5) and st.body_len == 65535
        mid = sk.vmhwm_kb()
        deadline = time.monotonic() + 120
        while not st.done and time.monotonic() < deadline:
            c.consume(sid)
            c.wait(lambda: c.unconsumed.get(sid, 0) > 0 or st.done, 5)
    assert st.status == 200 and st.ended, st
    assert st.body_len == BIG and st.sha.hexdigest() == big_sha
    print(f"VmHWM after the pause: {mid} kB")
    check_hwm(sk)


class SlowSink:
    """An HTTP/1.1 upstream that reads a request body slowly: 1 MB, then a
    pause, then the rest; answers with the body's length and SHA-256."""

    def __init__(self, pause: float = 1.5):
        self.pause = pause
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(8)
        self.port = self.sock.getsockname()[1]
        self.received = None
        self.paused = threading.Event()
        self.thread = threading.Thread(target=self.serve, daemon=True)
        self.thread.start()

    def serve(self):
        s, _ = self.sock.accept()
        with s:
            buf = b""
            while b"\r\n\r\n" not in buf:
                buf += s.recv(65536)
            head, _, rest = buf.partition(b"\r\n\r\n")
            m = re.search(rb"(?i)content-length: *(\d+)", head)
            left = int(m.group(1)) - len(rest)
            h = hashlib.sha256(rest)
            n = len(rest)
            slept = False
            while left > 0:
                if n >= (1 << 20) and not slept:
                    self.paused.set()
                    time.sleep(self.pause)
                    slept = True
                d = s.recv(min(left, 65536))
                if not d:
                    break
                h.update(d)
                n += len(d)
                left -= len(d)
            self.received = (n, h.hexdigest())
            body = f"{n} {h.hexdigest()}".encode()
            s.sendall(b"HTTP/1.1 200 OK\r\ncontent-length: %d\r\n\r\n" % len(body) + body)

    def close(self):
        self.sock.close()


def test_large_post_streamed_to_a_slow_upstream(sidekick, tmp_path):
    """A 40 MB POST (curl) to an upstream that stops reading for a while:
    the client's window closes, sidekick buffers a bounded amount, all of
    it arrives."""
    size = 40 * 1024 * 1024
    f = tmp_path / "body"
    with open(f, "wb") as out:
        for piece in iter_pattern(size):
            out.write(piece)
    sink = SlowSink()
    try:
        sk = sidekick(ini(route="timeout = 120s"), up=sink.port)
        res, head, body = h2curl(sk.port("h"), "/upload", "--data-binary", f"@{f}", "-H",
                                 "content-type: application/octet-stream")
        assert head.startswith("HTTP/2 200"), (head, res.stderr)
        assert body == f"{size} {pattern_sha256(size)}".encode(), body
        assert sink.paused.is_set()
        check_hwm(sk)
    finally:
        sink.close()


# --------------------------------------------------------------------------
# floods: each answered, counted, and never starving a well-behaved client


class Bystander(threading.Thread):
    """A well-behaved client: requests on an HTTP/2 connection of its own
    and on HTTP/1.1, one after the other, while a test floods another
    connection. Records what it got."""

    def __init__(self, port):
        super().__init__(daemon=True)
        self.port = port
        self.stop = threading.Event()
        self.ok = 0
        self.failures = []

    def run(self):
        try:
            with H2Client(self.port, timeout=WAIT) as c:
                while not self.stop.is_set():
                    r = c.response(c.request("GET", "/ping"), WAIT)
                    if r.status == 200 and bytes(r.body) == b"pong":
                        self.ok += 1
                    else:
                        self.failures.append(repr(r))
                        return
                    r1 = http_request(self.port, "GET", "/ping", timeout=WAIT)
                    if r1.status != 200:
                        self.failures.append(repr(r1))
                        return
        except Exception as e:  # noqa: BLE001 - reported by finish()
            self.failures.append(repr(e))

    def wait_more(self, n=3):
        """Waits until n more answers came (bounded)."""
        start = self.ok
        return wait_for(lambda: self.ok >= start + n or self.failures, WAIT)

    def finish(self):
        self.stop.set()
        self.join(WAIT)
        assert not self.failures, self.failures
        assert self.ok > 0


def flood(sk, attack, expect_code=h2client.ENHANCE_YOUR_CALM, reason=None):
    """Runs attack(client) on a connection of its own while a Bystander
    works; the attacker gets a GOAWAY with expect_code and is closed; the
    bystander kept getting answers; `reason` is counted."""
    port = sk.port("h")
    by = Bystander(port)
    by.start()
    assert wait_for(lambda: by.ok >= 1, WAIT), by.failures
    with H2Client(port, timeout=WAIT) as c:
        assert c.wait(lambda: c.settings_acked >= 1, WAIT)
        try:
            attack(c)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the server closed while we were still sending
        assert by.wait_more(), by.failures
        assert c.wait(lambda: c.goaways or c.closed, WAIT)
        assert c.goaways, "closed without GOAWAY"
        assert c.goaways[-1].error_code == expect_code, c.goaways
        assert c.wait_closed(WAIT)
    assert by.wait_more(), by.failures
    by.finish()
    if reason:
        wait_err(sk, reason)
    return c


def burst(c, frames, chunk=200, pause=0.0):
    for i in range(0, len(frames), chunk):
        c.send(*frames[i:i + chunk])
        if pause:
            time.sleep(pause)


def get_block(c, path="/ping"):
    return c.headers_block([(":method", "GET"), (":scheme", "http"), (":authority", "t.test"), (":path", path)])


@pytest.fixture
def flood_sk(sidekick, upstream):
    up = upstream(lambda req: Reply(body=b"ok"))
    return sidekick(ini(), up=up.port)


def test_rapid_reset(flood_sk):
    """CVE-2023-44487: streams opened and reset at once, thousands of them."""
    def attack(c):
        frames = []
        for i in range(2000):
            sid = c.new_id()
            frames.append(HeadersFrame(sid, data=get_block(c, "/up"), flags=["END_HEADERS", "END_STREAM"]))
            frames.append(RstStreamFrame(sid, error_code=h2client.CANCEL))
        burst(c, frames)
    flood(flood_sk, attack, reason="rapid_reset")
    assert err_count(flood_sk, "rapid_reset") == 1


def test_made_you_reset(flood_sk):
    """The same with streams the server must reset itself (malformed
    requests: an upper-case header name)."""
    def attack(c):
        frames = []
        for i in range(2000):
            sid = c.new_id()
            frames.append(HeadersFrame(sid, data=get_block(c) + literal(b"X-Bad", b"1"),
                                       flags=["END_HEADERS", "END_STREAM"]))
        # in small writes: a reset stream counts as open until its RST_STREAM
        # is written, and more than max_concurrent_streams at once is a
        # connection error of its own
        burst(c, frames, 50, 0.002)
    flood(flood_sk, attack, reason="rapid_reset")
    assert err_count(flood_sk, "stream_error") >= 100


def test_ping_flood(flood_sk):
    flood(flood_sk, lambda c: burst(c, [PingFrame(0, opaque_data=b"%08d" % i) for i in range(5000)]),
          reason="ping_flood")


def test_settings_flood(flood_sk):
    flood(flood_sk, lambda c: burst(c, [SettingsFrame(0, settings={h2client.ENABLE_PUSH: 0})
                                        for _ in range(5000)]),
          reason="settings_flood")


def test_empty_data_flood(flood_sk):
    def attack(c):
        sid = c.request("POST", "/up", end=False)
        burst(c, [DataFrame(sid, data=b"") for _ in range(5000)])
    flood(flood_sk, attack, reason="empty_frames")


def test_continuation_flood_frames(flood_sk):
    """HEADERS without END_HEADERS, then CONTINUATION frames that never end
    the block (CVE-2024-27316 and relatives)."""
    def attack(c):
        sid = c.new_id()
        c.send(HeadersFrame(sid, data=get_block(c), flags=["END_STREAM"]))
        burst(c, [ContinuationFrame(sid, data=b"") for _ in range(5000)])
    flood(flood_sk, attack, reason="continuation_flood")


def test_continuation_flood_bytes(flood_sk):
    """The same with full CONTINUATION frames: the header block grows past
    the header limit (64k) without ending."""
    def attack(c):
        sid = c.new_id()
        c.send(HeadersFrame(sid, data=get_block(c), flags=["END_STREAM"]))
        block = b"".join(literal(b"x-pad-%d" % i, b"p" * 200) for i in range(2000))  # ~420 kB
        burst(c, [ContinuationFrame(sid, data=block[i:i + 16384]) for i in range(0, len(block), 16384)], 4)
    flood(flood_sk, attack, reason="continuation_flood")


# --------------------------------------------------------------------------
# reload, drain, timeouts


def held_upstream(upstream):
    """An upstream that holds /slow* until release is set."""
    release = threading.Event()

    def h(req):
        if req.path.startswith("/slow"):
            release.wait(WAIT * 2)
        return Reply(body=req.path.encode())
    return upstream(h), release


def test_reload_with_open_streams(sidekick, upstream, tmp_path):
    """SIGHUP: the graceful GOAWAY (last stream 2^31-1, a PING, then the
    last stream processed); a stream the client opened between the two is
    served; open streams finish on their generation; the client reconnects
    to the new one."""
    up, release = held_upstream(upstream)
    log = tmp_path / "access.log"
    sk = sidekick(ini(access_log=str(log)), up=up.port)
    with H2Client(sk.port("h"), ack_ping=False) as c:
        a = c.request("GET", "/slow/a")
        assert up.wait_requests(1, WAIT)
        sk.signal(signal.SIGHUP)
        assert c.wait(lambda: c.goaways and c.pings_received, WAIT)
        g1 = c.goaways[0]
        assert g1.last_stream_id == 2 ** 31 - 1 and g1.error_code == h2client.NO_ERROR, g1
        b = c.request("GET", "/slow/b")  # in flight when the notice came: still served
        assert up.wait_requests(2, WAIT)
        c.send(PingFrame(0, opaque_data=c.pings_received[0], flags=["ACK"]))
        assert c.wait(lambda: len(c.goaways) >= 2, WAIT)
        g2 = c.goaways[1]
        assert g2.last_stream_id == b and g2.error_code == h2client.NO_ERROR, g2
        assert not c.streams[a].done and not c.streams[b].done
        release.set()
        ra, rb = c.response(a, WAIT), c.response(b, WAIT)
        assert ra.status == 200 and bytes(ra.body) == b"/slow/a", ra
        assert rb.status == 200 and bytes(rb.body) == b"/slow/b", rb
        assert c.wait_closed(WAIT)  # nothing open any more: the connection ends
    assert_healthy(sk)
    assert wait_for(lambda: len(log_lines(log)) >= 4, WAIT)
    lines = log_lines(log)
    slow = [l for l in lines if l["path"].startswith("/slow")]
    assert [l["generation"] for l in slow] == [1, 1] and all(l["reason"] is None for l in slow), slow
    assert [l["generation"] for l in lines if l["path"] == "/ping"][0] == 2


def test_reload_streams_cut_at_drain_timeout(sidekick, upstream, tmp_path):
    up, release = held_upstream(upstream)
    log = tmp_path / "access.log"
    sk = sidekick(ini(access_log=str(log), drain_timeout="1s"), up=up.port)
    try:
        with H2Client(sk.port("h")) as c:
            a = c.request("GET", "/slow/a")
            assert up.wait_requests(1, WAIT)
            sk.signal(signal.SIGHUP)
            assert c.wait(lambda: len(c.goaways) >= 2, WAIT)
            assert c.wait_closed(WAIT)
            assert not c.streams[a].ended
        assert wait_for(lambda: any(l["reason"] == "drain_timeout" for l in log_lines(log)), WAIT)
    finally:
        release.set()
    assert_healthy(sk)


def test_drain_sends_goaway_and_lets_streams_finish(sidekick, upstream):
    """SIGTERM: GOAWAY to HTTP/2 clients, open streams finish, then exit 0."""
    up, release = held_upstream(upstream)
    sk = sidekick(ini(drain_timeout="10s"), up=up.port)
    with H2Client(sk.port("h")) as c:
        a = c.request("GET", "/slow/a")
        assert up.wait_requests(1, WAIT)
        sk.signal(signal.SIGTERM)
        assert c.wait(lambda: len(c.goaways) >= 2, WAIT)
        assert c.goaways[0].last_stream_id == 2 ** 31 - 1 and c.goaways[1].last_stream_id == a
        assert sk.running()
        release.set()
        r = c.response(a, WAIT)
        assert r.status == 200 and bytes(r.body) == b"/slow/a", r
        assert c.wait_closed(WAIT)
    assert sk.proc.wait(WAIT) == 0


def test_idle_connection_and_stalled_header_block(sidekick, upstream):
    """idle_timeout between requests and header_timeout before the first and
    for a header block that does not end: GOAWAY, then the close."""
    up = upstream(echo_handler("app"))
    sk = sidekick(ini(listener="idle_timeout = 1s\nheader_timeout = 1s"), up=up.port)
    port = sk.port("h")
    with H2Client(port) as c:
        assert c.response(c.request("GET", "/x")).status == 200
        assert c.wait_closed(WAIT)
        assert c.goaways and c.goaways[0].error_code == h2client.NO_ERROR
    with H2Client(port) as c:  # never a request
        assert c.wait_closed(WAIT)
    with H2Client(port) as c:
        c.send(HeadersFrame(c.new_id(), data=get_block(c), flags=["END_STREAM"]))  # no END_HEADERS
        assert c.wait_closed(WAIT)
        assert c.goaways, c.frames
    assert_healthy(sk)


def test_stalled_request_body(sidekick, upstream):
    """A request body that stops arriving for idle_timeout: 408."""
    up = upstream(echo_handler("app"))
    sk = sidekick(ini(listener="idle_timeout = 1s"), up=up.port)
    with H2Client(sk.port("h")) as c:
        sid = c.request("POST", "/post", end=False)
        c.send_body(sid, b"part", end=False)
        r = c.response(sid, WAIT)
        assert r.status == 408 and r.header("x-sidekick-reason") == "idle_timeout", r
        assert c.response(c.request("GET", "/ping")).status == 200


def test_client_that_never_opens_its_window(sidekick, upstream):
    """A response queued whole for a client that gives no window back: the
    connection ends after idle_timeout instead of holding it forever."""
    up = upstream(lambda req: Reply(body=b"z" * 200000))
    sk = sidekick(ini(listener="idle_timeout = 1s"), up=up.port)
    with H2Client(sk.port("h"), auto_window=False) as c:
        sid = c.request("GET", "/big")
        assert c.wait(lambda: c.streams[sid].body_len >= 65535, WAIT)
        assert c.wait_closed(WAIT)
        assert c.streams[sid].body_len == 65535
    assert_healthy(sk)
