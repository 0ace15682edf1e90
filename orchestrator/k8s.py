"""Kubernetes manifests for the checkpoint matrix: more than one host.

From the same matrix and backends as the Compose files: per checkpoint a Deployment (GPUs as
``nvidia.com/gpu`` limits, a startupProbe patient enough for a 72B download and load, a
readinessProbe on /health, ``/dev/shm`` as a memory-backed emptyDir, the shared Hugging Face cache
on a PersistentVolumeClaim, HF_TOKEN from a Secret, no service links) and a ClusterIP Service; one
PVC; and a Job that runs ``orchestrate bench`` in the cluster against the Services' DNS names,
its manifest in a ConfigMap. Replicas of a checkpoint sit behind its Service.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import yaml

from orchestrator.compose import LABEL, selected
from orchestrator.deploy import CACHE_ENV, CACHE_MOUNT, CONTAINER_PORT, IMAGES, server_command
from orchestrator.matrix import Checkpoint
from orchestrator.registry import TASKS


@dataclass(frozen=True)
class K8sOptions:
    """What `orchestrate k8s` renders."""

    backend: str = "vllm"
    sizes: tuple[str, ...] = ()
    quants: tuple[str, ...] = ()
    namespace: str = "llm-bench"
    replicas: int = 1
    cache_size: str = "2Ti"
    storage_class: str | None = None
    hf_secret: str = "hf-token"
    orchestrator_image: str = "orchestrator:latest"
    tasks: tuple[str, ...] = tuple(TASKS)


def _labels(ckpt: Checkpoint, backend: str) -> dict[str, str]:
    return {
        "app.kubernetes.io/name": ckpt.slug,
        "app.kubernetes.io/part-of": "qwen2-quantization-bench",
        f"{LABEL}/backend": backend,
        f"{LABEL}/quantization": ckpt.quant.lower(),
    }


def _deployment(ckpt: Checkpoint, options: K8sOptions) -> dict[str, Any]:
    backend = options.backend
    tp = ckpt.default_tp
    port = CONTAINER_PORT[backend]
    command = server_command(backend, ckpt, tp)
    container: dict[str, Any] = {
        "name": "server",
        "image": IMAGES[backend],
        "ports": [{"name": "http", "containerPort": port}],
        "env": [
            {
                "name": "HF_TOKEN",
                "valueFrom": {"secretKeyRef": {"name": options.hf_secret, "key": "token", "optional": True}},
            },
            *({"name": k, "value": v} for k, v in (e.split("=", 1) for e in CACHE_ENV[backend])),
        ],
        "resources": {"limits": {"nvidia.com/gpu": tp}, "requests": {"nvidia.com/gpu": tp}},
        "volumeMounts": [
            {"name": "hf-cache", "mountPath": CACHE_MOUNT[backend]},
            {"name": "dshm", "mountPath": "/dev/shm"},
        ],
        # Up to 60 min to download and load the weights before the pod counts as failed.
        "startupProbe": {"httpGet": {"path": "/health", "port": "http"}, "periodSeconds": 10, "failureThreshold": 360},
        "readinessProbe": {"httpGet": {"path": "/health", "port": "http"}, "periodSeconds": 10, "failureThreshold": 3},
    }
    if command[0] == "python3":  # SGLang: a full command line
        container["command"] = command
    else:  # TGI and vLLM images have the server as entrypoint: arguments only
        container["args"] = command
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {
            "name": ckpt.slug,
            "namespace": options.namespace,
            "labels": _labels(ckpt, backend),
            "annotations": {f"{LABEL}/model-id": ckpt.repo},
        },
        "spec": {
            "replicas": options.replicas,
            "selector": {"matchLabels": {"app.kubernetes.io/name": ckpt.slug}},
            "template": {
                "metadata": {"labels": _labels(ckpt, backend)},
                "spec": {
                    # No SERVICE_HOST/PORT variables: vLLM reads VLLM_PORT-like names and breaks on them.
                    "enableServiceLinks": False,
                    "containers": [container],
                    "volumes": [
                        {"name": "hf-cache", "persistentVolumeClaim": {"claimName": "hf-cache"}},
                        {"name": "dshm", "emptyDir": {"medium": "Memory", "sizeLimit": "16Gi"}},
                    ],
                    "tolerations": [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}],
                },
            },
        },
    }


def _service(ckpt: Checkpoint, options: K8sOptions) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": ckpt.slug, "namespace": options.namespace, "labels": _labels(ckpt, options.backend)},
        "spec": {
            "type": "ClusterIP",
            "selector": {"app.kubernetes.io/name": ckpt.slug},
            "ports": [{"name": "http", "port": 80, "targetPort": "http"}],
        },
    }


def bench_manifest(checkpoints: list[Checkpoint], options: K8sOptions) -> dict[str, Any]:
    """The orchestrate manifest the in-cluster Job runs: targets are the Services' DNS names."""
    adapter = {"tgi": "tgi", "vllm": "vllm", "sglang": "sglang"}[options.backend]
    return {
        "run": {"name": f"k8s-{options.backend}", "output_dir": "/results"},
        "tasks": {t: {} for t in options.tasks},
        "client": {"concurrency": 64, "targets_in_parallel": True, "health_timeout": 3600},
        "targets": [
            {
                "name": c.slug,
                "model": c.model,
                "model_id": c.repo,
                "quantization": c.quant,
                "backend": adapter,
                "url": f"http://{c.slug}.{options.namespace}.svc.cluster.local:80",
            }
            for c in checkpoints
        ],
    }


def render_k8s(options: K8sOptions) -> list[dict[str, Any]]:
    """Every object, in apply order."""
    checkpoints = selected(options.backend, options.sizes, options.quants)
    pvc: dict[str, Any] = {
        "apiVersion": "v1",
        "kind": "PersistentVolumeClaim",
        "metadata": {"name": "hf-cache", "namespace": options.namespace},
        "spec": {"accessModes": ["ReadWriteMany"], "resources": {"requests": {"storage": options.cache_size}}},
    }
    if options.storage_class:
        pvc["spec"]["storageClassName"] = options.storage_class
    objects: list[dict[str, Any]] = [pvc]
    for ckpt in checkpoints:
        objects += [_deployment(ckpt, options), _service(ckpt, options)]
    manifest = bench_manifest(checkpoints, options)
    objects.append(
        {
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "metadata": {"name": "bench-manifest", "namespace": options.namespace},
            "data": {"manifest.yaml": yaml.safe_dump(manifest, sort_keys=False)},
        }
    )
    objects.append(
        {
            "apiVersion": "batch/v1",
            "kind": "Job",
            "metadata": {"name": f"bench-{options.backend}", "namespace": options.namespace},
            "spec": {
                "backoffLimit": 0,  # a failed bench is looked at, not silently re-run
                "template": {
                    "spec": {
                        "restartPolicy": "Never",
                        "enableServiceLinks": False,
                        "containers": [
                            {
                                "name": "bench",
                                "image": options.orchestrator_image,
                                "command": ["orchestrate", "bench", "/config/manifest.yaml", "--no-progress"],
                                "env": [
                                    {
                                        "name": "HF_TOKEN",
                                        "valueFrom": {
                                            "secretKeyRef": {
                                                "name": options.hf_secret,
                                                "key": "token",
                                                "optional": True,
                                            }
                                        },
                                    }
                                ],
                                "volumeMounts": [
                                    {"name": "manifest", "mountPath": "/config"},
                                    {"name": "hf-cache", "mountPath": "/root/.cache/huggingface"},
                                    # Results land on the shared volume: they outlive the pod.
                                    {"name": "hf-cache", "mountPath": "/results", "subPath": "bench-results"},
                                ],
                            }
                        ],
                        "volumes": [
                            {"name": "manifest", "configMap": {"name": "bench-manifest"}},
                            {"name": "hf-cache", "persistentVolumeClaim": {"claimName": "hf-cache"}},
                        ],
                    }
                },
            },
        }
    )
    return objects


def dump_k8s(objects: list[dict[str, Any]]) -> str:
    """Multi-document YAML for `kubectl apply -f`."""
    return yaml.safe_dump_all(objects, sort_keys=False, width=120)
