"""Gzip of /metrics from cached deflate chunks: only pieces that changed are compressed again.

Why not concatenated gzip members (RFC 1952 allows several, and Go's compress/gzip, i.e.
Prometheus, Python's gzip and GNU gzip read them all): curl 7.88 `--compressed` decodes only the
first member and silently drops the rest (measured). So the body is *one* gzip member whose
deflate data is a sequence of independently compressed chunks: each chunk comes from a fresh raw
compressor and ends with a sync flush (non-final blocks, byte-aligned, no back-references into
other chunks), so chunks concatenate into a valid deflate stream; an empty final block closes it.
The trailer's CRC-32 must cover the whole body: each chunk keeps the CRC and length of its input
and the CRCs are combined (`crc32_combine`, zlib's algorithm, with precomputed operators), so
unchanged chunks are never read again.

Unit: a run of adjacent metric families of at least 256 kB (collector.py). Finer units (per block
of keys) compress worse and cost a zlib state per call: at 10,000 mailboxes the whole 20 MB body
compresses in ~35 ms at level 1, so thousands of small chunks cost more than they saved (measured,
not kept).
"""

from __future__ import annotations

import struct
import zlib
from typing import NamedTuple

LEVEL = 1  # fastest; exposition text still shrinks ~15x
HEADER = b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x00\x03"  # gzip, deflate, no flags, mtime 0, unix
FINAL_BLOCK = b"\x03\x00"  # an empty final fixed-Huffman block


class Chunk(NamedTuple):
    deflate: bytes  # raw deflate, non-final blocks, byte-aligned
    crc: int  # CRC-32 of the input
    size: int  # input length


def chunk(data: bytes, level: int = LEVEL) -> Chunk:
    c = zlib.compressobj(level, zlib.DEFLATED, -15)
    return Chunk(c.compress(data) + c.flush(zlib.Z_SYNC_FLUSH), zlib.crc32(data), len(data))


def _times(mat: list[int], vec: int) -> int:
    out, i = 0, 0
    while vec:
        if vec & 1:
            out ^= mat[i]
        vec >>= 1
        i += 1
    return out


def _square(mat: list[int]) -> list[int]:
    return [_times(mat, mat[n]) for n in range(32)]


def _operators() -> list[list[int]]:
    """_OPS[k]: the GF(2) operator that appends 2**k zero bytes to a CRC-32 register."""
    one_bit = [0xEDB88320] + [1 << n for n in range(31)]  # one zero bit
    op = _square(_square(_square(one_bit)))  # 8 zero bits: one zero byte
    ops = []
    for _ in range(64):
        ops.append(op)
        op = _square(op)
    return ops


_OPS = _operators()


def crc32_combine(crc1: int, crc2: int, len2: int) -> int:
    """CRC-32 of A + B from crc32(A), crc32(B) and len(B) (zlib's crc32_combine)."""
    k = 0
    while len2:
        if len2 & 1:
            crc1 = _times(_OPS[k], crc1)
        len2 >>= 1
        k += 1
    return crc1 ^ crc2


def gzip_body(chunks: list[Chunk]) -> bytes:
    """One gzip member from the chunks, in order."""
    crc, size = 0, 0
    for c in chunks:
        crc = crc32_combine(crc, c.crc, c.size)
        size += c.size
    return b"".join([HEADER, *(c.deflate for c in chunks), FINAL_BLOCK, struct.pack("<II", crc, size & 0xFFFFFFFF)])
