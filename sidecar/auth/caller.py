"""Who a caller is once authenticated: the vocabulary every credential type answers in."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Caller:
    """An authenticated caller: ``did`` owns the secrets, ``actor`` goes in the audit log."""

    did: str
    actor: str
