"""The operator tools: --version, --help for people, audit, keys status and doctor, each
run as the command against real Redis-protocol servers and a real served sidecar."""

from __future__ import annotations

import asyncio
import json
import os
from typing import TYPE_CHECKING, Any

import pytest
import redis
from aiohttp.test_utils import TestClient
from support import ALICE, BOB, CREATE, DELETE, ROTATE, SERVER_BINARY, call, report

from harness import run_command, sidecar_env, start_serve
from sidecar import __version__
from sidecar.cli import main
from sidecar.crypto import Keyring, encode_kek, generate_kek, parse_kek
from sidecar.storage.embedded import EmbeddedValkey, free_port
from sidecar.storage.layout import secret_key

if TYPE_CHECKING:
    from pathlib import Path

    from support import Keys

Client = TestClient[Any, Any]


async def test_version_prints_the_package_version() -> None:
    """``wisp-sidecar --version`` prints the name and version and exits 0."""
    status, out, _err = await run_command("--version", env={"PATH": os.environ["PATH"]})
    assert (status, out) == (0, f"wisp-sidecar {__version__}\n")


@pytest.mark.parametrize(
    ("argv", "points_to_settings"),
    [
        ([], True),
        (["serve"], True),
        (["rewrap"], True),
        (["keys"], True),
        (["keys", "status"], True),
        (["audit"], True),
        (["import"], True),
        (["doctor"], True),
        (["keygen"], False),
        (["apikey"], False),
    ],
)
def test_help_is_written_for_users(
    argv: list[str], points_to_settings: bool, capsys: pytest.CaptureFixture[str]
) -> None:
    """Every --help exits 0 with no internal text, and those that read settings point to
    the configuration reference."""
    with pytest.raises(SystemExit) as info:
        main([*argv, "--help"], environ={})
    assert info.value.code == 0
    text = capsys.readouterr().out
    assert "usage: wisp-sidecar" in text
    for internal in ("os.environ", "only reader", "``"):
        assert internal not in text
    assert ("docs/configuration.md" in text) is points_to_settings


async def test_audit_prints_the_log_as_json_lines_without_tokens(
    xrpc: Client, keys: Keys, env: dict[str, str], capsys: pytest.CaptureFixture[str]
) -> None:
    """audit prints each change as a JSON line (time, op, name, version, actor), filtered by
    name, limited and bounded by --since, and never a token."""
    tokens = []
    for nsid, name in (
        (CREATE, "orders"),
        (ROTATE, "orders"),
        (CREATE, "users"),
        (DELETE, "orders"),
    ):
        status, body = await call(xrpc, nsid, keys.alice, {"name": name})
        assert status == 200, body
        tokens += [body["token"]] if "token" in body else []
    await call(xrpc, CREATE, keys.bob, {"name": "bobs"})

    async def audit(*args: str) -> tuple[int, list[dict[str, Any]], str]:
        capsys.readouterr()  # the request lines the sidecar logged meanwhile
        code = await asyncio.to_thread(main, ["audit", "--did", ALICE, *args], env)
        out, err = capsys.readouterr()
        for token in tokens:
            assert token not in out + err
        return code, [json.loads(line) for line in out.splitlines()], err

    code, entries, _ = await audit()
    assert code == 0
    assert [(e["op"], e["name"], e["version"]) for e in entries] == [
        ("create", "orders", 1),
        ("rotate", "orders", 2),
        ("create", "users", 1),
        ("delete", "orders", 2),
    ]
    assert {tuple(sorted(e)) for e in entries} == {("actor", "name", "op", "time", "version")}
    assert {e["actor"] for e in entries} == {"apikey:alice-ci"}
    assert entries[0]["time"].endswith("Z")

    assert [e["op"] for e in (await audit("--name", "orders"))[1]] == ["create", "rotate", "delete"]
    assert [e["op"] for e in (await audit("--limit", "1"))[1]] == ["delete"]
    assert [e["op"] for e in (await audit("--since", "1h", "--limit", "2"))[1]] == [
        "create",
        "rotate",
    ]
    assert (await audit("--since", "2999-01-01"))[1] == []


@pytest.mark.parametrize(
    ("args", "option"),
    [
        (["--did", "alice"], "--did"),
        (["--did", ALICE, "--name", "a:b"], "--name"),
        (["--did", ALICE, "--since", "yesterday"], "--since"),
        (["--did", ALICE, "--since", "2026-01-15T10:00:00"], "--since"),
        (["--did", ALICE, "--limit", "0"], "--limit"),
    ],
)
def test_audit_refuses_bad_options_with_exit_2(
    args: list[str], option: str, env: dict[str, str], capsys: pytest.CaptureFixture[str]
) -> None:
    """A malformed --did, --name, --since or --limit exits 2 with one line naming it."""
    assert main(["audit", *args], environ=env) == 2
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert line.startswith(f"wisp-sidecar: configuration error: {option}: ")


def test_keys_status_counts_envelopes_by_key_id_and_says_which_open(
    redis_url: str, raw_redis: redis.Redis, capsys: pytest.CaptureFixture[str]
) -> None:
    """keys status counts secrets under the active, a previous, a missing key and malformed
    ones, exits 1 while some do not open, says to rewrap before retiring, then exits 0."""
    active, previous, missing = (encode_kek(generate_kek()) for _ in range(3))
    kid = {text: parse_kek(text, setting="t").kid for text in (active, previous, missing)}
    for text, name in ((active, "a"), (previous, "p"), (missing, "m")):
        envelope = Keyring(parse_kek(text, setting="t")).seal(
            "wsk_" + "x" * 32, did=ALICE, name=name
        )
        raw_redis.hset(secret_key(ALICE, name), mapping={"env": envelope, "ver": 1, "created": 0})
    raw_redis.hset(secret_key(BOB, "bad"), mapping={"env": "garbled", "ver": 1, "created": 0})
    environ = {"REDIS_URL": redis_url, "SIDECAR_KEK": active, "SIDECAR_KEK_PREVIOUS": previous}

    assert main(["keys", "status"], environ=environ) == 1
    out, err = capsys.readouterr()
    assert out.splitlines() == [
        f"keys: kid={kid[active]} active secrets=1 opened=1",
        f"keys: kid={kid[previous]} previous secrets=1 opened=1",
        *sorted(
            [
                f"keys: kid={kid[missing]} missing secrets=1 opened=0",
                "keys: kid=- malformed secrets=1 opened=0",
            ],
            key=lambda line: line.split()[1].removeprefix("kid=").replace("-", ""),
        ),
        "keys: 4 stored, 2 do not open",
    ]
    assert f"previous key {kid[previous]} still seals 1 secret:" in err
    assert f"cannot open 'm' of {ALICE} (kid={kid[missing]}, reason=unknown_key)" in err
    assert f"cannot open 'bad' of {BOB} (kid=-, reason=malformed)" in err
    for text in (active, previous, missing):
        assert text not in out + err

    raw_redis.delete(secret_key(ALICE, "m"), secret_key(BOB, "bad"))
    assert main(["keys", "status"], environ=environ) == 0
    assert capsys.readouterr().out.splitlines()[-1] == "keys: 2 stored, 0 do not open"


async def test_doctor_passes_against_a_deployed_sidecar_and_prints_no_secret(
    tmp_path: Path, keys: Keys, kek_text: str
) -> None:
    """Beside a served sidecar on a password-protected Valkey, doctor prints one line per
    check, all ok but the unset durability, exits 0, and prints no password or key."""
    password = "doctor-pass-" + "z" * 20
    server = EmbeddedValkey(
        tmp_path / "valkey",
        binary=SERVER_BINARY,
        persist=False,
        extra_args=("--requirepass", password),
    )
    server.start()
    try:
        env = sidecar_env(
            tmp_path / "data",
            REDIS_URL=f"redis://:{password}@127.0.0.1:{server.port}/0",
            SIDECAR_KEK=kek_text,
            SIDECAR_API_KEYS_FILE=str(keys.path),
        )
        served = await start_serve(env)
        try:
            status, out, err = await run_command("doctor", env=env)
        finally:
            assert await served.terminate() == 0
    finally:
        server.stop()
    checks = report(out)
    assert list(checks) == [
        "redis",
        "durability",
        "kek",
        "envelopes",
        "api keys",
        "limits",
        "listener xrpc",
        "listener sign",
        "listener ops",
    ]
    assert {name for name, (state, _) in checks.items() if state != "ok"} == {"durability"}
    assert checks["limits"][1] == (
        "at most 1000 secrets per owner DID; 60 changes/min per owner DID; "
        "60 refused credentials/min per client address (trusted proxies: none)"
    )
    assert checks["durability"][0] == "warn"
    assert status == 0, out + err
    assert checks["redis"][1].startswith(f"one server 127.0.0.1:{server.port}, valkey ")
    assert checks["kek"][1] == f"active kid {parse_kek(kek_text, setting='t').kid}; previous: none"
    assert checks["api keys"][1].startswith("2 keys for 2 DIDs")
    for secret in (password, kek_text, keys.alice, keys.bob):
        assert secret not in out + err


def test_doctor_fails_and_says_why_when_nothing_is_there(
    kek_text: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """With Redis down, no API keys and no listeners, doctor exits 1 with a FAIL line for each,
    skipping what needs Redis."""
    environ = {
        "REDIS_URL": f"redis://:hunter2secret@127.0.0.1:{free_port()}/0",
        "SIDECAR_KEK": kek_text,
        "SIDECAR_XRPC_PORT": str(free_port()),
        "SIDECAR_SIGN_PORT": str(free_port()),
        "SIDECAR_OPS_PORT": str(free_port()),
    }
    assert main(["doctor"], environ=environ) == 1
    out = capsys.readouterr().out
    states = {name: state for name, (state, _) in report(out).items()}
    assert states == {
        "redis": "FAIL",
        "durability": "skip",
        "envelopes": "skip",
        "kek": "ok",
        "api keys": "FAIL",
        "limits": "ok",
        "listener xrpc": "FAIL",
        "listener sign": "FAIL",
        "listener ops": "FAIL",
    }
    assert "hunter2secret" not in out
    assert kek_text not in out


def test_doctor_fails_on_missing_replicas_and_unopenable_tokens(
    redis_url: str,
    raw_redis: redis.Redis,
    keys: Keys,
    kek_text: str,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """doctor fails durability when the replicas asked for are not there, and envelopes when a
    stored token was sealed under a key it lacks."""
    foreign = Keyring(parse_kek(encode_kek(generate_kek()), setting="t"))
    envelope = foreign.seal("wsk_" + "y" * 32, did=ALICE, name="lost")
    raw_redis.hset(secret_key(ALICE, "lost"), mapping={"env": envelope, "ver": 1, "created": 0})
    environ = {
        "REDIS_URL": redis_url,
        "SIDECAR_KEK": kek_text,
        "SIDECAR_API_KEYS_FILE": str(keys.path),
        "SIDECAR_DURABLE_REPLICAS": "1",
    }
    assert main(["doctor"], environ=environ) == 1
    checks = report(capsys.readouterr().out)
    assert checks["durability"][0] == "FAIL"
    assert "replicas connected per primary: 0" in checks["durability"][1]
    assert checks["envelopes"][0] == "FAIL"
    assert checks["envelopes"][1].startswith("1 do not open with these keys")
    assert f"{foreign.active_kid} (missing): 1" in checks["envelopes"][1]
    assert checks["api keys"][0] == "ok"


async def test_doctor_beside_make_run_finds_the_development_sidecar(tmp_path: Path) -> None:
    """With nothing configured but the ports, doctor checks the running development sidecar:
    its Valkey, KEK, keys file and loopback listeners, and exits 0."""
    env = sidecar_env(tmp_path, loopback=False)
    served = await start_serve(env, banner=True)
    try:
        status, out, err = await run_command("doctor", env=env)
    finally:
        assert await served.terminate() == 0
    checks = report(out)
    assert status == 0, out + err
    assert checks["redis"][1].startswith("one server 127.0.0.1:")
    assert checks["api keys"][1].startswith(f"1 key for 1 DID in {tmp_path / 'dev-api-keys'}")
    assert checks["listener xrpc"] == (
        "ok",
        f"127.0.0.1:{env['SIDECAR_XRPC_PORT']}: version {__version__}",
    )
    assert "wsa_" not in out + err
