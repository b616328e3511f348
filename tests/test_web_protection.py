"""The web port cannot be used to flood Microsoft, change the config cross-site, or exhaust the exporter.

Real traffic only: the simulator counts the logins it sees; raw sockets play slowloris and
idle-connection floods; the real `serve` process is used for the 20,000-connection case so
its descriptor budget is its own.
"""

from __future__ import annotations

import asyncio
import errno
import json
import logging
import os
import resource
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import aiohttp
import pytest
import yaml

from exporter.config import load_config
from exporter.logs import RateLimit, RedactingFormatter
from exporter.ondemand import Busy, OnDemand
from exporter.probes.neterrors import classify
from exporter.probes.result import ProbeResult
from exporter.reasons import Category, Reason
from exporter.runtime import Runtime
from exporter.web import ONDEMAND
from exporter.webconfig import WebConfigError, parse_web_config
from tests.simenv import Env, env_fixture
from tests.test_alerting_e2e import free_port
from tests.webenv import PASSWORD, bcrypt_hash, guarded_server, write_web_config

env = env_fixture()


async def started_runtime(env: Env, tmp_path: Path, **defaults: object) -> Runtime:
    cfg = env.config(**{"interval": 3, "timeout": 2, "token_interval": 30, "network_checks": False, **defaults})
    path = tmp_path / "cfg.yml"
    path.write_text(yaml.safe_dump(cfg.model_dump(mode="json", exclude_none=True)))
    rt = Runtime(load_config(path), str(path))
    rt.start()
    return rt


def logins(env: Env, protocol: str, address: str) -> int:
    with env.state.lock:
        return sum(n for k, n in env.state.counters.items() if k[0] == protocol and k[1] == address)


async def test_probe_flood_stays_within_the_spacing_and_scheduled_probes_keep_their_cadence(
        env: Env, tmp_path: Path) -> None:
    env.state.server_fault("imap").tarpit = True  # every imap probe, scheduled or on demand, waits its timeout
    rt = await started_runtime(env, tmp_path)
    try:
        async with guarded_server(rt, probe_min_interval=30.0) as srv:
            await asyncio.sleep(3.5)  # first scheduled round done
            sales, billing = "sales@contoso.example", "billing@contoso.example"
            pop_before, smtp_before = logins(env, "pop3", sales), logins(env, "smtp", billing)
            smtp_key = ("mailbox", billing, "smtp")
            sched_before = rt.store.get(smtp_key).total  # type: ignore[union-attr]
            token_before = env.state.token_requests()
            statuses: dict[int, int] = {}
            t0 = time.monotonic()
            targets = [(sales, "pop3"), (sales, "imap"), (billing, "imap"), ("support@contoso.example", "imap"),
                       (sales, "token")]
            connector = aiohttp.TCPConnector(limit=200)
            async with aiohttp.ClientSession(connector=connector) as http:
                async def one(i: int) -> None:
                    mailbox, check = targets[i % len(targets)]
                    async with http.get(srv.url("/probe"), params={"mailbox": mailbox, "check": check}) as r:
                        await r.read()
                        statuses[r.status] = statuses.get(r.status, 0) + 1

                await asyncio.gather(*(one(i) for i in range(3000)))
                flood_seconds = time.monotonic() - t0
                await asyncio.sleep(max(0.0, 7.0 - flood_seconds))  # a window of >= 2 scheduled intervals
            window = time.monotonic() - t0
            pop_live = logins(env, "pop3", sales) - pop_before
            smtp_sched = logins(env, "smtp", billing) - smtp_before
            sched_runs = rt.store.get(smtp_key).total - sched_before  # type: ignore[union-attr]
            tokens = env.state.token_requests() - token_before
            print(f"\n/probe flood: 3000 requests in {flood_seconds:.1f}s, statuses {statuses}; "
                  f"window {window:.1f}s: pop3 logins {pop_live} (scheduled every 3s), token requests {tokens}, "
                  f"billing smtp scheduled runs {sched_runs}; load {os.getloadavg()[0]:.1f}")
            # logins: the scheduled cadence plus at most one on-demand per target per 30 s
            assert pop_live <= window / 3 + 2, pop_live
            assert tokens <= 3, tokens  # token: spaced per credential, cached by the provider
            assert sum(statuses.values()) == 3000 and set(statuses) <= {200, 429}, statuses
            # scheduled probes of a healthy target kept their 3 s cadence while tarpit probes hogged /probe's pool
            assert sched_runs >= int(window / 3) - 1 and smtp_sched >= int(window / 3) - 1, (sched_runs, smtp_sched)
            text = await _text(srv.url("/probe"), {"mailbox": sales, "check": "pop3", "debug": "true"})
            assert "NOT LIVE: recorded result from" in text
            assert (await _status(srv.url("/probe"), {"mailbox": sales, "check": "ftp"})) == 400
            assert (await _status(srv.url("/probe"), {"mailbox": billing, "check": "pop3"})) == 404  # not configured

        # no recent results to serve (tiny spacing): live tarpit probes fill /probe's own pool; requests for
        # one target share its probe (single-flight), and scheduled probes still run on time
        async with guarded_server(rt, probe_min_interval=0.01, probe_concurrency=2) as srv:
            sched_before = rt.store.get(smtp_key).total  # type: ignore[union-attr]
            statuses = {}
            t0 = time.monotonic()
            async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=300)) as http:
                async def tarpit(i: int) -> None:
                    mailbox = (sales, billing, "support@contoso.example")[i % 3]
                    async with http.get(srv.url("/probe"), params={"mailbox": mailbox, "check": "imap"}) as r:
                        await r.read()
                        statuses[r.status] = statuses.get(r.status, 0) + 1
                        if r.status == 429:
                            assert int(r.headers["Retry-After"]) >= 1

                await asyncio.gather(*(tarpit(i) for i in range(300)))
            await asyncio.sleep(max(0.0, 7.0 - (time.monotonic() - t0)))
            window = time.monotonic() - t0
            sched_runs = rt.store.get(smtp_key).total - sched_before  # type: ignore[union-attr]
            live = srv.runner.app[ONDEMAND].live_probes
            flood = time.monotonic() - t0
            print(f"tarpit /probe flood: statuses {statuses}, live probes {live}; scheduled billing smtp runs in "
                  f"{window:.1f}s: {sched_runs}")
            assert sum(statuses.values()) == 300 and set(statuses) <= {200, 429}, statuses
            assert live <= 3 * (flood / 2 + 1), live  # 3 targets, one probe at a time each, 2 s timeout
            assert sched_runs >= int(window / 3) - 1, sched_runs
    finally:
        await rt.stop()


async def test_on_demand_pool_queue_overflows_into_busy() -> None:
    od = OnDemand(min_interval=30.0, pool_size=2, max_waiting=4)
    running, peak = 0, 0

    async def slow(pool: asyncio.Semaphore) -> ProbeResult:
        nonlocal running, peak
        async with pool:
            running += 1
            peak = max(peak, running)
            await asyncio.sleep(0.2)
            running -= 1
        return ProbeResult.ok(0.2)

    outcomes = await asyncio.gather(*(od.run(("mailbox", f"m{i}", "imap"), None, slow) for i in range(10)),
                                    return_exceptions=True)
    busy = [o for o in outcomes if isinstance(o, Busy)]
    assert len(busy) == 6 and all(b.retry_after >= 1 for b in busy) and peak == 2
    again = await od.run(("mailbox", "m0", "imap"), None, slow)  # inside the spacing: recorded, not live
    assert not again.live and again.retry_after > 25 and od.live_probes == 4


async def _text(url: str, params: dict[str, str] | None = None, **kw: object) -> str:
    async with aiohttp.ClientSession() as http, http.get(url, params=params, **kw) as r:  # type: ignore[arg-type]
        return await r.text()


async def _status(url: str, params: dict[str, str] | None = None, method: str = "GET", **kw: object) -> int:
    async with aiohttp.ClientSession() as http, http.request(method, url, params=params, **kw) as r:  # type: ignore[arg-type]
        return r.status


async def test_lifecycle_needs_the_flag_post_same_origin_and_auth(
        env: Env, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger="exporter.web.access")
    rt = await started_runtime(env, tmp_path)
    webcfg = write_web_config(tmp_path / "web.yml", {"basic_auth_users": {"ops": bcrypt_hash()},
                                                     "basic_auth_excluded_paths": ["/-/healthy", "/-/ready"]})
    auth = {"Authorization": aiohttp.encode_basic_auth("ops", PASSWORD) if hasattr(aiohttp, "encode_basic_auth")
            else "Basic " + __import__("base64").b64encode(f"ops:{PASSWORD}".encode()).decode()}
    try:
        async with guarded_server(rt) as off:
            assert await _status(off.url("/-/reload"), method="POST") == 403  # not enabled
        async with guarded_server(rt, webcfg, enable_lifecycle=True) as on:
            url = on.url("/-/reload")
            assert await _status(url, method="POST") == 401  # auth like everything else
            assert await _status(url, method="GET", headers=auth) == 405
            assert await _status(url, method="POST", headers={**auth, "Origin": "http://evil.example",
                                                              "Content-Type": "text/plain"}) == 403
            assert await _status(url, method="POST", headers={**auth, "Sec-Fetch-Site": "cross-site"}) == 403
            assert await _status(url, method="POST", headers={**auth, "Origin": f"http://127.0.0.1:{on.port}"}) == 200
            assert await _status(url, method="POST", headers=auth) == 200  # curl/promtool-style: no Origin
            assert await _status(on.url("/-/healthy")) == 200  # excluded for kubelet/load balancers
            assert await _status(on.url("/metrics")) == 401
            async with aiohttp.ClientSession() as http, http.get(on.url("/metrics"), headers=auth) as r:
                assert r.status == 200 and r.headers["Server"] == "m365-mail-exporter"
            access = [r.getMessage() for r in caplog.records if r.name == "exporter.web.access"]
            assert any("GET /metrics 200" in line and "user=ops" in line for line in access), access
            assert any("POST /-/reload 401" in line and "user=-" in line for line in access), access
            assert not any(PASSWORD in line or auth["Authorization"][6:] in line for line in access)
        rt.config_path = None  # demo mode: nothing to reload is the client's problem, not a 500
        async with guarded_server(rt, enable_lifecycle=True) as demo:
            assert await _status(demo.url("/-/reload"), method="POST") == 409
    finally:
        await rt.stop()


async def test_route_prefix_relative_links_and_encoded_addresses(env: Env, tmp_path: Path) -> None:
    from exporter.simulator.seed import add_mailbox
    from tests.simenv import APP_ID

    odd = "o+ps&co@contoso.example"
    add_mailbox(env.state, odd, app_access=[APP_ID])
    cfg = env.config(mailboxes=[{"address": odd, "credential": "app", "checks": ["imap"]}], interval=3, timeout=2,
                     network_checks=False)
    path = tmp_path / "cfg.yml"
    path.write_text(yaml.safe_dump(cfg.model_dump(mode="json", exclude_none=True)))
    rt = Runtime(load_config(path), str(path))
    rt.start()
    try:
        async with guarded_server(rt, external_url="https://proxy.example/m365/",
                                  route_prefix="/m365", probe_min_interval=0.0) as srv:
            assert await _status(srv.url("/m365/metrics")) == 200
            assert await _status(srv.url("/metrics")) == 404
            async with aiohttp.ClientSession() as http, \
                    http.get(srv.url("/m365"), allow_redirects=False) as r:
                assert r.status == 302 and r.headers["Location"] == "/m365/"
            for _ in range(50):
                landing = await _text(srv.url("/m365/"))
                if "debug?mailbox=" in landing:
                    break
                await asyncio.sleep(0.1)
            assert 'href="metrics"' in landing and 'href="/' not in landing and "href='/" not in landing
            assert "debug?mailbox=o%2Bps%26co%40contoso.example&amp;check=imap" in landing
            for _ in range(50):
                text = await _text(srv.url("/m365/debug"), {"mailbox": odd, "check": "imap"})
                if "NOT LIVE" in text:
                    break
                await asyncio.sleep(0.1)
            assert "SUCCESS" in text and "NOT LIVE" in text, text  # recorded, no login
            text = await _text(srv.url("/m365/probe"), {"mailbox": odd, "check": "imap"})
            assert 'm365_probe_success{check="imap",mailbox="o+ps&co@contoso.example"} 1.0' in text
            assert 'm365_probe_live{check="imap",mailbox="o+ps&co@contoso.example"} 1.0' in text
    finally:
        await rt.stop()


def _recv_closed(s: socket.socket, within: float) -> bool:
    s.settimeout(within)
    try:
        return s.recv(1024) == b""
    except (ConnectionResetError, BrokenPipeError):
        return True
    except TimeoutError:
        return False


async def test_slowloris_is_closed_by_the_header_timeout_and_the_cap_evicts_idle_connections(
        env: Env, tmp_path: Path) -> None:
    rt = await started_runtime(env, tmp_path)
    try:
        async with guarded_server(rt, max_connections=5, header_timeout=1.0) as srv:
            def slowloris() -> tuple[bool, float]:
                with socket.create_connection(("127.0.0.1", srv.port), timeout=2) as s:
                    t0 = time.monotonic()
                    s.sendall(b"GET /metrics HTTP/1.1\r\nHost: x\r\n")
                    for _ in range(20):  # a header byte every 0.2 s: never completes
                        try:
                            s.sendall(b"X")
                        except OSError:
                            return True, time.monotonic() - t0
                        if _recv_closed(s, 0.2):
                            return True, time.monotonic() - t0
                    return False, time.monotonic() - t0

            closed, after = await asyncio.to_thread(slowloris)
            assert closed and after < 2.5, after
            assert srv.guard.header_timeouts >= 1

            def slow_second_request() -> tuple[bool, float]:
                """One good request on a keep-alive connection, then the next header dribbles in."""
                with socket.create_connection(("127.0.0.1", srv.port), timeout=2) as s:
                    s.sendall(b"GET /-/healthy HTTP/1.1\r\nHost: x\r\n\r\n")
                    s.settimeout(2)
                    assert s.recv(4096).startswith(b"HTTP/1.1 200")
                    time.sleep(0.2)
                    t0 = time.monotonic()
                    s.sendall(b"GET /metrics HTTP/1.1\r\n")
                    for _ in range(20):
                        try:
                            s.sendall(b"X")
                        except OSError:
                            return True, time.monotonic() - t0
                        if _recv_closed(s, 0.2):
                            return True, time.monotonic() - t0
                    return False, time.monotonic() - t0

            closed, after = await asyncio.to_thread(slow_second_request)
            assert closed and after < 2.5, after  # not the 60 s idle timeout

            idle = [socket.create_connection(("127.0.0.1", srv.port)) for _ in range(5)]
            try:
                await asyncio.sleep(0.2)
                assert await _status(srv.url("/-/healthy")) == 200  # at the cap: the longest-idle one goes
                assert srv.guard.evicted >= 1
                assert len(srv.guard.open) <= 5
            finally:
                for s in idle:
                    s.close()
            await asyncio.sleep(0.3)
            assert len(srv.guard.open) == 0  # every closed connection was released
    finally:
        await rt.stop()


def test_20000_idle_connections_keep_metrics_answering_and_probes_running(tmp_path: Path) -> None:
    """The real `serve --demo`: N idle sockets (as many as RLIMIT_NOFILE allows, at most 20,000)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    n = min(20000, hard - 300)
    if n < 2000:
        pytest.skip(f"RLIMIT_NOFILE hard limit {hard} too low for this test")
    port = free_port()
    log = tmp_path / "exporter.log"
    with open(log, "wb") as fh:
        proc = subprocess.Popen([sys.executable, "-m", "exporter", "--demo", "--demo.interval", "2s",
                                 "--web.listen-address", f"127.0.0.1:{port}", "--web.read-header-timeout", "5s"],
                                stdout=fh, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    socks: list[socket.socket] = []
    url = f"http://127.0.0.1:{port}/metrics"

    def scrape() -> tuple[float, str]:
        t0 = time.monotonic()
        with urllib.request.urlopen(url, timeout=10) as r:  # loopback only
            body = r.read().decode()
        return time.monotonic() - t0, body

    def probes_total(body: str) -> float:
        return sum(float(line.rsplit(" ", 1)[1]) for line in body.splitlines() if line.startswith("m365_probes_total{"))

    try:
        for _ in range(100):
            try:
                _, body = scrape()
                if "m365_probes_total{" in body:
                    break
            except OSError:
                pass
            time.sleep(0.2)
        before = probes_total(body)
        t_open = time.monotonic()
        for _ in range(n):
            s = socket.socket()
            s.setblocking(False)
            err = s.connect_ex(("127.0.0.1", port))
            if err not in (0, errno.EINPROGRESS):
                s.close()
                break
            socks.append(s)
        opened = time.monotonic() - t_open
        times: list[float] = []
        held: list[float] = []  # m365_web_connections seen by each scrape
        end = time.monotonic() + 8
        while time.monotonic() < end:
            dt, body = scrape()
            times.append(dt)
            held += [float(line.split()[1]) for line in body.splitlines() if line.startswith("m365_web_connections ")]
            time.sleep(0.25)
        after = probes_total(body)
        # the cap held (the rest were closed), then the header timeout (5 s) emptied it
        assert held and max(held) <= 1025 and max(held) > 100 and held[-1] < max(held), held
        assert "m365_web_connection_limit 1024.0" in body
        times.sort()
        print(f"\n{len(socks)} idle connections opened in {opened:.1f}s (server held at most {max(held):.0f}); "
              f"/metrics while open: "
              f"{len(times)} scrapes, p50 {times[len(times) // 2] * 1000:.0f} ms, max {times[-1] * 1000:.0f} ms; "
              f"probes run meanwhile {after - before:.0f}; load {os.getloadavg()[0]:.1f}")
        assert len(socks) >= n - 10
        assert times[-1] < 5.0 and times[len(times) // 2] < 1.0, times
        assert after - before >= 4  # probes kept running (demo: 10 jobs every 2 s)
        text = log.read_text(errors="replace")
        assert "Traceback" not in text and "exporter_overloaded" not in text
        assert len(text.splitlines()) < 500, len(text.splitlines())  # no log flood
    finally:
        for s in socks:
            s.close()
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


def test_web_config_refuses_what_cannot_be_honoured_by_name() -> None:
    def err(doc: dict) -> str:  # type: ignore[type-arg]
        with pytest.raises(WebConfigError) as exc:
            parse_web_config(yaml.safe_dump(doc).encode(), Path("/nonexistent/web.yml"), build_context=False)
        return str(exc.value)

    tls = {"cert_file": "a", "key_file": "b"}
    assert "'tls_config'" in err({"tls_config": {}})
    assert "RequestClientCert" in err({"tls_server_config": {**tls, "client_auth_type": "RequestClientCert"}})
    assert "needs client_ca_file" in err({"tls_server_config": {**tls, "client_auth_type":
                                                               "RequireAndVerifyClientCert"}})
    assert "one curve" in err({"tls_server_config": {**tls, "curve_preferences": ["X25519", "CurveP256"]}})
    assert "TLS 1.3 suite" in err({"tls_server_config": {**tls, "cipher_suites": ["TLS_AES_128_GCM_SHA256"]}})
    assert "TLS_RSA_WITH_RC4_128_SHA" in err({"tls_server_config": {**tls, "cipher_suites":
                                                                   ["TLS_RSA_WITH_RC4_128_SHA"]}})
    assert "inline private keys" in err({"tls_server_config": {"key": "x", "cert_file": "a", "key_file": "b"}})
    assert "min_version TLS13 is above" in err({"tls_server_config": {**tls, "min_version": "TLS13",
                                                                     "max_version": "TLS12"}})
    assert "'X-Powered-By'" in err({"http_server_config": {"headers": {"X-Powered-By": "me"}}})
    assert "'h3'" in err({"http_server_config": {"h3": True}})
    assert "not a bcrypt hash" in err({"basic_auth_users": {"alice": "plaintext"}})
    with pytest.raises(WebConfigError, match="empty web config"):
        parse_web_config(b"\n", None)
    ok = parse_web_config(b"http_server_config:\n  http2: false\n  headers:\n    X-Frame-Options: deny\n")
    assert ok.headers == (("X-Frame-Options", "deny"),) and not ok.http2


def test_web_config_file_size_is_capped(tmp_path: Path) -> None:
    from exporter.webconfig import MAX_FILE_BYTES, load_web_config

    big = tmp_path / "web.yml"
    big.write_bytes(b"#" * (MAX_FILE_BYTES + 10))
    with pytest.raises(WebConfigError, match="larger than"):
        load_web_config(big)
    with pytest.raises(WebConfigError, match=r"Is a directory|not a regular file"):
        load_web_config(tmp_path)


def test_repeated_log_records_are_rate_limited_with_a_summary() -> None:
    limit = RateLimit(burst=3, interval=0.3)
    fmt = RedactingFormatter("logfmt")

    def rec(i: int) -> logging.LogRecord:
        return logging.LogRecord("exporter.x", logging.ERROR, __file__, 1, "accept failed: %s", (i,), None)

    passed = [r for r in (rec(i) for i in range(1000)) if limit.filter(r)]
    assert len(passed) == 3 and "further similar records suppressed" in fmt.format(passed[-1])
    other = logging.LogRecord("exporter.x", logging.ERROR, __file__, 1, "another line", (), None)
    assert limit.filter(other)  # a different template is not affected
    time.sleep(0.35)
    nxt = rec(0)
    assert limit.filter(nxt) and fmt.format(nxt).endswith("suppressed=997")
    assert json.loads(RedactingFormatter("json").format(nxt))["suppressed"] == 997


def test_emfile_is_the_exporters_overload_not_the_credential_or_the_network(tmp_path: Path) -> None:
    assert classify(OSError(errno.EMFILE, "Too many open files")) is Reason.EXPORTER_OVERLOADED
    assert classify(OSError(errno.ENFILE, "File table overflow")) is Reason.EXPORTER_OVERLOADED
    assert Reason.EXPORTER_OVERLOADED.info.category is Category.OTHER
    secret = tmp_path / "secret"
    secret.write_text("s3cr3t-value\n")
    os.chmod(secret, 0o600)
    # a real descriptor table full: a child lowers its limit, fills it, then reads the secret file
    script = f"""
import resource, socket, sys
from exporter.auth.errors import TokenError
from exporter.auth.provider import read_client_material
from exporter.config import Credential
cred = Credential(tenant_id="t", client_id="c", client_secret_file={str(secret)!r})
resource.setrlimit(resource.RLIMIT_NOFILE, (64, resource.getrlimit(resource.RLIMIT_NOFILE)[1]))
held = []
try:
    while True:
        held.append(socket.socket())
except OSError:
    pass
try:
    read_client_material(cred)
except TokenError as err:
    print(err.reason.value)
"""
    p = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=30,
                       cwd=Path(__file__).parent.parent)
    assert p.stdout.strip() == "exporter_overloaded", (p.stdout, p.stderr)


def test_basic_auth_caches_verified_results_without_keeping_the_password() -> None:
    from exporter.webconfig import BasicAuth

    doc = {"basic_auth_users": {"alice": bcrypt_hash("s3cret-pass", cost=4)}}
    cfg = parse_web_config(yaml.safe_dump(doc).encode())
    auth = BasicAuth()
    assert all(auth.verify(cfg, "alice", "s3cret-pass") for _ in range(50))
    assert auth.bcrypt_calls == 1  # one bcrypt, then the cache
    assert not auth.verify(cfg, "alice", "wrong") and not auth.verify(cfg, "mallory", "s3cret-pass")
    assert auth.bcrypt_calls == 3  # unknown user: checked against a dummy hash, same cost
    assert not any(b"s3cret-pass" in key for key in auth._cache)
    rotated = parse_web_config(yaml.safe_dump({"basic_auth_users": {"alice": bcrypt_hash("new", cost=4)}}).encode())
    assert not auth.verify(rotated, "alice", "s3cret-pass")  # a changed hash is not served from the cache
    assert BasicAuth.parse_header("Basic " + "YWxpY2U6eA==") == ("alice", "x")
    assert BasicAuth.parse_header("Bearer abc") is None and BasicAuth.parse_header("Basic !!!") is None


async def test_50_back_to_back_probes_of_one_mailbox_make_one_login(env: Env) -> None:
    from tests.simenv import runtime_for

    rt = await runtime_for(env.config(network_checks=False))  # no scheduled probes: every login is /probe's
    try:
        async with guarded_server(rt) as srv:  # the documented default spacing (30 s)
            before = logins(env, "imap", "sales@contoso.example")
            tokens = env.state.token_requests()
            live = []
            async with aiohttp.ClientSession() as http:
                for _ in range(50):
                    async with http.get(srv.url("/probe"), params={"mailbox": "sales@contoso.example",
                                                                   "check": "imap"}) as r:
                        assert r.status == 200
                        live.append(r.headers["X-Probe-Live"])
            assert logins(env, "imap", "sales@contoso.example") - before == 1
            assert env.state.token_requests() - tokens <= 1
            assert live[0] == "true" and set(live[1:]) == {"false"}
            assert await _status(srv.url("/probe"), {"mailbox": "sales@contoso.example", "check": "imap"},
                                 method="HEAD") == 405  # link checkers' HEAD never logs in
    finally:
        await rt.stop()
