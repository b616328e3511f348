"""Benchmark: /metrics rendering for N mailboxes x 4 checks, our writer vs prometheus_client's.

Usage: python bench/bench_render.py [--mailboxes 1000 --rounds 10]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from prometheus_client import generate_latest

from exporter.exposition import render_registry
from tests.test_exposition import registry_for, rich_store


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--mailboxes", type=int, default=1000)
    p.add_argument("--rounds", type=int, default=10)
    args = p.parse_args()
    reg = registry_for(rich_store(args.mailboxes))
    result = {"mailboxes": args.mailboxes, "bytes": len(render_registry(reg))}
    for name, fn in (("exporter_ms", render_registry), ("prometheus_client_ms", generate_latest)):
        times = []
        for _ in range(args.rounds):
            t0 = time.perf_counter()
            fn(reg)
            times.append((time.perf_counter() - t0) * 1000)
        result[name] = round(statistics.median(times), 1)
    result["speedup"] = round(result["prometheus_client_ms"] / result["exporter_ms"], 2)
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
