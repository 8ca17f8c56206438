"""Session probe (not committed): where the bf16 spec engine's realized sparsity goes."""
import json, sys, time
sys.path.insert(0, "tests")
from conftest import run_engine
from wina_vllm.tiny_model import build_tiny_model

p = str(build_tiny_model("/tmp/tiny-llama", "llama"))
ngram = {"method": "ngram", "num_speculative_tokens": 3, "prompt_lookup_max": 3,
         "prompt_lookup_min": 1}
runs = [("compiled_spec", False, ngram), ("eager_spec", True, ngram),
        ("compiled_plain", False, None)]
for name, eager, spec in runs:
    t = time.time()
    r = run_engine(model=p, prompts=["the module provides a way to " * 4], max_tokens=16,
                   dtype="bfloat16", eager=eager, speculative=spec,
                   wina={"sparsity": 0.5, "max_sparse_batch": 4})
    if r.get("error"):
        print("==", name, "ERROR", r["output"][-2000:], flush=True)
        continue
    print("==", name, f"{time.time() - t:.0f} s", "sparse_tokens", r["sparse_tokens"],
          "tokens", r["tokens"], flush=True)
    for layer, d in r["sparsity"].items():
        print("   ", layer, {k: round(v, 4) for k, v in d.items()}, flush=True)
