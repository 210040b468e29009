"""Metrics after real requests, canonical log lines, request ids, and health endpoints."""

from __future__ import annotations

import json
from typing import Any

import pytest
from aiohttp.test_utils import TestClient
from prometheus_client.parser import text_string_to_metric_families
from support import (
    ALICE,
    CREATE,
    DELETE,
    LIST,
    ROTATE,
    AiohttpClient,
    Keys,
    SidecarFactory,
    bearer,
    call,
    parsed,
    sign_body,
)

from sidecar.app import Sidecar, create_ops_app, create_sign_app, create_xrpc_app

Client = TestClient[Any, Any]
BODY = b'{"event":"create"}'


async def scrape(ops: Client) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample on /metrics, keyed by name and sorted labels."""
    async with ops.get("/metrics") as response:
        assert response.status == 200
        text = await response.text()
    samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples


def value(samples: dict[Any, float], name: str, **labels: str) -> float:
    """The sample of ``name`` with exactly ``labels`` in a scrape, 0 if there is none."""
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


async def test_rotations_are_counted_once_each_by_outcome(
    xrpc: Client, ops: Client, keys: Keys
) -> None:
    """Every rotate request increments exactly one outcome, and the latency histogram by one."""
    await call(xrpc, CREATE, keys.alice, {"name": "orders"})
    before = await scrape(ops)
    await call(xrpc, ROTATE, keys.alice, {"name": "orders"})
    await call(xrpc, ROTATE, keys.alice, {"name": "orders"})
    await call(xrpc, ROTATE, keys.alice, {"name": "missing"})
    await call(xrpc, ROTATE, keys.alice, {"name": ".."})
    await call(xrpc, ROTATE, None, {"name": "orders"})
    after = await scrape(ops)
    expected = {"ok": 2, "not_found": 1, "invalid": 1, "unauthenticated": 1}
    for outcome, count in expected.items():
        name = "wisp_sidecar_rotations_total"
        assert value(after, name, outcome=outcome) - value(before, name, outcome=outcome) == count
    for outcome in ("encryption_unavailable", "storage_unavailable", "error"):
        assert value(after, "wisp_sidecar_rotations_total", outcome=outcome) == 0
    histogram = "wisp_sidecar_rotation_duration_seconds_count"
    assert value(after, histogram) - value(before, histogram) == 5
    assert value(after, "wisp_sidecar_rotation_duration_seconds_bucket", le="5.0") == value(
        after, histogram
    )
    assert value(after, "wisp_sidecar_last_rotation_timestamp_seconds") > 1.7e9


async def test_secret_operations_and_xrpc_requests_are_counted(
    xrpc: Client, ops: Client, keys: Keys
) -> None:
    """create, list and delete count by operation and outcome; every call by NSID and status."""
    await call(xrpc, CREATE, keys.alice, {"name": "orders"})
    await call(xrpc, CREATE, keys.alice, {"name": "orders"})
    await call(xrpc, LIST, keys.alice, method="GET")
    await call(xrpc, DELETE, keys.alice, {"name": "orders"})
    await call(xrpc, DELETE, keys.alice, {"name": "orders"})
    await call(xrpc, "com.example.nothing", keys.alice, {})
    samples = await scrape(ops)
    ops_total = "wisp_sidecar_secret_operations_total"
    assert value(samples, ops_total, operation="create", outcome="ok") == 1
    assert value(samples, ops_total, operation="create", outcome="already_exists") == 1
    assert value(samples, ops_total, operation="list", outcome="ok") == 1
    assert value(samples, ops_total, operation="delete", outcome="ok") == 1
    assert value(samples, ops_total, operation="delete", outcome="not_found") == 1
    requests = "wisp_sidecar_xrpc_requests_total"
    assert value(samples, requests, method=CREATE, status="200") == 1
    assert value(samples, requests, method=CREATE, status="409") == 1
    assert value(samples, requests, method=DELETE, status="404") == 1
    assert value(samples, requests, method="unknown", status="501") == 1


async def test_auth_failures_are_counted_by_reason(xrpc: Client, ops: Client, keys: Keys) -> None:
    """Missing, malformed and unknown credentials each count under their own reason."""
    await call(xrpc, LIST, None, method="GET")
    async with xrpc.get(f"/xrpc/{LIST}", headers={"Authorization": "Basic eA=="}):
        pass
    await call(xrpc, LIST, "wsa_not-a-key", method="GET")
    await call(xrpc, LIST, "wsa_not-a-key", method="GET")
    samples = await scrape(ops)
    name = "wisp_sidecar_auth_failures_total"
    assert value(samples, name, reason="missing") == 1
    assert value(samples, name, reason="malformed") == 1
    assert value(samples, name, reason="unknown_key") == 2


async def test_signatures_and_verifications_are_counted(
    sidecar: Sidecar, xrpc: Client, sign: Client, ops: Client, keys: Keys
) -> None:
    """Signatures count by scheme and outcome (batch items one by one); verifies by reason."""
    await call(xrpc, CREATE, keys.alice, {"name": "orders"})
    await sign_body(sign, ALICE, "orders", BODY)
    await sign_body(sign, ALICE, "orders", BODY, scheme="github")
    await sign_body(sign, ALICE, "missing", BODY, scheme="stripe")
    item = {"did": ALICE, "name": "orders", "body_b64": "e30=", "scheme": "standard"}
    async with sign.post(
        "/v1/sign/batch", json={"items": [item, item, {**item, "name": "gone"}]}
    ) as response:
        assert response.status == 200
    async with sign.post(
        "/v1/verify", params={"did": ALICE, "name": "orders"}, data=BODY
    ) as response:
        assert (await response.json())["reason"] == "missing_header"
    samples = await scrape(ops)
    name = "wisp_sidecar_signatures_total"
    assert value(samples, name, scheme="wisp", outcome="ok") == 1
    assert value(samples, name, scheme="github", outcome="ok") == 1
    assert value(samples, name, scheme="stripe", outcome="not_found") == 1
    assert value(samples, name, scheme="standard", outcome="ok") == 2
    assert value(samples, name, scheme="standard", outcome="not_found") == 1
    assert value(samples, "wisp_sidecar_sign_duration_seconds_count") == 4
    reason = "missing_header"
    assert value(samples, "wisp_sidecar_verifications_total", scheme="wisp", reason=reason) == 1


async def test_redis_errors_are_counted_by_operation(
    aiohttp_client: AiohttpClient, make_sidecar: SidecarFactory, keys: Keys
) -> None:
    """A Redis that refuses connections counts one error per failed operation: for an
    XRPC call, the first, the client address's rate-limit check."""
    from sidecar.storage.embedded import free_port

    dead = await make_sidecar(REDIS_URL=f"redis://127.0.0.1:{free_port()}/0")
    xrpc = await aiohttp_client(create_xrpc_app(dead))
    sign = await aiohttp_client(create_sign_app(dead))
    ops = await aiohttp_client(create_ops_app(dead))
    await call(xrpc, ROTATE, keys.alice, {"name": "orders"})
    await sign_body(sign, ALICE, "orders", BODY)
    samples = await scrape(ops)
    assert value(samples, "wisp_sidecar_redis_errors_total", operation="rate_limit") == 1
    assert value(samples, "wisp_sidecar_redis_errors_total", operation="rotate") == 0
    assert value(samples, "wisp_sidecar_redis_errors_total", operation="get_envelopes") == 1
    assert value(samples, "wisp_sidecar_rotations_total", outcome="storage_unavailable") == 1
    name = "wisp_sidecar_signatures_total"
    assert value(samples, name, scheme="wisp", outcome="storage_unavailable") == 1


async def test_metric_labels_never_hold_dids_names_or_tokens(
    xrpc: Client, sign: Client, ops: Client, keys: Keys
) -> None:
    """No label value on /metrics is a DID, a secret name or a token."""
    _, created = await call(xrpc, CREATE, keys.alice, {"name": "very-secret-name"})
    await sign_body(sign, ALICE, "very-secret-name", BODY)
    async with ops.get("/metrics") as response:
        text = await response.text()
    for needle in (ALICE, "very-secret-name", created["token"], keys.alice):
        assert needle not in text


async def test_canonical_request_lines_carry_id_did_status_and_duration(
    xrpc: Client, keys: Keys, log_lines: list[str]
) -> None:
    """Each XRPC request logs one JSON line with listener, path, status, duration, id and DID."""
    async with xrpc.post(
        f"/xrpc/{CREATE}",
        json={"name": "orders"},
        headers={**bearer(keys.alice), "X-Request-Id": "req-1"},
    ) as response:
        assert response.status == 200
        assert response.headers["X-Request-Id"] == "req-1"
    async with xrpc.get(f"/xrpc/{LIST}") as response:
        generated = response.headers["X-Request-Id"]
    assert generated
    assert generated != "req-1"
    lines = [line for line in parsed(log_lines) if line["event"] == "request"]
    assert len(lines) == 2
    first, second = lines
    assert first["listener"] == "xrpc"
    assert (first["method"], first["path"], first["status"]) == ("POST", f"/xrpc/{CREATE}", 200)
    assert first["request_id"] == "req-1"
    assert first["did"] == ALICE
    assert isinstance(first["duration_ms"], float)
    assert (second["status"], second["request_id"]) == (401, generated)
    assert "did" not in second
    changes = [line for line in parsed(log_lines) if line["event"] == "secret.created"]
    assert len(changes) == 1
    assert {k: changes[0][k] for k in ("did", "name", "version", "actor")} == {
        "did": ALICE,
        "name": "orders",
        "version": 1,
        "actor": "apikey:alice-ci",
    }


async def test_sign_listener_logs_failures_and_not_successes_by_default(
    xrpc: Client, sign: Client, keys: Keys, log_lines: list[str]
) -> None:
    """A failed sign request logs a canonical line with its request id; a success logs none."""
    await call(xrpc, CREATE, keys.alice, {"name": "orders"})
    log_lines.clear()
    assert (await sign_body(sign, ALICE, "orders", BODY))[0] == 200
    assert [line for line in parsed(log_lines) if line.get("listener") == "sign"] == []
    async with sign.post(
        "/v1/sign", params={"did": ALICE, "name": "nope"}, data=BODY, headers={"X-Request-Id": "r9"}
    ) as response:
        assert response.status == 404
    lines = [line for line in parsed(log_lines) if line.get("listener") == "sign"]
    assert [(line["status"], line["request_id"]) for line in lines] == [(404, "r9")]


async def test_sign_access_log_all_logs_every_request(
    aiohttp_client: AiohttpClient,
    make_sidecar: SidecarFactory,
    xrpc: Client,
    keys: Keys,
    log_lines: list[str],
) -> None:
    """With SIDECAR_SIGN_ACCESS_LOG=all, a successful signature gets its line too."""
    await call(xrpc, CREATE, keys.alice, {"name": "orders"})
    sign = await aiohttp_client(create_sign_app(await make_sidecar(SIDECAR_SIGN_ACCESS_LOG="all")))
    log_lines.clear()
    assert (await sign_body(sign, ALICE, "orders", BODY))[0] == 200
    lines = [line for line in parsed(log_lines) if line.get("listener") == "sign"]
    assert [line["status"] for line in lines] == [200]


async def test_healthz_and_readyz_when_healthy(ops: Client) -> None:
    """/healthz and /readyz answer 200 while Redis answers and a KEK is loaded."""
    async with ops.get("/healthz") as response:
        assert response.status == 200
    async with ops.get("/readyz") as response:
        assert (response.status, await response.json()) == (
            200,
            {"status": "ready", "listeners": ["xrpc", "sign", "ops"]},
        )


@pytest.mark.parametrize(
    ("overrides", "reason"),
    [
        ({"REDIS_URL": "redis://127.0.0.1:{port}/0"}, "redis did not answer"),
        ({"SIDECAR_KEK": ""}, "no key-encryption key is configured"),
    ],
)
async def test_readyz_is_503_with_a_reason(
    aiohttp_client: AiohttpClient,
    make_sidecar: SidecarFactory,
    overrides: dict[str, str],
    reason: str,
) -> None:
    """/readyz is 503 with a JSON reason when Redis is down or no KEK is loaded; /healthz is 200."""
    from sidecar.storage.embedded import free_port

    env = {key: value.format(port=free_port()) for key, value in overrides.items()}
    ops = await aiohttp_client(create_ops_app(await make_sidecar(**env)))
    async with ops.get("/readyz") as response:
        assert response.status == 503
        assert await response.json() == {"status": "unready", "reason": reason}
    async with ops.get("/healthz") as response:
        assert response.status == 200


async def test_readyz_turns_503_while_draining(sidecar: Sidecar, ops: Client) -> None:
    """Once shutdown starts, /readyz answers 503 so the pod leaves its Service."""
    sidecar.draining.set()
    async with ops.get("/readyz") as response:
        assert response.status == 503
        assert json.loads(await response.text())["reason"] == "shutting down"
