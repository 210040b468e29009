"""The example config and the configuration reference are the settings table, rendered."""

from __future__ import annotations

import re

import pytest

from sidecar.settings import SPECS, VARIABLES, Settings, toml_key
from sidecar.settings_reference import EXAMPLE, REFERENCE, render_example, render_reference


@pytest.mark.parametrize(
    ("path", "render"), [(EXAMPLE, render_example), (REFERENCE, render_reference)]
)
def test_the_file_is_what_the_table_renders(path: object, render: object) -> None:
    """The checked-in file equals a fresh rendering: run `python -m sidecar.settings_reference`."""
    assert callable(render)
    assert path.read_text() == render()  # type: ignore[attr-defined]


@pytest.mark.parametrize("variable", VARIABLES)
def test_each_variable_is_in_the_example_and_the_reference(variable: str) -> None:
    """Each variable has its own commented TOML key and env note in the example, and its
    own row in the reference."""
    example = render_example()
    assert re.search(rf"^# {toml_key(variable)} = ", example, re.MULTILINE), variable
    assert re.search(rf"\(env: (\S+ or )?{variable}( or \S+)?\)", example), variable
    assert re.search(rf"^\| (`\S+` or )?`{variable}`( or `\S+`)? \|", render_reference(), re.M)


def test_every_field_but_the_fixed_limit_and_the_record_of_given_ones_is_a_setting() -> None:
    """Each field of Settings is declared with its variable, so none is parsed by hand."""
    fields = set(Settings.__dataclass_fields__)
    assert fields - set(SPECS) == {"xrpc_max_bytes", "given"}


def test_example_loads_to_the_defaults() -> None:
    """Loaded as it ships (everything commented out), the example yields the default settings."""
    assert Settings.from_env({"SIDECAR_CONFIG": str(EXAMPLE)}) == Settings()
