"""How one setting is declared: its variable, parser, default, group and documentation.

``sidecar.settings`` declares every field of ``Settings`` with ``setting``; parsing,
the example file and the reference are all built from these declarations.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from collections.abc import Callable


@dataclass(frozen=True)
class Spec:
    """How one setting is read and documented."""

    variable: str
    parse: Callable[[str, str], Any]
    group: str
    doc: str
    # What the example file shows, as TOML; None shows the default.
    example: str | None = None
    # A second variable for the same setting, read as a file holding the value,
    # and what the example file shows for it.
    file_variable: str | None = None
    file_example: str | None = None


def setting(
    variable: str,
    parse: Callable[[str, str], Any],
    default: Any,
    group: str,
    doc: str,
    *,
    example: str | None = None,
    file_variable: str | None = None,
    file_example: str | None = None,
) -> Any:
    """A dataclass field that carries its ``Spec``."""
    spec = Spec(variable, parse, group, doc, example, file_variable, file_example)
    return dataclasses.field(default=default, metadata={"spec": spec})
