"""Check a recorded history for lost acknowledgements, stale signatures and bad answers.

Acknowledged tokens are ordered by the end of the call that returned them:
the harness makes one change at a time, so that is also the order in which
they were applied. A signature names its token by lookup (every signature is
over the same body), and tells its version. A signature by a token the caller
never received (a rotate answered 503 that was applied anyway) cannot be
placed in that order, so it is counted apart; it is stale only when its
version is below that of the newest acknowledged token, when that is known.

An acknowledged change is lost when the first probe after a fault signs with
an older token, or when a later acknowledged token has a version no higher
than its own: versions only grow, unless the store went back in time.
"""

from __future__ import annotations

import bisect
import math
import statistics
from dataclasses import dataclass, field

from bench.chaos.history import Fault, History, Op, signature_of

ALLOWED_STATUSES = frozenset({200, 404, 503})


def percentile(values: list[float], fraction: float) -> float | None:
    """Nearest-rank percentile; None for no values."""
    if not values:
        return None
    ordered = sorted(values)
    return ordered[max(0, math.ceil(fraction * len(ordered)) - 1)]


@dataclass
class Result:
    """What one scenario's history shows."""

    scenario: str
    rounds: int = 0
    acked: int = 0
    lost: int = 0
    stale: int = 0
    unacked_signatures: int = 0
    bad_statuses: int = 0
    signs: int = 0
    # Rotates made while durability could not hold, and how they were answered.
    must_refuse: int = 0
    refused_200: int = 0
    refused_slow: int = 0
    refusal_latencies: list[float] = field(default_factory=list)
    unchecked_faults: int = 0
    unavailable: list[float] = field(default_factory=list)
    rotate_latencies: list[float] = field(default_factory=list)
    # What the harness itself expected and did not see (a topology that did not recover).
    errors: list[str] = field(default_factory=list)
    # The first few violations, described by times, versions and token numbers.
    examples: list[str] = field(default_factory=list)
    # Whether refusals are required: only when the sidecar was asked for durability.
    durable: bool = True
    # A control run without the durability under test: it must show the loss
    # that durability prevents, or the check beside it could pass vacuously.
    control: bool = False

    @property
    def failures(self) -> list[str]:
        if self.control:
            vacuous = (
                [] if self.lost else ["the control lost no acknowledged change: nothing was shown"]
            )
            return vacuous + self.errors
        found = [
            f"{self.lost} acknowledged changes lost" if self.lost else "",
            f"{self.stale} stale signatures" if self.stale else "",
            f"{self.bad_statuses} answers other than 200/404/503" if self.bad_statuses else "",
            f"{self.unchecked_faults} faults without an answered probe"
            if self.unchecked_faults
            else "",
        ]
        if self.durable:
            found += [
                f"{self.refused_200} rotates answered 200 that could not be durable"
                if self.refused_200
                else "",
                f"{self.refused_slow} refusals slower than the bound" if self.refused_slow else "",
            ]
        return [text for text in found if text] + self.errors

    @property
    def passed(self) -> bool:
        return not self.failures


# Examples kept of each kind of violation.
MAX_EXAMPLES = 3


class _Acks:
    """The acknowledged tokens in order, and what the signs revealed of their versions."""

    def __init__(self, ops: list[Op]) -> None:
        acked = sorted(
            (op for op in ops if op.kind != "sign" and op.status == 200), key=lambda op: op.end
        )
        self.ends = [op.end for op in acked]
        self.index = {signature_of(op.token): i for i, op in enumerate(acked) if op.token}
        self.versions: dict[int, int] = {}
        for op in ops:
            if op.kind == "sign" and op.signature in self.index and op.version is not None:
                self.versions[self.index[op.signature]] = op.version

    def newest_before(self, moment: float) -> int:
        """Index of the newest token acknowledged before ``moment``; -1 if none."""
        return bisect.bisect_left(self.ends, moment) - 1

    def older_than_known(self, sign: Op, newest: int) -> bool:
        """Whether an unknown token's signature has a version below the newest ack's."""
        known = self.versions.get(newest)
        return known is not None and sign.version is not None and sign.version < known

    def name(self, sign: Op) -> str:
        """Which token signed, by its place among the acks (never the token itself)."""
        place = self.index.get(sign.signature or "")
        token = "an unacknowledged token" if place is None else f"ack #{place}"
        return f"{token} (version {sign.version})"


class _Checker:
    def __init__(self, history: History, result: Result) -> None:
        self.acks = _Acks(history.ops)
        self.result = result
        self.t0 = min((op.start for op in history.ops), default=0.0)
        # Indices of the acknowledged tokens found lost.
        self.lost: set[int] = set()

    def at(self, moment: float) -> str:
        return f"+{moment - self.t0:.3f} s"

    def example(self, text: str) -> None:
        kind = text.split(":", 1)[0]
        if sum(seen.startswith(kind + ":") for seen in self.result.examples) < MAX_EXAMPLES:
            self.result.examples.append(text)

    def sign(self, op: Op) -> None:
        if op.status != 200 or op.signature is None:
            return
        newest = self.acks.newest_before(op.start)
        place = self.acks.index.get(op.signature)
        if place is None:
            self.result.unacked_signatures += 1
            stale = self.acks.older_than_known(op, newest)
        else:
            stale = place < newest
        if stale:
            self.result.stale += 1
            self.example(
                f"stale: a sign sent at {self.at(op.start)} was signed with "
                f"{self.acks.name(op)}; ack #{newest} was answered at "
                f"{self.at(self.acks.ends[newest])}"
            )

    def probe(self, fault: Fault, window: list[Op]) -> None:
        """After a fault, the first answered probe must sign with the newest acknowledged token."""
        recovered = fault.recovered if fault.recovered is not None else fault.start
        probe = next(
            (op for op in window if op.probe and op.start >= recovered and op.status in (200, 404)),
            None,
        )
        if probe is None:
            self.result.unchecked_faults += 1
            return
        newest = self.acks.newest_before(probe.start)
        place = self.acks.index.get(probe.signature or "")
        if probe.status == 404:
            # Nothing is ever deleted, so every acknowledged token is gone.
            lost = set(range(newest + 1))
        elif place is not None:
            lost = set(range(place + 1, newest + 1))
        else:
            lost = {newest} if self.acks.older_than_known(probe, newest) else set()
        if lost:
            self.lost |= lost
            signed = "404" if probe.status == 404 else f"signed with {self.acks.name(probe)}"
            self.example(
                f"lost: after the fault at {self.at(fault.start)} ({fault.kind}) the probe "
                f"{signed}; the newest ack was #{newest}, answered at "
                f"{self.at(self.acks.ends[newest])}"
            )

    def rolled_back(self) -> None:
        """Acks whose version a later ack's does not exceed: the store lost them in between."""
        lowest_later = math.inf
        for place, version in sorted(self.acks.versions.items(), reverse=True):
            if version >= lowest_later and place not in self.lost:
                self.lost.add(place)
                self.example(
                    f"lost: ack #{place}, answered at {self.at(self.acks.ends[place])}, had "
                    f"version {version}; a later ack has version {lowest_later:.0f}"
                )
            lowest_later = min(lowest_later, version)


def check(
    history: History, scenario: str, *, refusal_bound_s: float, durable: bool = True
) -> Result:
    """Check every operation of ``history`` against the rules in the module docstring."""
    result = Result(scenario, rounds=len(history.faults), durable=durable)
    checker = _Checker(history, result)
    result.acked = len(checker.acks.ends)
    for op in history.ops:
        # A sign answered 200 without a signature is no more usable than a 500.
        unsigned = op.kind == "sign" and op.status == 200 and op.signature is None
        if op.status not in ALLOWED_STATUSES or unsigned:
            result.bad_statuses += 1
        if op.kind == "sign":
            result.signs += 1
            checker.sign(op)
        elif op.kind == "rotate" and op.must_refuse:
            result.must_refuse += 1
            if op.status == 200:
                result.refused_200 += 1
            elif op.status == 503:
                result.refusal_latencies.append(op.latency)
                if op.latency > refusal_bound_s:
                    result.refused_slow += 1
        elif op.kind == "rotate" and op.status == 200:
            result.rotate_latencies.append(op.latency)
    for i, fault in enumerate(history.faults):
        until = history.faults[i + 1].start if i + 1 < len(history.faults) else math.inf
        window = sorted(
            (op for op in history.ops if op.kind == "sign" and fault.start <= op.start < until),
            key=lambda op: op.start,
        )
        checker.probe(fault, window)
        result.unavailable.append(_outage(window))
    checker.rolled_back()
    result.lost = len(checker.lost)
    return result


def _outage(window: list[Op]) -> float:
    """From the first failed sign to the end of the first success after the last failure."""
    failed = [op for op in window if op.status != 200]
    if not failed:
        return 0.0
    last_failure = max(op.start for op in failed)
    recovered = next(
        (op.end for op in window if op.status == 200 and op.start > last_failure),
        max(op.end for op in window),
    )
    return recovered - min(op.start for op in failed)


def summary(values: list[float]) -> tuple[float | None, float | None]:
    """(median, max) of ``values``; Nones for no values."""
    if not values:
        return None, None
    return statistics.median(values), max(values)
