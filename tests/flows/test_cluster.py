"""A sidecar on a three-node Redis Cluster: procedures, batched reads, NOSCRIPT and resharding."""

from __future__ import annotations

import base64
import hashlib
import hmac
from typing import TYPE_CHECKING, Any

import redis
from support import DELETE, LIST, ROTATE, call, create_secrets, opened, read_round_trips, sign_body

from sidecar.app import create_sign_app
from sidecar.storage.layout import index_key, secret_key

if TYPE_CHECKING:
    from aiohttp.test_utils import TestClient
    from support import AiohttpClient
    from topologies import Owners, ValkeyCluster

    from sidecar.app import Sidecar

    Client = TestClient[Any, Any]


def ports_by_owner(cluster: ValkeyCluster, owners: Owners) -> dict[str, int]:
    """The node each owner's keys live on, from the cluster's own slot table."""
    return {did: cluster.port_of_slot(cluster.slot_of(secret_key(did, "x"))) for did in owners.dids}


def test_owners_spread_over_every_node(valkey_cluster: ValkeyCluster, owners: Owners) -> None:
    """The test owners' slots cover all three nodes, so the other tests cross nodes."""
    assert set(ports_by_owner(valkey_cluster, owners).values()) == set(valkey_cluster.ports)


def test_keys_of_one_owner_share_a_slot(valkey_cluster: ValkeyCluster, owners: Owners) -> None:
    """A secret's hash, its owner's index and audit log all hash to one slot."""
    for did in owners.dids:
        slots = {
            valkey_cluster.slot_of(key)
            for key in (secret_key(did, "a"), secret_key(did, "b.c"), index_key(did))
        }
        assert len(slots) == 1


async def test_all_four_procedures_work_for_owners_on_every_node(
    cluster_xrpc: Client, cluster_sidecar: Sidecar, valkey_cluster: ValkeyCluster, owners: Owners
) -> None:
    """create, list, rotate and delete work for every owner, wherever its slot lives."""
    xrpc = cluster_xrpc
    tokens = await create_secrets(xrpc, owners.keys, ["orders", "billing"])
    where = ports_by_owner(valkey_cluster, owners)
    for did in owners.dids:
        key = owners.keys[did]
        status, rotated = await call(xrpc, ROTATE, key, {"name": "orders"})
        assert status == 200, rotated
        assert rotated["token"] != tokens[did, "orders"]
        status, listed = await call(xrpc, LIST, key, method="GET")
        assert [item["name"] for item in listed["secrets"]] == ["orders", "billing"]
        assert await call(xrpc, DELETE, key, {"name": "billing"}) == (200, {})
        # The write went to the node that owns the slot, and only there.
        with redis.Redis(port=where[did]) as node:
            stored = node.hgetall(secret_key(did, "orders"))
            assert node.exists(secret_key(did, "billing")) == 0
        assert stored[b"ver"] == b"2"
        token = cluster_sidecar.keyring.open(stored[b"env"].decode(), did=did, name="orders")
        assert token == rotated["token"]
    assert await cluster_sidecar.redis_ok()


async def test_a_batch_read_across_slots_returns_each_envelope_in_order(
    cluster_xrpc: Client, cluster_sidecar: Sidecar, owners: Owners
) -> None:
    """get_envelopes over owners on all three nodes returns each current envelope, in order."""
    tokens = await create_secrets(cluster_xrpc, owners.keys, ["a", "b"])
    versions = dict.fromkeys(tokens, 1)
    for did in owners.dids[::2]:
        _, body = await call(cluster_xrpc, ROTATE, owners.keys[did], {"name": "b"})
        tokens[did, "b"], versions[did, "b"] = body["token"], 2
    # Interleave owners and slip in absent secrets, so order cannot come from grouping.
    refs: list[tuple[str, str]] = []
    for did in reversed(owners.dids):
        refs += [(did, "b"), (did, "absent"), (did, "a")]

    envelopes = await cluster_sidecar.store.get_envelopes(refs)

    assert opened(cluster_sidecar.keyring, refs, envelopes) == [
        (tokens[ref], versions[ref]) if ref in tokens else None for ref in refs
    ]


async def test_a_sign_batch_across_slots_signs_each_item_with_its_current_token(
    aiohttp_client: AiohttpClient, cluster_xrpc: Client, cluster_sidecar: Sidecar, owners: Owners
) -> None:
    """/v1/sign/batch over owners on every node signs each item with that secret's token."""
    sign = await aiohttp_client(create_sign_app(cluster_sidecar))
    tokens = await create_secrets(cluster_xrpc, owners.keys, ["hooks"])
    for did in owners.dids[1::2]:
        _, body = await call(cluster_xrpc, ROTATE, owners.keys[did], {"name": "hooks"})
        tokens[did, "hooks"] = body["token"]
    payload = b'{"event":"push"}'
    encoded = base64.b64encode(payload).decode()
    items = [{"did": did, "name": "hooks", "body_b64": encoded} for did in owners.dids]
    items.insert(3, {"did": owners.dids[0], "name": "absent", "body_b64": encoded})

    before = read_round_trips(cluster_sidecar)
    async with sign.post("/v1/sign/batch", json={"items": items}) as response:
        assert response.status == 200
        results = (await response.json())["results"]

    # One coalesced read served the whole batch, across every node.
    assert read_round_trips(cluster_sidecar) == before + 1
    assert results.pop(3)["error"] == "NotFound"
    for did, result in zip(owners.dids, results, strict=True):
        mac = hmac.new(tokens[did, "hooks"].encode(), payload, hashlib.sha256).hexdigest()
        assert result["headers"] == {"X-Webhook-Signature": f"sha256={mac}"}
        assert result["version"] == (2 if did in owners.dids[1::2] else 1)
    status, single = await sign_body(sign, owners.dids[-1], "hooks", payload)
    assert (status, single["headers"]) == (200, results[-1]["headers"])


async def test_scripts_reload_on_every_node_after_noscript(
    cluster_xrpc: Client, valkey_cluster: ValkeyCluster, owners: Owners
) -> None:
    """After every node's script cache is flushed, rotate and delete still work on every node."""
    await create_secrets(cluster_xrpc, owners.keys, ["orders"])
    for port in valkey_cluster.ports:
        with redis.Redis(port=port) as node:
            node.script_flush()
    for did in owners.dids:
        status, body = await call(cluster_xrpc, ROTATE, owners.keys[did], {"name": "orders"})
        assert status == 200, body
        assert await call(cluster_xrpc, DELETE, owners.keys[did], {"name": "orders"}) == (200, {})


async def test_procedures_and_batch_reads_follow_a_moved_slot(
    cluster_xrpc: Client, cluster_sidecar: Sidecar, valkey_cluster: ValkeyCluster, owners: Owners
) -> None:
    """When a slot is resharded to another node, reads and scripts follow the MOVED answer."""
    xrpc = cluster_xrpc
    tokens = await create_secrets(xrpc, owners.keys, ["orders"])
    # The client has now learnt the slot table; move one owner's slot under it.
    mover = owners.dids[0]
    slot = valkey_cluster.slot_of(secret_key(mover, "orders"))
    before = valkey_cluster.port_of_slot(slot)
    after = next(port for port in valkey_cluster.ports if port != before)
    valkey_cluster.move_slot(slot, after)
    try:
        refs = list(tokens)
        envelopes = await cluster_sidecar.store.get_envelopes(refs)
        assert opened(cluster_sidecar.keyring, refs, envelopes) == [(tokens[r], 1) for r in refs]
        status, rotated = await call(xrpc, ROTATE, owners.keys[mover], {"name": "orders"})
        assert status == 200, rotated
        status, listed = await call(xrpc, LIST, owners.keys[mover], method="GET")
        assert [item["name"] for item in listed["secrets"]] == ["orders"]
        with redis.Redis(port=after) as node:
            assert node.hget(secret_key(mover, "orders"), "ver") == b"2"
    finally:
        valkey_cluster.move_slot(slot, before)
