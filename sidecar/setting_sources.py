"""Where settings' text comes from: the TOML file named by ``SIDECAR_CONFIG``, then
the environment over it, with unknown and misspelt variables refused.

``sidecar.settings`` parses what this gathers; the table of settings stays there.
"""

from __future__ import annotations

import difflib
import tomllib
from pathlib import Path
from typing import TYPE_CHECKING

from sidecar.errors import ConfigError

if TYPE_CHECKING:
    from collections.abc import Mapping

    from sidecar.setting_spec import Spec


def toml_key(variable: str) -> str:
    return variable.removeprefix("SIDECAR_").lower()


def _did_you_mean(given: str, known: tuple[str, ...]) -> str:
    # Compared without the prefix they all share, which would make anything look close.
    by_stem = {name.removeprefix("SIDECAR_"): name for name in known}
    close = difflib.get_close_matches(given.removeprefix("SIDECAR_"), by_stem, n=1)
    return f"; did you mean {by_stem[close[0]]}?" if close else ""


def _refuse_unknown_variables(
    environ: Mapping[str, str], variables: tuple[str, ...], not_settings: tuple[str, ...]
) -> None:
    """A misspelt variable would be dropped silently, leaving its default in force."""
    known = (*variables, *not_settings)
    for variable in sorted(environ):
        if variable.startswith("SIDECAR_") and variable not in known:
            raise ConfigError(variable, f"unknown setting{_did_you_mean(variable, variables)}")


def merged_sources(
    environ: Mapping[str, str],
    specs: Mapping[str, Spec],
    variables: tuple[str, ...],
    not_settings: tuple[str, ...],
) -> dict[str, str]:
    """The raw text of every setting given: the TOML file, then the environment over it."""
    _refuse_unknown_variables(environ, variables, not_settings)
    merged: dict[str, str] = {}
    config_path = environ.get("SIDECAR_CONFIG")
    if config_path:
        merged.update(_read_toml(Path(config_path), variables))
    for spec in specs.values():
        spellings = [v for v in (spec.variable, spec.file_variable) if v is not None]
        # Two spellings of one setting (SIDECAR_KEK, SIDECAR_KEK_FILE): either
        # one in the environment overrides both in the file.
        if any(environ.get(variable) for variable in spellings):
            for variable in spellings:
                merged.pop(variable, None)
        for variable in spellings:
            value = environ.get(variable)
            if value is not None and value != "":
                merged[variable] = value
    return merged


def _read_toml(path: Path, variables: tuple[str, ...]) -> dict[str, str]:
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
            hint = _did_you_mean(key, tuple(by_key))
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
