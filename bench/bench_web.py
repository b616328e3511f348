"""Web port under hostile load: scrape answer times while N idle connections are open, and the
cost of authenticated scrapes (bcrypt once, then the verified-result cache).

    python bench/bench_web.py [--idle 20000] [--seconds 10]

Runs the real `serve --demo` (with a web config: basic auth) as a process; the idle sockets are
opened by this process (its RLIMIT_NOFILE soft limit is raised to the hard limit first).
"""

from __future__ import annotations

import argparse
import base64
import errno
import os
import resource
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.common import free_port  # noqa: E402


def percentile(values: list[float], p: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, int(p * len(values)))]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--idle", type=int, default=20000)
    ap.add_argument("--seconds", type=float, default=10.0)
    args = ap.parse_args()
    import bcrypt

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    n = min(args.idle, hard - 300)
    tmp = Path(tempfile.mkdtemp(prefix="bench-web-"))
    web = tmp / "web.yml"
    web.write_text(f"basic_auth_users:\n  bench: '{bcrypt.hashpw(b'pw', bcrypt.gensalt(10)).decode()}'\n")
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "exporter", "--demo", "--demo.interval", "5s",
                             "--web.listen-address", f"127.0.0.1:{port}", "--web.config.file", str(web),
                             "--log.level", "warning"], cwd=ROOT, stdin=subprocess.DEVNULL)
    auth = {"Authorization": "Basic " + base64.b64encode(b"bench:pw").decode()}

    def scrape() -> float:
        t0 = time.monotonic()
        req = urllib.request.Request(f"http://127.0.0.1:{port}/metrics", headers=auth)
        with urllib.request.urlopen(req, timeout=30) as r:  # loopback only
            r.read()
        return time.monotonic() - t0

    socks: list[socket.socket] = []
    try:
        for _ in range(200):
            try:
                first = scrape()
                break
            except OSError:
                time.sleep(0.1)
        cached = [scrape() for _ in range(20)]
        t0 = time.monotonic()
        for _ in range(n):
            s = socket.socket()
            s.setblocking(False)
            if s.connect_ex(("127.0.0.1", port)) not in (0, errno.EINPROGRESS):
                s.close()
                break
            socks.append(s)
        opened = time.monotonic() - t0
        under: list[float] = []
        end = time.monotonic() + args.seconds
        while time.monotonic() < end:
            under.append(scrape())
            time.sleep(0.1)
        print(f"authenticated scrape: first (bcrypt) {first * 1000:.0f} ms, cached p50 "
              f"{percentile(cached, 0.5) * 1000:.1f} ms")
        print(f"{len(socks)} idle connections opened in {opened:.1f}s; /metrics meanwhile: {len(under)} scrapes, "
              f"p50 {percentile(under, 0.5) * 1000:.0f} ms, p99 {percentile(under, 0.99) * 1000:.0f} ms, "
              f"max {max(under) * 1000:.0f} ms")
        print(f"load average: {open('/proc/loadavg').read().strip()}")
    finally:
        for s in socks:
            s.close()
        proc.terminate()
        proc.wait(timeout=15)
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
        os.remove(web)


if __name__ == "__main__":
    main()
