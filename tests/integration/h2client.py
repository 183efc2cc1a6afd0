"""
h2client.py — a small HTTP/2 client for sidekick's tests, built on the lower
layers of Debian's python3-h2 (hyperframe for frames, hpack for header
blocks) over raw sockets, so a test decides every frame: well-behaved
requests, flow control by hand (a slow reader), and malformed or abusive
input (floods, invalid pseudo-headers, raw header blocks).

    c = H2Client(port)                       # preface + SETTINGS, plain (h2c)
    c = H2Client(port, tls=ctx)              # TLS, ALPN h2
    sid = c.request("GET", "/x", authority="a.test")
    r = c.response(sid)                      # waits: r.status, r.headers, r.body
    c.wait(lambda: c.goaway is not None)

Every wait is bounded (timeout). Frames the server sends are recorded
(c.frames); SETTINGS and PING are acknowledged unless told otherwise;
WINDOW_UPDATE for received DATA is sent at once unless auto_window=False
(then the test calls c.consume()).
"""

import hashlib
import socket
import ssl
import struct
import time
from typing import Callable, Dict, List, Optional, Tuple

from hpack import Decoder, Encoder
from hyperframe.frame import (ContinuationFrame, DataFrame, Frame, GoAwayFrame, HeadersFrame, PingFrame,
                              RstStreamFrame, SettingsFrame, WindowUpdateFrame)

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"

# error codes (RFC 9113 7)
NO_ERROR = 0x0
PROTOCOL_ERROR = 0x1
INTERNAL_ERROR = 0x2
FLOW_CONTROL_ERROR = 0x3
FRAME_SIZE_ERROR = 0x6
REFUSED_STREAM = 0x7
CANCEL = 0x8
COMPRESSION_ERROR = 0x9
ENHANCE_YOUR_CALM = 0xb

# SETTINGS ids
HEADER_TABLE_SIZE = 0x1
ENABLE_PUSH = 0x2
MAX_CONCURRENT_STREAMS = 0x3
INITIAL_WINDOW_SIZE = 0x4
MAX_FRAME_SIZE = 0x5
MAX_HEADER_LIST_SIZE = 0x6


class Stream:
    def __init__(self, sid: int):
        self.id = sid
        self.headers: List[Tuple[str, str]] = []   # the final response head
        self.informational: List[List[Tuple[str, str]]] = []  # 1xx heads
        self.trailers: Optional[List[Tuple[str, str]]] = None
        self.body = bytearray()
        self.body_len = 0
        self.sha = hashlib.sha256()
        self.keep_body = True
        self.ended = False
        self.reset: Optional[int] = None    # RST_STREAM error code received

    @property
    def status(self) -> Optional[int]:
        for n, v in self.headers:
            if n == ":status":
                return int(v)
        return None

    def header(self, name: str) -> Optional[str]:
        for n, v in self.headers:
            if n == name:
                return v
        return None

    @property
    def done(self) -> bool:
        return self.ended or self.reset is not None

    def __repr__(self):
        return (f"Stream({self.id}, status={self.status}, headers={self.headers}, "
                f"body={bytes(self.body[:200])!r}, ended={self.ended}, reset={self.reset})")


def literal(name: bytes, value: bytes) -> bytes:
    """An HPACK "literal header field without indexing, new name" (RFC 7541
    6.2.2), without Huffman: the bytes go on the wire as given (uppercase
    names, forbidden fields)."""
    def s(b: bytes) -> bytes:
        return _int(len(b), 7, 0) + b
    return b"\x00" + s(name) + s(value)


def _int(v: int, prefix: int, first: int) -> bytes:
    """An HPACK integer with a `prefix`-bit prefix (RFC 7541 5.1)."""
    maxp = (1 << prefix) - 1
    if v < maxp:
        return bytes([first | v])
    out = [first | maxp]
    v -= maxp
    while v >= 128:
        out.append((v & 127) | 128)
        v >>= 7
    out.append(v)
    return bytes(out)


def table_size_update(size: int) -> bytes:
    """An HPACK dynamic table size update (RFC 7541 6.3)."""
    return _int(size, 5, 0x20)


class H2Client:
    def __init__(self, port: int, host: str = "127.0.0.1", tls: Optional[ssl.SSLContext] = None,
                 server_hostname: Optional[str] = None, settings: Optional[Dict[int, int]] = None,
                 auto_window: bool = True, ack_ping: bool = True, preface: bool = True,
                 timeout: float = 10.0):
        raw = socket.create_connection((host, port), timeout=timeout)
        raw.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if tls is not None:
            self.sock = tls.wrap_socket(raw, server_hostname=server_hostname)
            self.alpn = self.sock.selected_alpn_protocol()
        else:
            self.sock = raw
            self.alpn = None
        self.timeout = timeout
        self.enc = Encoder()
        self.dec = Decoder()
        self.buf = bytearray()
        self.streams: Dict[int, Stream] = {}
        self.next_id = 1
        self.frames: List[Frame] = []        # every frame received, in order
        self.goaways: List[GoAwayFrame] = []
        self.server_settings: Dict[int, int] = {}
        self.settings_acked = 0
        self.ping_acks: List[bytes] = []
        self.pings_received: List[bytes] = []
        self.auto_window = auto_window
        self.ack_ping = ack_ping
        self.closed = False
        self.unconsumed: Dict[int, int] = {}  # stream id -> DATA bytes not given back (auto_window off)
        self._hb: Optional[Tuple[int, bytearray, int]] = None  # header block being received
        self.conn_window = 65535           # what we may send (the server's windows)
        self.stream_windows: Dict[int, int] = {}
        self.peer_initial_window = 65535
        self.peer_max_frame = 16384
        if preface:
            self.send_raw(PREFACE)
            self.send(SettingsFrame(0, settings=settings or {}))

    # -- sending
    def send_raw(self, data: bytes):
        self.sock.sendall(data)

    def send(self, *frames: Frame):
        self.send_raw(b"".join(f.serialize() for f in frames))

    def new_id(self) -> int:
        sid = self.next_id
        self.next_id += 2
        self.streams[sid] = Stream(sid)
        self.stream_windows[sid] = self.peer_initial_window
        return sid

    def headers_block(self, headers) -> bytes:
        return self.enc.encode([(n.encode() if isinstance(n, str) else n,
                                 v.encode() if isinstance(v, str) else v) for n, v in headers])

    def request(self, method: str = "GET", path: str = "/", authority: Optional[str] = "test.local",
                headers=(), body: Optional[bytes] = None, end: bool = True, scheme: str = "http",
                sid: Optional[int] = None) -> int:
        """Sends HEADERS (and DATA when body is given; END_STREAM when `end`)."""
        sid = sid if sid is not None else self.new_id()
        hdrs = [(":method", method), (":scheme", scheme), (":path", path)]
        if authority is not None:
            hdrs.insert(1, (":authority", authority))
        hdrs += list(headers)
        block = self.headers_block(hdrs)
        flags = ["END_HEADERS"]
        if end and body is None:
            flags.append("END_STREAM")
        self.send(HeadersFrame(sid, data=block, flags=flags))
        if body is not None:
            self.send_body(sid, body, end=end)
        return sid

    def send_body(self, sid: int, body: bytes, end: bool = True, frame_size: int = 16384):
        """DATA frames of at most frame_size bytes (no flow-control wait: for
        bodies within the server's windows)."""
        out = []
        for i in range(0, len(body), frame_size):
            out.append(DataFrame(sid, data=body[i:i + frame_size]))
        if not out:
            out.append(DataFrame(sid, data=b""))
        if end:
            out[-1].flags.add("END_STREAM")
        self.send(*out)

    def send_body_flow(self, sid: int, pieces, end: bool = True, timeout: Optional[float] = None):
        """Sends the bytes of `pieces` (an iterable of bytes) as DATA within
        the server's flow-control windows, reading frames (WINDOW_UPDATE)
        while a window is closed. Raises TimeoutError when no window opens
        in time."""
        deadline = time.monotonic() + (self.timeout if timeout is None else timeout)
        for piece in pieces:
            view = memoryview(piece)
            while len(view):
                while min(self.conn_window, self.stream_windows.get(sid, 0)) <= 0:
                    if self.streams[sid].done:
                        return
                    left = deadline - time.monotonic()
                    if left <= 0 or (self.read_frame(min(left, 1.0)) is None and self.closed):
                        raise TimeoutError("no flow-control window")
                n = min(len(view), self.conn_window, self.stream_windows[sid], self.peer_max_frame)
                self.send(DataFrame(sid, data=bytes(view[:n])))
                self.conn_window -= n
                self.stream_windows[sid] -= n
                view = view[n:]
                while self.sock_readable():
                    if self.read_frame(0) is None:
                        break
        if end:
            self.send(DataFrame(sid, data=b"", flags=["END_STREAM"]))

    def sock_readable(self) -> bool:
        import select
        if self.buf and len(self.buf) >= 9:
            return True
        r, _, _ = select.select([self.sock], [], [], 0)
        return bool(r) or (isinstance(self.sock, ssl.SSLSocket) and self.sock.pending() > 0)

    def raw_headers(self, sid: int, block: bytes, end_stream: bool = True, end_headers: bool = True):
        flags = []
        if end_headers:
            flags.append("END_HEADERS")
        if end_stream:
            flags.append("END_STREAM")
        self.send(HeadersFrame(sid, data=block, flags=flags))

    def rst(self, sid: int, code: int = CANCEL):
        self.send(RstStreamFrame(sid, error_code=code))

    def ping(self, data: bytes = b"12345678"):
        self.send(PingFrame(0, opaque_data=data))

    def window_update(self, sid: int, n: int):
        self.send(WindowUpdateFrame(sid, window_increment=n))

    def consume(self, sid: int, n: Optional[int] = None):
        """With auto_window off: gives back n (default: all) received bytes of
        stream sid, and the same on the connection."""
        left = self.unconsumed.get(sid, 0)
        n = left if n is None else min(n, left)
        if n <= 0:
            return
        self.unconsumed[sid] = left - n
        self.send(WindowUpdateFrame(0, window_increment=n), WindowUpdateFrame(sid, window_increment=n))

    # -- receiving
    def _fill(self, timeout: float) -> bool:
        self.sock.settimeout(timeout)
        try:
            data = self.sock.recv(1 << 18)
        except socket.timeout:
            return False
        except (ConnectionResetError, BrokenPipeError, ssl.SSLError, OSError):
            data = b""
        if not data:
            self.closed = True
            return False
        self.buf += data
        return True

    def read_frame(self, timeout: Optional[float] = None) -> Optional[Frame]:
        """The next frame (processed), or None on timeout / close."""
        deadline = time.monotonic() + (self.timeout if timeout is None else timeout)
        while True:
            if len(self.buf) >= 9:
                f, length = Frame.parse_frame_header(memoryview(self.buf[:9]))
                if len(self.buf) >= 9 + length:
                    body = bytes(self.buf[9:9 + length])
                    del self.buf[:9 + length]
                    f.parse_body(memoryview(body))
                    self._process(f)
                    return f
            if self.closed:
                return None
            left = deadline - time.monotonic()
            if left <= 0 or not self._fill(left):
                if self.closed or time.monotonic() >= deadline:
                    return None

    def _stream(self, sid: int) -> Stream:
        if sid not in self.streams:
            self.streams[sid] = Stream(sid)
        return self.streams[sid]

    def _headers_done(self, sid: int, block: bytes, end_stream: bool):
        st = self._stream(sid)
        hdrs = [(n.decode() if isinstance(n, bytes) else n, v.decode() if isinstance(v, bytes) else v)
                for n, v in self.dec.decode(block)]
        status = next((v for n, v in hdrs if n == ":status"), None)
        if status is not None and status.startswith("1"):
            st.informational.append(hdrs)
        elif st.headers:
            st.trailers = hdrs
        else:
            st.headers = hdrs
        if end_stream:
            st.ended = True

    def _process(self, f: Frame):
        self.frames.append(f)
        if isinstance(f, SettingsFrame):
            if "ACK" in f.flags:
                self.settings_acked += 1
            else:
                if INITIAL_WINDOW_SIZE in f.settings:
                    delta = f.settings[INITIAL_WINDOW_SIZE] - self.peer_initial_window
                    self.peer_initial_window = f.settings[INITIAL_WINDOW_SIZE]
                    for k in self.stream_windows:
                        self.stream_windows[k] += delta
                if MAX_FRAME_SIZE in f.settings:
                    self.peer_max_frame = f.settings[MAX_FRAME_SIZE]
                self.server_settings.update(f.settings)
                self.send(SettingsFrame(0, flags=["ACK"]))
        elif isinstance(f, PingFrame):
            if "ACK" in f.flags:
                self.ping_acks.append(f.opaque_data)
            else:
                self.pings_received.append(f.opaque_data)
                if self.ack_ping:
                    self.send(PingFrame(0, opaque_data=f.opaque_data, flags=["ACK"]))
        elif isinstance(f, GoAwayFrame):
            self.goaways.append(f)
        elif isinstance(f, HeadersFrame):
            if "END_HEADERS" in f.flags:
                self._headers_done(f.stream_id, f.data, "END_STREAM" in f.flags)
            else:
                self._hb = (f.stream_id, bytearray(f.data), "END_STREAM" in f.flags)
        elif isinstance(f, ContinuationFrame):
            sid, blk, es = self._hb
            blk += f.data
            if "END_HEADERS" in f.flags:
                self._hb = None
                self._headers_done(sid, bytes(blk), es)
        elif isinstance(f, DataFrame):
            st = self._stream(f.stream_id)
            st.body_len += len(f.data)
            st.sha.update(f.data)
            if st.keep_body:
                st.body += f.data
            if "END_STREAM" in f.flags:
                st.ended = True
            n = f.flow_controlled_length
            if n:
                if self.auto_window:
                    ups = [WindowUpdateFrame(0, window_increment=n)]
                    if not st.ended:
                        ups.append(WindowUpdateFrame(f.stream_id, window_increment=n))
                    try:
                        self.send(*ups)
                    except OSError:
                        pass
                else:
                    self.unconsumed[f.stream_id] = self.unconsumed.get(f.stream_id, 0) + n
        elif isinstance(f, WindowUpdateFrame):
            if f.stream_id == 0:
                self.conn_window += f.window_increment
            else:
                self.stream_windows[f.stream_id] = self.stream_windows.get(f.stream_id, 0) + f.window_increment
        elif isinstance(f, RstStreamFrame):
            self._stream(f.stream_id).reset = f.error_code

    def wait(self, pred: Callable[[], bool], timeout: Optional[float] = None) -> bool:
        """Reads frames until pred() is true (True) or the timeout passes or
        the connection closes (False)."""
        deadline = time.monotonic() + (self.timeout if timeout is None else timeout)
        while not pred():
            left = deadline - time.monotonic()
            if left <= 0:
                return False
            if self.read_frame(min(left, 0.05)) is None and self.closed:
                return pred()
        return True

    def response(self, sid: int, timeout: Optional[float] = None) -> Stream:
        self.wait(lambda: self.streams[sid].done, timeout)
        return self.streams[sid]

    def wait_closed(self, timeout: Optional[float] = None) -> bool:
        return self.wait(lambda: self.closed, timeout)

    def close(self):
        try:
            self.sock.close()
        except OSError:
            pass

    def __enter__(self):
        return self

    def __exit__(self, *a):
        self.close()


def get(port: int, path: str = "/", authority: str = "test.local", headers=(), body=None,
        timeout: float = 10.0, **kw) -> Stream:
    """One request on a new connection."""
    with H2Client(port, timeout=timeout, **kw) as c:
        sid = c.request("POST" if body is not None else "GET", path, authority=authority, headers=headers,
                        body=body)
        return c.response(sid, timeout)
