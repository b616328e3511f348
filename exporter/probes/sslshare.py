"""Hand a kept TLS session to a new connection by reference, as curl and nginx do.

Why: `SSLObject.session = s` (and `wrap_bio(session=s)`) makes CPython copy the session through
DER first (`_ssl_session_dup`, a workaround for an OpenSSL 1.1.0 bug), which re-parses the
server's certificate on every connection: about 160 us of the 400 us a resumed client handshake
costs here (bench/bench_tls_resume.py), paid on every mail probe. OpenSSL 3 treats a session set
on several connections as immutable (it duplicates a session before storing a new ticket in it),
which is how curl's and nginx's session caches share one `SSL_SESSION` between connections, so
`SSL_set_session` with the kept session itself is what OpenSSL supports.

How, without a C extension: the `SSL *` and `SSL_SESSION *` are read from CPython's `_ssl`
objects (the first fields after the object header) and `SSL_set_session` is called through the
libssl that `_ssl` itself is linked with. Every use checks the layout first, and everything falls
back to CPython's own path (the copy) when a check fails:

* the library answers to the same OpenSSL version number as the `ssl` module;
* the pointer after the connection's `SSL *` is the connection's own context object, and
  `SSL_get_SSL_CTX` of that `SSL *` is the context's `SSL_CTX *`;
* the session names the same context object (sessions never cross contexts);
* the connection has not started its handshake.

A session OpenSSL marked as not resumable (a connection that used it ended without a TLS
shutdown, e.g. a probe that timed out) is refused: `share` returns NOT_RESUMABLE and the caller
forgets it, so the next probe does a full, verified handshake. CPython's copy would have cleared
that mark and resumed anyway.
"""

from __future__ import annotations

import _ssl
import ctypes
import enum
import logging
import os
import ssl
import sys

log = logging.getLogger(__name__)

_HEAD = object.__basicsize__  # PyObject_HEAD: refcount + type
_PTR = ctypes.sizeof(ctypes.c_void_p)


class Shared(enum.Enum):
    SHARED = "shared"  # the session is set on the connection
    NOT_RESUMABLE = "not resumable"  # OpenSSL marked it bad: forget it, verify from scratch
    UNAVAILABLE = "unavailable"  # no fast path here: use CPython's (copying) setter


class _LibSSL:
    """The few libssl functions, from the library `_ssl` is linked with."""

    def __init__(self, lib: ctypes.CDLL) -> None:
        vp, i = ctypes.c_void_p, ctypes.c_int
        self.get_ctx = _fn(lib.SSL_get_SSL_CTX, vp, [vp])
        self.set_session = _fn(lib.SSL_set_session, i, [vp, vp])
        self.resumable = _fn(lib.SSL_SESSION_is_resumable, i, [vp])
        self.in_before = _fn(lib.SSL_in_before, i, [vp])


def _fn(f: ctypes._NamedFuncPointer, restype: object, argtypes: list[object]) -> ctypes._NamedFuncPointer:
    f.restype = restype
    f.argtypes = argtypes
    return f


def _load() -> _LibSSL | None:
    """libssl as `_ssl` sees it, or None (then CPython's setter is used). POSIX only: there the
    `_ssl` module's handle resolves the symbols of the libssl it was linked with; a statically
    linked `_ssl` exports none, and Windows resolves no dependency's symbols through a handle."""
    if sys.implementation.name != "cpython" or os.name != "posix" or os.environ.get("M365_TLS_SHARE") == "0":
        return None
    try:
        lib = ctypes.CDLL(_ssl.__file__)
        version = _fn(lib.OpenSSL_version_num, ctypes.c_ulong, [])
        if version() != ssl.OPENSSL_VERSION_NUMBER:
            return None
        return _LibSSL(lib)
    except (OSError, AttributeError):
        return None


_lib: _LibSSL | None = None
_loaded = False


def _library() -> _LibSSL | None:
    global _lib, _loaded
    if not _loaded:
        _lib, _loaded = _load(), True
        log.debug("TLS sessions are %s", "shared by reference" if _lib else "copied by CPython")
    return _lib


def _field(obj: object, index: int) -> int | None:
    """The index-th pointer after the object header (valid for the objects this module reads)."""
    return ctypes.c_void_p.from_address(id(obj) + _HEAD + index * _PTR).value


def share(sslobj: ssl.SSLObject, context: ssl.SSLContext, session: ssl.SSLSession) -> Shared:
    """Set `session` (made by `context`) on the new client connection `sslobj` by reference."""
    lib = _library()
    if lib is None:
        return Shared.UNAVAILABLE
    conn = getattr(sslobj, "_sslobj", None)  # ssl.SSLObject wraps an _ssl._SSLSocket
    if type(conn) is not _ssl._SSLSocket or type(session) is not ssl.SSLSession or conn.context is not context:
        return Shared.UNAVAILABLE
    # _SSLSocket: Socket, ssl, ctx, ...; _SSLContext: ctx, ...; SSLSession: session, ctx
    if _field(conn, 2) != id(context) or _field(session, 1) != id(context):
        return Shared.UNAVAILABLE
    ssl_p, ctx_p, sess_p = _field(conn, 1), _field(context, 0), _field(session, 0)
    if not ssl_p or not ctx_p or not sess_p or lib.get_ctx(ssl_p) != ctx_p or not lib.in_before(ssl_p):
        return Shared.UNAVAILABLE
    if not lib.resumable(sess_p):
        return Shared.NOT_RESUMABLE
    return Shared.SHARED if lib.set_session(ssl_p, sess_p) == 1 else Shared.UNAVAILABLE
