"""Proxying: what the upstream receives, what the client gets back."""

import socket
import time

import pytest

from harness import (RawClient, Reply, build_request, curl, echo_handler, http_request, wait_for,
                     sk_ini)

BODY = """\
[listener main]
address = 127.0.0.1:{listen}

[route all]
listener = main
cluster = up

[cluster up]
endpoints = 127.0.0.1:{up}
"""

HOP_BY_HOP = ["connection", "keep-alive", "te", "upgrade", "proxy-authorization",
              "proxy-connection"]


@pytest.fixture
def env(sidekick, upstream):
    """(sidekick, upstream) with one catch-all route to one endpoint."""
    def make(handler=None, **kw):
        up = upstream(handler or echo_handler("up"), **kw)
        sk = sidekick(sk_ini(BODY), up=up.port)
        return sk, up
    return make


def test_get_reaches_upstream_exactly(env):
    sk, up = env()
    r = http_request(sk.port("listen"), "GET", "/some/path?a=1&b=two%20x", host="svc.test")
    assert r.status == 200, r
    assert r.body == b"up GET /some/path?a=1&b=two%20x"
    [req] = up.requests
    assert req.method == "GET"
    assert req.target == "/some/path?a=1&b=two%20x"
    assert req.version == "HTTP/1.1"
    assert req.header("host") == "svc.test"
    assert req.body_len == 0
    # a GET without body must not grow framing headers upstream
    assert not req.has("transfer-encoding")
    assert req.header("content-length") in (None, "0")


def test_post_body_bytes_exact(env):
    sk, up = env()
    body = bytes(range(256)) * 40 + b"\r\n\r\n0\r\n"  # binary, includes CRLFs
    r = http_request(sk.port("listen"), "POST", "/submit", body=body,
                     headers={"Content-Type": "application/octet-stream"})
    assert r.status == 200, r
    [req] = up.requests
    assert req.method == "POST"
    assert req.target == "/submit"
    assert req.body == body
    assert req.header("content-type") == "application/octet-stream"
    assert req.header("content-length") == str(len(body))
    assert not req.has("transfer-encoding")


@pytest.mark.parametrize("method", ["PUT", "DELETE", "PATCH", "OPTIONS"])
def test_other_methods(env, method):
    sk, up = env()
    r = http_request(sk.port("listen"), method, "/m", body=b"xyz" if method != "OPTIONS" else None)
    assert r.status == 200, r
    assert up.requests[0].method == method


def test_x_forwarded_headers(env):
    sk, up = env()
    r = http_request(sk.port("listen"), "GET", "/")
    assert r.status == 200
    req = up.requests[0]
    assert req.header_all("x-forwarded-for") == ["127.0.0.1"]
    assert req.header_all("x-forwarded-proto") == ["http"]


def test_x_forwarded_for_appended(env):
    sk, up = env()
    r = http_request(sk.port("listen"), "GET", "/", headers={"X-Forwarded-For": "1.2.3.4"})
    assert r.status == 200
    req = up.requests[0]
    xff = req.header_all("x-forwarded-for")
    # one header "1.2.3.4, 127.0.0.1" (or, tolerated, two header lines in order)
    joined = ", ".join(xff).replace(" ", "")
    assert joined == "1.2.3.4,127.0.0.1", xff


def test_x_forwarded_proto_not_spoofable(env):
    sk, up = env()
    http_request(sk.port("listen"), "GET", "/", headers={"X-Forwarded-Proto": "https"})
    assert up.requests[0].header_all("x-forwarded-proto") == ["http"]


def test_request_id_generated(env):
    sk, up = env()
    http_request(sk.port("listen"), "GET", "/1")
    http_request(sk.port("listen"), "GET", "/2")
    ids = [r.header_all("x-request-id") for r in up.requests]
    assert all(len(i) == 1 and len(i[0]) >= 8 for i in ids), ids
    assert ids[0] != ids[1]


def test_request_id_kept(env):
    sk, up = env()
    http_request(sk.port("listen"), "GET", "/", headers={"X-Request-Id": "my-id-123"})
    assert up.requests[0].header_all("x-request-id") == ["my-id-123"]


def test_hop_by_hop_request_headers_removed(env):
    sk, up = env()
    raw = build_request("GET", "/hop", [
        ("Connection", "keep-alive, x-foo, X-Bar"),
        ("Keep-Alive", "timeout=5"),
        ("TE", "trailers"),
        ("Upgrade", "websocket"),
        ("Proxy-Authorization", "Basic Zm9vOmJhcg=="),
        ("Proxy-Connection", "keep-alive"),
        ("X-Foo", "secret"),
        ("x-bar", "secret2"),
        ("X-Keep", "yes"),
        ("Authorization", "Bearer t"),
    ])
    with RawClient(sk.port("listen")) as c:
        c.send(raw)
        r = c.read_response()
    assert r.status == 200, r
    req = up.requests[0]
    for h in HOP_BY_HOP + ["x-foo", "x-bar"]:
        if h == "connection":
            # the proxy may set its own Connection: keep-alive, never the client's tokens
            for v in req.header_all("connection"):
                assert "x-foo" not in v.lower() and "x-bar" not in v.lower(), req.headers
            continue
        assert not req.has(h), f"{h} forwarded: {req.headers}"
    assert req.header("x-keep") == "yes"
    assert req.header("authorization") == "Bearer t"


def test_transfer_encoding_reframed(env):
    sk, up = env()
    with RawClient(sk.port("listen")) as c:
        c.send(build_request("POST", "/te", [("Transfer-Encoding", "chunked")],
                             b"4\r\nwiki\r\n5\r\npedia\r\n0\r\n\r\n"))
        r = c.read_response()
    assert r.status == 200, r
    req = up.requests[0]
    assert req.body == b"wikipedia"
    te = req.header_all("transfer-encoding")
    cl = req.header_all("content-length")
    # exactly one framing: the proxy's own, never both, never duplicated
    assert (len(te) == 1 and te[0].lower() == "chunked" and not cl) or \
        (not te and cl == ["9"]), req.headers


def test_response_headers_passed_back(env):
    def h(req):
        return Reply(headers=[("X-Custom", "abc"), ("Set-Cookie", "a=1"), ("Set-Cookie", "b=2"),
                              ("Cache-Control", "no-store"), ("Content-Type", "text/x-test")],
                     body=b"payload")
    sk, up = env(h)
    with RawClient(sk.port("listen")) as c:
        r = c.request("GET", "/")
    assert r.status == 200
    assert r.body == b"payload"
    assert r.header("x-custom") == "abc"
    assert r.header_all("set-cookie") == ["a=1", "b=2"]
    assert r.header("cache-control") == "no-store"
    assert r.header("content-type") == "text/x-test"


def test_response_status_and_reason_passed(env):
    sk, up = env(lambda req: Reply(status=418, body=b"teapot"))
    r = http_request(sk.port("listen"), "GET", "/")
    assert r.status == 418
    assert r.body == b"teapot"
    assert r.header("x-sidekick-reason") is None  # proxied, not a local reply


def test_upstream_5xx_passed_through_not_local(env):
    sk, up = env(lambda req: Reply(status=503, body=b"upstream says no"))
    r = http_request(sk.port("listen"), "GET", "/")
    assert r.status == 503
    assert r.body == b"upstream says no"
    assert r.header("x-sidekick-reason") is None


def test_head_204_304_have_no_body(env):
    def h(req):
        if req.path == "/204":
            return Reply(status=204, body=b"")
        if req.path == "/304":
            return Reply(status=304, body=b"", headers=[("ETag", '"x"')])
        return Reply(body=b"0123456789" * 10)
    sk, up = env(h)
    with RawClient(sk.port("listen")) as c:
        r = c.request("HEAD", "/head")
        assert r.status == 200 and r.body == b""
        assert r.header("content-length") in (None, "100"), r
        r = c.request("GET", "/204")
        assert r.status == 204 and r.body == b""
        assert r.header("transfer-encoding") is None
        r = c.request("GET", "/304", headers=[("If-None-Match", '"x"')])
        assert r.status == 304 and r.body == b""
        assert r.header("etag") == '"x"'
        # the connection is still in sync: a normal request works and nothing
        # stray was left in the stream
        r = c.request("GET", "/after")
        assert r.status == 200 and r.body == b"0123456789" * 10
        assert not c.buf
    assert [q.method for q in up.requests] == ["HEAD", "GET", "GET", "GET"]


def test_keepalive_1000_requests_few_upstream_connections(env):
    sk, up = env()
    deadline = time.monotonic() + 60
    with RawClient(sk.port("listen")) as c:
        for i in range(1000):
            assert time.monotonic() < deadline, f"too slow: {i} requests in 60 s"
            r = c.request("GET", f"/ka/{i}")
            assert r.status == 200, r
            assert r.body == f"up GET /ka/{i}".encode()
            assert (r.header("connection") or "").lower() != "close"
    assert len(up.requests) == 1000
    assert up.accepted <= 2, f"{up.accepted} upstream connections for 1000 sequential requests"


def test_pipelined_requests_answered_in_order(env):
    sk, up = env()
    paths = [f"/p{i}" for i in range(5)]
    data = b"".join(build_request("GET", p) for p in paths)
    data += build_request("POST", "/p-post", body=b"pipelined body")
    with RawClient(sk.port("listen")) as c:
        c.send(data)  # one write
        got = [c.read_response(timeout=10) for _ in range(6)]
    assert [r.status for r in got] == [200] * 6
    assert [r.body for r in got[:5]] == [f"up GET {p}".encode() for p in paths]
    assert got[5].body == b"up POST /p-post"
    assert [q.target for q in up.requests] == paths + ["/p-post"]
    assert up.requests[-1].body == b"pipelined body"


def test_expect_100_continue(env):
    sk, up = env()
    with RawClient(sk.port("listen")) as c:
        c.send(build_request("POST", "/upload", [("Expect", "100-continue"),
                                                  ("Content-Length", "11")]))
        interim = c.read_response(timeout=5, skip_1xx=False)
        assert interim.status == 100, f"expected 100 Continue first, got {interim!r}"
        c.send(b"hello world")
        r = c.read_response(timeout=10)
    assert r.status == 200, r
    assert r.body == b"up POST /upload"
    assert up.requests[0].body == b"hello world"


def test_chunked_request_body_forwarded(env):
    sk, up = env()
    chunks = [b"a" * 1, b"bc" * 100, b"\r\n0\r\n", b"z" * 5000]
    payload = b"".join(b"%x;ext=1\r\n" % len(ch) + ch + b"\r\n" if i == 0
                       else b"%X\r\n" % len(ch) + ch + b"\r\n" for i, ch in enumerate(chunks))
    payload += b"0\r\n\r\n"
    with RawClient(sk.port("listen")) as c:
        c.send(build_request("PUT", "/chunked", [("Transfer-Encoding", "chunked")]))
        time.sleep(0.1)
        # split across several writes, including mid chunk-size
        for i in range(0, len(payload), 777):
            c.send(payload[i:i + 777])
        r = c.read_response()
    assert r.status == 200, r
    req = up.requests[0]
    assert req.complete
    assert req.body == b"".join(chunks)


def test_chunked_response_forwarded(env):
    body = b"".join(b"line %d\n" % i for i in range(500))
    sk, up = env(lambda req: Reply(body=body, chunked=True, chunk_size=1000))
    with RawClient(sk.port("listen")) as c:
        r = c.request("GET", "/")
        assert r.status == 200
        assert r.body == body
        # the stream stays in sync after a chunked response
        r2 = c.request("GET", "/again")
        assert r2.body == body


def test_response_delimited_by_close_forwarded(env):
    body = b"until-close " * 1000
    sk, up = env(lambda req: Reply(body=body, no_length=True))
    with RawClient(sk.port("listen")) as c:
        r = c.request("GET", "/")
    assert r.status == 200
    assert r.body == body


def test_curl_get_and_post(env, tmp_path):
    sk, up = env()
    url = f"http://127.0.0.1:{sk.port('listen')}/curl/path?q=1"
    res = curl("-D", "-", url)
    assert res.returncode == 0, res.stderr
    assert b"200" in res.stdout.split(b"\r\n", 1)[0]
    assert res.stdout.endswith(b"up GET /curl/path?q=1")
    data = tmp_path / "data.bin"
    payload = bytes(range(256)) * 1000
    data.write_bytes(payload)
    res = curl("-o", str(tmp_path / "out"), "-w", "%{http_code}", "--data-binary", f"@{data}",
               "-H", "Content-Type: application/octet-stream", url)
    assert res.stdout == b"200", res
    assert up.requests[1].method == "POST"
    assert up.requests[1].body == payload
    assert up.requests[1].header("user-agent", ).startswith("curl/")


def test_curl_chunked_upload(env, tmp_path):
    sk, up = env()
    data = tmp_path / "data.bin"
    payload = b"x" * 100000 + b"end"
    data.write_bytes(payload)
    res = curl("-o", str(tmp_path / "out"), "-w", "%{http_code}", "-H",
               "Transfer-Encoding: chunked", "--data-binary", f"@{data}",
               f"http://127.0.0.1:{sk.port('listen')}/c")
    assert res.stdout == b"200", res
    assert up.requests[0].body == payload


def test_http10_client(env):
    sk, up = env()
    with RawClient(sk.port("listen")) as c:
        c.send(b"GET /old HTTP/1.0\r\nHost: x\r\n\r\n")
        r = c.read_response()
        assert r.status == 200
        assert r.body == b"up GET /old"
        assert c.wait_closed(3), "HTTP/1.0 without keep-alive must be closed"
    assert up.requests[0].target == "/old"


def test_response_hop_by_hop_headers_removed(env):
    def h(req):
        return Reply(headers=[("Connection", "x-up-private"), ("X-Up-Private", "1"),
                              ("Keep-Alive", "timeout=3"), ("Upgrade", "h2c"),
                              ("Proxy-Authenticate", "Basic"), ("X-Fine", "1")])
    sk, up = env(h)
    with RawClient(sk.port("listen")) as c:
        r = c.request("GET", "/")
    assert r.status == 200 and r.body == b"ok"
    for name in ["x-up-private", "keep-alive", "upgrade", "proxy-authenticate"]:
        assert r.header(name) is None, f"{name} passed back: {r!r}"
    for v in r.header_all("connection"):
        assert "x-up-private" not in v.lower(), r
    assert r.header("x-fine") == "1"


def test_header_bytes_and_repeats_forwarded_exactly(env):
    sk, up = env()
    with RawClient(sk.port("listen")) as c:
        c.send(b"GET /bytes HTTP/1.1\r\nHost: a\r\nX-Latin: caf\xe9 \xff\r\n"
               b"X-Multi: 1\r\nX-Other: z\r\nX-Multi: 2\r\n\r\n")
        r = c.read_response()
    assert r.status == 200
    req = up.requests[0]
    assert req.header("x-latin").encode("latin-1") == b"caf\xe9 \xff"
    assert req.header_all("x-multi") == ["1", "2"] or req.header_all("x-multi") == ["1, 2"]
    raw = up.raw_bytes()
    assert b"caf\xe9 \xff" in raw


def test_304_with_content_length_has_no_body(env):
    def h(req):
        if req.path == "/304":
            return Reply(status=304, body=b"", headers=[("Content-Length", "100"), ("ETag", '"e"')])
        return Reply(body=b"next")
    sk, up = env(h)
    with RawClient(sk.port("listen")) as c:
        r = c.request("GET", "/304")
        assert r.status == 304 and r.body == b""
        r = c.request("GET", "/next", )
        assert r.status == 200 and r.body == b"next", r
        assert not c.buf


def test_upstream_interim_1xx_then_final(env):
    sk, up = env(lambda req: Reply(raw=b"HTTP/1.1 103 Early Hints\r\nLink: </s.css>\r\n\r\n"
                                       b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nfinal",
                                   raw_keep_open=True))
    with RawClient(sk.port("listen")) as c:
        r = c.request("GET", "/")
    assert r.status == 200 and r.body == b"final", r


def test_chunked_response_with_trailers(env):
    def h(req):
        if req.path == "/trailers":
            return Reply(raw=b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
                             b"3\r\nabc\r\n4;ext=1\r\ndefg\r\n0\r\nX-Checksum: 42\r\n\r\n",
                         raw_keep_open=True)
        return Reply(body=b"second")
    sk, up = env(h)
    with RawClient(sk.port("listen")) as c:
        r = c.request("GET", "/trailers")
        assert r.status == 200 and r.body == b"abcdefg", r
        r = c.request("GET", "/second")
        assert r.status == 200 and r.body == b"second", r


def test_many_pipelined_requests(env):
    sk, up = env()
    n = 50
    data = b"".join(build_request("GET", f"/pp{i}") for i in range(n))
    with RawClient(sk.port("listen")) as c:
        c.send(data)
        got = [c.read_response(timeout=10) for _ in range(n)]
    assert [r.body for r in got] == [f"up GET /pp{i}".encode() for i in range(n)]
    assert [q.target for q in up.requests] == [f"/pp{i}" for i in range(n)]


def test_framing_header_names_case_insensitive(env):
    sk, up = env()
    with RawClient(sk.port("listen")) as c:
        c.send(b"POST /uc HTTP/1.1\r\nHost: a\r\nTRANSFER-ENCODING: Chunked\r\n\r\n"
               b"5\r\nhello\r\n0\r\n\r\n")
        r1 = c.read_response()
        c.send(b"POST /lc HTTP/1.1\r\nhost: a\r\ncontent-length: 3\r\n\r\nabc")
        r2 = c.read_response()
    assert r1.status == 200 and r2.status == 200
    assert [q.body for q in up.requests] == [b"hello", b"abc"]


def test_large_response_headers_passed(env):
    """A 16 kB response header is within the proxy's 64 KiB response head
    limit (core/http/h1_client.c): passed through intact."""
    big = "v" * 16000
    sk, up = env(lambda req: Reply(headers=[("X-Big", big)], body=b"b"))
    r = http_request(sk.port("listen"), "GET", "/")
    assert r.status == 200, r
    assert r.header("x-big") == big and r.body == b"b"


@pytest.mark.parametrize("size", [70000, 200000])
def test_response_head_over_limit_502(env, size):
    """A response head over 64 KiB is refused as an invalid upstream response
    (nginx: "upstream sent too big header", 502); nothing of it reaches the
    client."""
    sk, up = env(lambda req: Reply(headers=[("X-Big", "v" * size)], body=b"b"))
    r = http_request(sk.port("listen"), "GET", "/big")
    assert r.status == 502 and r.header("x-sidekick-reason") == "upstream_protocol_error", r
    assert r.header("x-big") is None and b"vvvv" not in r.body
    assert [q.target for q in up.requests] == ["/big"]


def test_request_body_streams_before_complete(env):
    """The upstream gets the head and the first body bytes while the client
    is still sending: bodies are streamed, not buffered whole."""
    sk, up = env()
    with RawClient(sk.port("listen")) as c:
        c.send(b"POST /stream HTTP/1.1\r\nHost: a\r\nContent-Length: 20000\r\n\r\n" + b"s" * 10000)
        assert up.wait_requests(1, 3), "upstream saw nothing before the body was complete"
        assert wait_for(lambda: up.total_bytes > 10000, 3), up.total_bytes
        c.send(b"t" * 10000)
        r = c.read_response()
    assert r.status == 200
    assert up.requests[0].body == b"s" * 10000 + b"t" * 10000


def test_response_body_streams_before_complete(env):
    sk, up = env(lambda req: Reply(raw_parts=[
        (0, b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nfirst"),
        (1.5, b"-last")]))
    with RawClient(sk.port("listen")) as c:
        c.send(build_request("GET", "/"))
        t0 = time.monotonic()
        c.sock.settimeout(0.1)
        while b"first" not in c.buf and time.monotonic() - t0 < 1.2:
            try:
                d = c.sock.recv(65536)
            except socket.timeout:
                continue
            if not d:
                break
            c.buf += d
        assert b"first" in c.buf, f"first part not forwarded early: {bytes(c.buf)!r}"
        r = c.read_response(timeout=5)
    assert r.body == b"first-last"


def test_workers_2(sidekick, upstream):
    up = upstream(echo_handler("up"))
    sk = sidekick(sk_ini(BODY, workers=2), up=up.port)
    for i in range(40):
        r = http_request(sk.port("listen"), "GET", f"/w{i}")
        assert r.status == 200 and r.body == f"up GET /w{i}".encode()
    assert sorted(q.target for q in up.requests) == sorted(f"/w{i}" for i in range(40))


def test_request_id_kept_when_long(env):
    """Real-world ids are often longer than a UUID (trace headers, prefixed
    hashes): the contract says the client's x-request-id is kept."""
    sk, up = env()
    rid = "Root=1-5759e988-bd862e3fe1be46a994272793;Parent=53995c3f42cd8ad8;Sampled=1"
    assert len(rid) > 40
    http_request(sk.port("listen"), "GET", "/", headers={"X-Request-Id": rid})
    assert up.requests[0].header_all("x-request-id") == [rid]


def test_client_connection_close_not_propagated(env):
    """Connection: close from the client closes the client connection only;
    the upstream connection stays pooled."""
    sk, up = env()
    with RawClient(sk.port("listen")) as c:
        r = c.request("GET", "/1", headers=[("Connection", "close")])
        assert r.status == 200
        assert (r.header("connection") or "").lower() == "close"
        assert c.wait_closed(3)
    for v in up.requests[0].header_all("connection"):
        assert "close" not in v.lower(), up.requests[0].headers
    assert http_request(sk.port("listen"), "GET", "/2").status == 200
    assert up.accepted == 1


def test_post_empty_body_and_get_with_body(env):
    sk, up = env()
    with RawClient(sk.port("listen")) as c:
        c.send(b"POST /empty HTTP/1.1\r\nHost: a\r\nContent-Length: 0\r\n\r\n")
        assert c.read_response().status == 200
        c.send(b"GET /withbody HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n\r\nhello")
        assert c.read_response().status == 200
        c.send(b"GET /after HTTP/1.1\r\nHost: a\r\n\r\n")
        assert c.read_response().body == b"up GET /after"
    reqs = up.requests
    assert [(q.target, q.body) for q in reqs] == [("/empty", b""), ("/withbody", b"hello"),
                                                   ("/after", b"")]
    assert reqs[0].header("content-length") == "0" or not reqs[0].has("transfer-encoding")


def test_concurrent_clients_get_their_own_responses(sidekick, upstream):
    import threading
    up = upstream(lambda req: Reply(delay=0.002 * (hash(req.target) % 5),
                                    body=f"echo {req.target} {req.body_len}".encode()))
    sk = sidekick(sk_ini(BODY, workers=2), up=up.port)
    errors = []

    def client(n):
        try:
            with RawClient(sk.port("listen")) as c:
                for i in range(20):
                    body = b"b" * (n * 7 + i)
                    r = c.request("POST", f"/c{n}/{i}", body=body)
                    if r.status != 200 or r.body != f"echo /c{n}/{i} {len(body)}".encode():
                        errors.append((n, i, r))
        except Exception as e:
            errors.append((n, repr(e)))
    ts = [threading.Thread(target=client, args=(n,)) for n in range(20)]
    for t in ts:
        t.start()
    for t in ts:
        t.join(60)
    assert not errors, errors[:5]
    assert len(up.requests) == 400


def test_ipv6_listener(sidekick, upstream):
    import socket as s_
    try:
        t = s_.socket(s_.AF_INET6, s_.SOCK_STREAM)
        t.bind(("::1", 0))
        t.close()
    except OSError:
        pytest.skip("no IPv6 loopback")
    up = upstream(echo_handler("up"))
    sk = sidekick(sk_ini(BODY.replace("address = 127.0.0.1:{listen}", "address = [::1]:{listen}")),
                  up=up.port)
    c = s_.create_connection(("::1", sk.port("listen")), timeout=5)
    c.sendall(b"GET /v6 HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    data = b""
    while True:
        d = c.recv(65536)
        if not d:
            break
        data += d
    c.close()
    assert data.startswith(b"HTTP/1.1 200"), data
    assert data.endswith(b"up GET /v6")
    assert up.requests[0].header("x-forwarded-for") == "::1"


def test_x_forwarded_for_two_client_headers(env):
    sk, up = env()
    with RawClient(sk.port("listen")) as c:
        c.send(b"GET / HTTP/1.1\r\nHost: a\r\nX-Forwarded-For: 1.2.3.4\r\n"
               b"X-Forwarded-For: 5.6.7.8\r\n\r\n")
        assert c.read_response().status == 200
    xff = up.requests[0].header_all("x-forwarded-for")
    joined = ", ".join(xff).replace(" ", "")
    assert joined == "1.2.3.4,5.6.7.8,127.0.0.1", xff
