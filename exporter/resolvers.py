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
