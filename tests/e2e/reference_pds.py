"""The real reference PDS for the end-to-end tests, and the node that runs it.

``npm ci`` installs the packages of ``package.json`` (pinned by
``package-lock.json``) once per lockfile, into a cache outside the work tree:
``${XDG_CACHE_HOME:-~/.cache}/wisp-sidecar/e2e-<hash>``. ``reference_pds.cjs``
then starts an in-memory PLC directory and a development PDS on 127.0.0.1.
"""

from __future__ import annotations

import asyncio
import fcntl
import hashlib
import json
import os
import re
import shutil
import subprocess
from pathlib import Path
from typing import Final

HERE: Final = Path(__file__).resolve().parent
MANIFESTS: Final = (HERE / "package.json", HERE / "package-lock.json")
LAUNCHER: Final = HERE / "reference_pds.cjs"
NODE_MAJOR: Final = 20
HOW_TO_INSTALL: Final = (
    f"install node {NODE_MAJOR}+ and npm to run it (Debian: apt-get install nodejs npm); "
    "the packages then install by themselves"
)
# better-sqlite3 has no prebuilt binary it could fetch here, so it compiles: without
# optimisation, about a quarter of the CPU time, which a test PDS does not miss.
BUILD_FLAGS: Final = {"CFLAGS": "-O0", "CXXFLAGS": "-O0"}
INSTALL_TIMEOUT_S: Final = 1500


def missing_node() -> str | None:
    """Why the end-to-end tests cannot run here, or None when node and npm are usable."""
    node, npm = shutil.which("node"), shutil.which("npm")
    if node is None or npm is None:
        return f"{'node' if node is None else 'npm'} is not on PATH: {HOW_TO_INSTALL}"
    version = subprocess.run(
        [node, "--version"], capture_output=True, text=True, timeout=30, check=False
    ).stdout
    found = re.match(r"v(\d+)\.", version)
    if found is None or int(found[1]) < NODE_MAJOR:
        return f"node {version.strip() or '?'} is too old: {HOW_TO_INSTALL}"
    return None


def cache_dir() -> Path:
    """Where this lockfile's packages go: one folder per content of the two manifests."""
    digest = hashlib.sha256(b"".join(path.read_bytes() for path in MANIFESTS)).hexdigest()
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return base / "wisp-sidecar" / f"e2e-{digest[:16]}"


def install() -> Path:
    """The installed ``node_modules``, from ``npm ci`` the first time for this lockfile.

    Test runs beside each other wait for one install (a file lock), and a
    half-done install is never used: it is marked complete only at its end.
    """
    target = cache_dir()
    done = target / ".installed"
    if done.exists():
        return target / "node_modules"
    target.parent.mkdir(parents=True, exist_ok=True)
    with (target.parent / f"{target.name}.lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if done.exists():
            return target / "node_modules"
        shutil.rmtree(target, ignore_errors=True)
        target.mkdir()
        for manifest in MANIFESTS:
            shutil.copy(manifest, target / manifest.name)
        env = {**os.environ, **BUILD_FLAGS}
        # The node headers of the installed node, for native modules; without them
        # node-gyp would download headers, which needs more than the npm registry.
        node = shutil.which("node")
        prefix = Path(node).resolve().parents[1] if node else None
        if prefix is not None and (prefix / "include" / "node" / "node.h").exists():
            env["npm_config_nodedir"] = str(prefix)
        npm = shutil.which("npm") or "npm"
        result = subprocess.run(
            [npm, "ci", "--no-audit", "--no-fund", "--loglevel=error"],
            cwd=target,
            env=env,
            capture_output=True,
            text=True,
            timeout=INSTALL_TIMEOUT_S,
            check=False,
        )
        if result.returncode != 0:
            raise RuntimeError(f"npm ci failed in {target}:\n{result.stderr[-4000:]}")
        done.write_text("npm ci completed\n")
    return target / "node_modules"


def node_env(modules: Path, **extra: str) -> dict[str, str]:
    """An environment in which ``node`` finds the installed packages (CommonJS ``require``)."""
    home = str(Path.home())
    return {"PATH": os.environ["PATH"], "HOME": home, "NODE_PATH": str(modules), **extra}


class ReferencePds:
    """A running ``reference_pds.cjs``: the PDS's and the PLC directory's URLs."""

    def __init__(self, process: asyncio.subprocess.Process, pds: str, plc: str) -> None:
        self.process = process
        self.url = pds
        self.plc = plc

    @classmethod
    async def start(cls, modules: Path) -> ReferencePds:
        """Start the PLC directory and the PDS; return once both listen."""
        process = await asyncio.create_subprocess_exec(
            shutil.which("node") or "node",
            str(LAUNCHER),
            env=node_env(modules),
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        assert process.stdout is not None
        line = await asyncio.wait_for(process.stdout.readline(), timeout=120)
        if not line:
            assert process.stderr is not None
            error = await process.stderr.read()
            raise RuntimeError(f"the reference PDS did not start:\n{error.decode()[-4000:]}")
        ready = json.loads(line)
        return cls(process, ready["pds"], ready["plc"])

    async def stop(self) -> int:
        """Close its stdin (it stops both servers) and return its exit status."""
        assert self.process.stdin is not None
        self.process.stdin.close()
        try:
            return await asyncio.wait_for(self.process.wait(), timeout=30)
        except TimeoutError:
            self.process.kill()
            return await self.process.wait()


if __name__ == "__main__":
    # .ci/run starts the first install early, beside the lint; the tests wait for it.
    if missing_node() is None:
        print(install())
