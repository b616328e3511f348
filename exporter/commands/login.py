"""`m365-mail-exporter login --credential NAME`: bootstrap a delegated credential's token cache.

Why a device-code sign-in: the exporter runs on a server without a browser. The device-code flow
prints a URL and a code; a person opens it on any machine and signs in as the service account.
The exporter then keeps the refresh token alive on its own (one forced refresh per
token_interval), so this is needed once, and again only when Entra ID revokes the grant
(password reset, 90 days unused, admin revoke).

Why it refuses the wrong user: the usual failure is a browser that is already signed in as the
administrator doing the setup, so the token is issued for *them*. A cache holding that token
would make every mail probe fail confusingly later (or, worse, work against the wrong mailbox
permissions). So `login` decodes the new token, compares the identity with the configured
`account` and, if it differs, writes nothing: the existing cache file stays byte-for-byte as it
was. On success the cache is replaced atomically (temp file, fsync, rename, mode 0600) holding
only that account, so re-running `login` is always safe.

Same HTTP rules as the token provider (its MsalHttpClient: no environment CA/proxy, the
configured CA bundle and proxy, a timeout; no instance discovery for custom authority hosts),
and the same scopes: the delegated scopes of the checks the credential's mailboxes use.

MSAL offers the device flow on PublicClientApplication only. A delegated credential *with* a
client secret is a confidential client (typical for contact-centre apps): Entra ID accepts the
device_code grant from it when it authenticates with its secret, so `login` borrows MSAL's two
device-flow methods onto a ConfidentialClientApplication (they only use ClientApplication
internals). If the tenant refuses that, the error says to allow public client flows instead.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import msal

from .. import oscompat
from ..auth.cache import save_cache
from ..auth.claims import decode_claims, token_identity, token_permissions
from ..auth.errors import TokenError, from_msal_result, from_observed_exception
from ..auth.provider import TokenProvider, build_msal_app, read_client_material, required_permissions
from ..config import Config, ConfigError, load_config
from ..reasons import Reason

EXIT_OK, EXIT_FAILED, EXIT_CONFIG = 0, 1, 2
DEFAULT_CONFIG = oscompat.default_config_path()

FlowCallback = Callable[[dict[str, Any]], None]


class DeviceFlowConfidentialApp(msal.ConfidentialClientApplication):
    """A confidential client that can run the device-code flow (see the module docstring)."""

    DEVICE_FLOW_CORRELATION_ID = msal.PublicClientApplication.DEVICE_FLOW_CORRELATION_ID
    initiate_device_flow = msal.PublicClientApplication.initiate_device_flow
    acquire_token_by_device_flow = msal.PublicClientApplication.acquire_token_by_device_flow


@dataclass
class LoginResult:
    exit_code: int
    message: str
    identity: str | None = None
    reason: Reason | None = None

    @property
    def ok(self) -> bool:
        return self.exit_code == EXIT_OK


def _failure(err: TokenError, confidential: bool, what: str, provider: TokenProvider) -> LoginResult:
    url = urlsplit(provider.authority)
    fix = err.reason.fix_for(credential=provider.name, host=url.hostname, port=url.port or 443)
    msg = f"{what} failed: {err.reason.value}: {err.reason.summary}\n  detail: {err.detail}\n  fix: {fix}"
    if confidential and err.reason in (Reason.APP_NOT_FOUND, Reason.PUBLIC_CLIENT_DISABLED, Reason.UNKNOWN):
        msg += ("\n  note: this credential has a client secret, so login ran the device-code flow as a "
                "confidential client. If the app registration refuses that, set 'Allow public client flows' "
                "to Yes (App registrations > Authentication) and run login again.")
    return LoginResult(EXIT_FAILED, msg + "\nNothing was written; the token cache is unchanged.", reason=err.reason)


def checks_for(config: Config, name: str) -> set[str]:
    out: set[str] = set()
    for m in config.mailboxes:
        if m.credential == name:
            out.update(m.checks)
    return out


def run_login(
    config: Config,
    name: str,
    *,
    on_flow: FlowCallback | None = None,
    max_wait: float | None = None,
) -> LoginResult:
    """Device-code sign-in for delegated credential `name`. Blocking (MSAL has no async API).

    `on_flow(flow)` is called once the code exists (flow["message"], flow["user_code"],
    flow["verification_uri"], flow["expires_in"]); the CLI prints it, tests approve the code.
    Polling stops at the flow's expires_in, or after `max_wait` seconds if smaller.
    """
    cred = config.credentials.get(name)
    if cred is None:
        known = ", ".join(config.credentials) or "none configured"
        return LoginResult(EXIT_CONFIG, f"unknown credential {name!r} (configured: {known})")
    if cred.flow != "delegated" or not cred.account or not cred.token_cache:
        return LoginResult(EXIT_CONFIG, f"credential {name!r} is app-only (flow: client_credentials): it signs in "
                                        "with its own secret or certificate and needs no login. `login` is for "
                                        "credentials with flow: delegated, account and token_cache.")
    provider = TokenProvider(name, cred, config, checks_for(config, name))
    try:
        return _device_login(provider, on_flow, max_wait)
    finally:
        provider.close()


def _device_login(provider: TokenProvider, on_flow: FlowCallback | None, max_wait: float | None) -> LoginResult:
    cred = provider.cred
    account = str(cred.account)
    try:
        secret, _ = read_client_material(cred)
    except TokenError as err:
        return _failure(err, False, "reading the client secret", provider)
    confidential = secret is not None
    cache = msal.SerializableTokenCache()  # fresh: only this sign-in, never merged with an old cache
    try:
        app: Any = build_msal_app(cred.client_id, provider.authority, provider.http, secret, cache,
                                  custom_authority=provider.custom_authority,
                                  factory=DeviceFlowConfidentialApp if confidential else None)
        flow = app.initiate_device_flow(scopes=provider.scopes)
    except Exception as exc:  # MSAL/requests raise many types; classify like the provider does
        err = from_observed_exception(exc, provider.http)
        return _failure(err, confidential, "starting the device-code sign-in", provider)
    if "user_code" not in flow:
        err = from_msal_result(flow, provider.http.last_status, provider.http.last_retry_after)
        return _failure(err, confidential, "starting the device-code sign-in", provider)
    if on_flow is not None:
        on_flow(flow)
    wait = float(flow.get("expires_in", 900))
    if max_wait is not None:
        wait = min(wait, max_wait)
    deadline = time.monotonic() + wait
    try:
        result = app.acquire_token_by_device_flow(flow, exit_condition=lambda _f: time.monotonic() > deadline)
    except Exception as exc:
        return _failure(from_observed_exception(exc, provider.http), confidential, "the device-code sign-in", provider)
    if not result or "access_token" not in result:
        error = (result or {}).get("error")
        if error in ("authorization_pending", "slow_down", "expired_token"):
            return LoginResult(EXIT_FAILED, f"the code expired after {wait:.0f} s before the sign-in was completed. "
                                            "Nothing was written; run login again.")
        if error == "authorization_declined":
            return LoginResult(EXIT_FAILED, "the sign-in was declined in the browser. Nothing was written.")
        err = from_msal_result(result or {}, provider.http.last_status, provider.http.last_retry_after)
        return _failure(err, confidential, "the device-code sign-in", provider)

    claims = decode_claims(result["access_token"]) or {}
    id_claims = result.get("id_token_claims") or {}
    identity = token_identity(claims) or token_identity(id_claims)
    if not identity or identity.lower() != account.lower():
        who = identity or "an account whose name the token does not show"
        return LoginResult(
            EXIT_FAILED,
            f"REFUSED: the sign-in was completed as {who}, but credential {provider.name!r} is configured for "
            f"{account}.\nNothing was written; the token cache is unchanged.\n"
            f"Run login again and open the sign-in page in a private (incognito/InPrivate) browser window, "
            f"signing in as {account} only: a browser already signed in as another user (often the admin "
            "doing the setup) picks that user automatically.",
            identity=identity, reason=Reason.WRONG_IDENTITY,
        )
    for acct in app.get_accounts():  # keep only the configured account
        if str(acct.get("username", "")).lower() != account.lower():
            app.remove_account(acct)
    path = Path(str(cred.token_cache))
    try:
        save_cache(path, cache)
    except OSError as exc:
        return LoginResult(EXIT_FAILED, f"cannot write the token cache {path}: {exc.strerror or exc}",
                           identity=identity)
    message = (f"Signed in as {identity}. Token cache written to {path} (owner-only); the running exporter "
               "picks it up at its next token refresh.")
    needed = required_permissions(cred, provider.checks or {"imap", "pop3", "smtp"})
    missing = sorted(needed - token_permissions(claims)) if claims else []
    if missing:
        message += (f"\nWarning: the token lacks {', '.join(missing)}: "
                    f"{Reason.MISSING_SCOPE.fix_for(credential=provider.name)}")
    return LoginResult(EXIT_OK, message, identity=identity)


def print_flow(flow: dict[str, Any], account: str, out: Any = None) -> None:
    out = out or sys.stdout
    expires = int(flow.get("expires_in", 900))
    message = flow.get("message") or f"Open {flow.get('verification_uri')} and enter the code {flow.get('user_code')}."
    out.write(
        f"{message}\n"
        f"Sign in as {account}. Use a private (incognito/InPrivate) browser window, on any machine, so the "
        f"browser does not pick another signed-in account. The code is valid for {expires // 60} minutes; "
        "waiting for the sign-in...\n"
    )
    out.flush()


def main(args: argparse.Namespace) -> int:
    path = getattr(args, "config_file", DEFAULT_CONFIG)
    try:
        config = load_config(path)
    except ConfigError as exc:
        print(exc, file=sys.stderr)
        return EXIT_CONFIG
    name = args.credential
    cred = config.credentials.get(name)
    account = str(cred.account) if cred is not None and cred.account else "the configured account"
    try:
        result = run_login(config, name, on_flow=lambda flow: print_flow(flow, account))
    except KeyboardInterrupt:
        print("\ninterrupted: nothing was written; the token cache is unchanged.", file=sys.stderr)
        return EXIT_FAILED
    print(result.message, file=sys.stdout if result.ok else sys.stderr)
    return result.exit_code


def register(sub: argparse._SubParsersAction, add_common: Callable[[argparse.ArgumentParser], None]) -> None:
    p = sub.add_parser(
        "login",
        help="bootstrap a delegated credential's token cache (device-code sign-in)",
        description="Device-code sign-in for a delegated credential: prints a URL and a code, waits for the "
                    "sign-in, refuses a token issued for anyone but the configured account, and writes the "
                    "token cache atomically (mode 0600). Exit 0 ok, 1 failed or refused, 2 config error.",
    )
    add_common(p)
    p.add_argument("--credential", required=True, help="name of a credential with flow: delegated")
    p.set_defaults(func=main)
