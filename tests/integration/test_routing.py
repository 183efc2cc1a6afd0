"""Routing: host, prefix/path, method, headers, order, rewrite, respond,
no_route, weighted clusters. Each cluster has its own recording upstream
answering "<name> <method> <target>"."""

import pytest

from harness import RawClient, assert_local_reply, echo_handler, http_request, sk_ini


@pytest.fixture
def mesh(sidekick, upstream):
    """mesh(routes_ini, clusters=[names]) -> (sidekick, {name: Upstream}).
    Each [cluster NAME] section is generated with one endpoint."""
    def make(routes: str, clusters=("a", "b", "c"), workers=1):
        ups = {n: upstream(echo_handler(n), name=n) for n in clusters}
        body = "[listener main]\naddress = 127.0.0.1:{listen}\n\n" + routes + "\n"
        for n in clusters:
            body += f"\n[cluster {n}]\nendpoints = 127.0.0.1:{ups[n].port}\n"
        sk = sidekick(sk_ini(body, workers=workers))
        return sk, ups
    return make


def get(sk, path="/", host="other.test", headers=None, method="GET", body=None):
    return http_request(sk.port("listen"), method, path, headers=headers, host=host, body=body)


def served_by(resp):
    assert resp.status == 200, resp
    return resp.body.split(b" ", 1)[0].decode()


def test_host_exact_and_wildcard(mesh):
    sk, ups = mesh("""
[route exact]
listener = main
host = api.internal
cluster = a

[route wild]
listener = main
host = *.svc.local
cluster = b

[route rest]
listener = main
cluster = c
""")
    assert served_by(get(sk, host="api.internal")) == "a"
    assert served_by(get(sk, host="API.Internal")) == "a"          # case-insensitive
    assert served_by(get(sk, host=f"api.internal:{sk.port('listen')}")) == "a"  # port ignored
    assert served_by(get(sk, host="x.api.internal")) == "c"        # exact is exact
    assert served_by(get(sk, host="foo.svc.local")) == "b"
    assert served_by(get(sk, host="a.b.svc.local")) == "b"
    assert served_by(get(sk, host="svc.local.evil")) == "c"
    assert served_by(get(sk, host="foosvc.local")) == "c"          # not a subdomain
    assert [q.header("host") for q in ups["a"].requests][0] == "api.internal"


def test_prefix_vs_path(mesh):
    sk, ups = mesh("""
[route exact]
listener = main
path = /exact
cluster = a

[route pre]
listener = main
prefix = /api/
cluster = b

[route rest]
listener = main
cluster = c
""")
    assert served_by(get(sk, "/exact")) == "a"
    assert served_by(get(sk, "/exact?x=1")) == "a"      # query is not part of the path
    assert served_by(get(sk, "/exact/")) == "c"
    assert served_by(get(sk, "/exactly")) == "c"
    assert served_by(get(sk, "/api/")) == "b"
    assert served_by(get(sk, "/api/v1/users?id=3")) == "b"
    assert served_by(get(sk, "/api")) == "c"
    assert served_by(get(sk, "/apix")) == "c"
    assert ups["b"].requests[1].target == "/api/v1/users?id=3"


def test_method(mesh):
    sk, ups = mesh("""
[route writes]
listener = main
method = POST, PUT
cluster = a

[route rest]
listener = main
cluster = b
""")
    assert served_by(get(sk, method="POST", body=b"x")) == "a"
    assert served_by(get(sk, method="PUT", body=b"x")) == "a"
    assert served_by(get(sk, method="GET")) == "b"
    assert served_by(get(sk, method="DELETE")) == "b"
    assert [q.method for q in ups["a"].requests] == ["POST", "PUT"]
    assert [q.method for q in ups["b"].requests] == ["GET", "DELETE"]


def test_header_present_and_value(mesh):
    sk, ups = mesh("""
[route canary]
listener = main
header = x-canary: 1
cluster = a

[route debug]
listener = main
header = x-debug
cluster = b

[route rest]
listener = main
cluster = c
""")
    assert served_by(get(sk, headers={"X-Canary": "1"})) == "a"
    assert served_by(get(sk, headers={"X-Canary": "2"})) == "c"
    assert served_by(get(sk, headers={"X-Debug": "anything"})) == "b"
    assert served_by(get(sk, headers={"x-debug": ""})) == "b"     # present, empty value
    assert served_by(get(sk, headers={"X-Canary": "1", "X-Debug": "1"})) == "a"
    assert served_by(get(sk)) == "c"
    # matching does not consume the header: it is still forwarded
    assert ups["a"].requests[0].header("x-canary") == "1"


def test_all_header_conditions_must_match(mesh):
    sk, ups = mesh("""
[route both]
listener = main
header = x-a: 1
header = x-b
cluster = a

[route rest]
listener = main
cluster = b
""", clusters=("a", "b"))
    assert served_by(get(sk, headers={"X-A": "1", "X-B": "z"})) == "a"
    assert served_by(get(sk, headers={"X-A": "1"})) == "b"
    assert served_by(get(sk, headers={"X-B": "1"})) == "b"


def test_first_match_wins_in_file_order(mesh):
    sk, ups = mesh("""
[route broad]
listener = main
prefix = /
cluster = a

[route narrow]
listener = main
prefix = /special/
cluster = b
""", clusters=("a", "b"))
    assert served_by(get(sk, "/special/x")) == "a"
    assert ups["b"].accepted == 0


def test_first_match_wins_narrow_first(mesh):
    sk, ups = mesh("""
[route narrow]
listener = main
prefix = /special/
cluster = b

[route broad]
listener = main
prefix = /
cluster = a
""", clusters=("a", "b"))
    assert served_by(get(sk, "/special/x")) == "b"
    assert served_by(get(sk, "/other")) == "a"


def test_rewrite_prefix(mesh):
    sk, ups = mesh("""
[route api]
listener = main
prefix = /api/
rewrite_prefix = /
cluster = a

[route v2]
listener = main
prefix = /old/
rewrite_prefix = /new/v2/
cluster = b
""", clusters=("a", "b"))
    assert served_by(get(sk, "/api/users?id=7&x=%2F")) == "a"
    assert served_by(get(sk, "/api/")) == "a"
    assert served_by(get(sk, "/old/thing?q")) == "b"
    assert [q.target for q in ups["a"].requests] == ["/users?id=7&x=%2F", "/"]
    assert [q.target for q in ups["b"].requests] == ["/new/v2/thing?q"]


def test_respond_locally(mesh):
    sk, ups = mesh("""
[route ping]
listener = main
path = /ping
respond = 200 ok

[route rest]
listener = main
cluster = a
""", clusters=("a",))
    with RawClient(sk.port("listen")) as c:
        r = c.request("GET", "/ping")
        assert r.status == 200
        assert r.body == b"ok"
        r = c.request("GET", "/ping")           # keep-alive still fine
        assert r.status == 200 and r.body == b"ok"
    assert ups["a"].accepted == 0


def test_respond_with_other_status(mesh):
    sk, ups = mesh("""
[route gone]
listener = main
prefix = /gone/
respond = 410 gone for good
""", clusters=("a",))
    r = get(sk, "/gone/x")
    assert r.status == 410
    assert r.body == b"gone for good"
    assert ups["a"].accepted == 0


def test_no_route_404(mesh):
    sk, ups = mesh("""
[route only]
listener = main
host = only.test
cluster = a
""", clusters=("a",))
    r = get(sk, "/x", host="nope.test")
    assert_local_reply(r, 404, "no_route")
    assert r.body, "local replies carry a text body"
    assert ups["a"].accepted == 0
    assert served_by(get(sk, "/x", host="only.test")) == "a"


def test_weighted_cluster(mesh):
    sk, ups = mesh("""
[route split]
listener = main
cluster = a 1, b 1
""", clusters=("a", "b"))
    counts = {"a": 0, "b": 0}
    with RawClient(sk.port("listen")) as c:
        for i in range(200):
            r = c.request("GET", f"/w{i}")
            counts[served_by(r)] += 1
    assert counts["a"] >= 40 and counts["b"] >= 40, counts
    assert len(ups["a"].requests) == counts["a"]
    assert len(ups["b"].requests) == counts["b"]


def test_weighted_cluster_uneven(mesh):
    sk, ups = mesh("""
[route split]
listener = main
cluster = a 9, b 1
""", clusters=("a", "b"))
    counts = {"a": 0, "b": 0}
    with RawClient(sk.port("listen")) as c:
        for i in range(300):
            counts[served_by(c.request("GET", "/"))] += 1
    assert counts["a"] > counts["b"] * 3, counts
    assert counts["b"] >= 5, counts


def test_keepalive_after_local_replies(mesh):
    sk, ups = mesh("""
[route api]
listener = main
prefix = /api/
cluster = a

[route ping]
listener = main
path = /ping
respond = 200 ok
""", clusters=("a",))
    with RawClient(sk.port("listen")) as c:
        assert_local_reply(c.request("GET", "/nope"), 404, "no_route")
        assert c.request("GET", "/ping").body == b"ok"
        assert served_by(c.request("GET", "/api/x")) == "a"
        # pipelined: local and proxied answers stay in order
        from harness import build_request
        c.send(build_request("GET", "/nope") + build_request("GET", "/api/y") +
               build_request("GET", "/ping"))
        r1, r2, r3 = (c.read_response() for _ in range(3))
    assert r1.status == 404 and served_by(r2) == "a" and r3.body == b"ok"


def test_head_local_replies_have_no_body(mesh):
    sk, ups = mesh("""
[route ping]
listener = main
path = /ping
respond = 200 ok
""", clusters=("a",))
    with RawClient(sk.port("listen")) as c:
        r = c.request("HEAD", "/ping")
        assert r.status == 200 and r.body == b""
        r = c.request("HEAD", "/nope")
        assert r.status == 404 and r.body == b""
        r = c.request("GET", "/ping")  # the stream is still in sync
        assert r.status == 200 and r.body == b"ok"


@pytest.mark.parametrize("path", ["/nope", "/ping"])
@pytest.mark.parametrize("expect", [False, True])
def test_local_reply_body_is_not_a_next_request(mesh, path, expect):
    """A local reply to a request with a body: the body (here shaped like a
    request) must never be parsed as the next request."""
    from harness import build_request
    sk, ups = mesh("""
[route api]
listener = main
prefix = /api/
cluster = a

[route ping]
listener = main
path = /ping
respond = 200 ok
""", clusters=("a",))
    inner = b"GET /api/smuggled HTTP/1.1\r\nHost: x\r\n\r\n"
    hdrs = [("Content-Length", str(len(inner)))] + ([("Expect", "100-continue")] if expect else [])
    with RawClient(sk.port("listen")) as c:
        c.send(build_request("POST", path, hdrs))
        if not expect:
            c.send(inner)
        r = c.read_response(timeout=5)
        assert r.status == {"/nope": 404, "/ping": 200}[path], r
        if expect:
            try:
                c.send(inner)
            except OSError:
                pass
        if not c.wait_closed(1.5):
            # kept open: then the body was consumed as a body; a real next
            # request must be answered normally
            c.send(build_request("GET", "/ping"))
            assert c.read_response(timeout=5).body == b"ok"
    import time as _t
    _t.sleep(0.3)
    assert "/api/smuggled" not in [q.target for q in ups["a"].requests]
