"""Collector: /metrics as pre-rendered per-key fragments, joined on scrape.

Why not build metric families on every scrape: at 10,000 mailboxes that is ~300k samples and
seconds of CPU per scrape, holding the GIL while probes starve, although only the few keys
probed since the last scrape changed. Instead:

- every store key has a *fragment*: its exposition lines, one byte string per family it
  contributes to, rendered only when the key's version changed (the store hands over the
  changed keys in O(1));
- keys are grouped in blocks (in store order); a block caches its per-family join, so a
  scrape joins a few hundred block strings, not every sample;
- `m365_probe_overdue` (time-derived) is cached per block until the earliest moment one of
  its keys can turn overdue, so time passing never forces a re-render;
- cross-key series (messages per mailbox from IMAP or POP3, DNS per host) are small group
  fragments re-rendered when a member key changed;
- the store lock is held only to swap the dirty set and copy one key's state at a time.

The output is byte-identical to prometheus_client's `generate_latest` over families built
the old way (tests/reference_collector.py, tests/test_exposition.py), in the text format and
in OpenMetrics.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import NamedTuple

from prometheus_client import CollectorRegistry, GCCollector, PlatformCollector, ProcessCollector, generate_latest
from prometheus_client.openmetrics.exposition import generate_latest as generate_openmetrics
from prometheus_client.utils import floatToGoString

from .bodyparts import BodyParts, as_bytes
from .buildinfo import build_info
from .cadence import Cadences
from .facts import (
    IDENTITY_MATCH,
    MESSAGES,
    OLDEST_MESSAGE,
    REDIRECT_MATCH,
    SCOPE_PREFIX,
    SECRET_PREFIX,
    TOKEN_EXPIRY,
    TOKEN_REFRESHED,
    TOKEN_REQUESTS,
)
from .gzmembers import Chunk, chunk, gzip_body
from .store import Key, KeyState, ResultStore

log = logging.getLogger(__name__)

CACHE_MAX_AGE = 1.0  # process_*/python_gc_* and the scheduler queue-wait fact may be this old
WARM_EVERY = 0.25  # keep_warm: seconds between background refreshes of the exposition
WARM_SLICE = 32  # changed keys rendered per event-loop slice (~1-3 ms)
WARM_SLICES = 64  # at most this many slices per WARM_EVERY (bounded; the rest waits for the scrape)
SCRAPE_SLICES = 32  # a scrape renders at most this many slices on the loop first (the rest in its thread)
MIN_RENDER_INTERVAL = 1.0  # scrapes within this of the last render share it even if results changed
PREBUILD_LEAD = 0.4  # keep_warm builds a regular scraper's body this long before its next scrape is due
PREBUILD_EVERY = (1.0, 300.0)  # request intervals (seconds) taken as a regular scraper's cadence
GZ_MIN_MEMBER = 256 * 1024  # raw bytes per gzip deflate chunk at least (adjacent families share one)
BLOCK_KEYS = 8  # small: a scrape after a few hundred results rejoins few keys (cost ~ changed keys x this)

# facts recorded by the IMAP/POP3 probes, exported per mailbox (most recent of the two)
MAILBOX_FACTS = {MESSAGES: "m365_mailbox_messages", OLDEST_MESSAGE: "m365_mailbox_oldest_message_timestamp_seconds"}
MAIL_CHECKS_WITH_MIRROR_ONLY = frozenset({"token"})  # per-mailbox token mirror: success + failure_info only

TEXT = "text"
Body = bytes | BodyParts  # gzip bodies are bytes; uncompressed ones stay in parts (bodyparts.py)
OPENMETRICS = "openmetrics"
WARM_VARIANTS = ((OPENMETRICS, True), (TEXT, True))  # built once before ready: what Prometheus asks for


@dataclass(frozen=True)
class MailboxInfo:
    """Configured mailbox: joins mailbox series to their credential (dashboards, alert routing)."""

    mailbox: str
    address: str
    credential: str


@dataclass(frozen=True)
class CredentialInfo:
    name: str
    tenant_id: str
    client_id: str
    flow: str
    auth: str


@dataclass(frozen=True)
class Family:
    name: str  # without _total for counters
    type: str  # gauge | counter
    help: str

    def header(self, fmt: str) -> bytes:
        if fmt == OPENMETRICS:
            doc = self.help.replace("\\", r"\\").replace("\n", r"\n").replace('"', r"\"")
            return f"# HELP {self.name} {doc}\n# TYPE {self.name} {self.type}\n".encode()
        name = self.name + "_total" if self.type == "counter" else self.name
        doc = self.help.replace("\\", r"\\").replace("\n", r"\n")
        return f"# HELP {name} {doc}\n# TYPE {name} {self.type}\n".encode()

    @property
    def sample(self) -> str:
        return self.name + "_total" if self.type == "counter" else self.name


def _fams(kind: str, suffix: str, *rows: tuple[str, str]) -> list[Family]:
    return [Family(n, kind, d + suffix) for n, d in rows]


_BG = " (from background probes)"
_TOK = " (from background token probes)"
_AUD = " (from the background Graph audit)"
_EP = " (from background endpoint probes)"

# The exported families, in exposition order (dashboards and alerts depend on the names).
FAMILIES: list[Family] = [
    *_fams("gauge", _BG,
           ("m365_probe_success", "1 if the last probe of this mailbox check succeeded"),
           ("m365_probe_duration_seconds", "Duration of the last probe"),
           ("m365_probe_last_run_timestamp_seconds", "When the last probe finished"),
           ("m365_probe_last_success_timestamp_seconds", "When a probe last succeeded"),
           ("m365_probe_interval_seconds", "Configured probe interval"),
           ("m365_probe_overdue", "1 if no probe finished within 2 intervals plus the timeout")),
    Family("m365_probes", "counter", "Probes run (background probes)"),
    Family("m365_probe_failures", "counter", "Failed probes by reason (background probes)"),
    Family("m365_probe_failure_info", "gauge", "1 while the check fails with this reason (from background probes)"),
    Family("m365_mailbox_messages", "gauge",
           "Messages in INBOX from IMAP EXAMINE or POP3 STAT (from background probes)"),
    Family("m365_mailbox_oldest_message_timestamp_seconds", "gauge",
           "Arrival time of the oldest message in INBOX from IMAP or POP3 (from background probes)"),
    *_fams("gauge", _TOK,
           ("m365_token_refresh_success", "1 if the last forced token refresh succeeded"),
           ("m365_token_refresh_duration_seconds", "Duration of the last token refresh"),
           ("m365_token_expiry_timestamp_seconds", "Expiry of the current access token"),
           ("m365_token_last_refresh_timestamp_seconds", "When a token was last obtained from the IdP"),
           ("m365_token_identity_match", "1 if the token was issued for the configured identity")),
    Family("m365_token_refresh_failures", "counter", "Failed token refreshes by reason"),
    Family("m365_token_refresh_failure_info", "gauge", "1 while token refresh fails with this reason"),
    Family("m365_token_requests", "counter", "Requests sent to the token endpoint by this exporter"),
    Family("m365_token_missing_scope", "gauge", "1 if the token lacks a scope/role the credential's checks need"),
    Family("m365_client_secret_expiry_timestamp_seconds", "gauge",
           "Expiry of the app's client secrets and certificate credentials (Graph audit or declared)"),
    *_fams("gauge", _AUD,
           ("m365_app_audit_success", "1 if the last app-registration read from Microsoft Graph succeeded"),
           ("m365_app_audit_failure_info", "1 while the app-registration audit fails with this reason"),
           ("m365_app_redirect_uri_match",
            "1 if app_external_url is among the app registration's web redirect URIs")),
    Family("m365_credential_info", "gauge", "Configured credentials"),
    Family("m365_mailbox_info", "gauge", "Configured mailboxes and the credential each uses"),
    *_fams("gauge", _EP,
           ("m365_dns_lookup_success", "1 if the host resolved"),
           ("m365_dns_lookup_duration_seconds", "DNS resolution time"),
           ("m365_tcp_connect_success", "1 if a TCP connection was established"),
           ("m365_tcp_connect_duration_seconds", "TCP connect time"),
           ("m365_tls_handshake_success", "1 if a verified TLS handshake completed"),
           ("m365_tls_handshake_duration_seconds", "TLS handshake time"),
           ("m365_tls_version_info", "Negotiated TLS version"),
           ("m365_tls_cert_verified", "1 if the certificate chain and host name verified"),
           ("m365_tls_cert_expiry_timestamp_seconds", "Earliest notAfter in the certificate chain sent"),
           ("m365_endpoint_failure_info", "1 while the endpoint check fails with this reason")),
    Family("m365_exporter_build_info", "gauge", "Build information"),
]
FACT_FAMILIES: list[Family] = _fams(
    "gauge", "",
    ("m365_config_last_reload_successful", "0 if the last config reload failed (old config keeps running)"),
    ("m365_config_last_reload_success_timestamp_seconds", "When a config was last loaded successfully"),
    ("m365_mailboxes", "Configured mailboxes"),
    ("m365_credentials", "Configured credentials"),
    ("m365_scheduler_queue_wait_seconds", "How long the last probe waited for a concurrency slot"),
    ("m365_scheduler_start_lateness_seconds", "How late after its slot the last scheduled probe started"),
    ("m365_web_connections", "Open connections to the web port"),
    ("m365_web_connection_limit", "Cap on web connections (--web.max-connections within the fd budget)"),
) + [Family("m365_scheduler_late_starts", "counter",
            "Scheduled probes that started more than 2 s after their slot")]
IDX = {f.name: i for i, f in enumerate(FAMILIES)}
OVERDUE = IDX["m365_probe_overdue"]


class Fragment(NamedTuple):
    """What one key (or group) contributes to the exposition: every family's lines in one bytes
    object, and where each family's lines end in it.

    Why two bytes objects and not a bytes object per family: 30,000 keys at 10,000 mailboxes
    contribute to ~9 families each; a bytes object costs 33 bytes and a tuple slot 8 beyond its
    text, ~390 bytes per key (~12 MiB). `layout` is (family index, end offset, ...), interned:
    keys whose labels have equal lengths share one tuple, so it costs a pointer per key."""

    text: bytes
    layout: Layout


Layout = tuple[int, ...]
EMPTY = Fragment(b"", ())
_LAYOUTS: dict[Layout, Layout] = {}  # interned layouts (bounded: cleared past LAYOUTS_MAX)
LAYOUTS_MAX = 65_536


def fragment(parts: Iterable[tuple[int, bytes]]) -> Fragment:
    """A Fragment of (family index, lines) pairs, in order."""
    texts: list[bytes] = []
    ends: list[int] = []
    end = 0
    for i, text in parts:
        end += len(text)
        ends += (i, end)
        texts.append(text)
    if not texts:
        return EMPTY
    layout = tuple(ends)
    shared = _LAYOUTS.get(layout)
    if shared is None:
        if len(_LAYOUTS) >= LAYOUTS_MAX:
            _LAYOUTS.clear()
        shared = _LAYOUTS[layout] = layout
    return Fragment(b"".join(texts), shared)


def sizes(layout: Layout) -> Iterator[tuple[int, int]]:
    """(family index, byte count of that family's lines) of a layout, in order."""
    start = 0
    ends = iter(layout)
    for i, end in zip(ends, ends, strict=True):
        yield i, end - start
        start = end


def pairs(text: bytes, layout: Layout) -> Iterator[tuple[int, bytes]]:
    """(family index, that family's lines) of a fragment, in order."""
    start = 0
    for i, n in sizes(layout):
        yield i, text[start:start + n]
        start += n


def _escape(v: str) -> str:
    if "\\" in v or "\n" in v or '"' in v:
        return v.replace("\\", r"\\").replace("\n", r"\n").replace('"', r"\"")
    return v


def sample_line(name: str, labels: dict[str, str], value: float) -> str:
    """One exposition line, exactly as prometheus_client writes it (labels sorted by name)."""
    if not labels:
        return f"{name} {floatToGoString(value)}\n"
    inner = ",".join(f'{k}="{_escape(labels[k])}"' for k in sorted(labels))
    return f"{name}{{{inner}}} {floatToGoString(value)}\n"


def _num(v: object) -> bool:
    return isinstance(v, int | float)


class _Out:
    """Collects lines per family for one fragment."""

    def __init__(self) -> None:
        self._lines: dict[int, list[str]] = {}

    def add(self, family: str, labels: dict[str, str], value: float) -> None:
        i = IDX[family]
        self._lines.setdefault(i, []).append(sample_line(FAMILIES[i].sample, labels, value))

    @property
    def fragment(self) -> Fragment:
        return fragment((i, "".join(v).encode()) for i, v in self._lines.items())


# --------------------------------------------------------------------------- per-key fragments


def render_key(key: Key, st: KeyState) -> Fragment:
    """The lines one store key contributes, per family (cross-key and time-derived ones excluded)."""
    out = _Out()
    kind = key[0]
    res = st.last
    if kind == "mailbox":
        mailbox, check = key[1], key[2]
        lb = {"mailbox": mailbox, "check": check}
        if check in MAIL_CHECKS_WITH_MIRROR_ONLY:
            if res is not None:
                out.add("m365_probe_success", lb, 1.0 if res.success else 0.0)
                if not res.success and res.reason is not None:
                    out.add("m365_probe_failure_info", {**lb, "reason": res.reason.value}, 1.0)
            return out.fragment
        out.add("m365_probe_interval_seconds", lb, st.interval)
        out.add("m365_probes", lb, st.total)
        for reason, n in sorted(st.failures.items()):
            out.add("m365_probe_failures", {**lb, "reason": reason}, n)
        if st.last_success_at is not None:
            out.add("m365_probe_last_success_timestamp_seconds", lb, st.last_success_at)
        if res is None:
            return out.fragment
        out.add("m365_probe_success", lb, 1.0 if res.success else 0.0)
        out.add("m365_probe_duration_seconds", lb, res.duration)
        out.add("m365_probe_last_run_timestamp_seconds", lb, res.finished_at)
        if not res.success and res.reason is not None:
            out.add("m365_probe_failure_info", {**lb, "reason": res.reason.value}, 1.0)
    elif kind == "credential":
        lb = {"credential": key[1]}
        for reason, n in st.failures.items():
            out.add("m365_token_refresh_failures", {**lb, "reason": reason}, n)
        if res is None:
            return out.fragment
        f = res.facts
        out.add("m365_token_refresh_success", lb, 1.0 if res.success else 0.0)
        out.add("m365_token_refresh_duration_seconds", lb, res.duration)
        if not res.success and res.reason is not None:
            out.add("m365_token_refresh_failure_info", {**lb, "reason": res.reason.value}, 1.0)
        for fact, fam in ((TOKEN_EXPIRY, "m365_token_expiry_timestamp_seconds"),
                          (TOKEN_REFRESHED, "m365_token_last_refresh_timestamp_seconds"),
                          (IDENTITY_MATCH, "m365_token_identity_match"), (TOKEN_REQUESTS, "m365_token_requests")):
            if _num(f.get(fact)):
                out.add(fam, lb, float(f[fact]))
        for fact, value in f.items():
            if fact.startswith(SCOPE_PREFIX) and _num(value):
                out.add("m365_token_missing_scope", {**lb, "scope": fact[len(SCOPE_PREFIX):]}, float(value))
    elif kind == "endpoint":
        if res is None:
            return out.fragment
        lb = {"host": key[1], "port": key[2]}
        f = res.facts
        for fact, fam in (("tcp_success", "m365_tcp_connect_success"),
                          ("tcp_duration", "m365_tcp_connect_duration_seconds"),
                          ("tls_success", "m365_tls_handshake_success"),
                          ("tls_duration", "m365_tls_handshake_duration_seconds"),
                          ("tls_cert_verified", "m365_tls_cert_verified"),
                          ("tls_cert_expiry", "m365_tls_cert_expiry_timestamp_seconds")):
            if _num(f.get(fact)):
                out.add(fam, lb, float(f[fact]))
        if isinstance(f.get("tls_version"), str):
            out.add("m365_tls_version_info", {**lb, "version": str(f["tls_version"])}, 1.0)
        if not res.success and res.reason is not None:
            out.add("m365_endpoint_failure_info", {**lb, "reason": res.reason.value}, 1.0)
    elif kind == "audit" and res is not None:
        lb = {"credential": key[1]}
        for fact, value in res.facts.items():
            if fact.startswith(SECRET_PREFIX) and _num(value):
                out.add("m365_client_secret_expiry_timestamp_seconds", {**lb, "key_id": fact[len(SECRET_PREFIX):]},
                        float(value))
        if key[2] == "graph":  # exporter/audit.py
            out.add("m365_app_audit_success", lb, 1.0 if res.success else 0.0)
            if not res.success and res.reason is not None:
                out.add("m365_app_audit_failure_info", {**lb, "reason": res.reason.value}, 1.0)
            if _num(res.facts.get(REDIRECT_MATCH)):
                out.add("m365_app_redirect_uri_match", lb, float(res.facts[REDIRECT_MATCH]))
    return out.fragment


def has_overdue(key: Key) -> bool:
    return key[0] == "mailbox" and key[2] not in MAIL_CHECKS_WITH_MIRROR_ONLY


def group_of(key: Key) -> Key | None:
    """The cross-key group a key feeds: most recent per mailbox (messages) or per host (DNS)."""
    if key[0] == "mailbox" and key[2] not in MAIL_CHECKS_WITH_MIRROR_ONLY:
        return ("mailbox-facts", key[1])
    if key[0] == "endpoint":
        return ("dns", key[1])
    return None


def render_group(group: Key, members: Iterable[KeyState]) -> Fragment:
    """Most recent value per group, first one wins on ties (members in store order)."""
    out = _Out()
    if group[0] == "mailbox-facts":
        for fact, fam in MAILBOX_FACTS.items():
            best: tuple[float, float] | None = None
            for st in members:
                res = st.last
                if res is not None and _num(res.facts.get(fact)) and (best is None or best[0] < res.finished_at):
                    best = (res.finished_at, float(res.facts[fact]))
            if best is not None:
                out.add(fam, {"mailbox": group[1]}, best[1])
    else:
        seen: tuple[float, float, float | None] | None = None
        for st in members:
            res = st.last
            if res is None or "dns_success" not in res.facts:
                continue
            if res.finished_at > (seen[0] if seen else 0.0):
                dur = res.facts.get("dns_duration")
                seen = (res.finished_at, float(res.facts["dns_success"]), float(dur) if _num(dur) else None)
        if seen is not None:
            out.add("m365_dns_lookup_success", {"host": group[1]}, seen[1])
            if seen[2] is not None:
                out.add("m365_dns_lookup_duration_seconds", {"host": group[1]}, seen[2])
    return out.fragment


# --------------------------------------------------------------------------- blocks


class _Overdue(NamedTuple):
    """A has_overdue key's overdue line, but for its value, and when it turns 1."""

    at: float
    labels: str


@dataclass
class _Block:
    keys: list[Key]
    dirty: bool = True
    joined: dict[int, bytes] = field(default_factory=dict)
    overdue: bytes = b""
    overdue_valid_until: float = -1.0


class M365Exposition:
    """Incremental exposition of the store's families (everything but the standard collectors).

    Where a key's lines live: only in its block's joined bytes. A block's *slots* are its keys,
    each followed by the group homed there (if any); `_layouts` keeps every slot's layout (which
    families, how many bytes each), so a block rebuild slices the unchanged slots' lines out of
    the old joined bytes and puts the re-rendered ones (`_fresh`) in their place. Keeping every
    key's text beside the joined copy doubled the exposition's memory (~18 MiB at 10,000
    mailboxes, tracemalloc).

    Thread-safety: `render()` runs in one thread at a time (MetricsRenderer's lock); it reads
    the store only through `take_dirty`, `keys` and `view`, each a short locked operation.
    """

    def __init__(self, store: ResultStore, credentials: Callable[[], list[CredentialInfo]],
                 mailboxes: Callable[[], list[MailboxInfo]] | None = None) -> None:
        self.store = store
        self.credentials = credentials
        self.mailboxes = mailboxes or list
        self.static: list[tuple[Family, list[dict[str, str]]]] = []
        self.fragment_renders = 0  # counted for tests: proportional to what changed
        self._layout = -1  # the store layout the blocks follow; -1: none, or unknown after an error
        self._layouts: dict[Key, Layout] = {}  # slot (key or group) -> its lines' layout in its block
        self._fresh: dict[Key, Fragment] = {}  # slots rendered since their block was last rebuilt
        self._overdue: dict[Key, _Overdue] = {}
        self._groups: dict[Key, list[Key]] = {}
        self._blocks: list[_Block] = []
        self._parts: list[list[bytes]] = []  # family index -> block index -> bytes
        self._homed: dict[Key, Key] = {}  # first member key -> its group
        self.valid_until = float("inf")  # the body may change by time alone from then on
        self._block_of: dict[Key, int] = {}
        self._pending: set[Key] = set()  # taken from the store, not rendered yet
        self._dirty_blocks: set[int] = set()
        self._config_lines: dict[int, bytes] = {}
        self._headers: dict[tuple[str, int], bytes] = {}
        self._fam_version = [0] * len(FAMILIES)  # bumped whenever a family's parts change
        # (fmt, first family, last family) -> (their versions, deflate chunk)
        self._gz: dict[tuple[str, int, int], tuple[tuple[int, ...], Chunk]] = {}
        self.gz_compressed = 0  # families compressed (tests: unchanged families are not)

    def add_static(self, name: str, doc: str, labels: dict[str, str], value: float = 1.0) -> None:
        """A constant family set by the runtime (e.g. m365_exporter_shard_info{shard,shards} 1)."""
        self.static = [s for s in self.static if s[0].name != name]
        self.static.append((Family(name, "gauge", doc), [{**labels, "__value__": str(value)}]))

    # -- maintenance ----------------------------------------------------------------------
    def _relayout(self, dirty: set[Key]) -> None:
        """The key set changed (reload): rebuild blocks and groups, render new and changed keys.

        Unchanged slots keep their lines: they are sliced out of the old blocks first (unless
        an error left the blocks in an unknown state: then every slot is rendered again)."""
        carried: dict[Key, Fragment] = {}
        if self._layout != -1:
            for bi in range(len(self._blocks)):
                carried.update(self._slot_fragments(bi))
        self._layout = self.store.layout
        keys = self.store.keys()
        self._blocks = [_Block(keys[i:i + BLOCK_KEYS]) for i in range(0, len(keys), BLOCK_KEYS)]
        self._parts = [[b""] * len(self._blocks) for _ in FAMILIES]
        self._fam_version = [v + 1 for v in self._fam_version]
        self._block_of = {k: i // BLOCK_KEYS for i, k in enumerate(keys)}
        self._groups = {}
        for k in keys:
            g = group_of(k)
            if g is not None:
                self._groups.setdefault(g, []).append(k)
        self._homed = {members[0]: g for g, members in self._groups.items()}  # a group renders in its first key's block
        stale = {g for k in dirty if (g := group_of(k)) is not None}
        self._layouts = {}  # the new blocks hold nothing yet: every slot comes from _fresh
        self._fresh = {}
        self._overdue = {k: o for k, o in self._overdue.items() if k in self._block_of and k not in dirty}
        for g in self._groups:
            kept = carried.get(g) if g not in stale else None
            if kept is None:
                self._render_group(g)
            else:
                self._fresh[g] = kept
        for k in keys:
            kept = carried.get(k) if k not in dirty else None
            if kept is None or (has_overdue(k) and k not in self._overdue):
                self._render_key(k)
            else:
                self._fresh[k] = kept
        self._config_lines = self._render_config()

    def _render_key(self, key: Key) -> KeyState | None:
        st = self.store.view(key)
        if st is None:  # removed: its lines go at the block's next rebuild
            self._fresh[key] = EMPTY
            self._overdue.pop(key, None)
            return None
        self.fragment_renders += 1
        self._fresh[key] = render_key(key, st)
        if has_overdue(key):
            labels = sample_line("m365_probe_overdue", {"mailbox": key[1], "check": key[2]}, 0.0)[:-4]
            self._overdue[key] = _Overdue(st.overdue_at(), labels)
        return st

    def _render_group(self, group: Key) -> None:
        members = [st for k in self._groups.get(group, []) if (st := self.store.view(k)) is not None]
        self._fresh[group] = render_group(group, members)

    def _render_config(self) -> dict[int, bytes]:
        out = _Out()
        for c in self.credentials():
            out.add("m365_credential_info", {"credential": c.name, "tenant_id": c.tenant_id, "client_id": c.client_id,
                                             "flow": c.flow, "auth": c.auth}, 1.0)
        for m in self.mailboxes():
            out.add("m365_mailbox_info", {"mailbox": m.mailbox, "address": m.address, "credential": m.credential}, 1.0)
        out.add("m365_exporter_build_info", build_info().labels(), 1.0)
        return dict(pairs(*out.fragment))

    @property
    def pending(self) -> bool:
        """Changed keys taken from the store but not rendered yet (refresh with a limit)."""
        return bool(self._pending)

    def _update(self, limit: int | None = None) -> bool:
        """Render changed keys, at most `limit` of them; True when none is left. With a limit a
        layout change is left for the next full refresh (it renders every key)."""
        self._pending |= self.store.take_dirty()
        try:
            if self._layout != self.store.layout:
                if limit is not None:
                    return False
                dirty, self._pending = self._pending, set()
                self._relayout(dirty)
                self._dirty_blocks = set(range(len(self._blocks)))
                return True
            if limit is None or len(self._pending) <= limit:
                batch, self._pending = self._pending, set()
            else:
                batch = {self._pending.pop() for _ in range(limit)}
            groups: set[Key] = set()
            for key in batch:
                if key not in self._block_of:
                    continue  # pruned meanwhile: the next layout change drops it
                self._render_key(key)
                self._mark(self._block_of[key])
                g = group_of(key)
                if g is not None:
                    groups.add(g)
            for g in groups:
                self._render_group(g)
                self._mark(self._block_of[self._groups[g][0]])
            return not self._pending
        except BaseException:
            self._layout = -1  # unknown state: rebuild everything next time
            raise

    def _mark(self, bi: int) -> None:
        self._blocks[bi].dirty = True
        self._dirty_blocks.add(bi)

    # -- output ---------------------------------------------------------------------------
    def _slots(self, b: _Block) -> Iterator[Key]:
        for k in b.keys:
            yield k
            g = self._homed.get(k)
            if g is not None:
                yield g

    def _slot_fragments(self, bi: int) -> dict[Key, Fragment]:
        """Every slot of a block as a Fragment: the fresh one, or its lines sliced out of the
        block's joined bytes (a relayout carries unchanged slots over this way)."""
        b = self._blocks[bi]
        offsets: dict[int, int] = {}
        out: dict[Key, Fragment] = {}
        for slot in self._slots(b):
            layout = self._layouts.get(slot, ())
            texts: list[bytes] = []
            for i, n in sizes(layout):
                at = offsets.get(i, 0)
                offsets[i] = at + n
                texts.append(b.joined[i][at:at + n])
            fresh = self._fresh.get(slot)
            out[slot] = fresh if fresh is not None else Fragment(b"".join(texts), layout)
        return out

    def _rebuild_block(self, bi: int) -> None:
        """Re-join one block's per-family bytes: its fresh slots' lines in place of their old ones.

        Each family's lines are the block's slots' lines in slot order, so a run of unchanged
        slots is one slice of the old joined bytes; only the slots' layouts are walked (to know
        where each fresh slot's old lines were), not their text."""
        b = self._blocks[bi]
        old = b.joined
        pos: dict[int, int] = {}  # family -> end of the slots walked so far, in the old joined bytes
        cut: dict[int, int] = {}  # family -> start of the pending run of unchanged lines
        per: dict[int, list[bytes]] = {}
        layouts, fresh = self._layouts, self._fresh
        slots = list(self._slots(b))
        changed = [n for n, slot in enumerate(slots) if slot in fresh]
        fresh_slots = [(slots[n], fresh[slots[n]]) for n in changed]
        for slot in slots[:changed[-1] + 1] if changed else ():  # after the last fresh slot: one run each
            if slot not in fresh:  # unchanged: its lines stay in the pending runs
                for i, n in sizes(layouts.get(slot, ())):
                    pos[i] = pos.get(i, 0) + n
                continue
            for i, n in sizes(layouts.get(slot, ())):  # its old lines: close the runs before them
                at = pos.get(i, 0)
                c = cut.get(i, 0)
                if at > c:
                    per.setdefault(i, []).append(old[i][c:at])
                pos[i] = cut[i] = at + n
            for i, text in pairs(*fresh[slot]):
                at = pos.get(i, 0)
                c = cut.get(i, 0)
                if at > c:
                    per.setdefault(i, []).append(old[i][c:at])
                cut[i] = at
                per.setdefault(i, []).append(text)
        for i, data in old.items():  # the runs after the last fresh slot
            c = cut.get(i, 0)
            if c < len(data):
                per.setdefault(i, []).append(data[c:] if c else data)
        joined = {i: v[0] if len(v) == 1 else b"".join(v) for i, v in per.items()}
        for slot, new in fresh_slots:  # committed only now: an error above changes nothing
            layouts[slot] = new.layout
            fresh.pop(slot, None)
        for i in old.keys() - joined.keys():
            self._parts[i][bi] = b""
            self._fam_version[i] += 1
        b.joined = joined
        for i, data in joined.items():
            if old.get(i) is not data and old.get(i) != data:  # unchanged families keep their gzip chunk
                self._parts[i][bi] = data
                self._fam_version[i] += 1
        b.dirty = False
        b.overdue_valid_until = -1.0

    def _overdue_block(self, bi: int, now: float) -> None:
        b = self._blocks[bi]
        parts, until = [], float("inf")
        for k in b.keys:
            o = self._overdue.get(k)
            if o is None:
                continue
            late = now > o.at
            parts.append(o.labels + ("1.0\n" if late else "0.0\n"))
            if not late:
                until = min(until, o.at)
        data = "".join(parts).encode()
        if data != self._parts[OVERDUE][bi]:
            self._parts[OVERDUE][bi] = data
            self._fam_version[OVERDUE] += 1
        b.overdue_valid_until = until

    def _header(self, fmt: str, i: int) -> bytes:
        h = self._headers.get((fmt, i))
        if h is None:
            h = self._headers[(fmt, i)] = FAMILIES[i].header(fmt)
        return h

    def refresh(self, now: float | None = None, limit: int | None = None) -> bool:
        """Bring the parts up to date: changed keys, their blocks, time-derived overdue flags.

        With `limit`: at most that many changed keys and their blocks, no overdue pass and no
        relayout (a slice small enough for the event loop); True when nothing is pending."""
        done = self._update(limit)
        if limit is not None:
            for bi in self._dirty_blocks:
                self._rebuild_block(bi)
            self._dirty_blocks = set()
            return done
        now = time.time() if now is None else now
        for bi, b in enumerate(self._blocks):
            if b.dirty:
                self._rebuild_block(bi)
            if now >= b.overdue_valid_until:
                self._overdue_block(bi, now)
        self._dirty_blocks = set()
        self.valid_until = min((b.overdue_valid_until for b in self._blocks), default=float("inf"))
        return done

    def _tail(self, fmt: str) -> bytes:
        """Static families and exporter facts: small, rebuilt every time."""
        out: list[bytes] = []
        for sfam, rows in self.static:
            out.append(sfam.header(fmt))
            for row in rows:
                labels = {k: v for k, v in row.items() if k != "__value__"}
                out.append(sample_line(sfam.name, labels, float(row["__value__"])).encode())
        facts = dict(self.store.facts)
        for fam in FACT_FAMILIES:
            if fam.name in facts:
                out.append(fam.header(fmt) + sample_line(fam.sample, {}, facts[fam.name]).encode())
        return b"".join(out)

    def _family(self, fmt: str, i: int) -> list[bytes]:
        out = [self._header(fmt, i)]
        out += self._parts[i]
        if i in self._config_lines:
            out.append(self._config_lines[i])
        return out

    def body(self, fmt: str = TEXT, extra: bytes = b"") -> bytes:
        """The exposition as of the last refresh(), then `extra` (one join of the cached parts)."""
        return b"".join(self.parts(fmt, extra))

    def parts(self, fmt: str = TEXT, extra: bytes = b"") -> list[bytes]:
        """What body() joins: references to the cached parts (bodyparts.py), in order."""
        out: list[bytes] = []
        for i in range(len(FAMILIES)):
            out += filter(None, self._family(fmt, i))  # empty blocks of sparse families: most of them
        out.append(self._tail(fmt))  # static families follow m365_exporter_build_info, the last one
        out.append(extra)
        return out

    def gzip_chunks(self, fmt: str = TEXT) -> list[Chunk]:
        """The exposition as of the last refresh() as deflate chunks (gzmembers.py), each a run of
        adjacent families of at least GZ_MIN_MEMBER bytes (small chunks compress badly): a run
        none of whose families changed keeps its chunk, the rest are compressed again."""
        out: list[Chunk] = []
        gz: dict[tuple[str, int, int], tuple[tuple[int, ...], Chunk]] = {}
        run: list[bytes] = []
        size, first = 0, 0
        for i in range(len(FAMILIES)):
            parts = self._family(fmt, i)
            run += filter(None, parts)  # bytes.join keeps 80 bytes per item: skip the empty blocks
            size += sum(map(len, parts))
            if size < GZ_MIN_MEMBER and i < len(FAMILIES) - 1:
                continue
            slot, versions = (fmt, first, i), tuple(self._fam_version[first:i + 1])
            hit = self._gz.get(slot)
            if hit is None or hit[0] != versions:
                hit = (versions, chunk(b"".join(run)))
                self.gz_compressed += 1
            gz[slot] = hit
            out.append(hit[1])
            run, size, first = [], 0, i + 1
        # runs not produced this time (moved boundaries) are dropped; the other format's are kept
        self._gz = {k: v for k, v in self._gz.items() if k[0] != fmt} | gz
        out.append(chunk(self._tail(fmt)))
        return out

    def render(self, fmt: str = TEXT, now: float | None = None) -> bytes:
        self.refresh(now)
        return self.body(fmt)


# --------------------------------------------------------------------------- the renderer


@dataclass
class _Cached:
    """One format's body at one store version: its parts (never joined, bodyparts.py) and its
    gzip body, each made on demand."""

    refreshed: bool = False  # the exposition was refreshed for this version
    text: BodyParts | None = None
    gz: bytes | None = None
    version: int = -1
    layout: int = -1
    at: float = 0.0
    valid_until: float = 0.0


def content_type(fmt: str) -> str:
    if fmt == OPENMETRICS:
        return "application/openmetrics-text; version=1.0.0; charset=utf-8"
    return "text/plain; version=0.0.4; charset=utf-8"


class MetricsRenderer:
    """Cached /metrics bodies (per format, plain and gzip), rendered off the event loop."""

    def __init__(self, store: ResultStore, credentials: Callable[[], list[CredentialInfo]],
                 mailboxes: Callable[[], list[MailboxInfo]] | None = None) -> None:
        self.store = store
        self.exposition = M365Exposition(store, credentials, mailboxes)
        self.standard = CollectorRegistry(auto_describe=False)
        for collector in (ProcessCollector, PlatformCollector, GCCollector):
            collector(registry=self.standard)  # type: ignore[operator]
        self._cache: dict[str, _Cached] = {TEXT: _Cached(), OPENMETRICS: _Cached()}
        self._lock = threading.Lock()
        self._render_lock: asyncio.Lock | None = None
        self._keeping_warm = False  # keep_warm runs (serve): readiness then waits for its first full render
        self._requests: dict[tuple[str, bool], Cadences] = {}  # per body variant (format, gzipped)
        self._warmed = False  # latched: the exposition was laid out once

    def add_static(self, name: str, doc: str, labels: dict[str, str], value: float = 1.0) -> None:
        self.exposition.add_static(name, doc, labels, value)
        self.store.bump()  # invalidate cached bodies

    async def keep_warm(self) -> None:
        """Keep the exposition rendered, so a scrape only joins or compresses.

        Why: the first render after start-up or a reload renders every key (~1 s at 10,000
        mailboxes): it runs here, in a worker thread, and no scrape waits for it. Changed keys
        are then rendered every WARM_EVERY in small slices *on the event loop*, yielding between
        slices: a worker thread running Python competes with the loop for the GIL and the loop
        gets it back only every switch interval (5 ms) per blocking call, which stalled it for
        the whole render; a 1-3 ms slice is shorter than one such wait. A slice never waits for
        the lock (a scrape's join or gzip holds it): it tries again next time."""
        self._keeping_warm = True
        while True:
            await asyncio.sleep(WARM_EVERY)
            try:
                await self._warm_once()
            except Exception:  # a rendering bug must not stop readiness or the background work for good
                log.exception("keeping /metrics warm failed; scrapes render on demand until it works again")
                self._warmed = True

    async def _warm_once(self) -> None:
        if self.exposition._layout != self.store.layout:
            await asyncio.to_thread(self._refresh)
            if not self._warmed:  # before ready: the first overdue pass and compression too
                for variant in WARM_VARIANTS:
                    await self._build(*variant)
            self._warmed = True
            return
        await self._slices(WARM_SLICES)
        await self._prebuild()

    def _note_request(self, variant: tuple[str, bool]) -> None:
        cadences = self._requests.get(variant)
        if cadences is None:
            cadences = self._requests[variant] = Cadences(*PREBUILD_EVERY)
        cadences.note(time.monotonic())

    async def _prebuild(self) -> None:
        """Build the body a regular scraper will ask for just before it asks.

        Why: Prometheus scrapes a target at a fixed offset within its interval, so its next
        request is predictable; building the body PREBUILD_LEAD before it means the scrape is a
        cache hit (the body is then < MIN_RENDER_INTERVAL old) instead of waiting for the
        render, gzip and the GIL. At most one render per predicted request (fewer when two
        scrapers' requests are close), none for a scraper that stopped (cadence.py: one stream
        per scraper, so an HA pair of Prometheus servers is predicted too)."""
        now = time.monotonic()
        for variant, cadences in list(self._requests.items()):
            due = cadences.take_due(now, PREBUILD_LEAD)
            if due is None:
                continue
            if self._fresh(*variant) is not None and due - self._cache[variant[0]].at < MIN_RENDER_INTERVAL:
                continue  # a body built moments ago (another scraper's) will still be served then
            await self._build(*variant, force=True)

    @property
    def warm(self) -> bool:
        """The exposition was fully rendered once (always True when keep_warm does not run).

        Readiness waits for it: the first full render (every key, seconds at 10,000 mailboxes)
        runs in a worker thread and slows the event loop while it holds the GIL, so it belongs
        before the exporter says it is ready, not in its first scrapes. Latched: a reload's
        re-layout does not flip readiness."""
        return self._warmed or not self._keeping_warm

    async def _slices(self, most: int, chase: bool = True) -> None:
        """Render changed keys on the event loop, WARM_SLICE at a time, yielding between slices.

        `chase=False` (a scrape): stop once the keys pending now are rendered; with probes
        recording all the time there is always a newer change, and a scrape must not wait
        for them all."""
        for _ in range(most):
            if not (self.store.changed or self.exposition.pending) or not self._lock.acquire(blocking=False):
                break
            try:
                done = self.exposition.refresh(limit=WARM_SLICE)
            finally:
                self._lock.release()
            if done and (not chase or not self.store.changed):
                break
            await asyncio.sleep(0)

    def _refresh(self) -> None:
        with self._lock:
            self.exposition.refresh(time.time())

    def render_sync(self, fmt: str = TEXT, gzipped: bool = False) -> bytes:
        """Render now (changed keys only), then join or gzip, as bytes (tests)."""
        return as_bytes(self._render_now(fmt, gzipped))

    def _render_now(self, fmt: str, gzipped: bool) -> Body:
        """Render now (changed keys only), then take the parts or gzip; runs in a worker thread."""
        with self._lock:
            version = self.store.version
            self.exposition.refresh(time.time())
            for other, oc in self._cache.items():
                if other != fmt and oc.version != version:
                    oc.text = None  # let the other format's old parts go (MBs); its gzip body (what
                    # Prometheus takes, ~1/16 the size) stays servable while recent enough
            self._cache[fmt] = _Cached(True, None, None, version, self.exposition._layout, time.monotonic(),
                                       self.exposition.valid_until)
            return self._finish_locked(fmt, gzipped)

    def _finish(self, fmt: str, gzipped: bool) -> Body:
        with self._lock:
            return self._finish_locked(fmt, gzipped)

    def _finish_locked(self, fmt: str, gzipped: bool) -> Body:
        """The refreshed exposition as a body: its parts (never joined, bodyparts.py), or gzipped
        once per version.

        The gzip body never needs the joined text: it is the families' cached deflate chunks
        (only changed families recompressed) plus the standard collectors'."""
        c = self._cache[fmt]
        std = generate_openmetrics(self.standard) if fmt == OPENMETRICS else generate_latest(self.standard)
        if gzipped:
            if c.gz is None:
                c.gz = gzip_body([*self.exposition.gzip_chunks(fmt), chunk(std)])
            return c.gz
        if c.text is None:
            c.text = BodyParts.of(self.exposition.parts(fmt, std))  # OpenMetrics: std ends with "# EOF"
        return c.text

    def _current(self, fmt: str) -> _Cached | None:
        c = self._cache[fmt]
        age = time.monotonic() - c.at
        if not c.refreshed or age >= CACHE_MAX_AGE or time.time() >= c.valid_until or c.layout != self.store.layout:
            return None
        if c.version != self.store.version and age >= MIN_RENDER_INTERVAL:
            return None
        return c

    def _fresh(self, fmt: str, gzipped: bool) -> Body | None:
        c = self._current(fmt)
        if c is None:
            return None
        return c.gz if gzipped else c.text

    async def render(self, fmt: str = TEXT, gzipped: bool = False) -> bytes:
        """`body()` as bytes (tests; the web handler takes `body()` itself)."""
        return as_bytes(await self.body(fmt, gzipped))

    async def body(self, fmt: str = TEXT, gzipped: bool = False) -> Body:
        """The body for one scrape: a cached or prebuilt one (see _prebuild) when it is recent
        enough, else built now: changed keys rendered on the loop in slices, then the overdue pass
        and the compression in a worker thread (zlib releases the GIL while it compresses).
        Uncompressed, it is the exposition's parts, for the web handler to write in runs."""
        self._note_request((fmt, gzipped))
        cached = self._fresh(fmt, gzipped)
        if cached is not None:
            return cached
        return await self._build(fmt, gzipped)

    async def _build(self, fmt: str, gzipped: bool, force: bool = False) -> Body:
        """A body now; `force` (a prebuild): a new render even if a recent body could be served."""
        if self._render_lock is None:
            self._render_lock = asyncio.Lock()
        async with self._render_lock:  # concurrent scrapes share one render
            cached = None if force else self._fresh(fmt, gzipped)
            if cached is not None:
                return cached
            if not force and self._current(fmt) is not None:
                return await asyncio.to_thread(self._finish, fmt, gzipped)
            if self.exposition._layout == self.store.layout:
                # changed keys are Python work: render them here in slices (a worker thread doing it
                # would hold the GIL against the loop, see keep_warm); the thread then only runs the
                # overdue pass, the parts list or zlib (which releases the GIL)
                await self._slices(SCRAPE_SLICES, chase=False)
            return await asyncio.to_thread(self._render_now, fmt, gzipped)
