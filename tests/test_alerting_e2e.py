"""End to end: exporter (--demo) -> real Prometheus -> real Alertmanager -> webhook in this test.

The paging path is only proven when it pages: Debian's `prometheus` scrapes the exporter and evaluates
the generated rules (durations shortened through the generator, nothing hand-edited), Debian's
`prometheus-alertmanager` runs the example routes and inhibitions with the receivers pointed at a
small HTTP server here. We expire the demo app's client secret in the simulator (AADSTS7000222) and
expect the page with its labels intact, then clear the fault and expect the resolved notification.

Everything listens on 127.0.0.1 with ephemeral ports, lives in pytest's tmp_path, and is killed in
`finally`. Run with `pytest -m e2e tests/test_alerting_e2e.py`.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import socket
import ssl
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, TypeVar

import pytest
import yaml

import alerts.generate as gen

ROOT = Path(__file__).resolve().parent.parent
DEMO_MODULE = ROOT / "exporter" / "simulator" / "demo.py"
ALERTS = ROOT / "alerts"
JOB = "m365-mail-exporter"
DEADLINE = 110.0  # whole test, seconds (pytest-timeout is 120)
T = TypeVar("T")

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(120)]

# Rule durations for a 1 s world: demo probes every 1 s, the demo's token_interval is 2 s.
SHORT = {
    "gap_tolerance": "3s",
    "alerts": {
        "M365MailboxAuthFailing": {"window": "3s", "for": "1s"},
        "M365TokenRefreshFailing": {"window": "4s", "for": "1s"},
        "M365TokenWrongIdentity": {"for": "1s"},
        "M365TokenMissingScope": {"for": "1s"},
        "M365ClientSecretExpiringSoon": {"for": "1s"},
        "M365ClientSecretExpired": {"for": "1s"},
        "M365TLSCertificateExpiringSoon": {"for": "1s"},
        "M365TLSCertificateInvalid": {"window": "3s", "for": "1s"},
        "M365EndpointUnreachable": {"window": "3s", "for": "1s"},
        "M365ProbesStale": {"for": "5s"},
        "M365ExporterDown": {"for": "5s"},
        "M365ConfigReloadFailed": {"for": "1s"},
    },
}


def in_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() not in ("", "0", "false", "no")


def need(*names: str) -> str:
    for name in names:
        path = shutil.which(name)
        if path:
            return path
    msg = f"{' / '.join(names)} not found (Debian: apt-get install prometheus prometheus-alertmanager)"
    if in_ci():
        pytest.fail(msg + "; required in CI")
    pytest.skip(msg)


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def http_get(url: str, timeout: float = 2.0) -> bytes:
    with urllib.request.urlopen(url, timeout=timeout) as r:  # loopback only
        return r.read()


def wait_for(what: str, fn: Callable[[], T | None], timeout: float, diag: Callable[[], str]) -> T:
    """Poll fn (every 0.25 s) until it returns a truthy value; fail with diagnostics after `timeout`."""
    end = time.monotonic() + timeout
    last_exc: Exception | None = None
    while time.monotonic() < end:
        try:
            value = fn()
            if value:
                return value
        except (OSError, ValueError, KeyError) as exc:
            last_exc = exc
        time.sleep(0.25)
    pytest.fail(f"timed out after {timeout:.0f}s waiting for {what} (last error: {last_exc!r})\n{diag()}")


class Webhook:
    """Alertmanager webhook receiver: records (path, payload) of every notification."""

    def __init__(self) -> None:
        self.received: list[tuple[str, dict[str, Any]]] = []
        self.lock = threading.Lock()
        hook = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length)
                with contextlib.suppress(ValueError), hook.lock:
                    hook.received.append((self.path, json.loads(body)))
                self.send_response(200)
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def start(self) -> Webhook:
        self.thread.start()
        return self

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    def alerts(self) -> list[tuple[str, dict[str, Any]]]:
        """(path, alert) for every alert in every notification so far."""
        with self.lock:
            return [(path, a) for path, payload in self.received for a in payload.get("alerts", [])]

    def find(self, status: str, **labels: str) -> tuple[str, dict[str, Any]] | None:
        for path, a in self.alerts():
            if a.get("status") == status and all(a["labels"].get(k) == v for k, v in labels.items()):
                return path, a
        return None

    def summary(self) -> str:
        return "\n".join(f"  {path} {a.get('status')} {a.get('labels')}" for path, a in self.alerts()) or "  (none)"


class Processes:
    """Child processes with their logs; all terminated (then killed) on close."""

    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.procs: dict[str, tuple[subprocess.Popen[bytes], Path]] = {}

    def start(self, name: str, argv: list[str], **kw: Any) -> subprocess.Popen[bytes]:
        log = self.tmp / f"{name}.log"
        with open(log, "wb") as fh:  # the child keeps its own copy of the descriptor
            p = subprocess.Popen(argv, stdout=fh, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, **kw)
        self.procs[name] = (p, log)
        return p

    def check_alive(self) -> None:
        for name, (p, _) in self.procs.items():
            if p.poll() is not None:
                pytest.fail(f"{name} exited with status {p.returncode}\n{self.logs()}")

    def log_text(self, name: str) -> str:
        return self.procs[name][1].read_text(errors="replace") if name in self.procs else ""

    def logs(self, tail: int = 25) -> str:
        out = []
        for name in self.procs:
            lines = self.log_text(name).splitlines()[-tail:]
            out.append(f"--- {name} (last {len(lines)} lines)\n" + "\n".join(lines))
        return "\n".join(out)

    def close(self) -> None:
        for p, _ in self.procs.values():
            if p.poll() is None:
                p.terminate()
        for p, _ in self.procs.values():
            try:
                p.wait(timeout=5)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait(timeout=5)


def alertmanager_config(webhook_url: str) -> dict[str, Any]:
    """The example config, receivers pointed at the test's webhook, timers shortened."""
    cfg = yaml.safe_load((ALERTS / "alertmanager.example.yml").read_text(encoding="utf-8"))

    def shorten(route: dict[str, Any]) -> None:
        route.update(group_wait="1s", group_interval="1s", repeat_interval="1m")
        for child in route.get("routes", []):
            shorten(child)

    shorten(cfg["route"])
    for rcv in cfg["receivers"]:
        for wh in rcv.get("webhook_configs", []):
            wh["url"] = f"{webhook_url}/{rcv['name']}"
            assert wh.get("send_resolved") is True
    return cfg


def sim_admin(method: str, url: str, ca_file: str | None, body: dict[str, Any] | None = None) -> int:
    """Call the simulator's loopback admin API (trusting the simulator CA the demo logged)."""
    if ca_file:
        ctx = ssl.create_default_context(cafile=ca_file)
    else:  # only for the simulator's loopback admin API, when the CA path could not be found in the log
        ctx = ssl._create_unverified_context()
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(url, data=data, method=method, headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=5, context=ctx) as r:
        return r.status


def prom_query(port: int, expr: str) -> list[dict[str, Any]]:
    url = f"http://127.0.0.1:{port}/api/v1/query?" + urllib.parse.urlencode({"query": expr})
    data = json.loads(http_get(url))
    return data["data"]["result"] if data.get("status") == "success" else []


@pytest.fixture
def stack(tmp_path: Path) -> Iterator[dict[str, Any]]:
    if not DEMO_MODULE.exists():
        pytest.skip("exporter/simulator/demo.py does not exist yet (the demo is needed for this test)")
    prometheus = need("prometheus")
    alertmanager = need("prometheus-alertmanager", "alertmanager")
    from exporter.simulator.demo import DEMO_APP_CLIENT_ID

    exp_port, sim_port, prom_port, am_port = free_port(), free_port(), free_port(), free_port()
    procs = Processes(tmp_path)
    hook = Webhook().start()
    try:
        # the exporter in demo mode (simulator in-process)
        env = {k: v for k, v in os.environ.items() if not k.lower().endswith("_proxy")}
        env["PYTHONUNBUFFERED"] = "1"
        procs.start("exporter", [
            sys.executable, "-m", "exporter", "--demo", "--web.listen-address", f"127.0.0.1:{exp_port}",
            "--demo.sim-port", str(sim_port), "--demo.interval", "1s",
        ], cwd=ROOT, env=env)

        # the rule file: generated with shortened durations, checked by promtool when available
        rules = tmp_path / "m365.rules.yml"
        rules.write_text(gen.render(gen.load_config(overrides=SHORT)), encoding="utf-8")
        if shutil.which("promtool"):
            p = subprocess.run(["promtool", "check", "rules", str(rules)], capture_output=True, text=True,
                               timeout=30, check=False)
            assert p.returncode == 0, p.stdout + p.stderr

        prom_cfg = {
            "global": {"scrape_interval": "1s", "scrape_timeout": "1s", "evaluation_interval": "1s"},
            "rule_files": [str(rules)],
            "alerting": {"alertmanagers": [{"static_configs": [{"targets": [f"127.0.0.1:{am_port}"]}]}]},
            "scrape_configs": [{"job_name": JOB, "static_configs": [{"targets": [f"127.0.0.1:{exp_port}"]}]}],
        }
        (tmp_path / "prometheus.yml").write_text(yaml.safe_dump(prom_cfg), encoding="utf-8")
        am_cfg_path = tmp_path / "alertmanager.yml"
        am_cfg_path.write_text(yaml.safe_dump(alertmanager_config(f"http://127.0.0.1:{hook.port}")),
                               encoding="utf-8")

        procs.start("alertmanager", [
            alertmanager, f"--config.file={am_cfg_path}", f"--storage.path={tmp_path / 'am-data'}",
            f"--web.listen-address=127.0.0.1:{am_port}", "--cluster.listen-address=",
        ], cwd=tmp_path)
        procs.start("prometheus", [
            prometheus, f"--config.file={tmp_path / 'prometheus.yml'}",
            f"--storage.tsdb.path={tmp_path / 'prom-data'}", f"--web.listen-address=127.0.0.1:{prom_port}",
            "--rules.alert.resend-delay=1s", "--log.level=warn",
        ], cwd=tmp_path)

        yield {
            "procs": procs, "hook": hook, "exp_port": exp_port, "sim_port": sim_port, "prom_port": prom_port,
            "am_port": am_port, "client_id": DEMO_APP_CLIENT_ID,
        }
    finally:
        procs.close()
        hook.stop()


def test_secret_expiry_pages_through_prometheus_and_alertmanager_then_resolves(stack: dict[str, Any]) -> None:
    started = time.monotonic()
    procs: Processes = stack["procs"]
    hook: Webhook = stack["hook"]
    prom, am, exp = stack["prom_port"], stack["am_port"], stack["exp_port"]

    def remaining() -> float:
        return max(1.0, DEADLINE - (time.monotonic() - started))

    def diag() -> str:
        parts = [f"webhook notifications:\n{hook.summary()}"]
        with contextlib.suppress(OSError, ValueError):
            alerts = json.loads(http_get(f"http://127.0.0.1:{prom}/api/v1/alerts"))["data"]["alerts"]
            parts.append("prometheus alerts:\n" + "\n".join(
                f"  {a['state']} {a['labels']}" for a in alerts))
        with contextlib.suppress(OSError, ValueError):
            ams = json.loads(http_get(f"http://127.0.0.1:{am}/api/v2/alerts"))
            parts.append("alertmanager alerts:\n" + "\n".join(
                f"  {a['status']} {a['labels']}" for a in ams))
        parts.append(procs.logs())
        return "\n".join(parts)

    def alive_and(fn: Callable[[], T | None]) -> Callable[[], T | None]:
        def check() -> T | None:
            procs.check_alive()
            return fn()
        return check

    # 1. everything up; Prometheus has a healthy history of the demo app's token refresh
    wait_for("exporter /metrics", alive_and(lambda: b"m365_" in http_get(f"http://127.0.0.1:{exp}/metrics")),
             min(40.0, remaining()), diag)
    wait_for("alertmanager ready", alive_and(lambda: http_get(f"http://127.0.0.1:{am}/-/ready") is not None),
             min(20.0, remaining()), diag)
    wait_for("prometheus ready", alive_and(lambda: http_get(f"http://127.0.0.1:{prom}/-/ready") is not None),
             min(20.0, remaining()), diag)
    wait_for("a successful token refresh of ece-app in Prometheus", alive_and(lambda: prom_query(
        prom, f'm365_token_refresh_success{{job="{JOB}",credential="ece-app"}} == 1')), min(30.0, remaining()),
        diag)

    # the demo's noreply mailbox fails by design (SMTP AUTH disabled): a per-mailbox page with labels intact
    path, noreply = wait_for(
        "the demo's failing noreply mailbox to page",
        alive_and(lambda: hook.find("firing", alertname="M365MailboxAuthFailing",
                                    mailbox="noreply@contoso.example", check="smtp")),
        min(30.0, remaining()), diag)
    assert path == "/m365-pager"
    assert noreply["labels"]["reason"] == "smtp_auth_disabled"
    assert noreply["labels"]["severity"] == "critical"
    assert "SMTP AUTH is disabled" in noreply["annotations"]["description"]
    assert noreply["annotations"]["reason_url"].endswith("/mail.md#smtp_auth_disabled")

    # 2. inject the fault: the demo app's client secret expires (AADSTS7000222)
    ca = re.search(r"(\S+simulator-ca\.pem)", procs.log_text("exporter"))
    fault_url = f"https://127.0.0.1:{stack['sim_port']}/_sim/faults/token/{stack['client_id']}"
    assert sim_admin("POST", fault_url, ca.group(1) if ca else None, {"aadsts": 7000222}) < 300

    def token_page() -> tuple[str, dict[str, Any]] | None:
        return hook.find("firing", alertname="M365TokenRefreshFailing", credential="ece-app",
                         reason="secret_expired") or hook.find(
            "firing", alertname="M365MailboxAuthFailing", mailbox="sales@contoso.example", reason="secret_expired")

    path, page = wait_for("the secret-expired page at the webhook", alive_and(token_page),
                          min(45.0, remaining()), diag)
    assert path == "/m365-pager", "critical alerts must go to the pager receiver"
    labels, ann = page["labels"], page["annotations"]
    assert labels["severity"] == "critical" and labels["job"] == JOB
    assert labels["reason"] == "secret_expired"
    assert labels.get("credential") == "ece-app" or labels.get("mailbox") == "sales@contoso.example"
    assert "client secret has expired (AADSTS7000222)" in ann["description"]
    assert ann["reason_url"].endswith("/token.md#secret_expired")
    assert ann["runbook_url"].endswith(f"/{labels['alertname']}.md")
    assert ann["summary"]

    # per-mailbox alerts with the token's reason are inhibited by the credential's alert (example config rule 3)
    if labels["alertname"] == "M365TokenRefreshFailing":
        am_alerts = json.loads(http_get(f"http://127.0.0.1:{am}/api/v2/alerts"))
        for a in am_alerts:
            if a["labels"].get("alertname") == "M365MailboxAuthFailing" and a["labels"].get("reason") == (
                    "secret_expired"):
                assert a["status"]["inhibitedBy"], f"not inhibited: {a['labels']} {a['status']}"

    # 3. clear the fault: the next refresh succeeds and the resolved notification arrives
    assert sim_admin("DELETE", fault_url, ca.group(1) if ca else None) < 300
    resolved_labels = {k: labels[k] for k in ("alertname", "reason") if k in labels}
    resolved_labels.update({k: labels[k] for k in ("credential", "mailbox", "check") if k in labels})
    path, resolved = wait_for("the resolved notification", alive_and(lambda: hook.find("resolved", **resolved_labels)),
                              min(45.0, remaining()), diag)
    assert path == "/m365-pager"
    assert resolved["endsAt"] and not resolved["endsAt"].startswith("0001")
    assert time.monotonic() - started < DEADLINE + 5
    if os.environ.get("E2E_VERBOSE"):
        print(diag())
