"""/metrics and /stats as a user sees them (docs/observability.md):

* `promtool check metrics` (Debian's prometheus package) on a scrape taken
  after traffic on every kind of path: routes, no route, a local reply,
  retries after a connect failure, an upstream reset, a route timeout, a
  circuit breaker, a failing plugin, a failing Lua filter, a TLS listener,
  a tcp listener; and the figures of each;
* a bounded label set: 500 distinct paths add no series;
* series of removed routes, clusters and endpoints go after a reload or a
  discovery change (fx_discovery's endpoints_file), while the counters of
  what stays go on;
* /stats carries the same figures as /metrics;
* a real Prometheus server (started here, own config and storage in a temp
  dir, 127.0.0.1 only, 1 s scrape interval, stopped by PID) scrapes
  sidekick while requests flow, and its HTTP API answers rate(),
  histogram_quantile() and the upstream counters with what the upstream
  actually received.
"""

import http.client
import json
import os
import shutil
import signal
import socket
import ssl
import subprocess
import threading
import time
import urllib.parse
import urllib.request

import pytest

from certs import PKI
from harness import (PLUGIN_DIR, RawClient, Reply, build_request, echo_handler, free_port, http_request, metric_value,
                     missing_fixtures, parse_prometheus, sk_ini, wait_for)

WAIT = 20.0  # generous bounds for the sanitizer build; never a timing assertion
PROMETHEUS = shutil.which("prometheus") or "/usr/bin/prometheus"
PROMTOOL = shutil.which("promtool") or "/usr/bin/promtool"


@pytest.fixture(autouse=True)
def _needs():
    missing = missing_fixtures(["fx_error", "fx_discovery"])
    if missing:
        pytest.fail(f"fixture plugins not built in {PLUGIN_DIR}: {missing} (set SIDEKICK_PLUGIN_DIR)")
    for tool in (PROMETHEUS, PROMTOOL):
        if not os.path.exists(tool):
            pytest.fail(f"{tool} not found: install Debian's prometheus package (tests/run does)")


# --------------------------------------------------------------------------
# helpers


def scrape(sk) -> str:
    r = sk.admin_get("/metrics")
    assert r.status == 200, r
    assert r.header("content-type").startswith("text/plain; version=0.0.4"), r
    return r.body.decode()


def samples(sk):
    return parse_prometheus(scrape(sk))


def metric(sk, name, **labels):
    return metric_value(samples(sk), name, **labels)


def series_keys(text):
    """The set of (name, sorted labels) of every sample line."""
    return {(n, tuple(sorted(l.items()))) for n, l, _ in parse_prometheus(text)}


def promtool_check(text):
    res = subprocess.run([PROMTOOL, "check", "metrics"], input=text, capture_output=True, text=True,
                         timeout=60)
    return res.returncode, (res.stdout + res.stderr).strip()


def reload(sk, template):
    """Writes the config `template` with sk's ports and reloads; returns the JSON answer."""
    sk.config.write_text(template.format(**sk.ports))
    r = http_request(sk.admin_port, "POST", "/reload", body=b"")
    assert r.status == 200, (r, sk.stderr_text()[-2000:])
    return json.loads(r.body)


class TcpEcho:
    """A TCP echo server on 127.0.0.1 (threads), counting accepted connections."""

    def __init__(self):
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.port = self.sock.getsockname()[1]
        self.accepted = 0
        self.conns = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self):
        while True:
            try:
                c, _ = self.sock.accept()
            except OSError:
                return
            self.accepted += 1
            self.conns.append(c)
            threading.Thread(target=self._serve, args=(c,), daemon=True).start()

    @staticmethod
    def _serve(c):
        c.settimeout(30)
        try:
            while True:
                b = c.recv(65536)
                if not b:
                    break
                c.sendall(b)
        except OSError:
            pass
        finally:
            c.close()

    def close(self):
        self.sock.close()
        for c in self.conns:
            try:
                c.close()
            except OSError:
                pass


@pytest.fixture
def tcp_echo():
    made = []

    def make():
        e = TcpEcho()
        made.append(e)
        return e
    yield make
    for e in made:
        e.close()


def tls_get(port, path):
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    c = http.client.HTTPSConnection("127.0.0.1", port, timeout=10, context=ctx)
    try:
        c.request("GET", path)
        r = c.getresponse()
        return r.status, r.read()
    finally:
        c.close()


# --------------------------------------------------------------------------
# every kind of path, then promtool


LUA = """\
local M = {}
function M.on_request(r)
    if r:header("x-fail") then error("boom from the metrics test") end
end
return M
"""

EVERY_PATH = """\
[plugin boom]
load = fx_error.so
path = /boom

[tls edge]
cert = {cert}
key = {key}

[listener main]
address = 127.0.0.1:{listen}

[listener secure]
address = 127.0.0.1:{secure}
tls = edge

[listener raw]
address = 127.0.0.1:{raw}
protocol = tcp
cluster = echo

[route api]
listener = main
prefix = /api/
cluster = flaky
retries = 1

[route boom]
listener = main
prefix = /boom
plugins = boom
cluster = backend

[route script]
listener = main
prefix = /lua
lua = fail.lua
cluster = backend

[route slow]
listener = main
prefix = /slow
cluster = slow
timeout = 300ms

[route reset]
listener = main
prefix = /reset
cluster = resetter

[route tiny]
listener = main
prefix = /tiny
cluster = tiny

[route ping]
listener = main
path = /ping
respond = 200 pong

[route edge]
listener = secure
prefix = /
cluster = backend

[cluster backend]
endpoints = 127.0.0.1:{up}

[cluster flaky]
endpoints = 127.0.0.1:{dead}, 127.0.0.1:{up}

[cluster slow]
endpoints = 127.0.0.1:{slowup}

[cluster resetter]
endpoints = 127.0.0.1:{resetup}

[cluster tiny]
endpoints = 127.0.0.1:{holdup}
max_requests = 1

[cluster echo]
endpoints = 127.0.0.1:{echo}
max_connections = 1
"""


def test_promtool_after_traffic_on_every_path(sidekick, upstream, tcp_echo, tmp_path):
    pki = PKI(tmp_path / "pki")
    ca = pki.ca("ca")
    leaf = pki.leaf("edge", ca, dns=["edge.test"])
    lua_dir = tmp_path / "lua"
    lua_dir.mkdir()
    (lua_dir / "fail.lua").write_text(LUA)
    up = upstream(echo_handler("up"))
    slow = upstream(lambda q: Reply(delay=1.5), name="slow")
    resetter = upstream(lambda q: Reply(reset=True), name="resetter")
    hold = threading.Event()
    holdup = upstream(lambda q: (hold.wait(WAIT), Reply(body=b"held"))[1], name="hold")
    echo = tcp_echo()
    sk = sidekick(sk_ini(EVERY_PATH, workers=2, extra=f"plugin_dir = {PLUGIN_DIR}\nlua_dir = {lua_dir}"),
                  up=up.port, dead=free_port(), slowup=slow.port, resetup=resetter.port,
                  holdup=holdup.port, echo=echo.port, cert=leaf.cert, key=leaf.key)
    port = sk.port("listen")

    # routes, retries past the dead endpoint (each request ends 200)
    for i in range(6):
        assert http_request(port, "GET", f"/api/{i}").status == 200
    assert http_request(port, "GET", "/ping").status == 200
    assert http_request(port, "GET", "/nowhere").status == 404
    assert http_request(port, "GET", "/boom").status == 500                        # plugin error
    assert http_request(port, "GET", "/lua", headers={"x-fail": "1"}).status == 500  # Lua error
    assert http_request(port, "GET", "/lua").status == 200
    assert http_request(port, "GET", "/slow").status == 504                        # route timeout
    assert http_request(port, "GET", "/reset").status == 502                       # upstream reset
    # max_requests = 1: one request held at the upstream, the next one is refused
    with RawClient(port) as held:
        held.send(build_request("GET", "/tiny/1"))
        assert holdup.wait_requests(1, timeout=WAIT)
        assert http_request(port, "GET", "/tiny/2").status == 503
        hold.set()
        assert held.read_response().status == 200
    # TLS listener
    for i in range(2):
        status, body = tls_get(sk.port("secure"), f"/tls/{i}")
        assert status == 200, body
    # tcp listener: one relay open, a second one over max_connections = 1
    with socket.create_connection(("127.0.0.1", sk.port("raw")), timeout=10) as a:
        a.sendall(b"ping")
        assert a.recv(4) == b"ping"
        with socket.create_connection(("127.0.0.1", sk.port("raw")), timeout=10) as b:
            b.settimeout(10)
            assert b.recv(10) == b""  # closed at once
    assert echo.accepted == 1

    def settled():
        s = samples(sk)
        return (metric_value(s, "sidekick_upstream_connections", cluster="echo", state="active") == 0 and
                metric_value(s, "sidekick_requests_total", route="tiny") == 2)
    assert wait_for(settled, WAIT), scrape(sk)
    text = scrape(sk)
    rc, out = promtool_check(text)
    assert rc == 0 and out == "", f"promtool check metrics: rc={rc}\n{out}"

    s = parse_prometheus(text)

    def v(name, **labels):
        return metric_value(s, name, **labels)
    assert v("sidekick_requests_total", listener="main", route="api", code="200") == 6
    assert v("sidekick_requests_total", listener="main", route="ping", code="200") == 1
    assert v("sidekick_requests_total", listener="main", route="", code="404") == 1
    assert v("sidekick_requests_total", route="boom", code="500") == 1
    assert v("sidekick_requests_total", route="script", code="500") == 1
    assert v("sidekick_requests_total", route="slow", code="504") == 1
    assert v("sidekick_requests_total", route="reset", code="502") == 1
    assert v("sidekick_requests_total", route="tiny", code="503") == 1
    assert v("sidekick_requests_total", listener="secure", route="edge", code="200") == 2
    assert v("sidekick_request_duration_seconds_count", listener="main", route="api") == 6
    assert v("sidekick_request_duration_seconds_bucket", route="api", le="+Inf") == 6
    # the upstream saw what the counters say: 6 api + 1 lua + 2 tls requests on `up`
    assert len(up.requests) == 9
    assert v("sidekick_upstream_requests_total", cluster="flaky", code="200") == 6
    assert v("sidekick_upstream_requests_total", cluster="backend", endpoint=f"127.0.0.1:{up.port}",
             code="200") == 3
    assert v("sidekick_upstream_request_duration_seconds_count", cluster="flaky") == 6
    failures = v("sidekick_upstream_connect_failures_total", cluster="flaky")
    assert failures >= 1 and v("sidekick_upstream_retries_total", cluster="flaky") == failures
    assert v("sidekick_upstream_timeouts_total", cluster="slow") == 1
    assert v("sidekick_upstream_resets_total", cluster="resetter") == 1
    assert v("sidekick_circuit_breaker_overflows_total", cluster="tiny", limit="max_requests") == 1
    assert v("sidekick_circuit_breaker_overflows_total", cluster="echo", limit="max_connections") == 1
    assert v("sidekick_upstream_connections_created_total", cluster="echo") == 1
    assert v("sidekick_plugin_errors_total", instance="boom") == 1
    assert v("sidekick_lua_errors_total", route="script", kind="error") == 1
    assert v("sidekick_tls_handshakes_total", side="server", result="ok") == 2
    assert v("sidekick_endpoint_healthy", cluster="backend", endpoint=f"127.0.0.1:{up.port}") == 1
    # outlier detection is on by default: 5 connect failures in a row eject the dead endpoint
    # (a worker's cursor can put the first try of every request on it); fewer leave it in
    ejected = 1 if failures >= 5 else 0
    assert v("sidekick_endpoint_healthy", cluster="flaky") == 2 - ejected
    assert v("sidekick_endpoint_ejected", cluster="flaky", endpoint=f"127.0.0.1:{sk.port('dead')}") == ejected
    assert v("sidekick_outlier_ejections_total", cluster="flaky") == ejected
    assert v("sidekick_config_generation") == 1
    for name in ("process_resident_memory_bytes", "process_open_fds", "process_start_time_seconds",
                 "process_cpu_seconds_total"):
        assert v(name) > 0, name
    assert abs(v("process_start_time_seconds") - time.time()) < 24 * 3600


def test_promtool_catches_a_bad_exposition():
    """The check above can fail: promtool reports a counter without _total."""
    rc, out = promtool_check("# HELP x_requests Bad.\n# TYPE x_requests counter\nx_requests 1\n")
    assert rc != 0 and "_total" in out, (rc, out)


# --------------------------------------------------------------------------
# bounded labels


CARDINALITY = """\
[listener main]
address = 127.0.0.1:{listen}

[route api]
listener = main
prefix = /api/
cluster = backend

[cluster backend]
endpoints = 127.0.0.1:{up}
"""


def test_500_distinct_paths_add_no_series(sidekick, upstream):
    up = upstream(echo_handler("up"))
    sk = sidekick(sk_ini(CARDINALITY, workers=2), up=up.port)
    port = sk.port("listen")
    for path in ("/api/warm", "/elsewhere", "/api/warm?x=1"):
        http_request(port, "GET", path)
    http_request(port, "POST", "/api/warm", body=b"x")
    before = scrape(sk)
    for i in range(500):
        path = [f"/api/user/{i}/item?id={i}", f"/nomatch/{i}", f"/api/%7e{i}"][i % 3]
        method = "POST" if i % 7 == 0 else "GET"
        http_request(port, method, path, body=b"b" if method == "POST" else None)
    assert wait_for(lambda: (metric(sk, "sidekick_requests_total") or 0) == 504, WAIT)
    after = scrape(sk)
    assert series_keys(after) == series_keys(before)
    for needle in ("user", "nomatch", "item", "%7e", "~"):
        assert needle not in after, needle
    api = 3 + sum(1 for i in range(500) if i % 3 != 1)
    assert metric_value(parse_prometheus(after), "sidekick_requests_total", route="api") == api
    assert len(up.requests) == api


# --------------------------------------------------------------------------
# reloads and discovery: series of what left go, counters of what stays go on


BEFORE_RELOAD = """\
[listener main]
address = 127.0.0.1:{listen}

[route keep]
listener = main
prefix = /keep
cluster = stays

[route gone]
listener = main
prefix = /gone
cluster = leaves

[cluster stays]
endpoints = 127.0.0.1:{up}, 127.0.0.1:{up2}

[cluster leaves]
endpoints = 127.0.0.1:{up3}
"""

AFTER_RELOAD = """\
[listener main]
address = 127.0.0.1:{listen}

[route keep]
listener = main
prefix = /keep
cluster = stays

[cluster stays]
endpoints = 127.0.0.1:{up}
"""


def test_reload_drops_the_series_of_what_left(sidekick, upstream):
    ups = [upstream(echo_handler(f"u{i}"), name=f"u{i}") for i in range(3)]
    sk = sidekick(sk_ini(BEFORE_RELOAD, workers=2), up=ups[0].port, up2=ups[1].port, up3=ups[2].port)
    port = sk.port("listen")
    for i in range(8):
        assert http_request(port, "GET", f"/keep/{i}").status == 200
    for i in range(3):
        assert http_request(port, "GET", f"/gone/{i}").status == 200
    assert wait_for(lambda: metric(sk, "sidekick_requests_total", route="keep", code="200") == 8, WAIT)
    text = scrape(sk)
    for needle in ('route="gone"', 'cluster="leaves"', f'endpoint="127.0.0.1:{ups[1].port}"',
                   f'endpoint="127.0.0.1:{ups[2].port}"'):
        assert needle in text, needle
    kept_up = metric(sk, "sidekick_upstream_requests_total", endpoint=f"127.0.0.1:{ups[0].port}")
    assert kept_up >= 1

    assert reload(sk, sk_ini(AFTER_RELOAD, workers=2))["generation"] == 2
    for i in range(2):
        assert http_request(port, "GET", f"/keep/after{i}").status == 200
    assert http_request(port, "GET", "/gone/x").status == 404
    assert wait_for(lambda: metric(sk, "sidekick_requests_total", route="keep", code="200") == 10, WAIT)
    text = scrape(sk)
    rc, out = promtool_check(text)
    assert rc == 0 and out == "", out
    for needle in ('route="gone"', 'cluster="leaves"', f'127.0.0.1:{ups[1].port}', f'127.0.0.1:{ups[2].port}'):
        assert needle not in text, needle
    s = parse_prometheus(text)
    # what stays goes on from where it was
    assert metric_value(s, "sidekick_request_duration_seconds_count", route="keep") == 10
    assert metric_value(s, "sidekick_upstream_requests_total",
                        endpoint=f"127.0.0.1:{ups[0].port}") == kept_up + 2
    assert metric_value(s, "sidekick_requests_total", route="", code="404") == 1
    assert metric_value(s, "sidekick_config_generation") == 2
    assert len(ups[0].requests) == kept_up + 2
    stats = json.loads(sk.admin_get("/stats").body)
    assert {c["cluster"] for c in stats["clusters"]} == {"stays"}
    assert {e["endpoint"] for e in stats["endpoints"]} == {f"127.0.0.1:{ups[0].port}"}
    assert {r["route"] for r in stats["requests"]} == {"keep", ""}


DISCOVERY = """\
[plugin disco]
load = fx_discovery.so
endpoints_file = {file}
delay_ms = 50

[listener main]
address = 127.0.0.1:{listen}

[route api]
listener = main
prefix = /
cluster = api

[cluster api]
discovery = disco
"""


def test_discovery_changes_the_endpoint_series(sidekick, upstream, tmp_path):
    ups = [upstream(echo_handler(f"u{i}"), name=f"u{i}") for i in range(3)]
    a, b, c = (f"127.0.0.1:{u.port}" for u in ups)
    eps_file = tmp_path / "endpoints"
    eps_file.write_text(f"{a}, {b}\n")
    ini = ("[sidekick]\nworkers = 2\nadmin = 127.0.0.1:{admin}\naccess_log = off\ndrain_timeout = 3s\n"
           f"plugin_dir = {PLUGIN_DIR}\n\n" + DISCOVERY)
    sk = sidekick(ini, file=str(eps_file))

    def endpoints():
        return {l["endpoint"] for n, l, _ in samples(sk) if n == "sidekick_endpoint_healthy"}
    assert wait_for(lambda: endpoints() == {a, b}, WAIT), scrape(sk)
    for i in range(10):
        assert http_request(sk.port("listen"), "GET", f"/x/{i}").status == 200
    assert wait_for(lambda: metric(sk, "sidekick_upstream_requests_total", cluster="api") == 10, WAIT)
    on_b = metric(sk, "sidekick_upstream_requests_total", endpoint=b) or 0
    assert metric(sk, "sidekick_upstream_requests_total", endpoint=a) == len(ups[0].requests)
    assert on_b == len(ups[1].requests)

    eps_file.write_text(f"{b}, {c}\n")  # a leaves, c comes
    assert wait_for(lambda: endpoints() == {b, c}, WAIT), scrape(sk)
    for i in range(10):
        assert http_request(sk.port("listen"), "GET", f"/y/{i}").status == 200
    assert wait_for(lambda: metric(sk, "sidekick_upstream_requests_total", cluster="api") ==
                    10 + 10 - len(ups[0].requests), WAIT), scrape(sk)
    text = scrape(sk)
    assert f'"{a}"' not in text
    s = parse_prometheus(text)
    # b's object and row stayed: its counter went on
    assert metric_value(s, "sidekick_upstream_requests_total", endpoint=b) == len(ups[1].requests) > on_b
    assert metric_value(s, "sidekick_upstream_requests_total", endpoint=c) == len(ups[2].requests) > 0
    assert metric_value(s, "sidekick_cluster_endpoints", cluster="api") == 2
    rc, out = promtool_check(text)
    assert rc == 0 and out == "", out

    # many changes: the series stay bounded by the set in force
    for i in range(20):
        eps_file.write_text(f"{c}, 127.0.0.2:{10000 + i}\n")
        assert wait_for(lambda: f"127.0.0.2:{10000 + i}" in endpoints(), WAIT)
    text = scrape(sk)
    assert sum(1 for n, _, _ in parse_prometheus(text) if n == "sidekick_endpoint_healthy") == 2
    assert '"127.0.0.2:10018"' not in text and f'"{b}"' not in text


# --------------------------------------------------------------------------
# /stats


def test_stats_has_the_figures_of_metrics(sidekick, upstream):
    up = upstream(echo_handler("up"))
    sk = sidekick(sk_ini(CARDINALITY, workers=2), up=up.port)
    for i in range(7):
        http_request(sk.port("listen"), "GET", f"/api/{i}")
    http_request(sk.port("listen"), "GET", "/none")
    assert wait_for(lambda: metric(sk, "sidekick_requests_total") == 8, WAIT)
    s = samples(sk)
    j = json.loads(sk.admin_get("/stats").body)
    got = {(r["listener"], r["route"], str(r["code"])): r["count"] for r in j["requests"]}
    want = {(l["listener"], l["route"], l["code"]): v for n, l, v in s if n == "sidekick_requests_total"}
    assert got == want == {("main", "api", "200"): 7, ("main", "", "404"): 1}
    d = [x for x in j["request_duration"] if x["route"] == "api"][0]
    assert d["count"] == metric_value(s, "sidekick_request_duration_seconds_count", route="api") == 7
    assert d["buckets"][-1] == {"le": "+Inf", "count": 7}
    assert abs(d["sum_seconds"] - metric_value(s, "sidekick_request_duration_seconds_sum", route="api")) < 1e-6
    ureq = {(u["cluster"], u["endpoint"], str(u["code"])): u["count"] for u in j["upstream_requests"]}
    assert ureq == {(l["cluster"], l["endpoint"], l["code"]): v for n, l, v in s
                    if n == "sidekick_upstream_requests_total"}
    cl = j["clusters"][0]
    assert cl["cluster"] == "backend"
    assert cl["connections_created_total"] == metric_value(s, "sidekick_upstream_connections_created_total")
    assert cl["connections"]["idle"] == metric_value(s, "sidekick_upstream_connections", state="idle")
    assert j["endpoints"] == [{"cluster": "backend", "endpoint": f"127.0.0.1:{up.port}", "healthy": True,
                               "ejected": False, "active_requests": 0}]
    assert j["process"]["open_fds"] > 0 and j["process"]["resident_memory_bytes"] > 0
    assert j["config_generation"] == 1 and j["workers"] == 2
    assert j["plugin_errors"] == [] and j["lua_errors"] == []


# --------------------------------------------------------------------------
# a real Prometheus server


class Prometheus:
    """Debian's prometheus on 127.0.0.1:port with its own config and storage
    under `d`, scraping `target` every second; stopped by PID."""

    def __init__(self, d, target):
        self.dir = d
        self.port = free_port()
        (d / "data").mkdir(parents=True)
        cfg = d / "prometheus.yml"
        cfg.write_text(
            "global:\n"
            "  scrape_interval: 1s\n"
            "  evaluation_interval: 1s\n"
            "scrape_configs:\n"
            "  - job_name: sidekick\n"
            "    scrape_interval: 1s\n"
            "    scrape_timeout: 1s\n"
            "    metrics_path: /metrics\n"
            "    static_configs:\n"
            f"      - targets: ['{target}']\n")
        self.log = open(d / "prometheus.log", "wb")
        self.proc = subprocess.Popen(
            [PROMETHEUS, f"--config.file={cfg}", f"--storage.tsdb.path={d / 'data'}",
             f"--web.listen-address=127.0.0.1:{self.port}", "--log.level=warn"],
            stdout=self.log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, cwd=str(d))

    def log_text(self):
        try:
            return (self.dir / "prometheus.log").read_text(errors="replace")[-3000:]
        except OSError:
            return ""

    def get(self, path, **params):
        url = f"http://127.0.0.1:{self.port}{path}"
        if params:
            url += "?" + urllib.parse.urlencode(params)
        with urllib.request.urlopen(url, timeout=5) as r:
            return r.status, r.read()

    def ready(self):
        try:
            return self.get("/-/ready")[0] == 200
        except OSError:
            return False

    def query(self, expr):
        status, body = self.get("/api/v1/query", query=expr)
        j = json.loads(body)
        assert status == 200 and j["status"] == "success", j
        return j["data"]["result"]

    def value(self, expr):
        """The single value of an instant query, or None when it has no result."""
        r = self.query(expr)
        return float(r[0]["value"][1]) if r else None

    def stop(self):
        if self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.kill(self.proc.pid, signal.SIGKILL)
                self.proc.wait(timeout=10)
        self.log.close()


@pytest.fixture
def prometheus(tmp_path):
    made = []

    def start(target):
        p = Prometheus(tmp_path / f"prom{len(made)}", target)
        made.append(p)
        assert wait_for(p.ready, 60, interval=0.2), f"prometheus not ready:\n{p.log_text()}"
        return p
    yield start
    for p in made:
        p.stop()


class Load(threading.Thread):
    """GET /api/N in a loop until stopped (bounded in time and count)."""

    def __init__(self, port, limit=20000, seconds=120):
        super().__init__(daemon=True)
        self.port, self.limit, self.deadline = port, limit, time.monotonic() + seconds
        self.stopped = threading.Event()
        self.ok = self.failed = 0

    def run(self):
        i = 0
        while not self.stopped.is_set() and i < self.limit and time.monotonic() < self.deadline:
            try:
                r = http_request(self.port, "GET", f"/api/{i}", timeout=10)
                if r.status == 200:
                    self.ok += 1
                else:
                    self.failed += 1
            except OSError:
                self.failed += 1
            i += 1
            time.sleep(0.005)

    def stop(self):
        self.stopped.set()
        self.join(timeout=30)


def test_prometheus_scrapes_sidekick(sidekick, upstream, prometheus):
    up = upstream(echo_handler("up"))
    sk = sidekick(sk_ini(CARDINALITY, workers=2), up=up.port)
    prom = prometheus(f"127.0.0.1:{sk.admin_port}")
    load = Load(sk.port("listen"))
    load.start()
    try:
        # the target is up and its last scrape parsed
        def target_healthy():
            j = json.loads(prom.get("/api/v1/targets")[1])
            t = j["data"]["activeTargets"]
            return len(t) == 1 and t[0]["health"] == "up" and t[0]["lastError"] == ""
        assert wait_for(target_healthy, WAIT * 2, interval=0.5), prom.get("/api/v1/targets")[1]
        assert prom.value('up{job="sidekick"}') == 1

        # a rate over the requests flowing now, as a dashboard asks it
        rate = 'sum(rate(sidekick_requests_total{route="api",code="200"}[10s]))'
        assert wait_for(lambda: (prom.value(rate) or 0) > 0, WAIT * 2, interval=0.5), \
            (prom.query(rate), prom.log_text())
        p90 = ('histogram_quantile(0.9, sum by (le) '
               '(rate(sidekick_request_duration_seconds_bucket{route="api"}[10s])))')
        assert wait_for(lambda: 0 < (prom.value(p90) or 0) <= 10, WAIT, interval=0.5), prom.query(p90)
        up_p90 = ('histogram_quantile(0.9, sum by (le, cluster) '
                  '(rate(sidekick_upstream_request_duration_seconds_bucket[10s])))')
        r = prom.query(up_p90)
        assert r and r[0]["metric"]["cluster"] == "backend", r
        assert prom.value("process_resident_memory_bytes") > 0
        assert prom.value("process_open_fds") > 0
    finally:
        load.stop()
    assert load.ok > 0 and load.failed == 0, (load.ok, load.failed)

    # traffic stopped: the last scrape has the totals, equal to what the
    # upstream received and to what sidekick says itself
    n = len(up.requests)
    assert n == load.ok
    total = 'sum(sidekick_upstream_requests_total{cluster="backend",code="200"})'
    answered = 'sum(sidekick_requests_total{route="api"})'
    assert wait_for(lambda: prom.value(total) == n and prom.value(answered) == n, WAIT, interval=0.5), \
        (prom.query(total), prom.query(answered), n)
    assert metric(sk, "sidekick_upstream_requests_total", cluster="backend", code="200") == n
    assert prom.value('sidekick_upstream_requests_total{cluster="backend",'
                      f'endpoint="127.0.0.1:{up.port}",code="200"}}') == n
    # the rate falls to zero once nothing flows
    assert wait_for(lambda: prom.value(rate) == 0, WAIT * 2, interval=0.5), prom.query(rate)
