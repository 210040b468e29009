"""The checks of the settings that need more than one of them, run once they are parsed."""

from __future__ import annotations

from typing import TYPE_CHECKING

from sidecar.crypto import Keyring
from sidecar.errors import ConfigError
from sidecar.redis_url import SentinelTarget
from sidecar.setting_values import check_service_endpoint, redis_target

if TYPE_CHECKING:
    from sidecar.settings import Settings


def check_together(settings: Settings) -> None:
    """The checks that need more than one setting."""
    # The keyring owns the rules of a key set (how many, no duplicates).
    Keyring(settings.kek, settings.kek_previous)
    target = redis_target(settings.redis_url, cluster=settings.redis_cluster)
    if settings.embedded_redis and target is not None:
        raise ConfigError("SIDECAR_EMBEDDED_REDIS", "is set, and so is REDIS_URL: choose one Redis")
    if settings.redis_sentinel_password is not None and not isinstance(target, SentinelTarget):
        raise ConfigError(
            "SIDECAR_REDIS_SENTINEL_PASSWORD",
            "is set, but REDIS_URL does not name Sentinel (redis+sentinel:// or rediss+sentinel://)",
        )
    if settings.redis_ca_file is not None and (target is None or not target.tls):
        raise ConfigError(
            "SIDECAR_REDIS_CA_FILE",
            "is set, but REDIS_URL does not use TLS (rediss:// or rediss+sentinel://)",
        )
    if "sign" in settings.listeners and settings.sign_port == 0 and settings.sign_socket is None:
        message = "is 0 (no TCP sign listener) but SIDECAR_SIGN_SOCKET is not set: set one"
        raise ConfigError("SIDECAR_SIGN_PORT", message)
    check_service_endpoint(
        settings.service_endpoint,
        service_did=settings.service_did,
        allow_http_loopback=settings.did_web_allow_http_loopback,
    )
