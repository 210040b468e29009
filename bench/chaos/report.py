"""The results table, printed and written to ``bench/CHAOS.md``. It holds no token."""

from __future__ import annotations

import os
from datetime import UTC, datetime
from typing import TYPE_CHECKING

from bench.chaos.check import percentile, summary
from bench.chaos.service import REFUSAL_MARGIN_S

if TYPE_CHECKING:
    from pathlib import Path

    from bench.chaos.check import Result
    from bench.chaos.service import Durability

COLUMNS = (
    "scenario",
    "rounds",
    "acked",
    "lost",
    "stale sigs",
    "unacked-token sigs",
    "bad statuses",
    "refused / must",
    "refusal max ms",
    "unavail. median ms",
    "unavail. max ms",
    "rotate p50 ms",
    "rotate p99 ms",
    "ok",
)


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value * 1000:.0f}"


def row(result: Result) -> list[str]:
    median, longest = summary(result.unavailable)
    refused = result.must_refuse - result.refused_200
    return [
        result.scenario,
        str(result.rounds),
        str(result.acked),
        str(result.lost),
        str(result.stale),
        str(result.unacked_signatures),
        str(result.bad_statuses),
        f"{refused}/{result.must_refuse}" if result.must_refuse else "-",
        _ms(max(result.refusal_latencies, default=None)),
        _ms(median),
        _ms(longest),
        _ms(percentile(result.rotate_latencies, 0.50)),
        _ms(percentile(result.rotate_latencies, 0.99)),
        "yes" if result.passed else "NO",
    ]


def table(results: list[Result]) -> str:
    """A Markdown table, readable as plain text too."""
    rows = [list(COLUMNS), *(row(result) for result in results)]
    widths = [max(len(r[i]) for r in rows) for i in range(len(COLUMNS))]

    def line(cells: list[str]) -> str:
        return "| " + " | ".join(c.ljust(w) for c, w in zip(cells, widths, strict=True)) + " |"

    rule = "|" + "|".join("-" * (w + 2) for w in widths) + "|"
    return "\n".join([line(rows[0]), rule, *(line(r) for r in rows[1:])])


def failures(results: list[Result]) -> list[str]:
    return [f"{result.scenario}: {text}" for result in results for text in result.failures]


def header(durability: Durability, *, fsync: str, seconds: float | None = None) -> str:
    took = "" if seconds is None else f", run took {seconds:.0f} s"
    return (
        f"{datetime.now(UTC):%Y-%m-%d %H:%M} UTC, cpus={os.cpu_count()}, "
        f"SIDECAR_DURABLE_REPLICAS={durability.replicas}, "
        f"SIDECAR_DURABLE_FSYNC={fsync} (single server kill; the restarts: defaults, "
        "and off as the control), "
        f"SIDECAR_DURABLE_TIMEOUT_MS={durability.timeout_ms}, "
        f"SIDECAR_REDIS_TIMEOUT_MS={durability.redis_timeout_ms}{took}"
    )


def write_markdown(
    path: Path, results: list[Result], durability: Durability, *, fsync: str, seconds: float
) -> None:
    problems = failures(results)
    verdict = (
        "All checks passed."
        if not problems
        else "Failed:\n\n" + "\n".join(f"- {text}" for text in problems)
    )
    path.write_text(
        "# Fault-injection results (`make chaos`)\n\n"
        f"{header(durability, fsync=fsync, seconds=seconds)}\n\n"
        f"{table(results)}\n\n"
        f"{verdict}\n\n"
        f"{LEGEND.format(margin_ms=round(REFUSAL_MARGIN_S * 1000))}"
    )


LEGEND = """\
- **acked**: creates and rotates answered 200. **lost**: acknowledged changes
  missing after a fault (the first sign after recovery used an older token).
- **stale sigs**: signatures by a token older than the newest one acknowledged
  before the sign request started.
- **unacked-token sigs**: signatures by a token no caller received (a rotate
  answered 503 that was applied anyway); not a violation.
- **bad statuses**: answers other than 200, 404 and 503 (a timeout counts).
- **refused / must**: rotates made while durability could not hold (replica
  frozen and cut off, or down) that were answered 503, out of all such rotates;
  with `SIDECAR_DURABLE_REPLICAS` >= 1 every one must be refused within
  `SIDECAR_DURABLE_TIMEOUT_MS + SIDECAR_REDIS_TIMEOUT_MS` plus {margin_ms} ms.
- **unavail.**: per fault, from the first failed sign to the first success
  after the last failure; 0 when no sign failed.
- **rotate p50/p99**: latency of the rotates answered 200, faults included.
- **single restart**: rotations back to back and a SIGKILL of the single AOF
  server (`appendfsync everysec`) while its fsync runs, on the sidecar's
  default settings: it must lose nothing. Its control, with
  `SIDECAR_DURABLE_FSYNC=off`, must lose at least one acknowledged rotation
  (it stops at the first round that does), or the check could pass vacuously;
  its "ok" means it did.

Regenerate with `make chaos` (`python -m bench.chaos --help` for options;
`--durable-replicas 0` shows what the checks catch without durability).
"""
