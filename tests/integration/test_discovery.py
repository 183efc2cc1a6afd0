"""discovery.so (plugins/discovery) through the real binary: source = file
(inotify) and source = dns (c-ares against a real dnsmasq started here).
What the upstreams received, /clusters, the log lines and the metric.

Run by hand with:

    SIDEKICK_BIN=build/sidekick SIDEKICK_BUILD_DIR=build \\
        /usr/bin/python3 -m pytest -q tests/integration/test_discovery.py

The host side (weights honoured by the balancers, the discovery state in
/clusters, wait_for_endpoints) is tested on its own in
test_discovery_host.py; here it is what discovery.so makes of it.
"""

import json
import os
import shutil
import socket
import threading
import time
from pathlib import Path

import pytest

from dnsmasq import Dnsmasq
from harness import (REPO, Reply, Upstream, assert_local_reply, free_port, http_request, metric_value,
                     parse_prometheus, run_sidekick, sk_ini, wait_for)

BUILD_DIR = os.environ.get("SIDEKICK_BUILD_DIR", str(REPO / "build"))
SHIPPED_DIR = os.path.join(BUILD_DIR, "plugins")
DISC = os.path.join(SHIPPED_DIR, "discovery.so")
UPDATES = "sidekick_plugin_discovery_updates_total"


@pytest.fixture(autouse=True)
def _built():
    if not os.path.exists(DISC):
        pytest.fail(f"discovery.so not built in {SHIPPED_DIR} (set SIDEKICK_BUILD_DIR)")
    if not os.path.exists("/usr/sbin/dnsmasq"):
        pytest.fail("dnsmasq is not installed (apt-get install dnsmasq; see tests/run)")


@pytest.fixture
def dnsmasq(tmp_path):
    made = []

    def factory(hosts="", srv=None):
        d = Dnsmasq(tmp_path / f"dnsmasq{len(made)}", hosts=hosts, srv=srv)
        made.append(d)
        return d.start()

    yield factory
    for d in made:
        d.stop()


def ini(plugin: str, clusters: str, workers: int = 2, route_cluster: str = "api") -> str:
    """[plugin NAME] sections (`plugin`, with load = discovery.so added to
    each), the clusters, and one listener whose catch-all route goes to
    route_cluster."""
    plugin = plugin.replace("\nsource =", f"\nload = {DISC}\nsource =")
    return sk_ini(f"""{plugin}
[listener main]
address = 127.0.0.1:{{listen}}

[route all]
listener = main
cluster = {route_cluster}

{clusters}
""", workers=workers)


def get(sk, path="/"):
    return http_request(sk.port("listen"), "GET", path, timeout=10)


def clusters(sk) -> dict:
    r = sk.admin_get("/clusters")
    assert r.status == 200, r
    return {c["name"]: c for c in json.loads(r.body)["clusters"]}


def endpoints(sk, name="api") -> dict:
    """address -> (weight, source) of the cluster's set in force."""
    return {e["address"]: (e["weight"], e["source"]) for e in clusters(sk)[name]["endpoints"]}


def wait_endpoints(sk, want, name="api", timeout=10.0):
    """Waits until the cluster's addresses are exactly `want`."""
    want = set(want)
    ok = wait_for(lambda: set(endpoints(sk, name)) == want, timeout)
    assert ok, f"cluster {name}: {endpoints(sk, name)} != {sorted(want)}\n{sk.stderr_text()[-3000:]}"


def wait_log(sk, text, timeout=10.0, count=1):
    ok = wait_for(lambda: sk.stderr_text().count(text) >= count, timeout)
    assert ok, f"log line {text!r} not seen:\n{sk.stderr_text()[-3000:]}"


def discovery_state(sk, name="api") -> dict:
    """The cluster's "discovery" member of /clusters (state, message, ...)."""
    return clusters(sk)[name]["discovery"]


def metric(sk, name, **labels):
    return metric_value(parse_prometheus(sk.admin_get("/metrics").body.decode()), name, **labels)


def named(body: bytes):
    def h(req):
        return Reply(body=body)
    return h


def served(ups, n, sk, path="/r"):
    """n requests; the body of each (the upstream's name) in order."""
    out = []
    for i in range(n):
        r = get(sk, f"{path}{i}")
        assert r.status == 200, r
        out.append(r.body)
    return out


class Load:
    """Requests sent one after the other from a thread until stop():
    the status of each (every non-200 is a failed request)."""

    def __init__(self, sk):
        self.sk = sk
        self.statuses = []
        self.bodies = []
        self._stop = False
        self._t = threading.Thread(target=self._run, daemon=True)
        self._t.start()

    def _run(self):
        i = 0
        while not self._stop and i < 100000:
            i += 1
            try:
                r = get(self.sk, f"/load{i}")
                self.statuses.append(r.status)
                self.bodies.append(r.body)
            except OSError as e:
                self.statuses.append(repr(e))

    def stop(self):
        self._stop = True
        self._t.join(timeout=30)
        return self.statuses


# ==== source = file ==============================================================================

FILE_PLUGIN = """
[plugin files]
source = file
"""


def file_ini(path, workers=2):
    return ini(FILE_PLUGIN, f"[cluster api]\ndiscovery = files {path}\n", workers=workers)


def test_file_rewrite_in_place_moves_traffic(sidekick, upstream, tmp_path):
    """The file rewritten in place (open, truncate, write, close): requests
    move to the new endpoint; /clusters shows source file and the weights."""
    a = upstream(named(b"a"), name="a")
    b = upstream(named(b"b"), name="b")
    path = tmp_path / "api.endpoints"
    path.write_text(f"# the api service\n{a.addr}\n")
    sk = sidekick(file_ini(path))
    assert endpoints(sk) == {a.addr: (1, "file")}
    assert served([a, b], 4, sk) == [b"a"] * 4
    with open(path, "w") as f:
        f.write(f"{b.addr} 7   # moved\n")
    wait_endpoints(sk, [b.addr])
    assert endpoints(sk) == {b.addr: (7, "file")}
    before = len(a.requests)
    assert served([a, b], 4, sk, "/after") == [b"b"] * 4
    assert len(a.requests) == before
    assert sorted(q.target for q in b.requests) == [f"/after{i}" for i in range(4)]
    assert metric(sk, UPDATES, instance="files", source="file", result="applied") >= 2


def test_file_rename_over(sidekick, upstream, tmp_path):
    """An editor's save: a temp file renamed over the endpoint file."""
    a = upstream(named(b"a"))
    b = upstream(named(b"b"))
    path = tmp_path / "api.endpoints"
    path.write_text(f"{a.addr}\n")
    sk = sidekick(file_ini(path))
    assert served([a], 2, sk) == [b"a"] * 2
    tmp = tmp_path / ".api.endpoints.swp"
    tmp.write_text(f"{a.addr}\n{b.addr}\n")
    os.replace(tmp, path)
    wait_endpoints(sk, [a.addr, b.addr])
    got = served([a, b], 8, sk, "/both")
    assert set(got) == {b"a", b"b"}, got  # round robin over both
    assert any(q.target.startswith("/both") for q in b.requests)


def test_file_kubernetes_data_symlink_swap(sidekick, upstream, tmp_path):
    """A ConfigMap volume: api.endpoints -> ..data/api.endpoints, ..data ->
    ..TIMESTAMP; an update writes a new ..TIMESTAMP dir, swaps ..data with a
    rename and deletes the old dir."""
    a = upstream(named(b"a"))
    b = upstream(named(b"b"))
    vol = tmp_path / "config"
    (vol / "..2026_01").mkdir(parents=True)
    (vol / "..2026_01" / "api.endpoints").write_text(f"{a.addr}\n")
    os.symlink("..2026_01", vol / "..data")
    os.symlink("..data/api.endpoints", vol / "api.endpoints")
    sk = sidekick(file_ini(vol / "api.endpoints"))
    assert endpoints(sk) == {a.addr: (1, "file")}
    for n, (addr, old) in enumerate([(b.addr, "..2026_01"), (a.addr, "..2026_02")]):
        new = f"..2026_0{n + 2}"
        (vol / new).mkdir()
        (vol / new / "api.endpoints").write_text(f"{addr}\n")
        os.symlink(new, vol / "..data_tmp")
        os.replace(vol / "..data_tmp", vol / "..data")
        shutil.rmtree(vol / old)
        wait_endpoints(sk, [addr])
    assert served([a, b], 3, sk, "/k8s") == [b"a"] * 3
    assert sorted(q.target for q in a.requests) == [f"/k8s{i}" for i in range(3)]


def test_file_half_written_is_skipped_then_applied(sidekick, upstream, tmp_path):
    """A writer truncates and writes half a file, then pauses with it open:
    the half that does not parse is refused (the log names file:line) and
    the last good set keeps serving; the completed file applies."""
    a = upstream(named(b"a"))
    b = upstream(named(b"b"))
    c = upstream(named(b"c"))
    path = tmp_path / "api.endpoints"
    path.write_text(f"{a.addr}\n")
    sk = sidekick(file_ini(path))
    f = open(path, "w")
    try:
        f.write(f"{b.addr}\n127.0.0.1:\n")  # line 2 cut in the middle of the port... and closed later
        f.flush()
        os.fsync(f.fileno())
        wait_log(sk, f"{path}:2: '127.0.0.1:' is not IPv4:PORT or [IPv6]:PORT")
        assert endpoints(sk) == {a.addr: (1, "file")}
        assert served([a], 3, sk, "/mid") == [b"a"] * 3
        f.seek(0)
        f.truncate()
        f.write(f"{b.addr}\n{c.addr}\n")
    finally:
        f.close()
    wait_endpoints(sk, [b.addr, c.addr])
    assert not [q for q in a.requests if not q.target.startswith("/mid")]
    assert "keeping 1 endpoint(s)" in sk.stderr_text()


def test_file_half_written_without_newline_waits_for_close(sidekick, upstream, tmp_path):
    """Half a file that happens to parse ("127.0.0.1:80" of "127.0.0.1:8081")
    while its writer still has it open is not applied: a last line without
    its newline waits for the close."""
    a = upstream(named(b"a"))
    b = upstream(named(b"b"))
    path = tmp_path / "api.endpoints"
    path.write_text(f"{a.addr}\n")
    sk = sidekick(file_ini(path))
    half = b.addr[:-1]  # a valid address with the last digit of the port missing
    with open(path, "w") as f:
        f.write(half)
        f.flush()
        wait_log(sk, "looks incomplete")
        assert endpoints(sk) == {a.addr: (1, "file")}
        f.write(b.addr[-1] + "\n")
    wait_endpoints(sk, [b.addr])


def test_file_bad_line_keeps_the_last_good_set(sidekick, upstream, tmp_path):
    a = upstream(named(b"a"))
    b = upstream(named(b"b"))
    path = tmp_path / "api.endpoints"
    path.write_text(f"{a.addr}\n")
    sk = sidekick(file_ini(path))
    tmp = tmp_path / "new"
    tmp.write_text(f"{b.addr}\n\n# names are not resolved:\napi.internal:8080\n")
    os.replace(tmp, path)
    wait_log(sk, f"{path}:4: 'api.internal:8080': host names are not resolved here")
    assert endpoints(sk) == {a.addr: (1, "file")}
    state = discovery_state(sk)
    assert state["state"] == "stale" and f"{path}:4:" in state["message"], state
    assert served([a], 3, sk) == [b"a"] * 3
    assert not b.requests
    assert metric(sk, UPDATES, instance="files", source="file", result="failed") >= 1
    # fixed: applies
    tmp.write_text(f"{b.addr} 2\n")
    os.replace(tmp, path)
    wait_endpoints(sk, [b.addr])
    assert "file answers again" in sk.stderr_text()


def test_file_created_after_start(sidekick, upstream, tmp_path):
    """No file yet: the cluster starts empty (503 no_healthy_upstream),
    logged once; the file appears and serves."""
    a = upstream(named(b"a"))
    path = tmp_path / "later.endpoints"
    sk = sidekick(file_ini(path))
    assert endpoints(sk) == {}
    assert_local_reply(get(sk), 503, "no_healthy_upstream")
    state = discovery_state(sk)
    assert state["state"] == "waiting" and "does not exist yet, waiting for it; no answer yet" in state["message"]
    (tmp_path / "unrelated").write_text("x")  # another file of the directory: no new log line
    path.write_text(f"{a.addr}\n")
    wait_endpoints(sk, [a.addr])
    assert served([a], 2, sk) == [b"a"] * 2
    assert sk.stderr_text().count("does not exist yet") == 1
    assert discovery_state(sk)["state"] == "ok"


def test_file_wait_for_endpoints_holds_ready(sidekick, upstream, tmp_path):
    """wait_for_endpoints on the cluster: /ready stays 503 while the file
    does not exist, and turns 200 with its first answer."""
    a = upstream(named(b"a"))
    path = tmp_path / "api.endpoints"
    sk = sidekick(ini(FILE_PLUGIN, f"[cluster api]\ndiscovery = files {path}\nwait_for_endpoints = 60s\n"),
                  wait_ready=False)
    assert wait_for(lambda: sk.admin_get("/healthz").status == 200, 10)
    r = sk.admin_get("/ready")
    assert r.status == 503 and b"waiting for endpoints" in r.body, r
    path.write_text(f"{a.addr}\n")
    assert wait_for(lambda: sk.admin_get("/ready").status == 200, 10), sk.admin_get("/ready")
    assert served([a], 2, sk) == [b"a"] * 2


def test_file_directory_created_after_start(sidekick, upstream, tmp_path):
    """Not even the directory exists: it is retried, then watched."""
    a = upstream(named(b"a"))
    path = tmp_path / "sub" / "api.endpoints"
    sk = sidekick(file_ini(path))
    wait_log(sk, "cannot watch directory")
    (tmp_path / "sub").mkdir()
    path.write_text(f"{a.addr}\n")
    wait_endpoints(sk, [a.addr])


def test_file_deleted_keeps_the_last_good_set(sidekick, upstream, tmp_path):
    a = upstream(named(b"a"))
    b = upstream(named(b"b"))
    path = tmp_path / "api.endpoints"
    path.write_text(f"{a.addr}\n")
    sk = sidekick(file_ini(path))
    path.unlink()
    wait_log(sk, f"cannot open {path}")
    assert endpoints(sk) == {a.addr: (1, "file")}
    assert served([a], 2, sk) == [b"a"] * 2
    path.write_text(f"{b.addr}\n")
    wait_endpoints(sk, [b.addr])


def test_file_weights_in_clusters(sidekick, upstream, tmp_path):
    a = upstream(named(b"a"))
    b = upstream(named(b"b"))
    path = tmp_path / "api.endpoints"
    path.write_text(f"{a.addr} 1\n{b.addr} 3\n[::1]:9 10000\n{a.addr} 2   # a repeated address adds up\n")
    sk = sidekick(file_ini(path))
    assert endpoints(sk) == {a.addr: (3, "file"), b.addr: (3, "file"), "[::1]:9": (10000, "file")}


def test_file_weights_are_honoured(sidekick, upstream, tmp_path):
    """Shares per upstream follow the weights 1:3 (a quarter of 80 requests
    to a, give or take 6)."""
    a = upstream(named(b"a"))
    b = upstream(named(b"b"))
    path = tmp_path / "api.endpoints"
    path.write_text(f"{a.addr} 1\n{b.addr} 3\n")
    sk = sidekick(file_ini(path, workers=1))
    served([a, b], 80, sk)
    assert 14 <= len(a.requests) <= 26 and len(a.requests) + len(b.requests) == 80, (len(a.requests),
                                                                                    len(b.requests))


def test_file_no_failed_request_while_endpoints_change(sidekick, upstream, tmp_path):
    """Requests keep flowing while an endpoint is added and later removed:
    none fails, the added endpoint gets traffic, the removed one none after
    its removal was applied."""
    a = upstream(named(b"a"))
    b = upstream(named(b"b"))
    path = tmp_path / "api.endpoints"
    path.write_text(f"{a.addr}\n")
    sk = sidekick(file_ini(path))
    load = Load(sk)
    try:
        assert wait_for(lambda: len(load.statuses) >= 20, 10)
        tmp = tmp_path / "tmp"
        tmp.write_text(f"{a.addr}\n{b.addr}\n")
        os.replace(tmp, path)
        wait_endpoints(sk, [a.addr, b.addr])
        assert wait_for(lambda: len(b.requests) >= 10, 10)
        tmp.write_text(f"{b.addr}\n")
        os.replace(tmp, path)
        wait_endpoints(sk, [b.addr])
        after = len(a.requests)
        n = len(load.statuses)
        assert wait_for(lambda: len(load.statuses) >= n + 20, 10)
    finally:
        statuses = load.stop()
    assert statuses and all(s == 200 for s in statuses), [s for s in statuses if s != 200][:5]
    assert len(a.requests) <= after + 1  # at most the one in flight when the removal applied


def test_file_config_errors(tmp_path):
    def check(plugin, cluster, want):
        cfg = tmp_path / "t.ini"
        body = ini(plugin, cluster).replace("{listen}", str(free_port())).replace("{admin}", str(free_port()))
        cfg.write_text(body)
        r = run_sidekick(["-t", "-c", str(cfg)])
        assert r.returncode == 1, r
        assert want in r.stderr, r.stderr

    ok_cluster = f"[cluster api]\ndiscovery = files {tmp_path}/x\n"
    check("\n[plugin files]\nsource = files\n", ok_cluster, "source: expected dns, file or etcd, not 'files'")
    check("\n[plugin files]\nload = x\n".replace("load = x", f"load = {DISC}"), ok_cluster,
          "source is required")
    check(FILE_PLUGIN + "interval = 1s\n", ok_cluster, "unknown key 'interval'")
    check(FILE_PLUGIN, "[cluster api]\ndiscovery = files relative/api.endpoints\n", "an absolute path is required")
    check(FILE_PLUGIN, "[cluster api]\ndiscovery = files\n", "needs an argument")
    check(FILE_PLUGIN, f"[cluster api]\ndiscovery = files {tmp_path}\n", "is a directory")


# ==== source = dns ===============================================================================


def dns_plugin(resolver_port, **keys):
    extra = "".join(f"{k} = {v}\n" for k, v in keys.items())
    return f"""
[plugin dns]
source = dns
resolver = 127.0.0.1:{resolver_port}
{extra}"""


def pair_of_upstreams(upstream):
    """Two upstreams on the same port, on 127.0.0.1 and 127.0.0.2 (an A
    record gives the address, the cluster's ARG the port)."""
    for _ in range(20):
        a = upstream(named(b"a"), name="a")
        try:
            b = upstream(named(b"b"), name="b", port=a.port, host="127.0.0.2")
            return a, b
        except OSError:
            a.close()
    raise RuntimeError("no port free on both 127.0.0.1 and 127.0.0.2")


def test_dns_a_records_change(sidekick, upstream, dnsmasq):
    """api.test's A record changes (hosts file + SIGHUP): requests move to
    the new address; each upstream got exactly its requests."""
    a, b = pair_of_upstreams(upstream)
    d = dnsmasq(hosts="127.0.0.1 api.test\n")
    sk = sidekick(ini(dns_plugin(d.port, min_interval="100ms", max_interval="1s"),
                      f"[cluster api]\ndiscovery = dns api.test:{a.port}\n"))
    wait_endpoints(sk, [a.addr])
    assert endpoints(sk)[a.addr] == (1, "dns")
    assert served([a, b], 3, sk, "/one") == [b"a"] * 3
    d.set_hosts("127.0.0.2 api.test\n")
    wait_endpoints(sk, [b.addr])
    assert served([a, b], 3, sk, "/two") == [b"b"] * 3
    assert sorted(q.target for q in a.requests) == ["/one0", "/one1", "/one2"]
    assert sorted(q.target for q in b.requests) == ["/two0", "/two1", "/two2"]
    # an address added while requests flow: none fails, both serve
    load = Load(sk)
    try:
        assert wait_for(lambda: len(load.statuses) >= 10, 10)
        d.set_hosts("127.0.0.2 api.test\n127.0.0.1 api.test\n")
        wait_endpoints(sk, [a.addr, b.addr])
        assert wait_for(lambda: len([q for q in a.requests if q.target.startswith("/load")]) >= 5, 10)
    finally:
        statuses = load.stop()
    assert all(s == 200 for s in statuses), [s for s in statuses if s != 200][:5]
    assert ("A", "api.test") in d.queries("api.test") and ("AAAA", "api.test") in d.queries("api.test")
    assert metric(sk, UPDATES, instance="dns", source="dns", result="applied") >= 3


def test_dns_srv_priority_weight_port(sidekick, upstream, dnsmasq):
    """SRV: the lowest priority group serves (weights scaled, weight 0 the
    smallest share but not excluded, the port from the record); a group
    whose targets do not resolve gives way to the next."""
    a = upstream(named(b"a"))
    b = upstream(named(b"b"))
    z = upstream(named(b"z"))
    c = upstream(named(b"c"))
    d = dnsmasq(hosts="127.0.0.1 a.test b.test c.test z.test\n",
                srv=[f"_http._tcp.api.test,a.test,{a.port},10,10",
                     f"_http._tcp.api.test,b.test,{b.port},10,30",
                     f"_http._tcp.api.test,z.test,{z.port},10,0",
                     f"_http._tcp.api.test,c.test,{c.port},20,50"])
    sk = sidekick(ini(dns_plugin(d.port, min_interval="100ms", max_interval="1s"),
                      "[cluster api]\ndiscovery = dns _http._tcp.api.test\n"))
    wait_endpoints(sk, [a.addr, b.addr, z.addr])
    assert endpoints(sk) == {a.addr: (3333, "dns"), b.addr: (10000, "dns"), z.addr: (1, "dns")}
    got = served([a, b, z, c], 20, sk)
    assert {b"a", b"b"} <= set(got) <= {b"a", b"b", b"z"}, got  # z: 1 in 13334
    assert not c.requests
    # the priority 10 targets stop resolving: priority 20 takes over
    d.set_srv([f"_http._tcp.api.test,a.test,{a.port},10,10",
               f"_http._tcp.api.test,gone.test,{b.port},10,30",
               f"_http._tcp.api.test,c.test,{c.port},20,50"])
    d.set_hosts("127.0.0.1 c.test\n")
    wait_endpoints(sk, [c.addr])
    assert endpoints(sk) == {c.addr: (10000, "dns")}
    assert served([c], 3, sk, "/fallback") == [b"c"] * 3
    assert ("SRV", "_http._tcp.api.test") in d.queries()
    assert ("A", "gone.test") in d.queries("gone.test")


def test_dns_srv_weights_are_honoured(sidekick, upstream, dnsmasq):
    a = upstream(named(b"a"))
    b = upstream(named(b"b"))
    d = dnsmasq(hosts="127.0.0.1 a.test b.test\n",
                srv=[f"_http._tcp.api.test,a.test,{a.port},0,10", f"_http._tcp.api.test,b.test,{b.port},0,30"])
    sk = sidekick(ini(dns_plugin(d.port), "[cluster api]\ndiscovery = dns _http._tcp.api.test\n", workers=1))
    wait_endpoints(sk, [a.addr, b.addr])
    served([a, b], 80, sk)
    assert 14 <= len(a.requests) <= 26 and len(a.requests) + len(b.requests) == 80, (len(a.requests),
                                                                                    len(b.requests))


def test_dns_srv_no_service_and_port_zero(sidekick, upstream, dnsmasq):
    """An SRV target "." means no service: the cluster is empty at once
    (503); a record with port 0 is skipped with a log line, the others
    serve."""
    a = upstream(named(b"a"))
    d = dnsmasq(hosts="127.0.0.1 a.test\n",
                srv=["_http._tcp.none.test,.", "_http._tcp.p0.test,a.test,0,0,1",
                     f"_http._tcp.p0.test,a.test,{a.port},0,1"])
    sk = sidekick(ini(dns_plugin(d.port, stale_after="10m"),
                      "[cluster api]\ndiscovery = dns _http._tcp.p0.test\n"
                      "[cluster none]\ndiscovery = dns _http._tcp.none.test\n"))
    wait_endpoints(sk, [a.addr])
    wait_log(sk, "target a.test has port 0: skipped")
    assert served([a], 2, sk) == [b"a"] * 2
    wait_log(sk, "cluster none: SRV _http._tcp.none.test: 0 endpoint(s) (an empty answer)")
    assert endpoints(sk, "none") == {}


def test_dns_nxdomain_backs_off(sidekick, dnsmasq):
    """A name that does not exist is retried with a growing delay, not in
    a loop: the queries dnsmasq logged stay within what the backoff allows
    (min_interval doubled per failure, less at most 25 % jitter)."""
    d = dnsmasq(hosts="")
    t0 = time.monotonic()
    sk = sidekick(ini(dns_plugin(d.port, min_interval="100ms", max_interval="800ms", stale_after="10m"),
                      "[cluster api]\ndiscovery = dns nope.test:80\n"))
    wait_log(sk, "NXDOMAIN for nope.test (A/AAAA)")
    assert wait_for(lambda: len(d.queries("nope.test")) >= 8, 20)  # it keeps trying
    time.sleep(1.5)
    elapsed = time.monotonic() - t0
    # the most rounds the backoff lets through in `elapsed`: 75 % of each delay
    rounds, t, delay = 1, 0.0, 0.1
    while True:
        t += 0.75 * delay
        if t > elapsed:
            break
        rounds += 1
        delay = min(delay * 2, 0.8)
    n = len(d.queries("nope.test"))
    assert n <= 2 * rounds, (n, rounds, elapsed)  # A + AAAA per round
    assert sk.stderr_text().count("warn plugin dns: cluster api: dns: NXDOMAIN") == 1  # logged once
    assert endpoints(sk) == {}


def test_dns_server_down_keeps_the_last_good_endpoints(sidekick, upstream, dnsmasq):
    a = upstream(named(b"a"))
    d = dnsmasq(hosts="127.0.0.1 api.test\n")
    sk = sidekick(ini(dns_plugin(d.port, min_interval="100ms", max_interval="500ms"),
                      f"[cluster api]\ndiscovery = dns api.test:{a.port}\n"))
    wait_endpoints(sk, [a.addr])
    d.stop()
    wait_log(sk, "dns: connection refused for api.test; keeping 1 endpoint(s) from")
    assert served([a], 5, sk, "/down") == [b"a"] * 5
    assert endpoints(sk) == {a.addr: (1, "dns")}
    assert metric(sk, UPDATES, instance="dns", source="dns", result="failed") >= 1
    d.start()
    wait_log(sk, "cluster api: dns answers again")


def test_dns_server_down_shows_stale_in_clusters(sidekick, upstream, dnsmasq):
    a = upstream(named(b"a"))
    d = dnsmasq(hosts="127.0.0.1 api.test\n")
    sk = sidekick(ini(dns_plugin(d.port, min_interval="100ms", max_interval="500ms"),
                      f"[cluster api]\ndiscovery = dns api.test:{a.port}\n"))
    wait_endpoints(sk, [a.addr])
    d.stop()
    wait_log(sk, "keeping 1 endpoint(s)")
    state = discovery_state(sk)
    assert state["state"] == "stale", state
    assert state["message"].startswith("dns: connection refused for api.test; keeping 1 endpoint(s) from "), state
    d.start()
    assert wait_for(lambda: discovery_state(sk)["state"] == "ok", 10), discovery_state(sk)
    assert discovery_state(sk)["message"] is None


def test_dns_nxdomain_beyond_stale_after_empties(sidekick, upstream, dnsmasq):
    """The name disappears (NXDOMAIN): the last good endpoints serve for
    stale_after, then the cluster is emptied: 503 no_healthy_upstream."""
    a = upstream(named(b"a"))
    d = dnsmasq(hosts="127.0.0.1 api.test\n")
    sk = sidekick(ini(dns_plugin(d.port, min_interval="100ms", max_interval="400ms", stale_after="3s"),
                      f"[cluster api]\ndiscovery = dns api.test:{a.port}\n"))
    wait_endpoints(sk, [a.addr])
    d.set_hosts("")
    wait_log(sk, "NXDOMAIN for api.test (A/AAAA); emptied if it lasts 3000 ms; keeping 1 endpoint(s)")
    t_nx = time.monotonic()
    r = get(sk, "/still")
    if time.monotonic() - t_nx < 2.0:  # well within stale_after
        assert r.status == 200 and r.body == b"a", r
    wait_endpoints(sk, [], timeout=20)
    wait_log(sk, "cluster api: api.test: NXDOMAIN for")
    assert_local_reply(get(sk, "/gone"), 503, "no_healthy_upstream")
    assert not [q for q in a.requests if q.target == "/gone"]


def test_dns_nodata_empties_at_once(sidekick, upstream, dnsmasq):
    """A successful empty answer (the name exists, without A/AAAA: NODATA)
    empties the cluster at once, without waiting for stale_after."""
    a = upstream(named(b"a"))
    d = dnsmasq(hosts="127.0.0.1 api.test\n")
    sk = sidekick(ini(dns_plugin(d.port, min_interval="100ms", max_interval="400ms", stale_after="10m"),
                      f"[cluster api]\ndiscovery = dns api.test:{a.port}\n"))
    wait_endpoints(sk, [a.addr])
    # api.test now has an SRV record only: its A and AAAA answers are NODATA
    d.set_srv([f"api.test,a.test,{a.port},0,1"])
    d.set_hosts("")
    wait_endpoints(sk, [], timeout=20)
    assert "(an empty answer)" in sk.stderr_text()
    assert "NXDOMAIN for api.test" not in sk.stderr_text()
    assert_local_reply(get(sk), 503, "no_healthy_upstream")


def test_dns_clusters_share_the_instance(sidekick, upstream, dnsmasq):
    """Two clusters on one instance (one c-ares channel), a numeric ARG
    served as is, and the metric by source and result."""
    a = upstream(named(b"a"))
    b = upstream(named(b"b"))
    d = dnsmasq(hosts="127.0.0.1 a.test b.test\n")
    sk = sidekick(ini(dns_plugin(d.port),
                      f"[cluster api]\ndiscovery = dns a.test:{a.port}\n"
                      f"[cluster web]\ndiscovery = dns b.test:{b.port}\n"
                      f"[cluster lit]\ndiscovery = dns 127.0.0.1:{b.port}\n"))
    wait_endpoints(sk, [a.addr], "api")
    wait_endpoints(sk, [b.addr], "web")
    assert endpoints(sk, "lit") == {b.addr: (1, "dns")}
    assert metric(sk, UPDATES, instance="dns", source="dns", result="applied") >= 3


def test_dns_config_errors(tmp_path):
    def check(plugin, cluster, want):
        cfg = tmp_path / "t.ini"
        body = ini(plugin, cluster).replace("{listen}", str(free_port())).replace("{admin}", str(free_port()))
        cfg.write_text(body)
        r = run_sidekick(["-t", "-c", str(cfg)])
        assert r.returncode == 1, r
        assert want in r.stderr, r.stderr

    c = "[cluster api]\ndiscovery = dns api.test:80\n"
    check("\n[plugin dns]\nsource = dns\nresolver = 127.0.0.1\n", c, "resolver: '127.0.0.1' is not IP:PORT")
    check("\n[plugin dns]\nsource = dns\nresolver = dns.google:53\n", c, "is not IP:PORT")
    check("\n[plugin dns]\nsource = dns\nmin_interval = 5ms\n", c, "min_interval: expected a duration")
    check("\n[plugin dns]\nsource = dns\nmin_interval = 10s\nmax_interval = 5s\n", c,
          "min_interval (10000 ms) is above max_interval")
    check("\n[plugin dns]\nsource = dns\nttl = 5s\n", c, "unknown key 'ttl'")
    check("\n[plugin dns]\nsource = dns\n", "[cluster api]\ndiscovery = dns api.test\n", "is not NAME:PORT")
    check("\n[plugin dns]\nsource = dns\n", "[cluster api]\ndiscovery = dns _http._tcp.x:80\n",
          "is not an SRV name")


# ==== reload and shutdown ========================================================================


def test_reload_and_shutdown_stop_everything(sidekick, upstream, dnsmasq, tmp_path):
    """A reload makes new instances (the file read and the names looked up
    again, the new file path followed) and destroys the old ones; neither
    the reload nor the shutdown finds a timer or fd watcher of the plugin
    still active."""
    import signal
    a = upstream(named(b"a"))
    b = upstream(named(b"b"))
    d = dnsmasq(hosts="127.0.0.1 web.test\n")
    one, two = tmp_path / "one.endpoints", tmp_path / "two.endpoints"
    one.write_text(f"{a.addr}\n")
    two.write_text(f"{b.addr}\n")
    plugins = FILE_PLUGIN + dns_plugin(d.port, min_interval="100ms")
    body = (f"[cluster api]\ndiscovery = files {one}\n"
            f"[cluster web]\ndiscovery = dns web.test:{b.port}\n"
            f"[cluster wait]\ndiscovery = files {tmp_path}/missing/x\n")
    sk = sidekick(ini(plugins, body))
    wait_endpoints(sk, [a.addr])
    wait_endpoints(sk, [b.addr], "web")
    sk.config.write_text(sk.ini_text.replace(str(one), str(two)))
    sk.signal(signal.SIGHUP)
    wait_log(sk, "generation 2")
    wait_endpoints(sk, [b.addr])
    assert served([a, b], 3, sk, "/new") == [b"b"] * 3
    # the old generation's file: nobody follows it now (a change of the new
    # one, made after it, is what shows)
    one.write_text(f"{a.addr}\n[::1]:8\n")
    two.write_text(f"{b.addr}\n[::1]:9\n")
    wait_endpoints(sk, [b.addr, "[::1]:9"])
    assert sk.stop() == 0
    err = sk.stderr_text()
    assert "still active after" not in err, err[-3000:]
