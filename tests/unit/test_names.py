"""Unit tests for ``sidecar.names``: the shapes of secret names and owner DIDs."""

from __future__ import annotations

import pytest

from sidecar.errors import InvalidInput
from sidecar.names import (
    MAX_DID_LENGTH,
    NAME_RULE,
    is_valid_did,
    is_valid_name,
    validate_did,
    validate_name,
)

NAME_MESSAGE = f"name must be {NAME_RULE}"
DID_MESSAGE = "did must be a DID, such as did:plc:abc123 or did:web:example.com"

GOOD_NAMES = [
    "a",
    "orders-webhook",
    "Orders_Webhook.v2",
    "...",
    ".hidden",
    "a..b",
    "-",
    "_",
    "0",
    "x" * 64,
    "ABCdef012._-",
    "wsk",
    "my-wsk_token",
]

BAD_NAMES = [
    "",
    ".",
    "..",
    "x" * 65,
    "é",
    "caf\u00e9",
    " a",
    "a ",
    "a/b",
    "a:b",
    "a{b}",
    "a\n",
    "a\x00",
    "a+b",
    "a*",
    "\u0661",  # an Arabic-Indic digit, which \d or \w would accept
    "\uff41",  # a full-width "a"
]
TOKEN_LIKE_NAMES = ["wsk_", "wsk_" + "A" * 32, "wsk_a:b"]

GOOD_DIDS = [
    "did:plc:abc",
    "did:plc:ewvi7nxzyoun6zhxrhs64oiz",
    "did:web:example.com",
    "did:web:localhost%3A8080",
    "did:web:example.com:user:alice",
    "did:key:zQ3shunBKsXixLxKtC5qeSG9E4J5RkGN57im31pcTzbNQnm5w",
    "did:plc:a_b-c.d",
    "did:plc:" + "a" * (MAX_DID_LENGTH - len("did:plc:")),
]

BAD_DIDS = [
    "",
    "did:PLC:x",
    "DID:plc:abc",
    "did:plc:",
    "did:plc:a{b}",
    "did:plc:{abc}",
    "plc:abc",
    "did:abc",
    "did::abc",
    "did:pl2:abc",
    "did:plc:abc:",
    "did:plc:abc%",
    "did:plc:a b",
    " did:plc:abc",
    "did:plc:abc\n",
    "did:plc:ab/c",
    "did:plc:ab#c",
    "did:plc:ab?c",
    "did:plc:ab\u00e9",
    "did:plc:" + "a" * (MAX_DID_LENGTH - len("did:plc:") + 1),
]


@pytest.mark.parametrize("name", GOOD_NAMES)
def test_valid_names(name: str) -> None:
    """Names of 1-64 characters from A-Z a-z 0-9 . _ - are accepted and returned unchanged."""
    assert is_valid_name(name) is True
    assert validate_name(name) is name


@pytest.mark.parametrize("name", BAD_NAMES)
def test_invalid_names(name: str) -> None:
    """Empty, dot, dot-dot, over-long and out-of-alphabet names are refused."""
    assert is_valid_name(name) is False
    with pytest.raises(InvalidInput) as info:
        validate_name(name)
    assert str(info.value) == NAME_MESSAGE


@pytest.mark.parametrize("name", TOKEN_LIKE_NAMES)
def test_a_name_shaped_like_a_token_is_refused_as_one(name: str) -> None:
    """A name starting 'wsk_' is refused with a message saying tokens start so, without it."""
    assert is_valid_name(name) is False
    with pytest.raises(InvalidInput) as info:
        validate_name(name, "Input/name")
    message = str(info.value)
    assert message.startswith("Input/name must not start with 'wsk_', which is how tokens start")
    assert name not in message.replace("'wsk_'", "")


def test_name_rule_states_the_constraints() -> None:
    """The name rule shown to callers names the length, the alphabet and the dot names."""
    assert NAME_RULE.startswith("1-64 characters of A-Z a-z 0-9 . _ -")
    assert "'.' or '..'" in NAME_RULE


def test_name_boundary_is_64_characters() -> None:
    """A 64-character name is accepted and a 65-character one is refused."""
    assert is_valid_name("n" * 64) is True
    assert is_valid_name("n" * 65) is False


def test_names_are_case_sensitive_and_untrimmed() -> None:
    """Names differing only in case stay distinct, and validation never changes a name."""
    assert validate_name("Orders") == "Orders"
    assert validate_name("orders") == "orders"
    assert validate_name("Orders") != validate_name("orders")


@pytest.mark.parametrize("value", [None, 1, b"orders", ["orders"], {"name": "orders"}])
def test_validate_name_rejects_non_strings(value: object) -> None:
    """A name that is not a string raises InvalidInput instead of a TypeError."""
    with pytest.raises(InvalidInput) as info:
        validate_name(value)
    assert str(info.value) == NAME_MESSAGE


def test_name_message_states_the_rule_not_the_input() -> None:
    """The name error message states the rule and never repeats the rejected input."""
    bad = "<script>alert(1)</script>"
    with pytest.raises(InvalidInput) as info:
        validate_name(bad)
    assert str(info.value) == NAME_MESSAGE
    assert bad not in str(info.value)
    assert "script" not in str(info.value)


@pytest.mark.parametrize("did", GOOD_DIDS)
def test_valid_dids(did: str) -> None:
    """DIDs in the atproto syntax are accepted and returned unchanged."""
    assert is_valid_did(did) is True
    assert validate_did(did) is did


@pytest.mark.parametrize("did", BAD_DIDS)
def test_invalid_dids(did: str) -> None:
    """Strings outside the atproto DID syntax, braces included, are refused."""
    assert is_valid_did(did) is False
    with pytest.raises(InvalidInput) as info:
        validate_did(did)
    assert str(info.value) == DID_MESSAGE


def test_did_boundary_is_2048_characters() -> None:
    """A DID of exactly 2048 characters is accepted and one of 2049 is refused."""
    assert MAX_DID_LENGTH == 2048
    prefix = "did:web:"
    assert is_valid_did(prefix + "a" * (2048 - len(prefix))) is True
    assert is_valid_did(prefix + "a" * (2049 - len(prefix))) is False


@pytest.mark.parametrize("value", [None, 42, b"did:plc:abc"])
def test_validate_did_rejects_non_strings(value: object) -> None:
    """A DID that is not a string raises InvalidInput instead of a TypeError."""
    with pytest.raises(InvalidInput) as info:
        validate_did(value)
    assert str(info.value) == DID_MESSAGE


def test_did_message_does_not_repeat_the_input() -> None:
    """The DID error message never repeats the rejected input."""
    bad = "did:plc:secret{token}"
    with pytest.raises(InvalidInput) as info:
        validate_did(bad)
    assert "secret" not in str(info.value)
    assert "token" not in str(info.value)
