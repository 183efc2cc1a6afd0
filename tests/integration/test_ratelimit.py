"""ratelimit.so (plugins/ratelimit, built into BUILD/plugins through
pkg-config alone) through the real binary: what the client got, what the
upstream received, and the decision counters.

Run by hand with:

    SIDEKICK_BIN=build/sidekick SIDEKICK_BUILD_DIR=build SIDEKICK_PLUGIN_DIR=build/tests/plugins \\
        /usr/bin/python3 -m pytest -q tests/integration/test_ratelimit.py
"""

import http.client
import os
import ssl
import threading
import time

import pytest

from certs import PKI
from harness import (PLUGIN_DIR, REPO, Reply, assert_local_reply, http_request, metric_value,
                     missing_fixtures, parse_prometheus, run_sidekick, sk_ini)

BUILD_DIR = os.environ.get("SIDEKICK_BUILD_DIR", str(REPO / "build"))
SHIPPED_DIR = os.path.join(BUILD_DIR, "plugins")
RL = os.path.join(SHIPPED_DIR, "ratelimit.so")
DECISIONS = "sidekick_plugin_ratelimit_decisions_total"
TD = "spiffe://td.test"


@pytest.fixture(autouse=True)
def _built():
    if not os.path.exists(RL):
        pytest.fail(f"ratelimit.so not built in {SHIPPED_DIR} (set SIDEKICK_BUILD_DIR)")


def ini(keys: str, workers: int = 1, plugins: str = "rl", more: str = "", routes: str = "") -> str:
    """One listener, a catch-all route through `plugins`, the recording
    upstream {up}; [plugin rl] loads ratelimit.so with `keys`."""
    body = f"""plugin_dir = {PLUGIN_DIR}

[plugin rl]
load = {RL}
{keys}
{more}
[listener main]
address = 127.0.0.1:{{listen}}
{routes}
[route all]
listener = main
cluster = up
plugins = {plugins}

[cluster up]
endpoints = 127.0.0.1:{{up}}
"""
    # plugin_dir belongs in [sidekick]: sk_ini's `extra` goes there
    head, rest = body.split("\n", 1)
    return sk_ini(rest, workers=workers, extra=head)


def get(sk, path="/", headers=None, source=None):
    if source is None:
        return http_request(sk.port("listen"), "GET", path, headers=headers)
    c = http.client.HTTPConnection("127.0.0.1", sk.port("listen"), timeout=10,
                                   source_address=(source, 0))
    try:
        c.request("GET", path, headers=dict(headers or {}))
        r = c.getresponse()
        r.read()
        return r.status
    finally:
        c.close()


def statuses(sk, n, **kw):
    out = []
    for _ in range(n):
        r = get(sk, **kw)
        out.append(r if isinstance(r, int) else r.status)
    return out


def decisions(sk):
    r = sk.admin_get("/metrics")
    assert r.status == 200, r
    s = parse_prometheus(r.body.decode())
    return (metric_value(s, DECISIONS, instance="rl", result="allowed"),
            metric_value(s, DECISIONS, instance="rl", result="limited"))


# --------------------------------------------------------------------------
# config errors


@pytest.mark.parametrize("keys,needle", [
    ("rate = 10", "rate: expected N/s, N/m or N/h"),
    ("rate = 10/d", "rate: expected N/s, N/m or N/h"),
    ("rate = 0/s", "rate: expected N/s, N/m or N/h"),
    ("rate = -1/s", "rate: expected N/s, N/m or N/h"),
    ("rate = 10/s\nburst = 0", "burst: expected a whole number"),
    ("rate = 10/s\nburst = 5x", "burst: expected a whole number"),
    ("rate = 10/s\nkey = cookie:x", "key: expected client_ip, header:NAME, identity, meta:NAME, route or all"),
    ("rate = 10/s\nkey = header:", "key: expected"),
    ("rate = 10/s\nkey = header:bad name", "key: expected"),
    ("rate = 10/s\nmax_keys = 0", "max_keys: expected a whole number"),
    ("rate = 10/s\nheaders = yes", "headers: expected on or off"),
    ("rate = 10/s\nscope = world", "scope: expected local or global"),
    ("rate = 10/s\nscope = global", "scope: global (Redis) is not supported"),
    ("rate = 10/s\nredis = 127.0.0.1:6379", "redis: only for scope = global"),
    ("rate = 10/s\nrat = 1/s", "unknown key 'rat'"),
    ("burst = 3", "rate is required"),
])
def test_bad_config_refused(tmp_path, sidekick_bin, keys, needle):
    text = ini(keys).format(admin=2, listen=1, up=3)
    path = tmp_path / "rl.ini"
    path.write_text(text)
    res = run_sidekick(["-t", "-c", str(path)])
    assert res.returncode == 1, res
    assert needle in res.stderr, res.stderr
    assert "[plugin rl]" in res.stderr, res.stderr
    if "required" not in needle:
        bad = keys.splitlines()[-1]
        line = text.splitlines().index(bad) + 1
        assert f"ratelimit: line {line}:" in res.stderr, res.stderr


def test_good_config_checks(tmp_path, sidekick_bin):
    path = tmp_path / "ok.ini"
    path.write_text(ini("rate = 100/s\nburst = 200\nkey = header:X-Api-Key\nscope = local\n"
                        "max_keys = 5000\nheaders = on").format(admin=2, listen=1, up=3))
    res = run_sidekick(["-t", "-c", str(path)])
    assert res.returncode == 0, res


# --------------------------------------------------------------------------
# answers


def test_429_retry_after_and_headers(sidekick, upstream):
    """rate = 2/m: a bucket of 2 that gains a token every 30 s."""
    up = upstream(lambda req: Reply(body=b"ok"))
    sk = sidekick(ini("rate = 2/m\nkey = all\nheaders = on"), up=up.port)
    r1, r2, r3 = get(sk, "/1"), get(sk, "/2"), get(sk, "/3")
    assert r1.status == 200 and r2.status == 200, (r1, r2)
    for r in (r1, r2):
        assert r.header_all("ratelimit-policy") == ['"rl";q=2;w=60'], r
    assert r1.header_all("ratelimit") == ['"rl";r=1;t=30'], r1
    assert r2.header_all("ratelimit") == ['"rl";r=0;t=60'], r2
    assert_local_reply(r3, 429, "rate_limited")
    retry = int(r3.header("retry-after"))
    assert 29 <= retry <= 30, r3  # ceil(seconds to the next token)
    assert r3.header_all("ratelimit-policy") == ['"rl";q=2;w=60'], r3
    assert r3.header_all("ratelimit") == [f'"rl";r=0;t={retry}'], r3
    assert [q.path for q in up.requests] == ["/1", "/2"]
    assert decisions(sk) == (2, 1)


def test_headers_off_by_default(sidekick, upstream):
    up = upstream(lambda req: Reply(body=b"ok"))
    sk = sidekick(ini("rate = 1/h\nkey = all"), up=up.port)
    r1, r2 = get(sk, "/1"), get(sk, "/2")
    assert r1.status == 200 and r1.header_all("ratelimit") == [] and r1.header_all("ratelimit-policy") == []
    assert_local_reply(r2, 429, "rate_limited")
    assert r2.header("retry-after") in ("3600", "3599"), r2
    assert r2.header_all("ratelimit") == [] and r2.header_all("ratelimit-policy") == []
    assert [q.path for q in up.requests] == ["/1"]


# --------------------------------------------------------------------------
# keys (rate = 1/h, burst 1: the first request of a key passes, the second not)


def test_key_client_ip(sidekick, upstream):
    up = upstream(lambda req: Reply(body=b"ok"))
    sk = sidekick(ini("rate = 1/h\nkey = client_ip"), up=up.port)
    assert statuses(sk, 2, source="127.0.0.1") == [200, 429]
    assert statuses(sk, 2, source="127.0.0.2") == [200, 429]
    assert len(up.requests) == 2
    assert decisions(sk) == (2, 2)


def test_key_header(sidekick, upstream):
    up = upstream(lambda req: Reply(body=b"ok"))
    sk = sidekick(ini("rate = 1/h\nkey = header:X-User"), up=up.port)
    assert statuses(sk, 2, headers={"X-User": "u1"}) == [200, 429]
    assert statuses(sk, 2, headers={"x-user": "u2"}) == [200, 429]
    # requests without the header share one bucket of their own
    assert statuses(sk, 2) == [200, 429]
    assert sorted(q.header("x-user") or "-" for q in up.requests) == ["-", "u1", "u2"]


def test_key_meta(sidekick, upstream):
    """meta:user, set by fx_headers instances that run before ratelimit."""
    missing = missing_fixtures(["fx_headers"])
    assert not missing, f"fixture plugins not built: {missing} in {PLUGIN_DIR}"
    up = upstream(lambda req: Reply(body=b"ok"))
    more = ("[plugin alice]\nload = fx_headers.so\nset_meta = user=alice\n\n"
            "[plugin bob]\nload = fx_headers.so\nset_meta = user=bob\n")
    routes = ("[route a]\nlistener = main\nprefix = /a/\ncluster = up\nplugins = alice, rl\n\n"
              "[route b]\nlistener = main\nprefix = /b/\ncluster = up\nplugins = bob, rl\n")
    sk = sidekick(ini("rate = 1/h\nkey = meta:user", more=more, routes=routes), up=up.port)
    assert statuses(sk, 2, path="/a/1") == [200, 429]
    assert statuses(sk, 1, path="/b/1") == [200]   # bob: own bucket
    assert statuses(sk, 1, path="/a/2") == [429]   # another route, alice's bucket
    assert statuses(sk, 2, path="/other") == [200, 429]  # meta unset: the shared bucket
    assert [q.path for q in up.requests] == ["/a/1", "/b/1", "/other"]


def test_key_route_and_all(sidekick, upstream):
    up = upstream(lambda req: Reply(body=b"ok"))
    routes = "[route a]\nlistener = main\nprefix = /a/\ncluster = up\nplugins = rl\n\n"
    sk = sidekick(ini("rate = 1/h\nkey = route", routes=routes), up=up.port)
    assert statuses(sk, 2, path="/a/1") == [200, 429]
    assert statuses(sk, 2, path="/x") == [200, 429]
    sk.stop()
    sk2 = sidekick(ini("rate = 1/h\nkey = all", routes=routes), name="all.ini", up=up.port)
    assert statuses(sk2, 1, path="/a/1") == [200]
    assert statuses(sk2, 1, path="/x") == [429]
    assert statuses(sk2, 1, path="/a/2", headers={"X-User": "z"}) == [429]
    assert [q.path for q in up.requests] == ["/a/1", "/x", "/a/1"]


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    p = PKI(tmp_path_factory.mktemp("pki"))
    ca = p.ca("ca1")
    return {"ca": ca, "server": p.leaf("server", ca, uris=[TD + "/ns/shop/sa/backend"], dns=["backend.test"]),
            "front": p.leaf("front", ca, uris=[TD + "/ns/shop/sa/frontend"]),
            "ops": p.leaf("ops", ca, uris=[TD + "/ns/ops/sa/tool"])}


def tls_status(port, pki, leaf):
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.load_verify_locations(cafile=str(pki["ca"].cert))
    ctx.check_hostname = False
    if leaf is not None:
        ctx.load_cert_chain(str(leaf.cert), str(leaf.key))
    c = http.client.HTTPSConnection("127.0.0.1", port, timeout=10, context=ctx)
    try:
        c.request("GET", "/", headers={"Host": "backend.test"})
        r = c.getresponse()
        r.read()
        return r.status
    finally:
        c.close()


def test_key_identity(sidekick, upstream, pki):
    up = upstream(lambda req: Reply(body=b"ok"))
    srv = pki["server"]
    text = ini("rate = 1/h\nkey = identity").replace(
        "address = 127.0.0.1:{listen}\n", "address = 127.0.0.1:{listen}\ntls = srv\n")
    text += (f"\n[tls srv]\ncert = {srv.cert}\nkey = {srv.key}\nca = {pki['ca'].cert}\n"
             "verify = optional\n")
    sk = sidekick(text, up=up.port)
    port = sk.port("listen")
    assert [tls_status(port, pki, pki["front"]) for _ in range(2)] == [200, 429]
    assert [tls_status(port, pki, pki["ops"]) for _ in range(2)] == [200, 429]
    assert [tls_status(port, pki, None) for _ in range(2)] == [200, 429]  # no identity: shared
    assert len(up.requests) == 3


# --------------------------------------------------------------------------
# max_keys


def test_max_keys_drops_least_recently_used(sidekick, upstream):
    up = upstream(lambda req: Reply(body=b"ok"))
    sk = sidekick(ini("rate = 1/h\nkey = header:x-user\nmax_keys = 2"), up=up.port)
    u = lambda name: get(sk, headers={"x-user": name}).status  # noqa: E731
    assert [u("a"), u("a")] == [200, 429]   # a: empty bucket
    assert u("b") == 200                    # table: b, a
    assert u("c") == 200                    # full: a (least recently used) dropped
    assert u("b") == 429                    # b kept its empty bucket; table: b, c
    assert u("a") == 200                    # a is new again (full bucket); c dropped
    assert u("b") == 429
    assert u("c") == 200
    assert [q.header("x-user") for q in up.requests] == ["a", "b", "c", "a", "c"]


# --------------------------------------------------------------------------
# one limit for the whole sidecar


def test_local_limit_shared_by_two_workers(sidekick, upstream):
    """rate = 20/s, burst = 10, key = all, 2 workers, 16 keep-alive client
    connections (SO_REUSEPORT spreads them over both workers) sending as fast
    as they can for about 3 s. A token bucket admits at most burst + rate * T
    in any T seconds: T is measured from before the first request to after
    the last answer, so it covers the sidecar's window (bound exact, +1 for
    rounding). The lower bound has a stated tolerance of 10 % + 2 of
    rate * T for the clients' gaps. Per-worker buckets would admit up to
    twice as many."""
    rate, burst, conns, secs = 20, 10, 16, 3.0
    up = upstream(lambda req: Reply(body=b"ok"))
    sk = sidekick(ini(f"rate = {rate}/s\nburst = {burst}\nkey = all", workers=2), up=up.port)
    port = sk.port("listen")
    counts = {200: 0, 429: 0, "other": 0}
    lock = threading.Lock()
    start_evt = threading.Event()
    stop_at = [0.0]

    def client():
        c = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        start_evt.wait()
        for _ in range(100000):  # bounded
            if time.monotonic() >= stop_at[0]:
                break
            try:
                c.request("GET", "/t")
                r = c.getresponse()
                r.read()
                st = r.status
            except (OSError, http.client.HTTPException):
                c.close()
                c = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
                st = "other"
            with lock:
                counts[st if st in counts else "other"] += 1
        c.close()

    threads = [threading.Thread(target=client) for _ in range(conns)]
    for t in threads:
        t.start()
    t0 = time.monotonic()
    stop_at[0] = t0 + secs
    start_evt.set()
    for t in threads:
        t.join(30)
    elapsed = time.monotonic() - t0
    assert not any(t.is_alive() for t in threads)
    admitted = counts[200]
    assert counts["other"] == 0, counts
    assert counts[429] > admitted, counts  # the clients did push past the limit
    upper = burst + rate * elapsed + 1
    lower = burst + rate * secs - (0.1 * rate * secs + 2)
    print("ratelimit 2 workers:", counts, f"elapsed={elapsed:.2f}s bounds=[{lower:.1f}, {upper:.1f}]",
          worker_cpu_ticks(sk.pid))
    assert lower <= admitted <= upper, (counts, elapsed, lower, upper)
    assert up.wait_requests(admitted)
    assert len(up.requests) == admitted  # the upstream saw exactly the admitted ones
    assert decisions(sk) == (admitted, counts[429])
    # both workers served (SO_REUSEPORT put connections on each): each
    # sk-worker-N thread has CPU time of its own, so the bound above held for
    # a table that two workers shared
    busy = worker_cpu_ticks(sk.pid)
    assert len(busy) == 2 and all(t > 0 for t in busy.values()), busy


def worker_cpu_ticks(pid):
    """{thread name: utime + stime clock ticks} of the sk-worker-* threads."""
    out = {}
    for tid in os.listdir(f"/proc/{pid}/task"):
        with open(f"/proc/{pid}/task/{tid}/comm") as f:
            name = f.read().strip()
        if not name.startswith("sk-worker-"):
            continue
        with open(f"/proc/{pid}/task/{tid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        out[name] = int(fields[11]) + int(fields[12])  # utime, stime (fields 14, 15)
    return out
