"""Validation of host names and URLs in the config: one definition of a usable host.

Why: an empty host used to fall back silently to Microsoft's (`own.host or default`), and a
host with a typo (spaces, `https://` pasted into a host field, a port in the name) only
showed up as a DNS failure hours later. Checked at load, so also on reload.
"""

from __future__ import annotations

import ipaddress
import re
from urllib.parse import urlsplit

_LABEL = re.compile(r"^(?!-)[A-Za-z0-9_-]{1,63}(?<!-)$")
PROXY_SCHEMES = ("http", "https")


def check_host(value: str) -> str:
    """A DNS name or IP literal ('[::1]' or '::1'); ValueError otherwise."""
    host = value.strip()
    if not host:
        raise ValueError("host is empty (leave the field out to use the cloud's default)")
    bare = host[1:-1] if host.startswith("[") and host.endswith("]") else host
    try:
        ipaddress.ip_address(bare)
        return bare
    except ValueError:
        pass
    if "://" in host or "/" in host:
        raise ValueError(f"{value!r} is a URL, expected a host name")
    if ":" in host:
        raise ValueError(f"{value!r}: give the port in the port field, not in the host")
    name = host.rstrip(".")
    if len(name) > 253 or not all(_LABEL.match(label) for label in name.split(".")):
        raise ValueError(f"{value!r} is not a valid host name")
    return host


def check_url_host(value: str, schemes: tuple[str, ...] = ("https",)) -> str:
    """An absolute URL with one of `schemes`, a valid host and port; returned without a trailing '/'."""
    try:
        u = urlsplit(value.strip())
        port = u.port  # ValueError when out of range or not a number
    except ValueError as exc:
        raise ValueError(f"invalid URL {value!r}: {exc}") from None
    if u.scheme not in schemes:
        raise ValueError(f"must be an {' or '.join(s + '://' for s in schemes)} URL")
    if not u.hostname:
        raise ValueError(f"URL {value!r} has no host")
    check_host(u.hostname)
    if port == 0:
        raise ValueError(f"URL {value!r}: port 0")
    return value.strip().rstrip("/")


def check_proxy_url(value: str) -> str:
    """http://[user:pass@]host:port (HTTPS is tunnelled through CONNECT)."""
    out = check_url_host(value, PROXY_SCHEMES)
    if urlsplit(out).path not in ("", "/"):
        raise ValueError(f"proxy URL {value!r} must not have a path")
    return out
