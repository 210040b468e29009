"""The process lifecycle of ``serve``: wait for Redis at start (or start unready with
``SIDECAR_START_WITHOUT_REDIS``), run this process's listeners, then on SIGTERM turn
unready at once and drain the traffic listeners within ``SIDECAR_SHUTDOWN_GRACE_S``."""

from __future__ import annotations

import asyncio
import contextlib
import signal
from typing import TYPE_CHECKING

import structlog
from aiohttp import web

from sidecar.app import create_ops_app, create_sign_app, create_xrpc_app, open_sidecar
from sidecar.errors import StartupFailed
from sidecar.listeners import ConnectionLimits, ListenerRunner, connection_cap
from sidecar.loop_share import shared_loop_connections, xrpc_loop_share
from sidecar.startup import check_durability, failure_reason, probe_redis, until_redis_answers
from sidecar.unix_socket import start_sign_socket

if TYPE_CHECKING:
    from prometheus_client import CollectorRegistry

    from sidecar.settings import Settings

log = structlog.get_logger("sidecar.app")


async def serve_listeners(settings: Settings, *, registry: CollectorRegistry | None = None) -> None:
    """Run the listeners until SIGTERM or SIGINT, then drain and close.

    At start, Redis must answer within ``SIDECAR_REDIS_CONNECT_TIMEOUT_S``, or
    ``StartupFailed`` is raised; with ``SIDECAR_START_WITHOUT_REDIS`` the
    listeners start at once and ``/readyz`` says 503 until Redis answers.

    On the signal, ``/readyz`` answers 503 at once. The XRPC and sign listeners
    stop accepting connections and let in-flight requests finish for up to
    ``SIDECAR_SHUTDOWN_GRACE_S`` (aiohttp cancels what is left after that).
    The ops listener stays open meanwhile, so probes see the 503 and metrics
    stay scrapable; then it closes, Redis closes, and this returns.
    """
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    async with open_sidecar(settings, registry=registry) as sidecar:
        url = settings.redis_url.reveal() if settings.redis_url else ""
        watcher: asyncio.Task[None] | None = None
        if settings.start_without_redis:
            watcher = asyncio.create_task(until_redis_answers(sidecar, url))
        else:
            deadline = loop.time() + settings.redis_connect_timeout_s
            probe = asyncio.create_task(probe_redis(sidecar, deadline, url=url))
            stopped = asyncio.create_task(stop.wait())
            await asyncio.wait({probe, stopped}, return_when=asyncio.FIRST_COMPLETED)
            stopped.cancel()
            if not probe.done():
                # Asked to stop while still waiting for Redis: nothing to drain.
                probe.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await probe
                return
            failure = probe.result()
            if failure is not None:
                raise StartupFailed(
                    "REDIS_URL",
                    f"Redis did not answer within {settings.redis_connect_timeout_s}s "
                    f"({failure_reason(failure, url)})",
                )
            await check_durability(sidecar)
        # Traffic listeners first and ops last, so nothing reports ready before
        # the XRPC and sign ports accept connections. Only this process's role.
        listeners = [
            (name, make(sidecar), host, port)
            for name, make, host, port in (
                ("xrpc", create_xrpc_app, settings.xrpc_host, settings.xrpc_port),
                ("sign", create_sign_app, settings.sign_host, settings.sign_port),
                ("ops", create_ops_app, settings.ops_host, settings.ops_port),
            )
            if name in settings.listeners
        ]
        # XRPC beside sign, or on its own when so configured: a bounded share.
        share = xrpc_loop_share(settings, sidecar.metrics)
        runners: dict[str, web.AppRunner] = {}
        sites: dict[str, web.BaseSite] = {}
        try:
            xrpc_cap = connection_cap(settings.xrpc_max_connections)
            for name, app, host, port in listeners:
                runner = ListenerRunner(
                    app,
                    listener=name,
                    limits=ConnectionLimits(
                        read_timeout_s=settings.http_read_timeout_s,
                        idle_timeout_s=settings.http_idle_timeout_s,
                        # The public port is capped; the pod-local ones serve their own pod.
                        max_connections=xrpc_cap if name == "xrpc" else None,
                        write_timeout_s=settings.http_write_timeout_s,
                        max_pipelined=settings.http_max_pipelined,
                        max_queued_bytes=settings.http_max_queued_bytes,
                    ),
                    on_closed=sidecar.metrics.connection_closed,
                    connection=shared_loop_connections(share) if share and name == "xrpc" else None,
                    access_log=None,
                    shutdown_timeout=settings.shutdown_grace_s,
                )
                await runner.setup()
                runners[name] = runner
                if name == "sign" and settings.sign_socket is not None:
                    sites["sign_socket"] = await start_sign_socket(runner, settings)
                if port == 0:
                    continue  # SIDECAR_SIGN_PORT=0: the sign API on its socket alone
                sites[name] = web.TCPSite(runner, host, port)
                await sites[name].start()
                log.info("listening", listener=name, host=host, port=port)
            await stop.wait()
            sidecar.draining.set()
            # New connections are refused from here on; requests already in
            # flight carry on while the runners drain below.
            for name, site in sites.items():
                if name != "ops":
                    await site.stop()
            log.info("shutting_down", grace_s=settings.shutdown_grace_s)
        finally:
            if share is not None:
                share.close()
            if watcher is not None:
                watcher.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await watcher
            ops = runners.pop("ops", None)
            # Together, so that the grace is shared rather than summed.
            results = await asyncio.gather(
                *(runner.cleanup() for runner in runners.values()), return_exceptions=True
            )
            for name, result in zip(runners, results, strict=True):
                if isinstance(result, BaseException):
                    log.error("listener_close_failed", listener=name, error=repr(result))
            if ops is not None:
                await ops.cleanup()
    log.info("stopped")
