"""`m365-mail-exporter check`: run the troubleshooting checklist once from this host and print it.

Why a command and not only metrics: when mail stops, the first question is "what is broken from
*this* server's network, right now?", often asked by someone without Prometheus access, and the
answer must name the reason and the fix. The checks themselves live in checklist.py (and reuse
the exporter's probes); this module is presentation only:

- text for people: one row per check, by stage in dependency order, within 80 columns when piped
  (RDP/PuTTY consoles); failures point at a numbered root cause, printed once below with the
  affected mailboxes, the detail and the fix (three root causes are three blocks, not twelve);
  colour and a progress line on a terminal, plain when piped or when NO_COLOR is set;
- `--output json` for automation, a stable schema (docs/troubleshooting.md):
  {"ok": bool, "checks": [{"stage", "target", "ok", "reason", "summary", "fix", "detail",
  "duration_seconds", "facts", "skipped", "warning", "root_cause"}], "root_causes": [{"id",
  "reason", "scope", "summary", "fix", "detail", "checks"}]} (plus "config_errors");
- `--demo`: the same against the bundled simulator, no config needed;
- exit codes: 0 every check passed (warnings included), 1 any check failed, 2 config error.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import shutil
import socket
import sys
import textwrap
from collections.abc import Callable
from pathlib import Path
from typing import Any, TextIO

from .. import __version__, oscompat
from ..config import Config, ConfigError, load_config
from ..redact import redact
from ..tasks import cancel_and_wait
from .checklist import STAGE_TITLES, CheckLine, Checklist

EXIT_OK, EXIT_FAILED, EXIT_CONFIG = 0, 1, 2
DEFAULT_CONFIG = oscompat.default_config_path()
SPINNER = "|/-\\"
DEFAULT_WIDTH = 80  # RDP/PuTTY consoles and pasted tickets
TARGET_WIDTH = 30
DETAIL_LINES = 3  # a 300-character AADSTS text is cut here; the JSON output keeps it whole


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
    return bool(getattr(stream, "isatty", lambda: False)()) and oscompat.enable_ansi(stream)  # Windows: VT mode


def terminal_width(stream: TextIO) -> int:
    """80 columns when piped (logs, tickets, RDP/PuTTY defaults); the terminal's width, within
    [60, 120], on a terminal."""
    if not getattr(stream, "isatty", lambda: False)():
        return DEFAULT_WIDTH
    return max(60, min(120, shutil.get_terminal_size((DEFAULT_WIDTH, 24)).columns))


def fit(text: str, width: int) -> str:
    """One line of at most `width` characters (ASCII ellipsis: old consoles lack a glyph)."""
    text = " ".join(text.split())
    return text if len(text) <= width else text[: max(0, width - 3)].rstrip() + "..."


def wrap(label: str, text: str, width: int, indent: int, max_lines: int | None = None) -> list[str]:
    """`label` then `text` wrapped at spaces (commands stay pasteable; only a word longer than the
    line itself is split), hanging indent."""
    lead = " " * indent + label
    body = textwrap.wrap(" ".join(text.split()), width=width - len(lead), break_long_words=True,
                         break_on_hyphens=False) or [""]
    if max_lines is not None and len(body) > max_lines:
        body = body[:max_lines]
        body[-1] = fit(body[-1] + " ...", width - len(lead))
    pad = " " * len(lead)
    return [lead + body[0]] + [pad + x for x in body[1:]]


class Causes:
    """Root causes in order of first appearance: one per (reason, credential or endpoint)."""

    def __init__(self) -> None:
        self.ids: dict[tuple[str, str], int] = {}
        self.lines: dict[int, list[CheckLine]] = {}

    def add(self, line: CheckLine) -> int | None:
        if line.ok:
            return None
        key = line.cause
        n = self.ids.setdefault(key, len(self.ids) + 1)
        self.lines.setdefault(n, []).append(line)
        return n

    def first(self, n: int) -> CheckLine:
        """The line that explains the cause: the first that failed rather than was skipped."""
        lines = self.lines[n]
        return next((x for x in lines if x.failed), lines[0])

    def affected(self, n: int) -> str:
        """'token app; sales@contoso.example (imap, pop3, smtp); tcp host:993'."""
        order: dict[str, list[str]] = {}
        for x in self.lines[n]:
            if x.stage in ("imap", "pop3", "smtp"):
                order.setdefault(x.target, []).append(x.stage)
            else:
                order.setdefault(f"{x.stage} {x.target}", [])
        return "; ".join(f"{t} ({', '.join(st)})" if st else t for t, st in order.items())

    def to_json(self) -> list[dict[str, Any]]:
        out = []
        for key, n in self.ids.items():
            head = self.first(n)
            out.append({"id": n, "reason": head.reason.value if head.reason else None, "scope": key[1],
                        "summary": head.summary, "fix": head.fix, "detail": redact(head.detail),
                        "checks": [{"stage": x.stage, "target": x.target} for x in self.lines[n]]})
        return out


def status_word(line: CheckLine, style: Style) -> str:
    if line.ok:
        return style.skip("[WARN]") if line.warning else style.ok("[ OK ]")
    if line.skipped:
        return style.skip("[SKIP]")
    return style.fail("[FAIL]")


def render_line(line: CheckLine, style: Style, width: int = DEFAULT_WIDTH, cause: int | None = None) -> str:
    """One checklist row (two for a warning) within `width` columns. A failure points at its root
    cause's block (render_cause) instead of repeating reason and fix on every affected line; without
    a cause number (a single line on its own) reason and fix follow, wrapped."""
    target = f"{line.target} ({line.label})" if line.label else line.target
    if len(target) > TARGET_WIDTH:  # host:port matters more than what it is used for
        target = line.target
    target = fit(target, TARGET_WIDTH)
    if line.skipped and cause is not None:  # the problem's block says what failed upstream
        note = "not reached"
    elif line.ok or line.skipped:
        note = line.detail
    elif cause is not None:  # the block below has the detail; here: what failed
        note = line.reason.value if line.reason is not None else (line.summary or "failed")
    else:
        note = line.reason.value if line.reason is not None else (line.summary or "failed")
        if line.detail:
            note += ": " + line.detail
    if cause is not None and not line.ok:
        tail = f" -> problem {cause}"
        note = fit(note, width - 9 - TARGET_WIDTH - 1 - len(tail)) + tail
    head = f"  {status_word(line, style)} {target:<{TARGET_WIDTH}} "
    room = width - 9 - TARGET_WIDTH - 1
    if line.ok:  # what passed is evidence (versions, expiries, counts): wrap it, within reason
        body = wrap("", note, room + 9 + TARGET_WIDTH + 1, 9 + TARGET_WIDTH + 1, max_lines=DETAIL_LINES + 1)
        out = [head + body[0].lstrip()] + body[1:]
    else:
        out = [(head + fit(note, room)).rstrip()]
    if line.ok and line.warning:
        out += wrap("warning: ", line.warning, width, 9)
    if line.failed and cause is None:
        if line.summary:
            label = f"{line.reason.value}: " if line.reason is not None else ""
            out += [style.bold(x) if i == 0 else x
                    for i, x in enumerate(wrap("reason: ", label + line.summary, width, 9))]
        if line.fix:
            out += wrap("fix:    ", line.fix, width, 9)
    return "\n".join(out)


def render_cause(causes: Causes, n: int, style: Style, width: int = DEFAULT_WIDTH) -> str:
    head = causes.first(n)
    key = next(k for k, v in causes.ids.items() if v == n)
    out = [style.fail(fit(f"Problem {n}: {key[0]} ({key[1]})", width))]
    if head.summary:
        out += wrap("", head.summary, width, 2)
    out += wrap("affects: ", causes.affected(n), width, 2)
    if head.detail and head.failed:
        out += wrap("detail:  ", redact(head.detail), width, 2, max_lines=DETAIL_LINES)
    if head.fix:
        out += [style.bold(x) if i == 0 else x for i, x in enumerate(wrap("fix:     ", head.fix, width, 2))]
    return "\n".join(out)


def render_summary(lines: list[CheckLine], style: Style, causes: Causes | None = None,
                   width: int = DEFAULT_WIDTH) -> str:
    failed = [x for x in lines if x.failed]
    skipped = [x for x in lines if x.skipped]
    warned = [x for x in lines if x.ok and x.warning]
    if not failed and not skipped:
        text = f"All {len(lines)} checks passed"
        text += f", {len(warned)} with a warning." if warned else "."
        return "\n".join(style.skip(x) if warned else style.ok(x) for x in wrap("", text, width, 0))
    n = len(causes.ids) if causes is not None else 0
    text = f"{len(failed)} of {len(lines)} checks failed"
    if n:
        text += f" ({n} root cause{'' if n == 1 else 's'})"
    if skipped:
        text += f", {len(skipped)} not reached"
    if warned:
        text += f", {len(warned)} warning{'' if len(warned) == 1 else 's'}"
    text += ". Start with problem 1: later stages often fail because of it." if n else "."
    return "\n".join(style.fail(x) for x in wrap("", text, width, 0))


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
    causes = Causes()
    if output == "json":
        async with checklist:
            lines = [line async for line in checklist.lines()]
        checks = []
        for line in lines:
            doc_line = line.to_json()
            doc_line["root_cause"] = causes.add(line)
            checks.append(doc_line)
        doc = {"ok": all(x.ok for x in lines), "checks": checks, "root_causes": causes.to_json()}
        out.write(json.dumps(doc, indent=2) + "\n")
        out.flush()
        return EXIT_OK if doc["ok"] else EXIT_FAILED

    style = Style(use_colour(out))
    width = terminal_width(out)
    cfg = checklist.config
    where = f"{config_path}: " if config_path else ""
    out.write(style.bold(fit(f"m365-mail-exporter {__version__} check from {socket.gethostname()}", width)) + "\n")
    out.write(fit(f"{where}{len(cfg.mailboxes)} mailbox(es), {len(cfg.credentials)} credential(s)", width) + "\n")
    out.flush()
    progress = Progress(err, enabled=bool(getattr(err, "isatty", lambda: False)()) and use_colour(err))
    async with checklist:
        progress.start(lambda: fit(f"{checklist.done}/{checklist.total} checks done, waiting for "
                                   f"{checklist.waiting_for or '...'}", width - 3))
        stage = ""
        try:
            async for line in checklist.lines():
                progress.clear()
                if line.stage != stage:
                    stage = line.stage
                    out.write("\n" + style.bold(STAGE_TITLES.get(stage, stage)) + "\n")
                out.write(render_line(line, style, width, causes.add(line)) + "\n")
                out.flush()
                lines.append(line)
        finally:
            await progress.stop()
    if causes.ids:
        n = len(causes.ids)
        out.write("\n" + style.bold(f"{n} root cause{'' if n == 1 else 's'}, each with its fix:") + "\n")
        for i in causes.lines:
            out.write("\n" + render_cause(causes, i, style, width) + "\n")
    out.write("\n" + render_summary(lines, style, causes, width) + "\n")
    out.flush()
    return EXIT_OK if all(x.ok for x in lines) else EXIT_FAILED


async def run_demo_check(mailbox: str | None, output: str, out: TextIO, err: TextIO) -> int:
    """`check --demo`: the checklist against the bundled simulator, no config needed."""
    import tempfile

    from ..simulator.demo import Demo

    with tempfile.TemporaryDirectory(prefix="m365-check-demo-") as tmp:
        demo = Demo(Path(tmp))
        try:
            config = await demo.start()
            if output != "json":
                err.write("demo: checking the bundled Microsoft 365 simulator on loopback (no tenant is "
                          "contacted)\n")
            return await run_check(config, mailbox, output, out, err, "demo")
        finally:
            await demo.close()


NO_CONFIG = ("cannot read config {path}: no such file.\n"
             "Pass your config with --config.file FILE (see docs/configuration.md), or run\n"
             "  m365-mail-exporter check --demo\n"
             "to see the checklist against the bundled simulator.")


def main(args: argparse.Namespace) -> int:
    output = getattr(args, "output", "text")
    path = getattr(args, "config_file", DEFAULT_CONFIG)
    mailbox = getattr(args, "mailbox", None)
    if getattr(args, "log_level", "info") != "debug":
        # every problem is a line of the checklist; background-style warnings would only repeat them
        logging.getLogger().setLevel(logging.ERROR)
    if getattr(args, "demo", False):
        try:
            return asyncio.run(run_demo_check(mailbox, output, sys.stdout, sys.stderr))
        except KeyboardInterrupt:
            print("\ninterrupted", file=sys.stderr)
            return EXIT_FAILED
    if not os.path.lexists(path):
        message = NO_CONFIG.format(path=path)
        if output == "json":
            sys.stdout.write(json.dumps({"ok": False, "config_errors": [message.splitlines()[0]], "checks": []},
                                        indent=2) + "\n")
        print(message, file=sys.stderr)
        return EXIT_CONFIG
    try:
        config = load_config(path)
    except ConfigError as exc:
        if output == "json":
            sys.stdout.write(json.dumps({"ok": False, "config_errors": exc.problems, "checks": []}, indent=2) + "\n")
        print(exc, file=sys.stderr)
        return EXIT_CONFIG
    try:
        return asyncio.run(run_check(config, mailbox, output, sys.stdout, sys.stderr, path))
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
    p.add_argument("--demo", action="store_true", default=argparse.SUPPRESS,
                   help="run the checklist against the bundled simulator (no config or tenant needed)")
    p.set_defaults(func=main)
