"""The core side of service discovery (plugin ABI 1.2): what /clusters,
/ready and /metrics say of a cluster with `discovery`, `wait_for_endpoints`,
and reloads that keep the discovered endpoints until the new instance
answers.

Two fixtures feed the clusters: fx_discovery (tests/plugins/fx_discovery.c)
answers delay_ms after its create, or once a file exists (answer_file), or
never; fx_abi12 (tests/plugins/fx_abi12.c) uses every ABI 1.2 member and
records what the host answered it in a JSON-lines file.
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
    missing = missing_fixtures(["fx_discovery", "fx_abi12"])
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


# --------------------------------------------------------------------------
# every ABI 1.2 member through fx_abi12


def abi12_ini(out, keys, body):
    return ini(f"""
[plugin x12]
load = fx_abi12.so
out = {out}
{keys}

[listener main]
address = 127.0.0.1:{{listen}}
plugins = x12
""" + body)


ABI12_BODY = """
[route a]
listener = main
prefix = /a
cluster = api

[route b]
listener = main
prefix = /b
cluster = other

[cluster api]
discovery = x12 api.svc:80
wait_for_endpoints = 30s

[cluster other]
endpoints = 127.0.0.1:{other}
"""


def test_abi12_discovery_members(sidekick, upstream, tmp_path):
    """set_endpoints_from: a weighted set with its source, shown in
    /clusters and sidekick_cluster_endpoints, balanced by weight (3 to 1);
    a bad source refused; cluster_state before the answer leaves the
    cluster waiting, and on a cluster that does not name the instance is
    refused; a later cluster_state(0) makes it stale with its message, and
    sets stay; the age metric appears."""
    out = tmp_path / "x12.jsonl"
    light = upstream(lambda req: Reply(body=b"light"))
    heavy = upstream(lambda req: Reply(body=b"heavy"))
    other = upstream(lambda req: Reply(body=b"other"))
    sk = sidekick(abi12_ini(out, f"endpoints = 127.0.0.1:{light.port} 1, 127.0.0.1:{heavy.port} 3\n"
                                 "source = etcd\nforeign = other\nstale_ms = 300\n"
                                 "message = etcd: watch lost, keeping 2 endpoints", ABI12_BODY), other=other.port)
    ev = [e for e in read_events(out) if e["event"] != "stale"]  # the timer's may be there already
    assert [e["event"] for e in ev] == ["cluster", "early_state", "bad_source", "answer", "foreign"], ev
    assert ev[0] == {"event": "cluster", "cluster": "api", "arg": "api.svc:80"}
    assert ev[1]["rc"] == 0 and ev[2]["rc"] == -1 and ev[3]["rc"] == 0 and ev[4]["rc"] == -1
    err = sk.stderr_text()
    assert "plugin x12: set_endpoints_from(api): bad source 'Bad Source'" in err, err
    assert "plugin x12: cluster_state(other): the cluster's discovery does not name this instance" in err, err

    c = clusters(sk)
    eps = [(e["address"], e["weight"], e["source"]) for e in c["api"]["endpoints"]]
    assert eps == [(f"127.0.0.1:{light.port}", 1, "etcd"), (f"127.0.0.1:{heavy.port}", 3, "etcd")]
    assert [e["source"] for e in c["other"]["endpoints"]] == ["static"]
    assert "discovery" not in c["other"]
    assert metric(sk, "sidekick_cluster_endpoints", cluster="api", source="etcd") == 2
    assert metric(sk, "sidekick_cluster_endpoints", cluster="other", source="static") == 1
    assert metric(sk, "sidekick_cluster_discovery_age_seconds", cluster="api") >= 0
    assert metric(sk, "sidekick_cluster_discovery_age_seconds", cluster="other") is None

    # the stale_ms timer: stale, with the message, endpoints kept
    assert wait_for(lambda: len(read_events(out, "stale")) == 1, WAIT)
    assert read_events(out, "stale")[0]["rc"] == 0
    disc = clusters(sk)["api"]["discovery"]
    assert disc["state"] == "stale" and disc["message"] == "etcd: watch lost, keeping 2 endpoints", disc
    assert len(clusters(sk)["api"]["endpoints"]) == 2

    for i in range(8):
        r = get(sk, f"/a/{i}")
        assert r.status == 200, r
    assert (len(light.requests), len(heavy.requests)) == (2, 6)
    assert get(sk, "/b/1").status == 200 and len(other.requests) == 1


def test_abi12_source_null_is_plugin(sidekick, upstream, tmp_path):
    out = tmp_path / "x12.jsonl"
    up = upstream(lambda req: Reply(body=b"ok"))
    sk = sidekick(abi12_ini(out, f"endpoints = 127.0.0.1:{up.port} 2\nsource = none", ABI12_BODY),
                  other=free_port())
    [e] = clusters(sk)["api"]["endpoints"]
    assert (e["weight"], e["source"]) == (2, "plugin")
    assert clusters(sk)["api"]["discovery"]["state"] == "ok"


def test_abi12_vec_metrics(sidekick, upstream, tmp_path):
    """counter_vec and gauge_vec: every declared series from the start, the
    instance label first, then the labels in order; updates by series
    index; bad registrations refused with their reasons logged."""
    out = tmp_path / "x12.jsonl"
    up = upstream(lambda req: Reply(status=503 if "fail" in req.path else 200, body=b"ok"))
    sk = sidekick(abi12_ini(out, f"endpoints = 127.0.0.1:{up.port}", ABI12_BODY), other=up.port)
    for p in ["/a/1", "/a/2", "/a/fail", "/b/1"]:
        get(sk, p)
    assert wait_for(lambda: metric(sk, "sidekick_plugin_fx_abi12_responses_total", instance="x12", route="b",
                                   code_class="2xx") == 1, WAIT)
    text = sk.admin_get("/metrics").body.decode()
    lines = [l for l in text.splitlines() if l.startswith("sidekick_plugin_fx_abi12_responses_total")]
    want = []
    for route, counts in (("a", (2, 1, 0)), ("b", (1, 0, 0)), ("other", (0, 0, 0))):
        for cls, n in zip(("2xx", "5xx", "other"), counts):
            want.append(f'sidekick_plugin_fx_abi12_responses_total{{instance="x12",route="{route}",'
                        f'code_class="{cls}"}} {n}')
    assert lines == want, lines
    assert text.count("# TYPE sidekick_plugin_fx_abi12_responses_total counter\n") == 1
    assert "# HELP sidekick_plugin_fx_abi12_responses_total Responses by route and status class\n" in text
    assert "# TYPE sidekick_plugin_fx_abi12_last gauge\n" in text
    assert 'sidekick_plugin_fx_abi12_last{instance="x12",what="status",unit="code"} 200' in text
    assert 'sidekick_plugin_fx_abi12_last{instance="x12",what="attempts",unit="count"} 1' in text
    assert metric(sk, "sidekick_plugin_fx_abi12_refused_registrations", instance="x12") == 8
    assert "fx_abi12_bad" not in text
    err = sk.stderr_text()
    for needle in ["metric 'fx_abi12_bad_nolabels' refused: no labels",
                   "metric 'fx_abi12_bad_five' refused: more than 4 labels",
                   "metric 'fx_abi12_bad_duplabel' refused: a label name is repeated",
                   "metric 'fx_abi12_bad_noseries' refused: no series",
                   "metric 'fx_abi12_bad_dupseries' refused: a series is repeated",
                   "metric 'fx_abi12_bad_reserved' refused: the label name is reserved",
                   "metric 'fx_abi12_bad_quote' refused: a label value has",
                   "metric 'fx_abi12_responses_total' refused: the name is registered already"]:
        assert needle in err, (needle, err)


def test_abi12_unlimited_stream(sidekick, upstream, tmp_path):
    """http_start with max_body = SK_HTTP_UNLIMITED reads a 3 MiB chunked
    body to its end, in pieces, without ETOOLARGE."""
    out = tmp_path / "x12.jsonl"
    size = 3 * 1024 * 1024
    up = upstream(lambda req: Reply(body=b"s" * size if req.path == "/stream" else b"ok", chunked=True,
                                    chunk_size=256 * 1024))
    sk = sidekick(abi12_ini(out, f"endpoints = 127.0.0.1:{up.port}\nstream = http://127.0.0.1:{up.port}/stream",
                            ABI12_BODY), other=up.port)
    assert wait_for(lambda: read_events(out, "done"), WAIT), read_events(out)[-3:]
    [done] = read_events(out, "done")
    assert done["error"] == 0 and done["total"] == size, done
    pieces = read_events(out, "piece")
    assert len(pieces) > 1 and sum(p["len"] for p in pieces) == size
    assert metric(sk, "sidekick_plugin_fx_abi12_stream_bytes_total", instance="x12") == size
    assert [q.path for q in up.requests if q.path == "/stream"] == ["/stream"]
