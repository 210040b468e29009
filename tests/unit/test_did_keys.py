"""Tests for ``sidecar.auth.did_keys``: base58btc, Multikey and legacy keys, signature checks."""

from __future__ import annotations

import secrets

import pytest
from atproto_fakes import ES256, ES256K, LEGACY_TYPE, ORDERS, KeyPair, b58encode, did_document
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec

from sidecar.auth.did_keys import (
    PublicKey,
    atproto_signing_key,
    base58btc_decode,
    decode_multikey,
    decode_verification_method,
)
from sidecar.errors import DidResolutionError, InvalidPublicKey

DID = "did:plc:abcdefghijklmnopqrstuvwx"
MESSAGE = b"header.payload"
ALGS = [ES256K, ES256]

# base58btc


@pytest.mark.parametrize(
    ("text", "data"),
    [
        ("", b""),
        ("1", b"\x00"),
        ("111", b"\x00\x00\x00"),
        ("2g", b"a"),
        ("StV1DL6CwTryKyV", b"hello world"),
        ("1112", b"\x00\x00\x00\x01"),
    ],
)
def test_base58btc_known_values(text: str, data: bytes) -> None:
    """Known base58btc strings decode to their bytes, each leading '1' a zero byte."""
    assert base58btc_decode(text) == data


def test_base58btc_round_trips_random_bytes() -> None:
    """Whatever the test-side encoder makes, including leading zeros, decodes back."""
    for size in range(40):
        data = b"\x00" * (size % 4) + secrets.token_bytes(size)
        assert base58btc_decode(b58encode(data)) == data


@pytest.mark.parametrize("text", ["0", "O", "I", "l", "abc+", "z z", "é"])
def test_base58btc_refuses_characters_outside_the_alphabet(text: str) -> None:
    """0, O, I, l and anything not in the Bitcoin alphabet are InvalidPublicKey."""
    with pytest.raises(InvalidPublicKey):
        base58btc_decode(text)


# Multikey


@pytest.mark.parametrize("alg", ALGS)
def test_multikey_decodes_to_the_compressed_point(alg: str) -> None:
    """A Multikey of each curve decodes to its algorithm and its compressed point."""
    pair = KeyPair.generate(alg)
    assert decode_multikey(pair.multikey()) == PublicKey(alg=alg, point=pair.point())


@pytest.mark.parametrize(
    ("make", "why"),
    [
        (lambda p: "z" + b58encode(b"\xe7\x01" + p.point(compressed=False)), "uncompressed"),
        (lambda p: "z" + b58encode(b"\xed\x01" + secrets.token_bytes(32)), "ed25519 prefix"),
        (lambda p: "z" + b58encode(p.point()), "no prefix"),
        (lambda p: "z" + b58encode(b"\xe7\x01" + p.point()[:-1]), "short point"),
        (lambda p: p.multikey()[1:], "no multibase prefix"),
        (lambda p: "b" + p.multikey()[1:], "base32 prefix"),
        (lambda p: "z" + "2" * 200, "too long"),
        (lambda p: None, "missing"),
        (lambda p: 42, "not a string"),
    ],
)
def test_multikey_refuses_malformed_keys(make: object, why: str) -> None:
    """Bad prefixes, bad lengths, bad encodings and non-strings are InvalidPublicKey."""
    pair = KeyPair.generate(ES256K)
    with pytest.raises(InvalidPublicKey):
        decode_multikey(make(pair))  # type: ignore[operator]


@pytest.mark.parametrize("alg", ALGS)
def test_multikey_refuses_a_point_off_the_curve(alg: str) -> None:
    """33 well-formed bytes that are no point of the curve are InvalidPublicKey."""
    prefix = {ES256K: b"\xe7\x01", ES256: b"\x80\x24"}[alg]
    # About half of all x coordinates have no point; try until one of them.
    for x in range(2, 200):
        candidate = "z" + b58encode(prefix + b"\x02" + x.to_bytes(32, "big"))
        try:
            decode_multikey(candidate)
        except InvalidPublicKey:
            return
    pytest.fail("no x coordinate off the curve found")


# Verification methods


@pytest.mark.parametrize("alg", ALGS)
@pytest.mark.parametrize("compressed", [True, False])
def test_legacy_method_decodes_like_the_multikey(alg: str, compressed: bool) -> None:
    """A legacy Ecdsa*VerificationKey2019 method, compressed or not, is the same key."""
    pair = KeyPair.generate(alg)
    method = {
        "type": LEGACY_TYPE[alg],
        "publicKeyMultibase": "z" + b58encode(pair.point(compressed=compressed)),
    }
    assert decode_verification_method(method) == decode_multikey(pair.multikey())


@pytest.mark.parametrize("kind", ["JsonWebKey2020", "Ed25519VerificationKey2020", None, "multikey"])
def test_unsupported_method_type_is_refused(kind: str | None) -> None:
    """A method of a type other than Multikey or the two legacy types is InvalidPublicKey."""
    pair = KeyPair.generate(ES256K)
    with pytest.raises(InvalidPublicKey):
        decode_verification_method({"type": kind, "publicKeyMultibase": pair.multikey()})


@pytest.mark.parametrize("method_id", ["#atproto", f"{DID}#atproto"])
def test_atproto_key_is_found_by_relative_or_absolute_id(method_id: str) -> None:
    """The #atproto method is found under either form of its id, after other methods."""
    pair, other = KeyPair.generate(ES256), KeyPair.generate(ES256)
    document = did_document(DID, pair)
    document["verificationMethod"] = [
        {"id": f"{DID}#other", "type": "Multikey", "publicKeyMultibase": other.multikey()},
        {**document["verificationMethod"][0], "id": method_id},
    ]
    assert atproto_signing_key(DID, document) == decode_multikey(pair.multikey())


@pytest.mark.parametrize(
    "change",
    [
        lambda d: d.update(id="did:plc:someoneelse0000000000000"),
        lambda d: d.pop("id"),
        lambda d: d.pop("verificationMethod"),
        lambda d: d.update(verificationMethod={"id": "#atproto"}),
        lambda d: d["verificationMethod"][0].update(id="#atproto_label"),
        lambda d: d.update(verificationMethod=["#atproto"]),
    ],
)
def test_document_without_a_usable_atproto_method_is_refused(change: object) -> None:
    """A document of another DID, or without an #atproto method, is DidResolutionError."""
    document = did_document(DID, KeyPair.generate(ES256K))
    change(document)  # type: ignore[operator]
    with pytest.raises(DidResolutionError):
        atproto_signing_key(DID, document)


@pytest.mark.parametrize("document", [None, [], "did", 1])
def test_a_document_that_is_no_object_is_refused(document: object) -> None:
    """A document that is not a JSON object is DidResolutionError."""
    with pytest.raises(DidResolutionError):
        atproto_signing_key(DID, document)


# Signatures


@pytest.mark.parametrize("alg", ALGS)
@pytest.mark.parametrize("high_s", [False, True])
def test_signature_verifies_with_low_or_high_s(alg: str, high_s: bool) -> None:
    """A raw r||s signature verifies whether its S is low or high, as atproto allows."""
    pair = KeyPair.generate(alg)
    key = decode_multikey(pair.multikey())
    assert key.verify(alg, MESSAGE, pair.sign(MESSAGE, high_s=high_s)) is True


@pytest.mark.parametrize("alg", ALGS)
def test_signature_over_other_bytes_or_by_another_key_fails(alg: str) -> None:
    """A signature fails over a changed message, or under another key of the same curve."""
    pair = KeyPair.generate(alg)
    signature = pair.sign(MESSAGE)
    key = decode_multikey(pair.multikey())
    other = decode_multikey(KeyPair.generate(alg).multikey())
    assert key.verify(alg, MESSAGE + b"x", signature) is False
    assert other.verify(alg, MESSAGE, signature) is False


def test_signature_under_the_other_algorithm_fails() -> None:
    """A JWT alg that names the other curve never verifies, even with a good signature."""
    pair = KeyPair.generate(ES256K)
    key = decode_multikey(pair.multikey())
    assert key.verify(ES256, MESSAGE, pair.sign(MESSAGE)) is False


@pytest.mark.parametrize("alg", ALGS)
def test_malformed_signatures_fail(alg: str) -> None:
    """Signatures of the wrong length, DER-encoded, zero, or with r or s past the order fail."""
    pair = KeyPair.generate(alg)
    key = decode_multikey(pair.multikey())
    good = pair.sign(MESSAGE)
    der = pair.private.sign(MESSAGE, ec.ECDSA(hashes.SHA256()))
    order = ORDERS[alg].to_bytes(32, "big")
    for signature in (
        good[:-1],
        good + b"\0",
        der,
        b"\0" * 64,
        order + good[32:],
        good[:32] + order,
    ):
        assert key.verify(alg, MESSAGE, signature) is False
    assert key.verify(alg, MESSAGE, good) is True
