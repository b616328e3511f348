"""Run a seeded simulator in its own process for benchmarks: N mailboxes over C app credentials.

Prints one JSON line (ports, CA path, credential files) on stdout, then serves until SIGTERM.
A separate process keeps the simulator's CPU and memory out of the exporter's measurements.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
import tempfile
from pathlib import Path

from exporter.simulator import Simulator
from exporter.simulator.seed import add_app, add_mailbox
from exporter.simulator.state import SimState


async def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--mailboxes", type=int, default=1000)
    p.add_argument("--credentials", type=int, default=20)
    p.add_argument("--token-lifetime", type=int, default=3600)
    args = p.parse_args()
    work = Path(tempfile.mkdtemp(prefix="m365bench-"))
    state = SimState(token_lifetime=args.token_lifetime)
    creds = {}
    for c in range(args.credentials):
        client_id = f"bbbbbbbb-0000-0000-0000-{c:012d}"
        secret = f"bench-secret-{c:04d}-value"
        add_app(state, client_id, secret=secret)
        secret_file = work / f"cred{c}.secret"
        secret_file.write_text(secret)
        secret_file.chmod(0o600)
        creds[f"cred{c:02d}"] = {"client_id": client_id, "secret_file": str(secret_file)}
    names = sorted(creds)
    mailboxes = []
    for i in range(args.mailboxes):
        cred = names[i % len(names)]
        address = f"box{i:05d}@contoso.example"
        add_mailbox(state, address, app_access=[creds[cred]["client_id"]], messages=i % 50)
        mailboxes.append({"address": address, "credential": cred})
    sim = await Simulator(state, workdir=work / "sim").start()
    print(json.dumps({
        "tenant": state.tenant_id, "authority_host": sim.authority_host, "ca_file": str(sim.ca_file),
        "imap_port": sim.imap_port, "pop3_port": sim.pop3_port, "smtp_port": sim.smtp_port,
        "credentials": creds, "mailboxes": mailboxes,
    }), flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    loop.add_signal_handler(signal.SIGINT, stop.set)
    await stop.wait()
    await sim.close()


if __name__ == "__main__":
    asyncio.run(main())
