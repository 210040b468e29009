"""Run the fault-injection suite, print the table, write bench/CHAOS.md.

    make chaos                                   # the full set, durability on
    python -m bench.chaos --durable-replicas 0   # watch the checks catch lost acks
    python -m bench.chaos --only single --no-write

Exits 1 when any check fails.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Final

from bench.chaos import cluster, report, sentinel, single
from bench.chaos.service import Durability
from bench.chaos.topology import log

if TYPE_CHECKING:
    from bench.chaos.check import Result

CHAOS_MD: Final = Path(__file__).resolve().parents[1] / "CHAOS.md"
GROUPS: Final = ("sentinel", "single", "cluster")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m bench.chaos",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--durable-replicas",
        type=int,
        default=1,
        metavar="N",
        help="SIDECAR_DURABLE_REPLICAS for Sentinel and Cluster (default 1)",
    )
    parser.add_argument(
        "--durable-fsync",
        choices=("auto", "on", "off"),
        default="on",
        help="SIDECAR_DURABLE_FSYNC for the single server kill (default on); the restart "
        "scenarios run on the sidecar's defaults, and with off as their control",
    )
    parser.add_argument("--durable-timeout-ms", type=int, default=500)
    parser.add_argument("--redis-timeout-ms", type=int, default=500)
    parser.add_argument(
        "--kill-rounds",
        type=int,
        default=10,
        help="Sentinel primary kills with the replica linked (default 10)",
    )
    parser.add_argument(
        "--frozen-rounds",
        type=int,
        default=10,
        help="Sentinel primary kills with the replica frozen and cut (default 10)",
    )
    parser.add_argument(
        "--failovers",
        type=int,
        default=2,
        help="coordinated SENTINEL FAILOVERs, about 20 s each (default 2)",
    )
    parser.add_argument(
        "--replica-rounds",
        type=int,
        default=2,
        help="replica down: frozen, then killed, ... (default 2)",
    )
    parser.add_argument(
        "--refusals", type=int, default=5, help="rotates per replica-down round (default 5)"
    )
    parser.add_argument(
        "--steady-rotates",
        type=int,
        default=200,
        help="rotates without a fault, for the cost of one (default 200)",
    )
    parser.add_argument("--single-rounds", type=int, default=10)
    parser.add_argument(
        "--restart-rounds",
        type=int,
        default=10,
        help="single server SIGKILLs during an fsync under rotations, on default settings; "
        "the control (fsync off) runs as many, or until it loses one (default 10)",
    )
    parser.add_argument("--cluster-rounds", type=int, default=4)
    parser.add_argument(
        "--only", action="append", choices=GROUPS, help="run only this group (repeatable)"
    )
    parser.add_argument("--output", type=Path, default=CHAOS_MD, help="default: bench/CHAOS.md")
    parser.add_argument("--no-write", action="store_true", help="print the table only")
    parser.add_argument(
        "--work-dir",
        type=Path,
        help="keep the servers' and sidecars' logs here (default: a temporary directory)",
    )
    return parser


def log_to(work: Path) -> None:
    """The harness's own log, beside the servers' logs in ``work``."""
    work.mkdir(parents=True, exist_ok=True)
    handler = logging.FileHandler(work / "harness.log")
    handler.setFormatter(logging.Formatter("%(asctime)s.%(msecs)03d %(message)s", "%H:%M:%S"))
    log.addHandler(handler)
    log.setLevel(logging.INFO)


async def run(args: argparse.Namespace, durability: Durability, work: Path) -> list[Result]:
    groups = args.only or GROUPS
    results: list[Result] = []

    def done(result: Result) -> None:
        results.append(result)
        verdict = "ok" if result.passed else "FAILED: " + "; ".join(result.failures)
        print(f"  {result.scenario}: {result.rounds} faults, {verdict}", flush=True)
        for example in result.examples:
            print(f"    {example}", flush=True)

    if "sentinel" in groups:
        env = sentinel.SentinelEnv(work / "sentinel")
        with env.started(), env.sidecar(durability) as service:
            done(await sentinel.steady_rotates(env, service, count=args.steady_rotates))
            done(await sentinel.kill_primary(env, service, rounds=args.kill_rounds, frozen=False))
            done(await sentinel.kill_primary(env, service, rounds=args.frozen_rounds, frozen=True))
            done(await sentinel.coordinated_failover(env, service, rounds=args.failovers))
            done(
                await sentinel.replica_down(
                    env, service, rounds=args.replica_rounds, refusals=args.refusals
                )
            )
    if "single" in groups:
        fsync = replace(durability, fsync=args.durable_fsync)
        done(await single.kill_single(work / "single", fsync, rounds=args.single_rounds))
        done(
            await single.restart_under_rotations(
                work / "restart", Durability.defaults(), rounds=args.restart_rounds
            )
        )
        done(
            await single.restart_under_rotations(
                work / "restart-control",
                replace(durability, replicas=0, fsync="off"),
                rounds=args.restart_rounds,
                control=True,
            )
        )
    if "cluster" in groups:
        done(
            await cluster.kill_cluster_primary(
                work / "cluster", durability, rounds=args.cluster_rounds
            )
        )
    return results


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    # The replicated topologies run without an AOF, so they are never asked to fsync.
    durability = Durability(
        replicas=args.durable_replicas,
        fsync="off",
        timeout_ms=args.durable_timeout_ms,
        redis_timeout_ms=args.redis_timeout_ms,
    )
    print(report.header(durability, fsync=args.durable_fsync), flush=True)
    started = time.monotonic()
    if args.work_dir is not None:
        log_to(args.work_dir)
        results = asyncio.run(run(args, durability, args.work_dir))
    else:
        with tempfile.TemporaryDirectory(prefix="wisp-chaos-") as tmp:
            log_to(Path(tmp))
            results = asyncio.run(run(args, durability, Path(tmp)))
    seconds = time.monotonic() - started
    print()
    print(report.table(results))
    problems = report.failures(results)
    for problem in problems:
        print(f"FAILED {problem}", file=sys.stderr)
    print(f"\n{len(results)} scenarios in {seconds:.0f} s: " + ("FAILED" if problems else "ok"))
    if not args.no_write:
        report.write_markdown(
            args.output, results, durability, fsync=args.durable_fsync, seconds=seconds
        )
        print(f"written to {args.output}")
    return 1 if problems else 0


if __name__ == "__main__":
    raise SystemExit(main())
