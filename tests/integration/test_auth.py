"""auth.so (plugins/auth): JWT verification with every algorithm, claims,
API keys, rules, claim headers, through the real binary. Tokens are minted
at test time: HS with Python's hmac, RSA/PSS/EC/Ed25519 with the openssl
CLI (ECDSA DER signatures converted to JWS raw R||S here).

Run by hand with:

    SIDEKICK_BIN=build/sidekick SIDEKICK_BUILD_DIR=build \\
        /usr/bin/python3 -m pytest -q tests/integration/test_auth.py
"""

import base64
import hashlib
import hmac
import json
import os
import re
import ssl
import subprocess
import time
import types
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from certs import PKI
from harness import REPO, RawClient, header_values, http_request, sk_ini

BUILD_DIR = os.environ.get("SIDEKICK_BUILD_DIR", str(REPO / "build"))
SHIPPED_DIR = os.path.join(BUILD_DIR, "plugins")
SECRET = b"0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef"  # 64 bytes: HS512 too
FRONTEND = "spiffe://td.test/ns/shop/sa/frontend"
OPS = "spiffe://td.test/ns/ops/sa/tool"


@pytest.fixture(autouse=True)
def _built():
    if not os.path.exists(os.path.join(SHIPPED_DIR, "auth.so")):
        pytest.fail(f"auth.so not built in {SHIPPED_DIR} (set SIDEKICK_BUILD_DIR)")


def b64u(b: bytes) -> str:
    return base64.urlsafe_b64encode(b).rstrip(b"=").decode()


def openssl(*args, inp=None) -> bytes:
    return subprocess.run(["openssl", *args], input=inp, capture_output=True, check=True,
                          timeout=60).stdout


# ---- DER (just enough for SPKI and ECDSA signatures) ----

def der_read(b: bytes, i: int):
    tag, ln = b[i], b[i + 1]
    i += 2
    if ln & 0x80:
        n = ln & 0x7F
        ln = int.from_bytes(b[i:i + n], "big")
        i += n
    return tag, b[i:i + ln], i + ln


def spki_bits(der: bytes) -> bytes:
    _, seq, _ = der_read(der, 0)
    _, _, i = der_read(seq, 0)            # AlgorithmIdentifier
    tag, bits, _ = der_read(seq, i)       # BIT STRING
    assert tag == 0x03
    return bits[1:]


def ecdsa_der_to_raw(sig: bytes, size: int) -> bytes:
    _, seq, _ = der_read(sig, 0)
    _, r, i = der_read(seq, 0)
    _, s, _ = der_read(seq, i)
    return r.lstrip(b"\0").rjust(size, b"\0") + s.lstrip(b"\0").rjust(size, b"\0")


HASH = {"256": "-sha256", "384": "-sha384", "512": "-sha512"}


class Keys:
    """Key pairs made with the openssl CLI, and a signer per algorithm."""

    def __init__(self, d):
        self.d = d
        self.pem = {}
        for name, args in [("rsa", ["-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:2048"]),
                           ("rsa2", ["-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:2048"]),
                           ("p256", ["-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256"]),
                           ("p384", ["-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-384"]),
                           ("ed", ["-algorithm", "ED25519"])]:
            key = d / f"{name}.key"
            openssl("genpkey", *args, "-out", str(key))
            pub = d / f"{name}.pub"
            openssl("pkey", "-in", str(key), "-pubout", "-out", str(pub))
            self.pem[name] = (key, pub)
        (d / "secret").write_bytes(SECRET + b"\n")

    def der_pub(self, name) -> bytes:
        return openssl("pkey", "-pubin", "-in", str(self.pem[name][1]), "-outform", "DER")

    def jwk(self, name, kid, alg=None, std_b64=False):
        bits = spki_bits(self.der_pub(name))
        enc = (lambda b: base64.b64encode(b).decode()) if std_b64 else b64u
        if name.startswith("rsa"):
            _, seq, _ = der_read(bits, 0)
            _, n, i = der_read(seq, 0)
            _, e, _ = der_read(seq, i)
            k = {"kty": "RSA", "n": enc(n), "e": enc(e)}   # n keeps its sign byte: allowed
        elif name in ("p256", "p384"):
            size = 32 if name == "p256" else 48
            assert bits[0] == 4
            k = {"kty": "EC", "crv": "P-256" if name == "p256" else "P-384",
                 "x": enc(bits[1:1 + size]), "y": enc(bits[1 + size:])}
        else:
            k = {"kty": "OKP", "crv": "Ed25519", "x": enc(bits)}
        k["kid"] = kid
        if alg:
            k["alg"] = alg
        return k

    def sign(self, alg, data: bytes, key=None, der_ecdsa=False) -> bytes:
        fam, bits = alg[:2], alg[2:]
        if fam == "HS":
            return hmac.new(key or SECRET, data, getattr(hashlib, "sha" + bits)).digest()
        m = self.d / "msg"
        m.write_bytes(data)
        if fam in ("RS", "PS"):
            k = self.pem[key or "rsa"][0]
            extra = ["-sigopt", "rsa_padding_mode:pss", "-sigopt", "rsa_pss_saltlen:digest"] \
                if fam == "PS" else []
            return openssl("dgst", HASH[bits], "-sign", str(k), *extra, str(m))
        if fam == "ES":
            k = self.pem[key or ("p256" if bits == "256" else "p384")][0]
            sig = openssl("dgst", HASH[bits], "-sign", str(k), str(m))
            return sig if der_ecdsa else ecdsa_der_to_raw(sig, 32 if bits == "256" else 48)
        assert alg == "EdDSA"
        return openssl("pkeyutl", "-sign", "-inkey", str(self.pem[key or "ed"][0]), "-rawin",
                       "-in", str(m))

    def token(self, alg="HS256", claims=None, header=None, key=None, der_ecdsa=False,
              exp_in=300, sig=None):
        now = int(time.time())
        c = {"sub": "alice", "iss": "https://id.test", "aud": "api", "exp": now + exp_in}
        c.update(claims or {})
        c = {k: v for k, v in c.items() if v is not None}
        h = {"alg": alg, "typ": "JWT"}
        h.update(header or {})
        h = {k: v for k, v in h.items() if v is not None}
        si = b64u(json.dumps(h).encode()) + "." + b64u(json.dumps(c).encode())
        if sig is None:
            sig = self.sign(alg, si.encode(), key, der_ecdsa)
        return si + "." + b64u(sig)


@pytest.fixture(scope="module")
def keys(tmp_path_factory):
    return Keys(tmp_path_factory.mktemp("keys"))


ALL_ALGS = ["HS256", "HS384", "HS512", "RS256", "RS384", "RS512", "PS256", "PS384", "PS512",
            "ES256", "ES384", "EdDSA"]


def ini(keys_text: str, route_extra: str = "", listener: str = None, extra: str = "", workers: int = 1) -> str:
    listener = listener or "[listener main]\naddress = 127.0.0.1:{listen}\n"
    return sk_ini(f"""[plugin auth]
load = auth.so
{keys_text}
{listener}
[route all]
listener = main
cluster = up
plugins = auth
{route_extra}
[cluster up]
endpoints = 127.0.0.1:{{up}}
{extra}""", workers=workers).replace("[sidekick]\n", f"[sidekick]\nplugin_dir = {SHIPPED_DIR}\n", 1)


def get(sk, path="/x", token=None, headers=None, method="GET"):
    h = dict(headers or {})
    if token is not None:
        h["Authorization"] = "Bearer " + token
    return http_request(sk.port("listen"), method, path, headers=h)


def assert_401(r, error=True):
    assert r.status == 401, r
    assert r.header("x-sidekick-reason") == "unauthenticated", r
    www = r.header("www-authenticate")
    assert www is not None and www.startswith("Bearer"), r
    if error:
        assert 'error="invalid_token"' in www, www


def jwks_file(tmp_path, keys, entries):
    p = tmp_path / "jwks.json"
    p.write_text(json.dumps({"keys": entries}))
    return p


@pytest.fixture
def all_keys_sk(sidekick, upstream, keys, tmp_path):
    ents = [keys.jwk("rsa", "rsa"), keys.jwk("p256", "p256"), keys.jwk("p384", "p384"),
            keys.jwk("ed", "ed"),
            {"kty": "oct", "kid": "hs", "k": b64u(SECRET)}]
    jw = jwks_file(tmp_path, keys, ents)
    up = upstream()
    sk = sidekick(ini(f"jwks_file = {jw}\njwt_issuer = https://id.test\njwt_audience = web, api\n"
                      "claim_header = sub:x-user, tenant:x-tenant\n"), up=up.port)
    return sk, up


KID = {"HS": "hs", "RS": "rsa", "PS": "rsa", "ES": None, "Ed": "ed"}


@pytest.mark.parametrize("alg", ALL_ALGS)
def test_every_algorithm_verifies(all_keys_sk, keys, alg):
    sk, up = all_keys_sk
    kid = KID[alg[:2]] or ("p256" if alg == "ES256" else "p384")
    tok = keys.token(alg, header={"kid": kid}, claims={"tenant": "t1"})
    r = get(sk, token=tok, headers={"X-User": "mallory", "X-Tenant": "forged"})
    assert r.status == 200, r
    [q] = up.requests
    assert q.header_all("x-user") == ["alice"]
    assert q.header_all("x-tenant") == ["t1"]
    assert q.header_all("authorization") == []            # strip_credentials on by default
    # tampered payload: same header and signature, another subject
    h, p, s = tok.split(".")
    forged = h + "." + b64u(json.dumps({"sub": "root", "iss": "https://id.test", "aud": "api",
                                        "exp": int(time.time()) + 300}).encode()) + "." + s
    assert_401(get(sk, token=forged))
    # a flipped signature byte
    raw = bytearray(base64.urlsafe_b64decode(s + "=" * (-len(s) % 4)))
    raw[len(raw) // 2] ^= 1
    assert_401(get(sk, token=h + "." + p + "." + b64u(bytes(raw))))
    assert len(up.requests) == 1


def test_keys_without_kid_by_kty(sidekick, upstream, keys, tmp_path):
    # no kid in tokens or keys, no alg in keys, standard base64 in the JWK
    ents = [keys.jwk("rsa", None, std_b64=True), keys.jwk("p256", None, std_b64=True)]
    for e in ents:
        e.pop("kid")
    up = upstream()
    sk = sidekick(ini(f"jwks_file = {jwks_file(tmp_path, keys, ents)}\n"), up=up.port)
    for alg in ("RS256", "PS384", "ES256"):
        assert get(sk, token=keys.token(alg)).status == 200, alg
    # keys without a kid serve tokens that carry one
    assert get(sk, token=keys.token("RS256", header={"kid": "whatever"})).status == 200
    # a key the set does not hold
    assert_401(get(sk, token=keys.token("RS256", key="rsa2")))
    assert_401(get(sk, token=keys.token("RS256", key="rsa2", header={"kid": "whatever"})))
    assert_401(get(sk, token=keys.token("ES384")))
    assert len(up.requests) == 4


def test_refusals(all_keys_sk, keys):
    sk, up = all_keys_sk
    now = int(time.time())
    si = lambda h, c: b64u(json.dumps(h).encode()) + "." + b64u(json.dumps(c).encode())
    claims = {"sub": "a", "iss": "https://id.test", "aud": "api", "exp": now + 300}
    cases = {
        "alg none": si({"alg": "none"}, claims) + ".",
        "alg none with sig": si({"alg": "none"}, claims) + "." + b64u(b"x"),
        "empty signature": si({"alg": "HS256", "kid": "hs"}, claims) + ".",
        "jwe": si({"alg": "RSA-OAEP", "enc": "A256GCM"}, claims) + ".a.b.c",
        "enc in a jws": keys.token("HS256", header={"kid": "hs", "enc": "A128GCM"}),
        "crit": keys.token("HS256", header={"kid": "hs", "crit": ["x"]}),
        "DER ES256": keys.token("ES256", header={"kid": "p256"}, der_ecdsa=True),
        "expired": keys.token("HS256", header={"kid": "hs"}, exp_in=-3600),
        "wrong audience": keys.token("HS256", header={"kid": "hs"}, claims={"aud": "other"}),
        "wrong audience list": keys.token("HS256", header={"kid": "hs"}, claims={"aud": ["x", "y"]}),
        "wrong issuer": keys.token("HS256", header={"kid": "hs"}, claims={"iss": "https://evil"}),
        "no exp": keys.token("HS256", header={"kid": "hs"}, claims={"exp": None}),
        "string exp": keys.token("HS256", header={"kid": "hs"}, claims={"exp": str(now + 300)}),
        "unknown kid": keys.token("HS256", header={"kid": "nope"}),
        "two parts": "a.b",
        "garbage": "not a token",
        "padded b64": keys.token("HS256", header={"kid": "hs"}) + "==",
    }
    # algorithm confusion: HS256 signed with the RSA public key (PEM, as a secret), kid of the RSA key
    pem = keys.pem["rsa"][1].read_bytes()
    cases["confused alg"] = keys.token("HS256", header={"kid": "rsa"}, key=pem)
    cases["confused alg no kid"] = keys.token("HS256", header={"kid": None}, key=pem)
    for name, tok in cases.items():
        r = get(sk, token=tok)
        assert r.status == 401, (name, r)
        assert_401(r)
        assert tok not in r.header("www-authenticate") and tok.encode() not in r.body, name
    # audience as an array with one listed audience, issuer right
    assert get(sk, token=keys.token("HS256", header={"kid": "hs"},
                                    claims={"aud": ["x", "web"]})).status == 200
    assert len(up.requests) == 1
    # the decisions counter
    text = sk.admin_get("/metrics").body.decode()
    assert re.search(r'sidekick_plugin_auth_decisions_total\{instance="auth",result="allowed"\} 1\b', text), text
    assert re.search(r'sidekick_plugin_auth_decisions_total\{instance="auth",result="bad_alg"\} [1-9]', text)
    assert re.search(r'sidekick_plugin_auth_decisions_total\{instance="auth",result="expired"\} 1\b', text)


def test_jwt_algorithms_limits(sidekick, upstream, keys, tmp_path):
    ents = [keys.jwk("rsa", "rsa"), {"kty": "oct", "kid": "hs", "k": b64u(SECRET)}]
    up = upstream()
    sk = sidekick(ini(f"jwks_file = {jwks_file(tmp_path, keys, ents)}\njwt_algorithms = RS256\n"),
                  up=up.port)
    assert get(sk, token=keys.token("RS256", header={"kid": "rsa"})).status == 200
    assert_401(get(sk, token=keys.token("HS256", header={"kid": "hs"})))
    assert_401(get(sk, token=keys.token("PS256", header={"kid": "rsa"})))
    assert len(up.requests) == 1


def test_pem_key_and_confusion(sidekick, upstream, keys):
    up = upstream()
    sk = sidekick(ini(f"jwt_key = {keys.pem['rsa'][1]}\n"), up=up.port)
    assert get(sk, token=keys.token("RS512")).status == 200
    # a PEM key has no kid: it serves tokens whatever kid their issuer put in them
    assert get(sk, token=keys.token("RS256", header={"kid": "idp-2026-12"})).status == 200
    pem = keys.pem["rsa"][1].read_bytes()
    assert_401(get(sk, token=keys.token("HS256", key=pem)))
    assert_401(get(sk, token=keys.token("HS256", key=pem, header={"kid": "idp-2026-12"})))
    assert_401(get(sk, token=keys.token("HS256", key=pem.strip())))
    assert_401(get(sk, token=keys.token("HS256")))
    assert len(up.requests) == 2


def test_hs_secret_file(sidekick, upstream, keys):
    up = upstream()
    sk = sidekick(ini(f"jwt_key = {keys.d / 'secret'}\n"), up=up.port)
    assert get(sk, token=keys.token("HS512")).status == 200
    assert get(sk, token=keys.token("HS256", header={"kid": "any"})).status == 200
    assert_401(get(sk, token=keys.token("HS256", key=b"another-secret-another-secret-xx")))
    assert_401(get(sk, token=keys.token("RS256")))
    assert len(up.requests) == 2


def wait_second_start():
    """Waits (bounded) until a second just began, so that a token minted now
    and checked at once is checked within the same second."""
    for _ in range(200):
        if 0.05 < time.time() % 1.0 < 0.3:
            return
        time.sleep(0.01)


@pytest.mark.parametrize("claim,offset,ok", [
    ("exp", -9, True), ("exp", -10, True), ("exp", -11, False),
    ("nbf", 9, True), ("nbf", 10, True), ("nbf", 11, False),
])
def test_leeway_edges(sidekick, upstream, keys, claim, offset, ok):
    up = upstream()
    sk = sidekick(ini(f"jwt_key = {keys.d / 'secret'}\njwt_leeway = 10s\n"), up=up.port)
    wait_second_start()
    now = int(time.time())
    c = {"exp": now + offset} if claim == "exp" else {"nbf": now + offset, "exp": now + 300}
    r = get(sk, token=keys.token("HS256", claims=c))
    assert (r.status == 200) == ok, r
    if not ok:
        assert_401(r)


def test_require_exp_off_and_sources(sidekick, upstream, keys):
    up = upstream()
    sk = sidekick(ini(f"jwt_key = {keys.d / 'secret'}\njwt_require_exp = off\n"
                      "jwt_from = header:x-token, cookie:tok, header:authorization\n"), up=up.port)
    tok = keys.token("HS256", claims={"exp": None})
    assert get(sk, headers={"X-Token": tok}).status == 200
    assert get(sk, headers={"Cookie": f"a=1; tok={tok}; b=2"}).status == 200
    assert get(sk, token=tok).status == 200
    assert_401(get(sk, headers={"Authorization": "Basic dXNlcjpwdw=="}), error=False)
    assert_401(get(sk), error=False)
    assert_401(get(sk, token=keys.token("HS256", claims={"exp": "soon"})))
    qs = up.requests
    assert len(qs) == 3
    assert qs[0].header_all("x-token") == []
    assert qs[1].header_all("cookie") == ["a=1; b=2"]
    assert qs[2].header_all("authorization") == []


def test_query_source_needs_strip_off(sidekick, upstream, keys, sidekick_bin, tmp_path):
    bad = tmp_path / "bad.ini"
    bad.write_text(ini(f"jwt_key = {keys.d / 'secret'}\njwt_from = query:access_token\n")
                   .replace("{listen}", "1").replace("{up}", "2").replace("{admin}", "3"))
    r = subprocess.run([sidekick_bin, "-t", "-c", str(bad)], capture_output=True, text=True, timeout=30)
    assert r.returncode != 0 and "strip_credentials" in r.stderr + r.stdout, r
    up = upstream()
    sk = sidekick(ini(f"jwt_key = {keys.d / 'secret'}\njwt_from = query:access_token\n"
                      "strip_credentials = off\n"), up=up.port)
    tok = keys.token("HS256")
    assert get(sk, path=f"/q?x=1&access_token={tok}").status == 200
    assert_401(get(sk, path="/q?access_token=abc.def.ghi"))
    assert len(up.requests) == 1


def test_allow_missing_removes_forged_claim_headers(sidekick, upstream, keys):
    up = upstream()
    sk = sidekick(ini(f"jwt_key = {keys.d / 'secret'}\nallow_missing = on\n"
                      "claim_header = sub:x-user\nrule = deny prefix=/admin\nrule = allow prefix=/\n"),
                  up=up.port)
    r = get(sk, path="/open", headers={"X-User": "admin"})
    assert r.status == 200, r
    assert up.requests[0].header_all("x-user") == []
    assert get(sk, path="/admin/x").status == 403
    assert_401(get(sk, token="bad.token.here"))           # invalid credentials still refused
    assert len(up.requests) == 1


def test_api_keys_and_rules(sidekick, upstream, keys, tmp_path):
    kf = tmp_path / "api-keys.txt"
    kf.write_text("# key consumer\nk-alpha-123 alpha\n\nk-beta-456\tbeta\n")
    up = upstream()
    sk = sidekick(ini(f"api_keys_file = {kf}\njwt_key = {keys.d / 'secret'}\n"
                      "rule = allow consumer=alpha method=GET|HEAD prefix=/orders\n"
                      "rule = allow claim.scope=orders:write method=POST path=/orders\n"
                      "rule = allow consumer=beta prefix=/beta/\n"
                      "default = deny\n"), up=up.port)
    k = lambda key: {"X-Api-Key": key}
    assert get(sk, "/orders", headers=k("k-alpha-123")).status == 200
    assert get(sk, "/orders/7", headers=k("k-alpha-123")).status == 200
    assert get(sk, "/ordersx", headers=k("k-alpha-123")).status == 403      # prefix is segment-aware
    assert get(sk, "/orders", headers=k("k-alpha-123"), method="DELETE").status == 403
    assert get(sk, "/beta/x", headers=k("k-beta-456")).status == 200
    assert get(sk, "/orders", headers=k("k-beta-456")).status == 403
    assert_401(get(sk, "/orders", headers=k("k-alpha-12")))
    assert_401(get(sk, "/orders", headers=k("k-alpha-1234")))
    assert_401(get(sk, "/orders"), error=False)
    w = keys.token("HS256", claims={"scope": "orders:read orders:write"})
    r_ = keys.token("HS256", claims={"scope": "orders:read"})
    assert get(sk, "/orders", token=w, method="POST").status == 200
    assert get(sk, "/orders", token=r_, method="POST").status == 403
    assert get(sk, "/orders/1", token=w, method="POST").status == 403       # path= is exact
    r = get(sk, "/forbidden", headers=k("k-alpha-123"))
    assert r.status == 403 and r.header("x-sidekick-reason") == "forbidden", r
    qs = up.requests
    assert [q.path for q in qs] == ["/orders", "/orders/7", "/beta/x", "/orders"]
    assert all(q.header_all("x-api-key") == [] for q in qs)


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    p = PKI(tmp_path_factory.mktemp("pki"))
    ns = types.SimpleNamespace()
    ns.ca = p.ca("ca")
    ns.server = p.leaf("server", ns.ca, uris=["spiffe://td.test/ns/app/sa/backend"], dns=["app.test"])
    ns.frontend = p.leaf("frontend", ns.ca, uris=[FRONTEND])
    ns.ops = p.leaf("ops", ns.ca, uris=[OPS])
    return ns


def tls_get(sk, pki, leaf, method, path):
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.load_verify_locations(cafile=str(pki.ca.cert))
    ctx.load_cert_chain(str(leaf.cert), str(leaf.key))
    import socket
    raw = socket.create_connection(("127.0.0.1", sk.port("listen")), timeout=10)
    c = RawClient.__new__(RawClient)
    c.sock = ctx.wrap_socket(raw, server_hostname="app.test")
    c.buf = bytearray()
    c.eof = False
    try:
        return c.request(method, path)
    finally:
        c.sock.close()


def test_identity_rules_over_mtls(sidekick, upstream, pki):
    up = upstream()
    listener = ("[listener main]\naddress = 127.0.0.1:{listen}\ntls = srv\n")
    extra = (f"\n[tls srv]\ncert = {pki.server.cert}\nkey = {pki.server.key}\nca = {pki.ca.cert}\n"
             "verify = required\n")
    sk = sidekick(ini(f"rule = allow identity={FRONTEND} method=POST prefix=/orders\n"
                      "rule = allow identity=spiffe://td.test/ns/ops/* method=GET\n"
                      "rule = allow identity=spiffe://td.test/* path=/health\n",
                      listener=listener, extra=extra), up=up.port)
    assert tls_get(sk, pki, pki.frontend, "POST", "/orders").status == 200
    assert tls_get(sk, pki, pki.frontend, "GET", "/orders").status == 403
    assert tls_get(sk, pki, pki.ops, "POST", "/orders").status == 403
    assert tls_get(sk, pki, pki.ops, "GET", "/anything").status == 200
    assert tls_get(sk, pki, pki.frontend, "GET", "/health").status == 200
    assert [(q.method, q.path) for q in up.requests] == [("POST", "/orders"), ("GET", "/anything"),
                                                         ("GET", "/health")]


def test_cache_serves_repeats_and_expires_with_the_token(sidekick, upstream, keys):
    up = upstream()
    sk = sidekick(ini(f"jwt_key = {keys.pem['p256'][1]}\njwt_leeway = 0s\n"), up=up.port)
    wait_second_start()
    exp = int(time.time()) + 1
    tok = keys.token("ES256", claims={"exp": exp})
    for _ in range(20):
        assert get(sk, token=tok).status == 200
    # the cached entry goes with the token's exp: past it, the same token is refused
    for _ in range(300):
        if time.time() >= exp + 1.05:
            break
        time.sleep(0.01)
    r = get(sk, token=tok)
    assert_401(r)
    assert "expired" in r.header("www-authenticate")
    assert len(up.requests) == 20


def test_api_keys_reread_on_reload(sidekick, upstream, tmp_path):
    kf = tmp_path / "keys.txt"
    kf.write_text("old-key-1 one\n")
    up = upstream()
    sk = sidekick(ini(f"api_keys_file = {kf}\n"), up=up.port)
    assert get(sk, headers={"X-Api-Key": "old-key-1"}).status == 200
    kf.write_text("new-key-2 two\n")
    r = http_request(sk.admin_port, "POST", "/reload", body=b"", timeout=30)
    assert r.status == 200, r
    assert json.loads(r.body)["ok"] is True
    assert get(sk, headers={"X-Api-Key": "new-key-2"}).status == 200
    assert_401(get(sk, headers={"X-Api-Key": "old-key-1"}))
    assert len(up.requests) == 2


def test_config_errors(sidekick_bin, tmp_path, keys):
    cases = [
        ("jwt_algorithms = none\njwt_key = {s}\n", "unknown algorithm"),
        ("jwt_key = /nonexistent/key\n", "cannot read"),
        ("jwks_url = ftp://127.0.0.1:1/jwks\n", "an http:// or https:// URL"),
        ("jwks_url = http://127.0.0.1:1/jwks\njwks_refresh = 0s\n", "at least 1s"),
        ("jwks_url = http://127.0.0.1:1/jwks\njwt_key = {s}\n", "one of"),
        ("frobnicate = 1\njwt_key = {s}\n", "unknown key"),
        ("rule = permit prefix=/\n", "allow or deny"),
        ("rule = allow size=3\n", "unknown condition"),
        ("", "nothing to check"),
    ]
    for text, msg in cases:
        p = tmp_path / "c.ini"
        p.write_text(ini(text.format(s=keys.d / "secret")).replace("{listen}", "1")
                     .replace("{up}", "2").replace("{admin}", "3"))
        r = subprocess.run([sidekick_bin, "-t", "-c", str(p)], capture_output=True, text=True, timeout=30)
        assert r.returncode != 0 and msg in r.stderr + r.stdout, (text, r.stderr)


class JwksServer:
    """A JWK set over HTTP on 127.0.0.1 (free port), its document replaceable,
    its GETs counted. tls = (chain, key[, client CA]): https, and with a
    client CA, a client certificate signed by it is required."""

    def __init__(self, tls=None):
        self.doc = b"{}"
        self.status = 200
        self.hits = 0
        self.lock = threading.Lock()
        outer = self

        class H(BaseHTTPRequestHandler):
            def do_GET(self):
                with outer.lock:
                    outer.hits += 1
                    body, status = outer.doc, outer.status
                self.send_response(status)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *a):
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), H)
        if tls:
            ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            ctx.load_cert_chain(str(tls[0]), str(tls[1]))
            if len(tls) > 2:
                ctx.verify_mode = ssl.CERT_REQUIRED
                ctx.load_verify_locations(str(tls[2]))
            self.httpd.socket = ctx.wrap_socket(self.httpd.socket, server_side=True)
        self.port = self.httpd.server_address[1]
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def set(self, keys, status=200, raw=None):
        with self.lock:
            self.doc = raw if raw is not None else json.dumps({"keys": keys}).encode()
            self.status = status

    def count(self):
        with self.lock:
            return self.hits

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def jwks_server():
    s = JwksServer()
    yield s
    s.close()


def fetches(sk, result):
    text = sk.admin_get("/metrics").body.decode()
    m = re.search(r'sidekick_plugin_auth_jwks_fetches_total\{instance="auth",result="%s"\} (\d+)' % result, text)
    return int(m.group(1)) if m else 0


def wait(pred, what, timeout=10.0):
    end = time.time() + timeout
    while time.time() < end:
        if pred():
            return
        time.sleep(0.05)
    raise AssertionError("timed out waiting for " + what)


def test_jwks_url_rotation_and_refetch_limit(sidekick, upstream, keys, jwks_server):
    jwks_server.set([keys.jwk("rsa", "k1")])
    up = upstream()
    sk = sidekick(ini(f"jwks_url = http://127.0.0.1:{jwks_server.port}/jwks.json\njwks_refresh = 10m\n"),
                  up=up.port)
    wait(lambda: fetches(sk, "ok") == 1, "the first fetch")
    assert get(sk, token=keys.token("RS256", header={"kid": "k1"})).status == 200
    # rotation: k2 appears at the URL; its first token is refused (unknown kid) and triggers one refetch
    jwks_server.set([keys.jwk("rsa", "k1"), keys.jwk("p256", "k2")])
    tok2 = keys.token("ES256", header={"kid": "k2"})
    r = get(sk, token=tok2)
    assert_401(r)
    assert "unknown_key" in r.header("www-authenticate")
    wait(lambda: fetches(sk, "ok") == 2, "the unknown-kid refetch")
    assert get(sk, token=tok2).status == 200
    assert get(sk, token=keys.token("RS256", header={"kid": "k1"})).status == 200
    # 100 forged kids within 30 s of that refetch: no further fetch
    hits = jwks_server.count()
    for i in range(100):
        assert_401(get(sk, token=keys.token("ES256", header={"kid": f"forged-{i}"})))
    time.sleep(2.5)  # more than two polls of the main loop (1 s each)
    assert jwks_server.count() == hits
    assert fetches(sk, "ok") == 2
    assert len(up.requests) == 3


def test_jwks_url_forged_kids_cause_one_fetch(sidekick, upstream, keys, jwks_server):
    jwks_server.set([keys.jwk("rsa", "k1")])
    up = upstream()
    sk = sidekick(ini(f"jwks_url = http://127.0.0.1:{jwks_server.port}/jwks.json\n"), up=up.port)
    wait(lambda: fetches(sk, "ok") == 1, "the first fetch")
    for i in range(100):
        assert_401(get(sk, token=keys.token("RS256", header={"kid": f"forged-{i}"})))
    wait(lambda: fetches(sk, "ok") == 2, "one refetch")
    time.sleep(2.5)
    assert jwks_server.count() == 2
    assert len(up.requests) == 0


def test_jwks_url_failed_refresh_keeps_keys(sidekick, upstream, keys, jwks_server):
    jwks_server.set([keys.jwk("ed", "e1")])
    up = upstream()
    sk = sidekick(ini(f"jwks_url = http://127.0.0.1:{jwks_server.port}/jwks.json\njwks_refresh = 1s\n"),
                  up=up.port)
    wait(lambda: fetches(sk, "ok") >= 1, "the first fetch")
    tok = keys.token("EdDSA", header={"kid": "e1"})
    assert get(sk, token=tok).status == 200
    jwks_server.set(None, raw=b'{"keys": [')            # malformed
    wait(lambda: fetches(sk, "failed") >= 1, "a failed refresh")
    assert get(sk, token=keys.token("EdDSA", header={"kid": "e1"}, claims={"n": 1})).status == 200
    jwks_server.set([], status=500)
    wait(lambda: fetches(sk, "failed") >= 2, "a second failed refresh")
    assert get(sk, token=keys.token("EdDSA", header={"kid": "e1"}, claims={"n": 2})).status == 200
    assert "keeping the last key set" in sk.stderr_text()
    # a good set again replaces it: e1 is gone
    jwks_server.set([keys.jwk("p256", "p1")])
    n = fetches(sk, "ok")
    wait(lambda: fetches(sk, "ok") > n, "a good refresh")
    assert_401(get(sk, token=keys.token("EdDSA", header={"kid": "e1"}, claims={"n": 3})))
    assert_401(get(sk, token=tok))                        # the cached token went with its key set
    assert get(sk, token=keys.token("ES256", header={"kid": "p1"})).status == 200


def test_two_workers_share_the_key_set_while_it_refreshes(sidekick, upstream, keys, jwks_server):
    ents = [keys.jwk("rsa", "r"), keys.jwk("p256", "e"), keys.jwk("ed", "d"),
            {"kty": "oct", "kid": "h", "k": b64u(SECRET)}]
    jwks_server.set(ents)
    up = upstream()
    sk = sidekick(ini(f"jwks_url = http://127.0.0.1:{jwks_server.port}/jwks.json\njwks_refresh = 1s\n",
                      workers=2), up=up.port)
    wait(lambda: fetches(sk, "ok") >= 1, "the first fetch")
    toks = [keys.token(a, header={"kid": k}, claims={"i": i})
            for i in range(10) for a, k in (("RS256", "r"), ("PS256", "r"), ("ES256", "e"),
                                            ("EdDSA", "d"), ("HS256", "h"))]
    bad = []

    def client(part):
        for t in part:
            for _ in range(2):
                r = get(sk, token=t)
                if r.status != 200:
                    bad.append(r)

    n0 = fetches(sk, "ok")
    threads = [threading.Thread(target=client, args=(toks[i::4],)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    wait(lambda: fetches(sk, "ok") > n0, "a refresh during the run")
    assert bad == []
    assert len(up.requests) == 2 * len(toks)


def with_sidekick_keys(text: str, lines: str) -> str:
    return text.replace("[sidekick]\n", "[sidekick]\n" + lines, 1)


def test_jwks_url_https(sidekick, upstream, keys, tmp_path):
    """jwks_url over https: the server's certificate is verified against
    [sidekick] http_client_ca (and its name against the URL's host); an
    untrusted or misnamed server keeps the key set away (401 unknown_key,
    the fetch counted as failed, the reason logged)."""
    pki = PKI(tmp_path / "pki")
    ca, other = pki.ca("idp-ca"), pki.ca("other-ca")
    good = pki.leaf("idp", ca, dns=["localhost"], ips=["127.0.0.1"])
    misnamed = pki.leaf("idp-elsewhere", ca, dns=["idp.example"])
    srv, bad_name = JwksServer(tls=(good.chain, good.key)), JwksServer(tls=(misnamed.chain, misnamed.key))
    try:
        for s in (srv, bad_name):
            s.set([keys.jwk("rsa", "k1")])
        tok = keys.token("RS256", header={"kid": "k1"})
        up = upstream()
        sk = sidekick(with_sidekick_keys(ini(f"jwks_url = https://127.0.0.1:{srv.port}/jwks.json\n"),
                                         f"http_client_ca = {ca.cert}\n"), up=up.port)
        wait(lambda: fetches(sk, "ok") == 1, "the https fetch")
        assert get(sk, token=tok).status == 200
        assert srv.count() == 1
        assert len(up.requests) == 1
        sk.stop()
        # trusting another CA, or the system's bundle: the handshake fails
        for extra in (f"http_client_ca = {other.cert}\n", ""):
            sk = sidekick(with_sidekick_keys(ini(f"jwks_url = https://127.0.0.1:{srv.port}/jwks.json\n"),
                                             extra), up=up.port)
            wait(lambda: fetches(sk, "failed") >= 1, "the refused fetch")
            r = get(sk, token=tok)
            assert_401(r)
            assert "unknown_key" in r.header("www-authenticate")
            sk.stop()
            assert "TLS handshake or certificate verification failed" in sk.stderr_text()
        # the right CA, but the certificate names another host
        sk = sidekick(with_sidekick_keys(ini(f"jwks_url = https://127.0.0.1:{bad_name.port}/jwks.json\n"),
                                         f"http_client_ca = {ca.cert}\n"), up=up.port)
        wait(lambda: fetches(sk, "failed") >= 1, "the misnamed fetch")
        assert_401(get(sk, token=tok))
        sk.stop()
        assert "TLS handshake or certificate verification failed" in sk.stderr_text()
        assert srv.count() == 1
        assert len(up.requests) == 1
    finally:
        srv.close()
        bad_name.close()


def test_jwks_url_https_client_certificate(sidekick, upstream, keys, tmp_path):
    """A JWKS server that wants a client certificate gets
    http_client_cert/http_client_key; without them it refuses the fetch."""
    pki = PKI(tmp_path / "pki")
    ca = pki.ca("cp-ca")
    server = pki.leaf("cp", ca, ips=["127.0.0.1"])
    client = pki.leaf("sidecar", ca, uris=["spiffe://test/sidecar"], own_key=True)
    srv = JwksServer(tls=(server.chain, server.key, ca.cert))
    try:
        srv.set([keys.jwk("rsa", "k1")])
        tok = keys.token("RS256", header={"kid": "k1"})
        up = upstream()
        url = f"jwks_url = https://127.0.0.1:{srv.port}/jwks.json\n"
        sk = sidekick(with_sidekick_keys(ini(url), f"http_client_ca = {ca.cert}\n"
                                         f"http_client_cert = {client.cert}\nhttp_client_key = {client.key}\n"),
                      up=up.port)
        wait(lambda: fetches(sk, "ok") == 1, "the fetch with a client certificate")
        assert get(sk, token=tok).status == 200
        sk.stop()
        sk = sidekick(with_sidekick_keys(ini(url), f"http_client_ca = {ca.cert}\n"), up=up.port)
        wait(lambda: fetches(sk, "failed") >= 1, "the fetch without one")
        assert_401(get(sk, token=tok))
        assert srv.count() == 1
        assert len(up.requests) == 1
    finally:
        srv.close()


def test_http_client_tls_config_errors(tmp_path, sidekick_bin, keys):
    pki = PKI(tmp_path / "pki")
    ca = pki.ca("ca")
    leaf = pki.leaf("c", ca, own_key=True)
    cases = [
        (f"http_client_ca = {tmp_path}/missing.pem\n", "cannot read"),
        (f"http_client_cert = {leaf.cert}\n", "http_client_cert and http_client_key go together"),
        (f"http_client_key = {leaf.key}\n", "http_client_cert and http_client_key go together"),
    ]
    for lines, msg in cases:
        p = tmp_path / "c.ini"
        p.write_text(with_sidekick_keys(ini(f"jwt_key = {keys.d / 'secret'}\n"), lines)
                     .replace("{listen}", "1").replace("{up}", "2").replace("{admin}", "3"))
        r = subprocess.run([sidekick_bin, "-t", "-c", str(p)], capture_output=True, text=True, timeout=30)
        assert r.returncode != 0 and msg in r.stderr + r.stdout, (lines, r.stderr)
