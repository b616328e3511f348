"""Certificate facts from a live TLS connection: the chain the server sent and its expiry dates.

Why not `getpeercert()`: it returns the decoded leaf only, and only when verification succeeded,
but `m365_tls_cert_expiry_timestamp_seconds` must be the earliest notAfter of the whole chain
sent, also when verification failed (an expired intermediate or an intercepting proxy's expired
certificate is exactly what an operator needs to see). Python 3.13 has the public
`SSLObject.get_unverified_chain()`; Python 3.11/3.12 only expose it on the private
`_ssl._SSLSocket` underneath (`SSLObject._sslobj`), which returns `_ssl.Certificate` objects.
We try the public API, then the private one, then fall back to the leaf alone, so the worst
case is "leaf only" rather than "no facts".
"""

from __future__ import annotations

import ssl
from typing import Any

from cryptography import x509

try:  # private constant; present in CPython 3.10+
    from _ssl import ENCODING_DER as _ENCODING_DER
except ImportError:  # pragma: no cover - other interpreters
    _ENCODING_DER = 2


def _to_der(cert: Any) -> bytes | None:
    """DER bytes of a chain element: bytes (3.13 public API) or `_ssl.Certificate` (3.10-3.12)."""
    if isinstance(cert, bytes | bytearray):
        return bytes(cert)
    public_bytes = getattr(cert, "public_bytes", None)
    if public_bytes is None:
        return None
    try:
        der = public_bytes(_ENCODING_DER)
    except (TypeError, ValueError, ssl.SSLError):
        return None
    return der if isinstance(der, bytes) else None


def peer_chain_der(ssl_object: Any) -> list[bytes]:
    """The certificate chain as sent by the server, leaf first, as DER. Empty if unavailable."""
    if ssl_object is None:
        return []
    getters = [getattr(ssl_object, "get_unverified_chain", None)]
    inner = getattr(ssl_object, "_sslobj", None)
    if inner is not None:
        getters.append(getattr(inner, "get_unverified_chain", None))
    for get in getters:
        if get is None:
            continue
        try:
            chain = get()
        except (ssl.SSLError, ValueError, AttributeError):
            continue
        if chain:
            ders = [d for d in (_to_der(c) for c in chain) if d]
            if ders:
                return ders
    try:
        leaf = ssl_object.getpeercert(binary_form=True)
    except (ssl.SSLError, ValueError, AttributeError):
        return []
    return [leaf] if leaf else []


def not_after(der: bytes) -> float | None:
    """A certificate's notAfter as a unix timestamp, or None if it cannot be parsed."""
    try:
        cert = x509.load_der_x509_certificate(der)
    except ValueError:
        return None
    return cert.not_valid_after_utc.timestamp()


def chain_expiry(chain: list[bytes]) -> tuple[float | None, float | None]:
    """(earliest notAfter in the chain, the leaf's notAfter); None where unknown."""
    dates = [not_after(der) for der in chain]
    known = [d for d in dates if d is not None]
    earliest = min(known) if known else None
    leaf = dates[0] if dates else None
    return earliest, leaf
