"""Kernel benchmark: WINA fused sparse GEMV vs cuBLAS dense vs a TEAL-style Triton kernel.

Method (see /work/.library/device/METHOD.md): every variant is captured in a CUDA
graph of ROT calls, each on its own weight copy and its own random activations
(copies together well over the 60 MB L2), replayed after warm-up; the time per
call is the median replay time / ROT. Dense cuBLAS runs in the same process on
the same shapes. Effective bandwidth counts the bytes actually read: the rows any
token keeps, times the row length. Writes JSON, a markdown table and a PNG.

Usage: python benchmarks/kernel_bench.py --out benchmarks/results [--models llama3-8b]
       python benchmarks/kernel_bench.py --out DIR --quick   (threshold and top-k modes vs
           cuBLAS only, M = 1 and 2 at 0 / 0.5 / 0.65: an A/B of two builds in seconds each)
       python benchmarks/kernel_bench.py --out DIR --hf-config MODEL/config.json --tp 4
           (your model's layers as one GPU of a tensor-parallel group holds them)
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
from teal_triton import CONFIGS, teal_sparse_gemv  # noqa: E402

from wina_vllm import gate, kernels  # noqa: E402
from wina_vllm.packing import pack_linear  # noqa: E402
from wina_vllm.shapes import LAYER_SHAPES, shapes_from_config  # noqa: E402

TOKENS = [1, 2, 4, 8]
SPARSITIES = [0.0, 0.25, 0.5, 0.65, 0.8]
QUICK_TOKENS, QUICK_SPARSITIES = [1, 2], [0.0, 0.5, 0.65]
ROT_BYTES = 512 << 20  # weight bytes cycled through per graph (L2 is 60 MB)


def graph_time_us(calls: list, warmup: int = 3, reps: int = 30) -> float:
    """Median time per call of a CUDA graph replaying ``calls`` in order."""
    for fn in calls:
        fn()
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        for fn in calls:
            fn()
    for _ in range(warmup):
        graph.replay()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    times = []
    for _ in range(reps):
        start.record()
        graph.replay()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end) * 1e3 / len(calls))
    return statistics.median(times)


def copy_bandwidth() -> float:
    """Device-to-device copy bandwidth in bytes/s (read + write counted)."""
    a = torch.randn(256 << 20, device="cuda")  # 1 GiB
    b = torch.empty_like(a)
    t = graph_time_us([lambda: b.copy_(a)] * 8, warmup=20, reps=50)
    return 2 * a.numel() * a.element_size() / (t * 1e-6)


def bench_layer(name: str, k: int, segments: tuple[int, ...], dtype, bw: float,
                quick: bool = False) -> list[dict]:
    n = sum(segments)
    copies = max(2, -(-ROT_BYTES // (n * k * 2)))
    weights = [torch.randn(n, k, device="cuda", dtype=dtype) / k**0.5 for _ in range(copies)]
    packs = [pack_linear(w, segments, "wina") for w in weights]
    teal_packs = [] if quick else [pack_linear(w, segments, "teal") for w in weights]
    rows = []
    for m in QUICK_TOKENS if quick else TOKENS:
        xs = [torch.randn(m, k, device="cuda", dtype=dtype) for _ in range(copies)]
        dense_us = graph_time_us([lambda w=w, x=x: F.linear(x, w) for w, x in zip(weights, xs)])
        for sparsity in QUICK_SPARSITIES if quick else SPARSITIES:
            keep = gate.keep_counts(k, [sparsity] * len(segments))
            # Per-layer thresholds from other random tokens, as calibration would set them.
            sample = torch.randn(256, k, device="cuda", dtype=dtype)
            thr_wina = torch.stack([torch.quantile(
                gate.scores(sample, packs[0].scale)[:, s].flatten().float(), sparsity)
                for s in range(len(segments))]).float()
            thr_teal = float(torch.quantile(sample.abs().float().flatten(), sparsity))
            union = sum(int(gate.gate_mask(gate.scores(x, p.scale), thr_wina).any(0).sum())
                        for x, p in zip(xs, packs)) / copies / len(segments)

            def ours(topk: bool, pdl: bool = True):
                return [lambda p=p, x=x: kernels.sparse_gemv(
                    x, p.weight_t, None, p.scale, thr_wina, p.stats, p.workspace, p.seg_ends,
                    keep, topk, pdl) for p, x in zip(packs, xs)]

            t_thr = graph_time_us(ours(False))
            nan = float("nan")  # --quick times the two modes and cuBLAS only
            t_thr_plain = nan if quick else graph_time_us(ours(False, pdl=False))
            t_topk = graph_time_us(ours(True))
            t_teal = nan if quick else min(graph_time_us([lambda p=p, x=x, c=c: teal_sparse_gemv(
                x, p.weight_t, n, thr_teal, c) for p, x in zip(teal_packs, xs)])
                for c in CONFIGS)
            active_bytes = union * packs[0].weight_t.shape[1] * 2
            rows.append(dict(
                layer=name, K=k, N=n, M=m, sparsity=sparsity, dtype=str(dtype),
                dense_us=dense_us, wina_threshold_us=t_thr,
                wina_threshold_no_pdl_us=t_thr_plain, wina_topk_us=t_topk,
                teal_triton_us=t_teal, speedup_threshold=dense_us / t_thr,
                speedup_topk=dense_us / t_topk, speedup_teal=dense_us / t_teal,
                active_rows=union, active_bytes=active_bytes,
                bound_us=active_bytes / bw * 1e6,
                bw_active_tbs=active_bytes / (t_thr * 1e-6) / 1e12,
                bw_fraction=active_bytes / (t_thr * 1e-6) / bw))
            r = rows[-1]
            print(f"{name:22s} M={m} s={sparsity:.2f} dense {dense_us:6.1f} | thr {t_thr:6.1f} "
                  f"({r['speedup_threshold']:.2f}x, {r['bw_fraction']:.0%} bw; no PDL "
                  f"{t_thr_plain:6.1f}) | topk {t_topk:6.1f} ({r['speedup_topk']:.2f}x) | "
                  f"teal {t_teal:6.1f} "
                  f"({r['speedup_teal']:.2f}x)", flush=True)
    return rows


def bench_dense_path(k: int, n: int, dtype) -> list[dict]:
    """The op's dense path (x @ weight_t, input-major) against F.linear, for large batches."""
    weights = [torch.randn(n, k, device="cuda", dtype=dtype) for _ in range(4)]
    wts = [w.t().contiguous() for w in weights]
    out = []
    for m in (16, 64, 256, 1024):
        xs = [torch.randn(m, k, device="cuda", dtype=dtype) for _ in range(4)]
        t_lin = graph_time_us([lambda w=w, x=x: F.linear(x, w) for w, x in zip(weights, xs)])
        t_ours = graph_time_us([lambda w=w, x=x: torch.mm(x, w) for w, x in zip(wts, xs)])
        out.append(dict(K=k, N=n, M=m, f_linear_us=t_lin, input_major_us=t_ours,
                        ratio=t_ours / t_lin))
        print(f"dense path {k}x{n} M={m}: F.linear {t_lin:.1f} us, input-major {t_ours:.1f} us "
              f"({t_ours / t_lin:.3f}x)", flush=True)
    return out


def write_report(result: dict, out: Path) -> None:
    rows = result["points"]
    lines = [f"# Kernel benchmark ({result['device']}, {result['date']})", "",
             f"copy bandwidth {result['copy_bw_tbs']:.2f} TB/s; times in us, median of "
             "CUDA-graph replays; speedup = cuBLAS dense / variant.", "",
             "| layer | M | sparsity | dense | WINA thr | x | thr, no PDL | WINA topk | x "
             "| TEAL-Triton | x | bound | BW active |", "|" + "---|" * 13]
    for r in rows:
        lines.append(
            f"| {r['layer']} | {r['M']} | {r['sparsity']:.2f} | {r['dense_us']:.1f} | "
            f"{r['wina_threshold_us']:.1f} | {r['speedup_threshold']:.2f} | "
            f"{r['wina_threshold_no_pdl_us']:.1f} | {r['wina_topk_us']:.1f} | "
            f"{r['speedup_topk']:.2f} | {r['teal_triton_us']:.1f} | {r['speedup_teal']:.2f} | "
            f"{r['bound_us']:.1f} | {r['bw_fraction']:.0%} |")
    lines += ["", "Dense path (input-major `x @ Wt`) vs `F.linear`:", "",
              "| K x N | M | F.linear | input-major | ratio |", "|---|---|---|---|---|"]
    for r in result["dense_path"]:
        lines.append(f"| {r['K']}x{r['N']} | {r['M']} | {r['f_linear_us']:.1f} | "
                     f"{r['input_major_us']:.1f} | {r['ratio']:.3f} |")
    (out / "kernel_bench.md").write_text("\n".join(lines) + "\n")

    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    layers = list(dict.fromkeys(r["layer"] for r in rows))
    fig, axes = plt.subplots(1, len(layers), figsize=(4.5 * len(layers), 4), squeeze=False)
    for ax, layer in zip(axes[0], layers):
        for m in TOKENS:
            pts = [r for r in rows if r["layer"] == layer and r["M"] == m]
            ax.plot([r["sparsity"] for r in pts], [r["speedup_threshold"] for r in pts],
                    marker="o", label=f"WINA M={m}")
        pts = [r for r in rows if r["layer"] == layer and r["M"] == 1]
        ax.plot([r["sparsity"] for r in pts], [r["speedup_teal"] for r in pts], "k--",
                label="TEAL-Triton M=1")
        ax.plot([r["sparsity"] for r in pts], [1 / (1 - r["sparsity"]) for r in pts], "k:",
                label="1/(1-s)")
        ax.axhline(1.0, color="grey", lw=0.5)
        ax.set_title(layer)
        ax.set_xlabel("sparsity")
        ax.set_ylabel("speedup over cuBLAS")
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out / "kernel_bench.png", dpi=110)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", type=Path, default=Path("benchmarks/results"))
    ap.add_argument("--models", nargs="+", choices=sorted(LAYER_SHAPES),
                    help="built-in layer tables (default: llama3-8b, unless --hf-config)")
    ap.add_argument("--hf-config", nargs="+", type=Path, default=[],
                    help="config.json files of models to take the layers of")
    ap.add_argument("--tp", type=int, default=1,
                    help="with --hf-config: tensor-parallel size (each GPU's shard)")
    ap.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float16"])
    ap.add_argument("--quick", action="store_true",
                    help="threshold and top-k modes and cuBLAS only, M = 1 and 2, "
                         "sparsity 0 / 0.5 / 0.65")
    args = ap.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    dtype = getattr(torch, args.dtype)
    torch.manual_seed(0)
    kernels.load()
    bw = copy_bandwidth()
    print(f"copy bandwidth {bw / 1e12:.2f} TB/s", flush=True)
    tables = {m: LAYER_SHAPES[m] for m in args.models or ([] if args.hf_config else
                                                          ["llama3-8b"])}
    for path in args.hf_config:
        name = f"{path.resolve().parent.name}-tp{args.tp}"
        tables[name] = shapes_from_config(json.loads(path.read_text()), args.tp)
    points = []
    for model, layers in tables.items():
        for layer, (k, segments) in layers.items():
            points += bench_layer(f"{model}/{layer}", k, segments, dtype, bw, args.quick)
    dense_path = [] if args.quick else (bench_dense_path(4096, 4096, dtype) +
                                        bench_dense_path(4096, 28672, dtype))
    result = dict(device=torch.cuda.get_device_name(), date=time.strftime("%Y-%m-%d"),
                  torch=torch.__version__, copy_bw_tbs=bw / 1e12, points=points,
                  dense_path=dense_path)
    (args.out / "kernel_bench.json").write_text(json.dumps(result, indent=1))
    write_report(result, args.out)


if __name__ == "__main__":
    main()
