"""discovery.so, source = etcd, against a real etcd (Debian's etcd-server
3.4) started by each test on 127.0.0.1 with free client and peer ports and a
temp data dir, stopped by PID. The tests write keys through etcd's JSON
gateway (as a control plane would) and with etcdctl (compaction, snapshots,
the commands of docs/mesh.md), send requests through sidekick to recording
upstreams, and check what the upstreams received, /clusters, the log, and
etcd's own metrics (how many watches it serves).

A small TCP proxy between sidekick and etcd cuts the watch on demand, so
that "etcd moved on while the watch was away" (a compaction past its
revision) is deterministic; a scripted gateway (FakeEtcd) plays what a real
etcd rarely does (a canceled watch, a garbled line, a stuck server).

Run by hand with:

    SIDEKICK_BIN=build/sidekick SIDEKICK_BUILD_DIR=build \\
        /usr/bin/python3 -m pytest -q tests/integration/test_discovery_etcd.py
"""

import base64
import json
import os
import re
import select
import shutil
import signal
import ssl
import socket
import subprocess
import threading
import time
import urllib.request
from pathlib import Path

import pytest

from harness import (REPO, Reply, assert_local_reply, free_ports, http_request, metric_value,
                     parse_prometheus, run_sidekick, wait_for)

BUILD_DIR = os.environ.get("SIDEKICK_BUILD_DIR", str(REPO / "build"))
DISCOVERY = os.path.join(BUILD_DIR, "plugins", "discovery.so")
ETCD = shutil.which("etcd") or "/usr/bin/etcd"
ETCDCTL = shutil.which("etcdctl") or "/usr/bin/etcdctl"
PREFIX = "/sidekick/endpoints/"
WAIT = 20.0  # generous: the sanitizer build is slow; never a timing assertion


@pytest.fixture(autouse=True)
def _built():
    if not os.path.exists(DISCOVERY):
        pytest.fail(f"discovery.so not built in {BUILD_DIR}/plugins (set SIDEKICK_BUILD_DIR)")
    for tool in (ETCD, ETCDCTL):
        if not os.path.exists(tool):
            pytest.fail(f"{tool} not found: install etcd-server and etcd-client (tests/run does)")


# --------------------------------------------------------------------------
# etcd


def b64(s) -> str:
    return base64.b64encode(s.encode() if isinstance(s, str) else s).decode()


class Etcd:
    """One etcd member on 127.0.0.1, its data in `root`. start() / stop()
    may be called again (same ports, same data: a restart)."""

    def __init__(self, root: Path, progress_interval: str = None, tls=None):
        """tls: {"ca", "cert", "key"} of the server (clients must show a
        certificate of that CA) and {"client_cert", "client_key"} for the
        test's own calls."""
        self.root = Path(root)
        self.tls = tls
        self.data = self.root / "data"
        self.client_port, self.peer_port = free_ports(2)
        self.progress_interval = progress_interval
        self.proc = None
        self.starts = 0

    @property
    def addr(self) -> str:
        return f"127.0.0.1:{self.client_port}"

    @property
    def url(self) -> str:
        return f"{'https' if self.tls else 'http'}://{self.addr}"

    def _open(self, req, timeout):
        ctx = None
        if self.tls:
            ctx = ssl.create_default_context(cafile=str(self.tls["ca"]))
            ctx.load_cert_chain(str(self.tls["client_cert"]), str(self.tls["client_key"]))
        return urllib.request.urlopen(req, timeout=timeout, context=ctx)

    def start(self, timeout: float = WAIT):
        self.starts += 1
        log = open(self.root / f"etcd.{self.starts}.log", "wb")
        peer = f"http://127.0.0.1:{self.peer_port}"
        args = [ETCD, "--name", "t", "--data-dir", str(self.data),
                "--listen-client-urls", self.url, "--advertise-client-urls", self.url,
                "--listen-peer-urls", peer, "--initial-advertise-peer-urls", peer,
                "--initial-cluster", f"t={peer}", "--log-outputs", "stderr"]
        if self.progress_interval:
            args += ["--experimental-watch-progress-notify-interval", self.progress_interval]
        if self.tls:
            args += ["--cert-file", str(self.tls["cert"]), "--key-file", str(self.tls["key"]),
                     "--client-cert-auth", "--trusted-ca-file", str(self.tls["ca"])]
        self.proc = subprocess.Popen(args, stdout=log, stderr=log, stdin=subprocess.DEVNULL)
        log.close()
        ok = wait_for(self._healthy, timeout, 0.05)
        if not ok:
            self.stop()
            raise RuntimeError(f"etcd did not start: {self.log_text()[-3000:]}")
        return self

    def _healthy(self) -> bool:
        if self.proc.poll() is not None:
            raise RuntimeError(f"etcd exited: {self.log_text()[-3000:]}")
        with self._open(self.url + "/health", 1) as r:
            return json.loads(r.read()).get("health") == "true"

    def stop(self):
        """SIGTERM to this etcd's PID, then SIGKILL if it lingers."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=5)

    def log_text(self) -> str:
        return "".join(p.read_text(errors="replace") for p in sorted(self.root.glob("etcd.*.log")))

    # -- the JSON gateway
    def call(self, path: str, body: dict) -> dict:
        req = urllib.request.Request(self.url + path, data=json.dumps(body).encode(),
                                     headers={"content-type": "application/json"})
        with self._open(req, 10) as r:
            return json.loads(r.read())

    def put(self, key: str, value) -> int:
        """Puts key (a dict value is sent as JSON); returns the new revision."""
        if isinstance(value, dict):
            value = json.dumps(value)
        return int(self.call("/v3/kv/put", {"key": b64(key), "value": b64(value)})["header"]["revision"])

    def delete(self, key: str) -> int:
        return int(self.call("/v3/kv/deleterange", {"key": b64(key)})["header"]["revision"])

    def revision(self) -> int:
        return int(self.call("/v3/kv/range", {"key": b64("/")})["header"]["revision"])

    def ctl(self, *args, check=True) -> subprocess.CompletedProcess:
        env = dict(os.environ, ETCDCTL_API="3")
        res = subprocess.run([ETCDCTL, "--endpoints", self.addr] + list(args), capture_output=True,
                             text=True, timeout=30, env=env)
        if check:
            assert res.returncode == 0, res
        return res

    def metric(self, name: str) -> float:
        with self._open(self.url + "/metrics", 5) as r:
            return metric_value(parse_prometheus(r.read().decode()), name)

    def watchers(self) -> float:
        """Watches etcd serves now (etcdctl and the gateway's puts make none)."""
        return self.metric("etcd_debugging_mvcc_watcher_total")


@pytest.fixture
def etcd(tmp_path):
    made = []

    def factory(start: bool = True, **kw) -> Etcd:
        root = tmp_path / f"etcd{len(made)}"
        root.mkdir()
        e = Etcd(root, **kw)
        made.append(e)
        if start:
            for attempt in range(3):  # a port taken meanwhile: new ports
                try:
                    return e.start()
                except RuntimeError:
                    if attempt == 2 or "address already in use" not in e.log_text():
                        raise
                    e.client_port, e.peer_port = free_ports(2)
        return e

    yield factory
    for e in made:
        e.stop()


def ep(up, weight=None) -> dict:
    v = {"address": "127.0.0.1", "port": up.port}
    if weight is not None:
        v["weight"] = weight
    return v


# --------------------------------------------------------------------------
# a TCP proxy that can cut sidekick off etcd


class Proxy:
    """Forwards 127.0.0.1:port to target. block(): every open connection is
    closed and new ones are closed at once (etcd unreachable, as a network
    cut would look to the watch); unblock() forwards again."""

    def __init__(self, target_port: int):
        self.target_port = target_port
        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(64)
        self.sock.settimeout(0.1)
        self.port = self.sock.getsockname()[1]
        self.addr = f"127.0.0.1:{self.port}"
        self.blocked = False
        self.lock = threading.Lock()
        self.pairs = []
        self.accepted = 0
        self._stop = False
        self._thread = threading.Thread(target=self._accept, daemon=True)
        self._thread.start()

    def _accept(self):
        while not self._stop:
            try:
                c, _ = self.sock.accept()
            except socket.timeout:
                continue
            except OSError:
                return
            self.accepted += 1
            if self.blocked:
                c.close()
                continue
            try:
                u = socket.create_connection(("127.0.0.1", self.target_port), timeout=5)
            except OSError:
                c.close()
                continue
            with self.lock:
                self.pairs.append((c, u))
            threading.Thread(target=self._pump, args=(c, u), daemon=True).start()

    def _pump(self, a, b):
        try:
            while not self._stop:
                r, _, _ = select.select([a, b], [], [], 0.2)
                for s in r:
                    data = s.recv(65536)
                    if not data:
                        return
                    (b if s is a else a).sendall(data)
        except OSError:
            pass
        finally:
            for s in (a, b):
                try:
                    s.close()
                except OSError:
                    pass

    def block(self):
        self.blocked = True
        with self.lock:
            pairs, self.pairs = self.pairs, []
        for a, b in pairs:
            for s in (a, b):
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

    def unblock(self):
        self.blocked = False

    def close(self):
        self._stop = True
        self.block()
        self._thread.join(timeout=2)
        self.sock.close()


@pytest.fixture
def proxy():
    made = []

    def factory(target_port: int) -> Proxy:
        p = Proxy(target_port)
        made.append(p)
        return p

    yield factory
    for p in made:
        p.close()


# --------------------------------------------------------------------------
# sidekick


def ini(etcd_addrs: str, clusters=(("orders", "orders"),), keys: str = "", log_level: str = "info",
        routes: str = "") -> str:
    """[plugin etcd] (reconnect backoff of 100ms..1s: quick tests), one
    cluster per (name, ARG) and a route per cluster: /NAME/... → NAME."""
    text = f"""[sidekick]
workers = 2
admin = 127.0.0.1:{{admin}}
access_log = off
drain_timeout = 3s
log_level = {log_level}

[plugin etcd]
load = {DISCOVERY}
source = etcd
etcd = {etcd_addrs}
reconnect_min = 100ms
reconnect_max = 1s
{keys}

[listener main]
address = 127.0.0.1:{{listen}}
{routes}
"""
    for name, arg in clusters:
        text += f"""
[route {name}]
listener = main
prefix = /{name}/
cluster = {name}

[cluster {name}]
discovery = etcd {arg}
"""
    return text


def clusters(sk) -> dict:
    """/clusters as {cluster: {address: endpoint dict}}."""
    r = sk.admin_get("/clusters")
    assert r.status == 200, r
    return {c["name"]: {e["address"]: e for e in c["endpoints"]} for c in json.loads(r.body)["clusters"]}


def addrs(sk, cluster="orders") -> set:
    return set(clusters(sk).get(cluster, {}))


def wait_addrs(sk, want: set, cluster="orders", timeout=WAIT):
    assert wait_for(lambda: addrs(sk, cluster) == want, timeout), \
        (addrs(sk, cluster), want, sk.stderr_text()[-3000:])


def log_count(sk, pattern: str) -> int:
    return len(re.findall(pattern, sk.stderr_text()))


class Load:
    """A client sending GET /orders/N through sidekick on keep-alive
    connections, one request at a time, until stopped: every answer's status
    and upstream (x-upstream), and every error."""

    def __init__(self, sk, path="/orders/"):
        self.port = sk.port("listen")
        self.path = path
        self.results = []  # (status, upstream name or None)
        self.errors = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self):
        import http.client
        conn = None
        i = 0
        while not self._stop.is_set() and i < 100000:
            i += 1
            try:
                if conn is None:
                    conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=10)
                conn.request("GET", f"{self.path}{i}")
                r = conn.getresponse()
                r.read()
                self.results.append((r.status, r.getheader("x-upstream")))
                if r.getheader("connection", "").lower() == "close":
                    conn.close()
                    conn = None
            except Exception as e:  # noqa: BLE001 - every failure counts
                self.errors.append(repr(e))
                if conn is not None:
                    conn.close()
                conn = None
            time.sleep(0.002)
        if conn is not None:
            conn.close()

    def count(self) -> int:
        return len(self.results)

    def wait_more(self, n: int, timeout=WAIT):
        start = self.count()
        assert wait_for(lambda: self.count() >= start + n, timeout), (self.count(), self.errors)

    def stop(self):
        self._stop.set()
        self._thread.join(timeout=15)

    def failures(self):
        return [r for r in self.results if r[0] != 200] + self.errors


def connections_to(pid: int, port: int) -> int:
    """Established TCP connections of process pid to 127.0.0.1:port."""
    inodes = set()
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            link = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:
            continue
        if link.startswith("socket:["):
            inodes.add(link[8:-1])
    n = 0
    with open(f"/proc/{pid}/net/tcp") as f:
        next(f)
        for line in f:
            parts = line.split()
            remote, state, inode = parts[2], parts[3], parts[9]
            if state == "01" and int(remote.split(":")[1], 16) == port and inode in inodes:
                n += 1
    return n


def named_upstream(upstream, name):
    return upstream(lambda req: Reply(body=name.encode()), name=name)


# --------------------------------------------------------------------------
# config


@pytest.mark.parametrize("keys,needle", [
    ("", "etcd is required"),
    ("etcd = ", "etcd: no HOST:PORT given"),
    ("etcd = 127.0.0.1", "etcd: '127.0.0.1' is not HOST:PORT"),
    ("etcd = 127.0.0.1:99999", "is not HOST:PORT"),
    ("etcd = 127.0.0.1:2379\netcd_timeout = 5x", "etcd_timeout: expected a duration"),
    ("etcd = 127.0.0.1:2379\nreconnect_min = fast", "reconnect_min: expected a duration"),
    ("etcd = 127.0.0.1:2379\nreconnect_max = 0s", "reconnect_max: expected a duration"),
    ("etcd = 127.0.0.1:2379\nreconnect_min = 10s\nreconnect_max = 1s", "reconnect_min is above reconnect_max"),
    ("etcd = 127.0.0.1:2379\nprefix = /a b/", "prefix: expected a key prefix without spaces"),
    ("etcd = 127.0.0.1:2379\nwatch = on", "unknown key 'watch'"),
])
def test_bad_config_refused(tmp_path, sidekick_bin, keys, needle):
    text = f"""[sidekick]
workers = 1
admin = 127.0.0.1:1

[plugin etcd]
load = {DISCOVERY}
source = etcd
{keys}

[listener main]
address = 127.0.0.1:2

[route all]
listener = main
cluster = orders

[cluster orders]
discovery = etcd orders
"""
    path = tmp_path / "bad.ini"
    path.write_text(text)
    res = run_sidekick(["-t", "-c", str(path)])
    assert res.returncode == 1, res
    assert needle in res.stderr, res.stderr
    if keys:
        bad = keys.splitlines()[-1]
        line = text.splitlines().index(bad) + 1
        if "above" not in needle:
            assert f"etcd: line {line}:" in res.stderr, res.stderr


@pytest.mark.parametrize("arg,needle", [
    ("orders/", "leave out the trailing '/'"),
])
def test_bad_cluster_arg_refused(tmp_path, sidekick_bin, arg, needle):
    path = tmp_path / "bad.ini"
    path.write_text(ini("127.0.0.1:2379", clusters=(("orders", arg),)).format(admin=1, listen=2))
    res = run_sidekick(["-t", "-c", str(path)])
    assert res.returncode == 1, res
    assert needle in res.stderr, res.stderr


def test_good_config_checks_without_etcd(tmp_path, sidekick_bin):
    """sidekick -t contacts nothing: the check passes with etcd down."""
    path = tmp_path / "ok.ini"
    path.write_text(ini("127.0.0.1:1, [::1]:2379, etcd.example:2379",
                        keys="prefix = /mesh/\netcd_timeout = 2s").format(admin=1, listen=2))
    res = run_sidekick(["-t", "-c", str(path)])
    assert res.returncode == 0, res


# --------------------------------------------------------------------------
# endpoints follow etcd


def test_add_and_delete_under_load(sidekick, upstream, etcd):
    """An endpoint added while a client keeps sending: no failed request, the
    new endpoint gets traffic; an endpoint deleted: requests move off it and
    none fails."""
    e = etcd()
    a, b = named_upstream(upstream, "a"), named_upstream(upstream, "b")
    e.put(PREFIX + "orders/a", ep(a))
    sk = sidekick(ini(e.addr))
    wait_addrs(sk, {a.addr})
    load = Load(sk)
    try:
        load.wait_more(20)
        e.put(PREFIX + "orders/b", ep(b, weight=3))
        wait_addrs(sk, {a.addr, b.addr})
        assert clusters(sk)["orders"][b.addr]["weight"] == 3
        assert wait_for(lambda: len(b.requests) >= 10, WAIT), (len(b.requests), load.failures())
        e.delete(PREFIX + "orders/a")
        wait_addrs(sk, {b.addr})
        load.wait_more(5)  # requests in flight at the change finish where they are
        seen_a = len(a.requests)
        load.wait_more(40)
        assert len(a.requests) == seen_a, "requests still reach the deleted endpoint"
    finally:
        load.stop()
    assert load.failures() == []
    assert {r[1] for r in load.results} == {"a", "b"}
    assert len(a.requests) + len(b.requests) == load.count()
    assert all(q.path.startswith("/orders/") for q in a.requests + b.requests)
    # /clusters: the source of each endpoint
    assert clusters(sk)["orders"][b.addr].get("source") in ("etcd", None)


def test_weight_update_and_ipv6(sidekick, upstream, etcd):
    """Re-weighting is one put; an IPv6 address is shown as [v6]:port; the
    canonical form of an address names one endpoint."""
    e = etcd()
    a = named_upstream(upstream, "a")
    e.put(PREFIX + "orders/a", ep(a, weight=10))
    e.put(PREFIX + "orders/v6", {"address": "0:0:0:0:0:0:0:1", "port": 8443})
    sk = sidekick(ini(e.addr))
    wait_addrs(sk, {a.addr, "[::1]:8443"})
    assert clusters(sk)["orders"][a.addr]["weight"] == 10
    assert clusters(sk)["orders"]["[::1]:8443"]["weight"] == 1
    e.put(PREFIX + "orders/a", ep(a, weight=250))
    assert wait_for(lambda: clusters(sk)["orders"][a.addr]["weight"] == 250, WAIT), clusters(sk)
    e.put(PREFIX + "orders/v6", {"address": "[::1]", "port": 8443, "weight": 10000})
    assert wait_for(lambda: clusters(sk)["orders"]["[::1]:8443"]["weight"] == 10000, WAIT), clusters(sk)


def test_malformed_values_skipped(sidekick, upstream, etcd):
    """Each malformed value skips its key with a log line naming the key;
    the other keys are untouched; fixing the value brings the key in."""
    e = etcd()
    a = named_upstream(upstream, "a")
    b = named_upstream(upstream, "b")
    e.put(PREFIX + "orders/a", ep(a))
    bad = {
        "notjson": "address=10.0.0.1 port=80",
        "noport": {"address": "127.0.0.1"},
        "badport": {"address": "127.0.0.1", "port": 70000},
        "strport": {"address": "127.0.0.1", "port": "8080"},
        "noaddr": {"port": 8080},
        "name": {"address": "orders.internal", "port": 8080},
        "weight0": {"address": "127.0.0.1", "port": 8080, "weight": 0},
        "weightbig": {"address": "127.0.0.1", "port": 8080, "weight": 10001},
    }
    for k, v in bad.items():
        e.put(PREFIX + f"orders/{k}", v)
    sk = sidekick(ini(e.addr))
    wait_addrs(sk, {a.addr})
    for k in bad:
        assert wait_for(lambda: f"key {PREFIX}orders/{k}: " in sk.stderr_text(), WAIT), (k, sk.stderr_text())
    err = sk.stderr_text()
    assert f"key {PREFIX}orders/notjson: not JSON" in err
    assert f"key {PREFIX}orders/noport: port: missing" in err
    assert f"key {PREFIX}orders/name: address: 'orders.internal' is not an IPv4 or IPv6 address" in err
    assert f"key {PREFIX}orders/weightbig: weight: expected a whole number 1..10000" in err
    assert "the key is skipped" in err
    assert http_request(sk.port("listen"), "GET", "/orders/x").status == 200
    # a bad put arriving on the watch: logged, nothing else changes
    e.put(PREFIX + "orders/late", "{")
    assert wait_for(lambda: f"key {PREFIX}orders/late: not JSON" in sk.stderr_text(), WAIT)
    assert addrs(sk) == {a.addr}
    # fixed: the key counts
    e.put(PREFIX + "orders/noport", ep(b))
    wait_addrs(sk, {a.addr, b.addr})
    # a good key overwritten with garbage gives no endpoint any more
    e.put(PREFIX + "orders/noport", "garbage")
    wait_addrs(sk, {a.addr})
    assert sk.running()


# --------------------------------------------------------------------------
# failures of etcd


def test_etcd_restart_resumes_the_watch(sidekick, upstream, etcd):
    """etcd stopped (by PID) and restarted while a client keeps sending: the
    last good endpoints keep serving, the watch resumes from the last
    revision (no second read of the prefix) and a put after the restart is
    applied."""
    e = etcd()
    a, b = named_upstream(upstream, "a"), named_upstream(upstream, "b")
    e.put(PREFIX + "orders/a", ep(a))
    sk = sidekick(ini(e.addr))
    wait_addrs(sk, {a.addr})
    assert wait_for(lambda: log_count(sk, r"etcd: watching /sidekick/endpoints/orders/ on ") == 1, WAIT)
    load = Load(sk)
    try:
        load.wait_more(10)
        e.stop()
        assert wait_for(lambda: "keeping 1 endpoint(s)" in sk.stderr_text(), WAIT), sk.stderr_text()
        load.wait_more(20)  # served from the kept set while etcd is down
        assert addrs(sk) == {a.addr}
        e.start()
        assert wait_for(lambda: log_count(sk, r"etcd: watching /sidekick/endpoints/orders/ on ") == 2, WAIT), \
            sk.stderr_text()[-3000:]
        assert wait_for(lambda: "orders: etcd answers again" in sk.stderr_text(), WAIT)
        e.put(PREFIX + "orders/b", ep(b))
        wait_addrs(sk, {a.addr, b.addr})
        assert wait_for(lambda: len(b.requests) >= 5, WAIT)
    finally:
        load.stop()
    assert load.failures() == []
    err = sk.stderr_text()
    assert log_count(sk, r"etcd: read \d+ key\(s\) under") == 1, err  # resumed, not re-read
    assert "watch: " in err  # the stale message said what broke


def test_compaction_past_the_watch_forces_a_resync(sidekick, upstream, etcd, proxy):
    """While the watch is cut off, etcd moves on (puts, a delete) and is
    compacted past the watch's revision: the watch comes back compacted, the
    prefix is read again and the new state applies."""
    e = etcd()
    p = proxy(e.client_port)
    a, b = named_upstream(upstream, "a"), named_upstream(upstream, "b")
    e.put(PREFIX + "orders/a", ep(a))
    sk = sidekick(ini(p.addr))
    wait_addrs(sk, {a.addr})
    assert wait_for(lambda: e.watchers() == 1, WAIT)
    p.block()
    assert wait_for(lambda: "keeping 1 endpoint(s)" in sk.stderr_text(), WAIT), sk.stderr_text()
    assert wait_for(lambda: e.watchers() == 0, WAIT)
    for i in range(30):
        e.put(PREFIX + "orders/a", ep(a, weight=i + 1))
    e.put(PREFIX + "orders/b", ep(b))
    e.delete(PREFIX + "orders/a")
    rev = e.put("/elsewhere/x", "1")
    res = e.ctl("compact", str(rev))
    assert f"compacted revision {rev}" in res.stdout, res
    p.unblock()
    wait_addrs(sk, {b.addr})
    err = sk.stderr_text()
    assert re.search(r"etcd: revision \d+ is compacted \(compact_revision \d+\)|compacted", err), err
    assert log_count(sk, r"etcd: read \d+ key\(s\) under") == 2, err
    # the watch that came back was created, then canceled as compacted; the
    # one after the new read starts past the compaction
    def starts():
        return [int(x) for x in re.findall(r"etcd: watching /sidekick/endpoints/orders/ on \S+ from revision (\d+)",
                                           sk.stderr_text())]

    assert wait_for(lambda: starts()[-1] > rev, WAIT), (starts(), rev)
    assert starts()[0] < rev, (starts(), rev)
    # the new watch is live
    e.put(PREFIX + "orders/a", ep(a))
    wait_addrs(sk, {a.addr, b.addr})
    assert wait_for(lambda: e.watchers() == 1, WAIT)


def test_progress_notifications_keep_a_quiet_watch_current(sidekick, upstream, etcd, proxy):
    """A watched prefix that never changes while the rest of etcd does:
    progress notifications move the watch's revision forward, so a
    compaction at the current revision does not force a resync when the
    watch comes back (apisix#3438)."""
    e = etcd(progress_interval="500ms")
    p = proxy(e.client_port)
    a, b = named_upstream(upstream, "a"), named_upstream(upstream, "b")
    e.put(PREFIX + "orders/a", ep(a))
    sk = sidekick(ini(p.addr, log_level="debug"))
    wait_addrs(sk, {a.addr})
    rev = 0
    for i in range(10):
        rev = e.put(f"/elsewhere/{i}", "x")

    def progressed():
        revs = [int(x) for x in re.findall(r"progress notification: revision (\d+)", sk.stderr_text())]
        return revs and max(revs) >= rev

    assert wait_for(progressed, WAIT), sk.stderr_text()[-2000:]
    p.block()
    assert wait_for(lambda: "keeping 1 endpoint(s)" in sk.stderr_text(), WAIT), sk.stderr_text()
    e.ctl("compact", str(rev))
    p.unblock()
    assert wait_for(lambda: log_count(sk, r"etcd: watching /sidekick/endpoints/orders/ on ") == 2, WAIT), \
        sk.stderr_text()[-3000:]
    e.put(PREFIX + "orders/b", ep(b))
    wait_addrs(sk, {a.addr, b.addr})
    assert log_count(sk, r"etcd: read \d+ key\(s\) under") == 1, sk.stderr_text()
    assert "compacted" not in sk.stderr_text()


def test_restore_to_a_lower_revision_resyncs(sidekick, upstream, etcd, tmp_path):
    """etcd restored from a snapshot older than what the watch saw (its
    revision goes back): the prefix is read again and the restored state
    applies, instead of a watch waiting for revisions that will be other
    writes (apisix#12015)."""
    e = etcd()
    a, b = named_upstream(upstream, "a"), named_upstream(upstream, "b")
    e.put(PREFIX + "orders/a", ep(a))
    snap = tmp_path / "snap.db"
    e.ctl("snapshot", "save", str(snap))
    sk = sidekick(ini(e.addr))
    wait_addrs(sk, {a.addr})
    e.delete(PREFIX + "orders/a")
    for i in range(5):
        e.put(PREFIX + "orders/b", ep(b, weight=i + 1))
    wait_addrs(sk, {b.addr})
    e.stop()
    restored = tmp_path / "restored"
    peer = f"http://127.0.0.1:{e.peer_port}"
    env = dict(os.environ, ETCDCTL_API="3")
    res = subprocess.run([ETCDCTL, "snapshot", "restore", str(snap), "--name", "t", "--data-dir", str(restored),
                          "--initial-cluster", f"t={peer}", "--initial-advertise-peer-urls", peer],
                         capture_output=True, text=True, timeout=30, env=env)
    assert res.returncode == 0, res
    shutil.rmtree(e.data)
    shutil.move(str(restored), str(e.data))
    e.start()
    wait_addrs(sk, {a.addr})
    err = sk.stderr_text()
    assert re.search(r"etcd's revision went back from \d+ to \d+|cluster id changed|now on etcd member", err), err
    assert log_count(sk, r"etcd: read \d+ key\(s\) under") == 2, err
    e.put(PREFIX + "orders/b", ep(b))
    wait_addrs(sk, {a.addr, b.addr})


def test_unreachable_at_start_then_up(sidekick, upstream, etcd):
    """etcd down when sidekick starts: the cluster has no endpoint (503
    no_healthy_upstream) and the log says why; once etcd is up the
    endpoints arrive."""
    e = etcd(start=False)
    a = named_upstream(upstream, "a")
    sk = sidekick(ini(e.addr))
    assert wait_for(lambda: "no answer yet" in sk.stderr_text(), WAIT), sk.stderr_text()
    err = sk.stderr_text()
    assert re.search(rf"cluster orders: etcd {re.escape(e.addr)}: range: connect failed: .*; no answer yet",
                     err), err
    assert_local_reply(http_request(sk.port("listen"), "GET", "/orders/1"), 503, "no_healthy_upstream")
    assert a.requests == []
    e.start()
    e.put(PREFIX + "orders/a", ep(a))
    wait_addrs(sk, {a.addr})
    r = http_request(sk.port("listen"), "GET", "/orders/2")
    assert r.status == 200 and r.body == b"a", r
    assert [q.path for q in a.requests] == ["/orders/2"]


def test_servers_tried_in_turn(sidekick, upstream, etcd):
    """A dead server first in the list: the next one serves."""
    e = etcd()
    dead = etcd(start=False)
    a = named_upstream(upstream, "a")
    e.put(PREFIX + "orders/a", ep(a))
    sk = sidekick(ini(f"{dead.addr}, {e.addr}"))
    wait_addrs(sk, {a.addr})
    assert f"etcd {dead.addr}: range: connect failed" in sk.stderr_text()
    assert wait_for(lambda: e.watchers() == 1, WAIT)


# --------------------------------------------------------------------------
# several clusters, one watch


def test_two_clusters_share_one_watch(sidekick, upstream, etcd):
    """Two clusters of one instance on two ARGs: one range and one watch
    connection for both (etcd counts one watcher), each key dispatched to
    its cluster, keys of other services ignored."""
    e = etcd()
    a, b, c = (named_upstream(upstream, n) for n in "abc")
    e.put(PREFIX + "orders/a", ep(a))
    e.put(PREFIX + "users/b", ep(b))
    e.put(PREFIX + "billing/c", ep(c))  # no cluster of this sidekick
    sk = sidekick(ini(e.addr, clusters=(("orders", "orders"), ("users", "users"))))
    wait_addrs(sk, {a.addr}, "orders")
    wait_addrs(sk, {b.addr}, "users")
    assert wait_for(lambda: e.watchers() == 1, WAIT), e.watchers()
    assert e.metric("etcd_debugging_mvcc_watch_stream_total") == 1
    assert connections_to(sk.pid, e.client_port) == 1  # the range's connection carries the watch
    assert wait_for(lambda: re.search(r"etcd: watching /sidekick/endpoints/ on \S+ from revision \d+ \(2 cluster\(s\)\)",
                                      sk.stderr_text()), WAIT), sk.stderr_text()
    assert log_count(sk, r"etcd: read \d+ key\(s\) under /sidekick/endpoints/ ") == 1, sk.stderr_text()
    # one batch touching both clusters, one touching one
    e.put(PREFIX + "users/c", ep(c))
    wait_addrs(sk, {b.addr, c.addr}, "users")
    assert addrs(sk, "orders") == {a.addr}
    e.call("/v3/kv/deleterange", {"key": b64(PREFIX + "users/"), "range_end": b64(PREFIX + "users0")})
    wait_addrs(sk, set(), "users")
    assert addrs(sk, "orders") == {a.addr}
    assert http_request(sk.port("listen"), "GET", "/orders/1").body == b"a"
    assert_local_reply(http_request(sk.port("listen"), "GET", "/users/1"), 503, "no_healthy_upstream")
    assert e.watchers() == 1
    assert [q.path for q in a.requests] == ["/orders/1"]
    assert c.requests == []


def test_other_prefix_and_nested_names(sidekick, upstream, etcd):
    """prefix = /mesh/ and ARGs sharing a start (shop, shop-v2): each key
    goes to the clusters whose PREFIX + ARG + "/" it starts with."""
    e = etcd()
    a, b = named_upstream(upstream, "a"), named_upstream(upstream, "b")
    e.put("/mesh/shop/a", ep(a))
    e.put("/mesh/shop-v2/b", ep(b))
    e.put(PREFIX + "shop/x", ep(b))  # the default prefix: not this instance's
    sk = sidekick(ini(e.addr, clusters=(("shop", "shop"), ("shopv2", "shop-v2")), keys="prefix = /mesh/"))
    wait_addrs(sk, {a.addr}, "shop")
    wait_addrs(sk, {b.addr}, "shopv2")
    assert wait_for(lambda: "etcd: watching /mesh/shop on " in sk.stderr_text(), WAIT), sk.stderr_text()
    assert e.watchers() == 1


def test_reload_cancels_the_old_watch(sidekick, upstream, etcd):
    """A reload starts the new generation's range and watch and cancels the
    old one's: etcd ends with one watcher, changes still apply, and the host
    had nothing of the old instance left to stop."""
    e = etcd()
    a, b = named_upstream(upstream, "a"), named_upstream(upstream, "b")
    e.put(PREFIX + "orders/a", ep(a))
    sk = sidekick(ini(e.addr))
    wait_addrs(sk, {a.addr})
    assert wait_for(lambda: e.watchers() == 1, WAIT)
    sk.signal(signal.SIGHUP)
    assert wait_for(lambda: log_count(sk, r"etcd: watching /sidekick/endpoints/orders/ on ") == 2, WAIT), \
        sk.stderr_text()[-3000:]
    assert wait_for(lambda: re.search(r"generation 1 released", sk.stderr_text()), WAIT), sk.stderr_text()[-3000:]
    assert wait_for(lambda: e.watchers() == 1, WAIT), e.watchers()
    e.put(PREFIX + "orders/b", ep(b))
    wait_addrs(sk, {a.addr, b.addr})
    for i in range(6):
        assert http_request(sk.port("listen"), "GET", f"/orders/{i}").status == 200
    assert len(b.requests) >= 1
    assert "still active after" not in sk.stderr_text()  # nothing left for the host to stop


def test_reload_while_etcd_is_down_keeps_the_endpoints(sidekick, upstream, etcd, proxy):
    """A reload while etcd cannot be reached: the new generation serves the
    endpoints the old one had, instead of an empty cluster."""
    e = etcd()
    p = proxy(e.client_port)
    a = named_upstream(upstream, "a")
    e.put(PREFIX + "orders/a", ep(a))
    sk = sidekick(ini(p.addr))
    wait_addrs(sk, {a.addr})
    p.block()
    assert wait_for(lambda: "keeping 1 endpoint(s)" in sk.stderr_text(), WAIT)
    sk.signal(signal.SIGHUP)
    assert wait_for(lambda: re.search(r"generation 1 released", sk.stderr_text()), WAIT), sk.stderr_text()[-3000:]
    assert wait_for(lambda: log_count(sk, r"range: \S+.*(no answer yet|keeping 1 endpoint)") >= 1, WAIT)
    r = http_request(sk.port("listen"), "GET", "/orders/after-reload")
    assert r.status == 200 and r.body == b"a", r
    p.unblock()
    assert wait_for(lambda: log_count(sk, r"etcd: watching /sidekick/endpoints/orders/ on ") == 2, WAIT)
    assert addrs(sk) == {a.addr}


def test_shutdown_with_etcd_down(sidekick, etcd):
    """SIGTERM while the source waits to reconnect: a clean exit."""
    e = etcd(start=False)
    sk = sidekick(ini(e.addr))
    assert wait_for(lambda: "no answer yet" in sk.stderr_text(), WAIT)
    assert sk.stop() == 0


# --------------------------------------------------------------------------
# what a real etcd rarely does: a scripted gateway


class FakeEtcd:
    """An HTTP/1.1 server speaking just enough of the JSON gateway: /v3/kv/range
    answers `kvs` at `revision`; each /v3/watch connection plays the next
    script of `watches` (a list of lines to send, then "hang" = keep the
    stream open, or "close"). Records every request (path, JSON body)."""

    def __init__(self, kvs: dict, revision: int, watches: list, range_status: int = 200):
        import http.server

        fake = self
        self.kvs = kvs
        self.revision = revision
        self.watches = list(watches)
        self.range_status = range_status
        self.requests = []
        self.lock = threading.Lock()
        self.stop = threading.Event()

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *a):
                pass

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["content-length"])))
                with fake.lock:
                    fake.requests.append((self.path, body))
                if self.path == "/v3/kv/range":
                    fake.answer_range(self)
                elif self.path == "/v3/watch":
                    fake.answer_watch(self)
                else:
                    self.send_error(404)

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        self.addr = f"127.0.0.1:{self.port}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def header(self):
        return {"cluster_id": "1", "member_id": "2", "revision": str(self.revision)}

    def answer_range(self, h):
        if self.range_status != 200:
            data = json.dumps({"error": "etcdserver: no leader", "message": "etcdserver: no leader",
                               "code": 14}).encode()
        else:
            data = json.dumps({"header": self.header(),
                               "kvs": [{"key": b64(k), "value": b64(json.dumps(v) if isinstance(v, dict) else v),
                                        "mod_revision": str(self.revision)} for k, v in self.kvs.items()],
                               "count": str(len(self.kvs))}).encode()
        h.send_response(self.range_status)
        h.send_header("content-type", "application/json")
        h.send_header("content-length", str(len(data)))
        h.end_headers()
        h.wfile.write(data)

    def answer_watch(self, h):
        with self.lock:
            script = self.watches.pop(0) if self.watches else ["hang"]
        if script and script[0] == "silent":
            self.stop.wait(60)  # no head at all: a server that accepted and is stuck
            h.close_connection = True
            return
        h.send_response(200)
        h.send_header("content-type", "application/json")
        h.send_header("transfer-encoding", "chunked")
        h.end_headers()
        for item in script:
            if item == "hang":
                self.stop.wait(60)
                break
            if item == "close":
                break
            line = (item if isinstance(item, str) else json.dumps(item)) + "\n"
            data = line.encode()
            h.wfile.write(b"%x\r\n%s\r\n" % (len(data), data))
            h.wfile.flush()
        try:
            h.wfile.write(b"0\r\n\r\n")
        except OSError:
            pass
        h.close_connection = True

    def watch_starts(self):
        with self.lock:
            return [int(b["create_request"]["start_revision"]) for p, b in self.requests if p == "/v3/watch"]

    def ranges(self):
        with self.lock:
            return [b for p, b in self.requests if p == "/v3/kv/range"]

    def close(self):
        self.stop.set()
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def fake_etcd():
    made = []

    def factory(*a, **kw) -> FakeEtcd:
        f = FakeEtcd(*a, **kw)
        made.append(f)
        return f

    yield factory
    for f in made:
        f.close()


def created(rev):
    return {"result": {"header": {"cluster_id": "1", "member_id": "2", "revision": str(rev)}, "created": True}}


def test_request_bodies_and_canceled_watch(sidekick, upstream, fake_etcd):
    """What etcd receives (base64 key and range_end of the prefix, the watch
    from revision + 1 with progress_notify), and a watch the server cancels:
    the prefix is read again before the next watch."""
    a, b = named_upstream(upstream, "a"), named_upstream(upstream, "b")
    f = fake_etcd({PREFIX + "orders/a": ep(a)}, 41, [
        [created(41), {"result": {"header": {"revision": "41"}, "canceled": True,
                                  "cancel_reason": "etcdserver: permission denied"}}, "hang"],
        [created(41), "hang"],
    ])
    sk = sidekick(ini(f.addr))
    wait_addrs(sk, {a.addr})
    assert wait_for(lambda: len(f.watch_starts()) == 2, WAIT), f.requests
    r = f.ranges()
    assert len(r) == 2, f.requests
    assert r[0] == {"key": b64(PREFIX + "orders/"), "range_end": b64(PREFIX + "orders0")}
    w = [b["create_request"] for p, b in f.requests if p == "/v3/watch"][0]
    assert w == {"key": b64(PREFIX + "orders/"), "range_end": b64(PREFIX + "orders0"), "start_revision": "42",
                 "progress_notify": True}
    assert f.watch_starts() == [42, 42]
    assert "the watch was canceled by etcd: etcdserver: permission denied" in sk.stderr_text()
    assert [p for p, _ in f.requests] == ["/v3/kv/range", "/v3/watch", "/v3/kv/range", "/v3/watch"]


def test_bad_watch_lines_and_stuck_servers(sidekick, upstream, fake_etcd):
    """A line that is not a watch answer: read the prefix again. A watch
    that is never created (a server that accepted and hangs): dropped after
    etcd_timeout and tried again. An event batch and a progress
    notification move the revision the next watch starts from."""
    a, b = named_upstream(upstream, "a"), named_upstream(upstream, "b")
    put_b = {"result": {"header": {"cluster_id": "1", "member_id": "2", "revision": "12"}, "events": [
        {"kv": {"key": b64(PREFIX + "orders/b"), "value": b64(json.dumps(ep(b))), "mod_revision": "12"}}]}}
    progress = {"result": {"header": {"cluster_id": "1", "member_id": "2", "revision": "20"}}}
    f = fake_etcd({PREFIX + "orders/a": ep(a)}, 10, [
        [created(10), "this is not json"],
        ["silent"],
        [created(10), put_b, progress, "close"],
        [created(20), "hang"],
    ])
    sk = sidekick(ini(f.addr, keys="etcd_timeout = 300ms"))
    assert wait_for(lambda: len(f.watch_starts()) == 4, WAIT), (f.requests, sk.stderr_text()[-2000:])
    wait_addrs(sk, {a.addr, b.addr})
    err = sk.stderr_text()
    assert "a watch answer that does not parse" in err, err
    assert "watch: not created within etcd_timeout (300 ms)" in err, err
    assert "watch: the stream ended" in err, err
    # after the bad line: a range; after the stuck one and the end: resumed
    assert [p for p, _ in f.requests] == ["/v3/kv/range", "/v3/watch", "/v3/kv/range", "/v3/watch",
                                          "/v3/watch", "/v3/watch"], f.requests
    assert f.watch_starts() == [11, 11, 11, 21]


def test_range_error_keeps_trying(sidekick, upstream, fake_etcd):
    """etcd answers the range with an error (no leader): the cluster waits
    with the message logged, and the range is tried again."""
    f = fake_etcd({}, 5, [], range_status=503)
    sk = sidekick(ini(f.addr))
    assert wait_for(lambda: len(f.ranges()) >= 3, WAIT), f.requests
    assert "range: HTTP 503: etcd error: etcdserver: no leader; no answer yet" in sk.stderr_text()
    assert f.watch_starts() == []
    assert_local_reply(http_request(sk.port("listen"), "GET", "/orders/1"), 503, "no_healthy_upstream")


def test_stale_state_in_clusters(sidekick, upstream, etcd):
    """etcd down: /clusters says the cluster is stale, with the message;
    back: ok again."""
    e = etcd()
    a = named_upstream(upstream, "a")
    e.put(PREFIX + "orders/a", ep(a))
    sk = sidekick(ini(e.addr))
    wait_addrs(sk, {a.addr})
    e.stop()
    assert wait_for(lambda: "keeping 1 endpoint(s)" in sk.stderr_text(), WAIT)

    def state():
        r = json.loads(sk.admin_get("/clusters").body)
        c = [c for c in r["clusters"] if c["name"] == "orders"][0]
        return c.get("discovery", c)

    st = state()
    assert st.get("state") == "stale", st
    assert f"etcd {e.addr}: watch: " in st.get("message", "") and "keeping 1 endpoint(s)" in st["message"], st
    e.start()
    assert wait_for(lambda: state().get("state") == "ok", WAIT), state()


# --------------------------------------------------------------------------
# docs/mesh.md, on one machine


def sidecar_ini(etcd_addr: str, inbound_app: int = None, calls=()) -> str:
    """A sidecar of docs/mesh.md: [plugin registry] on etcd, an inbound
    listener ({inbound}) to the local app when inbound_app is given, and an
    outbound listener ({outbound}) with a host route per called service."""
    text = f"""[sidekick]
workers = 2
admin = 127.0.0.1:{{admin}}
access_log = off
drain_timeout = 3s

[plugin registry]
load = {DISCOVERY}
source = etcd
etcd = {etcd_addr}
prefix = /sidekick/endpoints/
reconnect_min = 100ms
reconnect_max = 1s
"""
    if inbound_app:
        text += f"""
[listener inbound]
address = 127.0.0.1:{{inbound}}

[route inbound]
listener = inbound
cluster = local

[cluster local]
endpoints = 127.0.0.1:{inbound_app}
"""
    if calls:
        text += """
[listener outbound]
address = 127.0.0.1:{outbound}
"""
    for svc in calls:
        text += f"""
[route {svc}]
listener = outbound
host = {svc}
cluster = {svc}
timeout = 5s
retries = 1

[cluster {svc}]
discovery = registry {svc}
connect_timeout = 1s
"""
    return text


def test_mesh_three_services(sidekick, upstream, etcd):
    """web → orders (two instances) → payments, each with its sidecar,
    registered, re-weighted and drained with the etcdctl commands of
    docs/mesh.md while web keeps calling: no failed request, the drained
    instance gets nothing after its key is gone, and every app received
    what its callers sent."""
    e = etcd()
    payments_app = upstream(lambda req: Reply(body=b"paid"), name="payments")
    sk_payments = sidekick(sidecar_ini(e.addr, inbound_app=payments_app.port), name="payments.ini")

    outbound = {}

    def orders_handler(i):
        def h(req):
            # the orders app calls payments through its own sidecar
            r = http_request(outbound[i], "GET", "/pay" + req.target, host="payments", timeout=10)
            return Reply(status=r.status, body=f"orders-{i} ".encode() + r.body)
        return h

    orders_apps, sk_orders = [], []
    for i in (1, 2):
        app = upstream(orders_handler(i), name=f"orders-{i}")
        sk = sidekick(sidecar_ini(e.addr, inbound_app=app.port, calls=("payments",)), name=f"orders{i}.ini")
        outbound[i] = sk.port("outbound")
        orders_apps.append(app)
        sk_orders.append(sk)
    sk_web = sidekick(sidecar_ini(e.addr, calls=("orders",)), name="web.ini")

    # register, each under a lease (docs/mesh.md)
    def register(service, instance, port, weight):
        lease = e.ctl("lease", "grant", "60").stdout.split()[1]
        value = json.dumps({"address": "127.0.0.1", "port": port, "weight": weight})
        e.ctl("put", f"--lease={lease}", f"{PREFIX}{service}/{instance}", value)
        return lease

    register("payments", "p1", sk_payments.port("inbound"), 100)
    leases = [register("orders", f"o{i}", sk_orders[i - 1].port("inbound"), 100) for i in (1, 2)]
    o1, o2 = (f"127.0.0.1:{sk.port('inbound')}" for sk in sk_orders)
    wait_addrs(sk_web, {o1, o2}, "orders")
    for sk in sk_orders:
        wait_addrs(sk, {f"127.0.0.1:{sk_payments.port('inbound')}"}, "payments")

    port = sk_web.port("outbound")
    results, errors = [], []
    stop = threading.Event()

    def web_app():
        for n in range(100000):
            if stop.is_set():
                return
            try:
                r = http_request(port, "GET", f"/orders/{n}", host="orders", timeout=10)
                results.append((r.status, r.body))
            except Exception as ex:  # noqa: BLE001 - every failure counts
                errors.append(repr(ex))

    t = threading.Thread(target=web_app, daemon=True)
    t.start()
    try:
        assert wait_for(lambda: all(len(a.requests) >= 5 for a in orders_apps), WAIT), [len(a.requests)
                                                                                         for a in orders_apps]
        # re-weight o2, keeping its lease
        e.ctl("put", "--ignore-lease", f"{PREFIX}orders/o2",
              json.dumps({"address": "127.0.0.1", "port": sk_orders[1].port("inbound"), "weight": 10}))
        assert wait_for(lambda: clusters(sk_web)["orders"][o2]["weight"] == 10, WAIT), clusters(sk_web)
        keys = e.ctl("lease", "timetolive", leases[1], "--keys").stdout
        assert f"{PREFIX}orders/o2" in keys, keys  # still under its lease
        # drain o1: delete its key, then its lease
        e.ctl("del", f"{PREFIX}orders/o1")
        wait_addrs(sk_web, {o2}, "orders")
        n = len(results)
        assert wait_for(lambda: len(results) >= n + 5, WAIT)
        drained = len(orders_apps[0].requests)
        assert wait_for(lambda: len(results) >= n + 30, WAIT)
        assert len(orders_apps[0].requests) == drained
        e.ctl("lease", "revoke", leases[0])
    finally:
        stop.set()
        t.join(timeout=15)
    assert errors == []
    assert {s for s, _ in results} == {200}, [r for r in results if r[0] != 200][:5]
    bodies = {b.split(b" ")[0] for _, b in results}
    assert bodies == {b"orders-1", b"orders-2"}
    assert all(b.endswith(b" paid") for _, b in results)
    # what each app received: web's paths at orders, orders' calls at payments
    assert all(q.path.startswith("/orders/") and q.header("host") == "orders"
               for a in orders_apps for q in a.requests)
    assert len(payments_app.requests) == sum(len(a.requests) for a in orders_apps)
    assert all(q.path.startswith("/pay/orders/") and q.header("host") == "payments" for q in payments_app.requests)
    # one watch per sidecar that calls something
    assert wait_for(lambda: e.watchers() == 3, WAIT), e.watchers()


def test_etcd_over_tls_with_a_client_certificate(sidekick, upstream, etcd, tmp_path):
    """etcd_tls = on: range and watch over https, etcd's certificate checked
    against [sidekick] http_client_ca, sidekick's client certificate
    (http_client_cert/key) checked by etcd (--client-cert-auth); without the
    client certificate etcd refuses and the cluster waits, saying why."""
    from certs import PKI
    pki = PKI(tmp_path / "pki")
    ca = pki.ca("etcd-ca")
    server = pki.leaf("etcd", ca, ips=["127.0.0.1"], own_key=True)
    client = pki.leaf("sidecar", ca, cn="sidecar", own_key=True)
    e = etcd(tls={"ca": ca.cert, "cert": server.cert, "key": server.key,
                  "client_cert": client.cert, "client_key": client.key})
    a, b = named_upstream(upstream, "a"), named_upstream(upstream, "b")
    e.put(PREFIX + "orders/a", ep(a))
    tls_keys = f"http_client_ca = {ca.cert}\n"
    text = ini(e.addr, keys="etcd_tls = on\n").replace(
        "[sidekick]\n", f"[sidekick]\n{tls_keys}http_client_cert = {client.cert}\n"
        f"http_client_key = {client.key}\n", 1)
    sk = sidekick(text)
    wait_addrs(sk, {a.addr})
    assert wait_for(lambda: e.watchers() == 1, WAIT)
    e.put(PREFIX + "orders/b", ep(b))  # through the watch
    wait_addrs(sk, {a.addr, b.addr})
    r = http_request(sk.port("listen"), "GET", "/orders/1")
    assert r.status == 200 and r.body in (b"a", b"b")
    sk.stop()
    # no client certificate: etcd refuses the handshake
    sk = sidekick(ini(e.addr, keys="etcd_tls = on\n").replace("[sidekick]\n", f"[sidekick]\n{tls_keys}", 1))
    assert wait_for(lambda: "no answer yet" in sk.stderr_text(), WAIT), sk.stderr_text()
    assert re.search(r"range: (TLS handshake or certificate verification failed|bad or broken response)",
                     sk.stderr_text()), sk.stderr_text()
    assert_local_reply(http_request(sk.port("listen"), "GET", "/orders/2"), 503, "no_healthy_upstream")
