"""Command line: --version, -t, exit codes, config error messages."""

import json
import re

import pytest

from harness import free_port, run_sidekick

VALID = """\
[sidekick]
workers = 1
admin = 127.0.0.1:{admin}
access_log = off
drain_timeout = 2s

[listener main]
address = 127.0.0.1:{listen}
header_timeout = 5s
max_body_bytes = 1m

[route api]
listener = main
prefix = /api/
method = GET, POST
timeout = 1500ms
retries = 1
cluster = api

[route rest]
listener = main
respond = 200 ok

[cluster api]
endpoints = 127.0.0.1:{up}, 127.0.0.1:{up2}
lb = round_robin
connect_timeout = 1s
"""


def write(tmp_path, text, name="test.ini"):
    p = tmp_path / name
    p.write_text(text.format(admin=free_port(), listen=free_port(), up=free_port(),
                             up2=free_port()))
    return p


def line_of(text: str, needle: str, nth: int = 1) -> int:
    """1-based line number of the nth line containing needle."""
    seen = 0
    for i, line in enumerate(text.splitlines(), 1):
        if needle in line:
            seen += 1
            if seen == nth:
                return i
    raise AssertionError(f"{needle!r} not in config")


def check_error(res, path, lines, section=None, key=None):
    """Exit 1; stderr names file:line (one of `lines`), the section, the key."""
    assert res.returncode == 1, f"exit {res.returncode}, stderr: {res.stderr!r}"
    err = res.stderr
    assert re.search(re.escape(path.name) + r":(" + "|".join(map(str, lines)) + r")\b", err), \
        f"stderr does not name {path.name}:{lines}: {err!r}"
    if section:
        assert section in err, f"stderr does not name section {section!r}: {err!r}"
    if key:
        assert key in err, f"stderr does not name key {key!r}: {err!r}"


def test_version(sidekick_bin):
    res = run_sidekick(["--version"])
    assert res.returncode == 0, res
    out = res.stdout + res.stderr
    assert re.search(r"\b\d+\.\d+\.\d+\b", out), f"no version number in {out!r}"


def test_check_valid_config_exits_0(tmp_path, sidekick_bin):
    p = write(tmp_path, VALID)
    res = run_sidekick(["-t", "-c", str(p)])
    assert res.returncode == 0, f"stderr: {res.stderr}"


def test_check_does_not_start_serving(tmp_path, sidekick_bin):
    # -t must exit promptly, not run the proxy
    p = write(tmp_path, VALID)
    res = run_sidekick(["-t", "-c", str(p)], timeout=5)
    assert res.returncode == 0


def test_unknown_key(tmp_path, sidekick_bin):
    text = VALID.replace("retries = 1\n", "retries = 1\ntimeuot = 2s\n")
    p = write(tmp_path, text)
    res = run_sidekick(["-t", "-c", str(p)])
    check_error(res, p, [line_of(text, "timeuot")], section="api", key="timeuot")


def test_unknown_key_in_sidekick_section(tmp_path, sidekick_bin):
    text = VALID.replace("access_log = off\n", "access_log = off\nwrokers = 2\n")
    p = write(tmp_path, text)
    res = run_sidekick(["-t", "-c", str(p)])
    check_error(res, p, [line_of(text, "wrokers")], section="sidekick", key="wrokers")


def test_unknown_section(tmp_path, sidekick_bin):
    text = VALID + "\n[rotue typo]\nlistener = main\n"
    p = write(tmp_path, text)
    res = run_sidekick(["-t", "-c", str(p)])
    # inih reports keys, so the line may be the section header's or its first key's
    l = line_of(text, "[rotue typo]")
    check_error(res, p, [l, l + 1], section="rotue")


def test_bad_duration(tmp_path, sidekick_bin):
    text = VALID.replace("timeout = 1500ms", "timeout = 15 parsecs")
    p = write(tmp_path, text)
    res = run_sidekick(["-t", "-c", str(p)])
    check_error(res, p, [line_of(text, "15 parsecs")], section="api", key="timeout")


def test_bad_listener_duration(tmp_path, sidekick_bin):
    text = VALID.replace("header_timeout = 5s", "header_timeout = 5x")
    p = write(tmp_path, text)
    res = run_sidekick(["-t", "-c", str(p)])
    check_error(res, p, [line_of(text, "header_timeout")], section="main", key="header_timeout")


def test_route_names_unknown_cluster(tmp_path, sidekick_bin):
    text = VALID.replace("cluster = api\n", "cluster = nope\n", 1)
    p = write(tmp_path, text)
    res = run_sidekick(["-t", "-c", str(p)])
    # the key's line is best; the route section's line is acceptable
    check_error(res, p, [line_of(text, "cluster = nope"), line_of(text, "[route api]")],
                section="api", key="cluster")
    assert "nope" in res.stderr


def test_duplicate_route_name(tmp_path, sidekick_bin):
    text = VALID + "\n[route api]\nlistener = main\nrespond = 200 dup\n"
    p = write(tmp_path, text)
    res = run_sidekick(["-t", "-c", str(p)])
    l = line_of(text, "[route api]", nth=2)
    check_error(res, p, [l, l + 1, l + 2], section="api")


def test_config_error_at_start_exits_1(tmp_path, sidekick_bin):
    text = VALID.replace("retries = 1\n", "retries = 1\nbogus = 1\n")
    p = write(tmp_path, text)
    res = run_sidekick(["-c", str(p)])
    check_error(res, p, [line_of(text, "bogus")], key="bogus")


def test_no_args_is_usage_error(sidekick_bin):
    res = run_sidekick([])
    assert res.returncode == 2, res


@pytest.mark.parametrize("args", [["--bogus"], ["-x"], ["-c"]])
def test_bad_flag_is_usage_error(sidekick_bin, args):
    res = run_sidekick(args)
    assert res.returncode == 2, res


def test_missing_file(tmp_path, sidekick_bin):
    p = tmp_path / "does-not-exist.ini"
    res = run_sidekick(["-c", str(p)])
    assert res.returncode == 1, res
    assert "does-not-exist.ini" in res.stderr
    res = run_sidekick(["-t", "-c", str(p)])
    assert res.returncode == 1, res


@pytest.mark.parametrize("old,new,key,section", [
    ("header_timeout = 5s", "max_header_bytes = 10q", "max_header_bytes", "main"),
    ("lb = round_robin", "lb = fastest", "lb", "api"),
    ("address = 127.0.0.1:{listen}", "address = 127.0.0.1", "address", "main"),
    ("workers = 1", "workers = lots", "workers", "sidekick"),
    ("retries = 1", "retries = -3", "retries", "api"),
    ("endpoints = 127.0.0.1:{up}, 127.0.0.1:{up2}", "endpoints = 127.0.0.1:99999", "endpoints",
     "api"),
])
def test_bad_values(tmp_path, sidekick_bin, old, new, key, section):
    assert old in VALID
    text = VALID.replace(old, new)
    p = write(tmp_path, text)
    res = run_sidekick(["-t", "-c", str(p)])
    check_error(res, p, [line_of(text, new)], section=section, key=key)


def test_route_without_listener(tmp_path, sidekick_bin):
    text = VALID.replace("[route rest]\nlistener = main\n", "[route rest]\n")
    p = write(tmp_path, text)
    res = run_sidekick(["-t", "-c", str(p)])
    assert res.returncode == 1, res
    assert "rest" in res.stderr and "listener" in res.stderr, res.stderr
    assert p.name in res.stderr


def test_address_in_use_at_start(tmp_path, sidekick_bin):
    import socket
    busy = socket.socket()
    busy.bind(("127.0.0.1", 0))
    busy.listen(1)
    try:
        p = tmp_path / "busy.ini"
        p.write_text(VALID.format(admin=free_port(), listen=busy.getsockname()[1], up=free_port(),
                                  up2=free_port()))
        res = run_sidekick(["-c", str(p)], timeout=10)
        assert res.returncode == 1, res
        assert str(busy.getsockname()[1]) in res.stderr, res.stderr
    finally:
        busy.close()


def test_help_lists_signals_admin_and_docs(sidekick_bin):
    res = run_sidekick(["--help"])
    assert res.returncode == 0, res
    out = res.stdout
    assert out.startswith("usage: sidekick -c FILE")
    for needle in ("SIGHUP", "reload", "SIGTERM, SIGINT", "drain", "SIGUSR1", "reopen the access log",
                   "GET /healthz /ready /metrics /stats /config /clusters", "POST /reload",
                   "POST /drain", "docs/", "configuration.md", "operations.md", "lua.md"):
        assert needle in out, needle
    assert run_sidekick(["-h"]).stdout == out


@pytest.mark.parametrize("flag", ["--help", "-h"])
def test_lua_test_help(tmp_path, sidekick_bin, flag):
    res = run_sidekick(["lua-test", flag], cwd=tmp_path)
    assert res.returncode == 0, res
    assert res.stdout.startswith("usage: sidekick lua-test"), res.stdout
    assert "docs/lua.md" in res.stdout
    assert res.stderr == ""
    assert "cannot open" not in res.stdout


@pytest.mark.parametrize("args", [["--bogus"], ["-x", "a_test.lua"], []])
def test_lua_test_usage_errors(tmp_path, sidekick_bin, args):
    res = run_sidekick(["lua-test"] + args, cwd=tmp_path)
    assert res.returncode == 2, res
    assert "usage: sidekick lua-test" in res.stderr
    if args:
        assert f"unknown option '{args[0]}'" in res.stderr
    assert res.stdout == ""


def test_lua_test_double_dash_ends_options(tmp_path, sidekick_bin):
    (tmp_path / "-odd_test.lua").write_text('T.case("runs", function() T.ok(true) end)\n')
    res = run_sidekick(["lua-test", "--", "-odd_test.lua"], cwd=tmp_path)
    assert res.returncode == 0, res
    assert "ok 1 - runs" in res.stdout


def test_demo_takes_its_ports_from_the_environment(tmp_path, sidekick_bin):
    """conf/demo with SIDEKICK_DEMO_*_PORT: the demo upstream, the listener and
    the admin endpoint are on those ports; the request goes through the Lua
    filter to the demo upstream, which serves conf/demo-www."""
    import os
    import signal
    import subprocess
    import time
    from harness import REPO, SIDEKICK_BIN, http_request
    ports = {"UPSTREAM": free_port(), "ADMIN": free_port(), "LISTEN": free_port()}
    while len(set(ports.values())) < 3:
        ports["LISTEN"] = free_port()
    env = dict(os.environ, SIDEKICK_BIN=SIDEKICK_BIN,
               **{f"SIDEKICK_DEMO_{k}_PORT": str(v) for k, v in ports.items()})
    p = subprocess.Popen([str(REPO / "conf" / "demo")], env=env, stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        deadline = time.monotonic() + 15
        ready = None
        while time.monotonic() < deadline and p.poll() is None:
            try:
                ready = http_request(ports["ADMIN"], "GET", "/ready", timeout=1)
                if ready.status == 200:
                    break
            except OSError:
                pass
            time.sleep(0.1)
        assert ready is not None and ready.status == 200, p.poll()
        r = http_request(ports["LISTEN"], "GET", "/hello.txt")
        assert r.status == 200, r
        assert r.body == (REPO / "conf" / "demo-www" / "hello.txt").read_bytes()
        assert r.header("x-content-type-options") == "nosniff", r  # the Lua filter ran
        cfg = json.loads(http_request(ports["ADMIN"], "GET", "/config").body)
        assert [c["endpoints"] for c in cfg["clusters"]] == [[f"127.0.0.1:{ports['UPSTREAM']}"]]
        assert cfg["listeners"][0]["address"] == f"127.0.0.1:{ports['LISTEN']}"
        tmp_config = cfg["file"]
        assert tmp_config != str(REPO / "conf" / "sidekick.ini")
    finally:
        if p.poll() is None:
            os.killpg(p.pid, signal.SIGTERM)
        out, err = p.communicate(timeout=30)
    assert f"127.0.0.1:{ports['LISTEN']}/hello.txt" in out
    assert not os.path.exists(tmp_config), "the temporary config was not removed"


def test_demo_config_is_usable_as_is(sidekick_bin):
    from harness import REPO
    res = run_sidekick(["-t", "-c", str(REPO / "conf" / "sidekick.ini")])
    assert res.returncode == 0, res.stderr
    text = (REPO / "conf" / "sidekick.ini").read_text()
    for line in ("admin = 127.0.0.1:15000", "address = 127.0.0.1:15001", "endpoints = 127.0.0.1:8080"):
        assert line in text.splitlines()
