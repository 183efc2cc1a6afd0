"""on_drain (plugin ABI 1.2): the host calls it once per instance when the
instance will serve no more requests (after every worker's worker_fini: at
shutdown, or for a generation retired by a reload), then keeps the instance
alive while its HTTP calls are in flight, within drain_timeout, before
destroy. Through the fx_drain fixture (tests/plugins/fx_drain.c), which
fetches a URL from on_drain and records what happened in a file.
"""

import json
import subprocess
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from harness import PLUGIN_DIR, http_request, missing_fixtures, sk_ini, wait_for

SK_HTTP_ECANCELLED = -4


@pytest.fixture(autouse=True)
def _fixtures_built():
    missing = missing_fixtures(["fx_drain"])
    if missing:
        pytest.fail(f"fixture plugins not built in {PLUGIN_DIR}: {missing} (set SIDEKICK_PLUGIN_DIR)")


class SlowServer:
    """Answers every GET with 200 after `delay` seconds; counts them. With
    hold=True it accepts connections and never answers."""

    def __init__(self, delay=0.0, hold=False):
        self.delay = delay
        self.hits = 0
        self.lock = threading.Lock()
        self.stop = threading.Event()
        outer = self

        class H(BaseHTTPRequestHandler):
            def do_GET(self):
                with outer.lock:
                    outer.hits += 1
                if hold:
                    outer.stop.wait(30)
                    return
                time.sleep(outer.delay)
                self.send_response(200)
                self.send_header("content-length", "2")
                self.end_headers()
                self.wfile.write(b"ok")

            def log_message(self, *a):
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), H)
        self.httpd.daemon_threads = True
        self.port = self.httpd.server_address[1]
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def count(self):
        with self.lock:
            return self.hits

    def close(self):
        self.stop.set()
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def server():
    made = []

    def factory(**kw):
        s = SlowServer(**kw)
        made.append(s)
        return s

    yield factory
    for s in made:
        s.close()


def records(path):
    try:
        data = open(path, "rb").read()
    except FileNotFoundError:
        return []
    return [json.loads(line) for line in data.split(b"\n") if line.strip()]


def ini(rec, url, keys="", workers=2, drain_timeout="5s"):
    return sk_ini(f"""
[plugin drain]
load = fx_drain.so
file = {rec}
url = {url}
{keys}

[listener l]
address = 127.0.0.1:{{listen}}

[route r]
listener = l
respond = 200 ok
""", workers=workers, drain_timeout=drain_timeout, extra=f"plugin_dir = {PLUGIN_DIR}")


def evs(recs):
    return [r["ev"] for r in recs]


def test_shutdown_waits_for_the_calls_of_on_drain(sidekick, server, tmp_path):
    srv = server(delay=0.3)
    rec = tmp_path / "rec.jsonl"
    sk = sidekick(ini(rec, f"http://127.0.0.1:{srv.port}/last", keys="calls = 2"))
    assert sk.stop(timeout=30) == 0
    r = records(rec)
    assert evs(r) == ["create", "worker_fini", "worker_fini", "drain", "start", "done", "start", "done",
                      "destroy"], r
    assert r[3]["left"] == 0                              # after every worker's worker_fini
    assert r[5]["error"] == 0 and r[7]["error"] == 0      # both answered: the host waited for them
    assert r[8]["open"] == 0
    assert srv.count() == 2
    assert "drained, exiting" in sk.stderr_text()


def test_retired_generation_drains_before_release(sidekick, server, tmp_path):
    srv = server(delay=0.3)
    rec = tmp_path / "rec.jsonl"
    sk = sidekick(ini(rec, f"http://127.0.0.1:{srv.port}/last", workers=1))
    assert http_request(sk.admin_port, "POST", "/reload").status == 200
    assert wait_for(lambda: "destroy" in evs(records(rec)), 15), records(rec)
    r = records(rec)
    # generation 1: worker_fini, drain, its call answered, then destroy; generation 2 created meanwhile
    first = evs(r)
    i = first.index("drain")
    assert first[:i].count("worker_fini") == 1
    assert first[i:first.index("destroy")] == ["drain", "start", "done"]
    assert r[first.index("done")]["error"] == 0
    assert first.count("create") == 2
    assert wait_for(lambda: "generation 1 released" in sk.stderr_text(), 5)
    assert srv.count() == 1


def test_drain_timeout_bounds_the_wait(sidekick, server, tmp_path):
    srv = server(hold=True)
    rec = tmp_path / "rec.jsonl"
    sk = sidekick(ini(rec, f"http://127.0.0.1:{srv.port}/never", workers=1, drain_timeout="1s"))
    assert sk.stop(timeout=30) == 0
    r = records(rec)
    assert evs(r) == ["create", "worker_fini", "drain", "start", "done", "destroy"], r
    assert r[4]["error"] == SK_HTTP_ECANCELLED            # cut at the deadline, before destroy
    assert "drain_timeout reached with 1 plugin HTTP call(s) in flight" in sk.stderr_text()
    assert srv.count() == 1


def test_no_drain_without_serving(sidekick_bin, tmp_path):
    rec = tmp_path / "rec.jsonl"
    cfg = tmp_path / "t.ini"
    cfg.write_text(ini(rec, "http://127.0.0.1:9/x").replace("{listen}", "1").replace("{admin}", "2"))
    r = subprocess.run([sidekick_bin, "-t", "-c", str(cfg)], capture_output=True, text=True, timeout=30)
    assert r.returncode == 0, r.stderr
    assert evs(records(rec)) == ["create", "destroy"]
