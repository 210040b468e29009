"""The ``Signer``: signatures and verifications with each secret's current token.

It knows nothing of HTTP: ``sidecar.signing.api`` parses requests into
``SignTarget``s and turns the answers and exceptions into responses.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from sidecar.errors import SecretNotFound
from sidecar.signing.schemes import TABLE

if TYPE_CHECKING:
    from sidecar.signing.reader import CoalescingReader
    from sidecar.signing.tokens import OpenedTokenCache
    from sidecar.storage.store import StoredEnvelope


# eq=False: a target is hashed by identity, in C. The API hands out one object per
# distinct set of fields (a cache), so a batch's items share a few targets, and
# grouping and counting them costs no Python call per item.
@dataclass(frozen=True, slots=True, eq=False)
class SignTarget:
    """The checked parameters of one signature: whose secret, which scheme, and
    the message id and timestamp when the caller fixed them."""

    did: str
    name: str
    scheme: str
    msg_id: str | None
    timestamp: int | None


class Signer:
    """Signs and verifies with each secret's current token; knows nothing of HTTP.

    The single-request path is one await (the coalesced read) and plain calls:
    every extra coroutine layer is a measurable cost per signature.
    """

    def __init__(self, reader: CoalescingReader, tokens: OpenedTokenCache) -> None:
        self._reader = reader
        self._tokens = tokens
        self.read = reader.get

    def _token(self, did: str, name: str, stored: StoredEnvelope | None) -> str:
        if stored is None:
            raise SecretNotFound(f"no secret named {name!r} for {did}")
        return self._tokens.open(stored.envelope, did=did, name=name)

    async def current(self, did: str, name: str) -> tuple[str, int]:
        """``(token, version)`` as stored now; raises if absent, unopenable or unreachable."""
        stored = await self._reader.get(did, name)
        token = self._token(did, name, stored)
        assert stored is not None  # _token raised otherwise
        return token, stored.version

    def sign(
        self, target: SignTarget, body: bytes, stored: StoredEnvelope | None
    ) -> dict[str, Any]:
        """The answer to one sign request: headers to send, name and version.

        ``target`` is checked (the API built it), so the scheme signs at once.
        """
        key = self._token(target.did, target.name, stored).encode()
        assert stored is not None  # _token raised otherwise
        headers = TABLE[target.scheme].sign(key, body, target.msg_id, target.timestamp, time.time)
        return {"headers": headers, "name": target.name, "version": stored.version}

    async def sign_many(
        self, targets: list[SignTarget], bodies: list[bytes]
    ) -> tuple[list[dict[str, Any] | Exception], bool]:
        """Sign ``bodies[i]`` for ``targets[i]``; a per-item failure is returned in its
        place, not raised. Also whether every item signed.

        The distinct targets are read in one coalesced read, joined as one waiter,
        and each one's secret is opened (checked against its own owner and name)
        once; then each target's items are signed together. Storage failures are
        raised: every item would fail the same way.
        """
        distinct = list(dict.fromkeys(targets))
        stored = await self._reader.get_many([(t.did, t.name) for t in distinct])
        keys: dict[SignTarget, tuple[bytes, int] | Exception] = {}
        for target, envelope in zip(distinct, stored, strict=True):
            try:
                key = self._token(target.did, target.name, envelope).encode()
            except Exception as exc:
                keys[target] = exc
            else:
                assert envelope is not None  # _token raised otherwise
                keys[target] = (key, envelope.version)
        if len(distinct) == 1:
            # The usual batch: one secret throughout, answered in order as it is.
            return _answers(distinct[0], keys[distinct[0]], bodies)
        positions: dict[SignTarget, list[int]] = {target: [] for target in distinct}
        for index, target in enumerate(targets):
            positions[target].append(index)
        answered: dict[int, dict[str, Any] | Exception] = {}
        all_signed = True
        for target, indices in positions.items():
            answers, signed = _answers(target, keys[target], [bodies[i] for i in indices])
            all_signed &= signed
            answered.update(zip(indices, answers, strict=True))
        return [answered[index] for index in range(len(targets))], all_signed


def _answers(
    target: SignTarget, key: tuple[bytes, int] | Exception, bodies: list[bytes]
) -> tuple[list[dict[str, Any] | Exception], bool]:
    """The answers to ``bodies`` signed for ``target`` with ``key`` (its secret and
    version, or why there is none); also whether each one signed."""
    if isinstance(key, Exception):
        return [key] * len(bodies), False
    secret, version = key
    scheme, name = TABLE[target.scheme], target.name
    msg_id, timestamp, now = target.msg_id, target.timestamp, time.time
    try:
        signed = scheme.sign_all(secret, bodies, msg_id, timestamp, now)
    except Exception:  # noqa: S110 - a scheme that raised: found again body by body below
        pass
    else:
        return [{"headers": headers, "name": name, "version": version} for headers in signed], True
    answers: list[dict[str, Any] | Exception] = []
    for body in bodies:
        try:
            headers = scheme.sign(secret, body, msg_id, timestamp, now)
        except Exception as exc:
            answers.append(exc)
        else:
            answers.append({"headers": headers, "name": name, "version": version})
    return answers, all(not isinstance(answer, Exception) for answer in answers)
