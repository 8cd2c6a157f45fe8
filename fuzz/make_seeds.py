#!/usr/bin/env python3
"""Writes the seed corpora of the fuzz targets (fuzz/corpus/<target>/).

Each seed is a small, well-formed input in the layout its target documents, plus a
few with one thing wrong (a lying size, a bogus resource id, a missing NUL), so that
the fuzzer starts next to the interesting paths. Run from anywhere; it rewrites the
corpus directories.
"""
import os
import struct

HERE = os.path.dirname(os.path.abspath(__file__))


def u32(v):
    return struct.pack("<I", v & 0xFFFFFFFF)


def u64(v):
    return struct.pack("<Q", v)


def pad(b):
    return b + b"\0" * (-len(b) % 4)


def string(s, nul=True):
    raw = s.encode() + (b"\0" if nul else b"")
    return u64(len(s) + 1) + pad(raw)


def write(target, seeds):
    d = os.path.join(HERE, "corpus", target)
    os.makedirs(d, exist_ok=True)
    for f in os.listdir(d):
        os.remove(os.path.join(d, f))
    for name, data in seeds.items():
        with open(os.path.join(d, name), "wb") as f:
            f.write(data)


# --- decoder: cap index, two type indexes (see the table in fuzz_decoder.cpp), message
T_BOOL, T_U32, T_U64, T_DOUBLE, T_ARR3 = 0, 4, 6, 9, 11
T_BYTES, T_VEC_U8, T_VEC_U32, T_VEC_STR, T_VEC_VEC = 14, 15, 16, 18, 19
T_STRING, T_STRING_VIEW, T_OPT_U64, T_OPT_STR = 20, 21, 22, 23
T_HANDSHAKE, T_ECHO, T_BLOB_RANGE, T_BIG, T_NESTED, T_VEC_NESTED = 25, 27, 28, 29, 30, 31


def dec(cap, a, b, msg):
    return bytes([cap, a, b]) + msg


nested = (u32(7) + u64(1) + u64(2) + u32(10) + u32(11) + u64(1) + string("n")
          + u64(5) + u64(6) + u32(1))
write("decoder", {
    "scalars": dec(3, T_U32, T_U64, u32(42) + u64(1 << 40)),
    "bool-garbage": dec(3, T_BOOL, T_DOUBLE, b"\x01\xff\xff\xff" + struct.pack("<d", 1.5)),
    "string": dec(3, T_STRING, T_STRING_VIEW, string("hello") + string("")),
    "string-no-nul": dec(3, T_STRING, T_U32, u64(4) + b"abcd"),
    "string-lying-size": dec(3, T_STRING_VIEW, T_U32, u64(1 << 62) + b"ab\0\0"),
    "bytes": dec(2, T_BYTES, T_ARR3, u64(5) + pad(b"12345") + b"xyz\0"),
    "vectors": dec(3, T_VEC_U8, T_VEC_U32, u64(3) + pad(b"abc") + u64(2) + u32(1) + u32(2)),
    "vector-capped": dec(1, T_VEC_U32, T_VEC_U8, u64(8) + u32(0) * 8),
    "vector-of-strings": dec(3, T_VEC_STR, T_VEC_VEC, u64(2) + string("a") + string("bc")
                             + u64(1) + u64(2) + b"hi\0\0"),
    "optionals": dec(3, T_OPT_U64, T_OPT_STR, u64(1) + u64(9) + u64(1) + string("x")),
    "optional-bad-flag": dec(3, T_OPT_U64, T_U32, u64(2) + u64(9)),
    "structs": dec(3, T_HANDSHAKE, T_ECHO, u32(0) + u32(2) + u64(7) + string("ping")),
    "blob-range": dec(3, T_BLOB_RANGE, T_BIG, u32(3) + u64(0) + u64(16) + u64(1)
                      + u64(2) + b"\xab\xab\0\0"),
    "nested": dec(3, T_NESTED, T_VEC_NESTED, nested + u64(1) + nested),
})

# --- host: flags (bit 0 preload the backend, bit 1 Venus mode), then commands as
# uint16 length + bytes. Command: int32 type, int32 flags, uint32 reply id, payload.
PAGE, BLOB, TINY, ODD, BOGUS = 2, 3, 4, 5, 77
HANDSHAKE, LOADLIBRARY, FORWARD = 0, 1, 2
ECHO, ADD, CHECKSUM, FAIL, SLEEP, BIG, FILL = 0, 1, 2, 3, 4, 5, 6


def cmd(ctype, flags=0, reply=PAGE, payload=b""):
    return u32(ctype) + u32(flags) + u32(reply) + payload


def host(flags, *cmds):
    out = bytes([flags])
    for c in cmds:
        out += struct.pack("<H", len(c)) + c
    return out


blob_range = u32(BLOB) + u64(0) + u64(4096) + u64(5)
write("host", {
    "handshake": host(0, cmd(HANDSHAKE, payload=u32(0) + u32(2))),
    "handshake-truncated": host(0, cmd(HANDSHAKE, payload=u32(0))),
    "load-then-forward": host(0, cmd(LOADLIBRARY), cmd(FORWARD, ADD, payload=u64(2) + u64(3))),
    "forward-before-load": host(0, cmd(FORWARD, ECHO, payload=u64(1) + string("x"))),
    "double-load": host(0, cmd(LOADLIBRARY), cmd(LOADLIBRARY)),
    "echo": host(1, cmd(FORWARD, ECHO, payload=u64(9) + string("hello"))),
    "echo-no-nul": host(1, cmd(FORWARD, ECHO, payload=u64(9) + string("hello", nul=False))),
    "checksum-fill": host(1, cmd(FORWARD, FILL, payload=blob_range),
                          cmd(FORWARD, CHECKSUM, payload=blob_range)),
    "checksum-bogus-blob": host(1, cmd(FORWARD, CHECKSUM,
                                       payload=u32(BOGUS) + u64(0) + u64(16) + u64(0))),
    "checksum-past-blob": host(1, cmd(FORWARD, CHECKSUM,
                                      payload=u32(BLOB) + u64(65000) + u64(4096) + u64(0))),
    "fail-big": host(1, cmd(FORWARD, FAIL, payload=u32(0xFFFFFFFF)),
                     cmd(FORWARD, BIG, payload=u64(20000)), cmd(FORWARD, BIG, payload=u64(100))),
    "unknown-forward-id": host(1, cmd(FORWARD, 200)),
    "unknown-type": host(1, cmd(7), cmd(0xFFFFFFFF)),
    "reply-pages": host(1, cmd(FORWARD, ADD, reply=TINY, payload=u64(1) + u64(1)),
                        cmd(FORWARD, ADD, reply=ODD, payload=u64(1) + u64(1)),
                        cmd(FORWARD, ADD, reply=BOGUS, payload=u64(1) + u64(1)),
                        cmd(FORWARD, ADD, reply=BLOB, payload=u64(1) + u64(1))),
    "venus": host(3, cmd(HANDSHAKE + 331, payload=u32(0) + u32(2)),
                  cmd(FORWARD + 331, ADD, payload=u64(4) + u64(5)), cmd(FORWARD, ADD)),
    "truncated-header": host(0, b"\x02\0\0\0\0\0"),
})

# --- session: options byte, then per call a selector byte; the transport reads
# create (0xff fails), submit (0xff fails) and a wait mode (0 silent, 1 dead,
# 2 late replies elsewhere, 3 reply: uint32 word, uint16 length, payload).
C_CONNECT, C_HANDSHAKE, C_LOAD, C_ECHO, C_ADD, C_CHECKSUM, C_FAIL, C_BIG, C_FILL, C_STAGE = range(10)


def reply(code, payload=b""):
    return bytes([3]) + u32(code + 1) + struct.pack("<H", len(payload)) + payload


def call(selector, args=b"", wait=b"\0", create=True):
    """One call: the selector, the call's own argument bytes, then what the transport
    reads: a create byte when the session needs a new channel, a submit byte, a wait."""
    return bytes([selector]) + args + (b"\0" if create else b"") + b"\0" + wait


connect = call(C_CONNECT, wait=reply(0xAB1E, u32(0) + u32(2))) + b"\0" + reply(0)
write("session", {
    "connect": bytes([0]) + connect,
    "connect-bad-magic": bytes([0]) + call(C_CONNECT, wait=reply(0, u32(0) + u32(2))),
    "connect-major": bytes([0]) + call(C_CONNECT, wait=reply(0xAB1E, u32(1) + u32(0))),
    "load-codes": bytes([0]) + call(C_LOAD, wait=reply(12 + 3))
    + call(C_LOAD, wait=reply(9), create=False) + call(C_LOAD, wait=reply(2), create=False),
    "echo": bytes([0]) + connect
    + call(C_ECHO, u32(5), reply(4, u64(5) + string("hi")), create=False),
    "echo-no-nul": bytes([2]) + call(C_ECHO, u32(5), reply(4, u64(5) + string("hi", nul=False))),
    "echo-lying-size": bytes([0]) + call(C_ECHO, u32(5), reply(4, u64(5) + u64(1 << 40))),
    "big-vector": bytes([2]) + call(C_BIG, u32(200), reply(4, u64(200) + b"\xab" * 200)),
    "forward-codes": bytes([0]) + call(C_FAIL, u32(1), reply(1))
    + call(C_FAIL, u32(1), reply(2), create=False)
    + call(C_FAIL, u32(1), reply(4 + 6), create=False)
    + call(C_FAIL, u32(1), reply(0xFFFFFFFE), create=False),
    "timeouts": bytes([0]) + call(C_ADD, wait=b"\0") + call(C_ADD, wait=b"\x02")
    + call(C_ADD, wait=b"\x01") + call(C_ADD, wait=reply(4, u64(3))),
    "failures": bytes([1]) + bytes([C_ADD, 0xFF]) + bytes([C_ADD, 0, 0xFF])
    + call(C_STAGE, b"\x10", reply(4, u64(1))),
})
