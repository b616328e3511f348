"""TLS session resumption for the mail login probes: one verified session per endpoint, reused.

Why: a full client handshake parses the server's certificate chain, decodes its public keys and
verifies the chain (OpenSSL 3's decoders are slow at this): about a quarter of a saturated
exporter's main thread in a py-spy profile. The kept session is set on each new connection by
reference (probes/sslshare.py), as curl and nginx share theirs; CPython's own setter would copy
it through DER first, re-parsing the leaf certificate, which ate most of the gain.
bench/bench_tls_resume.py measures the client CPU per IMAP probe without resumption, with it
through CPython's copy, and as shipped (bench/README.md).

Mail clients resume too (Java's JSSE, which Cisco ECE runs on, resumes by default for the same host and
port), so a resumed probe is still what the application does; and every mailbox of a tenant
talks to the same few endpoints (outlook.office365.com:993/995, smtp.office365.com:587), so one
session serves thousands of probes.

What keeps it honest:

* The TLS check (`probes/endpoint.py`) never resumes: certificate expiry, chain and hostname are
  verified by a full handshake on every interval, whatever the mail probes do.
* Every kept session descends from a handshake that verified the chain, and it is offered for
  at most MAX_AGE seconds after that verification (tickets from resumed handshakes inherit its
  date); then the next probe does a full handshake again. A certificate rotated on the server
  is seen by the mail probes within MAX_AGE.
* Any failed handshake forgets the endpoint's session, so once one probe finds a broken
  certificate every later probe of that endpoint finds it too, instead of some resuming past it.
* Sessions live on the context that made them (OpenSSL refuses a session from another context),
  MAX_ENDPOINTS per context, least recently stored dropped first.
* A session OpenSSL marked not resumable (a connection still on it ended without a TLS
  shutdown) is forgotten when next offered: a full, verified handshake follows.

How it reaches OpenSSL: asyncio (and uvloop) create the SSLObject inside `start_tls` with
`context.wrap_bio(...)` and no way to pass a session; `ResumingContext.wrap_bio` adds the
session of the endpoint named by the `offer` context variable, which `start_tls` copies into
the callback that calls `wrap_bio`. Without the variable (the TLS check, the token provider's
HTTPS) nothing is offered.
"""

from __future__ import annotations

import contextlib
import contextvars
import functools
import ssl
import time
from collections import OrderedDict
from collections.abc import Iterator
from dataclasses import dataclass

from .sslshare import Shared, share

MAX_AGE = 300.0  # seconds a session is offered after the full handshake that verified its chain
RENEW_AFTER = 60.0  # a resumed handshake's new ticket replaces the kept one at most this often
MAX_ENDPOINTS = 64  # sessions kept per context

EndpointKey = tuple[str, int, str]  # host, port, SNI

_offer: contextvars.ContextVar[EndpointKey | None] = contextvars.ContextVar("tls_resume_offer", default=None)


@dataclass(slots=True)
class _Kept:
    session: ssl.SSLSession
    verified_at: float  # time.monotonic() of the full handshake this session descends from
    stored_at: float


@functools.lru_cache(maxsize=1024)
def _idna(hostname: str) -> str:
    return hostname.encode("idna").decode("ascii")


class ResumingContext(ssl.SSLContext):
    """A client SSLContext that offers the endpoint's kept session (see the module docstring)."""

    def __init__(self, protocol: int) -> None:  # SSLContext.__new__ takes the protocol
        super().__init__()
        self._kept: OrderedDict[EndpointKey, _Kept] = OrderedDict()

    def _encode_hostname(self, hostname: str | bytes | None) -> str | bytes | None:
        """SSLContext's IDNA encoding of the SNI name, once per name (the `idna` codec was ~0.4 %
        of a probe, py-spy); the same result as CPython's for every input."""
        if isinstance(hostname, str):
            return _idna(hostname)
        return super()._encode_hostname(hostname)  # type: ignore[misc]

    def wrap_bio(self, incoming: ssl.MemoryBIO, outgoing: ssl.MemoryBIO, server_side: bool = False,
                 server_hostname: str | bytes | None = None, session: ssl.SSLSession | None = None) -> ssl.SSLObject:
        key = _offer.get()
        kept = self.session_for(key) if session is None and key is not None and not server_side else None
        obj = super().wrap_bio(incoming, outgoing, server_side, server_hostname, session)
        if kept is not None and key is not None:
            shared = share(obj, self, kept)
            if shared is Shared.NOT_RESUMABLE:  # a connection that used it ended without a TLS shutdown
                self.forget(key)
            elif shared is Shared.UNAVAILABLE:
                obj.session = kept  # CPython's setter: a copy through DER
        return obj

    def session_for(self, key: EndpointKey, now: float | None = None) -> ssl.SSLSession | None:
        """The session to offer `key`, or None when there is none or it is older than MAX_AGE."""
        kept = self._kept.get(key)
        if kept is None:
            return None
        if (time.monotonic() if now is None else now) - kept.verified_at > MAX_AGE:
            return None
        return kept.session

    def remember(self, key: EndpointKey, ssl_object: ssl.SSLObject) -> None:
        """After a dialogue over a handshake that succeeded: keep its session, dated by the full
        handshake it descends from. A resumed one only renews the kept ticket every RENEW_AFTER
        seconds: reading `SSLObject.session` copies the session through DER, which re-parses
        the server's certificate, about a tenth of a probe's CPU if done every time."""
        store = self._kept
        now = time.monotonic()
        if ssl_object.session_reused:
            kept = store.get(key)
            if kept is None:  # forgotten meanwhile (a failed handshake): do not resurrect it
                return
            if now - kept.stored_at < RENEW_AFTER:
                return
            verified_at = kept.verified_at
        else:
            verified_at = now
        session = ssl_object.session
        if session is None:
            return
        store[key] = _Kept(session, verified_at, now)
        store.move_to_end(key)
        while len(store) > MAX_ENDPOINTS:
            store.popitem(last=False)

    def forget(self, key: EndpointKey) -> None:
        """A handshake with this endpoint failed: the next probes verify from scratch."""
        self._kept.pop(key, None)


@contextlib.contextmanager
def offering(key: EndpointKey) -> Iterator[None]:
    """Within this block, TLS handshakes started from this task offer `key`'s kept session."""
    token = _offer.set(key)
    try:
        yield
    finally:
        _offer.reset(token)
