"""Benchmark: the status board (`/`) for N mailboxes x 4 checks with a third failing: build + render.

Usage: python bench/bench_board.py [--mailboxes 1000 --rounds 10]
The board is rendered per request on the event loop, so this is the time one view (or one 15 s
self-refresh of one wall screen) holds the loop.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from exporter.board import build, render
from exporter.config import Config
from exporter.probes.result import ProbeResult
from exporter.reasons import Reason
from exporter.store import ResultStore


class _Rt:
    def __init__(self, config: Config, store: ResultStore) -> None:
        self.config, self.store, self.demo = config, store, False


def runtime(n: int) -> _Rt:
    creds = {f"cred{i}": {"tenant_id": "t", "client_id": f"c{i}", "client_secret_env": "X"} for i in range(20)}
    boxes = [{"address": f"box{i}@contoso.example", "credential": f"cred{i % 20}", "checks": ["imap", "pop3", "smtp"]}
             for i in range(n)]
    cfg = Config.model_validate({"credentials": creds, "mailboxes": boxes})
    store = ResultStore()
    now = time.time()
    for i, m in enumerate(cfg.mailboxes):
        for check in ["token", *m.checks]:
            key = ("mailbox", m.label, check)
            store.ensure(key, 60, 15)
            if i % 3 == 0 and check != "smtp":
                store.record(key, ProbeResult.fail(Reason.SECRET_EXPIRED, 0.1, "AADSTS7000222: expired"))
            else:
                store.record(key, ProbeResult.ok(0.1, messages=5.0, oldest_message_timestamp=now - 300))
    for name in cfg.credentials:
        store.ensure(("credential", name), 300, 15)
        store.record(("credential", name), ProbeResult.ok(0.2, token_expiry=now + 3600))
    return _Rt(cfg, store)


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--mailboxes", type=int, default=1000)
    p.add_argument("--rounds", type=int, default=10)
    args = p.parse_args()
    rt = runtime(args.mailboxes)
    times, size = [], 0
    for _ in range(args.rounds):
        t0 = time.perf_counter()
        size = len(render(build(rt)).encode())  # type: ignore[arg-type]
        times.append((time.perf_counter() - t0) * 1000)
    print(json.dumps({"mailboxes": args.mailboxes, "checks": args.mailboxes * 4, "html_bytes": size,
                      "build_render_ms_median": round(statistics.median(times), 1),
                      "build_render_ms_max": round(max(times), 1)}, indent=2))


if __name__ == "__main__":
    main()
