"""Unit tests for ``sidecar.crypto``: tokens, KEK parsing, envelopes and the keyring."""

from __future__ import annotations

import base64
import hashlib
import re

import nacl.utils
import pytest
from nacl.bindings import crypto_aead_xchacha20poly1305_ietf_encrypt

from sidecar.crypto import (
    TOKEN_PREFIX,
    Kek,
    Keyring,
    encode_kek,
    generate_kek,
    generate_token,
    looks_like_token,
    parse_kek,
)
from sidecar.errors import ConfigError, EncryptionUnavailable, EnvelopeError
from sidecar.signing.tokens import OpenedTokenCache

DID = "did:plc:ewvi7nxzyoun6zhxrhs64oiz"
NAME = "orders-webhook"
SETTING = "SIDECAR_KEK"

# A fixed, recognisable key so that leaks are easy to search for in every spelling.
KEY = bytes(range(1, 33))
KEY_HEX = KEY.hex()
KEY_B64URL = base64.urlsafe_b64encode(KEY).rstrip(b"=").decode()
KEY_B64 = base64.b64encode(KEY).decode()

ENVELOPE_RE = re.compile(
    r"wsn1\.(?P<kid>[A-Za-z0-9_-]{16})\.(?P<nonce>[A-Za-z0-9_-]{32})\.(?P<sealed>[A-Za-z0-9_-]+)"
)


def b64url(data: bytes) -> str:
    """Encode unpadded base64url, independently of the module under test."""
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def new_kek() -> Kek:
    """Return a fresh random Kek."""
    return Kek(generate_kek())


def replace_char(text: str, index: int) -> str:
    """Return ``text`` with the character at ``index`` swapped for another base64url one."""
    new = "A" if text[index] != "A" else "B"
    return text[:index] + new + text[index + 1 :]


def spellings(key: bytes) -> list[str]:
    """Every way a key's bytes could leak into text."""
    return [
        key.hex(),
        key.hex().upper(),
        b64url(key),
        base64.b64encode(key).decode(),
        repr(key),
        key.decode("latin-1"),
    ]


# Tokens


def test_token_shape() -> None:
    """A token is the prefix and 32 base64url characters, 36 in all, and looks like a token."""
    token = generate_token()
    assert token.startswith(TOKEN_PREFIX)
    assert TOKEN_PREFIX == "wsk_"
    assert len(token) == 36
    assert re.fullmatch(r"wsk_[A-Za-z0-9_-]{32}", token)
    assert looks_like_token(token)


def test_token_carries_24_random_bytes() -> None:
    """The body of a token is canonical unpadded base64url of exactly 24 bytes."""
    body = generate_token().removeprefix(TOKEN_PREFIX)
    raw = base64.urlsafe_b64decode(body)
    assert len(raw) == 24
    assert b64url(raw) == body


def test_tokens_are_unique() -> None:
    """Many generated tokens are all different."""
    tokens = {generate_token() for _ in range(1000)}
    assert len(tokens) == 1000


@pytest.mark.parametrize(
    "value",
    [
        "",
        "wsk_",
        "wsk_" + "A" * 31,
        "wsk_" + "A" * 33,
        "wsx_" + "A" * 32,
        "WSK_" + "A" * 32,
        "wsk_" + "A" * 31 + "+",
        "wsk_" + "A" * 31 + "=",
        "wsk_" + "A" * 31 + "\u0661",  # an Arabic-Indic digit, which \w or \d would accept
        "wsk_" + "A" * 32 + "\n",
        " wsk_" + "A" * 32,
    ],
)
def test_looks_like_token_rejects(value: str) -> None:
    """Strings of the wrong prefix, length or alphabet do not look like tokens."""
    assert not looks_like_token(value)


# KEKs


def test_generate_kek_is_32_random_bytes() -> None:
    """A generated KEK is 32 bytes and two are different."""
    first, second = generate_kek(), generate_kek()
    assert len(first) == 32
    assert first != second


def test_encode_kek_round_trips() -> None:
    """``encode_kek`` gives 43 base64url characters that parse back to the same key."""
    key = generate_kek()
    text = encode_kek(key)
    assert len(text) == 43
    assert re.fullmatch(r"[A-Za-z0-9_-]{43}", text)
    assert parse_kek(text, setting=SETTING).key == key


def test_encode_kek_rejects_wrong_length() -> None:
    """``encode_kek`` refuses bytes that are not a 32-byte key."""
    with pytest.raises(ValueError, match="32 bytes"):
        encode_kek(bytes(31))


def test_kid_is_sha256_prefix() -> None:
    """The kid is the first 16 characters of unpadded base64url(SHA-256(key))."""
    expected = b64url(hashlib.sha256(KEY).digest())[:16]
    assert Kek(KEY).kid == expected


def test_kek_equality_is_by_key() -> None:
    """Keks with the same bytes are equal and hash alike; different bytes are unequal."""
    assert Kek(KEY) == Kek(bytes(KEY))
    assert hash(Kek(KEY)) == hash(Kek(bytes(KEY)))
    assert Kek(KEY) != new_kek()
    assert Kek(KEY) != KEY


def test_kek_is_immutable() -> None:
    """A Kek's key and kid cannot be reassigned."""
    kek = Kek(KEY)
    with pytest.raises(AttributeError):
        kek.key = bytes(32)  # type: ignore[misc]  # proving the frozen dataclass refuses this
    with pytest.raises(AttributeError):
        kek.kid = "x"  # type: ignore[misc]  # idem
    assert kek.key == KEY


def test_kek_rejects_wrong_length() -> None:
    """A Kek cannot be built from anything but 32 bytes."""
    with pytest.raises(ValueError, match="32 bytes"):
        Kek(bytes(range(1, 32)))


def test_kek_repr_and_str_hide_the_key() -> None:
    """``repr`` and ``str`` of a Kek show the kid and no spelling of the key."""
    kek = Kek(KEY)
    for text in (repr(kek), str(kek), f"{kek}"):
        assert kek.kid in text
        for spelling in spellings(KEY):
            assert spelling not in text


def test_parse_kek_accepts_three_spellings() -> None:
    """Hex (either case), base64url and padded standard base64 of one key give equal Keks."""
    parsed = [
        parse_kek(text, setting=SETTING) for text in (KEY_HEX, KEY_HEX.upper(), KEY_B64URL, KEY_B64)
    ]
    assert all(kek == Kek(KEY) for kek in parsed)
    assert {kek.kid for kek in parsed} == {Kek(KEY).kid}


def test_parse_kek_accepts_both_base64_alphabets_where_they_differ() -> None:
    """A key whose encodings contain '-', '_', '+' and '/' parses from both base64 forms."""
    key = bytes([0xFB, 0xFF, 0xBF] * 10 + [1, 2])
    url, std = b64url(key), base64.b64encode(key).decode()
    assert {"-", "_"} <= set(url)
    assert {"+", "/"} <= set(std)
    assert parse_kek(url, setting=SETTING) == parse_kek(std, setting=SETTING) == Kek(key)


@pytest.mark.parametrize("padding", ["\n", "  ", "\r\n", "\t", " \n"])
def test_parse_kek_strips_surrounding_whitespace(padding: str) -> None:
    """Whitespace and a trailing newline, as in a key file, are ignored."""
    assert parse_kek(padding + KEY_B64URL + padding, setting=SETTING) == Kek(KEY)
    assert parse_kek(KEY_HEX + padding, setting=SETTING) == Kek(KEY)


BAD_KEKS = {
    "empty": "",
    "only whitespace": " \n",
    "hex 63": KEY_HEX[:63],
    "hex 65": KEY_HEX + "a",
    "hex with a non-hex letter": "g" + KEY_HEX[1:],
    "hex with 0x prefix": "0x" + KEY_HEX[2:],
    "hex with inner space": KEY_HEX[:32] + " " + KEY_HEX[33:],
    "base64url 42": KEY_B64URL[:42],
    "base64url with '+'": "+" + KEY_B64URL[1:],
    "base64url with '/'": "/" + KEY_B64URL[1:],
    "base64url not canonical": KEY_B64URL[:42] + "F",
    "padded base64url": b64url(bytes([0xFB, 0xFF, 0xBF] * 10 + [1, 2])) + "=",
    "base64 without padding but 44 chars": KEY_B64[:43] + "A",
    "base64 with two '='": KEY_B64[:42] + "==",
    "base64 not canonical": KEY_B64[:42] + "F=",
    "base64 45": KEY_B64 + "=",
    "raw-looking 32 chars": "a" * 32,
    "passphrase": "correct horse battery staple",
    "non-ASCII digits": "\u0661" * 64,
    "all zeros hex": "0" * 64,
    "all zeros base64url": "A" * 43,
    "all zeros base64": "A" * 43 + "=",
}


@pytest.mark.parametrize("text", BAD_KEKS.values(), ids=BAD_KEKS.keys())
def test_parse_kek_rejects(text: str) -> None:
    """Malformed or all-zero keys raise ConfigError naming the setting, without the value."""
    with pytest.raises(ConfigError) as caught:
        parse_kek(text, setting="SIDECAR_KEK_FILE")
    assert caught.value.setting == "SIDECAR_KEK_FILE"
    message = str(caught.value)
    assert message.startswith("SIDECAR_KEK_FILE: ")
    if text.strip():
        assert text.strip() not in message


def test_parse_kek_error_never_contains_the_key() -> None:
    """A near-miss real key (one character too many) is not echoed in any spelling."""
    with pytest.raises(ConfigError) as caught:
        parse_kek(KEY_HEX + "0", setting=SETTING)
    message = str(caught.value)
    for spelling in spellings(KEY):
        assert spelling not in message
    assert KEY_HEX[:16] not in message


def test_parse_kek_padded_base64url_is_rejected_even_when_alphabets_agree() -> None:
    """The 44-character form must be standard base64: a padded value with '-' or '_' fails."""
    key = bytes([0xFB, 0xFF, 0xBF] * 10 + [1, 2])
    padded_url = base64.urlsafe_b64encode(key).decode()
    assert len(padded_url) == 44
    with pytest.raises(ConfigError, match="standard base64"):
        parse_kek(padded_url, setting=SETTING)


# Keyring: construction and repr


def test_keyring_kids_active_first() -> None:
    """``kids`` lists the active kid first, then previous kids in the order given."""
    active, old1, old2 = new_kek(), new_kek(), new_kek()
    ring = Keyring(active, [old1, old2])
    assert ring.kids == (active.kid, old1.kid, old2.kid)
    assert ring.active_kid == active.kid
    assert ring.can_seal


def test_keyring_drops_active_key_repeated_as_previous() -> None:
    """A previous key equal to the active key is ignored rather than rejected."""
    active, old = new_kek(), new_kek()
    ring = Keyring(active, [old, Kek(active.key)])
    assert ring.kids == (active.kid, old.kid)


def test_keyring_rejects_duplicate_previous() -> None:
    """The same previous key listed twice raises ConfigError for SIDECAR_KEK_PREVIOUS."""
    old = new_kek()
    with pytest.raises(ConfigError) as caught:
        Keyring(new_kek(), [old, Kek(old.key)])
    assert caught.value.setting == "SIDECAR_KEK_PREVIOUS"


def test_keyring_allows_eight_previous() -> None:
    """Exactly eight previous keys are accepted."""
    ring = Keyring(new_kek(), [new_kek() for _ in range(8)])
    assert len(ring.kids) == 9
    assert Keyring.MAX_PREVIOUS == 8


def test_keyring_rejects_nine_previous() -> None:
    """More than eight previous keys raise ConfigError for SIDECAR_KEK_PREVIOUS."""
    with pytest.raises(ConfigError) as caught:
        Keyring(new_kek(), [new_kek() for _ in range(9)])
    assert caught.value.setting == "SIDECAR_KEK_PREVIOUS"


def test_keyring_repr_shows_kids_only() -> None:
    """``repr`` of a Keyring names the kids and no spelling of any key."""
    active, old = Kek(KEY), new_kek()
    text = repr(Keyring(active, [old]))
    assert active.kid in text
    assert old.kid in text
    for key in (active.key, old.key):
        for spelling in spellings(key):
            assert spelling not in text
    assert "None" in repr(Keyring(None, [old]))


# Keyring: seal and open


def test_seal_open_round_trip() -> None:
    """A sealed token opens back to the same token for the same owner and name."""
    ring = Keyring(new_kek())
    token = generate_token()
    assert ring.open(ring.seal(token, did=DID, name=NAME), did=DID, name=NAME) == token


def test_seal_open_round_trip_non_ascii() -> None:
    """Any UTF-8 text survives sealing, and a did:web with dots is a valid owner."""
    ring = Keyring(new_kek())
    did, name, text = "did:web:example.com", "a.b_c-1", "sécret ✓"
    assert ring.open(ring.seal(text, did=did, name=name), did=did, name=name) == text


def test_two_seals_differ() -> None:
    """Sealing the same token twice gives different nonces and ciphertexts."""
    ring = Keyring(new_kek())
    token = generate_token()
    first = ENVELOPE_RE.fullmatch(ring.seal(token, did=DID, name=NAME))
    second = ENVELOPE_RE.fullmatch(ring.seal(token, did=DID, name=NAME))
    assert first is not None
    assert second is not None
    assert first["nonce"] != second["nonce"]
    assert first["sealed"] != second["sealed"]


def test_envelope_format() -> None:
    """An envelope is wsn1, the active kid, a 24-byte nonce and ciphertext plus a 16-byte tag."""
    kek = new_kek()
    token = generate_token()
    match = ENVELOPE_RE.fullmatch(Keyring(kek).seal(token, did=DID, name=NAME))
    assert match is not None
    assert match["kid"] == kek.kid
    assert len(base64.urlsafe_b64decode(match["nonce"])) == 24
    sealed = base64.urlsafe_b64decode(match["sealed"] + "=" * (-len(match["sealed"]) % 4))
    assert len(sealed) == len(token) + 16


def test_envelope_hides_the_token() -> None:
    """The envelope contains neither the token, its body, nor any base64 of it."""
    token = generate_token()
    envelope = Keyring(new_kek()).seal(token, did=DID, name=NAME)
    body = token.removeprefix(TOKEN_PREFIX)
    for leak in (
        token,
        body,
        b64url(token.encode()),
        base64.b64encode(token.encode()).decode(),
        token.encode().hex(),
    ):
        assert leak not in envelope


@pytest.mark.parametrize(
    ("did", "name"),
    [
        ("did:plc:someoneelse000000000000", NAME),
        (DID, "other-webhook"),
        (DID, NAME.upper()),
        (DID + ".", NAME),
    ],
)
def test_open_with_other_owner_or_name_fails(did: str, name: str) -> None:
    """An envelope opened for another DID or secret name raises EnvelopeError."""
    ring = Keyring(new_kek())
    envelope = ring.seal(generate_token(), did=DID, name=NAME)
    with pytest.raises(EnvelopeError, match="authentication"):
        ring.open(envelope, did=did, name=name)


def test_envelope_cannot_move_where_dots_shift_between_did_and_name() -> None:
    """An envelope of did:web:a.b + c does not open as did:web:a + b.c (same dotted form)."""
    ring = Keyring(new_kek())
    envelope = ring.seal(generate_token(), did="did:web:a.b", name="c")
    with pytest.raises(EnvelopeError, match="authentication"):
        ring.open(envelope, did="did:web:a", name="b.c")


def test_envelope_error_never_contains_envelope_or_token() -> None:
    """Messages of a failed open carry neither the envelope, its parts, nor the token."""
    ring = Keyring(new_kek())
    token = generate_token()
    envelope = ring.seal(token, did=DID, name=NAME)
    _, _, nonce, sealed = envelope.split(".")
    for bad in (envelope, envelope[:-4], envelope + "x"):
        with pytest.raises(EnvelopeError) as caught:
            ring.open(bad, did="did:plc:other", name=NAME)
        message = str(caught.value)
        for leak in (envelope, nonce, sealed, token, token.removeprefix(TOKEN_PREFIX)):
            assert leak not in message


@pytest.mark.parametrize(("part", "index"), [(1, 5), (2, 5), (3, 5), (3, -5)])
def test_tampered_envelope_fails(part: int, index: int) -> None:
    """Changing one character of the kid, nonce or ciphertext makes open fail."""
    ring = Keyring(new_kek())
    parts = ring.seal(generate_token(), did=DID, name=NAME).split(".")
    parts[part] = replace_char(parts[part], index)
    with pytest.raises(EnvelopeError):
        ring.open(".".join(parts), did=DID, name=NAME)


def test_relabelled_kid_fails_authentication() -> None:
    """An envelope relabelled with another key's kid in the ring fails authentication."""
    first, second = new_kek(), new_kek()
    ring = Keyring(first, [second])
    parts = ring.seal(generate_token(), did=DID, name=NAME).split(".")
    parts[1] = second.kid
    with pytest.raises(EnvelopeError, match="authentication"):
        ring.open(".".join(parts), did=DID, name=NAME)


def test_open_rejects_non_utf8_plaintext() -> None:
    """A genuine envelope whose plaintext is not UTF-8 raises EnvelopeError without chaining it."""
    kek = new_kek()
    nonce = nacl.utils.random(24)
    aad = b"\x00".join((b"wsn1", kek.kid.encode(), DID.encode(), NAME.encode()))
    sealed = crypto_aead_xchacha20poly1305_ietf_encrypt(b"\xff\xfe token", aad, nonce, kek.key)
    envelope = f"wsn1.{kek.kid}.{b64url(nonce)}.{b64url(sealed)}"
    with pytest.raises(EnvelopeError, match="UTF-8") as caught:
        Keyring(kek).open(envelope, did=DID, name=NAME)
    # The UnicodeDecodeError holds the plaintext; it must not travel with the error.
    assert caught.value.__cause__ is None
    assert caught.value.__context__ is None


def _malformed(kek: Kek) -> dict[str, str]:
    """Envelopes that are wrong in shape, each under a name saying how."""
    nonce = b64url(bytes(24))
    sealed = b64url(bytes(40))
    kid = kek.kid
    return {
        "empty": "",
        "prefix only": "wsn1",
        "wrong version": f"wsn2.{kid}.{nonce}.{sealed}",
        "upper-case version": f"WSN1.{kid}.{nonce}.{sealed}",
        "three parts": f"wsn1.{kid}.{nonce}",
        "five parts": f"wsn1.{kid}.{nonce}.{sealed}.x",
        "empty kid": f"wsn1..{nonce}.{sealed}",
        "short kid": f"wsn1.{kid[:15]}.{nonce}.{sealed}",
        "kid with bad char": f"wsn1.{kid[:15]}!.{nonce}.{sealed}",
        "bad char in nonce": f"wsn1.{kid}.{nonce[:-1]}!.{sealed}",
        "padded nonce": f"wsn1.{kid}.{base64.urlsafe_b64encode(bytes(23)).decode()}.{sealed}",
        "standard base64 nonce": f"wsn1.{kid}.{nonce[:-1]}+.{sealed}",
        "nonce 12 bytes": f"wsn1.{kid}.{b64url(bytes(12))}.{sealed}",
        "nonce 25 bytes": f"wsn1.{kid}.{b64url(bytes(25))}.{sealed}",
        "bad char in ciphertext": f"wsn1.{kid}.{nonce}.{sealed[:-1]}*",
        "impossible base64 length": f"wsn1.{kid}.{nonce}.{sealed}AAA",
        "non-canonical ciphertext": f"wsn1.{kid}.{nonce}.{b64url(bytes(17))[:-1]}B",
        "ciphertext shorter than tag": f"wsn1.{kid}.{nonce}.{b64url(bytes(15))}",
        "whitespace": f" wsn1.{kid}.{nonce}.{sealed}",
    }


MALFORMED_NAMES = list(_malformed(Kek(KEY)))


@pytest.mark.parametrize("case", MALFORMED_NAMES)
def test_open_rejects_malformed(case: str) -> None:
    """Envelopes of the wrong shape, alphabet or sizes raise EnvelopeError that omits them."""
    kek = new_kek()
    envelope = _malformed(kek)[case]
    ring = Keyring(kek)
    with pytest.raises(EnvelopeError) as caught:
        ring.open(envelope, did=DID, name=NAME)
    # Shape problems are reported as such, before any key is looked up or tried.
    assert "malformed" in str(caught.value)
    if envelope:
        assert envelope not in str(caught.value)
    with pytest.raises(EnvelopeError):
        ring.needs_rewrap(envelope)


def test_unknown_kid_fails() -> None:
    """An envelope naming a kid the ring lacks raises EnvelopeError saying so."""
    envelope = Keyring(new_kek()).seal(generate_token(), did=DID, name=NAME)
    with pytest.raises(EnvelopeError, match="not in the keyring"):
        Keyring(new_kek()).open(envelope, did=DID, name=NAME)


# Rotation


def test_rotation_opens_old_and_seals_new() -> None:
    """With the old key as previous, old envelopes open and new ones use the new kid."""
    old, new = new_kek(), new_kek()
    token = generate_token()
    old_envelope = Keyring(old).seal(token, did=DID, name=NAME)

    ring = Keyring(new, [old])
    assert ring.open(old_envelope, did=DID, name=NAME) == token
    new_envelope = ring.seal(token, did=DID, name=NAME)
    assert new_envelope.split(".")[1] == new.kid
    assert ring.open(new_envelope, did=DID, name=NAME) == token


def test_needs_rewrap() -> None:
    """Only envelopes under a kid other than the active one need re-wrapping."""
    old, new = new_kek(), new_kek()
    old_envelope = Keyring(old).seal(generate_token(), did=DID, name=NAME)
    ring = Keyring(new, [old])
    assert ring.needs_rewrap(old_envelope)
    assert not ring.needs_rewrap(ring.seal(generate_token(), did=DID, name=NAME))
    assert not Keyring(old).needs_rewrap(old_envelope)


def test_needs_rewrap_false_without_active_key() -> None:
    """With no active key there is nothing to re-wrap under, so nothing needs it."""
    old = new_kek()
    envelope = Keyring(old).seal(generate_token(), did=DID, name=NAME)
    assert not Keyring(None, [old]).needs_rewrap(envelope)


def test_ring_without_old_key_cannot_open() -> None:
    """Once the old key leaves the ring, its envelopes no longer open."""
    old, new = new_kek(), new_kek()
    envelope = Keyring(old).seal(generate_token(), did=DID, name=NAME)
    with pytest.raises(EnvelopeError):
        Keyring(new).open(envelope, did=DID, name=NAME)


def test_no_active_key_opens_but_cannot_seal() -> None:
    """Without an active key, seal raises EncryptionUnavailable but previous keys still open."""
    old = new_kek()
    token = generate_token()
    envelope = Keyring(old).seal(token, did=DID, name=NAME)
    ring = Keyring(None, [old])
    assert not ring.can_seal
    assert ring.active_kid is None
    assert ring.kids == (old.kid,)
    with pytest.raises(EncryptionUnavailable):
        ring.seal(token, did=DID, name=NAME)
    assert ring.open(envelope, did=DID, name=NAME) == token


def test_empty_keyring_cannot_seal() -> None:
    """A keyring with no keys at all refuses to seal and has no kids."""
    ring = Keyring(None)
    assert ring.kids == ()
    with pytest.raises(EncryptionUnavailable):
        ring.seal(generate_token(), did=DID, name=NAME)


# OpenedTokenCache


def test_cache_returns_the_right_tokens() -> None:
    """Each envelope opens to its own token, and a repeat open is served from the cache."""
    ring = Keyring(new_kek())
    cache = OpenedTokenCache(ring)
    tokens = {name: generate_token() for name in ("a", "b")}
    envelopes = {name: ring.seal(tokens[name], did=DID, name=name) for name in tokens}
    for _ in range(3):
        for name, envelope in envelopes.items():
            assert cache.open(envelope, did=DID, name=name) == tokens[name]
    assert len(cache) == 2


def test_cache_does_not_cache_failures() -> None:
    """A failed open leaves no entry behind, and the next correct open succeeds."""
    ring = Keyring(new_kek())
    cache = OpenedTokenCache(ring)
    token = generate_token()
    envelope = ring.seal(token, did=DID, name=NAME)
    for _ in range(2):
        with pytest.raises(EnvelopeError):
            cache.open(envelope, did="did:plc:other", name=NAME)
    with pytest.raises(EnvelopeError):
        cache.open("not an envelope", did=DID, name=NAME)
    assert len(cache) == 0
    assert cache.open(envelope, did=DID, name=NAME) == token
    assert len(cache) == 1


def test_cache_hit_still_checks_owner_and_name() -> None:
    """A cached envelope opened for another owner or name still fails."""
    ring = Keyring(new_kek())
    cache = OpenedTokenCache(ring)
    envelope = ring.seal(generate_token(), did=DID, name=NAME)
    cache.open(envelope, did=DID, name=NAME)
    with pytest.raises(EnvelopeError):
        cache.open(envelope, did="did:plc:other", name=NAME)
    with pytest.raises(EnvelopeError):
        cache.open(envelope, did=DID, name="other")


def test_cache_is_bounded() -> None:
    """The cache never holds more than ``max_entries`` tokens, yet every open stays correct."""
    ring = Keyring(new_kek())
    cache = OpenedTokenCache(ring, max_entries=2)
    tokens = [generate_token() for _ in range(5)]
    envelopes = [ring.seal(token, did=DID, name=NAME) for token in tokens]
    for token, envelope in zip(tokens, envelopes, strict=True):
        assert cache.open(envelope, did=DID, name=NAME) == token
    assert len(cache) == 2
    assert cache.open(envelopes[0], did=DID, name=NAME) == tokens[0]


def test_cache_rejects_non_positive_size() -> None:
    """A cache of zero entries is a configuration mistake and is refused."""
    with pytest.raises(ValueError, match="max_entries"):
        OpenedTokenCache(Keyring(None), max_entries=0)
