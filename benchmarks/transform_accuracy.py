"""Does the orthogonal transform pay? Perplexity of TEAL and WINA with and without it.

SmolLM2-135M (real weights), the accuracy benchmark's WikiText-2 windows, top-k gating of
every token (the paper's setting) by the transformers reference of benchmarks/accuracy.py,
for the untransformed model and each transform variant (wina_vllm.transform).

Usage: python benchmarks/transform_accuracy.py [--out benchmarks/results/transform]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "benchmarks"))
sys.path.insert(0, str(ROOT))
from accuracy import add_window_args, eval_text, reference_ppl, windows  # noqa: E402
from get_smollm2 import fetch  # noqa: E402

from wina_vllm.calibrate import load_hf_model  # noqa: E402
from wina_vllm.reference import make_gates  # noqa: E402
from wina_vllm.transform import VARIANTS, load_transformed, transform_checkpoint  # noqa: E402

SPARSITIES = [0.25, 0.5, 0.65]


def load_variant(src: Path, variant: str):
    """(model, tokenizer): SmolLM2 at ``src`` as is ("none"), or transformed by ``variant``,
    the checkpoint made under artifacts/ the first time."""
    if variant == "none":
        return load_hf_model(str(src))
    dst = ROOT / "artifacts" / f"smollm2-135m-{variant}"
    if not (dst / "config.json").exists():
        transform_checkpoint(str(src), dst, variant)
    return load_transformed(dst)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks/results/transform")
    add_window_args(ap)
    args = ap.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    src = fetch(ROOT / "artifacts" / "smollm2-135m")
    text = eval_text()
    rows = []
    for variant in ("none",) + VARIANTS:
        model, tok = load_variant(src, variant)
        wins = windows(tok, text, args.windows, args.window_tokens)
        t = time.time()
        rows.append({"variant": variant, "criterion": "dense", "sparsity": 0.0,
                     "ppl": reference_ppl(model, wins, None)})
        for criterion in ("teal", "wina"):
            for s in SPARSITIES:
                rows.append({"variant": variant, "criterion": criterion, "sparsity": s,
                             "ppl": reference_ppl(model, wins,
                                                  make_gates(model, criterion, s, None))})
        print(json.dumps(rows[-7:]), f"({time.time() - t:.0f} s)", flush=True)
        (args.out / "transform_accuracy.json").write_text(json.dumps(rows, indent=1))
    write_report(rows, args.out)


def write_report(rows: list[dict], out: Path) -> None:
    def ppl(v, c, s):
        return next(r["ppl"] for r in rows if r["variant"] == v and r["criterion"] == c
                    and r["sparsity"] == s)

    lines = ["| transform | dense | " + " | ".join(f"TEAL {s} | WINA {s}" for s in SPARSITIES)
             + " |", "|---|---|" + "---|---|" * len(SPARSITIES)]
    for v in ("none",) + VARIANTS:
        lines.append(f"| {v} | {ppl(v, 'dense', 0.0):.3f} | " + " | ".join(
            f"{ppl(v, 'teal', s):.3f} | {ppl(v, 'wina', s):.3f}" for s in SPARSITIES) + " |")
    (out / "transform_accuracy.md").write_text("\n".join(lines) + "\n")

    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for v in ("none",) + VARIANTS:
        for c, style in (("teal", "--"), ("wina", "-")):
            ax.plot([0] + SPARSITIES, [ppl(v, "dense", 0.0)] + [ppl(v, c, s) for s in SPARSITIES],
                    style, marker="o", label=f"{c}, transform={v}")
    ax.set_yscale("log")
    ax.set_xlabel("sparsity (top-k, every token)")
    ax.set_ylabel("WikiText-2 perplexity")
    ax.set_title("SmolLM2-135M: TEAL vs WINA with and without the orthogonal transform")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out / "transform_accuracy.png", dpi=110)


if __name__ == "__main__":
    main()
