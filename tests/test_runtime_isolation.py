"""A tarpit endpoint holds one probe slot for at most its timeout; everything else keeps going."""

from __future__ import annotations

import asyncio
import socket
import time
from pathlib import Path

from exporter.config import Config
from exporter.reasons import Reason
from exporter.runtime import Runtime
from exporter.simulator.seed import add_mailbox
from tests.simenv import APP_ID, start_env


async def test_tarpit_costs_one_slot_for_its_timeout(tmp_path: Path) -> None:
    env = await start_env(tmp_path, delegated_login=False)
    tarpit = socket.socket()
    tarpit.bind(("127.0.0.1", 0))
    tarpit.listen(64)  # accepts via the backlog, never answers
    tport = tarpit.getsockname()[1]
    mailboxes = []
    for i in range(12):
        addr = f"box{i}@contoso.example"
        add_mailbox(env.state, addr, app_access=[APP_ID])
        mailboxes.append({"address": addr, "credential": "app", "checks": ["imap"]})
    mailboxes[0]["endpoints"] = {"imap": {"host": "127.0.0.1", "port": tport, "tls": {"ca_file": str(env.sim.ca_file)}}}
    raw = env.config(mailboxes=mailboxes, interval=1, timeout=2, concurrency=3, network_checks=False).model_dump(
        mode="json")
    raw["credentials"] = {"app": raw["credentials"]["app"]}
    rt = Runtime(Config.model_validate(raw))
    rt.start()
    scrape_times: list[float] = []
    try:
        t_end = time.monotonic() + 6
        while time.monotonic() < t_end:
            t0 = time.perf_counter()
            await rt.renderer.render()
            scrape_times.append(time.perf_counter() - t0)
            await asyncio.sleep(0.05)
    finally:
        await rt.stop()
        tarpit.close()
        await env.sim.close()
    snap = rt.store.snapshot()
    stuck = snap[("mailbox", "box0@contoso.example", "imap")]
    assert stuck.last is not None and stuck.last.reason is Reason.TIMEOUT
    assert stuck.last.duration <= 2.5
    assert stuck.total >= 2  # it keeps being retried, never hangs forever
    for i in range(1, 12):
        st = snap[("mailbox", f"box{i}@contoso.example", "imap")]
        assert st.last is not None and st.last.success, (i, st.last)
        assert st.total >= 4, (i, st.total)  # kept their ~1 s cadence despite the tarpit
    scrape_times.sort()
    assert scrape_times[len(scrape_times) // 2] < 0.02, scrape_times[-5:]
    assert scrape_times[-1] < 0.25


async def test_on_demand_probe_shares_the_concurrency_limit(tmp_path: Path) -> None:
    env = await start_env(tmp_path, delegated_login=False)
    raw = env.config(concurrency=1, network_checks=False).model_dump(mode="json")
    raw["credentials"] = {"app": raw["credentials"]["app"]}
    raw["mailboxes"] = [m for m in raw["mailboxes"] if m["credential"] == "app"]
    rt = Runtime(Config.model_validate(raw))
    rt.apply(rt.config)
    await rt.scheduler.stop()
    try:
        async with rt.scheduler.slot:  # every slot busy
            pending = asyncio.create_task(rt.probe_now("sales@contoso.example", "imap"))
            await asyncio.sleep(0.5)
            assert not pending.done()  # /probe waits for a slot instead of exceeding the limit
        result = await asyncio.wait_for(pending, 10)
        assert result.success
    finally:
        await rt.stop()
        await env.sim.close()
