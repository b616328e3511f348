"""Signed JWT access tokens shaped like Exchange Online's, minted and verified by the simulator.

Why real RS256 JWTs: the exporter decodes claims (upn, scp, roles, exp) exactly as it would from
Microsoft, and the simulated mail servers must reject forged, expired or foreign tokens the way
Exchange Online does, so both sides are exercised for real.
"""

from __future__ import annotations

import base64
import json
import time
import uuid
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding, rsa


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def b64url_decode(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


class TokenMinter:
    """Holds the simulator's signing key; mints and verifies access tokens."""

    def __init__(self, issuer_tenant: str) -> None:
        self.tenant = issuer_tenant
        self._key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        self.kid = uuid.uuid4().hex[:16]

    def mint(self, claims: dict[str, Any], lifetime: int) -> str:
        now = int(time.time())
        body = {
            "iss": f"https://sts.windows.net/{self.tenant}/",
            "iat": now,
            "nbf": now,
            "exp": now + lifetime,
            "tid": self.tenant,
            "ver": "1.0",
            "uti": uuid.uuid4().hex[:22],
            **claims,
        }
        header = {"typ": "JWT", "alg": "RS256", "kid": self.kid}
        signing_input = f"{b64url(json.dumps(header).encode())}.{b64url(json.dumps(body).encode())}"
        sig = self._key.sign(signing_input.encode(), padding.PKCS1v15(), hashes.SHA256())
        return f"{signing_input}.{b64url(sig)}"

    def delegated_claims(self, upn: str, client_id: str, scopes: list[str]) -> dict[str, Any]:
        return {
            "aud": "https://outlook.office.com",
            "upn": upn,
            "unique_name": upn,
            "oid": str(uuid.uuid5(uuid.NAMESPACE_DNS, upn)),
            "appid": client_id,
            "appidacr": "0",
            "scp": " ".join(scopes),
            "name": upn.split("@")[0],
        }

    def app_claims(self, client_id: str, roles: list[str], cert: bool) -> dict[str, Any]:
        return {
            "aud": "https://outlook.office365.com",
            "appid": client_id,
            "appidacr": "2" if cert else "1",
            "idtyp": "app",
            "oid": str(uuid.uuid5(uuid.NAMESPACE_DNS, "sp-" + client_id)),
            "roles": roles,
        }

    def verify(self, token: str) -> dict[str, Any] | None:
        """Claims of a valid, unexpired token signed by this minter, else None."""
        try:
            head, body, sig = token.split(".")
            self._key.public_key().verify(
                b64url_decode(sig), f"{head}.{body}".encode(), padding.PKCS1v15(), hashes.SHA256()
            )
            claims = json.loads(b64url_decode(body))
        except (ValueError, InvalidSignature, json.JSONDecodeError, UnicodeDecodeError):
            return None
        if not isinstance(claims, dict) or claims.get("exp", 0) < time.time():
            return None
        return claims
