"""`protocol = tcp` listeners: byte relay to a cluster endpoint, half-close
propagation, back-pressure on large transfers, connect failure, idle
timeout, access log lines. The upstream is a raw TCP server that records
every byte it received."""

import hashlib
import os
import socket
import threading
import time

from harness import free_port, sk_ini

SANITIZED = bool(os.environ.get("SIDEKICK_SANITIZED"))


class TcpUpstream:
    """Accepts connections; per connection, records what arrives until EOF and
    answers according to `mode`: "echo" (sends back what it reads, then
    closes its side at EOF), "reply" (at EOF sends `reply` then closes),
    "count" (reads to EOF, then sends the byte count and sha256)."""

    def __init__(self, mode="echo", reply=b""):
        self.mode = mode
        self.reply = reply
        self.received = []  # bytes per connection (not stored for "count")
        self.counts = []    # (length, sha256) per connection
        self.lock = threading.Lock()
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(64)
        self.port = self.sock.getsockname()[1]
        self.stop = False
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self):
        while not self.stop:
            try:
                c, _ = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(c,), daemon=True).start()

    def _serve(self, c):
        c.settimeout(30)
        data = bytearray()
        h = hashlib.sha256()
        n = 0
        try:
            while True:
                b = c.recv(1 << 16)
                if not b:
                    break
                n += len(b)
                h.update(b)
                if self.mode == "echo":
                    c.sendall(b)
                elif self.mode != "count":
                    data += b
            if self.mode == "reply":
                c.sendall(self.reply)
            elif self.mode == "count":
                c.sendall(f"{n} {h.hexdigest()}".encode())
        except OSError:
            pass
        finally:
            with self.lock:
                self.received.append(bytes(data))
                self.counts.append((n, h.hexdigest()))
            try:
                c.shutdown(socket.SHUT_WR)
                c.close()
            except OSError:
                pass

    def close(self):
        self.stop = True
        self.sock.close()


def tcp_ini(up_port, idle="60s", access_log="off"):
    return sk_ini(f"""
[listener relay]
address = 127.0.0.1:{{listen}}
protocol = tcp
cluster = backend
idle_timeout = {idle}

[cluster backend]
endpoints = 127.0.0.1:{up_port}
connect_timeout = 500ms
""", access_log=access_log)


def recv_all(s, timeout=10.0):
    s.settimeout(timeout)
    out = bytearray()
    while True:
        b = s.recv(1 << 16)
        if not b:
            return bytes(out)
        out += b


def test_echo_and_half_close(sidekick):
    up = TcpUpstream("echo")
    try:
        sk = sidekick(tcp_ini(up.port))
        s = socket.create_connection(("127.0.0.1", sk.port("listen")), timeout=5)
        payload = b"hello\x00world\r\n" * 100 + bytes(range(256))
        s.sendall(payload)
        s.shutdown(socket.SHUT_WR)  # the upstream must see EOF, then close its side
        assert recv_all(s) == payload
        s.close()
        time.sleep(0.2)
        assert up.received[0] == b"" and up.counts[0][0] == len(payload)
        assert up.counts[0][1] == hashlib.sha256(payload).hexdigest()
    finally:
        up.close()


def test_reply_after_client_eof(sidekick):
    up = TcpUpstream("reply", reply=b"bye\n")
    try:
        sk = sidekick(tcp_ini(up.port))
        s = socket.create_connection(("127.0.0.1", sk.port("listen")), timeout=5)
        s.sendall(b"request bytes")
        s.shutdown(socket.SHUT_WR)
        assert recv_all(s) == b"bye\n"
        s.close()
        time.sleep(0.2)
        assert up.received == [b"request bytes"]
    finally:
        up.close()


def test_large_upload_with_slow_reader(sidekick):
    """20 MB up, counted by the upstream; sidekick's memory stays bounded."""
    up = TcpUpstream("count")
    try:
        sk = sidekick(tcp_ini(up.port))
        s = socket.create_connection(("127.0.0.1", sk.port("listen")), timeout=10)
        h = hashlib.sha256()
        chunk = bytes(range(256)) * 256  # 64 KiB
        total = 0
        for _ in range(320):
            s.sendall(chunk)
            h.update(chunk)
            total += len(chunk)
        s.shutdown(socket.SHUT_WR)
        answer = recv_all(s, timeout=30).decode()
        s.close()
        assert answer == f"{total} {h.hexdigest()}"
        assert SANITIZED or sk.vmhwm_kb() < 30 * 1024
    finally:
        up.close()


def test_upstream_down_closes_client(sidekick):
    sk = sidekick(tcp_ini(free_port(), access_log="stdout"))
    s = socket.create_connection(("127.0.0.1", sk.port("listen")), timeout=5)
    start = time.monotonic()
    try:
        s.sendall(b"x")
    except OSError:
        pass
    try:
        data = recv_all(s, timeout=5)
    except ConnectionResetError:
        data = b""
    assert data == b"" and time.monotonic() - start < 3
    s.close()
    assert sk.stop() == 0
    lines = sk.access_log_lines()
    assert lines and lines[0]["protocol"] == "tcp" and lines[0]["reason"] == "upstream_connect_failure"


def test_idle_timeout_closes_relay(sidekick):
    up = TcpUpstream("echo")
    try:
        sk = sidekick(tcp_ini(up.port, idle="500ms", access_log="stdout"))
        s = socket.create_connection(("127.0.0.1", sk.port("listen")), timeout=5)
        s.sendall(b"ping")
        s.settimeout(5)
        assert s.recv(16) == b"ping"
        start = time.monotonic()
        assert recv_all(s, timeout=5) == b""  # closed by sidekick, not by us
        assert time.monotonic() - start < 3
        s.close()
        assert sk.stop() == 0
        lines = sk.access_log_lines()
        assert lines[0]["reason"] == "idle_timeout"
        assert lines[0]["bytes_received"] == 4 and lines[0]["bytes_sent"] == 4
    finally:
        up.close()
