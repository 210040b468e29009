"""Counters whose label values are known in advance are on /metrics at 0 from start, and
those lists cover every value the code can count."""

from __future__ import annotations

import ast
from pathlib import Path
from typing import Any, get_args

from aiohttp.test_utils import TestClient
from prometheus_client.parser import text_string_to_metric_families

from sidecar.errors import AUTH_FAILURE_REASONS, ENVELOPE_FAILURE_REASONS
from sidecar.signing.api import OUTCOMES as SIGN_OUTCOMES
from sidecar.signing.api import VERIFY_REASONS
from sidecar.signing.schemes import SCHEMES, Reason
from sidecar.storage.calls import OPERATIONS
from sidecar.xrpc.methods import OUTCOMES as XRPC_OUTCOMES

SIDECAR = Path(__file__).resolve().parents[2] / "sidecar"


async def first_scrape(ops: TestClient[Any, Any]) -> set[tuple[str, tuple[tuple[str, str], ...]]]:
    """Every counter sample at 0 on a fresh sidecar's /metrics, by name and sorted labels."""
    async with ops.get("/metrics") as response:
        assert response.status == 200
        text = await response.text()
    return {
        (sample.name, tuple(sorted(sample.labels.items())))
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name.endswith("_total") and sample.value == 0
    }


async def test_every_known_series_is_exported_at_0_before_any_event(
    ops: TestClient[Any, Any],
) -> None:
    """A fresh sidecar shows each verification, Redis error, auth failure, rotation, secret
    operation, signature and unopenable-envelope series at 0."""
    zeros = await first_scrape(ops)
    expected: set[tuple[str, tuple[tuple[str, str], ...]]] = set()
    for scheme in SCHEMES:
        for reason in VERIFY_REASONS:
            expected.add(
                ("wisp_sidecar_verifications_total", (("reason", reason), ("scheme", scheme)))
            )
        for outcome in ("ok", *SIGN_OUTCOMES):
            expected.add(
                ("wisp_sidecar_signatures_total", (("outcome", outcome), ("scheme", scheme)))
            )
    for operation in OPERATIONS:
        expected.add(("wisp_sidecar_redis_errors_total", (("operation", operation),)))
    for reason in AUTH_FAILURE_REASONS:
        expected.add(("wisp_sidecar_auth_failures_total", (("reason", reason),)))
    for reason in ENVELOPE_FAILURE_REASONS:
        expected.add(("wisp_sidecar_envelopes_unopenable_total", (("reason", reason),)))
    for outcome in XRPC_OUTCOMES:
        expected.add(("wisp_sidecar_rotations_total", (("outcome", outcome),)))
        for operation in ("create", "list", "delete"):
            expected.add(
                (
                    "wisp_sidecar_secret_operations_total",
                    (("operation", operation), ("outcome", outcome)),
                )
            )
    assert expected - zeros == set()
    assert {"not_found", "storage_unavailable", "error"} <= set(XRPC_OUTCOMES)
    assert set(get_args(Reason)) < set(VERIFY_REASONS)


def literal_first_arguments(functions: set[str], paths: list[Path]) -> set[str]:
    """The string literal first argument of every call to one of ``functions`` in ``paths``."""
    found: set[str] = set()
    for path in paths:
        for node in ast.walk(ast.parse(path.read_text())):
            if not (isinstance(node, ast.Call) and node.args):
                continue
            func = node.func
            called = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", None)
            first = node.args[0]
            if (
                called in functions
                and isinstance(first, ast.Constant)
                and isinstance(first.value, str)
            ):
                found.add(first.value)
    return found


def test_every_redis_operation_counted_is_known() -> None:
    """Each operation name storage passes to a counted Redis call is in OPERATIONS."""
    used = literal_first_arguments(
        {"run", "read", "change", "_script", "count"}, sorted((SIDECAR / "storage").glob("*.py"))
    )
    assert {"create", "rotate", "get_envelopes", "scan", "ping"} <= used
    assert used - set(OPERATIONS) == set()


def test_every_authentication_failure_reason_is_known() -> None:
    """Each reason the code gives AuthenticationFailed is in AUTH_FAILURE_REASONS."""
    paths = [
        *sorted((SIDECAR / "auth").glob("*.py")),
        SIDECAR / "wire.py",
        SIDECAR / "signing" / "api.py",
    ]
    used = literal_first_arguments({"AuthenticationFailed", "_fail"}, paths)
    assert {"missing", "malformed", "unknown_key", "replayed"} <= used
    assert used - set(AUTH_FAILURE_REASONS) == set()
