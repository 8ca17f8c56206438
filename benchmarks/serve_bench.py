"""End-to-end decode speed in vLLM: dense vs TEAL vs WINA, one engine per variant.

Each variant is a fresh engine process (wina_vllm.evaluate) on the same prompts.
Threshold-mode variants use calibration files made first, inside vLLM, on the same
(dummy or real) weights (wina_vllm.calibrate.calibrate_vllm). Decode tokens/s per batch
size subtracts the prefill (a max_tokens=1 run) from the full run.

GPU (H200, vLLM 0.26): ``--compile graphs`` (the default here) runs full CUDA graphs for
decode (FULL_DECODE_ONLY) without Inductor, which keeps start-up short; ``--compile
default`` runs vLLM's own default (Inductor, piecewise + full graphs). Dense runs in the
same setup.

Usage: python benchmarks/serve_bench.py --out DIR [--model benchmarks/models/llama3-8b]
       [--variants NAME ...] [--transformed benchmarks/models/llama3-8b-per-layer ...]
       [--no-dummy --model artifacts/smollm2-135m] [--compile default]
       [--calibration-dir DIR]   (reuse {criterion}-{sparsity}.safetensors files there)
       [--tp 2]   (tensor parallelism; thresholds are still calibrated on one GPU)
       [--lora 16]   (every request runs a random LoRA adapter of this rank on q..down)
Variant names: dense, {wina,teal}-{thr,topk}-{0.25,0.5,0.65}, wina-thr-0.5-msb8.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from compile_modes import COMPILE_MODES  # noqa: E402

from wina_vllm.evaluate import Job, Variant, format_table, run_in_subprocess  # noqa: E402

CRITERIA = ["wina", "teal"]
SPARSITIES = [0.25, 0.5, 0.65]


def engine_kwargs(args) -> dict:
    kw = dict(max_model_len=512, gpu_memory_utilization=0.85, max_num_seqs=64,
              tensor_parallel_size=args.tp)
    if args.lora:
        kw.update(enable_lora=True, max_lora_rank=args.lora, max_loras=1)
    if args.dummy:
        kw.update(load_format="dummy", skip_tokenizer_init=True)
    if args.device == "cuda":
        kw.update(dtype="bfloat16", compilation_config=COMPILE_MODES[args.compile])
    else:
        kw.update(dtype="float32", enforce_eager=True)
    return kw


CALIBRATE = """
import json, sys, os
os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"
from vllm import LLM
from wina_vllm.calibrate import calibrate_vllm
a = json.loads(sys.argv[1])
kw = dict(a["engine"]); kw.pop("compilation_config", None); kw["enforce_eager"] = True
kw["tensor_parallel_size"] = 1  # whole-model thresholds, served at any TP size
llm = LLM(model=a["model"], seed=0, **kw)
paths = calibrate_vllm(llm, a["prompts"], a["criteria"], a["sparsities"], a["out"])
print("CALIBRATED", json.dumps([str(p) for p in paths]))
"""


def calibrate(args, engine: dict, cal_dir: Path, vocab: int) -> None:
    """Threshold files for every (criterion, sparsity): inside vLLM for dummy weights (no
    checkpoint exists), with transformers on generated text for a real checkpoint."""
    if not args.dummy:
        from wina_vllm.calibrate import calibrate as calibrate_hf

        cal_dir.mkdir(parents=True, exist_ok=True)
        for criterion in CRITERIA:
            for s in SPARSITIES:
                calibrate_hf(args.model, cal_dir / f"{criterion}-{s}.safetensors", s, criterion,
                             window=256, windows=16, device=args.device)
        return
    rng = random.Random(1)  # calibration prompts differ from the benchmark's
    prompts = [[rng.randrange(5, vocab - 5) for _ in range(256)] for _ in range(8)]
    payload = json.dumps(dict(model=args.model, engine=engine, prompts=prompts,
                              criteria=CRITERIA, sparsities=SPARSITIES,
                              out=str(cal_dir)))
    proc = subprocess.run([sys.executable, "-c", CALIBRATE, payload], capture_output=True,
                          text=True, timeout=1200)
    if proc.returncode != 0:
        raise RuntimeError("calibration failed:\n" + (proc.stdout + proc.stderr)[-5000:])
    print(next(ln for ln in proc.stdout.splitlines() if ln.startswith("CALIBRATED")), flush=True)


def variants(cal_dir: Path, names: list[str] | None) -> list[Variant]:
    """dense; every (criterion, sparsity) in threshold and top-k mode; one without the
    dense fallback (max_sparse_batch 8). Named criterion-mode-sparsity."""
    def thr(criterion, s, **extra):
        return {"mode": "threshold", "criterion": criterion,
                "calibration": str(cal_dir / f"{criterion}-{s}.safetensors"), **extra}

    all_variants = [Variant("dense")]
    for criterion in CRITERIA:
        for s in SPARSITIES:
            all_variants.append(Variant(f"{criterion}-thr-{s}", thr(criterion, s)))
            all_variants.append(Variant(f"{criterion}-topk-{s}",
                                        {"sparsity": s, "criterion": criterion}))
    all_variants.append(Variant("wina-thr-0.5-msb8", thr("wina", 0.5, max_sparse_batch=8)))
    return [v for v in all_variants if names is None or v.name in names]


def transformed_variants(dirs: list[str]) -> list[tuple[Variant, str]]:
    """WINA top-k 0.5 on transformed checkpoints (issue 7: the shortcut matmuls' cost):
    compare with the plain model's wina-topk-0.5 of the same run."""
    return [(Variant(f"wina-topk-0.5@{Path(d).name}", {"sparsity": 0.5}), d) for d in dirs]


PREPARE_DUMMY_SHORTCUTS = "wina_vllm.models:identity_shortcuts"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default=str(ROOT / "benchmarks/models/llama3-8b"))
    ap.add_argument("--dummy", action=argparse.BooleanOptionalAction, default=True)
    ap.add_argument("--device", default="cuda", choices=["cuda", "cpu"])
    ap.add_argument("--batch", type=int, nargs="+", default=[1, 2, 4, 8, 16, 64])
    ap.add_argument("--prompt-tokens", type=int, default=256)
    ap.add_argument("--max-tokens", type=int, default=128)
    ap.add_argument("--variants", nargs="+", help="names to run (default: all)")
    ap.add_argument("--transformed", nargs="+", default=[],
                    help="transformed checkpoints (or dummy configs) to run at wina-topk-0.5")
    ap.add_argument("--compile", default="graphs", choices=sorted(COMPILE_MODES))
    ap.add_argument("--tp", type=int, default=1, help="tensor-parallel size (GPUs per engine)")
    ap.add_argument("--calibration-dir", type=Path,
                    help="threshold files made earlier for these weights (skips calibration)")
    ap.add_argument("--lora", type=int, default=0,
                    help="rank of a random LoRA adapter every request runs (0: none)")
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks/results")
    args = ap.parse_args()
    if args.lora < 0:
        ap.error(f"--lora: got {args.lora}; accepted: a rank >= 1, or 0 for none")
    args.out.mkdir(parents=True, exist_ok=True)
    engine = engine_kwargs(args)
    adapter = None
    if args.lora:
        from wina_vllm.tiny_model import write_random_lora

        # Not under --out: Llama-3-8B's rank-16 adapter is 84 MB.
        adapter = str(write_random_lora(args.model, Path(tempfile.mkdtemp()) / "lora", args.lora,
                                        dtype="bfloat16" if args.device == "cuda" else "float32"))
    vocab = json.loads((Path(args.model) / "config.json").read_text())["vocab_size"]
    cal_dir = args.calibration_dir or args.out / "calibration"
    t0 = time.time()
    runs = [(v, args.model) for v in variants(cal_dir, args.variants)]
    if args.calibration_dir is None and any(v.wina and v.wina.get("mode") == "threshold"
                                            for v, _ in runs):
        calibrate(args, engine, cal_dir, vocab)
        print(f"calibrated in {time.time() - t0:.0f} s", flush=True)
    results = []
    for v, model in runs + transformed_variants(args.transformed):
        t = time.time()
        try:
            prepare = PREPARE_DUMMY_SHORTCUTS if args.dummy and model in args.transformed else None
            r = run_in_subprocess(Job(model=model, variant=v, prepare=prepare, batch_sizes=args.batch,
                                      prompt_tokens=args.prompt_tokens,
                                      max_tokens=args.max_tokens, engine=engine,
                                      lora=adapter),
                                  env={"PYTHONPATH": str(ROOT) + os.pathsep +
                                       os.environ.get("PYTHONPATH", "")}, timeout=900)
        except (RuntimeError, subprocess.TimeoutExpired) as exc:
            print(f"{v.name} FAILED: {str(exc)[-3000:]}", flush=True)
            continue
        r["wall_s"] = time.time() - t
        r["engine"] = engine  # the vLLM arguments (TP size, compilation), kept in the file
        results.append(r)
        print(f"{v.name}: " + ", ".join(f"b{s['batch']} {s['decode_tok_s']:.0f} tok/s"
                                       for s in r["speed"])
              + f" | sparsity {r.get('realized_sparsity')} | {r['wall_s']:.0f} s", flush=True)
        (args.out / "serve_bench.json").write_text(json.dumps(results, indent=1))
    table = format_table(results)
    (args.out / "serve_bench.md").write_text(table + "\n")
    print(table)
    plot(results, args.out / "serve_bench.png")


def plot(results: list[dict], path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    dense = next((r for r in results if r["variant"]["wina"] is None), None)
    if dense is None:
        return  # nothing to compare with
    fig, ax = plt.subplots(figsize=(7, 4))
    for r in results:
        xs = [s["batch"] for s in r["speed"]]
        ys = [s["decode_tok_s"] / d["decode_tok_s"] for s, d in zip(r["speed"], dense["speed"])]
        ax.plot(xs, ys, marker="o", label=r["variant"]["name"])
    ax.set_xscale("log", base=2)
    ax.axhline(1.0, color="grey", lw=0.5)
    ax.set_xlabel("batch size")
    ax.set_ylabel("decode tokens/s vs dense")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


if __name__ == "__main__":
    main()
