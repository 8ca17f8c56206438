"""How fast the sparse GEMV runs when its weight is already in L2, against cold.

At batch 1 the DRAM idles while attention runs (about 12 us a layer on Llama-3-8B, reading
about 1 MB of KV cache), and the o projection that follows streams at 35% of the copy
bandwidth in the step (RESULTS.md section 2): its calls are short and latency-bound. If o's
weight (33.5 MB, inside the 50 MB L2) were read into L2 during attention, o's gated call
would stream from L2. This measures what that could save before any of it is built: each
sparse GEMV call's kernel time (torch profiler, plain launches so that no kernel waits
inside another's tail) on a weight copy read into L2 just before it (``warm``: a sum over
the weight) and on one that is not (``cold``: copies rotated past L2's size).

Usage: python benchmarks/l2_warm_probe.py --out DIR
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from wina_vllm import gate, kernels  # noqa: E402
from wina_vllm.packing import pack_linear  # noqa: E402
from wina_vllm.shapes import LAYER_SHAPES  # noqa: E402

ROT_BYTES = 512 << 20


def kernel_us(calls: list, name: str, reps: int = 5) -> float:
    """Median duration of the kernels named ``name`` when ``calls`` replay in a CUDA graph."""
    from torch.profiler import ProfilerActivity, profile

    for fn in calls:
        fn()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        for fn in calls:
            fn()
    for _ in range(3):
        graph.replay()
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        for _ in range(reps):
            graph.replay()
        torch.cuda.synchronize()
    times = [e.time_range.elapsed_us() for e in prof.events()
             if e.device_type == torch.autograd.DeviceType.CUDA and name in e.name]
    if not times:
        raise RuntimeError(f"no kernel named {name!r} in the profile")
    return statistics.median(times)


def probe(layer: str, sparsity: float) -> dict:
    k, segments = LAYER_SHAPES["llama3-8b"][layer]
    n = sum(segments)
    copies = max(2, -(-ROT_BYTES // (n * k * 2)))
    packs = [pack_linear(torch.randn(n, k, device="cuda", dtype=torch.bfloat16) / k**0.5,
                         segments, "wina") for _ in range(copies)]
    xs = [torch.randn(1, k, device="cuda", dtype=torch.bfloat16) for _ in range(copies)]
    sample = torch.randn(256, k, device="cuda", dtype=torch.bfloat16)
    thr = torch.stack([torch.quantile(gate.scores(sample, packs[0].scale)[:, s].flatten().float(),
                                      sparsity) for s in range(len(segments))]).float()
    keep = gate.keep_counts(k, [sparsity] * len(segments))

    def gemv(i):
        p = packs[i]
        return lambda: kernels.sparse_gemv(xs[i], p.weight_t, None, p.scale, thr, p.stats,
                                           p.workspace, p.seg_ends, keep, False, False)

    def read_into_l2(i):
        return lambda: packs[i].weight_t.sum(dtype=torch.float32)

    cold = kernel_us([gemv(i) for i in range(copies)], "sparse_gemv")
    warm = kernel_us([f for i in range(copies) for f in (read_into_l2(i), gemv(i))], "sparse_gemv")
    return {"layer": layer, "K": k, "N": n, "sparsity": sparsity, "cold_us": cold,
            "warm_us": warm, "warm_over_cold": warm / cold}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    rows = [probe(layer, s) for layer in ("o", "qkv") for s in (0.5, 0.7)]
    for r in rows:
        print(f"{r['layer']:4s} s={r['sparsity']:.2f} cold {r['cold_us']:6.2f} us  warm "
              f"{r['warm_us']:6.2f} us  ({r['warm_over_cold']:.2f})", flush=True)
    (args.out / "l2_warm_probe.json").write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
