"""Test environment: a running simulator with a seeded tenant, and configs that point at it.

Shared by the token, runtime, web and secrecy tests so each test reads as what it checks.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import msal
import pytest

from exporter.auth.cache import save_cache
from exporter.config import Config
from exporter.runtime import Runtime
from exporter.simulator import Simulator
from exporter.simulator.seed import (
    add_app,
    add_mailbox,
    add_user,
    bootstrap_delegated_cache,
    make_app_certificate,
    sim_http_client,
)
from exporter.simulator.state import SimState

APP_ID = "aaaaaaaa-0000-0000-0000-000000000001"
CERT_APP_ID = "aaaaaaaa-0000-0000-0000-000000000002"
PUBLIC_APP_ID = "aaaaaaaa-0000-0000-0000-000000000003"
SECRET = "s3cr3t-Value~abcdefghijklmnop"
DELEGATE = "svc-ece@contoso.example"
OTHER_USER = "alice@contoso.example"
DELEGATED_SCOPES = [f"https://outlook.office.com/{s}" for s in ("IMAP.AccessAsUser.All", "POP.AccessAsUser.All",
                                                                 "SMTP.Send")]


@dataclass
class Env:
    sim: Simulator
    tmp: Path
    files: dict[str, Path]

    @property
    def state(self) -> SimState:
        return self.sim.state

    def config(self, mailboxes: list[dict[str, Any]] | None = None, **defaults: Any) -> Config:
        sim = self.sim
        tls = {"ca_file": str(sim.ca_file)}
        raw: dict[str, Any] = {
            "defaults": {
                "interval": 60, "token_interval": 300, "timeout": 5,
                "https": {"authority_host": sim.authority_host, "ca_file": str(sim.ca_file)},
                "endpoints": {
                    "imap": {"host": "127.0.0.1", "port": sim.imap_port, "tls": tls},
                    "pop3": {"host": "127.0.0.1", "port": sim.pop3_port, "tls": tls},
                    "smtp": {"host": "127.0.0.1", "port": sim.smtp_port, "tls": tls},
                },
                **defaults,
            },
            "credentials": {
                "app": {"tenant_id": sim.state.tenant_id, "client_id": APP_ID,
                        "client_secret_file": str(self.files["secret"])},
                "cert": {"tenant_id": sim.state.tenant_id, "client_id": CERT_APP_ID,
                         "certificate_file": str(self.files["cert"]), "private_key_file": str(self.files["key"])},
                "delegate": {"tenant_id": sim.state.tenant_id, "client_id": PUBLIC_APP_ID, "flow": "delegated",
                             "account": DELEGATE, "token_cache": str(self.files["cache"])},
            },
            "unsafe_allow_short_intervals": True,  # tests probe every few seconds
            "mailboxes": mailboxes if mailboxes is not None else [
                {"address": "sales@contoso.example", "credential": "app", "checks": ["imap", "pop3", "smtp"]},
                {"address": "billing@contoso.example", "credential": "cert", "checks": ["imap", "smtp"]},
                {"address": "support@contoso.example", "credential": "delegate", "checks": ["imap", "pop3", "smtp"]},
            ],
        }
        return Config.model_validate(raw)

    async def login(self, upn: str = DELEGATE) -> None:
        """What `login` does: device-code sign-in as `upn`, cache written atomically."""
        cache = msal.SerializableTokenCache()
        http = sim_http_client(self.sim.ca_file)
        result = await asyncio.to_thread(
            bootstrap_delegated_cache, f"{self.sim.authority_host}/{self.state.tenant_id}", PUBLIC_APP_ID, upn,
            DELEGATED_SCOPES, self.state, http, cache,
        )
        assert "access_token" in result, result
        save_cache(self.files["cache"], cache)


async def start_env(tmp: Path, delegated_login: bool = True) -> Env:
    state = SimState()
    key_pem, cert_pem = make_app_certificate("test cert app")
    add_app(state, APP_ID, secret=SECRET)
    add_app(state, CERT_APP_ID, certificate_pem=cert_pem)
    add_app(state, PUBLIC_APP_ID, roles=[], public_client=True)
    add_user(state, DELEGATE)
    add_user(state, OTHER_USER)
    for addr in ("sales@contoso.example", "billing@contoso.example", "support@contoso.example"):
        add_mailbox(state, addr, full_access=[DELEGATE], app_access=[APP_ID, CERT_APP_ID], messages=5)
    sim = await Simulator(state, workdir=tmp / "sim").start()
    files = {"secret": tmp / "app.secret", "key": tmp / "cert.key", "cert": tmp / "cert.pem",
             "cache": tmp / "delegate-cache.json"}
    files["secret"].write_text(SECRET + "\n")
    files["key"].write_bytes(key_pem)
    files["cert"].write_bytes(cert_pem)
    for f in ("secret", "key"):
        os.chmod(files[f], 0o600)
    env = Env(sim, tmp, files)
    if delegated_login:
        await env.login()
    return env


async def runtime_for(config: Config) -> Runtime:
    """A Runtime wired like `serve` but with the scheduler stopped: tests drive probes directly."""
    rt = Runtime(config)
    rt.apply(config)
    await rt.scheduler.stop()
    return rt


def env_fixture(delegated_login: bool = True) -> Callable[[Path], AsyncIterator[Env]]:
    """A function-scoped `env` fixture: `env = env_fixture()` in a test module; the simulator closes after."""

    @pytest.fixture
    async def env(tmp_path: Path) -> AsyncIterator[Env]:
        e = await start_env(tmp_path, delegated_login=delegated_login)
        yield e
        await e.sim.close()

    return env
