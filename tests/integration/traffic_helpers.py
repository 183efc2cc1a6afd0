"""
traffic_helpers.py — what the traffic tests (test_balancing.py,
test_health.py, test_outlier.py) share: the INI head, a keep-alive client,
/clusters and /metrics readers, and bounded polling.
"""

import http.client
import json
import time
from typing import Callable, Dict, List, Optional

from harness import metric_value, parse_prometheus, wait_for

WAIT = 20.0  # upper bound of every wait (sanitizer builds are slow); never a timing assertion


def ini(body: str, workers: int = 1, extra: str = "") -> str:
    return ("[sidekick]\n"
            f"workers = {workers}\n"
            "admin = 127.0.0.1:{admin}\n"
            "access_log = off\n"
            "drain_timeout = 2s\n"
            "log_level = info\n"
            f"{extra}\n" + body)


def cluster_ini(name: str, ups, keys: str = "") -> str:
    eps = ", ".join(u.addr for u in ups)
    return f"[cluster {name}]\nendpoints = {eps}\n{keys}\n"


def route_ini(cluster: str = "c", listener: str = "main", name: str = "all", extra: str = "") -> str:
    return (f"[listener {listener}]\naddress = 127.0.0.1:{{listen}}\n\n"
            f"[route {name}]\nlistener = {listener}\ncluster = {cluster}\n{extra}\n")


class Client:
    """Sequential requests on keep-alive connections (reopened when one
    closes), each answered fully before the next."""

    def __init__(self, port: int, conns: int = 1, source: Optional[str] = None):
        self.port = port
        self.source = source
        self.conns: List[Optional[http.client.HTTPConnection]] = [None] * conns
        self.turn = 0

    def _conn(self, i: int) -> http.client.HTTPConnection:
        if self.conns[i] is None:
            self.conns[i] = http.client.HTTPConnection(
                "127.0.0.1", self.port, timeout=30,
                source_address=(self.source, 0) if self.source else None)
        return self.conns[i]

    def get(self, path: str = "/", headers: Optional[Dict[str, str]] = None):
        """(status, x-upstream or None, x-sidekick-reason or None)."""
        i = self.turn % len(self.conns)
        self.turn += 1
        for attempt in range(2):
            c = self._conn(i)
            try:
                c.request("GET", path, headers=headers or {})
                r = c.getresponse()
                r.read()
                if r.getheader("connection", "").lower() == "close":
                    c.close()
                    self.conns[i] = None
                return r.status, r.getheader("x-upstream"), r.getheader("x-sidekick-reason")
            except (http.client.HTTPException, OSError):
                c.close()
                self.conns[i] = None
                if attempt == 1:
                    raise
        raise AssertionError("not reached")

    def close(self):
        for c in self.conns:
            if c is not None:
                c.close()


def clusters(sk) -> dict:
    r = sk.admin_get("/clusters")
    assert r.status == 200, r
    return {c["name"]: c for c in json.loads(r.body)["clusters"]}


def endpoints(sk, cluster: str = "c") -> Dict[str, dict]:
    """The endpoints of the set in force of `cluster`, by address."""
    return {e["address"]: e for e in clusters(sk)[cluster]["endpoints"]}


def metric(sk, name: str, **labels):
    return metric_value(parse_prometheus(sk.admin_get("/metrics").body.decode()), name, **labels)


def until(pred: Callable[[], bool], what: str, timeout: float = WAIT, interval: float = 0.02):
    """Polls pred until it holds; fails the test naming `what` otherwise."""
    assert wait_for(pred, timeout, interval), f"not within {timeout}s: {what}"


def shares(names: List[Optional[str]], ups) -> Dict[str, float]:
    n = len(names)
    return {u.name: names.count(u.name) / n for u in ups}


def log_lines(sk, needle: str) -> List[str]:
    return [line for line in sk.stderr_text().splitlines() if needle in line]


def now() -> float:
    return time.monotonic()
