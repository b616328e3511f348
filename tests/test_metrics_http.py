"""/metrics content negotiation over a real socket with the standard library's HTTP client:
gzip when asked, OpenMetrics when negotiated (parsed by prometheus_client's OpenMetrics parser)."""

from __future__ import annotations

import asyncio
import gzip
import http.client
from pathlib import Path

from prometheus_client.openmetrics.parser import text_string_to_metric_families as parse_openmetrics
from prometheus_client.parser import text_string_to_metric_families as parse_text

from exporter.config import load_config
from exporter.runtime import Runtime
from tests.simenv import Env, env_fixture
from tests.test_web import serving, wait_ready

env = env_fixture()

PROMETHEUS_ACCEPT = ("application/openmetrics-text;version=1.0.0,application/openmetrics-text;version=0.0.1;q=0.75,"
                     "text/plain;version=0.0.4;q=0.5,*/*;q=0.1")


def fetch(port: int, headers: dict[str, str]) -> tuple[dict[str, str], bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.request("GET", "/metrics", headers=headers)
        resp = conn.getresponse()
        assert resp.status == 200
        return {k.lower(): v for k, v in resp.getheaders()}, resp.read()
    finally:
        conn.close()


async def test_gzip_and_openmetrics_negotiation(env: Env, tmp_path: Path) -> None:
    async with serving(env, tmp_path) as (_, _, client):
        await wait_ready(client)
        port = client.server.port
        assert port is not None
        h, plain = await asyncio.to_thread(fetch, port, {})
        assert h["content-type"].startswith("text/plain; version=0.0.4") and "content-encoding" not in h
        names = {f.name for f in parse_text(plain.decode())}
        assert {"m365_probe_success", "m365_exporter_build_info", "python_info", "python_gc_objects_collected",
                "process_resident_memory_bytes"} <= names

        h, gz = await asyncio.to_thread(fetch, port, {"Accept-Encoding": "gzip, deflate"})
        assert h["content-encoding"] == "gzip" and h["content-type"].startswith("text/plain")
        text = gzip.decompress(gz).decode()
        assert len(gz) < len(text) / 3 and "m365_probes_total{" in text

        h, om = await asyncio.to_thread(fetch, port, {"Accept": PROMETHEUS_ACCEPT, "Accept-Encoding": "gzip"})
        assert h["content-type"].startswith("application/openmetrics-text; version=1.0.0")
        body = gzip.decompress(om).decode()
        assert body.endswith("# EOF\n")
        fams = {f.name: f for f in parse_openmetrics(body)}  # raises on any OpenMetrics syntax error
        assert fams["m365_probes"].type == "counter" and fams["m365_probe_success"].type == "gauge"
        assert {s.labels["check"] for s in fams["m365_probe_success"].samples} >= {"imap", "token"}


def test_build_info_labels(env: Env, tmp_path: Path) -> None:
    from tests.test_web import write_config

    rt = Runtime(load_config(write_config(env, tmp_path / "c.yml")))
    body = rt.renderer.render_sync().decode()
    line = next(ln for ln in body.splitlines() if ln.startswith("m365_exporter_build_info{"))
    for label in ("version=", "revision=", "branch=", "python_version=", "msal_version="):
        assert label in line
