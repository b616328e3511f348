"""Root cause first: a mail check that fails because its credential or its endpoint failed says so.

Why: a mail check depends on two things the exporter already probes on their own, the
credential's token (token probe) and the endpoint's DNS/TCP/TLS (endpoint probe). Without this,
an expired client secret shows up as `auth_failed` with a fix about mailbox permissions, a token
lacking `SMTP.SendAsApp` as `auth_failed` with "New-ServicePrincipal ... FullAccess", and the
serving exporter (which still holds a cached access token for up to 90 minutes) shows mail green
while a fresh `check` (no cached token) fails at once. Here the mail result takes the
dependency's reason and names it ("credential ece-app: ..."), so:

- the reason and fix on every output (metrics, /probe, `check`, logs) point at the one thing to
  repair, and Alertmanager can page once per root cause (inhibit by credential / reason);
- `check` and the serving exporter agree: both run the token probe (a forced refresh) and then
  the mail probe through `Runtime`, and both attribute the same way. While the cached token
  still works, the detail says so ("the cached token still works ... until HH:MM UTC").

Which token verdicts count: definitive ones about the credential (expired/invalid secret,
revoked grant, wrong identity, a permission this check needs missing, ...). Transient ones
(throttled, identity platform unavailable, network trouble on the way to the login host,
`unknown`) do not fail a mail check that works with its cached token: they page through the
token alert alone, and the mail check keeps telling the truth about mail.

The mail probe's own network failure stays a network failure (a transport that is down is down
whatever the credential); if the endpoint probe of the same host:port is failing too, the mail
check takes the endpoint's reason (so "mail reason == endpoint reason" holds for suppression).
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from .facts import SCOPE_PREFIX
from .probes.result import ProbeResult
from .reasons import Category, Reason

# Token verdicts that say nothing about the credential itself: the cached token may well keep working.
TRANSIENT_TOKEN_REASONS = frozenset({Reason.THROTTLED, Reason.IDP_UNAVAILABLE, Reason.UNKNOWN})


def is_network(reason: Reason | None) -> bool:
    return reason is not None and reason.info.category is Category.NETWORK


@dataclass(frozen=True)
class Cause:
    """A failing dependency of a mail check: its reason and a detail that names it."""

    reason: Reason
    detail: str


def credential_cause(name: str, token: ProbeResult | None, needed: set[str]) -> Cause | None:
    """The credential's latest token-probe verdict as the cause of a mail check needing `needed`.

    `missing_scope` counts only when a permission this check needs is missing (a token without
    POP.AccessAsApp does not break SMTP)."""
    if token is None or token.success or token.reason is None:
        return None
    reason = token.reason
    if reason in TRANSIENT_TOKEN_REASONS or is_network(reason):
        return None
    if reason is Reason.MISSING_SCOPE:
        mine = sorted(p for p in needed if token.facts.get(SCOPE_PREFIX + p) == 1.0)
        if not mine:
            return None
        return Cause(reason, f"credential {name}: token lacks {', '.join(mine)}")
    return Cause(reason, f"credential {name}: {token.detail or reason.summary}")


def endpoint_cause(host: str, port: int | str, endpoint: ProbeResult | None) -> Cause | None:
    """The endpoint probe's failure, when it is a network failure (DNS, TCP, TLS)."""
    if endpoint is None or endpoint.success or not is_network(endpoint.reason):
        return None
    assert endpoint.reason is not None
    return Cause(endpoint.reason, f"endpoint {host}:{port}: {endpoint.detail or endpoint.reason.summary}")


def attribute(result: ProbeResult, check: str, credential: Cause | None, endpoint: Cause | None,
              cached_until: float | None = None) -> ProbeResult:
    """The mail result as the operator should see it: the dependency's reason when it is the cause.

    - the probe's own network failure: stays network; takes the endpoint's reason when the endpoint
      probe fails too (the transport is down whatever the credential);
    - a definitive credential failure: its reason, also while the cached token still works (then
      the detail says until when), because a fresh process (`check`, a restart) fails right away;
    - otherwise the probe's own verdict.
    Facts (e.g. the INBOX count) and the transcript are kept."""
    if not result.success and is_network(result.reason):
        if endpoint is None:
            return result
        return ProbeResult.fail(endpoint.reason, result.duration, _join(endpoint.detail, f"{check}: {result.detail}"),
                                result.transcript, **result.facts)
    if credential is None:
        return result
    if result.success:
        until = ""
        if cached_until:
            until = " until " + time.strftime("%H:%M UTC", time.gmtime(cached_until))
        tail = f"the cached token still works for {check.upper()}{until}; a restart or `check` fails now"
    else:
        tail = f"{check.upper()} with the current token: {result.reason}: {result.detail}"
    return ProbeResult.fail(credential.reason, result.duration, _join(credential.detail, tail), result.transcript,
                            **result.facts)


def _join(head: str, tail: str) -> str:
    return f"{head}; {tail}" if tail else head
