"""Who is calling: an ``Authorization`` header becomes a ``Caller``.

API keys are checked here, and atproto service JWTs through the
``BearerVerifier`` seam. Works on a plain header value, so it knows nothing of
aiohttp. Every failure is ``AuthenticationFailed`` with a short ``reason`` for
logs and metrics; the caller only ever learns that authentication is
required. An authenticated caller whose DID is not on the optional allow-list
is ``Forbidden``, whichever credential it used.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

import structlog

from sidecar.errors import Forbidden
from sidecar.wire import bearer_credential

if TYPE_CHECKING:
    from collections.abc import Sequence

    from sidecar.auth.api_keys import ApiKeys

log = structlog.get_logger("sidecar.auth")


@dataclass(frozen=True, slots=True)
class Caller:
    """An authenticated caller: ``did`` owns the secrets, ``actor`` goes in the audit log."""

    did: str
    actor: str


class BearerVerifier(Protocol):
    """A second credential type (atproto service JWTs) plugs in here."""

    def accepts(self, credential: str) -> bool: ...

    async def verify(self, credential: str, *, nsid: str) -> Caller: ...


class Authenticator:
    """Turns an ``Authorization`` header into a ``Caller``, then applies the allow-list.

    Raises ``AuthenticationFailed`` for bad credentials, and ``Forbidden`` for
    good ones whose DID is not in ``allowed_dids`` (when that is not None).
    """

    def __init__(
        self,
        api_keys: ApiKeys,
        verifiers: Sequence[BearerVerifier] = (),
        *,
        allowed_dids: frozenset[str] | None = None,
    ) -> None:
        self._api_keys = api_keys
        self._verifiers = tuple(verifiers)
        self._allowed_dids = allowed_dids

    async def authenticate(self, authorization: str | None, *, nsid: str) -> Caller:
        caller = await self._identify(bearer_credential(authorization), nsid=nsid)
        if self._allowed_dids is not None and caller.did not in self._allowed_dids:
            log.info("caller_forbidden", did=caller.did, actor=caller.actor, nsid=nsid)
            raise Forbidden("this DID is not on the allow-list")
        return caller

    async def _identify(self, credential: str, *, nsid: str) -> Caller:
        for verifier in self._verifiers:
            if verifier.accepts(credential):
                return await verifier.verify(credential, nsid=nsid)
        return self._api_keys.authenticate(credential)
