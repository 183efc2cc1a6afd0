"""Request normalisation before routing (DESIGN.md "Request normalisation"):
dot segments, percent-decoding, merge_slashes, escaped_slashes, refused
paths, rewrite_prefix on the normalised path, absolute-form authority over
Host, invalid Host, HTTP/1.0 with Transfer-Encoding, and a client-sent
x-forwarded-client-cert. Raw sockets throughout (http.client and curl
normalise some of these themselves); every case asserts what the upstream
received, or that it received nothing."""

import pytest

from harness import RawClient, assert_local_reply, build_request, echo_handler, raw_exchange, sk_ini

ROUTES = """\
[listener main]
address = 127.0.0.1:{listen}
{listener_extra}

[route deny]
listener = main
prefix = /admin
respond = 403 denied

[route api]
listener = main
prefix = /api/
rewrite_prefix = /v1/
cluster = api

[route a-host]
listener = main
host = a.example
cluster = a

[route rest]
listener = main
cluster = up

[cluster up]
endpoints = 127.0.0.1:{up}

[cluster api]
endpoints = 127.0.0.1:{api}

[cluster a]
endpoints = 127.0.0.1:{a}
"""


@pytest.fixture
def mesh(sidekick, upstream):
    """mesh(listener_extra="") -> (Sidekick, {"up", "api", "a": Upstream})."""
    def make(listener_extra=""):
        ups = {n: upstream(echo_handler(n), name=n) for n in ("up", "api", "a")}
        body = ROUTES.replace("{listener_extra}", listener_extra)
        sk = sidekick(sk_ini(body), up=ups["up"].port, api=ups["api"].port, a=ups["a"].port)
        return sk, ups
    return make


def raw_get(sk, target, headers=None, host="test.local", version="HTTP/1.1"):
    """One request on a new connection: (Response or None, closed afterwards)."""
    hdrs = ([("Host", host)] if host is not None else []) + list(headers or [])
    head = f"GET {target} {version}\r\n" + "".join(f"{n}: {v}\r\n" for n, v in hdrs) + "\r\n"
    return raw_exchange(sk.port("listen"), head.encode("latin-1"))


def received(ups):
    return {n: [q.target for q in u.requests] for n, u in ups.items() if u.requests}


# --------------------------------------------------------------------------
# the deny route cannot be bypassed


@pytest.mark.parametrize("target", [
    "/admin",
    "/public/../admin",
    "/./admin/x",
    "/public/%2E%2E/admin",
    "/public/%2e%2e/admin/x",
    "/public/.%2e/admin",
    "/%2e/admin",
    "/%61dmin",                  # %61 = "a": unreserved, decoded
    "/public/./../admin?x=/../y",
    "/a/b/../../admin",
])
def test_dot_segments_and_encodings_cannot_bypass_deny(mesh, target):
    sk, ups = mesh()
    resp, _ = raw_get(sk, target)
    assert resp is not None and resp.status == 403, resp
    assert resp.body == b"denied"
    assert received(ups) == {}
    assert all(u.accepted == 0 for u in ups.values())


def test_dotdot_above_root_is_refused(mesh):
    sk, ups = mesh()
    for target in ("/..", "/%2e%2e/admin", "/../admin", "/a/../../admin", "/%2E%2E"):
        resp, closed = raw_get(sk, target)
        assert_local_reply(resp, 400, "bad_request")
        assert closed, target
    assert all(u.accepted == 0 for u in ups.values())


def test_normalised_path_reaches_upstream(mesh):
    sk, ups = mesh()
    for target in ("/public/x/../y", "/p/./q/.", "/%7euser/%41b%2d", "/c%c3%a9?q=%2e%2e/../&x=%2F"):
        resp, _ = raw_get(sk, target)
        assert resp.status == 200, resp
    assert received(ups) == {"up": ["/public/y", "/p/q/", "/~user/Ab-", "/c%C3%A9?q=%2e%2e/../&x=%2F"]}


# --------------------------------------------------------------------------
# merge_slashes


def test_double_slash_kept_by_default(mesh):
    sk, ups = mesh()
    resp, _ = raw_get(sk, "//admin")
    assert resp.status == 200, resp
    assert received(ups) == {"up": ["//admin"]}


def test_double_slash_merged_when_on(mesh):
    sk, ups = mesh("merge_slashes = on")
    resp, _ = raw_get(sk, "//admin")
    assert resp.status == 403 and resp.body == b"denied", resp
    resp, _ = raw_get(sk, "/x//..//admin")
    assert resp.status == 403, resp
    resp, _ = raw_get(sk, "//public///y//")
    assert resp.status == 200, resp
    assert received(ups) == {"up": ["/public/y/"]}


# --------------------------------------------------------------------------
# escaped_slashes


def test_escaped_slash_rejected_by_default(mesh):
    sk, ups = mesh()
    for target in ("/a%2Fb", "/a%2fb", "/public%2F..%2Fadmin"):
        resp, closed = raw_get(sk, target)
        assert_local_reply(resp, 400, "bad_request")
        assert closed
    assert all(u.accepted == 0 for u in ups.values())


def test_escaped_slash_keep(mesh):
    sk, ups = mesh("escaped_slashes = keep")
    for target in ("/a%2fb", "/x/..%2F..%2Fadmin"):
        resp, _ = raw_get(sk, target)
        assert resp.status == 200, resp
    # kept encoded (canonical upper-case hex), one segment: not a dot segment
    assert received(ups) == {"up": ["/a%2Fb", "/x/..%2F..%2Fadmin"]}


def test_escaped_slash_decode(mesh):
    sk, ups = mesh("escaped_slashes = decode")
    resp, _ = raw_get(sk, "/a%2fb")
    assert resp.status == 200, resp
    resp, _ = raw_get(sk, "/public%2F..%2Fadmin")    # decoded, then ".." applies
    assert resp.status == 403, resp
    assert received(ups) == {"up": ["/a/b"]}


# --------------------------------------------------------------------------
# refused paths


@pytest.mark.parametrize("target", ["/a%00b", "/%00", "/a%", "/a%4", "/a%zz", "/a%%41"])
def test_nul_and_bad_escapes_refused(mesh, target):
    sk, ups = mesh()
    resp, closed = raw_get(sk, target)
    assert_local_reply(resp, 400, "bad_request")
    assert closed
    assert all(u.accepted == 0 for u in ups.values())


def test_refusal_logged_with_reason(sidekick, upstream):
    up = upstream(echo_handler("up"))
    sk = sidekick(sk_ini("[listener main]\naddress = 127.0.0.1:{listen}\n[route r]\nlistener = main\n"
                         "cluster = up\n[cluster up]\nendpoints = 127.0.0.1:{up}\n")
                  .replace("log_level = info", "log_level = debug"), up=up.port)
    for target in ("/a%00", "/..", "/a%2Fb"):
        resp, _ = raw_exchange(sk.port("listen"), build_request("GET", target))
        assert_local_reply(resp, 400, "bad_request")
    err = sk.stderr_text()
    assert "encoded NUL" in err and "climbs above" in err and "encoded slash" in err, err[-2000:]
    assert up.accepted == 0


# --------------------------------------------------------------------------
# rewrite_prefix works on the normalised path


def test_rewrite_prefix_after_normalisation(mesh):
    sk, ups = mesh()
    resp, _ = raw_get(sk, "/api/../secret")
    assert resp.status == 200 and resp.body.startswith(b"up "), resp   # the catch-all, not api
    resp, _ = raw_get(sk, "/api/x/../users?id=1")
    assert resp.status == 200 and resp.body.startswith(b"api "), resp
    resp, _ = raw_get(sk, "/x/../api/%7eme")
    assert resp.status == 200 and resp.body.startswith(b"api "), resp
    assert received(ups) == {"up": ["/secret"], "api": ["/v1/users?id=1", "/v1/~me"]}


# --------------------------------------------------------------------------
# Host and absolute-form


def test_absolute_form_authority_wins_over_host(mesh):
    sk, ups = mesh()
    resp, _ = raw_get(sk, "http://a.example/x", host="b.example")
    assert resp.status == 200 and resp.body.startswith(b"a "), resp
    resp, _ = raw_get(sk, "http://a.example:8080/z/../y?q", host="b.example")
    assert resp.status == 200 and resp.body.startswith(b"a "), resp
    resp, _ = raw_get(sk, "http://other.example", host="a.example")     # routed by the target
    assert resp.status == 200 and resp.body.startswith(b"up "), resp
    assert [q.target for q in ups["a"].requests] == ["/x", "/y?q"]
    assert [q.header_all("host") for q in ups["a"].requests] == [["a.example"], ["a.example:8080"]]
    assert ups["up"].requests[0].target == "/"
    assert ups["up"].requests[0].header_all("host") == ["other.example"]


def test_absolute_form_http10_without_host(mesh):
    sk, ups = mesh()
    resp, _ = raw_get(sk, "http://a.example/z", host=None, version="HTTP/1.0")
    assert resp.status == 200 and resp.body.startswith(b"a "), resp
    assert ups["a"].requests[0].header_all("host") == ["a.example"]


def test_absolute_form_with_bad_authority_refused(mesh):
    sk, ups = mesh()
    for target in ("http://user@a.example/x", "http:///x", "http://a.example:99999/x", "http://a%zz/"):
        resp, closed = raw_get(sk, target)
        assert_local_reply(resp, 400, "bad_request")
        assert closed, target
    assert all(u.accepted == 0 for u in ups.values())


@pytest.mark.parametrize("host", ["exa mple.test", "", "a/b", "a?b", "a#b", "user@a.example", "a:b:c",
                                  "a:99999", "[::1", "a\"b"])
def test_invalid_host_refused(mesh, host):
    sk, ups = mesh()
    resp, closed = raw_get(sk, "/x", host=host)
    assert_local_reply(resp, 400, "bad_request")
    assert closed
    assert all(u.accepted == 0 for u in ups.values())


def test_duplicate_host_refused(mesh):
    sk, ups = mesh()
    resp, closed = raw_get(sk, "/x", headers=[("Host", "test.local")])
    assert_local_reply(resp, 400, "bad_request")
    assert closed
    assert all(u.accepted == 0 for u in ups.values())


@pytest.mark.parametrize("host", ["a.example:8080", "[::1]:9", "127.0.0.1", "x-y_z~w.test"])
def test_valid_hosts_accepted(mesh, host):
    sk, ups = mesh()
    resp, _ = raw_get(sk, "/ok", host=host)
    assert resp.status == 200, resp
    name = "a" if host.startswith("a.example") else "up"
    assert ups[name].requests[0].header_all("host") == [host]


# --------------------------------------------------------------------------
# HTTP/1.0 with Transfer-Encoding


def test_http10_with_transfer_encoding_refused(mesh):
    sk, ups = mesh()
    data = (b"POST /x HTTP/1.0\r\nHost: test.local\r\nTransfer-Encoding: chunked\r\n\r\n"
            b"5\r\nhello\r\n0\r\n\r\nGET /smuggled HTTP/1.1\r\nHost: test.local\r\n\r\n")
    resp, closed = raw_exchange(sk.port("listen"), data)
    assert_local_reply(resp, 400, "bad_request")
    assert closed
    assert all(u.accepted == 0 for u in ups.values())


def test_http11_chunked_still_fine(mesh):
    sk, ups = mesh()
    with RawClient(sk.port("listen")) as c:
        c.send(b"POST /x HTTP/1.1\r\nHost: test.local\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n")
        assert c.read_response(timeout=5).status == 200
    assert ups["up"].requests[0].body == b"hello"


# --------------------------------------------------------------------------
# x-forwarded-client-cert


def test_client_xfcc_removed(mesh):
    sk, ups = mesh()
    with RawClient(sk.port("listen")) as c:
        r = c.request("GET", "/x", headers=[("X-Forwarded-Client-Cert", "URI=spiffe://evil/admin"),
                                            ("x-forwarded-client-cert", "By=x"), ("X-Other", "kept")])
        assert r.status == 200
    q = ups["up"].requests[0]
    assert not q.has("x-forwarded-client-cert")
    assert q.header("x-other") == "kept"


XFCC_LUA = """\
local M = {}
function M.on_request(r)
  r:set_header("x-seen-xfcc", r:header("x-forwarded-client-cert") or "none")
  r:set_header("x-seen-path", r:path())
  r:set_header("x-seen-host", r:host())
end
return M
"""


def test_lua_sees_normalised_request(sidekick, upstream, tmp_path):
    (tmp_path / "seen.lua").write_text(XFCC_LUA)
    up = upstream(echo_handler("up"))
    sk = sidekick(sk_ini("[listener main]\naddress = 127.0.0.1:{listen}\n[route r]\nlistener = main\n"
                         "cluster = up\nlua = seen.lua\n[cluster up]\nendpoints = 127.0.0.1:{up}\n",
                         extra=f"lua_dir = {tmp_path}\n"), up=up.port)
    data = build_request("GET", "http://a.example/p/../%7eq", [("X-Forwarded-Client-Cert", "URI=forged")],
                         host="b.example")
    resp, _ = raw_exchange(sk.port("listen"), data)
    assert resp.status == 200, resp
    q = up.requests[0]
    assert q.header("x-seen-xfcc") == "none"
    assert q.header("x-seen-path") == "/~q"
    assert q.header("x-seen-host") == "a.example"
    assert not q.has("x-forwarded-client-cert")
    assert q.target == "/~q" and q.header_all("host") == ["a.example"]

