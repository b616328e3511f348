"""The NOC status board at `/`: what is broken, why, and the fix, readable from across a room.

Why a board in the exporter: teams without Grafana on the wall, and everyone in the first minute
of an incident, need one page that says "3 of 13 checks failing, 2 root causes" and, under it,
one block per root cause (a credential and the mailboxes it breaks, an endpoint and the mailboxes
behind it) with the fix filled in for that credential and mailbox. Then the credentials' expiry
countdowns and the endpoints' certificates, then every mailbox.

Rules it keeps:
- It reads only the ResultStore and the config: viewing it never runs a probe, so never causes a
  login at Microsoft, and it links nowhere that does (no /probe).
- Every link is relative (no leading slash), so it works behind `--web.route-prefix` / a proxy.
- Everything shown is escaped; no external assets (a NOC network may be offline).
- It refreshes itself: a small script re-fetches this same page every REFRESH seconds and swaps
  the board in (no flicker, no lost scroll); if the exporter stops answering, a banner says since
  when the board is stale instead of showing old green. Without script, a meta refresh.
- Dark wall-screen mode: `?theme=dark` (or `light`), default follows prefers-color-scheme.
"""

from __future__ import annotations

import html
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING
from urllib.parse import urlencode

from aiohttp import web

from . import __version__
from .facts import MESSAGES, OLDEST_MESSAGE, SECRET_PREFIX, TOKEN_EXPIRY
from .fixes import fix_for_credential, fix_for_key, fix_for_mail
from .probes.result import ProbeResult
from .reasons import Category, Reason

if TYPE_CHECKING:
    from .runtime import Runtime
    from .store import Key, KeyState

REFRESH = 15  # seconds between refreshes of the board
EXPIRY_WARN = 30 * 86400  # countdowns turn amber below this
EXPIRY_CRIT = 7 * 86400  # and red below this
OLDEST_WARN = 3600  # an oldest message older than this is shown amber (the alert's default threshold)


def esc(value: object) -> str:
    return html.escape(str(value), quote=True)


def countdown(seconds: float) -> str:
    """`in 21d 4h`, `in 3h 12m`, `in 45s`, or `2d ago` for the past."""
    past, s = seconds < 0, abs(int(seconds))
    d, h, m = s // 86400, s % 86400 // 3600, s % 3600 // 60
    text = f"{d}d {h}h" if d else f"{h}h {m}m" if h else f"{m}m" if m else f"{s}s"
    return f"{text} ago" if past else f"in {text}"


def age(seconds: float) -> str:
    return countdown(-seconds).removesuffix(" ago") if seconds >= 0 else "0s"


def level(seconds_left: float) -> str:
    return "crit" if seconds_left < EXPIRY_CRIT else "warn" if seconds_left < EXPIRY_WARN else "ok"


@dataclass
class Cause:
    """One root cause: what failed, why, the fix, and every check it breaks."""

    kind: str  # credential | endpoint | mailbox
    name: str
    reason: Reason
    detail: str
    fix: str
    affected: list[tuple[str, str]] = field(default_factory=list)  # (mailbox, check)


@dataclass
class Board:
    generated: float
    total: int = 0
    failing: int = 0
    pending: int = 0
    causes: list[Cause] = field(default_factory=list)
    credentials: list[tuple[str, str, list[tuple[str, float]]]] = field(default_factory=list)
    endpoints: list[tuple[str, bool | None, str, float | None]] = field(default_factory=list)
    mailboxes: list[tuple[str, str, dict[str, ProbeResult | None], float | None, float | None]] = field(
        default_factory=list)


def build(rt: Runtime, now: float | None = None) -> Board:
    """Group the store's current results by root cause (pure: no I/O, no probes)."""
    now = time.time() if now is None else now
    cfg = rt.config
    snap: dict[Key, KeyState] = rt.store.snapshot()
    board = Board(now)
    causes: dict[tuple[str, str, str], Cause] = {}

    def cause(kind: str, name: str, reason: Reason, detail: str, fix: str) -> Cause:
        key = (kind, name, reason.value if kind == "mailbox" else "")
        if key not in causes:
            causes[key] = Cause(kind, name, reason, detail, fix)
        return causes[key]

    for name in cfg.credentials:  # a failing credential is a cause even with no mailbox left
        st = snap.get(("credential", name))
        if st is not None and st.last is not None and not st.last.success and st.last.reason is not None:
            r = st.last.reason
            cause("credential", name, r, st.last.detail, fix_for_credential(cfg, r, name))
    for key, st in snap.items():
        if key[0] == "endpoint" and st.last is not None and not st.last.success and st.last.reason is not None:
            r = st.last.reason
            cause("endpoint", f"{key[1]}:{key[2]}", r, st.last.detail, fix_for_key(cfg, r, key))

    for m in cfg.mailboxes:
        checks: dict[str, ProbeResult | None] = {}
        messages = oldest = None
        for check in ["token", *m.checks]:
            st = snap.get(("mailbox", m.label, check))
            if st is None:
                continue
            res = st.last
            checks[check] = res
            board.total += 1
            if res is None:
                board.pending += 1
                continue
            if isinstance(res.facts.get(MESSAGES), int | float):
                messages = float(res.facts[MESSAGES])
            if isinstance(res.facts.get(OLDEST_MESSAGE), int | float):
                oldest = float(res.facts[OLDEST_MESSAGE])
            if res.success or res.reason is None:
                continue
            board.failing += 1
            r = res.reason
            if check == "token" or r.info.category is Category.TOKEN:
                own = snap.get(("credential", m.credential))
                c = causes.get(("credential", m.credential, ""))
                if c is None:
                    base = own.last if own is not None and own.last is not None and not own.last.success else res
                    br = base.reason or r
                    c = cause("credential", m.credential, br, base.detail,
                              fix_for_mail(cfg, br, m.label, "token"))
            elif r.info.category is Category.NETWORK and check != "token":
                ep = cfg.endpoint_for(m, check)
                c = causes.get(("endpoint", f"{ep.host}:{ep.port}", "")) or cause(
                    "endpoint", f"{ep.host}:{ep.port}", r, res.detail,
                    fix_for_mail(cfg, r, m.label, check))
            else:
                c = cause("mailbox", m.label, r, res.detail, fix_for_mail(cfg, r, m.label, check))
            c.affected.append((m.label, check))
        if messages == 0:
            oldest = None
        board.mailboxes.append((m.label, m.credential, checks, messages, oldest))

    # failing first: the cause breaking the most checks on top
    board.causes = sorted(causes.values(), key=lambda c: (-len(c.affected), c.kind, c.name))
    for name in cfg.credentials:
        st = snap.get(("credential", name))
        status = "pending" if st is None or st.last is None else "ok" if st.last.success else "fail"
        expiries: list[tuple[str, float]] = []
        if st is not None and st.last is not None and isinstance(st.last.facts.get(TOKEN_EXPIRY), int | float):
            expiries.append(("access token", float(st.last.facts[TOKEN_EXPIRY])))
        for key, ast in sorted(snap.items()):
            if key[0] == "audit" and key[1] == name and ast.last is not None:
                for fact, value in sorted(ast.last.facts.items()):
                    if fact.startswith(SECRET_PREFIX) and isinstance(value, int | float):
                        kid = fact[len(SECRET_PREFIX):]
                        label = "declared secret" if kid == "declared" else f"secret/cert {kid[:12]}"
                        expiries.append((label, float(value)))
        board.credentials.append((name, status, expiries))
    for key, st in sorted(snap.items()):
        if key[0] != "endpoint":
            continue
        res = st.last
        tls = res.facts.get("tls_cert_expiry") if res is not None else None
        board.endpoints.append((f"{key[1]}:{key[2]}", None if res is None else res.success,
                                res.reason.value if res is not None and res.reason else "",
                                float(tls) if isinstance(tls, int | float) else None))
    board.endpoints.sort(key=lambda e: (e[1] is not False, e[0]))  # failing first
    return board


# --------------------------------------------------------------------------- rendering

CSS = """
:root{--bg:#f6f8fa;--fg:#1f2328;--muted:#59636e;--card:#fff;--line:#d1d9e0;--ok:#1a7f37;--warn:#9a6700;
--crit:#cf222e;--pend:#6e7781;--okbg:#dafbe1;--critbg:#ffebe9;--warnbg:#fff8c5}
:root[data-theme=dark]{--bg:#0d1117;--fg:#f0f6fc;--muted:#9198a1;--card:#151b23;--line:#3d444d;--ok:#3fb950;
--warn:#d29922;--crit:#ff7b72;--pend:#9198a1;--okbg:#12361f;--critbg:#3c1618;--warnbg:#3a2c0a}
@media (prefers-color-scheme: dark){:root:not([data-theme=light]){--bg:#0d1117;--fg:#f0f6fc;--muted:#9198a1;
--card:#151b23;--line:#3d444d;--ok:#3fb950;--warn:#d29922;--crit:#ff7b72;--pend:#9198a1;--okbg:#12361f;
--critbg:#3c1618;--warnbg:#3a2c0a}}
*{box-sizing:border-box}
body{margin:0;background:var(--bg);color:var(--fg);font:clamp(16px,1.25vw,30px)/1.35 system-ui,-apple-system,
"Segoe UI",Roboto,"DejaVu Sans",sans-serif}
header{display:flex;flex-wrap:wrap;gap:.5em 1.5em;align-items:baseline;justify-content:space-between;
padding:.6em 1em;border-bottom:1px solid var(--line)}
header h1{font-size:1.1em;margin:0}
nav a{color:var(--muted);margin-left:1em}
main{padding:0 1em 1em}
.demo,.stale{font-weight:700;text-align:center;padding:.35em;letter-spacing:.15em}
.demo{background:#8250df;color:#fff}
.stale{background:var(--crit);color:#fff;display:none}
.summary{font-size:2.6em;font-weight:800;margin:.35em 0 .1em;line-height:1.1}
.summary.ok{color:var(--ok)}.summary.fail{color:var(--crit)}
.sub{color:var(--muted);margin:0 0 .8em}
h2{font-size:1.15em;margin:1.2em 0 .4em;color:var(--muted);text-transform:uppercase;letter-spacing:.08em}
.cause{background:var(--critbg);border-left:.4em solid var(--crit);border-radius:.3em;padding:.6em .9em;
margin:.6em 0}
.cause h3{margin:0;font-size:1.4em}
.cause .why{font-size:1.1em;margin:.2em 0}
.cause .kind{color:var(--muted);font-weight:400;font-size:.75em;text-transform:uppercase;letter-spacing:.08em}
.fix{font-family:ui-monospace,"DejaVu Sans Mono",monospace;font-size:.85em;background:var(--card);
border:1px solid var(--line);border-radius:.3em;padding:.35em .5em;margin:.4em 0;overflow-wrap:anywhere}
.detail{color:var(--muted);font-size:.8em;overflow-wrap:anywhere}
.affected{margin:.3em 0 0;padding:0;list-style:none;display:flex;flex-wrap:wrap;gap:.3em}
.affected li{background:var(--card);border:1px solid var(--line);border-radius:1em;padding:.05em .6em}
.grid{display:grid;grid-template-columns:repeat(auto-fill,minmax(min(100%,22em),1fr));gap:.6em}
.card{background:var(--card);border:1px solid var(--line);border-radius:.3em;padding:.5em .7em}
.card .name{font-weight:700;overflow-wrap:anywhere}
a.chiplink{text-decoration:none;color:inherit}
.chip{display:inline-block;border-radius:.3em;padding:0 .45em;margin:.15em .2em 0 0;font-weight:700;
font-size:.85em}
.chip.ok{background:var(--okbg);color:var(--ok)}.chip.fail{background:var(--critbg);color:var(--crit)}
.chip.pending{color:var(--pend);border:1px dashed var(--pend)}
.ok{color:var(--ok)}.warn{color:var(--warn)}.crit{color:var(--crit)}.muted{color:var(--muted)}
.kv{display:flex;justify-content:space-between;gap:1em}
footer{color:var(--muted);font-size:.8em;padding:0 1em 1em}
"""

SCRIPT = """
(function(){var every=%d*1000,last=Date.now(),stale=document.getElementById('stale');
function tick(){fetch(location.href,{cache:'no-store',credentials:'same-origin'}).then(function(r){
if(!r.ok)throw new Error(r.status);return r.text()}).then(function(t){
var doc=new DOMParser().parseFromString(t,'text/html'),fresh=doc.getElementById('board');
if(!fresh)throw new Error('no board');document.getElementById('board').replaceWith(fresh);
last=Date.now();stale.style.display='none';document.title=doc.title}).catch(function(){
stale.textContent='BOARD STALE: exporter not answering since '+new Date(last).toLocaleTimeString();
stale.style.display='block'})}
setInterval(tick,every)})();
"""


def _chip(label: str, check: str, res: ProbeResult | None) -> str:
    """A check's status; once it has a result, a relative link to that recorded result's debug page
    (`debug?...` never probes, so a crawler following it causes no login)."""
    if res is None:
        return f'<span class="chip pending" data-check="{esc(check)}">{esc(check)} …</span>'
    if res.success:
        chip = f'<span class="chip ok" data-check="{esc(check)}">{esc(check)} ✓</span>'
    else:
        reason = res.reason.value if res.reason else "failed"
        chip = f'<span class="chip fail" data-check="{esc(check)}">{esc(check)} ✗ {esc(reason)}</span>'
    href = "debug?" + urlencode({"mailbox": label, "check": check})
    return f'<a class="chiplink" href="{esc(href)}" title="last recorded result">{chip}</a>'


def _when(ts: float, now: float, short_lived: bool = False) -> str:
    """A countdown coloured by urgency; access tokens live an hour by design: red only when expired."""
    left = ts - now
    cls = ("crit" if left < 0 else "ok") if short_lived else level(left)
    stamp = datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%d %H:%M UTC")
    return f'<span class="{cls}" title="{esc(stamp)}">{esc(countdown(left))}</span>'


def render(board: Board, *, demo: bool = False, theme: str | None = None) -> str:
    now = board.generated
    n_causes = len(board.causes)
    if board.failing or n_causes:
        summary = (f'<p class="summary fail" id="summary" data-failing="{board.failing}" data-total="{board.total}" '
                   f'data-causes="{n_causes}">{board.failing} of {board.total} checks failing, '
                   f'{n_causes} root cause{"" if n_causes == 1 else "s"}</p>')
    else:
        summary = (f'<p class="summary ok" id="summary" data-failing="0" data-total="{board.total}" data-causes="0">'
                   f'All {board.total} checks OK</p>')
    sub = f"{board.pending} pending · " if board.pending else ""
    sub += f"updated {datetime.fromtimestamp(now, UTC):%H:%M:%S} UTC · refreshes every {REFRESH}s"

    causes = []
    for c in board.causes:
        affected = "".join(f'<li data-mailbox="{esc(mb)}" data-check="{esc(ck)}">{esc(mb)} · {esc(ck)}</li>'
                           for mb, ck in c.affected)
        breaks = (f'breaks {len(c.affected)} check{"" if len(c.affected) == 1 else "s"}:' if c.affected
                  else "no mailbox check failing (yet)")
        causes.append(
            f'<section class="cause" data-kind="{esc(c.kind)}" data-name="{esc(c.name)}" '
            f'data-reason="{esc(c.reason.value)}" data-affected="{len(c.affected)}">'
            f'<h3><span class="kind">{esc(c.kind)}</span> {esc(c.name)}</h3>'
            f'<p class="why"><b>{esc(c.reason.value)}</b>: {esc(c.reason.summary)}</p>'
            f'<div class="fix"><b>Fix:</b> {esc(c.fix)}</div>'
            + (f'<div class="detail">{esc(c.detail)}</div>' if c.detail else "")
            + f'<div class="muted">{esc(breaks)}</div><ul class="affected">{affected}</ul></section>')

    creds = []
    for name, status, expiries in board.credentials:
        rows = "".join(f'<div class="kv"><span>{esc(what)}</span>{_when(ts, now, what == "access token")}</div>'
                       for what, ts in expiries)
        creds.append(f'<div class="card" data-credential="{esc(name)}"><div class="name">{esc(name)} '
                     f'<span class="chip {esc(status)}">{esc(status)}</span></div>'
                     f'{rows or "<div class=muted>no expiry known</div>"}</div>')
    eps = []
    for name, ok, reason, tls in board.endpoints:
        status = "pending" if ok is None else "ok" if ok else "fail"
        tls_row = f'<div class="kv"><span>TLS certificate</span>{_when(tls, now)}</div>' if tls is not None else ""
        eps.append(f'<div class="card" data-endpoint="{esc(name)}"><div class="name">{esc(name)} '
                   f'<span class="chip {status}">{esc(reason or status)}</span></div>{tls_row}</div>')
    boxes = []
    order = sorted(board.mailboxes, key=lambda b: (not any(r is not None and not r.success for r in b[2].values()),
                                                   b[0]))
    for label, cred, checks, messages, oldest in order:
        failing = any(r is not None and not r.success for r in checks.values())
        extra = []
        if messages is not None:
            extra.append(f"{messages:.0f} in INBOX")
        if oldest is not None:
            waited = now - oldest
            cls = "warn" if waited > OLDEST_WARN else "muted"
            extra.append(f'<span class="{cls}">oldest waiting {esc(age(waited))}</span>')
        boxes.append(f'<div class="card" data-mailbox="{esc(label)}" data-failing="{int(failing)}">'
                     f'<div class="name">{esc(label)}</div><div class="muted">credential {esc(cred)}</div>'
                     f'<div>{"".join(_chip(label, c, r) for c, r in checks.items())}</div>'
                     f'<div class="muted">{" · ".join(extra)}</div></div>')

    theme_attr = f' data-theme="{esc(theme)}"' if theme in ("dark", "light") else ""
    toggle = "?theme=light" if theme == "dark" else "?theme=dark"
    title = (f"{board.failing} failing · m365-mail-exporter" if board.failing else "OK · m365-mail-exporter")
    banner = '<div class="demo" id="demo">DEMO: simulated tenant, not real Microsoft 365</div>' if demo else ""
    return f"""<!doctype html><html lang="en"{theme_attr}><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width,initial-scale=1"><title>{esc(title)}</title>
<noscript><meta http-equiv="refresh" content="{REFRESH}"></noscript><style>{CSS}</style></head><body>
{banner}<div class="stale" id="stale" role="alert"></div>
<header><h1>m365-mail-exporter status</h1><nav><a href="{toggle}" id="theme-toggle">{'light' if theme == 'dark'
else 'dark'} mode</a><a href="metrics">metrics</a><a href="-/healthy">health</a><a href="-/ready">ready</a></nav>
</header>
<main id="board">{summary}<p class="sub">{esc(sub)}</p>
{'<h2>Root causes</h2>' + ''.join(causes) if causes else ''}
<h2>Mailboxes</h2><div class="grid" id="mailboxes">{''.join(boxes) or '<p>no mailboxes configured</p>'}</div>
<h2>Credentials</h2><div class="grid" id="credentials">{''.join(creds)}</div>
<h2>Endpoints</h2><div class="grid" id="endpoints">{''.join(eps) or '<p class="muted">no endpoint checks</p>'}</div>
</main><footer>m365-mail-exporter {esc(__version__)} · results of background probes; viewing this page runs none
</footer><script>{SCRIPT % REFRESH}</script></body></html>"""


def response(rt: Runtime, request: web.Request) -> web.Response:
    theme = request.query.get("theme")
    body = render(build(rt), demo=bool(getattr(rt, "demo", False)), theme=theme)
    return web.Response(text=body, content_type="text/html", headers={"Cache-Control": "no-store"})
