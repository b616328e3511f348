"""Shared, mutable state of the Microsoft 365 simulator: tenant, apps, users, mailboxes, faults.

Why one object: the fake identity platform issues tokens that the fake IMAP/POP3/SMTP servers
must accept or reject consistently (the same app roles, users, FullAccess grants), and tests
and the demo flip fault switches in one place, in-process or via the admin HTTP API
(`/_sim/...` on the identity server).
"""

from __future__ import annotations

import threading
from collections import Counter, deque
from dataclasses import dataclass, field
from typing import Any

DEFAULT_TENANT = "11111111-2222-3333-4444-555555555555"
COMMAND_LOG = 2000  # mail commands remembered (oldest dropped first)


@dataclass
class TokenFault:
    """Faults applied by the token endpoint to requests of one client_id (or one user)."""

    aadsts: int | None = None  # answer with this AADSTS error (e.g. 7000222 secret expired)
    status: int | None = None  # answer with this HTTP status (429, 500, 503) without AADSTS code
    retry_after: int | None = None  # Retry-After header seconds (with 429/5xx)
    delay: float = 0.0  # seconds before answering (slow identity platform)
    wrong_user: str | None = None  # delegated: issue the token for this UPN instead
    missing_scopes: list[str] = field(default_factory=list)  # drop these scp/roles from tokens
    lifetime: int | None = None  # expires_in seconds (short lifetimes)
    html: bool = False  # token endpoint answers 200 text/html (captive portal / TLS-inspecting proxy)
    devicecode_status: int | None = None  # device-code endpoint answers this status with a text/plain body


@dataclass
class SimApp:
    client_id: str
    secret: str | None = None
    certificate_thumbprint_sha256: str | None = None  # base64url x5t#S256 of the accepted certificate
    certificate_pem: bytes | None = None  # accepted public certificate (signature check of assertions)
    roles: list[str] = field(
        default_factory=lambda: ["IMAP.AccessAsApp", "POP.AccessAsApp", "SMTP.SendAsApp"]
    )
    public_client: bool = True  # "Allow public client flows"
    display_name: str = "ECE mail app"
    # Graph-visible credential metadata (used by the app-registration audit)
    password_credentials: list[dict[str, Any]] = field(default_factory=list)
    key_credentials: list[dict[str, Any]] = field(default_factory=list)
    redirect_uris: list[str] = field(default_factory=list)
    graph_denied: bool = False  # Graph answers 403 to this app's calls (Application.Read.All not granted)


@dataclass
class SimUser:
    upn: str
    password: str = "correct horse battery staple"
    disabled: bool = False


@dataclass
class SimMailbox:
    """One mailbox and the per-mailbox fault switches of the mail servers."""

    address: str
    messages: int = 3
    full_access: set[str] = field(default_factory=set)  # UPNs with FullAccess (delegates)
    app_access: set[str] = field(default_factory=set)  # client_ids registered as service principals w/ access
    imap_enabled: bool = True
    pop_enabled: bool = True
    smtp_auth_disabled: bool = False  # 5.7.139 ... for the Mailbox
    not_accessible: bool = False  # IMAP: "BAD User is authenticated but not connected." after AUTHENTICATE
    security_defaults: bool = False  # SMTP 5.7.139 security defaults
    conditional_access: bool = False  # SMTP 5.7.139 did not meet the criteria
    # Arrival (unix time) of message 1, the oldest; None: it arrived FRESH_AGE seconds ago. Seeded
    # with the admin API's `oldest_age` to simulate a consumer that stopped reading (messages.py).
    oldest_received: float | None = None
    seen: set[int] = field(default_factory=set)  # message numbers with \Seen (set only by SELECT + FETCH BODY[])
    deleted: set[int] = field(default_factory=set)  # message numbers marked for deletion (POP3 DELE)


@dataclass
class ServerFault:
    """Faults of a whole mail server (applied to every connection to it)."""

    no_xoauth2: bool = False  # do not advertise AUTH=XOAUTH2 / SASL XOAUTH2
    tarpit: bool = False  # accept the TCP connection and never answer
    drop_mid: bool = False  # close the connection right after the greeting
    garbage: bool = False  # answer with random bytes
    delay: float = 0.0  # seconds before each reply
    no_starttls: bool = False  # SMTP: do not offer STARTTLS
    unavailable: bool = False  # IMAP BYE / POP -ERR / SMTP 421 on connect
    cert: str = "server"  # TLS certificate presented: server | expired | wrong_host
    challenge_on_failure: bool = False  # Gmail style: failed XOAUTH2 -> "+ <b64 JSON>", empty line, then NO
    # verbatim final reply to the XOAUTH2 response (IMAP: after the tag), e.g. Dovecot's
    # "-ERR [SYS/TEMP] Temporary authentication failure." when its token validation is down
    auth_reply: str | None = None
    echo_secret: bool = False  # auth_reply quotes pieces of the SASL response and the token's signature
    ehlo_auth: str | None = None  # SMTP: the AUTH capability after STARTTLS, e.g. "AUTH XOAUTH2 OAUTHBEARER"


@dataclass
class SimState:
    tenant_id: str = DEFAULT_TENANT
    apps: dict[str, SimApp] = field(default_factory=dict)
    users: dict[str, SimUser] = field(default_factory=dict)
    mailboxes: dict[str, SimMailbox] = field(default_factory=dict)
    token_faults: dict[str, TokenFault] = field(default_factory=dict)  # key: client_id or UPN
    server_faults: dict[str, ServerFault] = field(default_factory=dict)  # key: imap | pop3 | smtp
    tenant_smtp_auth_disabled: bool = False
    token_lifetime: int = 3600
    # refresh token (opaque) -> (client_id, upn, scopes); rotated on every use like Entra ID
    refresh_tokens: dict[str, tuple[str, str, list[str]]] = field(default_factory=dict)
    # refresh tokens lapsed after 90 days of inactivity: the token endpoint answers AADSTS700082
    expired_refresh_tokens: set[str] = field(default_factory=set)
    # device_code -> {"client_id", "scopes", "user" (set when "approved"), "expires"}
    device_codes: dict[str, dict[str, Any]] = field(default_factory=dict)
    # counters for tests/benchmarks: ("token", client_id, grant_type) / ("imap", address, outcome) ...
    counters: Counter[tuple[str, ...]] = field(default_factory=Counter)
    # (protocol, command line with SASL responses cut off): what clients asked, for tests that
    # prove a probe never sends a state-changing command (messages.py: record_command)
    commands: deque[tuple[str, str]] = field(default_factory=lambda: deque(maxlen=COMMAND_LOG))
    lock: threading.RLock = field(default_factory=threading.RLock, repr=False)

    def fault_for(self, *keys: str | None) -> TokenFault:
        """The token fault for the first key that has one (client_id, then user), else none."""
        for k in keys:
            if k and k in self.token_faults:
                return self.token_faults[k]
        return TokenFault()

    def server_fault(self, protocol: str) -> ServerFault:
        return self.server_faults.setdefault(protocol, ServerFault())

    def count(self, *key: str) -> None:
        with self.lock:
            self.counters[key] += 1

    def token_requests(self, client_id: str | None = None) -> int:
        """Token endpoint requests (all grants), optionally for one client_id."""
        return sum(
            n for k, n in self.counters.items() if k[0] == "token" and (client_id is None or k[1] == client_id)
        )


def find_user(state: SimState, upn: str) -> SimUser | None:
    """The user with this UPN, matched case-insensitively: UPNs are case-insensitive in Entra ID."""
    user = state.users.get(upn)
    if user is not None:
        return user
    low = upn.lower()
    return next((u for k, u in state.users.items() if k.lower() == low), None)
