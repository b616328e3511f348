"""Command line: `serve` (default), `--demo`, `--config.check`, `check` and `login`.

Flags follow Prometheus exporter conventions (`--config.file`, `--web.listen-address`,
`--log.level`, `--log.format`). Exit codes: 0 ok, 1 failure (check found problems / runtime
error), 2 configuration error.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import signal
import sys
import tempfile
from pathlib import Path

from . import __version__
from .config import ConfigError, load_config, parse_duration

DEFAULT_PORT = 9731
DEFAULT_LISTEN = f":{DEFAULT_PORT}"
log = logging.getLogger("exporter")


DEFAULT_CONFIG = "config/m365-mail-exporter.yml"


def _add_common(p: argparse.ArgumentParser, top: bool = False) -> None:
    """Shared flags; sub-commands suppress defaults so flags given before the sub-command survive."""
    d = (lambda v: v) if top else (lambda v: argparse.SUPPRESS)
    p.add_argument("--config.file", dest="config_file", default=d(DEFAULT_CONFIG),
                   help=f"path to the YAML config (default: {DEFAULT_CONFIG})")
    p.add_argument("--log.level", dest="log_level", default=d("info"), choices=["debug", "info", "warning", "error"])
    p.add_argument("--log.format", dest="log_format", default=d("logfmt"), choices=["logfmt", "json"])


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="m365-mail-exporter",
        description="Prometheus exporter and alerting probe for Microsoft 365 mail over OAuth2 (XOAUTH2).",
    )
    p.add_argument("--version", action="store_true", help="print version, revision, branch, build date, Python and "
                   "MSAL versions and exit")
    _add_common(p, top=True)
    p.add_argument("--web.listen-address", dest="listen", default=DEFAULT_LISTEN,
                   help="address to serve /metrics on (default: %(default)s)")
    p.add_argument("--config.check", dest="config_check", action="store_true",
                   help="validate the config file and exit (0 valid, 2 invalid)")
    p.add_argument("--demo", action="store_true",
                   help="run against the bundled Microsoft 365 simulator on loopback (no tenant needed)")
    p.add_argument("--demo.sim-port", dest="demo_sim_port", type=int, default=0,
                   help="fixed port for the demo simulator's identity/admin API (default: random)")
    p.add_argument("--demo.interval", dest="demo_interval", default="15s", help="probe interval in demo mode")
    sub = p.add_subparsers(dest="command")
    s = sub.add_parser("serve", help="run the exporter (default)")
    _add_common(s)
    s.add_argument("--web.listen-address", dest="listen", default=argparse.SUPPRESS)
    from .commands import register_commands

    register_commands(sub, _add_common)
    return p


def parse_listen(addr: str) -> tuple[str, int]:
    host, _, port = addr.rpartition(":")
    host = host.strip("[]") or "0.0.0.0"
    return host, int(port)


async def serve(args: argparse.Namespace) -> int:
    from aiohttp import web

    from .runtime import Runtime
    from .web import make_app

    demo = None
    tmp = None
    if args.demo:
        from .simulator.demo import Demo

        tmp = tempfile.TemporaryDirectory(prefix="m365-demo-")
        demo = Demo(Path(tmp.name), args.demo_sim_port, parse_duration(args.demo_interval))
        config = await demo.start()
        assert demo.sim is not None
        log.info("demo simulator running: identity platform %s (admin API /_sim/...), CA %s",
                 demo.sim.authority_host, demo.sim.ca_file)
        config_path = None
    else:
        try:
            config = await asyncio.to_thread(load_config, args.config_file)
        except ConfigError as err:
            print(err, file=sys.stderr)
            return 2
        config_path = args.config_file

    runtime = Runtime(config, config_path)
    runtime.start()
    from .eventloop import freeze_after_startup

    freezer = asyncio.create_task(freeze_after_startup(runtime.ready))
    app = make_app(runtime)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    host, port = parse_listen(args.listen)
    site = web.TCPSite(runner, host, port)
    try:
        await site.start()
    except OSError as exc:
        log.error("cannot listen on %s: %s", args.listen, exc.strerror or exc)
        await runtime.stop()
        await runner.cleanup()
        return 1
    log.info("m365-mail-exporter %s listening on %s: %d mailboxes, %d credentials", __version__, args.listen,
             len(config.mailboxes), len(config.credentials))

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    loop.add_signal_handler(signal.SIGINT, stop.set)
    loop.add_signal_handler(signal.SIGHUP, lambda: asyncio.ensure_future(runtime.reload()))
    await stop.wait()
    log.info("shutting down")
    freezer.cancel()
    await runner.cleanup()
    await runtime.stop()
    if demo is not None:
        await demo.close()
    if tmp is not None:
        with contextlib.suppress(OSError):
            tmp.cleanup()
    return 0


def main(argv: list[str] | None = None) -> int:
    from .logs import setup_logging

    args = build_parser().parse_args(argv)
    if args.version:
        from .buildinfo import build_info

        print(build_info().text(), end="")
        return 0
    setup_logging(args.log_level, args.log_format)
    if args.command not in (None, "serve"):
        return int(args.func(args))
    if args.config_check:
        try:
            cfg = load_config(args.config_file)
        except ConfigError as err:
            print(err, file=sys.stderr)
            return 2
        print(f"{args.config_file}: OK ({len(cfg.mailboxes)} mailboxes, {len(cfg.credentials)} credentials)")
        return 0
    from .eventloop import run

    try:
        return run(serve(args))
    except KeyboardInterrupt:
        return 0
