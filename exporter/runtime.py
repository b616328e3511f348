"""Runtime: turns a Config into providers and probe jobs, runs them, and reloads safely.

Why here and not in the web layer: `serve`, `--demo`, `check` and the tests all need the same
wiring (config -> token providers -> jobs -> store), and reload must be atomic: a new config
is validated completely before anything changes; on error the old one keeps running and
`m365_config_last_reload_successful` drops to 0.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from urllib.parse import urlsplit

from .auth.errors import TokenError
from .auth.provider import TokenProvider, required_permissions
from .collector import CredentialInfo, MailboxInfo, MetricsRenderer
from .config import Config, ConfigError, Endpoint, Mailbox, TLSSettings, load_config
from .facts import IDENTITY_MATCH, SCOPE_PREFIX, SECRET_PREFIX, TOKEN_EXPIRY, TOKEN_REFRESHED, TOKEN_REQUESTS
from .fixes import fix_for_key
from .probes.result import ProbeResult
from .reasons import Reason
from .rootcause import attribute, credential_cause, endpoint_cause
from .scheduler import LATE_AFTER, Job, Scheduler
from .sharding import Shard, owner
from .store import Key, ResultStore
from .transitions import TransitionLog

log = logging.getLogger(__name__)

RETIRE_WAIT = 5.0  # reload waits at most this long for cancelled probe tasks to end
MailProbe = Callable[[Endpoint, str, str, float], Awaitable[ProbeResult]]


def mail_probe(check: str) -> MailProbe:
    """The protocol client for a mail check (imported lazily: each is its own module)."""
    if check == "imap":
        from .probes.imap import probe_imap

        return probe_imap
    if check == "pop3":
        from .probes.pop3 import probe_pop3

        return probe_pop3
    from .probes.smtp import probe_smtp

    return probe_smtp


async def endpoint_probe(endpoint: Endpoint, timeout: float, resolvers: list[str]) -> ProbeResult:
    from .probes.endpoint import probe_endpoint

    return await probe_endpoint(endpoint, timeout, resolvers or None)


def provider_signature(config: Config, name: str, checks: set[str]) -> tuple[object, ...]:
    """Everything a provider depends on: unchanged signature = keep the provider (and its token)."""
    cred = config.credentials[name]
    d = config.defaults
    # not token_interval: a reload that only changes it keeps the provider and its cached token
    return (cred, config.authority_host(cred), d.https, d.dns, d.timeout, d.cloud, frozenset(checks))


@dataclass(slots=True)
class MailTarget:
    mailbox: Mailbox
    check: str

    @property
    def key(self) -> Key:
        return ("mailbox", self.mailbox.label, self.check)


class Runtime:
    def __init__(self, config: Config, config_path: str | None = None) -> None:
        self.config = config
        self.config_path = config_path
        self.demo = False  # serving the bundled simulator (--demo): the status board says so
        self.store = ResultStore()
        self.scheduler = Scheduler(config.defaults.concurrency, on_wait=self._on_wait, on_start=self._on_start)
        self.providers: dict[str, TokenProvider] = {}
        self._signatures: dict[str, tuple[object, ...]] = {}
        self.renderer = MetricsRenderer(self.store, self.credential_infos, self.mailbox_infos)
        from .audit import AppRegistrationAudit  # Graph app-registration audit (credentials with graph_audit)

        self.extra_jobs: list[Callable[[Runtime], list[Job]]] = [AppRegistrationAudit()]
        self._reload_lock = asyncio.Lock()
        self.shard = Shard()  # set by `serve` from --shard.*: apply() keeps only this shard's part of a config
        self.unsharded = config
        self.transitions = TransitionLog()  # one log line per state change (exporter/transitions.py)
        self.latest: dict[Key, ProbeResult] = {}  # credentials' and endpoints' last results (root cause)
        self._by_credential: tuple[Config | None, dict[str, list[Mailbox]]] = (None, {})

    # ------------------------------------------------------------------ config

    def credential_infos(self) -> list[CredentialInfo]:
        return [
            CredentialInfo(name, c.tenant_id, c.client_id, c.flow, c.auth_kind)
            for name, c in self.config.credentials.items()
        ]

    def mailbox_infos(self) -> list[MailboxInfo]:
        return [MailboxInfo(m.label, m.address, m.credential) for m in self.config.mailboxes]

    def checks_by_credential(self, config: Config) -> dict[str, set[str]]:
        out: dict[str, set[str]] = {name: set() for name in config.credentials}
        for m in config.mailboxes:
            out[m.credential].update(m.checks)
        return out

    def apply(self, config: Config) -> None:
        """Swap in a validated config: keep unchanged providers/jobs, start new, stop removed."""
        self.unsharded = config  # to tell /probe which shard owns a mailbox that is not this one's
        config = self.shard.select(config)  # sharded: only this shard's mailboxes and the credentials they use
        checks = self.checks_by_credential(config)
        new_providers: dict[str, TokenProvider] = {}
        new_sigs: dict[str, tuple[object, ...]] = {}
        for name in config.credentials:
            sig = provider_signature(config, name, checks[name])
            if self._signatures.get(name) == sig:
                new_providers[name] = self.providers[name]
                new_providers[name].failure_backoff = min(60.0, config.defaults.token_interval)
            else:
                new_providers[name] = TokenProvider(name, config.credentials[name], config, checks[name])
            new_sigs[name] = sig
        for name, old in self.providers.items():
            if new_providers.get(name) is not old:
                old.close()
        self.config, self.providers, self._signatures = config, new_providers, new_sigs
        if self.scheduler.concurrency != config.defaults.concurrency:
            log.info("concurrency change takes effect after restart")
        jobs = self.build_jobs(config)
        for extra in self.extra_jobs:
            jobs += extra(self)
        keep: set[Key] = set()
        for job in jobs:
            self.store.ensure(job.key, job.interval, job.timeout)
            keep.add(job.key)
        for m in config.mailboxes:  # the mailbox's token check mirrors its credential's probe
            key = ("mailbox", m.label, "token")
            self.store.ensure(key, config.defaults.token_interval, config.defaults.timeout)
            keep.add(key)
        for name, cred in config.credentials.items():
            if cred.secret_expiry is not None:
                key = ("audit", name, "declared")
                self.store.ensure(key, 86400.0, 1.0)
                keep.add(key)
                declared = {SECRET_PREFIX + "declared": cred.secret_expiry.timestamp()}
                self.store.record(key, ProbeResult.ok(0.0, **declared))
            if cred.certificate_file is not None:  # the certificate's own notAfter (exporter/certexpiry.py)
                from .certexpiry import read_certificate_expiry

                own = read_certificate_expiry(cred.certificate_file)
                if own is not None:
                    key = ("audit", name, "certificate")
                    self.store.ensure(key, 86400.0, 1.0)
                    keep.add(key)
                    self.store.record(key, ProbeResult.ok(0.0, **{SECRET_PREFIX + own.thumbprint: own.not_after}))
        self.store.prune(keep)
        self.transitions.retain(keep)
        self.latest = {k: v for k, v in self.latest.items() if k in keep}
        self.scheduler.set_jobs(jobs)
        self.store.set_fact("m365_mailboxes", float(len(config.mailboxes)))
        self.store.set_fact("m365_credentials", float(len(config.credentials)))
        self.renderer.add_static("m365_exporter_shard_info", "This replica's shard of the configured mailboxes",
                                 {"shard": str(self.shard.index), "shards": str(self.shard.total)})

    def build_jobs(self, config: Config) -> list[Job]:
        d = config.defaults
        jobs: list[Job] = []
        for name in config.credentials:
            jobs.append(Job(("credential", name), d.token_interval, d.timeout,
                            partial(Runtime.run_token_probe, self, name), signature=self._signatures[name]))
        for m in config.mailboxes:
            for check in m.checks:
                ep = config.endpoint_for(m, check)
                jobs.append(Job(("mailbox", m.label, check), config.mailbox_interval(m), config.mailbox_timeout(m),
                                partial(Runtime._probe_mailbox, self, m, check, ep),
                                signature=(m, ep, self._signatures[m.credential])))
        if d.network_checks:
            for key, ep in self.unique_endpoints(config).items():
                jobs.append(Job(key, d.interval, d.timeout, partial(Runtime.run_endpoint_probe, self, ep),
                                signature=(ep, tuple(d.dns.resolvers))))
        return jobs

    def _probe_mailbox(self, m: Mailbox, check: str, ep: Endpoint) -> Awaitable[ProbeResult]:
        """A mail job's run: one partial per job (~150 bytes) instead of a closure, its cell, a
        bound method and a MailTarget (~400 bytes; x 30,000 jobs at 10,000 mailboxes)."""
        return self.run_mail_probe(MailTarget(m, check), ep)

    def unique_endpoints(self, config: Config) -> dict[Key, Endpoint]:
        """Every host:port the exporter depends on, once: mail endpoints and login hosts."""
        out: dict[Key, Endpoint] = {}
        for m in config.mailboxes:
            for check in m.checks:
                ep = config.endpoint_for(m, check)
                out.setdefault(("endpoint", ep.host, str(ep.port)), ep)
        https_tls = TLSSettings(ca_file=config.defaults.https.ca_file)
        for cred in config.credentials.values():
            if config.defaults.https.proxy:
                break  # login and Graph are reached through the proxy; a direct probe would mislead
            urls = [config.authority_host(cred)] + ([config.graph_url(cred)] if cred.graph_audit else [])
            for url in map(urlsplit, urls):
                host, port = url.hostname or "", url.port or 443
                out.setdefault(("endpoint", host, str(port)), Endpoint(host, port, https_tls))
        return out

    # ------------------------------------------------------------------ probes

    async def run_token_probe(self, name: str) -> ProbeResult:
        provider = self.providers.get(name)
        if provider is None:
            return ProbeResult.fail(Reason.UNKNOWN, 0.0, "credential removed")
        cred = provider.cred
        t0 = time.monotonic()
        facts: dict[str, float | str] = {}
        try:
            async with asyncio.timeout(self.config.defaults.timeout):
                tok = await provider.refresh()  # a slow IdP: this probe ends, the acquisition carries on
        except (TokenError, TimeoutError) as exc:
            err = exc if isinstance(exc, TokenError) else TokenError(
                Reason.TIMEOUT, "no answer from the identity platform within the timeout")
            current = provider.current
            if current is not None:
                facts[TOKEN_EXPIRY] = current.expires_at
            if provider.last_refresh_at:
                facts[TOKEN_REFRESHED] = provider.last_refresh_at
            facts[TOKEN_REQUESTS] = provider.token_requests
            result = ProbeResult.fail(err.reason, time.monotonic() - t0, err.detail, **facts)
            self._record_token(name, result, set())
            return result
        duration = time.monotonic() - t0
        facts[TOKEN_EXPIRY] = tok.expires_at
        facts[TOKEN_REQUESTS] = provider.token_requests
        if provider.last_refresh_at:
            facts[TOKEN_REFRESHED] = provider.last_refresh_at
        needed = required_permissions(cred, provider.checks)
        missing = set(tok.missing(needed))
        for perm in sorted(needed):
            facts[SCOPE_PREFIX + perm] = 1.0 if perm in missing else 0.0
        match: bool | None
        if not tok.claims:
            match = None  # opaque token: unknown, not a failure
        elif cred.flow == "delegated":
            match = (tok.identity or "").lower() == str(cred.account).lower()
        else:
            match = str(tok.claims.get("appid", cred.client_id)).lower() == cred.client_id.lower()
        if match is not None:
            facts[IDENTITY_MATCH] = 1.0 if match else 0.0
        if match is False:
            who = tok.identity or str(tok.claims.get("appid", "?"))
            result = ProbeResult.fail(Reason.WRONG_IDENTITY, duration,
                                      f"token issued for {who}, expected {cred.account or cred.client_id}", **facts)
        elif missing:
            result = ProbeResult.fail(Reason.MISSING_SCOPE, duration, "token lacks " + ", ".join(sorted(missing)),
                                      **facts)
        else:
            result = ProbeResult.ok(duration, **facts)
        self._record_token(name, result, missing)
        return result

    def _fixer(self, key: Key) -> Callable[[Reason], str]:
        """The filled fix for a key's reason, computed only when a state change is logged."""
        config = self.config
        return lambda reason: fix_for_key(config, reason, key)

    def _mailboxes_of(self, name: str) -> list[Mailbox]:
        """The credential's mailboxes in the running config, indexed once per config: a token
        result used to scan every mailbox (10,000 per result, on the event loop)."""
        config, index = self._by_credential
        if config is not self.config:
            index = {}
            for m in self.config.mailboxes:
                index.setdefault(m.credential, []).append(m)
            self._by_credential = (self.config, index)
        return index.get(name, [])

    def _record_token(self, name: str, result: ProbeResult, missing: set[str]) -> None:
        self.store.record(("credential", name), result)
        self.latest[("credential", name)] = result
        self.transitions.observe(("credential", name), result, fixer=self._fixer(("credential", name)))
        cred = self.config.credentials.get(name)
        if cred is None:
            return
        for m in self._mailboxes_of(name):
            mine = required_permissions(cred, set(m.checks)) & missing
            if result.success or (result.reason is Reason.MISSING_SCOPE and not mine):
                r = ProbeResult.ok(result.duration)
            elif result.reason is Reason.MISSING_SCOPE:
                r = ProbeResult.fail(Reason.MISSING_SCOPE, result.duration, "token lacks " + ", ".join(sorted(mine)))
            else:
                r = ProbeResult.fail(result.reason or Reason.UNKNOWN, result.duration, result.detail)
            self.store.record(("mailbox", m.label, "token"), r)

    async def run_mail_probe(self, target: MailTarget, ep: Endpoint | None = None) -> ProbeResult:
        """One mail check: token, protocol probe, root cause, record. `ep`: the job's endpoint
        (it is part of the job's signature, so it is current), else looked up."""
        m, check = target.mailbox, target.check
        timeout = self.config.mailbox_timeout(m)
        t0 = time.monotonic()
        provider = self.providers.get(m.credential)
        try:
            if provider is None:
                raise TokenError(Reason.UNKNOWN, "credential removed")
            tok = provider.cached_token()
            if tok is None:
                async with asyncio.timeout(timeout):
                    tok = await provider.get_token()
        except TokenError as err:
            result = ProbeResult.fail(err.reason, time.monotonic() - t0,
                                      f"credential {m.credential}: no token: {err.detail}")
        except TimeoutError:
            result = ProbeResult.fail(Reason.TIMEOUT, time.monotonic() - t0,
                                      f"credential {m.credential}: token acquisition timed out")
        else:
            ep = ep or self.config.endpoint_for(m, check)
            remaining = max(1.0, timeout - (time.monotonic() - t0))
            result = await mail_probe(check)(ep, m.address, tok.access_token, remaining)
            # root cause first (exporter/rootcause.py): the credential's or the endpoint's failure
            cred = self.config.credentials.get(m.credential)
            needed = required_permissions(cred, {check}) if cred is not None else set()
            result = attribute(
                result, check,
                credential_cause(m.credential, self.latest.get(("credential", m.credential)), needed),
                endpoint_cause(ep.host, ep.port, self.latest.get(("endpoint", ep.host, str(ep.port)))),
                cached_until=tok.expires_at,
            )
        self.store.record(target.key, result)
        self.transitions.observe(target.key, result, credential=m.credential, fixer=self._fixer(target.key))
        return result

    async def run_endpoint_probe(self, ep: Endpoint) -> ProbeResult:
        d = self.config.defaults
        result = await endpoint_probe(ep, d.timeout, list(d.dns.resolvers))
        self.store.record(("endpoint", ep.host, str(ep.port)), result)
        self.latest[("endpoint", ep.host, str(ep.port))] = result
        self.transitions.observe(("endpoint", ep.host, str(ep.port)), result,
                                fixer=self._fixer(("endpoint", ep.host, str(ep.port))))
        return result

    async def probe_now(self, mailbox: str, check: str, slot: asyncio.Semaphore | None = None) -> ProbeResult:
        """Run one check immediately (GET /probe, `check` CLI): records like a scheduled probe.

        `slot` is the concurrency limit to run under: GET /probe passes its own pool
        (exporter/ondemand.py) so on-demand probes never take a scheduled probe's slot."""
        m = self.config.find_mailbox(mailbox)
        if m is None:
            other = self.unsharded.find_mailbox(mailbox) if self.shard.sharded else None
            if other is not None:
                raise KeyError(f"mailbox {mailbox!r} is probed by shard {owner(other.label, self.shard.total)}, "
                               f"this replica is shard {self.shard.index} of {self.shard.total}")
            raise KeyError(f"unknown mailbox {mailbox!r}")
        if check not in ("token", "imap", "pop3", "smtp"):
            raise KeyError(f"unknown check {check!r} (token, imap, pop3, smtp)")
        async with slot or self.scheduler.slot:
            if check == "token":
                return await self.run_token_probe(m.credential)
            return await self.run_mail_probe(MailTarget(m, check))

    # ------------------------------------------------------------------ lifecycle

    def _on_wait(self, seconds: float) -> None:
        self.store.facts["m365_scheduler_queue_wait_seconds"] = seconds

    def _on_start(self, late: float) -> None:
        facts = self.store.facts
        facts["m365_scheduler_start_lateness_seconds"] = late
        if late > LATE_AFTER:
            facts["m365_scheduler_late_starts"] = facts.get("m365_scheduler_late_starts", 0.0) + 1

    def start(self) -> None:
        self.apply(self.config)
        now = time.time()
        self.store.set_fact("m365_config_last_reload_successful", 1.0)
        self.store.set_fact("m365_config_last_reload_success_timestamp_seconds", now)

    async def reload(self) -> tuple[bool, str]:
        """Re-read the config file; on any error keep the running config."""
        if not self.config_path:
            return False, "no config file (demo mode)"
        async with self._reload_lock:
            try:
                config = await asyncio.to_thread(load_config, Path(self.config_path))
            except ConfigError as err:
                self.store.set_fact("m365_config_last_reload_successful", 0.0)
                log.error("config reload failed, keeping the running config: %s", err)
                return False, str(err)
            self.apply(config)
            # the replaced jobs' tasks were cancelled: wait (bounded) until they ended, so a
            # reload storm cannot pile up copies; their replacements wait for them regardless
            if not await self.scheduler.settle(RETIRE_WAIT):
                log.warning("config reloaded but %d cancelled probe task(s) are still ending",
                            self.scheduler.retiring)
            self.store.set_fact("m365_config_last_reload_successful", 1.0)
            self.store.set_fact("m365_config_last_reload_success_timestamp_seconds", time.time())
            log.info("config reloaded: %d mailboxes, %d credentials", len(config.mailboxes), len(config.credentials))
            return True, "reloaded"

    def ready(self) -> bool:
        """First probe round complete (large configs: the schedule is kept, Scheduler.caught_up)
        and /metrics was rendered in full once (MetricsRenderer.warm)."""
        return self.not_ready() is None

    def not_ready(self) -> str | None:
        """Why /-/ready answers 503, in words for the operator; None when ready."""
        if not (self.store.first_round_complete() or self.scheduler.caught_up()):
            backlog = self.scheduler.first_run_backlog()
            if backlog > 0:
                return (f"schedule not kept: first runs are {backlog:.0f} s behind their slots (more checks than "
                        "this process can probe in time: raise defaults.interval or shard, docs/scaling.md)")
            return "first probe round still running"
        if not self.renderer.warm:
            return "/metrics not rendered yet"
        return None

    async def stop(self) -> None:
        await self.scheduler.stop()
        for p in self.providers.values():
            p.close()
        for extra in self.extra_jobs:
            close = getattr(extra, "close", None)
            if callable(close):
                close()
