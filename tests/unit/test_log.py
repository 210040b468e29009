"""The redaction processor and the log formats."""

from __future__ import annotations

import io
import json

import pytest
import structlog

from sidecar.crypto import encode_kek, generate_kek, generate_token
from sidecar.log import (
    REDACTED,
    LineBudget,
    configure_logging,
    dropped_lines,
    redact_text,
    sampled,
)

TOKEN = generate_token()
JWT = "eyJhbGciOiJFUzI1NksifQ.eyJpc3MiOiJkaWQ6cGxjOmFiYyJ9.c2lnbmF0dXJl"


@pytest.mark.parametrize(
    "secret",
    [
        TOKEN,
        "wsa_" + "k" * 43,
        "Bearer abc.def",
        JWT,
        encode_kek(generate_kek()),
        generate_kek().hex(),
        "wsn1.abcdEFGH12345678.bm9uY2U.Y2lwaGVy",
    ],
)
def test_credentials_are_redacted_inside_any_text(secret: str) -> None:
    """A credential inside a longer string is replaced, and the text around it kept."""
    scrubbed = redact_text(f"before {secret} after")
    assert secret not in scrubbed
    assert scrubbed.startswith("before ")
    assert scrubbed.endswith(" after")
    assert REDACTED in scrubbed


def test_plain_text_is_left_alone() -> None:
    """Ordinary words, names, DIDs and paths pass through unchanged."""
    text = "secret orders of did:plc:abc at /xrpc/place.wisp.v2.secret.rotate (status 404)"
    assert redact_text(text) == text


def test_every_key_and_nested_value_is_scrubbed() -> None:
    """Tokens are scrubbed under any key, in nested values, and secret-named keys are dropped."""
    out = io.StringIO()
    configure_logging("debug", "json", stream=out)
    structlog.get_logger("t").info(
        "event",
        note=f"got {TOKEN}",
        nested={"deep": [TOKEN, {"x": TOKEN}]},
        authorization="anything at all",
        token="short",
        raw=TOKEN.encode(),
    )
    line = out.getvalue()
    assert TOKEN not in line
    event = json.loads(line)
    assert event["note"] == f"got {REDACTED}"
    assert event["nested"] == {"deep": [REDACTED, {"x": REDACTED}]}
    assert event["authorization"] == REDACTED
    assert event["token"] == REDACTED
    assert event["raw"] == REDACTED


def test_exceptions_are_scrubbed_after_formatting() -> None:
    """A traceback whose message holds a token is logged without it."""
    out = io.StringIO()
    configure_logging("debug", "json", stream=out)
    try:
        raise RuntimeError(f"boom {TOKEN}")
    except RuntimeError:
        structlog.get_logger("t").exception("failed")
    line = out.getvalue()
    assert TOKEN not in line
    assert "RuntimeError" in json.loads(line)["exception"]


def test_console_format_renders_readable_lines() -> None:
    """SIDECAR_LOG_FORMAT=console renders key=value text, not JSON, still redacted."""
    out = io.StringIO()
    configure_logging("info", "console", stream=out)
    structlog.get_logger("t").info("hello", who="world", leaked=TOKEN)
    line = out.getvalue()
    assert "hello" in line
    assert "who=world" in line
    assert TOKEN not in line
    with pytest.raises(json.JSONDecodeError):
        json.loads(line)


def test_level_filters_lower_levels() -> None:
    """At level warning, info lines are dropped and warnings kept."""
    out = io.StringIO()
    configure_logging("warning", "json", stream=out)
    logger = structlog.get_logger("t")
    logger.info("quiet")
    logger.warning("loud")
    events = [json.loads(line)["event"] for line in out.getvalue().splitlines()]
    assert events == ["loud"]


def test_a_line_budget_drops_what_is_over_it_counts_it_and_refills() -> None:
    """Past its per-second budget a kind's lines are dropped and counted, another kind
    is not affected, and after a second the next line says how many were dropped."""
    now = [100.0]
    budget = LineBudget(3, clock=lambda: now[0])
    assert [budget.take("request_anonymous") for _ in range(5)] == [0, 0, 0, None, None]
    assert budget.take("request_refused") == 0
    assert budget.dropped["request_anonymous"] == 2
    now[0] += 1.0
    assert budget.take("request_anonymous") == 2
    assert budget.take("request_anonymous") == 0
    assert budget.dropped == {
        "request_refused": 0,
        "request_anonymous": 2,
        "http_refused": 0,
        "connection_closed": 0,
    }


def test_sampled_lines_are_all_written_without_a_budget_and_bounded_with_one() -> None:
    """Unconfigured, every sampled line is written; with a budget of 2 a second, a
    burst of 10 writes 2 and counts 8 as dropped."""
    out = io.StringIO()
    configure_logging("info", "json", stream=out)
    logger = structlog.get_logger("t")
    for _ in range(10):
        sampled(logger, "http_refused", "refused")
    assert len(out.getvalue().splitlines()) == 10
    out = io.StringIO()
    configure_logging("info", "json", stream=out, sampled_per_s=2)
    for _ in range(10):
        sampled(logger, "http_refused", "refused")
    assert len(out.getvalue().splitlines()) == 2
    assert dropped_lines()["http_refused"] == 8
    configure_logging("info", "json")
