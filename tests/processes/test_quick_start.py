"""The curl examples of README.md and docs/api.md work as written against ``make run``:
replayed in order against a real development-mode ``serve``, each answers 200 with the
fields its comment shows."""

from __future__ import annotations

import json
import re
import shlex
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

import aiohttp

from harness import sidecar_env, start_serve

if TYPE_CHECKING:
    from harness import ServeProcess

ROOT = Path(__file__).resolve().parents[2]
SHELL_BLOCK = re.compile(r"```sh\n(.*?)```", re.DOTALL)


def examples(document: Path) -> list[tuple[list[str], dict[str, Any] | None]]:
    """Each curl command of the document's shell blocks, with the answer its comment shows."""
    found: list[tuple[list[str], dict[str, Any] | None]] = []
    for block in SHELL_BLOCK.findall(document.read_text()):
        lines = block.replace("\\\n", " ").splitlines()
        for number, line in enumerate(lines):
            if not line.startswith("curl "):
                continue
            following = lines[number + 1] if number + 1 < len(lines) else ""
            shown = json.loads(following[2:]) if following.startswith("# {") else None
            found.append((shlex.split(line.split("  #")[0]), shown))
    return found


async def replay(served: ServeProcess, key: str, argv: list[str]) -> tuple[int, Any]:
    """Send what ``argv`` (a curl command) sends, with the ports and key of ``served``."""
    method, headers, data, url = "GET", {}, None, ""
    connector: aiohttp.BaseConnector | None = None
    words = iter(argv[1:])
    for word in words:
        if word == "--unix-socket":
            next(words)  # the documented path; the served sign socket instead
            connector = aiohttp.UnixConnector(path=served.env["SIDECAR_SIGN_SOCKET"])
        elif word == "-X":
            method = next(words)
        elif word == "-H":
            name, _, value = next(words).partition(": ")
            headers[name] = value.replace("$KEY", key)
        elif word in ("-d", "--data-binary"):
            data = next(words).encode()
            method = "POST" if method == "GET" else method
        elif not word.startswith("-"):
            url = word
    url = (
        url.replace("$X", "http://127.0.0.1:8080/xrpc")
        .replace("127.0.0.1:8080", served.xrpc.removeprefix("http://"))
        .replace("127.0.0.1:8081", served.sign.removeprefix("http://"))
    )
    async with (
        aiohttp.ClientSession(connector=connector) as session,
        session.request(method, url, headers=headers, data=data) as response,
    ):
        return response.status, await response.json()


async def test_the_documented_curl_examples_work_against_development_mode(
    tmp_path: Path,
) -> None:
    """docs/api.md's XRPC examples, then README.md's create, rotate and sign, each answer 200
    with the fields their comments show (so a copied sign example names the right DID)."""
    documented = [*examples(ROOT / "docs" / "api.md"), *examples(ROOT / "README.md")]
    assert len(documented) >= 8
    assert any("/v1/sign" in " ".join(argv) for argv, _ in documented)
    with tempfile.TemporaryDirectory(prefix="ws") as short:
        # The sign socket too, for the examples that use it (a path short enough for one).
        env = sidecar_env(tmp_path, SIDECAR_SIGN_SOCKET=str(Path(short) / "sign.sock"))
        served = await start_serve(env, banner=True)
        try:
            key = next(line.strip() for line in served.stderr.splitlines() if "wsa_" in line)
            for argv, shown in documented:
                status, answer = await replay(served, key, argv)
                assert status == 200, (argv, answer)
                if shown is not None:
                    assert set(answer) == set(shown), (argv, answer)
        finally:
            assert await served.terminate() == 0
