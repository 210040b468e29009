"""The production overlay's Ingress publishes the XRPC port only, over TLS, for the paths
a client and a proxying PDS use; the sign and metrics ports are never routed."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

KUBERNETES = Path(__file__).resolve().parents[2] / "deploy" / "kubernetes"
PRODUCTION = KUBERNETES / "overlays" / "production"


def rendered_production() -> list[dict[str, Any]]:
    """The production overlay as ``kubectl kustomize`` renders it."""
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        pytest.skip("kubectl is not on PATH: install it to render the overlays")
    output = subprocess.run(
        [kubectl, "kustomize", str(PRODUCTION)], check=True, capture_output=True, text=True
    ).stdout
    return [doc for doc in yaml.safe_load_all(output) if doc is not None]


def test_ingress_routes_only_the_xrpc_port_over_tls() -> None:
    """Every Ingress backend is the Service's xrpc port, and every host is covered by TLS."""
    documents = rendered_production()
    ingresses = [doc for doc in documents if doc["kind"] == "Ingress"]
    assert len(ingresses) == 1
    (service,) = [doc for doc in documents if doc["kind"] == "Service"]
    ports = {port["name"]: port for port in service["spec"]["ports"]}
    assert ports["xrpc"]["targetPort"] == "xrpc"
    spec = ingresses[0]["spec"]
    assert "defaultBackend" not in spec
    tls_hosts = {host for entry in spec["tls"] for host in entry["hosts"]}
    routed: set[tuple[str, str, str]] = set()
    for rule in spec["rules"]:
        assert rule["host"] in tls_hosts
        for path in rule["http"]["paths"]:
            backend = path["backend"]["service"]
            assert backend["name"] == service["metadata"]["name"]
            assert backend["port"] == {"name": "xrpc"}
            routed.add((rule["host"], path["path"], path["pathType"]))
    assert routed == {
        ("sidecar.example.com", "/xrpc/", "Prefix"),
        ("sidecar.example.com", "/.well-known/did.json", "Exact"),
    }


def test_the_sign_port_is_in_no_service() -> None:
    """No Service exposes the sign port, so no Ingress could ever route to it."""
    documents = rendered_production()
    for service in (doc for doc in documents if doc["kind"] == "Service"):
        for port in service["spec"]["ports"]:
            assert port.get("name") != "sign"
            assert 8081 not in (port["port"], port.get("targetPort"))
