"""atproto service auth: inter-service JWTs as bearer credentials.

A client asks its PDS for a short-lived token
(``com.atproto.server.getServiceAuth?aud=<our service DID>&lxm=<NSID>``) and
sends it as ``Authorization: Bearer <jwt>``. The token's issuer DID owns the
secrets. Checks run in this order, each failure an ``AuthenticationFailed``
whose reason only logs and metrics see:

1. ``alg`` is ES256K or ES256, and ``typ`` is not an access, refresh or DPoP
   type (``bad_alg``, ``bad_type``);
2. ``iss`` is a DID, a ``#fragment`` stripped (``bad_jwt``); ``aud`` is our
   service DID, bare (what ``getServiceAuth`` gives and what a proxying PDS
   sends) or with our service id as its fragment (``bad_audience``); ``lxm``
   is the called NSID (``bad_lxm``);
3. ``exp`` has not passed, with ``LEEWAY_S`` of leeway (``expired``); ``iat``,
   if present, is not in the future beyond it (``bad_jwt``);
4. the lifetime is at most ``MAX_LIFETIME_S``: ``exp - iat``, or without
   ``iat``, how far ahead ``exp`` is (``too_long_lived``);
5. the signature verifies against the issuer's ``#atproto`` key
   (``unresolved_did`` and the resolver's own refusals, ``bad_signature``),
   re-resolved once, uncached, when a cached key fails, to catch a key
   rotation, unless the key was fetched within the refetch bound
   (``did_refetch_limited``);
6. ``jti``, when present, has not been used before on any replica (``replayed``).

Anything else malformed is ``bad_jwt``. Knows nothing of aiohttp: DID
resolution and the replay record come in through two small protocols.
"""

from __future__ import annotations

import base64
import json
import math
import re
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final, NoReturn, Protocol

from sidecar.auth.caller import Caller
from sidecar.auth.did_keys import ES256, ES256K
from sidecar.errors import AuthenticationFailed, DidResolutionError
from sidecar.names import is_valid_did

if TYPE_CHECKING:
    from collections.abc import Callable, Mapping

    from sidecar.auth.did_resolver import ResolvedKey

LEEWAY_S: Final = 5
MAX_LIFETIME_S: Final = 5 * 60
ALGORITHMS: Final = frozenset({ES256K, ES256})
# Tokens of other OAuth flows, which must never pass as service auth.
FORBIDDEN_TYPES: Final = frozenset({"at+jwt", "refresh+jwt", "dpop+jwt"})

# Unpadded base64url; the signature part may be empty (an unsigned
# ``alg: none`` token is still a JWT, and is refused as one).
_JWT_RE: Final = re.compile(r"([A-Za-z0-9_-]+)\.([A-Za-z0-9_-]+)\.([A-Za-z0-9_-]*)")


class SigningKeys(Protocol):
    """Where issuers' ``#atproto`` keys come from (``sidecar.did_resolver.DidResolver``)."""

    async def signing_key(self, did: str, *, fresh: bool = False) -> ResolvedKey: ...


class ReplayGuard(Protocol):
    """The shared record of used token ids (``sidecar.store.SecretStore``)."""

    async def claim_jti(self, iss: str, jti: str, until_s: int) -> bool: ...


@dataclass(frozen=True, slots=True)
class Jwt:
    """A compact JWS split into its decoded parts; nothing in it is checked yet."""

    header: Mapping[str, Any]
    payload: Mapping[str, Any]
    signing_input: bytes
    signature: bytes


@dataclass(frozen=True, slots=True)
class Claims:
    """What a token's checked claims grant: the issuer DID, until when, and its id."""

    did: str
    alg: str
    exp: float
    jti: str | None

    @property
    def replay_record_until_s(self) -> int:
        """When the token stops passing the ``exp`` check: its id can be forgotten then."""
        return math.ceil(self.exp) + LEEWAY_S + 1


def _fail(reason: str) -> NoReturn:
    raise AuthenticationFailed(reason)


def _b64url(part: str) -> bytes:
    return base64.urlsafe_b64decode(part + "=" * (-len(part) % 4))


def _refuse_constant(name: str) -> NoReturn:
    # json accepts NaN and Infinity, which are not JSON and no NumericDate.
    raise ValueError(name)


def _json_object(part: str) -> dict[str, Any] | None:
    try:
        value = json.loads(_b64url(part), parse_constant=_refuse_constant)
    except (ValueError, RecursionError):
        return None
    return value if isinstance(value, dict) else None


def _header(credential: str) -> dict[str, Any] | None:
    match = _JWT_RE.fullmatch(credential)
    if match is None:
        return None
    header = _json_object(match[1])
    return header if header is not None and "alg" in header else None


def looks_like_jwt(credential: str) -> bool:
    """Three base64url parts with a JSON header that has ``alg``: the JWT path's test."""
    return _header(credential) is not None


def parse_jwt(credential: str) -> Jwt:
    """Split and decode a compact JWS; ``bad_jwt`` if it is not one."""
    header = _header(credential)
    if header is None:
        _fail("bad_jwt")
    head, body, signature = credential.split(".")
    payload = _json_object(body)
    if payload is None:
        _fail("bad_jwt")
    try:
        raw_signature = _b64url(signature)
    except ValueError:
        _fail("bad_jwt")
    return Jwt(header, payload, f"{head}.{body}".encode("ascii"), raw_signature)


def _numeric_date(value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        _fail("bad_jwt")
    return float(value)


def audiences(service_did: str, service_id: str | None) -> frozenset[str]:
    """The ``aud`` values a token may carry: the DID, and ``<DID>#<service id>``.

    The reference PDS sends the bare DID when it proxies a call (``atproto-proxy:
    <DID>#<id>``: the fragment only picks the endpoint); the fragment form is
    accepted for PDSes and clients that name the service entry in ``aud``. No
    other fragment and no prefix: a token minted for another service on the same
    DID must not work here.
    """
    accepted = {service_did}
    if service_id is not None:
        accepted.add(f"{service_did}#{service_id}")
    return frozenset(accepted)


def check_claims(jwt: Jwt, *, audience: frozenset[str], nsid: str, now: float) -> Claims:
    """Checks 1 to 4 of the module docstring, in order, at the Unix time ``now``.

    ``audience`` is the set ``audiences`` makes; ``aud`` must equal one member.
    """
    alg = jwt.header.get("alg")
    # isinstance first: a list or object is unhashable, and no algorithm.
    if not isinstance(alg, str) or alg not in ALGORITHMS:
        _fail("bad_alg")
    if "typ" in jwt.header:
        typ = jwt.header["typ"]
        # Media types are case-insensitive (RFC 7515 §4.1.9).
        if not isinstance(typ, str) or typ.lower() in FORBIDDEN_TYPES:
            _fail("bad_type")

    claims = jwt.payload
    iss = claims.get("iss")
    did = iss.partition("#")[0] if isinstance(iss, str) else ""
    if not is_valid_did(did):
        _fail("bad_jwt")
    aud = claims.get("aud")
    # isinstance first: a list is unhashable, and atproto's aud is one string.
    if not isinstance(aud, str) or aud not in audience:
        _fail("bad_audience")
    if claims.get("lxm") != nsid:
        _fail("bad_lxm")

    exp = _numeric_date(claims.get("exp"))
    if now > exp + LEEWAY_S:
        _fail("expired")
    if "iat" in claims:
        iat = _numeric_date(claims["iat"])
        if iat > now + LEEWAY_S:
            _fail("bad_jwt")
        lifetime = exp - iat
    else:
        # Measured from our clock, so allow for the issuer's being ahead.
        lifetime = exp - now - LEEWAY_S
    if lifetime > MAX_LIFETIME_S:
        _fail("too_long_lived")

    jti = claims.get("jti")
    if jti is not None and (not isinstance(jti, str) or not jti):
        _fail("bad_jwt")
    return Claims(did=did, alg=alg, exp=exp, jti=jti)


class ServiceAuthVerifier:
    """A ``BearerVerifier`` for atproto service JWTs addressed to ``service_did``
    (or to its ``#service_id`` entry)."""

    def __init__(
        self,
        service_did: str,
        keys: SigningKeys,
        replay: ReplayGuard,
        *,
        service_id: str | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._audience = audiences(service_did, service_id)
        self._keys = keys
        self._replay = replay
        self._clock = clock

    def accepts(self, credential: str) -> bool:
        return looks_like_jwt(credential)

    async def verify(self, credential: str, *, nsid: str) -> Caller:
        jwt = parse_jwt(credential)
        claims = check_claims(jwt, audience=self._audience, nsid=nsid, now=self._clock())
        await self._check_signature(claims, jwt)
        # Last, so that only a token that passed every other check uses up its id.
        if claims.jti is not None and not await self._replay.claim_jti(
            claims.did, claims.jti, claims.replay_record_until_s
        ):
            _fail("replayed")
        return Caller(did=claims.did, actor=f"jwt:{claims.did}")

    async def _check_signature(self, claims: Claims, jwt: Jwt) -> None:
        resolved = await self._signing_key(claims.did, fresh=False)
        if resolved.key.verify(claims.alg, jwt.signing_input, jwt.signature):
            return
        if resolved.cached:
            # The issuer may have rotated its key since we cached it.
            fresh = await self._signing_key(claims.did, fresh=True)
            if fresh.key != resolved.key and fresh.key.verify(
                claims.alg, jwt.signing_input, jwt.signature
            ):
                return
        _fail("bad_signature")

    async def _signing_key(self, did: str, *, fresh: bool) -> ResolvedKey:
        try:
            return await self._keys.signing_key(did, fresh=fresh)
        except DidResolutionError as exc:
            _fail(exc.reason)
