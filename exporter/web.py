"""HTTP endpoints: /metrics, /probe, landing page, health, readiness and reload.

Why aiohttp on the probe event loop: one process, one loop; /metrics serves cached bytes
rendered in a worker thread, so scrapes stay fast even while thousands of probes run.
`/probe` runs one check on demand (for debugging and blackbox-style use); its debug output
is a redacted transcript with the classified reason and the operator's fix.
"""

from __future__ import annotations

import html
import time

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.exposition import generate_latest
from prometheus_client.registry import Collector, CollectorRegistry

from . import __version__
from .collector import OPENMETRICS, TEXT, content_type
from .probes.result import ProbeResult
from .runtime import Runtime

RUNTIME = web.AppKey("runtime", Runtime)


class _OneResult(Collector):
    """Exposition of a single on-demand probe result (GET /probe without debug)."""

    def __init__(self, result: ProbeResult, labels: dict[str, str]) -> None:
        self.result, self.labels = result, labels

    def collect(self):  # type: ignore[no-untyped-def]
        names, values = list(self.labels), list(self.labels.values())
        r = self.result
        yield self._g("m365_probe_success", "1 if this probe succeeded", names, values, 1.0 if r.success else 0.0)
        yield self._g("m365_probe_duration_seconds", "Duration of this probe", names, values, r.duration)
        if r.reason is not None:
            fam = GaugeMetricFamily("m365_probe_failure_info", "1 with the failure reason", labels=[*names, "reason"])
            fam.add_metric([*values, r.reason.value], 1.0)
            yield fam
        for fact, value in sorted(r.facts.items()):
            if isinstance(value, int | float) and fact.replace("_", "").isalnum():
                yield self._g(f"m365_probe_fact_{fact}", f"Probe fact {fact}", names, values, float(value))

    def _g(self, name: str, doc: str, names: list[str], values: list[str], v: float) -> GaugeMetricFamily:
        fam = GaugeMetricFamily(name, doc, labels=names)
        fam.add_metric(values, v)
        return fam


def render_debug(mailbox: str, check: str, result: ProbeResult, credential: str | None = None) -> str:
    lines = [
        f"mailbox: {mailbox}",
        f"check:   {check}",
        f"result:  {'SUCCESS' if result.success else 'FAILURE'} in {result.duration:.3f}s",
    ]
    if result.reason is not None:
        lines += [
            f"reason:  {result.reason.value} ({result.reason.summary})",
            f"fix:     {result.reason.fix_for(mailbox=mailbox, credential=credential)}",
        ]
    if result.detail:
        lines.append(f"detail:  {result.detail}")
    for k, v in sorted(result.facts.items()):
        lines.append(f"fact:    {k} = {v}")
    lines += ["", "transcript (C: client, S: server, *: note; secrets redacted):",
              result.transcript.render() or "(none)"]
    return "\n".join(lines) + "\n"


def _negotiate(request: web.Request) -> tuple[str, bool]:
    """(format, gzip) from Accept / Accept-Encoding, as prometheus_client does it."""
    accept = request.headers.get("Accept", "")
    fmt = TEXT
    for part in accept.split(","):
        media, _, params = part.strip().partition(";")
        if media.strip() == "application/openmetrics-text" and "q=0," not in params.replace(" ", "") + ",":
            fmt = OPENMETRICS
            break
    encodings = [e.split(";")[0].strip().lower() for e in request.headers.get("Accept-Encoding", "").split(",")]
    return fmt, "gzip" in encodings


async def metrics(request: web.Request) -> web.Response:
    fmt, gz = _negotiate(request)
    body = await request.app[RUNTIME].renderer.render(fmt, gz)
    headers = {"Content-Type": content_type(fmt), "Vary": "Accept, Accept-Encoding"}
    if gz:
        headers["Content-Encoding"] = "gzip"
    return web.Response(body=body, headers=headers)


async def probe(request: web.Request) -> web.Response:
    rt = request.app[RUNTIME]
    mailbox = request.query.get("mailbox", "")
    check = request.query.get("check", "")
    debug = request.query.get("debug", "").lower() in ("1", "true", "yes")
    if not mailbox or not check:
        return web.Response(status=400, text="usage: /probe?mailbox=ADDRESS&check=token|imap|pop3|smtp[&debug=true]\n")
    try:
        result = await rt.probe_now(mailbox, check)
    except KeyError as exc:
        return web.Response(status=404, text=f"{exc.args[0]}\n")
    if debug:
        found = rt.config.find_mailbox(mailbox)
        cred = found.credential if found is not None else None
        return web.Response(text=render_debug(mailbox, check, result, cred), content_type="text/plain")
    reg = CollectorRegistry(auto_describe=False)
    reg.register(_OneResult(result, {"mailbox": mailbox, "check": check}))
    return web.Response(body=generate_latest(reg), headers={"Content-Type": CONTENT_TYPE_LATEST})


async def healthy(request: web.Request) -> web.Response:
    return web.Response(text="OK\n")


async def ready(request: web.Request) -> web.Response:
    if request.app[RUNTIME].ready():
        return web.Response(text="Ready\n")
    return web.Response(status=503, text="Not ready: first probe round still running\n")


async def reload(request: web.Request) -> web.Response:
    ok, message = await request.app[RUNTIME].reload()
    return web.Response(status=200 if ok else 500, text=message + "\n")


async def landing(request: web.Request) -> web.Response:
    rt = request.app[RUNTIME]
    snap = rt.store.snapshot()
    rows = []
    for key, st in sorted(snap.items()):
        if key[0] != "mailbox":
            continue
        res = st.last
        if res is None:
            status, reason, fix, age = "pending", "", "", ""
        else:
            status = "OK" if res.success else "FAILING"
            reason = res.reason.value if res.reason else ""
            fix = res.reason.fix if res.reason else ""
            age = f"{time.time() - res.finished_at:.0f}s ago"
        mailbox, check = key[1], key[2]
        q = f"/probe?mailbox={html.escape(mailbox)}&amp;check={check}&amp;debug=true"
        colour = {"OK": "#1a7f37", "FAILING": "#cf222e"}.get(status, "#6e7781")
        rows.append(
            f"<tr><td>{html.escape(mailbox)}</td><td>{check}</td>"
            f"<td style='color:{colour};font-weight:bold'>{status}</td><td>{html.escape(reason)}</td>"
            f"<td>{html.escape(fix)}</td><td>{age}</td><td><a href='{q}'>debug</a></td></tr>"
        )
    body = f"""<!doctype html><html><head><meta charset="utf-8"><title>m365-mail-exporter</title>
<style>body{{font-family:sans-serif;margin:2em}}table{{border-collapse:collapse}}
td,th{{border:1px solid #ccc;padding:4px 8px;text-align:left;vertical-align:top}}</style></head><body>
<h1>m365-mail-exporter {__version__}</h1>
<p><a href="/metrics">Metrics</a> · <a href="/-/healthy">Health</a> · <a href="/-/ready">Ready</a></p>
<table><tr><th>mailbox</th><th>check</th><th>status</th><th>reason</th><th>fix</th><th>last probe</th><th></th></tr>
{''.join(rows) or '<tr><td colspan=7>no mailboxes configured</td></tr>'}
</table></body></html>"""
    return web.Response(text=body, content_type="text/html")


def make_app(runtime: Runtime) -> web.Application:
    app = web.Application()
    app[RUNTIME] = runtime
    app.router.add_get("/", landing)
    app.router.add_get("/metrics", metrics)
    app.router.add_get("/probe", probe)
    app.router.add_get("/-/healthy", healthy)
    app.router.add_get("/-/ready", ready)
    app.router.add_post("/-/reload", reload)
    return app
