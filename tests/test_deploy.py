"""Dockerfile and deploy/ manifests, validated offline: linters, schemas, and what they say."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from wina_vllm.settings import parse_settings

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent


def _tool(name: str) -> str:
    path = BIN / name if (BIN / name).exists() else shutil.which(name)
    if path is None:
        pytest.skip(f"{name} is not installed (scripts/setup.sh installs it)")
    return str(path)


def _run(*cmd: str) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, timeout=120)


def test_hadolint_passes():
    r = _run(_tool("hadolint"), "Dockerfile")
    assert r.returncode == 0, r.stdout + r.stderr


def test_dockerfile_builds_the_op_ahead_of_time():
    text = (ROOT / "Dockerfile").read_text()
    assert "FROM vllm/vllm-openai:" in text
    assert "wina-vllm build-ext" in text and "TORCH_CUDA_ARCH_LIST" in text


def test_kubernetes_manifests_validate_strictly():
    files = sorted(str(p) for p in (ROOT / "deploy" / "k8s").glob("*.yaml"))
    r = _run(_tool("kubernetes-validate"), "--strict", *files)
    assert r.returncode == 0, r.stdout + r.stderr
    assert r.stdout.count("passed") == len(files)


def test_compose_file_validates_against_compose_spec():
    r = _run(_tool("check-jsonschema"), "--builtin-schema", "vendor.compose-spec",
             "deploy/docker-compose.yml")
    assert r.returncode == 0, r.stdout + r.stderr


def _docs(name: str) -> list[dict]:
    return list(yaml.safe_load_all((ROOT / "deploy" / "k8s" / name).read_text()))


@pytest.mark.parametrize("name,gpus", [("deployment.yaml", "1"), ("deployment-tp2.yaml", "2")])
def test_deployments_request_gpus_and_probe_health(name, gpus):
    (dep,) = _docs(name)
    (c,) = dep["spec"]["template"]["spec"]["containers"]
    assert c["resources"]["limits"]["nvidia.com/gpu"] == gpus
    for probe in ("readinessProbe", "livenessProbe"):
        assert c[probe]["httpGet"]["path"] == "/health"
    args = " ".join(c["args"])
    assert "--quantization wina" in args and "/etc/wina/additional-config.json" in args
    if gpus == "2":
        assert "--tensor-parallel-size 2" in args


def test_configmap_holds_valid_settings():
    (cm,) = _docs("configmap.yaml")
    settings = json.loads(cm["data"]["additional-config.json"])
    assert parse_settings(settings["wina"]).mode == "threshold"
    compose = yaml.safe_load((ROOT / "deploy" / "docker-compose.yml").read_text())
    cmd = compose["services"]["wina-vllm"]["command"]
    parse_settings(json.loads(cmd[cmd.index("--additional-config") + 1])["wina"])
