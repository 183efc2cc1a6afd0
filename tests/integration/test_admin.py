"""Admin endpoint: /healthz, /ready, /metrics, /stats, /config."""

import json

import pytest

from harness import (echo_handler, free_port, http_request, metric_value, parse_prometheus,
                     sk_ini, wait_for)

BODY = """\
[listener main]
address = 127.0.0.1:{listen}

[route api]
listener = main
prefix = /api/
cluster = backend

[route ping]
listener = main
path = /ping
respond = 200 pong

[cluster backend]
endpoints = 127.0.0.1:{up}
"""


@pytest.fixture
def env(sidekick, upstream):
    up = upstream(echo_handler("up"))
    sk = sidekick(sk_ini(BODY), up=up.port)
    return sk, up


def metrics(sk):
    r = sk.admin_get("/metrics")
    assert r.status == 200, r
    return r, parse_prometheus(r.body.decode())


def names_of(x):
    """Names from either a list of objects with "name" or an object keyed by name."""
    if isinstance(x, dict):
        return set(x.keys())
    assert isinstance(x, list), x
    return {e["name"] if isinstance(e, dict) else e for e in x}


def test_healthz_and_ready(env):
    sk, _ = env
    assert sk.admin_get("/healthz").status == 200
    assert sk.admin_get("/ready").status == 200


def test_unknown_admin_path_404(env):
    sk, _ = env
    assert sk.admin_get("/nope").status == 404
    assert sk.admin_get("/metricsX").status == 404


def test_admin_not_on_the_listener(env):
    """/healthz on the proxy listener is routed like any request, not admin."""
    sk, up = env
    r = http_request(sk.port("listen"), "GET", "/healthz")
    assert r.status == 404 and r.header("x-sidekick-reason") == "no_route"


def test_metrics_request_counts(env):
    sk, up = env
    n = 7
    for i in range(n):
        assert http_request(sk.port("listen"), "GET", f"/api/{i}").status == 200
    for i in range(2):
        assert http_request(sk.port("listen"), "GET", "/ping").status == 200
    assert http_request(sk.port("listen"), "GET", "/none").status == 404

    def counted():
        _, s = metrics(sk)
        return metric_value(s, "sidekick_requests_total", route="api", code="200") == n
    assert wait_for(counted, 3), metrics(sk)[0].body.decode()
    r, s = metrics(sk)
    text = r.body.decode()
    assert 'sidekick_requests_total{' in text
    assert metric_value(s, "sidekick_requests_total", route="ping", code="200") == 2
    assert r.header("content-type", ).startswith("text/plain"), r


def test_metrics_families(env):
    sk, up = env
    for i in range(3):
        http_request(sk.port("listen"), "GET", f"/api/{i}")
    # a request is counted once its response is written: allow a moment
    assert wait_for(lambda: (metric_value(metrics(sk)[1], "sidekick_request_duration_seconds_count")
                             or 0) >= 3, 3)
    r, s = metrics(sk)
    text = r.body.decode()
    names = {n for n, _, _ in s}
    for fam in ["sidekick_request_duration_seconds_bucket",
                "sidekick_request_duration_seconds_sum",
                "sidekick_request_duration_seconds_count",
                "sidekick_upstream_connections_created_total",
                "sidekick_downstream_connections_active"]:
        assert fam in names, f"{fam} missing from /metrics:\n{text}"
    # histogram sanity: cumulative buckets ending in +Inf == count
    buckets = [(l["le"], v) for n, l, v in s if n == "sidekick_request_duration_seconds_bucket"
               and "le" in l]
    assert any(le == "+Inf" for le, _ in buckets)
    inf = sum(v for le, v in buckets if le == "+Inf")
    count = metric_value(s, "sidekick_request_duration_seconds_count")
    assert inf == count >= 3
    assert metric_value(s, "sidekick_upstream_connections_created_total") >= 1
    # TYPE lines for the histogram and counters
    assert "# TYPE sidekick_request_duration_seconds histogram" in text
    assert "# TYPE sidekick_requests_total counter" in text


def test_metrics_downstream_active_gauge(env):
    from harness import RawClient
    sk, up = env
    with RawClient(sk.port("listen")) as c1, RawClient(sk.port("listen")) as c2:
        c1.request("GET", "/api/a")
        c2.request("GET", "/api/b")
        _, s = metrics(sk)
        assert metric_value(s, "sidekick_downstream_connections_active") >= 2
    assert wait_for(lambda: metric_value(metrics(sk)[1],
                                         "sidekick_downstream_connections_active") == 0, 3)


def test_stats_json(env):
    sk, up = env
    for i in range(2):
        http_request(sk.port("listen"), "GET", f"/api/{i}")
    r = sk.admin_get("/stats")
    assert r.status == 200
    assert "json" in (r.header("content-type") or ""), r
    doc = json.loads(r.body)
    assert "requests" in doc, doc


def test_config_json(env):
    sk, up = env
    r = sk.admin_get("/config")
    assert r.status == 200
    doc = json.loads(r.body)
    assert doc["generation"] == 1
    assert str(doc["file"]).endswith(sk.config.name)
    assert str(sk.config.resolve()) == str(doc["file"]) or doc["file"] == str(sk.config)
    assert names_of(doc["listeners"]) == {"main"}
    assert names_of(doc["routes"]) == {"api", "ping"}
    assert names_of(doc["clusters"]) == {"backend"}


def test_admin_off(sidekick, upstream):
    """admin = off: no admin listener (readiness checked through the proxy)."""
    up = upstream(echo_handler("up"))
    admin = free_port()
    ini = sk_ini(BODY).replace("admin = 127.0.0.1:{admin}", "admin = off\n; admin = 127.0.0.1:{admin}")
    sk = sidekick(ini, up=up.port, admin=admin, wait_ready=False)
    assert wait_for(lambda: http_request(sk.port("listen"), "GET", "/ping", timeout=1).status == 200,
                    10), sk.stderr_text()
    import socket
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", admin), timeout=1).close()


def test_metrics_summed_across_workers(sidekick, upstream):
    up = upstream(echo_handler("up"))
    sk = sidekick(sk_ini(BODY, workers=2), up=up.port)
    n = 30
    for i in range(n):  # fresh connections: spread over both workers
        assert http_request(sk.port("listen"), "GET", f"/api/{i}").status == 200
    assert wait_for(lambda: metric_value(metrics(sk)[1], "sidekick_requests_total",
                                         route="api", code="200") == n, 3), \
        metrics(sk)[0].body.decode()
    r = sk.admin_get("/stats")
    assert r.status == 200
    json.loads(r.body)


def test_index_lists_the_endpoints(env):
    """GET / answers 200 with the endpoints (each of which answers) and the docs."""
    sk, up = env
    r = sk.admin_get("/")
    assert r.status == 200, r
    assert r.header("content-type") == "application/json", r
    doc = json.loads(r.body)
    listed = {(e["method"], e["path"]) for e in doc["endpoints"]}
    assert listed == {("GET", "/"), ("GET", "/healthz"), ("GET", "/ready"), ("GET", "/metrics"),
                      ("GET", "/stats"), ("GET", "/config"), ("GET", "/clusters"),
                      ("POST", "/reload"), ("POST", "/drain")}
    assert all(e["what"] for e in doc["endpoints"])
    assert "docs/configuration.md" in doc["docs"]
    for method, path in listed:
        if method == "GET":
            assert sk.admin_get(path).status == 200, path
    assert http_request(sk.admin_port, "POST", "/", body=b"").status == 405
    assert sk.admin_get("/nope").status == 404
    assert up.requests == []


def test_config_shows_lua_file_and_keys(sidekick, upstream, tmp_path):
    lua = tmp_path / "lua"
    lua.mkdir()
    (lua / "f.lua").write_text("return {}\n")
    up = upstream(echo_handler("up"))
    body = BODY.replace("cluster = backend\n",
                        "cluster = backend\nlua = f.lua\nlua_budget = 20ms\n"
                        "lua.token = s3cr=t value\nlua.percent = 5\n", 1)
    sk = sidekick(sk_ini(body, extra=f"lua_dir = {lua}\n"), up=up.port)
    doc = json.loads(sk.admin_get("/config").body)
    routes = {r["name"]: r for r in doc["routes"]}
    assert routes["api"]["lua"] == {"file": str(lua / "f.lua"), "budget_ms": 20,
                                    "keys": {"token": "s3cr=t value", "percent": "5"}}
    assert "lua" not in routes["ping"]
