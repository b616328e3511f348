"""Gzip of /metrics as concatenated gzip members, recompressing only pieces that changed.

Why members: a gzip file may hold several members one after another (RFC 1952 2.2), and every
decoder HTTP clients and Prometheus use (Go's compress/gzip, zlib, Python's gzip) decodes them as
one stream: the concatenated decompressed data. Each member carries its own CRC and length, so a
cached member stays valid next to freshly compressed ones, unlike a single deflate stream whose
trailer CRC would cover the whole body. Families that did not change since the last scrape
(intervals, config-derived info, most token and endpoint families) are not compressed again.

Unit: one member per metric family (collector.py): a family none of whose fragments changed
since the last scrape keeps its member. Finer units (per block of keys) compress worse (each
member starts with an empty dictionary) and cost a zlib state per call: at 10,000 mailboxes the
whole 20 MB body compresses in ~35 ms at level 1, so the per-call Python overhead of thousands of
small members cost more than it saved (measured, not kept).
"""

from __future__ import annotations

import zlib

LEVEL = 1  # fastest; exposition text still shrinks ~15x
GZIP_WBITS = 31  # zlib with a gzip header and trailer (mtime 0: the output depends only on the input)


def member(data: bytes, level: int = LEVEL) -> bytes:
    """One complete gzip member (header, deflate data, CRC-32 and length trailer)."""
    return zlib.compress(data, level, GZIP_WBITS)
