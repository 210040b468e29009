"""The Kubernetes manifests in deploy/kubernetes: every object validates against the
Kubernetes schemas offline, every kustomization references files that exist, and the
sidecar component and the Deployments it joins keep the promises deploy/README.md makes
(native sidecar, probes, hardening, secrets as files, ports, grace period).

Built-in kinds are validated by ``kubernetes-validate`` (strict: an unknown field
fails) for the oldest Kubernetes with native sidecars on by default (1.29) and
the newest it bundles. It has no schemas for custom resources, so the two CRDs
we ship, ServiceMonitor and PrometheusRule, are validated against the small
schemas below, which hold their required shape and refuse unknown fields. Any
other custom kind fails the test instead of being skipped.

The base, the overlays and the example of an existing dispatcher joined by the
component (deploy/kubernetes/examples) are rendered with ``kubectl kustomize`` when
kubectl is on PATH, and what they render is validated: that is what a user applies
(the tests that need it skip, saying so, when kubectl is not there).
"""

from __future__ import annotations

import functools
import re
import shutil
import subprocess
from pathlib import Path, PurePosixPath
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import yaml
from support import read_env_file

from sidecar.crypto import encode_kek, generate_kek
from sidecar.settings import VARIABLES, Settings

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
KUBERNETES = DEPLOY / "kubernetes"
BASE = KUBERNETES / "base"
COMPONENT = KUBERNETES / "components" / "sidecar"
SIDECAR_PATCH = COMPONENT / "sidecar-patch.yaml"
EXAMPLE = KUBERNETES / "examples" / "existing-dispatcher"
# The opt-in sign socket: its component, and the example that uses it.
SIGN_SOCKET = KUBERNETES / "components" / "sign-socket"
SOCKET_EXAMPLE = KUBERNETES / "examples" / "dispatcher-on-socket"
OVERLAYS = ("dev", "production")
# Everything a user may apply: rendered, each validates.
RENDERED = ("base", *(f"overlays/{name}" for name in OVERLAYS), "examples/existing-dispatcher")
# The pod label the component adds; its Service and NetworkPolicies select it.
SIDECAR_LABEL = ("wisp.place/sidecar", "true")
RULES = DEPLOY / "observability" / "prometheus-rules.yaml"
DOCKERFILE = DEPLOY / "docker" / "Dockerfile"

KUBERNETES_VERSIONS = ("1.29", kubernetes_validate.latest_version())

# Settings that other branches add to sidecar/settings.py while the manifests
# set them already; until those land, the sidecar ignores them. None now.
LANDING_SETTINGS: frozenset[str] = frozenset()
# Settings whose values are secrets: they come from the Secret, never a ConfigMap.
SECRET_SETTINGS = frozenset({"SIDECAR_KEK", "SIDECAR_KEK_PREVIOUS", "SIDECAR_SIGN_TOKEN"})
SHUTDOWN_GRACE_DEFAULT_S = 20

_DURATION = {"type": "string", "pattern": r"^([0-9]+(ms|s|m|h|d|w|y))+$"}
_STRINGS = {"type": "object", "additionalProperties": {"type": "string"}}


def _closed(required: list[str], properties: dict[str, Any]) -> dict[str, Any]:
    """An object schema that refuses fields it does not list."""
    return {
        "type": "object",
        "required": required,
        "additionalProperties": False,
        "properties": properties,
    }


def _list_of(item: dict[str, Any]) -> dict[str, Any]:
    return {"type": "array", "minItems": 1, "items": item}


def _crd(kind: str, spec: dict[str, Any]) -> dict[str, Any]:
    return _closed(
        ["apiVersion", "kind", "metadata", "spec"],
        {
            "apiVersion": {"const": "monitoring.coreos.com/v1"},
            "kind": {"const": kind},
            "metadata": {"type": "object", "required": ["name"]},
            "spec": spec,
        },
    )


# The parts of monitoring.coreos.com/v1 we use, with unknown fields refused.
CRD_SCHEMAS: dict[tuple[str, str], dict[str, Any]] = {
    ("monitoring.coreos.com/v1", "ServiceMonitor"): _crd(
        "ServiceMonitor",
        _closed(
            ["selector", "endpoints"],
            {
                "selector": _closed(["matchLabels"], {"matchLabels": _STRINGS}),
                "namespaceSelector": {"type": "object"},
                "endpoints": _list_of(
                    _closed(
                        ["port"],
                        {
                            "port": {"type": "string"},
                            "path": {"type": "string", "pattern": "^/"},
                            "interval": _DURATION,
                            "scrapeTimeout": _DURATION,
                        },
                    )
                ),
            },
        ),
    ),
    ("monitoring.coreos.com/v1", "PrometheusRule"): _crd(
        "PrometheusRule",
        _closed(
            ["groups"],
            {
                "groups": _list_of(
                    _closed(
                        ["name", "rules"],
                        {
                            "name": {"type": "string"},
                            "interval": _DURATION,
                            "rules": _list_of(
                                {
                                    **_closed(
                                        ["expr"],
                                        {
                                            "alert": {"type": "string"},
                                            "record": {"type": "string"},
                                            "expr": {"type": "string", "minLength": 1},
                                            "for": _DURATION,
                                            "labels": _STRINGS,
                                            "annotations": _STRINGS,
                                        },
                                    ),
                                    "oneOf": [{"required": ["alert"]}, {"required": ["record"]}],
                                }
                            ),
                        },
                    )
                )
            },
        ),
    ),
}


def load_documents(path: Path) -> list[dict[str, Any]]:
    """The YAML documents in ``path``, empty ones left out."""
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc is not None]


def kustomization_dirs() -> list[Path]:
    """Every directory under deploy/ that holds a kustomization.yaml."""
    return sorted(path.parent for path in DEPLOY.rglob("kustomization.yaml"))


def kustomization(directory: Path) -> dict[str, Any]:
    """The kustomization.yaml of ``directory``, parsed."""
    result: dict[str, Any] = yaml.safe_load((directory / "kustomization.yaml").read_text())
    return result


def references(directory: Path) -> list[str]:
    """Every path a kustomization names: resources, components, patches, generator inputs."""
    spec = kustomization(directory)
    named: list[str] = [*spec.get("resources", []), *spec.get("components", [])]
    named += [patch["path"] for patch in spec.get("patches", []) if "path" in patch]
    for generator in spec.get("configMapGenerator", []) + spec.get("secretGenerator", []):
        named += generator.get("envs", [])
        named += [entry.split("=", 1)[-1] for entry in generator.get("files", [])]
    return named


def resource_files(directory: Path) -> list[Path]:
    """The complete objects a kustomization builds from, following directory resources."""
    files: list[Path] = []
    for entry in kustomization(directory).get("resources", []):
        path = (directory / entry).resolve()
        files += resource_files(path) if path.is_dir() else [path]
    return files


def all_resource_files() -> list[Path]:
    """Every resource file some kustomization builds from, each once."""
    files = {path for directory in kustomization_dirs() for path in resource_files(directory)}
    return sorted(files)


def base_settings() -> dict[str, str]:
    """The base ConfigMap's data: the settings every overlay starts from."""
    return read_env_file(COMPONENT / "sidecar.env")


def validate(document: dict[str, Any]) -> None:
    """Validate one object: Kubernetes schemas for built-in kinds, ours for the two CRDs."""
    key = (document["apiVersion"], document["kind"])
    if key in CRD_SCHEMAS:
        jsonschema.validate(document, CRD_SCHEMAS[key])
        return
    group = document["apiVersion"].rpartition("/")[0]
    builtin = "." not in group or group.endswith(".k8s.io")
    assert builtin, f"{key}: a custom resource without a schema here; add one to CRD_SCHEMAS"
    for version in KUBERNETES_VERSIONS:
        kubernetes_validate.validate(document, version, strict=True)


def deployment() -> dict[str, Any]:
    """The base Deployment, the one document of base/deployment.yaml (no sidecar yet)."""
    (document,) = load_documents(BASE / "deployment.yaml")
    return document


def pod_spec() -> dict[str, Any]:
    """The pod template's spec of the base Deployment."""
    result: dict[str, Any] = deployment()["spec"]["template"]["spec"]
    return result


def sidecar_pod() -> dict[str, Any]:
    """The pod template the component's patch merges into each Deployment it targets."""
    (patch,) = load_documents(SIDECAR_PATCH)
    result: dict[str, Any] = patch["spec"]["template"]
    return result


def sidecar_container(name: str = "wisp-sidecar") -> dict[str, Any]:
    """A container of the patch's initContainers: wisp-sidecar (the sign role), or
    wisp-sidecar-xrpc (the XRPC role)."""
    (container,) = [c for c in sidecar_pod()["spec"]["initContainers"] if c["name"] == name]
    return dict(container)


def xrpc_container() -> dict[str, Any]:
    """The wisp-sidecar-xrpc container, the XRPC role, a native sidecar as well."""
    return sidecar_container("wisp-sidecar-xrpc")


def env_of(container: dict[str, Any]) -> dict[str, str]:
    """The literal env values a container sets for itself."""
    return {e["name"]: e["value"] for e in container.get("env", []) if "value" in e}


def sidecars_of(workload: dict[str, Any], name: str = "wisp-sidecar") -> list[dict[str, Any]]:
    """The containers called ``name`` of a rendered Deployment, wherever they are in the pod."""
    spec = workload["spec"]["template"]["spec"]
    return [c for c in spec.get("initContainers", []) + spec["containers"] if c["name"] == name]


def port_named(container: dict[str, Any], name: str) -> int:
    """The port of ``container`` named ``name``."""
    (port,) = [p["containerPort"] for p in container["ports"] if p["name"] == name]
    result: int = port
    return result


@functools.cache
def render(directory: Path) -> list[dict[str, Any]]:
    """The objects ``kubectl kustomize`` builds from ``directory``; skips without kubectl."""
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        pytest.skip("kubectl is not on PATH, so kustomizations are not rendered")
    result = subprocess.run(
        [kubectl, "kustomize", str(directory)], capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stderr
    return [doc for doc in yaml.safe_load_all(result.stdout) if doc is not None]


def one(documents: list[dict[str, Any]], kind: str, name: str | None = None) -> dict[str, Any]:
    """The one document of ``kind`` (and ``name``, if given); fails unless there is exactly one."""
    (found,) = [
        doc
        for doc in documents
        if doc["kind"] == kind and (name is None or doc["metadata"]["name"] == name)
    ]
    return found


# --- files and references ---------------------------------------------------


@pytest.mark.parametrize(
    "directory", kustomization_dirs(), ids=lambda d: str(d.relative_to(DEPLOY))
)
def test_kustomization_references_exist(directory: Path) -> None:
    """Every file or directory a kustomization names exists, and a named directory is itself
    a kustomization."""
    for entry in references(directory):
        path = directory / entry
        assert path.exists(), f"{directory.relative_to(ROOT)} names missing {entry}"
        if path.is_dir():
            assert (path / "kustomization.yaml").is_file(), entry


@pytest.mark.parametrize(
    "directory", kustomization_dirs(), ids=lambda d: str(d.relative_to(DEPLOY))
)
def test_every_manifest_file_is_used_by_its_kustomization(directory: Path) -> None:
    """No YAML or env file sits beside a kustomization without being named by it."""
    named = {(directory / entry).resolve() for entry in references(directory)}
    for path in directory.iterdir():
        if path.suffix in {".yaml", ".yml", ".env"} and path.name != "kustomization.yaml":
            assert path.resolve() in named, f"{path.relative_to(ROOT)} is not referenced"


def test_the_base_and_both_overlays_exist() -> None:
    """deploy/kubernetes has the kustomize layout the README describes: the sidecar component,
    a base built from it, two overlays and the example of an existing dispatcher."""
    dirs = {str(d.relative_to(KUBERNETES)) for d in kustomization_dirs() if KUBERNETES in d.parents}
    extra = {"components/sign-socket", "examples/dispatcher-on-socket"}
    assert dirs == {"components/sidecar", *RENDERED, *extra}
    assert kustomization(COMPONENT)["kind"] == "Component"
    assert kustomization(BASE)["components"] == ["../components/sidecar"]


# --- schemas ------------------------------------------------------------------


@pytest.mark.parametrize(
    "path", all_resource_files(), ids=lambda p: str(PurePosixPath(p.relative_to(DEPLOY)))
)
def test_every_manifest_validates(path: Path) -> None:
    """Each object in each manifest file validates strictly, built-in kinds against the
    Kubernetes schemas and our two CRDs against their required shape."""
    documents = load_documents(path)
    assert documents
    for document in documents:
        validate(document)


def test_validation_refuses_a_broken_manifest() -> None:
    """The validation used above fails on a misspelled field or a bad value, in a built-in
    kind and in each CRD, and on a custom kind it has no schema for."""
    broken = deployment()
    broken["spec"]["template"]["spec"]["containers"][0]["readinesProbe"] = {}
    with pytest.raises(kubernetes_validate.ValidationError):
        validate(broken)
    (monitor,) = load_documents(COMPONENT / "servicemonitor.yaml")
    monitor["spec"]["endpoints"][0]["intervall"] = "30s"
    with pytest.raises(jsonschema.ValidationError):
        validate(monitor)
    (rules,) = load_documents(RULES)
    rules["spec"]["groups"][0]["rules"][0]["for"] = "five minutes"
    with pytest.raises(jsonschema.ValidationError):
        validate(rules)
    with pytest.raises(AssertionError, match="CRD_SCHEMAS"):
        validate({"apiVersion": "example.com/v1", "kind": "Widget", "metadata": {"name": "w"}})


@pytest.mark.parametrize("overlay", RENDERED)
def test_rendered_kustomization_validates(overlay: str) -> None:
    """What kustomize renders for the base, each overlay and the example of an existing
    dispatcher validates, the component and patches applied."""
    documents = render(KUBERNETES / overlay)
    kinds = {doc["kind"] for doc in documents}
    component_kinds = {"Service", "ServiceMonitor", "PrometheusRule", "NetworkPolicy"}
    assert {"Deployment", "ConfigMap", *component_kinds} <= kinds
    for document in documents:
        validate(document)


# --- the PrometheusRule -------------------------------------------------------


def test_alert_rules_have_one_source() -> None:
    """The component includes deploy/observability as a kustomization, and no other manifest
    declares a PrometheusRule, so the cluster's rules cannot differ from the file."""
    assert "../../../observability" in kustomization(COMPONENT)["resources"]
    declaring = [
        path
        for path in DEPLOY.rglob("*.yaml")
        if any(doc.get("kind") == "PrometheusRule" for doc in load_documents(path))
    ]
    assert declaring == [RULES]


def test_rendered_prometheus_rule_is_the_observability_file() -> None:
    """The PrometheusRule the base renders carries exactly the rules of
    deploy/observability/prometheus-rules.yaml."""
    (source,) = load_documents(RULES)
    rendered = one(render(BASE), "PrometheusRule")
    assert rendered["spec"] == source["spec"]


# --- the Deployment -----------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "role", "ops_port", "ops_name"),
    [
        ("wisp-sidecar", "sign,ops", None, "metrics"),
        ("wisp-sidecar-xrpc", "xrpc,ops", "9091", "xrpc-metrics"),
    ],
)
def test_each_role_is_a_native_sidecar_with_probes_on_its_own_ops_port(
    name: str, role: str, ops_port: str | None, ops_name: str
) -> None:
    """The sign role and the XRPC role are each an init container with restartPolicy Always,
    the sign one first, each probed on its own ops port (they share the pod's network):
    startup and liveness on /healthz, readiness on /readyz."""
    container = sidecar_container(name)
    assert container["restartPolicy"] == "Always"
    env = env_of(container)
    assert env["SIDECAR_LISTENERS"] == role
    assert env.get("SIDECAR_OPS_PORT") == ops_port
    assert port_named(container, ops_name) == int(ops_port or base_settings()["SIDECAR_OPS_PORT"])
    probes = {kind: container[f"{kind}Probe"]["httpGet"] for kind in ("startup", "liveness")}
    probes["readiness"] = container["readinessProbe"]["httpGet"]
    assert {kind: probe["path"] for kind, probe in probes.items()} == {
        "startup": "/healthz",
        "liveness": "/healthz",
        "readiness": "/readyz",
    }
    assert {probe["port"] for probe in probes.values()} == {ops_name}
    assert [c["name"] for c in sidecar_pod()["spec"]["initContainers"]] == [
        "wisp-sidecar",
        "wisp-sidecar-xrpc",
    ]
    assert [c["name"] for c in pod_spec()["containers"]] == ["dispatcher"]
    assert "initContainers" not in pod_spec(), "the base gets its sidecar from the component"


def test_each_role_has_its_own_cpu_request_and_limit() -> None:
    """The sign and the XRPC container each request and cap their own CPU, in the component
    and in the production overlay, so the public port's load is throttled in its own
    container; only the XRPC container publishes the XRPC port."""
    production = one(render(KUBERNETES / "overlays" / "production"), "Deployment")
    for workload_containers in (
        sidecar_pod()["spec"]["initContainers"],
        production["spec"]["template"]["spec"]["initContainers"],
    ):
        for container in workload_containers:
            assert {"cpu"} <= set(container["resources"]["requests"]), container["name"]
            assert {"cpu"} <= set(container["resources"]["limits"]), container["name"]
    assert "xrpc" not in {p["name"] for p in sidecar_container()["ports"]}
    assert port_named(xrpc_container(), "xrpc") == int(base_settings()["SIDECAR_XRPC_PORT"])


def test_the_xrpc_container_holds_its_xrpc_work_to_its_cpu_limit() -> None:
    """The XRPC container's CPU share (what bench/isolation.py's split rows run with) is
    on, and is no more of a CPU than the container's CPU limit."""
    container = xrpc_container()
    share = Settings.from_env(env_of(container)).xrpc_cpu_share
    limit = container["resources"]["limits"]["cpu"]
    limit_percent = int(limit.removesuffix("m")) / 10 if limit.endswith("m") else float(limit) * 100
    assert share < 100
    assert share <= limit_percent


def test_dispatcher_signs_on_the_pod_local_sign_listener() -> None:
    """The placeholder dispatcher is pointed at the sign listener on loopback, which the
    ConfigMap binds to 127.0.0.1 and no container port or Service exposes."""
    settings = base_settings()
    assert settings["SIDECAR_SIGN_HOST"] == "127.0.0.1"
    (dispatcher,) = pod_spec()["containers"]
    env = {item["name"]: item["value"] for item in dispatcher["env"]}
    assert env["WISP_SIGN_URL"] == f"http://127.0.0.1:{settings['SIDECAR_SIGN_PORT']}/v1/sign"
    sign_port = int(settings["SIDECAR_SIGN_PORT"])
    for container in (sidecar_container(), xrpc_container()):
        assert sign_port not in {p["containerPort"] for p in container["ports"]}
    (service,) = load_documents(COMPONENT / "service.yaml")
    assert {(p["name"], p["port"]) for p in service["spec"]["ports"]} == {
        ("xrpc", int(settings["SIDECAR_XRPC_PORT"])),
        ("metrics", int(settings["SIDECAR_OPS_PORT"])),
        ("xrpc-metrics", int(env_of(xrpc_container())["SIDECAR_OPS_PORT"])),
    }


def test_grace_period_outlasts_the_sidecar_shutdown_grace() -> None:
    """terminationGracePeriodSeconds is above SIDECAR_SHUTDOWN_GRACE_S, so Kubernetes never
    kills the sidecar while it still drains."""
    grace = int(base_settings().get("SIDECAR_SHUTDOWN_GRACE_S", SHUTDOWN_GRACE_DEFAULT_S))
    assert pod_spec()["terminationGracePeriodSeconds"] > grace


def test_every_container_is_hardened() -> None:
    """The base pod and the sidecar container (whatever pod it joins) run as the image's
    non-root UID with seccomp RuntimeDefault, and every container has a read-only root, no
    privilege escalation and no capabilities."""
    spec = pod_spec()
    (user,) = re.findall(r"^USER (\d+):(\d+)$", DOCKERFILE.read_text(), re.MULTILINE)
    sidecar, xrpc = sidecar_container(), xrpc_container()
    for context in (spec["securityContext"], sidecar["securityContext"], xrpc["securityContext"]):
        assert context["runAsNonRoot"] is True
        assert context["seccompProfile"] == {"type": "RuntimeDefault"}
        assert (str(context["runAsUser"]), str(context["runAsGroup"])) == user
    assert spec["automountServiceAccountToken"] is False
    for container in [sidecar, xrpc, *spec["containers"]]:
        context = container["securityContext"]
        assert context["readOnlyRootFilesystem"] is True, container["name"]
        assert context["allowPrivilegeEscalation"] is False, container["name"]
        assert context["capabilities"] == {"drop": ["ALL"]}, container["name"]
        assert set(container["resources"]) == {"requests", "limits"}, container["name"]


def test_keys_are_files_from_the_secret_and_data_is_writable() -> None:
    """The KEK and API keys files the ConfigMap names are items of the mounted Secret, the
    data directory is a writable volume, and no secret setting is in the ConfigMap."""
    settings = base_settings()
    assert not SECRET_SETTINGS & set(settings)
    container = sidecar_container()
    mounts = {m["mountPath"]: m for m in container["volumeMounts"]}
    volumes = {v["name"]: v for v in sidecar_pod()["spec"]["volumes"]}
    # Prefixed, so merging into an existing pod cannot replace one of its volumes.
    assert all(name.startswith("wisp-sidecar-") for name in volumes)
    for variable in ("SIDECAR_KEK_FILE", "SIDECAR_API_KEYS_FILE"):
        path = PurePosixPath(settings[variable])
        mount = mounts[str(path.parent)]
        assert mount["readOnly"] is True
        secret = volumes[mount["name"]]["secret"]
        assert path.name in {item["path"] for item in secret["items"]}, variable
    data = mounts[settings["SIDECAR_DATA_DIR"]]
    assert "emptyDir" in volumes[data["name"]]
    assert not data.get("readOnly", False)
    (previous,) = [e for e in container["env"] if e["name"] == "SIDECAR_KEK_PREVIOUS"]
    assert previous["valueFrom"]["secretKeyRef"]["optional"] is True


def test_configmap_holds_only_settings_the_sidecar_knows() -> None:
    """Every ConfigMap key, in the base and in overlays, is a setting of the sidecar (or one
    of issue #6 landing in parallel), so a misspelled name cannot be silently ignored."""
    known = set(VARIABLES) | LANDING_SETTINGS
    keys = set(base_settings())
    for overlay in OVERLAYS:
        for generator in kustomization(KUBERNETES / "overlays" / overlay).get(
            "configMapGenerator", []
        ):
            keys |= {literal.split("=", 1)[0] for literal in generator.get("literals", [])}
    assert keys - known == set()
    assert "REDIS_URL" in keys


def test_landing_settings_are_not_yet_known() -> None:
    """LANDING_SETTINGS lists only settings that settings.py does not parse yet; once one
    lands, this fails so it leaves the list and the check above covers it for real."""
    assert LANDING_SETTINGS & set(VARIABLES) == set()


def test_base_settings_parse_as_the_sidecar_would() -> None:
    """The base ConfigMap's values pass the sidecar's own settings parser (files aside)."""
    settings = {
        key: value
        for key, value in base_settings().items()
        if key in VARIABLES and not key.endswith("_FILE")
    }
    parsed = Settings.from_env(settings)
    assert parsed.sign_host == "127.0.0.1"
    assert parsed.log_format == "json"


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_overlay_settings_parse_as_the_sidecar_would(overlay: str, tmp_path: Path) -> None:
    """Each overlay's ConfigMap, base and literals merged, passes the settings parser with
    stand-ins for the mounted files, so settings that must agree (a CA file needs a TLS
    REDIS_URL) are checked together."""
    settings = base_settings()
    for generator in kustomization(KUBERNETES / "overlays" / overlay).get("configMapGenerator", []):
        settings.update(literal.split("=", 1) for literal in generator.get("literals", []))
    kek = tmp_path / "kek"
    kek.write_text(encode_kek(generate_kek()))
    other = tmp_path / "file"
    other.write_text("")
    environ = {
        key: str(kek if key == "SIDECAR_KEK_FILE" else other) if key.endswith("_FILE") else value
        for key, value in settings.items()
        if key in VARIABLES
    }
    Settings.from_env(environ)


def test_selectors_match_the_pods() -> None:
    """The component's Service and NetworkPolicies select exactly the label its patch adds to
    the pods; the base's PodDisruptionBudget and policies select the base Deployment's pods;
    the ServiceMonitor selects the Service by a port name it has."""
    labels = deployment()["spec"]["template"]["metadata"]["labels"]

    def selects(selector: dict[str, str]) -> bool:
        return bool(selector.items() <= labels.items())

    assert sidecar_pod()["metadata"]["labels"] == dict([SIDECAR_LABEL])
    (service,) = load_documents(COMPONENT / "service.yaml")
    assert service["spec"]["selector"] == dict([SIDECAR_LABEL])
    for policy in load_documents(COMPONENT / "networkpolicy.yaml"):
        assert policy["spec"]["podSelector"]["matchLabels"] == dict([SIDECAR_LABEL])
    (budget,) = load_documents(BASE / "poddisruptionbudget.yaml")
    assert selects(budget["spec"]["selector"]["matchLabels"])
    for policy in load_documents(BASE / "networkpolicy.yaml"):
        assert selects(policy["spec"]["podSelector"]["matchLabels"]), policy["metadata"]["name"]
    (monitor,) = load_documents(COMPONENT / "servicemonitor.yaml")
    assert (
        monitor["spec"]["selector"]["matchLabels"].items() <= service["metadata"]["labels"].items()
    )
    service_ports = {p["name"] for p in service["spec"]["ports"]}
    assert {e["port"] for e in monitor["spec"]["endpoints"]} <= service_ports


def test_network_policy_ingress_and_egress() -> None:
    """Ingress reaches only the XRPC port (from labelled namespaces) and the metrics port
    (from monitoring); egress is DNS, Redis, and HTTPS to public addresses."""
    policies = {
        p["metadata"]["name"]: p["spec"]
        for path in (COMPONENT / "networkpolicy.yaml", BASE / "networkpolicy.yaml")
        for p in load_documents(path)
    }
    ingress = [rule for spec in policies.values() for rule in spec.get("ingress", [])]
    assert sorted(port["port"] for rule in ingress for port in rule["ports"]) == [
        "metrics",
        "xrpc",
        "xrpc-metrics",
    ]
    (metrics_rule,) = [r for r in ingress if r["ports"][0]["port"] == "metrics"]
    assert metrics_rule["from"] == [
        {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}}}
    ]
    egress_ports = sorted(
        (port["protocol"], port["port"])
        for spec in policies.values()
        for rule in spec.get("egress", [])
        for port in rule["ports"]
    )
    assert egress_ports == [("TCP", 53), ("TCP", 443), ("TCP", 6379), ("UDP", 53)]
    (webhooks,) = policies["wisp-dispatcher-webhooks"]["egress"]
    assert "169.254.0.0/16" in webhooks["to"][0]["ipBlock"]["except"]


# --- overlays -----------------------------------------------------------------


def test_dev_overlay_runs_a_persistent_single_redis() -> None:
    """The dev overlay adds one Redis StatefulSet with AOF on a PVC, behind the Service the
    base REDIS_URL names."""
    documents = render(KUBERNETES / "overlays" / "dev")
    redis = one(documents, "StatefulSet", "redis")
    assert redis["spec"]["replicas"] == 1
    (container,) = redis["spec"]["template"]["spec"]["containers"]
    args = container["args"]
    assert args[args.index("--appendonly") + 1] == "yes"
    (claim,) = redis["spec"]["volumeClaimTemplates"]
    assert {"name": claim["metadata"]["name"], "mountPath": "/data"} in container["volumeMounts"]
    url = one(documents, "ConfigMap")["data"]["REDIS_URL"]
    host = re.fullmatch(r"redis://([^:/]+):(\d+)/\d+", url)
    assert host is not None
    service = one(documents, "Service", host.group(1))
    assert [p["port"] for p in service["spec"]["ports"]] == [int(host.group(2))]


def test_production_overlay_uses_sentinel_with_tls_on_three_spread_replicas() -> None:
    """The production overlay runs 3+ replicas that never share a node, reaches Redis through
    Sentinel, mounts the CA file it names, and waits for a replica before acknowledging."""
    documents = render(KUBERNETES / "overlays" / "production")
    workload = one(documents, "Deployment")
    assert workload["spec"]["replicas"] >= 3
    spec = workload["spec"]["template"]["spec"]
    (term,) = spec["affinity"]["podAntiAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]
    assert term["topologyKey"] == "kubernetes.io/hostname"
    assert (
        term["labelSelector"]["matchLabels"].items()
        <= workload["spec"]["template"]["metadata"]["labels"].items()
    )
    config = one(documents, "ConfigMap")["data"]
    assert config["REDIS_URL"].startswith("rediss+sentinel://")
    # An acknowledged rotation must survive a Sentinel failover.
    assert config["SIDECAR_DURABLE_REPLICAS"] == "1"
    ca = PurePosixPath(config["SIDECAR_REDIS_CA_FILE"])
    assert [c["name"] for c in spec["initContainers"]] == ["wisp-sidecar", "wisp-sidecar-xrpc"]
    for sidecar in spec["initContainers"]:
        assert any(PurePosixPath(m["mountPath"]) == ca.parent for m in sidecar["volumeMounts"])
        envfrom = {ref["configMapRef"]["name"] for ref in sidecar["envFrom"]}
        assert envfrom == {one(documents, "ConfigMap")["metadata"]["name"]}
    redis_policy = one(documents, "NetworkPolicy", "wisp-sidecar-redis")
    ports = {p["port"] for rule in redis_policy["spec"]["egress"] for p in rule["ports"]}
    sentinel_ports = {int(port) for port in re.findall(r":(\d+)", config["REDIS_URL"])}
    assert sentinel_ports <= ports


# --- the component on every Deployment it joins -------------------------------


def without_rendering_changes(container: dict[str, Any]) -> dict[str, Any]:
    """A sidecar container with what rendering may change left out: the image (``images:``),
    the ConfigMap's hashed name, the resources an overlay sizes, and mounts an overlay adds
    beside the component's."""
    own = {m["name"] for m in sidecar_container()["volumeMounts"]}
    changed = {"image", "envFrom", "resources"}
    result = {key: value for key, value in container.items() if key not in changed}
    result["volumeMounts"] = [m for m in container["volumeMounts"] if m["name"] in own]
    return result


def test_existing_dispatcher_gets_exactly_one_sidecar_and_keeps_its_pod() -> None:
    """The example of a team's own dispatcher Deployment, with the component, renders with
    exactly one wisp-sidecar container, a native sidecar as the component defines it, its
    volumes and the ConfigMap it names; the team's containers, volumes, securityContext and
    selector are kept."""
    documents = render(EXAMPLE)
    (source,) = [
        doc
        for doc in load_documents(EXAMPLE / "deployment.yaml")
        if doc["metadata"]["name"] == "orders-dispatcher"
    ]
    workload = one(documents, "Deployment", "orders-dispatcher")
    (sidecar,) = sidecars_of(workload)
    assert sidecar["restartPolicy"] == "Always"
    assert without_rendering_changes(sidecar) == without_rendering_changes(sidecar_container())
    (ref,) = sidecar["envFrom"]
    assert ref["configMapRef"]["name"] == one(documents, "ConfigMap")["metadata"]["name"]
    spec, source_spec = workload["spec"]["template"]["spec"], source["spec"]["template"]["spec"]
    assert spec["containers"] == source_spec["containers"]
    assert spec["securityContext"] == source_spec["securityContext"]
    volumes = {v["name"]: v for v in spec["volumes"]}
    for volume in source_spec["volumes"] + sidecar_pod()["spec"]["volumes"]:
        assert volumes[volume["name"]] == volume
    assert workload["spec"]["selector"] == source["spec"]["selector"]
    labels = workload["spec"]["template"]["metadata"]["labels"]
    assert labels.items() >= source["spec"]["template"]["metadata"]["labels"].items()
    assert SIDECAR_LABEL in labels.items()


def test_a_deployment_annotated_out_gets_no_sidecar_and_is_not_selected() -> None:
    """A Deployment in the same overlay annotated wisp.place/sidecar: "false" renders without
    a sidecar or the sidecar label, so neither the Service nor any component policy selects
    its pods, while they select the dispatcher's."""
    documents = render(EXAMPLE)
    skipped = one(documents, "Deployment", "orders-api")
    assert skipped["metadata"]["annotations"] == {"wisp.place/sidecar": "false"}
    assert sidecars_of(skipped) == []
    assert "initContainers" not in skipped["spec"]["template"]["spec"]
    joined = one(documents, "Deployment", "orders-dispatcher")
    selectors = [one(documents, "Service")["spec"]["selector"]] + [
        policy["spec"]["podSelector"]["matchLabels"]
        for policy in documents
        if policy["kind"] == "NetworkPolicy" and policy["metadata"]["name"].startswith("wisp-")
    ]
    assert len(selectors) == 4
    for selector in selectors:
        assert selector.items() <= joined["spec"]["template"]["metadata"]["labels"].items()
        assert not selector.items() <= skipped["spec"]["template"]["metadata"]["labels"].items()


@pytest.mark.parametrize("overlay", RENDERED)
def test_every_rendering_has_exactly_one_sidecar_per_joined_deployment(overlay: str) -> None:
    """In the base, both overlays and the example, each Deployment that is not annotated out
    has exactly one sign sidecar and one XRPC sidecar, and they are the component's
    containers: the same everywhere, whatever the overlay patches beside them or sizes."""
    documents = render(KUBERNETES / overlay)
    joined = [
        doc
        for doc in documents
        if doc["kind"] == "Deployment"
        and doc["metadata"].get("annotations", {}).get("wisp.place/sidecar") != "false"
    ]
    assert joined
    for workload in joined:
        for name in ("wisp-sidecar", "wisp-sidecar-xrpc"):
            (sidecar,) = sidecars_of(workload, name)
            expected = sidecar_container(name)
            assert without_rendering_changes(sidecar) == without_rendering_changes(expected)
            assert sidecar["image"].startswith("registry.example.com/wisp/wisp-sidecar:") or (
                sidecar["image"] == "wisp-sidecar:dev"
            )


def test_base_tightens_the_keys_mode_because_its_pod_sets_fs_group() -> None:
    """The component's key files are 0444 (no pod-wide fsGroup is imposed); the base, whose
    pod sets fsGroup to the sidecar's group, renders them 0440."""
    (volume,) = [v for v in sidecar_pod()["spec"]["volumes"] if v["name"] == "wisp-sidecar-keys"]
    assert volume["secret"]["defaultMode"] == 0o444
    workload = one(render(BASE), "Deployment")
    spec = workload["spec"]["template"]["spec"]
    assert str(spec["securityContext"]["fsGroup"]) == str(
        sidecar_container()["securityContext"]["runAsGroup"]
    )
    (rendered,) = [v for v in spec["volumes"] if v["name"] == "wisp-sidecar-keys"]
    assert rendered["secret"]["defaultMode"] == 0o440


# --- the sign socket (components/sign-socket) ---------------------------------


def test_the_socket_example_renders_and_validates() -> None:
    """The existing dispatcher with the sign-socket component renders and every object of it
    validates, the sidecar's settings included."""
    documents = render(SOCKET_EXAMPLE)
    for document in documents:
        validate(document)
    (sidecar,) = sidecars_of(one(documents, "Deployment", "orders-dispatcher"))
    environment = {
        **base_settings(),
        **{e["name"]: e["value"] for e in sidecar["env"] if "value" in e},
    }
    # Files of the cluster's Secret, not here: a key of our own instead.
    environment.pop("SIDECAR_KEK_FILE")
    environment.pop("SIDECAR_API_KEYS_FILE")
    environment["SIDECAR_KEK"] = encode_kek(generate_kek())
    settings = Settings.from_env(environment)
    assert settings.sign_port == 0
    assert settings.sign_socket is not None


def test_the_dispatcher_mounts_the_sign_socket_volume() -> None:
    """In the socket example the dispatcher and the sidecar mount the same emptyDir at the
    socket's directory, no other container mounts it, the pod is in the socket's group, and
    the sidecar's TCP sign listener is off; the opted-out Deployment is left alone."""
    documents = render(SOCKET_EXAMPLE)
    workload = one(documents, "Deployment", "orders-dispatcher")
    spec = workload["spec"]["template"]["spec"]
    (sidecar,) = sidecars_of(workload)
    env = {e["name"]: e.get("value") for e in sidecar["env"]}
    socket_dir = str(PurePosixPath(env["SIDECAR_SIGN_SOCKET"]).parent)
    assert env["SIDECAR_SIGN_PORT"] == "0"
    (volume,) = [v for v in spec["volumes"] if v["name"] == "wisp-sidecar-sign"]
    assert "emptyDir" in volume
    mounting = {
        container["name"]
        for container in spec.get("initContainers", []) + spec["containers"]
        for mount in container.get("volumeMounts", [])
        if mount["name"] == "wisp-sidecar-sign" and mount["mountPath"] == socket_dir
    }
    assert mounting == {"wisp-sidecar", "dispatcher"}
    assert int(env["SIDECAR_SIGN_SOCKET_GROUP"]) in spec["securityContext"]["supplementalGroups"]
    skipped = one(documents, "Deployment", "orders-api")["spec"]["template"]["spec"]
    assert "volumes" not in skipped
    assert "securityContext" not in skipped
