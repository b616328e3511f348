"""Benchmark (issue 11): client CPU per full IMAP probe with and without TLS session resumption.

The simulator runs in its own process (standard loop); this process runs `probe_imap` under
uvloop, as the exporter does, --concurrency at a time, and measures its own CPU
(`time.process_time`). Rounds rotate "off" (the context offers no session and keeps none:
what a plain SSLContext does), "copy" (resumption with CPython's own session setter, which
copies the session through DER) and "on" (probes/tlsresume.py as shipped: the kept session
shared by reference, probes/sslshare.py), so a drift in the machine's speed hits all three.
Prints microseconds per probe per round, the medians, and the share of handshakes resumed.
Usage: python bench/bench_tls_resume.py [--probes 1200 --rounds 4 --concurrency 4]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
import msal
import requests

from bench.common import start_sim, stop
from exporter.config import Endpoint, TLSSettings
from exporter.probes import sslshare, tlsresume
from exporter.probes.imap import probe_imap

MODES = ("off", "copy", "on")


def app_token(info: dict[str, Any]) -> str:
    cred = next(iter(info["credentials"].values()))
    http = requests.Session()
    http.verify, http.trust_env = info["ca_file"], False  # the simulator's CA, not REQUESTS_CA_BUNDLE
    app = msal.ConfidentialClientApplication(
        cred["client_id"], client_credential=Path(cred["secret_file"]).read_text().strip(),
        authority=f"{info['authority_host']}/{info['tenant']}", http_client=http,
        instance_discovery=False, validate_authority=False)
    result = app.acquire_token_for_client(["https://outlook.office365.com/.default"])
    return str(result["access_token"])


async def run(info: dict[str, Any], args: argparse.Namespace) -> dict[str, Any]:
    token = app_token(info)
    ep = Endpoint(host="127.0.0.1", port=info["imap_port"],
                  tls=TLSSettings(ca_file=Path(info["ca_file"]), server_name="localhost"))
    user = info["mailboxes"][0]["address"]
    shipped = tlsresume.ResumingContext.session_for, tlsresume.ResumingContext.remember, tlsresume.share
    rounds: list[dict[str, Any]] = []
    for r in range(3 * args.rounds):
        mode = MODES[r % 3]
        tlsresume.ResumingContext.session_for, tlsresume.ResumingContext.remember, tlsresume.share = shipped  # type: ignore[method-assign]
        if mode == "off":
            tlsresume.ResumingContext.session_for = lambda self, key, now=None: None  # type: ignore[method-assign]
            tlsresume.ResumingContext.remember = lambda self, key, ssl_object: None  # type: ignore[method-assign]
        elif mode == "copy":
            tlsresume.share = lambda sslobj, context, session: sslshare.Shared.UNAVAILABLE
        resumed = 0

        async def one() -> None:
            nonlocal resumed
            result = await probe_imap(ep, user, token, 10.0)
            if not result.success:
                raise RuntimeError(f"probe failed: {result.reason} {result.detail}")
            resumed += any("resumed a session" in text for _, text in result.transcript.lines)

        for _ in range(args.concurrency):  # warm-up: a verified session to resume from
            await one()
        resumed = 0
        batches = max(1, args.probes // args.concurrency)
        t0 = time.process_time()
        for _ in range(batches):
            await asyncio.gather(*(one() for _ in range(args.concurrency)))
        n = batches * args.concurrency
        rounds.append({"mode": mode, "probes": n, "us_per_probe": round((time.process_time() - t0) / n * 1e6),
                       "resumed_share": round(resumed / n, 3), "loadavg": os.getloadavg()[0]})
        print(json.dumps(rounds[-1]), file=sys.stderr, flush=True)
    med = {m: statistics.median(x["us_per_probe"] for x in rounds if x["mode"] == m) for m in MODES}
    return {"rounds": rounds, "median_us_per_probe": med,
            "saved_share": {m: round(1 - med[m] / med["off"], 3) for m in MODES if m != "off"}}


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--probes", type=int, default=1200, help="probes per round")
    p.add_argument("--rounds", type=int, default=4, help="rounds of each mode (off, copy, on)")
    p.add_argument("--concurrency", type=int, default=4)
    args = p.parse_args()
    load0 = os.getloadavg()
    sim, info = start_sim(10, 1)
    try:
        import uvloop
        out = uvloop.run(run(info, args))
    finally:
        stop(sim)
    print(json.dumps({"loadavg_before": load0, "loadavg_after": os.getloadavg(), **out}, indent=2))


if __name__ == "__main__":
    main()
