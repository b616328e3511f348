"""The configured client certificate's own expiry, read from the certificate file we hold.

Why: certificate credentials are Microsoft's recommended kind, yet without the Graph audit
(which needs Application.Read.All) nothing warned before one expired. The exporter reads the
certificate file anyway to sign its client assertions, so its notAfter is known for free.
Runtime.apply records it like a declared `secret_expiry`: store key ("audit", name,
"certificate") with the fact SECRET_PREFIX + thumbprint, which the collector exports as
`m365_client_secret_expiry_timestamp_seconds{credential, key_id=<thumbprint>}`; the shipped
M365ClientSecretExpiringSoon / M365ClientSecretExpired alerts then cover it. The thumbprint is
the SHA-1 hex (upper case), as Entra ID's Certificates & secrets page shows it, so the operator
can find the registered certificate the series is about.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes

MAX_CERT_BYTES = 1 << 20  # a certificate (chain) file is a few KiB; never read more than this


@dataclass(frozen=True)
class CertificateExpiry:
    thumbprint: str  # SHA-1 of the DER certificate, hex upper case (Entra ID's "Thumbprint")
    not_after: float  # unix time


def read_certificate_expiry(path: Path | str) -> CertificateExpiry | None:
    """notAfter and thumbprint of the first certificate in a PEM (or DER) file; None if unreadable
    (the token probe then reports the file itself as credential_unreadable)."""
    try:
        with open(path, "rb") as fh:
            data = fh.read(MAX_CERT_BYTES)
    except OSError:
        return None
    try:
        cert = x509.load_pem_x509_certificate(data) if b"-----BEGIN" in data else x509.load_der_x509_certificate(data)
    except ValueError:
        return None
    return CertificateExpiry(cert.fingerprint(hashes.SHA1()).hex().upper(), cert.not_valid_after_utc.timestamp())
