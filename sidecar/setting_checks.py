"""The checks of the settings that need more than one of them, run once they are parsed."""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol

from sidecar.crypto import Keyring
from sidecar.errors import ConfigError
from sidecar.redis_url import SentinelTarget
from sidecar.setting_values import check_service_endpoint, redis_target

if TYPE_CHECKING:
    from pathlib import Path

    from sidecar.crypto import Kek
    from sidecar.setting_values import Secret


class Checked(Protocol):
    """The settings these checks read: what ``Settings`` has, named here so that
    settings.py imports this module and not the other way round too."""

    @property
    def kek(self) -> Kek | None: ...
    @property
    def kek_previous(self) -> tuple[Kek, ...]: ...
    @property
    def redis_url(self) -> Secret | None: ...
    @property
    def redis_cluster(self) -> bool: ...
    @property
    def embedded_redis(self) -> bool: ...
    @property
    def redis_sentinel_password(self) -> Secret | None: ...
    @property
    def redis_ca_file(self) -> Path | None: ...
    @property
    def listeners(self) -> tuple[str, ...]: ...
    @property
    def sign_port(self) -> int: ...
    @property
    def sign_socket(self) -> Path | None: ...
    @property
    def service_endpoint(self) -> str | None: ...
    @property
    def service_did(self) -> str | None: ...
    @property
    def did_web_allow_http_loopback(self) -> bool: ...


def check_together(settings: Checked) -> None:
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
