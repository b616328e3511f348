"""Request-level protection of the web port: basic auth, rate limit, headers, origin checks, access log.

Why a middleware: every route (present and future, including another helper's landing page)
gets the same authentication; nothing is protected by remembering to call a function. TLS and
client certificates are enforced earlier, in the handshake (exporter/webserver.py).

- basic auth (`basic_auth_users`, bcrypt): 401 with `WWW-Authenticate: Basic`; verified results
  are cached (exporter/webconfig.py `BasicAuth`), bcrypt runs in a thread, at most two at once,
  so a password-guessing flood cannot stall the event loop. `basic_auth_excluded_paths` are
  compared with the path below `--web.route-prefix`.
- `rate_limit` (exporter-toolkit's token bucket): 429 beyond it.
- `http_server_config.headers` on every answer; `Server: m365-mail-exporter` (no framework or
  version: it only helps an attacker pick an exploit).
- access log at debug level: remote address, method, path, status, duration and the
  authenticated user (basic-auth name or client-certificate subject), never credentials.
- `same_origin`: for state-changing endpoints, refuse a browser's cross-site request
  (`Origin` not this server's or `--web.external-url`'s origin, or `Sec-Fetch-Site` cross-site).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from urllib.parse import urlsplit

from aiohttp import web

from .webconfig import BasicAuth, TokenBucket, WebConfigWatcher

access_log = logging.getLogger("exporter.web.access")
SERVER_HEADER = "m365-mail-exporter"

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@dataclass
class WebOptions:
    """Everything the web layer needs from the command line; defaults are the documented ones."""

    watcher: WebConfigWatcher = field(default_factory=lambda: WebConfigWatcher(None))
    enable_lifecycle: bool = False
    route_prefix: str = "/"
    external_url: str = ""
    probe_min_interval: float = 30.0
    probe_concurrency: int = 2

    def __post_init__(self) -> None:
        self.route_prefix = normalise_prefix(self.route_prefix)


def normalise_prefix(prefix: str) -> str:
    """'/' or '/path' without a trailing slash (Prometheus's --web.route-prefix semantics)."""
    prefix = "/" + prefix.strip("/")
    return prefix


def route_prefix_for(route_prefix: str | None, external_url: str) -> str:
    """Prometheus: the route prefix defaults to the path of the external URL."""
    if route_prefix:
        return normalise_prefix(route_prefix)
    if external_url:
        return normalise_prefix(urlsplit(external_url).path or "/")
    return "/"


def peer_subject(request: web.Request) -> str | None:
    transport = request.transport
    cert = transport.get_extra_info("peercert") if transport is not None else None
    if not cert:
        return None
    for rdn in cert.get("subject", ()):
        for k, v in rdn:
            if k == "commonName":
                return f"cert:{v}"
    return "cert"


class Security:
    def __init__(self, options: WebOptions) -> None:
        self.options = options
        self.auth = BasicAuth()
        self.bucket = TokenBucket()
        self._bcrypt_slots = asyncio.Semaphore(2)

    def relative_path(self, path: str) -> str:
        prefix = self.options.route_prefix
        if prefix != "/" and (path == prefix or path.startswith(prefix + "/")):
            return path[len(prefix):] or "/"
        return path

    @web.middleware
    async def middleware(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        t0 = time.monotonic()
        cfg = self.options.watcher.current()
        user = peer_subject(request)
        resp: web.StreamResponse
        if cfg.rate_limit is not None and not self.bucket.allow(cfg.rate_limit):
            resp = web.Response(status=429, text="Too Many Requests\n",
                                headers={"Retry-After": str(max(1, round(cfg.rate_limit.interval)))})
        elif cfg.users and self.relative_path(request.path) not in cfg.excluded_paths:
            name = await self._authenticate(request)
            if name is None:
                resp = web.Response(status=401, text="Unauthorized\n",
                                    headers={"WWW-Authenticate": 'Basic realm="m365-mail-exporter"'})
            else:
                user = name
                resp = await self._call(handler, request)
        else:
            resp = await self._call(handler, request)
        if access_log.isEnabledFor(logging.DEBUG):
            access_log.debug("%s %s %s %d %.3fs user=%s", request.remote, request.method, request.path,
                             resp.status, time.monotonic() - t0, user or "-")
        return resp

    @staticmethod
    async def _call(handler: Handler, request: web.Request) -> web.StreamResponse:
        try:
            return await handler(request)
        except web.HTTPException as exc:  # 404/405 from the router: answer it so headers and the log apply
            return web.Response(status=exc.status, text=exc.text, headers=exc.headers)

    async def _authenticate(self, request: web.Request) -> str | None:
        creds = BasicAuth.parse_header(request.headers.get("Authorization"))
        if creds is None:
            return None
        cfg = self.options.watcher.current()
        _, hit = self.auth.cached(cfg, *creds)
        if hit is None:
            async with self._bcrypt_slots:
                hit = await asyncio.to_thread(self.auth.verify, cfg, *creds)
        return creds[0] if hit else None

    async def on_prepare(self, request: web.Request, response: web.StreamResponse) -> None:
        response.headers["Server"] = SERVER_HEADER
        for name, value in self.options.watcher.current().headers:
            response.headers[name] = value

    def same_origin(self, request: web.Request) -> str | None:
        """None if the request may change state, else why not (cross-origin browser request)."""
        site = request.headers.get("Sec-Fetch-Site")
        if site is not None and site.lower() not in ("same-origin", "none"):
            return f"cross-site request refused (Sec-Fetch-Site: {site})"
        origin = request.headers.get("Origin")
        if origin is None:
            return None  # not a browser, or a same-origin navigation of an old browser
        allowed = {f"{request.scheme}://{request.host}".lower()}
        if self.options.external_url:
            ext = urlsplit(self.options.external_url)
            allowed.add(f"{ext.scheme}://{ext.netloc}".lower())
        if origin.lower().rstrip("/") not in allowed:
            return "cross-origin request refused (Origin does not match this server or --web.external-url)"
        return None
