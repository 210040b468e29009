"""The shape of a signature scheme: what signing and verifying take and answer.

``sidecar.signing.schemes`` holds the schemes themselves and their table.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Final, Literal, Protocol

if TYPE_CHECKING:
    from collections.abc import Callable, Mapping

Reason = Literal[
    "ok", "missing_header", "malformed_header", "timestamp_out_of_tolerance", "mismatch"
]


@dataclass(frozen=True, slots=True)
class Verdict:
    """The outcome of ``verify``: whether the signature holds, and which check decided."""

    valid: bool
    reason: Reason

    def __bool__(self) -> bool:
        # Without this every Verdict would be truthy, and ``if verify(...):`` would
        # accept a forged signature; make the natural spelling the correct one.
        return self.valid


# Verdicts are immutable, so one instance per outcome serves every call.
OK: Final = Verdict(valid=True, reason="ok")
MISSING: Final = Verdict(valid=False, reason="missing_header")
MALFORMED: Final = Verdict(valid=False, reason="malformed_header")
STALE: Final = Verdict(valid=False, reason="timestamp_out_of_tolerance")
MISMATCH: Final = Verdict(valid=False, reason="mismatch")


# Signers and verifiers take the HMAC key as bytes (the token's UTF-8), so a
# caller signing many items with one token encodes it once. A signer trusts its
# msg_id and timestamp (``sign`` checks them; the sign API has already).


class Signs(Protocol):
    def __call__(
        self,
        key: bytes,
        body: bytes,
        msg_id: str | None,
        timestamp: int | None,
        now: Callable[[], float],
    ) -> dict[str, str]: ...


class SignsAll(Protocol):
    """``Signs`` over many bodies with one key, message id and timestamp, in order."""

    def __call__(
        self,
        key: bytes,
        bodies: list[bytes],
        msg_id: str | None,
        timestamp: int | None,
        now: Callable[[], float],
    ) -> list[dict[str, str]]: ...


class Verifies(Protocol):
    def __call__(
        self,
        key: bytes,
        body: bytes,
        headers: Mapping[str, str],
        tolerance_s: int,
        now: Callable[[], float],
    ) -> Verdict: ...


@dataclass(frozen=True, slots=True)
class Scheme:
    """One signature scheme: how it signs (one body, or a batch's with one key), how it
    verifies, and the headers it sends."""

    sign: Signs
    sign_all: SignsAll
    verify: Verifies
    headers: tuple[str, ...]
