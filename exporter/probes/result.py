"""ProbeResult and Transcript: what every probe returns, and its redacted dialogue.

Why one shape for all probes: the store, the collector, `/probe?debug=true` and the `check` CLI
all consume results without knowing which protocol produced them. `facts` carries the
protocol-specific numbers (message count, TLS version, certificate expiry, token expiry...).
"""

from __future__ import annotations

import contextlib
import contextvars
import time
from collections.abc import Iterator
from dataclasses import dataclass, field

from ..reasons import Reason
from ..redact import redact

MAX_TRANSCRIPT_LINES = 200
MAX_LINE_CHARS = 500
# Whether Transcripts created in this context record anything. Background probes run with it
# off (the scheduler): nothing reads their transcripts, and redacting every line of every probe
# was ~6% of the exporter's CPU. `/probe?debug=true`, `check` and direct calls keep it on.
_RECORDING: contextvars.ContextVar[bool] = contextvars.ContextVar("transcripts", default=True)


@contextlib.contextmanager
def transcripts(enabled: bool) -> Iterator[None]:
    """Turn transcript recording on or off for probes run inside this block (and tasks it starts)."""
    token = _RECORDING.set(enabled)
    try:
        yield
    finally:
        _RECORDING.reset(token)


@dataclass(slots=True)
class Transcript:
    """Redacted dialogue lines: ('C', text) client sent, ('S', text) server said, ('*', note)."""

    lines: list[tuple[str, str]] = field(default_factory=list)
    enabled: bool = field(default_factory=_RECORDING.get)

    def add(self, direction: str, text: str | bytes) -> None:
        if not self.enabled or len(self.lines) >= MAX_TRANSCRIPT_LINES:
            return
        if isinstance(text, bytes):
            text = text.decode("utf-8", "replace")
        text = redact(text.rstrip("\r\n"))
        if len(text) > MAX_LINE_CHARS:
            text = text[:MAX_LINE_CHARS] + f"... [{len(text) - MAX_LINE_CHARS} more chars]"
        self.lines.append((direction, text))

    def client(self, text: str | bytes) -> None:
        self.add("C", text)

    def server(self, text: str | bytes) -> None:
        self.add("S", text)

    def note(self, text: str) -> None:
        self.add("*", text)

    def render(self) -> str:
        return "\n".join(f"{d} {t}" for d, t in self.lines)


NO_TRANSCRIPT = Transcript(enabled=False)  # shared by background results: records nothing, allocates nothing


def new_transcript() -> Transcript:
    """A recording Transcript, or the shared no-op one when recording is off (background probes):
    at 10,000 mailboxes the per-result Transcript objects were a large share of what the garbage
    collector walked, and ~7 MiB kept alive by the stored results. Probes create theirs here."""
    return Transcript() if _RECORDING.get() else NO_TRANSCRIPT


@dataclass(slots=True)  # one per key (30,000 at 10,000 mailboxes): no per-instance __dict__
class ProbeResult:
    """Outcome of one probe run. `reason` is None exactly when `success` is True."""

    success: bool
    duration: float
    reason: Reason | None = None
    detail: str = ""  # short, redacted human explanation (e.g. the server's reply)
    facts: dict[str, float | str] = field(default_factory=dict)
    transcript: Transcript = field(default_factory=new_transcript)
    finished_at: float = field(default_factory=time.time)

    @classmethod
    def ok(cls, duration: float, transcript: Transcript | None = None, **facts: float | str) -> ProbeResult:
        return cls(True, duration, None, "", dict(facts), transcript or new_transcript())

    @classmethod
    def fail(
        cls,
        reason: Reason,
        duration: float,
        detail: str = "",
        transcript: Transcript | None = None,
        **facts: float | str,
    ) -> ProbeResult:
        return cls(False, duration, reason, redact(detail)[:MAX_LINE_CHARS], dict(facts),
                   transcript or new_transcript())
