"""Redaction by value: cost of `redact` on probe-sized and large texts with many registered secrets.

Prints JSON: microseconds per call for a 200-char server line and a 20 kB transcript, with 0, 64
and 256 (the registry's bound) registered secrets of access-token size (~1.5 kB each), and the
registry's memory (windows indexed). Run: `python bench/bench_redact.py`.
"""

from __future__ import annotations

import json
import os
import secrets
import sys
import time
import tracemalloc

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from exporter.redact import SecretRegistry


def fake_token() -> str:
    return ".".join(secrets.token_urlsafe(n) for n in (40, 900, 256))


def per_call(reg: SecretRegistry, text: str, seconds: float = 0.5) -> float:
    n, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        reg.scrub(text)
        n += 1
    return (time.perf_counter() - t0) / n * 1e6


def main() -> None:
    line = "S A1 NO [AUTHENTICATIONFAILED] " + secrets.token_urlsafe(120)[:170]
    transcript = "\n".join(f"S * {i} FETCH (FLAGS (\\Seen)) " + secrets.token_hex(40) for i in range(200))
    out: dict[str, object] = {"load_average": open("/proc/loadavg").read().split()[:3]}
    for count in (0, 64, 256):
        tracemalloc.start()
        reg = SecretRegistry()
        tokens = [fake_token() for _ in range(count)]
        for t in tokens:
            reg.register(t)
        mem = tracemalloc.get_traced_memory()[0]
        tracemalloc.stop()
        echoed = line + (tokens[-1][100:140] if tokens else "")
        assert not tokens or tokens[-1][100:140] not in reg.scrub(echoed)
        out[f"secrets_{count}"] = {
            "line_200_chars_us": round(per_call(reg, echoed), 1),
            "transcript_20kB_us": round(per_call(reg, transcript), 1),
            "registry_MiB": round(mem / 2**20, 1),
        }
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
