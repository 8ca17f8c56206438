"""Where a batch-1 decode step's time goes, dense vs WINA, and what that leaves for sparsity.

The issue's byte-count bound (about 1.87x dense at 50%) counts only weight bytes. A real
decode step also runs attention, norms, rotary, the activation, the KV-cache write and the
sampler, and the GPU idles between some kernels; none of that shrinks with sparsity. This
profiles decode steps (CUDA-graph replays) of an in-process engine, sorts every kernel into
a category by name, and from the dense step derives the ceiling any sparse kernel could
reach: the step with the decoder layers' linears reading only their kept bytes at the
device's copy bandwidth, everything else as measured.

Per variant (own process, dummy weights, one request of 200 prompt tokens): the mean step
time over ``--steps`` consecutive steps (synchronised only at both ends, as the engine
runs), then a torch profile of ``--profile-steps`` more steps.

Usage: python benchmarks/decode_breakdown.py --out DIR [--variants dense wina-thr-0.5 ...]
       python benchmarks/decode_breakdown.py --out DIR --cpu --model DIR   (plumbing only)
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "benchmarks"))
sys.path.insert(0, str(ROOT))
from step_times import VARIANTS, add_engine_args, build_llm, engine_argv, run_one  # noqa: E402

from wina_vllm.shapes import model_sizes, shapes_from_config  # noqa: E402

PROJECTIONS_OF = {"qkv": ("q", "k", "v"), "o": ("o",), "gate_up": ("gate", "up"),
                  "down": ("down",)}
COPY_BW = 4.25e12  # bytes/s, the H200's measured copy bandwidth (gpu-kit README)

# (category, name fragments), first match wins: the KV-cache write before attention
# (reshape_and_cache_flash), attention before matmul (FlashAttention-3's kernels are
# CUTLASS templates).
CATEGORIES = [
    ("wina gated linears", ("sparse_gemv", "topk_threshold", "wina")),
    ("kv-cache write", ("reshape_and_cache", "cache_kernel")),
    ("attention", ("flash", "fmha", "attn", "attention", "paged")),
    ("matmul (cuBLAS)", ("gemm", "gemv", "cutlass", "xmma", "nvjet", "cublas", "splitk")),
    ("norms", ("norm",)),
    ("rotary", ("rotary", "rope")),
    ("activation", ("silu", "gelu", "act_and_mul")),
    ("sampling", ("sampl", "argmax", "softmax", "multinomial", "exponential", "topk")),
    ("copies", ("memcpy", "memset", "copy")),
]


def category(kernel_name: str) -> str:
    name = kernel_name.lower()
    for cat, fragments in CATEGORIES:
        if any(f in name for f in fragments):
            return cat
    return "other"


def breakdown(kernels: list[tuple[str, float, float]], steps: int) -> dict:
    """Per-step GPU time by category from ``(name, start_us, end_us)`` kernel records of
    ``steps`` decode steps: ms and kernel count per category, busy (kernel time), span
    (first start to last end) and idle (span - busy) per step."""
    if not kernels:
        raise ValueError("the profile holds no GPU kernels")
    cats: dict[str, dict[str, float]] = {}
    for name, start, end in kernels:
        c = cats.setdefault(category(name), {"ms": 0.0, "kernels": 0.0})
        c["ms"] += (end - start) / 1e3 / steps
        c["kernels"] += 1 / steps
    busy = sum(c["ms"] for c in cats.values())
    span = (max(e for _, _, e in kernels) - min(s for _, s, _ in kernels)) / 1e3 / steps
    return {"categories": dict(sorted(cats.items(), key=lambda kv: -kv[1]["ms"])),
            "busy_ms": busy, "span_ms": span, "idle_ms": span - busy}


LINEARS = ("qkv", "o", "gate_up", "down")  # a decoder layer's gated linears, in run order


def gated_by_linear(kernels: list[tuple[str, float, float]], steps: int,
                    layers: int) -> dict[str, float] | None:
    """Median time (us) of the sparse GEMV of each of a layer's linears, told apart by
    their order in the step; None unless every layer ran all four sparse in every step."""
    gemv = sorted((s, e) for n, s, e in kernels if "sparse_gemv" in n)
    if not gemv or len(gemv) != steps * layers * len(LINEARS):
        return None
    return {name: statistics.median(e - s for j, (s, e) in enumerate(gemv)
                                    if j % len(LINEARS) == i)
            for i, name in enumerate(LINEARS)}


def linear_kept_bytes(by_projection: dict[str, float], config: dict) -> dict[str, float]:
    """Weight bytes (bf16) each of a layer's linears reads at the realized sparsity."""
    shapes = shapes_from_config(config)
    out = {}
    for linear, projections in PROJECTIONS_OF.items():
        k, widths = shapes[linear]
        out[linear] = sum(2.0 * k * n * (1.0 - by_projection.get(p, 0.0))
                          for p, n in zip(projections, widths))
    return out


def layer_linear_bytes(config: dict) -> float:
    """Weight bytes (bf16) of every decoder layer's gated linears, on one GPU."""
    dense = linear_kept_bytes({}, config)
    return model_sizes(config)["num_hidden_layers"] * sum(dense.values())


def weighted_sparsity(by_projection: dict[str, float], config: dict) -> float:
    """The share of the layers' linear weight bytes not read, from each projection's
    realized sparsity (a mean over layers; every layer has the same shapes)."""
    dense = linear_kept_bytes({}, config)
    kept = linear_kept_bytes(by_projection, config)
    return 1.0 - sum(kept.values()) / sum(dense.values())


def ceiling(dense: dict, wina: dict, linear_bytes: float, sparsity: float,
            bandwidth: float = COPY_BW) -> dict:
    """What sparsity can buy at most, from the measured steps.

    The dense step's decoder-layer linears are its cuBLAS time less the WINA step's (there
    every layer linear is gated, so cuBLAS runs only lm_head); the rest of the step stays.
    ``bound`` replaces those linears by their kept bytes at ``bandwidth``."""
    cublas = "matmul (cuBLAS)"
    dense_linears = (dense["categories"][cublas]["ms"]
                     - wina["categories"].get(cublas, {"ms": 0.0})["ms"])
    rest = dense["step_ms"] - dense_linears
    bound = rest + (1.0 - sparsity) * linear_bytes / bandwidth * 1e3
    return {"dense_linears_ms": dense_linears, "rest_ms": rest,
            "bound_step_ms": bound, "bound_speedup": dense["step_ms"] / bound,
            "measured_speedup": dense["step_ms"] / wina["step_ms"],
            "linears_bytes_bound_ms": (1.0 - sparsity) * linear_bytes / bandwidth * 1e3}


def run_variant(args, name: str) -> dict:
    import torch
    from torch.profiler import ProfilerActivity, profile
    from vllm import SamplingParams

    llm = build_llm(args, name)
    engine = llm.llm_engine
    config = json.loads((Path(args.model) / "config.json").read_text())
    ids = torch.randint(10, config["vocab_size"] - 10, (200,), generator=torch.Generator().manual_seed(0))
    total = 2 + args.warmup + args.steps + args.profile_steps + 2
    engine.add_request("r0", {"prompt_token_ids": ids.tolist()},
                       SamplingParams(max_tokens=total, ignore_eos=True))
    sync = (lambda: None) if args.cpu else torch.cuda.synchronize
    for _ in range(2 + args.warmup):  # prefill, then decode steps at this length
        engine.step()
    sync()
    start = time.perf_counter()
    for _ in range(args.steps):
        engine.step()
    sync()
    step_ms = (time.perf_counter() - start) / args.steps * 1e3
    activities = [ProfilerActivity.CPU] + ([] if args.cpu else [ProfilerActivity.CUDA])
    with profile(activities=activities) as prof:
        for _ in range(args.profile_steps):
            engine.step()
        sync()
    while engine.has_unfinished_requests():
        engine.step()
    if args.cpu:  # no kernels: the top-level ops stand in, to exercise the plumbing
        records = [(e.name, e.time_range.start, e.time_range.end) for e in prof.events()
                   if e.cpu_parent is None and e.name.startswith(("aten::", "wina"))]
    else:
        records = [(e.name, e.time_range.start, e.time_range.end) for e in prof.events()
                   if e.device_type == torch.autograd.DeviceType.CUDA]
    result = {"variant": name, "step_ms": step_ms, "tok_s": 1e3 / step_ms,
              **breakdown(records, args.profile_steps)}
    by_linear = gated_by_linear(records, args.profile_steps, config["num_hidden_layers"])
    if by_linear:
        result["gated_by_linear_us"] = by_linear
    if VARIANTS[name] is not None:
        from wina_vllm.metrics import realized_sparsity

        report = llm.apply_model(realized_sparsity)[0]
        by_projection: dict[str, list[float]] = {}
        for projections in report.values():
            for p, v in projections.items():
                if v == v:  # not NaN: the projection ran sparse
                    by_projection.setdefault(p, []).append(v)
        result["realized_by_projection"] = {p: sum(v) / len(v) for p, v in by_projection.items()}
    top = sorted({n for n, _, _ in records}, key=lambda n: -sum(
        e - s for m, s, e in records if m == n))[:25]
    result["top_kernels"] = [{"name": n[:160], "category": category(n), "ms_per_step": sum(
        e - s for m, s, e in records if m == n) / 1e3 / args.profile_steps} for n in top]
    return result


def table(results: list[dict]) -> str:
    cats = list(dict.fromkeys(c for r in results for c in r["categories"]))
    head = "| per decode step, ms | " + " | ".join(r["variant"] for r in results) + " |"
    lines = [head, "|---" * (len(results) + 1) + "|"]
    lines.append("| step (mean of the timed steps) | " + " | ".join(
        f"{r['step_ms']:.3f} ({r['tok_s']:.0f} tok/s)" for r in results) + " |")
    for c in cats:
        lines.append(f"| {c} | " + " | ".join(
            "{:.3f} ({:.0f} kernels)".format(r["categories"][c]["ms"], r["categories"][c]["kernels"])
            if c in r["categories"] else "-" for r in results) + " |")
    for key, label in (("busy_ms", "GPU busy (sum of kernels)"), ("idle_ms", "GPU idle inside the span")):
        lines.append(f"| {label} | " + " | ".join(f"{r[key]:.3f}" for r in results) + " |")
    for linear in LINEARS:
        if any(linear in r.get("gated_by_linear_us", {}) for r in results):
            lines.append(f"| {linear}'s sparse GEMV, median us (TB/s on kept bytes) | " + " | ".join(
                "{:.1f} ({:.2f})".format(r["gated_by_linear_us"][linear],
                                         r["linear_tb_s"][linear])
                if linear in r.get("gated_by_linear_us", {}) else "-" for r in results) + " |")
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    add_engine_args(ap)
    ap.add_argument("--warmup", type=int, default=20)
    ap.add_argument("--steps", type=int, default=64)
    ap.add_argument("--profile-steps", type=int, default=16)
    args = ap.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    if args.one:
        print("RESULT " + json.dumps(run_variant(args, args.one)), flush=True)
        return
    if args.variants[0] != "dense":
        raise ValueError(f"--variants must start with dense (the ceiling's reference), "
                         f"got {args.variants}")
    results = []
    for name in args.variants:
        results.append(run_one(__file__, name, engine_argv(args) + [
            "--warmup", str(args.warmup), "--steps", str(args.steps),
            "--profile-steps", str(args.profile_steps)]))
        print(name, f"{results[-1]['step_ms']:.3f} ms/step", flush=True)
    config = json.loads((Path(args.model) / "config.json").read_text())
    for r in results[1:]:
        if "realized_by_projection" in r and "matmul (cuBLAS)" in results[0]["categories"]:
            r["realized_sparsity"] = weighted_sparsity(r["realized_by_projection"], config)
            r["ceiling"] = ceiling(results[0], r, layer_linear_bytes(config),
                                   r["realized_sparsity"])
            if "gated_by_linear_us" in r:
                kept = linear_kept_bytes(r["realized_by_projection"], config)
                r["linear_tb_s"] = {lin: kept[lin] / (t * 1e-6) / 1e12
                                    for lin, t in r["gated_by_linear_us"].items()}
    (args.out / "decode_breakdown.json").write_text(json.dumps(results, indent=1))
    md = table(results)
    for r in results[1:]:
        if "ceiling" in r:
            c = r["ceiling"]
            md += (f"\n{r['variant']} (realized sparsity {r['realized_sparsity']:.3f}, of the "
                   "weight bytes): "
                   f"measured {c['measured_speedup']:.3f}x dense; with the layers' linears at "
                   f"their kept bytes / {COPY_BW / 1e12:.2f} TB/s ({c['linears_bytes_bound_ms']:.3f} ms)"
                   f" and the rest of dense's step ({c['rest_ms']:.3f} ms) the step would take "
                   f"{c['bound_step_ms']:.3f} ms: at most {c['bound_speedup']:.3f}x.\n")
    (args.out / "decode_breakdown.md").write_text(md)
    print(md)


if __name__ == "__main__":
    main()
