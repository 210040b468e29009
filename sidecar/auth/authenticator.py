"""Who is calling: a bearer credential becomes a ``Caller``.

API keys are checked here, and atproto service JWTs through the
``BearerVerifier`` seam. It takes the credential as a string, which the
listener has taken out of the ``Authorization`` header (``wire.bearer_credential``),
so it knows nothing of HTTP. Every failure is ``AuthenticationFailed`` with a short ``reason`` for
logs and metrics; the caller only ever learns that authentication is
required. An authenticated caller whose DID is not on the optional allow-list
is ``Forbidden``, whichever credential it used.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol

import structlog

from sidecar.errors import Forbidden

if TYPE_CHECKING:
    from collections.abc import Sequence

    from sidecar.auth.api_keys import ApiKeys
    from sidecar.auth.caller import Caller

log = structlog.get_logger("sidecar.auth")


class BearerVerifier(Protocol):
    """A second credential type (atproto service JWTs) plugs in here."""

    def accepts(self, credential: str) -> bool: ...

    async def verify(self, credential: str, *, nsid: str) -> Caller: ...


class Authenticator:
    """Turns a bearer credential into a ``Caller``, then applies the allow-list.

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

    async def authenticate(self, credential: str, *, nsid: str) -> Caller:
        caller = await self._identify(credential, nsid=nsid)
        if self._allowed_dids is not None and caller.did not in self._allowed_dids:
            log.info("caller_forbidden", did=caller.did, actor=caller.actor, nsid=nsid)
            raise Forbidden("this DID is not on the allow-list")
        return caller

    async def _identify(self, credential: str, *, nsid: str) -> Caller:
        for verifier in self._verifiers:
            if verifier.accepts(credential):
                return await verifier.verify(credential, nsid=nsid)
        return self._api_keys.authenticate(credential)
