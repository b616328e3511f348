"""`m365-mail-exporter check`: run the troubleshooting checklist once from this host and print it.

Why a command and not only metrics: when mail stops, the first question is "what is broken from
*this* server's network, right now?", often asked by someone without Prometheus access, and the
answer must name the reason and the fix. The checks themselves live in checklist.py (and reuse
the exporter's probes); this module is presentation only:

- text for people: grouped by stage in dependency order, colour and a progress line on a terminal,
  plain when piped or when NO_COLOR is set (https://no-color.org);
- `--output json` for automation, a stable schema (docs/troubleshooting.md):
  {"ok": bool, "checks": [{"stage", "target", "ok", "reason", "summary", "fix", "detail",
  "duration_seconds", "facts"}]} (plus "config_errors" when the config is invalid);
- exit codes: 0 every check passed, 1 any check failed, 2 config error or unknown mailbox.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import socket
import sys
from collections.abc import Callable
from typing import TextIO

from . import __version__
from .checklist import STAGE_TITLES, CheckLine, Checklist
from .config import Config, ConfigError, load_config
from .tasks import cancel_and_wait

EXIT_OK, EXIT_FAILED, EXIT_CONFIG = 0, 1, 2
DEFAULT_CONFIG = "config/m365-mail-exporter.yml"
SPINNER = "|/-\\"


class Style:
    """ANSI styling that collapses to plain text when colour is off."""

    def __init__(self, colour: bool) -> None:
        self.colour = colour

    def _wrap(self, code: str, text: str) -> str:
        return f"\033[{code}m{text}\033[0m" if self.colour else text

    def ok(self, text: str) -> str:
        return self._wrap("32", text)

    def fail(self, text: str) -> str:
        return self._wrap("1;31", text)

    def skip(self, text: str) -> str:
        return self._wrap("33", text)

    def bold(self, text: str) -> str:
        return self._wrap("1", text)

    def dim(self, text: str) -> str:
        return self._wrap("2", text)


def use_colour(stream: TextIO, env: dict[str, str] | None = None) -> bool:
    env = dict(os.environ) if env is None else env
    if env.get("NO_COLOR"):
        return False
    if env.get("TERM") == "dumb":
        return False
    return bool(getattr(stream, "isatty", lambda: False)())


def render_line(line: CheckLine, style: Style, width: int = 34) -> str:
    if line.ok:
        status = style.ok("[ OK ]")
    elif line.skipped:
        status = style.skip("[SKIP]")
    else:
        status = style.fail("[FAIL]")
    target = f"{line.target} ({line.label})" if line.label else line.target
    out = [f"  {status} {target:<{width}} {line.detail}".rstrip()]
    if not line.ok and not line.skipped:
        pad = " " * 9
        if line.reason is not None:
            out.append(f"{pad}{style.bold('reason:')} {line.reason.value}: {line.summary}")
        elif line.summary:
            out.append(f"{pad}{style.bold('reason:')} {line.summary}")
        if line.fix:
            out.append(f"{pad}{style.bold('fix:')}    {line.fix}")
    return "\n".join(out)


def render_summary(lines: list[CheckLine], style: Style) -> str:
    failed = [x for x in lines if not x.ok and not x.skipped]
    skipped = [x for x in lines if x.skipped]
    if not failed and not skipped:
        return style.ok(f"All {len(lines)} checks passed.")
    first = failed[0] if failed else skipped[0]
    text = f"{len(failed)} of {len(lines)} checks failed"
    if skipped:
        text += f", {len(skipped)} not reached"
    text += (f". Start with the first failure ({first.stage} {first.target}): later stages often fail "
             "because of it.")
    return style.fail(text)


class Progress:
    """A one-line spinner on stderr while checks run (terminal only; erased before each result)."""

    def __init__(self, stream: TextIO, enabled: bool) -> None:
        self.stream, self.enabled = stream, enabled
        self._task: asyncio.Task[None] | None = None
        self._shown = False

    def start(self, status: Callable[[], str]) -> None:
        if self.enabled:
            self._task = asyncio.create_task(self._spin(status))

    async def _spin(self, status: Callable[[], str]) -> None:
        i = 0
        while True:
            self.stream.write(f"\r\033[K{SPINNER[i % len(SPINNER)]} {status()}")
            self.stream.flush()
            self._shown = True
            i += 1
            await asyncio.sleep(0.1)

    def clear(self) -> None:
        if self._shown:
            self.stream.write("\r\033[K")
            self.stream.flush()
            self._shown = False

    async def stop(self) -> None:
        if self._task is not None:
            await cancel_and_wait([self._task], 1.0)
            self._task = None
        self.clear()


async def run_check(
    config: Config,
    mailbox: str | None,
    output: str,
    out: TextIO,
    err: TextIO,
    config_path: str = "",
) -> int:
    """Run the checklist and print it; returns the exit code."""
    try:
        checklist = Checklist(config, mailbox)
    except KeyError as exc:
        msg = str(exc.args[0])
        if output == "json":
            out.write(json.dumps({"ok": False, "config_errors": [msg], "checks": []}, indent=2) + "\n")
        err.write(msg + "\n")
        return EXIT_CONFIG
    lines: list[CheckLine] = []
    if output == "json":
        async with checklist:
            lines = [line async for line in checklist.lines()]
        doc = {"ok": all(x.ok for x in lines), "checks": [x.to_json() for x in lines]}
        out.write(json.dumps(doc, indent=2) + "\n")
        out.flush()
        return EXIT_OK if doc["ok"] else EXIT_FAILED

    style = Style(use_colour(out))
    cfg = checklist.config
    where = f"{config_path}: " if config_path else ""
    out.write(style.bold(f"m365-mail-exporter {__version__} check from {socket.gethostname()}") + "\n")
    out.write(f"{where}{len(cfg.mailboxes)} mailbox(es), {len(cfg.credentials)} credential(s)\n")
    out.flush()
    progress = Progress(err, enabled=bool(getattr(err, "isatty", lambda: False)()) and use_colour(err))
    async with checklist:
        progress.start(lambda: f"{checklist.done}/{checklist.total} checks done, waiting for "
                               f"{checklist.waiting_for or '...'}")
        stage = ""
        try:
            async for line in checklist.lines():
                progress.clear()
                if line.stage != stage:
                    stage = line.stage
                    out.write("\n" + style.bold(STAGE_TITLES.get(stage, stage)) + "\n")
                out.write(render_line(line, style) + "\n")
                out.flush()
                lines.append(line)
        finally:
            await progress.stop()
    out.write("\n" + render_summary(lines, style) + "\n")
    out.flush()
    return EXIT_OK if all(x.ok for x in lines) else EXIT_FAILED


def main(args: argparse.Namespace) -> int:
    output = getattr(args, "output", "text")
    path = getattr(args, "config_file", DEFAULT_CONFIG)
    if getattr(args, "log_level", "info") != "debug":
        # every problem is a line of the checklist; background-style warnings would only repeat them
        logging.getLogger().setLevel(logging.ERROR)
    try:
        config = load_config(path)
    except ConfigError as exc:
        if output == "json":
            sys.stdout.write(json.dumps({"ok": False, "config_errors": exc.problems, "checks": []}, indent=2) + "\n")
        print(exc, file=sys.stderr)
        return EXIT_CONFIG
    try:
        return asyncio.run(run_check(config, getattr(args, "mailbox", None), output, sys.stdout, sys.stderr, path))
    except KeyboardInterrupt:
        print("\ninterrupted", file=sys.stderr)
        return EXIT_FAILED


def register(sub: argparse._SubParsersAction, add_common: Callable[[argparse.ArgumentParser], None]) -> None:
    p = sub.add_parser(
        "check",
        help="run every check once from this host and print the troubleshooting checklist",
        description="Run DNS, TCP, TLS, token, IMAP/POP3/SMTP login and app-registration checks once from "
                    "this host and print each result with its reason and fix. Exit 0 all ok, 1 any "
                    "failure, 2 config error.",
    )
    add_common(p)
    p.add_argument("--mailbox", default=None, help="only this mailbox (name or address), its credential and endpoints")
    p.add_argument("--output", choices=["text", "json"], default="text", help="text (default) or json")
    p.set_defaults(func=main)
