"""Benchmark (issue 11): CPU per 1,000 probes of the same IMAPS port, side by side in one run.

1. the exporter: full IMAP probes (TLS, greeting, CAPABILITY, AUTHENTICATE XOAUTH2, EXAMINE,
   LOGOUT) from its own saturated scheduler (imap only, --concurrency slots, interval short
   enough that every slot is always busy);
2. blackbox_exporter (Debian's prometheus-blackbox-exporter, if installed): TCP + TLS +
   banner probes (`query_response: expect ^* OK`) driven by --concurrency HTTP clients;
3. the floor: a bare asyncio TLS handshake + greeting loop in this process.
CPU is read from /proc for 1 and 2 (user + system of that process only); the simulator runs in
its own process. The three phases alternate --rounds times (fresh exporter and blackbox
processes each round, one simulator), so a drift in the machine's speed hits all of them; the
medians and the per-round ratios are printed. Goal: exporter CPU-s per 1,000 <= blackbox's.
Usage: python bench/bench_probe_cpu.py [--seconds 20 --rounds 3 --concurrency 8]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bench.bench_probes import tls_floor
from bench.common import (
    cpu_seconds,
    free_port,
    get,
    metric_sum,
    start_exporter,
    start_sim,
    stop,
    wait_ready,
    write_config,
)

BLACKBOX = "prometheus-blackbox-exporter"


def imap_probes(body: str) -> float:
    return sum(float(ln.rsplit(" ", 1)[1]) for ln in body.splitlines()
               if ln.startswith('m365_probes_total{check="imap"'))


def exporter_phase(info: dict, args: argparse.Namespace) -> dict[str, float]:  # type: ignore[type-arg]
    tmp = Path(tempfile.mkdtemp(prefix="bench-cpu-"))
    cfg = write_config(info, tmp / "cfg.yml", ["imap"], interval=1, token_interval=3600, timeout=30,
                       concurrency=args.concurrency, network_checks=False)
    port = free_port()
    exp = start_exporter(cfg, port)
    try:
        wait_ready(port, 300)
        time.sleep(3)
        url = f"http://127.0.0.1:{port}/metrics"
        n0, c0, t0 = imap_probes(get(url).decode()), cpu_seconds(exp.pid), time.time()
        time.sleep(args.seconds)
        body = get(url).decode()
        n1, c1, t1 = imap_probes(body), cpu_seconds(exp.pid), time.time()
        fails = metric_sum(body, "m365_probe_failure_info")
    finally:
        stop(exp)
    probes = n1 - n0
    return {"probes": probes, "probes_per_s": round(probes / (t1 - t0), 1), "failing_checks": fails,
            "cpu_s_per_1000": round((c1 - c0) / probes * 1000, 2)}


def blackbox_phase(info: dict, args: argparse.Namespace) -> dict[str, float] | None:  # type: ignore[type-arg]
    binary = shutil.which(BLACKBOX)
    if binary is None:
        return None
    tmp = Path(tempfile.mkdtemp(prefix="bench-bb-"))
    cfg = tmp / "blackbox.yml"
    cfg.write_text(json.dumps({"modules": {"imap_banner": {"prober": "tcp", "timeout": "10s", "tcp": {
        "tls": True, "tls_config": {"ca_file": info["ca_file"]},
        "query_response": [{"expect": "^\\* OK"}]}}}}))
    port = free_port()
    proc = subprocess.Popen([binary, f"--config.file={cfg}", f"--web.listen-address=127.0.0.1:{port}",
                             "--log.level=warn"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    target = f"http://127.0.0.1:{port}/probe?module=imap_banner&target=127.0.0.1:{info['imap_port']}"
    try:
        for _ in range(100):
            try:
                get(f"http://127.0.0.1:{port}/-/healthy", timeout=1)
                break
            except OSError:
                time.sleep(0.1)
        ok = get(target).decode()
        assert "probe_success 1" in ok, ok
        done, failed = [0], [0]
        deadline = time.monotonic() + args.seconds

        def client() -> None:
            while time.monotonic() < deadline:
                with urllib.request.urlopen(target, timeout=15) as r:
                    body = r.read()
                done[0] += 1
                if b"probe_success 1" not in body:
                    failed[0] += 1

        c0, t0 = cpu_seconds(proc.pid), time.monotonic()
        threads = [threading.Thread(target=client) for _ in range(args.concurrency)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        c1, t1 = cpu_seconds(proc.pid), time.monotonic()
    finally:
        stop(proc)
    return {"probes": done[0], "failed": failed[0], "probes_per_s": round(done[0] / (t1 - t0), 1),
            "cpu_s_per_1000": round((c1 - c0) / done[0] * 1000, 2)}


def median(values: list[float]) -> float:
    return round(statistics.median(values), 2)


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--mailboxes", type=int, default=1000, help="with a 1 s interval: the scheduler is saturated")
    p.add_argument("--seconds", type=float, default=20, help="measuring window of each phase")
    p.add_argument("--rounds", type=int, default=3,
                   help="exporter, blackbox and floor phases alternate this many times (drift hits all three)")
    p.add_argument("--concurrency", type=int, default=8)
    args = p.parse_args()
    load0 = os.getloadavg()
    sim, info = start_sim(args.mailboxes, 10)
    rounds: list[dict] = []  # type: ignore[type-arg]
    try:
        for r in range(args.rounds):
            print(f"round {r + 1}: exporter...", file=sys.stderr, flush=True)
            exporter = exporter_phase(info, args)
            print(f"round {r + 1}: blackbox...", file=sys.stderr, flush=True)
            blackbox = blackbox_phase(info, args)
            hs, hs_cpu = asyncio.run(tls_floor(info["imap_port"], info["ca_file"], args.concurrency,
                                               args.seconds / 2))
            floor = {"probes": hs, "cpu_s_per_1000": round(hs_cpu / hs * 1000, 2)}
            rounds.append({"loadavg": os.getloadavg()[0], "exporter_full_imap": exporter,
                           "blackbox_tls_banner": blackbox, "floor_asyncio_tls_greeting": floor})
            print(json.dumps(rounds[-1]), file=sys.stderr, flush=True)
    finally:
        stop(sim)
    def per_1000(phase: str) -> list[float]:
        return [r[phase]["cpu_s_per_1000"] for r in rounds if r[phase]]

    exp, bbs = per_1000("exporter_full_imap"), per_1000("blackbox_tls_banner")
    floor_cpu = median(per_1000("floor_asyncio_tls_greeting"))
    bb = median(bbs) if bbs else None
    print(json.dumps({
        "concurrency": args.concurrency, "window_s": args.seconds, "rounds": rounds,
        "loadavg_before": load0, "loadavg_after": os.getloadavg(),
        "median_cpu_s_per_1000": {"exporter_full_imap": median(exp), "blackbox_tls_banner": bb,
                                  "floor_asyncio_tls_greeting": floor_cpu},
        "ratio_exporter_vs_blackbox": round(median(exp) / bb, 2) if bb else None,
        "ratio_exporter_vs_floor": round(median(exp) / floor_cpu, 2),
        "ratio_per_round": [round(e / b, 2) for e, b in zip(exp, bbs, strict=False)],
    }, indent=2))


if __name__ == "__main__":
    main()
