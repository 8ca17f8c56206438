import sys, time, json
from types import SimpleNamespace
import torch
sys.path[:0] = ["/work/main/benchmarks", "/work/main"]
from accuracy import eval_text, windows, reference_nll, perplexity
from wina_vllm import greedy
from wina_vllm.calibrate import (HF_MODULES, collect_hf, load_hf_model, quantile, token_windows,
                                 GREEDY_WINDOWS, KL_WINDOWS)
from wina_vllm.reference import make_gates
from wina_vllm.settings import PROJECTIONS
from wina_vllm.text import stdlib_prose
torch.manual_seed(0)
crit = sys.argv[1]; targets = [float(t) for t in sys.argv[2].split(",")]
model, tok = load_hf_model("/work/main/artifacts/smollm2-135m")
batches = token_windows(tok, stdlib_prose(), 512, 16)
layers = collect_hf(model, batches, crit)
mods = lambda layer: {p: layer.get_submodule(HF_MODULES[p]) for p in PROJECTIONS}
wins = windows(tok, eval_text(), 32, 512)
res = {"dense": perplexity(reference_nll(model, wins, None))}
print("dense", res["dense"], flush=True)
for t in targets:
    g = make_gates(model, crit, t, None, topk=True)
    res[f"uniform-{t}"] = perplexity(reference_nll(model, wins, g)); print(t, "uniform", res[f"uniform-{t}"], flush=True)
for topk in (False, True):
    t0 = time.time()
    alloc = greedy.allocate(model, batches[:GREEDY_WINDOWS], layers, targets, crit, mods, quantile,
                            kl_texts=batches[GREEDY_WINDOWS:GREEDY_WINDOWS + KL_WINDOWS], topk=topk)
    print("allocate topk" if topk else "allocate thr", f"{time.time()-t0:.0f}s blend", alloc.blend, flush=True)
    for t in targets:
        sp = torch.tensor([[a[p] for p in PROJECTIONS] for a in alloc.at(t)])
        g = make_gates(model, crit, t, SimpleNamespace(sparsity=sp), topk=True)
        name = f"{'topk' if topk else 'thr'}-greedy-{t}"
        res[name] = perplexity(reference_nll(model, wins, g))
        res[name + "-alloc"] = sp.tolist()
        print(t, name, res[name], res[name] / res["dense"], flush=True)
json.dump(res, open(f"/tmp/tkg/{crit}.json", "w"))
