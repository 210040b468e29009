"""The import graph of the sidecar: no cycles, and no HTTP in ``auth/`` but the DID
resolver's client (``auth/`` takes a credential string, never a request).

The package map itself (which package may import which) is test_boundaries.py's.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SIDECAR = Path(__file__).resolve().parents[2] / "sidecar"


def all_sources() -> dict[str, str]:
    """Every module of the sidecar package: its path within the package -> its text."""
    return {
        str(path.relative_to(SIDECAR)): path.read_text() for path in sorted(SIDECAR.rglob("*.py"))
    }


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


# The modules of auth/ that speak HTTP: the DID resolver, which fetches DID documents with
# aiohttp's client, and the connector's resolver that keeps those fetches to public addresses.
AUTH_HTTP_CLIENT = {"auth/did_resolver.py", "auth/public_addresses.py"}


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
        if not relative.startswith("auth/") or relative in AUTH_HTTP_CLIENT:
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
