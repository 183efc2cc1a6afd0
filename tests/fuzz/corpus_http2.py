#!/usr/bin/python3
"""Writes the seed corpus of fuzz_http2 (tests/fuzz/corpus/http2/): what a
client sends after the preface and an empty SETTINGS frame (the target sends
those), each file starting with the slicing byte of harness.h. Uses Debian's
python3-hyperframe and python3-hpack. Run from the repository root:

    /usr/bin/python3 tests/fuzz/corpus_http2.py
"""

import os

from hpack import Encoder
from hyperframe.frame import (ContinuationFrame, DataFrame, GoAwayFrame, HeadersFrame, PingFrame, PriorityFrame,
                              RstStreamFrame, SettingsFrame, WindowUpdateFrame)

OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "corpus", "http2")


def lit(name: bytes, value: bytes) -> bytes:
    """A literal field without indexing, without Huffman (bytes as given)."""
    assert len(name) < 127 and len(value) < 127
    return b"\x00" + bytes([len(name)]) + name + bytes([len(value)]) + value


def req(enc, method="GET", path="/ok", authority="a.test", extra=()):
    return enc.encode([(":method", method), (":scheme", "http"), (":authority", authority), (":path", path)]
                      + list(extra))


def frames(*fs):
    return b"".join(f.serialize() for f in fs)


def seeds():
    s = {}
    e = Encoder()
    s["get_ok"] = frames(HeadersFrame(1, data=req(e), flags=["END_HEADERS", "END_STREAM"]))
    e = Encoder()
    get_up = HeadersFrame(1, data=req(e, path="/up/x"), flags=["END_HEADERS", "END_STREAM"])
    s["get_up_window"] = frames(get_up, WindowUpdateFrame(0, window_increment=100000),
                                WindowUpdateFrame(1, window_increment=100000))
    s["get_up_blocked"] = frames(get_up)
    e = Encoder()
    s["head_up"] = frames(HeadersFrame(1, data=req(e, "HEAD", "/up/x"), flags=["END_HEADERS", "END_STREAM"]))
    e = Encoder()
    s["get_up_chunked_trailer"] = frames(HeadersFrame(1, data=req(e, path="/up/c"),
                                                      flags=["END_HEADERS", "END_STREAM"]))
    e = Encoder()
    s["post_up_cl"] = frames(HeadersFrame(1, data=req(e, "POST", "/up/p", extra=[("content-length", "10")]),
                                          flags=["END_HEADERS"]),
                             DataFrame(1, data=b"0123456789", flags=["END_STREAM"]))
    e = Encoder()
    s["post_up_no_cl"] = frames(HeadersFrame(1, data=req(e, "POST", "/up/p"), flags=["END_HEADERS"]),
                                DataFrame(1, data=b"abc"), DataFrame(1, data=b"def"),
                                DataFrame(1, data=b"", flags=["END_STREAM"]))
    e = Encoder()
    s["post_too_large"] = frames(HeadersFrame(1, data=req(e, "POST", "/up/p"), flags=["END_HEADERS"]),
                                 DataFrame(1, data=b"x" * 2000, flags=["END_STREAM"]))
    e = Encoder()
    s["post_cl_mismatch"] = frames(HeadersFrame(1, data=req(e, "POST", "/up/p", extra=[("content-length", "9")]),
                                                flags=["END_HEADERS"]),
                                   DataFrame(1, data=b"abc", flags=["END_STREAM"]))
    e = Encoder()
    s["post_trailers"] = frames(HeadersFrame(1, data=req(e, "POST", "/up/p"), flags=["END_HEADERS"]),
                                DataFrame(1, data=b"abc"),
                                HeadersFrame(1, data=e.encode([("x-t", "1")]), flags=["END_HEADERS", "END_STREAM"]))
    e = Encoder()
    s["expect_continue"] = frames(HeadersFrame(1, data=req(e, "PUT", "/up/e", extra=[("expect", "100-continue"),
                                                                                   ("content-length", "2")]),
                                               flags=["END_HEADERS"]),
                                  DataFrame(1, data=b"hi", flags=["END_STREAM"]))
    e = Encoder()
    s["many_streams"] = frames(*[HeadersFrame(1 + 2 * i, data=req(e, path=f"/up/{i}"),
                                              flags=["END_HEADERS", "END_STREAM"]) for i in range(10)])
    e = Encoder()
    s["rapid_reset"] = frames(*[f for i in range(40) for f in (
        HeadersFrame(1 + 2 * i, data=req(e, path="/up/r"), flags=["END_HEADERS", "END_STREAM"]),
        RstStreamFrame(1 + 2 * i, error_code=8))])
    e = Encoder()
    s["reset_mid_response"] = frames(get_up, RstStreamFrame(1, error_code=8),
                                     HeadersFrame(3, data=req(e), flags=["END_HEADERS", "END_STREAM"]))
    e = Encoder()
    s["small_window"] = frames(SettingsFrame(0, settings={4: 10, 5: 16384}), SettingsFrame(0, flags=["ACK"]),
                               HeadersFrame(1, data=req(e, path="/up/x"), flags=["END_HEADERS", "END_STREAM"]),
                               WindowUpdateFrame(1, window_increment=5))
    s["ping_settings_goaway"] = frames(PingFrame(0, opaque_data=b"12345678"),
                                       SettingsFrame(0, settings={1: 0, 3: 5}),
                                       PingFrame(0, opaque_data=b"sk-drain", flags=["ACK"]),
                                       GoAwayFrame(0, last_stream_id=0, error_code=0))
    s["ping_flood"] = frames(*[PingFrame(0, opaque_data=b"%08d" % i) for i in range(120)])
    e = Encoder()
    block = req(e, path="/h/x", authority="w.example.com", extra=[("x-fuzz", "yes")])
    s["continuation"] = frames(HeadersFrame(1, data=block[:5], flags=["END_STREAM"]),
                               ContinuationFrame(1, data=block[5:9]),
                               ContinuationFrame(1, data=block[9:], flags=["END_HEADERS"]))
    s["continuation_flood"] = frames(HeadersFrame(1, data=block[:5], flags=["END_STREAM"]),
                                     *[ContinuationFrame(1, data=b"") for _ in range(60)])
    e = Encoder()
    s["hdr_route"] = frames(HeadersFrame(1, data=req(e, path="/h/y", authority="v.example.com",
                                                     extra=[("x-fuzz", "yes"), ("cookie", "a=1"), ("cookie", "b=2")]),
                                         flags=["END_HEADERS", "END_STREAM"]))
    e = Encoder()
    s["dead_retry"] = frames(HeadersFrame(1, data=req(e, path="/dead/x"), flags=["END_HEADERS", "END_STREAM"]))
    e = Encoder()
    s["malformed"] = frames(
        HeadersFrame(1, data=req(e) + lit(b"X-Upper", b"1"), flags=["END_HEADERS", "END_STREAM"]),
        HeadersFrame(3, data=e.encode([(":method", "GET"), (":scheme", "http")]), flags=["END_HEADERS", "END_STREAM"]),
        HeadersFrame(5, data=req(e, extra=[("connection", "close")]), flags=["END_HEADERS", "END_STREAM"]),
        HeadersFrame(7, data=req(e, path="/a%2Fb"), flags=["END_HEADERS", "END_STREAM"]),
        HeadersFrame(9, data=req(e, path="/up/a/../b", authority="u@x"), flags=["END_HEADERS", "END_STREAM"]),
        HeadersFrame(11, data=e.encode([(":method", "CONNECT"), (":authority", "x:1")]),
                     flags=["END_HEADERS", "END_STREAM"]))
    e = Encoder()
    s["frame_errors"] = frames(PriorityFrame(1, depends_on=0, stream_weight=5),
                               HeadersFrame(1, data=req(e, path="/up/x"), flags=["END_HEADERS", "END_STREAM"]),
                               WindowUpdateFrame(1, window_increment=0),
                               DataFrame(1, data=b"late"))
    e = Encoder()
    seed = req(e, path="/ok", extra=[("x-bomb", "B" * 3000)])
    s["hpack_bomb"] = frames(HeadersFrame(1, data=seed, flags=["END_HEADERS", "END_STREAM"]),
                             HeadersFrame(3, data=lit(b":method", b"GET") + lit(b":scheme", b"http")
                                          + lit(b":path", b"/ok") + b"\xbe" * 40,
                                          flags=["END_HEADERS", "END_STREAM"]))
    s["table_size_update"] = frames(HeadersFrame(1, data=b"\x3f\xe1\x1f" + req(Encoder()),
                                                 flags=["END_HEADERS", "END_STREAM"]))
    s["data_stream0"] = b"\x00\x00\x01\x00\x00\x00\x00\x00\x00x"
    s["empty"] = b""
    out = {}
    for name, body in s.items():
        out[name] = b"\x00" + body
    out["get_ok_bytewise"] = b"\xf0" + s["get_ok"]
    out["post_up_cl_split"] = b"\x07" + s["post_up_cl"]
    out["get_up_window_split"] = b"\x0b" + s["get_up_window"]
    return out


def main():
    os.makedirs(OUT, exist_ok=True)
    for name, data in sorted(seeds().items()):
        with open(os.path.join(OUT, name), "wb") as f:
            f.write(data)
    print(f"{len(seeds())} seeds in {OUT}")


if __name__ == "__main__":
    main()
