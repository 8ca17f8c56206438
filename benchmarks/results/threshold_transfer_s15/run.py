"""Realized sparsity per projection when a file calibrated with transformers (0.5, WINA,
64-token windows x 8 of the project's prose) serves the tiny Gemma 3 text and
vision-language models in vLLM (threshold mode), with the greedy tokens decoded.

Usage, from the repo root on the CPU machine: .venv/bin/python <this file> OUT.json
"""

import json
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[3]
sys.path.insert(0, str(ROOT / "tests"))
from conftest import run_engine  # noqa: E402

from wina_vllm.calibrate import calibrate  # noqa: E402
from wina_vllm.tiny_model import build_tiny_model  # noqa: E402

PROMPTS = ["The module provides a way to", "Return the number of items in", "A class that"]
out = {}
with tempfile.TemporaryDirectory() as tmp:
    for arch in ("gemma3", "gemma3-mm"):
        model = str(build_tiny_model(Path(tmp) / arch, arch))
        path = str(Path(tmp) / f"{arch}.safetensors")
        calibrate(model, path, 0.5, "wina", window=64, windows=8)
        r = run_engine(model=model, prompts=PROMPTS, max_tokens=24,
                       wina={"mode": "threshold", "calibration": path, "max_sparse_batch": 8})
        values = [s for p in r["sparsity"].values() for s in p.values()]
        out[arch] = {"sparsity": r["sparsity"], "min": min(values), "max": max(values),
                     "mean": sum(values) / len(values),
                     "distinct_tokens_per_prompt": [len(set(t)) for t in r["tokens"]]}
        print(arch, {k: out[arch][k] for k in ("min", "max", "mean",
                                              "distinct_tokens_per_prompt")})
Path(sys.argv[1]).write_text(json.dumps(out, indent=1))
