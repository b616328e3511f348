"""SASL XOAUTH2 for the simulated mail servers: decode the client's response and decide access.

Why one module for all three protocols: Exchange Online applies the same authorization to
IMAP, POP3 and SMTP (a token for the right resource, the protocol's scope or app role, and
the identity's right to the mailbox named in `user=`); only the wire texts differ. Keeping the
decision here means a fault switched in `SimState` fails all three servers consistently, and
each server only maps an `Outcome` to its own reply.

The checks run in this order (first failure wins): decode -> `user=` names a known mailbox ->
token signature/expiry/audience -> user not disabled -> protocol enabled on the mailbox ->
SMTP client-auth policies -> scope/role -> access to the mailbox. "No access" is its own
outcome because IMAP reports it as a false success (see imap.py).
"""

from __future__ import annotations

import base64
import binascii
import enum
from dataclasses import dataclass
from typing import Any

from .state import SimMailbox, SimState
from .tokens import TokenMinter

# protocol -> (delegated scope, application role)
NEEDED: dict[str, tuple[str, str]] = {
    "imap": ("IMAP.AccessAsUser.All", "IMAP.AccessAsApp"),
    "pop3": ("POP.AccessAsUser.All", "POP.AccessAsApp"),
    "smtp": ("SMTP.Send", "SMTP.SendAsApp"),
}

# Exchange Online's resource app id: a token may carry it as `aud` instead of a URL.
EXCHANGE_APP_ID = "00000002-0000-0ff1-ce00-000000000000"


class Outcome(enum.StrEnum):
    """Result of one XOAUTH2 attempt; the value is what `SimState.count` records."""

    OK = "ok"
    BAD_BASE64 = "bad_base64"  # response is not base64
    MALFORMED = "malformed"  # base64, but not user=...^Aauth=Bearer ...^A^A
    UNKNOWN_USER = "unknown_user"  # user= is no mailbox of the tenant
    INVALID_TOKEN = "invalid_token"  # bad signature, expired, not a JWT of this simulator
    WRONG_AUDIENCE = "wrong_audience"  # e.g. a Microsoft Graph token
    USER_DISABLED = "user_disabled"
    PROTOCOL_DISABLED = "protocol_disabled"  # mailbox.imap_enabled / pop_enabled False
    SMTP_DISABLED_TENANT = "smtp_auth_disabled_tenant"
    SMTP_DISABLED_MAILBOX = "smtp_auth_disabled_mailbox"
    SECURITY_DEFAULTS = "security_defaults"
    CONDITIONAL_ACCESS = "conditional_access"
    MISSING_SCOPE = "missing_scope"  # scp / roles lack the protocol's permission
    NO_ACCESS = "no_access"  # valid token, but no FullAccess / service principal on the mailbox
    NOT_ACCESSIBLE = "not_accessible"  # IMAP: mailbox.not_accessible switch

    @property
    def ok(self) -> bool:
        return self is Outcome.OK


@dataclass(frozen=True)
class AuthResult:
    outcome: Outcome
    user: str = ""  # the user= address as sent ("" when undecodable)
    mailbox: SimMailbox | None = None
    identity: str = ""  # upn (delegated) or appid (app-only)
    claims: dict[str, Any] | None = None


def decode(response: str | bytes) -> tuple[str, str] | Outcome:
    """(user, token) from a base64 XOAUTH2 response, or BAD_BASE64 / MALFORMED.

    Never raises, whatever the client sends (property-tested).
    """
    try:
        raw = base64.b64decode(response.strip(), validate=True)
        text = raw.decode("utf-8")
    except (binascii.Error, ValueError):  # UnicodeDecodeError is a ValueError
        return Outcome.BAD_BASE64
    if not raw:
        return Outcome.BAD_BASE64
    if not text.endswith("\x01\x01"):
        return Outcome.MALFORMED
    fields: dict[str, str] = {}
    for part in text[:-2].split("\x01"):
        key, sep, value = part.partition("=")
        if not sep or key in fields:
            return Outcome.MALFORMED
        fields[key] = value
    if set(fields) != {"user", "auth"}:
        return Outcome.MALFORMED
    scheme, _, token = fields["auth"].partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        return Outcome.MALFORMED
    return fields["user"], token.strip()


def fault_reply(text: str, response: str, echo: bool) -> str:
    """A scripted failure reply; with `echo`, quoting a 40-char piece of the client's SASL
    response and of its token's signature segment, as a careless server might (redaction tests)."""
    if not echo:
        return text
    decoded = decode(response)
    token = decoded[1] if isinstance(decoded, tuple) else ""
    signature = token.rsplit(".", 1)[-1] if token.count(".") == 2 else ""
    return f"{text} (saw {response[10:50]} sig {signature[5:45]})"


def encode(user: str, token: str) -> str:
    """The base64 XOAUTH2 response a client sends (for tests and the demo)."""
    return base64.b64encode(f"user={user}\x01auth=Bearer {token}\x01\x01".encode()).decode()


def find_mailbox(state: SimState, address: str) -> SimMailbox | None:
    """Mailbox lookup is case-insensitive, like Exchange's recipient resolution."""
    with state.lock:
        mb = state.mailboxes.get(address)
        if mb is not None:
            return mb
        low = address.lower()
        for key, mb in state.mailboxes.items():
            if key.lower() == low:
                return mb
    return None


def _short(permission: str) -> str:
    """'https://outlook.office.com/IMAP.AccessAsUser.All' -> 'IMAP.AccessAsUser.All'."""
    return permission.rsplit("/", 1)[-1].lower()


def _exchange_audience(aud: Any) -> bool:
    if not isinstance(aud, str):
        return False
    return aud == EXCHANGE_APP_ID or "outlook." in aud.lower()


def authorize(state: SimState, minter: TokenMinter, protocol: str, response: str | bytes) -> AuthResult:
    """Decide one XOAUTH2 attempt for `protocol` (imap | pop3 | smtp) and count its outcome."""
    result = _authorize(state, minter, protocol, response)
    state.count(protocol, result.user, result.outcome.value)
    return result


def _authorize(state: SimState, minter: TokenMinter, protocol: str, response: str | bytes) -> AuthResult:
    decoded = decode(response)
    if isinstance(decoded, Outcome):
        return AuthResult(decoded)
    user, token = decoded
    mailbox = find_mailbox(state, user) if "@" in user else None
    if mailbox is None:
        return AuthResult(Outcome.UNKNOWN_USER, user)
    claims = minter.verify(token)
    if claims is None:
        return AuthResult(Outcome.INVALID_TOKEN, user, mailbox)
    if not _exchange_audience(claims.get("aud")):
        return AuthResult(Outcome.WRONG_AUDIENCE, user, mailbox, claims=claims)

    app_only = claims.get("idtyp") == "app" or ("roles" in claims and "upn" not in claims)
    identity = str(claims.get("appid", "")) if app_only else str(claims.get("upn", ""))

    def result(outcome: Outcome) -> AuthResult:
        return AuthResult(outcome, user, mailbox, identity, claims)

    if not app_only:
        with state.lock:
            sim_user = next((u for k, u in state.users.items() if k.lower() == identity.lower()), None)
        if sim_user is not None and sim_user.disabled:
            return result(Outcome.USER_DISABLED)
    if (protocol == "imap" and not mailbox.imap_enabled) or (protocol == "pop3" and not mailbox.pop_enabled):
        return result(Outcome.PROTOCOL_DISABLED)
    if protocol == "smtp":
        if state.tenant_smtp_auth_disabled:
            return result(Outcome.SMTP_DISABLED_TENANT)
        if mailbox.smtp_auth_disabled:
            return result(Outcome.SMTP_DISABLED_MAILBOX)
        if mailbox.security_defaults:
            return result(Outcome.SECURITY_DEFAULTS)
        if mailbox.conditional_access:
            return result(Outcome.CONDITIONAL_ACCESS)

    scope, role = NEEDED[protocol]
    if app_only:
        roles = claims.get("roles") or []
        granted = {_short(r) for r in roles if isinstance(r, str)} if isinstance(roles, list) else set()
        if role.lower() not in granted:
            return result(Outcome.MISSING_SCOPE)
        allowed = identity in mailbox.app_access
    else:
        scp = claims.get("scp")
        granted = {_short(s) for s in scp.split()} if isinstance(scp, str) else set()
        if scope.lower() not in granted:
            return result(Outcome.MISSING_SCOPE)
        low = identity.lower()
        allowed = bool(low) and (low == user.lower() or low in {d.lower() for d in mailbox.full_access})
    if not allowed:
        return result(Outcome.NO_ACCESS)
    if protocol == "imap" and mailbox.not_accessible:
        return result(Outcome.NOT_ACCESSIBLE)
    return result(Outcome.OK)
