"""
harness.py — helpers for sidekick's integration tests.

Standard library only. Provides:

* free_port(), wait_for()
* Sidekick: runs the real binary on a generated INI, waits for /ready, and
  exposes ports, access log, stderr, VmHWM and stop().
* Upstream: a recording HTTP/1.1 origin server (raw sockets, threads) that
  keeps the exact bytes of every connection and the requests it parsed from
  them, and answers through a configurable handler returning a Reply.
* RawClient / http_request / curl: clients, from raw bytes to a real one.
* pattern helpers: deterministic bytes of any length and their SHA-256, so a
  100 MB body can be generated and checked on both sides without storing it.
"""

import hashlib
import http.client
import json
import os
import random
import select
import signal
import socket
import string
import struct
import subprocess
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, List, Optional, Tuple

REPO = Path(__file__).resolve().parents[2]
SIDEKICK_BIN = os.environ.get("SIDEKICK_BIN", str(REPO / "build" / "sidekick"))
# The fixture plugins of tests/plugins (fx_*.so): set by ctest, else the default build.
PLUGIN_DIR = os.environ.get("SIDEKICK_PLUGIN_DIR", str(REPO / "build" / "tests" / "plugins"))
CURL = "/usr/bin/curl"

Headers = List[Tuple[str, str]]


# --------------------------------------------------------------------------
# small utilities


_port_rng = random.Random()


_given_ports: List[int] = []  # handed out lately: never twice in a row of calls


def free_port() -> int:
    """A TCP port that was free a moment ago on 127.0.0.1 (bind, close),
    and not one of the last 2000 ports this process handed out, so that two
    calls for one config never give the same port.

    Picked below the kernel's ephemeral range (32768+), so that the many
    client connections of a test run cannot take it before sidekick binds it.
    """
    for _ in range(200):
        port = _port_rng.randrange(20000, 32000)
        if port in _given_ports:
            continue
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            continue
        finally:
            s.close()
        _given_ports.append(port)
        del _given_ports[:-2000]
        return port
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
    finally:
        s.close()


def free_ports(n: int) -> List[int]:
    """n distinct ports that were free a moment ago (see free_port)."""
    ports: List[int] = []
    while len(ports) < n:
        p = free_port()
        if p not in ports:
            ports.append(p)
    return ports


def missing_fixtures(names) -> List[str]:
    """The fixture plugins of `names` (fx_headers, ...) not built in PLUGIN_DIR."""
    return [n for n in names if not os.path.exists(os.path.join(PLUGIN_DIR, n + ".so"))]


def wait_for(pred: Callable[[], bool], timeout: float = 5.0, interval: float = 0.02) -> bool:
    """Polls pred() until it is true (returns True) or timeout passes (False)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            if pred():
                return True
        except Exception:
            pass
        if time.monotonic() >= deadline:
            return False
        time.sleep(interval)


def header_values(headers: Headers, name: str) -> List[str]:
    name = name.lower()
    return [v for (n, v) in headers if n.lower() == name]


def header_value(headers: Headers, name: str) -> Optional[str]:
    vals = header_values(headers, name)
    return vals[0] if vals else None


# --------------------------------------------------------------------------
# deterministic payloads

_PATTERN_BLOCK = 1 << 16
_PATTERN = random.Random(20261125).randbytes(_PATTERN_BLOCK)


def iter_pattern(total: int, block: int = _PATTERN_BLOCK):
    """Yields `total` bytes (byte i = PATTERN[i % 64k]) in pieces of <= 64 KiB."""
    assert block == _PATTERN_BLOCK
    sent = 0
    while sent < total:
        n = min(block, total - sent)
        yield _PATTERN if n == block else _PATTERN[:n]
        sent += n


def pattern_sha256(total: int) -> str:
    h = hashlib.sha256()
    for piece in iter_pattern(total):
        h.update(piece)
    return h.hexdigest()


# --------------------------------------------------------------------------
# the sidekick process


def sk_ini(body: str, workers: int = 1, access_log: str = "off", drain_timeout: str = "3s",
           extra: str = "") -> str:
    """A full INI: a [sidekick] section (explicit workers and admin) + body.

    `body` and `extra` may use {placeholders}; {admin} is the admin port.
    """
    head = (
        "[sidekick]\n"
        f"workers = {workers}\n"
        "admin = 127.0.0.1:{admin}\n"
        f"access_log = {access_log}\n"
        f"drain_timeout = {drain_timeout}\n"
        "log_level = info\n"
        f"{extra}\n"
    )
    return head + body


def run_sidekick(args, timeout: float = 10.0, cwd=None) -> subprocess.CompletedProcess:
    """Runs the binary to completion (for -t, --version, usage errors)."""
    return subprocess.run([SIDEKICK_BIN] + list(args), capture_output=True, timeout=timeout,
                          cwd=cwd, text=True, errors="replace")


class SidekickStartError(Exception):
    pass


class Sidekick:
    """One running sidekick process on a generated config.

    ini: INI text with {placeholders}; each placeholder is filled from `ports`
    or, when absent there, with a fresh free port. Must set `workers` and
    `admin = 127.0.0.1:{admin}` explicitly.
    """

    def __init__(self, workdir: Path, ini: str, ports: dict, name: str = "sidekick.ini"):
        assert "workers" in ini, "tests must set [sidekick] workers explicitly"
        assert "admin = 127.0.0.1:{admin}" in ini, "tests must set admin = 127.0.0.1:{admin}"
        self.dir = Path(workdir)
        self.template = ini
        self.given_ports = dict(ports)
        self.name = name
        self.config = self.dir / name
        self.stdout_path = self.dir / (name + ".stdout")
        self.stderr_path = self.dir / (name + ".stderr")
        self._materialize()
        self.proc: Optional[subprocess.Popen] = None

    def _materialize(self):
        """Fills placeholders (fresh free ports for those not given) and
        writes the config file."""
        self.ports = dict(self.given_ports)
        for _, fname, _, _ in string.Formatter().parse(self.template):
            if fname and fname not in self.ports:
                port = free_port()
                while port in self.ports.values():  # two placeholders, one random port
                    port = free_port()
                self.ports[fname] = port
        self.ini_text = self.template.format(**self.ports)
        self.config.write_text(self.ini_text)

    def start_with_retry(self, wait_ready: bool = True, attempts: int = 3):
        """start(), retried with new ports when a bind failed: a port found
        free by free_port() can be taken by another socket before sidekick
        binds it."""
        for i in range(attempts):
            try:
                return self.start(wait_ready)
            except SidekickStartError as e:
                err = self.stderr_text().lower()
                if i == attempts - 1 or not ("bind" in err or "in use" in err):
                    raise
                self.kill()
                self._materialize()
        return self

    # -- lifecycle
    def start(self, wait_ready: bool = True, timeout: float = 10.0):
        if not os.path.exists(SIDEKICK_BIN):
            raise SidekickStartError(f"sidekick binary not found: {SIDEKICK_BIN} (set SIDEKICK_BIN)")
        self._out = open(self.stdout_path, "wb")
        self._err = open(self.stderr_path, "wb")
        # run from elsewhere: relative paths must resolve against the config file
        cwd = self.dir / "cwd"
        cwd.mkdir(exist_ok=True)
        self.proc = subprocess.Popen([SIDEKICK_BIN, "-c", str(self.config)], stdout=self._out,
                                     stderr=self._err, stdin=subprocess.DEVNULL, cwd=str(cwd))
        if wait_ready:
            self.wait_ready(timeout)
        return self

    def wait_ready(self, timeout: float = 10.0):
        deadline = time.monotonic() + timeout
        last = None
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise SidekickStartError(
                    f"sidekick exited with {self.proc.returncode} before /ready\n"
                    f"config:\n{self.ini_text}\nstderr:\n{self.stderr_text()}")
            try:
                c = http.client.HTTPConnection("127.0.0.1", self.admin_port, timeout=1)
                c.request("GET", "/ready")
                r = c.getresponse()
                r.read()
                c.close()
                last = r.status
                if r.status == 200:
                    return
            except OSError as e:
                last = e
            time.sleep(0.05)
        self.kill()
        raise SidekickStartError(f"sidekick not ready within {timeout}s (last: {last!r})\n"
                                 f"config:\n{self.ini_text}\nstderr:\n{self.stderr_text()}")

    def stop(self, sig=signal.SIGTERM, timeout: float = 15.0) -> int:
        """Sends `sig`, waits up to `timeout`, returns the exit code
        (negative = killed by a signal). Raises TimeoutExpired on a hang
        (the fixture kills the process afterwards)."""
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        return self.proc.wait(timeout=timeout)

    def signal(self, sig):
        self.proc.send_signal(sig)

    def kill(self):
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            try:
                self.proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                pass
        for f in (getattr(self, "_out", None), getattr(self, "_err", None)):
            if f is not None and not f.closed:
                f.close()

    # -- inspection
    def port(self, name: str) -> int:
        return self.ports[name]

    @property
    def admin_port(self) -> int:
        return self.ports["admin"]

    @property
    def pid(self) -> int:
        return self.proc.pid

    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stderr_text(self) -> str:
        try:
            return self.stderr_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def stdout_bytes(self) -> bytes:
        try:
            return self.stdout_path.read_bytes()
        except FileNotFoundError:
            return b""

    def access_log_lines(self, path: Optional[Path] = None) -> list:
        """Parsed JSON lines of the access log (stdout unless `path`).
        A partial last line (no newline yet) is ignored."""
        data = Path(path).read_bytes() if path else self.stdout_bytes()
        out = []
        for line in data.split(b"\n")[:-1]:
            line = line.strip()
            if line:
                out.append(json.loads(line))
        return out

    def _status_kb(self, field: str) -> int:
        with open(f"/proc/{self.pid}/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
        raise RuntimeError(f"no {field}")

    def vmhwm_kb(self) -> int:
        """Peak resident memory of the process."""
        return self._status_kb("VmHWM")

    def vmrss_kb(self) -> int:
        """Resident memory of the process now."""
        return self._status_kb("VmRSS")

    def admin_get(self, path: str, timeout: float = 5.0):
        return http_request(self.admin_port, "GET", path, timeout=timeout)


# --------------------------------------------------------------------------
# the recording upstream


@dataclass
class Reply:
    """What the Upstream answers. Defaults: 200, body b"ok", content-length."""
    status: int = 200
    reason: Optional[str] = None
    headers: Headers = field(default_factory=list)
    body: bytes = b"ok"
    chunked: bool = False          # Transfer-Encoding: chunked, body in pieces of chunk_size
    chunk_size: int = 3
    no_length: bool = False        # no CL/TE: body delimited by closing the connection
    stream_size: Optional[int] = None  # generated pattern body of this many bytes (content-length)
    delay: float = 0.0             # seconds to wait before answering
    close: bool = False            # send "Connection: close" and close after the response
    linger: float = 0.0            # with close: keep the socket open this long before closing
    raw: Optional[bytes] = None    # send exactly these bytes instead of a response, then close
    raw_keep_open: bool = False    # with raw: keep serving the connection afterwards
    raw_parts: Optional[list] = None  # [(delay_before, bytes), ...] sent in turn, then close
    reset: bool = False            # answer nothing: reset the connection (RST)
    send_content_length_on_head: bool = True


@dataclass
class UpRequest:
    method: str
    target: str
    version: str
    headers: Headers
    conn_index: int
    body: Optional[bytes] = None   # decoded body, None when larger than store_limit
    body_len: int = 0
    body_sha256: str = ""
    chunked: bool = False
    complete: bool = False         # the whole body was received

    def header(self, name: str) -> Optional[str]:
        return header_value(self.headers, name)

    def header_all(self, name: str) -> List[str]:
        return header_values(self.headers, name)

    def has(self, name: str) -> bool:
        return bool(self.header_all(name))

    @property
    def path(self) -> str:
        return self.target.split("?", 1)[0]

    @property
    def query(self) -> Optional[str]:
        return self.target.split("?", 1)[1] if "?" in self.target else None


class UpConn:
    """One accepted connection: the exact bytes received (first raw_limit of
    them; raw_len counts all) and the requests parsed from them."""

    def __init__(self, index: int, raw_limit: int):
        self.index = index
        self.raw = bytearray()
        self.raw_len = 0
        self.raw_limit = raw_limit
        self.requests: List[UpRequest] = []
        self.closed = False
        self.error: Optional[str] = None

    def add_raw(self, data: bytes):
        self.raw_len += len(data)
        room = self.raw_limit - len(self.raw)
        if room > 0:
            self.raw += data[:room]


class _EOF(Exception):
    pass


class _Reader:
    def __init__(self, sock, rec: UpConn):
        self.sock = sock
        self.rec = rec
        self.buf = bytearray()

    def fill(self):
        data = self.sock.recv(1 << 18)
        if not data:
            raise _EOF()
        self.rec.add_raw(data)
        self.buf += data

    def read_until(self, delim: bytes, limit: int) -> bytes:
        start = 0
        while True:
            i = self.buf.find(delim, start)
            if i >= 0:
                out = bytes(self.buf[:i + len(delim)])
                del self.buf[:i + len(delim)]
                return out
            if len(self.buf) > limit:
                raise ValueError("line too long")
            start = max(0, len(self.buf) - len(delim) + 1)
            self.fill()

    def read_some(self, maxn: int) -> bytes:
        if not self.buf:
            self.fill()
        out = bytes(self.buf[:maxn])
        del self.buf[:maxn]
        return out

    def read_exact(self, n: int) -> bytes:
        while len(self.buf) < n:
            self.fill()
        out = bytes(self.buf[:n])
        del self.buf[:n]
        return out


class Upstream:
    """A recording HTTP/1.1 server on 127.0.0.1.

    handler(req: UpRequest) -> Reply | None (None = Reply()). Called after the
    whole request body was read. `name` is sent back in `x-upstream` unless
    the handler sets its own headers list containing it.
    """

    def __init__(self, handler=None, name: str = "up", port: int = 0, store_limit: int = 1 << 20,
                 raw_limit: int = 1 << 20, send_continue: bool = True,
                 keepalive_timeout: Optional[float] = None, head_handler=None, host: str = "127.0.0.1"):
        self.handler = handler
        self.name = name
        self.store_limit = store_limit
        self.raw_limit = raw_limit
        self.send_continue = send_continue
        self.keepalive_timeout = keepalive_timeout  # close idle connections after this
        # head_handler(req) -> Reply | None, called once the head is parsed;
        # a Reply is sent at once (before the body is read), then the
        # connection is closed after draining what the peer still sends
        self.head_handler = head_handler
        self.lock = threading.Lock()
        self.connections: List[UpConn] = []
        self._socks = []
        self._stop = False
        self.errors: List[str] = []
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind((host, port))  # host: another loopback address (127.0.0.2) for DNS tests
        self.sock.listen(256)
        self.sock.settimeout(0.1)
        self.host = host
        self.port = self.sock.getsockname()[1]
        self.addr = f"{host}:{self.port}"
        self._thread = threading.Thread(target=self._accept_loop, daemon=True,
                                        name=f"upstream-{name}")
        self._thread.start()

    # -- inspection
    @property
    def accepted(self) -> int:
        with self.lock:
            return len(self.connections)

    @property
    def requests(self) -> List[UpRequest]:
        with self.lock:
            return [r for c in self.connections for r in c.requests]

    @property
    def complete_requests(self) -> List[UpRequest]:
        return [r for r in self.requests if r.complete]

    @property
    def total_bytes(self) -> int:
        with self.lock:
            return sum(c.raw_len for c in self.connections)

    def raw_bytes(self) -> bytes:
        with self.lock:
            return b"".join(bytes(c.raw) for c in self.connections)

    def wait_requests(self, n: int, timeout: float = 5.0) -> bool:
        return wait_for(lambda: len(self.requests) >= n, timeout)

    # -- server
    def close(self):
        self._stop = True
        self._thread.join(timeout=2)
        try:
            self.sock.close()
        except OSError:
            pass
        with self.lock:
            socks = list(self._socks)
        for s in socks:
            try:
                s.close()
            except OSError:
                pass

    def _accept_loop(self):
        while not self._stop:
            try:
                s, _ = self.sock.accept()
            except socket.timeout:
                continue
            except OSError:
                return
            s.settimeout(None)
            with self.lock:
                rec = UpConn(len(self.connections), self.raw_limit)
                self.connections.append(rec)
                self._socks.append(s)
            threading.Thread(target=self._serve, args=(s, rec), daemon=True,
                             name=f"upstream-{self.name}-{rec.index}").start()

    def _serve(self, s: socket.socket, rec: UpConn):
        r = _Reader(s, rec)
        try:
            while not self._stop:
                if self.keepalive_timeout is not None and rec.requests and not r.buf:
                    ready, _, _ = select.select([s], [], [], self.keepalive_timeout)
                    if not ready:
                        break  # idle too long: close, as servers do
                req = self._read_request(r, rec)
                if req is None:
                    break
                try:
                    reply = self.handler(req) if self.handler else None
                except Exception as e:  # a bug in a test handler: answer 500
                    self.errors.append(f"handler: {e!r}")
                    reply = Reply(status=500, body=f"handler error {e!r}".encode())
                if reply is None:
                    reply = Reply()
                keep = self._send_reply(s, req, reply, rec)
                if not keep:
                    break
        except (_EOF, ConnectionError, OSError):
            pass
        except Exception as e:
            rec.error = repr(e)
            self.errors.append(repr(e))
        finally:
            rec.closed = True
            try:
                s.close()
            except OSError:
                pass

    def _read_request(self, r: _Reader, rec: UpConn) -> Optional[UpRequest]:
        try:
            head = r.read_until(b"\r\n\r\n", 1 << 20)
        except _EOF:
            return None
        lines = head[:-4].decode("latin-1").split("\r\n")
        parts = lines[0].split(" ")
        if len(parts) != 3:
            raise ValueError(f"bad request line {lines[0]!r}")
        headers = []
        for line in lines[1:]:
            name, sep, value = line.partition(":")
            if not sep:
                raise ValueError(f"bad header line {line!r}")
            headers.append((name, value.strip(" \t")))
        req = UpRequest(method=parts[0], target=parts[1], version=parts[2], headers=headers,
                        conn_index=rec.index)
        with self.lock:
            rec.requests.append(req)
        if self.head_handler is not None:
            early = self.head_handler(req)
            if early is not None:
                early.close = True
                self._send_reply(r.sock, req, early, rec)
                r.sock.settimeout(5)
                try:
                    while True:
                        r.fill()
                except (_EOF, OSError):
                    pass
                raise _EOF()
        te = ",".join(header_values(headers, "transfer-encoding")).lower()
        cl = header_value(headers, "content-length")
        expect = (header_value(headers, "expect") or "").lower()
        sha = hashlib.sha256()
        stored = bytearray()
        total = 0

        def sink(piece: bytes):
            nonlocal total
            total += len(piece)
            sha.update(piece)
            if total <= self.store_limit:
                stored.extend(piece)

        if expect == "100-continue" and self.send_continue and (te or (cl and int(cl) > 0)):
            r.sock.sendall(b"HTTP/1.1 100 Continue\r\n\r\n")
        if "chunked" in te:
            req.chunked = True
            while True:
                line = r.read_until(b"\r\n", 4096)
                size_text = line[:-2].split(b";", 1)[0].strip()
                size = int(size_text, 16)
                if size == 0:
                    while r.read_until(b"\r\n", 1 << 16) != b"\r\n":
                        pass
                    break
                left = size
                while left:
                    piece = r.read_some(min(left, 1 << 20))
                    left -= len(piece)
                    sink(piece)
                if r.read_exact(2) != b"\r\n":
                    raise ValueError("chunk not followed by CRLF")
        elif cl is not None:
            left = int(cl)
            while left:
                piece = r.read_some(min(left, 1 << 20))
                left -= len(piece)
                sink(piece)
        req.body_len = total
        req.body_sha256 = sha.hexdigest()
        req.body = bytes(stored) if total <= self.store_limit else None
        req.complete = True
        return req

    def _send_reply(self, s: socket.socket, req: UpRequest, reply: Reply, rec: UpConn) -> bool:
        if reply.delay:
            time.sleep(reply.delay)
        if reply.reset:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            s.close()
            return False
        if reply.raw_parts is not None:
            for pause, data in reply.raw_parts:
                time.sleep(pause)
                s.sendall(data)
            s.shutdown(socket.SHUT_WR)
            time.sleep(0.05)
            return False
        if reply.raw is not None:
            s.sendall(reply.raw)
            if reply.raw_keep_open:
                return True
            s.shutdown(socket.SHUT_WR)
            time.sleep(0.05)
            return False
        reason = reply.reason or http.client.responses.get(reply.status, "Unknown")
        headers = list(reply.headers)
        names = {n.lower() for n, _ in headers}
        if "x-upstream" not in names:
            headers.append(("x-upstream", self.name))
        no_body = (req.method == "HEAD" or reply.status in (204, 304) or reply.status < 200)
        body = reply.body
        close = reply.close or reply.no_length
        req_conn = (req.header("connection") or "").lower()
        if "close" in req_conn or req.version == "HTTP/1.0":
            close = True
        if close and "connection" not in names:
            headers.append(("Connection", "close"))
        if reply.stream_size is not None:
            headers.append(("Content-Length", str(reply.stream_size)))
        elif reply.chunked and not no_body:
            headers.append(("Transfer-Encoding", "chunked"))
        elif reply.no_length:
            pass
        elif "content-length" not in names:
            if req.method == "HEAD":
                if reply.send_content_length_on_head:
                    headers.append(("Content-Length", str(len(body))))
            elif reply.status not in (204, 304) and reply.status >= 200:
                headers.append(("Content-Length", str(len(body))))
        head = f"HTTP/1.1 {reply.status} {reason}\r\n" + "".join(
            f"{n}: {v}\r\n" for n, v in headers) + "\r\n"
        if no_body:
            s.sendall(head.encode("latin-1"))
        elif reply.stream_size is not None:
            s.sendall(head.encode("latin-1"))
            for piece in iter_pattern(reply.stream_size):
                s.sendall(piece)
        elif reply.chunked:
            out = bytearray(head.encode("latin-1"))
            for i in range(0, len(body), reply.chunk_size):
                piece = body[i:i + reply.chunk_size]
                out += b"%x\r\n" % len(piece) + piece + b"\r\n"
            out += b"0\r\n\r\n"
            s.sendall(bytes(out))
        else:
            s.sendall(head.encode("latin-1") + body)
        if close:
            if reply.linger:
                # keep the socket open but record (never answer) whatever
                # still arrives: a proxy reusing this connection shows here
                end = time.monotonic() + reply.linger
                while True:
                    left = end - time.monotonic()
                    if left <= 0:
                        break
                    s.settimeout(left)
                    try:
                        d = s.recv(1 << 16)
                    except (socket.timeout, OSError):
                        break
                    if not d:
                        break
                    rec.add_raw(d)
            try:
                s.shutdown(socket.SHUT_WR)
            except OSError:
                pass
            return False
        return True


def echo_handler(name: str = "up"):
    """A handler answering 200 with body "<name> <method> <target>"."""
    def h(req: UpRequest) -> Reply:
        return Reply(body=f"{name} {req.method} {req.target}".encode())
    return h


# --------------------------------------------------------------------------
# clients


@dataclass
class Response:
    status: int
    reason: str
    headers: Headers
    body: bytes
    version: str = "HTTP/1.1"
    raw_head: bytes = b""

    def header(self, name: str) -> Optional[str]:
        return header_value(self.headers, name)

    def header_all(self, name: str) -> List[str]:
        return header_values(self.headers, name)

    def __repr__(self):
        return (f"Response({self.status} {self.reason}, headers={self.headers}, "
                f"body={self.body[:200]!r}{'...' if len(self.body) > 200 else ''})")


def http_request(port: int, method: str = "GET", path: str = "/", headers=None, body=None,
                 timeout: float = 10.0, host: Optional[str] = None) -> Response:
    """One request on a fresh connection through http.client."""
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        hdrs = dict(headers or {})
        if host is not None:
            hdrs["Host"] = host
        c.request(method, path, body=body, headers=hdrs)
        r = c.getresponse()
        data = r.read()
        return Response(r.status, r.reason, list(r.getheaders()), data,
                        "HTTP/1.1" if r.version == 11 else "HTTP/1.0")
    finally:
        c.close()


class ConnectionClosed(Exception):
    pass


class RawClient:
    """A raw TCP client with an HTTP/1.1 response parser."""

    def __init__(self, port: int, timeout: float = 10.0):
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.buf = bytearray()
        self.eof = False

    def send(self, data: bytes):
        self.sock.sendall(data)

    def close(self):
        try:
            self.sock.close()
        except OSError:
            pass

    def __enter__(self):
        return self

    def __exit__(self, *a):
        self.close()

    def _fill(self):
        data = self.sock.recv(1 << 18)
        if not data:
            self.eof = True
            raise ConnectionClosed("connection closed by peer")
        self.buf += data

    def _until(self, delim: bytes, limit: int = 1 << 20) -> bytes:
        while True:
            i = self.buf.find(delim)
            if i >= 0:
                out = bytes(self.buf[:i + len(delim)])
                del self.buf[:i + len(delim)]
                return out
            if len(self.buf) > limit:
                raise ValueError("line too long")
            self._fill()

    def _exact(self, n: int) -> bytes:
        while len(self.buf) < n:
            self._fill()
        out = bytes(self.buf[:n])
        del self.buf[:n]
        return out

    def read_response(self, method: str = "GET", timeout: Optional[float] = None,
                      skip_1xx: bool = True) -> Response:
        """Reads one response. 1xx interim responses are skipped unless
        skip_1xx is False (then a 1xx is returned on its own)."""
        if timeout is not None:
            self.sock.settimeout(timeout)
        while True:
            head = self._until(b"\r\n\r\n")
            lines = head[:-4].decode("latin-1").split("\r\n")
            version, _, rest = lines[0].partition(" ")
            code, _, reason = rest.partition(" ")
            if not version.startswith("HTTP/1.") or not code.isdigit() or len(code) != 3:
                raise ValueError(f"malformed status line {lines[0]!r}")
            status = int(code)
            headers = []
            for line in lines[1:]:
                n, _, v = line.partition(":")
                headers.append((n, v.strip()))
            if 100 <= status < 200:
                if skip_1xx:
                    continue
                return Response(status, reason, headers, b"", version, head)
            break
        te = ",".join(header_values(headers, "transfer-encoding")).lower()
        cl = header_value(headers, "content-length")
        if method == "HEAD" or status in (204, 304):
            body = b""
        elif "chunked" in te:
            out = bytearray()
            while True:
                line = self._until(b"\r\n")
                size = int(line[:-2].split(b";")[0].strip(), 16)
                if size == 0:
                    while self._until(b"\r\n") != b"\r\n":
                        pass
                    break
                out += self._exact(size)
                if self._exact(2) != b"\r\n":
                    raise ValueError("bad chunk terminator")
            body = bytes(out)
        elif cl is not None:
            body = self._exact(int(cl))
        else:
            out = bytearray()
            try:
                while True:
                    self._fill()
            except ConnectionClosed:
                pass
            out += self.buf
            self.buf.clear()
            body = bytes(out)
        return Response(status, reason, headers, body, version, head)

    def request(self, method: str = "GET", path: str = "/", headers: Optional[Headers] = None,
                body: bytes = b"", host: str = "test.local") -> Response:
        self.send(build_request(method, path, headers, body, host))
        return self.read_response(method)

    def wait_closed(self, timeout: float = 3.0) -> bool:
        """True when the peer closes (EOF or reset) within `timeout`; data
        received meanwhile is kept in self.buf."""
        if self.eof:
            return True
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                return False
            self.sock.settimeout(left)
            try:
                data = self.sock.recv(1 << 16)
            except socket.timeout:
                return False
            except (ConnectionResetError, BrokenPipeError):
                self.eof = True
                return True
            if not data:
                self.eof = True
                return True
            self.buf += data


def build_request(method: str = "GET", path: str = "/", headers: Optional[Headers] = None,
                  body: bytes = b"", host: Optional[str] = "test.local") -> bytes:
    """Request bytes; adds Host (unless host is None) and Content-Length when
    a body is given and no framing header is."""
    hdrs = list(headers or [])
    names = {n.lower() for n, _ in hdrs}
    if host is not None and "host" not in names:
        hdrs.insert(0, ("Host", host))
    if body and "content-length" not in names and "transfer-encoding" not in names:
        hdrs.append(("Content-Length", str(len(body))))
    head = f"{method} {path} HTTP/1.1\r\n" + "".join(f"{n}: {v}\r\n" for n, v in hdrs) + "\r\n"
    return head.encode("latin-1") + body


def raw_exchange(port: int, data: bytes, timeout: float = 5.0) -> Tuple[Optional[Response], bool]:
    """Sends `data` on a new connection, reads one response (or None when the
    connection closed without one) and reports whether the connection was
    closed afterwards (within 2 s)."""
    with RawClient(port, timeout=timeout) as c:
        try:
            c.send(data)
        except (BrokenPipeError, ConnectionResetError):
            pass
        try:
            resp = c.read_response(timeout=timeout)
        except (ConnectionClosed, ConnectionResetError):
            return None, True
        closed = c.wait_closed(2.0)
        return resp, closed


def curl(*args, timeout: float = 30.0) -> subprocess.CompletedProcess:
    """Runs curl with -sS and the given arguments."""
    return subprocess.run([CURL, "-sS", "--max-time", str(int(timeout))] + list(args),
                          capture_output=True, timeout=timeout + 5)


def assert_local_reply(resp: Response, status: int, reason: str):
    assert resp is not None, "no response at all"
    assert resp.status == status, f"expected {status} {reason}, got {resp!r}"
    assert resp.header("x-sidekick-reason") == reason, \
        f"expected x-sidekick-reason: {reason}, got {resp!r}"


# --------------------------------------------------------------------------
# Prometheus text


def parse_prometheus(text: str):
    """[(name, {label: value}, float)] for every sample line."""
    import re
    out = []
    line_re = re.compile(r'^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{(.*)\})?\s+(\S+)(\s+\S+)?$')
    label_re = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"')
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        m = line_re.match(line.strip())
        if not m:
            continue
        labels = dict(label_re.findall(m.group(3) or ""))
        try:
            value = float(m.group(4))
        except ValueError:
            continue
        out.append((m.group(1), labels, value))
    return out


def metric_value(samples, name: str, **labels) -> Optional[float]:
    """Sum of samples called `name` whose labels include `labels`; None if none."""
    found = [v for (n, l, v) in samples
             if n == name and all(l.get(k) == str(val) for k, val in labels.items())]
    return sum(found) if found else None
