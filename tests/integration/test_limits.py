"""Listener limits: header_timeout, max_header_bytes, max_headers,
max_body_bytes, max_connections, idle_timeout, URI length."""

import select
import socket
import time

import pytest

from harness import (ConnectionClosed, RawClient, assert_local_reply, build_request,
                     echo_handler, raw_exchange, sk_ini)


def config(**limits):
    lines = "".join(f"{k} = {v}\n" for k, v in limits.items())
    return sk_ini(f"""
[listener main]
address = 127.0.0.1:{{listen}}
{lines}
[route all]
listener = main
cluster = up

[cluster up]
endpoints = 127.0.0.1:{{up}}
""")


@pytest.fixture
def env(sidekick, upstream):
    def make(**limits):
        up = upstream(echo_handler("up"), store_limit=1 << 20)
        sk = sidekick(config(**limits), up=up.port)
        return sk, up
    return make


def test_header_timeout_408(env):
    sk, up = env(header_timeout="500ms")
    with RawClient(sk.port("listen")) as c:
        t0 = time.monotonic()
        c.send(b"GET / HTTP/1.1\r\nHost: x\r\nX-Half: ")
        r = c.read_response(timeout=5)
        elapsed = time.monotonic() - t0
        assert_local_reply(r, 408, "header_timeout")
        assert elapsed < 3, f"408 after {elapsed:.2f}s"
        assert c.wait_closed(3)
    assert up.total_bytes == 0


def test_header_timeout_is_for_the_whole_head(env):
    """Trickling one byte at a time does not extend the deadline."""
    sk, up = env(header_timeout="500ms")
    head = b"GET / HTTP/1.1\r\nHost: x\r\nX-Trickle: " + b"a" * 100
    got = None
    with RawClient(sk.port("listen")) as c:
        t0 = time.monotonic()
        for i, byte in enumerate(head):
            if time.monotonic() - t0 > 4:
                break
            try:
                c.send(bytes([byte]))
            except (BrokenPipeError, ConnectionResetError):
                break
            time.sleep(0.05)
        try:
            got = c.read_response(timeout=3)
        except (ConnectionClosed, ConnectionResetError, socket.timeout):
            pass
    elapsed = time.monotonic() - t0
    assert got is not None, "no 408 sent"
    assert_local_reply(got, 408, "header_timeout")
    assert elapsed < 4.5
    assert up.total_bytes == 0


def test_header_timeout_not_hit_by_fast_request(env):
    sk, up = env(header_timeout="500ms")
    with RawClient(sk.port("listen")) as c:
        c.send(b"GET / HTTP/1.1\r\n")
        time.sleep(0.2)
        c.send(b"Host: x\r\n\r\n")
        r = c.read_response()
        assert r.status == 200


def test_max_header_bytes_431(env):
    sk, up = env(max_header_bytes="1k")
    resp, closed = raw_exchange(sk.port("listen"),
                                build_request("GET", "/", [("X-Big", "v" * 2048)]))
    assert_local_reply(resp, 431, "headers_too_large")
    time.sleep(0.2)
    assert up.total_bytes == 0
    # control: a head under the limit passes
    resp, _ = raw_exchange(sk.port("listen"), build_request("GET", "/", [("X-Small", "v" * 500)]))
    assert resp.status == 200


def test_max_header_bytes_many_small_headers(env):
    sk, up = env(max_header_bytes="1k")
    hdrs = [(f"X-H{i}", "x" * 40) for i in range(40)]  # ~2 KB in total
    resp, _ = raw_exchange(sk.port("listen"), build_request("GET", "/", hdrs))
    assert_local_reply(resp, 431, "headers_too_large")
    assert up.total_bytes == 0


def test_max_headers_431(env):
    sk, up = env(max_headers=5)
    hdrs = [(f"X-H{i}", "1") for i in range(10)]
    resp, _ = raw_exchange(sk.port("listen"), build_request("GET", "/", hdrs))
    assert_local_reply(resp, 431, "headers_too_large")
    time.sleep(0.2)
    assert up.total_bytes == 0
    # control: Host + 3 = 4 headers pass
    resp, _ = raw_exchange(sk.port("listen"),
                           build_request("GET", "/", [(f"X-H{i}", "1") for i in range(3)]))
    assert resp.status == 200, resp


def test_max_body_bytes_content_length_413(env):
    sk, up = env(max_body_bytes="1k")
    resp, _ = raw_exchange(sk.port("listen"), build_request("POST", "/", body=b"x" * 2048))
    assert_local_reply(resp, 413, "body_too_large")
    time.sleep(0.2)
    assert not up.complete_requests, "upstream received the full body"
    # control: a body at the limit passes
    resp, _ = raw_exchange(sk.port("listen"), build_request("POST", "/", body=b"y" * 1024))
    assert resp.status == 200, resp
    assert up.complete_requests[-1].body == b"y" * 1024


def test_max_body_bytes_chunked_413(env):
    sk, up = env(max_body_bytes="1k")
    with RawClient(sk.port("listen")) as c:
        c.send(build_request("POST", "/", [("Transfer-Encoding", "chunked")]))
        resp = None
        try:
            for i in range(4):  # 4 x 512 bytes > 1k
                c.send(b"200\r\n" + b"z" * 512 + b"\r\n")
                time.sleep(0.1)
                if select.select([c.sock], [], [], 0)[0]:
                    break  # the answer is there: stop sending (avoid a RST race)
            else:
                c.send(b"0\r\n\r\n")
        except (BrokenPipeError, ConnectionResetError):
            pass
        try:
            resp = c.read_response(timeout=5)
        except (ConnectionClosed, ConnectionResetError):
            pass
    assert resp is not None, "connection closed without a 413"
    assert_local_reply(resp, 413, "body_too_large")
    time.sleep(0.2)
    assert not up.complete_requests, "upstream received the full body"
    for q in up.requests:
        assert q.body_len <= 1024


def test_max_connections(env):
    sk, up = env(max_connections=2)
    port = sk.port("listen")
    c1, c2 = RawClient(port), RawClient(port)
    try:
        assert c1.request("GET", "/1").status == 200
        assert c2.request("GET", "/2").status == 200
        served = False
        try:
            c3 = RawClient(port, timeout=2)
        except OSError:
            c3 = None  # refused outright: fine
        if c3 is not None:
            with c3:
                try:
                    c3.send(build_request("GET", "/3"))
                    r = c3.read_response(timeout=1.5)
                    served = r.status == 200
                    if not served:
                        assert r.status == 503, r
                except (ConnectionClosed, ConnectionResetError, BrokenPipeError, socket.timeout):
                    pass
        assert not served, "a third connection was served with max_connections = 2"
        assert "/3" not in [q.target for q in up.requests]
        # the first two are still fine
        assert c1.request("GET", "/1b").status == 200
        # freeing a slot lets a new connection in
        c2.close()

        def new_conn_served():
            with RawClient(port, timeout=1) as c4:
                return c4.request("GET", "/4").status == 200
        deadline = time.monotonic() + 5
        ok = False
        while time.monotonic() < deadline and not ok:
            try:
                ok = new_conn_served()
            except (OSError, ConnectionClosed):
                time.sleep(0.1)
        assert ok, "no new connection served after one closed"
    finally:
        c1.close()
        c2.close()


def test_idle_timeout_closes_keepalive(env):
    sk, up = env(idle_timeout="500ms")
    with RawClient(sk.port("listen")) as c:
        assert c.request("GET", "/").status == 200
        t0 = time.monotonic()
        assert c.wait_closed(4), "idle connection not closed"
        elapsed = time.monotonic() - t0
        assert 0.2 < elapsed < 3.5, f"closed after {elapsed:.2f}s"
        assert not c.buf, f"unexpected bytes before close: {bytes(c.buf)!r}"


def test_idle_timeout_not_while_active(env):
    sk, up = env(idle_timeout="500ms")
    with RawClient(sk.port("listen")) as c:
        for i in range(6):  # 6 x 0.3 s > idle_timeout, but never idle that long
            assert c.request("GET", f"/{i}").status == 200
            time.sleep(0.3)


def test_long_uri(env):
    sk, up = env(max_header_bytes="1k")
    resp, _ = raw_exchange(sk.port("listen"), build_request("GET", "/" + "u" * 3000))
    assert_local_reply(resp, 414, "uri_too_long")
    time.sleep(0.2)
    assert up.total_bytes == 0


def test_long_uri_is_414(env):
    """Strict form of test_long_uri: the contract says 414 for a long URI."""
    sk, up = env(max_header_bytes="1k")
    resp, _ = raw_exchange(sk.port("listen"), build_request("GET", "/" + "u" * 3000))
    assert_local_reply(resp, 414, "uri_too_long")


def test_expect_continue_too_large_gets_413_not_100(env):
    sk, up = env(max_body_bytes="1k")
    with RawClient(sk.port("listen")) as c:
        c.send(build_request("POST", "/", [("Expect", "100-continue"),
                                            ("Content-Length", "4096")]))
        r = c.read_response(timeout=5, skip_1xx=False)
        assert_local_reply(r, 413, "body_too_large")
    assert up.total_bytes == 0


def test_header_timeout_on_second_request(env):
    """A kept-alive connection that starts a second head but never finishes
    it gets 408 too."""
    sk, up = env(header_timeout="500ms")
    with RawClient(sk.port("listen")) as c:
        assert c.request("GET", "/first").status == 200
        c.send(b"GET /second HTTP/1.1\r\nHost: x\r\n")
        t0 = time.monotonic()
        try:
            r = c.read_response(timeout=5)
        except (ConnectionClosed, ConnectionResetError):
            r = None
        assert r is not None, "closed without a 408"
        assert_local_reply(r, 408, "header_timeout")
        assert time.monotonic() - t0 < 3
    assert [q.target for q in up.requests] == ["/first"]


def test_max_headers_boundary(env):
    sk, up = env(max_headers=5)
    ok, _ = raw_exchange(sk.port("listen"),
                         build_request("GET", "/", [(f"X-H{i}", "1") for i in range(4)]))
    assert ok.status == 200, "Host + 4 = 5 headers must pass with max_headers = 5"
    over, _ = raw_exchange(sk.port("listen"),
                           build_request("GET", "/", [(f"X-H{i}", "1") for i in range(5)]))
    assert_local_reply(over, 431, "headers_too_large")


def test_max_body_bytes_boundary(env):
    sk, up = env(max_body_bytes="1k")
    resp, _ = raw_exchange(sk.port("listen"), build_request("POST", "/", body=b"x" * 1025))
    assert_local_reply(resp, 413, "body_too_large")
    with RawClient(sk.port("listen")) as c:
        c.send(build_request("POST", "/", [("Transfer-Encoding", "chunked")],
                             b"400\r\n" + b"c" * 1024 + b"\r\n0\r\n\r\n"))
        r = c.read_response()
    assert r.status == 200, "a chunked body of exactly 1k must pass"
    assert up.complete_requests[-1].body == b"c" * 1024


def test_header_timeout_does_not_cover_the_body(env):
    sk, up = env(header_timeout="500ms")
    with RawClient(sk.port("listen")) as c:
        c.send(b"POST /slowbody HTTP/1.1\r\nHost: x\r\nContent-Length: 6\r\n\r\n")
        for piece in (b"ab", b"cd", b"ef"):
            time.sleep(0.4)  # 1.2 s in total > header_timeout
            c.send(piece)
        r = c.read_response(timeout=5)
    assert r.status == 200, r
    assert up.requests[0].body == b"abcdef"


def test_idle_timeout_not_during_slow_upstream(sidekick, upstream):
    """idle_timeout is for idle connections: a request waiting for a slow
    upstream is not idle."""
    from harness import Reply
    up = upstream(lambda req: Reply(delay=1.5, body=b"slow but fine"))
    sk = sidekick(config(idle_timeout="500ms"), up=up.port)
    with RawClient(sk.port("listen")) as c:
        r = c.request("GET", "/")
    assert r.status == 200 and r.body == b"slow but fine", r


def test_idle_timeout_not_during_slow_download(sidekick, upstream):
    from harness import Reply
    up = upstream(lambda req: Reply(raw_parts=[
        (0, b"HTTP/1.1 200 OK\r\nContent-Length: 6\r\n\r\nab"), (0.6, b"cd"), (0.6, b"ef")]))
    sk = sidekick(config(idle_timeout="500ms"), up=up.port)
    with RawClient(sk.port("listen")) as c:
        r = c.request("GET", "/")
    assert r.status == 200 and r.body == b"abcdef", r
