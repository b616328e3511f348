"""DNS stage of the endpoint probe: host name -> addresses, with a failure reason.

Why two paths: with configured `dns.resolvers` we query them directly with dnspython's async
resolver, which tells NXDOMAIN, SERVFAIL and timeout apart exactly and never blocks a thread.
Without them we use the system resolver (`loop.getaddrinfo`), because that is what the mail
application on this host uses: /etc/hosts, nsswitch and resolv.conf semantics included. Its
errors are coarser (see `neterrors.DNS_REASONS`). No cache on either path that we control: the probe
measures a real lookup each time.

A and AAAA are asked concurrently; the lookup succeeds if either family returns an address.
Address order: the system resolver's own (RFC 6724, gai.conf); with configured resolvers, IPv4
first then IPv6 (the TCP stage fails over to the next address, so a broken family still shows
up in the transcript but does not fail an endpoint the mail client can reach).
"""

from __future__ import annotations

import asyncio
import functools
import ipaddress
import socket
import time
from dataclasses import dataclass, field

import dns.asyncresolver
import dns.exception
import dns.nameserver
import dns.rdatatype
import dns.resolver

from ..reasons import Reason
from ..resolvers import parse_resolver
from .neterrors import DNS_REASONS

# (family, sockaddr) as accepted by socket.connect: (ip, port) or (ip, port, flowinfo, scope_id)
Address = tuple[int, tuple]

# A fast EAI_AGAIN is a resolver answering SERVFAIL/REFUSED; a slow one is a resolver timeout
# (glibc folds both into EAI_AGAIN; its default per-try timeout is 5 s).
EAI_AGAIN_TIMEOUT_AFTER = 1.0



@dataclass
class DNSOutcome:
    """Result of the DNS stage. `applicable` is False for IP literals (no DNS facts at all)."""

    applicable: bool
    addresses: list[Address] = field(default_factory=list)
    duration: float = 0.0
    reason: Reason | None = None
    detail: str = ""

    @property
    def success(self) -> bool:
        return self.reason is None and bool(self.addresses)


def ip_literal(host: str) -> str | None:
    """The address if `host` is an IP literal ('::1', '[::1]', '127.0.0.1'), else None."""
    h = host[1:-1] if host.startswith("[") and host.endswith("]") else host
    try:
        ipaddress.ip_address(h)  # accepts a zone id: fe80::1%eth0
    except ValueError:
        return None
    return h


def literal_address(ip: str, port: int) -> Address:
    if ":" in ip:
        # getaddrinfo keeps a zone id ("fe80::1%eth0") and fills in scope_id for us
        info = socket.getaddrinfo(ip, port, socket.AF_INET6, socket.SOCK_STREAM, 0, socket.AI_NUMERICHOST)
        return socket.AF_INET6, info[0][4]
    return socket.AF_INET, (ip, port)


@functools.lru_cache(maxsize=16)
def _resolver(resolvers: tuple[str, ...]) -> dns.asyncresolver.Resolver:
    """One resolver per configured list: no cache, no search list, no /etc/resolv.conf."""
    r = dns.asyncresolver.Resolver(configure=False)
    r.nameservers = [dns.nameserver.Do53Nameserver(*parse_resolver(s)) for s in resolvers]
    r.cache = None
    return r


async def resolve(host: str, port: int, resolvers: list[str] | None, deadline: float) -> DNSOutcome:
    """Resolve `host` by `deadline` (loop time). Never raises for DNS failures."""
    ip = ip_literal(host)
    if ip is not None:
        return DNSOutcome(applicable=False, addresses=[literal_address(ip, port)])
    start = time.perf_counter()
    try:
        async with asyncio.timeout_at(deadline):
            if resolvers:
                out = await _resolve_dnspython(host, port, tuple(resolvers), deadline)
            else:
                out = await _resolve_system(host, port, start)
    except TimeoutError:
        out = DNSOutcome(True, reason=Reason.DNS_TIMEOUT, detail=f"no DNS answer for {host} in time")
    out.duration = time.perf_counter() - start
    return out


async def _resolve_dnspython(host: str, port: int, resolvers: tuple[str, ...], deadline: float) -> DNSOutcome:
    try:
        resolver = _resolver(resolvers)
    except ValueError as exc:
        return DNSOutcome(True, reason=Reason.UNKNOWN, detail=str(exc))
    lifetime = max(0.001, deadline - asyncio.get_running_loop().time())
    name = host if host.endswith(".") else host + "."
    results = await asyncio.gather(
        resolver.resolve(name, "A", lifetime=lifetime, raise_on_no_answer=False, search=False),
        resolver.resolve(name, "AAAA", lifetime=lifetime, raise_on_no_answer=False, search=False),
        return_exceptions=True,
    )
    addresses: list[Address] = []
    errors: list[BaseException] = []
    for res in results:
        if isinstance(res, BaseException):
            if not isinstance(res, Exception):  # CancelledError and friends: not ours to swallow
                raise res
            errors.append(res)
            continue
        for rdata in res.rrset or ():
            if rdata.rdtype == dns.rdatatype.A:
                addresses.append((socket.AF_INET, (rdata.address, port)))
            elif rdata.rdtype == dns.rdatatype.AAAA:
                addresses.append((socket.AF_INET6, (rdata.address, port, 0, 0)))
    if addresses:  # one family failing while the other answers is not a DNS failure
        return DNSOutcome(True, addresses=_unique(addresses))
    if not errors:
        return DNSOutcome(True, reason=Reason.DNS_NXDOMAIN, detail=f"{host} has no A or AAAA record")
    # most authoritative first: an NXDOMAIN is a fact, a SERVFAIL an answer, a timeout a silence
    for kind, reason in (
        (dns.resolver.NXDOMAIN, Reason.DNS_NXDOMAIN),
        (dns.resolver.NoNameservers, Reason.DNS_SERVFAIL),
        (dns.exception.Timeout, Reason.DNS_TIMEOUT),
    ):
        for err in errors:
            if isinstance(err, kind):
                return DNSOutcome(True, reason=reason, detail=f"{host}: {err}")
    first = errors[0]
    return DNSOutcome(True, reason=Reason.DNS_SERVFAIL, detail=f"{host}: {type(first).__name__}: {first}")


async def _resolve_system(host: str, port: int, start: float) -> DNSOutcome:
    loop = asyncio.get_running_loop()
    try:
        infos = await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM, proto=socket.IPPROTO_TCP)
    except socket.gaierror as exc:
        code = exc.errno
        if code == socket.EAI_AGAIN:
            slow = time.perf_counter() - start >= EAI_AGAIN_TIMEOUT_AFTER
            reason = Reason.DNS_TIMEOUT if slow else Reason.DNS_SERVFAIL
        else:
            reason = DNS_REASONS.get(code, Reason.DNS_SERVFAIL) if code is not None else Reason.DNS_SERVFAIL
        return DNSOutcome(True, reason=reason, detail=f"{host}: {exc.strerror or exc}")
    except (UnicodeError, ValueError) as exc:  # e.g. an invalid IDNA label
        return DNSOutcome(True, reason=Reason.DNS_NXDOMAIN, detail=f"{host}: {exc}")
    addresses = [(fam, sa) for fam, _t, _p, _c, sa in infos if fam in (socket.AF_INET, socket.AF_INET6)]
    if not addresses:
        return DNSOutcome(True, reason=Reason.DNS_NXDOMAIN, detail=f"{host} has no address")
    return DNSOutcome(True, addresses=_unique(addresses))


def _unique(addresses: list[Address]) -> list[Address]:
    seen: set[str] = set()
    out: list[Address] = []
    for fam, sa in addresses:
        if sa[0] not in seen:
            seen.add(sa[0])
            out.append((fam, sa))
    return out
