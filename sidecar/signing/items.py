"""What a sign request names: the checked target of a query or of a batch item, and
the items of a batch, each checked and decoded.

Nothing here knows HTTP; ``sidecar.signing.api`` hands in the query's fields or
the batch's body and turns ``InvalidInput`` into an answer.
"""

from __future__ import annotations

import binascii
import functools
from typing import TYPE_CHECKING, Any, Final

import orjson

from sidecar.errors import InvalidInput
from sidecar.names import validate_did, validate_name
from sidecar.signing import schemes
from sidecar.signing.signer import SignTarget

if TYPE_CHECKING:
    from collections.abc import Mapping

MAX_BATCH_ITEMS: Final = 1000
_ITEM_FIELDS: Final = frozenset({"did", "name", "scheme", "id", "timestamp", "body_b64"})


_OPTIONAL_TEXT: Final = (str, type(None))


@functools.lru_cache(maxsize=65536)
def _checked_ref(did: str, name: str) -> tuple[str, str]:
    """``(did, name)`` once both are checked; a dispatcher asks for the same few again
    and again, and two regex matches per request are a visible share of it.
    Failures raise and so are never cached."""
    return validate_did(did), validate_name(name)


def sign_target(fields: Mapping[str, Any]) -> SignTarget:
    """Validate the fields of one sign request (query or batch item)."""
    did = fields.get("did")
    name = fields.get("name")
    scheme = fields.get("scheme")
    msg_id = fields.get("id")
    timestamp = fields.get("timestamp")
    if did is None:
        raise InvalidInput("did is required")
    if name is None:
        raise InvalidInput("name is required")
    for key, value in (("did", did), ("name", name), ("scheme", scheme), ("id", msg_id)):
        if not isinstance(value, _OPTIONAL_TEXT):
            raise InvalidInput(f"{key} must be a string")
    if timestamp is not None and (
        isinstance(timestamp, bool) or not isinstance(timestamp, str | int)
    ):
        raise InvalidInput("timestamp must be unix seconds")
    did, name = _checked_ref(did, name)
    return SignTarget(
        did=did,
        name=name,
        scheme=schemes.parse_scheme(scheme),
        msg_id=None if msg_id is None else schemes.check_msg_id(msg_id),
        timestamp=None if timestamp is None else schemes.parse_timestamp(timestamp),
    )


# typed: 1 and True (or 1.0) are equal keys, and only 1 is a timestamp.
@functools.lru_cache(maxsize=4096, typed=True)
def _item_target(
    did: object, name: object, scheme: object, msg_id: object, timestamp: object
) -> SignTarget:
    """The target of a batch item's fields, cached by their values: a batch names the
    same few secrets again and again, and checking each item anew cost more than
    its HMAC. Failures raise and so are never cached."""
    fields = {"did": did, "name": name, "scheme": scheme, "id": msg_id, "timestamp": timestamp}
    return sign_target(fields)


def _known_fields(fields: dict[str, Any]) -> None:
    """Refuse an item with a field no item has."""
    if not fields.keys() <= _ITEM_FIELDS:
        raise InvalidInput(f"unknown field; expected only {', '.join(sorted(_ITEM_FIELDS))}")


def _fields_target(fields: dict[str, Any]) -> SignTarget:
    """The target a batch item's fields name, its body aside."""
    try:
        return _item_target(
            fields.get("did"),
            fields.get("name"),
            fields.get("scheme"),
            fields.get("id"),
            fields.get("timestamp"),
        )
    except TypeError:
        # A field that is a list or an object cannot be a cache key; the
        # uncached check refuses it with its own message.
        return sign_target(fields)


# What ``dict.pop`` answers for an item without a body: not None, which is a body
# of the wrong type (JSON null) that must be put back as it was.
_ABSENT: Final = object()


class BatchItems:
    """Checks and decodes a batch's items, each body at most ``max_body_bytes``."""

    def __init__(self, max_body_bytes: int) -> None:
        self._max_body = max_body_bytes
        # The longest base64 text a body within the limit can take.
        self._max_body_b64 = (max_body_bytes + 2) // 3 * 4

    def all(self, items: list[Any]) -> tuple[list[SignTarget], list[bytes], dict[int, Exception]]:
        """The target and body of each valid item, in order, and why each other item
        (by its index) was refused.

        The loop is the batch's hot path, so an item of the usual shape is taken
        inline; any item it does not accept goes through ``one``, which
        accepts the same and says precisely what is wrong with the rest.
        """
        targets: list[SignTarget] = []
        bodies: list[bytes] = []
        refused: dict[int, Exception] = {}
        max_b64 = self._max_body_b64
        a2b = binascii.a2b_base64
        # The fields besides the body of the last item taken inline, and its target:
        # a batch names the same secret item after item, and comparing two small
        # dicts in C costs less than checking the fields again. Not with a
        # timestamp, since 1 == 1.0 == True there and only 1 is one.
        last_fields: dict[str, Any] | None = None
        last_target: SignTarget | None = None
        take_target, take_body = targets.append, bodies.append
        for item in items:
            if type(item) is dict:
                # Taken out to compare the rest; put back unless the item is signed.
                encoded = item.pop("body_b64", _ABSENT)
                try:
                    if type(encoded) is str and len(encoded) <= max_b64:
                        if item != last_fields or "timestamp" in item:
                            _known_fields(item)
                            last_target = _fields_target(item)
                            last_fields = item
                        body = a2b(encoded, strict_mode=True)
                        assert last_target is not None  # set with last_fields
                        take_target(last_target)
                        take_body(body)
                        continue
                except Exception:  # noqa: S110 - checked again, with its message, just below
                    pass
                if encoded is not _ABSENT:
                    item["body_b64"] = encoded
            try:
                target, body = self.one(item)
            except Exception as exc:
                # Its position: every item before it was either taken or refused.
                refused[len(targets) + len(refused)] = exc
            else:
                targets.append(target)
                bodies.append(body)
        return targets, bodies, refused

    def one(self, item: Any) -> tuple[SignTarget, bytes]:
        """The target and body of one item, or ``InvalidInput`` saying what is wrong."""
        if not isinstance(item, dict):
            raise InvalidInput("each item must be an object")
        _known_fields(item)
        encoded = item.get("body_b64")
        if not isinstance(encoded, str):
            raise InvalidInput("body_b64 is required and must be a base64 string")
        if len(encoded) > self._max_body_b64:
            raise InvalidInput(f"body is larger than {self._max_body} bytes")
        try:
            # strict_mode: what b64decode(validate=True) refuses, without its
            # regex pass over the text (half the cost of decoding a 1 KiB body).
            body = binascii.a2b_base64(encoded, strict_mode=True)
        except (binascii.Error, ValueError):
            raise InvalidInput("body_b64 is not valid base64") from None
        target = _fields_target(item)
        return target, body


def batch_items(raw: bytes) -> list[Any]:
    """The items of a batch request's body, or ``InvalidInput`` for the batch as a whole."""
    try:
        # orjson: a batch is up to 1000 base64 bodies, and it parses them
        # several times faster; it refuses invalid UTF-8, NaN and deep nesting
        # as malformed JSON too.
        document = orjson.loads(raw)
    except orjson.JSONDecodeError:
        raise InvalidInput("request body is not valid JSON") from None
    if not isinstance(document, dict) or not isinstance(document.get("items"), list):
        raise InvalidInput('request body must be {"items": [...]}')
    items: list[Any] = document["items"]
    if len(items) > MAX_BATCH_ITEMS:
        raise InvalidInput(f"at most {MAX_BATCH_ITEMS} items per batch")
    return items
