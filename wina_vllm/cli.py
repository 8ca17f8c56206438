"""``wina-vllm``: demo, compare, calibrate, transform, tiny-model, check-config, build-ext."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from wina_vllm.settings import CRITERIA, DEFAULT_CRITERION
from wina_vllm.tiny_model import ARCHS

DEFAULT_HOME = Path.home() / ".cache" / "wina-vllm"
CPU_ENV = {"VLLM_CPU_KVCACHE_SPACE": "1", "TOKENIZERS_PARALLELISM": "false"}


def _compare(model: str, variants, batch_sizes, eval_text, engine, env) -> list[dict]:
    from wina_vllm.evaluate import Job, format_table, run_in_subprocess

    results = []
    for v in variants:
        print(f"== {v.name}: {json.dumps(v.wina) if v.wina else 'dense'}", flush=True)
        results.append(run_in_subprocess(Job(model=model, variant=v, batch_sizes=batch_sizes,
                                             eval_text=eval_text, engine=engine), env=env))
    print(format_table(results))
    return results


def cmd_demo(args) -> None:
    """Tiny local model on the CPU: dense vs TEAL vs WINA, speed and perplexity."""
    from wina_vllm.evaluate import Variant
    from wina_vllm.text import stdlib_prose
    from wina_vllm.tiny_model import build_tiny_model

    model = build_tiny_model(args.home / "tiny-llama", "llama")
    eval_text = stdlib_prose(400_000)[-60_000:]  # the end: not the tokenizer's training text
    variants = [Variant("dense"),
                Variant("teal-0.5", {"sparsity": 0.5, "criterion": "teal", "prefill": "sparse"}),
                Variant("wina-0.5", {"sparsity": 0.5, "criterion": "wina", "prefill": "sparse"})]
    engine = {"enforce_eager": True, "dtype": "float32", "max_model_len": 512}
    results = _compare(str(model), variants, [1, 4], eval_text, engine, CPU_ENV)
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1))
    print("\nOn a CPU the op runs its torch reference, which is slower than dense: the speedup "
          "is the CUDA kernel's (benchmarks/RESULTS.md). Perplexity is on a tiny random model.")


def cmd_compare(args) -> None:
    from wina_vllm.evaluate import Variant

    variants = [Variant("dense")] + [Variant(f"v{i}", json.loads(w))
                                     for i, w in enumerate(args.wina)]
    text = Path(args.eval_text).read_text() if args.eval_text else None
    engine = json.loads(args.engine)
    _compare(args.model, variants, args.batch, text, engine, {})


def cmd_calibrate(args) -> None:
    from wina_vllm.calibrate import calibrate

    text = Path(args.text).read_text() if args.text else None
    if args.no_blend and not args.greedy:
        raise ValueError("--no-blend: got it without --greedy; it applies to the greedy "
                         "allocation only")
    cal = calibrate(args.model, args.out, args.sparsity, args.criterion, args.greedy, text,
                    args.gguf, args.window, args.windows, args.device, not args.no_blend)
    blend = "" if cal.greedy_blend is None else f", greedy blend {cal.greedy_blend}"
    print(f"wrote {args.out}: {cal.thresholds.shape[0]} layers, criterion {cal.criterion}, "
          f"mean sparsity {float(cal.sparsity.mean()):.3f}{blend}")


def cmd_transform(args) -> None:
    from wina_vllm.transform import transform_checkpoint

    print(transform_checkpoint(args.model, args.out, args.variant))


def cmd_tiny_model(args) -> None:
    from wina_vllm.tiny_model import build_tiny_model

    print(build_tiny_model(args.out, args.arch, args.seed))


def cmd_check_config(args) -> None:
    from wina_vllm.settings import parse_settings

    raw = json.loads(args.config)
    print(parse_settings(raw.get("wina", raw)))


def cmd_build_ext(args) -> None:
    from wina_vllm import envs, kernels

    kernels.load()
    print(f"built the CUDA kernels in {envs.build_dir()}")


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="wina-vllm", description="WINA activation sparsity for vLLM")
    sub = ap.add_subparsers(dest="cmd", required=True)

    p = sub.add_parser("demo", help=cmd_demo.__doc__)
    p.add_argument("--home", type=Path, default=DEFAULT_HOME)
    p.add_argument("--json", help="also write the results here")
    p.set_defaults(fn=cmd_demo)

    p = sub.add_parser("compare", help="dense vs WINA variants of one model, side by side")
    p.add_argument("model")
    p.add_argument("--wina", action="append", default=[], help="WINA settings JSON (repeatable)")
    p.add_argument("--batch", type=int, nargs="+", default=[1])
    p.add_argument("--eval-text", help="text file for perplexity")
    p.add_argument("--engine", default="{}", help="extra vllm.LLM keyword arguments, JSON")
    p.set_defaults(fn=cmd_compare)

    p = sub.add_parser("calibrate", help="write per-layer thresholds for mode 'threshold'")
    p.add_argument("model", help="transformers checkpoint directory")
    p.add_argument("--out", required=True)
    p.add_argument("--sparsity", type=float, required=True)
    p.add_argument("--criterion", choices=list(CRITERIA), default=DEFAULT_CRITERION)
    p.add_argument("--greedy", action="store_true", help="allocate sparsity per projection")
    p.add_argument("--no-blend", action="store_true",
                   help="with --greedy: keep the greedy allocation whole, not blended with "
                   "uniform by the model's error (the TEAL/WINA procedure alone)")
    p.add_argument("--text", help="calibration text file (default: generated stdlib prose)")
    p.add_argument("--gguf", help="GGUF file name inside MODEL")
    p.add_argument("--window", type=int, default=512)
    p.add_argument("--windows", type=int, default=16)
    p.add_argument("--device", default="cpu")
    p.set_defaults(fn=cmd_calibrate)

    p = sub.add_parser("transform", help="write the orthogonally transformed checkpoint")
    p.add_argument("model", help="transformers checkpoint directory")
    p.add_argument("--out", required=True)
    p.add_argument("--variant", choices=["per-layer", "shared", "global"], default="per-layer")
    p.set_defaults(fn=cmd_transform)

    p = sub.add_parser("tiny-model", help="build a tiny random model with a local tokenizer")
    p.add_argument("out")
    p.add_argument("--arch", default="llama", choices=ARCHS)
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(fn=cmd_tiny_model)

    p = sub.add_parser("check-config", help="validate WINA settings JSON without starting vLLM")
    p.add_argument("config")
    p.set_defaults(fn=cmd_check_config)

    p = sub.add_parser("build-ext", help="build the CUDA kernels now (ahead of serving)")
    p.set_defaults(fn=cmd_build_ext)

    args = ap.parse_args(argv)
    try:
        args.fn(args)
    except ValueError as exc:
        sys.exit(f"wina-vllm: {exc}")


if __name__ == "__main__":
    main()
