"""``wisp-sidecar rewrap``: every envelope moves to the active KEK, and no rotation is lost.

Secrets are made by a sidecar whose active key is the old one; rotations during
a run come from a sidecar that already has the new key active and the old one
as previous, as in a real KEK rotation (DESIGN.md §6).
"""

from __future__ import annotations

import asyncio
import time
from typing import TYPE_CHECKING, Any

import pytest
import redis
from support import ALICE, BOB, CREATE, ROTATE, call

from sidecar.app import create_xrpc_app
from sidecar.cli import main
from sidecar.crypto import Keyring, encode_kek, generate_kek, parse_kek
from sidecar.embedded import free_port
from sidecar.rewrap import Rewrap
from sidecar.store import log_key, secret_key

if TYPE_CHECKING:
    from aiohttp.test_utils import TestClient
    from conftest import AiohttpClient, SidecarFactory
    from topologies import Owners, ValkeyCluster

    from sidecar.app import Sidecar


@pytest.fixture
def old_kek() -> str:
    return encode_kek(generate_kek())


@pytest.fixture
def new_kek() -> str:
    return encode_kek(generate_kek())


@pytest.fixture
def new_keyring(new_kek: str, old_kek: str) -> Keyring:
    """The ring a rewrap runs with: the new key active, the old one previous."""
    return Keyring(parse_kek(new_kek, setting="new"), [parse_kek(old_kek, setting="old")])


@pytest.fixture
def new_key_alone(new_kek: str) -> Keyring:
    """The new key with no previous key: what opens everything once the old key is retired."""
    return Keyring(parse_kek(new_kek, setting="new"))


async def make_pair(
    make_sidecar: SidecarFactory, old_kek: str, new_kek: str, **overrides: str
) -> tuple[Sidecar, Sidecar]:
    """A sidecar still on the old key, and one rolled out with the new key active."""
    old: Sidecar = await make_sidecar(SIDECAR_KEK=old_kek, **overrides)
    new: Sidecar = await make_sidecar(
        SIDECAR_KEK=new_kek, SIDECAR_KEK_PREVIOUS=old_kek, **overrides
    )
    return old, new


async def create_secrets(
    xrpc: TestClient[Any, Any], keys_by_did: dict[str, str], names: list[str]
) -> dict[tuple[str, str], str]:
    tokens: dict[tuple[str, str], str] = {}
    for did, key in keys_by_did.items():
        for name in names:
            status, body = await call(xrpc, CREATE, key, {"name": name})
            assert status == 200, body
            tokens[did, name] = body["token"]
    return tokens


async def assert_all_open_under_new_key_alone(
    sidecar: Sidecar, keyring: Keyring, tokens: dict[tuple[str, str], str], version: int
) -> None:
    refs = list(tokens)
    for (did, name), stored in zip(refs, await sidecar.store.get_envelopes(refs), strict=True):
        assert stored is not None
        assert keyring.open(stored.envelope, did=did, name=name) == tokens[did, name]
        assert stored.version == version


@pytest.mark.parametrize("actor", ["rewrap", None])
async def test_rewrap_moves_every_secret_to_the_active_key(
    aiohttp_client: AiohttpClient,
    make_sidecar: SidecarFactory,
    old_kek: str,
    new_kek: str,
    new_keyring: Keyring,
    new_key_alone: Keyring,
    owners: Owners,
    raw_redis: redis.Redis,
    actor: str | None,
) -> None:
    """Every envelope is re-sealed under the new key, same token and ver, audited on request."""
    old, new = await make_pair(
        make_sidecar, old_kek, new_kek, SIDECAR_API_KEYS_FILE=str(owners.path)
    )
    xrpc = await aiohttp_client(create_xrpc_app(old))
    tokens = await create_secrets(xrpc, owners.keys, ["a", "b"])

    report = await Rewrap(new.store, new_keyring, actor=actor).run()

    assert (report.scanned, report.rewrapped) == (len(tokens), len(tokens))
    assert report.already_current == report.skipped_changed == report.failed_to_open == 0
    await assert_all_open_under_new_key_alone(new, new_key_alone, tokens, version=1)
    entries = [fields for _, fields in raw_redis.xrange(log_key(ALICE))]
    rewraps = [entry for entry in entries if entry[b"op"] == b"rewrap"]
    if actor is None:
        assert rewraps == []
    else:
        assert sorted(entry[b"name"] for entry in rewraps) == [b"a", b"b"]
        assert {(entry[b"ver"], entry[b"actor"]) for entry in rewraps} == {(b"1", b"rewrap")}


async def test_a_second_run_finds_everything_current(
    aiohttp_client: AiohttpClient,
    make_sidecar: SidecarFactory,
    old_kek: str,
    new_kek: str,
    new_keyring: Keyring,
    keys: Any,
) -> None:
    """Run again (or after an interruption), rewrap re-seals nothing and reports it current."""
    old, new = await make_pair(make_sidecar, old_kek, new_kek)
    xrpc = await aiohttp_client(create_xrpc_app(old))
    await create_secrets(xrpc, {ALICE: keys.alice, BOB: keys.bob}, ["a", "b", "c"])
    first = await Rewrap(new.store, new_keyring).run()
    assert first.rewrapped == 6
    before = await new.store.get_envelopes([(ALICE, "a"), (BOB, "c")])

    second = await Rewrap(new.store, new_keyring).run()

    assert (second.scanned, second.already_current, second.rewrapped) == (6, 6, 0)
    assert await new.store.get_envelopes([(ALICE, "a"), (BOB, "c")]) == before


async def test_envelopes_that_do_not_open_are_counted_and_left_alone(
    aiohttp_client: AiohttpClient,
    make_sidecar: SidecarFactory,
    old_kek: str,
    new_kek: str,
    new_keyring: Keyring,
    keys: Any,
    raw_redis: redis.Redis,
) -> None:
    """A secret under an unknown key and a malformed one are counted, kept, and reported."""
    old, new = await make_pair(make_sidecar, old_kek, new_kek)
    xrpc = await aiohttp_client(create_xrpc_app(old))
    await create_secrets(xrpc, {ALICE: keys.alice}, ["good", "foreign", "garbled"])
    foreign = Keyring(parse_kek(encode_kek(generate_kek()), setting="other"))
    foreign_envelope = foreign.seal("wsk_" + "x" * 32, did=ALICE, name="foreign")
    raw_redis.hset(secret_key(ALICE, "foreign"), "env", foreign_envelope)
    raw_redis.hset(secret_key(ALICE, "garbled"), "env", "not-an-envelope")
    failures: list[tuple[str, str, str]] = []

    report = await Rewrap(
        new.store, new_keyring, on_failure=lambda *failure: failures.append(failure)
    ).run()

    assert (report.scanned, report.rewrapped, report.failed_to_open) == (3, 1, 2)
    assert sorted((did, name) for did, name, _ in failures) == [
        (ALICE, "foreign"),
        (ALICE, "garbled"),
    ]
    assert raw_redis.hget(secret_key(ALICE, "foreign"), "env") == foreign_envelope.encode()
    assert raw_redis.hget(secret_key(ALICE, "garbled"), "env") == b"not-an-envelope"


async def test_a_rotation_between_read_and_write_wins(
    aiohttp_client: AiohttpClient,
    make_sidecar: SidecarFactory,
    old_kek: str,
    new_kek: str,
    new_keyring: Keyring,
    new_key_alone: Keyring,
    keys: Any,
    raw_redis: redis.Redis,
) -> None:
    """When rotations land after rewrap read the envelopes, every compare-and-set loses to them.

    Redis is paused for writes; the rotations queue first, then rewrap reads the
    old envelopes (reads still run) and queues its writes behind them. Redis
    runs paused clients in arrival order, so each rotation lands between a read
    and its compare-and-set.
    """
    old, new = await make_pair(make_sidecar, old_kek, new_kek)
    old_xrpc = await aiohttp_client(create_xrpc_app(old))
    new_xrpc = await aiohttp_client(create_xrpc_app(new))
    names = [f"hook-{i}" for i in range(5)]
    await create_secrets(old_xrpc, {ALICE: keys.alice}, [*names, "warm"])
    # Load every script now: Redis holds an unknown script as a possible write,
    # and a NOSCRIPT retry would reorder the queue.
    assert (await call(new_xrpc, ROTATE, keys.alice, {"name": "warm"}))[0] == 200
    assert not await new.store.replace_envelope(ALICE, "absent", "x", "y", actor=None)
    assert await new.store.get_envelopes([(ALICE, "absent")]) == [None]
    raw_redis.delete(secret_key(ALICE, "warm"))

    raw_redis.execute_command("CLIENT", "PAUSE", 60_000, "WRITE")
    try:
        rotations = [
            asyncio.create_task(call(new_xrpc, ROTATE, keys.alice, {"name": name}))
            for name in names
        ]
        await asyncio.to_thread(wait_for_blocked, raw_redis, len(names))
        job = asyncio.create_task(Rewrap(new.store, new_keyring).run())
        await asyncio.to_thread(wait_for_blocked, raw_redis, 2 * len(names))
    finally:
        raw_redis.execute_command("CLIENT", "UNPAUSE")
    rotated = {
        name: body["token"]
        for name, (_, body) in zip(names, await asyncio.gather(*rotations), strict=True)
    }
    report = await job

    assert (report.scanned, report.skipped_changed, report.rewrapped) == (5, 5, 0)
    await assert_all_open_under_new_key_alone(
        new, new_key_alone, {(ALICE, name): token for name, token in rotated.items()}, version=2
    )


async def test_no_rotation_is_lost_while_rewrap_runs(
    aiohttp_client: AiohttpClient,
    make_sidecar: SidecarFactory,
    old_kek: str,
    new_kek: str,
    new_keyring: Keyring,
    new_key_alone: Keyring,
    owners: Owners,
) -> None:
    """Racing rotations: rotated secrets end at their last rotation, the rest are re-wrapped."""
    old, new = await make_pair(
        make_sidecar, old_kek, new_kek, SIDECAR_API_KEYS_FILE=str(owners.path)
    )
    old_xrpc = await aiohttp_client(create_xrpc_app(old))
    new_xrpc = await aiohttp_client(create_xrpc_app(new))
    tokens = await create_secrets(old_xrpc, owners.keys, ["busy", "quiet"])
    rounds = 3

    async def rotate_in_turn(did: str) -> None:
        for _ in range(rounds):
            status, body = await call(new_xrpc, ROTATE, owners.keys[did], {"name": "busy"})
            assert status == 200, body
            tokens[did, "busy"] = body["token"]

    report, *_ = await asyncio.gather(
        Rewrap(new.store, new_keyring).run(), *(rotate_in_turn(did) for did in owners.dids)
    )

    assert report.scanned == len(tokens)
    assert report.rewrapped + report.already_current + report.skipped_changed == len(tokens)
    assert report.failed_to_open == 0
    # Nobody else writes the quiet secrets, so their compare-and-set cannot lose.
    assert report.rewrapped >= len(owners.dids)
    busy = {ref: token for ref, token in tokens.items() if ref[1] == "busy"}
    quiet = {ref: token for ref, token in tokens.items() if ref[1] == "quiet"}
    await assert_all_open_under_new_key_alone(new, new_key_alone, busy, version=1 + rounds)
    await assert_all_open_under_new_key_alone(new, new_key_alone, quiet, version=1)


async def test_rewrap_scans_every_cluster_primary(
    aiohttp_client: AiohttpClient,
    make_sidecar: SidecarFactory,
    cluster_url: str,
    valkey_cluster: ValkeyCluster,
    old_kek: str,
    new_kek: str,
    new_keyring: Keyring,
    new_key_alone: Keyring,
    owners: Owners,
) -> None:
    """On a cluster, rewrap finds and re-seals the secrets held by each of the three nodes."""
    old, new = await make_pair(
        make_sidecar,
        old_kek,
        new_kek,
        REDIS_URL=cluster_url,
        SIDECAR_REDIS_CLUSTER="1",
        SIDECAR_API_KEYS_FILE=str(owners.path),
    )
    xrpc = await aiohttp_client(create_xrpc_app(old))
    tokens = await create_secrets(xrpc, owners.keys, ["a", "b"])
    per_node = []
    for port in valkey_cluster.ports:
        with redis.Redis(port=port) as node:
            per_node.append(node.dbsize())
    assert all(count > 0 for count in per_node)

    report = await Rewrap(new.store, new_keyring).run()

    assert (report.scanned, report.rewrapped) == (len(tokens), len(tokens))
    await assert_all_open_under_new_key_alone(new, new_key_alone, tokens, version=1)


def test_rewrap_command_reports_counts_and_exit_code(
    redis_url: str,
    raw_redis: redis.Redis,
    old_kek: str,
    new_kek: str,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """The command prints the counts, exits 1 while a secret fails to open, and 0 once none do."""
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
    environ: dict[str, str], setting: str, new_kek: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """Without REDIS_URL or an active KEK, rewrap exits 2 naming the missing setting."""
    if "SIDECAR_KEK" in environ:
        environ = {**environ, "SIDECAR_KEK": new_kek}
    assert main(["rewrap"], environ=environ) == 2
    assert f"configuration error: {setting}: is not set" in capsys.readouterr().err


def test_rewrap_stops_with_1_when_redis_does_not_answer(
    new_kek: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """When Redis does not answer, rewrap prints the counts so far, says so, and exits 1."""
    environ = {"REDIS_URL": f"redis://127.0.0.1:{free_port()}/0", "SIDECAR_KEK": new_kek}
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
