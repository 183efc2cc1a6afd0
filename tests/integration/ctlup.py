"""
ctlup.py — a controllable test upstream for the traffic tests (standard
library only).

CtlUpstream is an HTTP/1.1 server (keep-alive, content-length bodies) whose
behaviour is switched on command while it runs, either from the test's own
process (set_mode(), set_health()), over HTTP on its own port (a control URL:
GET /__ctl?mode=...&health=..., answered 200 and never counted as
traffic), or, for a standalone instance (`python3 ctlup.py --port P --name
a`, CtlProcess below), over its side channel: a second port that answers
while the upstream refuses.

Modes for traffic (every path but the health path):
  ok           200, body "<name>\\n", header x-upstream: <name>
  status:N     answers N (e.g. status:503)
  slow:S       waits S seconds (float), then 200
  reset        reads the request, then resets the connection (RST)
  stall        reads the request and never answers (the connection is held
               until the peer closes it, the mode changes, or 60 s pass)
  refuse       closes its listening socket: connects are refused (the port
               is bound again when the mode changes)
The health path (health_path, default /healthz) answers by its own mode:
  healthy      200
  unhealthy    503
  follow       as the traffic mode
Counters (thread-safe): traffic requests and health checks received, each
with the time they arrived.
"""

import argparse
import socket
import threading
import time
from typing import List, Optional
from urllib.parse import parse_qs, urlsplit


class CtlUpstream:
    def __init__(self, name: str = "up", host: str = "127.0.0.1", port: int = 0,
                 health_path: str = "/healthz", mode: str = "ok", health: str = "healthy", tls=None):
        self.name = name
        self.tls = tls  # an ssl.SSLContext (server side): every connection is TLS
        self.host = host
        self.health_path = health_path
        self.lock = threading.Lock()
        self.cond = threading.Condition(self.lock)
        self._mode = mode
        self._health = health
        self.traffic: List[float] = []   # arrival times of traffic requests
        self.checks: List[float] = []    # arrival times of health checks
        self.check_hosts: List[str] = []  # Host header of each health check
        self.paths: List[str] = []       # targets of traffic requests
        self.headers: List[dict] = []    # lower-cased headers of traffic requests
        self.active = 0                  # traffic requests being answered now
        self.max_active = 0
        self._stop = False
        self._conns: List[socket.socket] = []
        self.sock: Optional[socket.socket] = None
        self.port = port
        self._listen()
        self.port = self.sock.getsockname()[1]
        self.addr = f"{host}:{self.port}"
        self._thread = threading.Thread(target=self._accept_loop, daemon=True, name=f"ctlup-{name}")
        self._thread.start()
        if mode == "refuse":
            self._close_listener()

    # -- the side channel
    def set_mode(self, mode: str):
        with self.cond:
            was = self._mode
            self._mode = mode
            self.cond.notify_all()
        if mode == "refuse" and was != "refuse":
            self._close_listener()
            with self.lock:  # and the connections it had: nothing of it answers any more
                conns = list(self._conns)
            for c in conns:
                try:
                    c.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
        elif mode != "refuse" and was == "refuse":
            self._listen()

    def set_health(self, health: str):
        with self.lock:
            self._health = health

    @property
    def mode(self) -> str:
        with self.lock:
            return self._mode

    def counts(self):
        """(traffic requests, health checks) received so far."""
        with self.lock:
            return len(self.traffic), len(self.checks)

    @property
    def requests(self) -> int:
        with self.lock:
            return len(self.traffic)

    @property
    def health_checks(self) -> int:
        with self.lock:
            return len(self.checks)

    def close(self):
        self._stop = True
        with self.cond:
            self.cond.notify_all()
        self._close_listener()
        self._thread.join(timeout=2)
        with self.lock:
            conns = list(self._conns)
        for c in conns:
            try:
                c.close()
            except OSError:
                pass

    # -- the server
    def _listen(self):
        for _ in range(100):  # the port may linger a moment after a close
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                s.bind((self.host, self.port))
            except OSError:
                s.close()
                time.sleep(0.02)
                continue
            s.listen(256)
            s.settimeout(0.05)
            with self.lock:
                self.sock = s
            return
        raise OSError(f"cannot bind {self.host}:{self.port}")

    def _close_listener(self):
        with self.lock:
            s, self.sock = self.sock, None
        if s is not None:
            try:  # stops listening at once, even while the accept loop waits on it (Linux)
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            s.close()

    def _accept_loop(self):
        while not self._stop:
            with self.lock:
                s = self.sock
            if s is None:
                time.sleep(0.02)
                continue
            try:
                c, _ = s.accept()
            except (socket.timeout, OSError):
                continue
            c.settimeout(None)
            with self.lock:
                self._conns.append(c)
            threading.Thread(target=self._start, args=(c,), daemon=True).start()

    def _start(self, c: socket.socket):
        if self.tls is not None:
            raw = c
            try:
                raw.settimeout(10)
                c = self.tls.wrap_socket(raw, server_side=True)
                c.settimeout(None)
            except (OSError, ValueError):
                with self.lock:
                    if raw in self._conns:
                        self._conns.remove(raw)
                raw.close()
                return
            with self.lock:
                if raw in self._conns:
                    self._conns.remove(raw)
                self._conns.append(c)
        self._serve(c)

    def _read_request(self, c: socket.socket, buf: bytearray):
        while b"\r\n\r\n" not in buf:
            if len(buf) > 1 << 16:
                return None
            data = c.recv(65536)
            if not data:
                return None
            buf += data
        i = buf.index(b"\r\n\r\n")
        head = bytes(buf[:i]).decode("latin-1")
        del buf[:i + 4]
        lines = head.split("\r\n")
        parts = lines[0].split(" ")
        if len(parts) != 3:
            return None
        headers = {}
        for line in lines[1:]:
            if ":" in line:
                k, v = line.split(":", 1)
                headers[k.strip().lower()] = v.strip()
        n = int(headers.get("content-length", "0") or 0)
        while len(buf) < n:
            data = c.recv(65536)
            if not data:
                return None
            buf += data
        del buf[:n]
        return parts[0], parts[1], headers

    @staticmethod
    def _reply(c: socket.socket, status: int, body: bytes, extra: str = "", close: bool = False):
        head = (f"HTTP/1.1 {status} X\r\ncontent-length: {len(body)}\r\n{extra}"
                f"{'connection: close' + chr(13) + chr(10) if close else ''}\r\n")
        c.sendall(head.encode() + body)

    def _serve(self, c: socket.socket):
        buf = bytearray()
        try:
            while not self._stop:
                req = self._read_request(c, buf)
                if req is None:
                    return
                method, target, headers = req
                path = urlsplit(target).path
                if path == "/__ctl":
                    q = parse_qs(urlsplit(target).query)
                    if "mode" in q:
                        self.set_mode(q["mode"][0])
                    if "health" in q:
                        self.set_health(q["health"][0])
                    self._reply(c, 200, f"mode={self.mode}\n".encode())
                    continue
                now = time.monotonic()
                with self.lock:
                    mode = self._mode
                    if path == self.health_path:
                        self.checks.append(now)
                        self.check_hosts.append(headers.get("host", ""))
                        if self._health != "follow":
                            mode = "ok" if self._health == "healthy" else "status:503"
                    else:
                        self.traffic.append(now)
                        self.paths.append(target)
                        self.headers.append(headers)
                    counted = path != self.health_path
                    if counted:
                        self.active += 1
                        self.max_active = max(self.max_active, self.active)
                try:
                    if not self._answer(c, mode, headers):
                        return
                finally:
                    if counted:
                        with self.lock:
                            self.active -= 1
        except (ConnectionError, OSError):
            pass
        finally:
            with self.lock:
                if c in self._conns:
                    self._conns.remove(c)
            try:
                c.close()
            except OSError:
                pass

    def _answer(self, c: socket.socket, mode: str, headers: dict) -> bool:
        """Answers one request by mode; False when the connection is done."""
        extra = f"x-upstream: {self.name}\r\n"
        body = f"{self.name}\n".encode()
        if mode == "ok" or mode == "refuse":
            self._reply(c, 200, body, extra)
        elif mode.startswith("status:"):
            self._reply(c, int(mode[7:]), body, extra)
        elif mode.startswith("slow:"):
            time.sleep(float(mode[5:]))
            self._reply(c, 200, body, extra)
        elif mode == "reset":
            c.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
            return False
        elif mode == "stall":
            deadline = time.monotonic() + 60
            with self.cond:
                while self._mode == "stall" and not self._stop and time.monotonic() < deadline:
                    self.cond.wait(0.1)
            return False
        else:
            self._reply(c, 500, f"unknown mode {mode}\n".encode(), extra)
        return headers.get("connection", "").lower() != "close"


class _CtlHandler:
    """The side channel of a standalone instance: its own port, so that it
    answers while the upstream refuses. GET /mode?set=M, /health?set=H,
    /stats (JSON: requests, health_checks, max_active), /reset (counters)."""

    def __init__(self, up: "CtlUpstream", host: str):
        import http.server
        import json

        class H(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_GET(self):
                u = urlsplit(self.path)
                q = parse_qs(u.query)
                if u.path == "/mode" and "set" in q:
                    up.set_mode(q["set"][0])
                elif u.path == "/health" and "set" in q:
                    up.set_health(q["set"][0])
                elif u.path == "/reset":
                    with up.lock:
                        up.traffic.clear()
                        up.checks.clear()
                        up.max_active = 0
                elif u.path != "/stats":
                    self.send_error(404)
                    return
                with up.lock:
                    body = json.dumps({"requests": len(up.traffic), "health_checks": len(up.checks),
                                       "max_active": up.max_active, "mode": up._mode}).encode()
                self.send_response(200)
                self.send_header("content-length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *a):
                pass

        self.server = http.server.ThreadingHTTPServer((host, 0), H)
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, daemon=True).start()


class CtlProcess:
    """A CtlUpstream in a process of its own (`python3 ctlup.py`), driven
    over its side channel: the same set_mode / set_health / requests /
    health_checks as the in-process one. Its threads do not share the
    test's interpreter lock, so its answer times do not depend on what the
    test and the other upstreams are doing (the ewma tests need that)."""

    def __init__(self, name: str = "up", host: str = "127.0.0.1", health_path: str = "/healthz",
                 mode: str = "ok"):
        import subprocess
        import sys
        self.name = name
        self.host = host
        self.proc = subprocess.Popen([sys.executable, __file__, "--name", name, "--host", host, "--port", "0",
                                      "--mode", mode, "--health-path", health_path],
                                     stdout=subprocess.PIPE, stdin=subprocess.DEVNULL, text=True)
        line = self.proc.stdout.readline().split()
        if len(line) != 4 or line[0] != "ctlup":
            self.proc.kill()
            raise RuntimeError(f"ctlup.py did not start: {line}")
        self.addr = line[2]
        self.port = int(self.addr.rsplit(":", 1)[1])
        self.ctl_port = int(line[3])

    def _get(self, path: str) -> dict:
        import http.client
        import json
        c = http.client.HTTPConnection(self.host, self.ctl_port, timeout=10)
        try:
            c.request("GET", path)
            return json.loads(c.getresponse().read())
        finally:
            c.close()

    def set_mode(self, mode: str):
        self._get(f"/mode?set={mode}")

    def set_health(self, health: str):
        self._get(f"/health?set={health}")

    def reset(self):
        self._get("/reset")

    @property
    def requests(self) -> int:
        return self._get("/stats")["requests"]

    @property
    def health_checks(self) -> int:
        return self._get("/stats")["health_checks"]

    def close(self):
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=5)
            except Exception:
                self.proc.kill()


def main():
    ap = argparse.ArgumentParser(description="a controllable test upstream (see the module's text)")
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, required=True, help="0: any free port (printed)")
    ap.add_argument("--name", default="up")
    ap.add_argument("--mode", default="ok")
    ap.add_argument("--health-path", default="/healthz")
    a = ap.parse_args()
    u = CtlUpstream(a.name, a.host, a.port, a.health_path, a.mode)
    ctl = _CtlHandler(u, a.host)
    # the first line says where it listens and where its side channel is
    print(f"ctlup {a.name} {u.addr} {ctl.port}", flush=True)
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        u.close()


if __name__ == "__main__":
    main()
