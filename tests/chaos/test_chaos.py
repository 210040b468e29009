"""The fault-injection suite (``make chaos``) in small: one round of each fault kind
against real servers and a real ``python -m sidecar serve``, and the history checker
on histories whose verdict is known.

The Sentinel scenarios share one group and one durable sidecar (each changes a
secret of its own); ``make chaos`` runs the same scenarios with many rounds. The
single-server restart under rotations runs on default settings, beside its control
with the fsync off, which must lose a rotation for the default's 0 to mean anything.
"""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING

import pytest

from bench.chaos import report
from bench.chaos.check import Result, check
from bench.chaos.cluster import kill_cluster_primary
from bench.chaos.history import History, Op, signature_of
from bench.chaos.sentinel import SentinelEnv, coordinated_failover, kill_primary, replica_down
from bench.chaos.service import Durability
from bench.chaos.single import kill_single, restart_under_rotations

if TYPE_CHECKING:
    from collections.abc import Iterator
    from pathlib import Path

    from bench.chaos.service import SidecarProcess

DURABLE = Durability(replicas=1)
# The control's loss is a matter of timing: this many rounds at most, until one loses.
CONTROL_ROUNDS = 10


def passed_but_for_speed(result: Result) -> bool:
    """Whether the history holds every promise but speed: how fast a refusal came is
    measured by ``make chaos``, never asserted in the suite (a loaded machine is slow)."""
    return dataclasses.replace(result, refused_slow=0).passed


def explain(result: Result) -> str:
    """What failed, with examples, for an assertion message."""
    return "; ".join(result.failures + result.examples)


@pytest.fixture(scope="module")
def sentinel_env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SentinelEnv]:
    """A primary, a replica and three sentinels for this module's scenarios."""
    with SentinelEnv(tmp_path_factory.mktemp("chaos-sentinel")).started() as env:
        yield env


@pytest.fixture(scope="module")
def durable_sidecar(sentinel_env: SentinelEnv) -> Iterator[SidecarProcess]:
    """A sidecar on ``sentinel_env`` with SIDECAR_DURABLE_REPLICAS=1."""
    with sentinel_env.sidecar(DURABLE, "durable") as service:
        yield service


async def test_a_primary_killed_behind_a_frozen_replica_loses_no_acknowledged_rotation(
    sentinel_env: SentinelEnv, durable_sidecar: SidecarProcess
) -> None:
    """With the replica frozen and cut off, the rotate is refused in time and the failover
    that follows the primary's SIGKILL loses no acknowledged rotation."""
    result = await kill_primary(sentinel_env, durable_sidecar, rounds=1, frozen=True)
    assert passed_but_for_speed(result), explain(result)
    assert (result.rounds, result.must_refuse, len(result.refusal_latencies)) == (1, 1, 1)
    assert result.acked >= 2  # the create, and the rotate before the freeze


async def test_without_durability_the_checker_reports_the_rotation_the_failover_lost(
    sentinel_env: SentinelEnv,
) -> None:
    """With SIDECAR_DURABLE_REPLICAS=0 the frozen-replica round acknowledges a rotate that the
    failover then loses, and the checker reports it: the checks are not vacuous."""
    with sentinel_env.sidecar(Durability(replicas=0), "not-durable") as service:
        result = await kill_primary(sentinel_env, service, rounds=1, frozen=True)
    assert not result.errors, result.errors
    assert (result.lost, result.refused_200) == (1, 1), explain(result)


async def test_a_coordinated_failover_under_load_loses_nothing_and_signs_with_the_new_token(
    sentinel_env: SentinelEnv, durable_sidecar: SidecarProcess
) -> None:
    """Through SENTINEL FAILOVER, with rotations and signatures in flight, no acknowledged
    rotation is lost and no signature uses a token older than the newest acknowledged."""
    result = await coordinated_failover(sentinel_env, durable_sidecar, rounds=1)
    assert passed_but_for_speed(result), explain(result)
    assert result.rounds == 1
    assert result.signs > 0


async def test_rotations_are_refused_in_time_while_the_replica_is_down(
    sentinel_env: SentinelEnv, durable_sidecar: SidecarProcess
) -> None:
    """While the only replica is frozen every rotate answers 503 (never 200), and once it
    is back a rotate is acknowledged again."""
    result = await replica_down(sentinel_env, durable_sidecar, rounds=1, refusals=2)
    assert passed_but_for_speed(result), explain(result)
    assert (result.must_refuse, len(result.refusal_latencies)) == (2, 2)


async def test_a_single_server_killed_and_restarted_on_its_aof_keeps_every_rotation(
    tmp_path: Path,
) -> None:
    """SIGKILL and restart of a single server with the append-only file loses no acknowledged
    rotation, with SIDECAR_DURABLE_FSYNC=on."""
    result = await kill_single(tmp_path, Durability(replicas=0, fsync="on"), rounds=1)
    assert passed_but_for_speed(result), explain(result)
    assert (result.rounds, result.acked) == (1, 4)


async def test_a_server_killed_during_its_fsync_under_rotations_loses_none_by_default(
    tmp_path: Path,
) -> None:
    """With default settings, a SIGKILL of the single AOF server (appendfsync everysec) while
    it fsyncs, with rotations back to back, loses no acknowledged rotation."""
    result = await restart_under_rotations(tmp_path, Durability.defaults(), rounds=1)
    assert result.passed, explain(result)
    assert result.rounds == 1
    assert result.acked >= 2


async def test_with_fsync_off_the_same_kill_loses_an_acknowledged_rotation(
    tmp_path: Path,
) -> None:
    """The control: with SIDECAR_DURABLE_FSYNC=off the kill during an fsync loses an
    acknowledged rotation within a few rounds, so the default's 0 is not vacuous."""
    result = await restart_under_rotations(
        tmp_path, Durability(replicas=0, fsync="off"), rounds=CONTROL_ROUNDS, control=True
    )
    assert not result.errors, result.errors
    assert result.lost >= 1, explain(result)
    assert result.passed


async def test_a_cluster_primary_killed_fails_over_to_its_replica_without_loss(
    tmp_path: Path,
) -> None:
    """Killing the primary of the secret's slot lets its replica take over, and the
    acknowledged rotation signs afterwards."""
    result = await kill_cluster_primary(tmp_path, DURABLE, rounds=1)
    assert passed_but_for_speed(result), explain(result)
    assert result.rounds == 1


# The checker, on histories written out by hand.

T1, T2, T3 = "wsk_token-one", "wsk_token-two", "wsk_token-three"


def rotate(start: float, token: str | None, status: int = 200, *, must_refuse: bool = False) -> Op:
    """A rotate that took 10 ms."""
    return Op("rotate", start, start + 0.01, status, token=token, must_refuse=must_refuse)


def sign(start: float, token: str | None, version: int, status: int = 200, **flags: bool) -> Op:
    """A sign that took 10 ms, signed by ``token`` at ``version`` (none without a token)."""
    signature = signature_of(token) if token else None
    return Op("sign", start, start + 0.01, status, None, signature, version, **flags)


def history(*ops: Op, faults: tuple[tuple[float, float], ...] = ()) -> History:
    """A history of ``ops`` and of faults given as (start, recovered)."""
    recorded = History(ops=list(ops))
    for start, recovered in faults:
        recorded.fault("test", start).recovered = recovered
    return recorded


def checked(recorded: History, *, durable: bool = True) -> Result:
    """The checker's verdict, with a refusal bound of 1 s."""
    return check(recorded, "test", refusal_bound_s=1.0, durable=durable)


def test_a_probe_signing_with_an_older_token_counts_the_lost_acknowledgement() -> None:
    """When the first probe after a fault signs with the token before the newest acknowledged
    one, one acknowledged change is lost."""
    recorded = history(
        Op("create", 0.0, 0.01, 200, token=T1),
        rotate(1.0, T2),
        sign(3.0, T1, 1, probe=True),
        faults=((2.0, 2.5),),
    )
    result = checked(recorded)
    assert (result.lost, result.stale) == (1, 1)
    assert not result.passed


def test_a_probe_signing_with_the_newest_token_passes() -> None:
    """A probe that signs with the newest acknowledged token after the fault loses nothing."""
    recorded = history(
        Op("create", 0.0, 0.01, 200, token=T1),
        rotate(1.0, T2),
        sign(3.0, T2, 2, probe=True),
        faults=((2.0, 2.5),),
    )
    result = checked(recorded)
    assert (result.lost, result.stale, result.unchecked_faults) == (0, 0, 0)
    assert result.passed


def test_a_later_ack_at_a_version_no_higher_than_an_earlier_one_counts_it_lost() -> None:
    """Versions only grow; a later acknowledged token with an earlier one's version means the
    store went back in time, whatever the probes say."""
    recorded = history(
        Op("create", 0.0, 0.01, 200, token=T1),
        rotate(1.0, T2),
        sign(1.1, T2, 2),
        rotate(2.0, T3),
        sign(2.1, T3, 2),  # T2's change was rolled back before T3's was made
    )
    result = checked(recorded)
    assert (result.lost, result.stale) == (1, 0)
    assert any("ack #1" in example for example in result.examples)


def test_growing_versions_lose_nothing() -> None:
    """Acknowledged tokens whose versions grow, even by more than one, lose nothing."""
    recorded = history(
        Op("create", 0.0, 0.01, 200, token=T1),
        sign(0.5, T1, 1),
        rotate(1.0, T2),
        sign(1.1, T2, 3),  # a refused rotate was applied in between
        rotate(2.0, T3),
        sign(2.1, T3, 4),
    )
    assert checked(recorded).lost == 0


def test_a_fault_without_an_answered_probe_fails() -> None:
    """A fault after which no probe was answered cannot be checked, and fails the scenario."""
    recorded = history(
        Op("create", 0.0, 0.01, 200, token=T1),
        sign(3.0, None, 0, status=503, probe=True),
        faults=((2.0, 2.5),),
    )
    assert checked(recorded).unchecked_faults == 1


def test_a_404_probe_after_acknowledged_changes_counts_them_all_lost() -> None:
    """A secret that no longer exists after a fault lost every acknowledged change."""
    recorded = history(
        Op("create", 0.0, 0.01, 200, token=T1),
        rotate(1.0, T2),
        sign(3.0, None, 0, status=404, probe=True),
        faults=((2.0, 2.5),),
    )
    assert checked(recorded).lost == 2


def test_a_signature_by_a_superseded_token_is_stale_only_after_the_ack() -> None:
    """A sign started after a rotate's 200 must not use the old token; one started before may."""
    recorded = history(
        Op("create", 0.0, 0.01, 200, token=T1),
        sign(0.5, T1, 1),
        sign(1.005, T1, 1),  # in flight while the rotate was answered
        rotate(1.0, T2),
        sign(1.02, T1, 1),
        sign(1.03, T2, 2),
    )
    assert checked(recorded).stale == 1


def test_a_signature_by_an_unacknowledged_token_is_counted_apart() -> None:
    """A token from a rotate answered 503 may sign; that is counted, not a violation, unless
    its version is below the newest acknowledged token's."""
    recorded = history(
        Op("create", 0.0, 0.01, 200, token=T1),
        rotate(1.0, T2),
        sign(1.1, T2, 2),
        rotate(2.0, None, status=503),
        sign(2.1, T3, 3),  # the refused rotate was applied
        sign(2.2, T3, 1),  # an unknown token at a version below the newest ack's
    )
    result = checked(recorded)
    assert (result.unacked_signatures, result.stale) == (2, 1)


def test_answers_other_than_200_404_503_are_bad() -> None:
    """A 500, a request with no answer at all and a 200 without a signature count as bad."""
    recorded = history(
        Op("create", 0.0, 0.01, 200, token=T1),
        sign(1.0, None, 0, status=500),
        sign(2.0, None, 0, status=0),
        sign(2.5, None, 0, status=200),
        sign(3.0, None, 0, status=503),
        sign(4.0, T1, 1),
    )
    assert checked(recorded).bad_statuses == 3


def test_a_rotate_that_must_be_refused_fails_when_acknowledged_or_slow() -> None:
    """With durability, a rotate made while it cannot be durable must be a 503 within the
    bound; without durability the same answers are reported but do not fail."""
    recorded = history(
        Op("create", 0.0, 0.01, 200, token=T1),
        rotate(1.0, T2, must_refuse=True),
        Op("rotate", 2.0, 3.5, 503, must_refuse=True),
        Op("rotate", 4.0, 4.6, 503, must_refuse=True),
    )
    durable = checked(recorded)
    assert (durable.must_refuse, durable.refused_200, durable.refused_slow) == (3, 1, 1)
    assert not durable.passed
    assert checked(recorded, durable=False).passed


def test_the_outage_runs_from_the_first_failed_sign_to_the_next_success() -> None:
    """Unavailability is measured from the first failed sign after a fault to the end of the
    first success after the last failure."""
    recorded = history(
        Op("create", 0.0, 0.01, 200, token=T1),
        sign(1.0, T1, 1),
        sign(2.1, None, 0, status=503),
        sign(2.4, None, 0, status=503),
        sign(3.0, T1, 1, probe=True),
        faults=((2.0, 2.9),),
    )
    result = checked(recorded)
    assert result.unavailable == [pytest.approx(3.01 - 2.1)]
    assert result.passed


def test_the_report_names_tokens_by_number_never_by_value(tmp_path: Path) -> None:
    """The examples, the table and CHAOS.md say which acknowledged token signed by its
    number; the tokens themselves stay in memory."""
    recorded = history(
        Op("create", 0.0, 0.01, 200, token=T1),
        rotate(1.0, T2),
        sign(3.0, T1, 1, probe=True),
        faults=((2.0, 2.5),),
    )
    result = checked(recorded)
    markdown = tmp_path / "CHAOS.md"
    report.write_markdown(markdown, [result], DURABLE, fsync="on", seconds=1.0)
    written = markdown.read_text()
    lost = [example for example in result.examples if example.startswith("lost:")]
    assert len(lost) == 1
    assert "ack #0" in lost[0]
    for token in (T1, T2):
        assert token not in " ".join(result.examples)
        assert token not in written
    assert "| test " in written
