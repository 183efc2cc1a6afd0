"""Lua route filters: the example filters in lua/, the request object through
the real proxy, the sandbox, faults (errors, CPU budget, memory cap,
recursion), reload, and config errors.

The example filters are used from the repository's lua/ directory; the
sandbox and fault scripts are written into a per-test lua_dir. Every test
asserts what the recording upstream received (or that it received nothing),
not only what the client saw. Run by hand with:

    SIDEKICK_BIN=build/sidekick /usr/bin/python3 -m pytest -q tests/integration/test_lua.py
"""

import json
import os
import re
import threading
import time

import pytest

from harness import PLUGIN_DIR, missing_fixtures
from harness import (REPO, RawClient, Reply, assert_local_reply, echo_handler, free_port, free_ports,
                     http_request, metric_value, parse_prometheus, run_sidekick, sk_ini, wait_for)

EXAMPLES = REPO / "lua"
SANITIZED = bool(os.environ.get("SIDEKICK_SANITIZED"))
ERRORS = "sidekick_lua_errors_total"


# --------------------------------------------------------------------------
# helpers


@pytest.fixture
def proxy(sidekick, upstream):
    """proxy(routes_ini, clusters=[names], lua_dir=EXAMPLES, handlers={name: handler},
    workers=1, extra="") -> (Sidekick, {cluster name: Upstream}).

    One listener `main` on {listen}; one [cluster NAME] with one recording
    upstream per name (answering "<name> <method> <target>" unless a handler
    is given); `extra` lines go into [sidekick] after lua_dir."""
    def make(routes, clusters=("up",), lua_dir=EXAMPLES, handlers=None, workers=1, extra=""):
        handlers = handlers or {}
        ups = {n: upstream(handlers.get(n) or echo_handler(n), name=n) for n in clusters}
        body = "[listener main]\naddress = 127.0.0.1:{listen}\n\n" + routes + "\n"
        for n in clusters:
            body += f"\n[cluster {n}]\nendpoints = 127.0.0.1:{ups[n].port}\n"
        sk = sidekick(sk_ini(body, workers=workers, extra=f"lua_dir = {lua_dir}\n{extra}"))
        return sk, ups
    return make


@pytest.fixture
def lua_dir(tmp_path):
    """A fresh lua_dir for scripts written by the test: write(name, text)."""
    d = tmp_path / "lua"
    d.mkdir()

    class Dir:
        path = d

        def write(self, name, text):
            p = d / name
            p.parent.mkdir(parents=True, exist_ok=True)
            p.write_text(text)
            return p

        def __str__(self):
            return str(d)
    return Dir()


def get(sk, path="/", headers=None, host="test.local", method="GET", body=None, timeout=10.0):
    return http_request(sk.port("listen"), method, path, headers=headers, host=host, body=body,
                        timeout=timeout)


def metric(sk, name, **labels):
    r = sk.admin_get("/metrics")
    assert r.status == 200, r
    return metric_value(parse_prometheus(r.body.decode()), name, **labels)


def errors(sk, route, kind):
    return metric(sk, ERRORS, route=route, kind=kind) or 0


def wait_errors(sk, route, kind, value, timeout=5.0):
    if not wait_for(lambda: errors(sk, route, kind) == value, timeout):
        text = sk.admin_get("/metrics").body.decode()
        lines = "\n".join(l for l in text.splitlines() if "lua" in l)
        pytest.fail(f"{ERRORS}{{route={route},kind={kind}}} != {value}; lua metrics:\n{lines}")


def assert_filter_error(resp):
    assert_local_reply(resp, 500, "filter_error")


def check_fails(res, *needles):
    """`sidekick -t` failed with exit 1 and stderr contains every needle."""
    assert res.returncode == 1, f"exit {res.returncode}, stderr: {res.stderr!r}"
    for n in needles:
        assert n in res.stderr, f"stderr does not contain {n!r}: {res.stderr!r}"


# --------------------------------------------------------------------------
# auth.lua


AUTH = """\
[route api]
listener = main
cluster = up
lua = auth.lua
lua.keys = ops:s3cr3t, l3gacy
"""


def test_auth_accepts_a_valid_key(proxy):
    sk, ups = proxy(AUTH)
    r = get(sk, "/v1/x?y=1", headers={"X-Api-Key": "s3cr3t", "X-Other": "kept"})
    assert r.status == 200, r
    assert r.body == b"up GET /v1/x?y=1"
    [req] = ups["up"].requests
    assert req.header("x-authenticated-key-id") == "ops", req.headers
    assert not req.has("x-api-key"), "the key itself went upstream"
    assert req.header("x-other") == "kept"
    assert req.target == "/v1/x?y=1"


def test_auth_bare_key_gets_an_id_that_is_not_the_key(proxy):
    sk, ups = proxy(AUTH)
    assert get(sk, headers={"x-api-key": "l3gacy"}).status == 200
    [req] = ups["up"].requests
    kid = req.header("x-authenticated-key-id")
    assert kid and re.fullmatch(r"key-[0-9a-f]{8}", kid), req.headers
    assert "l3gacy" not in str(req.headers)


@pytest.mark.parametrize("headers", [{}, {"x-api-key": "wrong"}, {"x-api-key": ""},
                                     {"x-api-key": "ops"}, {"authorization": "s3cr3t"}])
def test_auth_refuses_with_401_and_upstream_sees_nothing(proxy, headers):
    sk, ups = proxy(AUTH)
    r = get(sk, "/v1/x", headers=headers)
    assert r.status == 401, r
    assert r.header("content-type") == "text/plain", r
    assert "x-api-key" in (r.header("www-authenticate") or ""), r
    assert b"API key" in r.body, r
    time.sleep(0.1)
    assert ups["up"].accepted == 0, ups["up"].requests


def test_auth_forged_id_header_is_replaced(proxy):
    sk, ups = proxy(AUTH)
    r = get(sk, headers={"x-api-key": "s3cr3t", "x-authenticated-key-id": "admin"})
    assert r.status == 200, r
    [req] = ups["up"].requests
    assert req.header_all("x-authenticated-key-id") == ["ops"], req.headers


def test_auth_refusal_then_success_on_one_connection(proxy):
    """A 401 from the filter keeps the connection usable."""
    sk, ups = proxy(AUTH)
    with RawClient(sk.port("listen")) as c:
        r1 = c.request("GET", "/a")
        assert r1.status == 401, r1
        r2 = c.request("GET", "/b", headers=[("x-api-key", "s3cr3t")])
        assert r2.status == 200, r2
    assert [q.target for q in ups["up"].requests] == ["/b"]


# --------------------------------------------------------------------------
# canary.lua


CANARY = """\
[route by-header]
listener = main
host = h.test
cluster = stable
lua = canary.lua
lua.cluster = canary
lua.header = x-canary

[route all]
listener = main
host = all.test
cluster = stable
lua = canary.lua
lua.cluster = canary
lua.percent = 100

[route none]
listener = main
host = none.test
cluster = stable
lua = canary.lua
lua.cluster = canary
lua.percent = 0

[route sticky]
listener = main
host = sticky.test
cluster = stable
lua = canary.lua
lua.cluster = canary
lua.percent = 50
lua.sticky_header = x-user
"""


def canary_proxy(proxy):
    return proxy(CANARY, clusters=("stable", "canary"))


def served_by(r):
    assert r.status == 200, r
    return r.body.split(b" ", 1)[0].decode()


def test_canary_by_header(proxy):
    sk, ups = canary_proxy(proxy)
    r = get(sk, "/x", host="h.test", headers={"x-canary": "1"})
    assert served_by(r) == "canary"
    assert r.header("x-canary") == "1", r
    r = get(sk, "/y", host="h.test")
    assert served_by(r) == "stable"
    assert r.header("x-canary") == "0", r
    r = get(sk, "/z", host="h.test", headers={"x-canary": "0"})
    assert served_by(r) == "stable"
    assert [q.target for q in ups["canary"].requests] == ["/x"]
    assert [q.target for q in ups["stable"].requests] == ["/y", "/z"]


def test_canary_percent_100_and_0(proxy):
    sk, ups = canary_proxy(proxy)
    for i in range(5):
        r = get(sk, f"/all{i}", host="all.test")
        assert served_by(r) == "canary"
        assert r.header("x-canary") == "1"
        r = get(sk, f"/none{i}", host="none.test")
        assert served_by(r) == "stable"
        assert r.header("x-canary") == "0"
    assert all(q.path.startswith("/all") for q in ups["canary"].requests)
    assert all(q.path.startswith("/none") for q in ups["stable"].requests)
    assert len(ups["canary"].requests) == len(ups["stable"].requests) == 5


def test_canary_sticky_by_header_hash(proxy):
    """The same user always lands on the same side; over many users both
    sides get some."""
    sk, ups = canary_proxy(proxy)
    sides = {}
    for i in range(40):
        user = f"user-{i}"
        first = served_by(get(sk, "/s", host="sticky.test", headers={"x-user": user}))
        again = served_by(get(sk, "/s", host="sticky.test", headers={"x-user": user}))
        assert again == first, user
        sides[user] = first
    assert set(sides.values()) == {"stable", "canary"}, sides


def test_canary_per_request_state_on_one_connection(proxy):
    """Keep-alive: each request gets its own r:ctx(), so x-canary on the way
    back matches that request's own decision."""
    sk, ups = canary_proxy(proxy)
    flags = ["1", "0", "0", "1", "1", "0"]
    with RawClient(sk.port("listen")) as c:
        for i, f in enumerate(flags):
            r = c.request("GET", f"/k{i}", headers=[("x-canary", f)], host="h.test")
            assert r.status == 200, r
            assert r.header("x-canary") == f, (i, r)
            assert r.body.startswith(b"canary " if f == "1" else b"stable "), r
    assert [q.target for q in ups["canary"].requests] == ["/k0", "/k3", "/k4"]


def test_filter_passes_a_request_body_through(proxy):
    """on_request runs on the head; the body still streams to the upstream."""
    sk, ups = proxy(AUTH)
    body = os.urandom(1 << 20)
    r = get(sk, "/upload", method="POST", body=body, headers={"x-api-key": "s3cr3t"}, timeout=30)
    assert r.status == 200, r
    [req] = ups["up"].requests
    assert req.complete and req.body == body
    assert req.header("x-authenticated-key-id") == "ops"


# --------------------------------------------------------------------------
# rewrite.lua, and one script on two routes with different config


REWRITE = """\
[route v1]
listener = main
prefix = /v1/
cluster = up
lua = rewrite.lua
lua.from = ^/v1/(.*)
lua.to = /api/%1

[route v2]
listener = main
prefix = /v2/
cluster = up
lua = rewrite.lua
lua.from = ^/v2/(%w+)/(%d+)$
lua.to = /things/%2/%1

[route rest]
listener = main
cluster = up
"""


def test_rewrite_path_and_query_seen_upstream(proxy):
    sk, ups = proxy(REWRITE)
    r = get(sk, "/v1/users/7?fields=a,b&x=%2F")
    assert r.status == 200, r
    [req] = ups["up"].requests
    assert req.target == "/api/users/7?fields=a,b&x=%2F"
    assert req.header("host") == "test.local"


def test_one_script_two_routes_different_config(proxy):
    sk, ups = proxy(REWRITE)
    assert get(sk, "/v1/a/1?q").status == 200
    assert get(sk, "/v2/a/1?q=2").status == 200
    assert get(sk, "/v2/a/b").status == 200          # no match on v2: unchanged
    assert get(sk, "/v3/a/1").status == 200          # no filter at all
    assert [q.target for q in ups["up"].requests] == ["/api/a/1?q", "/things/1/a?q=2", "/v2/a/b",
                                                      "/v3/a/1"]


# --------------------------------------------------------------------------
# response_headers.lua


RESP_HEADERS = """\
[route api]
listener = main
cluster = up
lua = response_headers.lua
"""

SECURITY = {
    "strict-transport-security": "max-age=31536000; includeSubDomains",
    "x-content-type-options": "nosniff",
    "x-frame-options": "DENY",
    "referrer-policy": "strict-origin-when-cross-origin",
}


def test_response_headers_added(proxy):
    sk, ups = proxy(RESP_HEADERS)
    r = get(sk, "/")
    assert r.status == 200 and r.body == b"up GET /", r
    for name, value in SECURITY.items():
        assert r.header(name) == value, (name, r)
    [timing] = r.header_all("server-timing")
    assert re.fullmatch(r"sidekick;dur=\d+\.\d{3}", timing), r
    [req] = ups["up"].requests
    assert not req.has("server-timing") and not req.has("x-frame-options"), req.headers


def test_response_headers_keep_the_upstreams_and_time_it(proxy):
    def handler(req):
        return Reply(headers=[("X-Frame-Options", "SAMEORIGIN"), ("Server-Timing", "db;dur=1")],
                     body=b"slow", delay=0.2)
    sk, ups = proxy(RESP_HEADERS, handlers={"up": handler})
    r = get(sk, "/")
    assert r.status == 200 and r.body == b"slow", r
    assert r.header_all("x-frame-options") == ["SAMEORIGIN"], r
    assert r.header("x-content-type-options") == "nosniff"
    timing = ", ".join(r.header_all("server-timing"))
    assert "db;dur=1" in timing, r
    m = re.search(r"sidekick;dur=(\d+\.\d+)", timing)
    assert m, r
    # the upstream took 200 ms: only a lower bound is asserted
    assert float(m.group(1)) >= 150, r


def test_response_headers_on_an_upstream_error_status(proxy):
    sk, ups = proxy(RESP_HEADERS, handlers={"up": lambda req: Reply(status=404, body=b"nope")})
    r = get(sk, "/missing")
    assert r.status == 404 and r.body == b"nope", r
    assert r.header("x-frame-options") == "DENY"


# --------------------------------------------------------------------------
# denylist.lua


DENY = """\
[route ip]
listener = main
host = ip.test
cluster = up
lua = denylist.lua
lua.deny_ips = 192.0.2.7, 127.0.0.1

[route rest]
listener = main
cluster = up
lua = denylist.lua
lua.deny_ips = 192.0.2.7
lua.deny_paths = /admin, /.git/
lua.deny_agents = sqlmap, nikto
"""


def check_denied(r):
    assert r.status == 403, r
    assert r.body.startswith(b"forbidden"), r


def test_denylist_ip(proxy):
    sk, ups = proxy(DENY)
    check_denied(get(sk, "/x", host="ip.test"))
    assert ups["up"].accepted == 0


@pytest.mark.parametrize("path,headers", [("/admin", {}), ("/admin/users?x=1", {}),
                                          ("/.git/config", {}),
                                          ("/ok", {"user-agent": "sqlmap/1.7"}),
                                          ("/ok", {"user-agent": "Mozilla/5.0 (Nikto/2.1.6)"})])
def test_denylist_path_and_agent(proxy, path, headers):
    sk, ups = proxy(DENY)
    check_denied(get(sk, path, headers=headers))
    time.sleep(0.1)
    assert ups["up"].accepted == 0, ups["up"].requests


def test_denylist_lets_others_through(proxy):
    sk, ups = proxy(DENY)
    for path in ("/", "/api/admin", "/x?next=/admin", "/.git"):
        r = get(sk, path, headers={"user-agent": "curl/8.0"})
        assert r.status == 200, (path, r)
    assert [q.target for q in ups["up"].requests] == ["/", "/api/admin", "/x?next=/admin",
                                                      "/.git"]


# --------------------------------------------------------------------------
# r:respond in on_response


RESPOND_ON_RESPONSE = """\
local M = {}

function M.on_response(r)
    if r:status() == 200 then
        r:respond(418, "short and stout\\n", { ["content-type"] = "text/plain",
                                               ["x-replaced"] = "yes" })
    end
end

return M
"""


def test_respond_in_on_response_replaces_the_upstream_response(proxy, lua_dir):
    lua_dir.write("replace.lua", RESPOND_ON_RESPONSE)
    sk, ups = proxy("[route r]\nlistener = main\ncluster = up\nlua = replace.lua\n",
                    lua_dir=lua_dir, handlers={"up": lambda req: Reply(
                        status=200 if req.path == "/a" else 404,
                        headers=[("x-from-upstream", "1")], body=b"upstream body " * 100)})
    with RawClient(sk.port("listen")) as c:
        r = c.request("GET", "/a")
        assert r.status == 418, r
        assert r.body == b"short and stout\n", r
        assert r.header("x-replaced") == "yes"
        assert r.header("x-from-upstream") is None, r
        # the connection stays usable; a 404 passes through untouched
        r2 = c.request("GET", "/b")
        assert r2.status == 404 and r2.body.startswith(b"upstream body"), r2
    assert [q.target for q in ups["up"].requests] == ["/a", "/b"]


# --------------------------------------------------------------------------
# the request object through the real proxy (the offline runner has its own)


API = r"""
local M = {}

-- show(...) -> the one value as text, or "<N values>" when a getter returned
-- other than exactly one value (the spec's "or nil" is one value: nil)
local function show(...)
    if select("#", ...) ~= 1 then return "<" .. select("#", ...) .. " values>" end
    return tostring((...))
end

function M.on_request(r)
    if r:header("x-mode") == "echo" then
        local h = r:headers()
        local out = {
            "method=" .. show(r:method()), "path=" .. show(r:path()),
            "query=" .. show(r:query()), "host=" .. show(r:host()),
            "header=" .. show(r:header("X-MULTI")), "headers=" .. tostring(h["x-multi"]),
            "lower=" .. tostring(h["x-mode"]), "client_ip=" .. show(r:client_ip()),
            "route=" .. show(r:route()), "identity=" .. show(r:identity()),
            "cfg=" .. tostring(r:config().greeting), "missing=" .. show(r:header("x-missing")),
            "meta=" .. show(r:meta("nope")),
        }
        return r:respond(200, table.concat(out, "\n"), { ["content-type"] = "text/plain" })
    end
    if r:header("x-mode") == "bad_path" then r:set_path("/a?b=1") end
    if r:header("x-mode") == "bad_status" then r:respond(99, "x") end
    r:set_header("x-set", "1")
    r:add_header("x-multi", "three")
    r:remove_header("x-drop")
    r:set_path("/edited")
    r:set_meta("k", "v")
    r:ctx().m = r:meta("k")
end

function M.on_response(r)
    r:set_response_header("x-status", tostring(r:status()))
    r:set_response_header("x-seen", tostring(r:response_header("X-UPSTREAM")))
    r:add_response_header("x-multi-resp", "b")
    r:remove_response_header("x-remove-me")
    r:set_response_header("x-ctx", tostring(r:ctx().m))
end

return M
"""

API_ROUTES = """\
[route api]
listener = main
cluster = up
lua = api.lua
lua.greeting = hello world
"""


def test_request_object_reads(proxy, lua_dir):
    lua_dir.write("api.lua", API)
    sk, ups = proxy(API_ROUTES, lua_dir=lua_dir)
    with RawClient(sk.port("listen")) as c:
        r = c.request("GET", "/p/a%20b?q=1&r=2", host="API.test:8080",
                      headers=[("X-Mode", "echo"), ("X-Multi", "one"), ("x-multi", "two")])
    assert r.status == 200, r
    seen = dict(line.split("=", 1) for line in r.body.decode().splitlines())
    assert seen == {
        "method": "GET", "path": "/p/a%20b", "query": "q=1&r=2", "host": seen["host"],
        "header": "one", "headers": "one, two", "lower": "echo", "client_ip": "127.0.0.1",
        "route": "api", "identity": "nil", "cfg": "hello world", "missing": "nil", "meta": "nil",
    }, seen
    assert seen["host"].lower() == "api.test", seen
    with RawClient(sk.port("listen")) as c:
        r = c.request("GET", "/noquery", headers=[("X-Mode", "echo")])
    assert r.status == 200, r
    seen = dict(line.split("=", 1) for line in r.body.decode().splitlines())
    assert (seen["path"], seen["query"], seen["header"]) == ("/noquery", "nil", "nil"), seen
    assert ups["up"].accepted == 0


def test_request_object_edits(proxy, lua_dir):
    lua_dir.write("api.lua", API)
    sk, ups = proxy(API_ROUTES, lua_dir=lua_dir, handlers={"up": lambda req: Reply(
        headers=[("x-multi-resp", "a"), ("x-remove-me", "1")], body=b"edited")})
    with RawClient(sk.port("listen")) as c:
        r = c.request("GET", "/orig?q=1", headers=[("X-Multi", "one"), ("x-multi", "two"),
                                                    ("x-drop", "1"), ("x-set", "client")])
    assert r.status == 200 and r.body == b"edited", r
    [req] = ups["up"].requests
    assert req.target == "/edited?q=1"
    assert req.header_all("x-set") == ["1"], req.headers
    assert ", ".join(req.header_all("x-multi")) == "one, two, three", req.headers
    assert not req.has("x-drop"), req.headers
    assert r.header("x-status") == "200", r
    assert r.header("x-seen") == "up", r
    assert ", ".join(r.header_all("x-multi-resp")) == "a, b", r
    assert r.header("x-remove-me") is None, r
    assert r.header("x-ctx") == "v", r


@pytest.mark.parametrize("mode", ["bad_path", "bad_status"])
def test_request_object_refuses_bad_arguments(proxy, lua_dir, mode):
    lua_dir.write("api.lua", API)
    sk, ups = proxy(API_ROUTES, lua_dir=lua_dir)
    assert_filter_error(get(sk, "/x", headers={"x-mode": mode}))
    assert ups["up"].accepted == 0
    wait_errors(sk, "api", "error", 1)


# --------------------------------------------------------------------------
# sandbox


PROBE = r"""
local M = {}

local probes = {
    os_execute = function() return os.execute("touch MARK") end,
    io_open = function() return io.open("/etc/passwd") end,
    debug_getinfo = function() return debug.getinfo(1) end,
    require_ffi = function() return require("ffi") end,
    require_jit = function() return require("jit") end,
    require_dotdot = function() return require("../secret") end,
    require_dotdot_dots = function() return require("..secret") end,
    require_abs = function() return require("/etc/passwd") end,
    string_dump = function() return string.dump(function() end) end,
    string_mt_dump = function() return ("").dump(function() end) end,
    string_mt_index = function()
        local mt = getmetatable("")
        return type(mt) == "table" and type(mt.__index) == "table" and mt.__index.dump or nil
    end,
    load_bytecode = function() return (load("\27LJ\2\10\0\2\0\0\0")) end,
    loadstring_bytecode = function() return (loadstring("\27LJ\2\10\0\2\0\0\0")) end,
    load_binary_mode = function() return (load("\27LJ\2\10\0\2\0\0\0", "x", "b")) end,
    dofile = function() return dofile("/etc/passwd") end,
    loadfile = function() return loadfile("/etc/passwd") end,
    collectgarbage = function() return collectgarbage("count") end,
    setfenv = function() return setfenv(1, {}) end,
    getfenv = function() return getfenv(0) end,
    newproxy = function() return newproxy(true) end,
    package_loaded = function() return package.loaded end,
}

-- globals that must be absent, reported as "name=type" lines
local ABSENT = { "os", "io", "debug", "ffi", "jit", "package", "dofile", "loadfile",
                 "collectgarbage", "newproxy", "setfenv", "getfenv" }

function M.on_request(r)
    local name = r:header("x-probe")
    if name == "absent" then
        local out = {}
        local env = {
            os = os, io = io, debug = debug, ffi = ffi, jit = jit, package = package,
            dofile = dofile, loadfile = loadfile, collectgarbage = collectgarbage,
            newproxy = newproxy, setfenv = setfenv, getfenv = getfenv,
            ["string.dump"] = string.dump,
        }
        for _, g in ipairs(ABSENT) do out[#out + 1] = g .. "=" .. type(env[g]) end
        out[#out + 1] = "string.dump=" .. type(env["string.dump"])
        return r:respond(200, table.concat(out, "\n"))
    end
    if probes[name] then
        local v = probes[name]()
        return r:respond(200, "value=" .. type(v))
    end
end

return M
"""

PROBE_ROUTES = """\
[route probe]
listener = main
cluster = up
lua = probe.lua
"""


def test_sandbox_globals_absent(proxy, lua_dir, tmp_path):
    lua_dir.write("probe.lua", PROBE.replace("MARK", str(tmp_path / "mark")))
    sk, ups = proxy(PROBE_ROUTES, lua_dir=lua_dir)
    r = get(sk, headers={"x-probe": "absent"})
    assert r.status == 200, r
    seen = dict(line.split("=", 1) for line in r.body.decode().splitlines())
    assert seen == {k: "nil" for k in seen} and len(seen) == 13, seen


# probes that must fail the request (500 filter_error) or, for load of
# bytecode and the string-metatable lookups, may also answer nil
MUST_ERROR = ["os_execute", "io_open", "debug_getinfo", "require_ffi", "require_jit",
              "require_dotdot", "require_dotdot_dots", "require_abs", "string_dump", "dofile",
              "loadfile", "collectgarbage", "setfenv", "getfenv", "newproxy", "package_loaded"]
ERROR_OR_NIL = ["string_mt_dump", "string_mt_index", "load_bytecode", "loadstring_bytecode",
                "load_binary_mode"]


def test_sandbox_escapes_fail_and_the_proxy_keeps_serving(proxy, lua_dir, tmp_path):
    lua_dir.write("probe.lua", PROBE.replace("MARK", str(tmp_path / "mark")))
    (tmp_path / "secret.lua").write_text("return { leaked = true }\n")
    sk, ups = proxy(PROBE_ROUTES, lua_dir=lua_dir)
    outcomes = {}
    for name in MUST_ERROR + ERROR_OR_NIL:
        r = get(sk, headers={"x-probe": name})
        if r.status == 500:
            assert_filter_error(r)
            outcomes[name] = "error"
        else:
            assert r.status == 200, (name, r)
            outcomes[name] = r.body.decode()
    wrong = {n: o for n, o in outcomes.items()
             if not (o == "error" or (n in ERROR_OR_NIL and o == "value=nil"))}
    assert not wrong, f"sandbox probes that got through: {wrong}"
    assert not (tmp_path / "mark").exists(), "os.execute ran"
    assert ups["up"].accepted == 0
    # still serving, the same route and script included
    r = get(sk, "/after")
    assert r.status == 200 and r.body == b"up GET /after", r
    wait_errors(sk, "probe", "error", list(outcomes.values()).count("error"))


GLOBALS = """\
local M = {}
local count = 0          -- module state: lives as long as the worker, per route

function M.on_request(r)
    count = count + 1
    if r:config().mode == "set" then
        leaked = "from " .. r:route()
    end
    r:respond(200, "global=" .. tostring(leaked) .. " count=" .. count)
end

return M
"""

TAMPER = """\
local M = {}

function M.on_request(r)
    if r:config().mode == "set" then
        string.upper = function() return "tampered" end
        table.concat = function() return "tampered" end
        math.floor = function() return -1 end
        sk.now = function() return -1 end
    end
    r:respond(200, string.upper("a") .. " " .. table.concat({ "b" }) .. " "
        .. math.floor(2.5) .. " " .. tostring(sk.now() > 0))
end

return M
"""

TWO_ROUTES = """\
[route a]
listener = main
host = a.test
cluster = up
lua = {script}
lua.mode = set

[route b]
listener = main
host = b.test
cluster = up
lua = {script}
lua.mode = get
"""


def test_globals_are_per_route_and_module_state_persists(proxy, lua_dir):
    lua_dir.write("globals.lua", GLOBALS)
    sk, ups = proxy(TWO_ROUTES.replace("{script}", "globals.lua"), lua_dir=lua_dir)
    assert get(sk, host="a.test").body == b"global=from a count=1"
    assert get(sk, host="a.test").body == b"global=from a count=2"
    assert get(sk, host="b.test").body == b"global=nil count=1"
    assert get(sk, host="b.test").body == b"global=nil count=2"
    assert ups["up"].accepted == 0


def test_library_tables_are_not_shared_between_routes(proxy, lua_dir):
    """Route a replaces string.upper, table.concat, math.floor and sk.now in
    its own globals; route b (same script) must still see the real ones."""
    lua_dir.write("tamper.lua", TAMPER)
    sk, ups = proxy(TWO_ROUTES.replace("{script}", "tamper.lua"), lua_dir=lua_dir)
    assert get(sk, host="a.test").body == b"tampered tampered -1 false"
    r = get(sk, host="b.test")
    assert r.status == 200, r
    assert r.body == b"A b 2 true", f"route a's changes leaked into route b: {r.body!r}"


# --------------------------------------------------------------------------
# faults


FAULTS = r"""
local M = {}

local faults = {
    error = function() error("boom from lua") end,
    nil_index = function() local t = nil; return t.x end,
    loop = function() while true do end end,
    loop_count = function() local i = 0; while true do i = i + 1 end end,
    loop_calls = function() while true do local s = ("x"):rep(10) .. tostring(#"y") end end,
    loop_pcall = function()
        while true do pcall(function() while true do end end) end
    end,
    loop_xpcall = function()
        while true do xpcall(function() while true do end end, function(e) return e end) end
    end,
    loop_coroutine = function() coroutine.wrap(function() while true do end end)() end,
    loop_gsub = function()
        local s = string.rep("a", 1000)
        while true do s:gsub("a", function(c) return c end) end
    end,
    rep = function() local s = string.rep("x", 1e9); return #s end,
    rep_pcall = function()
        -- a memory error caught by the script: it must still not exceed the cap
        local ok = pcall(string.rep, "x", 1e9)
        local s = string.rep("x", 1e9)
        return #s
    end,
    table_grow = function()
        local t, i = {}, 0
        while true do i = i + 1; t[i] = { i, i, i } end
    end,
    concat_grow = function()
        local s = "xxxxxxxxxxxxxxxx"
        while true do s = s .. s end
    end,
    recurse = function()
        local function f(n) return 1 + f(n + 1) end
        return f(1)
    end,
    recurse_c = function()
        local function f(s) return (s:gsub(".", f)) end
        return f("xy")
    end,
    recurse_coroutine = function()
        local function f() return coroutine.wrap(f)() end
        return f()
    end,
    recurse_sort = function()
        local function f() table.sort({ 3, 2, 1 }, function(a, b) f(); return a < b end) end
        return f()
    end,
    recurse_tostring = function()
        local mt = {}
        mt.__tostring = function(t) return "<" .. tostring(setmetatable({}, mt)) .. ">" end
        return tostring(setmetatable({}, mt))
    end,
    -- backtracking patterns: one C call each, stopped by the pattern step counter
    pattern_find = function()
        return (string.rep("a", 30000)):find("(.-)(.-)(.-)b")
    end,
    pattern_gsub = function()
        return (string.rep("a", 30000)):gsub("(.-)(.-)(.-)b", "x")
    end,
    pattern_gmatch = function()
        for x in (string.rep("a", 30000)):gmatch("(.-)(.-)(.-)b") do end
    end,
    bad_cluster = function(r) r:set_cluster("no-such-cluster") end,
    response_setter_in_request = function(r) r:set_response_header("x-a", "1") end,
}

function M.on_request(r)
    local f = faults[r:header("x-fault") or ""]
    if f then f(r) end
    r:ctx().fault = r:header("x-fault-response")
end

function M.on_response(r)
    local what = r:ctx().fault
    if what == "error" then error("boom in on_response") end
    if what == "loop" then while true do end end
    if what == "request_setter" then r:set_path("/x") end
end

return M
"""

FAULT_ROUTES = """\
[route faults]
listener = main
cluster = up
lua = faults.lua
lua_budget = 50ms
"""


def fault_proxy(proxy, lua_dir, extra="", workers=1):
    lua_dir.write("faults.lua", FAULTS)
    return proxy(FAULT_ROUTES, lua_dir=lua_dir, workers=workers, extra=extra)


def check_next_request_works(sk, ups, n_before):
    r = get(sk, "/next")
    assert r.status == 200 and r.body == b"up GET /next", r
    assert len(ups["up"].requests) == n_before + 1
    assert ups["up"].requests[-1].target == "/next"


def test_error_in_on_request(proxy, lua_dir):
    sk, ups = fault_proxy(proxy, lua_dir)
    r = get(sk, "/e", headers={"x-fault": "error"})
    assert_filter_error(r)
    assert ups["up"].accepted == 0
    wait_errors(sk, "faults", "error", 1)
    assert wait_for(lambda: "boom from lua" in sk.stderr_text(), 3)
    err = sk.stderr_text()
    line = next(l for l in err.splitlines() if "boom from lua" in l)
    assert "lua route faults: on_request:" in line, err
    assert "traceback" in err[err.index("boom from lua"):], err
    check_next_request_works(sk, ups, 0)
    assert errors(sk, "faults", "error") == 1


@pytest.mark.parametrize("fault", ["nil_index", "bad_cluster", "response_setter_in_request"])
def test_other_errors_in_on_request(proxy, lua_dir, fault):
    sk, ups = fault_proxy(proxy, lua_dir)
    assert_filter_error(get(sk, headers={"x-fault": fault}))
    assert ups["up"].accepted == 0
    wait_errors(sk, "faults", "error", 1)
    check_next_request_works(sk, ups, 0)


@pytest.mark.parametrize("fault", ["error", "request_setter"])
def test_error_in_on_response(proxy, lua_dir, fault):
    sk, ups = fault_proxy(proxy, lua_dir)
    r = get(sk, "/resp", headers={"x-fault-response": fault})
    assert_filter_error(r)
    assert b"up GET" not in r.body, r
    assert [q.target for q in ups["up"].requests] == ["/resp"]
    wait_errors(sk, "faults", "error", 1)
    assert wait_for(lambda: "lua route faults: on_response:" in sk.stderr_text(), 3), \
        sk.stderr_text()
    check_next_request_works(sk, ups, 1)


@pytest.mark.parametrize("fault", ["loop", "loop_count", "loop_calls", "loop_pcall",
                                   "loop_xpcall", "loop_coroutine", "loop_gsub",
                                   "pattern_find", "pattern_gsub", "pattern_gmatch"])
def test_endless_loop_hits_the_budget(proxy, lua_dir, fault):
    sk, ups = fault_proxy(proxy, lua_dir)
    r = get(sk, "/loop", headers={"x-fault": fault}, timeout=15)
    assert_filter_error(r)
    assert ups["up"].accepted == 0
    wait_errors(sk, "faults", "budget", 1)
    check_next_request_works(sk, ups, 0)
    # and again: the state is still sound after an abort
    assert_filter_error(get(sk, "/loop", headers={"x-fault": fault}, timeout=15))
    wait_errors(sk, "faults", "budget", 2)
    check_next_request_works(sk, ups, 1)


def test_endless_loop_in_on_response_hits_the_budget(proxy, lua_dir):
    sk, ups = fault_proxy(proxy, lua_dir)
    assert_filter_error(get(sk, "/l", headers={"x-fault-response": "loop"}, timeout=15))
    assert [q.target for q in ups["up"].requests] == ["/l"]
    wait_errors(sk, "faults", "budget", 1)
    check_next_request_works(sk, ups, 1)


@pytest.mark.parametrize("fault", ["loop", "pattern_find"])
def test_loop_does_not_starve_a_concurrent_request(proxy, lua_dir, fault):
    """One worker: while a script spins (in Lua code, or inside one
    backtracking pattern call), another request waits at most for the
    budget, then is served."""
    sk, ups = fault_proxy(proxy, lua_dir)
    results = {}

    def spin(i):
        results[i] = get(sk, f"/loop{i}", headers={"x-fault": fault}, timeout=15)

    threads = [threading.Thread(target=spin, args=(i,)) for i in range(3)]
    for t in threads:
        t.start()
    normal = get(sk, "/normal", timeout=15)
    for t in threads:
        t.join(20)
    assert normal.status == 200 and normal.body == b"up GET /normal", normal
    for i in range(3):
        assert_filter_error(results.get(i))
    assert [q.target for q in ups["up"].requests] == ["/normal"]
    wait_errors(sk, "faults", "budget", 3)


@pytest.mark.parametrize("fault", ["rep", "rep_pcall", "table_grow", "concat_grow"])
def test_huge_allocation_is_capped(proxy, lua_dir, fault):
    sk, ups = fault_proxy(proxy, lua_dir, extra="lua_memory = 64m")
    for _ in range(2):
        r = get(sk, "/mem", headers={"x-fault": fault}, timeout=30)
        assert_filter_error(r)
    assert ups["up"].accepted == 0
    assert wait_for(lambda: errors(sk, "faults", "memory") + errors(sk, "faults", "budget") == 2,
                    5), (errors(sk, "faults", "memory"), errors(sk, "faults", "budget"))
    if not SANITIZED:
        rss = sk.vmrss_kb()
        assert rss < 200 * 1024, f"VmRSS {rss} kB after a capped allocation"
    check_next_request_works(sk, ups, 0)


@pytest.mark.parametrize("budget", ["50ms", "2s"])
@pytest.mark.parametrize("fault", ["recurse", "recurse_c", "recurse_coroutine", "recurse_sort",
                                   "recurse_tostring"])
def test_deep_recursion(proxy, lua_dir, fault, budget):
    """Recursion through Lua, through C functions calling back into Lua
    (gsub, sort, tostring) and through nested coroutines ends in a 500, not in
    a crash: with the default budget and with a generous one, so that it is
    not only the budget that saves the process."""
    lua_dir.write("faults.lua", FAULTS)
    sk, ups = proxy(FAULT_ROUTES.replace("50ms", budget), lua_dir=lua_dir)
    assert_filter_error(get(sk, "/r", headers={"x-fault": fault}, timeout=15))
    assert sk.running()
    assert ups["up"].accepted == 0
    check_next_request_works(sk, ups, 0)


def test_faults_on_several_workers(proxy, lua_dir):
    """Every worker has its own Lua state; each survives its faults."""
    sk, ups = fault_proxy(proxy, lua_dir, workers=3)
    for i in range(6):
        assert_filter_error(get(sk, headers={"x-fault": "error"}))
        assert_filter_error(get(sk, headers={"x-fault": "loop"}, timeout=15))
        r = get(sk, f"/ok{i}")
        assert r.status == 200, r
    wait_errors(sk, "faults", "error", 6)
    wait_errors(sk, "faults", "budget", 6)
    assert len(ups["up"].requests) == 6


# --------------------------------------------------------------------------
# reload


def reload(sk):
    return http_request(sk.admin_port, "POST", "/reload", body=b"")


VERSIONED = """\
local M = {}
function M.on_request(r) r:set_header("x-version", "VERSION") end
return M
"""


def version_seen(sk, ups, path):
    r = get(sk, path)
    assert r.status == 200, r
    return ups["up"].requests[-1].header("x-version")


def test_reload_picks_up_a_changed_script(proxy, lua_dir):
    lua_dir.write("v.lua", VERSIONED.replace("VERSION", "1"))
    sk, ups = proxy("[route r]\nlistener = main\ncluster = up\nlua = v.lua\n", lua_dir=lua_dir)
    assert version_seen(sk, ups, "/a") == "1"
    lua_dir.write("v.lua", VERSIONED.replace("VERSION", "2"))
    r = reload(sk)
    assert r.status == 200, r
    assert wait_for(lambda: version_seen(sk, ups, "/b") == "2", 5), ups["up"].requests[-1].headers


def test_reload_with_a_broken_script_keeps_the_old_one(proxy, lua_dir):
    lua_dir.write("v.lua", VERSIONED.replace("VERSION", "1"))
    sk, ups = proxy("[route r]\nlistener = main\ncluster = up\nlua = v.lua\n", lua_dir=lua_dir)
    assert version_seen(sk, ups, "/a") == "1"
    lua_dir.write("v.lua", SYNTAX_ERROR)
    r = reload(sk)
    assert r.status == 400, r
    assert b"v.lua:3:" in r.body, r
    for i in range(5):
        assert version_seen(sk, ups, f"/after{i}") == "1"
    assert sk.running()


# --------------------------------------------------------------------------
# r:respond(status, body, headers, reason)


REASONS = """\
local M = {}
function M.on_request(r)
  local mode = r:header("x-mode")
  if mode == "deny" then return r:respond(403, "no\\n", nil, "ip_denied") end
  if mode == "long" then return r:respond(403, "no\\n", nil, string.rep("a", 65)) end
  if mode == "upper" then return r:respond(403, "no\\n", nil, "Denied") end
  if mode == "number" then return r:respond(403, "no\\n", nil, 7) end
  if mode == "max" then return r:respond(429, "", {}, string.rep("z", 64)) end
  if mode == "plain" then return r:respond(403, "no\\n") end
end
function M.on_response(r)
  if r:status() == 500 then r:respond(503, "later\\n", nil, "upstream_sick") end
end
return M
"""


def test_respond_reason_in_header_and_access_log(sidekick, upstream, lua_dir):
    lua_dir.write("reasons.lua", REASONS)
    up = upstream(lambda req: Reply(status=500 if req.path == "/sick" else 200, body=b"up"))
    sk = sidekick(sk_ini("[listener main]\naddress = 127.0.0.1:{listen}\n\n"
                         "[route api]\nlistener = main\ncluster = up\nlua = reasons.lua\n\n"
                         "[cluster up]\nendpoints = 127.0.0.1:{up}\n",
                         access_log="stdout", extra=f"lua_dir = {lua_dir}\n"), up=up.port)
    r = get(sk, "/d", headers={"x-mode": "deny"})
    assert_local_reply(r, 403, "ip_denied")
    assert r.body == b"no\n"
    r = get(sk, "/m", headers={"x-mode": "max"})
    assert_local_reply(r, 429, "z" * 64)
    r = get(sk, "/p", headers={"x-mode": "plain"})
    assert r.status == 403 and r.header("x-sidekick-reason") is None, r
    r = get(sk, "/sick")
    assert_local_reply(r, 503, "upstream_sick")
    assert r.body == b"later\n"
    assert [q.path for q in up.requests] == ["/sick"]
    assert sk.stop() == 0
    log = {l["path"]: l for l in sk.access_log_lines()}
    assert log["/d"]["status"] == 403 and log["/d"]["reason"] == "ip_denied"
    assert log["/m"]["reason"] == "z" * 64
    assert log["/p"]["status"] == 403 and log["/p"]["reason"] is None
    assert log["/sick"]["status"] == 503 and log["/sick"]["reason"] == "upstream_sick"


@pytest.mark.parametrize("mode", ["long", "upper", "number"])
def test_respond_bad_reason_is_a_filter_error(proxy, lua_dir, mode):
    lua_dir.write("reasons.lua", REASONS)
    sk, ups = proxy("[route api]\nlistener = main\ncluster = up\nlua = reasons.lua\n",
                    lua_dir=lua_dir)
    assert_filter_error(get(sk, "/x", headers={"x-mode": mode}))
    wait_errors(sk, "api", "error", 1)
    assert "bad argument #4 to 'respond' (reason must be 1..64 characters of [a-z0-9_])" \
        in sk.stderr_text()
    assert ups["up"].requests == []


# --------------------------------------------------------------------------
# M.init(config, info): load-time checks of a route's settings


INIT_CHECKS_CLUSTER = """\
local M = {}
local target
function M.init(cfg, info)
  if not info.clusters[cfg.cluster or ""] then
    error("lua.cluster '" .. tostring(cfg.cluster) .. "' is not a cluster", 0)
  end
  target = cfg.cluster
  cfg.checked_by = info.route
end
function M.on_request(r)
  r:set_cluster(target)
  r:set_header("x-checked-by", r:config().checked_by)
  r:set_header("x-os", type(os))
end
return M
"""


def test_init_typo_in_a_cluster_fails_check(tmp_path, lua_dir, sidekick_bin):
    lua_dir.write("init.lua", INIT_CHECKS_CLUSTER)
    p = write_conf(tmp_path, route_with("lua = init.lua\nlua.cluster = upp"), lua_dir)
    res = run_sidekick(["-t", "-c", str(p)])
    check_fails(res, "conf.ini:", "[route api] lua:", f"{lua_dir}/init.lua: init: "
                "lua.cluster 'upp' is not a cluster")
    assert "configuration OK" not in res.stderr
    res = run_sidekick(["-c", str(p)])
    check_fails(res, "lua.cluster 'upp' is not a cluster")


def test_init_passes_and_requests_go_through(proxy, lua_dir):
    """init gets the route's lua.* keys in the table r:config() returns, the
    route name and the config's clusters; it runs in the sandbox."""
    lua_dir.write("init.lua", INIT_CHECKS_CLUSTER)
    sk, ups = proxy("[route api]\nlistener = main\ncluster = up\nlua = init.lua\n"
                    "lua.cluster = other\n", clusters=("up", "other"), lua_dir=lua_dir)
    r = get(sk, "/x")
    assert r.status == 200 and r.body == b"other GET /x", r
    [req] = ups["other"].requests
    assert req.header("x-checked-by") == "api"
    assert req.header("x-os") == "nil"
    assert ups["up"].requests == []


@pytest.mark.parametrize("init,needle", [
    ("function M.init() error('boom') end", "init.lua: init: "),
    ("function M.init() while true do end end", "lua_budget exceeded"),
    ("function M.init() local t = {} for i = 1, 1e9 do t[i] = i end end", "lua_memory exceeded"),
    ("function M.init() return os.exit(3) end", "attempt to index global 'os'"),
    ("M.init = 'yes'", "init.lua: init must be a function"),
])
def test_init_failures_fail_check(tmp_path, lua_dir, sidekick_bin, init, needle):
    lua_dir.write("init.lua", f"local M = {{}}\n{init}\nreturn M\n")
    p = write_conf(tmp_path, route_with("lua = init.lua"), lua_dir)
    p.write_text(p.read_text().replace("access_log = off\n", "access_log = off\nlua_memory = 8m\n"))
    check_fails(run_sidekick(["-t", "-c", str(p)], timeout=30), "[route api] lua:", needle)


def test_reload_with_a_failing_init_keeps_the_old_generation(proxy, lua_dir):
    lua_dir.write("init.lua", INIT_CHECKS_CLUSTER)
    sk, ups = proxy("[route api]\nlistener = main\ncluster = up\nlua = init.lua\n"
                    "lua.cluster = up\n", lua_dir=lua_dir)
    assert get(sk, "/a").status == 200
    gen = json.loads(sk.admin_get("/config").body)["generation"]
    sk.config.write_text(sk.config.read_text().replace("lua.cluster = up", "lua.cluster = nope"))
    r = reload(sk)
    assert r.status == 400, r
    assert b"init: lua.cluster 'nope' is not a cluster" in r.body, r
    assert json.loads(sk.admin_get("/config").body)["generation"] == gen
    for i in range(3):
        r = get(sk, f"/after{i}")
        assert r.status == 200, r
    assert [q.target for q in ups["up"].requests] == ["/a", "/after0", "/after1", "/after2"]
    assert all(q.header("x-checked-by") == "api" for q in ups["up"].requests)


# --------------------------------------------------------------------------
# sidekick lua-test: init, and budgets in CPU time


OFFLINE_INIT_TEST = """\
T.case("init runs with the config, route and clusters given", function()
  local f = T.filter("init.lua", { cluster = "b" }, { clusters = { "a", "b" }, route = "r1" })
  local r = T.request{}
  T.eq(f:request(r).action, "continue")
  T.eq(r.cluster, "b")
  T.eq(r.headers["x-checked-by"], "r1")
end)
T.case("an init error fails T.filter with the script's message", function()
  local ok, err = pcall(T.filter, "init.lua", { cluster = "c" }, { clusters = { "a", "b" } })
  T.eq(ok, false)
  T.ok(err:find("init.lua: init: lua.cluster 'c' is not a cluster", 1, true), err)
end)
T.case("without a cluster list every name is a cluster", function()
  local f = T.filter("init.lua", { cluster = "anything" })
  local r = T.request{}
  T.eq(f:request(r).action, "continue")
  T.eq(r.headers["x-checked-by"], "test")
end)
T.case("an init over its budget fails T.filter", function()
  local ok, err = pcall(T.filter, "spin_init.lua")
  T.eq(ok, false)
  T.ok(err:find("lua_budget exceeded", 1, true), err)
end)
"""


def test_lua_test_runs_init(lua_dir, sidekick_bin):
    lua_dir.write("init.lua", INIT_CHECKS_CLUSTER)
    lua_dir.write("spin_init.lua", "return { init = function() while true do end end }\n")
    t = lua_dir.write("init_test.lua", OFFLINE_INIT_TEST)
    res = run_sidekick(["lua-test", str(t)], timeout=60)
    assert res.returncode == 0, res.stdout + res.stderr
    assert res.stdout.count("\nok ") == 4 and "# 4 passed, 0 failed" in res.stdout, res.stdout


def test_lua_test_budget_counts_cpu_time(lua_dir, sidekick_bin):
    """The offline runner's budget is the hook's CPU time: a runner that is
    not scheduled (here: stopped with SIGSTOP, as on a busy machine) does not
    fail hooks that need a few ms of CPU of their 50 ms."""
    import signal
    import subprocess
    from harness import SIDEKICK_BIN
    lua_dir.write("spin.lua", """
local M = {}
function M.on_request(r)
  local x = 0
  for i = 1, tonumber(r:config().n) do x = x + i % 7 end
  r:set_header("x-sum", tostring(x))
end
return M
""")
    t = lua_dir.write("spin_test.lua", """
T.case("400 hook calls, each a few ms of CPU", function()
  local f = T.filter("spin.lua", { n = 1000000 }, { budget = 50 })
  for i = 1, 400 do
    local res = f:request(T.request{})
    T.eq(res.action, "continue", res.error)
  end
end)
""")
    p = subprocess.Popen([SIDEKICK_BIN, "lua-test", str(t)], stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, text=True)
    stops = 0
    try:
        for _ in range(4):
            time.sleep(0.2)
            if p.poll() is not None:
                break
            p.send_signal(signal.SIGSTOP)
            stops += 1
            time.sleep(0.3)
            p.send_signal(signal.SIGCONT)
        out, err = p.communicate(timeout=120)
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()
    assert stops >= 1, "the runner ended before it could be stopped once"
    assert p.returncode == 0, out + err
    assert "ok 1 - 400 hook calls" in out and "# 1 passed, 0 failed" in out, out


# --------------------------------------------------------------------------
# config errors


def write_conf(tmp_path, routes, lua_dir):
    p = tmp_path / "conf.ini"
    admin, listen = free_ports(2)
    p.write_text(
        f"[sidekick]\nworkers = 1\nadmin = 127.0.0.1:{admin}\naccess_log = off\n"
        f"lua_dir = {lua_dir}\n\n"
        f"[listener main]\naddress = 127.0.0.1:{listen}\n\n"
        + routes +
        "\n[cluster up]\nendpoints = 127.0.0.1:1\n")
    return p


def route_with(lines):
    return "[route api]\nlistener = main\ncluster = up\n" + lines + "\n"


def test_check_accepts_every_example(tmp_path, sidekick_bin):
    routes = ""
    for name, cfg in [("auth", "lua.keys = k"), ("canary", "lua.cluster = up"),
                      ("rewrite", "lua.from = ^/a\nlua.to = /b"), ("response_headers", ""),
                      ("denylist", "lua.deny_ips = 192.0.2.1")]:
        routes += (f"[route {name}]\nlistener = main\nprefix = /{name}/\ncluster = up\n"
                   f"lua = {name}.lua\n{cfg}\n\n")
    p = write_conf(tmp_path, routes, EXAMPLES)
    res = run_sidekick(["-t", "-c", str(p)])
    assert res.returncode == 0, res.stderr


SYNTAX_ERROR = "local M = {}\n\nM x\nreturn M\n"


def test_syntax_error_names_file_and_line(tmp_path, lua_dir, sidekick_bin):
    lua_dir.write("bad.lua", SYNTAX_ERROR)
    p = write_conf(tmp_path, route_with("lua = bad.lua"), lua_dir)
    res = run_sidekick(["-t", "-c", str(p)])
    check_fails(res, "bad.lua:3:", "conf.ini:")
    assert "api" in res.stderr


def test_syntax_error_fails_startup(tmp_path, lua_dir, sidekick_bin):
    lua_dir.write("bad.lua", SYNTAX_ERROR)
    p = write_conf(tmp_path, route_with("lua = bad.lua"), lua_dir)
    res = run_sidekick(["-c", str(p)])
    check_fails(res, "bad.lua:3:")


def test_syntax_error_in_a_required_module(tmp_path, lua_dir, sidekick_bin):
    lua_dir.write("lib/broken.lua", "return {\n  a = 1\n  b = 2\n}\n")
    lua_dir.write("main.lua", "local b = require('lib.broken')\nreturn {}\n")
    p = write_conf(tmp_path, route_with("lua = main.lua"), lua_dir)
    check_fails(run_sidekick(["-t", "-c", str(p)]), "broken.lua:3:")


@pytest.mark.parametrize("script,needle", [
    ("error('top level boom')\n", "top level boom"),
    ("return 42\n", "table"),
    ("return nil\n", "table"),
    ("local x = require('no.such.module')\nreturn {}\n", "no.such.module"),
    ("return { on_request = 1 }\n", "on_request must be a function"),
    ("return { on_response = 'x' }\n", "on_response must be a function"),
])
def test_bad_script_fails_check(tmp_path, lua_dir, sidekick_bin, script, needle):
    lua_dir.write("bad.lua", script)
    p = write_conf(tmp_path, route_with("lua = bad.lua"), lua_dir)
    res = run_sidekick(["-t", "-c", str(p)])
    check_fails(res, "bad.lua", needle, "conf.ini:", "[route api] lua:")


def test_lua_keys_without_lua(tmp_path, sidekick_bin):
    p = write_conf(tmp_path, route_with("lua.keys = k"), EXAMPLES)
    res = run_sidekick(["-t", "-c", str(p)])
    check_fails(res, "lua.", "conf.ini:", "[route api]")


def test_lua_budget_without_lua(tmp_path, sidekick_bin):
    p = write_conf(tmp_path, route_with("lua_budget = 10ms"), EXAMPLES)
    res = run_sidekick(["-t", "-c", str(p)])
    check_fails(res, "conf.ini:", "[route api] lua_budget: needs 'lua'")


def test_missing_script(tmp_path, lua_dir, sidekick_bin):
    p = write_conf(tmp_path, route_with("lua = nope.lua"), lua_dir)
    res = run_sidekick(["-t", "-c", str(p)])
    check_fails(res, "nope.lua", "conf.ini:")


def test_bad_lua_budget_and_memory(tmp_path, sidekick_bin):
    p = write_conf(tmp_path, route_with("lua = rewrite.lua\nlua_budget = soon"), EXAMPLES)
    check_fails(run_sidekick(["-t", "-c", str(p)]), "lua_budget")
    p = write_conf(tmp_path, route_with("lua = rewrite.lua"), EXAMPLES)
    p.write_text(p.read_text().replace("access_log = off\n", "access_log = off\nlua_memory = lots\n"))
    check_fails(run_sidekick(["-t", "-c", str(p)]), "lua_memory")


def test_absolute_script_path(tmp_path, lua_dir, sidekick_bin):
    """lua = an absolute path outside lua_dir."""
    p = write_conf(tmp_path, route_with(f"lua = {EXAMPLES / 'rewrite.lua'}"), lua_dir)
    res = run_sidekick(["-t", "-c", str(p)])
    assert res.returncode == 0, res.stderr


# --------------------------------------------------------------------------
# metadata shared with C plugins



def test_meta_is_shared_with_c_plugins(proxy, lua_dir):
    """A route plugin's set_meta is visible to r:meta(); r:set_meta() values
    live across on_request and on_response; both reach the upstream/client."""
    if missing_fixtures(["fx_headers"]):
        pytest.skip("fx_headers.so not built")
    lua_dir.write("meta.lua", """
local M = {}
function M.on_request(r)
  r:set_header("x-from-c", r:meta("tenant") or "absent")
  r:set_meta("lua-said", "hello")
  r:set_header("x-missing", tostring(r:meta("nope")))
end
function M.on_response(r)
  r:set_response_header("x-meta", (r:meta("lua-said") or "-") .. "/" .. (r:meta("tenant") or "-"))
end
return M
""")
    routes = f"""
[plugin tag]
load = {PLUGIN_DIR}/fx_headers.so
set_meta = tenant=acme

[route api]
listener = main
cluster = up
plugins = tag
lua = meta.lua
"""
    sk, ups = proxy(routes, lua_dir=lua_dir)
    resp = get(sk, "/m")
    assert resp.status == 200, resp
    assert resp.header("x-meta") == "hello/acme"
    req = ups["up"].requests[-1]
    assert req.header("x-from-c") == "acme"
    assert req.header("x-missing") == "nil"
