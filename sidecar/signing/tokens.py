"""Opened tokens, memoised by envelope: the sign path opens each secret's envelope
once, not once per signature.

Opening is ``crypto.Keyring.open`` (PyNaCl stays in ``crypto``); what is here is
only the memo, which serves signing alone.
"""

from __future__ import annotations

import functools
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from sidecar.crypto import Keyring


class OpenedTokenCache:
    """LRU of envelope -> token.

    Safe because an envelope changes on every rotation (fresh nonce), so a hit
    can never return a stale token for a newer envelope. The cache is bound to
    one immutable ``Keyring``, so a hit always equals what the ring would
    answer now. Entries are keyed by (envelope, did, name): keying by envelope
    alone would let a hit skip the owner and name check that the associated
    data enforces. Failures are not cached, so they are re-checked each time.
    """

    __slots__ = ("_cached_open", "_keyring")

    def __init__(self, keyring: Keyring, max_entries: int = 10_000) -> None:
        if max_entries < 1:
            raise ValueError(f"max_entries must be at least 1, not {max_entries}")
        self._keyring = keyring
        # functools.lru_cache is implemented in C, is thread-safe, and does not
        # store results of calls that raise, which is exactly the policy wanted.
        self._cached_open = functools.lru_cache(maxsize=max_entries)(self._open_uncached)

    def _open_uncached(self, envelope: str, did: str, name: str) -> str:
        return self._keyring.open(envelope, did=did, name=name)

    def open(self, envelope: str, *, did: str, name: str) -> str:
        """Return the token in ``envelope``, decrypting only on a miss; see ``Keyring.open``."""
        # Always positional, so that one logical key maps to one cache entry.
        return self._cached_open(envelope, did, name)

    def __len__(self) -> int:
        """The number of tokens currently cached."""
        return self._cached_open.cache_info().currsize

    def __repr__(self) -> str:
        info = self._cached_open.cache_info()
        return f"OpenedTokenCache(entries={info.currsize}, max_entries={info.maxsize})"
