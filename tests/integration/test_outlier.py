"""Outlier detection (docs/traffic.md "Outlier detection"): an endpoint
is ejected at exactly outlier_failures consecutive failures — each kind
(connect refused, reset, timeout, 502, 503, 504, 500) counts, a 4xx does
not, a response in between starts the count over — counted across workers;
on by default; the ejection grows with each ejection and is capped at
300 s; at most max_ejection_percent of a cluster is ejected, but one
endpoint always may be (1, 2, 3 and 10 endpoints); an ejected endpoint
returns when its time is up, or when an active check passes. What the
upstreams received is the evidence: an ejected endpoint receives nothing.
"""

import json

import pytest

from harness import assert_local_reply, http_request
from traffic_helpers import Client, cluster_ini, clusters, endpoints, ini, log_lines, metric, route_ini, until


def ep(sk, u, cluster="c"):
    return endpoints(sk, cluster)[u.addr]


def test_ejected_at_exactly_n_and_counter_reset(sidekick, ctlup):
    """outlier_failures = 3 on one of three endpoints answering 503 (round
    robin, no retries): it receives exactly 3 requests and then none while
    ejected, /clusters shows the ejection (ejected_until in the future,
    ejection_ms = outlier_ejection, ejections = 1), the series count it and
    one line logs it. Another endpoint failing twice, answering once, then
    failing twice is never ejected: a response starts the count over."""
    ups = [ctlup(n) for n in "abc"]
    sk = sidekick(ini(route_ini() + cluster_ini("c", ups, "outlier_failures = 3\noutlier_ejection = 60s\n"
                                                          "max_ejection_percent = 100\n"), workers=2))
    ups[0].set_mode("status:503")
    c = Client(sk.port("listen"), conns=3)
    statuses = [c.get("/")[0] for _ in range(30)]
    assert ups[0].requests == 3
    assert statuses.count(503) == 3
    e = ep(sk, ups[0])
    assert e["ejected"] is True and e["healthy"] is False and e["ejections"] == 1
    assert e["ejection_ms"] == 60000 and 50000 < e["ejected_for_ms"] <= 60000
    assert e["ejected_until"] > 0
    assert metric(sk, "sidekick_outlier_ejections_total", cluster="c") == 1
    assert metric(sk, "sidekick_endpoint_healthy", cluster="c", endpoint=ups[0].addr) == 0
    assert len(log_lines(sk, f"endpoint {ups[0].addr} ejected for 60000ms after 3 consecutive failures")) == 1
    # b: fail, fail, answer, fail, fail: never 3 in a row
    one = Client(sk.port("listen"))
    for mode in ("status:503", "status:503", "ok", "status:502", "status:504"):
        ups[1].set_mode(mode)
        got = ups[1].requests
        until(lambda: one.get("/") and ups[1].requests > got, f"a request to b ({mode})")
    assert ep(sk, ups[1])["ejected"] is False and ep(sk, ups[1])["consecutive_failures"] == 2
    ups[1].set_mode("ok")


FAILURES = [("refuse", 502, "upstream_connect_failure"), ("reset", 502, "upstream_reset"),
            ("stall", 504, "upstream_timeout"), ("status:502", 502, None), ("status:503", 503, None),
            ("status:504", 504, None), ("status:500", 500, None)]


def test_every_kind_of_failure_counts(sidekick, ctlup):
    """One cluster of one endpoint per kind of failure, outlier_failures =
    2 and panic_threshold = 0 (so an ejected endpoint leaves no one to send
    to): two requests fail as that kind says, the third is answered 503
    no_healthy_upstream without reaching the upstream. A 404 is an answer:
    ten of them eject nothing."""
    kinds = FAILURES + [("status:404", 404, None)]
    ups = [ctlup(f"u{i}") for i in range(len(kinds))]
    body = ""
    for i, u in enumerate(ups):
        body += (f"[listener l{i}]\naddress = 127.0.0.1:{{p{i}}}\n\n[route r{i}]\nlistener = l{i}\ncluster = c{i}\n"
                 f"timeout = 300ms\n\n" +
                 cluster_ini(f"c{i}", [u], "outlier_failures = 2\npanic_threshold = 0\nconnect_timeout = 300ms\n"))
    sk = sidekick(ini(body))
    for i, ((mode, status, reason), u) in enumerate(zip(kinds, ups)):
        u.set_mode(mode)
        port = sk.port(f"p{i}")
        n = 10 if status == 404 else 2
        for _ in range(n):
            r = http_request(port, "GET", "/")
            assert r.status == status, (mode, r)
            if reason:
                assert r.header("x-sidekick-reason") == reason, (mode, r)
        if status == 404:
            assert ep(sk, u, f"c{i}")["ejected"] is False
            continue
        assert ep(sk, u, f"c{i}")["ejected"] is True, mode
        seen = u.requests
        assert_local_reply(http_request(port, "GET", "/"), 503, "no_healthy_upstream")
        assert u.requests == seen, mode
        if mode != "refuse":
            assert seen == 2, (mode, seen)
        u.set_mode("ok")


def test_on_by_default_and_counted_across_workers(sidekick, ctlup):
    """Without any outlier key, 5 consecutive failures eject (the default):
    with four workers and a new connection per request (so the requests
    land on different workers), the failing endpoint receives exactly 5."""
    ups = [ctlup("bad", mode="status:503"), ctlup("good")]
    sk = sidekick(ini(route_ini() + cluster_ini("c", ups), workers=4))
    for _ in range(40):
        http_request(sk.port("listen"), "GET", "/")
    assert ups[0].requests == 5
    assert ep(sk, ups[0])["ejected"] is True
    cfg = [c for c in json.loads(sk.admin_get("/config").body)["clusters"] if c["name"] == "c"][0]
    assert cfg["outlier_detection"] == {"failures": 5, "ejection_ms": 30000, "max_ejection_percent": 50}


def test_ejection_grows_returns_and_is_capped(sidekick, ctlup):
    """outlier_ejection = 300ms, one failing endpoint and panic_threshold =
    0: ejected for 300 ms, it returns by itself (its time is up: the next
    requests reach it), fails twice more and is ejected for 600 ms, then
    900 ms. A second cluster with outlier_ejection = 200s whose active check
    passes (ending each ejection at once): 200 s, then 300 s (the cap, not
    400 s), then 300 s again."""
    u = ctlup("u", mode="status:503")
    v = ctlup("v", mode="status:503")
    sk = sidekick(ini(route_ini() + cluster_ini("c", [u], "outlier_failures = 2\noutlier_ejection = 300ms\n"
                                                          "panic_threshold = 0\n") +
                      "[listener l2]\naddress = 127.0.0.1:{listen2}\n\n[route r2]\nlistener = l2\ncluster = d\n\n" +
                      cluster_ini("d", [v], "outlier_failures = 2\noutlier_ejection = 200s\npanic_threshold = 0\n"
                                            "health_check = /healthz\nhealth_interval = 200ms\n")))
    port = sk.port("listen")
    for k, want in enumerate((300, 600, 900)):
        seen = u.requests

        def ejected_again():
            http_request(port, "GET", "/")
            return ep(sk, u)["ejections"] == k + 1
        until(ejected_again, f"ejection {k + 1}")
        assert ep(sk, u)["ejection_ms"] == want
        assert u.requests == seen + 2  # it returned, failed twice more
        until(lambda: not ep(sk, u)["ejected"], f"back after {want} ms")
    port2 = sk.port("listen2")
    for k, want in enumerate((200000, 300000, 300000)):
        def ejected_d():
            http_request(port2, "GET", "/")
            return ep(sk, v, "d")["ejections"] == k + 1
        until(ejected_d, f"d ejection {k + 1}")
        e = ep(sk, v, "d")
        assert e["ejection_ms"] == want and e["ejected_for_ms"] <= 300000
        until(lambda: not ep(sk, v, "d")["ejected"], "the passed check ends it")
    assert len(log_lines(sk, f"endpoint {v.addr} passed its health check: its ejection ends")) >= 3


@pytest.mark.parametrize("n,pct,ejected", [(1, 50, 1), (2, 50, 1), (3, 50, 1), (10, 50, 5), (10, 20, 2),
                                           (10, 0, 1)])
def test_max_ejection_percent(sidekick, ctlup, n, pct, ejected):
    """Every endpoint answers 503, outlier_failures = 2,
    max_ejection_percent = pct, panic_threshold = 0: of n endpoints,
    exactly max(1, n × pct / 100) end up ejected — never more, however
    many requests follow — and those receive nothing more; the others keep
    getting traffic (their failures counting on)."""
    ups = [ctlup(f"u{i}", mode="status:503") for i in range(n)]
    sk = sidekick(ini(route_ini() + cluster_ini("c", ups, f"outlier_failures = 2\nmax_ejection_percent = {pct}\n"
                                                          "panic_threshold = 0\n")))
    c = Client(sk.port("listen"))
    for _ in range(8 * n):
        c.get("/")
    eps = endpoints(sk)
    out = [u for u in ups if eps[u.addr]["ejected"]]
    assert len(out) == ejected, {u.name: eps[u.addr]["ejected"] for u in ups}
    seen = {u.name: u.requests for u in ups}
    for _ in range(4 * n):
        c.get("/")
    assert all(u.requests == seen[u.name] for u in out)
    assert sum(1 for e in endpoints(sk).values() if e["ejected"]) == ejected
    if n > ejected:
        assert sum(u.requests - seen[u.name] for u in ups) == 4 * n
    assert metric(sk, "sidekick_outlier_ejections_total", cluster="c") == ejected


def test_single_endpoint_ejected_then_panic_sends_to_it(sidekick, ctlup):
    """A cluster of one endpoint may eject it (envoy#3263); with the
    default panic_threshold (50) it then gets the traffic anyway (no
    healthy endpoint is below any threshold): the requests still reach it
    and the cluster shows panic."""
    u = ctlup("u", mode="status:503")
    sk = sidekick(ini(route_ini() + cluster_ini("c", [u], "outlier_failures = 2\n")))
    c = Client(sk.port("listen"))
    for _ in range(5):
        assert c.get("/")[0] == 503
    assert ep(sk, u)["ejected"] is True and u.requests == 5
    assert clusters(sk)["c"]["panic"] is True


def test_tcp_listener_ring_hash_and_ejection(sidekick, ctlup):
    """A tcp listener's cluster: ring_hash on client_ip keeps each client
    address on one endpoint (the relayed bytes reach it), and connect
    failures count for outlier detection: after outlier_failures refused
    connects the endpoint is ejected and new connections go elsewhere."""
    import socket
    ups = [ctlup(n) for n in "abc"]
    sk = sidekick(ini("[listener t]\naddress = 127.0.0.1:{listen}\nprotocol = tcp\ncluster = c\n\n" +
                      cluster_ini("c", ups, "lb = ring_hash\nhash_key = client_ip\noutlier_failures = 2\n"
                                            "connect_timeout = 500ms\n")))

    def relay(src):
        s = socket.create_connection(("127.0.0.1", sk.port("listen")), timeout=10, source_address=(src, 0))
        try:
            s.sendall(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            data = b""
            while True:
                try:
                    chunk = s.recv(4096)
                except ConnectionResetError:  # the relay gave up on a refused connect
                    break
                if not chunk:
                    break
                data += chunk
            return data
        finally:
            s.close()
    owner = {}
    for ip in range(1, 7):
        got = {relay(f"127.0.0.{ip}").split(b"\r\n\r\n", 1)[-1] for _ in range(3)}
        assert len(got) == 1, got
        owner[ip] = got.pop()
    victim = next(u for u in ups if f"{u.name}\n".encode() in owner.values())
    ips = [ip for ip, b in owner.items() if b == f"{victim.name}\n".encode()]
    victim.set_mode("refuse")
    for _ in range(2):
        assert relay(f"127.0.0.{ips[0]}") == b""  # the relay closes: the connect was refused
    assert ep(sk, victim)["ejected"] is True
    assert relay(f"127.0.0.{ips[0]}").endswith(b"\n") and victim.requests == len(ips) * 3
