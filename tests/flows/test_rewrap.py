# mypy: disable-error-code="union-attr,index,list-item,arg-type"
# (redis-py types a synchronous answer as a union with its awaitable and with None.)
"""``wisp-sidecar rewrap``: every envelope moves to the active KEK, and no rotation is lost.

Secrets are made by a sidecar whose active key is the old one; rotations during
a run come from a sidecar that already has the new key active and the old one
as previous, as in a real KEK rotation (docs/architecture.md §7).
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import pytest
import redis
from support import ALICE, BOB, ROTATE, call, create_secrets, opened

from sidecar.app import create_xrpc_app
from sidecar.cli import main
from sidecar.crypto import Keyring, encode_kek, generate_kek, parse_kek
from sidecar.storage.embedded import free_port
from sidecar.storage.layout import log_key, secret_key
from sidecar.storage.rewrap import Rewrap

if TYPE_CHECKING:
    from aiohttp.test_utils import TestClient
    from support import AiohttpClient, Keys, SidecarFactory
    from topologies import Owners, ValkeyCluster

    from sidecar.app import Sidecar

    Client = TestClient[Any, Any]


@dataclass(frozen=True)
class Rollout:
    """Sidecars mid-rotation: one still on the old key, one with the new key active."""

    old_xrpc: Client
    new: Sidecar
    new_xrpc: Client


@dataclass(frozen=True)
class KekRotation:
    """An old and a new KEK, and the rings a re-wrap is checked with."""

    old: str
    new: str
    aiohttp_client: AiohttpClient
    make_sidecar: SidecarFactory

    @property
    def ring(self) -> Keyring:
        """What rewrap runs with: the new key active, the old one previous."""
        return Keyring(parse_kek(self.new, setting="new"), [parse_kek(self.old, setting="old")])

    @property
    def new_alone(self) -> Keyring:
        """What opens everything once the old key is retired."""
        return Keyring(parse_kek(self.new, setting="new"))

    async def rollout(self, **overrides: str) -> Rollout:
        old: Sidecar = await self.make_sidecar(SIDECAR_KEK=self.old, **overrides)
        new: Sidecar = await self.make_sidecar(
            SIDECAR_KEK=self.new, SIDECAR_KEK_PREVIOUS=self.old, **overrides
        )
        return Rollout(
            old_xrpc=await self.aiohttp_client(create_xrpc_app(old)),
            new=new,
            new_xrpc=await self.aiohttp_client(create_xrpc_app(new)),
        )

    async def assert_under_new_key_alone(
        self, sidecar: Sidecar, tokens: dict[tuple[str, str], str], versions: dict[Any, int]
    ) -> None:
        """Each secret holds its token, at its version, and opens with the new key alone."""
        refs = list(tokens)
        envelopes = await sidecar.store.get_envelopes(refs)
        assert opened(self.new_alone, refs, envelopes) == [(tokens[r], versions[r]) for r in refs]


@pytest.fixture
def rotation(aiohttp_client: AiohttpClient, make_sidecar: SidecarFactory) -> KekRotation:
    """A fresh pair of KEKs, and sidecars to roll out with them."""
    return KekRotation(
        old=encode_kek(generate_kek()),
        new=encode_kek(generate_kek()),
        aiohttp_client=aiohttp_client,
        make_sidecar=make_sidecar,
    )


@pytest.mark.parametrize("actor", ["rewrap", None])
async def test_rewrap_moves_every_secret_to_the_active_key(
    rotation: KekRotation, owners: Owners, raw_redis: redis.Redis, actor: str | None
) -> None:
    """Every envelope is re-sealed under the new key, same token and ver, audited on request."""
    rollout = await rotation.rollout(SIDECAR_API_KEYS_FILE=str(owners.path))
    tokens = await create_secrets(rollout.old_xrpc, owners.keys, ["a", "b"])

    report = await Rewrap(rollout.new.store, rotation.ring, actor=actor).run()

    assert (report.scanned, report.rewrapped) == (len(tokens), len(tokens))
    assert report.already_current == report.skipped_changed == report.failed_to_open == 0
    await rotation.assert_under_new_key_alone(rollout.new, tokens, dict.fromkeys(tokens, 1))
    entries = [fields for _, fields in raw_redis.xrange(log_key(ALICE))]
    rewraps = [entry for entry in entries if entry[b"op"] == b"rewrap"]
    if actor is None:
        assert rewraps == []
    else:
        assert sorted(entry[b"name"] for entry in rewraps) == [b"a", b"b"]
        assert {(entry[b"ver"], entry[b"actor"]) for entry in rewraps} == {(b"1", b"rewrap")}


async def test_a_second_run_finds_everything_current(rotation: KekRotation, keys: Keys) -> None:
    """Run again (or after an interruption), rewrap re-seals nothing and reports it current."""
    rollout = await rotation.rollout()
    store = rollout.new.store
    await create_secrets(rollout.old_xrpc, {ALICE: keys.alice, BOB: keys.bob}, ["a", "b", "c"])
    first = await Rewrap(store, rotation.ring).run()
    assert first.rewrapped == 6
    before = await store.get_envelopes([(ALICE, "a"), (BOB, "c")])

    second = await Rewrap(store, rotation.ring).run()

    assert (second.scanned, second.already_current, second.rewrapped) == (6, 6, 0)
    assert await store.get_envelopes([(ALICE, "a"), (BOB, "c")]) == before


async def test_envelopes_that_do_not_open_are_counted_and_left_alone(
    rotation: KekRotation, keys: Keys, raw_redis: redis.Redis
) -> None:
    """A secret under an unknown key and a malformed one are counted, kept, and reported."""
    rollout = await rotation.rollout()
    await create_secrets(rollout.old_xrpc, {ALICE: keys.alice}, ["good", "foreign", "garbled"])
    foreign = Keyring(parse_kek(encode_kek(generate_kek()), setting="other"))
    foreign_envelope = foreign.seal("wsk_" + "x" * 32, did=ALICE, name="foreign")
    raw_redis.hset(secret_key(ALICE, "foreign"), "env", foreign_envelope)
    raw_redis.hset(secret_key(ALICE, "garbled"), "env", "not-an-envelope")
    failures: list[tuple[str, str, str]] = []

    report = await Rewrap(
        rollout.new.store, rotation.ring, on_failure=lambda *failure: failures.append(failure)
    ).run()

    assert (report.scanned, report.rewrapped, report.failed_to_open) == (3, 1, 2)
    assert sorted((did, name) for did, name, _ in failures) == [
        (ALICE, "foreign"),
        (ALICE, "garbled"),
    ]
    assert raw_redis.hget(secret_key(ALICE, "foreign"), "env") == foreign_envelope.encode()
    assert raw_redis.hget(secret_key(ALICE, "garbled"), "env") == b"not-an-envelope"


async def test_a_rotation_between_read_and_write_wins(
    rotation: KekRotation, keys: Keys, raw_redis: redis.Redis
) -> None:
    """When rotations land after rewrap read the envelopes, every compare-and-set loses to them.

    Redis is paused for writes; the rotations queue first, then rewrap reads the
    old envelopes (reads still run) and queues its writes behind them. Redis
    runs paused clients in arrival order, so each rotation lands between a read
    and its compare-and-set.
    """
    rollout = await rotation.rollout()
    new, new_xrpc = rollout.new, rollout.new_xrpc
    names = [f"hook-{i}" for i in range(5)]
    await create_secrets(rollout.old_xrpc, {ALICE: keys.alice}, [*names, "warm"])
    # Load every script now: Redis holds an unknown script as a possible write,
    # and a NOSCRIPT retry would reorder the queue.
    assert (await call(new_xrpc, ROTATE, keys.alice, {"name": "warm"}))[0] == 200
    assert not await new.store.replace_envelope(ALICE, "absent", "x", "y", actor=None)
    assert await new.store.get_envelopes([(ALICE, "absent")]) == [None]
    raw_redis.delete(secret_key(ALICE, "warm"))

    raw_redis.execute_command("CLIENT", "PAUSE", 60_000, "WRITE")  # type: ignore[no-untyped-call]
    try:
        rotations = [
            asyncio.create_task(call(new_xrpc, ROTATE, keys.alice, {"name": name}))
            for name in names
        ]
        await asyncio.to_thread(wait_for_blocked, raw_redis, len(names))
        job = asyncio.create_task(Rewrap(new.store, rotation.ring).run())
        await asyncio.to_thread(wait_for_blocked, raw_redis, 2 * len(names))
    finally:
        raw_redis.execute_command("CLIENT", "UNPAUSE")  # type: ignore[no-untyped-call]
    rotated = {
        (ALICE, name): body["token"]
        for name, (_, body) in zip(names, await asyncio.gather(*rotations), strict=True)
    }
    report = await job

    assert (report.scanned, report.skipped_changed, report.rewrapped) == (5, 5, 0)
    await rotation.assert_under_new_key_alone(new, rotated, dict.fromkeys(rotated, 2))


async def test_no_rotation_is_lost_while_rewrap_runs(rotation: KekRotation, owners: Owners) -> None:
    """Racing rotations: rotated secrets end at their last rotation, the rest are re-wrapped."""
    rollout = await rotation.rollout(SIDECAR_API_KEYS_FILE=str(owners.path))
    new_xrpc = rollout.new_xrpc
    tokens = await create_secrets(rollout.old_xrpc, owners.keys, ["busy", "quiet"])
    rounds = 3

    async def rotate_in_turn(did: str) -> None:
        for _ in range(rounds):
            status, body = await call(new_xrpc, ROTATE, owners.keys[did], {"name": "busy"})
            assert status == 200, body
            tokens[did, "busy"] = body["token"]

    report, *_ = await asyncio.gather(
        Rewrap(rollout.new.store, rotation.ring).run(),
        *(rotate_in_turn(did) for did in owners.dids),
    )

    assert report is not None
    assert report.scanned == len(tokens)
    assert report.rewrapped + report.already_current + report.skipped_changed == len(tokens)
    assert report.failed_to_open == 0
    # Nobody else writes the quiet secrets, so their compare-and-set cannot lose.
    assert report.rewrapped >= len(owners.dids)
    versions = {ref: 1 + rounds if ref[1] == "busy" else 1 for ref in tokens}
    await rotation.assert_under_new_key_alone(rollout.new, tokens, versions)


async def test_rewrap_scans_every_cluster_primary(
    rotation: KekRotation, cluster_url: str, valkey_cluster: ValkeyCluster, owners: Owners
) -> None:
    """On a cluster, rewrap finds and re-seals the secrets held by each of the three nodes."""
    rollout = await rotation.rollout(
        REDIS_URL=cluster_url, SIDECAR_REDIS_CLUSTER="1", SIDECAR_API_KEYS_FILE=str(owners.path)
    )
    tokens = await create_secrets(rollout.old_xrpc, owners.keys, ["a", "b"])
    per_node = []
    for port in valkey_cluster.ports:
        with redis.Redis(port=port) as node:
            per_node.append(node.dbsize())
    assert all(count > 0 for count in per_node)

    report = await Rewrap(rollout.new.store, rotation.ring).run()

    assert (report.scanned, report.rewrapped) == (len(tokens), len(tokens))
    await rotation.assert_under_new_key_alone(rollout.new, tokens, dict.fromkeys(tokens, 1))


def test_rewrap_command_reports_counts_and_exit_code(
    redis_url: str, raw_redis: redis.Redis, capsys: pytest.CaptureFixture[str]
) -> None:
    """The command prints the counts, exits 1 while a secret fails to open, and 0 once none do."""
    old_kek, new_kek = encode_kek(generate_kek()), encode_kek(generate_kek())
    old = Keyring(parse_kek(old_kek, setting="old"))
    for name in ("a", "b"):
        envelope = old.seal("wsk_" + name * 32, did=ALICE, name=name)
        raw_redis.hset(secret_key(ALICE, name), mapping={"env": envelope, "ver": 1, "created": 0})
    raw_redis.hset(secret_key(BOB, "bad"), mapping={"env": "garbled", "ver": 1, "created": 0})
    environ = {"REDIS_URL": redis_url, "SIDECAR_KEK": new_kek, "SIDECAR_KEK_PREVIOUS": old_kek}

    assert main(["rewrap", "--no-audit"], environ=environ) == 1
    out, err = capsys.readouterr()
    assert out == (
        "rewrap: scanned=3 rewrapped=2 already_current=0 skipped_changed=0 failed_to_open=1\n"
    )
    assert f"cannot open 'bad' of {BOB}" in err
    assert raw_redis.exists(log_key(ALICE)) == 0

    raw_redis.delete(secret_key(BOB, "bad"))
    assert main(["rewrap"], environ=environ) == 0
    out, _ = capsys.readouterr()
    assert out == (
        "rewrap: scanned=2 rewrapped=0 already_current=2 skipped_changed=0 failed_to_open=0\n"
    )


@pytest.mark.parametrize(
    ("environ", "setting"),
    [({"SIDECAR_KEK": "k"}, "REDIS_URL"), ({"REDIS_URL": "redis://127.0.0.1:1"}, "SIDECAR_KEK")],
)
def test_rewrap_needs_redis_and_an_active_key(
    environ: dict[str, str], setting: str, kek_text: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """Without REDIS_URL or an active KEK, rewrap exits 2 naming the missing setting."""
    if "SIDECAR_KEK" in environ:
        environ = {**environ, "SIDECAR_KEK": kek_text}
    assert main(["rewrap"], environ=environ) == 2
    assert f"configuration error: {setting}: is not set" in capsys.readouterr().err


def test_rewrap_stops_with_1_when_redis_does_not_answer(
    kek_text: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """When Redis does not answer, rewrap prints the counts so far, says so, and exits 1."""
    environ = {"REDIS_URL": f"redis://127.0.0.1:{free_port()}/0", "SIDECAR_KEK": kek_text}
    assert main(["rewrap"], environ=environ) == 1
    out, err = capsys.readouterr()
    assert out.startswith("rewrap: scanned=0 ")
    assert "Redis did not answer in time" in err


def wait_for_blocked(client: redis.Redis, count: int) -> None:
    """Poll until Redis holds ``count`` clients paused: the state it reports, not a delay."""
    deadline = time.monotonic() + 30
    while client.info("clients")["blocked_clients"] != count:
        assert time.monotonic() < deadline, f"Redis never held {count} clients"
        time.sleep(0.01)
