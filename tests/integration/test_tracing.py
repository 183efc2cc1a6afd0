"""tracing.so (plugins/tracing): propagation, sampling, spans and export
through the real binary. Two sidekicks in a chain (a client sidecar with
span_kind = client in front of a server sidecar with span_kind = server in
front of a recording upstream), both exporting to a test collector (an HTTP
server started here that records every POST).

Run by hand with:

    SIDEKICK_BIN=build/sidekick SIDEKICK_BUILD_DIR=build \\
        /usr/bin/python3 -m pytest -q tests/integration/test_tracing.py

Golden payloads (tests/integration/golden/tracing_*.json) are rewritten
with SIDEKICK_UPDATE_GOLDEN=1.
"""

import json
import os
import re
import subprocess
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from harness import (REPO, RawClient, Reply, free_port, header_values, http_request, metric_value,
                     parse_prometheus, sk_ini, wait_for)

BUILD_DIR = os.environ.get("SIDEKICK_BUILD_DIR", str(REPO / "build"))
SHIPPED_DIR = os.path.join(BUILD_DIR, "plugins")
GOLDEN = REPO / "tests" / "integration" / "golden"

T = "4bf92f3577b34da6a3ce929d0e0e4736"
P = "00f067aa0ba902b7"
TP_RE = re.compile(r"^00-([0-9a-f]{32})-([0-9a-f]{16})-0([01])$")


@pytest.fixture(autouse=True)
def _built():
    if not os.path.exists(os.path.join(SHIPPED_DIR, "tracing.so")):
        pytest.fail(f"tracing.so not built in {SHIPPED_DIR} (set SIDEKICK_BUILD_DIR)")


# ---- the collector ----

class Collector:
    """An HTTP/1.1 server on 127.0.0.1 recording POST bodies. `status` is
    the answer; `delay` seconds are waited before answering; while `gate`
    is cleared, handlers wait for it (at most 60 s)."""

    def __init__(self):
        self.posts = []          # (path, headers dict, body bytes)
        self.status = 200
        self.delay = 0.0
        self.gate = threading.Event()
        self.gate.set()
        self.lock = threading.Lock()
        outer = self

        class H(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self):
                n = int(self.headers.get("content-length", "0"))
                body = self.rfile.read(n)
                with outer.lock:
                    outer.posts.append((self.path, {k.lower(): v for k, v in self.headers.items()}, body))
                    status, delay = outer.status, outer.delay
                outer.gate.wait(60)
                if delay:
                    time.sleep(delay)
                try:
                    self.send_response(status)
                    self.send_header("content-type", "application/json")
                    self.send_header("content-length", "2")
                    self.end_headers()
                    self.wfile.write(b"{}")
                except OSError:
                    pass

            def log_message(self, *a):
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), H)
        self.httpd.daemon_threads = True
        self.port = self.httpd.server_address[1]
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def count(self):
        with self.lock:
            return len(self.posts)

    def bodies(self):
        with self.lock:
            return list(self.posts)

    def spans(self):
        """Every span received, in a shape common to both formats."""
        out = []
        for path, hdrs, body in self.bodies():
            doc = json.loads(body)
            if path.startswith("/api/v2/spans"):
                for s in doc:
                    tags = dict(s.get("tags", {}))
                    err = "error" in tags
                    tags.pop("otel.status_code", None)
                    tags.pop("error", None)
                    out.append(dict(service=s["localEndpoint"]["serviceName"], trace=s["traceId"], span=s["id"],
                                    parent=s.get("parentId"), name=s["name"], kind=s["kind"], attrs=tags,
                                    start=s["timestamp"] * 1000, end=(s["timestamp"] + s["duration"]) * 1000,
                                    error=err, raw=s))
            else:
                for rs in doc["resourceSpans"]:
                    svc = {a["key"]: a["value"]["stringValue"] for a in rs["resource"]["attributes"]}
                    for ss in rs["scopeSpans"]:
                        for s in ss["spans"]:
                            attrs = {}
                            for a in s["attributes"]:
                                v = a["value"]
                                attrs[a["key"]] = v["stringValue"] if "stringValue" in v else v["intValue"]
                            out.append(dict(service=svc["service.name"], trace=s["traceId"], span=s["spanId"],
                                            parent=s.get("parentSpanId"), name=s["name"],
                                            kind={2: "SERVER", 3: "CLIENT"}[s["kind"]], attrs=attrs,
                                            start=int(s["startTimeUnixNano"]), end=int(s["endTimeUnixNano"]),
                                            error=s["status"].get("code") == 2, raw=s,
                                            tracestate=s.get("traceState")))
        return out

    def trace(self, trace_id):
        return [s for s in self.spans() if s["trace"] == trace_id]

    def close(self):
        self.gate.set()
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def collector():
    made = []

    def factory():
        c = Collector()
        made.append(c)
        return c

    yield factory
    for c in made:
        c.close()


# ---- configs ----

def sidecar(service, kind, endpoints, coll_port, exporter="otlp", propagation="w3c", keys="", route="",
            workers=1, extra="", path=None):
    if path is None:
        path = "/api/v2/spans" if exporter == "zipkin" else "/v1/traces"
    return sk_ini(f"""
[plugin tracing]
service_name = {service}
span_kind = {kind}
propagation = {propagation}
exporter = {exporter}
endpoint = http://127.0.0.1:{coll_port}{path}
flush_interval = 50ms
{keys}

[listener l]
address = 127.0.0.1:{{listen}}
plugins = tracing

[route r]
listener = l
cluster = c
{route}

[cluster c]
endpoints = {endpoints}
""", workers=workers, access_log="stdout", extra=f"plugin_dir = {SHIPPED_DIR}\n{extra}")


def chain(sidekick, upstream, collector, propagation="w3c", exporter="otlp", keys="", front_keys=None,
          back_keys=None):
    """client sidecar (front) → server sidecar (back) → upstream."""
    up = upstream()
    coll = collector()
    back_port = free_port()
    back = sidekick(sidecar("back", "server", up.addr, coll.port, exporter, propagation,
                            back_keys if back_keys is not None else keys),
                    name="back.ini", listen=back_port)
    front = sidekick(sidecar("front", "client", f"127.0.0.1:{back_port}", coll.port, exporter, propagation,
                             front_keys if front_keys is not None else keys), name="front.ini")
    return front, back, up, coll


def metrics(sk):
    return parse_prometheus(sk.admin_get("/metrics").body.decode())


def m(sk, name, **labels):
    return metric_value(metrics(sk), "sidekick_plugin_tracing_" + name, instance="tracing", **labels) or 0


def get(sk, path="/x", headers=None):
    return http_request(sk.port("listen"), "GET", path, headers=headers or {})


def wait(pred, what, timeout=10.0):
    assert wait_for(pred, timeout), "timed out waiting for " + what


def parse_tp(value):
    mt = TP_RE.match(value or "")
    assert mt, f"not a version 00 traceparent: {value!r}"
    return mt.group(1), mt.group(2), mt.group(3) == "1"


# ---- one trace across two sidecars ----

def test_chain_w3c_one_trace(sidekick, upstream, collector):
    front, back, up, coll = chain(sidekick, upstream, collector)
    r = get(front, "/api/items?q=1", {"user-agent": "ua/1"})
    assert r.status == 200
    trace, parent, sampled = parse_tp(up.requests[0].header("traceparent"))
    assert sampled
    wait(lambda: len(coll.trace(trace)) == 2, "two spans")
    spans = {s["kind"]: s for s in coll.trace(trace)}
    cl, sv = spans["CLIENT"], spans["SERVER"]
    assert cl["service"] == "front" and sv["service"] == "back"
    assert cl["parent"] is None                       # a new trace: the client span is the root
    assert sv["parent"] == cl["span"]                 # the server sidecar's span is the client's child
    assert parent == sv["span"]                       # and the upstream's parent is the server span
    assert cl["name"] == "GET r" and sv["name"] == "GET r"
    for s in (cl, sv):
        a = s["attrs"]
        assert a["http.request.method"] == "GET"
        assert a["http.response.status_code"] == "200"
        assert a["url.path"] == "/api/items"          # no query
        assert a["url.scheme"] == "http"
        assert a["http.route"] == "r"
        assert a["user_agent.original"] == "ua/1"
        assert a["client.address"] == "127.0.0.1"
        assert a["sidekick.attempts"] == "1"
        assert int(a["http.request.size"]) > 0 and int(a["http.response.size"]) > 0
        assert not s["error"]
        assert s["start"] <= s["end"]
    assert cl["attrs"]["network.peer.port"] == str(back.port("listen"))
    assert sv["attrs"]["sidekick.upstream.address"] == up.addr
    # the real timeline: the server sidecar got the request after the client sidecar did, and
    # started answering before the client sidecar finished
    assert cl["start"] <= sv["start"] <= sv["end"] and sv["start"] <= cl["end"]
    # the access log of both sidecars carries the trace id
    wait(lambda: front.access_log_lines() and back.access_log_lines(), "access log lines")
    assert front.access_log_lines()[0]["trace_id"] == trace
    assert back.access_log_lines()[0]["trace_id"] == trace


def test_chain_keeps_the_apps_trace(sidekick, upstream, collector):
    front, back, up, coll = chain(sidekick, upstream, collector)
    get(front, headers={"traceparent": f"00-{T}-{P}-01", "tracestate": "congo=t61rcWkgMzE"})
    trace, parent, _ = parse_tp(up.requests[0].header("traceparent"))
    assert trace == T
    assert up.requests[0].header("tracestate") == "congo=t61rcWkgMzE"
    wait(lambda: len(coll.trace(T)) == 2, "two spans")
    spans = {s["kind"]: s for s in coll.trace(T)}
    assert spans["CLIENT"]["parent"] == P
    assert spans["SERVER"]["parent"] == spans["CLIENT"]["span"]
    assert parent == spans["SERVER"]["span"]
    assert spans["CLIENT"]["tracestate"] == "congo=t61rcWkgMzE"


@pytest.mark.parametrize("propagation,exporter", [("b3", "zipkin"), ("b3multi", "zipkin"), ("b3multi", "otlp")])
def test_chain_b3_one_trace(sidekick, upstream, collector, propagation, exporter):
    front, back, up, coll = chain(sidekick, upstream, collector, propagation=propagation, exporter=exporter)
    assert get(front).status == 200
    req = up.requests[0]
    assert not req.has("traceparent")                 # w3c not listed: not written
    if propagation == "b3":
        trace, span, state, parent = req.header("b3").split("-")
        assert state == "1"
        assert not req.has("x-b3-traceid")
    else:
        trace, span, parent = req.header("x-b3-traceid"), req.header("x-b3-spanid"), req.header(
            "x-b3-parentspanid")
        assert req.header("x-b3-sampled") == "1"
        assert not req.has("b3")
    assert len(trace) == 32
    wait(lambda: len(coll.trace(trace)) == 2, "two spans")
    spans = {s["kind"]: s for s in coll.trace(trace)}
    assert spans["SERVER"]["parent"] == spans["CLIENT"]["span"]
    assert span == spans["SERVER"]["span"] and parent == spans["CLIENT"]["span"]
    assert spans["CLIENT"]["parent"] is None
    # the access log's trace id comes from the metadata: there is no traceparent
    wait(lambda: back.access_log_lines(), "access log")
    assert back.access_log_lines()[0]["trace_id"] == trace
    if exporter == "zipkin":
        for s in spans.values():
            assert s["raw"]["duration"] >= 1 and isinstance(s["raw"]["timestamp"], int)
        assert coll.bodies()[0][0] == "/api/v2/spans"


def test_reads_in_order_and_writes_all(sidekick, upstream, collector):
    up = upstream()
    coll = collector()
    sk = sidekick(sidecar("s", "server", up.addr, coll.port, propagation="b3, w3c, b3multi"))
    # b3 first in the list: its context wins over a valid traceparent
    B = "a" * 32
    get(sk, headers={"traceparent": f"00-{T}-{P}-01", "b3": f"{B}-{P}-1", "tracestate": "a=b"})
    req = up.requests[0]
    trace, span, _ = parse_tp(req.header("traceparent"))
    assert trace == B
    assert not req.has("tracestate")                  # the context did not come from traceparent
    assert req.header("b3").startswith(f"{B}-{span}-1-{P}")
    assert req.header("x-b3-traceid") == B and req.header("x-b3-spanid") == span
    assert req.header("x-b3-parentspanid") == P and req.header("x-b3-sampled") == "1"
    wait(lambda: coll.trace(B), "the span")
    assert coll.trace(B)[0]["parent"] == P


# ---- sampling ----

def test_sampled_0_passes_through_unsampled(sidekick, upstream, collector):
    front, back, up, coll = chain(sidekick, upstream, collector)
    get(front, headers={"traceparent": f"00-{T}-{P}-00"})
    trace, _, sampled = parse_tp(up.requests[0].header("traceparent"))
    assert trace == T and not sampled
    # a sampled request after it: once its spans are in, nothing of T came
    get(front, headers={"traceparent": f"00-{'b' * 32}-{P}-01"})
    wait(lambda: len(coll.trace("b" * 32)) == 2, "the sampled trace")
    assert coll.trace(T) == []
    assert m(front, "spans_started_total") == 2 and m(front, "spans_sampled_total") == 1
    assert m(back, "spans_started_total") == 2 and m(back, "spans_sampled_total") == 1


def test_sampling_0_honours_incoming_sampled_1(sidekick, upstream, collector):
    front, back, up, coll = chain(sidekick, upstream, collector, keys="sampling = 0")
    get(front)                                            # a new trace at sampling = 0: not sampled
    t0, _, s0 = parse_tp(up.requests[0].header("traceparent"))
    assert not s0
    get(front, headers={"traceparent": f"00-{T}-{P}-01"})  # sampled upstream of us: honoured
    _, _, s1 = parse_tp(up.requests[1].header("traceparent"))
    assert s1
    wait(lambda: len(coll.trace(T)) == 2, "both spans of the sampled trace")
    assert coll.trace(t0) == []


def test_force_header(sidekick, upstream, collector):
    front, back, up, coll = chain(sidekick, upstream, collector, keys="sampling = 0")
    get(front, headers={"x-sidekick-trace": "1"})
    trace, _, sampled = parse_tp(up.requests[0].header("traceparent"))
    assert sampled                                        # forced at the front, honoured at the back
    wait(lambda: len(coll.trace(trace)) == 2, "both spans")
    get(front, headers={"x-sidekick-trace": "yes"})       # only "1" forces
    assert not parse_tp(up.requests[1].header("traceparent"))[2]


def test_force_header_renamed_and_off(sidekick, upstream, collector):
    up = upstream()
    coll = collector()
    sk = sidekick(sidecar("s", "server", up.addr, coll.port, keys="sampling = 0\nforce_header = x-debug"))
    get(sk, headers={"x-sidekick-trace": "1"})
    get(sk, headers={"X-Debug": "1"})
    assert not parse_tp(up.requests[0].header("traceparent"))[2]
    assert parse_tp(up.requests[1].header("traceparent"))[2]
    sk2 = sidekick(sidecar("s", "server", up.addr, coll.port, keys="sampling = 0\nforce_header = off"),
                   name="off.ini")
    get(sk2, headers={"x-sidekick-trace": "1"})
    assert not parse_tp(up.requests[2].header("traceparent"))[2]


def test_ratio_is_deterministic_from_the_trace_id(sidekick, upstream, collector):
    """b3 without a sampling state leaves the decision to us: the ratio
    sampler decides by the trace id's last 8 bytes (x >> 1 < ratio * 2^63),
    the same in every sidecar."""
    up = upstream()
    coll = collector()
    sk = sidekick(sidecar("s", "server", up.addr, coll.port, propagation="b3", keys="sampling = 0.5"))
    low, high = "1" * 16 + "0" * 15 + "1", "1" * 16 + "f" * 16
    for _ in range(3):
        get(sk, headers={"b3": f"{high}-{P}"})
        get(sk, headers={"b3": f"{low}-{P}"})
    states = [r.header("b3").split("-")[2] for r in up.requests]
    assert states == ["0", "1"] * 3
    wait(lambda: len(coll.trace(low)) == 3, "the low trace's spans")
    assert coll.trace(high) == []


def test_b3_sampling_decision_alone(sidekick, upstream, collector):
    up = upstream()
    coll = collector()
    sk = sidekick(sidecar("s", "server", up.addr, coll.port, propagation="b3", keys="sampling = 1"))
    get(sk, headers={"b3": "0"})
    get(sk, headers={"b3": "d"})
    tr0, _, s0 = up.requests[0].header("b3").split("-")
    tr1, _, s1 = up.requests[1].header("b3").split("-")
    assert s0 == "0" and s1 == "d" and tr0 != tr1     # new traces with the decision given
    wait(lambda: coll.trace(tr1), "the debug trace")
    assert coll.trace(tr0) == []


# ---- invalid incoming contexts ----

INVALID_TP = {
    "version_ff": f"ff-{T}-{P}-01",
    "zero_trace": f"00-{'0' * 32}-{P}-01",
    "zero_parent": f"00-{T}-{'0' * 16}-01",
    "uppercase": f"00-{T.upper()}-{P}-01",
    "uppercase_flags": f"00-{T}-{P}-0A",
    "short_trace": f"00-{T[:-1]}-{P}-01",
    "long_trace": f"00-{T}0-{P}-01",
    "short_parent": f"00-{T}-{P[:-1]}-01",
    "long_flags": f"00-{T}-{P}-011",
    "v00_trailing": f"00-{T}-{P}-01-extra",
    "bad_separator": f"00_{T}-{P}-01",
    "not_hex": f"00-{T[:-1]}g-{P}-01",
    "empty": "",
    "v01_glued": f"01-{T}-{P}-01x",
}


@pytest.mark.parametrize("form", sorted(INVALID_TP))
def test_invalid_traceparent_starts_a_new_trace(sidekick, upstream, collector, form):
    up = upstream()
    coll = collector()
    sk = sidekick(sidecar("s", "server", up.addr, coll.port))
    bad = INVALID_TP[form]
    with RawClient(sk.port("listen")) as c:
        r = c.request("GET", "/x", [("traceparent", bad), ("tracestate", "congo=t61rcWkgMzE")])
    assert r.status == 200
    req = up.requests[0]
    assert req.header_all("traceparent") != [bad]
    trace, span, sampled = parse_tp(req.header("traceparent"))
    assert trace != T                                  # a new trace
    assert not req.has("tracestate")                   # dropped with the invalid traceparent
    assert bad.encode() not in up.raw_bytes() or bad == ""
    wait(lambda: coll.trace(trace), "the new trace's span")
    assert coll.trace(trace)[0]["parent"] is None


def test_two_traceparents_are_invalid(sidekick, upstream, collector):
    up = upstream()
    sk = sidekick(sidecar("s", "server", up.addr, collector().port))
    with RawClient(sk.port("listen")) as c:
        c.request("GET", "/x", [("traceparent", f"00-{T}-{P}-01"), ("traceparent", f"00-{'c' * 32}-{P}-01")])
    req = up.requests[0]
    assert len(req.header_all("traceparent")) == 1
    trace, _, _ = parse_tp(req.header("traceparent"))
    assert trace not in (T, "c" * 32)


def test_higher_version_is_read_by_its_first_four_fields(sidekick, upstream, collector):
    up = upstream()
    coll = collector()
    sk = sidekick(sidecar("s", "server", up.addr, coll.port))
    get(sk, headers={"traceparent": f"cc-{T}-{P}-01-what-the-future-will-be-like", "tracestate": "a=1"})
    req = up.requests[0]
    trace, span, sampled = parse_tp(req.header("traceparent"))  # written back as version 00
    assert trace == T and sampled
    assert req.header("tracestate") == "a=1"
    wait(lambda: coll.trace(T), "the span")
    assert coll.trace(T)[0]["parent"] == P


def tracestate_through(sk, up, values):
    with RawClient(sk.port("listen")) as c:
        c.request("GET", "/x", [("traceparent", f"00-{T}-{P}-01")] + [("tracestate", v) for v in values])
    return up.requests[-1].header_all("tracestate")


def test_tracestate_limits(sidekick, upstream, collector):
    up = upstream()
    sk = sidekick(sidecar("s", "server", up.addr, collector().port))
    m32 = ",".join(f"k{i}=v{i}" for i in range(32))
    assert tracestate_through(sk, up, [m32]) == [m32]                      # 32 members: kept
    assert tracestate_through(sk, up, [m32 + ",k32=v"]) == []              # 33: dropped
    assert tracestate_through(sk, up, ["a=1", "b=2"]) == ["a=1,b=2"]       # two lines: one list
    assert tracestate_through(sk, up, [" a=1 ,, b=2 \t"]) == ["a=1,b=2"]   # OWS and empty members
    assert tracestate_through(sk, up, ["a=1,B=2"]) == []                   # a bad key: all dropped
    assert tracestate_through(sk, up, ["a=1,b=2,a=3"]) == []               # a repeated key
    assert tracestate_through(sk, up, ["a=x=y"]) == []                     # '=' in a value
    assert tracestate_through(sk, up, ["t@sys=1,x=y z"]) == ["t@sys=1,x=y z"]
    # longer than 512: members over 128 characters go first, then from the end
    big = "big=" + "y" * 200
    small = [f"k{i}={'x' * 40}" for i in range(11)]                       # 10 * 43 + 44 + 10 = 484
    out = tracestate_through(sk, up, [",".join([small[0], big] + small[1:])])
    assert out == [",".join(small)]
    many = [f"k{i}={'x' * 60}" for i in range(10)]                        # 10 * 63 + 9 = 639
    out = tracestate_through(sk, up, [",".join(many)])
    assert out == [",".join(many[:8])]                                     # 8 * 63 + 7 = 511 <= 512
    assert len(out[0]) <= 512


# ---- B3 ----

def test_b3_single_wins_over_multi_and_64bit_ids_are_padded(sidekick, upstream, collector):
    up = upstream()
    coll = collector()
    sk = sidekick(sidecar("s", "server", up.addr, coll.port, propagation="b3multi"))
    get(sk, headers={"b3": f"a3ce929d0e0e4736-{P}-1", "x-b3-traceid": "e" * 32, "x-b3-spanid": "f" * 16,
                     "x-b3-sampled": "0"})
    req = up.requests[0]
    padded = "0" * 16 + "a3ce929d0e0e4736"
    assert req.header("x-b3-traceid") == padded
    assert req.header("x-b3-parentspanid") == P
    assert req.header("x-b3-sampled") == "1"
    assert not req.has("b3")                          # not written (b3multi only), the old one removed
    wait(lambda: coll.trace(padded), "the span")
    assert coll.trace(padded)[0]["parent"] == P


def test_b3_multi_64bit_and_invalid(sidekick, upstream, collector):
    up = upstream()
    sk = sidekick(sidecar("s", "server", up.addr, collector().port, propagation="b3"))
    get(sk, headers={"x-b3-traceid": "a3ce929d0e0e4736", "x-b3-spanid": P, "x-b3-flags": "1"})
    trace, span, state, parent = up.requests[0].header("b3").split("-")
    assert trace == "0" * 16 + "a3ce929d0e0e4736" and state == "d" and parent == P
    assert not up.requests[0].has("x-b3-traceid") and not up.requests[0].has("x-b3-flags")
    for bad in ({"x-b3-traceid": "A3CE929D0E0E4736", "x-b3-spanid": P},      # uppercase
                {"x-b3-traceid": "a3ce929d0e0e4736"},                          # span id missing
                {"x-b3-traceid": "0" * 16, "x-b3-spanid": P},                 # zero
                {"x-b3-traceid": T, "x-b3-spanid": P, "x-b3-sampled": "maybe"},
                {"b3": f"{T}-{P}-x"}, {"b3": f"{T}-{P[:-1]}-1"}):
        n = len(up.requests)
        get(sk, headers=bad)
        req = up.requests[n]
        parts = req.header_all("b3")
        assert len(parts) == 1 and len(parts[0].split("-")) == 3, (bad, parts)   # no parent: a new trace
        assert parts[0].split("-")[0] not in (T, "0" * 16 + "a3ce929d0e0e4736"), (bad, parts)
        assert not [h for h, _ in req.headers if h.lower().startswith("x-b3-")], (bad, req.headers)


# ---- metadata and the access log ----

def test_meta_trace_id_for_lua(sidekick, upstream, collector, tmp_path):
    (tmp_path / "lua").mkdir()
    (tmp_path / "lua" / "copy.lua").write_text(
        "local M = {}\n"
        "function M.on_request(r)\n"
        "  r:set_header('x-trace', r:meta('trace_id') or 'none')\n"
        "  r:set_header('x-span', r:meta('span_id') or 'none')\n"
        "end\n"
        "return M\n")
    up = upstream()
    coll = collector()
    sk = sidekick(sidecar("s", "server", up.addr, coll.port, propagation="b3", route="lua = copy.lua",
                          extra=f"lua_dir = {tmp_path / 'lua'}"))
    get(sk, headers={"b3": f"{T}-{P}-1"})
    req = up.requests[0]
    assert req.header("x-trace") == T
    trace, span, _, _ = req.header("b3").split("-")
    assert req.header("x-span") == span
    wait(lambda: sk.access_log_lines(), "the access log line")
    assert sk.access_log_lines()[0]["trace_id"] == T


# ---- span status and names ----

def test_status_rules_and_names(sidekick, upstream, collector):
    coll = collector()
    up = upstream(lambda req: Reply(status=int(req.path.strip("/"))))
    srv = sidekick(sidecar("s", "server", up.addr, coll.port, route="prefix = /5"), name="srv.ini")
    cli = sidekick(sidecar("c", "client", up.addr, coll.port), name="cli.ini")
    assert get(srv, "/404").status == 404                 # no route (prefix /5): a local 404
    assert get(srv, "/503").status == 503
    assert get(cli, "/404").status == 404
    assert get(cli, "/503").status == 503
    wait(lambda: len(coll.spans()) == 4, "four spans")
    by = {(s["service"], s["attrs"]["url.path"]): s for s in coll.spans()}
    s404 = by[("s", "/404")]
    assert s404["name"] == "GET" and "http.route" not in s404["attrs"]   # never the raw path
    assert not s404["error"]                              # SERVER: 4xx is not an error
    assert s404["attrs"]["sidekick.reason"] == "no_route"
    assert s404["attrs"]["sidekick.attempts"] == "0"
    assert by[("s", "/503")]["name"] == "GET r"
    assert by[("s", "/503")]["error"] and by[("s", "/503")]["attrs"]["error.type"] == "503"
    assert by[("c", "/404")]["error"]                     # CLIENT: 4xx is an error
    assert by[("c", "/404")]["attrs"]["error.type"] == "404"
    assert by[("c", "/503")]["error"]
    assert "error.type" not in by[("s", "/404")]["attrs"]


def test_upstream_failure_span(sidekick, upstream, collector):
    coll = collector()
    dead = free_port()
    sk = sidekick(sidecar("c", "client", f"127.0.0.1:{dead}", coll.port, route="retries = 1"))
    assert get(sk).status == 502
    wait(lambda: coll.spans(), "the span")
    s = coll.spans()[0]
    assert s["error"]
    assert s["attrs"]["error.type"] == "upstream_connect_failure"
    assert s["attrs"]["sidekick.attempts"] == "2"
    assert s["attrs"]["http.request.resend_count"] == "1"
    assert "upstream_connect" not in json.dumps(s["raw"].get("events", []))


def tls_request(port, ca, leaf=None):
    import socket
    import ssl
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.load_verify_locations(cafile=str(ca.cert))
    if leaf:
        ctx.load_cert_chain(str(leaf.cert), str(leaf.key))
    raw = socket.create_connection(("127.0.0.1", port), timeout=10)
    c = RawClient.__new__(RawClient)
    c.sock = ctx.wrap_socket(raw, server_hostname="app.test")
    c.buf = bytearray()
    c.eof = False
    try:
        return c.request("GET", "/tls", host="app.test")
    finally:
        c.sock.close()


def test_tls_listener_scheme_and_peer_identity(sidekick, upstream, collector, tmp_path):
    from certs import PKI
    pki = PKI(tmp_path / "pki")
    ca = pki.ca("ca")
    server = pki.leaf("server", ca, dns=["app.test"])
    client = pki.leaf("client", ca, uris=["spiffe://td.test/ns/shop/sa/frontend"])
    up = upstream()
    coll = collector()
    ini = sidecar("s", "server", up.addr, coll.port)
    ini = ini.replace("plugins = tracing", "plugins = tracing\ntls = srv")
    ini += f"\n[tls srv]\ncert = {server.cert}\nkey = {server.key}\nca = {ca.cert}\nverify = optional\n"
    sk = sidekick(ini)
    assert tls_request(sk.port("listen"), ca).status == 200
    assert tls_request(sk.port("listen"), ca, client).status == 200
    wait(lambda: len(coll.spans()) == 2, "both spans")
    plain, mtls = sorted(coll.spans(), key=lambda s: "sidekick.peer.identity" in s["attrs"])
    for s in (plain, mtls):
        assert s["attrs"]["url.scheme"] == "https"        # sk_req_info.tls (ABI 1.2)
        assert s["attrs"]["server.port"] == "443"         # Host without a port: the scheme's
        assert s["attrs"]["sidekick.generation"] == "1"
    assert "sidekick.peer.identity" not in plain["attrs"]
    assert mtls["attrs"]["sidekick.peer.identity"] == "spiffe://td.test/ns/shop/sa/frontend"


# ---- export failures ----

def test_collector_down_requests_succeed_spans_dropped(sidekick, upstream):
    up = upstream()
    dead = free_port()
    sk = sidekick(sidecar("s", "server", up.addr, dead,
                          keys="batch_size = 1\nmax_retries = 2\nretry_backoff = 10ms"))
    n = 4
    for _ in range(n):
        assert get(sk).status == 200
    wait(lambda: m(sk, "spans_dropped_total", reason="export_failed") == n, "the spans dropped")
    assert m(sk, "export_requests_total", result="connect_error") == n * 3   # 1 try + 2 retries each
    assert m(sk, "spans_exported_total") == 0
    assert "export to http://127.0.0.1:%d/v1/traces failed" % dead in sk.stderr_text()


def test_collector_500_retries_are_bounded(sidekick, upstream, collector):
    up = upstream()
    coll = collector()
    coll.status = 500
    sk = sidekick(sidecar("s", "server", up.addr, coll.port,
                          keys="batch_size = 1\nmax_retries = 2\nretry_backoff = 10ms"))
    n = 3
    for _ in range(n):
        assert get(sk).status == 200
    wait(lambda: m(sk, "spans_dropped_total", reason="export_failed") == n, "the spans dropped")
    assert coll.count() == n * 3                          # every batch tried 3 times, no more
    assert m(sk, "export_requests_total", result="http_5xx") == n * 3
    # the collector recovers: the next spans go through
    coll.status = 200
    get(sk)
    wait(lambda: m(sk, "spans_exported_total") == 1, "the export after recovery")
    assert coll.count() == n * 3 + 1
    assert "works again" in sk.stderr_text()


def test_collector_400_is_not_retried(sidekick, upstream, collector):
    up = upstream()
    coll = collector()
    coll.status = 400
    sk = sidekick(sidecar("s", "server", up.addr, coll.port, keys="batch_size = 1\nretry_backoff = 10ms"))
    get(sk)
    get(sk)
    wait(lambda: m(sk, "spans_dropped_total", reason="export_failed") == 2, "the spans dropped")
    assert coll.count() == 2
    assert m(sk, "export_requests_total", result="http_4xx") == 2


def test_slow_collector(sidekick, upstream, collector):
    up = upstream()
    coll = collector()
    coll.delay = 2.0
    sk = sidekick(sidecar("s", "server", up.addr, coll.port,
                          keys="batch_size = 1\nmax_retries = 1\nretry_backoff = 10ms\nexport_timeout = 200ms"))
    for _ in range(3):
        assert get(sk).status == 200                       # requests never wait for the exporter
    wait(lambda: m(sk, "spans_dropped_total", reason="export_failed") == 3, "the spans dropped", 30)
    assert m(sk, "export_requests_total", result="timeout") == 6
    assert coll.count() == 6


def test_queue_full_drops_without_blocking(sidekick, upstream, collector):
    up = upstream()
    coll = collector()
    coll.gate.clear()                                     # the collector holds every POST
    sk = sidekick(sidecar("s", "server", up.addr, coll.port,
                          keys="queue_size = 2\nbatch_size = 1\nexport_timeout = 60s"))
    assert get(sk).status == 200
    wait(lambda: coll.count() == 1, "the first export to hang")
    n = 20
    for _ in range(n):
        assert get(sk).status == 200
    # one span in the stalled export, two queued, the rest dropped
    assert m(sk, "spans_dropped_total", reason="queue_full") == n - 2
    wait(lambda: m(sk, "queue_spans") == 3, "the queue gauge")
    coll.gate.set()
    wait(lambda: m(sk, "spans_exported_total") == 3, "the queue to drain")
    assert m(sk, "spans_sampled_total") == n + 1
    assert len(coll.spans()) == 3


def test_batching(sidekick, upstream, collector):
    up = upstream()
    coll = collector()
    coll.gate.clear()
    sk = sidekick(sidecar("s", "server", up.addr, coll.port, keys="batch_size = 4"))
    get(sk)
    wait(lambda: coll.count() == 1, "the first export")
    for _ in range(10):
        get(sk)
    coll.gate.set()
    wait(lambda: m(sk, "spans_exported_total") == 11, "every span")
    sizes = [len(json.loads(b)["resourceSpans"][0]["scopeSpans"][0]["spans"]) for _, _, b in coll.bodies()]
    assert sizes == [1, 4, 4, 2]
    assert all(h["content-type"] == "application/json" for _, h, _ in coll.bodies())


def test_export_headers_and_default_path(sidekick, upstream, collector):
    up = upstream()
    coll = collector()
    sk = sidekick(sidecar("s", "server", up.addr, coll.port, exporter="zipkin", path="",
                          keys="export_header = authorization: Bearer t0k\nexport_header = x-tenant: a"))
    get(sk)
    wait(lambda: coll.count() == 1, "the export")
    path, hdrs, _ = coll.bodies()[0]
    assert path == "/api/v2/spans"
    assert hdrs["authorization"] == "Bearer t0k" and hdrs["x-tenant"] == "a"


# ---- drain and reload (on_drain, plugin ABI 1.2) ----

def test_flushed_on_drain(sidekick, upstream, collector):
    up = upstream()
    coll = collector()
    coll.delay = 0.2                                      # the host waits for the calls
    sk = sidekick(sidecar("s", "server", up.addr, coll.port, keys="flush_interval = 60m"))
    n = 5
    for _ in range(n):
        assert get(sk).status == 200
    wait(lambda: m(sk, "spans_sampled_total") == n, "the spans recorded")
    assert coll.count() == 0                              # nothing due before the drain
    assert sk.stop(timeout=30) == 0
    assert len(coll.spans()) == n
    assert coll.count() == 1
    err = sk.stderr_text()
    assert "draining: exporting the 5 span(s) still queued" in err
    assert "not exported" not in err


def test_flushed_when_a_reload_retires_the_instance(sidekick, upstream, collector):
    up = upstream()
    coll = collector()
    sk = sidekick(sidecar("s", "server", up.addr, coll.port, keys="flush_interval = 60m"))
    for _ in range(3):
        get(sk)
    wait(lambda: m(sk, "spans_sampled_total") == 3, "the spans recorded")
    assert http_request(sk.admin_port, "POST", "/reload").status == 200
    wait(lambda: len(coll.spans()) == 3, "the old instance's spans")
    wait(lambda: "generation 1 released" in sk.stderr_text(), "the old generation's release")
    get(sk)                                               # the new instance traces on
    assert sk.stop(timeout=30) == 0
    assert len(coll.spans()) == 4
    assert {s["attrs"]["sidekick.generation"] for s in coll.spans()} == {"1", "2"}


def test_drain_with_the_collector_down_or_stalled(sidekick, upstream, collector):
    up = upstream()
    dead = free_port()
    sk = sidekick(sidecar("s", "server", up.addr, dead, keys="flush_interval = 60m\nretry_backoff = 10s"),
                  name="down.ini")
    get(sk)
    wait(lambda: m(sk, "spans_sampled_total") == 1, "the span recorded")
    assert sk.stop(timeout=30) == 0                       # no retry waited for
    assert "failed" in sk.stderr_text()
    coll = collector()
    coll.gate.clear()
    ini = sidecar("s", "server", up.addr, coll.port, keys="flush_interval = 60m")
    sk2 = sidekick(ini.replace("drain_timeout = 3s", "drain_timeout = 1s"), name="stalled.ini")
    get(sk2)
    wait(lambda: m(sk2, "spans_sampled_total") == 1, "the span recorded")
    assert sk2.stop(timeout=30) == 0                      # bounded by drain_timeout
    err = sk2.stderr_text()
    assert "drain_timeout reached with 1 plugin HTTP call(s) in flight" in err
    assert "1 span(s) not exported when the instance ended: dropped" in err
    assert coll.count() == 1


# ---- golden payloads ----

def normalise(doc, ports):
    """Ids and times replaced by placeholders; the structure and the
    attribute set stay."""
    volatile_ids = {"spanId", "id"}

    def walk(v, key=None):
        if isinstance(v, dict):
            out = {}
            for k, x in v.items():
                if k in volatile_ids:
                    out[k] = "<span_id>"
                elif k in ("startTimeUnixNano", "endTimeUnixNano", "timeUnixNano"):
                    out[k] = "<ns>"
                elif k in ("timestamp", "duration"):
                    out[k] = "<us>"
                else:
                    out[k] = walk(x, k)
            if "key" in out and out["key"] in ("http.request.size", "http.response.size"):
                out["value"] = {"intValue": "<n>"}
            return out
        if isinstance(v, list):
            return [walk(x) for x in v]
        if isinstance(v, str):
            for name, p in ports.items():
                v = v.replace(str(p), f"<{name}>")
            if key in ("http.request.size", "http.response.size"):
                return "<n>"
        return v
    return walk(doc)


@pytest.mark.parametrize("exporter", ["otlp", "zipkin"])
def test_golden_payload(sidekick, upstream, collector, exporter):
    up = upstream()
    coll = collector()
    sk = sidekick(sidecar("golden", "server", up.addr, coll.port, exporter=exporter))
    with RawClient(sk.port("listen")) as c:
        r = c.request("GET", "/api/items?q=1", [("traceparent", f"00-{T}-{P}-01"), ("tracestate", "v=1"),
                                                ("user-agent", "golden/1")], host="golden.test:8080")
    assert r.status == 200
    wait(lambda: coll.count() == 1, "the export")
    doc = normalise(json.loads(coll.bodies()[0][2]), {"up": up.port})
    path = GOLDEN / f"tracing_{exporter}.json"
    if os.environ.get("SIDEKICK_UPDATE_GOLDEN") == "1":
        path.write_text(json.dumps(doc, indent=1) + "\n")
    assert doc == json.loads(path.read_text()), json.dumps(doc, indent=1)


# ---- config ----

def test_config_errors(sidekick_bin, tmp_path):
    cases = [
        ("frobnicate = 1", "unknown key"),
        ("propagation = jaeger", "expected w3c, b3 or b3multi"),
        ("propagation = w3c, w3c", "named twice"),
        ("span_kind = producer", "server or client"),
        ("sampling = 1.5", "a ratio from 0 to 1"),
        ("sampling = nan", "a ratio from 0 to 1"),
        ("exporter = jaeger", "otlp or zipkin"),
        ("endpoint = ftp://127.0.0.1:4318/v1/traces", "an http:// or https:// URL"),
        ("endpoint = 127.0.0.1:4318", "an http:// or https:// URL"),
        ("endpoint = https:///v1/traces", "an http:// or https:// URL"),
        ("flush_interval = 1ms", "10ms to 60m"),
        ("batch_size = 0", "1 to 10000"),
        ("queue_size = lots", "1 to 1000000"),
        ("max_retries = -1", "0 to 100"),
        ("retry_backoff = 0ms", "1ms to 60s"),
        ("export_timeout = 1h", "10ms to 5m"),
        ("flush_interval = 61m", "10ms to 60m"),
        ("force_header = x y", "a header name, or off"),
        ("export_header = content-type: text/plain", "set by the plugin"),
        ("export_header = novalue", "NAME: VALUE"),
        ("service_name = ", "1..256"),
    ]
    for text, msg in cases:
        p = tmp_path / "c.ini"
        ini = sidecar("s", "server", "127.0.0.1:2", 3, keys=text).replace("{listen}", "1").replace("{admin}", "4")
        ini = ini.replace("service_name = s\n", "") if text.startswith("service_name") else ini
        p.write_text(ini)
        r = subprocess.run([sidekick_bin, "-t", "-c", str(p)], capture_output=True, text=True, timeout=30)
        assert r.returncode != 0 and msg in r.stderr + r.stdout, (text, r.stderr)
        assert "tracing: line" in r.stderr, r.stderr
    p = tmp_path / "ok.ini"
    p.write_text(sidecar("s", "server", "127.0.0.1:2", 3, propagation="w3c, b3, b3multi",
                         keys="sampling = 0.25\nforce_header = off\nqueue_size = 10\nbatch_size = 10\n"
                              "endpoint = https://collector.example:4318")
                 .replace("{listen}", "1").replace("{admin}", "4"))
    r = subprocess.run([sidekick_bin, "-t", "-c", str(p)], capture_output=True, text=True, timeout=30)
    assert r.returncode == 0, r.stderr
