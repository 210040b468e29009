"""Runs the sidecar as a process, for the tests and the chaos suite (``bench/chaos``).

It lives beside ``tests/`` and ``bench/`` rather than in either, because both use
it and ``tests/`` already imports the chaos suite's servers: a launcher in one of
them would make the two import each other. It is not shipped in the wheel.
"""

from harness.processes import (
    LISTENERS,
    SIDECAR,
    CommandResult,
    ServeProcess,
    configured_env,
    is_gone,
    run_command,
    sidecar_env,
    start_serve,
    until_exited,
)

__all__ = [
    "LISTENERS",
    "SIDECAR",
    "CommandResult",
    "ServeProcess",
    "configured_env",
    "is_gone",
    "run_command",
    "sidecar_env",
    "start_serve",
    "until_exited",
]
