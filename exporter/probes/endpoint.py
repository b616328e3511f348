"""The per-endpoint network probe: DNS -> TCP -> (SMTP STARTTLS) -> verified TLS, one result.

Why one probe for three stages: they are one path, and the first broken stage is the reason an
operator needs (a DNS failure makes TCP and TLS meaningless). The scheduler runs it once per
unique host:port, however many mailboxes share the endpoint; the collector maps `facts` to the
`m365_dns_*`, `m365_tcp_*` and `m365_tls_*` families in docs/metrics.md.

Certificate facts are exported even when verification fails: an expiring or expired certificate
(often a TLS-intercepting proxy's) is the thing to alert on, so after a certificate error we do
a second, inspect-only handshake (verification off, nothing sent over it) just to read the chain.

Facts (floats unless noted; a stage's facts are absent when the stage was not reached):
  dns_success, dns_duration, dns_addresses         -- absent for IP literal hosts
  tcp_success, tcp_duration
  tls_success                                      -- also 0 when the STARTTLS preamble failed
  tls_duration, tls_cert_verified                  -- when a handshake was attempted
  tls_version (str, e.g. "TLSv1.3")                -- negotiated (inspect handshake if verification failed)
  tls_cert_expiry                                  -- earliest notAfter in the chain sent (unix time)
  tls_cert_not_after_leaf                          -- the leaf's notAfter (unix time)
"""

from __future__ import annotations

import asyncio
import ssl
import time

from ..config import Endpoint
from ..reasons import Reason
from . import certinfo
from .dns import resolve
from .result import ProbeResult, Transcript, new_transcript
from .tcptls import (
    Connection,
    StageFailure,
    classify_tls_error,
    close,
    connect_one,
    describe,
    smtp_starttls,
    ssl_object,
    tcp_connect,
    tls_handshake,
)
from .tlsctx import client_context, server_hostname

# Safety net beyond the per-stage deadlines: only fires if some wait escaped them.
_GRACE = 0.25


class _Probe:
    """State of one run, so a timeout anywhere can still report what was learnt so far."""

    def __init__(self, endpoint: Endpoint, timeout: float, resolvers: list[str] | None):
        self.endpoint = endpoint
        self.resolvers = resolvers
        self.loop = asyncio.get_running_loop()
        self.start = time.perf_counter()
        self.deadline = self.loop.time() + timeout
        self.facts: dict[str, float | str] = {}
        self.transcript = new_transcript()
        self.stage = "dns"
        self.open: list[Connection] = []

    def elapsed(self) -> float:
        return time.perf_counter() - self.start

    def fail(self, reason: Reason, detail: str) -> ProbeResult:
        self.transcript.note(f"failed: {reason.value}: {detail}")
        return ProbeResult.fail(reason, self.elapsed(), detail, self.transcript, **self.facts)

    def abort_all(self) -> None:
        for conn in self.open:
            conn.abort()

    async def run(self) -> ProbeResult:
        ep, t = self.endpoint, self.transcript
        # ---- DNS
        dns = await resolve(ep.host, ep.port, self.resolvers, self.deadline)
        if dns.applicable:
            self.facts.update(dns_success=float(dns.success), dns_duration=dns.duration,
                              dns_addresses=float(len(dns.addresses)))
            if not dns.success:
                return self.fail(dns.reason or Reason.UNKNOWN, dns.detail)
            ips = ", ".join(sa[0] for _f, sa in dns.addresses)
            t.note(f"DNS {ep.host} -> {ips} in {dns.duration * 1000:.1f} ms "
                   f"({'resolvers ' + ', '.join(self.resolvers) if self.resolvers else 'system resolver'})")
        # ---- TCP
        self.stage = "tcp"
        conn, tcp_duration, failure = await tcp_connect(dns.addresses, self.deadline, t)
        self.facts.update(tcp_success=float(conn is not None), tcp_duration=tcp_duration)
        if conn is None:
            assert failure is not None
            return self.fail(failure.reason, failure.detail)
        self.open.append(conn)
        # ---- (STARTTLS) + TLS
        self.stage = "tls"
        self.facts["tls_success"] = 0.0
        try:
            if ep.starttls:
                await smtp_starttls(conn, self.deadline, t)
        except StageFailure as f:
            return self.fail(f.reason, f.detail)
        except (OSError, EOFError) as exc:  # includes TimeoutError
            return self.fail(classify_tls_error(exc), f"SMTP preamble: {describe(exc)}")
        return await self._tls(conn)

    async def _tls(self, conn: Connection) -> ProbeResult:
        ep, t = self.endpoint, self.transcript
        verify = not ep.tls.insecure_skip_verify
        ctx = client_context(ep.tls)
        sni = server_hostname(ep.tls, ep.host)
        start = time.perf_counter()
        self.facts["tls_cert_verified"] = 0.0
        try:
            await tls_handshake(conn, ctx, sni, self.deadline)
        except (OSError, ssl.SSLError, EOFError) as exc:
            self.facts["tls_duration"] = time.perf_counter() - start
            reason = Reason.TIMEOUT if isinstance(exc, TimeoutError) else classify_tls_error(exc)
            detail = "no TLS handshake answer in time" if reason is Reason.TIMEOUT else describe(exc)
            t.note(f"TLS handshake (SNI/verify name {sni}) failed: {detail}")
            conn.abort()
            if isinstance(exc, ssl.SSLCertVerificationError):
                await self._inspect(conn)
            return self.fail(reason, detail)
        duration = time.perf_counter() - start
        obj = ssl_object(conn)
        version = obj.version() if obj is not None else None
        self._cert_facts(obj)
        self.facts.update(tls_success=1.0, tls_duration=duration, tls_cert_verified=float(verify))
        if version:
            self.facts["tls_version"] = version
        t.note(f"TLS {version} handshake in {duration * 1000:.1f} ms, certificate "
               + (f"verified for {sni}" if verify else "NOT verified (insecure_skip_verify)"))
        result = ProbeResult.ok(self.elapsed(), t, **self.facts)
        await close(conn, self.deadline, ep.starttls, t)
        return result

    def _cert_facts(self, obj: ssl.SSLObject | None) -> None:
        chain = certinfo.peer_chain_der(obj)
        earliest, leaf = certinfo.chain_expiry(chain)
        if earliest is not None:
            self.facts["tls_cert_expiry"] = earliest
        if leaf is not None:
            self.facts["tls_cert_not_after_leaf"] = leaf
        if chain:
            self.transcript.note(f"certificate chain sent: {len(chain)} certificate(s)")

    async def _inspect(self, failed: Connection) -> None:
        """Second handshake with verification off, only to read the chain's dates and version.
        Best effort within the remaining time; nothing is sent over it (SMTP: no QUIT even)."""
        ep, t = self.endpoint, self.transcript
        try:
            conn = await connect_one(failed.address, self.deadline)
        except (OSError, TimeoutError) as exc:
            t.note(f"inspect-only reconnect failed: {describe(exc)}")
            return
        self.open.append(conn)
        try:
            if ep.starttls:
                await smtp_starttls(conn, self.deadline, Transcript())
            await tls_handshake(conn, client_context(ep.tls, verify=False),
                                server_hostname(ep.tls, ep.host), self.deadline)
            obj = ssl_object(conn)
            self._cert_facts(obj)
            version = obj.version() if obj is not None else None
            if version:
                self.facts["tls_version"] = version
            t.note(f"inspect-only handshake (verification off): {version}")
        except (StageFailure, OSError, ssl.SSLError, EOFError) as exc:
            t.note(f"inspect-only handshake failed: {getattr(exc, 'detail', None) or describe(exc)}")
        finally:
            conn.abort()


# `timeout` is the scheduler's interface (one budget per probe), enforced inside with timeout_at.
async def probe_endpoint(
    endpoint: Endpoint, timeout: float, resolvers: list[str] | None = None
) -> ProbeResult:
    """DNS, TCP and verified TLS for one endpoint, bounded by `timeout` seconds. Never raises
    for a failed check (cancellation from the caller still propagates)."""
    probe = _Probe(endpoint, timeout, resolvers)
    try:
        async with asyncio.timeout_at(probe.deadline + _GRACE):
            return await probe.run()
    except TimeoutError:
        reason = Reason.DNS_TIMEOUT if probe.stage == "dns" else Reason.TIMEOUT
        probe.facts.setdefault(f"{probe.stage}_success", 0.0)
        return probe.fail(reason, f"{probe.stage} stage did not finish within {timeout:g} s")
    except Exception as exc:  # a bug must not kill the scheduler's job; report it as unknown
        return probe.fail(Reason.UNKNOWN, f"{type(exc).__name__}: {exc}")
    finally:
        probe.abort_all()
