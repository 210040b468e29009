"""The lock-free sign metrics expose exactly what prometheus_client's own would."""

from __future__ import annotations

import random

import pytest
from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from sidecar.metrics import SIGN_BUCKETS, LoopCounter, LoopHistogram


def samples(registry: CollectorRegistry) -> set[tuple[str, tuple[tuple[str, str], ...], float]]:
    """Every sample on the exposition page, except the ``_created`` timestamps."""
    text = generate_latest(registry).decode()
    return {
        (sample.name, tuple(sorted(sample.labels.items())), sample.value)
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if not sample.name.endswith("_created")
    }


def test_loop_histogram_matches_prometheus_histogram() -> None:
    """Fed the same values, bucket bounds included, LoopHistogram exposes what Histogram does."""
    ours, theirs = CollectorRegistry(), CollectorRegistry()
    loop = LoopHistogram(ours, "t_seconds", "doc", SIGN_BUCKETS)
    reference = Histogram("t_seconds", "doc", buckets=SIGN_BUCKETS, registry=theirs)
    rng = random.Random(7)  # noqa: S311  (reproducible test data, not a secret)
    # Values on each bound exactly, between bounds, at zero and above the last.
    values = [*SIGN_BUCKETS, 0.0, 7.5] + [rng.expovariate(1 / 0.003) for _ in range(500)]
    for value in values:
        loop.observe(value)
        reference.observe(value)
    assert samples(ours) == samples(theirs)


def test_loop_counter_matches_prometheus_counter() -> None:
    """LoopCounter exposes what Counter does, an initial label set at 0 before any increment."""
    ours, theirs = CollectorRegistry(), CollectorRegistry()
    loop = LoopCounter(ours, "t", "doc", ["scheme", "outcome"], initial=[("wisp", "ok")])
    reference = Counter("t", "doc", ["scheme", "outcome"], registry=theirs)
    reference.labels(scheme="wisp", outcome="ok")  # shown as 0 before any increment
    for scheme, outcome in [("github", "ok"), ("github", "ok"), ("stripe", "not_found")]:
        loop.inc(scheme, outcome)
        reference.labels(scheme=scheme, outcome=outcome).inc()
    loop.inc("github", "ok", amount=3)
    reference.labels(scheme="github", outcome="ok").inc(3)
    assert samples(ours) == samples(theirs)
    assert ("t_total", (("outcome", "ok"), ("scheme", "wisp")), 0.0) in samples(ours)


def test_a_name_taken_twice_is_refused_like_any_collector() -> None:
    """A LoopCounter registers its name, so another collector of that name is refused."""
    registry = CollectorRegistry()
    LoopCounter(registry, "t", "doc", ["scheme"])
    with pytest.raises(ValueError, match="Duplicated"):
        Counter("t", "doc", ["scheme"], registry=registry)
