"""Traffic management in the proxy (docs/traffic.md): circuit breakers,
retries (retry_on, per_try_timeout, backoff, retry budget, body replay,
idempotency), mirroring and fault injection, with their access log fields
and metrics.

The upstreams are ctlupstream.CtlUpstream: each attempt of a request can be
scripted (x-test-id and a shared Plan), whatever endpoint the balancer
picks. Rates are checked with a stated tolerance (five standard deviations
of the binomial count, so a correct build fails about once in millions of
runs); no test measures how fast the proxy is.
"""

import json
import math
import socket
import threading
import time

import pytest

from ctlupstream import CtlUpstream, Plan
from harness import (RawClient, assert_local_reply, free_port, http_request, metric_value,
                     parse_prometheus, run_sidekick, sk_ini, wait_for)


def config(endpoints, route="", cluster="", extra="", workers=1, shadow=None, shadow_cluster="",
           connect_timeout="1s"):
    eps = ", ".join(f"127.0.0.1:{p}" for p in endpoints)
    body = f"""
[listener main]
address = 127.0.0.1:{{listen}}

[route all]
listener = main
cluster = up
{route}

[cluster up]
endpoints = {eps}
connect_timeout = {connect_timeout}
{cluster}
{extra}
"""
    if shadow is not None:
        body += f"""
[cluster shadow]
endpoints = {", ".join(f"127.0.0.1:{p}" for p in shadow)}
{shadow_cluster}
"""
    return sk_ini(body, workers=workers, access_log="stdout")


@pytest.fixture
def ctl():
    made = []

    def factory(name="up", **kw):
        u = CtlUpstream(name=name, **kw)
        made.append(u)
        return u

    yield factory
    for u in made:
        u.close()


def metrics(sk):
    return parse_prometheus(sk.admin_get("/metrics").body.decode())


def metric(sk, name, **labels):
    return metric_value(metrics(sk), name, **labels) or 0


def log_lines(sk, n, timeout=5):
    """The access log once it has at least n lines."""
    assert wait_for(lambda: len(sk.access_log_lines()) >= n, timeout), sk.access_log_lines()
    return sk.access_log_lines()


def log_of(sk, path, timeout=5):
    """The one access log line of `path`."""
    assert wait_for(lambda: any(l["path"] == path for l in sk.access_log_lines()), timeout)
    [line] = [l for l in sk.access_log_lines() if l["path"] == path]
    return line


def within(count, n, p, sds=5):
    """Whether a binomial count of n draws at p is within `sds` standard deviations."""
    mean, sd = n * p, math.sqrt(n * p * (1 - p))
    return abs(count - mean) <= sds * sd


def in_threads(n, fn):
    """Runs fn(i) for i in range(n) in n threads; returns their results (bounded join)."""
    out = [None] * n

    def run(i):
        try:
            out[i] = fn(i)
        except Exception as e:  # recorded: the caller asserts on it
            out[i] = e

    ts = [threading.Thread(target=run, args=(i,), daemon=True) for i in range(n)]
    for t in ts:
        t.start()
    for t in ts:
        t.join(30)
    return out


# ---------------------------------------------------------------------------
# circuit breakers


def test_breaker_max_requests_overflow_without_touching_the_upstream(sidekick, ctl):
    """max_requests = 3 and 10 concurrent requests on a stalled upstream: the
    upstream never has more than 3 at once, the other 7 are answered 503
    overloaded while the 3 are still held (at once, not after them), and the
    overflow is counted under limit="max_requests"."""
    up = ctl("up")
    up.set_mode("stall")
    sk = sidekick(config([up.port], cluster="max_requests = 3"))
    done = []

    def one(i):
        r = http_request(sk.port("listen"), "GET", f"/r{i}", timeout=20)
        done.append((time.monotonic(), r))
        return r

    threads = [threading.Thread(target=one, args=(i,), daemon=True) for i in range(10)]
    for t in threads:
        t.start()
    assert wait_for(lambda: up.in_flight == 3 and len(done) == 7, 10), (up.in_flight, len(done))
    early = [r for _, r in done]
    for r in early:
        assert_local_reply(r, 503, "overloaded")
    assert up.seen() == 3  # the overflowing requests never reached it
    up.release()
    for t in threads:
        t.join(20)
    assert sorted(r.status for _, r in done) == [200] * 3 + [503] * 7
    assert up.max_in_flight == 3 and up.seen() == 3
    assert metric(sk, "sidekick_circuit_breaker_overflows_total", cluster="up", limit="max_requests") == 7
    assert metric(sk, "sidekick_circuit_breaker_overflows_total", cluster="up", limit="max_connections") == 0
    lines = log_lines(sk, 10)
    assert sorted((l["status"], l["reason"]) for l in lines if l["status"] == 503) == [(503, "overloaded")] * 7
    assert all(l["attempts"] == 0 for l in lines if l["status"] == 503)


def test_breaker_max_connections(sidekick, ctl):
    """max_connections = 2 (max_requests large): a third concurrent request
    needs a third connection and gets 503 overloaded; limit="max_connections"."""
    up = ctl("up")
    up.set_mode("stall")
    sk = sidekick(config([up.port], cluster="max_connections = 2"))
    results = []
    threads = [threading.Thread(target=lambda i=i: results.append(
        http_request(sk.port("listen"), "GET", f"/c{i}", timeout=20)), daemon=True) for i in range(5)]
    for t in threads:
        t.start()
    assert wait_for(lambda: up.in_flight == 2 and len(results) == 3, 10), (up.in_flight, len(results))
    for r in results:
        assert_local_reply(r, 503, "overloaded")
    up.release()
    for t in threads:
        t.join(20)
    assert sorted(r.status for r in results) == [200, 200, 503, 503, 503]
    assert up.max_in_flight == 2 and up.accepted == 2
    assert metric(sk, "sidekick_circuit_breaker_overflows_total", cluster="up", limit="max_connections") == 3


def test_breaker_max_pending(sidekick):
    """max_pending = 1 against an endpoint whose connects hang (a listener
    with a full accept queue drops the SYNs): one request waits for its
    connection, the next ones are refused at once with 503 overloaded and
    counted under limit="max_pending"."""
    srv = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    srv.bind(("127.0.0.1", 0))
    srv.listen(0)
    port = srv.getsockname()[1]
    fillers = []
    try:
        # fill the accept queue (backlog 0 holds one; a few more for safety)
        for _ in range(4):
            f = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            f.setblocking(False)
            try:
                f.connect(("127.0.0.1", port))
            except BlockingIOError:
                pass
            fillers.append(f)
        time.sleep(0.2)
        sk = sidekick(config([port], cluster="max_pending = 1", connect_timeout="5s", route="timeout = 8s"))
        first = []
        t = threading.Thread(target=lambda: first.append(
            http_request(sk.port("listen"), "GET", "/waits", timeout=15)), daemon=True)
        t.start()
        # the first one holds the only pending slot: the others overflow at once
        assert wait_for(lambda: metric(sk, "sidekick_upstream_connections_created_total", cluster="up") >= 1, 5)
        for i in range(3):
            r = http_request(sk.port("listen"), "GET", f"/over{i}", timeout=15)
            assert_local_reply(r, 503, "overloaded")
        assert not first, "the first request should still wait for its connection"
        assert metric(sk, "sidekick_circuit_breaker_overflows_total", cluster="up", limit="max_pending") == 3
        t.join(15)
        assert first and first[0].status in (502, 504), first
    finally:
        for f in fillers:
            f.close()
        srv.close()


def test_breaker_max_retries_concurrent_retries(sidekick, ctl):
    """max_retries = 1: while one request is in its retry (held by a stalled
    endpoint), another failing request is not retried: it gets the upstream's
    own 503, and the refusal is counted under limit="max_retries"."""
    plan = Plan()
    a, b = ctl("a", plan=plan), ctl("b", plan=plan)
    sk = sidekick(config([a.port, b.port], route="retries = 1\nretry_backoff = 0",
                         cluster="max_retries = 1\nretry_budget = off"))
    plan.set("held", [("status", 503), ("stall",)])
    plan.set("second", [("status", 503), ("ok",)])
    held = []
    t = threading.Thread(target=lambda: held.append(http_request(
        sk.port("listen"), "GET", "/held", headers={"x-test-id": "held"}, timeout=20)), daemon=True)
    t.start()
    assert wait_for(lambda: len(plan.attempts("held")) == 2, 10)
    r = http_request(sk.port("listen"), "GET", "/second", headers={"x-test-id": "second"}, timeout=10)
    assert r.status == 503 and r.header("x-sidekick-reason") is None, r  # the upstream's answer
    assert len(plan.attempts("second")) == 1
    assert metric(sk, "sidekick_circuit_breaker_overflows_total", cluster="up", limit="max_retries") == 1
    a.release()
    b.release()
    t.join(20)
    assert held[0].status == 200
    # the slot is back: the next failing request is retried again
    plan.set("third", [("status", 503), ("ok",)])
    r = http_request(sk.port("listen"), "GET", "/third", headers={"x-test-id": "third"}, timeout=10)
    assert r.status == 200 and len(plan.attempts("third")) == 2


def test_breakers_shared_across_workers(sidekick, ctl):
    """With 2 workers the limit is for the whole sidecar, not per worker."""
    up = ctl("up")
    up.set_mode("stall")
    sk = sidekick(config([up.port], cluster="max_requests = 2", workers=2))
    done = []
    threads = [threading.Thread(target=lambda i=i: done.append(
        http_request(sk.port("listen"), "GET", f"/w{i}", timeout=20)), daemon=True) for i in range(8)]
    for t in threads:
        t.start()
    assert wait_for(lambda: up.in_flight == 2 and len(done) == 6, 10), (up.in_flight, len(done))
    up.release()
    for t in threads:
        t.join(20)
    assert up.max_in_flight == 2 and up.count() == 2
    assert sorted(r.status for r in done) == [200] * 2 + [503] * 6


# ---------------------------------------------------------------------------
# retries


def test_retry_goes_to_another_endpoint_and_is_logged(sidekick, ctl):
    """A request whose first attempt gets a 503 is retried on the other
    endpoint (envoy#2259: never back to the one that failed); the access
    log has attempts 2, the final endpoint and retry_reason "503". (Outlier
    detection is off: the endpoint that keeps failing first would be
    ejected, and a retry then has no other endpoint to go to.)"""
    plan = Plan()
    a, b = ctl("a", plan=plan), ctl("b", plan=plan)
    sk = sidekick(config([a.port, b.port], route="retries = 3\nretry_backoff = 0",
                         cluster="retry_budget = off\noutlier_failures = 0"))
    for i in range(10):
        plan.set(f"r{i}", [("status", 503)])  # the first attempt fails, wherever it goes
        r = http_request(sk.port("listen"), "GET", f"/r{i}", headers={"x-test-id": f"r{i}"})
        assert r.status == 200, r
        tried = plan.attempts(f"r{i}")
        assert len(tried) == 2 and tried[0] != tried[1], tried
        line = log_of(sk, f"/r{i}")
        assert line["attempts"] == 2 and line["retry_reason"] == "503", line
        final = a if tried[1] == "a" else b
        assert line["endpoint"] == final.addr, line
    assert metric(sk, "sidekick_upstream_retries_total", cluster="up", reason="503") == 10
    # a request never retried: attempts 1, retry_reason null
    r = http_request(sk.port("listen"), "GET", "/plain")
    assert r.status == 200
    line = log_of(sk, "/plain")
    assert line["attempts"] == 1 and line["retry_reason"] is None and line["fault"] is None


def test_retry_on_conditions(sidekick, ctl):
    """retry_on decides: with `retry_on = reset, retriable-4xx` a 409 and a
    reset are retried, a 503 is not (it is forwarded)."""
    plan = Plan()
    up = ctl("up", plan=plan)
    sk = sidekick(config([up.port], route="retries = 1\nretry_backoff = 0\nretry_on = reset, retriable-4xx",
                         cluster="retry_budget = off"))
    # the reset first, on a fresh connection (a pooled one that fails gets the
    # separate stale-connection retry, which is not counted as a retry)
    cases = [("reset", ("reset",), 200, 2, "reset"), ("c409", ("status", 409), 200, 2, "409"),
             ("c503", ("status", 503), 503, 1, None)]
    for rid, first, status, attempts, reason in cases:
        plan.set(rid, [first])
        r = http_request(sk.port("listen"), "GET", f"/{rid}", headers={"x-test-id": rid})
        assert r.status == status, (rid, r)
        assert len(plan.attempts(rid)) == attempts, rid
        line = log_of(sk, f"/{rid}")
        assert (line["attempts"], line["retry_reason"]) == (attempts, reason), line
    # the default retry_on (connect-failure, reset, 502, 503, 504) does not retry 409
    sk2 = sidekick(config([up.port], route="retries = 1"), name="b.ini")
    plan.set("d409", [("status", 409)])
    r = http_request(sk2.port("listen"), "GET", "/d409", headers={"x-test-id": "d409"})
    assert r.status == 409 and len(plan.attempts("d409")) == 1


def test_retry_budget_holds_when_every_endpoint_fails(sidekick, ctl):
    """Every endpoint answers 503 and retries = 3: without a budget that is
    4 upstream attempts per request. With retry_budget = 20% and
    retry_budget_min = 2, the upstreams see at most
    requests × 1.2 + 2 × (seconds + 1) attempts, and the exhaustion is counted."""
    ups = [ctl(f"u{i}") for i in range(3)]
    for u in ups:
        u.set_mode("status", 503)
    sk = sidekick(config([u.port for u in ups], route="retries = 3\nretry_backoff = 0",
                         cluster="retry_budget = 20%\nretry_budget_min = 2", workers=2))
    n = 150
    t0 = time.monotonic()
    results = in_threads(3, lambda k: [http_request(sk.port("listen"), "GET", f"/b{k}-{i}").status
                                       for i in range(n // 3)])
    seconds = time.monotonic() - t0
    statuses = [s for part in results for s in part]
    assert statuses == [503] * n, results
    attempts = sum(u.count() for u in ups)
    bound = n * 1.2 + 2 * (math.ceil(seconds) + 1)
    assert n < attempts <= bound, (attempts, bound, seconds)
    retries = metric(sk, "sidekick_upstream_retries_total", cluster="up")
    assert retries == attempts - n
    assert metric(sk, "sidekick_retry_budget_exhausted_total", cluster="up") >= n - retries
    # what the access log says agrees
    lines = log_lines(sk, n)
    assert sum(l["attempts"] for l in lines) == attempts


def test_never_retried_once_the_response_started(sidekick, ctl):
    """The upstream sends a response head and part of the body, then closes:
    the response has started towards the client, so no retry (retry_on has
    reset): the client's connection is cut, the upstream saw one attempt."""
    plan = Plan()
    a, b = ctl("a", plan=plan), ctl("b", plan=plan)
    sk = sidekick(config([a.port, b.port], route="retries = 2\nretry_backoff = 0", cluster="retry_budget = off"))
    plan.set("cut", [("truncate",)])
    with RawClient(sk.port("listen"), timeout=10) as c:
        c.send(b"GET /cut HTTP/1.1\r\nHost: x\r\nx-test-id: cut\r\n\r\n")
        assert c.wait_closed(10)
        assert c.buf.startswith(b"HTTP/1.1 200"), bytes(c.buf)
    assert len(plan.attempts("cut")) == 1
    line = log_of(sk, "/cut")
    assert (line["attempts"], line["retry_reason"], line["reason"]) == (1, None, "upstream_reset"), line


def test_post_not_retried_once_bytes_reached_the_upstream(sidekick, ctl):
    """A POST whose connection is reset after the upstream read it is not
    sent again (not idempotent), whatever retry_on says; a PUT is."""
    plan = Plan()
    a, b = ctl("a", plan=plan), ctl("b", plan=plan)
    sk = sidekick(config([a.port, b.port], route="retries = 2\nretry_backoff = 0", cluster="retry_budget = off"))
    plan.set("post", [("reset",)])
    r = http_request(sk.port("listen"), "POST", "/post", headers={"x-test-id": "post"}, body=b"x" * 100)
    assert_local_reply(r, 502, "upstream_reset")
    assert len(plan.attempts("post")) == 1
    assert [q.body for q in a.app_requests + b.app_requests if q.path == "/post"] == [b"x" * 100]
    line = log_of(sk, "/post")
    assert line["attempts"] == 1 and line["retry_reason"] is None
    # a 503 answer to a POST is forwarded, not retried
    plan.set("post503", [("status", 503)])
    r = http_request(sk.port("listen"), "POST", "/post503", headers={"x-test-id": "post503"}, body=b"y")
    assert r.status == 503 and len(plan.attempts("post503")) == 1
    # PUT is idempotent: retried, and the other endpoint gets the whole body
    plan.set("put", [("reset",)])
    r = http_request(sk.port("listen"), "PUT", "/put", headers={"x-test-id": "put"}, body=b"z" * 100)
    assert r.status == 200, r
    assert len(plan.attempts("put")) == 2
    assert [q.body for q in a.app_requests + b.app_requests if q.path == "/put"] == [b"z" * 100] * 2


def test_post_retried_when_nothing_reached_the_upstream(sidekick, ctl):
    """A POST whose connect failed never reached anything: retried on the
    live endpoint, which gets the body exactly once."""
    live = ctl("live")
    dead = free_port()
    sk = sidekick(config([dead, live.port], route="retries = 1\nretry_backoff = 0", cluster="retry_budget = off"))
    for i in range(4):  # round robin: half of them try the dead endpoint first
        r = http_request(sk.port("listen"), "POST", f"/p{i}", body=f"body{i}".encode())
        assert r.status == 200, r
    assert sorted(q.body for q in live.app_requests) == [f"body{i}".encode() for i in range(4)]
    lines = log_lines(sk, 4)
    for l in lines:
        assert (l["attempts"], l["retry_reason"]) in [(1, None), (2, "connect-failure")], l
        assert l["endpoint"] == live.addr
    assert any(l["attempts"] == 2 for l in lines)


@pytest.mark.parametrize("chunked", [False, True])
def test_body_replayed_up_to_64k(sidekick, ctl, chunked):
    """A request body of exactly 64 KiB is kept and sent again on a retry; one
    byte more and it is not (the retry is not made: 502)."""
    plan = Plan()
    a, b = ctl("a", plan=plan), ctl("b", plan=plan)
    sk = sidekick(config([a.port, b.port], route="retries = 1\nretry_backoff = 0", cluster="retry_budget = off"))
    for size, retried in [(65536, True), (65537, False), (1000, True)]:
        rid = f"s{size}"
        body = bytes((i * 7) % 251 for i in range(size))
        plan.set(rid, [("reset",)])
        hdrs = [("x-test-id", rid)]
        with RawClient(sk.port("listen"), timeout=10) as c:
            if chunked:
                hdrs.append(("Transfer-Encoding", "chunked"))
                half = size // 2
                data = b"%x\r\n%s\r\n%x\r\n%s\r\n0\r\n\r\n" % (half, body[:half], size - half, body[half:])
                r = c.request("PUT", f"/{rid}", hdrs, data)
            else:
                r = c.request("PUT", f"/{rid}", hdrs, body)
        got = [q for q in a.app_requests + b.app_requests if q.path == f"/{rid}"]
        if retried:
            assert r.status == 200, (size, r)
            assert len(got) == 2 and all(q.body == body for q in got), size
        else:
            assert_local_reply(r, 502, "upstream_reset")
            assert len(got) == 1 and got[0].body == body, size


def test_per_try_timeout_must_be_below_timeout(tmp_path):
    """per_try_timeout ≥ the route timeout is refused at load (envoy#10082:
    never silently ignored), naming the key; below it is accepted."""
    def check(route):
        p = tmp_path / "t.ini"
        p.write_text(config([free_port()], route=route).replace("{listen}", str(free_port()))
                     .replace("{admin}", str(free_port())))
        return run_sidekick(["-t", "-c", str(p)])

    r = check("timeout = 1s\nper_try_timeout = 1s\nretries = 1")
    assert r.returncode != 0 and "per_try_timeout" in r.stderr and "below" in r.stderr, r.stderr
    r = check("timeout = 1s\nper_try_timeout = 2s")
    assert r.returncode != 0 and "per_try_timeout" in r.stderr, r.stderr
    r = check("per_try_timeout = 20s")  # the default timeout is 15s
    assert r.returncode != 0 and "15000ms, the default" in r.stderr, r.stderr
    r = check("timeout = 1s\nper_try_timeout = 999ms\nretries = 1")
    assert r.returncode == 0, r.stderr
    r = check("timeout = 0\nper_try_timeout = 1h\nretries = 1")
    assert r.returncode != 0  # 1h is not a duration: the key itself refuses it
    r = check("timeout = 0\nper_try_timeout = 60m\nretries = 1")
    assert r.returncode == 0, r.stderr  # no route timeout: any per-try limit
    # retry keys without retries would do nothing: refused
    r = check("retry_on = reset")
    assert r.returncode != 0 and "retries" in r.stderr, r.stderr
    r = check("retries = 1\nretry_on = 500")
    assert r.returncode != 0 and "unknown condition" in r.stderr, r.stderr


def test_per_try_timeout_cuts_a_stalled_try_and_the_retry_succeeds(sidekick, ctl):
    """The first attempt stalls: per_try_timeout cuts it and the retry on the
    other endpoint answers, while the stalled one is still held (so the cut
    did not wait for it). retry_reason per-try-timeout."""
    plan = Plan()
    a, b = ctl("a", plan=plan), ctl("b", plan=plan)
    sk = sidekick(config([a.port, b.port], route="timeout = 20s\nper_try_timeout = 300ms\nretries = 1",
                         cluster="retry_budget = off"))
    plan.set("cut", [("stall",), ("ok",)])
    r = http_request(sk.port("listen"), "GET", "/cut", headers={"x-test-id": "cut"}, timeout=20)
    assert r.status == 200, r
    tried = plan.attempts("cut")
    assert len(tried) == 2 and tried[0] != tried[1]
    stalled = a if tried[0] == "a" else b
    assert stalled.in_flight == 1  # still held: the answer did not wait for it
    line = log_of(sk, "/cut")
    assert (line["attempts"], line["retry_reason"]) == (2, "per-try-timeout"), line
    assert metric(sk, "sidekick_upstream_retries_total", cluster="up", reason="per-try-timeout") == 1
    # without a retry left: 504 upstream_timeout after the per-try limit
    plan.set("both", [("stall",), ("stall",)])
    r = http_request(sk.port("listen"), "GET", "/both", headers={"x-test-id": "both"}, timeout=20)
    assert_local_reply(r, 504, "upstream_timeout")
    assert len(plan.attempts("both")) == 2
    a.release()
    b.release()


def test_route_timeout_covers_every_try(sidekick, ctl):
    """Stalling endpoints, retries = 5, per_try_timeout 400ms, timeout 1s:
    the route timeout ends the request (504) before all tries are spent."""
    plan = Plan()
    ups = [ctl(f"u{i}", plan=plan) for i in range(3)]
    for u in ups:
        u.set_mode("stall")
    sk = sidekick(config([u.port for u in ups], route="timeout = 1s\nper_try_timeout = 400ms\nretries = 5\n"
                         "retry_backoff = 0", cluster="retry_budget = off"))
    r = http_request(sk.port("listen"), "GET", "/t", headers={"x-test-id": "t"}, timeout=20)
    assert_local_reply(r, 504, "upstream_timeout")
    assert 2 <= len(plan.attempts("t")) <= 3
    for u in ups:
        u.release()


def test_retry_backoff_waits_between_tries(sidekick, ctl):
    """retry_backoff = 200ms: the second attempt reaches the upstream at
    least half the step (100 ms) after the first (equal jitter)."""
    plan = Plan()
    up = ctl("up", plan=plan)
    sk = sidekick(config([up.port], route="retries = 2\nretry_backoff = 200ms", cluster="retry_budget = off"))
    plan.set("bo", [("status", 503), ("status", 503)])
    r = http_request(sk.port("listen"), "GET", "/bo", headers={"x-test-id": "bo"})
    assert r.status == 200
    times = [t for t, target in up.arrivals if target == "/bo"]
    assert len(times) == 3
    assert times[1] - times[0] >= 0.1 and times[2] - times[1] >= 0.2, times  # steps 200ms, 400ms


def test_backoff_holds_the_body_and_replays_it(sidekick, ctl):
    """A retry waiting in its backoff while the client is still sending the
    body: the body is held and replayed whole."""
    plan = Plan()
    dead = free_port()
    up = ctl("up", plan=plan)
    sk = sidekick(config([dead, up.port], route="retries = 1\nretry_backoff = 300ms", cluster="retry_budget = off"))
    body = b"0123456789" * 2000
    for i in range(2):  # one of the two goes to the dead endpoint first
        with RawClient(sk.port("listen"), timeout=10) as c:
            c.send(f"PUT /slow{i} HTTP/1.1\r\nHost: x\r\nContent-Length: {len(body)}\r\n\r\n".encode())
            c.send(body[:5000])
            time.sleep(0.2)
            c.send(body[5000:])
            r = c.read_response()
        assert r.status == 200, r
    assert sorted(q.path for q in up.app_requests) == ["/slow0", "/slow1"]
    assert all(q.body == body for q in up.app_requests)


# ---------------------------------------------------------------------------
# mirroring


def test_mirror_rate_and_shadow_authority(sidekick, ctl):
    """mirror = shadow 25%: about a quarter of the requests (within 5 sd) are
    copied to the shadow cluster with "-shadow" appended to the host, body
    included; the client only ever sees the primary's answers."""
    primary, shadow = ctl("primary"), ctl("shadow")
    shadow.set_mode("status", 500)  # its answers are dropped
    sk = sidekick(config([primary.port], route="mirror = shadow 25%", shadow=[shadow.port]))
    n = 400
    results = in_threads(4, lambda k: [http_request(sk.port("listen"), "POST", f"/m{k}-{i}",
                                                    body=f"payload {k}-{i}".encode(),
                                                    host=f"api.local:{sk.port('listen')}")
                                       for i in range(n // 4)])
    statuses = [r.status for part in results for r in part]
    assert statuses == [200] * n
    assert primary.count() == n
    sent = metric(sk, "sidekick_mirror_requests_total", route="all", result="sent")
    assert within(sent, n, 0.25), sent
    assert wait_for(lambda: shadow.count() == sent, 5), (shadow.count(), sent)
    for q in shadow.app_requests:
        assert q.header("host") == f"api.local-shadow:{sk.port('listen')}", q.headers
        assert q.body == ("payload " + q.path[2:]).encode(), (q.path, q.body)
    assert metric(sk, "sidekick_mirror_requests_total", route="all", result="failed") == 0
    assert metric(sk, "sidekick_mirror_requests_total", route="all", result="dropped") == 0


def test_mirror_stalling_shadow_never_affects_the_client(sidekick, ctl):
    """A shadow that holds every copy: each client gets the primary's answer
    while the copies are still held; copies beyond the shadow cluster's
    max_requests are dropped (counted), so the shadow never has more."""
    primary, shadow = ctl("primary"), ctl("shadow")
    shadow.set_mode("stall")
    sk = sidekick(config([primary.port], route="mirror = shadow", shadow=[shadow.port],
                         shadow_cluster="max_requests = 3"))
    for i in range(12):
        r = http_request(sk.port("listen"), "GET", f"/s{i}")
        assert r.status == 200 and r.body == f"primary GET /s{i}".encode(), r
    assert shadow.in_flight <= 3 and shadow.max_in_flight <= 3
    assert wait_for(lambda: shadow.in_flight == 3, 5)
    assert metric(sk, "sidekick_mirror_requests_total", route="all", result="sent") == 3
    assert metric(sk, "sidekick_mirror_requests_total", route="all", result="dropped") == 9
    shadow.release()
    assert wait_for(lambda: shadow.in_flight == 0, 5)


def test_mirror_failing_shadow_never_affects_the_client(sidekick, ctl):
    """A shadow that resets every copy, and one that is not there at all:
    the clients get 200, the failures are counted, nothing is retried."""
    primary, shadow = ctl("primary"), ctl("shadow")
    shadow.set_mode("reset")
    dead = free_port()
    sk = sidekick(config([primary.port], route="mirror = shadow 100%", shadow=[shadow.port, dead]))
    for i in range(10):
        r = http_request(sk.port("listen"), "GET", f"/f{i}")
        assert r.status == 200, r
    assert wait_for(lambda: metric(sk, "sidekick_mirror_requests_total", route="all", result="failed") == 10, 5)
    assert 0 < shadow.count() < 10  # round robin over the shadow's two endpoints; never retried
    lines = log_lines(sk, 10)
    assert all(l["status"] == 200 and l["cluster"] == "up" and l["attempts"] == 1 for l in lines)


def test_mirror_skips_bodies_over_the_bound(sidekick, ctl):
    """A request body over 64 KiB is not mirrored (counted as dropped); the
    primary gets it whole."""
    primary, shadow = ctl("primary"), ctl("shadow")
    sk = sidekick(config([primary.port], route="mirror = shadow", shadow=[shadow.port]))
    r = http_request(sk.port("listen"), "PUT", "/big", body=b"b" * 70000)
    assert r.status == 200
    r = http_request(sk.port("listen"), "PUT", "/small", body=b"s" * 60000)
    assert r.status == 200
    assert wait_for(lambda: shadow.count() == 1, 5)
    assert [q.path for q in shadow.app_requests] == ["/small"]
    assert shadow.app_requests[0].body == b"s" * 60000
    assert [len(q.body) for q in primary.app_requests] == [70000, 60000]
    assert metric(sk, "sidekick_mirror_requests_total", route="all", result="dropped") == 1


# ---------------------------------------------------------------------------
# fault injection


def test_fault_abort_rate(sidekick, ctl):
    """fault_abort = 503 20%: about a fifth of the requests (within 5 sd) get a
    local 503 fault_injected and never reach the upstream."""
    up = ctl("up")
    sk = sidekick(config([up.port], route="fault_abort = 503 20%"))
    n = 400
    results = in_threads(4, lambda k: [http_request(sk.port("listen"), "GET", f"/a{k}-{i}") for i in range(n // 4)])
    rs = [r for part in results for r in part]
    aborted = [r for r in rs if r.status == 503]
    for r in aborted:
        assert_local_reply(r, 503, "fault_injected")
    assert within(len(aborted), n, 0.2), len(aborted)
    assert up.count() == n - len(aborted)
    assert metric(sk, "sidekick_faults_injected_total", route="all", kind="abort") == len(aborted)
    lines = log_lines(sk, n)
    assert len([l for l in lines if l["reason"] == "fault_injected" and l["fault"] == "abort"]) == len(aborted)


def test_fault_delay_rate(sidekick, ctl):
    """fault_delay = 150ms 50%: about half the requests (within 5 sd) are held
    at least 150 ms before they go upstream (the upstream sees every one)."""
    up = ctl("up")
    sk = sidekick(config([up.port], route="fault_delay = 150ms 50%"))
    n = 60
    in_threads(6, lambda k: [http_request(sk.port("listen"), "GET", f"/d{k}-{i}") for i in range(n // 6)])
    lines = log_lines(sk, n)
    delayed = [l for l in lines if l["fault"] == "delay"]
    assert within(len(delayed), n, 0.5), len(delayed)
    assert all(l["duration_ms"] >= 150 for l in delayed)
    assert all(l["status"] == 200 for l in lines)
    assert up.count() == n
    assert metric(sk, "sidekick_faults_injected_total", route="all", kind="delay") == len(delayed)


def test_fault_headers_force_faults_and_are_stripped(sidekick, ctl):
    """fault_headers = on: x-sidekick-fault-abort and -delay force a fault
    for that request, and never reach the upstream; on a route without it
    the headers do nothing and pass through."""
    up = ctl("up")
    sk = sidekick(sk_ini(f"""
[listener main]
address = 127.0.0.1:{{listen}}

[route chaos]
listener = main
prefix = /chaos/
cluster = up
fault_headers = on

[route plain]
listener = main
cluster = up

[cluster up]
endpoints = 127.0.0.1:{up.port}
""", access_log="stdout"))
    port = sk.port("listen")
    r = http_request(port, "GET", "/chaos/a", headers={"x-sidekick-fault-abort": "418"})
    assert_local_reply(r, 418, "fault_injected")
    assert up.seen() == 0
    t0 = time.monotonic()
    r = http_request(port, "POST", "/chaos/d", headers={"x-sidekick-fault-delay": "300ms", "x-keep": "1"},
                     body=b"held body" * 1000)
    assert r.status == 200 and time.monotonic() - t0 >= 0.3
    [q] = up.app_requests
    assert q.body == b"held body" * 1000  # the body waited with the request
    assert q.header("x-keep") == "1"
    assert not [n for n, _ in q.headers if n.lower().startswith("x-sidekick-fault")], q.headers
    # both: delayed, then aborted
    r = http_request(port, "GET", "/chaos/both", headers={"x-sidekick-fault-delay": "100ms",
                                                           "x-sidekick-fault-abort": "503"})
    assert_local_reply(r, 503, "fault_injected")
    assert log_of(sk, "/chaos/both")["fault"] == "delay,abort"
    # a bad value is ignored
    r = http_request(port, "GET", "/chaos/bad", headers={"x-sidekick-fault-abort": "99"})
    assert r.status == 200
    # not enabled: nothing happens, the header is forwarded
    r = http_request(port, "GET", "/other", headers={"x-sidekick-fault-abort": "503"})
    assert r.status == 200
    q = [q for q in up.app_requests if q.path == "/other"][0]
    assert q.header("x-sidekick-fault-abort") == "503"
    assert metric(sk, "sidekick_faults_injected_total", route="chaos", kind="abort") == 2
    assert metric(sk, "sidekick_faults_injected_total", route="chaos", kind="delay") == 2


def test_client_gone_during_fault_delay(sidekick, ctl):
    """A client that closes while its request is held by a fault delay: the
    request is logged 499 and never reaches the upstream; the worker goes on."""
    up = ctl("up")
    sk = sidekick(config([up.port], route="fault_delay = 1s"))
    c = RawClient(sk.port("listen"))
    c.send(b"GET /gone HTTP/1.1\r\nHost: x\r\n\r\n")
    time.sleep(0.2)
    c.close()
    line = log_of(sk, "/gone", timeout=5)
    assert line["status"] == 499 and line["reason"] == "client_closed", line
    time.sleep(1.2)
    assert up.seen() == 0
    assert http_request(sk.port("listen"), "GET", "/after").status == 200


# ---------------------------------------------------------------------------
# configuration


@pytest.mark.parametrize("route,cluster,message", [
    ("mirror = nowhere 10%", "", "unknown cluster 'nowhere'"),
    ("mirror = up 101%", "", "bad share"),
    ("mirror = up 10", "", "bad share"),
    ("fault_abort = 99 10%", "", "bad status"),
    ("fault_delay = 0 10%", "", "bad duration"),
    ("fault_delay = 2m", "", "bad duration"),
    ("fault_headers = yes", "", "expected on or off"),
    ("", "retry_budget = 20", "bad value"),
    ("retries = 1\nretry_on = reset, reset", "", "listed twice"),
    ("retries = 1\nretry_backoff = 20s", "", "too long"),
])
def test_bad_traffic_keys_refused(tmp_path, route, cluster, message):
    p = tmp_path / "t.ini"
    p.write_text(config([free_port()], route=route, cluster=cluster).replace("{listen}", str(free_port()))
                 .replace("{admin}", str(free_port())))
    r = run_sidekick(["-t", "-c", str(p)])
    assert r.returncode != 0 and message in r.stderr, r.stderr


def test_traffic_keys_in_config_endpoint(sidekick, ctl):
    up, shadow = ctl("up"), ctl("shadow")
    sk = sidekick(config([up.port], route="retries = 2\nretry_on = reset, 503\nper_try_timeout = 1s\n"
                         "mirror = shadow 0.5%\nfault_abort = 503 1%\nfault_headers = on",
                         cluster="max_retries = 7\nretry_budget = 12.5%\nretry_budget_min = 3",
                         shadow=[shadow.port]))
    cfg = json.loads(sk.admin_get("/config").body)
    [rt] = cfg["routes"]
    assert rt["retry_on"] == ["reset", "503"]
    assert rt["per_try_timeout_ms"] == 1000 and rt["retry_backoff_ms"] == 25
    assert rt["mirror"] == {"cluster": "shadow", "share": "0.5%"}
    assert rt["fault_abort"] == {"status": 503, "share": "1%"} and rt["fault_delay"] is None
    assert rt["fault_headers"] is True
    c = [c for c in cfg["clusters"] if c["name"] == "up"][0]
    assert (c["max_retries"], c["retry_budget"], c["retry_budget_min"]) == (7, "12.5%", 3)


def test_mirror_copies_outlive_a_reload_and_end_at_exit(sidekick, ctl):
    """Copies still held by the shadow when a reload removes the mirror, and
    others still held when sidekick stops: the generation they hold stays
    valid until they end, and an exit cuts them (no leak, no crash: the
    sanitizer build checks)."""
    primary, shadow = ctl("primary"), ctl("shadow")
    shadow.set_mode("stall")
    ini = config([primary.port], route="mirror = shadow", shadow=[shadow.port])
    sk = sidekick(ini)
    for i in range(3):
        assert http_request(sk.port("listen"), "GET", f"/a{i}").status == 200
    assert wait_for(lambda: shadow.in_flight == 3, 5)
    # reload without the mirror (and without the shadow cluster)
    sk.config.write_text(sk.ini_text.replace("mirror = shadow\n", "").split("[cluster shadow]")[0])
    r = http_request(sk.admin_port, "POST", "/reload")
    assert r.status == 200, r
    assert http_request(sk.port("listen"), "GET", "/after").status == 200
    shadow.release()  # the old generation's copies get their answers now
    assert wait_for(lambda: shadow.in_flight == 0, 5)
    assert shadow.count() == 3
    # copies in flight at exit: back to mirroring, then stop while they are held
    shadow.hold()
    sk.config.write_text(sk.ini_text)
    assert http_request(sk.admin_port, "POST", "/reload").status == 200
    for i in range(2):
        assert http_request(sk.port("listen"), "GET", f"/b{i}").status == 200
    assert wait_for(lambda: shadow.in_flight == 2, 5)
    assert sk.stop(timeout=10) == 0


def test_metrics_pass_promtool(sidekick, ctl):
    """The traffic families are valid Prometheus text (promtool check metrics)."""
    import shutil
    import subprocess
    up, shadow = ctl("up"), ctl("shadow")
    up.set_mode("status", 503)
    sk = sidekick(config([up.port], route="retries = 1\nretry_backoff = 0\nmirror = shadow\nfault_abort = 500 1%",
                         shadow=[shadow.port]))
    for i in range(5):
        http_request(sk.port("listen"), "GET", f"/p{i}")
    text = sk.admin_get("/metrics").body.decode()
    for fam in ["sidekick_upstream_retries_total", "sidekick_retry_budget_exhausted_total",
                "sidekick_circuit_breaker_overflows_total", "sidekick_mirror_requests_total",
                "sidekick_faults_injected_total"]:
        assert f"# TYPE {fam} counter" in text, fam
    assert metric(sk, "sidekick_upstream_retries_total", cluster="up", reason="503") >= 1
    promtool = shutil.which("promtool")
    assert promtool, "promtool (Debian package prometheus) is needed"
    p = subprocess.run([promtool, "check", "metrics"], input=text, capture_output=True, text=True, timeout=30)
    problems = [l for l in (p.stdout + p.stderr).splitlines() if "sidekick_upstream_retries" in l or
                "retry_budget" in l or "circuit_breaker" in l or "mirror_requests" in l or "faults_injected" in l]
    assert not problems, problems


def test_over_http2_body_held_by_a_fault_delay_and_replayed_by_a_retry(sidekick, ctl, tmp_path):
    """An HTTP/2 client (h2c): a fault delay holds the stream's body and then
    sends it whole; a PUT whose first attempt is reset is replayed whole on
    the other endpoint; a forced abort answers on the stream."""
    from harness import curl
    plan = Plan()
    a, b = ctl("a", plan=plan), ctl("b", plan=plan)
    sk = sidekick(config([a.port, b.port], route="retries = 1\nretry_backoff = 0\nfault_headers = on",
                         cluster="retry_budget = off"))
    body = tmp_path / "body"
    body.write_bytes(b"h2 body " * 4000)
    url = f"http://127.0.0.1:{sk.port('listen')}"
    plan.set("h2put", [("reset",)])
    res = curl("--http2-prior-knowledge", "-s", "-o", "/dev/null", "-w", "%{http_code} %{http_version}",
               "-X", "PUT", "--data-binary", f"@{body}", "-H", "x-test-id: h2put",
               "-H", "x-sidekick-fault-delay: 200ms", f"{url}/h2put")
    assert res.stdout.decode() == "200 2", (res.stdout, res.stderr)
    got = [q for q in a.app_requests + b.app_requests if q.path == "/h2put"]
    assert len(got) == 2 and all(q.body == b"h2 body " * 4000 for q in got)
    assert not [n for n, _ in got[1].headers if n.lower().startswith("x-sidekick-fault")]
    line = log_of(sk, "/h2put")
    assert (line["protocol"], line["attempts"], line["retry_reason"], line["fault"]) == \
        ("HTTP/2", 2, "reset", "delay"), line
    res = curl("--http2-prior-knowledge", "-s", "-o", "/dev/null", "-w", "%{http_code}",
               "-H", "x-sidekick-fault-abort: 429", f"{url}/h2abort")
    assert res.stdout.decode() == "429", res.stdout
    assert not [q for q in a.app_requests + b.app_requests if q.path == "/h2abort"]
