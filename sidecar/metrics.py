"""Every Prometheus metric of the sidecar, built on a registry that is passed in.

Labels hold only small fixed sets (outcomes, schemes, reasons, NSIDs): never a
DID, a secret name or a token, for cardinality and for privacy alike.
"""

from __future__ import annotations

import itertools
from bisect import bisect_left
from dataclasses import dataclass
from typing import TYPE_CHECKING

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    gc_collector,
    platform_collector,
    process_collector,
)
from prometheus_client.core import CounterMetricFamily, HistogramMetricFamily
from prometheus_client.registry import Collector

from sidecar.errors import AUTH_FAILURE_REASONS, ENVELOPE_FAILURE_REASONS
from sidecar.log import dropped_lines

if TYPE_CHECKING:
    from collections.abc import Iterable, Iterator, Sequence

    from prometheus_client.metrics_core import Metric

PREFIX = "wisp_sidecar"

LISTENERS = ("xrpc", "sign", "ops")
# Why a listener closed a connection itself (sidecar.listeners); it aborts
# (resets) on write_timeout, and closes on the others.
CLOSE_REASONS = (
    "over_capacity",
    "read_timeout",
    "idle_timeout",
    "write_timeout",
    "content_encoding",
)
# Every per-owner or per-client bound a request can run into (issue 19), each
# exported at 0 from start. A new kind is declared here first: ``limit_hit``
# refuses any other, so no label value can come from a request.
LIMIT_KINDS = (
    "secrets_per_did",
    "changes_per_minute",
    "auth_failures_per_minute",
    "did_resolutions_in_flight",
    "did_refetch",
)
# Every change that waits for durability (sidecar.store), exported at 0 from start.
DURABLE_OPERATIONS = ("create", "rotate", "delete", "rewrap", "claim_jti")

# 1 ms to 5 s: a rotate is one script round trip; seconds mean Redis is in trouble.
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)
# Signing is sub-millisecond when healthy, so start finer.
SIGN_BUCKETS = (
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0,
)  # fmt: skip


class LoopCounter(Collector):
    """A labelled counter for the sign hot path: plain integers, no lock.

    prometheus_client's metrics take a lock on every update, which with the
    ``labels()`` lookup came to about 2 us of the CPU of each signature (a few
    per cent). Sign requests update these only from the event-loop thread,
    and ``/metrics`` is rendered on that same thread, so a plain dict is
    consistent; this collector turns it into a metric family at scrape time.
    """

    def __init__(
        self,
        registry: CollectorRegistry,
        name: str,
        documentation: str,
        labelnames: Sequence[str],
        initial: Iterable[Sequence[str]] = (),
    ) -> None:
        self._name = name
        self._documentation = documentation
        self._labelnames = list(labelnames)
        # Label values (in labelnames order) -> count. Series listed in
        # ``initial`` show as 0 before their first increment.
        self._counts: dict[tuple[str, ...], int] = {tuple(values): 0 for values in initial}
        registry.register(self)

    def inc(self, *labelvalues: str, amount: int = 1) -> None:
        self._counts[labelvalues] = self._counts.get(labelvalues, 0) + amount

    def describe(self) -> Iterator[Metric]:
        yield CounterMetricFamily(self._name, self._documentation, labels=self._labelnames)

    def collect(self) -> Iterator[Metric]:
        family = CounterMetricFamily(self._name, self._documentation, labels=self._labelnames)
        for labelvalues, count in sorted(self._counts.items()):
            family.add_metric(list(labelvalues), count)
        yield family


class LoopHistogram(Collector):
    """An unlabelled histogram for the sign hot path: plain numbers, no lock (see LoopCounter)."""

    def __init__(
        self,
        registry: CollectorRegistry,
        name: str,
        documentation: str,
        buckets: Sequence[float],
    ) -> None:
        self._name = name
        self._documentation = documentation
        self._bounds = tuple(buckets)
        # Non-cumulative counts: [i] holds values in (bounds[i-1], bounds[i]];
        # the last slot holds those above every bound.
        self._counts = [0] * (len(self._bounds) + 1)
        self._sum = 0.0
        registry.register(self)

    def observe(self, value: float) -> None:
        # bisect_left: a value equal to a bound belongs to that bound's bucket (le).
        self._counts[bisect_left(self._bounds, value)] += 1
        self._sum += value

    def describe(self) -> Iterator[Metric]:
        yield HistogramMetricFamily(self._name, self._documentation)

    def collect(self) -> Iterator[Metric]:
        cumulative: list[tuple[str, float]] = []
        total = 0
        for bound, count in zip((*map(str, self._bounds), "+Inf"), self._counts, strict=True):
            total += count
            cumulative.append((bound, total))
        yield HistogramMetricFamily(
            self._name, self._documentation, buckets=cumulative, sum_value=self._sum
        )


class DroppedLines(Collector):
    """Log lines dropped over their budget (``sidecar.log.sampled``), read at scrape time."""

    NAME = f"{PREFIX}_log_lines_dropped"
    HELP = "Log lines dropped because their kind was over SIDECAR_LOG_SAMPLED_PER_S, by kind."

    def __init__(self, registry: CollectorRegistry) -> None:
        registry.register(self)

    def describe(self) -> Iterator[Metric]:
        yield CounterMetricFamily(self.NAME, self.HELP, labels=["kind"])

    def collect(self) -> Iterator[Metric]:
        family = CounterMetricFamily(self.NAME, self.HELP, labels=["kind"])
        for kind, count in sorted(dropped_lines().items()):
            family.add_metric([kind], count)
        yield family


@dataclass(frozen=True)
class KnownLabels:
    """Label values known before the first event, so each series is exported at 0 from
    start (alerts and dashboards then work on a fresh pod). Passed in, because the
    listeners and the storage own them, not the core."""

    # The sign schemes, and the outcomes of a signature.
    sign_schemes: Sequence[str] = ()
    sign_outcomes: Sequence[str] = ()
    # The reasons a verification gives.
    verify_reasons: Sequence[str] = ()
    # The outcomes of an XRPC call (rotations and the other secret operations).
    xrpc_outcomes: Sequence[str] = ()
    # The operations a failed Redis call is counted under.
    redis_operations: Sequence[str] = ()


# The secret operations counted beside rotations, by their operation label.
SECRET_OPERATIONS = ("create", "list", "delete")


def _counter(
    registry: CollectorRegistry,
    name: str,
    documentation: str,
    labelnames: Sequence[str],
    zeros: Iterable[Sequence[str]] = (),
) -> Counter:
    """A labelled counter whose series in ``zeros`` show as 0 before their first
    event, so alerts and dashboards work on a fresh pod."""
    counter = Counter(f"{PREFIX}_{name}", documentation, labelnames, registry=registry)
    for values in zeros:
        counter.labels(*values)
    return counter


class Metrics:
    """The sidecar's metric objects, registered on one registry."""

    def __init__(
        self,
        registry: CollectorRegistry,
        *,
        known: KnownLabels | None = None,
        default_collectors: bool = True,
    ) -> None:
        known = known or KnownLabels()
        self.registry = registry
        if default_collectors:
            process_collector.ProcessCollector(registry=registry)
            platform_collector.PlatformCollector(registry=registry)
            gc_collector.GCCollector(registry=registry)
        self.rotations = _counter(
            registry,
            "rotations",
            "Rotate requests, by outcome.",
            ["outcome"],
            [(outcome,) for outcome in known.xrpc_outcomes],
        )
        self.rotation_duration = Histogram(
            f"{PREFIX}_rotation_duration_seconds",
            "Time to handle a rotate request.",
            buckets=LATENCY_BUCKETS,
            registry=registry,
        )
        self.last_rotation = Gauge(
            f"{PREFIX}_last_rotation_timestamp_seconds",
            "Unix time of the last successful rotation this process performed.",
            registry=registry,
        )
        self.secret_operations = _counter(
            registry,
            "secret_operations",
            "Create, list and delete requests, by operation and outcome.",
            ["operation", "outcome"],
            itertools.product(SECRET_OPERATIONS, known.xrpc_outcomes),
        )
        self.signatures = LoopCounter(
            registry,
            f"{PREFIX}_signatures",
            "Signatures requested, by scheme and outcome (batch items count one by one).",
            ["scheme", "outcome"],
            initial=[
                (scheme, outcome)
                for scheme in known.sign_schemes
                for outcome in ("ok", *known.sign_outcomes)
            ],
        )
        self.sign_duration = LoopHistogram(
            registry,
            f"{PREFIX}_sign_duration_seconds",
            "Time to handle a sign request.",
            SIGN_BUCKETS,
        )
        self.read_batch_size = Histogram(
            f"{PREFIX}_sign_read_batch_size",
            "Envelope reads served by one coalesced Redis round trip.",
            buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024),
            registry=registry,
        )
        self.verifications = _counter(
            registry,
            "verifications",
            "Verify requests, by scheme and reason.",
            ["scheme", "reason"],
            itertools.product(known.sign_schemes, known.verify_reasons),
        )
        self.redis_errors = _counter(
            registry,
            "redis_errors",
            "Redis calls that failed or timed out, by operation.",
            ["operation"],
            [(operation,) for operation in known.redis_operations],
        )
        self.envelopes_unopenable = _counter(
            registry,
            "envelopes_unopenable",
            "Stored envelopes a request needed but the keyring could not open, by reason: "
            "malformed, unknown_key (sealed under a KEK this process lacks), undecryptable.",
            ["reason"],
            [(reason,) for reason in ENVELOPE_FAILURE_REASONS],
        )
        self.durability_failures = _counter(
            registry,
            "durability_failures",
            "Changes answered 503 because they were not confirmed as durable as configured.",
            ["operation"],
            [(operation,) for operation in DURABLE_OPERATIONS],
        )
        self.connections_closed = _counter(
            registry,
            "http_connections_closed",
            "Connections a listener closed itself: over its cap, too slow to send a "
            "request, idle too long, too slow to read its answers (aborted), or sent "
            "an encoded body.",
            ["listener", "reason"],
            itertools.product(LISTENERS, CLOSE_REASONS),
        )
        self.auth_failures = _counter(
            registry,
            "auth_failures",
            "Refused credentials, by reason.",
            ["reason"],
            [(reason,) for reason in AUTH_FAILURE_REASONS],
        )
        self.limit_hits = _counter(
            registry,
            "limit_hits",
            "Requests refused, or work skipped, because a configured limit was reached, "
            "by kind (never by DID or address).",
            ["kind"],
            [(kind,) for kind in LIMIT_KINDS],
        )
        # sidecar.loop_share: only a process whose XRPC share is on updates these.
        self.xrpc_loop_seconds = Counter(
            f"{PREFIX}_xrpc_loop_seconds",
            "Event-loop time spent on XRPC work, measured by the XRPC loop share.",
            registry=registry,
        )
        self.xrpc_loop_holds = Counter(
            f"{PREFIX}_xrpc_loop_holds",
            "Times XRPC used up its share of the loop and its connections stopped being read.",
            registry=registry,
        )
        self.log_lines_dropped = DroppedLines(registry)
        self.xrpc_requests = _counter(
            registry,
            "xrpc_requests",
            "XRPC requests, by method NSID (or 'unknown') and HTTP status.",
            ["method", "status"],
        )

    def redis_error(self, operation: str) -> None:
        self.redis_errors.labels(operation=operation).inc()

    def not_durable(self, operation: str) -> None:
        self.durability_failures.labels(operation=operation).inc()

    def limit_hit(self, kind: str) -> None:
        if kind not in LIMIT_KINDS:
            raise ValueError(f"undeclared limit kind {kind!r}: add it to LIMIT_KINDS")
        self.limit_hits.labels(kind=kind).inc()

    def connection_closed(self, listener: str, reason: str) -> None:
        self.connections_closed.labels(listener=listener, reason=reason).inc()
