"""Active health checks and the panic threshold (docs/traffic.md "Active
health checks", "Panic threshold"): what the checked endpoints receive (a
GET of the path with the cluster's Host), checks starting at once after
load and for an endpoint that appears (not after the first interval), and
stopping for one that leaves; transitions at exactly unhealthy_threshold
failures and healthy_threshold passes in a row, checked on every
observation; timeouts, refused connects and non-2xx as failures; no
traffic to an unhealthy endpoint, ring_hash skipping it; health_initial;
checks over the cluster's TLS (and failing on a wrong peer identity);
panic mode entered and left, counted and logged once per transition.
"""

import os
import signal
import ssl
import time

import pytest

from certs import PKI
from harness import REPO, assert_local_reply, http_request, wait_for
from traffic_helpers import (WAIT, Client, cluster_ini, clusters, endpoints, ini, log_lines, metric, route_ini,
                             until)

BUILD_DIR = os.environ.get("SIDEKICK_BUILD_DIR", str(REPO / "build"))
DISCOVERY = os.path.join(BUILD_DIR, "plugins", "discovery.so")


def test_checks_start_at_once_and_ask_for_the_path(sidekick, ctlup):
    """With health_interval = 60s, each endpoint gets its first check right
    after the load (not a minute later): a GET of the path and query with
    the cluster's name as Host. The endpoints show as healthy with one
    check passed; the checks are counted."""
    ups = [ctlup(n, health_path="/healthz") for n in "ab"]
    sk = sidekick(ini(route_ini("api") + cluster_ini("api", ups, "health_check = /healthz?deep=1\n"
                                                                   "health_interval = 60s\n")))
    until(lambda: all(u.health_checks >= 1 for u in ups), "a first check of every endpoint")
    assert all(u.health_checks == 1 for u in ups)
    assert ups[0].check_hosts[0] == "api"
    until(lambda: all(e["health"] == "healthy" and e["health_check_successes"] == 1
                      for e in endpoints(sk, "api").values()), "healthy after one pass")
    assert metric(sk, "sidekick_health_checks_total", cluster="api", result="pass") == 2
    assert metric(sk, "sidekick_endpoint_healthy", cluster="api", endpoint=ups[0].addr) == 1
    cfg = [c for c in __import__("json").loads(sk.admin_get("/config").body)["clusters"] if c["name"] == "api"][0]
    assert cfg["health_check"]["path"] == "/healthz?deep=1" and cfg["health_check"]["interval_ms"] == 60000


def observe(sk, addr, cluster="c"):
    e = endpoints(sk, cluster)[addr]
    return e["health"], e["health_check_failures"], e["health_check_successes"]


def test_transitions_at_exactly_the_thresholds(sidekick, ctlup):
    """unhealthy_threshold = 3, healthy_threshold = 2, checks every 400 ms.
    Polled /clusters states obey, on every observation: while failing,
    fewer than 3 failures in a row → still healthy, 3 or more → unhealthy;
    while passing again, fewer than 2 passes → still unhealthy, 2 or more →
    healthy. Both sides of each threshold are observed. An unhealthy
    endpoint gets no traffic; the transitions are counted and logged."""
    ups = [ctlup(n) for n in "ab"]
    sk = sidekick(ini(route_ini() + cluster_ini("c", ups, "health_check = /healthz\nhealth_interval = 400ms\n"
                                                          "unhealthy_threshold = 3\nhealthy_threshold = 2\n")))
    b = ups[1].addr
    until(lambda: observe(sk, b)[0] == "healthy", "b healthy")
    ups[1].set_health("unhealthy")
    seen = set()

    def failing():
        h, f, _ = observe(sk, b)
        assert (h == "unhealthy") == (f >= 3) or f == 0, (h, f)
        seen.add((h, f))
        return h == "unhealthy"
    until(failing, "b unhealthy")
    assert ("healthy", 2) in seen and ("unhealthy", 3) in seen, seen
    # no traffic to it now
    before = ups[1].requests
    c = Client(sk.port("listen"))
    assert {c.get("/")[1] for _ in range(20)} == {"a"}
    assert ups[1].requests == before
    assert metric(sk, "sidekick_endpoint_healthy", cluster="c", endpoint=b) == 0
    assert metric(sk, "sidekick_health_transitions_total", cluster="c", to="unhealthy") == 1
    assert len(log_lines(sk, f"endpoint {b} is unhealthy: 3 health checks failed in a row")) == 1
    ups[1].set_health("healthy")
    seen.clear()

    def passing():
        h, f, p = observe(sk, b)
        if f == 0:
            assert (h == "healthy") == (p >= 2), (h, p)
            seen.add((h, p))
        return h == "healthy"
    until(passing, "b healthy again")
    assert ("unhealthy", 1) in seen and ("healthy", 2) in seen, seen
    until(lambda: {c.get("/")[1] for _ in range(10)} == {"a", "b"}, "traffic back to b")
    assert metric(sk, "sidekick_health_transitions_total", cluster="c", to="healthy") == 1


@pytest.mark.parametrize("how", ["stall", "refuse", "status:500", "status:404", "reset"])
def test_failures_of_each_kind(sidekick, ctlup, how):
    """A check that times out (health_timeout), a refused connect, a reset,
    a 5xx or a 4xx fails; with unhealthy_threshold = 1 the endpoint is
    unhealthy after the first and traffic goes to the other."""
    ups = [ctlup("a"), ctlup("b", health="follow")]
    sk = sidekick(ini(route_ini() + cluster_ini("c", ups, "health_check = /healthz\nhealth_interval = 300ms\n"
                                                          "health_timeout = 200ms\nunhealthy_threshold = 1\n")))
    until(lambda: observe(sk, ups[1].addr)[0] == "healthy", "b healthy")
    ups[1].set_mode(how)
    until(lambda: observe(sk, ups[1].addr)[0] == "unhealthy", f"b unhealthy by {how}")
    c = Client(sk.port("listen"))
    assert {c.get("/")[1] for _ in range(10)} == {"a"}
    ups[1].set_mode("ok")
    until(lambda: observe(sk, ups[1].addr)[0] == "healthy", "b healthy again")


def test_health_initial_unhealthy(sidekick, ctlup):
    """health_initial = unhealthy: an endpoint gets no traffic until its
    first check passed (then at once, not after healthy_threshold); one
    whose checks fail never gets any."""
    ups = [ctlup("a"), ctlup("b", health="unhealthy")]
    sk = sidekick(ini(route_ini() + cluster_ini("c", ups, "health_check = /healthz\nhealth_interval = 300ms\n"
                                                          "healthy_threshold = 3\nhealth_initial = unhealthy\n"
                                                          "panic_threshold = 0\n")))
    until(lambda: observe(sk, ups[0].addr)[0] == "healthy", "a healthy after its first pass")
    assert observe(sk, ups[0].addr)[2] == 1
    c = Client(sk.port("listen"))
    assert {c.get("/")[1] for _ in range(20)} == {"a"}
    assert ups[1].requests == 0 and observe(sk, ups[1].addr)[0] == "unhealthy"


def test_ring_hash_skips_unhealthy_endpoint(sidekick, ctlup):
    """ring_hash with health checks: the keys of an unhealthy endpoint go
    to the others; the others' keys stay; when it recovers its keys come
    back to it."""
    ups = [ctlup(n) for n in "abcd"]
    sk = sidekick(ini(route_ini() + cluster_ini("c", ups, "lb = ring_hash\nhash_key = header:x-user\n"
                                                          "health_check = /healthz\nhealth_interval = 200ms\n"
                                                          "unhealthy_threshold = 1\nhealthy_threshold = 1\n")))
    until(lambda: all(e["health"] == "healthy" for e in endpoints(sk).values()), "all healthy")
    c = Client(sk.port("listen"))
    keys = [f"k{i}" for i in range(200)]
    first = {k: c.get("/", {"x-user": k})[1] for k in keys}
    ups[2].set_health("unhealthy")
    until(lambda: observe(sk, ups[2].addr)[0] == "unhealthy", "c unhealthy")
    during = {k: c.get("/", {"x-user": k})[1] for k in keys}
    assert all(during[k] == first[k] for k in keys if first[k] != "c")
    assert all(during[k] != "c" for k in keys)
    ups[2].set_health("healthy")
    until(lambda: observe(sk, ups[2].addr)[0] == "healthy", "c healthy")
    assert {k: c.get("/", {"x-user": k})[1] for k in keys} == first


def test_checks_follow_discovered_endpoints(sidekick, ctlup, tmp_path):
    """A discovered endpoint that appears is checked at once (interval
    60s: the check cannot be a scheduled one); one that leaves is no longer
    checked."""
    if not os.path.exists(DISCOVERY):
        pytest.fail(f"discovery.so not built in {os.path.dirname(DISCOVERY)} (set SIDEKICK_BUILD_DIR)")
    a, b = ctlup("a"), ctlup("b")
    f = tmp_path / "eps"
    f.write_text(f"{a.addr}\n")
    sk = sidekick(ini(f"""
plugin_dir = {os.path.dirname(DISCOVERY)}

[plugin files]
load = discovery.so
source = file

[listener main]
address = 127.0.0.1:{{listen}}

[route all]
listener = main
cluster = c

[cluster c]
discovery = files {f}
health_check = /healthz
health_interval = 60s
"""))
    until(lambda: a.health_checks == 1, "a checked at once")
    f.write_text(f"{b.addr}\n")
    until(lambda: b.health_checks == 1, "b checked at once when it appears")
    until(lambda: list(endpoints(sk)) == [b.addr], "a gone")
    assert a.health_checks == 1
    # a comes back: a new object, checked at once again
    f.write_text(f"{a.addr}\n{b.addr}\n")
    until(lambda: a.health_checks == 2, "a checked again when it returns")


def test_checks_after_reload_and_state_kept(sidekick, ctlup):
    """A reload starts the new generation's checks at once (interval 60s)
    and keeps what was learnt: an endpoint unhealthy before the reload is
    still unhealthy right after it (no traffic to it in between)."""
    ups = [ctlup("a"), ctlup("b", health="unhealthy")]
    conf = ini(route_ini() + cluster_ini("c", ups, "health_check = /healthz\nhealth_interval = 60s\n"
                                                   "unhealthy_threshold = 1\n"))
    sk = sidekick(conf)
    until(lambda: observe(sk, ups[1].addr)[0] == "unhealthy", "b unhealthy")
    until(lambda: observe(sk, ups[0].addr)[0] == "healthy", "a checked")
    checks = [u.health_checks for u in ups]
    assert checks == [1, 1]
    sk.signal(signal.SIGHUP)
    until(lambda: all(u.health_checks == n + 1 for u, n in zip(ups, checks)), "checks right after the reload")
    assert observe(sk, ups[1].addr)[0] == "unhealthy"
    assert ups[1].requests == 0
    c = Client(sk.port("listen"))
    assert {c.get("/")[1] for _ in range(10)} == {"a"}


def tls_upstream(ctlup, tmp_path, name):
    """A CtlUpstream that speaks only TLS (every accepted socket wrapped),
    with a certificate for upstream.test carrying a SPIFFE ID."""
    pki = PKI(tmp_path / "pki")
    ca = pki.ca("ca")
    leaf = pki.leaf(name, ca, uris=["spiffe://test/ns/x/sa/up"], dns=["upstream.test"])
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(str(leaf.chain), str(leaf.key))
    return ctlup(name, tls=ctx), ca


def test_checks_over_the_clusters_tls(sidekick, ctlup, tmp_path):
    """A cluster with `tls` is checked over TLS with that section's CA, SNI
    and peer_identity: the TLS-only upstream passes its checks; a second
    cluster on the same upstream whose peer_identity does not match fails
    them (the handshake refuses the peer) and its endpoint is unhealthy."""
    u, ca = tls_upstream(ctlup, tmp_path, "t")
    sk = sidekick(ini(route_ini("good") + f"""
[tls ok]
ca = {ca.cert}
sni = upstream.test
peer_identity = spiffe://test/ns/x/sa/up

[tls wrong]
ca = {ca.cert}
sni = upstream.test
peer_identity = spiffe://test/ns/x/sa/other

""" + cluster_ini("good", [u], "tls = ok\nhealth_check = /healthz\nhealth_interval = 300ms\n"
                               "unhealthy_threshold = 1\n") +
        cluster_ini("bad", [u], "tls = wrong\nhealth_check = /healthz\nhealth_interval = 300ms\n"
                                "unhealthy_threshold = 1\n")))
    until(lambda: observe(sk, u.addr, "good")[0] == "healthy", "checked over TLS")
    until(lambda: observe(sk, u.addr, "bad")[0] == "unhealthy", "a wrong peer identity fails the check")
    assert u.check_hosts and u.check_hosts[0] == "upstream.test"  # the sni as Host
    assert Client(sk.port("listen")).get("/")[0] == 200


def test_panic_threshold(sidekick, ctlup):
    """panic_threshold = 50 with four endpoints: two unhealthy (50 %) is
    not panic — traffic only to the two healthy ones; a third unhealthy
    (25 %) is: traffic goes to all four, including the unhealthy ones
    (they receive requests), the gauge says so, the entry is counted and
    logged once; one recovering (50 %) ends it, logged once. A cluster with
    panic_threshold = 0 and none healthy answers 503 no_healthy_upstream."""
    ups = [ctlup(n) for n in "abcd"]
    solo = ctlup("solo", health="unhealthy")
    sk = sidekick(ini(route_ini() + cluster_ini("c", ups, "health_check = /healthz\nhealth_interval = 200ms\n"
                                                          "unhealthy_threshold = 1\nhealthy_threshold = 1\n"
                                                          "panic_threshold = 50\n") +
                      "[listener l2]\naddress = 127.0.0.1:{listen2}\n\n[route r2]\nlistener = l2\ncluster = s\n\n" +
                      cluster_ini("s", [solo], "health_check = /healthz\nhealth_interval = 200ms\n"
                                               "unhealthy_threshold = 1\npanic_threshold = 0\n")))
    until(lambda: all(e["health"] == "healthy" for e in endpoints(sk).values()), "all healthy")
    c = Client(sk.port("listen"))
    for u in ups[2:]:
        u.set_health("unhealthy")
    until(lambda: clusters(sk)["c"]["healthy_endpoints"] == 2, "two unhealthy")
    assert {c.get("/")[1] for _ in range(40)} == {"a", "b"}
    assert clusters(sk)["c"]["panic"] is False
    ups[1].set_health("unhealthy")
    until(lambda: clusters(sk)["c"]["healthy_endpoints"] == 1, "three unhealthy")
    before = {u.name: u.requests for u in ups}
    got = [c.get("/")[1] for _ in range(40)]
    assert set(got) == {"a", "b", "c", "d"}, got
    assert all(u.requests > before[u.name] for u in ups)
    assert clusters(sk)["c"]["panic"] is True
    assert metric(sk, "sidekick_cluster_panic", cluster="c") == 1
    assert metric(sk, "sidekick_cluster_panics_total", cluster="c") == 1
    ups[3].set_health("healthy")
    until(lambda: clusters(sk)["c"]["healthy_endpoints"] == 2, "one back")
    until(lambda: {c.get("/")[1] for _ in range(20)} == {"a", "d"}, "out of panic")
    assert metric(sk, "sidekick_cluster_panic", cluster="c") == 0
    assert metric(sk, "sidekick_cluster_panics_total", cluster="c") == 1
    assert len(log_lines(sk, "cluster c: panic: 1 of 4 endpoints healthy")) == 1
    assert len(log_lines(sk, "cluster c: out of panic")) == 1
    until(lambda: observe(sk, solo.addr, "s")[0] == "unhealthy", "solo unhealthy")
    assert_local_reply(http_request(sk.port("listen2"), "GET", "/"), 503, "no_healthy_upstream")
    assert solo.requests == 0
