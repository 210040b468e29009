"""No test asserts on elapsed time: on a loaded machine such an assertion fails at random.

A deadline or timeout is tested by the order of events and their outcome, with a
clock the test drives, or with a generous bound against hangs (``asyncio.timeout``,
a socket timeout), which stops a test but is not what it asserts. The scan below
reads every test module and fails on an ``assert`` that compares an elapsed time:
a difference taken with a clock reading (``time.monotonic``, ``time.perf_counter``,
``time.time``, ``loop.time`` and their ``_ns`` forms), directly or through a name.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SCANNED = sorted([*(ROOT / "tests").rglob("*.py"), *(ROOT / "harness").rglob("*.py")])
CLOCK_FUNCTIONS = {
    "monotonic",
    "perf_counter",
    "time",
    "monotonic_ns",
    "perf_counter_ns",
    "time_ns",
}


def _is_clock_call(node: ast.AST) -> bool:
    """``time.monotonic()``, ``loop.time()``, ``perf_counter()`` and the like."""
    if not isinstance(node, ast.Call):
        return False
    func = node.func
    if isinstance(func, ast.Attribute):
        return func.attr in CLOCK_FUNCTIONS
    return isinstance(func, ast.Name) and func.id in CLOCK_FUNCTIONS - {"time"}


def _uses(node: ast.AST, names: set[str], *, clocks: bool) -> bool:
    """Whether ``node`` reads one of ``names`` (or, with ``clocks``, calls a clock)."""
    return any(
        (isinstance(sub, ast.Name) and sub.id in names) or (clocks and _is_clock_call(sub))
        for sub in ast.walk(node)
    )


def _is_elapsed(node: ast.AST, readings: set[str], elapsed: set[str]) -> bool:
    """Whether ``node`` holds an elapsed time: a name known to, or a subtraction with a
    clock reading on one side."""
    for sub in ast.walk(node):
        if isinstance(sub, ast.Name) and sub.id in elapsed:
            return True
        if (
            isinstance(sub, ast.BinOp)
            and isinstance(sub.op, ast.Sub)
            and any(_uses(side, readings, clocks=True) for side in (sub.left, sub.right))
        ):
            return True
    return False


def _assigned(tree: ast.AST) -> list[tuple[list[str], ast.AST]]:
    """Each simple assignment in ``tree``: the names it binds and the value."""
    found: list[tuple[list[str], ast.AST]] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Assign):
            targets = [t.id for t in node.targets if isinstance(t, ast.Name)]
            found.append((targets, node.value))
        elif (
            isinstance(node, ast.AnnAssign | ast.AugAssign)
            and node.value is not None
            and isinstance(node.target, ast.Name)
        ):
            found.append(([node.target.id], node.value))
    return found


def wall_clock_assertions(source: str) -> list[int]:
    """The line numbers of the asserts in ``source`` that compare an elapsed time."""
    tree = ast.parse(source)
    assignments = _assigned(tree)
    readings: set[str] = set()
    elapsed: set[str] = set()
    # Names pass their taint on through assignments; repeat until nothing new is learnt.
    while True:
        before = len(readings), len(elapsed)
        for targets, value in assignments:
            if _is_elapsed(value, readings, elapsed):
                elapsed.update(targets)
            elif _uses(value, readings, clocks=True):
                readings.update(targets)
        if (len(readings), len(elapsed)) == before:
            break
    return sorted(
        node.lineno
        for node in ast.walk(tree)
        if isinstance(node, ast.Assert)
        and any(
            isinstance(sub, ast.Compare) and _is_elapsed(sub, readings, elapsed)
            for sub in ast.walk(node.test)
        )
    )


@pytest.mark.parametrize("path", SCANNED, ids=lambda path: str(path.relative_to(ROOT)))
def test_no_test_asserts_on_elapsed_time(path: Path) -> None:
    """No module of the suite or the harness compares an elapsed time in an assert."""
    assert wall_clock_assertions(path.read_text()) == []


@pytest.mark.parametrize(
    "source",
    [
        "started = time.monotonic()\nwork()\nassert time.monotonic() - started < 1.0\n",
        "t0 = time.perf_counter()\nwork()\nelapsed = time.perf_counter() - t0\n"
        "assert 0.3 <= elapsed < 1.5\n",
        "start = loop.time()\nwork()\ntook = loop.time() - start\nslack = took * 2\n"
        "assert slack < 3\n",
        "assert abs(int(stamp) - time.time()) < 60\n",
        "began = monotonic()\nwork()\nassert monotonic() - began >= 1\n",
    ],
    ids=["inline", "through-a-name", "loop-time-through-two-names", "time-time", "from-import"],
)
def test_the_scan_finds_an_elapsed_time_assertion(source: str) -> None:
    """Each way of writing an elapsed-time assertion is found, on its line."""
    assert wall_clock_assertions(source) == [source.count("\n")]


def test_the_scan_leaves_deadlines_and_outcomes_alone() -> None:
    """A bound against hangs, a clock the test drives, and a timestamp in order pass."""
    source = (
        "deadline = time.monotonic() + 30\n"
        "while not ready():\n"
        "    assert time.monotonic() < deadline, 'a hang'\n"
        "clock.advance(301)\n"
        "assert cache.get(did) is None\n"
        "before = int(time.time())\n"
        "stamp = sign()\n"
        "assert before <= stamp <= int(time.time())\n"
    )
    assert wall_clock_assertions(source) == []
