"""A tiny authoritative-looking UDP DNS server for tests, on loopback only.

Why our own: tests must never resolve a real name, and the DNS probe must be exercised against
real wire-format answers (NXDOMAIN, SERVFAIL, silence) rather than mocks of dnspython.
Built on dnspython's message API; answers only the names in its zone table.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import cast

import dns.flags
import dns.message
import dns.rcode
import dns.rdataclass
import dns.rdatatype
import dns.rrset

# name -> behaviour: {"A": [...], "AAAA": [...]} answers; "nxdomain" / "servfail" / "drop"
DEFAULT_ZONE: dict[str, dict[str, list[str]] | str] = {
    "mail.test.": {"A": ["127.0.0.1"]},
    "v6.test.": {"AAAA": ["::1"]},
    "dual.test.": {"A": ["127.0.0.1"], "AAAA": ["::1"]},
    "noaddr.test.": {},
    "missing.test.": "nxdomain",
    "broken.test.": "servfail",
    "slow.test.": "drop",
}


@dataclass
class TestDNSServer(asyncio.DatagramProtocol):
    zone: dict[str, dict[str, list[str]] | str] = field(default_factory=lambda: dict(DEFAULT_ZONE))
    queries: list[tuple[str, str]] = field(default_factory=list)
    transport: asyncio.DatagramTransport | None = None
    port: int = 0

    __test__ = False  # not a pytest test class

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.DatagramTransport, transport)

    def datagram_received(self, data: bytes, addr: tuple) -> None:
        try:
            query = dns.message.from_wire(data)
        except Exception:  # malformed: ignore, like a real server would
            return
        if not query.question or self.transport is None:
            return
        q = query.question[0]
        name, rtype = q.name.to_text().lower(), dns.rdatatype.to_text(q.rdtype)
        self.queries.append((name, rtype))
        behaviour = self.zone.get(name, "nxdomain")
        response = dns.message.make_response(query)
        response.flags |= dns.flags.AA
        if behaviour == "drop":
            return
        if behaviour == "nxdomain":
            response.set_rcode(dns.rcode.NXDOMAIN)
        elif behaviour == "servfail":
            response.set_rcode(dns.rcode.SERVFAIL)
        elif isinstance(behaviour, dict) and behaviour.get(rtype):
            response.answer.append(
                dns.rrset.from_text_list(q.name, 60, dns.rdataclass.IN, q.rdtype, behaviour[rtype])
            )
        self.transport.sendto(response.to_wire(), addr)

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()


async def start_dns_server(host: str = "127.0.0.1") -> TestDNSServer:
    """Start on an ephemeral UDP port; `server.port` is the port, `server.close()` stops it."""
    loop = asyncio.get_running_loop()
    transport, protocol = await loop.create_datagram_endpoint(TestDNSServer, local_addr=(host, 0))
    protocol.port = transport.get_extra_info("sockname")[1]
    return protocol
