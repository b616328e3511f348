"""Best-effort decoding of access-token claims (no signature check).

Why: the exporter verifies *what* it was given, not *whether* it is genuine (Exchange does
that). Identity (upn / unique_name / appid) and permissions (scp / roles) tell an operator
why a mailbox login will fail before it does: the token for the wrong user, or a missing
IMAP/POP/SMTP permission. Microsoft may make tokens opaque at any time, so every consumer
must treat `decode_claims` returning None as "unknown", never as a failure.
"""

from __future__ import annotations

import base64
import json
from typing import Any


def decode_claims(token: str) -> dict[str, Any] | None:
    try:
        payload = token.split(".")[1]
        data = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    except (IndexError, ValueError, UnicodeDecodeError):
        return None
    return data if isinstance(data, dict) else None


def token_identity(claims: dict[str, Any]) -> str | None:
    """Delegated tokens: the user (v1 tokens carry upn/unique_name, not preferred_username)."""
    for key in ("upn", "unique_name", "preferred_username", "email"):
        value = claims.get(key)
        if isinstance(value, str) and value:
            return value.removeprefix("live.com#")
    return None


def token_permissions(claims: dict[str, Any]) -> set[str]:
    """Delegated `scp` (space separated) and app-only `roles` (list), as one set."""
    perms: set[str] = set()
    scp = claims.get("scp")
    if isinstance(scp, str):
        perms.update(scp.split())
    roles = claims.get("roles")
    if isinstance(roles, list):
        perms.update(r for r in roles if isinstance(r, str))
    return perms


def is_app_token(claims: dict[str, Any]) -> bool:
    return claims.get("idtyp") == "app" or ("roles" in claims and "scp" not in claims)
