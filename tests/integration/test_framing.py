"""Request framing errors (raw sockets): 400/501 bad_request, connection
closed, and the upstream receives nothing at all."""

import time

import pytest

from harness import RawClient, assert_local_reply, build_request, echo_handler, raw_exchange, sk_ini

BODY = """\
[listener main]
address = 127.0.0.1:{listen}

[route all]
listener = main
cluster = up

[cluster up]
endpoints = 127.0.0.1:{up}
"""


@pytest.fixture
def env(sidekick, upstream):
    up = upstream(echo_handler("up"))
    sk = sidekick(sk_ini(BODY), up=up.port)
    return sk, up


BAD_400 = {
    "cl_and_te": b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n"
                 b"Transfer-Encoding: chunked\r\n\r\n0\r\n\r\nGET /smuggled HTTP/1.1\r\nHost: x\r\n\r\n",
    "two_content_lengths": b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n"
                           b"Content-Length: 6\r\n\r\nhello!",
    "content_length_list": b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 5, 6\r\n\r\nhello!",
    "content_length_not_a_number": b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 5x\r\n\r\nhello",
    "content_length_negative": b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: -1\r\n\r\n",
    "invalid_chunk_size": b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
                          b"zz\r\nhello\r\n0\r\n\r\n",
    "obs_fold": b"GET / HTTP/1.1\r\nHost: x\r\nX-Folded: a\r\n  b\r\n\r\n",
    "garbage_request_line": b"THIS IS NOT HTTP\r\n\r\n",
    "binary_garbage": b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + b"\x00" * 40 + b"\r\n\r\n",
    "space_before_colon": b"GET / HTTP/1.1\r\nHost: x\r\nX-Bad : 1\r\n\r\n",
    "tab_in_request_target": b"GET /a\tb HTTP/1.1\r\nHost: x\r\n\r\n",
    "space_in_request_target": b"GET /a b HTTP/1.1\r\nHost: x\r\n\r\n",
    "chunk_size_overflow": b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
                           b"ffffffffffffffffffff\r\nabc\r\n0\r\n\r\n",
    "chunk_data_without_crlf": b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
                               b"3\r\nabcX\r\n0\r\n\r\n",
    "content_length_plus_sign": b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: +5\r\n\r\nhello",
    "nul_in_header_value": b"GET / HTTP/1.1\r\nHost: x\r\nX-Nul: a\x00b\r\n\r\n",
    "invalid_header_name_char": b"GET / HTTP/1.1\r\nHost: x\r\nX@Y: 1\r\n\r\n",
    "control_char_in_method": b"G\x01T / HTTP/1.1\r\nHost: x\r\n\r\n",
    "bare_cr_in_header_value": b"GET / HTTP/1.1\r\nHost: x\r\nX-A: a\rb\r\n\r\n",
}


@pytest.mark.parametrize("name", sorted(BAD_400))
def test_malformed_request_400(env, name):
    sk, up = env
    resp, closed = raw_exchange(sk.port("listen"), BAD_400[name])
    assert_local_reply(resp, 400, "bad_request")
    assert closed, "connection must be closed after a 400"
    time.sleep(0.2)
    assert up.total_bytes == 0, f"upstream received {up.raw_bytes()!r}"
    assert up.requests == []


# A transfer coding other than chunked: 501 bad_request and a close, whether
# chunked is last or missing. RFC 9112 6.1 says 501 for a coding the server
# does not understand; 6.3 asks 400 when chunked is not final, but the body
# cannot be delimited either way and the close is what matters. nginx answers
# 501 to both ("unknown Transfer-Encoding"), and so does the contract's table.
@pytest.mark.parametrize("te", ["gzip, chunked", "foo, chunked", "gzip", "foo"])
def test_unsupported_transfer_coding(env, te):
    sk, up = env
    data = (b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: " + te.encode() +
            b"\r\n\r\n5\r\nhello\r\n0\r\n\r\n")
    resp, closed = raw_exchange(sk.port("listen"), data)
    assert resp is not None, "no response"
    assert_local_reply(resp, 501, "bad_request")
    assert closed, "the body cannot be delimited: the connection must be closed"
    time.sleep(0.2)
    assert up.total_bytes == 0, f"upstream received {up.raw_bytes()!r}"


def test_unknown_http_version(env):
    """HTTP/9.7: 400 bad_request (the parser knows 1.0 and 1.1 only; the
    contract has no 505 row); never proxied."""
    sk, up = env
    resp, closed = raw_exchange(sk.port("listen"), b"GET / HTTP/9.7\r\nHost: x\r\n\r\n")
    assert_local_reply(resp, 400, "bad_request")
    assert closed
    time.sleep(0.2)
    assert up.total_bytes == 0


def test_two_transfer_encoding_lines(env):
    """chunked then gzip on two lines = "chunked, gzip": chunked is not last."""
    sk, up = env
    data = (b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n"
            b"Transfer-Encoding: gzip\r\n\r\n0\r\n\r\n")
    resp, closed = raw_exchange(sk.port("listen"), data)
    assert_local_reply(resp, 501, "bad_request")
    assert closed
    time.sleep(0.2)
    assert up.total_bytes == 0


def test_bad_request_after_good_one_on_same_connection(env):
    """A keep-alive connection: the first request is served, the second is
    malformed → 400 and close; the upstream only ever sees the first."""
    sk, up = env
    with RawClient(sk.port("listen")) as c:
        r = c.request("GET", "/ok")
        assert r.status == 200
        c.send(BAD_400["cl_and_te"])
        r = c.read_response()
        assert_local_reply(r, 400, "bad_request")
        assert c.wait_closed(3)
    time.sleep(0.2)
    assert [q.target for q in up.requests] == ["/ok"]
    assert b"smuggled" not in up.raw_bytes()


def test_valid_requests_still_work(env):
    """Control: the same listener serves well-formed requests."""
    sk, up = env
    resp, _ = raw_exchange(sk.port("listen"), build_request("POST", "/", body=b"hello"))
    assert resp.status == 200
    assert up.requests[0].body == b"hello"


@pytest.mark.parametrize("name,data", [
    ("missing_host", b"GET / HTTP/1.1\r\n\r\n"),
    ("duplicate_host", b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n"),
])
def test_host_rules_400(env, name, data):
    """RFC 9112 3.2: an HTTP/1.1 request without Host, or with two, is 400."""
    sk, up = env
    resp, closed = raw_exchange(sk.port("listen"), data)
    assert_local_reply(resp, 400, "bad_request")
    assert closed
    time.sleep(0.2)
    assert up.total_bytes == 0


def test_smuggling_after_chunked_body_is_separate_request(env):
    """Bytes after the terminating chunk are the next request, parsed by the
    proxy, not passed along inside the first one's body."""
    sk, up = env
    data = (b"POST /first HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
            b"3\r\nabc\r\n0\r\n\r\nGET /second HTTP/1.1\r\nHost: x\r\n\r\n")
    with RawClient(sk.port("listen")) as c:
        c.send(data)
        r1 = c.read_response()
        r2 = c.read_response()
    assert r1.body == b"up POST /first" and r2.body == b"up GET /second"
    assert [(q.target, q.body) for q in up.requests] == [("/first", b"abc"), ("/second", b"")]
