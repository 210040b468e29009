"""The example config in config/ documents every setting and loads as it is."""

from __future__ import annotations

import re
from pathlib import Path

from sidecar.settings import _VARIABLES, Settings, _toml_key

EXAMPLE = Path(__file__).resolve().parents[1] / "config" / "sidecar.example.toml"


def test_example_mentions_every_setting() -> None:
    """Each setting appears in the example as a TOML key and with its environment variable."""
    text = EXAMPLE.read_text()
    for variable in _VARIABLES:
        assert re.search(rf"^# {_toml_key(variable)} = ", text, re.MULTILINE), variable
        prefix = variable.rsplit("_", 1)[0]
        assert variable in text or prefix in text, variable


def test_example_loads_to_the_defaults() -> None:
    """Loaded as it ships (everything commented out), the example yields the default settings."""
    assert Settings.from_env({"SIDECAR_CONFIG": str(EXAMPLE)}) == Settings()
