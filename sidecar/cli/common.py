"""What the commands share: exit codes and running a coroutine on the best loop."""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any, Final, TypeVar

if TYPE_CHECKING:
    from collections.abc import Coroutine

T = TypeVar("T")

EXIT_OK: Final = 0
# A check failed, or the work is left undone: see what the command printed.
EXIT_FAILED: Final = 1
# A setting is wrong or missing: nothing was done.
EXIT_CONFIG: Final = 2


def counted(number: int, noun: str) -> str:
    """``1 key``, ``2 keys``: a count with its noun."""
    return f"{number} {noun}{'' if number == 1 else 's'}"


def run(coro: Coroutine[Any, Any, T]) -> T:
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is optional off Linux/macOS
        return asyncio.run(coro)
    return uvloop.run(coro)
