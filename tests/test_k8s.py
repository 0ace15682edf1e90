"""Kubernetes manifests from the matrix, validated offline against the Kubernetes schemas."""

from __future__ import annotations

from typing import Any

import kubernetes_validate
import pytest
import yaml

from orchestrator.cli import main
from orchestrator.k8s import K8sOptions, dump_k8s, render_k8s
from orchestrator.manifest import parse_manifest

K8S_VERSION = "1.30"


@pytest.mark.parametrize("backend", ["tgi", "vllm", "sglang"])
def test_every_object_validates(backend: str) -> None:
    objects = render_k8s(K8sOptions(backend=backend))
    kinds = [o["kind"] for o in objects]
    assert kinds.count("Deployment") == kinds.count("Service") == 16
    assert kinds.count("PersistentVolumeClaim") == kinds.count("Job") == kinds.count("ConfigMap") == 1
    for obj in yaml.safe_load_all(dump_k8s(objects)):  # what kubectl would read
        kubernetes_validate.validate(obj, K8S_VERSION, strict=True)


def _by(objects: list[dict[str, Any]], kind: str, name: str) -> dict[str, Any]:
    return next(o for o in objects if o["kind"] == kind and o["metadata"]["name"] == name)


def test_deployment_details() -> None:
    objects = render_k8s(K8sOptions(backend="vllm", sizes=("72b",), replicas=2, storage_class="nfs"))
    dep = _by(objects, "Deployment", "qwen2-72b-bf16")
    spec = dep["spec"]["template"]["spec"]
    container = spec["containers"][0]
    assert dep["spec"]["replicas"] == 2
    assert container["resources"]["limits"]["nvidia.com/gpu"] == 4  # 72B BF16: 4 GPUs in practice
    assert container["startupProbe"]["httpGet"]["path"] == "/health"
    assert container["startupProbe"]["failureThreshold"] * container["startupProbe"]["periodSeconds"] >= 1800
    assert container["readinessProbe"]["httpGet"]["path"] == "/health"
    assert {"name": "dshm", "emptyDir": {"medium": "Memory", "sizeLimit": "16Gi"}} in spec["volumes"]
    assert {"name": "hf-cache", "persistentVolumeClaim": {"claimName": "hf-cache"}} in spec["volumes"]
    token = next(e for e in container["env"] if e["name"] == "HF_TOKEN")
    assert token["valueFrom"]["secretKeyRef"]["name"] == "hf-token" and "value" not in token
    assert spec["enableServiceLinks"] is False
    assert container["args"][:2] == ["--model", "Qwen/Qwen2-72B-Instruct"]
    assert _by(objects, "PersistentVolumeClaim", "hf-cache")["spec"]["storageClassName"] == "nfs"
    svc = _by(objects, "Service", "qwen2-72b-bf16")
    assert svc["spec"]["type"] == "ClusterIP" and svc["spec"]["selector"] == dep["spec"]["selector"]["matchLabels"]


def test_bench_job_targets_service_dns_names() -> None:
    objects = render_k8s(K8sOptions(backend="tgi", sizes=("7b",), namespace="bench"))
    manifest = yaml.safe_load(_by(objects, "ConfigMap", "bench-manifest")["data"]["manifest.yaml"])
    m = parse_manifest(manifest)  # the Job's manifest is valid as it stands
    assert m.targets[0].url == "http://qwen2-7b-bf16.bench.svc.cluster.local:80"
    assert {t.backend for t in m.targets} == {"tgi"} and m.client.targets_in_parallel
    job = _by(objects, "Job", "bench-tgi")
    assert job["spec"]["template"]["spec"]["containers"][0]["command"][:2] == ["orchestrate", "bench"]


def test_cli_k8s(tmp_path: Any) -> None:
    out = tmp_path / "k8s.yaml"
    assert main(["k8s", "--backend", "sglang", "--sizes", "0.5b", "-o", str(out)]) == 0
    docs = list(yaml.safe_load_all(out.read_text()))
    assert len(docs) == 1 + 4 * 2 + 2
    sglang = next(d for d in docs if d["kind"] == "Deployment")
    assert sglang["spec"]["template"]["spec"]["containers"][0]["command"][:3] == [
        "python3",
        "-m",
        "sglang.launch_server",
    ]
    assert main(["k8s", "--sizes", "13b"]) == 2
