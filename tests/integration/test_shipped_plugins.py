"""The plugins shipped in plugins/ (built into BUILD/plugins through
pkg-config alone), through the real binary: what the upstream received and
what the client got.

Run by hand with:

    SIDEKICK_BIN=build/sidekick SIDEKICK_BUILD_DIR=build \\
        /usr/bin/python3 -m pytest -q tests/integration/test_shipped_plugins.py
"""

import os

import pytest

from harness import REPO, Reply, header_values, http_request, run_sidekick

BUILD_DIR = os.environ.get("SIDEKICK_BUILD_DIR", str(REPO / "build"))
SHIPPED_DIR = os.path.join(BUILD_DIR, "plugins")


@pytest.fixture(autouse=True)
def _built():
    if not os.path.exists(os.path.join(SHIPPED_DIR, "headers.so")):
        pytest.fail(f"headers.so not built in {SHIPPED_DIR} (set SIDEKICK_BUILD_DIR)")


def ini(plugin_keys: str) -> str:
    return f"""[sidekick]
workers = 1
admin = 127.0.0.1:{{admin}}
access_log = off
plugin_dir = {SHIPPED_DIR}

[plugin hdr]
load = headers.so
{plugin_keys}

[listener main]
address = 127.0.0.1:{{listen}}

[route all]
listener = main
cluster = up
plugins = hdr

[cluster up]
endpoints = 127.0.0.1:{{up}}
"""


HEADERS_KEYS = """request_add = x-a: b
request_set = X-Env: prod
request_remove = cookie
request_remove = x-drop
response_add = x-served-by: sidekick
response_set = cache-control: no-store
response_remove = server
"""


def test_headers_edits_both_ways(sidekick, upstream):
    up = upstream(lambda req: Reply(body=b"ok", headers=[("Server", "origin/1.0"),
                                                          ("Cache-Control", "max-age=60"),
                                                          ("Cache-Control", "public"),
                                                          ("X-Up", "1")]))
    sk = sidekick(ini(HEADERS_KEYS), up=up.port)
    r = http_request(sk.port("listen"), "GET", "/h", headers=[
        ("X-A", "client"), ("X-Env", "dev"), ("X-Env", "test"), ("Cookie", "sid=1"), ("X-Drop", "1"),
        ("X-Keep", "k")])
    assert r.status == 200 and r.body == b"ok", r
    [q] = up.requests
    assert header_values(q.headers, "x-a") == ["client", "b"]
    assert header_values(q.headers, "x-env") == ["prod"]
    assert header_values(q.headers, "cookie") == []
    assert header_values(q.headers, "x-drop") == []
    assert header_values(q.headers, "x-keep") == ["k"]
    assert r.header_all("server") == []
    assert r.header_all("cache-control") == ["no-store"]
    assert r.header_all("x-served-by") == ["sidekick"]
    assert r.header_all("x-up") == ["1"]


def test_headers_remove_then_add_sends_one(sidekick, upstream):
    """Removes run before sets and adds: remove + add of one name sends
    exactly the configured value, whatever the client sent."""
    up = upstream(lambda req: Reply(body=b"ok"))
    sk = sidekick(ini("request_add = x-role: user\nrequest_remove = x-role\n"), up=up.port)
    r = http_request(sk.port("listen"), "GET", "/r", headers=[("X-Role", "admin"), ("x-role", "root")])
    assert r.status == 200, r
    [q] = up.requests
    assert header_values(q.headers, "x-role") == ["user"]


@pytest.mark.parametrize("keys,needle", [
    ("request_ad = x: 1", "unknown key 'request_ad'"),
    ("request_add = nocolon", "request_add: expected 'name: value', not 'nocolon'"),
    ("response_remove = a: b", "response_remove: expected a header name, not 'a: b'"),
    ("request_set = bad name: x", "request_set: bad header name 'bad name'"),
    ("response_set = : x", "response_set: empty header name"),
])
def test_headers_bad_keys_refused(tmp_path, sidekick_bin, keys, needle):
    text = ini(keys).format(admin=2, listen=1, up=3)
    path = tmp_path / "h.ini"
    path.write_text(text)
    res = run_sidekick(["-t", "-c", str(path)])
    assert res.returncode == 1, res
    line = text.splitlines().index(keys) + 1
    assert needle in res.stderr, res.stderr
    assert f"headers: line {line}:" in res.stderr, res.stderr
    assert "[plugin hdr]" in res.stderr, res.stderr


def test_headers_plugin_check_ok(tmp_path, sidekick_bin):
    path = tmp_path / "ok.ini"
    path.write_text(ini(HEADERS_KEYS).format(admin=2, listen=1, up=3))
    res = run_sidekick(["-t", "-c", str(path)])
    assert res.returncode == 0, res
