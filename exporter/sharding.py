"""Sharding: N exporter replicas split the configured mailboxes between them, disjointly.

Why rendezvous (highest random weight) hashing of the mailbox label:
- every replica decides alone, from the same config, which mailboxes are its own: no coordination,
  no shared state, nothing to elect;
- the owner of a label depends only on the label and N, so a restart or a reload never moves a
  mailbox, and going from N to N+1 shards moves only the mailboxes the new shard wins: about
  1/(N+1) of them (every other mailbox keeps its owner);
- the hash is BLAKE2b of bytes, stable across processes, machines and Python versions (Python's
  `hash()` is salted per process and would split differently in every replica).

What a shard probes: its mailboxes' checks; token jobs and providers only for the credentials those
mailboxes use (a credential no mailbox uses at all is owned by one shard, by the same hash of its
name, so its token, Graph audit and declared expiry are still watched exactly once); endpoint checks
(DNS/TCP/TLS) for every endpoint its mailboxes and credentials depend on. Endpoints and shared
credentials are therefore probed by every shard that depends on them: a few extra TLS handshakes
and one token request per shard and token interval, in exchange for every shard reporting its own
root cause (see docs/scaling.md).

The shard index can be given as a number or as a Kubernetes StatefulSet pod name
(`--shard.index=$(POD_NAME)`, e.g. `m365-mail-exporter-4`): the trailing `-<ordinal>` is used.
With `--shard.replicas R` (an HA pair is R=2) a StatefulSet of N*R pods runs every shard R times:
ordinal o probes shard o mod N.
"""

from __future__ import annotations

import argparse
import functools
import hashlib
import re
from collections.abc import Iterable
from dataclasses import dataclass

from .config import Config

_ORDINAL = re.compile(r"^(?:.+-)?(\d+)$")


class ShardError(ValueError):
    """Invalid shard flags (the CLI exits 2, like a config error)."""


def weight(key: str, shard: int) -> int:
    """Rendezvous weight of `key` on `shard`: a stable 64-bit hash of both."""
    digest = hashlib.blake2b(f"{shard}\x00{key}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big")


@functools.lru_cache(maxsize=1 << 17)
def owner(key: str, total: int) -> int:
    """The shard (0..total-1) that owns `key`: the one with the highest weight.

    Cached: `total` hashes per label (0.25 s for 30,000 labels at 10 shards) would otherwise be paid again on
    the event loop at every reload; a reload that adds a few mailboxes hashes only those.
    """
    if total <= 1:
        return 0
    return max(range(total), key=lambda s: weight(key, s))


@dataclass(frozen=True)
class Shard:
    """This replica's shard: `index` of `total`."""

    index: int = 0
    total: int = 1

    def __post_init__(self) -> None:
        if self.total < 1:
            raise ShardError(f"--shard.total must be at least 1, got {self.total}")
        if not 0 <= self.index < self.total:
            raise ShardError(f"--shard.index must be in 0..{self.total - 1} for --shard.total={self.total}, "
                             f"got {self.index}")

    @property
    def sharded(self) -> bool:
        return self.total > 1

    def owns(self, key: str) -> bool:
        return owner(key, self.total) == self.index

    def select(self, config: Config) -> Config:
        """The part of `config` this shard probes: its mailboxes and the credentials they (or nobody) use.

        The returned Config is what the runtime applies: jobs, providers, endpoint checks, the audit and
        `m365_mailboxes` all follow from it, so nothing else needs to know about shards.
        """
        if not self.sharded:
            return config
        mailboxes = [m for m in config.mailboxes if self.owns(m.label)]
        used_anywhere = {m.credential for m in config.mailboxes}
        used_here = {m.credential for m in mailboxes}
        credentials = {name: cred for name, cred in config.credentials.items()
                       if name in used_here or (name not in used_anywhere and self.owns("credential:" + name))}
        return config.model_copy(update={"mailboxes": mailboxes, "credentials": credentials})


def parse_index(value: str | int, total: int, replicas: int = 1) -> int:
    """Shard index from a number or a pod name ending in `-<ordinal>` (StatefulSet), modulo `total`
    when `replicas` > 1 (ordinal o of a StatefulSet with total*replicas pods runs shard o mod total)."""
    if replicas < 1:
        raise ShardError(f"--shard.replicas must be at least 1, got {replicas}")
    text = str(value).strip()
    match = _ORDINAL.match(text)
    if match is None:
        raise ShardError(f"--shard.index must be a number or a name ending in -<ordinal> "
                         f"(a StatefulSet pod name), got {text!r}")
    ordinal = int(match.group(1))
    if ordinal >= total * replicas:
        raise ShardError(f"--shard.index {text!r}: ordinal {ordinal} is outside 0..{total * replicas - 1} "
                         f"(--shard.total={total} x --shard.replicas={replicas}); scale the StatefulSet to "
                         f"{total * replicas} replicas or change --shard.total")
    return ordinal % total


def add_shard_flags(*parsers: argparse.ArgumentParser) -> None:
    """`--shard.total`, `--shard.index`, `--shard.replicas` on the `serve` parsers (top level and `serve`).

    Not on `check`: the one-shot checklist always runs every configured check from the host it runs on.
    """
    for i, p in enumerate(parsers):
        top = i == 0
        d = (lambda v: v) if top else (lambda v: argparse.SUPPRESS)
        g = p.add_argument_group("sharding (split the mailboxes between replicas, see docs/scaling.md)")
        g.add_argument("--shard.total", dest="shard_total", type=int, default=d(1),
                       help="number of shards the mailboxes are split into (default: 1, no sharding)")
        g.add_argument("--shard.index", dest="shard_index", default=d("0"),
                       help="this replica's shard: 0..total-1, or a StatefulSet pod name ending in -<ordinal> "
                            "such as $(POD_NAME) (default: 0)")
        g.add_argument("--shard.replicas", dest="shard_replicas", type=int, default=d(1),
                       help="replicas of every shard (2 = HA pair); with a pod name, ordinal o runs shard "
                            "o mod total (default: 1)")


def shard_from_args(args: argparse.Namespace) -> Shard:
    """The Shard the flags describe; ShardError with an operator-readable message if they are invalid."""
    total = int(getattr(args, "shard_total", 1))
    if total < 1:
        raise ShardError(f"--shard.total must be at least 1, got {total}")
    replicas = int(getattr(args, "shard_replicas", 1))
    return Shard(parse_index(getattr(args, "shard_index", "0"), total, replicas), total)


def split(labels: Iterable[str], total: int) -> dict[int, list[str]]:
    """Labels per shard (docs, tests and capacity planning)."""
    out: dict[int, list[str]] = {s: [] for s in range(total)}
    for label in labels:
        out[owner(label, total)].append(label)
    return out


def main(argv: list[str] | None = None) -> int:
    """`python -m exporter.sharding --config.file X --shard.total N`: how many mailboxes each shard gets."""
    from .config import ConfigError, load_config

    p = argparse.ArgumentParser(prog="python -m exporter.sharding", description=main.__doc__)
    p.add_argument("--config.file", dest="config_file", required=True)
    p.add_argument("--shard.total", dest="shard_total", type=int, required=True)
    args = p.parse_args(argv)
    try:
        cfg = load_config(args.config_file)
        Shard(0, args.shard_total)
    except (ConfigError, ShardError) as err:
        print(err)
        return 2
    for s, labels in split((m.label for m in cfg.mailboxes), args.shard_total).items():
        creds = Shard(s, args.shard_total).select(cfg).credentials
        print(f"shard {s}: {len(labels)} mailboxes, {len(creds)} credentials")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
