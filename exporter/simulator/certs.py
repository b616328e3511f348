"""Certificates for the simulator: a private CA and server certificates (good, expired, wrong host).

Why generated at start: tests and `--demo` need real TLS with verification on, without shipping
keys. The exporter trusts the simulator by `ca_file` in its config, exactly how an operator
trusts a TLS-intercepting proxy's CA, never by turning verification off.
"""

from __future__ import annotations

import datetime as dt
import ssl
from dataclasses import dataclass
from pathlib import Path

import trustme

SERVER_NAMES = ("localhost", "127.0.0.1", "::1")


@dataclass
class SimCerts:
    """A CA and server contexts; `ca_file` is what clients configure as their trust anchor."""

    ca: trustme.CA
    ca_file: Path
    server: trustme.LeafCert
    expired: trustme.LeafCert
    wrong_host: trustme.LeafCert

    def server_context(self, which: str = "server") -> ssl.SSLContext:
        """A server-side SSLContext for 'server' (valid), 'expired' or 'wrong_host'."""
        ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        getattr(self, which).configure_cert(ctx)
        return ctx


def make_certs(workdir: Path) -> SimCerts:
    workdir.mkdir(parents=True, exist_ok=True)
    ca = trustme.CA(organization_name="m365-mail-exporter simulator CA")
    ca_file = workdir / "simulator-ca.pem"
    ca.cert_pem.write_to_path(str(ca_file))
    now = dt.datetime.now(dt.UTC)
    server = ca.issue_cert(*SERVER_NAMES, not_after=now + dt.timedelta(days=90))
    expired = ca.issue_cert(
        *SERVER_NAMES, not_before=now - dt.timedelta(days=30), not_after=now - dt.timedelta(days=1)
    )
    wrong_host = ca.issue_cert("mail.wrong-host.invalid", not_after=now + dt.timedelta(days=60))
    return SimCerts(ca, ca_file, server, expired, wrong_host)
