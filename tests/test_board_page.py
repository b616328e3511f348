"""The NOC status board in a real browser (Debian's chromium, headless, driven by Playwright).

Three root causes are made real against the simulator (an expired client secret, a mailbox the
identity cannot open, an endpoint nobody listens on), the exporter's web app is mounted under a
route prefix, and the rendered DOM is checked: the summary counts, one block per root cause with
its mailboxes and the filled fix, failing first, the DEMO banner, relative links that work under
the prefix, the dark mode, the self-refresh and the stale banner, and that viewing the board
costs Microsoft no login. Screenshots (1920x1080 and 390x844, light and dark) are saved under
tests/artifacts/ (not committed) and their paths printed.
"""

from __future__ import annotations

import os
import socket
import time
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from exporter.board import REFRESH, build
from exporter.store import ResultStore
from exporter.web import make_app
from tests.simenv import APP_ID, env_fixture, runtime_for

CHROMIUM = os.environ.get("CHROMIUM", "/usr/bin/chromium")
playwright_api = pytest.importorskip("playwright.async_api")
pytestmark = pytest.mark.skipif(not Path(CHROMIUM).exists(), reason="Debian's chromium is not installed")
ARTIFACTS = Path(__file__).parent / "artifacts"
PREFIX = "/noc/"
ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
        "--disable-component-update", "--disable-sync"]

env = env_fixture()


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def broken_runtime(env: Any) -> Any:
    """sales: secret expired (4 checks); billing: mailbox not accessible over IMAP; support's POP3
    endpoint refuses connections. Probes run once, directly; the scheduler is stopped."""
    dead = closed_port()
    mailboxes = [
        {"address": "sales@contoso.example", "credential": "app", "checks": ["imap", "pop3", "smtp"]},
        {"address": "billing@contoso.example", "credential": "cert", "checks": ["imap", "smtp"]},
        {"address": "support@contoso.example", "credential": "delegate", "checks": ["imap", "pop3"],
         "endpoints": {"pop3": {"host": "127.0.0.1", "port": dead}}},
    ]
    env.state.token_faults[APP_ID] = type(env.state.fault_for())(aadsts=7000222)
    env.state.mailboxes["billing@contoso.example"].not_accessible = True
    env.state.mailboxes["support@contoso.example"].oldest_received = time.time() - 2 * 3600
    rt = await runtime_for(env.config(mailboxes))
    rt.demo = True
    for ep in rt.unique_endpoints(rt.config).values():
        await rt.run_endpoint_probe(ep)
    for name in rt.config.credentials:
        await rt.run_token_probe(name)
    for m in rt.config.mailboxes:
        for check in m.checks:
            await rt.probe_now(m.address, check)
    return rt, dead


async def serve_under_prefix(rt: Any) -> tuple[web.AppRunner, str]:
    outer = web.Application()
    outer.add_subapp(PREFIX, make_app(rt))
    runner = web.AppRunner(outer)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    return runner, f"http://127.0.0.1:{port}{PREFIX}"


def test_grouping_without_a_browser(env: Any) -> None:
    """(covered end to end below; this pins the pure grouping on an empty store)"""
    rt_board = build(type("R", (), {"config": env.config(), "store": ResultStore()})())
    assert rt_board.failing == 0 and rt_board.causes == [] and rt_board.total == 0


async def test_board_in_chromium(env: Any) -> None:
    rt, dead = await broken_runtime(env)
    runner, url = await serve_under_prefix(rt)
    ARTIFACTS.mkdir(exist_ok=True)
    shots: list[Path] = []
    try:
        async with playwright_api.async_playwright() as p:
            browser = await p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
            try:
                logins_before = env.state.token_requests()
                page = await browser.new_page(viewport={"width": 1920, "height": 1080})
                await page.clock.install()
                resp = await page.goto(url)
                assert resp is not None and resp.status == 200

                summary = page.locator("#summary")
                # sales: token+imap+pop3+smtp = 4, billing imap = 1, support pop3 = 1; of 3+4+3 checks
                assert await summary.get_attribute("data-failing") == "6"
                assert await summary.get_attribute("data-total") == "10"
                assert await summary.get_attribute("data-causes") == "3"
                assert await summary.inner_text() == "6 of 10 checks failing, 3 root causes"
                assert float(await summary.evaluate("e => parseFloat(getComputedStyle(e).fontSize)")) >= 48
                assert await page.locator("#demo").is_visible()
                assert "DEMO" in await page.locator("#demo").inner_text()

                causes = page.locator("section.cause")
                assert await causes.count() == 3
                first = causes.nth(0)  # the cause breaking the most checks comes first
                assert await first.get_attribute("data-kind") == "credential"
                assert await first.get_attribute("data-name") == "app"
                assert await first.get_attribute("data-reason") == "secret_expired"
                assert sorted(await first.locator("li").evaluate_all("ls => ls.map(l => l.dataset.check)")) == [
                    "imap", "pop3", "smtp", "token"]
                kinds = {await c.get_attribute("data-kind"): c for c in [causes.nth(1), causes.nth(2)]}
                ep = kinds["endpoint"]
                assert await ep.get_attribute("data-name") == f"127.0.0.1:{dead}"
                assert await ep.get_attribute("data-reason") == "connection_refused"
                assert await ep.locator("li").inner_text() == "support@contoso.example · pop3"
                mb = kinds["mailbox"]
                assert await mb.get_attribute("data-reason") == "mailbox_not_accessible"
                fix = await mb.locator(".fix").inner_text()
                assert fix.startswith("Fix: ") and "MAILBOX" not in fix  # filled by Reason.fix_for
                text = await page.locator("main").inner_text()
                for placeholder in ("-Identity MAILBOX", "--credential NAME"):
                    assert placeholder not in text

                cards = await page.locator("#mailboxes .card").evaluate_all(
                    "cs => cs.map(c => [c.dataset.mailbox, c.dataset.failing])")
                assert [f for _, f in cards] == ["1", "1", "1"] or cards[-1][1] <= cards[0][1]
                support = page.locator('#mailboxes .card[data-mailbox="support@contoso.example"]')
                assert "oldest waiting 2h" in await support.inner_text()
                tls = page.locator(f'#endpoints [data-endpoint="127.0.0.1:{env.sim.imap_port}"]')
                assert "TLS certificate" in await tls.inner_text() and "in " in await tls.inner_text()
                refused = page.locator(f'#endpoints [data-endpoint="127.0.0.1:{dead}"]')
                assert "connection_refused" in await refused.inner_text()
                assert await page.locator('[data-credential="delegate"] .kv').count() >= 1  # token countdown
                assert "in " in await page.locator('[data-credential="delegate"] .kv').first.inner_text()

                hrefs = await page.locator("a").evaluate_all("as => as.map(a => a.getAttribute('href'))")
                assert hrefs and all(not h.startswith(("/", "http")) and "probe" not in h for h in hrefs), hrefs
                shots.append(ARTIFACTS / "board-1920x1080-light.png")
                await page.screenshot(path=str(shots[-1]), full_page=True)
                for name in ("metrics", "-/healthy"):
                    r = await page.request.get(await page.locator(f'a[href="{name}"]').evaluate("a => a.href"))
                    assert r.status == 200 and r.url.startswith(url), r.url
                await page.locator("#theme-toggle").click()
                await page.wait_for_load_state()
                assert page.url.endswith(f"{PREFIX}?theme=dark")
                assert await page.locator("html").get_attribute("data-theme") == "dark"
                bg = await page.evaluate("getComputedStyle(document.body).backgroundColor")
                assert bg == "rgb(13, 17, 23)", bg
                shots.append(ARTIFACTS / "board-1920x1080-dark.png")
                await page.screenshot(path=str(shots[-1]), full_page=True)

                # never a login: viewing, following links and switching theme read the store only
                assert env.state.token_requests() == logins_before

                # the self-refresh picks up new results; a dead exporter turns the board stale, not green
                env.state.token_faults.clear()
                env.state.mailboxes["billing@contoso.example"].not_accessible = False
                await rt.run_token_probe("app")
                for check in ("token", "imap", "pop3", "smtp"):
                    await rt.probe_now("sales@contoso.example", check)
                await rt.probe_now("billing@contoso.example", "imap")
                await page.clock.run_for((REFRESH + 1) * 1000)
                await page.wait_for_function("document.getElementById('summary').dataset.causes === '1'",
                                             timeout=5000)
                assert await page.locator("#summary").inner_text() == "1 of 10 checks failing, 1 root cause"
                assert not await page.locator("#stale").is_visible()
                await runner.cleanup()
                await page.clock.run_for((REFRESH + 1) * 1000)
                await page.wait_for_function("getComputedStyle(document.getElementById('stale')).display !== 'none'",
                                             timeout=5000)
                assert "BOARD STALE" in await page.locator("#stale").inner_text()

                phone = await browser.new_page(viewport={"width": 390, "height": 844}, device_scale_factor=2,
                                               is_mobile=True)
                runner, url = await serve_under_prefix(rt)
                env.state.token_faults[APP_ID] = type(env.state.fault_for())(aadsts=7000222)
                await rt.run_token_probe("app")
                await phone.goto(url)
                width = await phone.evaluate("document.documentElement.scrollWidth")
                assert width <= 390, f"horizontal scrolling on a phone: {width}px"
                assert await phone.locator("section.cause").count() >= 1
                for theme in ("light", "dark"):
                    await phone.goto(f"{url}?theme={theme}")
                    shots.append(ARTIFACTS / f"board-390x844-{theme}.png")
                    await phone.screenshot(path=str(shots[-1]), full_page=True)
            finally:
                await browser.close()
    finally:
        await runner.cleanup()
        await rt.stop()
    print("\nboard screenshots:", *map(str, shots), sep="\n  ")
