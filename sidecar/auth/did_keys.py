"""atproto public keys: from a DID document's ``#atproto`` method to a signature check.

The only importer of ``cryptography``. It decodes the two key forms atproto
DID documents carry, and checks the raw ``r||s`` ECDSA signatures of service
JWTs (https://atproto.com/specs/cryptography):

- ``Multikey``: ``publicKeyMultibase`` is base58btc (``z…``) of a multicodec
  prefix (``0xe7 0x01`` secp256k1, ``0x80 0x24`` P-256) and a compressed point;
- the legacy ``EcdsaSecp256k1VerificationKey2019`` (and its P-256 sibling
  ``EcdsaSecp256r1VerificationKey2019``): base58btc of the bare point, the
  curve named by the type.

A key that does not decode is ``InvalidPublicKey``; a document without a
usable ``#atproto`` method is ``DidResolutionError``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from sidecar.errors import DidResolutionError, InvalidPublicKey

if TYPE_CHECKING:
    from collections.abc import Mapping

ES256K: Final = "ES256K"
ES256: Final = "ES256"

_CURVES: Final[dict[str, ec.EllipticCurve]] = {ES256K: ec.SECP256K1(), ES256: ec.SECP256R1()}
_MULTICODECS: Final = {b"\xe7\x01": ES256K, b"\x80\x24": ES256}
_LEGACY_TYPES: Final = {
    "EcdsaSecp256k1VerificationKey2019": ES256K,
    "EcdsaSecp256r1VerificationKey2019": ES256,
}
MULTIKEY: Final = "Multikey"

_BASE58_ALPHABET: Final = "123456789ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnopqrstuvwxyz"
_BASE58_DIGITS: Final = {char: value for value, char in enumerate(_BASE58_ALPHABET)}
# A key is 35 bytes at most (about 48 characters); the bound keeps hostile
# documents from making the quadratic big-integer decode slow.
_MAX_MULTIBASE_CHARS: Final = 128
_SIGNATURE_BYTES: Final = 64
_COMPRESSED_POINT_BYTES: Final = 33


def base58btc_decode(text: str) -> bytes:
    """Decode Bitcoin-alphabet base58; each leading ``1`` is a leading zero byte."""
    number = 0
    for char in text:
        digit = _BASE58_DIGITS.get(char)
        if digit is None:
            raise InvalidPublicKey("not base58btc")
        number = number * 58 + digit
    zeros = len(text) - len(text.lstrip("1"))
    return b"\x00" * zeros + number.to_bytes((number.bit_length() + 7) // 8, "big")


@dataclass(frozen=True, slots=True)
class PublicKey:
    """An atproto signing key: its JWT ``alg`` and the curve point it holds."""

    alg: str
    point: bytes  # SEC1 compressed, so two equal keys compare equal

    @classmethod
    def from_point(cls, alg: str, point: bytes) -> PublicKey:
        """Load a SEC1 point (compressed or not) on the curve of ``alg``."""
        try:
            key = ec.EllipticCurvePublicKey.from_encoded_point(_CURVES[alg], point)
        except ValueError:
            raise InvalidPublicKey(f"not a point on the {alg} curve") from None
        return cls(alg=alg, point=key.public_bytes(Encoding.X962, PublicFormat.CompressedPoint))

    def verify(self, alg: str, message: bytes, signature: bytes) -> bool:
        """Whether ``signature`` (raw ``r||s``, 64 bytes) signs ``message`` with this key.

        High-S signatures are accepted, as atproto's service-auth verifier does;
        a JWT whose ``alg`` names another curve than the key's never verifies.
        """
        if alg != self.alg or len(signature) != _SIGNATURE_BYTES:
            return False
        half = _SIGNATURE_BYTES // 2
        der = encode_dss_signature(
            int.from_bytes(signature[:half], "big"), int.from_bytes(signature[half:], "big")
        )
        key = ec.EllipticCurvePublicKey.from_encoded_point(_CURVES[self.alg], self.point)
        try:
            key.verify(der, message, ec.ECDSA(hashes.SHA256()))
        except InvalidSignature:
            return False
        return True


def _multibase_bytes(value: object) -> bytes:
    if not isinstance(value, str) or not value.startswith("z"):
        raise InvalidPublicKey("publicKeyMultibase must be base58btc ('z…')")
    if len(value) > _MAX_MULTIBASE_CHARS:
        raise InvalidPublicKey("publicKeyMultibase is too long for a key")
    return base58btc_decode(value[1:])


def decode_multikey(multibase: object) -> PublicKey:
    """The key of a ``Multikey`` ``publicKeyMultibase``: prefix, then a compressed point."""
    raw = _multibase_bytes(multibase)
    alg = _MULTICODECS.get(raw[:2])
    if alg is None:
        raise InvalidPublicKey("unsupported multicodec: want secp256k1-pub or p256-pub")
    point = raw[2:]
    if len(point) != _COMPRESSED_POINT_BYTES:
        raise InvalidPublicKey("a Multikey holds a 33-byte compressed point")
    return PublicKey.from_point(alg, point)


def decode_verification_method(method: Mapping[str, Any]) -> PublicKey:
    """The key of one ``verificationMethod`` entry, by its ``type``."""
    kind = method.get("type")
    multibase = method.get("publicKeyMultibase")
    if kind == MULTIKEY:
        return decode_multikey(multibase)
    if isinstance(kind, str) and kind in _LEGACY_TYPES:
        # The legacy types carry no multicodec prefix; older documents may
        # hold an uncompressed point, which from_point accepts too.
        return PublicKey.from_point(_LEGACY_TYPES[kind], _multibase_bytes(multibase))
    raise InvalidPublicKey("unsupported verification method type")


def atproto_signing_key(did: str, document: object) -> PublicKey:
    """The ``#atproto`` key of ``did``'s document, after checking the document is ``did``'s."""
    if not isinstance(document, dict) or document.get("id") != did:
        raise DidResolutionError("the DID document is not the document of this DID")
    methods = document.get("verificationMethod")
    if not isinstance(methods, list):
        raise DidResolutionError("the DID document has no verificationMethod list")
    for method in methods:
        if isinstance(method, dict) and method.get("id") in ("#atproto", f"{did}#atproto"):
            return decode_verification_method(method)
    raise DidResolutionError("the DID document has no #atproto verification method")
