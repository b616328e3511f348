"""Client TLS contexts built from TLSSettings, cached.

Why cached: building an SSLContext and loading a CA bundle costs milliseconds of CPU; with
thousands of probes per minute that dominates. Contexts are not changed once built (apart from
the TLS sessions they keep, probes/tlsresume.py), so one per distinct TLSSettings is shared by
every probe. Verification is on unless the target
explicitly sets insecure_skip_verify.
"""

from __future__ import annotations

import functools
import ssl

from ..config import TLSSettings
from .tlsresume import ResumingContext


@functools.lru_cache(maxsize=64)
def client_context(tls: TLSSettings, verify: bool = True) -> ResumingContext:
    """The SSLContext for a target. `verify=False` is for the TLS probe's second, inspect-only
    handshake (to read an untrusted certificate's expiry); it is never used to send credentials.
    What `ssl.create_default_context` builds, as a ResumingContext (probes/tlsresume.py)."""
    ctx = ResumingContext(ssl.PROTOCOL_TLS_CLIENT)  # CERT_REQUIRED and check_hostname on
    if tls.ca_file:
        ctx.load_verify_locations(cafile=str(tls.ca_file))
    else:
        ctx.load_default_certs(ssl.Purpose.SERVER_AUTH)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    if tls.insecure_skip_verify or not verify:
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    return ctx


def server_hostname(tls: TLSSettings, host: str) -> str:
    """The name to send as SNI and to verify against."""
    return tls.server_name or host
