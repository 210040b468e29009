"""Fail unless every direct dependency is installed at exactly its declared floor.

Usage: python .ci/check_floors.py EXTRA... (the extras that were installed)

`uv pip install --resolution lowest-direct` picks, for each direct dependency, the
lowest version that the whole set of requirements allows. When another requirement
rules a floor out (pytest-aiohttp 1.1 needs aiohttp 3.11, so `aiohttp>=3.10` could
never be installed with it), uv quietly takes a higher version, the suite passes, and
the floor goes untested. This check turns that into a failure, and it also fails a
direct dependency that declares no floor at all.
"""

from __future__ import annotations

import sys
from importlib.metadata import PackageNotFoundError, requires, version

# packaging comes with pytest, which the lowest virtualenv always has.
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

PROJECT = "wisp-sidecar"


def floor(requirement: Requirement) -> Version | None:
    """The lowest version ``requirement`` admits, from its ``>=`` or ``==`` clause."""
    bounds = [Version(s.version) for s in requirement.specifier if s.operator in (">=", "==")]
    return max(bounds) if bounds else None


def main(extras: list[str]) -> int:
    problems: list[str] = []
    seen: set[str] = set()
    for line in requires(PROJECT) or []:
        requirement = Requirement(line)
        name = canonicalize_name(requirement.name)
        if name == PROJECT:
            continue  # an extra that names another extra: its requirements are listed too
        marker = requirement.marker
        if marker is not None and not any(
            marker.evaluate({"extra": extra}) for extra in ["", *extras]
        ):
            continue  # another extra's, or another platform's
        if name in seen:
            continue  # listed under two of the installed extras (dev repeats test)
        seen.add(name)
        lowest = floor(requirement)
        try:
            installed = Version(version(requirement.name))
        except PackageNotFoundError:
            problems.append(f"{requirement.name}: not installed")
            continue
        print(f"{requirement.name}=={installed}")
        if lowest is None:
            problems.append(f"{requirement.name}: declares no floor ({requirement})")
        elif installed != lowest:
            problems.append(
                f"{requirement.name}: floor {lowest}, but {installed} was installed: another"
                " requirement rules the floor out, so raise it"
            )
    for problem in problems:
        print(f"check_floors: {problem}", file=sys.stderr)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
