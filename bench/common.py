"""Benchmark plumbing: start the simulator and the exporter as processes, read /proc, scrape."""

from __future__ import annotations

import json
import os
import re
import socket
import ssl
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parent.parent
CLK_TCK = os.sysconf("SC_CLK_TCK")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start_sim(mailboxes: int, credentials: int, **extra: Any) -> tuple[subprocess.Popen[str], dict[str, Any]]:
    cmd = [sys.executable, str(ROOT / "bench" / "simserver.py"), "--mailboxes", str(mailboxes),
           "--credentials", str(credentials)]
    for k, v in extra.items():
        cmd += [f"--{k.replace('_', '-')}", str(v)]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True, cwd=ROOT,
                            env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert proc.stdout is not None
    info = json.loads(proc.stdout.readline())
    return proc, info


def write_config(info: dict[str, Any], path: Path, checks: list[str], **defaults: Any) -> Path:
    tls = {"ca_file": info["ca_file"]}
    cfg = {
        "defaults": {
            "https": {"authority_host": info["authority_host"], "ca_file": info["ca_file"]},
            "endpoints": {
                "imap": {"host": "127.0.0.1", "port": info["imap_port"], "tls": tls},
                "pop3": {"host": "127.0.0.1", "port": info["pop3_port"], "tls": tls},
                "smtp": {"host": "127.0.0.1", "port": info["smtp_port"], "tls": tls},
            },
            **defaults,
        },
        "unsafe_allow_short_intervals": True,  # loopback simulator: benchmarks probe every few seconds
        "credentials": {
            name: {"tenant_id": info["tenant"], "client_id": c["client_id"], "client_secret_file": c["secret_file"]}
            for name, c in info["credentials"].items()
        },
        "mailboxes": [{**m, "checks": checks} for m in info["mailboxes"]],
    }
    path.write_text(yaml.safe_dump(cfg))
    return path


def start_exporter(config: Path, port: int) -> subprocess.Popen[bytes]:
    """The exporter, its warnings and errors in exporter.log beside the config (wait_ready shows them)."""
    with open(config.parent / "exporter.log", "wb") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "exporter", "--config.file", str(config), "--web.listen-address",
             f"127.0.0.1:{port}", "--log.level", "warning"],
            cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)}, stderr=log,
        )
    EXPORTER_LOGS[port] = (proc, config.parent / "exporter.log")
    return proc


EXPORTER_LOGS: dict[int, tuple[subprocess.Popen[bytes], Path]] = {}


def start_stack(
    mailboxes: int, credentials: int, tmp_prefix: str, checks: list[str], **defaults: Any
) -> tuple[subprocess.Popen[str], dict[str, Any], subprocess.Popen[bytes], int]:
    """Start the simulator and an exporter probing it (network checks off, config in a new temp dir).

    Returns (simulator, its info, exporter, exporter port); the caller stops both processes.
    """
    sim, info = start_sim(mailboxes, credentials)
    tmp = Path(tempfile.mkdtemp(prefix=tmp_prefix))
    cfg = write_config(info, tmp / "cfg.yml", checks, **defaults, network_checks=False)
    port = free_port()
    return sim, info, start_exporter(cfg, port), port


def get(url: str, timeout: float = 30, context: ssl.SSLContext | None = None) -> bytes:
    with urllib.request.urlopen(url, timeout=timeout, context=context) as r:
        return r.read()


def ready_reason(port: int) -> str:
    """The body of /-/ready (why the exporter is not ready), for a bench's output."""
    try:
        return get(f"http://127.0.0.1:{port}/-/ready", timeout=5).decode().strip()
    except urllib.error.HTTPError as exc:
        return exc.read().decode(errors="replace").strip()
    except OSError as exc:
        return f"unreachable: {exc}"


def wait_ready(port: int, seconds: float) -> float:
    """Seconds until /-/ready answers 200; fails at once (with the log's tail) if the exporter died."""
    t0 = time.monotonic()
    proc, log = EXPORTER_LOGS.get(port, (None, None))
    while time.monotonic() - t0 < seconds:
        if proc is not None and proc.poll() is not None:
            tail = log.read_bytes()[-4000:].decode(errors="replace") if log is not None else ""
            raise RuntimeError(f"exporter exited with {proc.returncode} before ready:\n{tail}")
        try:
            get(f"http://127.0.0.1:{port}/-/ready", timeout=2)
            return time.monotonic() - t0
        except OSError:
            time.sleep(0.2)
    raise TimeoutError(f"exporter not ready within {seconds:.0f} s: {ready_reason(port)}")


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def runqueue_wait_ms(pid: int) -> float:
    """Milliseconds the process's main thread (the event loop) has spent runnable but waiting for
    a CPU (schedstat's second field): how much of a stall is the machine's, not the exporter's."""
    return int(Path(f"/proc/{pid}/task/{pid}/schedstat").read_text().split()[1]) / 1e6


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def sim_token_requests(info: dict[str, Any]) -> int:
    ctx = ssl.create_default_context(cafile=info["ca_file"])
    stats = json.loads(get(info["authority_host"] + "/_sim/stats", context=ctx))
    return sum(c["count"] for c in stats["counters"] if c["key"][0] == "token")


def metric_sum(body: str, name: str) -> float:
    """Sum of a metric's samples in an exposition. One regex scan anchored on "\n" + name (the
    regex engine searches that literal in C): the Prometheus-like scraper sums two metrics of a
    22 MB body every 2 s, and a per-line Python loop cost it ~160 ms of CPU each time, load on
    the machine that showed up in the exporter's measured stalls."""
    pattern = re.compile(r"\n" + re.escape(name) + r"(?:\{[^\n]*\})? (\S+)(?=\n)")
    text = "\n" + body + ("" if body.endswith("\n") else "\n")
    return sum(float(v) for v in pattern.findall(text))


def stop(*procs: subprocess.Popen[Any]) -> None:
    for p in procs:
        if p.poll() is None:
            p.terminate()
    for p in procs:
        try:
            p.wait(timeout=15)
        except subprocess.TimeoutExpired:
            p.kill()
