"""The plugins' asynchronous HTTP client (plugin ABI 1.1: http_start,
http_cancel, http_strerror), through the fx_http fixture.

fx_http starts the calls of its config on the main loop and appends what
happened (start, head, body pieces, done, cancel, destroy) as JSON lines to
a file, which these tests read. Upstreams are real sockets on 127.0.0.1:
the harness's recording Upstream, or a ManualServer whose every byte the
test sends by hand (to prove that body pieces arrive before the response
ends, and to hold a call open across a reload or SIGTERM).
"""

import json
import os
import signal
import socket
import threading

import pytest

from harness import PLUGIN_DIR, Reply, free_port, http_request, missing_fixtures, run_sidekick, sk_ini, wait_for

SK_HTTP_OK = 0
SK_HTTP_ECONNECT = -1
SK_HTTP_ETIMEOUT = -2
SK_HTTP_ETOOLARGE = -3
SK_HTTP_ECANCELLED = -4
SK_HTTP_EINVAL = -6
SK_HTTP_EUNSUPPORTED = -8
SK_HTTP_ETHREAD = -9

WAIT = 15.0  # generous: the sanitizer build is slow; never a timing assertion


@pytest.fixture(autouse=True)
def _fixtures_built():
    missing = missing_fixtures(["fx_http"])
    if missing:
        pytest.fail(f"fixture plugins not built in {PLUGIN_DIR}: {missing} (set SIDEKICK_PLUGIN_DIR)")


def ini(body: str) -> str:
    return sk_ini(body, workers=1, extra=f"plugin_dir = {PLUGIN_DIR}")


def records(path):
    """The fixture's records so far (a partial last line is ignored)."""
    try:
        data = open(path, "rb").read()
    except FileNotFoundError:
        return []
    out = []
    for line in data.split(b"\n"):
        if line.strip():
            try:
                out.append(json.loads(line))
            except ValueError:
                pass
    return out


def events(path, fetch=None, ev=None):
    return [r for r in records(path) if (fetch is None or r.get("fetch") == fetch)
            and (ev is None or r["ev"] == ev)]


def wait_event(path, fetch, ev, n=1):
    ok = wait_for(lambda: len(events(path, fetch, ev)) >= n, WAIT)
    assert ok, f"no {n} x {ev} for {fetch} in {records(path)}"
    return events(path, fetch, ev)


def body_of(path, fetch):
    return "".join(r["data"] for r in events(path, fetch, "body")).encode("latin-1")


def header(rec, name):
    vals = [v for n, v in rec["headers"] if n.lower() == name.lower()]
    return vals[0] if vals else None


# --------------------------------------------------------------------------
# a server driven byte by byte by the test


class ManualServer:
    """Accepts connections on 127.0.0.1, records each request head, and
    sends only what the test tells it to. Notices when the client closes."""

    def __init__(self):
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.sock.settimeout(0.1)
        self.port = self.sock.getsockname()[1]
        self.addr = f"127.0.0.1:{self.port}"
        self.lock = threading.Lock()
        self.conns = []  # [{"sock", "head", "closed"}]
        self._stop = False
        self._t = threading.Thread(target=self._accept, daemon=True)
        self._t.start()

    def _accept(self):
        while not self._stop:
            try:
                s, _ = self.sock.accept()
            except socket.timeout:
                continue
            except OSError:
                return
            c = {"sock": s, "head": None, "closed": False}
            with self.lock:
                self.conns.append(c)
            threading.Thread(target=self._read, args=(c,), daemon=True).start()

    def _read(self, c):
        buf = b""
        s = c["sock"]
        try:
            while True:
                d = s.recv(65536)
                if not d:
                    break
                buf += d
                if c["head"] is None and b"\r\n\r\n" in buf:
                    c["head"] = buf.split(b"\r\n\r\n", 1)[0].decode("latin-1")
        except OSError:
            pass
        c["closed"] = True

    def wait_request(self, i=0):
        assert wait_for(lambda: len(self.conns) > i and self.conns[i]["head"] is not None, WAIT), \
            f"no request on connection {i}"
        return self.conns[i]["head"]

    def send(self, data: bytes, i=0):
        self.conns[i]["sock"].sendall(data)

    def wait_closed(self, i=0):
        return wait_for(lambda: self.conns[i]["closed"], WAIT)

    def close(self):
        self._stop = True
        self._t.join(timeout=2)
        self.sock.close()
        for c in self.conns:
            try:
                c["sock"].close()
            except OSError:
                pass


@pytest.fixture
def manual():
    made = []

    def factory():
        m = ManualServer()
        made.append(m)
        return m

    yield factory
    for m in made:
        m.close()


# a route to an upstream, so that every test can check sidekick still serves
SERVE = """
[listener main]
address = 127.0.0.1:{listen}
{route_plugins}
[route all]
listener = main
cluster = up

[cluster up]
endpoints = {up}
"""


def serve_body(route_plugins=""):
    return SERVE.replace("{route_plugins}", route_plugins)


def still_serves(sk, up):
    before = len(up.requests)
    r = http_request(sk.port("listen"), "GET", "/still-here")
    assert r.status == 200, r
    assert len(up.requests) == before + 1 and up.requests[-1].path == "/still-here"


# --------------------------------------------------------------------------
# requests: what the upstream receives, what the plugin sees


def test_get_with_headers_post_json_and_empty_put(sidekick, upstream, tmp_path):
    def handler(req):
        status = 201 if req.method == "POST" else 200
        return Reply(status=status, headers=[("x-reply", "yes")],
                     body=f"{req.method} {req.target} {len(req.body or b'')}".encode())

    up = upstream(handler)
    g, p, e = tmp_path / "get.jsonl", tmp_path / "post.jsonl", tmp_path / "put.jsonl"
    body = '{"service": "api", "spans": [1, 2, 3]}'
    cfg = ini(f"""
[plugin getter]
load = fx_http.so
file = {g}
fetch = g GET http://{{up}}/get/one?x=1&y=two
header = x-test: one
header = x-empty:

[plugin poster]
load = fx_http.so
file = {p}
fetch = p POST http://{{up}}/v1/spans
header = content-type: application/json
body = {{json}}

[plugin putter]
load = fx_http.so
file = {e}
fetch = e PUT http://{{up}}/empty
""" + serve_body())
    sk = sidekick(cfg, up=up.addr, json=body)

    for path, name in ((g, "g"), (p, "p"), (e, "e")):
        done = wait_event(path, name, "done")
        assert [r["error"] for r in done] == [SK_HTTP_OK], records(path)
        assert events(path, name, "start")[0]["rc"] == 0

    reqs = {r.method: r for r in up.requests}
    assert set(reqs) == {"GET", "POST", "PUT"}, up.requests

    get = reqs["GET"]
    assert get.target == "/get/one?x=1&y=two" and get.version == "HTTP/1.1"
    assert get.header("x-test") == "one"
    assert get.has("x-empty") and get.header("x-empty") == ""
    assert get.header("host") == up.addr
    for absent in ("content-length", "transfer-encoding", "content-type", "expect", "accept",
                   "user-agent"):
        assert not get.has(absent), (absent, get.headers)
    assert get.body == b""

    post = reqs["POST"]
    assert post.target == "/v1/spans"
    assert post.header("content-type") == "application/json"
    assert post.header("content-length") == str(len(body))
    assert not post.has("expect") and not post.has("transfer-encoding") and not post.has("x-test")
    assert post.body == body.encode()

    put = reqs["PUT"]
    assert put.target == "/empty" and put.header("content-length") == "0" and put.body == b""
    assert not put.has("content-type")

    head = events(g, "g", "head")[0]
    assert head["status"] == 200
    assert header(head, "x-reply") == "yes" and header(head, "content-length") is not None
    assert body_of(g, "g") == b"GET /get/one?x=1&y=two 0"
    assert events(p, "p", "head")[0]["status"] == 201
    assert body_of(p, "p") == f"POST /v1/spans {len(body)}".encode()
    assert "HTTP 201" in events(p, "p", "done")[0]["message"]
    still_serves(sk, up)


def test_non_2xx_is_not_an_error_and_redirects_are_not_followed(sidekick, upstream, tmp_path):
    def handler(req):
        if req.path == "/old":
            return Reply(status=302, headers=[("location", "/elsewhere")], body=b"moved")
        return Reply(status=404, body=b"nope") if req.path == "/missing" else Reply()

    up = upstream(handler)
    rec = tmp_path / "r.jsonl"
    sk = sidekick(ini(f"""
[plugin h]
load = fx_http.so
file = {rec}
fetch = old GET http://{{up}}/old
fetch = missing GET http://{{up}}/missing
""" + serve_body()), up=up.addr)
    for name, status, body in (("old", 302, b"moved"), ("missing", 404, b"nope")):
        assert [r["error"] for r in wait_event(rec, name, "done")] == [SK_HTTP_OK]
        assert events(rec, name, "head")[0]["status"] == status
        assert body_of(rec, name) == body
    still_serves(sk, up)
    assert sorted(r.path for r in up.requests) == ["/missing", "/old", "/still-here"]  # no /elsewhere


def test_next_call_started_from_on_done_reuses_the_connection(sidekick, upstream, tmp_path):
    up = upstream(lambda req: Reply(body=req.target.encode()))
    rec = tmp_path / "r.jsonl"
    sidekick(ini(f"""
[plugin h]
load = fx_http.so
file = {rec}
fetch = a GET http://{{up}}/again
repeat = 3
delay = 10
""" + serve_body()), up=up.addr)
    done = wait_event(rec, "a", "done", 3)
    assert [r["error"] for r in done] == [SK_HTTP_OK] * 3
    assert [r["run"] for r in events(rec, "a", "start")] == [1, 2, 3]
    assert [r.path for r in up.requests] == ["/again"] * 3
    assert up.accepted == 1, "idle connection not reused"


def test_call_started_from_inside_on_head(sidekick, upstream, tmp_path):
    up = upstream(lambda req: Reply(body=req.target.encode()))
    rec = tmp_path / "r.jsonl"
    sidekick(ini(f"""
[plugin h]
load = fx_http.so
file = {rec}
fetch = first GET http://{{up}}/first
fetch = second GET http://{{up}}/second
from_head = second
""" + serve_body()), up=up.addr)
    for name in ("first", "second"):
        assert [r["error"] for r in wait_event(rec, name, "done")] == [SK_HTTP_OK]
        assert body_of(rec, name) == f"/{name}".encode()
    starts = [r["fetch"] for r in events(rec, None, "start")]
    assert starts == ["first", "second"]
    kinds = [(r["ev"], r.get("fetch")) for r in records(rec)]
    assert kinds.index(("head", "first")) < kinds.index(("start", "second"))
    assert sorted(r.path for r in up.requests) == ["/first", "/second"]


# --------------------------------------------------------------------------
# streaming


CHUNKED_HEAD = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n"


def chunk(data: bytes) -> bytes:
    return b"%x\r\n" % len(data) + data + b"\r\n"


def test_streaming_response_pieces_arrive_before_the_end(sidekick, upstream, manual, tmp_path):
    ms = manual()
    up = upstream()
    rec = tmp_path / "r.jsonl"
    sk = sidekick(ini(f"""
[plugin watch]
load = fx_http.so
file = {rec}
fetch = w GET http://{{ms}}/v3/watch?key=a
""" + serve_body()), ms=ms.addr, up=up.addr)
    head = ms.wait_request()
    assert head.startswith("GET /v3/watch?key=a HTTP/1.1\r\n"), head

    ms.send(CHUNKED_HEAD + chunk(b'{"event":1}\n'))
    wait_event(rec, "w", "body", 1)
    assert events(rec, "w", "head")[0]["status"] == 200
    assert not events(rec, "w", "done")
    still_serves(sk, up)  # the main loop's client does not hold up the workers

    ms.send(chunk(b'{"event":2}\n'))
    wait_event(rec, "w", "body", 2)
    assert not events(rec, "w", "done")

    ms.send(chunk(b'{"event":3}\n') + b"0\r\n\r\n")
    done = wait_event(rec, "w", "done")
    assert [r["error"] for r in done] == [SK_HTTP_OK]
    assert body_of(rec, "w") == b'{"event":1}\n{"event":2}\n{"event":3}\n'
    kinds = [r["ev"] for r in events(rec, "w")]
    assert kinds[0] == "start" and kinds[1] == "head" and kinds[-1] == "done"
    assert kinds.count("body") >= 3


def body_bytes(path, fetch):
    return sum(r["len"] for r in events(path, fetch, "body"))


def test_unlimited_body_streams_past_one_mib(sidekick, upstream, manual, tmp_path):
    """max_body = SK_HTTP_UNLIMITED (ABI 1.2): a chunked watch stream of
    1.25 MiB, more than the 1 MiB default, sent 64 KiB at a time, each
    piece only once the plugin got the one before: on_body sees every piece
    as it arrives (nothing is held back until the end, nothing is kept), the
    call never fails with ETOOLARGE, and it ends OK with every byte."""
    ms = manual()
    up = upstream()
    rec = tmp_path / "r.jsonl"
    sk = sidekick(ini(f"""
[plugin watch]
load = fx_http.so
file = {rec}
fetch = w GET http://{{ms}}/v3/watch?key=a
max_body = unlimited
""" + serve_body()), ms=ms.addr, up=up.addr)
    ms.wait_request()
    ms.send(CHUNKED_HEAD)
    piece = 64 * 1024
    total = 0
    for i in range(20):
        ms.send(chunk(bytes([97 + i % 26]) * piece))
        total += piece
        assert wait_for(lambda: body_bytes(rec, "w") >= total, WAIT), (i, body_bytes(rec, "w"))
        assert body_bytes(rec, "w") == total
        assert not events(rec, "w", "done"), events(rec, "w", "done")
    assert total > 1024 * 1024
    still_serves(sk, up)
    ms.send(b"0\r\n\r\n")
    done = wait_event(rec, "w", "done")
    assert [r["error"] for r in done] == [SK_HTTP_OK], done
    assert f"{total} body bytes" in done[0]["message"], done
    # every recorded piece starts with the letter of the chunk it belongs to, in order
    offset = 0
    for r in events(rec, "w", "body"):
        assert r["data"][0] == chr(97 + (offset // piece) % 26), (offset, r["data"][:8])
        offset += r["len"]
    assert offset == total


def test_default_max_body_still_stops_a_long_stream(sidekick, upstream, tmp_path):
    """Without SK_HTTP_UNLIMITED the 1 MiB default holds for a stream too."""
    big = b"z" * (1024 * 1024 + 1)
    up = upstream(lambda req: Reply(body=big, chunked=True, chunk_size=65536))
    rec = tmp_path / "r.jsonl"
    sidekick(ini(f"""
[plugin h]
load = fx_http.so
file = {rec}
fetch = big GET http://{{up}}/big
""" + serve_body()), up=up.addr)
    done = wait_event(rec, "big", "done")
    assert [r["error"] for r in done] == [SK_HTTP_ETOOLARGE]
    assert body_bytes(rec, "big") <= 1024 * 1024


def test_cancel_from_inside_on_body(sidekick, upstream, manual, tmp_path):
    ms = manual()
    up = upstream()
    rec = tmp_path / "r.jsonl"
    sk = sidekick(ini(f"""
[plugin watch]
load = fx_http.so
file = {rec}
fetch = w GET http://{{ms}}/watch
cancel_on_body = 1
""" + serve_body()), ms=ms.addr, up=up.addr)
    ms.wait_request()
    ms.send(CHUNKED_HEAD + chunk(b"first"))
    wait_event(rec, "w", "cancel")
    assert ms.wait_closed(), "the cancelled call's connection stays open"
    assert not events(rec, "w", "done")  # no callback after cancel
    assert [r["data"] for r in events(rec, "w", "body")] == ["first"]
    still_serves(sk, up)
    assert sk.stop() == 0
    assert not events(rec, "w", "done")
    assert events(rec, None, "destroy")[0]["open"] == 0


# --------------------------------------------------------------------------
# failures


def test_connection_refused_and_sidekick_keeps_serving(sidekick, upstream, tmp_path):
    up = upstream()
    # a port bound but not listening: connects are refused, and no other
    # process can take it meanwhile (a free_port() could be reused)
    holder = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    holder.bind(("127.0.0.1", 0))
    closed = holder.getsockname()[1]
    rec = tmp_path / "r.jsonl"
    sk = sidekick(ini(f"""
[plugin h]
load = fx_http.so
file = {rec}
fetch = r GET http://127.0.0.1:{closed}/x
""" + serve_body()), up=up.addr)
    done = wait_event(rec, "r", "done")
    holder.close()
    assert [r["error"] for r in done] == [SK_HTTP_ECONNECT]
    assert done[0]["text"] == "connect failed"
    assert str(closed) in done[0]["message"]
    assert not events(rec, "r", "head") and not events(rec, "r", "body")
    still_serves(sk, up)


def test_timeout_ends_the_call_and_closes_the_connection(sidekick, upstream, manual, tmp_path):
    ms = manual()
    up = upstream()
    rec = tmp_path / "r.jsonl"
    sk = sidekick(ini(f"""
[plugin h]
load = fx_http.so
file = {rec}
fetch = t POST http://{{ms}}/slow
body = payload
timeout = 300
""" + serve_body()), ms=ms.addr, up=up.addr)
    head = ms.wait_request()
    assert head.startswith("POST /slow HTTP/1.1\r\n")
    done = wait_event(rec, "t", "done")  # the server never answers
    assert [r["error"] for r in done] == [SK_HTTP_ETIMEOUT]
    assert done[0]["text"] == "timed out"
    assert ms.wait_closed()
    still_serves(sk, up)


def test_connect_timeout(sidekick, upstream, tmp_path):
    """A listener whose accept queue is full drops the SYN: the connect hangs."""
    up = upstream()
    full = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    full.bind(("127.0.0.1", 0))
    full.listen(0)
    port = full.getsockname()[1]
    fillers = []
    try:
        for _ in range(3):
            c = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            c.setblocking(False)
            try:
                c.connect(("127.0.0.1", port))
            except BlockingIOError:
                pass
            fillers.append(c)
        rec = tmp_path / "r.jsonl"
        sk = sidekick(ini(f"""
[plugin h]
load = fx_http.so
file = {rec}
fetch = c GET http://127.0.0.1:{port}/
connect_timeout = 300
""" + serve_body()), up=up.addr)
        done = wait_event(rec, "c", "done")
        assert [r["error"] for r in done] == [SK_HTTP_ETIMEOUT], done
        still_serves(sk, up)
    finally:
        for c in fillers:
            c.close()
        full.close()


@pytest.mark.parametrize("chunked", [False, True], ids=["content-length", "chunked"])
def test_body_over_max_body_fails_the_call(sidekick, upstream, tmp_path, chunked):
    big = bytes(range(97, 123)) * 200  # 5200 bytes
    up = upstream(lambda req: Reply(body=big if req.path == "/big" else big[:1000], chunked=chunked,
                                    chunk_size=300))
    rec = tmp_path / "r.jsonl"
    sk = sidekick(ini(f"""
[plugin h]
load = fx_http.so
file = {rec}
fetch = big GET http://{{up}}/big
fetch = exact GET http://{{up}}/exact
max_body = 1000
""" + serve_body()), up=up.addr)
    done = wait_event(rec, "big", "done")
    assert [r["error"] for r in done] == [SK_HTTP_ETOOLARGE]
    assert "max_body = 1000" in done[0]["message"]
    got = body_of(rec, "big")
    assert len(got) <= 1000 and big.startswith(got)
    # exactly max_body bytes are allowed
    assert [r["error"] for r in wait_event(rec, "exact", "done")] == [SK_HTTP_OK]
    assert body_of(rec, "exact") == big[:1000]
    still_serves(sk, up)


def test_refused_starts_other_schemes_bad_urls(sidekick, upstream, tmp_path):
    up = upstream()
    rec = tmp_path / "r.jsonl"
    sk = sidekick(ini(f"""
[plugin h]
load = fx_http.so
file = {rec}
fetch = tls GET https://127.0.0.1:1/keys
fetch = ftp GET ftp://127.0.0.1:1/file
fetch = bad GET not-a-url
fetch = method GE(T http://127.0.0.1:1/
""" + serve_body()), up=up.addr)
    assert wait_for(lambda: len(events(rec, None, "start")) == 4, WAIT)
    rc = {r["fetch"]: r["rc"] for r in events(rec, None, "start")}
    # https:// starts (ABI 1.2) and fails to connect; the others are refused
    assert rc == {"tls": SK_HTTP_OK, "ftp": SK_HTTP_EUNSUPPORTED, "bad": SK_HTTP_EINVAL,
                  "method": SK_HTTP_EINVAL}
    err = sk.stderr_text()
    assert "plugin h: http_start refused (unsupported URL scheme): only http:// and https:// URLs" in err
    assert [r["error"] for r in wait_event(rec, "tls", "done")] == [SK_HTTP_ECONNECT]
    still_serves(sk, up)
    # a refused start never calls back
    assert [r["fetch"] for r in events(rec, None, "done")] == ["tls"]


def test_http_start_on_a_worker_is_refused(sidekick, upstream, tmp_path):
    up = upstream()
    rec = tmp_path / "r.jsonl"
    sk = sidekick(ini(f"""
[plugin h]
load = fx_http.so
file = {rec}
worker_fetch = http://{{up}}/from-worker
""" + serve_body("plugins = h")), up=up.addr)
    still_serves(sk, up)
    w = events(rec, None, "worker_start")
    assert w == [{"ev": "worker_start", "rc": SK_HTTP_ETHREAD, "null": 1}]
    assert "called on a worker thread" in sk.stderr_text()
    assert [r.path for r in up.requests] == ["/still-here"]


# --------------------------------------------------------------------------
# lifetime: reload, SIGTERM, sidekick -t


def hold_config(rec, name="hold"):
    return ini(f"""
[plugin h]
load = fx_http.so
file = {rec}
fetch = {name} GET http://{{ms}}/watch
""" + serve_body())


def test_reload_cancels_the_old_instances_calls(sidekick, upstream, manual, tmp_path):
    ms = manual()
    up = upstream()
    old, new = tmp_path / "old.jsonl", tmp_path / "new.jsonl"
    sk = sidekick(hold_config(old), ms=ms.addr, up=up.addr)
    ms.wait_request(0)
    ms.send(CHUNKED_HEAD + chunk(b"partial"), 0)  # mid-stream when the reload comes
    wait_event(old, "hold", "body")

    text = hold_config(new, "fresh").format(**sk.ports)
    tmp = sk.config.with_name(sk.config.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, sk.config)
    r = http_request(sk.admin_port, "POST", "/reload", body=b"", timeout=30)
    assert r.status == 200, r

    done = wait_event(old, "hold", "done")
    assert [d["error"] for d in done] == [SK_HTTP_ECANCELLED]
    assert wait_for(lambda: events(old, None, "destroy"), WAIT), records(old)
    kinds = [x["ev"] for x in records(old)]
    assert kinds.index("done") < kinds.index("destroy"), kinds  # on_done before destroy
    assert events(old, None, "destroy")[0]["open"] == 0
    assert ms.wait_closed(0), "the cancelled call's connection stays open"

    # the new generation's instance has its own call
    assert ms.wait_request(1).startswith("GET /watch HTTP/1.1")
    assert events(new, "fresh", "start")[0]["rc"] == 0
    still_serves(sk, up)
    assert sk.stop() == 0
    assert [d["error"] for d in events(new, "fresh", "done")] == [SK_HTTP_ECANCELLED]
    assert events(new, None, "destroy")


def test_sigterm_with_a_call_in_flight(sidekick, upstream, manual, tmp_path):
    ms = manual()
    up = upstream()
    rec = tmp_path / "r.jsonl"
    sk = sidekick(hold_config(rec), ms=ms.addr, up=up.addr)
    ms.wait_request()
    assert sk.stop(signal.SIGTERM) == 0
    kinds = [x["ev"] for x in records(rec)]
    assert kinds == ["create", "start", "done", "destroy"], records(rec)
    assert events(rec, "hold", "done")[0]["error"] == SK_HTTP_ECANCELLED
    assert ms.wait_closed()


def test_check_mode_ends_calls_started_in_create(manual, tmp_path):
    ms = manual()
    rec = tmp_path / "r.jsonl"
    cfg = tmp_path / "t.ini"
    text = hold_config(rec).replace("{up}", "127.0.0.1:1").replace("{listen}", str(free_port()))
    cfg.write_text(text.replace("{admin}", str(free_port())).replace("{ms}", ms.addr))
    p = run_sidekick(["-t", "-c", str(cfg)])
    assert p.returncode == 0, p.stderr
    assert "configuration OK" in p.stdout
    assert [x["ev"] for x in records(rec)] == ["create", "start", "done", "destroy"]
    assert events(rec, "hold", "done")[0]["error"] == SK_HTTP_ECANCELLED
    for marker in ("ERROR: AddressSanitizer", "ERROR: LeakSanitizer", "runtime error:"):
        assert marker not in p.stderr
