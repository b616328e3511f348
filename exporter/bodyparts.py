"""An uncompressed /metrics body kept as the exposition's byte strings, never joined whole.

Why: at 10,000 mailboxes the text body is ~22 MB. The exposition already holds every byte of it in
its per-block parts (collector.py); a joined body was a second copy for as long as it was cached,
and a third while the next one was built: 20-40 MiB of the exporter's RSS whenever a client asked
for uncompressed text. A BodyParts is a list of references to those parts (the non-empty ones,
M365Exposition.parts: tens of thousands at 10,000 mailboxes, under 1 MB; bytes never change, so
it stays consistent while the exposition moves on), and the web handler writes it in runs of
about WRITE_RUN bytes, awaiting the client between runs, so the event loop never copies 22 MB in
one go either.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

WRITE_RUN = 256 * 1024  # bytes joined per write to the client
RUN_PARTS = 4096  # parts joined per write at most (bytes.join: 80 bytes of bookkeeping per part)


@dataclass(frozen=True, slots=True)
class BodyParts:
    parts: list[bytes]
    length: int

    @classmethod
    def of(cls, parts: list[bytes]) -> BodyParts:
        return cls(parts, sum(map(len, parts)))

    def join(self) -> bytes:
        """The whole body (`render_sync` and `render`, for callers that want bytes)."""
        return b"".join(self.parts)

    def runs(self, size: int = WRITE_RUN) -> Iterator[bytes]:
        """The body in pieces of about `size` bytes, in order. A run also ends after RUN_PARTS
        parts: `bytes.join` allocates an 80-byte buffer record per part, so one join of 100,000
        small parts costs 8 MB for a moment (what joining the whole body cost every time)."""
        run: list[bytes] = []
        n = 0
        for part in self.parts:  # M365Exposition.parts left the empty block parts out
            run.append(part)
            n += len(part)
            if n >= size or len(run) >= RUN_PARTS:
                yield b"".join(run)
                run, n = [], 0
        if run:
            yield b"".join(run)


def as_bytes(body: bytes | BodyParts) -> bytes:
    return body.join() if isinstance(body, BodyParts) else body
