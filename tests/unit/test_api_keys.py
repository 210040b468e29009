"""Tests for ``sidecar.auth.api_keys``: keys file, API keys, bearer headers, authenticator."""

from __future__ import annotations

import asyncio
import hashlib
import re
from typing import TYPE_CHECKING

import pytest

from sidecar.auth.api_keys import (
    API_KEY_PREFIX,
    ApiKeyEntry,
    ApiKeys,
    api_key_digest,
    generate_api_key,
    keys_file_line,
    load_api_keys,
    parse_api_keys,
)
from sidecar.auth.authenticator import Authenticator, BearerVerifier
from sidecar.auth.caller import Caller
from sidecar.errors import AuthenticationFailed, ConfigError, Forbidden
from sidecar.wire import bearer_credential

if TYPE_CHECKING:
    from pathlib import Path

SETTING = "SIDECAR_API_KEYS_FILE"
SOURCE = "keys.txt"
NSID = "place.wisp.v2.secret.list"

ALICE = "did:plc:alice0000000000000000000"
BOB = "did:web:bob.example.com"
CAROL = "did:plc:carol000000000000000000"

ALICE_KEY = "wsa_alice-key-0000000000000000000000000000000000"
BOB_KEY = "wsa_bob-key-00000000000000000000000000000000000"
CAROL_KEY = "wsa_carol-key-0000000000000000000000000000000000"


def sha256_hex(key: str) -> str:
    """Hex SHA-256 of ``key``, computed independently of the module under test."""
    return hashlib.sha256(key.encode("utf-8")).hexdigest()


def three_keys() -> ApiKeys:
    """Return ApiKeys admitting Alice, Bob and Carol, parsed from a keys file."""
    text = "\n".join(
        [
            f"{ALICE} {sha256_hex(ALICE_KEY)} alice-ops",
            f"{BOB} {sha256_hex(BOB_KEY)} bob-ci",
            f"{CAROL} {sha256_hex(CAROL_KEY)}",
        ]
    )
    return ApiKeys(parse_api_keys(text, source=SOURCE))


# The keys file


def test_parse_accepts_comments_blanks_labels_and_upper_case() -> None:
    """Comments, blank lines, an optional label and upper-case hex are all accepted."""
    text = (
        "# operators\n"
        "\n"
        f"{ALICE} {sha256_hex(ALICE_KEY)} alice-ops   # the on-call key\n"
        "   \n"
        f"  {BOB}\t{sha256_hex(BOB_KEY).upper()}  \n"
        "# trailing comment\n"
    )
    entries = parse_api_keys(text, source=SOURCE)
    assert entries == [
        ApiKeyEntry(did=ALICE, digest=bytes.fromhex(sha256_hex(ALICE_KEY)), label="alice-ops"),
        ApiKeyEntry(
            did=BOB,
            digest=bytes.fromhex(sha256_hex(BOB_KEY)),
            label=f"key-{sha256_hex(BOB_KEY)[:8]}",
        ),
    ]


def test_parse_empty_file() -> None:
    """A keys file of only comments and blank lines admits no one."""
    assert parse_api_keys("# nothing yet\n\n", source=SOURCE) == []
    assert parse_api_keys("", source=SOURCE) == []


@pytest.mark.parametrize(
    ("line", "problem"),
    [
        pytest.param(ALICE, "expected '<did> <sha256-hex> [label]'", id="one-field"),
        pytest.param(
            f"{ALICE} {sha256_hex(ALICE_KEY)} a b",
            "expected '<did> <sha256-hex> [label]'",
            id="four-fields",
        ),
        pytest.param(f"plc:alice {sha256_hex(ALICE_KEY)}", "is not a DID", id="not-a-did"),
        pytest.param(
            f"did:PLC:alice {sha256_hex(ALICE_KEY)}", "is not a DID", id="upper-case-method"
        ),
        pytest.param(
            f"{ALICE} {sha256_hex(ALICE_KEY)[:-1]}", "must be 64 hex characters", id="63-hex"
        ),
        pytest.param(f"{ALICE} {sha256_hex(ALICE_KEY)}0", "must be 64 hex characters", id="65-hex"),
        pytest.param(f"{ALICE} {'g' * 64}", "must be 64 hex characters", id="not-hex"),
        pytest.param(f"{ALICE} {ALICE_KEY}", "must be 64 hex characters", id="raw-key"),
    ],
)
def test_parse_rejects_bad_line(line: str, problem: str) -> None:
    """A malformed line raises ConfigError naming the keys-file setting, the file and the line."""
    text = f"# header\n\n{ALICE} {sha256_hex(ALICE_KEY)}\n{line}\n"
    with pytest.raises(ConfigError) as info:
        parse_api_keys(text, source=SOURCE)
    assert info.value.setting == SETTING
    assert str(info.value).startswith(f"{SETTING}: {SOURCE} line 4: ")
    assert problem in str(info.value)
    assert ALICE_KEY not in str(info.value)


def test_load_api_keys_reads_a_file(tmp_path: Path) -> None:
    """``load_api_keys`` parses the file and names it in errors."""
    path = tmp_path / "api-keys"
    path.write_text(keys_file_line(ALICE, ALICE_KEY, "ops") + "\n", encoding="utf-8")
    assert load_api_keys(path) == [
        ApiKeyEntry(did=ALICE, digest=bytes.fromhex(sha256_hex(ALICE_KEY)), label="ops")
    ]
    path.write_text("did:plc:x\n", encoding="utf-8")
    with pytest.raises(ConfigError) as info:
        load_api_keys(path)
    assert info.value.setting == SETTING
    assert f"{path} line 1" in str(info.value)


def test_load_api_keys_missing_file(tmp_path: Path) -> None:
    """A keys file that cannot be read raises ConfigError naming the keys-file setting."""
    with pytest.raises(ConfigError) as info:
        load_api_keys(tmp_path / "absent")
    assert info.value.setting == SETTING


def test_entry_repr_hides_the_digest() -> None:
    """An entry's repr shows its DID and label but not its digest."""
    entry = ApiKeyEntry(did=ALICE, digest=bytes.fromhex(sha256_hex(ALICE_KEY)), label="ops")
    assert repr(entry) == f"ApiKeyEntry(did={ALICE!r}, label='ops')"


# Making keys


def test_generate_api_key_shape() -> None:
    """A new API key is ``wsa_`` and 43 base64url characters, and two keys differ."""
    first, second = generate_api_key(), generate_api_key()
    assert API_KEY_PREFIX == "wsa_"
    assert re.fullmatch(r"wsa_[A-Za-z0-9_-]{43}", first)
    assert first != second


@pytest.mark.parametrize("key", [ALICE_KEY, "", "wsa_é"])
def test_api_key_digest_is_sha256_hex(key: str) -> None:
    """The digest of a key is the lower-case hex SHA-256 of its UTF-8 bytes."""
    digest = api_key_digest(key)
    assert digest == sha256_hex(key)
    assert re.fullmatch(r"[0-9a-f]{64}", digest)


@pytest.mark.parametrize(
    ("label", "expected"),
    [
        ("ops", f"{ALICE} {sha256_hex(ALICE_KEY)} ops"),
        ("", f"{ALICE} {sha256_hex(ALICE_KEY)}"),
    ],
)
def test_keys_file_line(label: str, expected: str) -> None:
    """``keys_file_line`` writes the DID, the digest and the label when there is one."""
    assert keys_file_line(ALICE, ALICE_KEY, label) == expected


def test_keys_file_line_round_trips() -> None:
    """A line made by ``keys_file_line`` parses back and admits its key as its DID."""
    key = generate_api_key()
    line = keys_file_line(BOB, key, "ci")
    assert key not in line
    keys = ApiKeys(parse_api_keys(line, source=SOURCE))
    assert keys.authenticate(key) == Caller(did=BOB, actor="apikey:ci")


# Checking keys


@pytest.mark.parametrize(
    ("key", "caller"),
    [
        (ALICE_KEY, Caller(did=ALICE, actor="apikey:alice-ops")),
        (BOB_KEY, Caller(did=BOB, actor="apikey:bob-ci")),
        (CAROL_KEY, Caller(did=CAROL, actor=f"apikey:key-{sha256_hex(CAROL_KEY)[:8]}")),
    ],
)
def test_authenticate_finds_the_right_entry(key: str, caller: Caller) -> None:
    """Each key among several is admitted as its own DID, with its label as the actor."""
    keys = three_keys()
    assert len(keys) == 3
    assert keys.authenticate(key) == caller


@pytest.mark.parametrize(
    "key",
    [
        "wsa_unknown-000000000000000000000000000000000000",
        ALICE_KEY + "x",
        ALICE_KEY[:-1],
        ALICE_KEY.upper(),
        sha256_hex(ALICE_KEY),
        "",
    ],
)
def test_authenticate_rejects_unknown_key(key: str) -> None:
    """A key whose digest is not in the file fails with reason ``unknown_key``."""
    with pytest.raises(AuthenticationFailed) as info:
        three_keys().authenticate(key)
    assert info.value.reason == "unknown_key"


def test_authenticate_with_no_keys() -> None:
    """An empty key set admits no key."""
    keys = ApiKeys([])
    assert len(keys) == 0
    with pytest.raises(AuthenticationFailed) as info:
        keys.authenticate(ALICE_KEY)
    assert info.value.reason == "unknown_key"


def test_a_key_listed_twice_is_refused() -> None:
    """One digest on two lines is a ConfigError naming both lines, not a silent first-wins."""
    text = f"{ALICE} {sha256_hex(ALICE_KEY)} first\n{BOB} {sha256_hex(ALICE_KEY)} second\n"
    with pytest.raises(ConfigError) as info:
        parse_api_keys(text, source=SOURCE)
    assert info.value.setting == "SIDECAR_API_KEYS_FILE"
    assert "line 2" in str(info.value)
    assert "line 1" in str(info.value)


def test_authenticate_rejects_undecodable_key() -> None:
    """A key holding lone surrogates (non-UTF-8 header bytes) fails authentication cleanly."""
    with pytest.raises(AuthenticationFailed):
        three_keys().authenticate("wsa_\udcff\udcfe")


# Bearer headers


@pytest.mark.parametrize(
    ("header", "credential"),
    [
        (f"Bearer {ALICE_KEY}", ALICE_KEY),
        (f"bearer {ALICE_KEY}", ALICE_KEY),
        (f"BEARER {ALICE_KEY}", ALICE_KEY),
        (f"  Bearer   {ALICE_KEY}  ", ALICE_KEY),
        ("Bearer eyJ.a.b", "eyJ.a.b"),
    ],
)
def test_bearer_credential(header: str, credential: str) -> None:
    """The scheme ``Bearer`` is matched case-insensitively and its credential is returned."""
    assert bearer_credential(header) == credential


@pytest.mark.parametrize(
    ("header", "reason"),
    [
        (None, "missing"),
        ("", "missing"),
        ("   ", "missing"),
        (f"Basic {ALICE_KEY}", "malformed"),
        (f"Token {ALICE_KEY}", "malformed"),
        (ALICE_KEY, "malformed"),
        ("Bearer", "malformed"),
        ("Bearer    ", "malformed"),
        (f"Bearer{ALICE_KEY}", "malformed"),
        (f"Bearer {ALICE_KEY} extra", "malformed"),
        (f"Bearer a {ALICE_KEY}", "malformed"),
    ],
)
def test_bearer_credential_rejects(header: str | None, reason: str) -> None:
    """A missing, non-Bearer, empty or spaced credential fails with the matching reason."""
    with pytest.raises(AuthenticationFailed) as info:
        bearer_credential(header)
    assert info.value.reason == reason


# The authenticator


class PrefixVerifier:
    """A stand-in second credential type: accepts credentials with a prefix, records calls."""

    def __init__(self, prefix: str, *, fail: bool = False) -> None:
        self.prefix = prefix
        self.fail = fail
        self.calls: list[tuple[str, str]] = []

    def accepts(self, credential: str) -> bool:
        """Claim credentials that start with the prefix."""
        return credential.startswith(self.prefix)

    async def verify(self, credential: str, *, nsid: str) -> Caller:
        """Record the call, then admit the credential's suffix as a DID, or fail."""
        self.calls.append((credential, nsid))
        if self.fail:
            raise AuthenticationFailed("bad_jwt")
        return Caller(did=credential.removeprefix(self.prefix), actor=f"{self.prefix}{nsid}")


def authenticate(authenticator: Authenticator, header: str | None) -> Caller:
    """Take the credential out of ``header`` as the XRPC pipeline does, then run
    ``Authenticator.authenticate`` to completion on a fresh event loop."""
    return asyncio.run(authenticator.authenticate(bearer_credential(header), nsid=NSID))


def test_verifier_satisfies_the_protocol() -> None:
    """The test verifier has the shape of a BearerVerifier."""
    verifier: BearerVerifier = PrefixVerifier("jwt:")
    assert verifier.accepts("jwt:x") is True
    assert verifier.accepts("wsa_x") is False


def test_authenticator_routes_to_the_accepting_verifier() -> None:
    """A credential a verifier accepts goes to that verifier, with the NSID."""
    verifier = PrefixVerifier("jwt:")
    authenticator = Authenticator(three_keys(), [verifier])
    caller = authenticate(authenticator, f"Bearer jwt:{CAROL}")
    assert caller == Caller(did=CAROL, actor=f"jwt:{NSID}")
    assert verifier.calls == [(f"jwt:{CAROL}", NSID)]


def test_authenticator_uses_the_first_accepting_verifier() -> None:
    """With several verifiers, the first that accepts the credential verifies it."""
    first, second, third = PrefixVerifier("x:"), PrefixVerifier("jwt:"), PrefixVerifier("j")
    authenticator = Authenticator(ApiKeys([]), [first, second, third])
    assert authenticate(authenticator, f"Bearer jwt:{BOB}").did == BOB
    assert (first.calls, len(second.calls), third.calls) == ([], 1, [])


def test_authenticator_falls_back_to_api_keys() -> None:
    """A credential no verifier accepts is checked as an API key."""
    verifier = PrefixVerifier("jwt:")
    authenticator = Authenticator(three_keys(), [verifier])
    caller = authenticate(authenticator, f"Bearer {BOB_KEY}")
    assert caller == Caller(did=BOB, actor="apikey:bob-ci")
    assert verifier.calls == []


def test_authenticator_without_verifiers_uses_api_keys() -> None:
    """With no verifiers, every credential is checked as an API key."""
    authenticator = Authenticator(three_keys())
    assert authenticate(authenticator, f"bearer {ALICE_KEY}").did == ALICE
    with pytest.raises(AuthenticationFailed) as info:
        authenticate(authenticator, "Bearer jwt:did:plc:x")
    assert info.value.reason == "unknown_key"


def test_verifier_failure_does_not_fall_back() -> None:
    """A credential a verifier accepts and then rejects is not retried as an API key."""
    verifier = PrefixVerifier("wsa_", fail=True)
    authenticator = Authenticator(three_keys(), [verifier])
    with pytest.raises(AuthenticationFailed) as info:
        authenticate(authenticator, f"Bearer {ALICE_KEY}")
    assert info.value.reason == "bad_jwt"
    assert verifier.calls == [(ALICE_KEY, NSID)]


@pytest.mark.parametrize(("header", "reason"), [(None, "missing"), ("Basic abc", "malformed")])
def test_authenticator_checks_the_header_first(header: str | None, reason: str) -> None:
    """A missing or malformed header fails before any verifier is asked."""
    verifier = PrefixVerifier("")
    with pytest.raises(AuthenticationFailed) as info:
        authenticate(Authenticator(three_keys(), [verifier]), header)
    assert info.value.reason == reason
    assert verifier.calls == []


# The allow-list


def test_allow_list_admits_listed_callers_of_either_kind() -> None:
    """A listed DID gets in with an API key or through a verifier."""
    authenticator = Authenticator(
        three_keys(), [PrefixVerifier("jwt:")], allowed_dids=frozenset({ALICE, CAROL})
    )
    assert authenticate(authenticator, f"Bearer {ALICE_KEY}").did == ALICE
    assert authenticate(authenticator, f"Bearer jwt:{CAROL}").did == CAROL


@pytest.mark.parametrize("header", [f"Bearer {BOB_KEY}", f"Bearer jwt:{BOB}"])
def test_allow_list_forbids_unlisted_callers(header: str) -> None:
    """An authenticated caller whose DID is not listed is Forbidden, whatever its credential."""
    authenticator = Authenticator(
        three_keys(), [PrefixVerifier("jwt:")], allowed_dids=frozenset({ALICE})
    )
    with pytest.raises(Forbidden):
        authenticate(authenticator, header)


def test_allow_list_comes_after_authentication() -> None:
    """A bad credential is AuthenticationFailed, not Forbidden, even for an unlisted DID."""
    authenticator = Authenticator(three_keys(), allowed_dids=frozenset({ALICE}))
    with pytest.raises(AuthenticationFailed):
        authenticate(authenticator, f"Bearer {BOB_KEY}x")


def test_no_allow_list_admits_everyone() -> None:
    """Without an allow-list, every authenticated caller gets in."""
    authenticator = Authenticator(three_keys())
    assert {authenticate(authenticator, f"Bearer {key}").did for key in (ALICE_KEY, BOB_KEY)} == {
        ALICE,
        BOB,
    }


# What a failure says


@pytest.mark.parametrize(
    "header", [None, "Basic " + ALICE_KEY, "Bearer " + ALICE_KEY + "x", "Bearer a " + ALICE_KEY]
)
def test_failure_text_holds_neither_reason_nor_credential(header: str | None) -> None:
    """``str`` and ``repr`` of an authentication failure carry no reason and no credential."""
    with pytest.raises(AuthenticationFailed) as info:
        authenticate(Authenticator(three_keys()), header)
    assert info.value.reason in {"missing", "malformed", "unknown_key"}
    for text in (str(info.value), repr(info.value)):
        assert info.value.reason not in text
        assert ALICE_KEY not in text
    expected = (
        "Authentication required: no credential was sent; "
        "send it as 'Authorization: Bearer <credential>'"
        if header is None
        else "Authentication failed: the credential was not recognised"
    )
    assert str(info.value) == expected
    assert info.value.args == (expected,)
