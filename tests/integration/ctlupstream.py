"""
ctlupstream.py — a controllable test upstream for the traffic management
tests (retries, breakers, mirroring, faults, balancers, health, outliers).

CtlUpstream is harness.Upstream (it records every connection, request and
body) whose behaviour is set on command from the test, at any time, through
method calls (the side channel: the test and the server share the process):

    up.set_mode("ok")            # 200, body "<name> <method> <target>"
    up.set_mode("status", 503)   # answer with this status (body "<name> <status>")
    up.set_mode("reset")         # read the request, then reset the connection (RST)
    up.set_mode("close")         # read the request, then close without an answer
    up.set_mode("stall")         # hold the request until release() (or `stall_limit`), then 200
    up.set_mode("slow", 0.3)     # wait this many seconds, then 200
    up.set_mode("truncate")      # a 200 head promising 100 bytes, 10 of them, then close
    up.refuse() / up.listen()    # stop listening (connections are refused) / listen again
    up.set_health(False)         # GET health_path answers 503 instead of 200

A Plan scripts single requests across several upstreams, whatever endpoint
the proxy picks: the test sends `x-test-id: ID`, and each attempt of that
request, on any CtlUpstream sharing the plan, takes the next action of
plan.set(ID, [...]) (then the upstream's mode). Actions are tuples like
("status", 503), ("reset",), ("stall",), ("ok",).

Also kept: requests in flight now and at most (`in_flight`, `max_in_flight`),
the arrival time of each request (`arrivals`), and requests per path.
Standard library only; every wait is bounded.
"""

import socket
import threading
import time
from typing import Dict, List, Optional, Tuple

from harness import Reply, UpRequest, Upstream


class Plan:
    """Scripted actions per request id (the x-test-id header), shared by
    several CtlUpstreams."""

    def __init__(self):
        self.lock = threading.Lock()
        self.actions: Dict[str, List[Tuple]] = {}
        self.seen: Dict[str, List[str]] = {}  # request id -> names of the upstreams that got it, in order

    def set(self, rid: str, actions):
        with self.lock:
            self.actions[rid] = [a if isinstance(a, tuple) else (a,) for a in actions]

    def take(self, rid: str, upstream: str) -> Optional[Tuple]:
        with self.lock:
            self.seen.setdefault(rid, []).append(upstream)
            todo = self.actions.get(rid)
            return todo.pop(0) if todo else None

    def attempts(self, rid: str) -> List[str]:
        with self.lock:
            return list(self.seen.get(rid, []))


class CtlUpstream(Upstream):
    """A recording upstream whose behaviour is set on command (see the
    module docstring)."""

    def __init__(self, name: str = "up", plan: Optional[Plan] = None, health_path: str = "/healthz",
                 stall_limit: float = 30.0, **kw):
        self.mode: Tuple = ("ok",)
        self.plan = plan
        self.health_path = health_path
        self.healthy = True
        self.stall_limit = stall_limit
        self.released = threading.Event()
        self.ctl_lock = threading.Lock()
        self.in_flight = 0
        self.max_in_flight = 0
        self.arrivals: List[Tuple[float, str]] = []  # (monotonic time, target) of every app request
        self.health_checks = 0
        super().__init__(self._handle, name=name, **kw)

    # -- commands
    def set_mode(self, mode: str, arg=None):
        self.mode = (mode,) if arg is None else (mode, arg)

    def release(self):
        """Lets every stalled request (now and later) go on."""
        self.released.set()

    def hold(self):
        """Stall mode holds requests again (after release())."""
        self.released.clear()

    def set_health(self, ok: bool):
        self.healthy = ok

    def refuse(self):
        """Stops listening: new connections are refused (the port stays ours
        to listen on again; established connections go on)."""
        self._stop = True
        self._thread.join(timeout=2)
        try:
            self.sock.close()
        except OSError:
            pass

    def listen(self):
        """Listens again on the same port after refuse()."""
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind((self.host, self.port))
        self.sock.listen(256)
        self.sock.settimeout(0.1)
        self._stop = False
        self._thread = threading.Thread(target=self._accept_loop, daemon=True, name=f"upstream-{self.name}")
        self._thread.start()

    def close(self):
        self.released.set()  # no handler thread stays stalled
        super().close()

    # -- inspection
    @property
    def app_requests(self) -> List[UpRequest]:
        """Requests other than health checks (a request is listed from its
        head on: its body may still be arriving, see `complete`)."""
        return [r for r in self.requests if r.path != self.health_path]

    def count(self, path: Optional[str] = None) -> int:
        """Requests (other than health checks) received whole, of `path` if given."""
        return len([r for r in self.app_requests if r.complete and (path is None or r.path == path)])

    def seen(self) -> int:
        """Requests (other than health checks) whose head arrived, whole or not."""
        return len(self.app_requests)

    # -- the handler
    def _handle(self, req: UpRequest) -> Reply:
        if req.path == self.health_path and req.method == "GET":
            with self.ctl_lock:
                self.health_checks += 1
            return Reply(status=200 if self.healthy else 503, body=b"healthy" if self.healthy else b"unhealthy")
        action = None
        rid = req.header("x-test-id")
        if self.plan is not None and rid:
            action = self.plan.take(rid, self.name)
        if action is None:
            action = self.mode
        with self.ctl_lock:
            self.in_flight += 1
            self.max_in_flight = max(self.max_in_flight, self.in_flight)
            self.arrivals.append((time.monotonic(), req.target))
        try:
            return self._act(req, action)
        finally:
            with self.ctl_lock:
                self.in_flight -= 1

    def _act(self, req: UpRequest, action: Tuple) -> Reply:
        kind = action[0]
        ok = Reply(body=f"{self.name} {req.method} {req.target}".encode())
        if kind == "ok":
            return ok
        if kind == "status":
            return Reply(status=int(action[1]), body=f"{self.name} {action[1]}".encode())
        if kind == "reset":
            return Reply(reset=True)
        if kind == "close":
            return Reply(raw=b"")
        if kind == "stall":
            self.released.wait(self.stall_limit)
            return ok
        if kind == "truncate":
            head = b"HTTP/1.1 200 OK\r\ncontent-length: 100\r\nx-upstream: " + self.name.encode() + b"\r\n\r\n"
            return Reply(raw_parts=[(0, head + b"0123456789")])
        if kind == "slow":
            time.sleep(float(action[1]))
            return ok
        raise ValueError(f"unknown action {action!r}")
