"""The `dns.resolvers` setting: one parser for what a resolver spec is.

Why its own module: the config validates resolver specs and the DNS code uses them; keeping
the parser here (not in `probes/dns.py`) lets `config.py` validate without importing a probe.
"""

from __future__ import annotations

import ipaddress


def parse_resolver(spec: str) -> tuple[str, int]:
    """'10.0.0.2', '127.0.0.1:5353', '[::1]:53' or '::1' -> (address, port). ValueError if invalid.

    Only IP addresses: a resolver given by name would need a resolver to find it."""
    s = spec.strip()
    host, port = s, 53
    if s.startswith("["):
        end = s.find("]")
        if end < 0:
            raise ValueError(f"invalid resolver {spec!r}: missing ']'")
        host, rest = s[1:end], s[end + 1:]
        if rest:
            if not rest.startswith(":"):
                raise ValueError(f"invalid resolver {spec!r}")
            port = _port(rest[1:], spec)
    elif s.count(":") == 1:
        host, p = s.split(":")
        port = _port(p, spec)
    try:
        ipaddress.ip_address(host)
    except ValueError:
        raise ValueError(f"invalid resolver {spec!r}: expected an IP address[:port]") from None
    return host, port


def _port(text: str, spec: str) -> int:
    if not text.isdigit() or not 1 <= int(text) <= 65535:
        raise ValueError(f"invalid resolver {spec!r}: bad port {text!r}")
    return int(text)


def resolve_sync(host: str, resolvers: tuple[str, ...], timeout: float) -> list[tuple[int, str]]:
    """`host` -> [(family, ip)] asking exactly the configured resolvers (IPv4 first), for
    blocking clients (the HTTP session MSAL uses runs in a thread). Raises socket.gaierror
    like getaddrinfo does, so the existing network-error classification applies unchanged."""
    import socket

    import dns.exception
    import dns.nameserver
    import dns.resolver

    try:
        ip = ipaddress.ip_address(host.strip("[]"))
        return [(socket.AF_INET6 if ip.version == 6 else socket.AF_INET, str(ip))]
    except ValueError:
        pass
    r = dns.resolver.Resolver(configure=False)
    r.nameservers = [dns.nameserver.Do53Nameserver(*parse_resolver(s)) for s in resolvers]
    r.cache = None
    name = host if host.endswith(".") else host + "."
    out: list[tuple[int, str]] = []
    failure: Exception | None = None
    for rtype, family in (("A", socket.AF_INET), ("AAAA", socket.AF_INET6)):
        try:
            answer = r.resolve(name, rtype, lifetime=timeout, raise_on_no_answer=False, search=False)
        except dns.resolver.NXDOMAIN:
            raise socket.gaierror(socket.EAI_NONAME, f"{host}: NXDOMAIN from {', '.join(resolvers)}") from None
        except (dns.exception.Timeout, dns.resolver.NoNameservers) as exc:
            failure = exc
            continue
        out += [(family, rdata.address) for rdata in answer.rrset or ()]
    if out:
        return out
    if failure is not None:
        raise socket.gaierror(socket.EAI_AGAIN, f"{host}: {type(failure).__name__} from {', '.join(resolvers)}")
    raise socket.gaierror(socket.EAI_NODATA if hasattr(socket, "EAI_NODATA") else socket.EAI_NONAME,
                          f"{host} has no A or AAAA record")
