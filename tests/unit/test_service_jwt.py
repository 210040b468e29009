"""Unit tests for ``sidecar.auth.service_jwt`` (token shape and claims, at an injected time) and
for the replay record it keeps through ``ReplayRecords.claim_jti`` on real Redis."""

from __future__ import annotations

import hashlib
import math
import time
from typing import TYPE_CHECKING, Any

import pytest
from atproto_fakes import ES256, ES256K, SERVICE_DID, Issuer, KeyPair, b64url, new_plc_did
from support import LIST, ROTATE

from sidecar.auth.service_jwt import (
    Claims,
    Jwt,
    audiences,
    check_claims,
    looks_like_jwt,
    parse_jwt,
)
from sidecar.errors import AuthenticationFailed, StorageUnavailable
from sidecar.storage.embedded import free_port
from sidecar.storage.layout import jti_key

if TYPE_CHECKING:
    import redis
    from support import SidecarFactory

    from sidecar.app import Sidecar

NOW = 1_767_225_600.0
ISSUER = "did:plc:abcdefghijklmnopqrstuvwx"


def token(header: dict[str, Any] | None = None, **claims: Any) -> Jwt:
    """A decoded token of ISSUER for LIST, issued at NOW for 60 s; a claim set to None is absent."""
    payload: dict[str, Any] = {
        "iss": ISSUER,
        "aud": SERVICE_DID,
        "lxm": LIST,
        "iat": NOW,
        "exp": NOW + 60,
        "jti": "0123abcd",
        **claims,
    }
    return Jwt(
        header={"alg": ES256K, "typ": "JWT"} if header is None else header,
        payload={name: value for name, value in payload.items() if value is not None},
        signing_input=b"unused",
        signature=b"unused",
    )


def check(jwt: Jwt, *, now: float = NOW, nsid: str = LIST) -> Claims:
    """The claims of ``jwt``, checked as this service checks them at ``now`` for ``nsid``."""
    return check_claims(jwt, audience=audiences(SERVICE_DID, "wisp_sidecar"), nsid=nsid, now=now)


def reason(jwt: Jwt, *, now: float = NOW, nsid: str = LIST) -> str:
    """The reason ``check`` refuses ``jwt`` with."""
    with pytest.raises(AuthenticationFailed) as info:
        check(jwt, now=now, nsid=nsid)
    return info.value.reason


# Telling a JWT from an API key


def test_real_token_looks_like_a_jwt() -> None:
    """A token signed as a PDS signs it goes down the JWT path."""
    assert looks_like_jwt(Issuer(ISSUER, KeyPair.generate(ES256)).token(LIST)) is True


ALG = b'{"alg": "ES256K"}'


def jws(*parts: bytes | str) -> str:
    """Dot-joined parts: bytes are base64url-encoded, text is taken as it is."""
    return ".".join(b64url(part) if isinstance(part, bytes) else part for part in parts)


@pytest.mark.parametrize(
    ("credential", "expected"),
    [
        (jws(b'{"alg": "none"}', b"{}", ""), True),
        (jws(b'{"alg": "HS256"}', b"x", b"sig"), True),
        ("wsa_abcdefghijklmnopqrstuvwxyz0123456789ABCDEFG", False),
        (jws(ALG, b"{}"), False),
        (jws(ALG, b"{}", "a", "b"), False),
        (jws(b'{"typ": "JWT"}', b"{}", "abc"), False),
        (jws(b'["alg"]', b"{}", "abc"), False),
        (jws(b"not json", b"{}", "abc"), False),
        (jws(b64url(ALG) + "=", b"{}", "abc"), False),
        (jws(ALG, b"{}", "ab/c"), False),
        (jws("", b"{}", "abc"), False),
    ],
    ids=[
        "alg-none",
        "hs256",
        "api-key",
        "two-parts",
        "five-parts",
        "no-alg",
        "header-list",
        "header-not-json",
        "padded",
        "not-base64url",
        "empty-header",
    ],
)
def test_jwt_path_takes_three_base64url_parts_with_an_alg(credential: str, expected: bool) -> None:
    """Only three base64url parts whose header is a JSON object with 'alg' count as a JWT."""
    assert looks_like_jwt(credential) is expected


@pytest.mark.parametrize(
    "credential",
    [
        jws(ALG, b"not json", "abcd"),
        jws(ALG, b"[1, 2]", "abcd"),
        jws(ALG, b'{"exp": NaN}', "abcd"),
        jws(ALG, b"{}", "abcde"),
        "not a jwt",
    ],
    ids=["payload-not-json", "payload-list", "payload-nan", "signature-bad-length", "no-jwt"],
)
def test_parse_refuses_undecodable_tokens(credential: str) -> None:
    """A payload that is no JSON object, or a signature that is no base64url, is bad_jwt."""
    with pytest.raises(AuthenticationFailed) as info:
        parse_jwt(credential)
    assert info.value.reason == "bad_jwt"


def test_parse_splits_a_real_token() -> None:
    """parse_jwt gives the decoded header and payload, the signing input and 64 signature bytes."""
    credential = Issuer(ISSUER, KeyPair.generate(ES256K)).token(LIST, jti="j1")
    jwt = parse_jwt(credential)
    assert jwt.header == {"typ": "JWT", "alg": ES256K}
    assert (jwt.payload["iss"], jwt.payload["lxm"], jwt.payload["jti"]) == (ISSUER, LIST, "j1")
    assert jwt.signing_input == credential.rsplit(".", 1)[0].encode()
    assert len(jwt.signature) == 64


# Claims, in order


def test_good_claims_grant_the_issuer() -> None:
    """A well-formed token yields its issuer, algorithm, expiry and id."""
    assert check(token()) == Claims(did=ISSUER, alg=ES256K, exp=NOW + 60, jti="0123abcd")


def test_fragment_of_the_issuer_is_stripped() -> None:
    """An issuer 'did#service' is the DID without its fragment."""
    assert check(token(iss=f"{ISSUER}#atproto_labeler")).did == ISSUER


@pytest.mark.parametrize("alg", ["HS256", "none", "RS256", "EdDSA", "es256k", None, 1, [], {}])
def test_other_algorithms_are_bad_alg(alg: object) -> None:
    """Only ES256K and ES256, spelled exactly, are accepted."""
    assert reason(token({"alg": alg})) == "bad_alg"


@pytest.mark.parametrize("typ", ["at+jwt", "refresh+jwt", "dpop+jwt", "AT+JWT", "DPoP+JWT", 1])
def test_tokens_of_other_flows_are_bad_type(typ: object) -> None:
    """Access, refresh and DPoP token types (any case), or a typ that is no string, are bad_type."""
    assert reason(token({"alg": ES256, "typ": typ})) == "bad_type"


@pytest.mark.parametrize("header", [{"alg": ES256}, {"alg": ES256, "typ": "JWT"}])
def test_plain_or_missing_typ_is_accepted(header: dict[str, Any]) -> None:
    """A JWT typ, or none at all, passes."""
    assert check(token(header)).alg == ES256


@pytest.mark.parametrize("iss", [None, "alice", "did:plc:", "#atproto", 42, "did:PLC:abc"])
def test_issuer_that_is_no_did_is_bad_jwt(iss: object) -> None:
    """A missing issuer, or one that is not a DID, is bad_jwt."""
    jwt = token(iss=iss)
    if iss is None:
        assert "iss" not in jwt.payload
    assert reason(jwt) == "bad_jwt"


@pytest.mark.parametrize(
    "aud",
    [
        None,
        "did:web:other.example.com",
        [SERVICE_DID],
        [f"{SERVICE_DID}#wisp_sidecar"],
        f"{SERVICE_DID}#svc",
        f"{SERVICE_DID}#",
        f"{SERVICE_DID}#wisp",
        f"{SERVICE_DID}#wisp_sidecar_2",
        f"{SERVICE_DID}#WISP_SIDECAR",
        f"{SERVICE_DID}#wisp_sidecar#wisp_sidecar",
        f"{SERVICE_DID}x#wisp_sidecar",
        SERVICE_DID[:-1],
        f"{SERVICE_DID} ",
        "",
    ],
)
def test_other_audience_is_bad_audience(aud: object) -> None:
    """Only our DID or our DID#service-id pass: no other fragment, prefix, list or DID."""
    assert reason(token(aud=aud)) == "bad_audience"


@pytest.mark.parametrize("aud", [SERVICE_DID, f"{SERVICE_DID}#wisp_sidecar"])
def test_bare_and_proxied_audiences_pass(aud: str) -> None:
    """The bare DID (getServiceAuth) and DID#service-id (a proxying PDS) are both our audience."""
    assert check(token(aud=aud)).alg == ES256K


def test_without_a_service_id_only_the_bare_did_is_the_audience() -> None:
    """With no service id the audience set is the DID alone."""
    assert audiences(SERVICE_DID, None) == frozenset({SERVICE_DID})


@pytest.mark.parametrize("lxm", [None, ROTATE, "place.wisp.v2.secret.*", LIST.upper()])
def test_other_method_is_bad_lxm(lxm: str | None) -> None:
    """lxm is required and must be the NSID being called, exactly."""
    assert reason(token(lxm=lxm)) == "bad_lxm"


def test_token_for_list_is_bad_lxm_on_rotate() -> None:
    """A token minted for secret.list is refused when it calls secret.rotate."""
    assert reason(token(), nsid=ROTATE) == "bad_lxm"


@pytest.mark.parametrize(
    ("exp", "ok"),
    [(NOW - 5, True), (NOW - 5.001, False), (NOW - 6, False), (NOW - 3600, False)],
)
def test_expiry_has_five_seconds_of_leeway(exp: float, ok: bool) -> None:
    """A token is good until 5 s after exp, and expired from then on."""
    jwt = token(exp=exp, iat=exp - 60)
    if ok:
        assert check(jwt).exp == exp
    else:
        assert reason(jwt) == "expired"


@pytest.mark.parametrize("exp", [None, "1767225660", True, math.nan, math.inf, [NOW]])
def test_missing_or_non_numeric_exp_is_bad_jwt(exp: object) -> None:
    """exp is required and must be a finite number (not a string or a boolean)."""
    assert reason(token(exp=exp)) == "bad_jwt"


@pytest.mark.parametrize(("iat", "ok"), [(NOW + 5, True), (NOW + 5.5, False), (NOW + 60, False)])
def test_iat_in_the_future_beyond_the_leeway_is_bad_jwt(iat: float, ok: bool) -> None:
    """A token issued more than 5 s in our future is refused."""
    jwt = token(iat=iat, exp=iat + 60)
    if ok:
        assert check(jwt).did == ISSUER
    else:
        assert reason(jwt) == "bad_jwt"


@pytest.mark.parametrize("iat", ["now", False, math.nan])
def test_non_numeric_iat_is_bad_jwt(iat: object) -> None:
    """An iat that is present must be a finite number."""
    assert reason(token(iat=iat)) == "bad_jwt"


@pytest.mark.parametrize(
    ("iat", "exp", "ok"),
    [
        (NOW, NOW + 300, True),
        (NOW, NOW + 301, False),
        (NOW - 200, NOW + 100, True),
        (NOW - 250, NOW + 100, False),
        (NOW - 86_400, NOW + 1, False),
    ],
)
def test_lifetime_from_iat_is_at_most_five_minutes(iat: float, exp: float, ok: bool) -> None:
    """With iat, exp - iat may be at most 300 s, however much of it is left."""
    jwt = token(iat=iat, exp=exp)
    if ok:
        assert check(jwt).exp == exp
    else:
        assert reason(jwt) == "too_long_lived"


@pytest.mark.parametrize(("ahead", "ok"), [(300, True), (305, True), (306, False), (3600, False)])
def test_without_iat_exp_is_at_most_five_minutes_ahead(ahead: float, ok: bool) -> None:
    """Without iat, exp may be at most 300 s (plus the leeway) ahead of now."""
    jwt = token(iat=None, exp=NOW + ahead)
    assert "iat" not in jwt.payload
    if ok:
        assert check(jwt).exp == NOW + ahead
    else:
        assert reason(jwt) == "too_long_lived"


@pytest.mark.parametrize("jti", ["", 42, ["a"], True])
def test_jti_that_is_no_text_is_bad_jwt(jti: object) -> None:
    """A jti that is present must be a non-empty string."""
    assert reason(token(jti=jti)) == "bad_jwt"


def test_jti_is_optional() -> None:
    """A token without jti passes the claims checks, with no id to record."""
    assert check(token(jti=None)).jti is None


@pytest.mark.parametrize(
    ("changes", "first"),
    [
        ({"header": {"alg": "HS256", "typ": "at+jwt"}, "aud": "did:web:x"}, "bad_alg"),
        ({"header": {"alg": ES256K, "typ": "at+jwt"}, "aud": "did:web:x"}, "bad_type"),
        ({"iss": "nobody", "aud": "did:web:x"}, "bad_jwt"),
        ({"aud": "did:web:x", "lxm": ROTATE}, "bad_audience"),
        ({"lxm": ROTATE, "exp": NOW - 60}, "bad_lxm"),
        ({"exp": NOW - 60, "iat": NOW - 6000}, "expired"),
        ({"iat": NOW + 60, "exp": NOW + 6000}, "bad_jwt"),
    ],
)
def test_checks_run_in_the_documented_order(changes: dict[str, Any], first: str) -> None:
    """A token with two faults is refused for the one the issue lists first."""
    header = changes.pop("header", None)
    assert reason(token(header, **changes)) == first


@pytest.mark.parametrize(
    ("exp", "until"), [(NOW, int(NOW) + 6), (NOW + 0.2, int(NOW) + 7), (NOW + 60, int(NOW) + 66)]
)
def test_replay_record_outlives_the_leeway(exp: float, until: int) -> None:
    """A token id is kept until after the last second its token could still pass exp."""
    claims = Claims(did=ISSUER, alg=ES256K, exp=exp, jti="j")
    assert claims.replay_record_until_s == until
    assert claims.replay_record_until_s > exp + 5


# The replay record in Redis


async def test_a_jti_is_claimed_once_per_issuer(sidecar: Sidecar, raw_redis: redis.Redis) -> None:
    """The first claim of an id wins, every later one fails; another issuer's id is separate."""
    other = new_plc_did()
    until = int(time.time()) + 60
    assert await sidecar.replay.claim_jti(ISSUER, "abc", until) is True
    assert await sidecar.replay.claim_jti(ISSUER, "abc", until) is False
    assert await sidecar.replay.claim_jti(other, "abc", until) is True
    assert await sidecar.replay.claim_jti(ISSUER, "abd", until) is True

    key = f"wsc:{{{ISSUER}}}:jti:{hashlib.sha256(b'abc').hexdigest()}"
    assert jti_key(ISSUER, "abc") == key
    assert raw_redis.get(key) == b"1"
    assert raw_redis.expiretime(key) == until


async def test_a_jti_is_claimable_again_once_its_record_expires(
    sidecar: Sidecar, raw_redis: redis.Redis
) -> None:
    """The record is gone at its expiry time, so Redis holds no id forever."""
    until = int(time.time()) + 60
    assert await sidecar.replay.claim_jti(ISSUER, "abc", until) is True
    # Expire it now, as Redis would at ``until``, instead of waiting a minute.
    raw_redis.expireat(jti_key(ISSUER, "abc"), int(time.time()) - 1)
    assert await sidecar.replay.claim_jti(ISSUER, "abc", until) is True


async def test_claim_fails_closed_when_redis_is_down(make_sidecar: SidecarFactory) -> None:
    """With Redis unreachable, claiming an id is StorageUnavailable, never a silent yes."""
    dead = await make_sidecar(REDIS_URL=f"redis://127.0.0.1:{free_port()}/0")
    with pytest.raises(StorageUnavailable):
        await dead.replay.claim_jti(ISSUER, "abc", int(time.time()) + 60)
