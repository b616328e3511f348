"""Benchmark (issue: mail probes): 1,000 mailboxes x (imap, pop3, smtp) against the simulator.

Reports completed probes per second, exporter CPU seconds per 1,000 probes and RSS, and, in
the same run, the floor: a bare asyncio TLS handshake loop to the same IMAP port with the same
concurrency (CPU seconds per 1,000 handshakes). The ratio says how much the exporter costs on
top of the unavoidable TLS work. The simulator runs in its own process and is shared by both.
Usage: python bench/bench_probes.py [--mailboxes 1000 --seconds 30 --concurrency 64]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import ssl
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bench.common import cpu_seconds, get, metric_sum, rss_mib, start_stack, stop, wait_ready


def token_probes(body: str) -> float:
    return sum(float(ln.rsplit(" ", 1)[1]) for ln in body.splitlines()
               if ln.startswith('m365_probes_total{check="token"'))


async def tls_floor(port: int, ca_file: str, concurrency: int, seconds: float) -> tuple[int, float]:
    """Bare TLS handshakes (connect, handshake, close) to the same server; returns (count, cpu_s)."""
    ctx = ssl.create_default_context(cafile=ca_file)
    done = 0
    deadline = time.monotonic() + seconds

    async def worker() -> None:
        nonlocal done
        while time.monotonic() < deadline:
            reader, writer = await asyncio.open_connection("127.0.0.1", port, ssl=ctx, server_hostname="127.0.0.1")
            await reader.readline()  # the greeting: same first exchange as the probe
            writer.close()
            try:
                await writer.wait_closed()
            except OSError:
                pass
            done += 1

    t0 = time.process_time()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return done, time.process_time() - t0


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--mailboxes", type=int, default=1000)
    p.add_argument("--credentials", type=int, default=20)
    p.add_argument("--seconds", type=float, default=30)
    p.add_argument("--concurrency", type=int, default=64)
    args = p.parse_args()
    # an interval short enough that the scheduler is always saturated: we measure capacity
    sim, info, exp, port = start_stack(args.mailboxes, args.credentials, "bench-probes-", ["imap", "pop3", "smtp"],
                                       interval=5, token_interval=300, timeout=30, concurrency=args.concurrency)
    try:
        wait_ready(port, 600)
        url = f"http://127.0.0.1:{port}/metrics"
        body0 = get(url).decode()
        n0, c0, t0 = metric_sum(body0, "m365_probes_total"), cpu_seconds(exp.pid), time.monotonic()
        time.sleep(args.seconds)
        body1 = get(url).decode()
        n1, c1, t1 = metric_sum(body1, "m365_probes_total"), cpu_seconds(exp.pid), time.monotonic()
        # token mirrors are bookkeeping, not network probes: count only imap/pop3/smtp
        probes = (n1 - n0) - (token_probes(body1) - token_probes(body0))
        failures = metric_sum(body1, "m365_probe_failure_info")
        rss = rss_mib(exp.pid)
    finally:
        stop(exp)
    try:
        hs, hs_cpu = asyncio.run(tls_floor(info["imap_port"], info["ca_file"], args.concurrency, args.seconds / 2))
    finally:
        stop(sim)
    cpu_per_1000 = (c1 - c0) / probes * 1000
    floor_per_1000 = hs_cpu / hs * 1000
    print(json.dumps({
        "mailboxes": args.mailboxes, "checks": 3, "concurrency": args.concurrency, "cores": os.cpu_count(),
        "window_s": round(t1 - t0, 1),
        "probes": int(probes), "probes_per_s": round(probes / (t1 - t0), 1),
        "failing_checks_at_end": int(failures),
        "exporter_cpu_s_per_1000_probes": round(cpu_per_1000, 2),
        "exporter_rss_mib": round(rss, 1),
        "floor_tls_handshakes": hs, "floor_handshakes_per_s": round(hs / (args.seconds / 2), 1),
        "floor_cpu_s_per_1000_handshakes": round(floor_per_1000, 2),
        "ratio_probe_vs_floor_cpu": round(cpu_per_1000 / floor_per_1000, 2),
    }, indent=2))


if __name__ == "__main__":
    main()
