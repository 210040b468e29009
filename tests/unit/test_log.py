"""The redaction processor and the log formats."""

from __future__ import annotations

import io
import json

import pytest
import structlog

from sidecar.crypto import encode_kek, generate_kek, generate_token
from sidecar.log import REDACTED, configure_logging, redact_text

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
