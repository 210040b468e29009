"""Every Prometheus metric of the sidecar, built on a registry that is passed in.

Labels hold only small fixed sets (outcomes, schemes, reasons, NSIDs): never a
DID, a secret name or a token, for cardinality and for privacy alike.
"""

from __future__ import annotations

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    gc_collector,
    platform_collector,
    process_collector,
)

PREFIX = "wisp_sidecar"

# 1 ms to 5 s: a rotate is one script round trip; seconds mean Redis is in trouble.
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)
# Signing is sub-millisecond when healthy, so start finer.
SIGN_BUCKETS = (
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0,
)  # fmt: skip


class Metrics:
    """The sidecar's metric objects, registered on one registry."""

    def __init__(self, registry: CollectorRegistry, *, default_collectors: bool = True) -> None:
        self.registry = registry
        if default_collectors:
            process_collector.ProcessCollector(registry=registry)
            platform_collector.PlatformCollector(registry=registry)
            gc_collector.GCCollector(registry=registry)
        self.rotations = Counter(
            f"{PREFIX}_rotations",
            "Rotate requests, by outcome.",
            ["outcome"],
            registry=registry,
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
        self.secret_operations = Counter(
            f"{PREFIX}_secret_operations",
            "Create, list and delete requests, by operation and outcome.",
            ["operation", "outcome"],
            registry=registry,
        )
        self.signatures = Counter(
            f"{PREFIX}_signatures",
            "Signatures requested, by scheme and outcome (batch items count one by one).",
            ["scheme", "outcome"],
            registry=registry,
        )
        self.sign_duration = Histogram(
            f"{PREFIX}_sign_duration_seconds",
            "Time to handle a sign request.",
            buckets=SIGN_BUCKETS,
            registry=registry,
        )
        self.read_batch_size = Histogram(
            f"{PREFIX}_sign_read_batch_size",
            "Envelope reads served by one coalesced Redis round trip.",
            buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024),
            registry=registry,
        )
        self.verifications = Counter(
            f"{PREFIX}_verifications",
            "Verify requests, by scheme and reason.",
            ["scheme", "reason"],
            registry=registry,
        )
        self.redis_errors = Counter(
            f"{PREFIX}_redis_errors",
            "Redis calls that failed or timed out, by operation.",
            ["operation"],
            registry=registry,
        )
        self.auth_failures = Counter(
            f"{PREFIX}_auth_failures",
            "Refused credentials, by reason.",
            ["reason"],
            registry=registry,
        )
        self.xrpc_requests = Counter(
            f"{PREFIX}_xrpc_requests",
            "XRPC requests, by method NSID (or 'unknown') and HTTP status.",
            ["method", "status"],
            registry=registry,
        )

    def redis_error(self, operation: str) -> None:
        self.redis_errors.labels(operation=operation).inc()
