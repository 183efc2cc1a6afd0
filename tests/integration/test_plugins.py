"""Plugins: loading .so files, chain order, host services, pause/resume, errors.

The fixture plugins are built from tests/plugins/ (fx_*.so); the tests find
them in SIDEKICK_PLUGIN_DIR (set by ctest), else in build/tests/plugins.
Run by hand with:

    SIDEKICK_BIN=build/sidekick SIDEKICK_PLUGIN_DIR=build/tests/plugins \\
        /usr/bin/python3 -m pytest -q tests/integration/test_plugins.py

The out-of-tree build test also needs SIDEKICK_BUILD_DIR (the CMake build
directory, for `cmake --install`).
"""

import http.client
import glob
import os
import re
import shutil
import signal
import socket
import struct
import subprocess
import threading
import time

import pytest

from harness import PLUGIN_DIR, missing_fixtures
from harness import (REPO, RawClient, Reply, assert_local_reply, build_request, free_port, http_request,
                     metric_value, parse_prometheus, run_sidekick, wait_for)

BUILD_DIR = os.environ.get("SIDEKICK_BUILD_DIR")

FIXTURES = ["fx_headers", "fx_respond", "fx_pause", "fx_count", "fx_error", "fx_failcreate",
            "fx_badabi", "fx_newminor", "fx_nosym", "fx_discovery", "fx_abi10", "fx_abi11"]


@pytest.fixture(autouse=True)
def _fixtures_built():
    missing = missing_fixtures(FIXTURES)
    if missing:
        pytest.fail(f"fixture plugins not built in {PLUGIN_DIR}: {missing} "
                    f"(set SIDEKICK_PLUGIN_DIR)")


def pl_ini(body: str, workers: int = 1, plugin_dir=PLUGIN_DIR, log_level: str = "info",
           drain_timeout: str = "3s") -> str:
    """A full INI: [sidekick] with plugin_dir (unless None) + body.

    Like harness.sk_ini, but the log level is a parameter. `body` may use
    {placeholders}; {admin} is the admin port.
    """
    head = (
        "[sidekick]\n"
        f"workers = {workers}\n"
        "admin = 127.0.0.1:{admin}\n"
        "access_log = off\n"
        f"drain_timeout = {drain_timeout}\n"
        f"log_level = {log_level}\n"
    )
    if plugin_dir is not None:
        head += f"plugin_dir = {plugin_dir}\n"
    return head + "\n" + body


def metrics(sk):
    r = sk.admin_get("/metrics")
    assert r.status == 200, r
    return parse_prometheus(r.body.decode())


def metric(sk, name, **labels):
    """Current value of a metric (summed over matching samples), None if absent."""
    return metric_value(metrics(sk), name, **labels)


def wait_metric(sk, name, value, timeout=5.0, **labels):
    """Waits until the metric equals `value`; asserts with the whole /metrics text."""
    ok = wait_for(lambda: metric(sk, name, **labels) == value, timeout)
    if not ok:
        text = sk.admin_get("/metrics").body.decode()
        lines = "\n".join(l for l in text.splitlines() if "plugin" in l)
        pytest.fail(f"{name}{labels} != {value} after {timeout}s; plugin metrics:\n{lines}")


def get(sk, path="/", headers=None, listener="listen"):
    return http_request(sk.port(listener), "GET", path, headers=headers)


# --------------------------------------------------------------------------
# chain order, headers, metadata


CHAIN = """\
[plugin a]
load = fx_headers.so
tag = a

[plugin b]
load = fx_headers.so
tag = b

[plugin c]
load = fx_headers.so
tag = c

[listener main]
address = 127.0.0.1:{listen}
plugins = a

[route all]
listener = main
cluster = up
plugins = c, b

[cluster up]
endpoints = 127.0.0.1:{up}
"""


def test_chain_order_listener_then_route_in_ini_order(sidekick, upstream):
    """Listener plugins first, then the route's in the order `plugins =`
    names them (not section order); response hooks in reverse."""
    up = upstream()
    sk = sidekick(pl_ini(CHAIN), up=up.port)
    r = get(sk, "/x")
    assert r.status == 200, r
    [req] = up.requests
    assert req.header_all("x-chain") == ["a, c, b"], req.headers
    assert r.header("x-chain-resp") == "b, c, a", r
    assert r.header("x-upstream") == "up"


def test_chain_two_plugins_listener_and_route(sidekick, upstream):
    """The basic case: a on the listener, b on the route."""
    up = upstream()
    body = CHAIN.replace("plugins = c, b", "plugins = b")
    sk = sidekick(pl_ini(body), up=up.port)
    r = get(sk, "/")
    assert r.status == 200, r
    assert up.requests[0].header("x-chain") == "a, b"
    assert r.header("x-chain-resp") == "b, a"


def test_chain_sees_client_header(sidekick, upstream):
    """header() reads what the client sent; set_header() replaces it."""
    up = upstream()
    sk = sidekick(pl_ini(CHAIN), up=up.port)
    r = get(sk, "/", headers={"X-Chain": "client"})
    assert r.status == 200, r
    [req] = up.requests
    assert req.header_all("x-chain") == ["client, a, c, b"], req.headers


def test_chain_order_stable_across_requests(sidekick, upstream):
    """Several requests on one keep-alive connection: the chain runs afresh
    for each (no state leaks from one request to the next)."""
    up = upstream()
    sk = sidekick(pl_ini(CHAIN), up=up.port)
    with RawClient(sk.port("listen")) as c:
        for i in range(5):
            r = c.request("GET", f"/k{i}")
            assert r.status == 200, r
            assert r.header("x-chain-resp") == "b, c, a", r
    assert [q.header("x-chain") for q in up.requests] == ["a, c, b"] * 5


HEADERS = """\
[plugin hdr]
load = fx_headers.so
request_header = x-added: yes 1
response_header = x-resp-added: value two

[listener main]
address = 127.0.0.1:{listen}

[route all]
listener = main
cluster = up
plugins = hdr

[cluster up]
endpoints = 127.0.0.1:{up}
"""


def test_request_and_response_headers_added(sidekick, upstream):
    up = upstream()
    sk = sidekick(pl_ini(HEADERS), up=up.port)
    r = get(sk, "/h")
    assert r.status == 200, r
    [req] = up.requests
    assert req.header("x-added") == "yes 1", req.headers
    assert r.header("x-resp-added") == "value two", r
    # the upstream's own headers and body are untouched
    assert r.header("x-upstream") == "up"
    assert r.body == b"ok"


def test_add_header_appends_to_client_copy(sidekick, upstream):
    """add_header() appends: the client's x-added stays, the plugin's follows."""
    up = upstream()
    sk = sidekick(pl_ini(HEADERS), up=up.port)
    r = get(sk, "/h", headers={"x-added": "from client"})
    assert r.status == 200, r
    req = up.requests[0]
    assert req.header_all("x-added") == ["from client", "yes 1"], req.headers


META = """\
[plugin setter]
load = fx_headers.so
set_meta = user=alice

[plugin copier]
load = fx_headers.so
meta_to_header = user: x-user-meta
meta_to_header = nothing: x-missing-meta

[listener main]
address = 127.0.0.1:{listen}

[route rev]
listener = main
prefix = /rev
cluster = up
plugins = copier, setter

[route all]
listener = main
cluster = up
plugins = setter, copier

[cluster up]
endpoints = 127.0.0.1:{up}
"""


def test_metadata_passes_between_plugins(sidekick, upstream):
    up = upstream()
    sk = sidekick(pl_ini(META), up=up.port)
    r = get(sk, "/m")
    assert r.status == 200, r
    [req] = up.requests
    assert req.header("x-user-meta") == "alice", req.headers
    assert req.header("x-missing-meta") == "-", req.headers


def test_metadata_not_visible_before_it_is_set(sidekick, upstream):
    """The copier runs before the setter on /rev: it sees nothing; and
    metadata of an earlier request on the connection does not leak."""
    up = upstream()
    sk = sidekick(pl_ini(META), up=up.port)
    with RawClient(sk.port("listen")) as c:
        assert c.request("GET", "/m").status == 200
        assert c.request("GET", "/rev").status == 200
    first, second = up.requests
    assert first.header("x-user-meta") == "alice"
    assert second.header("x-user-meta") == "-", second.headers


TWO_INSTANCES = """\
[plugin one]
load = fx_headers.so
tag = one
request_header = x-which: one
response_header = x-which-resp: one

[plugin two]
load = fx_headers.so
tag = two
request_header = x-which: two
response_header = x-which-resp: two

[listener main]
address = 127.0.0.1:{listen}

[route r1]
listener = main
prefix = /one
cluster = up
plugins = one

[route r2]
listener = main
prefix = /two
cluster = up
plugins = two

[route both]
listener = main
cluster = up
plugins = two, one

[cluster up]
endpoints = 127.0.0.1:{up}
"""


def test_two_instances_of_one_so_are_independent(sidekick, upstream):
    up = upstream()
    sk = sidekick(pl_ini(TWO_INSTANCES), up=up.port)
    r1 = get(sk, "/one")
    r2 = get(sk, "/two")
    r3 = get(sk, "/both")
    assert (r1.status, r2.status, r3.status) == (200, 200, 200), (r1, r2, r3)
    q1, q2, q3 = up.requests
    assert (q1.header("x-chain"), q1.header("x-which")) == ("one", "one")
    assert (q2.header("x-chain"), q2.header("x-which")) == ("two", "two")
    assert q3.header("x-chain") == "two, one"
    assert q3.header_all("x-which") == ["two", "one"], q3.headers
    assert r1.header("x-which-resp") == "one" and r1.header("x-chain-resp") == "one"
    assert r2.header("x-which-resp") == "two" and r2.header("x-chain-resp") == "two"
    assert r3.header("x-chain-resp") == "one, two"


# --------------------------------------------------------------------------
# local replies and errors


RESPOND = """\
[plugin local]
load = fx_respond.so
status = 403
body = go away
path = /deny
reason = fx_denied

[plugin cnt]
load = fx_count.so

[listener main]
address = 127.0.0.1:{listen}
plugins = local

[route all]
listener = main
cluster = up
plugins = cnt

[cluster up]
endpoints = 127.0.0.1:{up}
"""


def test_respond_locally_upstream_sees_nothing(sidekick, upstream):
    up = upstream()
    sk = sidekick(pl_ini(RESPOND), up=up.port)
    r = get(sk, "/deny/this")
    assert r.status == 403, r
    assert r.body == b"go away"
    assert r.header("x-fx") == "respond"
    assert r.header("x-sidekick-reason") == "fx_denied"
    assert r.header("x-upstream") is None
    time.sleep(0.2)
    assert up.requests == [], up.requests
    assert up.accepted == 0
    # the chain stopped at the listener plugin: the route plugin never ran
    wait_metric(sk, "sidekick_plugin_fx_count_request_total", 0, instance="cnt")


def test_respond_passes_other_paths(sidekick, upstream):
    up = upstream()
    sk = sidekick(pl_ini(RESPOND), up=up.port)
    r = get(sk, "/ok")
    assert r.status == 200, r
    assert r.header("x-fx") is None
    assert len(up.requests) == 1
    wait_metric(sk, "sidekick_plugin_fx_count_request_total", 1, instance="cnt")


def test_respond_keeps_connection_usable(sidekick, upstream):
    """A local reply on a keep-alive connection, then a proxied request."""
    up = upstream()
    sk = sidekick(pl_ini(RESPOND), up=up.port)
    with RawClient(sk.port("listen")) as c:
        r = c.request("GET", "/deny")
        assert r.status == 403 and r.body == b"go away", r
        r = c.request("GET", "/fine")
        assert r.status == 200 and r.body == b"ok", r
    assert [q.path for q in up.requests] == ["/fine"]


ERROR = """\
[plugin boom]
load = fx_error.so
path = /boom

[listener main]
address = 127.0.0.1:{listen}

[route all]
listener = main
cluster = up
plugins = boom

[cluster up]
endpoints = 127.0.0.1:{up}
"""


def test_error_gives_500_filter_error_and_is_counted(sidekick, upstream):
    up = upstream()
    sk = sidekick(pl_ini(ERROR), up=up.port)
    r = get(sk, "/boom")
    assert_local_reply(r, 500, "filter_error")
    time.sleep(0.1)
    assert up.requests == []
    wait_metric(sk, "sidekick_plugin_errors_total", 1, instance="boom")
    for _ in range(3):
        assert_local_reply(get(sk, "/boom/again"), 500, "filter_error")
    wait_metric(sk, "sidekick_plugin_errors_total", 4, instance="boom")
    # and the process keeps serving
    r = get(sk, "/fine")
    assert r.status == 200, r
    assert len(up.requests) == 1
    assert sk.running()


def test_error_on_keepalive_connection(sidekick, upstream):
    """A 500 filter_error keeps the connection: the next request on it is
    proxied."""
    up = upstream()
    sk = sidekick(pl_ini(ERROR), up=up.port)
    with RawClient(sk.port("listen")) as c:
        r = c.request("GET", "/boom")
        assert_local_reply(r, 500, "filter_error")
        r = c.request("GET", "/after")
        assert r.status == 200 and r.body == b"ok", r
    assert [q.path for q in up.requests] == ["/after"]


# --------------------------------------------------------------------------
# pause / resume


PAUSE = """\
[plugin a]
load = fx_headers.so
tag = a

[plugin b]
load = fx_headers.so
tag = b

[plugin wait]
load = fx_pause.so
delay_ms = {delay}

[plugin cnt]
load = fx_count.so

[listener main]
address = 127.0.0.1:{listen}
plugins = a

[route fast]
listener = main
prefix = /fast
cluster = up

[route all]
listener = main
cluster = up
plugins = cnt, wait, b

[cluster up]
endpoints = 127.0.0.1:{up}
"""


def concurrent_gets(port, paths, timeout=20.0):
    """GETs every path at once, each on its own connection and thread;
    returns the responses (or exceptions) in order."""
    out = [None] * len(paths)
    start = threading.Barrier(len(paths))

    def run(i, p):
        try:
            start.wait(5)
            out[i] = http_request(port, "GET", p, timeout=timeout)
        except Exception as e:  # reported by the caller
            out[i] = e

    ts = [threading.Thread(target=run, args=(i, p)) for i, p in enumerate(paths)]
    for t in ts:
        t.start()
    for t in ts:
        t.join(timeout + 10)
    return out


@pytest.mark.parametrize("workers", [1, 2])
def test_pause_resume_concurrent(sidekick, upstream, workers):
    """50 requests paused at once all resume, exactly where they stopped:
    the plugin after the pausing one runs once, response hooks run too."""
    n = 50
    up = upstream()
    sk = sidekick(pl_ini(PAUSE, workers=workers), up=up.port, delay=50)
    res = concurrent_gets(sk.port("listen"), [f"/p{i}" for i in range(n)])
    bad = [r for r in res if not (hasattr(r, "status") and r.status == 200)]
    assert not bad, bad[:5]
    assert all(r.header("x-chain-resp") == "b, a" for r in res), res[:3]
    reqs = up.requests
    assert len(reqs) == n
    assert sorted(q.target for q in reqs) == sorted(f"/p{i}" for i in range(n))
    for q in reqs:
        assert q.header("x-paused") == "50", q.headers
        assert q.header("x-chain") == "a, b", q.headers
    wait_metric(sk, "sidekick_plugin_fx_pause_resumes_total", n, instance="wait")
    assert metric(sk, "sidekick_plugin_fx_pause_cancels_total", instance="wait") in (None, 0)
    wait_metric(sk, "sidekick_plugin_fx_pause_pending", 0, instance="wait")
    wait_metric(sk, "sidekick_plugin_fx_count_log_total", n, instance="cnt")


def test_paused_requests_reuse_the_upstream_connection(sidekick, upstream):
    """Requests without a body, paused at their head, end as soon as they
    resume: one client keep-alive connection, ten paused GETs and a POST,
    one upstream connection for all of them (each paused GET used to keep
    its upstream connection from the pool: a new connect per request)."""
    up = upstream()
    sk = sidekick(pl_ini(PAUSE, workers=1), up=up.port, delay=5)
    c = http.client.HTTPConnection("127.0.0.1", sk.port("listen"), timeout=10)
    for i in range(10):
        c.request("GET", f"/g{i}")
        r = c.getresponse()
        assert r.status == 200 and r.read() is not None
    c.request("POST", "/post", body=b"x" * 100)
    r = c.getresponse()
    assert r.status == 200
    r.read()
    c.close()
    reqs = up.requests
    assert [q.target for q in reqs] == [f"/g{i}" for i in range(10)] + ["/post"]
    assert reqs[-1].body == b"x" * 100
    assert all(q.header("x-paused") == "5" for q in reqs)
    assert up.accepted == 1, up.accepted


def test_pause_does_not_block_the_worker(sidekick, upstream):
    """One worker, 20 requests paused 300 ms each: they overlap (a blocking
    pause would take 6 s), and an unpaused request is served meanwhile."""
    up = upstream()
    sk = sidekick(pl_ini(PAUSE, workers=1), up=up.port, delay=300)
    port = sk.port("listen")
    result = {}

    def fast_later():
        time.sleep(0.1)
        t = time.monotonic()
        result["fast"] = http_request(port, "GET", "/fast")
        result["fast_s"] = time.monotonic() - t

    ft = threading.Thread(target=fast_later)
    ft.start()
    t0 = time.monotonic()
    res = concurrent_gets(port, [f"/slow{i}" for i in range(20)])
    elapsed = time.monotonic() - t0
    ft.join(10)
    assert all(getattr(r, "status", None) == 200 for r in res), res[:3]
    assert elapsed < 2.5, f"20 paused requests took {elapsed:.2f}s: the pause blocks the worker"
    assert result["fast"].status == 200
    assert result["fast_s"] < 1.0, f"unpaused request took {result['fast_s']:.2f}s"


def test_pause_on_keepalive_connection(sidekick, upstream):
    """Paused requests one after another on one connection."""
    up = upstream()
    sk = sidekick(pl_ini(PAUSE), up=up.port, delay=20)
    with RawClient(sk.port("listen")) as c:
        for i in range(5):
            r = c.request("GET", f"/k{i}")
            assert r.status == 200, r
    assert [q.header("x-paused") for q in up.requests] == ["20"] * 5
    wait_metric(sk, "sidekick_plugin_fx_pause_resumes_total", 5, instance="wait")


def test_pause_with_request_body(sidekick, upstream):
    """A POST body sent while the request is paused still reaches the
    upstream whole."""
    up = upstream()
    sk = sidekick(pl_ini(PAUSE), up=up.port, delay=100)
    body = bytes(range(256)) * 200
    r = http_request(sk.port("listen"), "POST", "/post", body=body)
    assert r.status == 200, r
    [req] = up.requests
    assert req.body == body
    assert req.header("x-paused") == "100"


PAUSE_RESULT = """\
[plugin wait]
load = fx_pause.so
delay_ms = 50
result = {result}

[plugin b]
load = fx_headers.so
tag = b

[listener main]
address = 127.0.0.1:{{listen}}

[route all]
listener = main
cluster = up
plugins = wait, b

[cluster up]
endpoints = 127.0.0.1:{{up}}
"""


def test_pause_then_respond(sidekick, upstream):
    """resume(SK_RESPOND) after host->respond() from the timer: the local
    reply goes out, the rest of the chain and the upstream are skipped."""
    up = upstream()
    sk = sidekick(pl_ini(PAUSE_RESULT.format(result="respond")), up=up.port)
    r = get(sk, "/r")
    assert r.status == 403, r
    assert r.body == b"paused then refused\n"
    assert r.header("x-fx") == "pause"
    time.sleep(0.1)
    assert up.requests == []
    wait_metric(sk, "sidekick_plugin_fx_pause_resumes_total", 1, instance="wait")
    assert get(sk, "/again").status == 403


def test_pause_then_error(sidekick, upstream):
    """resume(SK_ERROR): 500 filter_error, counted for the pausing plugin."""
    up = upstream()
    sk = sidekick(pl_ini(PAUSE_RESULT.format(result="error")), up=up.port)
    assert_local_reply(get(sk, "/e"), 500, "filter_error")
    time.sleep(0.1)
    assert up.requests == []
    wait_metric(sk, "sidekick_plugin_errors_total", 1, instance="wait")
    assert metric(sk, "sidekick_plugin_errors_total", instance="b") in (None, 0)
    assert sk.running()


def test_pause_in_listener_plugin_then_route_match(sidekick, upstream):
    """A listener plugin pauses before the route is matched: after resume
    the route is matched as usual (and no route gives 404 no_route)."""
    up = upstream()
    body = PAUSE_RESULT.format(result="continue").replace(
        "[listener main]\naddress = 127.0.0.1:{listen}\n",
        "[listener main]\naddress = 127.0.0.1:{listen}\nplugins = wait\n").replace(
        "plugins = wait, b", "prefix = /api\nplugins = b")
    sk = sidekick(pl_ini(body), up=up.port)
    r = get(sk, "/api/x")
    assert r.status == 200, r
    assert up.requests[0].header("x-paused") == "50"
    assert up.requests[0].header("x-chain") == "b"
    assert_local_reply(get(sk, "/nowhere"), 404, "no_route")
    wait_metric(sk, "sidekick_plugin_fx_pause_resumes_total", 2, instance="wait")


def test_pipelined_requests_while_paused(sidekick, upstream):
    """Three requests pipelined in one write, each paused in turn: all are
    answered, in order, and each is paused and resumed exactly once."""
    up = upstream(lambda req: Reply(body=req.target.encode()))
    sk = sidekick(pl_ini(PAUSE, workers=1), up=up.port, delay=50)
    with RawClient(sk.port("listen")) as c:
        c.send(b"".join(build_request("GET", f"/pipe{i}") for i in range(3)))
        bodies = [c.read_response(timeout=5).body for _ in range(3)]
    assert bodies == [b"/pipe0", b"/pipe1", b"/pipe2"]
    assert [q.header("x-paused") for q in up.requests] == ["50"] * 3
    assert [q.header("x-chain") for q in up.requests] == ["a, b"] * 3
    wait_metric(sk, "sidekick_plugin_fx_pause_resumes_total", 3, instance="wait")


def abort_client(port, path, mode):
    """Sends a request on a new connection, leaves it paused, and returns a
    function that makes the client go away:

    * reset: close with SO_LINGER 0 (RST): the connection is dead;
    * close_mid_body: the head announces a 100-byte body, 10 bytes are sent,
      then close() (FIN): the request can never complete.
    """
    c = RawClient(port)
    if mode == "reset":
        c.send(build_request("GET", path))
    else:
        c.send(build_request("POST", path, [("Content-Length", "100")]) + b"x" * 10)

    def go():
        if mode == "reset":
            c.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        c.close()
    return go


@pytest.mark.parametrize("mode", ["reset", "close_mid_body"])
def test_client_abort_while_paused(sidekick, upstream, mode):
    """Clients that go away while their request is paused: the plugin is
    told (on_cancel), its timer never resumes them, nothing reaches the
    upstream, on_log still runs, and the process keeps serving."""
    up = upstream()
    sk = sidekick(pl_ini(PAUSE, workers=2), up=up.port, delay=2000)
    port = sk.port("listen")
    n = 5
    t0 = time.monotonic()
    gone = [abort_client(port, f"/abort{i}", mode) for i in range(n)]
    time.sleep(0.2)
    wait_metric(sk, "sidekick_plugin_fx_pause_pending", n, timeout=1.0, instance="wait")
    for go in gone:
        go()
    # noticed well before the 2 s timer would have fired
    wait_metric(sk, "sidekick_plugin_fx_pause_cancels_total", n, timeout=1.5, instance="wait")
    assert time.monotonic() - t0 < 2.0
    wait_metric(sk, "sidekick_plugin_fx_pause_pending", 0, instance="wait")
    wait_metric(sk, "sidekick_plugin_fx_count_log_total", n, instance="cnt")
    # past the time the timers would have fired
    time.sleep(max(0.0, t0 + 2.6 - time.monotonic()))
    assert up.requests == [], [q.target for q in up.requests]
    assert metric(sk, "sidekick_plugin_fx_pause_resumes_total", instance="wait") in (None, 0)
    assert sk.running()
    r = get(sk, "/fast")
    assert r.status == 200, r
    assert "on_cancel for a request this plugin did not pause" not in sk.stderr_text()


CLOSE = """\
[plugin wait]
load = fx_pause.so
delay_ms = {delay}

[plugin x11]
load = fx_abi11.so
out = OUT

[listener main]
address = 127.0.0.1:{listen}

[route fast]
listener = main
path = /fast
respond = 200 fast

[route all]
listener = main
cluster = up
plugins = x11, wait

[cluster up]
endpoints = 127.0.0.1:{up}
"""


def close_ini(out):
    return pl_ini(CLOSE.replace("OUT", str(out))).replace("access_log = off", "access_log = stdout")


def assert_client_closed(sk, out, paths):
    """Every path has one access log line and one on_log (request_info)
    event, both 499 client_closed, and sidekick_requests_total counts them
    as 499, not as answered."""
    assert wait_for(lambda: len([l for l in sk.access_log_lines() if l["path"] in paths]) == len(paths), 5)
    lines = [l for l in sk.access_log_lines() if l["path"] in paths]
    assert sorted(l["path"] for l in lines) == sorted(paths), lines
    for l in lines:
        assert (l["status"], l["reason"], l["route"]) == (499, "client_closed", "all"), l
    logs = wait_events(out, "log", len(paths))
    assert [(e["status"], e["reason"]) for e in logs] == [(499, "client_closed")] * len(paths), logs
    assert metric(sk, "sidekick_requests_total", route="all", code="499") == len(paths)
    assert metric(sk, "sidekick_requests_total", route="all", code="200") in (None, 0)


def test_client_close_after_whole_request_while_paused(sidekick, upstream, tmp_path):
    """A client that sent a whole request and close()s (FIN) while it is
    paused is gone, as in nginx: the plugin's on_cancel runs at once (well
    before its 2 s timer), resume never comes, nothing reaches the upstream,
    and the request is logged (access log and on_log) as 499 client_closed."""
    out = tmp_path / "events.jsonl"
    up = upstream()
    sk = sidekick(close_ini(out), up=up.port, delay=2000)
    port = sk.port("listen")
    n = 5
    t0 = time.monotonic()
    clients = []
    for i in range(n):
        c = RawClient(port)
        c.send(build_request("GET", f"/fin{i}"))
        clients.append(c)
    wait_metric(sk, "sidekick_plugin_fx_pause_pending", n, instance="wait")
    for c in clients:
        c.close()
    wait_metric(sk, "sidekick_plugin_fx_pause_cancels_total", n, instance="wait")
    assert time.monotonic() - t0 < 2.0  # cancelled, not resumed by the timer
    assert_client_closed(sk, out, [f"/fin{i}" for i in range(n)])
    time.sleep(max(0.0, t0 + 2.5 - time.monotonic()))  # past the timers
    assert metric(sk, "sidekick_plugin_fx_pause_resumes_total", instance="wait") in (None, 0)
    assert up.requests == [], [q.target for q in up.requests]
    assert "on_cancel for a request this plugin did not pause" not in sk.stderr_text()
    assert get(sk, "/fast").status == 200


def test_half_closed_client_while_paused_gets_no_answer(sidekick, upstream, tmp_path):
    """shutdown(SHUT_WR) after a whole request counts as a close (nginx's
    default): the client, still reading, sees the connection closed without
    a response byte; the request is cancelled and logged 499 client_closed."""
    out = tmp_path / "events.jsonl"
    up = upstream()
    sk = sidekick(close_ini(out), up=up.port, delay=2000)
    s = socket.create_connection(("127.0.0.1", sk.port("listen")), timeout=10)
    s.sendall(build_request("GET", "/half"))
    wait_metric(sk, "sidekick_plugin_fx_pause_pending", 1, instance="wait")
    s.shutdown(socket.SHUT_WR)
    got = s.recv(65536)  # EOF, not a response
    s.close()
    assert got == b""
    wait_metric(sk, "sidekick_plugin_fx_pause_cancels_total", 1, instance="wait")
    assert_client_closed(sk, out, ["/half"])
    assert up.requests == []


def test_pipelined_answer_kept_when_client_half_closes(sidekick, upstream, tmp_path):
    """Two pipelined requests, then a half-close: the first (answered at
    once by a respond route) arrives whole, the second (paused when the FIN
    comes) is cancelled and logged 499 client_closed; then the proxy closes."""
    out = tmp_path / "events.jsonl"
    up = upstream()
    sk = sidekick(close_ini(out), up=up.port, delay=2000)
    c = RawClient(sk.port("listen"))
    c.send(build_request("GET", "/fast") + build_request("GET", "/second"))
    wait_metric(sk, "sidekick_plugin_fx_pause_pending", 1, instance="wait")
    c.sock.shutdown(socket.SHUT_WR)
    r = c.read_response(timeout=5)
    assert r.status == 200 and r.body == b"fast", r
    assert c.wait_closed(5)
    c.close()
    wait_metric(sk, "sidekick_plugin_fx_pause_cancels_total", 1, instance="wait")
    assert_client_closed(sk, out, ["/second"])
    fast = [l for l in sk.access_log_lines() if l["path"] == "/fast"]
    assert [(l["status"], l["reason"]) for l in fast] == [(200, None)], fast
    assert up.requests == []


def test_client_abort_mixed_with_normal_paused_requests(sidekick, upstream):
    """Aborted (reset) and completed paused requests on the same worker at
    the same time: each paused request is resumed or cancelled, never both."""
    up = upstream()
    sk = sidekick(pl_ini(PAUSE, workers=1), up=up.port, delay=300)
    port = sk.port("listen")
    aborted = [abort_client(port, f"/gone{i}", "reset") for i in range(10)]
    res = {}
    t = threading.Thread(target=lambda: res.update(
        r=concurrent_gets(port, [f"/kept{i}" for i in range(10)])))
    t.start()
    time.sleep(0.1)
    for go in aborted:
        go()
    t.join(15)
    assert all(getattr(r, "status", None) == 200 for r in res["r"]), res["r"][:3]
    wait_metric(sk, "sidekick_plugin_fx_pause_cancels_total", 10, instance="wait")
    wait_metric(sk, "sidekick_plugin_fx_pause_resumes_total", 10, instance="wait")
    wait_metric(sk, "sidekick_plugin_fx_pause_pending", 0, instance="wait")
    wait_metric(sk, "sidekick_plugin_fx_count_log_total", 20, instance="cnt")
    time.sleep(0.4)
    assert sorted(q.target for q in up.requests) == sorted(f"/kept{i}" for i in range(10))


def test_sigterm_finishes_paused_request(sidekick, upstream):
    """Draining waits for a paused request: it resumes and completes."""
    up = upstream()
    sk = sidekick(pl_ini(PAUSE, drain_timeout="3s"), up=up.port, delay=500)
    out = {}
    t = threading.Thread(target=lambda: out.update(r=http_request(sk.port("listen"), "GET", "/d")))
    t.start()
    wait_metric(sk, "sidekick_plugin_fx_pause_pending", 1, timeout=2, instance="wait")
    sk.signal(signal.SIGTERM)
    t.join(10)
    assert out.get("r") is not None and out["r"].status == 200, out
    assert sk.proc.wait(timeout=5) == 0
    assert up.requests[0].header("x-paused") == "500"


def test_sigterm_with_request_paused_past_drain_timeout(sidekick, upstream):
    """A request paused longer than drain_timeout does not keep the process
    alive, and exiting with it still paused is clean (the sanitizer build
    checks for leaks and use-after-free at teardown)."""
    up = upstream()
    sk = sidekick(pl_ini(PAUSE, drain_timeout="1s"), up=up.port, delay=10000)
    c = RawClient(sk.port("listen"))
    c.send(build_request("GET", "/forever"))
    wait_metric(sk, "sidekick_plugin_fx_pause_pending", 1, timeout=2, instance="wait")
    t0 = time.monotonic()
    sk.signal(signal.SIGTERM)
    code = sk.proc.wait(timeout=5)
    assert time.monotonic() - t0 < 3.5
    assert code == 0, sk.stderr_text()[-2000:]
    c.close()
    assert up.requests == []


# --------------------------------------------------------------------------
# on_log, logging


COUNT = """\
[plugin cnt]
load = fx_count.so

[listener main]
address = 127.0.0.1:{listen}
plugins = cnt

[route api]
listener = main
prefix = /api
cluster = up

[cluster up]
endpoints = 127.0.0.1:{up}
"""


def test_on_log_once_per_request(sidekick, upstream):
    up = upstream()
    sk = sidekick(pl_ini(COUNT), up=up.port)
    n = 7
    for i in range(4):
        assert get(sk, f"/api/{i}").status == 200
    with RawClient(sk.port("listen")) as c:
        for i in range(3):
            assert c.request("GET", f"/api/ka{i}").status == 200
    wait_metric(sk, "sidekick_plugin_fx_count_log_total", n, instance="cnt")
    wait_metric(sk, "sidekick_plugin_fx_count_request_total", n, instance="cnt")
    time.sleep(0.2)
    assert metric(sk, "sidekick_plugin_fx_count_log_total", instance="cnt") == n


def test_listener_plugins_run_before_route_match(sidekick, upstream):
    """Requests no route matches (404 no_route) still pass the listener's
    plugins, and are logged."""
    up = upstream()
    sk = sidekick(pl_ini(COUNT), up=up.port)
    assert get(sk, "/api/x").status == 200
    assert_local_reply(get(sk, "/elsewhere"), 404, "no_route")
    assert_local_reply(get(sk, "/elsewhere/2"), 404, "no_route")
    wait_metric(sk, "sidekick_plugin_fx_count_request_total", 3, instance="cnt")
    wait_metric(sk, "sidekick_plugin_fx_count_log_total", 3, instance="cnt")


def test_plugin_metrics_have_help_and_type(sidekick, upstream):
    up = upstream()
    sk = sidekick(pl_ini(COUNT), up=up.port)
    text = sk.admin_get("/metrics").body.decode()
    assert re.search(r"^# TYPE sidekick_plugin_fx_count_log_total counter$", text, re.M), text
    assert re.search(r"^# HELP sidekick_plugin_fx_count_log_total .+", text, re.M), text
    assert 'sidekick_plugin_fx_count_log_total{instance="cnt"} 0' in text, text


def test_plugin_log_lines_carry_instance_name(sidekick, upstream):
    up = upstream()
    sk = sidekick(pl_ini(COUNT, log_level="debug"), up=up.port)
    assert get(sk, "/api/logged").status == 200
    assert wait_for(lambda: "request GET /api/logged" in sk.stderr_text(), 3), \
        sk.stderr_text()[-2000:]
    line = next(l for l in sk.stderr_text().splitlines() if "request GET /api/logged" in l)
    assert "cnt" in line, line


def test_plugin_debug_log_filtered_at_info(sidekick, upstream):
    up = upstream()
    sk = sidekick(pl_ini(COUNT, log_level="info"), up=up.port)
    assert get(sk, "/api/quiet").status == 200
    wait_metric(sk, "sidekick_plugin_fx_count_log_total", 1, instance="cnt")
    assert "request GET /api/quiet" not in sk.stderr_text()


# --------------------------------------------------------------------------
# where .so files are found


FIND = """\
[plugin fx_headers]
{load}tag = found

[listener main]
address = 127.0.0.1:{{listen}}

[route all]
listener = main
cluster = up
plugins = fx_headers

[cluster up]
endpoints = 127.0.0.1:{{up}}
"""


@pytest.mark.parametrize("how", ["default_dir", "relative_dir", "absolute_load"])
def test_plugin_paths(sidekick, upstream, tmp_path, how):
    """load defaults to NAME.so in plugin_dir; plugin_dir defaults to
    "plugins" and is relative to the config file; load may be absolute.
    (sidekick runs from another directory, see harness.Sidekick.start.)"""
    up = upstream()
    if how == "default_dir":
        os.symlink(PLUGIN_DIR, tmp_path / "plugins")
        ini = pl_ini(FIND.format(load=""), plugin_dir=None)
    elif how == "relative_dir":
        os.symlink(PLUGIN_DIR, tmp_path / "myplugins")
        ini = pl_ini(FIND.format(load=""), plugin_dir="myplugins")
    else:
        load = f"load = {os.path.join(PLUGIN_DIR, 'fx_headers.so')}\n"
        ini = pl_ini(FIND.format(load=load), plugin_dir="/nonexistent")
    sk = sidekick(ini, up=up.port)
    assert get(sk, "/").status == 200
    assert up.requests[0].header("x-chain") == "found"


# --------------------------------------------------------------------------
# refused plugins: sidekick -t and start-up fail, naming file:line and why


BROKEN = """\
[listener main]
address = 127.0.0.1:{listen}

[route all]
listener = main
cluster = up
plugins = ok, broken

[cluster up]
endpoints = 127.0.0.1:{up}

[plugin ok]
load = fx_headers.so
tag = ok

[plugin broken]
{keys}
"""

# (case, keys of [plugin broken], substrings of which stderr must hold at
# least one per inner tuple, case-insensitive)
REFUSED = [
    ("missing_file", "load = fx_nope.so",
     [("fx_nope.so",), ("no such file", "cannot open", "not found", "does not exist")]),
    ("no_symbol", "load = fx_nosym.so", [("fx_nosym",), ("sidekick_plugin",)]),
    ("abi_major", "load = fx_badabi.so", [("fx_badabi",), ("abi",), ("major", "version")]),
    ("abi_minor_newer", "load = fx_newminor.so", [("fx_newminor",), ("abi",), ("minor", "version")]),
    ("create_fails", "load = fx_failcreate.so\nx = 42",
     [("refusing on purpose (key x=42)",)]),
    ("unknown_key", "load = fx_headers.so\ntag = t\ncolour = blue", [("colour",)]),
    ("bad_value", "load = fx_pause.so\ndelay_ms = soon", [("delay_ms",), ("soon",)]),
    ("not_a_plugin", "load = {notso}", [("not_a_plugin.so",)]),
]


def section_lines(text: str, header: str):
    """Line numbers (1-based) of `header` and of the lines of its section."""
    lines = text.splitlines()
    start = next(i for i, l in enumerate(lines, 1) if l.strip() == header)
    end = start
    for i in range(start + 1, len(lines) + 1):
        l = lines[i - 1].strip()
        if l.startswith("["):
            break
        if l:
            end = i
    return list(range(start, end + 1))


def write_broken(tmp_path, keys):
    notso = tmp_path / "not_a_plugin.so"
    notso.write_text("this is not an ELF file\n")
    text = pl_ini(BROKEN.replace("{keys}", keys.replace("{notso}", str(notso)))).format(
        admin=free_port(), listen=free_port(), up=free_port())
    p = tmp_path / "broken.ini"
    p.write_text(text)
    return p, text


def check_refused(res, path, text, needles):
    assert res.returncode == 1, f"exit {res.returncode}, stderr: {res.stderr!r}"
    err = res.stderr
    lines = section_lines(text, "[plugin broken]")
    named = [int(m) for m in re.findall(re.escape(path.name) + r":(\d+)", err)]
    assert any(l in lines for l in named), \
        f"stderr does not name {path.name}:<one of {lines}> (found {named}): {err!r}"
    assert "broken" in err, f"stderr does not name the instance: {err!r}"
    low = err.lower()
    for alternatives in needles:
        assert any(a.lower() in low for a in alternatives), \
            f"stderr names none of {alternatives}: {err!r}"


@pytest.mark.parametrize("case,keys,needles", REFUSED, ids=[c[0] for c in REFUSED])
def test_refused_plugin_check(tmp_path, sidekick_bin, case, keys, needles):
    p, text = write_broken(tmp_path, keys)
    res = run_sidekick(["-t", "-c", str(p)])
    check_refused(res, p, text, needles)


@pytest.mark.parametrize("case,keys,needles", REFUSED, ids=[c[0] for c in REFUSED])
def test_refused_plugin_startup(tmp_path, sidekick_bin, case, keys, needles):
    p, text = write_broken(tmp_path, keys)
    res = run_sidekick(["-c", str(p)], timeout=10)
    check_refused(res, p, text, needles)


def test_valid_plugins_check_ok(tmp_path, sidekick_bin):
    p, _ = write_broken(tmp_path, "load = fx_headers.so\ntag = fine")
    res = run_sidekick(["-t", "-c", str(p)])
    assert res.returncode == 0, res.stderr


def test_unknown_plugin_name_in_chain(tmp_path, sidekick_bin):
    p, text = write_broken(tmp_path, "load = fx_headers.so")
    text = text.replace("plugins = ok, broken", "plugins = ok, nosuchplugin")
    p.write_text(text)
    res = run_sidekick(["-t", "-c", str(p)])
    assert res.returncode == 1, res.stderr
    assert "nosuchplugin" in res.stderr
    line = next(i for i, l in enumerate(text.splitlines(), 1) if "nosuchplugin" in l)
    assert re.search(re.escape(p.name) + rf":{line}\b", res.stderr), res.stderr


# --------------------------------------------------------------------------
# an out-of-tree plugin, built against the installed header via pkg-config


HELLO = REPO / "docs" / "examples" / "hello.c"


def test_out_of_tree_build_with_pkg_config(sidekick, upstream, tmp_path):
    if not HELLO.exists():
        pytest.skip(f"{HELLO} not written yet")
    if not BUILD_DIR:
        pytest.skip("SIDEKICK_BUILD_DIR not set (ctest sets it)")
    for tool in ("cmake", "pkg-config", "cc"):
        if not shutil.which(tool):
            pytest.skip(f"{tool} not installed")
    prefix = tmp_path / "prefix"
    res = subprocess.run(["cmake", "--install", BUILD_DIR, "--prefix", str(prefix)],
                         capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stdout + res.stderr
    header = prefix / "include" / "sidekick" / "plugin.h"
    assert header.exists(), f"plugin.h not installed: {sorted(map(str, prefix.rglob('*')))}"
    pcs = glob.glob(str(prefix / "**" / "sidekick-plugin.pc"), recursive=True)
    assert pcs, f"sidekick-plugin.pc not installed: {sorted(map(str, prefix.rglob('*')))}"
    env = dict(os.environ, PKG_CONFIG_PATH=os.path.dirname(pcs[0]))
    env.pop("PKG_CONFIG_LIBDIR", None)
    res = subprocess.run(["pkg-config", "--cflags", "sidekick-plugin"], env=env,
                         capture_output=True, text=True, timeout=30)
    assert res.returncode == 0, res.stderr
    cflags = res.stdout.strip()
    # the flags point into the prefix installed to, not the source tree or
    # the configure-time prefix (a relocatable .pc uses ${pcfiledir})
    incs = [f[2:] for f in cflags.split() if f.startswith("-I")]
    assert any(os.path.exists(os.path.join(i, "sidekick", "plugin.h")) and
               os.path.realpath(i).startswith(os.path.realpath(prefix)) for i in incs), \
        f"pkg-config --cflags does not point into {prefix}: {cflags!r}"
    # build it exactly as the docs say, from a directory outside the tree
    src = tmp_path / "src"
    src.mkdir()
    shutil.copy(HELLO, src / "hello.c")
    so = src / "x.so"
    res = subprocess.run(f"cc -shared -fPIC $(pkg-config --cflags sidekick-plugin) -o {so} hello.c",
                         shell=True, cwd=str(src), env=env, capture_output=True, text=True,
                         timeout=60)
    assert res.returncode == 0, res.stderr
    nm = subprocess.run(["nm", "-D", "--defined-only", str(so)], capture_output=True, text=True)
    if nm.returncode == 0:
        assert "sidekick_plugin" in nm.stdout
    up = upstream()
    ini = pl_ini(f"""\
[plugin hello]
load = {so}

[listener main]
address = 127.0.0.1:{{listen}}

[route all]
listener = main
cluster = up
plugins = hello

[cluster up]
endpoints = 127.0.0.1:{{up}}
""")
    sk = sidekick(ini, up=up.port)
    r = get(sk, "/hi")
    assert r.status == 200, r
    assert r.header("x-hello") == "world", r
    assert len(up.requests) == 1


# ---- discovery: set_endpoints and post_to_workers (fx_discovery) ----------------------------------


def discovery_ini(endpoints: str, workers: int = 2) -> str:
    return pl_ini(f"""
[plugin disco]
load = fx_discovery.so
cluster = up
endpoints = {endpoints}
delay_ms = 300

[listener main]
address = 127.0.0.1:{{listen}}

[route all]
listener = main
cluster = up

[cluster up]
endpoints = 127.0.0.1:{{dead}}
connect_timeout = 500ms
""", workers=workers)


def test_set_endpoints_moves_traffic(sidekick, upstream):
    """A plugin replaces a cluster's endpoints from a main-loop timer: the
    dead static endpoint gives 502 before, the discovered upstream serves
    after; /clusters shows the new set; every worker ran the posted work."""
    up = upstream(lambda req: Reply(body=b"discovered"))
    sk = sidekick(discovery_ini(f"127.0.0.1:{up.port}"), dead=free_port())
    before = http_request(sk.port("listen"), "GET", "/a")
    if metric(sk, "sidekick_plugin_fx_discovery_updates_total", instance="disco") in (None, 0):
        assert_local_reply(before, 502, "upstream_connect_failure")
    wait_metric(sk, "sidekick_plugin_fx_discovery_updates_total", 1, instance="disco")
    wait_metric(sk, "sidekick_plugin_fx_discovery_posts_total", 2, instance="disco")
    for i in range(6):
        r = http_request(sk.port("listen"), "GET", f"/b{i}")
        assert r.status == 200 and r.body == b"discovered", r
    assert sorted(q.target for q in up.requests) == sorted(f"/b{i}" for i in range(6))
    clusters = sk.admin_get("/clusters")
    assert f"127.0.0.1:{up.port}".encode() in clusters.body, clusters.body


def test_set_endpoints_empty_gives_503(sidekick, upstream):
    up = upstream(lambda req: Reply(body=b"static"))
    sk = sidekick(discovery_ini(""), dead=up.port)
    r = http_request(sk.port("listen"), "GET", "/x")
    wait_metric(sk, "sidekick_plugin_fx_discovery_updates_total", 1, instance="disco")
    r = http_request(sk.port("listen"), "GET", "/y")
    assert_local_reply(r, 503, "no_healthy_upstream")


def test_set_endpoints_unknown_cluster_is_refused(sidekick, upstream):
    up = upstream(lambda req: Reply(body=b"static"))
    ini = discovery_ini(f"127.0.0.1:{up.port}").replace("cluster = up\nendpoints", "cluster = nope\nendpoints")
    sk = sidekick(ini, dead=up.port)
    wait_metric(sk, "sidekick_plugin_fx_discovery_posts_total", 2, instance="disco")
    assert metric(sk, "sidekick_plugin_fx_discovery_updates_total", instance="disco") == 0
    assert "unknown cluster 'nope'" in sk.stderr_text()
    r = http_request(sk.port("listen"), "GET", "/z")
    assert r.status == 200 and r.body == b"static"


def test_set_endpoints_replaces_pooled_endpoint(sidekick, upstream):
    """The endpoint that leaves had a pooled keep-alive connection: its pool
    is dropped (connection closed) and new requests go to the new set."""
    a = upstream(lambda req: Reply(body=b"a"))
    b = upstream(lambda req: Reply(body=b"b"))
    sk = sidekick(discovery_ini(f"127.0.0.1:{b.port}", workers=1), dead=a.port)
    r = http_request(sk.port("listen"), "GET", "/first")
    if metric(sk, "sidekick_plugin_fx_discovery_updates_total", instance="disco") in (None, 0):
        assert r.status == 200 and r.body == b"a", r
    wait_metric(sk, "sidekick_plugin_fx_discovery_updates_total", 1, instance="disco")
    for i in range(4):
        r = http_request(sk.port("listen"), "GET", f"/n{i}")
        assert r.status == 200 and r.body == b"b", r
    assert sorted(q.target for q in b.requests) == [f"/n{i}" for i in range(4)]
    assert len(a.requests) <= 1


def test_config_endpoint_lists_plugins(sidekick, upstream):
    """GET /config shows the plugin instances (path, the plugin's own name,
    keys) and the chains of listeners and routes."""
    import json
    up = upstream(lambda req: Reply(body=b"ok"))
    sk = sidekick(pl_ini("""
[plugin tag-a]
load = fx_headers.so
tag = a

[listener main]
address = 127.0.0.1:{listen}
plugins = tag-a

[route all]
listener = main
cluster = up
plugins = tag-a

[cluster up]
endpoints = 127.0.0.1:{up}
"""), up=up.port)
    cfg = json.loads(sk.admin_get("/config").body)
    [p] = cfg["plugins"]
    assert p["name"] == "tag-a" and p["plugin"] == "fx_headers" and p["keys"] == {"tag": "a"}
    assert p["path"].endswith("/fx_headers.so")
    assert cfg["listeners"][0]["plugins"] == ["tag-a"]
    assert cfg["routes"][0]["plugins"] == ["tag-a"]



# ---- ABI 1.1 (fx_abi11) and a 1.0 plugin under the 1.1 host (fx_abi10) --------------------------


def test_abi10_plugin_loads_and_runs_under_11_host(sidekick, upstream):
    """fx_abi10 says abi_minor 0 and has the 1.0 descriptor layout (a poison
    pointer where 1.1 has on_cluster): it loads, its on_request edits the
    head the upstream receives, its on_log runs once per request."""
    up = upstream(lambda req: Reply(body=b"ok"))
    sk = sidekick(pl_ini("""
[plugin old]
load = fx_abi10.so

[listener main]
address = 127.0.0.1:{listen}

[route all]
listener = main
cluster = up
plugins = old

[cluster up]
endpoints = 127.0.0.1:{up}
"""), up=up.port)
    for i in range(3):
        r = get(sk, f"/old{i}")
        assert r.status == 200 and r.body == b"ok", r
    assert [q.header("x-abi10") for q in up.requests] == ["1", "1", "1"]
    wait_metric(sk, "sidekick_plugin_fx_abi10_logs_total", 3, instance="old")


def test_abi10_plugin_named_by_discovery_is_refused(tmp_path, sidekick_bin):
    """A cluster's `discovery` naming a 1.0 plugin is a config error; the host
    does not read the (absent) on_cluster member of a 1.0 descriptor."""
    ini = tmp_path / "old.ini"
    text = pl_ini("""
[plugin old]
load = fx_abi10.so

[listener main]
address = 127.0.0.1:1

[route all]
listener = main
cluster = c

[cluster c]
discovery = old some-arg
""").replace("{admin}", "2")
    ini.write_text(text)
    res = run_sidekick(["-t", "-c", str(ini)])
    assert res.returncode == 1, res
    err = res.stderr
    assert "[cluster c] discovery:" in err and "no on_cluster hook (plugin ABI 1.1)" in err, err
    line = text.splitlines().index("discovery = old some-arg") + 1
    assert f"{ini}:{line}:" in err, err


def abi11_ini(out, body, workers=1, extra_keys=""):
    return pl_ini(f"""
[plugin x11]
load = fx_abi11.so
out = {out}
{extra_keys}

[listener main]
address = 127.0.0.1:{{listen}}
plugins = x11
""" + body, workers=workers)


def read_events(path, kind):
    import json
    if not os.path.exists(path):
        return []
    return [e for e in (json.loads(l) for l in open(path).read().splitlines() if l.strip())
            if e["event"] == kind]


def wait_events(path, kind, n, timeout=5.0):
    assert wait_for(lambda: len(read_events(path, kind)) >= n, timeout), read_events(path, kind)
    return read_events(path, kind)


def raw_exchange(port, data: bytes) -> bytes:
    """Sends `data` (one request with Connection: close), returns every byte
    the proxy sent until it closed."""
    s = socket.create_connection(("127.0.0.1", port), timeout=10)
    s.sendall(data)
    got = bytearray()
    while True:
        b = s.recv(65536)
        if not b:
            break
        got += b
    s.close()
    return bytes(got)


def test_request_id_and_info_seen_by_on_log(sidekick, upstream, tmp_path):
    """request_id is the x-request-id the upstream got; request_info in on_log
    has the endpoint, one attempt, the status, an ordered timeline and the
    byte counts of what the client really sent and received."""
    out = tmp_path / "events.jsonl"
    up = upstream(lambda req: Reply(body=b"x" * 1000, headers=[("x-up", "1")]))
    sk = sidekick(abi11_ini(out, """
[route all]
listener = main
cluster = up

[cluster up]
endpoints = 127.0.0.1:{up}
"""), up=up.port)
    body = b"b" * 321
    req = (b"POST /info?q=1 HTTP/1.1\r\nHost: svc.test\r\nX-Request-Id: rid-abc-123\r\n"
           b"Content-Length: 321\r\nConnection: close\r\n\r\n" + body)
    got = raw_exchange(sk.port("listen"), req)
    assert got.startswith(b"HTTP/1.1 200"), got[:200]
    assert got.endswith(b"x" * 1000)
    [q] = up.requests
    assert q.body == body
    assert q.header("x-request-id") == "rid-abc-123"
    assert q.header("x-fx-request-id") == "rid-abc-123"
    [e] = wait_events(out, "log", 1)
    assert e["request_id"] == "rid-abc-123"
    assert e["endpoint"] == f"127.0.0.1:{up.port}"
    assert e["attempts"] == 1 and e["status"] == 200 and e["reason"] is None
    assert 0 < e["start"] <= e["connect"] <= e["first_byte"] <= e["end"], e
    assert e["received"] == len(req), (e, len(req))
    assert e["sent"] == len(got), (e, len(got))
    assert e["size"] == 96  # all of the 1.1 struct (x86-64 layout) was filled


def test_generated_request_id_matches_upstream(sidekick, upstream, tmp_path):
    out = tmp_path / "events.jsonl"
    up = upstream(lambda req: Reply(body=b"ok"))
    sk = sidekick(abi11_ini(out, """
[route all]
listener = main
cluster = up

[cluster up]
endpoints = 127.0.0.1:{up}
"""), up=up.port)
    for i in range(2):
        assert get(sk, f"/g{i}").status == 200
    events = wait_events(out, "log", 2)
    ids = [q.header("x-request-id") for q in up.requests]
    assert all(ids) and ids[0] != ids[1]
    assert [e["request_id"] for e in events] == ids
    assert [q.header("x-fx-request-id") for q in up.requests] == ids


def test_info_after_retry_to_other_endpoint(sidekick, upstream, tmp_path):
    """A dead first endpoint and one retry: the request that tried twice
    reports 2 attempts, the live endpoint, and the last attempt's timeline."""
    out = tmp_path / "events.jsonl"
    up = upstream(lambda req: Reply(body=b"ok"))
    sk = sidekick(abi11_ini(out, """
[route all]
listener = main
cluster = up
retries = 1

[cluster up]
endpoints = 127.0.0.1:{dead}, 127.0.0.1:{up}
connect_timeout = 500ms
"""), up=up.port, dead=free_port())
    for i in range(4):
        r = get(sk, f"/r{i}")
        assert r.status == 200, r
    events = wait_events(out, "log", 4)
    assert {e["endpoint"] for e in events} == {f"127.0.0.1:{up.port}"}
    assert {e["attempts"] for e in events} <= {1, 2} and 2 in {e["attempts"] for e in events}, events
    for e in events:
        assert 0 < e["start"] <= e["connect"] <= e["first_byte"] <= e["end"], e
    last = events[-1]
    assert metric(sk, "sidekick_plugin_fx_abi11_attempts", instance="x11", code_class="2xx") == last["attempts"]


def test_info_of_local_reply(sidekick, upstream, tmp_path):
    """No route: no endpoint, no attempt, no upstream times, the reason."""
    out = tmp_path / "events.jsonl"
    sk = sidekick(abi11_ini(out, """
[route only]
listener = main
path = /only
respond = 200 fine
"""))
    r = get(sk, "/elsewhere")
    assert_local_reply(r, 404, "no_route")
    [e] = wait_events(out, "log", 1)
    assert e["status"] == 404 and e["reason"] == "no_route"
    assert e["endpoint"] is None and e["attempts"] == 0
    assert e["connect"] == 0 and e["first_byte"] == 0
    assert 0 < e["start"] <= e["end"]
    assert e["request_id"]


DISCOVERY11 = """
[route a]
listener = main
prefix = /a
cluster = api

[route b]
listener = main
cluster = plain

[cluster api]
discovery = x11   api.shop.svc:8080  extra words
connect_timeout = 500ms

[cluster plain]
discovery = x11
endpoints = 127.0.0.1:{dead}
connect_timeout = 500ms
"""


def test_discovery_arg_reaches_plugin_and_weights_show(sidekick, upstream, tmp_path):
    """`discovery = NAME ARG`: on_cluster gets each naming cluster with its
    ARG (or null), sets weighted endpoints; traffic goes there; /clusters
    shows the weights, /config the discovery instance and ARG."""
    import json
    out = tmp_path / "events.jsonl"
    up1 = upstream(lambda req: Reply(body=b"one"))
    up2 = upstream(lambda req: Reply(body=b"two"))
    sk = sidekick(abi11_ini(out, DISCOVERY11,
                            extra_keys=f"weights = 127.0.0.1:{up1.port} 5, 127.0.0.1:{up2.port} 10000"),
                  dead=free_port())
    events = read_events(out, "cluster")
    assert events == [{"event": "cluster", "cluster": "api", "arg": "api.shop.svc:8080  extra words"},
                      {"event": "cluster", "cluster": "plain", "arg": None}], events
    # smooth weighted round robin: weight 10000 against 5 takes the first picks
    bodies = [get(sk, f"/a{i}").body for i in range(4)]
    assert bodies == [b"two"] * 4, bodies
    assert get(sk, "/b").body == b"two"
    clusters = {c["name"]: c for c in json.loads(sk.admin_get("/clusters").body)["clusters"]}
    for name in ("api", "plain"):
        eps = {e["address"]: e["weight"] for e in clusters[name]["endpoints"]}
        assert eps == {f"127.0.0.1:{up1.port}": 5, f"127.0.0.1:{up2.port}": 10000}, clusters[name]
    cfg = {c["name"]: c for c in json.loads(sk.admin_get("/config").body)["clusters"]}
    assert cfg["api"]["discovery"] == {"instance": "x11", "arg": "api.shop.svc:8080  extra words"}
    assert cfg["plain"]["discovery"] == {"instance": "x11", "arg": None}
    assert cfg["api"]["endpoints"] == []


def test_discovered_endpoints_show_their_source(sidekick, upstream, tmp_path):
    """/clusters shows "plugin" as the source of endpoints set with
    set_endpoints_weighted (ABI 1.2's set_endpoints_from names its own)."""
    import json
    out = tmp_path / "events.jsonl"
    up1 = upstream(lambda req: Reply(body=b"one"))
    up2 = upstream(lambda req: Reply(body=b"two"))
    sk = sidekick(abi11_ini(out, DISCOVERY11,
                            extra_keys=f"weights = 127.0.0.1:{up1.port} 5, 127.0.0.1:{up2.port} 10000"),
                  dead=free_port())
    assert [get(sk, f"/s{i}").body for i in range(2)] == [b"two", b"two"]

    def clusters_now():
        return {c["name"]: c for c in json.loads(sk.admin_get("/clusters").body)["clusters"]}

    # the worker counts a request done just after its last byte went out:
    # the client may ask /clusters before that
    assert wait_for(lambda: all(e["active_requests"] == 0 for c in clusters_now().values()
                                for e in c["endpoints"]), 5)
    clusters = clusters_now()
    for name in ("api", "plain"):
        eps = clusters[name]["endpoints"]
        assert [e["source"] for e in eps] == ["plugin", "plugin"], eps
        assert [e["active_requests"] for e in eps] == [0, 0], eps
        assert [e["healthy"] for e in eps] == [True, True], eps
    assert len(up1.requests) == 0 and len(up2.requests) == 2


@pytest.mark.parametrize("lb", ["round_robin", "random", "least_request"])
def test_balancers_honour_weights(sidekick, upstream, tmp_path, lb):
    """Two upstreams of weights 1 and 3 (set_endpoints_weighted from
    on_cluster): of 400 requests one after the other, round_robin sends
    exactly 100 and 300 (smooth weighted round robin, one worker), random
    and least_request (every endpoint idle, so the weighted draw decides)
    about that; counted by what each upstream received."""
    out = tmp_path / "events.jsonl"
    light = upstream(lambda req: Reply(body=b"light"))
    heavy = upstream(lambda req: Reply(body=b"heavy"))
    sk = sidekick(abi11_ini(out, f"""
[route all]
listener = main
cluster = api

[cluster api]
discovery = x11
lb = {lb}
""", extra_keys=f"weights = 127.0.0.1:{light.port} 1, 127.0.0.1:{heavy.port} 3"))
    n = 400
    for i in range(n):
        r = http_request(sk.port("listen"), "GET", f"/w{i}")
        assert r.status == 200, r
    got = {"light": len(light.requests), "heavy": len(heavy.requests)}
    assert got["light"] + got["heavy"] == n
    if lb == "round_robin":
        assert got == {"light": 100, "heavy": 300}, got
        # smooth: never the light one twice in a row, the heavy one at most 3 in a row
        order = sorted([(q.path, "l") for q in light.requests] + [(q.path, "h") for q in heavy.requests],
                       key=lambda x: int(x[0][2:]))
        seq = "".join(x[1] for x in order)
        assert "ll" not in seq and "hhhh" not in seq, seq[:40]
    else:
        # 400 draws of p = 3/4: a standard deviation is 8.7 requests; 45 is over 5 of them
        assert abs(got["heavy"] - 300) <= 45, got


def test_static_endpoints_have_weight_one(sidekick, upstream):
    import json
    up = upstream(lambda req: Reply(body=b"ok"))
    sk = sidekick(discovery_ini(f"127.0.0.1:{up.port}", workers=1), dead=free_port())
    [c] = json.loads(sk.admin_get("/clusters").body)["clusters"]
    assert [e["weight"] for e in c["endpoints"]] == [1]


def check_refused_ini(tmp_path, text, needles):
    ini = tmp_path / "bad.ini"
    ini.write_text(text.replace("{admin}", "2").replace("{listen}", "1").replace("{dead}", "3"))
    res = run_sidekick(["-t", "-c", str(ini)])
    assert res.returncode == 1, res
    for n in needles:
        assert n in res.stderr, res.stderr
    return res


def test_discovery_arg_refused_by_plugin(tmp_path, sidekick_bin):
    out = tmp_path / "events.jsonl"
    check_refused_ini(tmp_path, abi11_ini(out, DISCOVERY11, extra_keys="refuse = api.shop.svc:8080  extra words"),
                      ["[cluster api] discovery:", "[plugin x11] refused the cluster:",
                       "ARG 'api.shop.svc:8080  extra words' refused for cluster api"])


def test_discovery_unknown_instance_refused(tmp_path, sidekick_bin):
    out = tmp_path / "events.jsonl"
    check_refused_ini(tmp_path, abi11_ini(out, DISCOVERY11.replace("discovery = x11   api", "discovery = nope api")),
                      ["[cluster api] discovery: unknown plugin 'nope' (no [plugin nope] section)"])


@pytest.mark.parametrize("weight", ["0", "10001"])
def test_discovery_bad_weight_refused(tmp_path, sidekick_bin, weight):
    out = tmp_path / "events.jsonl"
    res = check_refused_ini(tmp_path, abi11_ini(out, DISCOVERY11, extra_keys=f"weights = 127.0.0.1:9 {weight}"),
                            ["set_endpoints_weighted(api) failed"])
    assert f"weight {weight} out of range 1..10000" in res.stderr


def test_labelled_metrics(sidekick, upstream, tmp_path):
    """A labelled counter and gauge: one series per declared value, labelled
    instance and code_class; bad registrations refused (and logged)."""
    out = tmp_path / "events.jsonl"
    up = upstream(lambda req: Reply(status=503 if req.target == "/fail" else 200, body=b"ok"))
    sk = sidekick(abi11_ini(out, """
[route all]
listener = main
cluster = up

[cluster up]
endpoints = 127.0.0.1:{up}
"""), up=up.port)
    for p in ["/a", "/b", "/fail"]:
        get(sk, p)
    wait_metric(sk, "sidekick_plugin_fx_abi11_responses_total", 2, instance="x11", code_class="2xx")
    wait_metric(sk, "sidekick_plugin_fx_abi11_responses_total", 1, instance="x11", code_class="5xx")
    text = sk.admin_get("/metrics").body.decode()
    lines = [l for l in text.splitlines() if l.startswith("sidekick_plugin_fx_abi11_responses_total")]
    assert lines == [f'sidekick_plugin_fx_abi11_responses_total{{instance="x11",code_class="{c}"}} {n}'
                     for c, n in [("1xx", 0), ("2xx", 2), ("3xx", 0), ("4xx", 0), ("5xx", 1), ("other", 0)]], lines
    assert text.count("# TYPE sidekick_plugin_fx_abi11_responses_total counter\n") == 1
    assert "# TYPE sidekick_plugin_fx_abi11_attempts gauge\n" in text
    assert metric(sk, "sidekick_plugin_fx_abi11_refused_registrations", instance="x11") == 9
    assert "fx_abi11_bad" not in text and "bad-name" not in text
    err = sk.stderr_text()
    for needle in ["metric 'fx_abi11_bad_many' refused: more than 32 label values",
                   "metric 'fx_abi11_bad_none' refused: no label values",
                   "metric 'fx_abi11_bad_label' refused: the label name is not",
                   "metric 'fx_abi11_bad_instance' refused: the label name is reserved",
                   "metric 'fx_abi11_bad_dup' refused: a label value is repeated",
                   "metric 'fx_abi11_bad_quote' refused: a label value has",
                   "metric 'fx_abi11_bad_empty' refused: a label value is empty",
                   "metric 'bad-name' refused: the name is not",
                   "metric 'fx_abi11_responses_total' refused: the name is registered already"]:
        assert needle in err, (needle, err)


def test_timers_left_at_worker_fini_and_destroy_are_stopped(sidekick, upstream, tmp_path):
    """fx_abi11 with leak = on never stops its one-hour timers: when a reload
    retires its generation, the host stops the one on each worker after
    worker_fini and the main-loop one after destroy, and says so."""
    out = tmp_path / "events.jsonl"
    up = upstream(lambda req: Reply(body=b"ok"))
    body = """
[route all]
listener = main
cluster = up

[cluster up]
endpoints = 127.0.0.1:{up}
"""
    sk = sidekick(abi11_ini(out, body, workers=2, extra_keys="leak = on"), up=up.port)
    assert get(sk, "/before").status == 200
    sk.config.write_text(abi11_ini(out, body, workers=2, extra_keys="leak = off").format(**sk.ports))
    r = http_request(sk.admin_port, "POST", "/reload")
    assert r.status == 200, r
    assert wait_for(lambda: "after destroy; stopped" in sk.stderr_text(), 10), sk.stderr_text()
    err = sk.stderr_text()
    assert err.count("plugin x11: 1 timer(s) and 0 fd watcher(s) still active after worker_fini; stopped") == 2, err
    assert err.count("plugin x11: 1 timer(s) and 0 fd watcher(s) still active after destroy; stopped") == 1, err
    assert get(sk, "/after").status == 200
    assert sk.running()
