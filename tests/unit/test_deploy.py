"""The deployment files (deploy/) say what the README says they do: the NGC 24.10 base image and the TensorRT it
runs, the launcher and its ports, Kubernetes readiness on Triton's health endpoint and scaling on the queue metric
the `diffusion` model publishes. Static checks: no Docker or cluster runs here."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from export.tensorrt_build import CONTAINER_TENSORRT

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"
PORTS = {"http": 8000, "grpc": 8001, "metrics": 8002}


def instructions(dockerfile: str) -> list[tuple[str, str]]:
    joined = dockerfile.replace("\\\n", " ")
    lines = [line.strip() for line in joined.splitlines() if line.strip() and not line.strip().startswith("#")]
    return [(line.split(None, 1)[0], line.split(None, 1)[1]) for line in lines]


def test_dockerfile_builds_on_triton_24_10_with_its_tensorrt() -> None:
    steps = instructions((DEPLOY / "Dockerfile").read_text())
    assert steps[0] == ("FROM", "nvcr.io/nvidia/tritonserver:24.10-py3")
    installs = " ".join(arguments for kind, arguments in steps if kind == "RUN")
    assert f'"tensorrt=={CONTAINER_TENSORRT}.0"' in installs
    entrypoint = next(arguments for kind, arguments in steps if kind == "ENTRYPOINT")
    assert '"perf.serve_gpu"' in entrypoint and '"0.0.0.0"' in entrypoint
    assert ("EXPOSE", "8000 8001 8002") in steps
    assert ("USER", "1000") in steps


def documents() -> dict[str, dict[str, Any]]:
    return {doc["kind"]: doc for doc in yaml.safe_load_all((DEPLOY / "k8s.yaml").read_text())}


def test_kubernetes_deployment_is_ready_on_triton_health_and_gets_a_gpu() -> None:
    deployment = documents()["Deployment"]
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    assert {port["name"]: port["containerPort"] for port in container["ports"]} == PORTS
    assert container["readinessProbe"]["httpGet"] == {"path": "/v2/health/ready", "port": "http"}
    assert container["startupProbe"]["httpGet"]["path"] == "/v2/health/ready"
    assert container["livenessProbe"]["httpGet"]["path"] == "/v2/health/live"
    assert container["resources"]["limits"]["nvidia.com/gpu"] == 1
    annotations = deployment["spec"]["template"]["metadata"]["annotations"]
    assert annotations["prometheus.io/port"] == str(PORTS["metrics"])


def test_kubernetes_service_and_autoscaling_on_the_waiting_queue() -> None:
    docs = documents()
    service, autoscaler = docs["Service"], docs["HorizontalPodAutoscaler"]
    assert {port["name"]: port["port"] for port in service["spec"]["ports"]} == PORTS
    assert service["spec"]["selector"] == docs["Deployment"]["spec"]["selector"]["matchLabels"]
    (metric,) = autoscaler["spec"]["metrics"]
    assert metric["type"] == "Pods" and metric["pods"]["metric"]["name"] == "synerdiff_waiting_requests"
    assert autoscaler["spec"]["scaleTargetRef"]["name"] == docs["Deployment"]["metadata"]["name"]
    # the metric is one the diffusion model really publishes
    metrics_source = (Path(__file__).resolve().parents[2] / "model_repository" / "diffusion_metrics.py").read_text()
    assert '"synerdiff_waiting_requests"' in metrics_source
