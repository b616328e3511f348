"""HTTP surface against the simulator: /metrics, /probe (+debug), readiness, reload, landing page."""

from __future__ import annotations

import asyncio
import contextlib
import re
from collections.abc import AsyncIterator
from pathlib import Path

import yaml
from aiohttp.test_utils import TestClient, TestServer

from exporter.config import load_config
from exporter.runtime import Runtime
from exporter.web import make_app
from exporter.websecurity import WebOptions
from tests.simenv import Env, env_fixture

env = env_fixture()


def write_config(env: Env, path: Path, **kw: object) -> Path:
    cfg = env.config(**kw)  # type: ignore[arg-type]
    path.write_text(yaml.safe_dump(cfg.model_dump(mode="json", exclude_none=True)))
    return path


@contextlib.asynccontextmanager
async def serving(env: Env, tmp_path: Path, options: WebOptions | None = None,
                  ) -> AsyncIterator[tuple[Path, Runtime, TestClient]]:
    """A started Runtime (2 s interval) loaded from a config file, behind the HTTP app as `serve` wires it.

    Yields (config file, runtime, client); the client and the runtime are stopped after. By
    default lifecycle is enabled and /probe has no spacing (each request probes live).
    """
    cfg_path = write_config(env, tmp_path / "cfg.yml", interval=2, token_interval=30)
    rt = Runtime(load_config(cfg_path), str(cfg_path))
    rt.start()
    options = options or WebOptions(enable_lifecycle=True, probe_min_interval=0.0)
    client = TestClient(TestServer(make_app(rt, options)))
    await client.start_server()
    try:
        yield cfg_path, rt, client
    finally:
        await client.close()
        await rt.stop()


async def wait_ready(client: TestClient, seconds: float = 20) -> None:
    for _ in range(int(seconds * 10)):
        resp = await client.get("/-/ready")
        if resp.status == 200:
            return
        await asyncio.sleep(0.1)
    raise AssertionError("not ready in time")


async def test_metrics_probe_ready_and_landing(env: Env, tmp_path: Path) -> None:
    async with serving(env, tmp_path) as (_, _, client):
        assert (await client.get("/-/healthy")).status == 200
        await wait_ready(client)
        resp = await client.get("/metrics")
        assert resp.status == 200 and resp.headers["Content-Type"].startswith("text/plain")
        body = await resp.text()
        for check in ("imap", "pop3", "smtp", "token"):
            assert f'm365_probe_success{{check="{check}",mailbox="sales@contoso.example"}} 1.0' in body
        assert 'm365_mailbox_messages{mailbox="sales@contoso.example"} 5.0' in body
        assert "m365_exporter_build_info{" in body and "m365_config_last_reload_successful 1.0" in body
        assert "_created" not in body
        assert re.search(r'm365_tls_handshake_success\{host="127.0.0.1",port="\d+"\} 1.0', body)
        assert "process_resident_memory_bytes" in body
        assert ('m365_mailbox_info{address="support@contoso.example",credential="delegate",'
                'mailbox="support@contoso.example"} 1.0') in body

        resp = await client.get("/probe", params={"mailbox": "sales@contoso.example", "check": "imap"})
        assert 'm365_probe_success{check="imap",mailbox="sales@contoso.example"} 1.0' in await resp.text()
        env.state.mailboxes["sales@contoso.example"].not_accessible = True
        resp = await client.get("/probe", params={"mailbox": "sales@contoso.example", "check": "imap", "debug": "true"})
        text = await resp.text()
        assert "FAILURE" in text and "mailbox_not_accessible" in text and "Add-MailboxPermission" in text
        assert "User is authenticated but not connected" in text
        assert "AUTHENTICATE XOAUTH2" in text and "eyJ" not in text
        assert (await client.get("/probe", params={"mailbox": "nobody@x.example", "check": "imap"})).status == 404
        assert (await client.get("/probe", params={"mailbox": "sales@contoso.example", "check": "ftp"})).status == 400
        assert (await client.get("/probe")).status == 400
        landing = await (await client.get("/")).text()
        assert "sales@contoso.example" in landing and "mailbox_not_accessible" in landing
        # /debug: the recorded failure, marked not live, with the fix filled for this mailbox (never probes)
        text = await (await client.get("/debug", params={"mailbox": "sales@contoso.example", "check": "imap"})).text()
        fix = next(line for line in text.splitlines() if line.startswith("fix:"))
        assert "Add-MailboxPermission -Identity sales@contoso.example" in fix and "recorded result" not in fix
        assert any(line.startswith("NOT LIVE: recorded result") for line in text.splitlines()), text


async def test_reload_keeps_old_config_on_error_and_applies_good_one(env: Env, tmp_path: Path) -> None:
    async with serving(env, tmp_path) as (cfg_path, rt, client):
        await wait_ready(client)
        token_before = rt.providers["app"]
        good = cfg_path.read_text()
        cfg_path.write_text(good.replace("checks:", "chekcs:", 1))
        resp = await client.post("/-/reload")
        assert resp.status == 500
        assert "unknown field" in await resp.text()
        body = await (await client.get("/metrics")).text()
        assert "m365_config_last_reload_successful 0.0" in body
        assert 'mailbox="sales@contoso.example"' in body  # still probing with the old config

        raw = yaml.safe_load(good)
        raw["mailboxes"] = [m for m in raw["mailboxes"] if m["address"] != "billing@contoso.example"]
        raw["mailboxes"].append({"address": "new@contoso.example", "credential": "app", "checks": ["smtp"]})
        cfg_path.write_text(yaml.safe_dump(raw))
        from exporter.simulator.seed import add_mailbox
        from tests.simenv import APP_ID

        add_mailbox(env.state, "new@contoso.example", app_access=[APP_ID])
        resp = await client.post("/-/reload")
        assert resp.status == 200
        assert rt.providers["app"] is token_before  # unchanged credential keeps its provider and token
        for _ in range(100):
            body = await (await client.get("/metrics")).text()
            if 'm365_probe_success{check="smtp",mailbox="new@contoso.example"} 1.0' in body:
                break
            await asyncio.sleep(0.1)
        assert 'm365_probe_success{check="smtp",mailbox="new@contoso.example"} 1.0' in body
        assert "billing@contoso.example" not in body
        assert "m365_config_last_reload_successful 1.0" in body


async def test_serve_process_sighup_and_sigterm(env: Env, tmp_path: Path) -> None:
    """The real command: starts, serves, reloads on SIGHUP, exits 0 on SIGTERM."""
    import signal
    import socket
    import sys

    import aiohttp

    cfg_path = write_config(env, tmp_path / "cfg.yml", interval=2, token_interval=30)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "exporter", "--config.file", str(cfg_path), "--web.listen-address",
        f"127.0.0.1:{port}", stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        async with aiohttp.ClientSession() as http:
            body = ""
            for _ in range(200):
                try:
                    async with http.get(url + "/metrics") as r:
                        body = await r.text()
                    if 'm365_probe_success{check="imap",mailbox="sales@contoso.example"} 1.0' in body:
                        break
                except aiohttp.ClientError:
                    pass
                await asyncio.sleep(0.1)
            assert 'm365_probe_success{check="imap",mailbox="sales@contoso.example"} 1.0' in body
            cfg_path.write_text("mailboxes: [")  # broken: SIGHUP must keep the old config
            proc.send_signal(signal.SIGHUP)
            for _ in range(50):
                async with http.get(url + "/metrics") as r:
                    body = await r.text()
                if "m365_config_last_reload_successful 0.0" in body:
                    break
                await asyncio.sleep(0.1)
            assert "m365_config_last_reload_successful 0.0" in body
            assert "sales@contoso.example" in body
        proc.send_signal(signal.SIGTERM)
        rc = await asyncio.wait_for(proc.wait(), 15)
        assert rc == 0
        _, err = await proc.communicate()
        assert b"config reload failed" in err
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
