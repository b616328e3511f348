"""Microsoft Graph, the small part the app-registration audit reads: one application by appId.

Why simulate Graph at all: the audit's value is in its failure modes (a token without
Application.Read.All, a Graph 403, an unknown app) and in reading real-shaped credential metadata
(passwordCredentials / keyCredentials with keyId and endDateTime, web.redirectUris). Serving them
over the simulator's HTTPS, behind a bearer token the simulated identity platform minted, tests
the whole path the exporter takes against Microsoft: MSAL client credentials for the Graph
resource, then an authenticated GET.

Served on the identity server (so `graph_url` is `https://HOST:PORT/graph`):
- GET /graph/v1.0/applications(appId='{appId}')[?$select=a,b,c]
  401 InvalidAuthenticationToken: no bearer token, not minted here, expired, or audience is not
      https://graph.microsoft.com
  403 Authorization_RequestDenied: the token has no Application.Read.All role, or the calling
      app has `SimApp.graph_denied` set (permission not granted / consent revoked)
  404 Request_ResourceNotFound: no app with that appId in the tenant
- POST /_sim/apps/{client_id}  (admin API, loopback only) body: any of graph_denied, redirect_uris,
  public_client, display_name, password_credentials, key_credentials; merged into the SimApp.

Every Graph request is counted as ("graph", caller appid or "-", outcome) in `state.counters`.
"""

from __future__ import annotations

import re
import time
import uuid
from datetime import UTC, datetime
from typing import Any
from urllib.parse import unquote

from aiohttp import web

from .state import SimApp, SimState
from .tokens import TokenMinter

GRAPH_AUDIENCE = "https://graph.microsoft.com"
READ_ROLE = "Application.Read.All"
_APP_PATH = re.compile(r"^v1\.0/applications\(appId='([^']*)'\)/?$")
_APP_FIELDS = ("graph_denied", "redirect_uris", "public_client", "display_name", "password_credentials",
               "key_credentials")


def graph_error(status: int, code: str, message: str, request: web.Request) -> web.Response:
    """A Graph-shaped error: {"error": {"code", "message", "innerError": {...}}}."""
    body = {
        "error": {
            "code": code,
            "message": message,
            "innerError": {
                "date": datetime.fromtimestamp(time.time(), UTC).strftime("%Y-%m-%dT%H:%M:%S"),
                "request-id": str(uuid.uuid4()),
                "client-request-id": request.headers.get("client-request-id", str(uuid.uuid4())),
            },
        }
    }
    headers = {"WWW-Authenticate": 'Bearer realm="", error="invalid_token"'} if status == 401 else None
    return web.json_response(body, status=status, headers=headers)


def application_resource(app: SimApp, select: list[str] | None) -> dict[str, Any]:
    """The application entity as Graph v1.0 returns it (optionally reduced to `$select`)."""
    full: dict[str, Any] = {
        "id": str(uuid.uuid5(uuid.NAMESPACE_URL, "application:" + app.client_id)),
        "appId": app.client_id,
        "displayName": app.display_name,
        "passwordCredentials": [dict(p) for p in app.password_credentials],
        "keyCredentials": [dict(k) for k in app.key_credentials],
        "web": {
            "homePageUrl": None,
            "logoutUrl": None,
            "redirectUris": list(app.redirect_uris),
            "implicitGrantSettings": {"enableAccessTokenIssuance": False, "enableIdTokenIssuance": False},
        },
        "publicClient": {"redirectUris": []},
        "spa": {"redirectUris": []},
        "isFallbackPublicClient": app.public_client,
    }
    if select:
        full = {k: v for k, v in full.items() if k in select}
    fields = ",".join(select) if select else ""
    context = f"{GRAPH_AUDIENCE}/v1.0/$metadata#applications" + (f"({fields})" if fields else "") + "/$entity"
    return {"@odata.context": context, **full}


def add_graph_routes(app: web.Application, state: SimState, minter: TokenMinter | None = None) -> None:
    """Add the Graph routes (and the `/_sim/apps/...` admin route) to the identity server's app.

    Without a `minter` bearer tokens are decoded but not signature-checked (claims only).
    """

    def claims_of(request: web.Request) -> dict[str, Any] | None:
        header = request.headers.get("Authorization", "")
        if not header.lower().startswith("bearer "):
            return None
        token = header[7:].strip()
        if minter is not None:
            return minter.verify(token)
        from ..auth.claims import decode_claims

        claims = decode_claims(token)
        if claims is None or float(claims.get("exp", 0)) < time.time():
            return None
        return claims

    async def graph(request: web.Request) -> web.Response:
        path = unquote(request.match_info["path"])
        m = _APP_PATH.match(path)
        if request.method != "GET" or m is None:
            state.count("graph", "-", "bad_request")
            return graph_error(400, "BadRequest", f"Resource not found for the segment '{path}'.", request)
        claims = claims_of(request)
        if claims is None:
            state.count("graph", "-", "unauthenticated")
            return graph_error(401, "InvalidAuthenticationToken", "Access token validation failure.", request)
        caller = str(claims.get("appid", "-"))
        if str(claims.get("aud", "")).rstrip("/") not in (GRAPH_AUDIENCE, "00000003-0000-0000-c000-000000000000"):
            state.count("graph", caller, "wrong_audience")
            return graph_error(401, "InvalidAuthenticationToken", "Access token validation failure. Invalid audience.",
                               request)
        roles = claims.get("roles") if isinstance(claims.get("roles"), list) else []
        with state.lock:
            caller_app = state.apps.get(caller)
            denied = caller_app is not None and caller_app.graph_denied
            target = state.apps.get(m.group(1))
        if denied or READ_ROLE not in roles:
            state.count("graph", caller, "denied")
            return graph_error(403, "Authorization_RequestDenied", "Insufficient privileges to complete the operation.",
                               request)
        if target is None:
            state.count("graph", caller, "not_found")
            return graph_error(404, "Request_ResourceNotFound",
                               f"Resource '{m.group(1)}' does not exist or one of its queried reference-property "
                               "objects are not present.", request)
        raw_select = request.query.get("$select", "")
        select = [s.strip() for s in raw_select.split(",") if s.strip()] or None
        state.count("graph", caller, "ok")
        with state.lock:
            body = application_resource(target, select)
        return web.json_response(body)

    async def admin_app(request: web.Request) -> web.Response:
        client_id = request.match_info["client_id"]
        try:
            body = await request.json() if request.can_read_body else {}
        except ValueError:
            return web.json_response({"error": "invalid JSON"}, status=400)
        if not isinstance(body, dict):
            return web.json_response({"error": "body must be a JSON object"}, status=400)
        unknown = set(body) - set(_APP_FIELDS)
        if unknown:
            return web.json_response({"error": f"unknown app fields {sorted(unknown)}"}, status=400)
        with state.lock:
            target = state.apps.get(client_id)
            if target is None:
                return web.json_response({"error": f"no app {client_id!r}"}, status=404)
            for name, value in body.items():
                current = getattr(target, name)
                if not isinstance(value, type(current)):
                    return web.json_response({"error": f"{name} must be {type(current).__name__}"}, status=400)
            for name, value in body.items():
                setattr(target, name, value)
            shown = {name: getattr(target, name) for name in _APP_FIELDS}
        return web.json_response({"client_id": client_id, **shown})

    app.router.add_route("*", "/graph/{path:.*}", graph)
    app.router.add_post("/_sim/apps/{client_id}", admin_app)
