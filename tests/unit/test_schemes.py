"""Tests for ``sidecar.signing.schemes``: the four signature schemes, signing and verifying."""

from __future__ import annotations

import base64
import hashlib
import hmac
import time
import types
from datetime import UTC, datetime
from typing import TYPE_CHECKING

import pytest
from hypothesis import given
from hypothesis import strategies as st
from standardwebhooks.webhooks import Webhook, WebhookVerificationError

from sidecar.errors import InvalidInput
from sidecar.signing.schemes import (
    DEFAULT_SCHEME,
    DEFAULT_TOLERANCE_S,
    SCHEMES,
    TABLE,
    Verdict,
    check_msg_id,
    new_msg_id,
    parse_scheme,
    parse_timestamp,
    sign,
    verify,
)

if TYPE_CHECKING:
    from collections.abc import Callable

TOKEN = "wsk_AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA"
OTHER_TOKEN = "wsk_BBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBB"
BODY = (
    b'{"collection":"app.bsky.feed.post","did":"did:plc:abc","event":"create",'
    b'"id":"whe_v1_0000000000000000000000000000000000000000000000000000000000000000",'
    b'"rkey":"3k","timestamp":"2024-01-15T10:30:00.000Z"}'
)
WISP_VECTOR = "sha256=c96246b8342ce820b12e0dee0bec2f304418b48dbfa9bcf8a309af4b0e1f65f9"
NOW = 1_700_000_000
MSG_ID = "msg_2KWPBgLlAfxdpx2AI54pPJ85f4W"
# JSON with odd whitespace, an escaped and a raw non-ASCII character, and bytes that
# are not UTF-8 at all: any decode or re-serialisation would change what is signed.
RAW_BODY = b'{ "a" :1,\n\t"b":"\\u00e9", "c": "\xc3\xa9"}\xff\xfe\x00 '


def clock() -> float:
    """Return the fixed test time, so no test depends on the wall clock."""
    return float(NOW)


def mac(token: str, message: bytes) -> bytes:
    """Return HMAC-SHA256 of ``message`` under ``token``, computed independently."""
    return hmac.new(token.encode("utf-8"), message, hashlib.sha256).digest()


def standard_secret(token: str) -> str:
    """Return the Standard Webhooks secret a receiver holds for ``token``."""
    return "whsec_" + base64.b64encode(token.encode()).decode()


# --- known answers ------------------------------------------------------------------------------


def test_wisp_matches_the_published_vector() -> None:
    """The wisp scheme reproduces the documented test vector exactly."""
    assert sign("wisp", TOKEN, BODY) == {"X-Webhook-Signature": WISP_VECTOR}


def test_default_scheme_is_wisp() -> None:
    """The default scheme is wisp, and parse_scheme maps None and "" to it."""
    assert DEFAULT_SCHEME == "wisp"
    assert parse_scheme(None) == "wisp"
    assert parse_scheme("") == "wisp"


def test_github_equals_plain_hmac_hex() -> None:
    """The github scheme is X-Hub-Signature-256: sha256=<hex HMAC-SHA256(body)>."""
    expected = "sha256=" + mac(TOKEN, BODY).hex()
    assert sign("github", TOKEN, BODY) == {"X-Hub-Signature-256": expected}


def test_stripe_equals_hand_computation() -> None:
    """The stripe scheme is t=<ts>,v1=<hex HMAC-SHA256("{ts}.{body}")>."""
    expected = f"t={NOW},v1=" + mac(TOKEN, f"{NOW}.".encode() + BODY).hex()
    assert sign("stripe", TOKEN, BODY, timestamp=NOW) == {"Webhook-Signature": expected}


def test_standard_equals_hand_computation() -> None:
    """The standard scheme signs "{id}.{ts}.{body}" and sends padded standard base64."""
    digest = mac(TOKEN, f"{MSG_ID}.{NOW}.".encode() + BODY)
    assert sign("standard", TOKEN, BODY, msg_id=MSG_ID, timestamp=NOW) == {
        "webhook-id": MSG_ID,
        "webhook-timestamp": str(NOW),
        "webhook-signature": "v1," + base64.b64encode(digest).decode(),
    }


def test_standard_is_accepted_by_the_standardwebhooks_library() -> None:
    """Headers from the standard scheme pass the real standardwebhooks verifier."""
    # The library checks the timestamp against the real clock, so sign with it too.
    headers = sign("standard", TOKEN, BODY)
    assert Webhook(standard_secret(TOKEN)).verify(BODY, headers) == {
        "collection": "app.bsky.feed.post",
        "did": "did:plc:abc",
        "event": "create",
        "id": "whe_v1_0000000000000000000000000000000000000000000000000000000000000000",
        "rkey": "3k",
        "timestamp": "2024-01-15T10:30:00.000Z",
    }


def test_standard_library_rejects_a_standard_signature_under_another_token() -> None:
    """The standardwebhooks verifier rejects our headers when its secret is another token's."""
    headers = sign("standard", OTHER_TOKEN, BODY)
    with pytest.raises(WebhookVerificationError, match="No matching signature"):
        Webhook(standard_secret(TOKEN)).verify(BODY, headers)


def test_verify_accepts_a_signature_made_by_the_standardwebhooks_library() -> None:
    """A signature produced by the standardwebhooks library verifies under the standard scheme."""
    signature = Webhook(standard_secret(TOKEN)).sign(
        MSG_ID, datetime.fromtimestamp(NOW, tz=UTC), BODY.decode()
    )
    headers = {"webhook-id": MSG_ID, "webhook-timestamp": str(NOW), "webhook-signature": signature}
    assert verify("standard", TOKEN, BODY, headers, now=clock) == Verdict(True, "ok")


@pytest.mark.parametrize(
    ("scheme", "names"),
    [
        ("wisp", ["X-Webhook-Signature"]),
        ("standard", ["webhook-id", "webhook-timestamp", "webhook-signature"]),
        ("github", ["X-Hub-Signature-256"]),
        ("stripe", ["Webhook-Signature"]),
    ],
)
def test_sign_returns_exactly_the_documented_header_names(scheme: str, names: list[str]) -> None:
    """Each scheme returns exactly its documented headers, in the documented casing."""
    assert list(sign(scheme, TOKEN, BODY, now=clock)) == names


# --- bytes as given -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("scheme", "signed"),
    [
        ("wisp", RAW_BODY),
        ("github", RAW_BODY),
        ("stripe", f"{NOW}.".encode() + RAW_BODY),
        ("standard", f"{MSG_ID}.{NOW}.".encode() + RAW_BODY),
    ],
)
def test_body_is_signed_byte_for_byte(scheme: str, signed: bytes) -> None:
    """Odd JSON whitespace and non-UTF-8 bytes are signed exactly as given, never re-serialised."""
    headers = sign(scheme, TOKEN, RAW_BODY, msg_id=MSG_ID, timestamp=NOW)
    digest = mac(TOKEN, signed)
    joined = " ".join(headers.values())
    assert digest.hex() in joined or base64.b64encode(digest).decode() in joined
    assert verify(scheme, TOKEN, RAW_BODY, headers, now=clock).valid
    assert not verify(scheme, TOKEN, RAW_BODY.strip(), headers, now=clock).valid


# --- verify: success ----------------------------------------------------------------------------


@pytest.mark.parametrize("scheme", SCHEMES)
def test_verify_round_trips_every_scheme(scheme: str) -> None:
    """What sign produces, verify accepts with reason "ok"."""
    headers = sign(scheme, TOKEN, BODY, now=clock)
    assert verify(scheme, TOKEN, BODY, headers, now=clock) == Verdict(valid=True, reason="ok")


@pytest.mark.parametrize("scheme", SCHEMES)
@pytest.mark.parametrize("fold", [str.lower, str.upper, str.swapcase])
def test_verify_looks_headers_up_case_insensitively(
    scheme: str, fold: Callable[[str], str]
) -> None:
    """Header names match whatever their casing, in any Mapping, not only a dict."""
    headers = {fold(name): value for name, value in sign(scheme, TOKEN, BODY, now=clock).items()}
    proxy = types.MappingProxyType(headers)
    assert verify(scheme, TOKEN, BODY, proxy, now=clock) == Verdict(True, "ok")


def test_standard_verify_accepts_any_of_several_signatures() -> None:
    """A webhook-signature with several space-separated entries is valid if any v1 matches."""
    headers = sign("standard", TOKEN, BODY, msg_id=MSG_ID, timestamp=NOW)
    other = sign("standard", OTHER_TOKEN, BODY, msg_id=MSG_ID, timestamp=NOW)
    mine, theirs = headers["webhook-signature"], other["webhook-signature"]
    for value in (f"{theirs} {mine}", f"{mine} {theirs}", f"v1a,c2lnbmF0dXJl {mine}"):
        verdict = verify(
            "standard", TOKEN, BODY, {**headers, "webhook-signature": value}, now=clock
        )
        assert verdict == Verdict(True, "ok"), value
    both_wrong = f"{theirs} {theirs}"
    assert verify(
        "standard", TOKEN, BODY, {**headers, "webhook-signature": both_wrong}, now=clock
    ) == Verdict(False, "mismatch")


def test_stripe_verify_accepts_any_of_several_signatures() -> None:
    """A stripe header with several v1= entries is valid if any matches; other keys are skipped."""
    mine = mac(TOKEN, f"{NOW}.".encode() + BODY).hex()
    theirs = mac(OTHER_TOKEN, f"{NOW}.".encode() + BODY).hex()
    for value in (
        f"t={NOW},v1={theirs},v1={mine}",
        f"t={NOW},v1={mine},v1={theirs}",
        f"t={NOW}, v0={theirs}, v1={mine}",
        f"v1={mine},t={NOW}",
    ):
        verdict = verify("stripe", TOKEN, BODY, {"Webhook-Signature": value}, now=clock)
        assert verdict == Verdict(True, "ok"), value
    both_wrong = {"Webhook-Signature": f"t={NOW},v1={theirs},v1={theirs}"}
    assert verify("stripe", TOKEN, BODY, both_wrong, now=clock) == Verdict(False, "mismatch")


def test_sha256_schemes_accept_uppercase_hex() -> None:
    """wisp and github accept the hex digest in either case, since it is the same digest."""
    value = "sha256=" + mac(TOKEN, BODY).hex().upper()
    assert verify("wisp", TOKEN, BODY, {"X-Webhook-Signature": value}).valid
    assert verify("github", TOKEN, BODY, {"X-Hub-Signature-256": value}).valid


# --- verify: failures ---------------------------------------------------------------------------


@pytest.mark.parametrize("scheme", SCHEMES)
def test_verify_reports_missing_header(scheme: str) -> None:
    """With no signature headers at all, verify says missing_header."""
    unrelated = {"Content-Type": "application/json"}
    assert verify(scheme, TOKEN, BODY, unrelated, now=clock) == Verdict(False, "missing_header")


@pytest.mark.parametrize("absent", ["webhook-id", "webhook-timestamp", "webhook-signature"])
def test_standard_reports_missing_header_when_any_one_is_absent(absent: str) -> None:
    """The standard scheme needs all three of its headers; lacking any is missing_header."""
    headers = sign("standard", TOKEN, BODY, now=clock)
    del headers[absent]
    assert verify("standard", TOKEN, BODY, headers, now=clock) == Verdict(False, "missing_header")


def test_sha256_header_of_the_other_scheme_is_missing() -> None:
    """A github header does not satisfy the wisp scheme, nor the other way round."""
    assert verify("wisp", TOKEN, BODY, sign("github", TOKEN, BODY)).reason == "missing_header"
    assert verify("github", TOKEN, BODY, sign("wisp", TOKEN, BODY)).reason == "missing_header"


GOOD_HEX = hashlib.sha256(b"x").hexdigest()


@pytest.mark.parametrize("scheme", ["wisp", "github"])
@pytest.mark.parametrize(
    "value",
    [
        "sha256=zz",
        "sha256=" + "z" * 64,
        "sha256=" + GOOD_HEX[:-2],
        "sha256=" + GOOD_HEX + "00",
        "sha256=" + GOOD_HEX[:30] + " " + GOOD_HEX[31:],
        "sha1=" + GOOD_HEX,
        GOOD_HEX,
        "",
    ],
)
def test_sha256_schemes_report_malformed_header(scheme: str, value: str) -> None:
    """A wisp or github header that is not sha256=<64 hex digits> is malformed_header."""
    name = "X-Webhook-Signature" if scheme == "wisp" else "X-Hub-Signature-256"
    assert verify(scheme, TOKEN, BODY, {name: value}) == Verdict(False, "malformed_header")


GOOD_B64 = base64.b64encode(hashlib.sha256(b"x").digest()).decode()


@pytest.mark.parametrize(
    "change",
    [
        {"webhook-signature": "v1"},
        {"webhook-signature": f"v1{GOOD_B64}"},
        {"webhook-signature": f"v1,{GOOD_B64} v1"},
        {"webhook-signature": "v1,not base64!"},
        {"webhook-signature": f"v1,{GOOD_B64.rstrip('=')}"},
        {"webhook-signature": "v1," + base64.b64encode(b"short").decode()},
        {"webhook-signature": f"v1a,{GOOD_B64}"},
        {"webhook-signature": ""},
        {"webhook-timestamp": f"{NOW}.5"},
        {"webhook-timestamp": "-1"},
        {"webhook-timestamp": "soon"},
        {"webhook-timestamp": ""},
        {"webhook-id": "msg.1"},
        {"webhook-id": ""},
    ],
)
def test_standard_reports_malformed_header(change: dict[str, str]) -> None:
    """Standard headers with a bad signature list, timestamp or id are malformed_header."""
    headers = {**sign("standard", TOKEN, BODY, now=clock), **change}
    assert verify("standard", TOKEN, BODY, headers, now=clock) == Verdict(False, "malformed_header")


@pytest.mark.parametrize(
    "value",
    [
        f"v1={GOOD_HEX}",
        f"t=,v1={GOOD_HEX}",
        f"t=soon,v1={GOOD_HEX}",
        f"t={NOW}.5,v1={GOOD_HEX}",
        f"t={NOW},t={NOW},v1={GOOD_HEX}",
        f"t={NOW}",
        f"t={NOW},v0={GOOD_HEX}",
        f"t={NOW},v1=zz",
        f"t={NOW},v1={GOOD_HEX},junk",
        "",
    ],
)
def test_stripe_reports_malformed_header(value: str) -> None:
    """A stripe header without one t=, without a v1=, or with a bad field is malformed_header."""
    verdict = verify("stripe", TOKEN, BODY, {"Webhook-Signature": value}, now=clock)
    assert verdict == Verdict(False, "malformed_header")


@pytest.mark.parametrize("scheme", ["standard", "stripe"])
@pytest.mark.parametrize("skew", [DEFAULT_TOLERANCE_S + 1, -(DEFAULT_TOLERANCE_S + 1), 10**6])
def test_verify_reports_timestamp_out_of_tolerance(scheme: str, skew: int) -> None:
    """A timestamp more than the tolerance in the past or the future is refused as such."""
    headers = sign(scheme, TOKEN, BODY, timestamp=NOW - skew)
    verdict = verify(scheme, TOKEN, BODY, headers, now=clock)
    assert verdict == Verdict(False, "timestamp_out_of_tolerance")


@pytest.mark.parametrize("scheme", ["standard", "stripe"])
@pytest.mark.parametrize("skew", [DEFAULT_TOLERANCE_S, -DEFAULT_TOLERANCE_S, 0])
def test_verify_accepts_timestamp_at_the_tolerance_edge(scheme: str, skew: int) -> None:
    """A timestamp exactly at the tolerance, either way, is still accepted."""
    headers = sign(scheme, TOKEN, BODY, timestamp=NOW - skew)
    assert verify(scheme, TOKEN, BODY, headers, now=clock).valid


@pytest.mark.parametrize("scheme", ["standard", "stripe"])
def test_verify_honours_a_custom_tolerance(scheme: str) -> None:
    """tolerance_s sets the window: 10 seconds off passes at 10 and fails at 9."""
    headers = sign(scheme, TOKEN, BODY, timestamp=NOW + 10)
    assert verify(scheme, TOKEN, BODY, headers, tolerance_s=10, now=clock).valid
    verdict = verify(scheme, TOKEN, BODY, headers, tolerance_s=9, now=clock)
    assert verdict.reason == "timestamp_out_of_tolerance"


@pytest.mark.parametrize("scheme", ["standard", "stripe"])
def test_timestamp_is_checked_before_the_signature(scheme: str) -> None:
    """A stale header under the wrong token reports the timestamp, not a mismatch."""
    headers = sign(scheme, OTHER_TOKEN, BODY, timestamp=NOW - 3600)
    verdict = verify(scheme, TOKEN, BODY, headers, now=clock)
    assert verdict.reason == "timestamp_out_of_tolerance"


@pytest.mark.parametrize("scheme", ["standard", "stripe"])
def test_negative_tolerance_is_refused(scheme: str) -> None:
    """A negative tolerance is a caller error, not a window nothing fits in."""
    headers = sign(scheme, TOKEN, BODY, now=clock)
    with pytest.raises(InvalidInput, match="tolerance"):
        verify(scheme, TOKEN, BODY, headers, tolerance_s=-1, now=clock)


@pytest.mark.parametrize("scheme", SCHEMES)
def test_verify_reports_mismatch_for_the_wrong_token(scheme: str) -> None:
    """Headers signed under another token are a mismatch."""
    headers = sign(scheme, OTHER_TOKEN, BODY, now=clock)
    assert verify(scheme, TOKEN, BODY, headers, now=clock) == Verdict(False, "mismatch")


@pytest.mark.parametrize("scheme", SCHEMES)
def test_verify_reports_mismatch_for_a_tampered_body(scheme: str) -> None:
    """Changing one byte of the body makes the signature a mismatch."""
    headers = sign(scheme, TOKEN, BODY, now=clock)
    tampered = BODY.replace(b"create", b"delete")
    assert verify(scheme, TOKEN, tampered, headers, now=clock) == Verdict(False, "mismatch")


def test_standard_reports_mismatch_for_a_tampered_id_or_timestamp() -> None:
    """The id and timestamp are signed: changing either is a mismatch."""
    headers = sign("standard", TOKEN, BODY, msg_id=MSG_ID, timestamp=NOW)
    for change in ({"webhook-id": MSG_ID + "x"}, {"webhook-timestamp": str(NOW + 1)}):
        verdict = verify("standard", TOKEN, BODY, {**headers, **change}, now=clock)
        assert verdict == Verdict(False, "mismatch")


def test_stripe_reports_mismatch_for_a_tampered_timestamp() -> None:
    """The stripe timestamp is signed: moving it is a mismatch."""
    value = sign("stripe", TOKEN, BODY, timestamp=NOW)["Webhook-Signature"]
    moved = {"Webhook-Signature": value.replace(f"t={NOW}", f"t={NOW + 1}")}
    assert verify("stripe", TOKEN, BODY, moved, now=clock) == Verdict(False, "mismatch")


@pytest.mark.parametrize("scheme", SCHEMES)
def test_verdicts_say_nothing_about_the_token(scheme: str) -> None:
    """A failed verdict carries a fixed reason label and no part of the token or digest."""
    expected = sign(scheme, TOKEN, BODY, now=clock)
    verdict = verify(scheme, TOKEN, BODY, sign(scheme, OTHER_TOKEN, BODY, now=clock), now=clock)
    text = repr(verdict)
    assert verdict.reason == "mismatch"
    assert TOKEN not in text
    assert all(value not in text for value in expected.values())


def test_verdict_truthiness_is_its_validity() -> None:
    """A Verdict is truthy only when valid, so ``if verify(...):`` cannot accept a forgery."""
    assert verify("wisp", TOKEN, BODY, sign("wisp", TOKEN, BODY))
    assert not verify("wisp", TOKEN, BODY, sign("wisp", OTHER_TOKEN, BODY))
    assert not Verdict(valid=False, reason="missing_header")


# --- input rules --------------------------------------------------------------------------------


@pytest.mark.parametrize("scheme", SCHEMES)
def test_parse_scheme_accepts_every_scheme(scheme: str) -> None:
    """Each listed scheme name parses to itself."""
    assert parse_scheme(scheme) == scheme


@pytest.mark.parametrize("value", ["hmac", "WISP", " wisp", "svix"])
def test_parse_scheme_refuses_unknown_names(value: str) -> None:
    """An unknown scheme is InvalidInput, and the message names the allowed ones."""
    with pytest.raises(InvalidInput, match="wisp, standard, github, stripe"):
        parse_scheme(value)


@pytest.mark.parametrize("scheme", ["hmac", ""])
def test_sign_and_verify_refuse_unknown_schemes(scheme: str) -> None:
    """sign and verify take only a parsed scheme name; anything else is InvalidInput."""
    with pytest.raises(InvalidInput, match="unknown signature scheme"):
        sign(scheme, TOKEN, BODY)
    with pytest.raises(InvalidInput, match="unknown signature scheme"):
        verify(scheme, TOKEN, BODY, {})


@pytest.mark.parametrize("scheme", SCHEMES)
def test_sign_refuses_an_id_with_a_dot(scheme: str) -> None:
    """A message id containing '.' is refused, since it would make "{id}.{ts}" ambiguous."""
    with pytest.raises(InvalidInput, match=r"'\.'"):
        sign(scheme, TOKEN, BODY, msg_id="msg_1.2")


@pytest.mark.parametrize("value", [f"{NOW}.5", "1.0", ".", "1."])
def test_parse_timestamp_refuses_a_dot(value: str) -> None:
    """A timestamp containing '.' (a fraction) is refused."""
    with pytest.raises(InvalidInput, match="non-negative integer"):
        parse_timestamp(value)


@pytest.mark.parametrize(
    "value", ["", "-1", "+1", " 1", "1 ", "1_000", "1e9", "\u0661", "12345678901", -1, 10**10, True]
)
def test_parse_timestamp_refuses_anything_but_plain_seconds(value: str | int) -> None:
    """Signs, spaces, underscores, exponents, non-ASCII digits, bools and huge values fail."""
    with pytest.raises(InvalidInput, match="timestamp"):
        parse_timestamp(value)


@pytest.mark.parametrize(("value", "parsed"), [("0", 0), (str(NOW), NOW), (NOW, NOW), ("007", 7)])
def test_parse_timestamp_accepts_plain_seconds(value: str | int, parsed: int) -> None:
    """Decimal digit strings and non-negative ints parse to integer seconds."""
    assert parse_timestamp(value) == parsed


@pytest.mark.parametrize("scheme", ["standard", "stripe"])
def test_sign_refuses_a_bad_timestamp(scheme: str) -> None:
    """sign refuses a negative timestamp rather than emitting a header no receiver accepts."""
    with pytest.raises(InvalidInput, match="timestamp"):
        sign(scheme, TOKEN, BODY, timestamp=-1)


@pytest.mark.parametrize("value", ["", "a b", "msg\n1", "msg\x001", "msg_\u00e9", "m" * 257])
def test_check_msg_id_refuses_unsafe_ids(value: str) -> None:
    """Empty, over-long, spaced, control-character and non-ASCII ids are refused."""
    with pytest.raises(InvalidInput, match="msg_id"):
        check_msg_id(value)


def test_check_msg_id_returns_a_valid_id() -> None:
    """A printable ASCII id without '.' is returned unchanged."""
    assert check_msg_id(MSG_ID) == MSG_ID


def test_new_msg_id_is_fresh_and_valid() -> None:
    """new_msg_id returns distinct msg_-prefixed ids that pass check_msg_id."""
    ids = {new_msg_id() for _ in range(1000)}
    assert len(ids) == 1000
    for msg_id in ids:
        assert msg_id.startswith("msg_")
        assert check_msg_id(msg_id) == msg_id


def test_standard_defaults_id_and_timestamp() -> None:
    """Without msg_id and timestamp, standard uses a fresh id and the injected clock."""
    first = sign("standard", TOKEN, BODY, now=lambda: NOW + 0.9)
    second = sign("standard", TOKEN, BODY, now=clock)
    assert first["webhook-timestamp"] == str(NOW)
    assert first["webhook-id"] != second["webhook-id"]
    assert check_msg_id(first["webhook-id"]) == first["webhook-id"]


def test_stripe_defaults_timestamp_to_now() -> None:
    """Without a timestamp, stripe signs with the injected clock, in whole seconds."""
    assert sign("stripe", TOKEN, BODY, now=lambda: NOW + 0.9)["Webhook-Signature"].startswith(
        f"t={NOW},v1="
    )


def test_verify_uses_the_real_clock_by_default() -> None:
    """Without an injected clock, a just-made standard signature verifies against time.time."""
    headers = sign("standard", TOKEN, BODY, timestamp=int(time.time()))
    assert verify("standard", TOKEN, BODY, headers).valid


@pytest.mark.parametrize("name", SCHEMES)
def test_signing_a_batch_gives_what_signing_each_body_gives(name: str) -> None:
    """A scheme's sign_all over several bodies answers, in order, what its sign answers for
    each (with the message id and timestamp fixed, so both are deterministic)."""
    scheme = TABLE[name]
    bodies = [b"", b'{"event":"push"}', bytes(range(256)) * 4]
    fixed = ("msg_fixed", 1_700_000_000, lambda: 1_700_000_000.0)
    each = [scheme.sign(b"key", body, *fixed) for body in bodies]
    assert scheme.sign_all(b"key", bodies, *fixed) == each
    assert len({str(headers) for headers in each}) == len(bodies)


def _plain_hmac(key: bytes, message: bytes) -> bytes:
    return hmac.new(key, message, hashlib.sha256).digest()


@given(
    key=st.binary(min_size=1, max_size=200),
    bodies=st.lists(st.binary(max_size=3000), max_size=5),
)
def test_a_batch_signed_with_one_keyed_state_is_plain_hmac(key: bytes, bodies: list[bytes]) -> None:
    """Every scheme's sign_all, which copies one keyed HMAC state per body, gives the HMAC
    of what the scheme signs under the key, for any key (longer than a block, too) and
    any bodies."""
    msg_id, ts = "msg_fixed", 1_700_000_000
    expected: dict[str, Callable[[bytes], dict[str, str]]] = {
        "wisp": lambda body: {"X-Webhook-Signature": "sha256=" + _plain_hmac(key, body).hex()},
        "github": lambda body: {"X-Hub-Signature-256": "sha256=" + _plain_hmac(key, body).hex()},
        "stripe": lambda body: {
            "Webhook-Signature": f"t={ts},v1=" + _plain_hmac(key, f"{ts}.".encode() + body).hex()
        },
        "standard": lambda body: {
            "webhook-id": msg_id,
            "webhook-timestamp": str(ts),
            "webhook-signature": "v1,"
            + base64.b64encode(_plain_hmac(key, f"{msg_id}.{ts}.".encode() + body)).decode(),
        },
    }
    assert set(expected) == set(SCHEMES)
    for name, headers_of in expected.items():
        signed = TABLE[name].sign_all(key, bodies, msg_id, ts, time.time)
        assert signed == [headers_of(body) for body in bodies]
