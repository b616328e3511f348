"""Benchmark: /metrics rendering for N mailboxes x 4 checks: full render, a scrape after K changed
results (the incremental path) and the reference (families built the old way + generate_latest).

Usage: python bench/bench_render.py [--mailboxes 10000 --changed 500 --rounds 5]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from exporter.probes.result import ProbeResult
from tests.test_exposition import exposition, reference, rich_store


def ms(fn, rounds: int) -> float:  # type: ignore[no-untyped-def]
    times = []
    for _ in range(rounds):
        t0 = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t0) * 1000)
    return round(statistics.median(times), 1)


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--mailboxes", type=int, default=10000)
    p.add_argument("--changed", type=int, default=500, help="results recorded between two scrapes")
    p.add_argument("--rounds", type=int, default=5)
    args = p.parse_args()
    st = rich_store(args.mailboxes)
    t0 = time.perf_counter()
    e = exposition(st)
    body = e.render()
    first = (time.perf_counter() - t0) * 1000
    keys = [k for k in st.keys() if k[0] == "mailbox"]
    step = max(1, len(keys) // args.changed)
    n = 0

    def changed_scrape() -> None:
        nonlocal n
        for k in keys[n % step::step][: args.changed]:
            st.record(k, ProbeResult.ok(0.1, messages=1.0))
        n += 1
        e.render()

    result = {
        "mailboxes": args.mailboxes, "bytes": len(body), "loadavg": os.getloadavg()[0],
        "first_render_ms": round(first, 1),
        "unchanged_scrape_ms": ms(e.render, args.rounds),
        f"scrape_after_{args.changed}_changes_ms": ms(changed_scrape, args.rounds),
        "reference_full_render_ms": ms(lambda: reference(st), max(1, args.rounds // 2)),
    }
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
