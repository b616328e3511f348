"""HTTP endpoints: /metrics, /probe, /debug, landing page, health, readiness and reload.

Why aiohttp on the probe event loop: one process, one loop; /metrics serves cached bytes
rendered in a worker thread, so scrapes stay fast even while thousands of probes run.
`/probe` runs one check on demand (for debugging and blackbox-style use) through
exporter/ondemand.py (own pool, single-flight, minimum spacing per target); its debug output
is a redacted transcript with the classified reason and the operator's fix. `/debug` shows the
last *recorded* result and never probes, so a crawler following the landing page's links
never causes a login. Authentication, headers and the access log are a middleware
(exporter/websecurity.py); `/-/reload` needs `--web.enable-lifecycle`, POST and same origin.
"""

from __future__ import annotations

import asyncio
import logging
import time

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.exposition import generate_latest
from prometheus_client.registry import Collector, CollectorRegistry

from . import board
from .collector import OPENMETRICS, TEXT, content_type
from .fixes import fix_for_mail
from .ondemand import Busy, OnDemand
from .probes.result import ProbeResult
from .runtime import Runtime
from .websecurity import Security, WebOptions

RUNTIME = web.AppKey("runtime", Runtime)
OPTIONS = web.AppKey("options", WebOptions)
SECURITY = web.AppKey("security", Security)
ONDEMAND = web.AppKey("ondemand", OnDemand)
CHECKS = ("token", "imap", "pop3", "smtp")
WRITE_DEADLINE = 60.0  # seconds an uncompressed /metrics body may take to reach its client

log = logging.getLogger(__name__)


class _OneResult(Collector):
    """Exposition of a single on-demand probe result (GET /probe without debug)."""

    def __init__(self, result: ProbeResult, labels: dict[str, str], live: bool = True, age: float = 0.0) -> None:
        self.result, self.labels, self.live, self.age = result, labels, live, age

    def collect(self):  # type: ignore[no-untyped-def]
        names, values = list(self.labels), list(self.labels.values())
        r = self.result
        yield self._g("m365_probe_success", "1 if this probe succeeded", names, values, 1.0 if r.success else 0.0)
        yield self._g("m365_probe_duration_seconds", "Duration of this probe", names, values, r.duration)
        yield self._g("m365_probe_live", "1 if this request ran the probe, 0 if it is a recorded result served "
                      "inside the minimum spacing", names, values, 1.0 if self.live else 0.0)
        yield self._g("m365_probe_result_age_seconds", "Seconds since this result was measured", names, values,
                      self.age)
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


def render_debug(mailbox: str, check: str, result: ProbeResult, credential: str | None = None,
                 fix: str | None = None, recorded: str | None = None) -> str:
    lines = [
        f"mailbox: {mailbox}",
        f"check:   {check}",
        f"result:  {'SUCCESS' if result.success else 'FAILURE'} in {result.duration:.3f}s",
    ]
    if recorded:
        lines.append(f"NOT LIVE: {recorded}")
    if result.reason is not None:
        lines += [
            f"reason:  {result.reason.value} ({result.reason.summary})",
            f"fix:     {fix or result.reason.fix_for(mailbox=mailbox, credential=credential)}",
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


async def metrics(request: web.Request) -> web.StreamResponse:
    """A gzip body in one write; an uncompressed one (bodyparts.py: never joined whole) in runs,
    each awaiting the client, within WRITE_DEADLINE (a client that stops reading is cut off and
    releases the parts it pinned)."""
    fmt, gz = _negotiate(request)
    body = await request.app[RUNTIME].renderer.body(fmt, gz)
    headers = {"Content-Type": content_type(fmt), "Vary": "Accept, Accept-Encoding"}
    if gz:
        headers["Content-Encoding"] = "gzip"
    if isinstance(body, bytes):
        return web.Response(body=body, headers=headers)
    response = web.StreamResponse(headers=headers)
    response.content_length = body.length
    await response.prepare(request)
    if request.method == "HEAD":
        return response
    try:
        async with asyncio.timeout(WRITE_DEADLINE):
            for run in body.runs():
                await response.write(run)
    except TimeoutError:
        log.warning("a /metrics client did not read %d bytes within %.0fs: connection closed",
                    body.length, WRITE_DEADLINE)
        if request.transport is not None:
            request.transport.abort()
        return response
    await response.write_eof()
    return response


def _target(request: web.Request) -> tuple[str, str, web.Response | None]:
    """(mailbox, check, error answer): 400 for a malformed request, 404 for a target not configured."""
    rt = request.config_dict[RUNTIME]
    mailbox = request.query.get("mailbox", "")
    check = request.query.get("check", "")
    if not mailbox or not check:
        return mailbox, check, web.Response(
            status=400, text="usage: probe?mailbox=ADDRESS&check=token|imap|pop3|smtp[&debug=true]\n")
    if check not in CHECKS:
        return mailbox, check, web.Response(status=400, text=f"unknown check {check!r} ({', '.join(CHECKS)})\n")
    m = rt.config.find_mailbox(mailbox)
    if m is None:
        return mailbox, check, web.Response(status=404, text=f"unknown mailbox {mailbox!r}\n")
    if check != "token" and check not in m.checks:
        return mailbox, check, web.Response(
            status=404, text=f"check {check!r} is not configured for {mailbox} (configured: token, "
                             f"{', '.join(m.checks)})\n")
    return m.label, check, None


async def probe(request: web.Request) -> web.Response:
    rt = request.config_dict[RUNTIME]
    label, check, error = _target(request)
    if error is not None:
        return error
    debug = request.query.get("debug", "").lower() in ("1", "true", "yes")
    m = rt.config.find_mailbox(label)
    assert m is not None
    # the token check logs in once per credential, so that is what the spacing protects
    target = ("credential", m.credential) if check == "token" else ("mailbox", m.label, check)
    state = rt.store.get(("mailbox", m.label, check))
    recorded = state.last if state is not None else None
    try:
        answer = await request.config_dict[ONDEMAND].run(
            target, recorded, lambda pool: rt.probe_now(m.address, check, slot=pool))
    except Busy as busy:
        return web.Response(status=429, text="too many on-demand probes queued; retry later\n",
                            headers={"Retry-After": str(round(busy.retry_after))})
    headers = {"X-Probe-Live": "true" if answer.live else "false", "Age": str(int(answer.age))}
    if not answer.live:
        headers["Retry-After"] = str(max(1, round(answer.retry_after)))
    if debug:
        reason = answer.result.reason
        fix = fix_for_mail(rt.config, reason, m.address, check) if reason else None
        note = None if answer.live else (
            f"recorded result from {answer.age:.0f}s ago (a live probe of this target runs at most every "
            f"{request.config_dict[ONDEMAND].min_interval:.0f}s; next in {answer.retry_after:.0f}s)")
        return web.Response(text=render_debug(m.address, check, answer.result, m.credential, fix, note),
                            content_type="text/plain", headers=headers)
    reg = CollectorRegistry(auto_describe=False)
    reg.register(_OneResult(answer.result, {"mailbox": m.label, "check": check}, answer.live, answer.age))
    headers["Content-Type"] = CONTENT_TYPE_LATEST
    return web.Response(body=generate_latest(reg), headers=headers)


async def debug_last(request: web.Request) -> web.Response:
    """The last recorded result's debug output: never probes (safe for crawlers and the landing page)."""
    rt = request.config_dict[RUNTIME]
    label, check, error = _target(request)
    if error is not None:
        return error
    m = rt.config.find_mailbox(label)
    assert m is not None
    state = rt.store.get(("mailbox", m.label, check))
    if state is None or state.last is None:
        return web.Response(status=404, text=f"no result recorded yet for {m.address} {check}\n")
    age = time.time() - state.last.finished_at
    last = state.last
    fix = fix_for_mail(rt.config, last.reason, m.address, check) if last.reason else None
    note = f"recorded result from {age:.0f}s ago; run probe?...&debug=true for a live one"
    return web.Response(text=render_debug(m.address, check, last, m.credential, fix, note),
                        content_type="text/plain")


async def healthy(request: web.Request) -> web.Response:
    return web.Response(text="OK\n")


async def ready(request: web.Request) -> web.Response:
    why = request.config_dict[RUNTIME].not_ready()
    if why is None:
        return web.Response(text="Ready\n")
    return web.Response(status=503, text=f"Not ready: {why}\n")


async def reload(request: web.Request) -> web.Response:
    if not request.config_dict[OPTIONS].enable_lifecycle:
        return web.Response(status=403, text="lifecycle APIs are not enabled (--web.enable-lifecycle)\n")
    refused = request.config_dict[SECURITY].same_origin(request)
    if refused is not None:
        return web.Response(status=403, text=refused + "\n")
    rt = request.config_dict[RUNTIME]
    if not rt.config_path:
        return web.Response(status=409, text="nothing to reload: no config file (demo mode)\n")
    ok, message = await rt.reload()
    return web.Response(status=200 if ok else 500, text=message + "\n")


async def landing(request: web.Request) -> web.Response:
    return board.response(request.config_dict[RUNTIME], request)  # the NOC status board (exporter/board.py)


def make_app(runtime: Runtime, options: WebOptions | None = None) -> web.Application:
    """The web application; with a route prefix the routes live below it (Prometheus semantics)."""
    options = options or WebOptions()
    security = Security(options)
    routes = web.Application()
    routes[RUNTIME] = runtime
    routes[OPTIONS] = options
    routes[SECURITY] = security
    routes[ONDEMAND] = OnDemand(options.probe_min_interval, options.probe_concurrency)
    routes.router.add_get("/", landing)
    routes.router.add_get("/metrics", metrics)
    routes.router.add_get("/probe", probe, allow_head=False)  # a HEAD (link checkers) must not log in
    routes.router.add_get("/debug", debug_last)
    routes.router.add_get("/-/healthy", healthy)
    routes.router.add_get("/-/ready", ready)
    routes.router.add_post("/-/reload", reload)
    prefix = options.route_prefix
    if prefix == "/":
        app = routes
    else:
        app = web.Application()
        app[RUNTIME] = runtime

        async def to_prefix(request: web.Request) -> web.Response:
            raise web.HTTPFound(prefix + "/")

        app.router.add_get("/", to_prefix)
        app.router.add_get(prefix, to_prefix)
        app.add_subapp(prefix + "/", routes)
    app.middlewares.append(security.middleware)
    app.on_response_prepare.append(security.on_prepare)
    return app
