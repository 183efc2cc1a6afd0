"""The core side of service discovery (plugin ABI 1.2): what /clusters,
/ready and /metrics say of a cluster with `discovery`, `wait_for_endpoints`,
and reloads that keep the discovered endpoints until the new instance
answers.

fx_discovery (tests/plugins/fx_discovery.c) feeds the clusters: it answers
delay_ms after its create, or once a file exists (answer_file), or never.
"""

import json
import os
import signal
import threading
import time

import pytest

from harness import (PLUGIN_DIR, RawClient, Reply, assert_local_reply, free_port, http_request, metric_value,
                     missing_fixtures, parse_prometheus, run_sidekick, wait_for)

WAIT = 15.0  # generous bounds for the sanitizer build; never a timing assertion


@pytest.fixture(autouse=True)
def _fixtures_built():
    missing = missing_fixtures(["fx_discovery"])
    if missing:
        pytest.fail(f"fixture plugins not built in {PLUGIN_DIR}: {missing} (set SIDEKICK_PLUGIN_DIR)")


def ini(body: str, workers: int = 1) -> str:
    return ("[sidekick]\n"
            f"workers = {workers}\n"
            "admin = 127.0.0.1:{admin}\n"
            "access_log = off\n"
            "drain_timeout = 3s\n"
            "log_level = info\n"
            f"plugin_dir = {PLUGIN_DIR}\n\n" + body)


def clusters(sk):
    r = sk.admin_get("/clusters")
    assert r.status == 200, r
    return {c["name"]: c for c in json.loads(r.body)["clusters"]}


def metrics(sk):
    return parse_prometheus(sk.admin_get("/metrics").body.decode())


def metric(sk, name, **labels):
    return metric_value(metrics(sk), name, **labels)


def ready(sk):
    try:
        r = sk.admin_get("/ready")
    except OSError:
        return None
    return r


def wait_ready_status(sk, status):
    """Polls /ready until it answers `status`; returns that response."""
    got = {}

    def check():
        r = ready(sk)
        got["r"] = r
        return r is not None and r.status == status
    assert wait_for(check, WAIT), got.get("r")
    return got["r"]


def get(sk, path):
    return http_request(sk.port("listen"), "GET", path)


def read_events(path, kind=None):
    if not os.path.exists(path):
        return []
    out = []
    for line in open(path).read().splitlines():
        if line.strip():
            e = json.loads(line)
            if kind is None or e["event"] == kind:
                out.append(e)
    return out


# --------------------------------------------------------------------------
# wait_for_endpoints


def disco_ini(extra_plugin: str, cluster_keys: str = "", arg: str = "api.svc:80", workers: int = 1) -> str:
    return ini(f"""
[plugin disco]
load = fx_discovery.so
{extra_plugin}

[listener main]
address = 127.0.0.1:{{listen}}

[route all]
listener = main
cluster = api

[cluster api]
discovery = disco {arg}
connect_timeout = 500ms
{cluster_keys}
""", workers=workers)


def test_ready_waits_for_the_first_answer(sidekick, upstream, tmp_path):
    """wait_for_endpoints: /ready is 503 (naming the cluster) while the
    discovery instance has not answered; the cluster shows "waiting" and
    answers 503 no_healthy_upstream; once the instance answers (the test
    decides when: it creates the file the fixture looks for), /ready is
    200, the state "ok", and the traffic reaches the discovered upstream."""
    up = upstream(lambda req: Reply(body=b"found"))
    flag = tmp_path / "answer-now"
    sk = sidekick(disco_ini(f"endpoints = 127.0.0.1:{up.port}\nsource = dns\ndelay_ms = 20\n"
                            f"answer_file = {flag}",
                            "wait_for_endpoints = 60s"), wait_ready=False)
    r = wait_ready_status(sk, 503)
    assert r.body.startswith(b"waiting for endpoints: cluster api ([plugin disco])"), r.body
    d = clusters(sk)["api"]
    assert d["endpoints"] == []
    disc = d["discovery"]
    assert disc["instance"] == "disco" and disc["arg"] == "api.svc:80"
    assert disc["state"] == "waiting" and disc["last_update"] is None and disc["age_seconds"] is None
    assert disc["holds_ready"] is True and disc["wait_for_endpoints_ms"] == 60000
    assert disc["carried_over"] is False and disc["message"] is None
    assert_local_reply(get(sk, "/early"), 503, "no_healthy_upstream")
    assert metric(sk, "sidekick_cluster_discovery_age_seconds", cluster="api") is None
    assert metric(sk, "sidekick_cluster_endpoints", cluster="api", source="static") == 0
    assert ready(sk).status == 503  # still: nothing answered

    before = int(time.time())
    flag.write_text("go")
    r = wait_ready_status(sk, 200)
    assert r.body == b"ready\n"
    disc = clusters(sk)["api"]["discovery"]
    assert disc["state"] == "ok" and disc["holds_ready"] is False
    assert before - 1 <= disc["last_update"] <= int(time.time()) + 1
    assert 0 <= disc["age_seconds"] < 3600
    eps = clusters(sk)["api"]["endpoints"]
    assert [(e["address"], e["weight"], e["source"]) for e in eps] == [(f"127.0.0.1:{up.port}", 1, "dns")]
    assert metric(sk, "sidekick_cluster_endpoints", cluster="api", source="dns") == 1
    assert metric(sk, "sidekick_cluster_discovery_age_seconds", cluster="api") >= 0
    r = get(sk, "/late")
    assert r.status == 200 and r.body == b"found", r
    assert [q.path for q in up.requests] == ["/late"]
    assert "wait_for_endpoints" not in sk.stderr_text()  # no timeout was logged


def test_wait_that_runs_out_is_logged_once(sidekick, upstream, tmp_path):
    """An instance that never answers: /ready turns 200 once the wait ran out
    (counted from the generation's start), one line is logged, and the
    cluster stays "waiting" with no endpoints (503 no_healthy_upstream)."""
    sk = sidekick(disco_ini("delay_ms = never", "wait_for_endpoints = 400ms"), wait_ready=False)
    wait_ready_status(sk, 200)
    line = ("cluster api: no answer from [plugin disco] within wait_for_endpoints = 400ms; "
            "/ready no longer waits for it (serving its 0 endpoint(s) until one comes)")
    assert wait_for(lambda: line in sk.stderr_text(), WAIT), sk.stderr_text()
    disc = clusters(sk)["api"]["discovery"]
    assert disc["state"] == "waiting" and disc["holds_ready"] is False
    assert_local_reply(get(sk, "/x"), 503, "no_healthy_upstream")
    assert ready(sk).status == 200
    assert sk.stderr_text().count("no answer from [plugin disco]") == 1


def test_no_wait_without_the_key(sidekick, upstream, tmp_path):
    """Without wait_for_endpoints (or with 0) /ready does not wait."""
    for keys in ("", "wait_for_endpoints = 0"):
        sk = sidekick(disco_ini("delay_ms = never", keys), wait_ready=False)
        wait_ready_status(sk, 200)
        disc = clusters(sk)["api"]["discovery"]
        assert disc["state"] == "waiting" and disc["holds_ready"] is False
        assert disc["wait_for_endpoints_ms"] == 0
        sk.stop()


def check_refused(tmp_path, text, needles):
    p = tmp_path / "bad.ini"
    p.write_text(text.replace("{admin}", "2").replace("{listen}", "1"))
    res = run_sidekick(["-t", "-c", str(p)])
    assert res.returncode == 1, res
    for n in needles:
        assert n in res.stderr, res.stderr
    return p, res


def test_wait_for_endpoints_refused_without_discovery(tmp_path, sidekick_bin):
    text = ini("""
[listener main]
address = 127.0.0.1:{listen}

[route all]
listener = main
cluster = api

[cluster api]
endpoints = 127.0.0.1:9
wait_for_endpoints = 5s
""")
    p, res = check_refused(tmp_path, text, ["[cluster api] wait_for_endpoints: needs 'discovery'"])
    line = text.replace("{admin}", "2").replace("{listen}", "1").splitlines().index("wait_for_endpoints = 5s") + 1
    assert f"{p}:{line}:" in res.stderr, res.stderr


def test_wait_for_endpoints_bad_duration(tmp_path, sidekick_bin):
    check_refused(tmp_path, disco_ini("delay_ms = never", "wait_for_endpoints = soon"),
                  ["[cluster api] wait_for_endpoints: bad duration 'soon'"])


# --------------------------------------------------------------------------
# reload: the discovered endpoints are kept until the new instance answers


class Load:
    """Client threads sending GETs until stopped (bounded in count): two on
    one kept-alive connection each, two with a new connection per request.
    Records every status and every path answered 200."""

    def __init__(self, port, max_requests=100000):
        self.port = port
        self.max = max_requests
        self.stop_ev = threading.Event()
        self.lock = threading.Lock()
        self.ok = []
        self.bad = []
        self.threads = [threading.Thread(target=self._run, args=(f"t{i}", i < 2), daemon=True) for i in range(4)]
        for t in self.threads:
            t.start()

    def _run(self, name, keepalive):
        c = RawClient(self.port, timeout=10) if keepalive else None
        try:
            for n in range(self.max):
                if self.stop_ev.is_set():
                    return
                path = f"/load/{name}/{n}"
                try:
                    r = c.request("GET", path) if c else http_request(self.port, "GET", path, timeout=10)
                except Exception as e:  # noqa: BLE001
                    with self.lock:
                        self.bad.append(f"{path}: {e!r}")
                    if c:
                        c.close()
                        c = RawClient(self.port, timeout=10)
                    continue
                with self.lock:
                    if r.status == 200:
                        self.ok.append(path)
                    else:
                        self.bad.append(f"{path}: {r.status} {r.header('x-sidekick-reason')}")
        finally:
            if c:
                c.close()

    def count(self):
        with self.lock:
            return len(self.ok) + len(self.bad)

    def stop(self):
        self.stop_ev.set()
        for t in self.threads:
            t.join(15)
        assert not any(t.is_alive() for t in self.threads), "a load thread hangs"


def generation(sk):
    return json.loads(sk.admin_get("/config").body)["generation"]


RELOADS = 5


def test_reloads_keep_discovered_endpoints(sidekick, upstream, tmp_path):
    """A discovery cluster without static endpoints whose instance answers
    300 ms after its create: under continuous requests, RELOADS SIGHUPs each
    make a new instance with an empty cluster, which keeps the previous
    generation's set (carried over) until the new instance answers. No
    request fails, and the upstream received every request answered."""
    up = upstream(lambda req: Reply(body=b"ok"))
    sk = sidekick(disco_ini(f"endpoints = 127.0.0.1:{up.port} 3\nsource = dns\ndelay_ms = 300",
                            "wait_for_endpoints = 30s", workers=2))
    # the harness waited for /ready: the first answer is in
    assert clusters(sk)["api"]["discovery"]["state"] == "ok"
    load = Load(sk.port("listen"))
    try:
        assert wait_for(lambda: load.count() >= 20, WAIT)
        for i in range(RELOADS):
            gen = i + 2
            sk.signal(signal.SIGHUP)
            assert wait_for(lambda: generation(sk) == gen, WAIT), sk.stderr_text()[-2000:]
            # the new instance answers within its delay: then it is its own set
            assert wait_for(lambda: metric(sk, "sidekick_plugin_fx_discovery_updates_total", instance="disco") == 1,
                            WAIT), sk.stderr_text()[-2000:]
            disc = clusters(sk)["api"]["discovery"]
            assert disc["state"] == "ok" and disc["carried_over"] is False, disc
            n = load.count()
            assert wait_for(lambda: load.count() >= n + 20, WAIT)  # traffic across each switch
    finally:
        load.stop()
    assert not load.bad, f"{len(load.bad)} failed requests, first: {load.bad[:10]}"
    assert len(load.ok) > 100
    got = sorted(q.path for q in up.requests if q.path.startswith("/load/"))
    assert got == sorted(load.ok), (len(got), len(load.ok))
    err = sk.stderr_text()
    assert err.count("cluster api: keeping its 1 endpoint(s) from the previous generation until "
                     "[plugin disco] sets them") == RELOADS, err[-3000:]
    assert "reload refused" not in err


def test_reload_carries_only_the_same_discovery_line(sidekick, upstream, tmp_path):
    """The new instance never answers (delay_ms = never): with the same
    `discovery = NAME ARG` the previous set, weights, source and state stay
    (carried_over), and requests keep working; with another ARG the cluster
    starts empty and waiting (503 no_healthy_upstream)."""
    up = upstream(lambda req: Reply(body=b"ok"))
    first = disco_ini(f"endpoints = 127.0.0.1:{up.port} 7\nsource = dns\ndelay_ms = 0", "wait_for_endpoints = 30s")
    sk = sidekick(first)
    before = clusters(sk)["api"]
    assert before["discovery"]["state"] == "ok"
    last_update = before["discovery"]["last_update"]

    sk.config.write_text(disco_ini(f"endpoints = 127.0.0.1:{up.port}\ndelay_ms = never",
                                   "wait_for_endpoints = 30s").format(**sk.ports))
    sk.signal(signal.SIGHUP)
    assert wait_for(lambda: generation(sk) == 2, WAIT)
    c = clusters(sk)["api"]
    assert [(e["address"], e["weight"], e["source"]) for e in c["endpoints"]] == \
        [(f"127.0.0.1:{up.port}", 7, "dns")]
    disc = c["discovery"]
    assert disc["state"] == "ok" and disc["carried_over"] is True and disc["holds_ready"] is False
    assert disc["last_update"] == last_update
    assert ready(sk).status == 200  # a carried answer is an answer: no wait
    r = get(sk, "/carried")
    assert r.status == 200, r
    assert up.requests[-1].path == "/carried"

    # another ARG is another question: nothing carried, the wait starts again
    sk.config.write_text(disco_ini("delay_ms = never", "wait_for_endpoints = 30s",
                                   arg="other.svc:80").format(**sk.ports))
    sk.signal(signal.SIGHUP)
    assert wait_for(lambda: generation(sk) == 3, WAIT)
    c = clusters(sk)["api"]
    assert c["endpoints"] == [] and c["discovery"]["state"] == "waiting" and c["discovery"]["carried_over"] is False
    assert_local_reply(get(sk, "/gone"), 503, "no_healthy_upstream")
    r = ready(sk)
    assert r.status == 503 and b"cluster api" in r.body, r
