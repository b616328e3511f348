"""TokenProvider: one per credential; single-flight MSAL acquisition off the event loop.

Why this shape:
- Courtesy to the identity platform: however many mailboxes share a credential, concurrent
  requests for a token join one in-flight acquisition (single-flight), mail probes use the
  cached access token, and only the token probe forces a refresh, once per `token_interval`.
- MSAL is synchronous and does network I/O: it runs in a small dedicated thread pool so a
  slow identity platform never blocks the event loop or starves /metrics rendering.
- MSAL caches failed responses (400 for 60 s, 429/5xx for Retry-After) and would answer a
  fixed fault from that cache. We own that dict (`http_cache`) and clear it before each real
  attempt; our own back-off (Retry-After, else `failure_backoff`) keeps the courtesy, so a
  recovery shows on the next token probe instead of being hidden.
- A rotated secret/certificate file is picked up: the credential material is re-read before
  each forced refresh and the MSAL app rebuilt when it changed.
"""

from __future__ import annotations

import asyncio
import errno
import hashlib
import logging
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import msal

from ..clouds import APP_ROLE, DELEGATED_SCOPE
from ..config import Config, Credential
from ..reasons import Reason
from ..redact import register_secret, register_token
from .cache import CacheCorrupt, CacheMissing, load_cache, save_cache, warn_if_exposed
from .claims import decode_claims, token_identity, token_permissions
from .errors import TokenError, from_exception, from_msal_result, from_observed_exception
from .http import MsalHttpClient

log = logging.getLogger(__name__)

_EXECUTOR = ThreadPoolExecutor(max_workers=8, thread_name_prefix="msal")


@dataclass
class TokenInfo:
    """An access token and what we learned from it. `access_token` is never logged or exported."""

    access_token: str = field(repr=False)
    expires_at: float
    obtained_at: float
    claims: dict[str, Any] = field(default_factory=dict, repr=False)
    identity: str | None = None
    permissions: frozenset[str] = frozenset()
    from_idp: bool = True  # False when MSAL answered from its token cache

    def missing(self, needed: set[str]) -> list[str]:
        """Required permissions absent from the token (empty when claims are opaque)."""
        if not self.claims:
            return []
        return sorted(needed - self.permissions)


def required_permissions(cred: Credential, checks: set[str]) -> set[str]:
    table = DELEGATED_SCOPE if cred.flow == "delegated" else APP_ROLE
    return {table[c] for c in checks if c in table}


def read_client_material(cred: Credential) -> tuple[Any, str]:
    """The credential's client secret or certificate dict (None for a public client) and a hash
    to detect rotation. Shared by the token provider, `login` and the Graph audit."""
    c = cred
    for sensitive in (c.client_secret_file, c.private_key_file):
        if sensitive is not None:
            warn_if_exposed(Path(sensitive))
    try:
        if c.client_secret_file is not None:
            secret: Any = Path(c.client_secret_file).read_text(encoding="utf-8").strip()
        elif c.client_secret_env is not None:
            import os

            secret = os.environ.get(c.client_secret_env, "").strip()
            if not secret:
                raise TokenError(Reason.CREDENTIAL_UNREADABLE,
                                 f"environment variable {c.client_secret_env} is empty or unset")
        elif c.private_key_file is not None and c.certificate_file is not None:
            key = Path(c.private_key_file).read_text(encoding="utf-8")
            cert = Path(c.certificate_file).read_text(encoding="utf-8")
            secret = {"private_key": key, "public_certificate": cert}
            if c.private_key_password_env:
                import os

                secret["passphrase"] = os.environ.get(c.private_key_password_env, "")
        else:
            secret = None
    except OSError as exc:
        if exc.errno in (errno.EMFILE, errno.ENFILE):  # our descriptor table is full: the file is fine
            raise TokenError(Reason.EXPORTER_OVERLOADED,
                             f"cannot open the credential file: {exc.strerror} (exporter overloaded)") from None
        raise TokenError(Reason.CREDENTIAL_UNREADABLE, f"cannot read credential file: {exc.strerror}") from None
    if isinstance(secret, str):
        if not secret:
            raise TokenError(Reason.CREDENTIAL_UNREADABLE, "client secret file is empty")
        register_secret(secret)
        digest = hashlib.sha256(secret.encode()).hexdigest()
    elif isinstance(secret, dict):
        digest = hashlib.sha256((secret["private_key"] + secret["public_certificate"]).encode()).hexdigest()
    else:
        digest = "none"
    return secret, digest


def build_msal_app(
    client_id: str,
    authority: str,
    http: MsalHttpClient,
    secret: Any,
    token_cache: msal.TokenCache,
    *,
    custom_authority: bool,
    http_cache: dict[Any, Any] | None = None,
    factory: Callable[..., msal.ClientApplication] | None = None,
) -> msal.ClientApplication:
    """One MSAL application built by the exporter's rules: our HTTP client (no environment CA or
    proxy, always a timeout), no instance discovery for custom authority hosts (simulator,
    sovereign overrides), confidential when there is a secret/certificate, else public.
    `factory` overrides the class (e.g. `login`'s device-flow-capable confidential client).
    Raises what MSAL raises (ValueError for a bad authority or key)."""
    kwargs: dict[str, Any] = dict(authority=authority, http_client=http, token_cache=token_cache)
    if http_cache is not None:
        kwargs["http_cache"] = http_cache
    if custom_authority:
        kwargs["instance_discovery"] = False
    if secret is not None:
        kwargs["client_credential"] = secret
        factory = factory or msal.ConfidentialClientApplication
    else:
        factory = factory or msal.PublicClientApplication
    return factory(client_id, **kwargs)


def _retrieve(task: asyncio.Task[Any]) -> None:
    if not task.cancelled():
        task.exception()


class TokenProvider:
    def __init__(self, name: str, cred: Credential, config: Config, checks: set[str]) -> None:
        self.name = name
        self.cred = cred
        self.checks = set(checks)  # union of the checks of every mailbox using this credential
        self.cloud = config.cloud_for(cred)
        self.authority = f"{config.authority_host(cred)}/{cred.tenant_id}"
        self.custom_authority = config.authority_host(cred) != self.cloud.authority_host
        https = config.defaults.https
        self.http = MsalHttpClient(https.ca_file, https.proxy, config.defaults.timeout,
                                   tuple(config.defaults.dns.resolvers))
        self.failure_backoff = min(60.0, config.defaults.token_interval)
        self._http_cache: dict[Any, Any] = {}
        self._app: msal.ClientApplication | None = None
        self._material_hash: str | None = None
        self._cache: msal.SerializableTokenCache | None = None
        self._inflight: asyncio.Task[TokenInfo] | None = None
        self._token: TokenInfo | None = None
        self._last_error: TokenError | None = None
        self._not_before = 0.0  # no IdP call before this (Retry-After / failure back-off)
        self.last_refresh_at: float | None = None

    # ------------------------------------------------------------------ public API

    @property
    def scopes(self) -> list[str]:
        if self.cred.scopes:
            return list(self.cred.scopes)
        if self.cred.flow == "delegated":
            checks = self.checks or {"imap", "pop3", "smtp"}
            return sorted(f"{self.cloud.delegated_resource}/{DELEGATED_SCOPE[c]}" for c in checks)
        return [self.cloud.app_scope]

    @property
    def token_requests(self) -> int:
        return self.http.token_requests

    @property
    def current(self) -> TokenInfo | None:
        return self._token

    def cached_token(self) -> TokenInfo | None:
        """The cached token if it has > 5 minutes left (what get_token returns without waiting);
        a mail probe takes it without arming a timeout (bench_probe_cpu: ~1 % of a probe)."""
        tok = self._token
        if tok is not None and tok.expires_at - time.time() > 300:
            return tok
        return None

    async def get_token(self) -> TokenInfo:
        """A usable access token for mail probes: cached while it has > 5 minutes left."""
        tok = self.cached_token()
        if tok is not None:
            return tok
        if self._last_error is not None and time.time() < self._not_before:
            raise self._last_error
        return await self._single_flight(force=False)

    async def refresh(self) -> TokenInfo:
        """Force a token from the identity platform (the token probe); honours Retry-After."""
        err = self._last_error
        if err is not None and (err.retry_after or err.reason is Reason.THROTTLED) and time.time() < self._not_before:
            raise err
        return await self._single_flight(force=True)

    def close(self) -> None:
        """Retire this provider (reload replaced it, or stop): its queued acquisition is
        dropped, so abandoned providers never pile up work in the MSAL thread pool or hit
        the identity platform after a reload storm; one already running ends by its timeout."""
        if self._inflight is not None and not self._inflight.done():
            self._inflight.cancel()
        self.http.close()

    # ------------------------------------------------------------------ internals

    async def _single_flight(self, force: bool) -> TokenInfo:
        """Join the in-flight acquisition, or start one, and wait for it.

        The acquisition is its own task, owned by the provider, not by the caller: a caller
        cancelled while waiting (its probe timed out, its job was stopped by a reload) stops
        waiting at once, and the cancellation propagates; the acquisition carries on for the
        other joiners and the next probe, and a cancelled caller never counts as a failure of
        the identity platform (no error recorded, no back-off armed)."""
        task = self._inflight
        if task is None or task.done():
            task = asyncio.get_running_loop().create_task(self._acquire(force), name=f"token:{self.name}")
            task.add_done_callback(_retrieve)  # every joiner may have gone away: no "never retrieved" noise
            self._inflight = task
        try:
            return await asyncio.shield(task)
        except asyncio.CancelledError:
            me = asyncio.current_task()
            if task.cancelled() and me is not None and not me.cancelling():
                # the acquisition itself was abandoned (provider retired by a reload), not this caller
                raise TokenError(Reason.UNKNOWN, "token acquisition abandoned: the credential was reloaded") from None
            raise

    async def _acquire(self, force: bool) -> TokenInfo:
        """One acquisition in the MSAL thread pool; records its outcome for every joiner."""
        try:
            info = await asyncio.get_running_loop().run_in_executor(_EXECUTOR, self._acquire_blocking, force)
        except TokenError as err:
            self._fail(err)
            raise
        except Exception as exc:  # MSAL/requests raise many types; each becomes a closed-set reason
            err = from_observed_exception(exc, self.http)
            self._fail(err)
            raise err from None
        self._token = info
        self._last_error = None
        self._not_before = 0.0
        if info.from_idp:
            self.last_refresh_at = info.obtained_at
        return info

    def _fail(self, err: TokenError) -> None:
        self._last_error = err
        self._not_before = time.time() + (err.retry_after if err.retry_after else self.failure_backoff)

    def _acquire_blocking(self, force: bool) -> TokenInfo:
        self._http_cache.clear()  # never let MSAL answer from its failure cache (see module doc)
        self.http.reset_observation()
        app = self._application(reload_material=force)
        before = self.http.token_requests
        if self.cred.flow == "delegated":
            result = self._acquire_delegated(app, force)
        else:
            if force:
                app.remove_tokens_for_client()
            result = app.acquire_token_for_client(scopes=self.scopes)
        if not result or "access_token" not in result:
            raise from_msal_result(result or {}, self.http.last_status, self.http.last_retry_after)
        from_idp = self.http.token_requests > before or result.get("token_source") == "identity_provider"
        now = time.time()
        access_token = result["access_token"]
        for kind in ("access_token", "refresh_token", "id_token"):  # redacted wherever echoed
            register_token(str(result.get(kind) or ""))
        claims = decode_claims(access_token) or {}
        exp = claims.get("exp")
        expires_at = float(exp) if isinstance(exp, int | float) else now + float(result.get("expires_in", 3600))
        if self.cred.flow == "delegated" and self._cache is not None and self._cache.has_state_changed:
            save_cache(Path(str(self.cred.token_cache)), self._cache)
            self._cache.has_state_changed = False
            self._material_hash = (self._material_hash or "").split("|")[0] + self._cache_stamp()
        return TokenInfo(
            access_token=access_token,
            expires_at=expires_at,
            obtained_at=now,
            claims=claims,
            identity=token_identity(claims),
            permissions=frozenset(token_permissions(claims)),
            from_idp=from_idp,
        )

    def _acquire_delegated(self, app: msal.ClientApplication, force: bool) -> dict[str, Any] | None:
        account_name = str(self.cred.account)
        accounts = app.get_accounts(username=account_name)
        if not accounts:
            others = [a.get("username", "?") for a in app.get_accounts()]
            if others:
                raise TokenError(
                    Reason.WRONG_IDENTITY,
                    f"token cache holds {len(others)} other account(s) but none for the configured account",
                )
            raise TokenError(Reason.NO_TOKEN_CACHE, "no refresh token in the cache: run `login`")
        result = app.acquire_token_silent_with_error(self.scopes, account=accounts[0], force_refresh=force)
        if result is None:
            raise TokenError(Reason.NO_TOKEN_CACHE, "no usable refresh token in the cache: run `login`")
        return result

    def _read_material(self) -> tuple[Any, str]:
        """Client credential (secret or certificate dict) and a hash to detect rotation."""
        return read_client_material(self.cred)

    def _cache_stamp(self) -> str:
        try:
            st = Path(str(self.cred.token_cache)).stat()
        except OSError:
            return "|missing"
        return f"|{st.st_mtime_ns}:{st.st_size}:{st.st_ino}"

    def _application(self, reload_material: bool) -> msal.ClientApplication:
        if self._app is not None and not reload_material:
            return self._app
        secret, digest = self._read_material()
        if self.cred.flow == "delegated":
            # pick up a cache rewritten by `login` (or restored) without a restart
            digest += self._cache_stamp()
            if self._app is not None and digest == self._material_hash:
                return self._app
            try:
                self._cache = load_cache(Path(str(self.cred.token_cache)))
            except CacheMissing:
                raise TokenError(Reason.NO_TOKEN_CACHE,
                                 "token cache file does not exist: run `login --credential "
                                 f"{self.name}`") from None
            except CacheCorrupt as exc:
                raise TokenError(Reason.TOKEN_CACHE_CORRUPT, str(exc)) from None
        elif self._app is not None and digest == self._material_hash:
            return self._app
        try:
            app = build_msal_app(
                self.cred.client_id, self.authority, self.http, secret,
                self._cache if self.cred.flow == "delegated" else msal.TokenCache(),
                custom_authority=self.custom_authority, http_cache=self._http_cache,
            )
        except TokenError:
            raise
        except ValueError as exc:
            text = str(exc)
            if "private key" in text.lower() or "certificate" in text.lower() or "pem" in text.lower():
                raise TokenError(Reason.CREDENTIAL_UNREADABLE, "cannot load the certificate/private key") from None
            raise from_exception(exc) from None
        self._app = app
        self._material_hash = digest
        return app
