"""Benchmark (issue: core exporter): 1,000 mailboxes over 20 credentials against the simulator.

Reports token requests per refresh interval (must equal the credential count: single-flight
plus cached tokens for mail probes), /metrics scrape latency and the exporter's RSS.
Usage: python bench/bench_tokens.py [--mailboxes 1000 --credentials 20 --intervals 3]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bench.common import get, rss_mib, sim_token_requests, start_stack, stop, wait_ready


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--mailboxes", type=int, default=1000)
    p.add_argument("--credentials", type=int, default=20)
    p.add_argument("--token-interval", type=float, default=10.0)
    p.add_argument("--intervals", type=int, default=3)
    p.add_argument("--scrapes", type=int, default=200)
    args = p.parse_args()
    sim, info, exp, port = start_stack(args.mailboxes, args.credentials, "bench-tokens-", ["imap"],
                                       interval=60, token_interval=args.token_interval, timeout=15, concurrency=64)
    try:
        ready_s = wait_ready(port, 180)
        time.sleep(args.token_interval * 1.5)  # first runs are spread over start-up; measure steady state
        per_interval = []
        for _ in range(args.intervals):
            before = sim_token_requests(info)
            time.sleep(args.token_interval)
            per_interval.append(sim_token_requests(info) - before)
        lat = []
        body = b""
        for _ in range(args.scrapes):
            t0 = time.perf_counter()
            body = get(f"http://127.0.0.1:{port}/metrics")
            lat.append((time.perf_counter() - t0) * 1000)
        lat.sort()
        result = {
            "mailboxes": args.mailboxes,
            "credentials": args.credentials,
            "token_interval_s": args.token_interval,
            "ready_after_s": round(ready_s, 1),
            "token_requests_per_interval": per_interval,
            "ok": all(n == args.credentials for n in per_interval),
            "scrape_ms_p50": round(statistics.median(lat), 2),
            "scrape_ms_p99": round(lat[int(len(lat) * 0.99) - 1], 2),
            "metrics_bytes": len(body),
            "exporter_rss_mib": round(rss_mib(exp.pid), 1),
        }
        print(json.dumps(result, indent=2))
    finally:
        stop(exp, sim)


if __name__ == "__main__":
    main()
