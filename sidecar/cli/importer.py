"""``wisp-sidecar import``: bring tokens receivers already hold, from JSON lines.

Each line is ``{"did", "name", "token"}``. A name that exists is skipped and
never overwritten, so a rerun after a partial run imports only what is left.
A line that would take its owner past ``SIDECAR_MAX_SECRETS_PER_DID`` is not
done (the run goes on with the next line, and exits 1).
Nothing here ever prints a token, a line's text or a value that failed its
check: a bad name or DID may well be a token pasted in the wrong field.
"""

from __future__ import annotations

import contextlib
import json
import sys
from dataclasses import dataclass
from typing import TYPE_CHECKING, BinaryIO, Final

from sidecar.cli.common import EXIT_FAILED, EXIT_OK, counted, run
from sidecar.cli.devmode import dev_tool_settings
from sidecar.errors import (
    ChangeNotDurable,
    ConfigError,
    InvalidInput,
    SecretExists,
    SecretQuotaExceeded,
    StorageUnavailable,
)
from sidecar.names import validate_did, validate_name, validate_token

if TYPE_CHECKING:
    from collections.abc import Iterator

    from sidecar.crypto import Keyring
    from sidecar.settings import Settings
    from sidecar.storage.store import SecretStore

# The audit log's actor for every entry this command writes.
ACTOR: Final = "import"
FIELDS: Final = ("did", "name", "token")


@dataclass
class ImportReport:
    """What a run did, or in a dry run would do, counted by outcome."""

    imported: int = 0
    skipped: int = 0
    bad: int = 0
    over_quota: int = 0
    failed: int = 0

    def summary(self, *, dry_run: bool) -> str:
        done = "to import" if dry_run else "imported"
        skipped = "to skip" if dry_run else "skipped"
        line = (
            f"{self.imported} {done}, {self.skipped} {skipped} (name exists), "
            f"{counted(self.bad, 'bad line')}"
        )
        if self.over_quota:
            line += f", {self.over_quota} not done (SIDECAR_MAX_SECRETS_PER_DID)"
        if self.failed:
            line += f", {self.failed} not done (Redis)"
        return line + ("; nothing written (--dry-run)" if dry_run else "")


def parse_line(raw: bytes, *, first: bool = False) -> tuple[str, str, str]:
    """``(did, name, token)`` of one line, or ``InvalidInput`` saying what is wrong, never
    quoting the line."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise InvalidInput("is not UTF-8") from None
    if first:
        # Editors on some systems start a UTF-8 file with a byte-order mark.
        text = text.removeprefix("\ufeff")
    try:
        value = json.loads(text)
    except (ValueError, RecursionError):
        raise InvalidInput("is not valid JSON") from None
    if not isinstance(value, dict):
        raise InvalidInput('must be a JSON object {"did", "name", "token"}')
    if set(value) - set(FIELDS):
        # Not named: a field's name is the line's text too.
        raise InvalidInput("has fields other than did, name and token")
    for field in FIELDS:
        if field not in value:
            raise InvalidInput(f'has no "{field}"')
    return (
        validate_did(value["did"]),
        validate_name(value["name"]),
        validate_token(value["token"]),
    )


def _lines(stream: BinaryIO) -> Iterator[tuple[int, bytes]]:
    """Numbered non-blank lines: numbers count every line, as an editor shows them."""
    for number, raw in enumerate(stream, start=1):
        if raw.strip():
            yield number, raw


def import_tokens(settings: Settings, *, source: str, dry_run: bool) -> int:
    """Import every line of ``source`` (a path, or ``-`` for stdin); exit 0 when every line
    was imported or skipped, 1 when some were bad or not done."""
    with contextlib.ExitStack() as stack:
        if source == "-":
            stream: BinaryIO = sys.stdin.buffer
        else:
            try:
                stream = stack.enter_context(open(source, "rb"))
            except OSError as exc:
                raise ConfigError("FILE", f"{source} cannot be read: {exc.strerror}") from None
        settings = stack.enter_context(dev_tool_settings(settings))
        return _import(settings, stream, dry_run=dry_run)
    raise AssertionError("unreachable")  # pragma: no cover - ExitStack re-raises


def _import(settings: Settings, stream: BinaryIO, *, dry_run: bool) -> int:
    from sidecar.app import store_for
    from sidecar.crypto import Keyring

    if settings.redis_url is None:
        raise ConfigError("REDIS_URL", "is not set: import writes to the Redis your sidecars use")
    keyring = Keyring(settings.kek, settings.kek_previous)
    if not keyring.can_seal:
        raise ConfigError("SIDECAR_KEK", "is not set: import seals every token under it")

    async def work() -> ImportReport:
        store = store_for(settings)
        report = ImportReport()
        try:
            await _run(store, keyring, stream, report, dry_run=dry_run)
        finally:
            await store.close()
        return report

    report = run(work())
    print(f"import: {report.summary(dry_run=dry_run)}")
    return EXIT_FAILED if report.bad or report.over_quota or report.failed else EXIT_OK


async def _run(
    store: SecretStore, keyring: Keyring, stream: BinaryIO, report: ImportReport, *, dry_run: bool
) -> None:
    # A dry run writes nothing, so a name twice in the file is found here
    # instead, and so is an owner the file would take past its quota.
    seen: set[tuple[str, str]] = set()
    held: dict[str, int] = {}
    for number, raw in _lines(stream):
        try:
            did, name, token = parse_line(raw, first=number == 1)
        except InvalidInput as exc:
            print(f"import: line {number}: bad: {exc}", file=sys.stderr)
            report.bad += 1
            continue
        # Sealed in a dry run too: it proves the key seals before anything is written.
        envelope = keyring.seal(token, did=did, name=name)
        exists_line = f"import: line {number}: skipped: {did} already has a secret named {name!r}"
        try:
            if dry_run:
                if (did, name) in seen or await store.get_envelope(did, name) is not None:
                    print(exists_line)
                    report.skipped += 1
                else:
                    if did not in held:
                        held[did] = await store.count_secrets(did)
                    if held[did] >= store.max_secrets_per_did:
                        raise SecretQuotaExceeded(held[did], store.max_secrets_per_did)
                    held[did] += 1
                    report.imported += 1
                seen.add((did, name))
                continue
            await store.create(did, name, envelope, actor=ACTOR, imported=True)
            report.imported += 1
        except SecretExists:
            print(exists_line)
            report.skipped += 1
        except SecretQuotaExceeded as exc:
            print(
                f"import: line {number}: not done: {did} already has {exc.count} secrets, "
                f"and SIDECAR_MAX_SECRETS_PER_DID allows {exc.limit}",
                file=sys.stderr,
            )
            report.over_quota += 1
        except ChangeNotDurable:
            # Applied or not, a rerun is right: an applied line is skipped then.
            print(
                f"import: line {number}: not confirmed by the replicas "
                "SIDECAR_DURABLE_REPLICAS asks for; stopped here, run it again",
                file=sys.stderr,
            )
            report.failed += 1
            return
        except StorageUnavailable:
            print(
                f"import: line {number}: Redis did not answer in time; stopped here, "
                "run it again (what was imported is skipped then)",
                file=sys.stderr,
            )
            report.failed += 1
            return
