"""`--demo`: a seeded simulator plus a matching exporter config, so a newcomer sees real metrics.

The demo tenant has three credentials (app-only with a secret, app-only with a certificate,
and a delegated service account bootstrapped through the device-code flow) and four
mailboxes; `noreply@contoso.example` fails recognisably (SMTP AUTH disabled for the mailbox,
reason `smtp_auth_disabled`). Message counts drift so graphs move. Faults can be injected
through the simulator's admin API (`/_sim/...` on the identity server, see docs/simulator.md).
"""

from __future__ import annotations

import asyncio
import datetime as dt
import os
import random
import time
from pathlib import Path
from typing import Any

from cryptography import x509

from ..config import Config
from ..tasks import cancel_and_wait
from . import Simulator
from .seed import make_app_certificate
from .state import SimApp, SimMailbox, SimState, SimUser

DEMO_APP_CLIENT_ID = "00000000-0000-0000-0000-00000000ece1"
DEMO_CERT_CLIENT_ID = "00000000-0000-0000-0000-00000000ece2"
DEMO_DELEGATE_CLIENT_ID = "00000000-0000-0000-0000-00000000ece3"
DEMO_DELEGATE_UPN = "svc-ece@contoso.example"
DEMO_HOST = "localhost"
DEMO_ECE_URL = "https://ece.contoso.example"  # the consuming application's external URL (redirect URI audit)


def _write_private(path: Path, data: bytes) -> Path:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(data)
    return path


def seed_demo_state(workdir: Path) -> tuple[SimState, dict[str, Path]]:
    """The demo tenant, and the credential files the exporter will read."""
    state = SimState()
    secret = "demo-" + os.urandom(12).hex()
    key_pem, cert_pem = make_app_certificate("ECE certificate app")
    now = dt.datetime.now(dt.UTC)
    state.apps[DEMO_APP_CLIENT_ID] = SimApp(
        DEMO_APP_CLIENT_ID, secret=secret, display_name="ECE mail app (secret)",
        password_credentials=[{"keyId": "6a1c0f52-demo-secret", "displayName": "ece-prod",
                               "endDateTime": (now + dt.timedelta(days=21)).isoformat()}],
        redirect_uris=[f"{DEMO_ECE_URL}/system/web/view/platform/common/login/oauth2callback"],
    )
    state.apps[DEMO_CERT_CLIENT_ID] = SimApp(
        DEMO_CERT_CLIENT_ID, certificate_pem=cert_pem, display_name="ECE mail app (certificate)"
    )
    state.apps[DEMO_DELEGATE_CLIENT_ID] = SimApp(
        DEMO_DELEGATE_CLIENT_ID, public_client=True, roles=[], display_name="ECE delegated mail app"
    )
    state.users[DEMO_DELEGATE_UPN] = SimUser(DEMO_DELEGATE_UPN)
    for address, messages in (("sales@contoso.example", 12), ("billing@contoso.example", 3),
                              ("support@contoso.example", 7), ("noreply@contoso.example", 0)):
        state.mailboxes[address] = SimMailbox(
            address, messages=messages, app_access={DEMO_APP_CLIENT_ID, DEMO_CERT_CLIENT_ID},
            full_access={DEMO_DELEGATE_UPN},
        )
    state.mailboxes["noreply@contoso.example"].smtp_auth_disabled = True
    # sales' consumer stopped three hours ago: M365MailboxConsumerStalled fires, the board shows it
    state.mailboxes["sales@contoso.example"].oldest_received = time.time() - 3 * 3600
    files = {
        "secret": _write_private(workdir / "ece-app.secret", secret.encode()),
        "key": _write_private(workdir / "ece-cert.key", key_pem),
        "cert": _write_private(workdir / "ece-cert.pem", cert_pem),
        "cache": workdir / "support-delegate.tokencache.json",
    }
    return state, files


def demo_config(sim: Simulator, files: dict[str, Path], interval: float, token_interval: float) -> Config:
    tls = {"ca_file": str(sim.ca_file)}
    raw: dict[str, Any] = {
        "defaults": {
            "interval": interval,
            "token_interval": token_interval,
            "timeout": 5,
            "https": {"authority_host": f"https://{DEMO_HOST}:{sim.idp_port}", "ca_file": str(sim.ca_file),
                      "graph_url": f"https://{DEMO_HOST}:{sim.idp_port}/graph"},
            "endpoints": {
                "imap": {"host": DEMO_HOST, "port": sim.imap_port, "tls": tls},
                "pop3": {"host": DEMO_HOST, "port": sim.pop3_port, "tls": tls},
                "smtp": {"host": DEMO_HOST, "port": sim.smtp_port, "tls": tls},
            },
        },
        "unsafe_allow_short_intervals": True,  # the demo probes every few seconds, against loopback only
        "credentials": {
            "ece-app": {"tenant_id": sim.state.tenant_id, "client_id": DEMO_APP_CLIENT_ID,
                        "client_secret_file": str(files["secret"]), "graph_audit": True,
                        "app_external_url": DEMO_ECE_URL},
            "ece-cert": {"tenant_id": sim.state.tenant_id, "client_id": DEMO_CERT_CLIENT_ID,
                         "certificate_file": str(files["cert"]), "private_key_file": str(files["key"]),
                         # declared (ece-cert has no Graph audit): the certificate's own notAfter
                         "secret_expiry": x509.load_pem_x509_certificate(files["cert"].read_bytes())
                         .not_valid_after_utc.isoformat()},
            "support-delegate": {"tenant_id": sim.state.tenant_id, "client_id": DEMO_DELEGATE_CLIENT_ID,
                                 "flow": "delegated", "account": DEMO_DELEGATE_UPN,
                                 "token_cache": str(files["cache"])},
        },
        "mailboxes": [
            {"address": "sales@contoso.example", "credential": "ece-app", "checks": ["imap", "pop3", "smtp"]},
            {"address": "billing@contoso.example", "credential": "ece-cert", "checks": ["imap", "smtp"]},
            {"address": "support@contoso.example", "credential": "support-delegate",
             "checks": ["imap", "pop3", "smtp"]},
            {"address": "noreply@contoso.example", "credential": "ece-app", "checks": ["smtp"]},
        ],
    }
    return Config.model_validate(raw)


async def bootstrap_delegate(sim: Simulator, cache_path: Path) -> None:
    """Sign the demo service account in through the device-code flow, as `login` would."""
    import msal
    import requests

    from ..auth.cache import save_cache
    from .seed import bootstrap_delegated_cache

    session = requests.Session()
    session.trust_env = False
    session.verify = str(sim.ca_file)
    cache = msal.SerializableTokenCache()
    scopes = [f"https://outlook.office.com/{s}" for s in ("IMAP.AccessAsUser.All", "POP.AccessAsUser.All", "SMTP.Send")]
    await asyncio.to_thread(
        bootstrap_delegated_cache, f"https://{DEMO_HOST}:{sim.idp_port}/{sim.state.tenant_id}",
        DEMO_DELEGATE_CLIENT_ID, DEMO_DELEGATE_UPN, scopes, sim.state, session, cache,
    )
    save_cache(cache_path, cache)
    session.close()


async def drift_messages(state: SimState, period: float) -> None:
    """Make the demo's graphs move: mail arrives and is consumed, sales slowly backs up."""
    rng = random.Random(365)
    while True:
        await asyncio.sleep(period)
        with state.lock:
            for box in state.mailboxes.values():
                if box.address.startswith("sales"):
                    box.messages += rng.choice((0, 1, 1, 2))
                elif box.address.startswith("noreply"):
                    continue
                else:
                    box.messages = max(0, box.messages + rng.choice((-1, 0, 1)))


class Demo:
    """Owns the simulator and the drift task for the lifetime of `--demo`."""

    def __init__(self, workdir: Path, sim_port: int = 0, interval: float = 15.0) -> None:
        self.workdir, self.sim_port, self.interval = workdir, sim_port, interval
        self.sim: Simulator | None = None
        self._drift: asyncio.Task[None] | None = None

    async def start(self) -> Config:
        state, files = seed_demo_state(self.workdir)
        self.sim = Simulator(state, host="127.0.0.1", workdir=self.workdir, idp_port=self.sim_port)
        await self.sim.start()
        await bootstrap_delegate(self.sim, files["cache"])
        self._drift = asyncio.create_task(drift_messages(state, max(self.interval, 1.0)))
        return demo_config(self.sim, files, self.interval, max(self.interval, 1.0))  # as shipped: = interval

    async def close(self) -> None:
        if self._drift is not None:
            await cancel_and_wait([self._drift], 1.0)
        if self.sim is not None:
            await self.sim.close()
