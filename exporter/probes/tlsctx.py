"""Client TLS contexts built from TLSSettings, cached.

Why cached: building an SSLContext and loading a CA bundle costs milliseconds of CPU; with
thousands of probes per minute that dominates. Contexts are immutable once built, so one per
distinct TLSSettings is shared by every probe. Verification is on unless the target
explicitly sets insecure_skip_verify.
"""

from __future__ import annotations

import functools
import ssl

from ..config import TLSSettings


@functools.lru_cache(maxsize=64)
def client_context(tls: TLSSettings, verify: bool = True) -> ssl.SSLContext:
    """The SSLContext for a target. `verify=False` is for the TLS probe's second, inspect-only
    handshake (to read an untrusted certificate's expiry); it is never used to send credentials."""
    ctx = ssl.create_default_context(cafile=str(tls.ca_file) if tls.ca_file else None)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    if tls.insecure_skip_verify or not verify:
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    return ctx


def server_hostname(tls: TLSSettings, host: str) -> str:
    """The name to send as SNI and to verify against."""
    return tls.server_name or host
