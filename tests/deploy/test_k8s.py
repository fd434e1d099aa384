"""deploy/k8s/: schema-valid (kubernetes-validate, strict, offline) and consistent with the CLI,
the settings, the topology and each other."""

import copy
import re
from pathlib import Path
from typing import Any, Final

import kubernetes_validate
import pytest
import yaml

from cachenet.edge.config import EdgeSettings
from cachenet.units import parse_size
from placement.config import ControllerSettings
from placement.topology import parse_topology
from registry.config import OriginSettings
from tests.deploy.servecli import DEPLOY_DIR, serve_settings

# The Kubernetes release the manifests are checked against (schemas ship inside the package:
# no network). Raise it when the oldest cluster we support moves on.
K8S_VERSION: Final = "1.33.0"
K8S_DIR: Final = DEPLOY_DIR / "k8s"
NOT_APPLIED: Final = ("kustomization.yaml", "secrets.example.yaml")
WORKLOADS: Final = ("Deployment", "StatefulSet")
ROLE_SETTINGS: Final = {
    "origin": OriginSettings,
    "edge": EdgeSettings,
    "controller": ControllerSettings,
}
_VAR_RE: Final = re.compile(r"\$\(([A-Za-z_][A-Za-z0-9_]*)\)")
_QUANTITY: Final = {
    "Ki": 1024,
    "Mi": 1024**2,
    "Gi": 1024**3,
    "Ti": 1024**4,
    "K": 1000,
    "M": 1000**2,
    "G": 1000**3,
}

Doc = dict[str, Any]


def _documents() -> list[tuple[str, Doc]]:
    out = []
    for path in sorted(K8S_DIR.glob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text()):
            if doc:
                out.append((f"{path.name}:{doc['kind']}/{doc.get('metadata', {}).get('name', '')}", doc))
    return out


DOCUMENTS: Final = _documents()
RESOURCES: Final = [(key, doc) for key, doc in DOCUMENTS if not doc["apiVersion"].startswith("kustomize.")]


def _all(kind: str) -> list[Doc]:
    return [doc for _key, doc in RESOURCES if doc["kind"] == kind]


def _one(kind: str, name: str) -> Doc:
    (doc,) = (d for d in _all(kind) if d["metadata"]["name"] == name)
    return doc


def _workloads() -> list[Doc]:
    return [doc for _key, doc in RESOURCES if doc["kind"] in WORKLOADS]


@pytest.mark.parametrize(("key", "doc"), RESOURCES, ids=[key for key, _doc in RESOURCES])
def test_manifest_is_valid_for_the_pinned_kubernetes(key: str, doc: Doc) -> None:
    try:
        kubernetes_validate.validate(doc, K8S_VERSION, strict=True)
    except kubernetes_validate.ValidationError as e:
        pytest.fail(f"{key}: {'.'.join(map(str, e.path))}: {e.message}")


def test_strict_validation_catches_a_misspelt_field() -> None:
    # Guards the test above: strict mode must refuse what a cluster would silently drop.
    doc = copy.deepcopy(_one("Deployment", "cachenet-origin"))
    doc["spec"]["template"]["spec"]["containers"][0]["comand"] = ["cachenet"]
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(doc, K8S_VERSION, strict=True)


def test_kustomization_applies_every_manifest_but_the_secret_examples() -> None:
    (kustomization,) = (doc for _key, doc in DOCUMENTS if doc["kind"] == "Kustomization")
    expected = sorted(p.name for p in K8S_DIR.glob("*.yaml") if p.name not in NOT_APPLIED)
    assert sorted(kustomization["resources"]) == expected


@pytest.mark.parametrize("role", sorted(ROLE_SETTINGS))
def test_container_runs_a_serve_command_the_cli_accepts(role: str, monkeypatch: pytest.MonkeyPatch) -> None:
    workload, container = _container(role)
    env = _container_env(workload, container)
    argv = [_expand(a, env) for a in container["command"] + container["args"]]
    assert argv[:3] == ["cachenet", role, "serve"]
    settings = serve_settings(monkeypatch, argv[1:], env)
    assert isinstance(settings, ROLE_SETTINGS[role])
    assert settings.host == "0.0.0.0"
    assert settings.port == container["ports"][0]["containerPort"]
    mounts = {m["name"]: Path(m["mountPath"]) for m in container["volumeMounts"]}
    assert settings.data_dir == mounts["data"]
    assert settings.token == _secret_value("cachenet-operator", "token")
    if isinstance(settings, OriginSettings):
        assert settings.db_url == _secret_value("cachenet-catalogue", "db-url")
        assert settings.database_url.startswith("postgresql")
    elif isinstance(settings, EdgeSettings):
        assert settings.node_id == workload["metadata"]["name"] + "-0"
        assert settings.origin_url == _service_url("cachenet-origin")
        assert settings.controller_url == _service_url("cachenet-controller")
        headless = workload["spec"]["serviceName"]
        assert settings.url == f"http://{settings.node_id}.{headless}:{settings.port}"
    else:
        assert isinstance(settings, ControllerSettings)
        assert settings.origin_url == _service_url("cachenet-origin")
        config_mount = next(m for m in container["volumeMounts"] if m["name"] == "topology")
        assert settings.topology.parent == Path(config_mount["mountPath"])


def test_edge_pods_are_the_topology_servers_the_controller_reaches() -> None:
    edge = _one("StatefulSet", "cachenet-edge")
    pods = [f"cachenet-edge-{i}" for i in range(edge["spec"]["replicas"])]
    topology = parse_topology(yaml.safe_load(_one("ConfigMap", "cachenet-topology")["data"]["topology.yaml"]))
    assert list(topology.server_ids()) == pods
    _workload, controller = _container("controller")
    args = controller["args"]
    nodes = dict(args[i + 1].split("=", 1) for i, a in enumerate(args) if a == "--node")
    headless = edge["spec"]["serviceName"]
    assert nodes == {pod: f"http://{pod}.{headless}:8710" for pod in pods}
    # The solver's budget per server is what each node may hold.
    workload, container = _container("edge")
    capacity = parse_size(_container_env(workload, container)["CACHE_CAPACITY"])
    assert {s.capacity_bytes for s in topology.servers} == {capacity}


def test_edge_statefulset_has_a_volume_per_pod_sized_above_its_capacity() -> None:
    edge, container = _container("edge")
    spec = edge["spec"]
    headless = _one("Service", spec["serviceName"])
    assert headless["spec"]["clusterIP"] == "None"
    (claim,) = spec["volumeClaimTemplates"]
    assert claim["metadata"]["name"] in {m["name"] for m in container["volumeMounts"]}
    volume_bytes = _quantity(claim["spec"]["resources"]["requests"]["storage"])
    capacity = parse_size(_container_env(edge, container)["CACHE_CAPACITY"])
    assert 0.8 * volume_bytes <= capacity < volume_bytes  # room left for temp files and state
    node_id = next(e for e in container["env"] if e["name"] == "CACHENET_NODE_ID")
    assert node_id["valueFrom"] == {"fieldRef": {"fieldPath": "metadata.name"}}


def test_origin_keeps_its_store_on_a_claim_and_reads_the_database_url_from_a_secret() -> None:
    origin, container = _container("origin")
    assert origin["spec"]["replicas"] == 1 and origin["spec"]["strategy"]["type"] == "Recreate"
    volumes = {v["name"]: v for v in origin["spec"]["template"]["spec"]["volumes"]}
    claim = volumes["data"]["persistentVolumeClaim"]["claimName"]
    assert _one("PersistentVolumeClaim", claim)
    env = {e["name"]: e for e in container["env"]}
    assert "secretKeyRef" in env["CACHENET_DB_URL"]["valueFrom"]


@pytest.mark.parametrize("role", sorted(ROLE_SETTINGS))
def test_pods_are_probed_scraped_and_locked_down(role: str) -> None:
    workload, container = _container(role)
    pod = workload["spec"]["template"]
    port = container["ports"][0]
    assert pod["metadata"]["annotations"] == {
        "prometheus.io/scrape": "true",
        "prometheus.io/port": str(port["containerPort"]),
        "prometheus.io/path": "/metrics",
    }
    # Readiness reflects the serving path (issue 14): /readyz reads a block, where the servers have one.
    ready = "/readyz" if role in ("origin", "edge") else "/healthz"
    assert container["readinessProbe"]["httpGet"] == {"path": ready, "port": port["name"]}
    assert container["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": port["name"]}
    # Service links would inject CACHENET_<SERVICE>_PORT=tcp://... variables, read as settings.
    assert pod["spec"]["enableServiceLinks"] is False
    assert pod["spec"]["securityContext"]["runAsNonRoot"] is True
    assert container["securityContext"]["allowPrivilegeEscalation"] is False
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    assert container["image"] == "cachenet:0.1.0"


def test_services_select_pods_and_name_their_ports() -> None:
    for service in _all("Service"):
        selector = service["spec"]["selector"]
        matches = [w for w in _workloads() if selector.items() <= w["spec"]["template"]["metadata"]["labels"].items()]
        assert len(matches) == 1, service["metadata"]["name"]
        (workload,) = matches
        assert workload["spec"]["selector"]["matchLabels"].items() <= selector.items()
        port_names = {p["name"] for c in workload["spec"]["template"]["spec"]["containers"] for p in c["ports"]}
        for port in service["spec"]["ports"]:
            assert port["targetPort"] in port_names, service["metadata"]["name"]


def test_referenced_secrets_and_config_maps_exist() -> None:
    for workload in _workloads():
        pod = workload["spec"]["template"]["spec"]
        for container in pod["containers"]:
            for env in container.get("env", []):
                ref = env.get("valueFrom", {}).get("secretKeyRef")
                if ref:
                    assert _secret_value(ref["name"], ref["key"])
        for volume in pod.get("volumes", []):
            if "configMap" in volume:
                assert _one("ConfigMap", volume["configMap"]["name"])


def _container(role: str) -> tuple[Doc, Doc]:
    (workload,) = (w for w in _workloads() if w["metadata"]["labels"]["app.kubernetes.io/component"] == role)
    (container,) = workload["spec"]["template"]["spec"]["containers"]
    return workload, container


def _container_env(workload: Doc, container: Doc) -> dict[str, str]:
    """The container's environment as Kubernetes would set it in the first pod."""
    env: dict[str, str] = {}
    for entry in container.get("env", []):
        source = entry.get("valueFrom")
        if source is None:
            value = _expand(entry["value"], env)
        elif "secretKeyRef" in source:
            value = _secret_value(source["secretKeyRef"]["name"], source["secretKeyRef"]["key"])
        else:
            assert source["fieldRef"]["fieldPath"] == "metadata.name"
            value = workload["metadata"]["name"] + ("-0" if workload["kind"] == "StatefulSet" else "-pod")
        env[entry["name"]] = value
    return env


def _expand(text: str, env: dict[str, str]) -> str:
    return _VAR_RE.sub(lambda m: env[m.group(1)], text)


def _secret_value(name: str, key: str) -> str:
    return str(_one("Secret", name)["stringData"][key])


def _service_url(name: str) -> str:
    return f"http://{name}:{_one('Service', name)['spec']['ports'][0]['port']}"


def _quantity(text: str) -> int:
    for suffix, factor in _QUANTITY.items():
        if text.endswith(suffix):
            return int(text.removesuffix(suffix)) * factor
    return int(text)
