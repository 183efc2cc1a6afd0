"""100 MB bodies stream through with bounded memory (VmHWM < 30 MB)."""

import hashlib
import http.client
import os
import time

import pytest

from harness import RawClient, Reply, build_request, iter_pattern, pattern_sha256, sk_ini

SIZE = 100 * 1024 * 1024
HWM_LIMIT_KB = 30 * 1024
# sanitizer builds use several times more memory: the bound does not apply
SANITIZED = bool(os.environ.get("SIDEKICK_SANITIZED"))

BODY = """\
[listener main]
address = 127.0.0.1:{listen}

[route all]
listener = main
cluster = up
timeout = 120s

[cluster up]
endpoints = 127.0.0.1:{up}
"""


def check_hwm(sk):
    hwm = sk.vmhwm_kb()
    print(f"sidekick VmHWM = {hwm} kB")
    if not SANITIZED:
        assert hwm < HWM_LIMIT_KB, f"VmHWM {hwm} kB >= {HWM_LIMIT_KB} kB"


@pytest.fixture(scope="module")
def expected_sha():
    return pattern_sha256(SIZE)


def test_upload_100mb_chunked(sidekick, upstream, expected_sha):
    up = upstream(lambda req: Reply(body=f"{req.body_len} {req.body_sha256}".encode()),
                  store_limit=0, raw_limit=4096)
    sk = sidekick(sk_ini(BODY), up=up.port)
    deadline = time.monotonic() + 120
    with RawClient(sk.port("listen"), timeout=60) as c:
        c.send(build_request("POST", "/upload", [("Transfer-Encoding", "chunked"),
                                                  ("Content-Type", "application/octet-stream")]))
        for piece in iter_pattern(SIZE):
            assert time.monotonic() < deadline, "upload too slow"
            c.send(b"%x\r\n" % len(piece) + piece + b"\r\n")
        c.send(b"0\r\n\r\n")
        r = c.read_response(timeout=60)
    assert r.status == 200, r
    assert r.body == f"{SIZE} {expected_sha}".encode()
    [req] = up.requests
    assert req.complete and req.body_len == SIZE and req.body_sha256 == expected_sha
    check_hwm(sk)


def test_upload_100mb_content_length(sidekick, upstream, expected_sha):
    up = upstream(lambda req: Reply(body=f"{req.body_len} {req.body_sha256}".encode()),
                  store_limit=0, raw_limit=4096)
    sk = sidekick(sk_ini(BODY), up=up.port)
    c = http.client.HTTPConnection("127.0.0.1", sk.port("listen"), timeout=60)
    try:
        c.request("PUT", "/blob", body=iter_pattern(SIZE),
                  headers={"Content-Length": str(SIZE)})
        r = c.getresponse()
        body = r.read()
    finally:
        c.close()
    assert r.status == 200
    assert body == f"{SIZE} {expected_sha}".encode()
    [req] = up.requests
    assert req.header("content-length") == str(SIZE)
    check_hwm(sk)


def test_download_100mb_slow_reader(sidekick, upstream, expected_sha):
    up = upstream(lambda req: Reply(stream_size=SIZE))
    sk = sidekick(sk_ini(BODY), up=up.port)
    c = http.client.HTTPConnection("127.0.0.1", sk.port("listen"), timeout=60)
    try:
        c.request("GET", "/big")
        r = c.getresponse()
        assert r.status == 200
        assert r.getheader("content-length") in (None, str(SIZE))
        time.sleep(1.0)  # a slow reader: the proxy must apply back-pressure
        mid_hwm = sk.vmhwm_kb()
        h = hashlib.sha256()
        n = 0
        deadline = time.monotonic() + 120
        while True:
            piece = r.read(1 << 18)
            if not piece:
                break
            n += len(piece)
            h.update(piece)
            assert time.monotonic() < deadline, "download too slow"
    finally:
        c.close()
    assert n == SIZE
    assert h.hexdigest() == expected_sha
    print(f"VmHWM after the 1 s pause: {mid_hwm} kB")
    check_hwm(sk)


def test_upload_then_download_same_process(sidekick, upstream, expected_sha):
    """Both directions on one process; VmHWM stays bounded after both."""
    size = 20 * 1024 * 1024
    sha = pattern_sha256(size)

    def h(req):
        if req.method == "POST":
            return Reply(body=f"{req.body_len} {req.body_sha256}".encode())
        return Reply(stream_size=size)
    up = upstream(h, store_limit=0, raw_limit=4096)
    sk = sidekick(sk_ini(BODY), up=up.port)
    with RawClient(sk.port("listen"), timeout=60) as c:
        c.send(build_request("POST", "/up", [("Transfer-Encoding", "chunked")]))
        for piece in iter_pattern(size):
            c.send(b"%x\r\n" % len(piece) + piece + b"\r\n")
        c.send(b"0\r\n\r\n")
        r = c.read_response(timeout=60)
        assert r.body == f"{size} {sha}".encode()
        r = c.request("GET", "/down")
        assert len(r.body) == size and hashlib.sha256(r.body).hexdigest() == sha
    check_hwm(sk)
