"""Test helpers for the web port: certificates, web-config files and an in-process guarded server.

The server is wired exactly like `serve` (make_app + ConnectionGuard + GuardedSite) but on
the test's event loop, so tests can point real clients (Prometheus, openssl, curl, raw
sockets) at it while reading the runtime's and the simulator's counters directly.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import bcrypt
import trustme
import yaml
from aiohttp import web

from exporter.runtime import Runtime
from exporter.web import make_app
from exporter.webconfig import WebConfigWatcher
from exporter.websecurity import WebOptions
from exporter.webserver import ConnectionGuard, GuardedSite

PASSWORD = "correct horse battery staple"


@dataclass
class Certs:
    """A server CA with a server certificate for 127.0.0.1, a client certificate from the same CA,
    and a client certificate from an unrelated CA (untrusted)."""

    dir: Path
    ca: trustme.CA

    @classmethod
    def make(cls, d: Path) -> Certs:
        d.mkdir(parents=True, exist_ok=True)
        ca = trustme.CA()
        server = ca.issue_cert("127.0.0.1", "localhost")
        server.private_key_pem.write_to_path(str(d / "server.key"))
        server.cert_chain_pems[0].write_to_path(str(d / "server.crt"))
        ca.cert_pem.write_to_path(str(d / "ca.crt"))
        client = ca.issue_cert("prometheus.example", common_name="prometheus")
        client.private_key_pem.write_to_path(str(d / "client.key"))
        client.cert_chain_pems[0].write_to_path(str(d / "client.crt"))
        other = trustme.CA().issue_cert("prometheus.example", common_name="intruder")
        other.private_key_pem.write_to_path(str(d / "other.key"))
        other.cert_chain_pems[0].write_to_path(str(d / "other.crt"))
        return cls(d, ca)

    def rotate_server(self) -> None:
        """A new server certificate (new serial) written over the old files."""
        server = self.ca.issue_cert("127.0.0.1", "localhost")
        server.private_key_pem.write_to_path(str(self.dir / "server.key"))
        server.cert_chain_pems[0].write_to_path(str(self.dir / "server.crt"))


def bcrypt_hash(password: str = PASSWORD, cost: int = 10) -> str:
    return bcrypt.hashpw(password.encode(), bcrypt.gensalt(cost)).decode()


def write_web_config(path: Path, doc: dict[str, Any]) -> Path:
    path.write_text(yaml.safe_dump(doc), encoding="utf-8")
    return path


@dataclass
class Served:
    port: int
    guard: ConnectionGuard
    options: WebOptions
    runner: web.AppRunner

    def url(self, path: str = "/", scheme: str | None = None) -> str:
        scheme = scheme or ("https" if self.options.watcher.current().tls else "http")
        return f"{scheme}://127.0.0.1:{self.port}{path}"


@contextlib.asynccontextmanager
async def guarded_server(rt: Runtime, web_config: Path | None = None, max_connections: int = 1024,
                         header_timeout: float = 10.0, idle_timeout: float = 60.0,
                         **options: Any) -> AsyncIterator[Served]:
    opts = WebOptions(watcher=WebConfigWatcher(web_config), **options)
    runner = web.AppRunner(make_app(rt, opts), access_log=None, keepalive_timeout=idle_timeout)
    await runner.setup()
    guard = ConnectionGuard(opts.watcher, max_connections, header_timeout)
    site = GuardedSite(runner, "127.0.0.1", 0, guard)
    await site.start()
    try:
        yield Served(site.bound_port, guard, opts, runner)
    finally:
        await runner.cleanup()
