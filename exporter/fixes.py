"""The filled-in fix for a result, from where it came from (store key or check line) and the config.

Why one function: the landing page, `/probe?debug=true` and `check` all show fixes, and an
operator pastes them. The catalogue (reasons.py) holds templates with `{mailbox}`,
`{credential}` and `{endpoint}`; this module knows which mailbox, credential and host:port a
result belongs to, so no output ever shows a template token (tests scan every output for
`reasons.PLACEHOLDER_TOKENS`).
"""

from __future__ import annotations

from urllib.parse import urlsplit

from .config import Config
from .reasons import Reason

MAIL_CHECKS = ("imap", "pop3", "smtp")


def login_endpoint(config: Config, credential: str) -> tuple[str | None, int | None]:
    """host and port of the credential's identity platform (where a token request goes)."""
    cred = config.credentials.get(credential)
    if cred is None:
        return None, None
    url = urlsplit(config.authority_host(cred))
    return url.hostname, url.port or 443


def fix_for_mail(config: Config, reason: Reason, mailbox: str, check: str) -> str:
    """The fix for a mailbox's check (`check` in token | imap | pop3 | smtp)."""
    m = config.find_mailbox(mailbox)
    if m is None:
        return reason.fix_for(mailbox=mailbox)
    if check in MAIL_CHECKS and reason.info.category.value != "token":
        ep = config.endpoint_for(m, check)
        return reason.fix_for(mailbox=m.address, credential=m.credential, host=ep.host, port=ep.port)
    host, port = login_endpoint(config, m.credential)
    return reason.fix_for(mailbox=m.address, credential=m.credential, host=host, port=port)


def fix_for_credential(config: Config, reason: Reason, credential: str) -> str:
    host, port = login_endpoint(config, credential)
    return reason.fix_for(credential=credential, host=host, port=port)


def fix_for_key(config: Config, reason: Reason, key: tuple[str, ...]) -> str:
    """The fix for a ResultStore key: ("mailbox", label, check), ("credential", name),
    ("endpoint", host, port), ("audit", name, ...)."""
    kind = key[0] if key else ""
    if kind == "mailbox" and len(key) >= 3:
        return fix_for_mail(config, reason, key[1], key[2])
    if kind in ("credential", "audit") and len(key) >= 2:
        return fix_for_credential(config, reason, key[1])
    if kind == "endpoint" and len(key) >= 3:
        return reason.fix_for(host=key[1], port=key[2])
    return reason.fix
