"""The Helm chart (charts/rt-dra): lint clean, and for its default values the same objects as
``kubectl kustomize manifests/`` - what ``helm install`` creates is what ``kubectl apply -k`` does.

Run with the real programs: helm built from its Go module (``hack/helm/build.sh``) and the
control plane's kubectl (its kustomize).
"""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
CHART = REPO / "charts" / "rt-dra"

pytestmark = pytest.mark.e2e


def run(*argv: str | Path) -> str:
    done = subprocess.run([str(a) for a in argv], capture_output=True, text=True, check=False, timeout=120)
    assert done.returncode == 0, f"{' '.join(map(str, argv))}:\n{done.stderr}{done.stdout}"
    return done.stdout + done.stderr


def cel_spacing(node: Any) -> Any:
    """CEL expressions with their whitespace runs made one space.

    kustomize re-serialises a folded (``>-``) scalar with more-indented lines with an extra line
    break before each of them (kyaml), so its CEL strings gain blank lines that the source, and helm,
    do not have; CEL does not care, neither does this comparison.
    """
    if isinstance(node, dict):
        return {
            k: " ".join(v.split())
            if k in ("expression", "messageExpression") and isinstance(v, str)
            else cel_spacing(v)
            for k, v in node.items()
        }
    if isinstance(node, list):
        return [cel_spacing(v) for v in node]
    return node


def objects(text: str) -> dict[tuple[str, str, str], dict[str, Any]]:
    docs = [cel_spacing(d) for d in yaml.safe_load_all(text) if d]
    out = {(d["kind"], d["metadata"].get("namespace", ""), d["metadata"]["name"]): d for d in docs}
    assert len(out) == len(docs), "two objects with the same kind, namespace and name"
    return out


def helm_template(helm: Path, *args: str) -> dict[tuple[str, str, str], dict[str, Any]]:
    return objects(run(helm, "template", "rt-dra", CHART, "--namespace", "rt-dra", "--include-crds", *args))


def test_helm_lint_is_clean(helm_binary: Path) -> None:
    out = run(helm_binary, "lint", "--strict", CHART)
    assert "1 chart(s) linted, 0 chart(s) failed" in out
    assert "[WARNING]" not in out and "[ERROR]" not in out


def test_default_values_render_what_kustomize_builds(helm_binary: Path, k8s_binaries: Any) -> None:
    kustomized = objects(run(k8s_binaries.kubectl, "kustomize", REPO / "manifests"))
    helm = helm_template(helm_binary)
    # The one difference: the namespace is helm's (--namespace rt-dra --create-namespace), not an object.
    assert kustomized.pop(("Namespace", "", "rt-dra"))
    assert sorted(helm) == sorted(kustomized)
    for key, obj in kustomized.items():
        assert helm[key] == obj, f"{key} differs between helm template and kubectl kustomize"


def test_the_crds_are_the_manifests_crds() -> None:
    for crd in (REPO / "manifests" / "crds").glob("*.yaml"):
        assert (CHART / "crds" / crd.name).read_text() == crd.read_text(), crd.name


def test_values_reach_the_objects(helm_binary: Path) -> None:
    """Another namespace, image, placement, backend, mode, resources and placement constraints."""
    tol = {"key": "rt", "operator": "Exists", "effect": "NoSchedule"}
    got = objects(
        run(
            helm_binary, "template", "x", CHART, "--namespace", "rt-system",
            "--set", "image.repository=registry.example/rt-dra", "--set", "image.tag=9.9",
            "--set", "extender.placement=spread", "--set", "agent.backend=none", "--set", "agent.mode=cdi",
            "--set", "agent.resources.requests.cpu=50m", "--set", "webhook.replicas=3",
            "--set", "extender.nodeSelector.role=control",
            "--set", "agent.tolerations[0].key=rt", "--set", "agent.tolerations[0].operator=Exists",
            "--set", "agent.tolerations[0].effect=NoSchedule",
        )
    )  # fmt: skip
    agent = got[("DaemonSet", "rt-system", "rtdra-agent")]["spec"]["template"]["spec"]
    [c] = agent["containers"]
    assert c["image"] == "registry.example/rt-dra:9.9"
    assert c["command"][:3] == ["rtdra-agent", "--backend", "none"]
    assert {"name": "RTDRA_AGENT_MODE", "value": "cdi"} in c["env"]
    assert c["resources"] == {"requests": {"cpu": "50m"}}
    assert agent["tolerations"] == [tol]
    ext = got[("Deployment", "rt-system", "rtdra-extender")]["spec"]["template"]["spec"]
    assert ext["nodeSelector"] == {"role": "control"}
    assert "--namespace=rt-system" in ext["containers"][0]["args"]
    assert {"name": "RTDRA_EXTENDER_DEFAULT_PLACEMENT", "value": "spread"} in ext["containers"][0]["env"]
    assert got[("Deployment", "rt-system", "rtdra-webhook")]["spec"]["replicas"] == 3
    guard = got[("ValidatingAdmissionPolicy", "", "rtdra-annotation-guard")]
    assert "system:serviceaccount:rt-system:rtdra-extender" in yaml.safe_dump(guard)
    assert "rt-dra:" not in yaml.safe_dump(guard)


def test_generated_tls_makes_the_secret_and_the_ca_bundle_from_one_ca(helm_binary: Path) -> None:
    import base64

    from cryptography import x509

    got = helm_template(helm_binary, "--set", "webhook.tls.generate=true")
    secret = got[("Secret", "rt-dra", "rtdra-webhook-tls")]
    assert secret["type"] == "kubernetes.io/tls"
    config = got[("MutatingWebhookConfiguration", "", "rtdra-webhook")]
    bundles = {w["clientConfig"]["caBundle"] for w in config["webhooks"]}
    assert bundles == {secret["data"]["ca.crt"]}
    ca = x509.load_pem_x509_certificate(base64.b64decode(secret["data"]["ca.crt"]))
    cert = x509.load_pem_x509_certificate(base64.b64decode(secret["data"]["tls.crt"]))
    cert.verify_directly_issued_by(ca)
    sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value.get_values_for_type(x509.DNSName)
    assert "rtdra-webhook.rt-dra.svc" in sans


def test_the_local_install_changes_the_chart_as_the_overlay_changes_the_manifests(
    helm_binary: Path, k8s_binaries: Any, tmp_path: Path
) -> None:
    """hack/install.py's post-renderer (helm) and local overlay (kustomize): the same objects on this machine."""
    import sys

    if str(REPO) not in sys.path:
        sys.path.insert(0, str(REPO))
    from hack.install import Local, post_render, write_local_overlay

    local = Local(
        image="rt-dra.local/rt-dra:0.1.0", api_host="127.0.0.1", api_port=16443, webhook_port=18443,
        extender_port=18888, hook_dir="/w/hook",
        agent_paths={"cdi": "/w/cdi", "nri": "/w/nri", "state": "/w/s", "plugins": "/w/p", "plugins-registry": "/w/r"},
    )  # fmt: skip
    kustomized = objects(run(k8s_binaries.kubectl, "kustomize", write_local_overlay(tmp_path / "overlay", local)))
    rendered = run(
        helm_binary, "template", "rt-dra", CHART, "--namespace", "rt-dra", "--include-crds",
        "--set", "image.repository=rt-dra.local/rt-dra", "--set", "image.tag=0.1.0", "--set", "image.pullPolicy=Never",
    )  # fmt: skip
    helm = objects(post_render(local, rendered))
    assert kustomized.pop(("Namespace", "", "rt-dra"))
    assert sorted(helm) == sorted(kustomized)
    for key, obj in kustomized.items():
        assert helm[key] == obj, key
    agent = helm[("DaemonSet", "rt-dra", "rtdra-agent")]["spec"]["template"]["spec"]
    assert agent["hostNetwork"] is True
    assert {v["name"]: v["hostPath"]["path"] for v in agent["volumes"] if "hostPath" in v}["cdi"] == "/w/cdi"
    webhook = helm[("MutatingWebhookConfiguration", "", "rtdra-webhook")]
    assert {w["clientConfig"]["url"] for w in webhook["webhooks"]} == {"https://127.0.0.1:18443/mutate"}
    # The caBundle given to helm survives the post-renderer (the webhook is called by URL, trusted by it).
    rendered = run(
        helm_binary, "template", "rt-dra", CHART, "--namespace", "rt-dra", "--set", "webhook.tls.caBundle=Q0E="
    )
    webhook = objects(post_render(local, rendered))[("MutatingWebhookConfiguration", "", "rtdra-webhook")]
    assert [w["clientConfig"] for w in webhook["webhooks"]] == [
        {"url": "https://127.0.0.1:18443/mutate", "caBundle": "Q0E="}
    ] * len(webhook["webhooks"])
    # Values that move list entries (agent.mode adds an env var before the hook's): patched by name, not place.
    rendered = run(helm_binary, "template", "rt-dra", CHART, "--namespace", "rt-dra", "--set", "agent.mode=nri")
    agent = objects(post_render(local, rendered))[("DaemonSet", "rt-dra", "rtdra-agent")]["spec"]["template"]["spec"]
    env = {e["name"]: e.get("value") for e in agent["containers"][0]["env"]}
    assert env["RTDRA_AGENT_MODE"] == "nri" and env["RTDRA_AGENT_HOOK_DIR"] == "/w/hook"
    assert {m["name"]: m["mountPath"] for m in agent["containers"][0]["volumeMounts"]}["hook"] == "/w/hook"
