"""A real dnsmasq (Debian's) for the discovery tests: started on 127.0.0.1 on
a free port with its own temp files, authoritative for the `test.` domain
(unknown names there are NXDOMAIN), stopped by PID.

* hosts: written to an --addn-hosts file; set_hosts() rewrites it and sends
  SIGHUP (dnsmasq re-reads host files on SIGHUP).
* SRV records (--srv-host lines) live in a conf file that SIGHUP does not
  re-read: set_srv() rewrites it and restarts dnsmasq on the same port.
* queries(): the queries dnsmasq logged (--log-queries), as (type, name).
"""

import os
import signal
import socket
import struct
import subprocess
import time
from pathlib import Path
from typing import List, Optional, Tuple

DNSMASQ = "/usr/sbin/dnsmasq"


def free_dual_port() -> int:
    """A port free for both UDP and TCP on 127.0.0.1 (dnsmasq binds both)."""
    for _ in range(50):
        u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        u.bind(("127.0.0.1", 0))
        port = u.getsockname()[1]
        t = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        try:
            t.bind(("127.0.0.1", port))
            return port
        except OSError:
            continue
        finally:
            t.close()
            u.close()
    raise RuntimeError("no free UDP+TCP port")


def dns_query(port: int, name: str, qtype: int = 1, timeout: float = 0.5) -> Optional[int]:
    """One UDP query to 127.0.0.1:port; the response code, or None."""
    qid = os.getpid() & 0xffff
    q = struct.pack(">HHHHHH", qid, 0x0100, 1, 0, 0, 0)
    for label in name.rstrip(".").split("."):
        q += bytes([len(label)]) + label.encode()
    q += b"\0" + struct.pack(">HH", qtype, 1)
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.settimeout(timeout)
    try:
        s.sendto(q, ("127.0.0.1", port))
        data, _ = s.recvfrom(4096)
        return data[3] & 0x0f
    except OSError:
        return None
    finally:
        s.close()


class Dnsmasq:
    def __init__(self, workdir: Path, hosts: str = "", srv: Optional[List[str]] = None,
                 port: Optional[int] = None):
        self.dir = Path(workdir)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.hosts_path = self.dir / "hosts"
        self.conf_path = self.dir / "dnsmasq.conf"
        self.log_path = self.dir / "dnsmasq.log"
        self.pid_path = self.dir / "dnsmasq.pid"
        self.port = port or free_dual_port()
        self.proc: Optional[subprocess.Popen] = None
        self.hosts_path.write_text(hosts)
        self._write_conf(srv or [])

    def _write_conf(self, srv: List[str]):
        lines = ["local=/test/"] + [f"srv-host={s}" for s in srv]
        self.conf_path.write_text("\n".join(lines) + "\n")

    def start(self, timeout: float = 10.0) -> "Dnsmasq":
        self._err = open(self.dir / "dnsmasq.stderr", "ab")
        self.proc = subprocess.Popen(
            [DNSMASQ, "--no-daemon", f"--port={self.port}", "--listen-address=127.0.0.1",
             "--bind-interfaces", "--no-resolv", "--no-hosts", f"--addn-hosts={self.hosts_path}",
             f"--conf-file={self.conf_path}", f"--pid-file={self.pid_path}", "--local-ttl=1",
             "--log-queries", f"--log-facility={self.log_path}", "--cache-size=0"],
            stdout=subprocess.DEVNULL, stderr=self._err, stdin=subprocess.DEVNULL)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"dnsmasq exited with {self.proc.returncode}: "
                                   f"{(self.dir / 'dnsmasq.stderr').read_text(errors='replace')}")
            if dns_query(self.port, "probe.test") is not None:
                return self
            time.sleep(0.05)
        self.stop()
        raise RuntimeError("dnsmasq did not answer")

    def stop(self):
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=5)
        self.proc = None
        if getattr(self, "_err", None) and not self._err.closed:
            self._err.close()

    def set_hosts(self, hosts: str):
        """New A/AAAA records: the hosts file rewritten, SIGHUP; returns
        once dnsmasq logged that it read the file again."""
        before = self._log().count(f"read {self.hosts_path}")
        self.hosts_path.write_text(hosts)
        self.proc.send_signal(signal.SIGHUP)
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            if self._log().count(f"read {self.hosts_path}") > before:
                return
            time.sleep(0.02)
        raise RuntimeError("dnsmasq did not re-read its hosts file")

    def set_srv(self, srv: List[str]):
        """New SRV records: dnsmasq restarted on the same port (SIGHUP does
        not re-read --srv-host)."""
        self.stop()
        self._write_conf(srv)
        for attempt in range(20):
            try:
                return self.start()
            except RuntimeError:
                if attempt == 19:
                    raise
                time.sleep(0.1)

    def _log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def queries(self, name: Optional[str] = None) -> List[Tuple[str, str]]:
        """(type, name) of each query logged, optionally only for `name`."""
        out = []
        for line in self._log().splitlines():
            i = line.find("query[")
            if i < 0:
                continue
            rest = line[i + 6:]
            qtype, _, tail = rest.partition("] ")
            qname = tail.split(" ", 1)[0]
            if name is None or qname == name:
                out.append((qtype, qname))
        return out
