"""``wisp-sidecar serve``: the embedded Valkey when allowed, then the listeners."""

from __future__ import annotations

import sys
from dataclasses import replace

from sidecar.cli.common import EXIT_OK, run
from sidecar.cli.devmode import embedded_server, prepare_dev_mode, wants_dev_mode
from sidecar.errors import ConfigError, DataDirInUse, EmbeddedServerError
from sidecar.settings import Secret, Settings

NO_REDIS: str = (
    "is not set, but SIDECAR_KEK, SIDECAR_KEK_PREVIOUS or SIDECAR_API_KEYS_FILE is: "
    "set REDIS_URL to your Redis, or SIDECAR_EMBEDDED_REDIS=1 to keep secrets in an "
    "embedded Valkey under SIDECAR_DATA_DIR"
)


def serve(settings: Settings) -> int:
    # Imported here so the other commands start fast.
    from sidecar.lifecycle import serve_listeners
    from sidecar.log import configure_logging

    configure_logging(
        settings.log_level, settings.log_format, sampled_per_s=settings.log_sampled_per_s
    )
    if settings.redis_url is not None:
        run(serve_listeners(settings))
        return EXIT_OK
    development = wants_dev_mode(settings)
    if not (development or settings.embedded_redis):
        # A production configuration without its Redis: an embedded one would
        # keep every secret on the pod's disk, and lose it with the pod.
        raise ConfigError("REDIS_URL", NO_REDIS)
    # Found first: without the server, no development key is made either.
    embedded = embedded_server(settings)
    try:
        # Claimed before any development key is made or shown.
        embedded.claim()
    except DataDirInUse as exc:
        raise ConfigError("SIDECAR_DATA_DIR", str(exc)) from None
    try:
        if development:
            settings, banner = prepare_dev_mode(settings)
            print("\n".join(banner), file=sys.stderr, flush=True)
        try:
            embedded.start()
        except EmbeddedServerError as exc:
            raise ConfigError("REDIS_URL", f"unset, and the embedded Valkey failed: {exc}") from exc
        print(
            f"embedded Valkey (pid {embedded.pid}) at {embedded.url}, data in {embedded.data_dir}",
            file=sys.stderr,
            flush=True,
        )
        run(serve_listeners(replace(settings, redis_url=Secret(embedded.url))))
    finally:
        embedded.stop()
    return EXIT_OK
