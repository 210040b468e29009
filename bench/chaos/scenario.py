"""What every scenario shares: one recorded history, checked when the scenario ends."""

from __future__ import annotations

import asyncio
import time
import uuid
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ParamSpec, TypeVar

from bench.chaos.check import Result, check
from bench.chaos.client import Driver
from bench.chaos.history import Fault, History
from bench.chaos.service import REFUSAL_MARGIN_S
from bench.chaos.topology import log

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable

    from bench.chaos.service import SidecarProcess

P = ParamSpec("P")
T = TypeVar("T")


async def blocking(call: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
    """Run a blocking topology call in a thread, so the load keeps its pace meanwhile."""
    return await asyncio.to_thread(call, *args, **kwargs)


@dataclass(frozen=True)
class Scenario:
    """One scenario's name, the name of the secret it changes, and the sidecar it drives."""

    name: str
    secret: str
    service: SidecarProcess
    margin_s: float = REFUSAL_MARGIN_S
    # A control: it must show a loss (see ``Result.control``).
    control: bool = False

    async def run(self, body: Callable[[Driver], Awaitable[Any]]) -> Result:
        """Create the secret, run ``body`` with sign load on, and check the history.

        A topology that does not recover in time ends the scenario early; that
        is a failure of the scenario, and the history so far is still checked.
        """
        log.info("scenario %s", self.name)
        history = History()
        errors: list[str] = []
        # Unique, so scenarios and sidecars can share one topology and one owner.
        name = f"{self.secret}.{uuid.uuid4().hex[:8]}"
        async with Driver(self.service, history, name) as driver:
            try:
                created = await driver.create()
                if created.status != 200:
                    raise RuntimeError(f"create answered {created.status}")
                async with driver.sign_load():
                    await body(driver)
            except Exception as exc:
                log.exception("%s ended early", self.name)
                errors.append(f"{type(exc).__name__}: {exc}")
        durability = self.service.durability
        result = check(
            history,
            self.name,
            refusal_bound_s=durability.refusal_bound_s + self.margin_s,
            durable=durability.replicas > 0,
        )
        result.errors += errors
        result.control = self.control
        return result


def start_fault(driver: Driver, kind: str) -> Fault:
    log.info("fault %d: %s", len(driver.history.faults), kind)
    return driver.history.fault(kind, time.monotonic())


def recovered(fault: Fault) -> None:
    log.info("recovered from %s", fault.kind)
    fault.recovered = time.monotonic()
