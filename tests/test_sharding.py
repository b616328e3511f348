"""Sharding: disjoint, complete, stable, minimal movement on resharding; flags; what a shard probes."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from exporter.cli import build_parser, main
from exporter.config import Config
from exporter.sharding import Shard, ShardError, owner, parse_index, shard_from_args, split
from tests.simenv import env_fixture, runtime_for

ROOT = Path(__file__).resolve().parent.parent
LABELS = [f"user{i:05d}@contoso.example" for i in range(10_000)]

env = env_fixture(delegated_login=False)


def test_every_label_has_exactly_one_owner_and_shards_are_balanced() -> None:
    for total in (1, 2, 3, 5, 8):
        parts = split(LABELS, total)
        assert sorted(x for part in parts.values() for x in part) == sorted(LABELS)  # complete and disjoint
        for s, part in parts.items():
            assert 0.85 * len(LABELS) / total <= len(part) <= 1.15 * len(LABELS) / total, (total, s, len(part))
            assert all(Shard(s, total).owns(x) for x in part[:200])


@pytest.mark.parametrize("n", [1, 2, 3, 4, 7])
def test_n_to_n_plus_1_moves_about_one_in_n_plus_1_and_only_to_the_new_shard(n: int) -> None:
    moved = [x for x in LABELS if owner(x, n) != owner(x, n + 1)]
    expected = len(LABELS) / (n + 1)
    assert 0.85 * expected <= len(moved) <= 1.15 * expected, (n, len(moved), expected)
    assert all(owner(x, n + 1) == n for x in moved)  # nothing shuffles between the old shards


def test_owner_is_stable_across_processes() -> None:
    """Not Python's salted hash(): another interpreter with another PYTHONHASHSEED splits identically."""
    sample = LABELS[:300]
    here = [owner(x, 5) for x in sample]
    code = ("import sys,json; from exporter.sharding import owner; "
            "print(json.dumps([owner(x, 5) for x in json.load(sys.stdin)]))")
    import json

    for seed in ("1", "4242"):
        out = subprocess.run([sys.executable, "-c", code], input=json.dumps(sample), capture_output=True, text=True,
                             cwd=ROOT, env={"PYTHONHASHSEED": seed, "PATH": "/usr/bin:/bin"}, timeout=30, check=True)
        assert json.loads(out.stdout) == here
    # pinned: a change of hash function would silently move every mailbox of every deployment
    assert [owner(x, 7) for x in LABELS[:12]] == [3, 5, 0, 5, 1, 5, 3, 6, 1, 1, 3, 3]


@pytest.mark.parametrize(("value", "total", "replicas", "index"), [
    ("0", 3, 1, 0), ("2", 3, 1, 2), (1, 3, 1, 1), ("m365-mail-exporter-2", 3, 1, 2),
    ("m365-mail-exporter-4", 3, 2, 1), ("m365-mail-exporter-5", 3, 2, 2), ("m365-mail-exporter-0", 1, 1, 0),
])
def test_index_from_number_or_statefulset_pod_name(value: str | int, total: int, replicas: int, index: int) -> None:
    assert parse_index(value, total, replicas) == index


@pytest.mark.parametrize(("argv", "message"), [
    (["--shard.total", "0"], "--shard.total must be at least 1"),
    (["--shard.total", "3", "--shard.index", "3"], "outside 0..2"),
    (["--shard.total", "3", "--shard.index", "-1"], "must be a number or a name ending in -<ordinal>"),
    (["--shard.total", "3", "--shard.index", "exporter"], "must be a number or a name ending in -<ordinal>"),
    (["--shard.total", "3", "--shard.index", "exporter-6", "--shard.replicas", "2"], "scale the StatefulSet to 6"),
    (["--shard.total", "2", "--shard.replicas", "0"], "--shard.replicas must be at least 1"),
])
def test_invalid_shard_flags_exit_2_with_a_clear_message(argv: list[str], message: str,
                                                         capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--config.file", "/nonexistent.yml", *argv]) == 2
    assert message in capsys.readouterr().err


def test_flags_parse_before_and_after_serve() -> None:
    p = build_parser()
    assert shard_from_args(p.parse_args([])) == Shard(0, 1)
    assert shard_from_args(p.parse_args(["--shard.total=4", "--shard.index=web-3"])) == Shard(3, 4)
    assert shard_from_args(p.parse_args(["serve", "--shard.total=4", "--shard.index=2"])) == Shard(2, 4)
    assert shard_from_args(p.parse_args(["--shard.total=4", "serve", "--shard.index=1"])) == Shard(1, 4)
    with pytest.raises(ShardError):
        Shard(0, 0)


def _config(env, n: int) -> Config:  # type: ignore[no-untyped-def]
    mailboxes = [{"address": f"box{i}@contoso.example", "credential": "app" if i % 4 else "cert",
                  "checks": ["imap", "smtp"]} for i in range(n)]
    return env.config(mailboxes=mailboxes)


async def test_shard_select_keeps_its_mailboxes_and_only_the_credentials_they_use(env) -> None:  # type: ignore[no-untyped-def]
    config = _config(env, 40)  # "delegate" is used by no mailbox at all
    parts = [Shard(s, 3).select(config) for s in range(3)]
    assert sorted(m.label for p in parts for m in p.mailboxes) == sorted(m.label for m in config.mailboxes)
    for p in parts:
        assert set(p.credentials) - {"delegate"} == {m.credential for m in p.mailboxes}
    assert sum("delegate" in p.credentials for p in parts) == 1  # an unused credential is still watched once
    assert Shard(0, 1).select(config) is config


async def test_a_sharded_runtime_builds_jobs_only_for_its_part(env) -> None:  # type: ignore[no-untyped-def]
    config = env.config(mailboxes=[
        {"address": "sales@contoso.example", "credential": "app", "checks": ["imap", "pop3", "smtp"]},
        {"address": "billing@contoso.example", "credential": "cert", "checks": ["imap"]},
    ])
    shards = {s: Shard(s, 2) for s in range(2)}
    seen: list[tuple[str, ...]] = []
    for s, shard in shards.items():
        rt = await runtime_for(config)  # applied unsharded, then re-applied as a shard (like a reload)
        rt.shard = shard
        rt.apply(config)
        mine = {m.label for m in rt.config.mailboxes}
        keys = {job.key for job in rt.build_jobs(rt.config)}
        creds = {k[1] for k in keys if k[0] == "credential"}
        mail = {k for k in keys if k[0] == "mailbox"}
        assert creds == {m.credential for m in config.mailboxes if m.label in mine} | (
            {"delegate"} if shard.owns("credential:delegate") else set())
        assert set(rt.providers) == creds
        assert {k[1] for k in mail} == mine
        for m in config.mailboxes:  # /probe on the wrong replica says which shard to ask
            if m.label not in mine:
                with pytest.raises(KeyError, match=rf"probed by shard {1 - s}, this replica is shard {s} of 2"):
                    await rt.probe_now(m.label, "imap")
        seen += sorted(mail)
        text = (await rt.renderer.render()).decode()
        assert f'm365_exporter_shard_info{{shard="{s}",shards="2"}} 1.0' in text
        assert f"m365_mailboxes {float(len(mine))}" in text
        for line in text.splitlines():  # only the info metric names the shard
            if "shard=" in line and not line.startswith("#"):
                assert line.startswith("m365_exporter_shard_info{"), line
        await rt.stop()
    assert sorted(seen) == sorted(("mailbox", m.label, c) for m in config.mailboxes for c in m.checks)
