"""The manifests as files: no wildcard rights, the scheduler configurations agree with the
Deployments and the kubeadm example, and docs/install.md's tested blocks exist.

What the API server thinks of them is tests/e2e/test_manifests.py's job; these
checks need nothing but the files, so they run in ``make test-fast``.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from rtdra import names

REPO = Path(__file__).resolve().parents[2]
MANIFESTS = REPO / "manifests"
SCHEDULER = MANIFESTS / "scheduler"
INSTALL_DOC = REPO / "docs" / "install.md"


def documents(path: Path) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(path.read_text()) if isinstance(d, dict)]


def all_documents() -> Iterator[tuple[Path, dict[str, Any]]]:
    for path in sorted(MANIFESTS.rglob("*.yaml")):
        for doc in documents(path):
            yield path, doc


def mappings(value: Any) -> Iterator[dict[str, Any]]:
    if isinstance(value, dict):
        yield value
        for v in value.values():
            yield from mappings(v)
    elif isinstance(value, list):
        for v in value:
            yield from mappings(v)


def kustomization_resources(directory: Path) -> list[Path]:
    kustomization = yaml.safe_load((directory / "kustomization.yaml").read_text())
    return [directory / r for r in kustomization.get("resources", [])]


def test_no_manifest_grants_or_matches_wildcard_verbs_resources_or_groups() -> None:
    found = [
        f"{path.relative_to(REPO)}: {doc.get('kind')}/{doc.get('metadata', {}).get('name')} {key}={m[key]}"
        for path, doc in all_documents()
        for m in mappings(doc)
        for key in ("verbs", "resources", "apiGroups", "resourceNames", "nonResourceURLs")
        if isinstance(m.get(key), list) and any("*" in str(v) for v in m[key])
    ]
    assert found == []


def test_every_role_rule_names_its_verbs_resources_and_groups() -> None:
    for path, doc in all_documents():
        if doc.get("kind") in ("Role", "ClusterRole"):
            for rule in doc.get("rules", []):
                assert rule.get("verbs") and rule.get("resources") and "apiGroups" in rule, (path, rule)


def test_every_manifest_file_is_applied_by_a_kustomization_or_is_a_scheduler_file() -> None:
    applied = set(kustomization_resources(MANIFESTS)) | set(kustomization_resources(SCHEDULER))
    not_api_objects = {
        MANIFESTS / "extender" / "scheduler-config.yaml",  # option (a): a file for kube-scheduler
        MANIFESTS / "extender" / "scheduler-config-http.yaml",  # the loopback development variant
        SCHEDULER / "rt-dra-scheduler-config.yaml",  # option (b): the ConfigMap's content
        SCHEDULER / "kubeadm-config.yaml",  # option (a) with kubeadm
        SCHEDULER / "dra-scoring-config.yaml",  # option (a) plus DRA mode's scoring entry
        MANIFESTS / "webhook" / "dra-scoring.yaml",  # its webhook side, applied with it (optional)
    }
    kustomizations = set(MANIFESTS.rglob("kustomization.yaml"))
    assert set(MANIFESTS.rglob("*.yaml")) - kustomizations == applied | not_api_objects


# --------------------------------------------------------------------------- option (b)
def second_scheduler() -> tuple[dict[str, Any], dict[str, Any], dict[str, Any]]:
    kustomization = yaml.safe_load((SCHEDULER / "kustomization.yaml").read_text())
    deployment = next(d for d in documents(SCHEDULER / "deployment.yaml") if d["kind"] == "Deployment")
    config = yaml.safe_load((SCHEDULER / "rt-dra-scheduler-config.yaml").read_text())
    return kustomization, deployment, config


def test_the_second_scheduler_has_one_profile_and_sends_all_its_pods_to_the_extender() -> None:
    _, _, config = second_scheduler()
    assert config["apiVersion"] == "kubescheduler.config.k8s.io/v1"
    assert [p["schedulerName"] for p in config["profiles"]] == ["rt-dra-scheduler"]
    [extender] = config["extenders"]
    assert "managedResources" not in extender
    assert extender["bindVerb"] == "bind" and extender["ignorable"] is False
    fit = next(c for c in config["profiles"][0]["pluginConfig"] if c["name"] == "NodeResourcesFit")
    assert fit["args"]["ignoredResourceGroups"] == [names.DOMAIN]  # dl and bandwidth are not on nodes
    assert config["leaderElection"]["resourceName"] == "rt-dra-scheduler"


def test_the_second_scheduler_mounts_what_its_configuration_names() -> None:
    kustomization, deployment, config = second_scheduler()
    [generator] = kustomization["configMapGenerator"]
    assert generator["files"] == ["config.yaml=rt-dra-scheduler-config.yaml"]
    pod = deployment["spec"]["template"]["spec"]
    [container] = pod["containers"]
    mounts = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert volumes["config"]["configMap"]["name"] == generator["name"]
    assert f"--config={mounts['config']}/config.yaml" in container["command"]
    secret_dir = mounts[next(n for n, v in volumes.items() if "secret" in v)]
    for key in ("caFile", "certFile", "keyFile"):
        assert Path(config["extenders"][0]["tlsConfig"][key]).parent == Path(secret_dir)
    assert pod["serviceAccountName"] == "rtdra-scheduler"
    lease_rule = next(r for d in documents(SCHEDULER / "rbac.yaml") if d["kind"] == "Role" for r in d["rules"])
    assert lease_rule["resourceNames"] == [config["leaderElection"]["resourceName"]]


def test_the_second_scheduler_image_tag_matches_the_control_plane_release() -> None:
    kustomization, _, _ = second_scheduler()
    version = re.search(
        r'K8S_VERSION="\$\{K8S_VERSION:-(v[\d.]+)\}"', (REPO / "hack/controlplane/build.sh").read_text()
    )
    assert version is not None
    assert kustomization["images"] == [{"name": "registry.k8s.io/kube-scheduler", "newTag": version.group(1)}]


# --------------------------------------------------------------------------- option (a) and kubeadm
def test_the_kubeadm_example_mounts_the_directory_the_scheduler_configuration_names() -> None:
    [cluster] = documents(SCHEDULER / "kubeadm-config.yaml")
    assert cluster["apiVersion"] == "kubeadm.k8s.io/v1beta4"
    assert cluster["kind"] == "ClusterConfiguration"
    scheduler = cluster["scheduler"]
    assert set(scheduler) == {"extraArgs", "extraVolumes"}
    # v1beta4: extraArgs is a list of {name, value} (a map in v1beta3 and older)
    args = scheduler["extraArgs"]
    assert all(set(a) == {"name", "value"} and isinstance(a["value"], str) for a in args)
    config_path = Path(dict((a["name"], a["value"]) for a in args)["config"])
    [volume] = scheduler["extraVolumes"]
    assert set(volume) <= {"name", "hostPath", "mountPath", "readOnly", "pathType"}
    assert volume["hostPath"] == volume["mountPath"] and volume["readOnly"] is True
    assert volume["pathType"] in ("Directory", "DirectoryOrCreate")
    assert config_path.parent == Path(volume["mountPath"])
    shipped = yaml.safe_load((MANIFESTS / "extender" / "scheduler-config.yaml").read_text())
    for key in ("caFile", "certFile", "keyFile"):
        assert Path(shipped["extenders"][0]["tlsConfig"][key]).parent == config_path.parent
    # kubeadm mounts scheduler.conf itself; with --config the scheduler takes its kubeconfig from the file
    assert shipped["clientConnection"]["kubeconfig"] == "/etc/kubernetes/scheduler.conf"


def test_option_a_routes_only_pods_with_the_opt_in_resource() -> None:
    for name in ("scheduler-config.yaml", "scheduler-config-http.yaml"):
        [extender] = yaml.safe_load((MANIFESTS / "extender" / name).read_text())["extenders"]
        assert extender["managedResources"] == [{"name": names.DL_RESOURCE, "ignoredByScheduler": True}]


# --------------------------------------------------------------------------- docs/install.md
@pytest.mark.parametrize(
    "block",
    [
        "install",
        "webhook-certs",
        "extender-certs",
        "scheduler-a-files",
        "scheduler-b",
        "namespaces",
        "rt-nodes",
        "nas",
        "uninstall",
    ],
)
def test_the_install_guide_keeps_its_tested_blocks(block: str) -> None:
    blocks = dict(re.findall(r"<!-- tested: ([\w-]+) -->\n```sh\n(.*?)```", INSTALL_DOC.read_text(), flags=re.S))
    assert blocks.get(block, "").strip()
