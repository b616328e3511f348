"""Concise helpers to populate a SimState (apps, users, mailboxes) and to bootstrap delegated tokens.

Why: every test and the demo need a tenant with an app registration, a service account and a
few mailboxes; writing the dataclasses out each time hides what a test is about. The helpers also
keep the Graph-visible app metadata (passwordCredentials/keyCredentials) consistent with what the
token endpoint accepts, and `bootstrap_delegated_cache` does what `m365-mail-exporter login`
does with a human at a browser: a device-code sign-in, approved here directly in the state.
"""

from __future__ import annotations

import datetime as dt
import time
import uuid
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import msal
import requests
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import NameOID

from .admin import approve_device_code
from .state import SimApp, SimMailbox, SimState, SimUser
from .tokens import b64url

DEFAULT_PASSWORD = "correct horse battery staple"


def _graph_time(when: dt.datetime) -> str:
    """Microsoft Graph's dateTimeOffset format, e.g. 2026-08-01T10:00:00Z."""
    return when.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def make_app_certificate(
    common_name: str = "m365-mail-exporter", valid_days: int = 365
) -> tuple[bytes, bytes]:
    """A self-signed RSA-2048 certificate for certificate-credential apps: (private_key_pem, certificate_pem).

    A negative `valid_days` gives a certificate that has already expired (for audit tests).
    """
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    now = dt.datetime.now(dt.UTC)
    start = min(now, now + dt.timedelta(days=valid_days)) - dt.timedelta(days=1)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(now + dt.timedelta(days=valid_days))
        .sign(key, hashes.SHA256())
    )
    key_pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    return key_pem, cert.public_bytes(serialization.Encoding.PEM)


def add_app(
    state: SimState,
    client_id: str,
    secret: str | None = None,
    certificate_pem: bytes | None = None,
    roles: list[str] | None = None,
    public_client: bool = True,
    *,
    display_name: str = "ECE mail app",
    secret_expires: dt.datetime | None = None,
) -> SimApp:
    """Register an app. A secret and/or a certificate make it usable for client credentials.

    Graph metadata is filled in like Entra shows it: one passwordCredential per secret (hint = first
    three characters, endDateTime = `secret_expires`, default 180 days ahead) and one keyCredential
    per certificate (customKeyIdentifier = SHA-1 thumbprint, dates from the certificate).
    """
    now = dt.datetime.now(dt.UTC)
    app = SimApp(client_id=client_id, secret=secret, public_client=public_client, display_name=display_name)
    if roles is not None:
        app.roles = list(roles)
    if secret is not None:
        app.password_credentials.append({
            "keyId": str(uuid.uuid5(uuid.NAMESPACE_URL, f"secret:{client_id}:{secret}")),
            "displayName": "m365-mail-exporter",
            "hint": secret[:3],
            "customKeyIdentifier": None,
            "secretText": None,
            "startDateTime": _graph_time(now - dt.timedelta(days=1)),
            "endDateTime": _graph_time(secret_expires or now + dt.timedelta(days=180)),
        })
    if certificate_pem is not None:
        cert = x509.load_pem_x509_certificate(certificate_pem)
        app.certificate_pem = certificate_pem
        app.certificate_thumbprint_sha256 = b64url(cert.fingerprint(hashes.SHA256()))
        cn = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
        app.key_credentials.append({
            "keyId": str(uuid.uuid5(uuid.NAMESPACE_URL, f"cert:{client_id}:{cert.serial_number}")),
            "type": "AsymmetricX509Cert",
            "usage": "Verify",
            "displayName": f"CN={cn[0].value}" if cn else "certificate",
            "customKeyIdentifier": cert.fingerprint(hashes.SHA1()).hex().upper(),
            "startDateTime": _graph_time(cert.not_valid_before_utc),
            "endDateTime": _graph_time(cert.not_valid_after_utc),
        })
    with state.lock:
        state.apps[client_id] = app
    return app


def add_user(state: SimState, upn: str, password: str = DEFAULT_PASSWORD, disabled: bool = False) -> SimUser:
    user = SimUser(upn=upn, password=password, disabled=disabled)
    with state.lock:
        state.users[upn] = user
    return user


def add_mailbox(
    state: SimState,
    address: str,
    full_access: Iterable[str] = (),
    app_access: Iterable[str] = (),
    messages: int = 3,
    **switches: Any,
) -> SimMailbox:
    """A mailbox; `full_access` are delegate UPNs, `app_access` client_ids registered as service principals.

    `switches` sets SimMailbox fault fields (e.g. not_accessible=True).
    """
    mailbox = SimMailbox(
        address=address, messages=messages, full_access=set(full_access), app_access=set(app_access)
    )
    for name, value in switches.items():
        if not hasattr(mailbox, name):
            raise TypeError(f"SimMailbox has no field {name!r}")
        setattr(mailbox, name, value)
    with state.lock:
        state.mailboxes[address] = mailbox
    return mailbox


class _TimeoutSession(requests.Session):
    """A requests session that always has a timeout: MSAL passes none (it would wait forever)."""

    def __init__(self, timeout: float) -> None:
        super().__init__()
        self.default_timeout = timeout

    def request(self, method: str | bytes, url: str | bytes, *args: Any, **kwargs: Any) -> requests.Response:
        if kwargs.get("timeout") is None:
            kwargs["timeout"] = self.default_timeout
        return super().request(method, url, *args, **kwargs)


def sim_http_client(ca_file: Path | str, timeout: float = 10.0) -> requests.Session:
    """An MSAL `http_client` that trusts the simulator CA only and ignores REQUESTS_CA_BUNDLE & co."""
    session = _TimeoutSession(timeout)
    session.trust_env = False  # else REQUESTS_CA_BUNDLE / CURL_CA_BUNDLE silently replace verify=
    session.verify = str(ca_file)
    return session


def bootstrap_delegated_cache(
    authority: str,
    client_id: str,
    upn: str,
    scopes: list[str],
    state: SimState,
    http_client: Any,
    cache: msal.SerializableTokenCache,
    *,
    timeout: float = 15.0,
) -> dict[str, Any]:
    """Device-code sign-in as `upn`, approved directly in `state`; fills `cache` and returns MSAL's result.

    Blocking (MSAL has no async API). The identity server must run on another thread's event loop
    than the caller's: from async code use `await asyncio.to_thread(bootstrap_delegated_cache, ...)`.
    The polling loop is bounded by `timeout` seconds. On failure the MSAL error dict is returned.
    """
    app = msal.PublicClientApplication(
        client_id, authority=authority, instance_discovery=False, http_client=http_client, token_cache=cache
    )
    flow = app.initiate_device_flow(scopes=scopes)
    if "user_code" not in flow:
        return flow
    approve_device_code(state, flow["user_code"], upn)
    deadline = time.monotonic() + timeout
    return app.acquire_token_by_device_flow(flow, exit_condition=lambda _flow: time.monotonic() > deadline)
