"""SIDECAR_MAX_SECRETS_PER_DID: a create or import past it is refused and stores nothing,
checked inside the create script, so two replicas on one Redis cannot both pass it."""

from __future__ import annotations

import asyncio
import json
from typing import TYPE_CHECKING, Any, cast

import pytest
from aiohttp.test_utils import TestClient
from support import ALICE, BOB, CREATE, DELETE, LIST, ROTATE, call, keyspace_dump

from sidecar.app import create_xrpc_app
from sidecar.cli import main
from sidecar.metrics import LIMIT_KINDS
from sidecar.storage.layout import index_key

if TYPE_CHECKING:
    from pathlib import Path

    import redis
    from support import AiohttpClient, Keys, SidecarFactory

    from sidecar.app import Sidecar

Client = TestClient[Any, Any]


@pytest.fixture(autouse=True)
def _changes_unlimited(env: dict[str, str]) -> None:
    """These tests make more changes a minute than the rate limit allows; not theirs to test."""
    env["SIDECAR_RATE_LIMIT_CHANGES_PER_MINUTE"] = "1000000"


def limit_hits(sidecar: Sidecar, kind: str) -> float | None:
    """The sidecar's own count of limit hits of ``kind``, None when the series is absent."""
    return sidecar.metrics.registry.get_sample_value(
        "wisp_sidecar_limit_hits_total", {"kind": kind}
    )


async def replica(
    make_sidecar: SidecarFactory, aiohttp_client: AiohttpClient, quota: int
) -> tuple[Sidecar, Client]:
    """A sidecar on the test Redis with quota ``quota``, and a client of its XRPC listener."""
    sidecar: Sidecar = await make_sidecar(
        SIDECAR_MAX_SECRETS_PER_DID=str(quota),
        # Forty creates at once on a busy machine can take longer than the default
        # 500 ms; a 503 would prove nothing about the quota either way.
        SIDECAR_REDIS_TIMEOUT_MS="30000",
    )
    client: Client = await aiohttp_client(create_xrpc_app(sidecar))
    return sidecar, client


def token_for(i: int) -> str:
    """A distinct importable token per number."""
    return f"legacy-token-{i:04d}-abcdefghijklmnopqrstuvwxyz"


async def test_a_create_past_the_quota_is_400_names_the_limit_and_stores_nothing(
    make_sidecar: SidecarFactory,
    aiohttp_client: AiohttpClient,
    keys: Keys,
    raw_redis: redis.Redis,
) -> None:
    """At its quota an owner's create, generated or imported, is 400 SecretQuotaExceeded
    naming the limit, changes nothing, and is counted; other owners and a name that
    exists are unaffected, and a delete makes room again."""
    sidecar, xrpc = await replica(make_sidecar, aiohttp_client, 3)
    for kind in LIMIT_KINDS:
        assert limit_hits(sidecar, kind) == 0
    for name in ("a", "b", "c"):
        assert (await call(xrpc, CREATE, keys.alice, {"name": name}))[0] == 200
    before = keyspace_dump(raw_redis)

    for body in ({"name": "d"}, {"name": "d", "token": token_for(1)}):
        status, answer = await call(xrpc, CREATE, keys.alice, body)
        assert status == 400
        assert answer == {
            "error": "SecretQuotaExceeded",
            "message": "Secret quota reached: this account has 3 secrets and may have at "
            "most 3; delete one before creating another",
        }
    assert keyspace_dump(raw_redis) == before
    assert limit_hits(sidecar, "secrets_per_did") == 2
    assert limit_hits(sidecar, "changes_per_minute") == 0
    outcome = {"operation": "create", "outcome": "quota_exceeded"}
    registry = sidecar.metrics.registry
    assert registry.get_sample_value("wisp_sidecar_secret_operations_total", outcome) == 2

    # A name that exists is still told so first; Bob has his own quota.
    assert (await call(xrpc, CREATE, keys.alice, {"name": "a"}))[1]["error"] == "AlreadyExists"
    assert (await call(xrpc, CREATE, keys.bob, {"name": "d"}))[0] == 200
    assert (await call(xrpc, DELETE, keys.alice, {"name": "b"}))[0] == 200
    assert (await call(xrpc, CREATE, keys.alice, {"name": "d"}))[0] == 200
    assert raw_redis.zrange(index_key(ALICE), 0, -1) == [b"a", b"c", b"d"]


async def test_two_replicas_creating_at_once_never_pass_the_quota_together(
    make_sidecar: SidecarFactory,
    aiohttp_client: AiohttpClient,
    keys: Keys,
    raw_redis: redis.Redis,
) -> None:
    """Forty creates for one owner sent at once, half to each of two replicas on one Redis,
    store exactly the quota of five; every other one is SecretQuotaExceeded."""
    _, first = await replica(make_sidecar, aiohttp_client, 5)
    _, second = await replica(make_sidecar, aiohttp_client, 5)
    results = await asyncio.gather(
        *(
            call(first if i % 2 else second, CREATE, keys.alice, {"name": f"s{i}"})
            for i in range(40)
        )
    )
    statuses = [status for status, _ in results]
    assert statuses.count(200) == 5
    assert statuses.count(400) == 35
    assert {body["error"] for status, body in results if status == 400} == {"SecretQuotaExceeded"}
    created = {body["name"] for status, body in results if status == 200}
    indexed = cast("list[bytes]", raw_redis.zrange(index_key(ALICE), 0, -1))
    stored = {name.decode() for name in indexed}
    assert stored == created
    assert len(list(raw_redis.scan_iter(match=f"wsc:{{{ALICE}}}:s:*"))) == 5


async def test_an_owner_over_a_lowered_quota_keeps_everything_and_adds_nothing(
    make_sidecar: SidecarFactory, aiohttp_client: AiohttpClient, keys: Keys
) -> None:
    """Lowered from 5 to 3, an owner with 5 keeps listing, rotating and deleting them, and
    can create again only once below 3."""
    _, before = await replica(make_sidecar, aiohttp_client, 5)
    for i in range(5):
        assert (await call(before, CREATE, keys.alice, {"name": f"s{i}"}))[0] == 200
    _, after = await replica(make_sidecar, aiohttp_client, 3)

    status, listed = await call(after, LIST, keys.alice, method="GET")
    assert (status, len(listed["secrets"])) == (200, 5)
    assert (await call(after, ROTATE, keys.alice, {"name": "s0"}))[0] == 200
    status, refused = await call(after, CREATE, keys.alice, {"name": "new"})
    assert (status, refused["error"]) == (400, "SecretQuotaExceeded")
    assert "has 5 secrets and may have at most 3" in refused["message"]
    for name, allowed in (("s0", False), ("s1", False), ("s2", True)):
        assert (await call(after, DELETE, keys.alice, {"name": name}))[0] == 200
        status, _ = await call(after, CREATE, keys.alice, {"name": f"new-{name}"})
        # 4, then 3 remain: still refused; at 2 there is room for one.
        assert status == (200 if allowed else 400)
    status, listed = await call(after, LIST, keys.alice, method="GET")
    assert [item["name"] for item in listed["secrets"]] == ["s3", "s4", "new-s2"]


async def test_an_import_past_the_quota_reports_those_lines_not_done_and_exits_1(
    env: dict[str, str],
    tmp_path: Path,
    raw_redis: redis.Redis,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """Lines that would take an owner past the quota are not done, each says why by number,
    the rest import, the dry run foresees the same, and the exit status is 1."""
    lines = [
        json.dumps({"did": ALICE, "name": name, "token": token_for(i)})
        for i, name in enumerate(("a", "b", "c", "d"))
    ]
    lines.insert(2, json.dumps({"did": BOB, "name": "x", "token": token_for(9)}))
    path = tmp_path / "tokens.jsonl"
    path.write_text("\n".join(lines) + "\n")
    quota_env = {**env, "SIDECAR_MAX_SECRETS_PER_DID": "2"}
    expected_err = [
        f"import: line {n}: not done: {ALICE} already has 2 secrets, "
        "and SIDECAR_MAX_SECRETS_PER_DID allows 2"
        for n in (4, 5)
    ]
    for dry_run, done in ((True, "to import"), (False, "imported")):
        capsys.readouterr()
        args = ["import", *(["--dry-run"] if dry_run else []), str(path)]
        assert await asyncio.to_thread(main, args, quota_env) == 1
        out, err = capsys.readouterr()
        assert err.splitlines() == expected_err
        skipped = "to skip" if dry_run else "skipped"
        summary = (
            f"import: 3 {done}, 0 {skipped} (name exists), 0 bad lines, "
            "2 not done (SIDECAR_MAX_SECRETS_PER_DID)"
        )
        assert out.splitlines() == [summary + ("; nothing written (--dry-run)" if dry_run else "")]
        stored = raw_redis.zrange(index_key(ALICE), 0, -1)
        assert stored == ([] if dry_run else [b"a", b"b"])
    assert raw_redis.zrange(index_key(BOB), 0, -1) == [b"x"]
    assert not any(token_for(i) in out + err for i in range(10))


async def test_the_limit_hits_metric_takes_only_declared_kinds(sidecar: Sidecar) -> None:
    """Every declared limit kind is exported at 0 from start; an undeclared kind is refused,
    so no label value can come from a request."""
    for kind in LIMIT_KINDS:
        assert limit_hits(sidecar, kind) == 0
    with pytest.raises(ValueError, match="undeclared limit kind"):
        sidecar.metrics.limit_hit("did:plc:alice000000000000000000")
    assert limit_hits(sidecar, "did:plc:alice000000000000000000") is None
