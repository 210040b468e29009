# mypy: disable-error-code="union-attr,index,list-item,arg-type"
# (redis-py types a synchronous answer as a union with its awaitable and with None.)
"""``wisp-sidecar import``: JSON lines of existing tokens, in-process and as a real process,
against the test Redis, with the sidecar signing what it imported."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
from typing import TYPE_CHECKING, Any

import aiohttp
import pytest
from aiohttp.test_utils import TestClient
from support import ALICE, BOB, CREATE, ROTATE, call, keyspace_dump, sign_body

from harness import run_command, sidecar_env, start_serve
from sidecar.cli import main
from sidecar.storage.layout import log_key, secret_key

if TYPE_CHECKING:
    from pathlib import Path

    import redis
    from support import Keys

    from sidecar.app import Sidecar

Client = TestClient[Any, Any]
BODY = b'{"event":"create","did":"did:plc:abc","rkey":"3k"}'


def token_for(i: int) -> str:
    """A distinct importable token per number, shaped like another provider's secret."""
    return f"whsec_legacy+{i:06d}/" + hashlib.sha256(str(i).encode()).hexdigest()[:40]


def line(did: str, name: str, token: Any) -> str:
    """One JSON line of the import file."""
    return json.dumps({"did": did, "name": name, "token": token})


async def test_import_reports_skips_and_bad_lines_by_number_and_never_a_token(
    xrpc: Client,
    sign: Client,
    keys: Keys,
    env: dict[str, str],
    tmp_path: Path,
    sidecar: Sidecar,
    raw_redis: redis.Redis,
    log_lines: list[str],
    capsys: pytest.CaptureFixture[str],
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Good lines import, an existing name is skipped untouched, bad lines are named by number;
    the output and logs hold no token, and exit is 1."""
    _, existing = await call(xrpc, CREATE, keys.alice, {"name": "kept"})
    bad_token = "has a space in it 0123456789abcdefghij"
    lines = [
        line(ALICE, "orders", token_for(1)),  # 1
        line(ALICE, "kept", token_for(2)),  # 2: exists
        "",  # 3: blank, ignored
        '{"did": "' + ALICE + '", "name": "x", "token": ',  # 4: not JSON
        line(ALICE, "spaced", bad_token),  # 5
        json.dumps({"did": ALICE, "token": token_for(6)}),  # 6: no name
        line(ALICE, token_for(7)[:20], token_for(7)),  # 7: name is not a name
        json.dumps({"did": ALICE, "name": "y", "token": token_for(8), "secret": "z"}),  # 8
        line("alice", "users", token_for(9)),  # 9: not a DID
        line(BOB, "hooks", token_for(10)),  # 10
    ]
    path = tmp_path / "tokens.jsonl"
    path.write_text("\n".join(lines) + "\n")
    capsys.readouterr()
    code = await asyncio.to_thread(main, ["import", str(path)], env)
    out, err = capsys.readouterr()
    assert code == 1
    assert out.splitlines() == [
        f"import: line 2: skipped: {ALICE} already has a secret named 'kept'",
        "import: 2 imported, 1 skipped (name exists), 6 bad lines",
    ]
    assert [entry.split(": bad: ")[0] for entry in err.splitlines()] == [
        f"import: line {n}" for n in (4, 5, 6, 7, 8, 9)
    ]
    assert "line 5: bad: token must be 32-256 printable ASCII characters" in err
    assert 'line 6: bad: has no "name"' in err
    everything = out + err + "\n".join(log_lines) + caplog.text
    for secret in [bad_token, existing["token"], *(token_for(i) for i in range(1, 11))]:
        assert secret not in everything
        assert secret[-24:] not in everything

    env_kept = raw_redis.hget(secret_key(ALICE, "kept"), "env").decode()
    assert sidecar.keyring.open(env_kept, did=ALICE, name="kept") == existing["token"]
    for did, name, token in ((ALICE, "orders", token_for(1)), (BOB, "hooks", token_for(10))):
        _, signed = await sign_body(sign, did, name, BODY, scheme="github")
        digest = hmac.new(token.encode(), BODY, hashlib.sha256).hexdigest()
        assert signed["headers"] == {"X-Hub-Signature-256": "sha256=" + digest}
    audit = [fields for _, fields in raw_redis.xrange(log_key(ALICE))]
    assert [(e[b"op"], e[b"name"], e[b"actor"]) for e in audit] == [
        (b"create", b"kept", b"apikey:alice-ci"),
        (b"import", b"orders", b"import"),
    ]

    # A rotate retires the imported token for the very next signature.
    _, rotated = await call(xrpc, ROTATE, keys.alice, {"name": "orders"})
    _, signed = await sign_body(sign, ALICE, "orders", BODY, scheme="github")
    digest = hmac.new(rotated["token"].encode(), BODY, hashlib.sha256).hexdigest()
    assert signed["headers"] == {"X-Hub-Signature-256": "sha256=" + digest}


async def test_a_thousand_lines_import_and_a_rerun_imports_none(
    env: dict[str, str], tmp_path: Path, raw_redis: redis.Redis
) -> None:
    """1,000 lines import as a real process with exit 0; run again, all 1,000 are skipped."""
    path = tmp_path / "tokens.jsonl"
    path.write_text("".join(line(ALICE, f"hook-{i}", token_for(i)) + "\n" for i in range(1000)))
    code, out, err = await run_command("import", str(path), env=env)
    assert (code, err) == (0, "")
    assert out == "import: 1000 imported, 0 skipped (name exists), 0 bad lines\n"
    assert raw_redis.zcard(f"wsc:{{{ALICE}}}:idx") == 1000
    before = keyspace_dump(raw_redis)

    code, out, err = await run_command("import", str(path), env=env)
    assert (code, err) == (0, "")
    assert out.splitlines()[-1] == "import: 0 imported, 1000 skipped (name exists), 0 bad lines"
    assert len(out.splitlines()) == 1001
    assert keyspace_dump(raw_redis) == before
    assert not any(token_for(i) in out for i in range(1000))


async def test_a_dry_run_from_stdin_checks_everything_and_writes_nothing(
    xrpc: Client, keys: Keys, env: dict[str, str], raw_redis: redis.Redis
) -> None:
    """--dry-run with - reads stdin, counts what it would import and skip, and writes nothing."""
    await call(xrpc, CREATE, keys.alice, {"name": "kept"})
    stdin = "\n".join(
        [
            line(ALICE, "orders", token_for(1)),
            line(ALICE, "kept", token_for(2)),
            line(ALICE, "orders", token_for(3)),  # the same name again in the file
            line(ALICE, "short", "too-short"),
        ]
    ).encode()
    before = keyspace_dump(raw_redis)
    code, out, err = await run_command("import", "--dry-run", "-", env=env, stdin=stdin)
    assert code == 1
    assert out.splitlines() == [
        f"import: line 2: skipped: {ALICE} already has a secret named 'kept'",
        f"import: line 3: skipped: {ALICE} already has a secret named 'orders'",
        "import: 1 to import, 2 to skip (name exists), 1 bad line; nothing written (--dry-run)",
    ]
    assert err.startswith("import: line 4: bad: token must be")
    assert keyspace_dump(raw_redis) == before


@pytest.mark.parametrize(
    ("drop", "args", "names"),
    [
        (None, ["/nonexistent/tokens.jsonl"], "FILE"),
        ("SIDECAR_KEK", ["-"], "SIDECAR_KEK"),
        ("REDIS_URL", ["-"], "REDIS_URL"),
    ],
)
async def test_configuration_errors_exit_2_and_write_nothing(
    env: dict[str, str], raw_redis: redis.Redis, drop: str | None, args: list[str], names: str
) -> None:
    """A missing file, KEK or Redis is a configuration error: exit 2, one line, nothing written."""
    settings = {k: v for k, v in env.items() if k != drop}
    stdin = (line(ALICE, "orders", token_for(1)) + "\n").encode()
    code, out, err = await run_command("import", *args, env=settings, stdin=stdin)
    assert code == 2, err
    assert out == ""
    assert err.startswith("wisp-sidecar: configuration error: " + names)
    assert raw_redis.exists(secret_key(ALICE, "orders")) == 0


async def test_beside_make_run_it_finds_the_development_kek_and_valkey(tmp_path: Path) -> None:
    """With nothing configured, import writes to the running development sidecar, which then
    signs with the imported token."""
    env = sidecar_env(tmp_path, loopback=False)
    served = await start_serve(env, banner=True)
    try:
        stdin = (line("did:web:localhost", "orders", token_for(1)) + "\n").encode()
        code, out, err = await run_command("import", "-", env=env, stdin=stdin)
        assert (code, err) == (0, ""), out
        assert out == "import: 1 imported, 0 skipped (name exists), 0 bad lines\n"
        params = {"did": "did:web:localhost", "name": "orders", "scheme": "github"}
        async with (
            aiohttp.ClientSession() as session,
            session.post(f"{served.sign}/v1/sign", params=params, data=BODY) as response,
        ):
            assert response.status == 200
            signed = await response.json()
    finally:
        assert await served.terminate() == 0
    digest = hmac.new(token_for(1).encode(), BODY, hashlib.sha256).hexdigest()
    assert signed["headers"] == {"X-Hub-Signature-256": "sha256=" + digest}


async def test_an_import_not_confirmed_durable_stops_and_a_rerun_skips_it(
    env: dict[str, str], raw_redis: redis.Redis
) -> None:
    """With SIDECAR_DURABLE_REPLICAS unmet, import stops at the first line with exit 1; the
    write may have applied, so a rerun without the wait reports it skipped."""
    stdin = "".join(line(ALICE, f"hook-{i}", token_for(i)) + "\n" for i in range(3)).encode()
    waiting = {**env, "SIDECAR_DURABLE_REPLICAS": "1", "SIDECAR_DURABLE_TIMEOUT_MS": "100"}
    code, out, err = await run_command("import", "-", env=waiting, stdin=stdin)
    assert code == 1
    assert err.startswith("import: line 1: not confirmed by the replicas")
    assert out == "import: 0 imported, 0 skipped (name exists), 0 bad lines, 1 not done (Redis)\n"
    assert raw_redis.zcard(f"wsc:{{{ALICE}}}:idx") == 1

    code, out, err = await run_command("import", "-", env=env, stdin=stdin)
    assert (code, err) == (0, "")
    assert out.splitlines()[-1] == "import: 2 imported, 1 skipped (name exists), 0 bad lines"
