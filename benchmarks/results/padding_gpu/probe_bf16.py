"""Session probe (not committed): load lines of the tiny bf16 model's engines."""
import json, re, sys, time
sys.path.insert(0, "tests")
from conftest import run_engine
from wina_vllm.tiny_model import build_tiny_model

p = str(build_tiny_model("/tmp/tiny-llama", "llama"))
pat = re.compile(r"wina|Model loading took|Graph capturing|init engine|compil|Error|error")
for name, w in [("dense", None), ("all_dense", {"sparsity": 0.5, "max_sparse_batch": 0}),
                ("sparse", {"sparsity": 0.5, "max_sparse_batch": 4})]:
    t = time.time()
    r = run_engine(model=p, prompts=["the module provides a way to " * 4], max_tokens=16,
                   dtype="bfloat16", eager=False, wina=w)
    log = r.get("log") or r.get("output", "")
    print("==", name, "error" if r.get("error") else "ok", f"{time.time() - t:.0f} s",
          json.dumps({k: r.get(k) for k in ("tokens", "sparse_tokens")}))
    for line in log.splitlines():
        if pat.search(line):
            print("   ", line[:300])
