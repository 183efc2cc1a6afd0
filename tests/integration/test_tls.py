"""mTLS (issue 11): termination, origination, SPIFFE identities, allow-lists,
failure modes, pooling, rotation, /config, metrics and bad config.

The PKI (two CAs and a set of X509-SVIDs, ECDSA P-256) is minted once per
module with the openssl CLI (certs.py). The mesh tests run two sidekicks in
front of a recording upstream:

    client ──plain──> [client sidecar]  ──mTLS (cluster tls = cli)──>
                      [server sidecar]  (listener tls = srv)  ──plain──> upstream

Independent TLS clients: Python's ssl module (OpenSSL) and curl. Every
failure mode asserts what the client saw, the counter
sidekick_tls_handshakes_total{side,result} and one log line in stderr.
Timeouts are generous (the ASan build runs all of it) and nothing asserts
how fast something happens, only that it does. Run by hand with:

    SIDEKICK_BIN=build/sidekick /usr/bin/python3 -m pytest -q tests/integration/test_tls.py
"""

import datetime as dt
import json
import os
import re
import signal
import socket
import ssl
import threading
import time
import types
import warnings
from pathlib import Path

import pytest

from certs import PKI, atomic_write, copy_pair, der_serial, normalize_serial
from harness import PLUGIN_DIR, missing_fixtures
from harness import (ConnectionClosed, RawClient, Reply, assert_local_reply, build_request, curl,
                     echo_handler, free_port, http_request, iter_pattern, metric_value,
                     parse_prometheus, pattern_sha256, run_sidekick, sk_ini, wait_for)

TD = "spiffe://td.test"
BACKEND = TD + "/ns/shop/sa/backend"
IMPOSTOR = TD + "/ns/shop/sa/impostor"
FRONTEND = TD + "/ns/shop/sa/frontend"
OPS_TOOL = TD + "/ns/ops/sa/tool"
OPSX = TD + "/ns/opsx/sa/tool"
EVIL = TD + "/ns/evil/sa/x"
OTHER_TD = "spiffe://other.test/ns/shop/sa/frontend"
HOST = "backend.test"  # the DNS SAN of the server certificates

HS = "sidekick_tls_handshakes_total"
RELOADS = "sidekick_tls_reloads_total"
EXPIRY = "sidekick_tls_certificate_expiry_seconds"
WAIT = 15.0  # generous upper bound for anything asynchronous (ASan, noisy machine)


# --------------------------------------------------------------------------
# the PKI, minted once per module


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    p = PKI(tmp_path_factory.mktemp("pki"))
    ns = types.SimpleNamespace(dir=p.dir, pki=p)
    ns.ca1 = p.ca("ca1")
    ns.ca2 = p.ca("ca2")
    ns.bundle12 = p.bundle("bundle12", ns.ca1, ns.ca2)
    ca1, ca2 = ns.ca1, ns.ca2
    leaf = p.leaf
    # servers (the shared key unless own_key)
    ns.server = leaf("server", ca1, uris=[BACKEND], dns=[HOST])
    ns.server2 = leaf("server2", ca1, uris=[BACKEND], dns=[HOST], own_key=True)
    ns.server3 = leaf("server3", ca1, uris=[BACKEND], dns=[HOST])  # shared key
    ns.server_ca2 = leaf("server-ca2", ca2, uris=[BACKEND], dns=[HOST], own_key=True)
    ns.server_expired = leaf("server-expired", ca1, uris=[BACKEND], dns=[HOST],
                             validity="expired")
    ns.impostor = leaf("impostor", ca1, uris=[IMPOSTOR], dns=[HOST])
    ns.server_unknown_ca = leaf("server-unknown-ca", ca2, uris=[BACKEND], dns=[HOST])
    ns.server_future = leaf("server-future", ca1, uris=[BACKEND], dns=[HOST], validity="future")
    # clients
    ns.client = leaf("client", ca1, uris=[FRONTEND])
    ns.client_ca2 = leaf("client-ca2", ca2, uris=[FRONTEND], own_key=True)
    ns.ops = leaf("ops", ca1, uris=[OPS_TOOL])
    ns.opsx = leaf("opsx", ca1, uris=[OPSX])
    ns.evil = leaf("evil", ca1, uris=[EVIL])
    ns.other_td = leaf("other-td", ca1, uris=[OTHER_TD])
    ns.two_uris = leaf("two-uris", ca1, uris=[FRONTEND, OPS_TOOL])
    ns.non_spiffe = leaf("non-spiffe", ca1, uris=["https://td.test/ns/shop/sa/frontend"])
    ns.bad_td = leaf("bad-td", ca1, uris=["spiffe://TD_Test!/ns/shop/sa/frontend"])
    ns.no_uri = leaf("no-uri", ca1, dns=["frontend.test"])
    ns.ca_leaf = leaf("ca-leaf", ca1, uris=[FRONTEND], ca_true=True)
    ns.expired = leaf("expired", ca1, uris=[FRONTEND], validity="expired")
    ns.future = leaf("future", ca1, uris=[FRONTEND], validity="future")
    ns.mismatched = p.mismatched_key("mismatched")
    return ns


# --------------------------------------------------------------------------
# TLS clients (Python's ssl)


def client_ctx(pki, leaf=None, ca=None, min_v=None, max_v=None, alpn=("http/1.1",),
               ciphers=None, check_hostname=True):
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.load_verify_locations(cafile=str(ca or pki.ca1.cert))
    ctx.check_hostname = check_hostname
    if leaf is not None:
        ctx.load_cert_chain(str(leaf.cert), str(leaf.key))
    if min_v is not None:
        ctx.minimum_version = min_v
    if max_v is not None:
        ctx.maximum_version = max_v
    if alpn:
        ctx.set_alpn_protocols(list(alpn))
    if ciphers:
        ctx.set_ciphers(ciphers)
    return ctx


class TLSClient(RawClient):
    """RawClient over a TLS socket (handshake in the constructor)."""

    def __init__(self, port, ctx, session=None, timeout=10.0, server_hostname=HOST):
        raw = socket.create_connection(("127.0.0.1", port), timeout=timeout)
        raw.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.local_port = raw.getsockname()[1]
        try:
            self.sock = ctx.wrap_socket(raw, server_hostname=server_hostname, session=session)
        except BaseException:
            raw.close()
            raise
        self.buf = bytearray()
        self.eof = False
        self.peer_der = None

    def request(self, *a, **kw):
        resp = super().request(*a, **kw)
        self.peer_der = self.sock.getpeercert(binary_form=True)
        return resp

    @property
    def peer_serial_value(self):
        """The serial of the certificate the server presented (kept after close)."""
        return der_serial(self.peer_der)


def tls_get(port, ctx, path="/", headers=None, session=None):
    """One request on a new TLS connection: (Response, TLSClient closed)."""
    c = TLSClient(port, ctx, session=session)
    try:
        return c.request("GET", path, headers=headers), c
    finally:
        c.close()


def attempt(port, ctx, path="/attempt", session=None):
    """A handshake and one request that are expected to fail:
    (Response or None, the error or None, the client's local port)."""
    raw = socket.create_connection(("127.0.0.1", port), timeout=10)
    lport = raw.getsockname()[1]
    try:
        s = ctx.wrap_socket(raw, server_hostname=HOST, session=session)
    except (ssl.SSLError, OSError) as e:
        raw.close()
        return None, e, lport
    c = RawClient.__new__(RawClient)
    c.sock, c.buf, c.eof = s, bytearray(), False
    try:
        return c.request("GET", path), None, lport
    except (ssl.SSLError, OSError, ConnectionClosed, ValueError) as e:
        return None, e, lport
    finally:
        c.close()


def client_hello() -> bytes:
    """The bytes of a real ClientHello (Python's OpenSSL, through memory BIOs)."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    inc, out = ssl.MemoryBIO(), ssl.MemoryBIO()
    obj = ctx.wrap_bio(inc, out, server_hostname=HOST)
    try:
        obj.do_handshake()
    except ssl.SSLWantReadError:
        pass
    data = out.read()
    assert len(data) > 100 and data[0] == 0x16, data[:8]
    return data


# --------------------------------------------------------------------------
# sidekick configs


def tls_section(name, cert=None, key=None, ca=None, verify=None, extra=""):
    s = f"[tls {name}]\n"
    if cert:
        s += f"cert = {cert}\n"
    if key:
        s += f"key = {key}\n"
    if ca:
        s += f"ca = {ca}\n"
    if verify:
        s += f"verify = {verify}\n"
    return s + extra


def server_ini(pki, up, cert=None, key=None, ca="ca1", verify="required", tls_extra="",
               listener_extra="", route_extra="", more="", extra="", access_log="off",
               workers=1):
    """The server sidecar: listener `inbound` ({inbound}) with tls = srv,
    one route to cluster `app` (the recording upstream)."""
    ca_path = pki.ca1.cert if ca == "ca1" else ca
    tls = tls_section("srv", cert or pki.server.cert, key or pki.server.key, ca_path, verify,
                      tls_extra)
    body = ("[listener inbound]\naddress = 127.0.0.1:{inbound}\ntls = srv\n" + listener_extra +
            "\n[route all]\nlistener = inbound\ncluster = app\n" + route_extra +
            f"\n[cluster app]\nendpoints = 127.0.0.1:{up.port}\n\n" + tls + "\n" + more)
    return sk_ini(body, workers=workers, access_log=access_log, extra=extra)


def server_side(sidekick, pki, up, name="server.ini", **kw):
    return sidekick(server_ini(pki, up, **kw), name=name)


def client_ini(pki, server_port, leaf=None, cert=None, key=None, ca=None,
               peer_identity=BACKEND, tls_extra="", cluster_extra="", route_extra="",
               workers=1, no_cert=False):
    """The client sidecar: plain listener `outbound` ({outbound}) -> cluster
    `backend` with tls = cli (its SVID, trust in ca1, the server's ID allowed)."""
    leaf = leaf or pki.client
    extra = tls_extra
    if peer_identity:
        extra = f"peer_identity = {peer_identity}\n" + extra
    if no_cert:
        tls = tls_section("cli", None, None, ca or pki.ca1.cert, None, extra)
    else:
        tls = tls_section("cli", cert or leaf.cert, key or leaf.key, ca or pki.ca1.cert, None,
                          extra)
    body = ("[listener outbound]\naddress = 127.0.0.1:{outbound}\n"
            "\n[route all]\nlistener = outbound\ncluster = backend\nretries = 0\n" + route_extra +
            f"\n[cluster backend]\nendpoints = 127.0.0.1:{server_port}\ntls = cli\n" +
            cluster_extra + "\n" + tls)
    return sk_ini(body, workers=workers)


def client_side(sidekick, pki, server_port, name="client.ini", **kw):
    return sidekick(client_ini(pki, server_port, **kw), name=name)


def mesh(sidekick, upstream, pki, server_kw=None, client_kw=None, handler=None):
    """(client sidecar, server sidecar, recording upstream)."""
    up = upstream(handler or echo_handler("app"), name="app")
    ssk = server_side(sidekick, pki, up, **(server_kw or {}))
    csk = client_side(sidekick, pki, ssk.port("inbound"), **(client_kw or {}))
    return csk, ssk, up


# --------------------------------------------------------------------------
# metrics, logs, /config


def samples(sk):
    r = sk.admin_get("/metrics")
    assert r.status == 200, r
    return parse_prometheus(r.body.decode())


def metric(sk, name, **labels):
    return metric_value(samples(sk), name, **labels)


def hs(sk, side, result):
    return metric(sk, HS, side=side, result=result) or 0


def hs_done(sk, side):
    """Completed handshakes: ok + resumed."""
    s = samples(sk)
    return sum((metric_value(s, HS, side=side, result=r) or 0) for r in ("ok", "resumed"))


def tls_metrics_text(sk):
    text = sk.admin_get("/metrics").body.decode()
    return "\n".join(l for l in text.splitlines() if "tls" in l)


def wait_hs(sk, side, result, value, timeout=WAIT):
    if not wait_for(lambda: hs(sk, side, result) >= value, timeout):
        pytest.fail(f"{HS}{{side={side},result={result}}} did not reach {value}:\n"
                    f"{tls_metrics_text(sk)}")
    got = hs(sk, side, result)
    assert got == value, f"{HS}{{side={side},result={result}}} = {got}, expected {value}"


def reloads(sk, tls, result):
    return metric(sk, RELOADS, tls=tls, result=result) or 0


def wait_reloads(sk, tls, result, value, timeout=WAIT):
    if not wait_for(lambda: reloads(sk, tls, result) >= value, timeout):
        pytest.fail(f"{RELOADS}{{tls={tls},result={result}}} did not reach {value}:\n"
                    f"{tls_metrics_text(sk)}\nstderr tail:\n{sk.stderr_text()[-2000:]}")


def handshake_log_lines(sk, peer_port, side):
    pat = re.compile(rf"tls handshake with 127\.0\.0\.1:{peer_port} failed \({side}\)")
    return [l for l in sk.stderr_text().splitlines() if pat.search(l)]


def check_failure_logged(sk, peer_port, side, result):
    """Exactly one log line for the failed handshake with this peer, naming the result."""
    if not wait_for(lambda: handshake_log_lines(sk, peer_port, side), WAIT):
        pytest.fail(f"no 'tls handshake with 127.0.0.1:{peer_port} failed ({side})' line in "
                    f"stderr:\n{sk.stderr_text()[-3000:]}")
    lines = handshake_log_lines(sk, peer_port, side)
    assert len(lines) == 1, f"expected one log line, got {lines}"
    assert f"({side}): {result}" in lines[0], f"result {result!r} not in {lines[0]!r}"


def check_failure(sk, lport, result, side="server"):
    wait_hs(sk, side, result, 1)
    check_failure_logged(sk, lport, side, result)
    # the failure is not also counted as a success
    assert hs_done(sk, side) == 0, tls_metrics_text(sk)


def config_json(sk):
    r = sk.admin_get("/config")
    assert r.status == 200, r
    return json.loads(r.body)


def tls_config(sk, name):
    j = config_json(sk)
    assert "tls" in j, f"no 'tls' in /config: {sorted(j)}"
    found = [t for t in j["tls"] if t.get("name") == name]
    assert len(found) == 1, f"[tls {name}] not in /config tls: {j['tls']}"
    return found[0]


def config_serial(sk, name="srv"):
    return normalize_serial(str(tls_config(sk, name)["serial"]))


def wait_serial(sk, serial, name="srv", timeout=WAIT):
    if not wait_for(lambda: config_serial(sk, name) == serial, timeout):
        pytest.fail(f"/config serial of [tls {name}] is {config_serial(sk, name)}, "
                    f"expected {serial}\nstderr tail:\n{sk.stderr_text()[-2000:]}")


def direct_serial(sk, pki, port_name="inbound", leaf=None, ca=None):
    """The serial a new direct connection sees (Python ssl, client cert)."""
    r, c = tls_get(sk.port(port_name), client_ctx(pki, leaf or pki.client, ca=ca), "/serial")
    assert r.status == 200, r
    return c.peer_serial_value




def xfcc(req):
    return req.header_all("x-forwarded-client-cert")


class Load(threading.Thread):
    """Runs fn(i) in a loop until stop(), at most max_iter times and
    max_seconds; every exception is a failure (kept with its index).
    pause_every/pause: sleep `pause` seconds after every pause_every
    iterations (lets pooled connections idle out, so that new handshakes
    happen during the run)."""

    def __init__(self, fn, max_iter=4000, max_seconds=90.0, pause_every=0, pause=0.0,
                 step=0.005):
        super().__init__(daemon=True)
        self.fn, self.max_iter, self.max_seconds = fn, max_iter, max_seconds
        self.pause_every, self.pause, self.step = pause_every, pause, step
        self.count = 0
        self.failures = []
        self._stop_ev = threading.Event()

    def run(self):
        deadline = time.monotonic() + self.max_seconds
        i = 0
        while not self._stop_ev.is_set() and i < self.max_iter and time.monotonic() < deadline:
            try:
                self.fn(i)
            except Exception as e:
                self.failures.append((i, repr(e)))
            i += 1
            self.count = i
            if self.pause_every and i % self.pause_every == 0:
                self._stop_ev.wait(self.pause)
            elif self.step:
                self._stop_ev.wait(self.step)

    def wait_count(self, n, timeout=60.0):
        assert wait_for(lambda: self.count >= n or not self.is_alive(), timeout), \
            f"load stuck at {self.count}"
        assert self.count >= n, f"load ended at {self.count} (failures {self.failures[:5]})"

    def stop(self):
        self._stop_ev.set()
        self.join(timeout=60)
        assert not self.is_alive(), "load thread did not stop"


def ok_through(port, path):
    r = http_request(port, "GET", path, timeout=15)
    if r.status != 200:
        raise AssertionError(f"{path}: {r!r}")


def ok_direct(pki, port, path, leaf=None, ca=None):
    r, _ = tls_get(port, client_ctx(pki, leaf or pki.client, ca=ca), path)
    if r.status != 200:
        raise AssertionError(f"{path}: {r!r}")


# --------------------------------------------------------------------------
# termination


@pytest.mark.parametrize("version", ["1.2", "1.3"])
def test_termination_tls_versions_and_alpn(sidekick, upstream, pki, version):
    up = upstream(echo_handler("app"))
    sk = server_side(sidekick, pki, up)
    if version == "1.2":
        ctx = client_ctx(pki, pki.client, max_v=ssl.TLSVersion.TLSv1_2,
                         alpn=("h2", "http/1.1"))
    else:
        ctx = client_ctx(pki, pki.client, min_v=ssl.TLSVersion.TLSv1_3,
                         alpn=("h2", "http/1.1"))
    c = TLSClient(sk.port("inbound"), ctx)
    with c:
        assert c.sock.version() == f"TLSv{version}"
        # the listener prefers h2 (test_http2.py speaks it)
        assert c.sock.selected_alpn_protocol() == "h2"
    alpn = ("http/1.1",)
    if version == "1.2":
        ctx = client_ctx(pki, pki.client, max_v=ssl.TLSVersion.TLSv1_2, alpn=alpn)
    else:
        ctx = client_ctx(pki, pki.client, min_v=ssl.TLSVersion.TLSv1_3, alpn=alpn)
    c = TLSClient(sk.port("inbound"), ctx)
    with c:
        assert c.sock.version() == f"TLSv{version}"
        assert c.sock.selected_alpn_protocol() == "http/1.1"
        for i in range(3):  # keep-alive on the TLS connection
            r = c.request("GET", f"/v{version}/{i}")
            assert r.status == 200, r
            assert r.body == f"app GET /v{version}/{i}".encode()
    assert up.wait_requests(3)
    q = up.requests[0]
    assert q.header_all("x-forwarded-proto") == ["https"]
    assert xfcc(q) == [f"URI={FRONTEND}"]
    wait_hs(sk, "server", "ok", 2)  # the h2 connection and the http/1.1 one


def test_termination_with_curl(sidekick, upstream, pki):
    up = upstream(echo_handler("app"))
    sk = server_side(sidekick, pki, up)
    port = sk.port("inbound")
    for opts, want in ((["--tlsv1.2", "--tls-max", "1.2"], "1.2"), (["--tlsv1.3"], "1.3")):
        res = curl("--cacert", str(pki.ca1.cert), "--cert", str(pki.client.cert), "--key",
                   str(pki.client.key), "--resolve", f"{HOST}:{port}:127.0.0.1", *opts,
                   "-H", "x-forwarded-client-cert: URI=spiffe://forged/by/curl",
                   "-w", "\n%{http_code} %{http_version} %{ssl_verify_result}",
                   f"https://{HOST}:{port}/curl/{want}")
        assert res.returncode == 0, res.stderr
        out = res.stdout.decode()
        body, _, tail = out.rpartition("\n")
        assert body == f"app GET /curl/{want}", out
        assert tail == "200 2 0", out  # h2 by ALPN (curl offers it first)
    assert up.wait_requests(2)
    for q in up.requests:
        assert xfcc(q) == [f"URI={FRONTEND}"], q.headers
        assert q.header_all("x-forwarded-proto") == ["https"]


def test_curl_without_client_cert_is_refused_when_required(sidekick, upstream, pki):
    up = upstream(echo_handler("app"))
    sk = server_side(sidekick, pki, up)
    port = sk.port("inbound")
    res = curl("--cacert", str(pki.ca1.cert), "--resolve", f"{HOST}:{port}:127.0.0.1",
               f"https://{HOST}:{port}/nocert")
    assert res.returncode != 0, res
    assert up.requests == []
    wait_hs(sk, "server", "no_client_cert", 1)


def test_session_resumption_on_listener(sidekick, upstream, pki):
    """A listener that verifies client certificates resumes TLS 1.2 sessions
    from its own session cache, which keeps the peer's chain: the identity
    survives resumption."""
    up = upstream(echo_handler("app"))
    sk = server_side(sidekick, pki, up)
    v = ssl.TLSVersion.TLSv1_2
    ctx = client_ctx(pki, pki.client, min_v=v, max_v=v)
    c1 = TLSClient(sk.port("inbound"), ctx)
    with c1:
        assert c1.request("GET", "/first").status == 200
        session = c1.sock.session
        assert not c1.sock.session_reused
    assert session is not None and not session.has_ticket, "a TLS 1.2 ticket from an mTLS listener"
    c2 = TLSClient(sk.port("inbound"), ctx, session=session)
    with c2:
        assert c2.sock.session_reused, "TLS 1.2 session not resumed"
        r = c2.request("GET", "/second")
        assert r.status == 200, r
    wait_hs(sk, "server", "resumed", 1)
    assert hs(sk, "server", "ok") == 1
    # the identity survives resumption
    assert up.wait_requests(2)
    assert [xfcc(q) for q in up.requests] == [[f"URI={FRONTEND}"]] * 2


def test_no_tls13_resumption_on_a_listener_that_verifies_clients(sidekick, upstream, pki):
    """TLS 1.3 on an mTLS listener: no ticket is issued (a resumed ticket
    session may come without the peer's certificate, so without identity):
    each connection makes a full handshake and carries the identity."""
    up = upstream(echo_handler("app"))
    sk = server_side(sidekick, pki, up)
    v = ssl.TLSVersion.TLSv1_3
    ctx = client_ctx(pki, pki.client, min_v=v, max_v=v)
    c1 = TLSClient(sk.port("inbound"), ctx)
    with c1:
        assert c1.request("GET", "/first").status == 200  # a ticket would arrive after the handshake
        session = c1.sock.session
    c2 = TLSClient(sk.port("inbound"), ctx, session=session)
    with c2:
        assert not c2.sock.session_reused, "a TLS 1.3 session resumed on an mTLS listener"
        assert c2.request("GET", "/second").status == 200
    wait_hs(sk, "server", "ok", 2)
    assert hs(sk, "server", "resumed") == 0
    assert up.wait_requests(2)
    assert [xfcc(q) for q in up.requests] == [[f"URI={FRONTEND}"]] * 2


@pytest.mark.parametrize("version", ["1.2", "1.3"])
def test_session_resumption_without_client_certificates(sidekick, upstream, pki, version):
    up = upstream(echo_handler("app"))
    sk = server_side(sidekick, pki, up, ca=None, verify="none")
    v = ssl.TLSVersion.TLSv1_2 if version == "1.2" else ssl.TLSVersion.TLSv1_3
    ctx = client_ctx(pki, min_v=v, max_v=v)
    with TLSClient(sk.port("inbound"), ctx) as c1:
        assert c1.request("GET", "/first").status == 200
        session = c1.sock.session
    with TLSClient(sk.port("inbound"), ctx, session=session) as c2:
        assert c2.sock.session_reused, f"TLS {version} session not resumed"
        assert c2.request("GET", "/second").status == 200
    wait_hs(sk, "server", "resumed", 1)


@pytest.mark.parametrize("version", ["1.2", "1.3"])
def test_session_from_another_listener_does_not_skip_client_auth(sidekick, upstream, pki,
                                                                  version):
    """A session made on a listener that asks no client certificate must not
    resume on one that requires it (that would skip client authentication)."""
    up = upstream(echo_handler("app"))
    more = ("[listener open]\naddress = 127.0.0.1:{open}\ntls = open\n"
            "\n[route o]\nlistener = open\ncluster = app\n\n" +
            tls_section("open", pki.server.cert, pki.server.key, None, "none"))
    sk = server_side(sidekick, pki, up, more=more)
    v = ssl.TLSVersion.TLSv1_2 if version == "1.2" else ssl.TLSVersion.TLSv1_3
    ctx = client_ctx(pki, min_v=v, max_v=v)  # no client certificate
    with TLSClient(sk.port("open"), ctx) as c1:
        assert c1.request("GET", "/open").status == 200
        session = c1.sock.session
    r, err, lport = attempt(sk.port("inbound"), ctx, "/sneak", session=session)
    assert r is None, f"resumed into the mTLS listener without a certificate: {r!r}"
    assert [q.path for q in up.requests] == ["/open"]
    wait_hs(sk, "server", "no_client_cert", 1)


@pytest.mark.parametrize("version", ["1.2", "1.3"])
def test_session_from_before_a_ca_removal_is_not_resumed(sidekick, upstream, pki, tmp_path,
                                                         version):
    ca = tmp_path / "ca.pem"
    ca.write_bytes(pki.bundle12.read_bytes())
    up = upstream(echo_handler("app"))
    sk = server_side(sidekick, pki, up, ca=ca)
    v = ssl.TLSVersion.TLSv1_2 if version == "1.2" else ssl.TLSVersion.TLSv1_3
    ctx = client_ctx(pki, pki.client, min_v=v, max_v=v)  # a ca1 client
    with TLSClient(sk.port("inbound"), ctx) as c1:
        assert c1.request("GET", "/before").status == 200
        session = c1.sock.session
    atomic_write(ca, pki.ca2.cert.read_bytes())  # ca1 no longer trusted
    wait_reloads(sk, "srv", "ok", 1)
    r, err, lport = attempt(sk.port("inbound"), ctx, "/after", session=session)
    assert r is None, f"a ca1 client got in after ca1 was removed: {r!r}"
    assert [q.path for q in up.requests] == ["/before"]


def test_session_tickets_off_tls12_resumes_from_the_cache(sidekick, upstream, pki):
    """session_tickets = off leaves the session cache: a TLS 1.2 client
    resumes by session ID (no client certificates here, so only the cache
    is under test)."""
    up = upstream(echo_handler("app"))
    sk = server_side(sidekick, pki, up, ca=None, verify="none",
                     tls_extra="session_tickets = off\n")
    v = ssl.TLSVersion.TLSv1_2
    ctx = client_ctx(pki, min_v=v, max_v=v)
    with TLSClient(sk.port("inbound"), ctx) as c1:
        assert c1.request("GET", "/first").status == 200
        session = c1.sock.session
    assert session is not None and not session.has_ticket, "a ticket with session_tickets = off"
    with TLSClient(sk.port("inbound"), ctx, session=session) as c2:
        assert c2.sock.session_reused, "TLS 1.2 session not resumed from the cache"
        assert c2.request("GET", "/second").status == 200
    wait_hs(sk, "server", "resumed", 1)


def test_tls_on_a_tcp_listener(sidekick, upstream, pki):
    up = upstream(echo_handler("app"))
    body = ("[listener tcpin]\naddress = 127.0.0.1:{tcpin}\nprotocol = tcp\ncluster = app\n"
            "tls = srv\n"
            f"\n[cluster app]\nendpoints = 127.0.0.1:{up.port}\n\n" +
            tls_section("srv", pki.server.cert, pki.server.key, pki.ca1.cert, "required"))
    sk = sidekick(sk_ini(body))
    c = TLSClient(sk.port("tcpin"), client_ctx(pki, pki.client))
    with c:
        r = c.request("GET", "/through-tcp")
        assert r.status == 200 and r.body == b"app GET /through-tcp", r
    wait_hs(sk, "server", "ok", 1)


# --------------------------------------------------------------------------
# verify modes, min_version, ciphers


def test_verify_none_asks_no_client_certificate(sidekick, upstream, pki):
    up = upstream(echo_handler("app"))
    sk = server_side(sidekick, pki, up, ca=None, verify="none")
    r, _ = tls_get(sk.port("inbound"), client_ctx(pki), "/anon")
    assert r.status == 200, r
    r, _ = tls_get(sk.port("inbound"), client_ctx(pki, pki.client), "/with-cert")
    assert r.status == 200, r
    assert up.wait_requests(2)
    for q in up.requests:
        assert xfcc(q) == [], q.headers  # nothing verified: no identity
        assert q.header_all("x-forwarded-proto") == ["https"]


def test_verify_optional(sidekick, upstream, pki):
    up = upstream(echo_handler("app"))
    sk = server_side(sidekick, pki, up, verify="optional")
    r, _ = tls_get(sk.port("inbound"), client_ctx(pki), "/anon",
                   headers=[("x-forwarded-client-cert", f"URI={FRONTEND}")])
    assert r.status == 200, r
    r, _ = tls_get(sk.port("inbound"), client_ctx(pki, pki.client), "/with-cert")
    assert r.status == 200, r
    assert up.wait_requests(2)
    by_path = {q.path: q for q in up.requests}
    assert xfcc(by_path["/anon"]) == []  # and the forged copy is gone
    assert xfcc(by_path["/with-cert"]) == [f"URI={FRONTEND}"]


def test_verify_required_default_when_ca_is_set(sidekick, upstream, pki):
    up = upstream(echo_handler("app"))
    sk = server_side(sidekick, pki, up, verify=None)  # ca set, verify not: required
    r, err, _ = attempt(sk.port("inbound"), client_ctx(pki))
    assert r is None, r
    r, _ = tls_get(sk.port("inbound"), client_ctx(pki, pki.client), "/with-cert")
    assert r.status == 200, r
    assert [q.path for q in up.requests] == ["/with-cert"]


def test_min_version_1_3_refuses_a_1_2_client(sidekick, upstream, pki):
    up = upstream(echo_handler("app"))
    sk = server_side(sidekick, pki, up, tls_extra="min_version = 1.3\n")
    r, err, _ = attempt(sk.port("inbound"), client_ctx(pki, pki.client,
                                                       max_v=ssl.TLSVersion.TLSv1_2))
    assert r is None and err is not None, r
    c = TLSClient(sk.port("inbound"), client_ctx(pki, pki.client))
    with c:
        assert c.sock.version() == "TLSv1.3"
        assert c.request("GET", "/v13").status == 200
    assert [q.path for q in up.requests] == ["/v13"]


def test_ciphers_restrict_the_suites(sidekick, upstream, pki):
    up = upstream(echo_handler("app"))
    more = ("[listener strict]\naddress = 127.0.0.1:{strict}\ntls = strict\n"
            "\n[route s]\nlistener = strict\ncluster = app\n\n" +
            tls_section("strict", pki.server.cert, pki.server.key, pki.ca1.cert, "required",
                        "ciphers = ECDHE-ECDSA-AES256-GCM-SHA384\n"))
    sk = server_side(sidekick, pki, up, more=more)
    v12 = ssl.TLSVersion.TLSv1_2
    aes128 = "ECDHE-ECDSA-AES128-GCM-SHA256"
    aes256 = "ECDHE-ECDSA-AES256-GCM-SHA384"
    # the default listener takes AES128-GCM; the restricted one does not
    c = TLSClient(sk.port("inbound"), client_ctx(pki, pki.client, max_v=v12, ciphers=aes128))
    with c:
        assert c.sock.cipher()[0] == aes128
        assert c.request("GET", "/default").status == 200
    r, err, _ = attempt(sk.port("strict"), client_ctx(pki, pki.client, max_v=v12,
                                                      ciphers=aes128))
    assert r is None and err is not None, r
    c = TLSClient(sk.port("strict"), client_ctx(pki, pki.client, max_v=v12, ciphers=aes256))
    with c:
        assert c.sock.cipher()[0] == aes256
        assert c.request("GET", "/strict").status == 200
    assert sorted(q.path for q in up.requests) == ["/default", "/strict"]


def test_defaults_refuse_old_versions_and_cbc_suites(sidekick, upstream, pki):
    """Mesh-grade defaults: TLS 1.2+ and AEAD suites only. The server's
    handshake counter proves it was the server that refused, not Python's
    own OpenSSL policy."""
    up = upstream(echo_handler("app"))
    sk = server_side(sidekick, pki, up)
    port = sk.port("inbound")
    with warnings.catch_warnings():  # TLSv1_1 is deprecated in Python: that is the point
        warnings.simplefilter("ignore", DeprecationWarning)
        old = client_ctx(pki, pki.client, min_v=ssl.TLSVersion.TLSv1_1,
                         max_v=ssl.TLSVersion.TLSv1_1, ciphers="DEFAULT:@SECLEVEL=0")
    cases = [
        old,
        client_ctx(pki, pki.client, max_v=ssl.TLSVersion.TLSv1_2,
                   ciphers="ECDHE-ECDSA-AES128-SHA256:ECDHE-ECDSA-AES256-SHA:@SECLEVEL=0"),
    ]
    for n, ctx in enumerate(cases, 1):
        r, err, lport = attempt(port, ctx)
        assert r is None and err is not None, r
        assert wait_for(lambda: handshake_log_lines(sk, lport, "server"), WAIT), \
            f"case {n}: the server logged no refused handshake:\n{sk.stderr_text()[-2000:]}"
    assert hs_done(sk, "server") == 0
    assert up.requests == []


# --------------------------------------------------------------------------
# two sidecars: x-forwarded-client-cert, x-forwarded-proto


def test_mesh_upstream_sees_client_identity(sidekick, upstream, pki):
    csk, ssk, up = mesh(sidekick, upstream, pki)
    r = http_request(csk.port("outbound"), "GET", "/hello",
                     headers={"X-Forwarded-Client-Cert": "URI=spiffe://forged/app",
                              "X-Forwarded-Proto": "gopher"})
    assert r.status == 200, r
    assert r.body == b"app GET /hello"
    assert up.wait_requests(1)
    q = up.requests[0]
    assert xfcc(q) == [f"URI={FRONTEND}"], q.headers
    assert q.header_all("x-forwarded-proto") == ["https"], q.headers
    wait_hs(csk, "client", "ok", 1)
    wait_hs(ssk, "server", "ok", 1)


def test_forged_xfcc_never_reaches_the_upstream(sidekick, upstream, pki):
    # straight to the TLS listener, with a verified client certificate
    up = upstream(echo_handler("app"))
    sk = server_side(sidekick, pki, up)
    with TLSClient(sk.port("inbound"), client_ctx(pki, pki.client)) as c:
        r = c.request("GET", "/tls", headers=[("X-Forwarded-Client-Cert", f"URI={OPS_TOOL}"),
                                              ("x-forwarded-client-cert", "By=x;URI=y")])
        assert r.status == 200, r
    # and on a plain listener of the same kind of config
    plain_up = upstream(echo_handler("plain"))
    plain = sidekick(sk_ini("[listener main]\naddress = 127.0.0.1:{listen}\n"
                            "[route r]\nlistener = main\ncluster = up\n"
                            f"[cluster up]\nendpoints = 127.0.0.1:{plain_up.port}\n"),
                     name="plain.ini")
    r = http_request(plain.port("listen"), "GET", "/plain",
                     headers={"X-Forwarded-Client-Cert": f"URI={FRONTEND}"})
    assert r.status == 200, r
    assert up.wait_requests(1) and plain_up.wait_requests(1)
    assert xfcc(up.requests[0]) == [f"URI={FRONTEND}"]
    assert xfcc(plain_up.requests[0]) == []
    assert plain_up.requests[0].header_all("x-forwarded-proto") == ["http"]


# --------------------------------------------------------------------------
# peer_identity


ALLOW = f"peer_identity = {FRONTEND}, {TD}/ns/ops/*\n"


@pytest.mark.parametrize("who,allowed", [
    ("client", True), ("ops", True), ("opsx", False), ("evil", False), ("other_td", False),
])
def test_listener_peer_identity(sidekick, upstream, pki, who, allowed):
    up = upstream(echo_handler("app"))
    sk = server_side(sidekick, pki, up, tls_extra=ALLOW)
    leaf = getattr(pki, who)
    with TLSClient(sk.port("inbound"), client_ctx(pki, leaf)) as c:
        for i in range(3):  # every request on the connection
            r = c.request("GET", f"/{who}/{i}")
            if allowed:
                assert r.status == 200, r
            else:
                assert_local_reply(r, 403, "forbidden")
        lport = c.local_port
    if allowed:
        assert up.wait_requests(3)
        assert all(xfcc(q) == [f"URI={leaf.uris[0]}"] for q in up.requests)
        wait_hs(sk, "server", "ok", 1)
    else:
        assert up.accepted == 0 and up.requests == []
        wait_hs(sk, "server", "identity_mismatch", 1)
        check_failure_logged(sk, lport, "server", "identity_mismatch")


def test_cluster_peer_identity_mismatch(sidekick, upstream, pki):
    csk, ssk, up = mesh(sidekick, upstream, pki,
                        server_kw=dict(cert=pki.impostor.cert, key=pki.impostor.key))
    for i in range(2):
        r = http_request(csk.port("outbound"), "GET", f"/mismatch/{i}")
        assert_local_reply(r, 502, "upstream_identity_mismatch")
    wait_hs(csk, "client", "identity_mismatch", 2)
    assert hs_done(csk, "client") == 0
    lines = handshake_log_lines(csk, ssk.port("inbound"), "client")
    assert len(lines) == 2 and all("(client): identity_mismatch" in l for l in lines), lines
    # nothing went through the server sidecar
    assert up.accepted == 0 and up.requests == []


class TLSRecorder:
    """A TLS server (Python ssl) that records the decrypted bytes of every
    connection: proves that an upstream gets no request byte."""

    def __init__(self, pki, leaf):
        self.ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self.ctx.load_cert_chain(str(leaf.cert), str(leaf.key))
        self.ctx.load_verify_locations(cafile=str(pki.ca1.cert))
        self.ctx.verify_mode = ssl.CERT_REQUIRED
        self.ctx.num_tickets = 0
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.sock.settimeout(0.2)
        self.port = self.sock.getsockname()[1]
        self.conns = []  # [{"handshake": bool, "data": bytes, "error": str}]
        self._stop = False
        self.t = threading.Thread(target=self._loop, daemon=True)
        self.t.start()

    def _loop(self):
        while not self._stop:
            try:
                s, _ = self.sock.accept()
            except socket.timeout:
                continue
            except OSError:
                return
            rec = {"handshake": False, "data": b"", "error": None, "closed": False}
            self.conns.append(rec)
            threading.Thread(target=self._serve, args=(s, rec), daemon=True).start()

    def _serve(self, s, rec):
        s.settimeout(10)
        try:
            t = self.ctx.wrap_socket(s, server_side=True)
            rec["handshake"] = True
            while True:
                d = t.recv(65536)
                if not d:
                    break
                rec["data"] += d
        except Exception as e:
            rec["error"] = repr(e)
        finally:
            s.close()
            rec["closed"] = True

    def close(self):
        self._stop = True
        self.t.join(timeout=2)
        self.sock.close()


def test_cluster_identity_mismatch_sends_no_request_byte(sidekick, pki):
    rec = TLSRecorder(pki, pki.impostor)
    try:
        csk = client_side(sidekick, pki, rec.port)
        r = http_request(csk.port("outbound"), "GET", "/secret", headers={"x-secret": "s3"})
        assert_local_reply(r, 502, "upstream_identity_mismatch")
        # sidekick connected, completed the handshake and closed: every
        # connection of the recorder ended, none with a request byte
        assert wait_for(lambda: rec.conns and all(c["closed"] for c in rec.conns), WAIT), \
            rec.conns
        assert any(c["handshake"] for c in rec.conns), rec.conns
        assert all(c["data"] == b"" for c in rec.conns), rec.conns
        wait_hs(csk, "client", "identity_mismatch", 1)
    finally:
        rec.close()


def test_cluster_unknown_server_ca(sidekick, upstream, pki):
    csk, ssk, up = mesh(sidekick, upstream, pki,
                        server_kw=dict(cert=pki.server_unknown_ca.cert,
                                       key=pki.server_unknown_ca.key))
    r = http_request(csk.port("outbound"), "GET", "/unknown-ca")
    assert r.status == 502, r
    wait_hs(csk, "client", "unknown_ca", 1)
    check_failure_logged(csk, ssk.port("inbound"), "client", "unknown_ca")
    assert up.requests == []
    # the server sidecar hears the client's alert: counted and logged with the peer's address
    wait_hs(ssk, "server", "unknown_ca", 1)
    pat = re.compile(r"tls handshake with (\S+) failed \(server\): unknown_ca")
    assert wait_for(lambda: pat.search(ssk.stderr_text()), WAIT), ssk.stderr_text()[-2000:]
    peers = pat.findall(ssk.stderr_text())
    assert len(peers) == 1 and re.fullmatch(r"127\.0\.0\.1:\d+", peers[0]), peers


@pytest.mark.parametrize("who,result", [
    ("server_expired", "expired"), ("server_future", "not_yet_valid"),
    ("server_unknown_ca", "unknown_ca"), ("impostor", "identity_mismatch"),
])
def test_cluster_refuses_a_bad_upstream_certificate(sidekick, pki, who, result):
    """An upstream TLS server (Python ssl) presenting a bad certificate: 502,
    the client-side counter and one log line, and not one request byte sent."""
    rec = TLSRecorder(pki, getattr(pki, who))
    try:
        csk = client_side(sidekick, pki, rec.port)
        r = http_request(csk.port("outbound"), "GET", "/secret", headers={"x-secret": "s3"})
        assert r.status == 502, r
        if result == "identity_mismatch":
            assert_local_reply(r, 502, "upstream_identity_mismatch")
        wait_hs(csk, "client", result, 1)
        check_failure_logged(csk, rec.port, "client", result)
        assert hs_done(csk, "client") == 0
        assert wait_for(lambda: rec.conns and all(c["closed"] for c in rec.conns), WAIT), \
            rec.conns
        assert all(c["data"] == b"" for c in rec.conns), rec.conns
    finally:
        rec.close()


def test_cluster_without_client_certificate_to_a_required_listener(sidekick, upstream, pki):
    csk, ssk, up = mesh(sidekick, upstream, pki, client_kw=dict(no_cert=True))
    r = http_request(csk.port("outbound"), "GET", "/nocert")
    assert r.status == 502, r
    wait_hs(ssk, "server", "no_client_cert", 1)
    assert up.requests == []


def test_cluster_handshake_timeout(sidekick, pki):
    """An upstream that accepts TCP and never answers the ClientHello: the
    connect timeout covers the handshake."""
    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen(8)
    try:
        csk = client_side(sidekick, pki, silent.getsockname()[1],
                          cluster_extra="connect_timeout = 500ms\n")
        r = http_request(csk.port("outbound"), "GET", "/silent", timeout=30)
        assert r.status in (502, 504), r
        wait_hs(csk, "client", "timeout", 1)
        check_failure_logged(csk, silent.getsockname()[1], "client", "timeout")
    finally:
        silent.close()


def test_cluster_sni_and_hostname_check(sidekick, upstream, pki):
    """Without peer_identity, `sni` is sent and the server's DNS SAN must match it."""
    up = upstream(echo_handler("app"))
    ssk = server_side(sidekick, pki, up)
    good = client_side(sidekick, pki, ssk.port("inbound"), peer_identity=None,
                       tls_extra=f"sni = {HOST}\n", name="good.ini")
    r = http_request(good.port("outbound"), "GET", "/sni-ok")
    assert r.status == 200, r
    bad = client_side(sidekick, pki, ssk.port("inbound"), peer_identity=None,
                      tls_extra="sni = other.test\n", name="bad.ini")
    r = http_request(bad.port("outbound"), "GET", "/sni-bad")
    assert r.status == 502, r
    assert [q.path for q in up.requests] == ["/sni-ok"]


# --------------------------------------------------------------------------
# X509-SVID rules


@pytest.mark.parametrize("who", ["two_uris", "non_spiffe", "bad_td", "no_uri", "ca_leaf"])
def test_not_an_svid_has_no_identity(sidekick, upstream, pki, who):
    up = upstream(echo_handler("app"))
    sk = server_side(sidekick, pki, up)  # verify = required, no allow-list
    leaf = getattr(pki, who)
    r, _ = tls_get(sk.port("inbound"), client_ctx(pki, leaf), f"/{who}",
                   headers=[("X-Forwarded-Client-Cert", f"URI={FRONTEND}")])
    assert r.status == 200, r
    assert up.wait_requests(1)
    assert xfcc(up.requests[0]) == [], up.requests[0].headers


@pytest.mark.parametrize("who", ["two_uris", "non_spiffe", "ca_leaf"])
def test_not_an_svid_is_not_allowed(sidekick, upstream, pki, who):
    up = upstream(echo_handler("app"))
    # the allow-list names the ID these certificates carry (among others)
    sk = server_side(sidekick, pki, up,
                     tls_extra=f"peer_identity = {FRONTEND}, {OPS_TOOL}, {TD}/*\n")
    r, _ = tls_get(sk.port("inbound"), client_ctx(pki, getattr(pki, who)), f"/{who}")
    assert_local_reply(r, 403, "forbidden")
    assert up.requests == []


def test_no_certificate_is_not_allowed(sidekick, upstream, pki):
    """verify = optional with an allow-list: a client without a certificate
    has no identity, so it is not on the list."""
    up = upstream(echo_handler("app"))
    sk = server_side(sidekick, pki, up, verify="optional", tls_extra=ALLOW)
    with TLSClient(sk.port("inbound"), client_ctx(pki)) as c:
        for i in range(2):
            assert_local_reply(c.request("GET", f"/anon/{i}"), 403, "forbidden")
    r, _ = tls_get(sk.port("inbound"), client_ctx(pki, pki.client), "/frontend")
    assert r.status == 200, r
    assert [q.path for q in up.requests] == ["/frontend"]
    wait_hs(sk, "server", "identity_mismatch", 1)


def test_svid_of_another_trust_domain_is_an_identity(sidekick, upstream, pki):
    up = upstream(echo_handler("app"))
    sk = server_side(sidekick, pki, up)
    r, _ = tls_get(sk.port("inbound"), client_ctx(pki, pki.other_td), "/other")
    assert r.status == 200, r
    assert up.wait_requests(1)
    assert xfcc(up.requests[0]) == [f"URI={OTHER_TD}"]


# --------------------------------------------------------------------------
# failure modes: client outcome + counter + one log line


@pytest.fixture
def strict(sidekick, upstream, pki):
    """A server sidecar with verify = required and header_timeout = 500ms."""
    up = upstream(echo_handler("app"))
    sk = server_side(sidekick, pki, up, listener_extra="header_timeout = 500ms\n")
    return sk, up


@pytest.mark.parametrize("who,result", [
    (None, "no_client_cert"),
    ("client_ca2", "unknown_ca"),
    ("expired", "expired"),
    ("future", "not_yet_valid"),
])
def test_handshake_failure(strict, pki, who, result):
    sk, up = strict
    leaf = getattr(pki, who) if who else None
    r, err, lport = attempt(sk.port("inbound"), client_ctx(pki, leaf))
    assert r is None, f"got a response: {r!r}"
    assert err is not None
    check_failure(sk, lport, result)
    assert up.accepted == 0 and up.requests == []


def test_plain_http_to_tls_port(strict):
    sk, up = strict
    with RawClient(sk.port("inbound")) as c:
        lport = c.sock.getsockname()[1]
        c.send(build_request("GET", "/plain"))
        r = c.read_response(timeout=10)
        assert_local_reply(r, 400, "bad_request")
        assert r.version == "HTTP/1.1"
        assert b"tls" in r.body.lower(), r
        assert c.wait_closed(WAIT), "connection not closed after the 400"
    check_failure(sk, lport, "not_tls")
    assert up.requests == []


def test_client_sending_nothing_is_closed_at_header_timeout(strict):
    sk, up = strict
    with RawClient(sk.port("inbound")) as c:
        lport = c.sock.getsockname()[1]
        assert not c.wait_closed(0.2), "closed before header_timeout (500ms)"
        assert c.wait_closed(WAIT), "idle TLS client not closed"
    check_failure(sk, lport, "timeout")


def test_client_stalling_mid_handshake_is_closed(strict):
    sk, up = strict
    hello = client_hello()
    with RawClient(sk.port("inbound")) as c:
        lport = c.sock.getsockname()[1]
        c.send(hello[:len(hello) // 2])
        assert c.wait_closed(WAIT), "client stalled in the ClientHello not closed"
        assert b"HTTP/" not in bytes(c.buf)
    check_failure(sk, lport, "timeout")


def test_client_closing_mid_handshake(strict):
    sk, up = strict
    hello = client_hello()
    with RawClient(sk.port("inbound")) as c:
        lport = c.sock.getsockname()[1]
        c.send(hello[:len(hello) // 2])
        assert not c.wait_closed(0.1)
    check_failure(sk, lport, "closed")


def test_failure_modes_leave_the_listener_working(strict, pki):
    sk, up = strict
    for who in (None, "client_ca2", "expired"):
        attempt(sk.port("inbound"), client_ctx(pki, getattr(pki, who) if who else None))
    raw = socket.create_connection(("127.0.0.1", sk.port("inbound")))
    raw.sendall(client_hello()[:20])
    raw.close()
    r, _ = tls_get(sk.port("inbound"), client_ctx(pki, pki.client), "/still-ok")
    assert r.status == 200, r
    assert [q.path for q in up.requests] == ["/still-ok"]


# --------------------------------------------------------------------------
# pooling and resumption towards the upstream


def test_pooled_tls_connections_1000_requests(sidekick, upstream, pki):
    csk, ssk, up = mesh(sidekick, upstream, pki)
    n = 1000
    deadline = time.monotonic() + 120
    done = 0
    with RawClient(csk.port("outbound"), timeout=15) as c:
        for i in range(n):
            assert time.monotonic() < deadline, f"only {done} requests in 120 s"
            r = c.request("GET", f"/k/{i}")
            assert r.status == 200, f"request {i}: {r!r}"
            done += 1
    assert up.wait_requests(n, timeout=WAIT)
    # one worker, sequential requests: one pooled TLS connection, one handshake
    assert hs_done(ssk, "server") == 1, tls_metrics_text(ssk)
    assert hs_done(csk, "client") == 1, tls_metrics_text(csk)
    assert all(xfcc(q) == [f"URI={FRONTEND}"] for q in up.requests)


def test_pooled_tls_connections_concurrent_clients(sidekick, upstream, pki):
    """4 keep-alive clients x 250 requests through a 2-worker client sidecar:
    the server sidecar handshakes once per pooled connection (at most one per
    concurrent request), never per request."""
    up = upstream(echo_handler("app"))
    ssk = server_side(sidekick, pki, up)
    csk = client_side(sidekick, pki, ssk.port("inbound"), workers=2)
    port = csk.port("outbound")
    errors = []

    def run(k):
        try:
            with RawClient(port, timeout=15) as c:
                deadline = time.monotonic() + 120
                for i in range(250):
                    if time.monotonic() > deadline:
                        raise AssertionError(f"client {k}: only {i} requests in 120 s")
                    r = c.request("GET", f"/c{k}/{i}")
                    if r.status != 200:
                        raise AssertionError(f"client {k} request {i}: {r!r}")
        except Exception as e:
            errors.append(repr(e))
    threads = [threading.Thread(target=run, args=(k,)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=180)
    assert not any(t.is_alive() for t in threads)
    assert errors == []
    assert up.wait_requests(1000, timeout=WAIT)
    server_hs = hs_done(ssk, "server")
    opened = metric(csk, "sidekick_upstream_connections_created_total")
    assert 1 <= server_hs <= 4, tls_metrics_text(ssk)
    assert server_hs == opened == hs_done(csk, "client"), (server_hs, opened)


def test_large_bodies_through_the_mesh(sidekick, upstream, pki):
    """Multi-megabyte request and response bodies cross both TLS hops intact."""
    size_up, size_down = 3 * 1024 * 1024 + 17, 5 * 1024 * 1024 + 3

    def handler(req):
        if req.method == "POST":
            return Reply(body=req.body_sha256.encode())
        return Reply(stream_size=size_down)
    csk, ssk, up = mesh(sidekick, upstream, pki, handler=handler)
    body = b"".join(iter_pattern(size_up))
    with RawClient(csk.port("outbound"), timeout=60) as c:
        r = c.request("POST", "/upload", body=body)
        assert r.status == 200, r
        assert r.body.decode() == pattern_sha256(size_up)
        r = c.request("GET", "/download")
        assert r.status == 200
        assert len(r.body) == size_down
        assert r.body == b"".join(iter_pattern(size_down))
    assert up.requests[0].body_len == size_up
    # and straight to the TLS listener from Python's ssl
    with TLSClient(ssk.port("inbound"), client_ctx(pki, pki.client), timeout=60) as c:
        r = c.request("POST", "/upload-direct", body=body)
        assert r.status == 200 and r.body.decode() == pattern_sha256(size_up), r
        r = c.request("GET", "/download-direct")
        assert r.body == b"".join(iter_pattern(size_down))


def test_cluster_verify_none_accepts_any_server(sidekick, upstream, pki):
    up = upstream(echo_handler("app"))
    ssk = server_side(sidekick, pki, up, cert=pki.server_unknown_ca.cert,
                      key=pki.server_unknown_ca.key)
    body = ("[listener outbound]\naddress = 127.0.0.1:{outbound}\n"
            "[route all]\nlistener = outbound\ncluster = backend\nretries = 0\n"
            f"[cluster backend]\nendpoints = 127.0.0.1:{ssk.port('inbound')}\ntls = cli\n" +
            tls_section("cli", pki.client.cert, pki.client.key, None, "none"))
    csk = sidekick(sk_ini(body), name="client.ini")
    r = http_request(csk.port("outbound"), "GET", "/unverified")
    assert r.status == 200, r
    assert xfcc(up.requests[0]) == [f"URI={FRONTEND}"]  # the server still verified us


@pytest.mark.parametrize("mode", ["mtls", "server_auth"])
def test_resumption_towards_the_upstream(sidekick, upstream, pki, mode):
    """The client sidecar resumes its session on a new connection to the
    server sidecar: with mTLS (the mesh case) and with server-only
    authentication (the server sidecar verifies no client certificate)."""
    # the server sidecar closes idle client connections quickly, so the
    # client sidecar's second request needs a new TLS connection
    server_kw = dict(listener_extra="idle_timeout = 200ms\n")
    if mode == "server_auth":
        server_kw.update(ca=None, verify="none")
    csk, ssk, up = mesh(sidekick, upstream, pki, server_kw=server_kw)
    assert http_request(csk.port("outbound"), "GET", "/one").status == 200

    def pool_empty():
        return (metric(csk, "sidekick_upstream_connections") or 0) == 0
    assert wait_for(pool_empty, WAIT), "the server sidecar did not close the idle connection"
    assert http_request(csk.port("outbound"), "GET", "/two").status == 200
    if mode == "mtls":
        # TLS 1.3 between sidecars: an mTLS listener issues no tickets
        # (test_no_tls13_resumption_on_a_listener_that_verifies_clients)
        wait_hs(csk, "client", "ok", 2)
        assert hs(csk, "client", "resumed") == 0
        wait_hs(ssk, "server", "ok", 2)
    else:
        wait_hs(csk, "client", "resumed", 1)
        assert hs(csk, "client", "ok") == 1
        wait_hs(ssk, "server", "resumed", 1)
    want = [f"URI={FRONTEND}"] if mode == "mtls" else []
    assert [xfcc(q) for q in up.requests] == [want] * 2


# --------------------------------------------------------------------------
# rotation


def test_rotation_of_the_server_certificate_under_load(sidekick, upstream, pki, tmp_path):
    cert, key = copy_pair(pki.server, tmp_path / "srv")
    up = upstream(echo_handler("app"))
    ssk = server_side(sidekick, pki, up, cert=cert, key=key)
    csk = client_side(sidekick, pki, ssk.port("inbound"))
    port_in, port_out = ssk.port("inbound"), csk.port("outbound")
    assert config_serial(ssk) == pki.server.serial

    # a connection opened before the rotation keeps its certificate
    before = TLSClient(port_in, client_ctx(pki, pki.client))
    assert before.request("GET", "/before").status == 200
    assert before.peer_serial_value == pki.server.serial

    def step(i):
        if i % 4 == 3:
            ok_direct(pki, port_in, f"/direct/{i}")  # a new handshake each time
        else:
            ok_through(port_out, f"/mesh/{i}")
    load = Load(step)
    load.start()
    try:
        load.wait_count(20)
        # a new pair: key, then certificate, each renamed over the old file
        atomic_write(key, pki.server2.key.read_bytes())
        atomic_write(cert, pki.server2.cert.read_bytes())
        wait_serial(ssk, pki.server2.serial)
        assert wait_for(lambda: direct_serial(ssk, pki) == pki.server2.serial, WAIT)
        load.wait_count(load.count + 40)
    finally:
        load.stop()
    assert load.failures == [], f"{len(load.failures)} failed of {load.count}: " \
                                f"{load.failures[:5]}"
    wait_reloads(ssk, "srv", "ok", 1)
    logged = re.findall(r"tls srv: new certificate in force \(serial ([0-9A-Fa-f:]+)",
                        ssk.stderr_text())
    assert pki.server2.serial in [normalize_serial(x) for x in logged], ssk.stderr_text()[-2000:]
    with before:
        r = before.request("GET", "/after")
        assert r.status == 200, r
        assert before.peer_serial_value == pki.server.serial  # still the old one
    assert direct_serial(ssk, pki) == pki.server2.serial


def test_rotation_of_the_ca_bundle_under_load(sidekick, upstream, pki, tmp_path):
    """add ca2 to the bundles, switch both certificates to ca2, remove ca1:
    zero failed requests through the mesh."""
    s_cert, s_key = copy_pair(pki.server, tmp_path / "srv")
    c_cert, c_key = copy_pair(pki.client, tmp_path / "cli")
    s_ca, c_ca = tmp_path / "srv" / "ca.pem", tmp_path / "cli" / "ca.pem"
    s_ca.write_bytes(pki.ca1.cert.read_bytes())
    c_ca.write_bytes(pki.ca1.cert.read_bytes())
    up = upstream(echo_handler("app"))
    ssk = server_side(sidekick, pki, up, cert=s_cert, key=s_key, ca=s_ca,
                      listener_extra="idle_timeout = 300ms\n")
    csk = client_side(sidekick, pki, ssk.port("inbound"), cert=c_cert, key=c_key, ca=c_ca)
    port_out = csk.port("outbound")
    load = Load(lambda i: ok_through(port_out, f"/ca/{i}"), pause_every=20, pause=0.7)
    load.start()
    try:
        load.wait_count(10)
        # 1. trust both CAs
        s_ok, c_ok = reloads(ssk, "srv", "ok"), reloads(csk, "cli", "ok")
        both = pki.bundle12.read_bytes()
        atomic_write(s_ca, both)
        atomic_write(c_ca, both)
        wait_reloads(ssk, "srv", "ok", s_ok + 1)
        wait_reloads(csk, "cli", "ok", c_ok + 1)
        load.wait_count(load.count + 25)
        # 2. certificates signed by ca2
        atomic_write(s_key, pki.server_ca2.key.read_bytes())
        atomic_write(s_cert, pki.server_ca2.cert.read_bytes())
        atomic_write(c_key, pki.client_ca2.key.read_bytes())
        atomic_write(c_cert, pki.client_ca2.cert.read_bytes())
        wait_serial(ssk, pki.server_ca2.serial)
        wait_serial(csk, pki.client_ca2.serial, name="cli")
        load.wait_count(load.count + 25)
        # 3. drop ca1
        s_ok, c_ok = reloads(ssk, "srv", "ok"), reloads(csk, "cli", "ok")
        only2 = pki.ca2.cert.read_bytes()
        atomic_write(s_ca, only2)
        atomic_write(c_ca, only2)
        wait_reloads(ssk, "srv", "ok", s_ok + 1)
        wait_reloads(csk, "cli", "ok", c_ok + 1)
        done = hs_done(ssk, "server")
        load.wait_count(load.count + 45)  # two idle pauses: new handshakes on the new trust
        assert wait_for(lambda: hs_done(ssk, "server") > done, WAIT), \
            f"no new handshake from the client sidecar after the rotation; load failures " \
            f"{load.failures[:3]}\nserver:\n{tls_metrics_text(ssk)}\nclient:\n{tls_metrics_text(csk)}"
    finally:
        load.stop()
    assert load.failures == [], f"{len(load.failures)} failed of {load.count}: " \
                                f"{load.failures[:5]}"
    # ca1 is gone: a ca1 client is refused, a ca2 client is served the ca2 certificate
    r, err, lport = attempt(ssk.port("inbound"), client_ctx(pki, pki.client, ca=pki.bundle12))
    assert r is None, r
    wait_hs(ssk, "server", "unknown_ca", 1)
    assert direct_serial(ssk, pki, leaf=pki.client_ca2, ca=pki.ca2.cert) == pki.server_ca2.serial


def test_ca_bundle_change_applies_to_new_handshakes(sidekick, upstream, pki, tmp_path):
    ca = tmp_path / "ca.pem"
    ca.write_bytes(pki.ca1.cert.read_bytes())
    up = upstream(echo_handler("app"))
    ssk = server_side(sidekick, pki, up, ca=ca)
    r, err, lport = attempt(ssk.port("inbound"), client_ctx(pki, pki.client_ca2))
    assert r is None, r
    wait_hs(ssk, "server", "unknown_ca", 1)
    old = TLSClient(ssk.port("inbound"), client_ctx(pki, pki.client))
    with old:
        assert old.request("GET", "/old-1").status == 200
        atomic_write(ca, pki.ca2.cert.read_bytes())  # ca1 out, ca2 in
        wait_reloads(ssk, "srv", "ok", 1)
        ok_direct(pki, ssk.port("inbound"), "/new-ca2", leaf=pki.client_ca2)
        r, err, lport = attempt(ssk.port("inbound"), client_ctx(pki, pki.client))
        assert r is None, r  # a new ca1 client: refused now
        wait_hs(ssk, "server", "unknown_ca", 2)
        # the connection made under the old bundle carries on
        assert old.request("GET", "/old-2").status == 200
    assert [q.path for q in up.requests] == ["/old-1", "/new-ca2", "/old-2"]


def test_rotation_by_kubernetes_symlink_swap(sidekick, upstream, pki, tmp_path):
    d = tmp_path / "secret"
    v1 = d / "..2026_01_01_00_00_00.000000001"
    v1.mkdir(parents=True)
    (v1 / "tls.crt").write_bytes(pki.server.cert.read_bytes())
    (v1 / "tls.key").write_bytes(pki.server.key.read_bytes())
    os.symlink(v1.name, d / "..data")
    os.symlink("..data/tls.crt", d / "tls.crt")
    os.symlink("..data/tls.key", d / "tls.key")
    up = upstream(echo_handler("app"))
    ssk = server_side(sidekick, pki, up, cert=d / "tls.crt", key=d / "tls.key")
    assert config_serial(ssk) == pki.server.serial
    assert direct_serial(ssk, pki) == pki.server.serial
    # what the kubelet does: a new timestamped dir, a new ..data link renamed over the old
    v2 = d / "..2026_01_01_00_10_00.000000002"
    v2.mkdir()
    (v2 / "tls.crt").write_bytes(pki.server2.cert.read_bytes())
    (v2 / "tls.key").write_bytes(pki.server2.key.read_bytes())
    os.symlink(v2.name, d / "..data_tmp")
    os.rename(d / "..data_tmp", d / "..data")
    for f in v1.iterdir():
        f.unlink()
    v1.rmdir()
    wait_serial(ssk, pki.server2.serial)
    assert direct_serial(ssk, pki) == pki.server2.serial
    wait_reloads(ssk, "srv", "ok", 1)


@pytest.mark.parametrize("bad", ["half_written", "mismatched_key", "expired"])
def test_bad_replacement_keeps_the_old_certificate(sidekick, upstream, pki, tmp_path, bad):
    cert, key = copy_pair(pki.server, tmp_path / "srv")
    up = upstream(echo_handler("app"))
    ssk = server_side(sidekick, pki, up, cert=cert, key=key)
    assert config_serial(ssk) == pki.server.serial
    if bad == "half_written":
        pem = pki.server3.cert.read_bytes()  # same key as the one in force
        with open(cert, "wb") as f:  # in place, not atomically: a writer caught midway
            f.write(pem[:len(pem) // 2])
    elif bad == "mismatched_key":
        atomic_write(key, pki.mismatched.read_bytes())
    else:
        atomic_write(cert, pki.server_expired.cert.read_bytes())  # same key
    wait_reloads(ssk, "srv", "failed", 1)
    assert reloads(ssk, "srv", "ok") == 0
    assert "tls srv: keeping the certificate in force" in ssk.stderr_text(), \
        ssk.stderr_text()[-2000:]
    assert config_serial(ssk) == pki.server.serial
    assert direct_serial(ssk, pki) == pki.server.serial  # new handshakes: the old pair
    if bad == "half_written":
        # the writer finishes: the new certificate comes into force
        with open(cert, "ab") as f:
            f.write(pem[len(pem) // 2:])
        wait_serial(ssk, pki.server3.serial)
        wait_reloads(ssk, "srv", "ok", 1)
        assert direct_serial(ssk, pki) == pki.server3.serial


def test_sighup_rereads_the_certificates(sidekick, upstream, pki, tmp_path):
    up = upstream(echo_handler("app"))
    ssk = server_side(sidekick, pki, up)
    assert config_serial(ssk) == pki.server.serial
    assert config_json(ssk)["generation"] == 1
    # the same config pointing at other files; SIGHUP makes a new generation
    new = server_ini(pki, up, cert=pki.server2.cert, key=pki.server2.key)
    ssk.config.write_text(new.format(**ssk.ports))
    ssk.signal(signal.SIGHUP)
    assert wait_for(lambda: config_json(ssk)["generation"] == 2, WAIT), ssk.stderr_text()
    assert config_serial(ssk) == pki.server2.serial
    assert direct_serial(ssk, pki) == pki.server2.serial


# --------------------------------------------------------------------------
# /config, expiry metric, /stats


def test_config_shows_certificates_and_expiry_metric(sidekick, upstream, pki):
    up = upstream(echo_handler("app"))
    ssk = server_side(sidekick, pki, up, tls_extra=ALLOW)
    t = tls_config(ssk, "srv")
    for k in ("name", "cert", "key", "ca", "verify", "peer_identity", "subject", "spiffe_id",
              "serial", "not_before", "not_after", "expires_in_seconds", "loaded_at"):
        assert k in t, f"{k} missing in /config tls: {t}"
    assert t["cert"] == str(pki.server.cert) and t["key"] == str(pki.server.key)
    assert t["ca"] == str(pki.ca1.cert)
    assert t["verify"] == "required"
    assert t["peer_identity"] == [FRONTEND, f"{TD}/ns/ops/*"]
    assert "server" in t["subject"], t["subject"]
    assert t["spiffe_id"] == BACKEND
    assert normalize_serial(str(t["serial"])) == pki.server.serial

    def iso(s):
        assert s.endswith("Z") or s.endswith("+00:00"), s
        return dt.datetime.fromisoformat(s.replace("Z", "+00:00"))
    assert iso(t["not_after"]) == pki.server.not_after
    assert iso(t["not_before"]) == pki.server.not_before
    left = (pki.server.not_after - dt.datetime.now(dt.timezone.utc)).total_seconds()
    assert abs(t["expires_in_seconds"] - left) < 3600, (t["expires_in_seconds"], left)
    m = metric(ssk, EXPIRY, tls="srv")
    assert m is not None, tls_metrics_text(ssk)
    assert abs(m - left) < 3600, (m, left)
    # /stats carries the handshake counters too
    tls_get(ssk.port("inbound"), client_ctx(pki, pki.client), "/s")
    wait_hs(ssk, "server", "ok", 1)
    st = json.loads(ssk.admin_get("/stats").body)
    assert "tls_handshakes" in st, sorted(st)


def test_client_side_section_in_config(sidekick, upstream, pki):
    csk, ssk, up = mesh(sidekick, upstream, pki)
    t = tls_config(csk, "cli")
    assert t["spiffe_id"] == FRONTEND
    assert normalize_serial(str(t["serial"])) == pki.client.serial
    assert t["peer_identity"] == [BACKEND]
    assert metric(csk, EXPIRY, tls="cli") is not None


# --------------------------------------------------------------------------
# bad config: refused by -t (and at start) with file:line, section, key


def line_of(text, needle):
    for i, line in enumerate(text.splitlines(), 1):
        if line.startswith(needle):
            return i
    raise AssertionError(f"{needle!r} not in config:\n{text}")


def check_refused(path, text, lines, section, key):
    res = run_sidekick(["-t", "-c", str(path)])
    assert res.returncode == 1, f"exit {res.returncode}, stderr: {res.stderr!r}"
    err = res.stderr
    want = [line_of(text, l) for l in lines]
    assert re.search(re.escape(path.name) + r":(" + "|".join(map(str, want)) + r")\b", err), \
        f"stderr does not name {path.name}:{want}: {err!r}"
    assert section in err, f"stderr does not name {section!r}: {err!r}"
    assert key in err, f"stderr does not name key {key!r}: {err!r}"
    return err


def bad_config_cases(pki, tmp_path):
    garbage = tmp_path / "garbage.key"
    garbage.write_text("-----BEGIN PRIVATE KEY-----\nnot a key at all\n-----END PRIVATE KEY-----\n")
    srv = lambda **kw: tls_section("srv", kw.get("cert", pki.server.cert),
                                   kw.get("key", pki.server.key), kw.get("ca", pki.ca1.cert),
                                   kw.get("verify", "required"), kw.get("extra", ""))
    cli = lambda **kw: tls_section("cli", pki.client.cert, pki.client.key, pki.ca1.cert,
                                   kw.get("verify"), kw.get("extra", ""))
    listener = ("[listener inbound]\naddress = 127.0.0.1:{inbound}\ntls = srv\n"
                "[route all]\nlistener = inbound\ncluster = app\n"
                "[cluster app]\nendpoints = 127.0.0.1:{up}\n")
    cluster = ("[listener inbound]\naddress = 127.0.0.1:{inbound}\n"
               "[route all]\nlistener = inbound\ncluster = app\n"
               "[cluster app]\nendpoints = 127.0.0.1:{up}\ntls = cli\n")
    return {
        # name: (body, [line prefixes], section, key)
        "missing_cert": (listener + srv(cert=tmp_path / "nope.pem"), ["cert ="],
                         "[tls srv]", "cert"),
        "unreadable_key": (listener + srv(key=garbage), ["key ="], "[tls srv]", "key"),
        "key_is_a_directory": (listener + srv(key=tmp_path), ["key ="], "[tls srv]", "key"),
        "mismatched_key": (listener + srv(key=pki.mismatched), ["key =", "cert ="],
                           "[tls srv]", "key"),
        "expired_own_cert": (listener + srv(cert=pki.server_expired.cert), ["cert ="],
                             "[tls srv]", "cert"),
        "required_without_ca": (listener + srv(ca=None), ["verify ="], "[tls srv]", "verify"),
        "sni_on_listener_side": (listener + srv(extra="sni = backend.test\n"), ["sni ="],
                                 "[tls srv]", "sni"),
        "session_tickets_on_cluster_side": (cluster + cli(extra="session_tickets = on\n"),
                                            ["session_tickets ="], "[tls cli]",
                                            "session_tickets"),
        "optional_on_cluster_side": (cluster + cli(verify="optional"), ["verify ="],
                                     "[tls cli]", "verify"),
        "unknown_tls_on_listener": (listener.replace("tls = srv", "tls = nosuch") + srv(),
                                    ["tls = nosuch"], "[listener inbound]", "tls"),
        "unknown_tls_on_cluster": (cluster.replace("tls = cli", "tls = nosuch") + cli(),
                                   ["tls = nosuch"], "[cluster app]", "tls"),
        "listener_without_cert": (listener + tls_section("srv", None, None, pki.ca1.cert),
                                  ["[tls srv]", "tls = srv"], "srv", "cert"),
        "alpn_spdy": (listener + srv(extra="alpn = spdy/3\n"), ["alpn ="], "[tls srv]", "alpn"),
        "min_version_1_1": (listener + srv(extra="min_version = 1.1\n"), ["min_version ="],
                            "[tls srv]", "min_version"),
        "unknown_key": (listener + srv(extra="colour = blue\n"), ["colour ="], "[tls srv]",
                        "colour"),
        "cluster_verifies_without_ca": (cluster + tls_section("cli", pki.client.cert,
                                                              pki.client.key),
                                        ["[tls cli]", "tls = cli"], "cli", "ca"),
    }


BAD_CASES = ["missing_cert", "unreadable_key", "key_is_a_directory", "mismatched_key",
             "expired_own_cert", "required_without_ca", "sni_on_listener_side",
             "session_tickets_on_cluster_side", "optional_on_cluster_side",
             "unknown_tls_on_listener", "unknown_tls_on_cluster", "listener_without_cert",
             "alpn_spdy", "min_version_1_1", "unknown_key", "cluster_verifies_without_ca"]


def write_config(tmp_path, body, name="bad.ini"):
    text = sk_ini(body).format(admin=free_port(), inbound=free_port(), up=free_port())
    p = tmp_path / name
    p.write_text(text)
    return p, text


@pytest.mark.parametrize("case", BAD_CASES)
def test_bad_config_refused_by_check(pki, tmp_path, sidekick_bin, case):
    body, lines, section, key = bad_config_cases(pki, tmp_path)[case]
    p, text = write_config(tmp_path, body)
    check_refused(p, text, lines, section, key)


def test_bad_config_refused_at_start(pki, tmp_path, sidekick_bin):
    body, lines, section, key = bad_config_cases(pki, tmp_path)["mismatched_key"]
    p, text = write_config(tmp_path, body)
    res = run_sidekick(["-c", str(p)], timeout=20)
    assert res.returncode != 0, res
    assert "[tls srv]" in res.stderr and "key" in res.stderr, res.stderr


def test_good_tls_config_passes_check(pki, tmp_path, sidekick_bin):
    body = ("[listener inbound]\naddress = 127.0.0.1:{inbound}\ntls = mesh\n"
            "[route all]\nlistener = inbound\ncluster = app\n"
            "[cluster app]\nendpoints = 127.0.0.1:{up}\ntls = mesh\n" +
            tls_section("mesh", pki.server.chain, pki.server.key, pki.ca1.cert, "required",
                        f"peer_identity = {FRONTEND}, {TD}/ns/ops/*\nmin_version = 1.2\n"
                        "alpn = http/1.1\n"))
    p, text = write_config(tmp_path, body, "good.ini")
    res = run_sidekick(["-t", "-c", str(p)])
    assert res.returncode == 0, res.stderr


# --------------------------------------------------------------------------
# identity in Lua and in the access log


IDENTITY_LUA = """\
local M = {}
function M.on_request(r)
  r:set_header("x-lua-identity", r:identity() or "none")
end
return M
"""


def test_identity_in_plugins(sidekick, upstream, pki):
    """host->identity through the fx_headers fixture (identity_to_header)."""
    missing = missing_fixtures(["fx_headers"])
    assert not missing, f"fixture plugins not built: {missing} in {PLUGIN_DIR}"
    up = upstream(echo_handler("app"))
    ssk = server_side(sidekick, pki, up, verify="optional", route_extra="plugins = who\n",
                      extra=f"plugin_dir = {PLUGIN_DIR}\n",
                      more="[plugin who]\nload = fx_headers.so\n"
                           "identity_to_header = x-plugin-identity\n")
    r, _ = tls_get(ssk.port("inbound"), client_ctx(pki, pki.client), "/with")
    assert r.status == 200, r
    r, _ = tls_get(ssk.port("inbound"), client_ctx(pki), "/without")
    assert r.status == 200, r
    assert up.wait_requests(2)
    seen = {q.path: q.header("x-plugin-identity") for q in up.requests}
    assert seen == {"/with": FRONTEND, "/without": "-"}


def identity_sidecar(sidekick, upstream, pki, tmp_path):
    lua = tmp_path / "lua"
    lua.mkdir()
    (lua / "identity.lua").write_text(IDENTITY_LUA)
    up = upstream(echo_handler("app"))
    log = tmp_path / "access.json"
    ssk = server_side(sidekick, pki, up, verify="optional", route_extra="lua = identity.lua\n",
                      extra=f"lua_dir = {lua}\n", access_log=str(log))
    r, _ = tls_get(ssk.port("inbound"), client_ctx(pki, pki.client), "/with")
    assert r.status == 200, r
    r, _ = tls_get(ssk.port("inbound"), client_ctx(pki), "/without")
    assert r.status == 200, r
    assert up.wait_requests(2)
    return ssk, up, log


def test_identity_in_lua(sidekick, upstream, pki, tmp_path):
    ssk, up, log = identity_sidecar(sidekick, upstream, pki, tmp_path)
    seen = {q.path: q.header("x-lua-identity") for q in up.requests}
    assert seen == {"/with": FRONTEND, "/without": "none"}


def test_identity_in_access_log(sidekick, upstream, pki, tmp_path):
    ssk, up, log = identity_sidecar(sidekick, upstream, pki, tmp_path)
    assert wait_for(lambda: len(ssk.access_log_lines(log)) >= 2, WAIT)
    ids = {l["path"]: l.get("identity", "MISSING") for l in ssk.access_log_lines(log)}
    assert ids == {"/with": FRONTEND, "/without": None}
