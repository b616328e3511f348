"""`--web.listen-address` parsing, refusing what Go exporters refuse, with the same words.

Why Go's rules: operators copy flags between Prometheus exporters; `9731` (a bare port) is
an error there (`address 9731: missing port in address`), `:9731` means every interface.
Mistakes are reported in one line before anything starts, never as a traceback.
"""

from __future__ import annotations


def parse_listen_address(addr: str) -> tuple[str, int]:
    """'host:port', ':port' or '[v6]:port' -> (host, port); host '' means all interfaces.
    ValueError with a one-line message otherwise."""
    if addr.startswith("["):
        end = addr.find("]")
        if end < 0:
            raise ValueError(f"address {addr}: missing ']' in address")
        host, rest = addr[1:end], addr[end + 1:]
        if not rest.startswith(":"):
            raise ValueError(f"address {addr}: missing port in address")
        port = rest[1:]
    else:
        if ":" not in addr:
            hint = f" (did you mean :{addr}?)" if addr.isdigit() else " (expected host:port or :port)"
            raise ValueError(f"address {addr}: missing port in address{hint}")
        host, _, port = addr.rpartition(":")
        if ":" in host:
            raise ValueError(f"address {addr}: too many colons in address (IPv6: [::1]:9731)")
    if not port.isdigit() or int(port) > 65535:
        raise ValueError(f"address {addr}: invalid port {port!r} (0-65535)")
    if any(c.isspace() for c in host):
        raise ValueError(f"address {addr}: invalid host {host!r}")
    return host, int(port)
