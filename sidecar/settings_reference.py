"""The example TOML file and the configuration reference, written from the settings table.

    python -m sidecar.settings_reference      # rewrites both files in the checkout

A test compares both files with what this renders, so neither can drift from
the settings the code parses.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

from sidecar.setting_values import Secret
from sidecar.settings import GROUPS, SPECS, Settings, toml_key

if TYPE_CHECKING:
    from sidecar.setting_spec import Spec

ROOT: Final = Path(__file__).resolve().parents[1]
EXAMPLE: Final = ROOT / "config" / "sidecar.example.toml"
REFERENCE: Final = ROOT / "docs" / "configuration.md"

_EXAMPLE_HEADER: Final = """\
# wisp-sidecar example configuration (written by `python -m sidecar.settings_reference`
# from the settings table in sidecar/settings.py; edit there, not here).
#
# Point SIDECAR_CONFIG at a file like this one. Every key is optional. Each key
# is an environment variable's name in lower case without the SIDECAR_ prefix,
# and the environment wins over the file. A bad value stops the process at
# start (exit code 2) with one line that names the setting.
"""

_REFERENCE_HEADER: Final = """\
# Configuration reference

<!-- Written by `python -m sidecar.settings_reference` from the settings table in
sidecar/settings.py; edit there, not here. -->

Settings come from environment variables, optionally from a TOML file named by
`SIDECAR_CONFIG` (the environment wins). A TOML key is the variable's name in
lower case without the `SIDECAR_` prefix (`xrpc_port = 8080`, `redis_url` for
`REDIS_URL`); [`config/sidecar.example.toml`](../config/sidecar.example.toml)
shows every one. A bad value stops the process at start with exit code 2 and
one line naming the setting, never repeating a value that may be a secret.
Booleans accept `1`, `0`, `true` and `false` (TOML `true`/`false` too); lists
are comma-separated in the environment and TOML arrays in the file.
"""


def _default(name: str) -> Any:
    return getattr(Settings(), name)


def _toml_default(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    return f'"{value}"'


def _shown(name: str, spec: Spec) -> str:
    """The example's value for a setting: its example, else its default."""
    if spec.example is not None:
        return spec.example
    return _toml_default(_default(name))


def render_example() -> str:
    """The example TOML file: every setting, commented out, grouped, with its text."""
    parts = [_EXAMPLE_HEADER]
    for group in GROUPS:
        parts.append(f"\n# --- {group} " + "-" * max(3, 72 - len(group)) + "\n")
        for name, spec in SPECS.items():
            if spec.group != group:
                continue
            variables = " or ".join(v for v in (spec.variable, spec.file_variable) if v)
            for line in f"{spec.doc} (env: {variables})".splitlines():
                parts.append(f"# {line}".rstrip() + "\n")
            if spec.file_variable is not None:
                parts.append(f"# {toml_key(spec.file_variable)} = {spec.file_example}\n")
            parts.append(f"# {toml_key(spec.variable)} = {_shown(name, spec)}\n\n")
    return "".join(parts).rstrip("\n") + "\n"


def _reference_default(name: str) -> str:
    value = _default(name)
    if value is None or value == ():
        return "unset"
    if isinstance(value, Secret):  # never a default today; kept masked if one appears
        return "set"
    return f"`{_toml_default(value).strip(chr(34))}`"


def _cell(doc: str) -> str:
    """A table cell of ``doc``: prose joined, indented lines kept as lines of code."""
    cell = ""
    for line in doc.splitlines():
        if line.startswith("  "):
            cell += "<br>`" + " ".join(line.split()) + "`"
        else:
            cell += ("<br>" if cell.endswith("`") else " ") + line.strip()
    return cell.strip().replace("|", "\\|")


def render_reference() -> str:
    """docs/configuration.md: one table per group, every variable with its default."""
    parts = [_REFERENCE_HEADER]
    for group in GROUPS:
        parts.append(f"\n## {group}\n\n| variable | default | meaning |\n|---|---|---|\n")
        for name, spec in SPECS.items():
            if spec.group != group:
                continue
            variables = " or ".join(f"`{v}`" for v in (spec.variable, spec.file_variable) if v)
            meaning = _cell(spec.doc)
            parts.append(f"| {variables} | {_reference_default(name)} | {meaning} |\n")
    return "".join(parts)


def main() -> int:
    EXAMPLE.write_text(render_example(), encoding="utf-8")
    REFERENCE.parent.mkdir(exist_ok=True)
    REFERENCE.write_text(render_reference(), encoding="utf-8")
    print(f"wrote {EXAMPLE.relative_to(ROOT)} and {REFERENCE.relative_to(ROOT)}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
