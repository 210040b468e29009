"""Every exception the sidecar raises on purpose.

Domain errors know nothing of HTTP; the XRPC and sign layers map them to wire
errors by walking the exception's MRO (see ``sidecar.wire.to_wire``). Messages of every
exception here are safe to show a caller: they never carry a token, a key or a
credential. ``AuthenticationFailed.reason`` is for logs and metrics only.

    SidecarError
    ├── ConfigError                 a setting is missing or malformed (exit 2 at start)
    ├── StartupFailed               something needed at start is not there (exit 2)
    ├── EmbeddedServerError         the embedded development server did not start
    │   └── DataDirInUse            another embedded server holds its data directory
    ├── LexiconError                a lexicon is malformed, or an output breaks it (500)
    ├── InvalidInput                the caller's input breaks a rule (400 InvalidRequest)
    │   ├── PayloadTooLarge         the body is over the limit (413)
    │   └── BodyTimedOut            the body did not arrive within the read timeout (408)
    ├── AuthenticationFailed        no or bad credentials (401); ``reason`` is private
    ├── Forbidden                   authenticated, but not on the allow-list (403)
    ├── DidResolutionError          a DID did not resolve to a usable ``#atproto`` key
    │   └── InvalidPublicKey        a verification method's key cannot be decoded
    ├── RateLimited                 a rate limit is used up (429 + RateLimit-* headers)
    ├── ResolutionsBusy             too many DID resolutions in flight (503 + Retry-After)
    ├── SecretNotFound              no such secret for this owner (404)
    ├── SecretExists                create of a name that exists (409)
    ├── SecretQuotaExceeded         create past SIDECAR_MAX_SECRETS_PER_DID (400)
    ├── EncryptionUnavailable       no active KEK to seal with (503)
    ├── EnvelopeError               an envelope does not open under the keyring
    ├── StorageUnavailable          Redis did not answer in time (503 + Retry-After)
    │   └── ChangeNotDurable        a change ran, but not as durably as configured (503)
    ├── StorageError                Redis refused a command: a bug or a misconfigured server (500)
    └── WireError                   an error answer of either listener: status, name, message
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Final

if TYPE_CHECKING:
    from collections.abc import Mapping


class SidecarError(Exception):
    """Base class of every error the sidecar raises on purpose."""


class ConfigError(SidecarError):
    """A setting is missing or malformed; the process must not start."""

    def __init__(self, setting: str, message: str) -> None:
        super().__init__(f"{setting}: {message}")
        self.setting = setting


class StartupFailed(SidecarError):
    """A well-formed setting points at something that is not there, so the process stops.

    Raised at start only, for example when ``REDIS_URL`` does not answer in time.
    """

    def __init__(self, setting: str, message: str) -> None:
        super().__init__(f"{setting}: {message}")
        self.setting = setting


class EmbeddedServerError(SidecarError):
    """The embedded server could not be found or started."""


class DataDirInUse(EmbeddedServerError):
    """Another embedded server (or the sidecar that started it) holds the data directory."""


class LexiconError(SidecarError):
    """A lexicon is malformed, or a value we produced breaks its lexicon (our bug)."""


class InvalidInput(SidecarError):
    """The caller's input breaks a rule; the message says which, and is safe to show."""


class PayloadTooLarge(InvalidInput):
    """The request body is larger than the listener accepts."""


class BodyTimedOut(InvalidInput):
    """The request body did not arrive within ``SIDECAR_HTTP_READ_TIMEOUT_S``."""


# Every ``AuthenticationFailed.reason``: the API's own (missing, malformed,
# unknown_key) and the service JWT checks' (docs/authentication.md). The
# auth_failures metric shows each at 0 from start.
AUTH_FAILURE_REASONS: Final = (
    "missing",
    "malformed",
    "unknown_key",
    "bad_jwt",
    "bad_alg",
    "bad_type",
    "bad_audience",
    "bad_lxm",
    "expired",
    "too_long_lived",
    "replayed",
    "bad_signature",
    "unresolved_did",
    # DID resolution refusals (sidecar.auth.did_resolver), each its own reason.
    "did_non_public_address",
    "did_failed_recently",
    "did_refetch_limited",
)


class AuthenticationFailed(SidecarError):
    """Credentials are missing or invalid.

    ``reason`` is a short fixed label for logs and metrics (``missing``,
    ``malformed``, ``unknown_key``, ...). It is never sent to the caller.
    """

    def __init__(self, reason: str) -> None:
        # Two messages only: what was missing, or that it did not pass, and
        # nothing more (which check failed is for logs and metrics).
        super().__init__(
            "Authentication required: no credential was sent; "
            "send it as 'Authorization: Bearer <credential>'"
            if reason == "missing"
            else "Authentication failed: the credential was not recognised"
        )
        self.reason = reason


class Forbidden(SidecarError):
    """The caller is authenticated, but its DID may not use this service."""


class DidResolutionError(SidecarError):
    """A DID could not be resolved to a usable ``#atproto`` signing key.

    Never reaches the wire as such: the service-auth verifier turns it into
    ``AuthenticationFailed(reason)``; ``reason`` is one of ``AUTH_FAILURE_REASONS``.
    """

    def __init__(self, message: str, *, reason: str = "unresolved_did") -> None:
        super().__init__(message)
        self.reason = reason


class InvalidPublicKey(DidResolutionError):
    """A verification method holds a key of an unsupported type or a malformed encoding."""


class RateLimited(SidecarError):
    """A rate limit is used up; the caller may try again after ``reset_after_ms``.

    ``kind`` is the limit's metric label (``changes_per_minute``,
    ``auth_failures_per_minute``); ``limit`` and ``window_s`` its policy;
    ``reset_at_ms`` when the window ends, on the Redis server's clock. The
    message names the limit and never the key it was counted under.
    """

    def __init__(
        self, kind: str, *, limit: int, window_s: int, reset_after_ms: int, reset_at_ms: int
    ) -> None:
        what = kind.removesuffix("_per_minute").replace("_", " ")
        super().__init__(
            f"Rate limit exceeded: at most {limit} {what} per {window_s} s; "
            f"retry in {-(-reset_after_ms // 1000)} s"
        )
        self.kind = kind
        self.limit = limit
        self.window_s = window_s
        self.reset_after_ms = reset_after_ms
        self.reset_at_ms = reset_at_ms


class ResolutionsBusy(SidecarError):
    """As many DID resolutions as allowed are in flight; a new one is refused, not queued."""


class SecretNotFound(SidecarError):
    """The owner has no secret of that name."""


class SecretExists(SidecarError):
    """The owner already has a secret of that name."""


class SecretQuotaExceeded(SidecarError):
    """The owner holds as many secrets as ``SIDECAR_MAX_SECRETS_PER_DID`` allows, or more.

    ``count`` is how many it holds (more than ``limit`` when the quota was
    lowered below it) and ``limit`` the quota in force; neither is a secret.
    """

    def __init__(self, count: int, limit: int) -> None:
        super().__init__(
            f"Secret quota reached: this account has {count} secrets and may have at most "
            f"{limit}; delete one before creating another"
        )
        self.count = count
        self.limit = limit


class EncryptionUnavailable(SidecarError):
    """No active key-encryption key is configured, so nothing new can be sealed."""


# Why an envelope did not open, for logs and the envelopes_unopenable metric.
ENVELOPE_FAILURE_REASONS: Final = ("malformed", "unknown_key", "undecryptable")


class EnvelopeError(SidecarError):
    """A stored envelope is malformed, sealed under an unknown key, or fails authentication.

    ``reason`` is one of ``ENVELOPE_FAILURE_REASONS``; ``kid`` is the key id the
    envelope names (public: it is written in every envelope), when it has one.
    """

    def __init__(self, message: str, *, reason: str = "malformed", kid: str | None = None) -> None:
        super().__init__(message)
        self.reason = reason
        self.kid = kid


class StorageUnavailable(SidecarError):
    """Redis refused, failed, or did not answer within the timeout."""


class ChangeNotDurable(StorageUnavailable):
    """A change was not confirmed as durable as configured within the timeout.

    It may or may not have been applied: the primary may keep it, or lose it
    in a failover. The caller is told so and retries (see ``sidecar.storage.durability``).
    """


class StorageError(SidecarError):
    """Redis answered with an error that is not about availability.

    A bug, or a server that denies a command the sidecar needs (an ACL that
    lacks ``INFO``, say). The listeners answer it with a 500 without details.
    """


class WireError(SidecarError):
    """An error answer, on the XRPC and the sign listener alike.

    It goes on the wire as ``{"error": name, "message": message}`` with its
    status and headers.
    """

    def __init__(
        self,
        status: int,
        name: str,
        message: str,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.name = name
        self.message = message
        self.headers: dict[str, str] = dict(headers or {})
