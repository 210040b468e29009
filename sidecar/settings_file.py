"""The TOML file of settings (``SIDECAR_CONFIG``): its keys, and reading it as the
environment would give the same values."""

from __future__ import annotations

import difflib
import tomllib
from typing import TYPE_CHECKING

from sidecar.errors import ConfigError

if TYPE_CHECKING:
    from pathlib import Path


def toml_key(variable: str) -> str:
    return variable.removeprefix("SIDECAR_").lower()


def did_you_mean(given: str, known: tuple[str, ...]) -> str:
    # Compared without the prefix they all share, which would make anything look close.
    by_stem = {name.removeprefix("SIDECAR_"): name for name in known}
    close = difflib.get_close_matches(given.removeprefix("SIDECAR_"), by_stem, n=1)
    return f"; did you mean {by_stem[close[0]]}?" if close else ""


def read_toml(path: Path, variables: tuple[str, ...]) -> dict[str, str]:
    """The settings in the TOML file at ``path``, as variable -> text, like the environment."""
    try:
        document = tomllib.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ConfigError("SIDECAR_CONFIG", f"cannot read {path}: {exc.strerror}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError("SIDECAR_CONFIG", f"{path} is not valid TOML: {exc}") from None
    by_key = {toml_key(variable): variable for variable in variables}
    values: dict[str, str] = {}
    for key, value in document.items():
        variable = by_key.get(key)
        if variable is None:
            hint = did_you_mean(key, tuple(by_key))
            raise ConfigError("SIDECAR_CONFIG", f"{path}: unknown setting {key!r}{hint}")
        if isinstance(value, bool):
            # Spelled out, so a boolean given for a number is refused, not 1.
            values[variable] = "true" if value else "false"
        elif isinstance(value, str | int):
            values[variable] = str(value)
        elif isinstance(value, list) and all(isinstance(item, str) for item in value):
            values[variable] = ",".join(value)
        else:
            raise ConfigError(variable, f"{path}: {key} must be a string or an integer")
    return values
