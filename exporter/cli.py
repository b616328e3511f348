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
import sys
import tempfile
from pathlib import Path

from . import __version__, oscompat
from .config import ConfigError, load_config, parse_duration
from .listen import parse_listen_address

DEFAULT_PORT = 9731
DEFAULT_LISTEN = f":{DEFAULT_PORT}"
log = logging.getLogger("exporter")


DEFAULT_CONFIG = oscompat.default_config_path()  # POSIX: config/...; Windows: under %ProgramData%


def _add_common(p: argparse.ArgumentParser, top: bool = False) -> None:
    """Shared flags; sub-commands suppress defaults so flags given before the sub-command survive."""
    d = (lambda v: v) if top else (lambda v: argparse.SUPPRESS)
    p.add_argument("--config.file", dest="config_file", default=d(DEFAULT_CONFIG),
                   help=f"path to the YAML config (default: {DEFAULT_CONFIG})")
    p.add_argument("--log.level", dest="log_level", default=d("info"),
                   choices=["debug", "info", "warn", "warning", "error"], help="warn is warning (Go exporters' name)")
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
                   help="validate the config file (and --web.config.file) and exit (0 valid, 2 invalid)")
    from .webflags import add_web_flags

    add_web_flags(p)
    p.add_argument("--demo", action="store_true",
                   help="run against the bundled Microsoft 365 simulator on loopback (no tenant needed)")
    p.add_argument("--demo.sim-port", dest="demo_sim_port", type=int, default=0,
                   help="fixed port for the demo simulator's identity/admin API (default: random)")
    p.add_argument("--demo.interval", dest="demo_interval", default="15s", help="probe interval in demo mode")
    sub = p.add_subparsers(dest="command")
    s = sub.add_parser("serve", help="run the exporter (default)")
    _add_common(s)
    s.add_argument("--web.listen-address", dest="listen", default=argparse.SUPPRESS)
    from .sharding import add_shard_flags

    add_shard_flags(p, s)
    add_web_flags(s, top=False)
    from .commands import register_commands

    register_commands(sub, _add_common)
    return p


def parse_listen(addr: str) -> tuple[str, int]:
    """(host, port) to bind; all interfaces when the host is empty (see listen.py)."""
    host, port = parse_listen_address(addr)
    return host or "0.0.0.0", port


def usage_errors(args: argparse.Namespace) -> list[str]:
    """Flag values that cannot work, one line each (checked before anything starts)."""
    out = []
    try:
        parse_listen_address(args.listen)
    except ValueError as exc:
        out.append(f"--web.listen-address: {exc}")
    if args.demo:
        if not 0 <= args.demo_sim_port <= 65535:
            out.append(f"--demo.sim-port: {args.demo_sim_port} is not a port (0-65535, 0 = random)")
        try:
            if parse_duration(args.demo_interval) < 1.0:
                out.append(f"--demo.interval: {args.demo_interval} is shorter than 1s")
        except ValueError as exc:
            out.append(f"--demo.interval: {exc}")
    return out


async def serve(args: argparse.Namespace) -> int:
    from aiohttp import web

    from .runtime import Runtime
    from .sharding import ShardError, shard_from_args
    from .web import make_app
    from .webconfig import WebConfigError
    from .webflags import guarded_site, prepare_web

    try:
        shard = shard_from_args(args)
        web_setup = prepare_web(args)
    except (ShardError, WebConfigError, ValueError) as err:
        print(err, file=sys.stderr)
        return 2
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
        if config.unsafe_allow_short_intervals:
            log.warning("unsafe_allow_short_intervals is set: the minimum probe intervals that protect "
                        "Microsoft's endpoints are waived (meant for the demo and tests only)")

    runtime = Runtime(config, config_path)
    runtime.shard = shard
    runtime.demo = demo is not None
    app = make_app(runtime, web_setup.options)
    runner = web.AppRunner(app, access_log=None, keepalive_timeout=web_setup.idle_timeout)
    await runner.setup()
    host, port = parse_listen(args.listen)
    site = guarded_site(runner, runtime, host, port, web_setup)
    try:
        await site.start()
    except OSError as exc:
        log.error("cannot listen on %s: %s", args.listen, exc.strerror or exc)
        await runner.cleanup()
        if demo is not None:
            await demo.close()
        return 1
    runtime.start()  # probes start only once the port is ours: a second instance never probes
    from .eventloop import freeze_after_startup
    from .tasks import cancel_and_wait

    freezer = asyncio.create_task(freeze_after_startup(runtime.ready))
    warmer = asyncio.create_task(runtime.renderer.keep_warm())  # /metrics pre-rendered off the scrape path
    log.info("m365-mail-exporter %s listening on %s: %d mailboxes, %d credentials (shard %d of %d)", __version__,
             args.listen, len(runtime.config.mailboxes), len(runtime.config.credentials), shard.index, shard.total)

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    triggers = oscompat.install_triggers(loop, stop.set, runtime.reload, config_path)  # SIGHUP / Windows events
    await stop.wait()
    await triggers.close()  # no reload may start jobs again while we stop
    log.info("shutting down")
    await cancel_and_wait([freezer, warmer])
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
    if args.command in (None, "serve") and (errors := usage_errors(args)):
        for line in errors:
            print(f"m365-mail-exporter: {line}", file=sys.stderr)
        return 2
    if args.command not in (None, "serve"):
        return int(args.func(args))
    if args.config_check:
        from .configcheck import environment_problems
        from .webflags import check_web_config

        rc = check_web_config(args)  # first, so both files' problems show in one run
        try:
            cfg = load_config(args.config_file)
        except ConfigError as err:
            print(err, file=sys.stderr)
            return 2
        problems = environment_problems(cfg)
        if problems:
            print("\n".join(f"{args.config_file}: {p}" for p in problems), file=sys.stderr)
            return 2
        print(f"{args.config_file}: OK ({len(cfg.mailboxes)} mailboxes, {len(cfg.credentials)} credentials)")
        return rc
    from .eventloop import run

    try:
        return run(serve(args))
    except KeyboardInterrupt:
        return 0
