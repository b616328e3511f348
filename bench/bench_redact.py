"""Redaction by value: cost of `redact` on probe-sized and large texts with many registered secrets.

Prints JSON: microseconds per call for a 200-char server line and a 20 kB transcript, with 0, 64
and 256 (the registry's bound) registered secrets of access-token size (~1.5 kB each), and the
registry's memory (windows indexed). Run: `python bench/bench_redact.py`.
"""

from __future__ import annotations

import base64
import json
import os
import secrets
import sys
import time
import tracemalloc

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from exporter.redact import ProbeSecrets, SecretRegistry


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
    out["per_probe"] = per_probe()
    print(json.dumps(out, indent=2))


PROBE_LINES = [  # what one IMAP probe scrubs: its commands and the server's replies
    "* OK The Microsoft Exchange IMAP4 service is ready. [TQBXADIAUABSADAAMQBDAEEAMAAwADIAMAAuAG4AYQBt]",
    "A1 CAPABILITY", "* CAPABILITY IMAP4 IMAP4rev1 AUTH=PLAIN AUTH=XOAUTH2 SASL-IR UIDPLUS MOVE ID UNSELECT",
    "A1 OK CAPABILITY completed.", "A2 AUTHENTICATE XOAUTH2 [SASL response]", "A2 OK AUTHENTICATE completed.",
    "A3 EXAMINE INBOX", "* 42 EXISTS", "* OK [UIDVALIDITY 14] UIDVALIDITY value",
    "A3 OK [READ-ONLY] EXAMINE completed.",
    "A4 LOGOUT", "* BYE Microsoft Exchange Server IMAP4 server signing off.", "A4 OK LOGOUT completed.",
]


def per_probe(seconds: float = 1.0) -> dict[str, float]:
    """Microseconds per probe to hold its token + SASL response and scrub its 13 lines: a
    SecretRegistry built per probe (before) vs ProbeSecrets (no index)."""
    token = fake_token()
    sasl = base64.b64encode(f"user=m1@contoso.example\x01auth=Bearer {token}\x01\x01".encode()).decode()

    def registry() -> None:
        reg = SecretRegistry(max_secrets=8)
        reg.register(token)
        reg.register(sasl)
        for ln in PROBE_LINES:
            reg.scrub(ln)

    def few() -> None:
        reg = ProbeSecrets((token, sasl))
        for ln in PROBE_LINES:
            reg.scrub(ln)

    result = {}
    for name, fn in (("secret_registry_us", registry), ("probe_secrets_us", few)):
        n, t0 = 0, time.perf_counter()
        while time.perf_counter() - t0 < seconds:
            fn()
            n += 1
        result[name] = round((time.perf_counter() - t0) / n * 1e6, 1)
    return result


if __name__ == "__main__":
    main()
