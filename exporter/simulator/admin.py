"""The simulator's admin API: switch faults and change the tenant of a running simulator over HTTP.

Why an HTTP API next to the in-process `SimState`: the demo runs the simulator inside the
exporter's process, so the only way for a person (curl) or a test outside that process to make a
secret expire, a mailbox lose IMAP or a server tarpit is to ask the simulator itself. It is
served on the identity server (same port and CA) and answers loopback clients only, because it
can revoke tokens and approve sign-ins; `loopback_only` guards every `/_sim/` route, including
those other modules add (graph.py's `/_sim/apps/{client_id}`).

Routes (JSON bodies and answers; user-facing reference with examples: docs/simulator.md):
- POST   /_sim/faults/token/{key}        body = TokenFault fields; replaces the fault for a client_id or UPN
- DELETE /_sim/faults/token/{key}
- POST   /_sim/faults/server/{protocol}  body = ServerFault fields to merge (imap | pop3 | smtp)
- POST   /_sim/mailbox/{address}         body = SimMailbox fields to merge (created if missing);
                                         `oldest_age` (seconds) seeds how old the oldest message is
- POST   /_sim/users/{upn}               body = SimUser fields to merge (created if missing)
- POST   /_sim/users/{upn}/revoke        revoke the user's refresh tokens (AADSTS50173 afterwards)
- POST   /_sim/users/{upn}/expire        lapse the user's refresh tokens (AADSTS700082 afterwards)
- POST   /_sim/tenant                    {"smtp_auth_disabled": bool, "token_lifetime": int}
- POST   /_sim/devicecode/approve        {"user_code": ..., "upn": ...}
- GET    /_sim/stats                     {"counters": [{"key": [...], "count": n}, ...]}
- GET    /_sim/commands                  {"commands": [{"protocol": "imap", "command": "A2 EXAMINE INBOX"}, ...]}
- POST   /_sim/reset                     clear faults (token, server, tenant, mailbox switches) and counters

Bodies are checked against the state dataclasses' field types before anything changes, so a bad
request answers 400 and leaves the state as it was. What a token fault does is the token
endpoint's business (idp.py).

The state changes behind revoke, expire, approve and reset are plain functions here, so seed.py
and tests can do in-process what the API does over HTTP.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import json
import time
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web

from .state import ServerFault, SimMailbox, SimState, SimUser, TokenFault, find_user

ADMIN_PREFIX = "/_sim/"

# The per-mailbox fault switches and their healthy values (what reset_faults restores).
_MAILBOX_FAULT_FIELDS = {
    "imap_enabled": True, "pop_enabled": True, "smtp_auth_disabled": False, "not_accessible": False,
    "security_defaults": False, "conditional_access": False, "oldest_received": None,
}

# ---------------------------------------------------------------------------------------------
# State changes, shared by the admin API, seed.py and tests


def approve_device_code(state: SimState, user_code: str, upn: str) -> bool:
    """Mark the pending device code with this user_code as signed in by `upn` (what a browser would do)."""
    with state.lock:
        for entry in state.device_codes.values():
            if str(entry.get("user_code", "")).upper() == user_code.strip().upper():
                entry["user"] = upn
                return True
    return False


def _remove_refresh_tokens(state: SimState, upn: str) -> list[str]:
    """Remove every refresh token issued to `upn` (case-insensitive) and return them."""
    low = upn.lower()
    with state.lock:
        doomed = [rt for rt, (_, owner, _) in state.refresh_tokens.items() if owner.lower() == low]
        for rt in doomed:
            del state.refresh_tokens[rt]
    return doomed


def revoke_refresh_tokens(state: SimState, upn: str) -> int:
    """Invalidate every refresh token of a user (password reset / revoke sessions): AADSTS50173 afterwards."""
    return len(_remove_refresh_tokens(state, upn))


def expire_refresh_tokens(state: SimState, upn: str) -> int:
    """Lapse every refresh token of a user (90 days inactive): AADSTS700082 afterwards."""
    with state.lock:  # one step: no request sees a token neither valid nor expired
        doomed = _remove_refresh_tokens(state, upn)
        state.expired_refresh_tokens.update(doomed)
    return len(doomed)


def reset_faults(state: SimState) -> None:
    """Back to a healthy tenant: no token/server faults, SMTP AUTH on, mailbox switches off, counters 0."""
    with state.lock:
        state.token_faults.clear()
        state.server_faults.clear()
        state.tenant_smtp_auth_disabled = False
        for mailbox in state.mailboxes.values():
            for name, value in _MAILBOX_FAULT_FIELDS.items():
                if hasattr(mailbox, name):
                    setattr(mailbox, name, value)
        state.counters.clear()
        state.commands.clear()


# ---------------------------------------------------------------------------------------------
# Request bodies


def _coerce(cls: type, name: str, value: Any) -> Any:
    """Check one JSON value against a dataclass field's declared type (annotations are strings here)."""
    by_name = {f.name: f for f in dataclasses.fields(cls)}
    if name not in by_name:
        raise ValueError(f"unknown field {name!r} for {cls.__name__}")
    kind = str(by_name[name].type)
    if value is None:
        if "None" in kind:
            return None
        raise ValueError(f"{name} must not be null")
    if kind.startswith("bool"):
        if isinstance(value, bool):
            return value
    elif kind.startswith("int"):
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif kind.startswith("float"):
        if isinstance(value, int | float) and not isinstance(value, bool):
            return float(value)
    elif kind.startswith("str"):
        if isinstance(value, str):
            return value
    elif kind.startswith(("set[", "list[")):
        if isinstance(value, list | tuple | set) and all(isinstance(v, str) for v in value):
            return set(value) if kind.startswith("set[") else list(value)
    else:
        return value
    raise ValueError(f"{name} must be {kind}")


def _merge(obj: Any, body: dict[str, Any]) -> None:
    """Set the body's fields on a state dataclass; a ValueError for any bad field changes nothing."""
    values = {k: _coerce(type(obj), k, v) for k, v in body.items()}  # validate all before changing any
    for k, v in values.items():
        setattr(obj, k, v)


async def _json(request: web.Request) -> dict[str, Any]:
    """The request's JSON object body ({} without a body); 400 for anything else."""
    if not request.can_read_body:
        return {}
    try:
        body = await request.json()
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise web.HTTPBadRequest(text=json.dumps({"error": f"invalid JSON: {exc}"}),
                                 content_type="application/json") from None
    if not isinstance(body, dict):
        raise web.HTTPBadRequest(text=json.dumps({"error": "body must be a JSON object"}),
                                 content_type="application/json")
    return body


def _bad(message: str, status: int = 400) -> web.Response:
    return web.json_response({"error": message}, status=status)


# ---------------------------------------------------------------------------------------------
# Loopback guard


def _is_loopback(remote: str | None) -> bool:
    if not remote:
        return False
    try:
        addr = ipaddress.ip_address(remote.split("%", 1)[0])
    except ValueError:
        return False
    mapped = getattr(addr, "ipv4_mapped", None)
    return bool(addr.is_loopback or (mapped is not None and mapped.is_loopback))


Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@web.middleware
async def loopback_only(request: web.Request, handler: Handler) -> web.StreamResponse:
    """403 for `/_sim/` requests from anything but loopback (IPv4, IPv6 or IPv4-mapped)."""
    if request.path.startswith(ADMIN_PREFIX) and not _is_loopback(request.remote):
        return web.json_response({"error": "the simulator admin API is loopback-only"}, status=403)
    return await handler(request)


# ---------------------------------------------------------------------------------------------
# Routes


def add_admin_routes(app: web.Application, state: SimState) -> None:
    """Install the loopback guard and the `/_sim/...` routes on the identity server's app."""
    app.middlewares.append(loopback_only)
    api = _AdminApi(state)
    r = app.router
    r.add_post("/_sim/faults/token/{key}", api.set_token_fault)
    r.add_delete("/_sim/faults/token/{key}", api.delete_token_fault)
    r.add_post("/_sim/faults/server/{protocol}", api.server_fault)
    r.add_post("/_sim/mailbox/{address}", api.mailbox)
    r.add_post("/_sim/users/{upn}/revoke", api.revoke)
    r.add_post("/_sim/users/{upn}/expire", api.expire)
    r.add_post("/_sim/users/{upn}", api.user)
    r.add_post("/_sim/tenant", api.tenant)
    r.add_post("/_sim/devicecode/approve", api.approve)
    r.add_get("/_sim/stats", api.stats)
    r.add_get("/_sim/commands", api.commands)
    r.add_post("/_sim/reset", api.reset)


class _AdminApi:
    """The route handlers, one per route above, all acting on one SimState."""

    def __init__(self, state: SimState) -> None:
        self.state = state

    async def set_token_fault(self, request: web.Request) -> web.Response:
        body = await _json(request)
        try:
            fault = TokenFault(**{k: _coerce(TokenFault, k, v) for k, v in body.items()})
        except ValueError as exc:
            return _bad(str(exc))
        key = request.match_info["key"]
        with self.state.lock:
            self.state.token_faults[key] = fault
        return web.json_response({"key": key, "fault": dataclasses.asdict(fault)})

    async def delete_token_fault(self, request: web.Request) -> web.Response:
        key = request.match_info["key"]
        with self.state.lock:
            removed = self.state.token_faults.pop(key, None) is not None
        return web.json_response({"key": key, "deleted": removed})

    async def server_fault(self, request: web.Request) -> web.Response:
        protocol = request.match_info["protocol"]
        if protocol not in ("imap", "pop3", "smtp"):
            return _bad(f"unknown protocol {protocol!r} (imap | pop3 | smtp)", 404)
        body = await _json(request)
        with self.state.lock:
            fault = self.state.server_faults.get(protocol) or ServerFault()
            try:
                _merge(fault, body)
            except ValueError as exc:
                return _bad(str(exc))
            self.state.server_faults[protocol] = fault
        return web.json_response({"protocol": protocol, "fault": dataclasses.asdict(fault)})

    async def mailbox(self, request: web.Request) -> web.Response:
        address = request.match_info["address"]
        body = await _json(request)
        body.pop("address", None)
        age = body.pop("oldest_age", None)  # seconds: seeds oldest_received relative to now
        if age is not None:
            if isinstance(age, bool) or not isinstance(age, int | float) or age < 0:
                return _bad("oldest_age must be a number of seconds >= 0")
            body["oldest_received"] = time.time() - float(age)
        for name in ("seen", "deleted"):
            if name in body:
                return _bad(f"{name} is the mail servers' state, not a switch")
        with self.state.lock:
            mailbox = self.state.mailboxes.get(address) or SimMailbox(address)
            try:
                _merge(mailbox, body)
            except ValueError as exc:
                return _bad(str(exc))
            self.state.mailboxes[address] = mailbox
            fields = dataclasses.asdict(mailbox).items()
            shown = {k: sorted(v) if isinstance(v, set) else v for k, v in fields}
        return web.json_response(shown)

    async def commands(self, request: web.Request) -> web.Response:
        with self.state.lock:
            items = list(self.state.commands)
        return web.json_response({"commands": [{"protocol": p, "command": c} for p, c in items]})

    async def user(self, request: web.Request) -> web.Response:
        upn = request.match_info["upn"]
        body = await _json(request)
        body.pop("upn", None)
        with self.state.lock:
            user = find_user(self.state, upn) or SimUser(upn)
            try:
                _merge(user, body)
            except ValueError as exc:
                return _bad(str(exc))
            self.state.users[user.upn] = user
            shown = {k: v for k, v in dataclasses.asdict(user).items() if k != "password"}
        return web.json_response(shown)

    async def revoke(self, request: web.Request) -> web.Response:
        upn = request.match_info["upn"]
        return web.json_response({"upn": upn, "revoked": revoke_refresh_tokens(self.state, upn)})

    async def expire(self, request: web.Request) -> web.Response:
        upn = request.match_info["upn"]
        return web.json_response({"upn": upn, "expired": expire_refresh_tokens(self.state, upn)})

    async def tenant(self, request: web.Request) -> web.Response:
        body = await _json(request)
        unknown = set(body) - {"smtp_auth_disabled", "token_lifetime"}
        if unknown:
            return _bad(f"unknown tenant fields {sorted(unknown)}")
        smtp = body.get("smtp_auth_disabled")
        lifetime = body.get("token_lifetime")
        if smtp is not None and not isinstance(smtp, bool):
            return _bad("smtp_auth_disabled must be a boolean")
        if lifetime is not None and (type(lifetime) is not int or lifetime < 1):
            return _bad("token_lifetime must be a positive integer")
        with self.state.lock:
            if smtp is not None:
                self.state.tenant_smtp_auth_disabled = smtp
            if lifetime is not None:
                self.state.token_lifetime = lifetime
            out = {"smtp_auth_disabled": self.state.tenant_smtp_auth_disabled,
                   "token_lifetime": self.state.token_lifetime}
        return web.json_response(out)

    async def approve(self, request: web.Request) -> web.Response:
        body = await _json(request)
        user_code, upn = body.get("user_code"), body.get("upn")
        if not isinstance(user_code, str) or not isinstance(upn, str):
            return _bad("user_code and upn are required strings")
        if not approve_device_code(self.state, user_code, upn):
            return _bad(f"no pending device code {user_code!r}", 404)
        return web.json_response({"user_code": user_code, "upn": upn, "approved": True})

    async def stats(self, request: web.Request) -> web.Response:
        with self.state.lock:
            items = sorted(self.state.counters.items())
        return web.json_response({"counters": [{"key": list(k), "count": n} for k, n in items]})

    async def reset(self, request: web.Request) -> web.Response:
        reset_faults(self.state)
        return web.json_response({"reset": True})
