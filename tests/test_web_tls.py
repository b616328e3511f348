"""TLS, client certificates and basic auth on the web port, checked with real clients.

Debian's Prometheus scrapes the exporter over TLS with basic auth and with a client
certificate, and must fail cleanly (target down, a lastError that says why) with a wrong
password, an untrusted client certificate and plain HTTP. openssl s_client checks the
negotiated TLS version; a certificate rotated on disk is served to the next connection without
a restart; exporter-toolkit's documented example file works unchanged.
"""

from __future__ import annotations

import asyncio
import json
import shutil
import ssl
import sys
import time
from pathlib import Path

import aiohttp
import pytest
import yaml

from exporter.config import load_config
from exporter.runtime import Runtime
from exporter.webconfig import RECHECK_SECONDS
from tests.simenv import Env, env_fixture
from tests.test_alerting_e2e import Processes, free_port, need
from tests.webenv import PASSWORD, Certs, bcrypt_hash, guarded_server, write_web_config

env = env_fixture()
DATA = Path(__file__).parent / "data"


async def started_runtime(env: Env, tmp_path: Path) -> Runtime:
    cfg = env.config(interval=2, token_interval=30, network_checks=False)
    path = tmp_path / "cfg.yml"
    path.write_text(yaml.safe_dump(cfg.model_dump(mode="json", exclude_none=True)))
    rt = Runtime(load_config(path), str(path))
    rt.start()
    return rt


async def _get_json(url: str) -> dict:  # type: ignore[type-arg]
    async with aiohttp.ClientSession() as http, http.get(url, timeout=aiohttp.ClientTimeout(total=3)) as r:
        return json.loads(await r.text())


async def test_prometheus_scrapes_over_tls_with_basic_auth_and_client_certificate(env: Env, tmp_path: Path) -> None:
    prometheus = need("prometheus")
    certs = Certs.make(tmp_path / "certs")
    basic = write_web_config(tmp_path / "basic.yml", {
        "tls_server_config": {"cert_file": "certs/server.crt", "key_file": "certs/server.key"},
        "basic_auth_users": {"prometheus": bcrypt_hash()},
    })
    mtls = write_web_config(tmp_path / "mtls.yml", {
        "tls_server_config": {"cert_file": "certs/server.crt", "key_file": "certs/server.key",
                              "client_auth_type": "RequireAndVerifyClientCert", "client_ca_file": "certs/ca.crt"},
    })
    rt = await started_runtime(env, tmp_path)
    procs = Processes(tmp_path)
    try:
        async with guarded_server(rt, basic) as a, guarded_server(rt, mtls) as b:
            d = certs.dir
            tls = {"ca_file": str(d / "ca.crt")}

            def job(name: str, port: int, scheme: str = "https", **extra: object) -> dict:  # type: ignore[type-arg]
                return {"job_name": name, "scheme": scheme, "static_configs": [{"targets": [f"127.0.0.1:{port}"]}],
                        **extra}

            jobs = [
                job("basic_ok", a.port, tls_config=tls, basic_auth={"username": "prometheus", "password": PASSWORD}),
                job("basic_wrong", a.port, tls_config=tls, basic_auth={"username": "prometheus", "password": "nope"}),
                job("basic_plain_http", a.port, scheme="http",
                    basic_auth={"username": "prometheus", "password": PASSWORD}),
                job("cert_ok", b.port, tls_config={**tls, "cert_file": str(d / "client.crt"),
                                                   "key_file": str(d / "client.key")}),
                job("cert_untrusted", b.port, tls_config={**tls, "cert_file": str(d / "other.crt"),
                                                          "key_file": str(d / "other.key")}),
                job("cert_none", b.port, tls_config=tls),
            ]
            prom_cfg = {"global": {"scrape_interval": "1s", "scrape_timeout": "1s"}, "scrape_configs": jobs}
            (tmp_path / "prometheus.yml").write_text(yaml.safe_dump(prom_cfg))
            port = free_port()
            procs.start("prometheus", [prometheus, f"--config.file={tmp_path / 'prometheus.yml'}",
                                       f"--storage.tsdb.path={tmp_path / 'prom-data'}",
                                       f"--web.listen-address=127.0.0.1:{port}"])
            api = f"http://127.0.0.1:{port}/api/v1"
            targets: dict[str, dict] = {}  # type: ignore[type-arg]
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline:
                procs.check_alive()
                try:
                    doc = await _get_json(api + "/targets")
                    targets = {t["labels"]["job"]: t for t in doc["data"]["activeTargets"]}
                except (aiohttp.ClientError, OSError, KeyError, ValueError, TimeoutError):
                    targets = {}
                # two good scrapes in a row (the first one pays bcrypt's 100 ms on a busy machine)
                if len(targets) == len(jobs) and all(t["health"] != "unknown" for t in targets.values()) and \
                        targets["basic_ok"]["health"] == targets["cert_ok"]["health"] == "up" and \
                        "401" in targets["basic_wrong"]["lastError"]:
                    break
                await asyncio.sleep(0.5)
            assert len(targets) == len(jobs), procs.logs()
            health = {name: (t["health"], t["lastError"]) for name, t in targets.items()}
            assert health["basic_ok"] == ("up", ""), health
            assert health["cert_ok"] == ("up", ""), health
            assert health["basic_wrong"][0] == "down" and "401" in health["basic_wrong"][1], health
            assert health["basic_plain_http"][0] == "down", health
            assert health["cert_untrusted"][0] == "down", health
            assert health["cert_none"][0] == "down", health
            up = await _get_json(api + "/query?query=up")
            values = {r["metric"]["job"]: r["value"][1] for r in up["data"]["result"]}
            assert values == {"basic_ok": "1", "cert_ok": "1", "basic_wrong": "0", "basic_plain_http": "0",
                              "cert_untrusted": "0", "cert_none": "0"}, values
            scraped = await _get_json(api + '/query?query=m365_probe_success{job="basic_ok",check="imap"}')
            assert scraped["data"]["result"], scraped  # real metrics came through TLS + auth
            assert b.guard.tls_failures >= 2  # untrusted and missing client certificates refused in the handshake
    finally:
        procs.close()
        await rt.stop()


async def _openssl(port: int, *flags: str) -> tuple[int, str]:
    proc = await asyncio.create_subprocess_exec(
        "openssl", "s_client", "-connect", f"127.0.0.1:{port}", *flags, stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT)
    out, _ = await asyncio.wait_for(proc.communicate(), 15)
    return proc.returncode or 0, out.decode(errors="replace")


async def test_tls_versions_rotation_and_the_exporter_toolkit_example(env: Env, tmp_path: Path) -> None:
    if shutil.which("openssl") is None:
        pytest.skip("openssl not installed")
    certs = Certs.make(tmp_path)
    tls13 = write_web_config(tmp_path / "tls13.yml", {
        "tls_server_config": {"cert_file": "server.crt", "key_file": "server.key", "min_version": "TLS13"}})
    default = write_web_config(tmp_path / "default.yml", {
        "tls_server_config": {"cert_file": "server.crt", "key_file": "server.key", "max_version": "TLS12",
                              "cipher_suites": ["TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256"],
                              "curve_preferences": ["CurveP384"]}})
    shutil.copy(DATA / "exporter-toolkit-web-config.yml", tmp_path / "web-config.yml")  # unchanged
    rt = await started_runtime(env, tmp_path)
    try:
        async with guarded_server(rt, tls13) as s13, guarded_server(rt, default) as s12, \
                guarded_server(rt, tmp_path / "web-config.yml") as example:
            rc, out = await _openssl(s13.port, "-tls1_2", "-CAfile", str(tmp_path / "ca.crt"))
            assert rc != 0 and "TLSv1.2" not in out.split("New, ")[-1][:10], out  # TLS 1.2 refused
            rc, out = await _openssl(s13.port, "-tls1_3", "-CAfile", str(tmp_path / "ca.crt"))
            assert rc == 0 and "New, TLSv1.3" in out and "Verify return code: 0 (ok)" in out, out
            rc, out = await _openssl(s12.port, "-CAfile", str(tmp_path / "ca.crt"))
            assert rc == 0 and "New, TLSv1.2, Cipher is ECDHE-ECDSA-AES128-GCM-SHA256" in out, out
            assert "Server Temp Key: ECDH, secp384r1" in out or "P-384" in out, out
            rc, out = await _openssl(s12.port, "-tls1_3")
            assert rc != 0, out  # max_version TLS12

            # the documented example: TLS + bcrypt users + excluded health paths, as published
            ctx = ssl.create_default_context(cafile=str(tmp_path / "ca.crt"))
            async with aiohttp.ClientSession() as http:
                async with http.get(example.url("/-/healthy"), ssl=ctx) as r:
                    assert r.status == 200
                async with http.get(example.url("/metrics"), ssl=ctx) as r:
                    assert r.status == 401 and r.headers["WWW-Authenticate"].startswith("Basic")
                wrong = {"Authorization": "Basic YWxpY2U6eA=="}  # alice:x
                async with http.get(example.url("/metrics"), ssl=ctx, headers=wrong) as r:
                    assert r.status == 401
                assert [u for u, _ in example.options.watcher.current().users] == ["alice", "bob"]

            # rotation: a new certificate on disk is served to the next connection, no restart
            def serial() -> int:
                import socket

                with socket.create_connection(("127.0.0.1", s13.port), timeout=5) as raw, \
                        ctx.wrap_socket(raw, server_hostname="127.0.0.1") as tls:
                    der = tls.getpeercert(binary_form=True)
                from cryptography import x509

                return x509.load_der_x509_certificate(der or b"").serial_number

            before = await asyncio.to_thread(serial)
            certs.rotate_server()
            after = before
            deadline = time.monotonic() + RECHECK_SECONDS * 3 + 2
            while after == before and time.monotonic() < deadline:
                await asyncio.sleep(0.5)
                after = await asyncio.to_thread(serial)
            assert after != before, "rotated certificate not picked up"
            assert s13.options.watcher.reloads >= 1
    finally:
        await rt.stop()


def test_web_config_check_and_serve_refuse_a_bad_file(tmp_path: Path) -> None:
    """`--config.check` validates the web config too; `serve` exits 2 with the problem named."""
    import subprocess

    cfg = Path(__file__).parent.parent / "config" / "example.yml"
    bad = write_web_config(tmp_path / "web.yml", {"tls_server_config": {"cert_file": "x.crt", "key_file": "x.key",
                                                                         "client_auth_type": "RequireAnyClientCert"},
                                                  "basic_auth_user": {}})
    for argv in (["--config.check"], []):
        p = subprocess.run([sys.executable, "-m", "exporter", "--config.file", str(cfg), "--web.config.file",
                            str(bad), "--web.listen-address", f"127.0.0.1:{free_port()}", *argv],
                           capture_output=True, text=True, timeout=30)
        assert p.returncode == 2, (p.stdout, p.stderr)
        assert "basic_auth_user" in p.stderr and "RequireAnyClientCert" in p.stderr, p.stderr
        assert "Traceback" not in p.stderr
