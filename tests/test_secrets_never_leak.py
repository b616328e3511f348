"""Secrets, tokens and SASL responses never reach /metrics, /, /probe debug output or logs.

Runs the real `serve` command at debug log level against the simulator, exercises every check
(successes and failures, including a wrong secret and refresh-token rotation), then greps every
output for every secret the run handled: the client secret, each access and refresh token the
simulator minted, the XOAUTH2 SASL strings built from them, and the private key.
"""

from __future__ import annotations

import asyncio
import base64
import signal
import socket
import sys
from pathlib import Path

import aiohttp
import yaml

from exporter.simulator.state import TokenFault
from tests.simenv import APP_ID, SECRET, start_env


async def test_no_secret_in_any_output(tmp_path: Path) -> None:
    env = await start_env(tmp_path)
    minted: list[str] = []
    real_mint = env.sim.minter.mint

    def recording_mint(*a, **kw):  # type: ignore[no-untyped-def]
        tok = real_mint(*a, **kw)
        minted.append(tok)
        return tok

    env.sim.minter.mint = recording_mint  # type: ignore[method-assign]
    cfg = env.config(interval=1, token_interval=2)
    cfg_path = tmp_path / "cfg.yml"
    cfg_path.write_text(yaml.safe_dump(cfg.model_dump(mode="json", exclude_none=True)))
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "exporter", "--config.file", str(cfg_path), "--web.listen-address",
        f"127.0.0.1:{port}", "--log.level", "debug", "--web.probe-min-interval", "0",  # every /probe live
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )
    outputs: list[str] = []
    url = f"http://127.0.0.1:{port}"
    try:
        async with aiohttp.ClientSession() as http:
            for _ in range(200):
                try:
                    async with http.get(url + "/-/ready") as r:
                        if r.status == 200:
                            break
                except aiohttp.ClientError:
                    pass
                await asyncio.sleep(0.1)
            await asyncio.sleep(2.5)  # at least one forced refresh per credential (RT rotation)
            env.state.mailboxes["support@contoso.example"].not_accessible = True
            env.state.mailboxes["billing@contoso.example"].smtp_auth_disabled = True
            for mailbox in ("sales@contoso.example", "billing@contoso.example", "support@contoso.example"):
                for check in ("token", "imap", "pop3", "smtp"):
                    async with http.get(url + "/probe", params={"mailbox": mailbox, "check": check,
                                                                "debug": "true"}) as r:
                        outputs.append(await r.text())
            env.state.token_faults[APP_ID] = TokenFault(aadsts=7000215)
            async with http.get(url + "/probe", params={"mailbox": "sales@contoso.example", "check": "token",
                                                        "debug": "true"}) as r:
                text = await r.text()
                assert "secret_invalid" in text
                outputs.append(text)
            for path in ("/metrics", "/"):
                async with http.get(url + path) as r:
                    outputs.append(await r.text())
        proc.send_signal(signal.SIGTERM)
        out, err = await asyncio.wait_for(proc.communicate(), 15)
        outputs += [out.decode(errors="replace"), err.decode(errors="replace")]
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
        await env.sim.close()

    secrets = {"client secret": SECRET}
    for i, tok in enumerate(minted):
        secrets[f"token {i}"] = tok
        secrets[f"token {i} signature"] = tok.rsplit(".", 1)[1]
        for user in ("sales@contoso.example", "billing@contoso.example", "support@contoso.example"):
            sasl = base64.b64encode(f"user={user}\x01auth=Bearer {tok}\x01\x01".encode()).decode()
            secrets[f"sasl {i} {user}"] = sasl[:60]
    for rt in list(env.state.refresh_tokens):
        secrets[f"refresh token {rt[:4]}"] = rt
    key_body = env.files["key"].read_text().splitlines()[1]
    secrets["private key"] = key_body
    assert len(minted) >= 6 and env.state.refresh_tokens, "the run must have handled real secrets"
    everything = "\n".join(outputs)
    assert "debug" in everything.lower() or "level=" in everything  # the logs were captured
    leaked = [name for name, value in secrets.items() if value and value in everything]
    assert not leaked, f"leaked: {leaked[:5]}"
