"""structlog set-up: JSON lines to stdout, with every credential redacted.

Request context (request id, listener, caller) is bound through contextvars so
that every line of a request carries it. The redaction processor is the last
line of defence: code never logs tokens on purpose, and this makes sure an
accident does not leak one either.

Lines that anyone can cause without a credential (a refused or anonymous
request, a connection the listener closed) go through ``sampled``: each kind
gets a budget of lines per second, and what is over it is dropped and
counted, so a flood of requests cannot make the log the bottleneck. Lines of
changes and of refused credentials never go through it.
"""

from __future__ import annotations

import logging
import re
import sys
import time
from collections.abc import Callable, Mapping, MutableMapping
from typing import Any, Final, TextIO

import structlog

REDACTED: Final = "[redacted]"

# Values that are credentials whatever key they sit under.
_CREDENTIAL_PATTERNS: Final = (
    re.compile(r"wsk_[A-Za-z0-9_-]{8,}"),  # signing tokens
    re.compile(r"wsa_[A-Za-z0-9_-]{8,}"),  # API keys
    re.compile(r"whsec_[A-Za-z0-9+/=]{8,}"),  # Standard Webhooks receiver secrets
    re.compile(r"(?i)bearer\s+\S+"),  # Authorization values
    re.compile(r"eyJ[A-Za-z0-9_-]*\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]*"),  # JWTs
    re.compile(r"wsn1\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+"),  # envelopes
    re.compile(r"(?<![A-Za-z0-9])[0-9a-fA-F]{64}(?![A-Za-z0-9])"),  # hex KEKs
    re.compile(r"(?<![A-Za-z0-9_+/-])[A-Za-z0-9_-]{43}(?![A-Za-z0-9_+/=-])"),  # base64url KEKs
    re.compile(r"(?<![A-Za-z0-9_+/-])[A-Za-z0-9+/]{43}=(?![A-Za-z0-9_+/=-])"),  # base64 KEKs
)
# Keys whose value is dropped whole, whatever it looks like.
_SECRET_KEYS: Final = frozenset(
    {"token", "authorization", "kek", "api_key", "password", "secret", "envelope", "jwt"}
)


def redact_text(text: str) -> str:
    for pattern in _CREDENTIAL_PATTERNS:
        text = pattern.sub(REDACTED, text)
    return text


def _redact_value(value: Any) -> Any:
    if isinstance(value, str):
        return redact_text(value)
    if isinstance(value, Mapping):
        return {key: _redact_item(str(key), item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_redact_value(item) for item in value]
    if isinstance(value, bytes | bytearray):
        return REDACTED
    return value


def _redact_item(key: str, value: Any) -> Any:
    if key.lower() in _SECRET_KEYS:
        return REDACTED
    return _redact_value(value)


def redact(
    _logger: Any, _method: str, event_dict: MutableMapping[str, Any]
) -> MutableMapping[str, Any]:
    """structlog processor: scrub credentials from every key and value."""
    for key in list(event_dict):
        event_dict[key] = _redact_item(key, event_dict[key])
    return event_dict


# The kinds of line ``sampled`` budgets: labels of the dropped-lines metric.
SAMPLED_KINDS: Final = (
    "request_refused",  # a request line with status 400 and up
    "request_anonymous",  # a request line of a caller without credentials
    "http_refused",  # a request the listener refused before any handler
    "connection_closed",  # a connection the listener closed itself
)


class LineBudget:
    """A token bucket per kind of line: ``per_second`` lines a second, as a burst too."""

    def __init__(self, per_second: int, *, clock: Callable[[], float] = time.monotonic) -> None:
        self._rate = float(per_second)
        self._clock = clock
        # kind -> (tokens left, when they were counted)
        self._buckets: dict[str, tuple[float, float]] = {}
        self.dropped: dict[str, int] = dict.fromkeys(SAMPLED_KINDS, 0)
        # Lines dropped since the last one of the kind that was written.
        self._skipped: dict[str, int] = {}

    def take(self, kind: str) -> int | None:
        """None when a line of ``kind`` is over budget (it is counted as dropped), else
        how many of that kind were dropped since the last one written."""
        now = self._clock()
        tokens, then = self._buckets.get(kind, (self._rate, now))
        tokens = min(self._rate, tokens + (now - then) * self._rate)
        if tokens < 1:
            self._buckets[kind] = (tokens, now)
            self.dropped[kind] = self.dropped.get(kind, 0) + 1
            self._skipped[kind] = self._skipped.get(kind, 0) + 1
            return None
        self._buckets[kind] = (tokens - 1, now)
        return self._skipped.pop(kind, 0)


# None: no budget, every line is written (the default, until configured).
_budget: LineBudget | None = None


def sampled(logger: Any, kind: str, event: str, **fields: Any) -> None:
    """Log ``event`` at info level unless lines of ``kind`` are over their budget.

    A line written after some were dropped says how many, as ``dropped``.
    """
    if _budget is not None:
        skipped = _budget.take(kind)
        if skipped is None:
            return
        if skipped:
            fields["dropped"] = skipped
    logger.info(event, **fields)


def dropped_lines() -> Mapping[str, int]:
    """Lines dropped so far by kind, for the metric."""
    return _budget.dropped if _budget is not None else dict.fromkeys(SAMPLED_KINDS, 0)


def configure_logging(
    level: str = "info",
    fmt: str = "auto",
    *,
    stream: TextIO | None = None,
    sink: Callable[[str], None] | None = None,
    sampled_per_s: int | None = None,
) -> None:
    """Configure structlog once for the process.

    ``sink`` receives every rendered line instead of ``stream`` (tests use it
    to capture all output). ``fmt`` "auto" means console on a TTY, else JSON.
    ``sampled_per_s`` is the budget of each kind of ``sampled`` line; None
    writes them all.
    """
    # The log is the process's, and so is its budget.
    global _budget
    _budget = LineBudget(sampled_per_s) if sampled_per_s is not None else None
    out = stream or sys.stdout
    console = fmt == "console" or (fmt == "auto" and sink is None and out.isatty())
    renderer: Any = (
        structlog.dev.ConsoleRenderer(colors=False)
        if console
        else structlog.processors.JSONRenderer(sort_keys=False)
    )
    processors: list[Any] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        structlog.processors.format_exc_info,
        # Last before rendering, so it also scrubs formatted tracebacks.
        redact,
        renderer,
    ]
    threshold = logging.getLevelNamesMapping()[level.upper()]
    structlog.configure(
        processors=processors,
        wrapper_class=structlog.make_filtering_bound_logger(threshold),
        logger_factory=_SinkLoggerFactory(sink) if sink else structlog.PrintLoggerFactory(out),
        cache_logger_on_first_use=False,
    )
    # What aiohttp, asyncio and any library log through the standard library
    # goes the same way: one JSON line, redacted, at the same threshold. Left
    # to the default, it would reach stderr as plain multi-line tracebacks.
    root = logging.getLogger()
    for handler in list(root.handlers):
        if isinstance(handler, _ToStructlog):
            root.removeHandler(handler)
    root.addHandler(_ToStructlog())
    root.setLevel(threshold)
    logging.captureWarnings(True)
    # A record that fails to log must not print its own traceback to stderr.
    logging.raiseExceptions = False


class _ToStructlog(logging.Handler):
    """Hands each standard-library record to structlog, under the record's logger name."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            structlog.get_logger(record.name).log(
                record.levelno,
                record.getMessage(),
                logger=record.name,
                exc_info=record.exc_info or False,
            )
        except Exception:
            self.handleError(record)


class _SinkLogger:
    def __init__(self, sink: Callable[[str], None]) -> None:
        self._sink = sink

    def msg(self, message: str) -> None:
        self._sink(message)

    debug = info = warning = warn = error = critical = exception = fatal = log = msg


class _SinkLoggerFactory:
    def __init__(self, sink: Callable[[str], None]) -> None:
        self._sink = sink

    def __call__(self, *args: Any) -> _SinkLogger:
        return _SinkLogger(self._sink)


def get_logger(name: str) -> Any:
    return structlog.get_logger(name)
