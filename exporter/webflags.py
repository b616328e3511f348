"""Command-line flags of the web port (`--web.*`), kept beside the code they configure.

Names follow Prometheus and exporter-toolkit (`--web.config.file`, `--web.enable-lifecycle`,
`--web.route-prefix`, `--web.external-url`); the connection limits and the `/probe` spacing
are this exporter's own, with defaults documented in docs/configuration.md.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass
from typing import TYPE_CHECKING

from .ondemand import DEFAULT_MIN_INTERVAL, DEFAULT_POOL_SIZE
from .webconfig import WebConfigWatcher
from .websecurity import WebOptions, route_prefix_for
from .webserver import (
    DEFAULT_HEADER_TIMEOUT,
    DEFAULT_IDLE_TIMEOUT,
    DEFAULT_MAX_CONNECTIONS,
    ConnectionGuard,
    GuardedSite,
    raise_nofile_limit,
)

if TYPE_CHECKING:
    from aiohttp import web

    from .runtime import Runtime


def add_web_flags(p: argparse.ArgumentParser, top: bool = True) -> None:
    """Register the flags; on a sub-command (top=False) defaults are suppressed so flags given
    before the sub-command survive."""
    d = (lambda v: v) if top else (lambda v: argparse.SUPPRESS)
    p.add_argument("--web.config.file", dest="web_config_file", default=d(""),
                   help="exporter-toolkit web config (TLS, client certificates, basic auth); re-read on change")
    p.add_argument("--web.enable-lifecycle", dest="web_enable_lifecycle", action="store_true",
                   default=d(False), help="allow POST /-/reload (same origin only)")
    p.add_argument("--web.route-prefix", dest="web_route_prefix", default=d(""),
                   help="path prefix of every route (default: the path of --web.external-url, else /)")
    p.add_argument("--web.external-url", dest="web_external_url", default=d(""),
                   help="URL under which the exporter is reachable (behind a reverse proxy)")
    p.add_argument("--web.max-connections", dest="web_max_connections", type=int,
                   default=d(DEFAULT_MAX_CONNECTIONS),
                   help=f"cap on open web connections (default {DEFAULT_MAX_CONNECTIONS})")
    p.add_argument("--web.read-header-timeout", dest="web_read_header_timeout",
                   default=d(f"{DEFAULT_HEADER_TIMEOUT:.0f}s"),
                   help="TLS handshake plus first request header must arrive within this")
    p.add_argument("--web.idle-timeout", dest="web_idle_timeout", default=d(f"{DEFAULT_IDLE_TIMEOUT:.0f}s"),
                   help="close keep-alive connections idle this long")
    p.add_argument("--web.probe-min-interval", dest="web_probe_min_interval",
                   default=d(f"{DEFAULT_MIN_INTERVAL:.0f}s"),
                   help="at most one live /probe per mailbox x check within this; recorded result otherwise")
    p.add_argument("--web.probe-concurrency", dest="web_probe_concurrency", type=int,
                   default=d(DEFAULT_POOL_SIZE), help="on-demand /probe pool size (separate from scheduled probes)")


def web_options(args: argparse.Namespace) -> WebOptions:
    """WebOptions from parsed flags; raises WebConfigError / ValueError on bad values."""
    from .config import parse_duration

    if args.web_max_connections < 1 or args.web_probe_concurrency < 1:
        raise ValueError("--web.max-connections and --web.probe-concurrency must be at least 1")
    external = args.web_external_url
    if external and not external.startswith(("http://", "https://")):
        raise ValueError(f"--web.external-url {external!r} must start with http:// or https://")
    raw = str(args.web_probe_min_interval).strip()
    min_interval = 0.0 if raw in ("0", "0s") else float(parse_duration(raw))  # 0: no spacing (tests only)
    if min_interval == float("inf") or min_interval != min_interval:
        raise ValueError("--web.probe-min-interval must be a finite duration")
    return WebOptions(
        watcher=WebConfigWatcher(args.web_config_file or None),
        enable_lifecycle=args.web_enable_lifecycle,
        route_prefix=route_prefix_for(args.web_route_prefix, external),
        external_url=external,
        probe_min_interval=min_interval,
        probe_concurrency=args.web_probe_concurrency,
    )


def timeouts(args: argparse.Namespace) -> tuple[float, float]:
    """(read-header timeout, idle timeout) in seconds."""
    from .config import parse_duration

    header, idle = float(parse_duration(args.web_read_header_timeout)), float(parse_duration(args.web_idle_timeout))
    if not (0 < header < float("inf") and 0 < idle < float("inf")):
        raise ValueError("--web.read-header-timeout and --web.idle-timeout must be positive durations")
    return header, idle


@dataclass(frozen=True)
class WebSetup:
    options: WebOptions
    header_timeout: float
    idle_timeout: float
    max_connections: int


def prepare_web(args: argparse.Namespace) -> WebSetup:
    """Everything `serve` needs for the web port, validated before anything starts; raises
    WebConfigError or ValueError (exit 2). Raises the descriptor limit as a side effect."""
    options = web_options(args)
    header, idle = timeouts(args)
    raise_nofile_limit()
    return WebSetup(options, header, idle, args.web_max_connections)


def guarded_site(runner: web.AppRunner, runtime: Runtime, host: str, port: int, setup: WebSetup) -> GuardedSite:
    """The listening site (connection cap, header timeout, per-connection TLS); its connection
    count is exported as m365_web_connections / m365_web_connection_limit."""
    guard = ConnectionGuard(setup.options.watcher, setup.max_connections, setup.header_timeout)

    def report(open_connections: int, limit: int) -> None:
        runtime.store.set_fact("m365_web_connections", float(open_connections))
        runtime.store.set_fact("m365_web_connection_limit", float(limit))

    guard.report = report
    return GuardedSite(runner, host, port, guard)


def check_web_config(args: argparse.Namespace) -> int:
    """`--config.check` for the web config: 0 valid (or none given), 2 invalid; prints the verdict."""
    if not args.web_config_file:
        return 0
    from .webconfig import WebConfigError, load_web_config

    try:
        cfg = load_web_config(args.web_config_file)
    except WebConfigError as err:
        print(err, file=sys.stderr)
        return 2
    print(f"{args.web_config_file}: OK (tls {'on' if cfg.tls else 'off'}, {len(cfg.users)} basic-auth users)")
    return 0
