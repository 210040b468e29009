"""Acknowledged means durable: changes wait for replicas (and fsync) as configured,
answer 503 when that is not reached, and no read is answered by a demoted primary.

The replicas here are real servers; "not reached" is a replica frozen with
SIGSTOP, which keeps its link open and stops acknowledging, as a stalled or
partitioned replica does.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import time
from typing import TYPE_CHECKING, Any

import pytest
import redis
from support import (
    ALICE,
    CREATE,
    DELETE,
    LIST,
    ROTATE,
    SERVER_BINARY,
    call,
    durability_failures,
    serve_until_listening_or_exit,
    sign_body,
)
from topologies import DATA_PASSWORD, MASTER_NAME, SentinelGroup, wait_for

from sidecar.app import create_ops_app, create_sign_app, create_xrpc_app
from sidecar.cli import main
from sidecar.crypto import Keyring, encode_kek, generate_kek, parse_kek
from sidecar.errors import ChangeNotDurable, StorageUnavailable
from sidecar.storage.embedded import EmbeddedValkey
from sidecar.storage.layout import secret_key

if TYPE_CHECKING:
    from collections.abc import Iterator
    from pathlib import Path

    from aiohttp.test_utils import TestClient
    from support import AiohttpClient, Keys, SidecarFactory

    from sidecar.app import Sidecar

    Client = TestClient[Any, Any]

# Short, so that a test that waits out the durability timeout stays quick.
DURABLE_TIMEOUT_MS = 200
REDIS_TIMEOUT_MS = 500
NO_SYNC_DELAY = ("--repl-diskless-sync-delay", "0")


class Pair:
    """A primary and one replica of it, without Sentinel."""

    def __init__(self, base: Path, *, primary_args: tuple[str, ...] = ()) -> None:
        self.primary = EmbeddedValkey(
            base / "primary",
            binary=SERVER_BINARY,
            persist=False,
            extra_args=(*NO_SYNC_DELAY, *primary_args),
        )
        self.replica = EmbeddedValkey(
            base / "replica",
            binary=SERVER_BINARY,
            persist=False,
            extra_args=(*NO_SYNC_DELAY, "--replicaof", "127.0.0.1", str(self.primary.port)),
        )

    def __enter__(self) -> Pair:
        self.primary.start()
        try:
            self.replica.start()
            wait_for("the replica to sync", self.synced)
        except BaseException:
            self.primary.stop()
            raise
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.replica.stop()
        self.primary.stop()

    def synced(self) -> bool:
        with redis.Redis(port=self.replica.port) as client:
            info: dict[str, Any] = client.info("replication")
        return bool(info.get("master_link_status") == "up")

    @contextlib.contextmanager
    def replica_frozen(self) -> Iterator[None]:
        """The replica stopped (its link stays open, it acknowledges nothing), then resumed."""
        pid = self.replica.pid
        assert pid is not None
        os.kill(pid, signal.SIGSTOP)
        try:
            yield
        finally:
            os.kill(pid, signal.SIGCONT)


@pytest.fixture(scope="module")
def pair(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Pair]:
    """One primary and replica for the module; each test starts with them empty."""
    with Pair(tmp_path_factory.mktemp("pair")) as servers:
        yield servers


@pytest.fixture
def pair_url(pair: Pair) -> str:
    """The primary's URL, with the pair emptied for this test."""
    with redis.Redis(port=pair.primary.port) as client:
        client.flushall()
    return pair.primary.url


@pytest.fixture
async def durable(make_sidecar: SidecarFactory, pair_url: str) -> Sidecar:
    """A sidecar on the pair that needs one replica to acknowledge every change."""
    sidecar: Sidecar = await make_sidecar(
        REDIS_URL=pair_url,
        SIDECAR_DURABLE_REPLICAS="1",
        SIDECAR_DURABLE_TIMEOUT_MS=str(DURABLE_TIMEOUT_MS),
        SIDECAR_REDIS_TIMEOUT_MS=str(REDIS_TIMEOUT_MS),
    )
    return sidecar


@pytest.fixture
async def durable_xrpc(aiohttp_client: AiohttpClient, durable: Sidecar) -> Client:
    """A client of the durable sidecar's XRPC listener, over a real socket."""
    client: Client = await aiohttp_client(create_xrpc_app(durable))
    return client


async def test_a_change_is_on_the_replica_when_it_is_acknowledged(
    durable_xrpc: Client, pair: Pair, keys: Keys
) -> None:
    """With one replica required, each acknowledged rotation is already on the replica."""
    assert (await call(durable_xrpc, CREATE, keys.alice, {"name": "orders"}))[0] == 200
    with redis.Redis(port=pair.replica.port) as replica:
        for version in range(2, 12):
            status, body = await call(durable_xrpc, ROTATE, keys.alice, {"name": "orders"})
            assert status == 200, body
            assert replica.hget(secret_key(ALICE, "orders"), "ver") == str(version).encode()


@pytest.mark.parametrize(
    ("nsid", "operation", "retried"),
    [
        # Each change did apply on the primary; the retry shows it, as documented.
        (CREATE, "create", (409, "AlreadyExists")),
        (ROTATE, "rotate", (200, None)),
        (DELETE, "delete", (404, "NotFound")),
    ],
)
async def test_an_unconfirmed_change_answers_503_and_says_to_retry(
    durable_xrpc: Client,
    durable: Sidecar,
    pair: Pair,
    keys: Keys,
    nsid: str,
    operation: str,
    retried: tuple[int, str | None],
) -> None:
    """A change no replica acknowledges is a 503 once the wait for it ends, never a 200."""
    if nsid != CREATE:
        assert (await call(durable_xrpc, CREATE, keys.alice, {"name": "orders"}))[0] == 200
    with pair.replica_frozen():
        # Against a hang only: the answer is due after the two timeouts, well before this.
        async with (
            asyncio.timeout(30),
            durable_xrpc.post(
                f"/xrpc/{nsid}",
                json={"name": "orders"},
                headers={"Authorization": f"Bearer {keys.alice}"},
            ) as response,
        ):
            body = await response.json()
            assert response.status == 503, body
            assert response.headers["Retry-After"] == "1"
    assert body["error"] == "StorageUnavailable"
    assert "may or may not have been applied" in body["message"]
    assert "Retry" in body["message"]
    # It waited for the replica and gave up on it: a durability failure, not a Redis error.
    assert durability_failures(durable, operation) == 1

    status, answer = await call(durable_xrpc, nsid, keys.alice, {"name": "orders"})
    assert (status, answer.get("error")) == retried


async def test_without_durability_changes_do_not_wait(
    aiohttp_client: AiohttpClient,
    make_sidecar: SidecarFactory,
    pair_url: str,
    pair: Pair,
    keys: Keys,
) -> None:
    """By default a change waits for no replica: on a primary without AOF it is answered once
    the primary has it, even with a stalled replica."""
    sidecar: Sidecar = await make_sidecar(REDIS_URL=pair_url)
    durability = sidecar.store.calls.durability
    assert (durability.replicas, durability.fsync) == (0, "auto")
    xrpc = await aiohttp_client(create_xrpc_app(sidecar))
    assert (await call(xrpc, CREATE, keys.alice, {"name": "orders"}))[0] == 200
    with pair.replica_frozen():
        for _ in range(3):
            status, body = await call(xrpc, ROTATE, keys.alice, {"name": "orders"})
            assert status == 200, body


async def test_claim_jti_and_rewrap_wait_for_the_replica(durable: Sidecar, pair: Pair) -> None:
    """A first jti use and a re-wrap swap are unconfirmed without the replica; a replay is not."""
    store, replay = durable.store, durable.replay
    until = int(time.time()) + 60
    assert await replay.claim_jti(ALICE, "seen", until) is True
    envelope = durable.keyring.seal("wsk_" + "a" * 32, did=ALICE, name="orders")
    await store.create(ALICE, "orders", envelope, actor="test")
    with pair.replica_frozen():
        with pytest.raises(ChangeNotDurable):
            await replay.claim_jti(ALICE, "fresh", until)
        # A replay changes nothing, so there is nothing to wait for.
        assert await replay.claim_jti(ALICE, "seen", until) is False
        with pytest.raises(ChangeNotDurable):
            await store.replace_envelope(ALICE, "orders", envelope, envelope + "x", actor=None)
        # A swap that does not happen waits for nothing either.
        assert not await store.replace_envelope(ALICE, "orders", "stale", "new", actor=None)
    assert durability_failures(durable, "claim_jti") == 1
    assert durability_failures(durable, "rewrap") == 1
    assert durability_failures(durable, "create") == 0


async def test_readyz_shows_the_replicas_against_the_setting(
    aiohttp_client: AiohttpClient, make_sidecar: SidecarFactory, pair_url: str
) -> None:
    """/readyz shows the durability detail, and stays ready with too few replicas connected."""
    for required, met in ((1, True), (2, False)):
        sidecar: Sidecar = await make_sidecar(
            REDIS_URL=pair_url, SIDECAR_DURABLE_REPLICAS=str(required)
        )
        ops = await aiohttp_client(create_ops_app(sidecar))
        async with ops.get("/readyz") as response:
            assert response.status == 200
            body = await response.json()
        assert body["status"] == "ready"
        assert body["durability"] == {
            "required": f"{required} replica{'' if required == 1 else 's'} "
            "and the primary's AOF where it has one",
            "replicas_required": required,
            "replicas_connected": 1,
            "met": met,
        }


async def test_readyz_has_no_durability_detail_by_default(ops: Client) -> None:
    """Without a durability setting, /readyz says ready and nothing about replicas."""
    async with ops.get("/readyz") as response:
        body = await response.json()
    assert body["status"] == "ready"
    assert "durability" not in body


@pytest.mark.parametrize("value", ["on", "1"])
@pytest.mark.parametrize(
    ("server_args", "reason"),
    [
        (("--appendonly", "no"), "appendonly no"),
        # What a server older than Redis 7.2 answers: WAITAOF is an unknown command.
        (("--appendonly", "yes", "--rename-command", "WAITAOF", ""), "has no WAITAOF"),
    ],
)
async def test_fsync_durability_the_server_cannot_give_stops_the_start(
    env: dict[str, str], tmp_path: Path, server_args: tuple[str, ...], reason: str, value: str
) -> None:
    """SIDECAR_DURABLE_FSYNC=on (or 1, as before) on a server without WAITAOF or AOF exits 2
    naming the setting."""
    with EmbeddedValkey(
        tmp_path / "server", binary=SERVER_BINARY, persist=False, extra_args=server_args
    ) as server:
        code, lines = await serve_until_listening_or_exit(
            {**env, "REDIS_URL": server.url, "SIDECAR_DURABLE_FSYNC": value}, tmp_path
        )
    assert code == 2, lines
    assert "SIDECAR_DURABLE_FSYNC" in lines[-1]
    assert reason in lines[-1]


async def test_fsync_durability_on_an_aof_server_acknowledges_changes(
    aiohttp_client: AiohttpClient, make_sidecar: SidecarFactory, keys: Keys, tmp_path: Path
) -> None:
    """With SIDECAR_DURABLE_FSYNC on an AOF server, changes succeed after WAITAOF confirms them."""
    with EmbeddedValkey(tmp_path / "aof", binary=SERVER_BINARY, persist=True) as server:
        sidecar: Sidecar = await make_sidecar(REDIS_URL=server.url, SIDECAR_DURABLE_FSYNC="1")
        assert await sidecar.store.calls.fsync_refusal() is None
        xrpc = await aiohttp_client(create_xrpc_app(sidecar))
        for nsid in (CREATE, ROTATE, DELETE):
            status, body = await call(xrpc, nsid, keys.alice, {"name": "orders"})
            assert status == 200, body
        with redis.Redis(port=server.port) as client:
            # The primary's own fsynced AOF offset covers everything written.
            assert client.execute_command("WAITAOF", 1, 0, 1) == [1, 0]
        assert durability_failures(sidecar, "rotate") == 0


async def test_too_few_replicas_log_one_line_at_start_and_serve_anyway(
    env: dict[str, str], pair_url: str, tmp_path: Path
) -> None:
    """Starting with fewer replicas than required logs durability_unmet and still listens."""
    code, lines = await serve_until_listening_or_exit(
        {**env, "REDIS_URL": pair_url, "SIDECAR_DURABLE_REPLICAS": "2"}, tmp_path
    )
    assert code is None, lines
    unmet = [json.loads(line) for line in lines if "durability_unmet" in line]
    assert len(unmet) == 1
    assert unmet[0]["replicas_required"] == 2
    assert unmet[0]["replicas_connected"] == 1
    assert "SIDECAR_DURABLE_REPLICAS" in unmet[0]["hint"]


async def test_a_demoted_primary_answers_no_read_and_takes_no_change(
    aiohttp_client: AiohttpClient, make_sidecar: SidecarFactory, keys: Keys, tmp_path: Path
) -> None:
    """Once the sidecar's node is demoted, sign, list, rotate and jti checks all fail closed."""
    with Pair(tmp_path / "demoted") as servers:
        sidecar: Sidecar = await make_sidecar(REDIS_URL=servers.primary.url)
        xrpc = await aiohttp_client(create_xrpc_app(sidecar))
        sign = await aiohttp_client(create_sign_app(sidecar))
        assert (await call(xrpc, CREATE, keys.alice, {"name": "orders"}))[0] == 200
        # Warm every connection the sidecar keeps, the sign path's own included.
        assert (await sign_body(sign, ALICE, "orders", b"{}"))[0] == 200
        assert (await call(xrpc, LIST, keys.alice, method="GET"))[0] == 200

        # Swap the roles, as a failover does; the old primary keeps its clients.
        with redis.Redis(port=servers.replica.port) as promoted:
            promoted.execute_command("REPLICAOF", "NO", "ONE")
        with redis.Redis(port=servers.primary.port) as demoted:
            demoted.execute_command("REPLICAOF", "127.0.0.1", servers.replica.port)
            # A stale or diverged copy must never decide a signature.
            demoted.config_set("replica-read-only", "no")
            demoted.hset(secret_key(ALICE, "orders"), "ver", 99)

        status, signed = await sign_body(sign, ALICE, "orders", b"{}")
        assert (status, signed["error"]) == (503, "StorageUnavailable")
        for nsid, method in ((LIST, "GET"), (ROTATE, "POST")):
            body = None if method == "GET" else {"name": "orders"}
            status, answer = await call(xrpc, nsid, keys.alice, body, method=method)
            assert (status, answer["error"]) == (503, "StorageUnavailable"), nsid
        with pytest.raises(StorageUnavailable):
            await sidecar.replay.claim_jti(ALICE, "jti-1", int(time.time()) + 60)


async def test_after_a_coordinated_failover_no_read_comes_from_the_old_primary(
    aiohttp_client: AiohttpClient,
    make_sidecar: SidecarFactory,
    keys: Keys,
    tmp_path: Path,
) -> None:
    """After SENTINEL FAILOVER, signing reads the new primary at once, never the old one."""
    group = SentinelGroup(tmp_path / "coordinated")
    group.start()
    try:
        group.wait_until_ready_to_fail_over()
        old_port = group.primary_port()
        sidecar: Sidecar = await make_sidecar(
            REDIS_URL=group.url, SIDECAR_DURABLE_REPLICAS="1", SIDECAR_API_KEYS_FILE=str(keys.path)
        )
        xrpc = await aiohttp_client(create_xrpc_app(sidecar))
        sign = await aiohttp_client(create_sign_app(sidecar))
        assert (await call(xrpc, CREATE, keys.alice, {"name": "orders"}))[0] == 200
        assert (await sign_body(sign, ALICE, "orders", b"{}"))[0] == 200

        with redis.Redis(port=group.sentinels[0].port) as sentinel:
            sentinel.execute_command("SENTINEL", "FAILOVER", MASTER_NAME)
        new_port = group.replica.port if old_port == group.primary.port else group.primary.port
        wait_for("the sentinels to name the new primary", lambda: group.agree_on_primary(new_port))
        with redis.Redis(port=old_port, password=DATA_PASSWORD, socket_timeout=5) as demoted:
            wait_for("the old primary to be a replica", lambda: demoted.role()[0] == b"slave")
            demoted.config_set("replica-read-only", "no")
            demoted.hset(secret_key(ALICE, "orders"), "ver", 99)

        versions = set()
        for _ in range(20):
            status, signed = await sign_body(sign, ALICE, "orders", b"{}")
            if status == 200:
                versions.add(signed["version"])
            else:
                assert (status, signed["error"]) == (503, "StorageUnavailable")
        # Reads reach the new primary without a restart, and never see the diverged copy.
        assert versions == {1}
        status, listed = await call(xrpc, LIST, keys.alice, method="GET")
        assert status == 200, listed
    finally:
        group.stop()


def test_rewrap_exits_1_and_says_to_rerun_when_replicas_do_not_confirm(
    pair: Pair, pair_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """rewrap stops at a swap no replica confirms, exits 1 and asks for a rerun."""
    old_kek, new_kek = encode_kek(generate_kek()), encode_kek(generate_kek())
    envelope = Keyring(parse_kek(old_kek, setting="old")).seal(
        "wsk_" + "a" * 32, did=ALICE, name="a"
    )
    with redis.Redis.from_url(pair_url) as client:
        client.hset(secret_key(ALICE, "a"), mapping={"env": envelope, "ver": 1, "created": 0})
    environ = {
        "REDIS_URL": pair_url,
        "SIDECAR_KEK": new_kek,
        "SIDECAR_KEK_PREVIOUS": old_kek,
        "SIDECAR_DURABLE_REPLICAS": "1",
        "SIDECAR_DURABLE_TIMEOUT_MS": str(DURABLE_TIMEOUT_MS),
    }
    with pair.replica_frozen():
        assert main(["rewrap"], environ=environ) == 1
    out, err = capsys.readouterr()
    assert out.startswith("rewrap: scanned=1 rewrapped=0 ")
    assert "may or may not have been applied, run it again" in err

    # The primary kept the unconfirmed swap (no failover here); the rerun
    # confirms the secret is current, with the replica acknowledging again.
    assert main(["rewrap"], environ=environ) == 0
    assert "already_current=1" in capsys.readouterr().out
