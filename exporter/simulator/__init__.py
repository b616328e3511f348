"""A Microsoft 365 simulator on loopback: identity platform (HTTPS), Graph, IMAP, POP3 and SMTP.

Used by `--demo` and by the tests: it speaks the real protocols over real TLS, so the exporter
is exercised exactly as against Microsoft, with faults switched on per app, user, mailbox or
server. See `state.py` for the switches and `admin.py` for the `/_sim/...` admin API.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

from .certs import SimCerts, make_certs
from .state import SimState
from .tokens import TokenMinter


class Simulator:
    """Starts every simulated service on `host` with ephemeral ports.

    Usage: `sim = Simulator(state); await sim.start(); ...; await sim.close()`.
    """

    def __init__(self, state: SimState | None = None, host: str = "127.0.0.1", workdir: Path | None = None,
                 idp_port: int = 0):
        self.state = state or SimState()
        self.host = host
        self._idp_fixed_port = idp_port
        self._tmp = None if workdir else tempfile.TemporaryDirectory(prefix="m365sim-")
        self.workdir = Path(workdir or self._tmp.name)  # type: ignore[union-attr]
        self.certs: SimCerts = make_certs(self.workdir)
        self.minter = TokenMinter(self.state.tenant_id)
        self.idp_port = self.imap_port = self.pop3_port = self.smtp_port = 0
        self._servers: list = []

    @property
    def ca_file(self) -> Path:
        return self.certs.ca_file

    @property
    def url_host(self) -> str:
        return f"[{self.host}]" if ":" in self.host else self.host

    @property
    def authority_host(self) -> str:
        """Use as `authority_host`; MSAL's authority is this plus `/<tenant_id>`."""
        return f"https://{self.url_host}:{self.idp_port}"

    @property
    def graph_url(self) -> str:
        return f"https://{self.url_host}:{self.idp_port}/graph"

    async def start(self) -> Simulator:
        from .idp import IdentityServer
        from .imap import ImapServer
        from .pop3 import Pop3Server
        from .smtp import SmtpServer

        idp = IdentityServer(self.state, self.minter, self.certs)
        try:
            from .graph import add_graph_routes  # Microsoft Graph endpoints (app-registration audit)

            add_graph_routes(idp.app, self.state, self.minter)
        except ImportError:
            pass
        self.idp_port = await idp.start(self.host, self._idp_fixed_port)
        self._servers.append(idp)
        for attr, cls in (("imap_port", ImapServer), ("pop3_port", Pop3Server), ("smtp_port", SmtpServer)):
            server = cls(self.state, self.minter, self.certs)
            setattr(self, attr, await server.start(self.host))
            self._servers.append(server)
        return self

    async def close(self) -> None:
        for server in reversed(self._servers):
            await server.close()
        self._servers.clear()
        if self._tmp is not None:
            self._tmp.cleanup()
            self._tmp = None

    async def __aenter__(self) -> Simulator:
        return await self.start()

    async def __aexit__(self, *exc: object) -> None:
        await self.close()
