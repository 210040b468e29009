"""Every configuration the docs and deploy files show starts, as a real process, to
"listening" on all three listeners, and stops cleanly.

A configuration that started before must start after, unless it was unsafe; this is
the list of those that were shown to users. The parts that belong to the place it
runs are swapped for this machine's: Redis is the suite's server, files are
temporary ones, listeners bind loopback on free ports, logs are JSON (which the
harness reads). Everything else is as written, read from the files themselves where
the configuration lives in a file.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from support import Keys, read_env_file

from harness import sidecar_env, start_serve
from sidecar.crypto import encode_kek, generate_kek

ROOT = Path(__file__).resolve().parents[2]
KUSTOMIZE = ROOT / "deploy" / "kubernetes"
COMPONENT_ENV = KUSTOMIZE / "components" / "sidecar" / "sidecar.env"


def overlay_literals(overlay: str) -> dict[str, str]:
    """The ``KEY=value`` literals an overlay merges into the sidecar's ConfigMap."""
    kustomization = yaml.safe_load(
        (KUSTOMIZE / "overlays" / overlay / "kustomization.yaml").read_text()
    )
    values: dict[str, str] = {}
    for generator in kustomization.get("configMapGenerator", []):
        for literal in generator.get("literals", []):
            key, _, value = literal.partition("=")
            values[key] = value
    return values


def production() -> dict[str, str]:
    """The production overlay, less the TLS to Sentinel that only its own network has."""
    values = {**read_env_file(COMPONENT_ENV), **overlay_literals("production")}
    assert values["REDIS_URL"].startswith("rediss+sentinel://")
    del values["SIDECAR_REDIS_CA_FILE"]
    return values | {"REDIS_URL": ""}


# (where users saw it, its settings); an empty value is made on this machine.
CONFIGURATIONS: list[tuple[str, dict[str, str]]] = [
    # README "Quick start": make run with nothing configured.
    ("development mode (README)", {}),
    # docs/operations.md: the embedded Valkey with a KEK and API keys.
    (
        "embedded Valkey with keys (operations.md)",
        {"SIDECAR_EMBEDDED_REDIS": "1", "SIDECAR_KEK_FILE": "", "SIDECAR_API_KEYS_FILE": ""},
    ),
    ("kubernetes component (sidecar.env)", read_env_file(COMPONENT_ENV)),
    ("dev overlay", {**read_env_file(COMPONENT_ENV), **overlay_literals("dev")}),
    ("production overlay", production()),
    # deploy/README.md "Publish XRPC": JWT auth with the DID document served.
    (
        "published XRPC with service proxying (deploy/README.md)",
        {
            **read_env_file(COMPONENT_ENV),
            "SIDECAR_SERVICE_DID": "did:web:sidecar.example.com",
            "SIDECAR_SERVICE_ENDPOINT": "https://sidecar.example.com",
        },
    ),
    # docs/authentication.md before service proxying: service auth is on when
    # SIDECAR_SERVICE_DID is set, a did:web, and nothing else.
    (
        "did:web service auth alone (earlier authentication.md)",
        {
            "REDIS_URL": "",
            "SIDECAR_KEK_FILE": "",
            "SIDECAR_SERVICE_DID": "did:web:sidecar.example.com",
        },
    ),
    (
        "did:web service auth beside API keys (authentication.md)",
        {**read_env_file(COMPONENT_ENV), "SIDECAR_SERVICE_DID": "did:web:sidecar.example.com"},
    ),
    # config/sidecar.example.toml: every key in it is commented out, so as a file it
    # is the defaults; what the deploy must give comes from the environment.
    (
        "config/sidecar.example.toml",
        {
            "SIDECAR_CONFIG": str(ROOT / "config" / "sidecar.example.toml"),
            "REDIS_URL": "",
            "SIDECAR_KEK_FILE": "",
            "SIDECAR_API_KEYS_FILE": "",
        },
    ),
]


@pytest.mark.parametrize(
    "settings", [settings for _, settings in CONFIGURATIONS], ids=[n for n, _ in CONFIGURATIONS]
)
async def test_every_documented_configuration_starts(
    settings: dict[str, str], tmp_path: Path, redis_url: str, keys: Keys
) -> None:
    """The configuration starts to "listening" on its three listeners and exits 0 on SIGTERM."""
    kek_file = tmp_path / "kek"
    kek_file.write_text(encode_kek(generate_kek()))
    here = {
        "REDIS_URL": redis_url,
        "SIDECAR_KEK_FILE": str(kek_file),
        "SIDECAR_API_KEYS_FILE": str(keys.path),
    }
    env = {name: here.get(name, value) for name, value in settings.items()}
    data = tmp_path / "data"
    # Last: free loopback ports, JSON logs and a data folder of its own.
    env |= sidecar_env(data)
    served = await start_serve(env, banner="REDIS_URL" not in env)
    assert set(served.listening()) == {"xrpc", "sign", "ops"}
    assert await served.terminate() == 0
