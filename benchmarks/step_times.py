"""Engine step times by step kind, dense vs WINA: where time to first token goes.

The load tests (RESULTS.md section 3) show WINA's time to first token equal to dense at
concurrency 1 but higher at concurrency 4, where new prompts are prefilled in steps
that also carry other requests' decode tokens. This times single engine steps of each
kind on an in-process engine (``LLMEngine.add_request`` / ``step``, timed to the end of its
GPU work):

- ``prefill_200``: one 200-token prompt alone (concurrency 1's first token);
- ``prefill_600``: three 200-token prompts in one step;
- ``prefill_3200``: sixteen 200-token prompts in one step (a wave of new requests at
  high concurrency: the GPU-bound end of prefill);
- ``mixed_601``: three 200-token prompts joining one request that is decoding;
- ``decode_1``: one decode step of one request (a CUDA-graph replay on the GPU).

Median of ``--reps`` steps of each kind per variant, each variant in its own process,
and a torch profile of one ``mixed_601`` step per variant (top operators by host and
device time) written beside the JSON.

Usage: python benchmarks/step_times.py --out DIR [--variants dense wina-thr-0.5] [--tp 2]
       python benchmarks/step_times.py --out DIR --cpu --model DIR   (tiny model, CPU)
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "benchmarks"))
from compile_modes import COMPILE_MODES  # noqa: E402

VARIANTS = {
    "dense": None,
    "wina-thr-0.5": {"mode": "threshold", "criterion": "wina", "calibration":
                     str(ROOT / "benchmarks/calibration/llama3-8b-dummy-wina-0.5.safetensors")},
    "wina-topk-0.5": {"mode": "topk", "sparsity": 0.5},
}
VARIANTS["wina-thr-0.5-python-op"] = VARIANTS["wina-thr-0.5"]  # run with WINA_NATIVE_OP=0


def thread_cpu_seconds() -> dict[str, float]:
    """{"name/tid": user + system CPU seconds} of this process's threads (Linux)."""
    ticks = os.sysconf("SC_CLK_TCK")
    out = {}
    for task in Path("/proc/self/task").iterdir():
        try:
            stat = (task / "stat").read_text()
            comm = (task / "comm").read_text().strip()
        except OSError:  # the thread ended
            continue
        fields = stat[stat.rindex(")") + 2:].split()
        out[f"{comm}/{task.name}"] = (int(fields[11]) + int(fields[12])) / ticks
    return out


def build_llm(args, name: str):
    """An in-process engine (so the caller can time and profile its steps) for variant
    ``name`` on ``args.model`` with dummy weights: TP ``args.tp``, ``args.compile``'s
    compilation on a GPU, eager float32 with ``args.cpu``."""
    os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"
    from vllm import LLM

    wina = VARIANTS[name]
    kw = dict(max_model_len=512, max_num_seqs=16, seed=0, tensor_parallel_size=args.tp,
              load_format="dummy", skip_tokenizer_init=True)
    if args.cpu:
        kw.update(dtype="float32", enforce_eager=True)
    else:
        kw.update(dtype="bfloat16", gpu_memory_utilization=0.85,
                  compilation_config=COMPILE_MODES[args.compile])
    if wina is not None:
        kw.update(quantization="wina", additional_config={"wina": wina})
    return LLM(model=args.model, **kw)


def run_variant(args, name: str) -> dict:
    """One engine, every step kind ``args.reps`` times; returns median seconds per kind."""
    import torch
    from vllm import SamplingParams

    llm = build_llm(args, name)
    engine = llm.llm_engine
    vocab = json.loads((Path(args.model) / "config.json").read_text())["vocab_size"]
    gen = torch.Generator().manual_seed(0)
    counter = iter(range(10**9))

    def add(n_tokens: int, max_tokens: int) -> None:
        ids = torch.randint(10, vocab - 10, (n_tokens,), generator=gen).tolist()
        engine.add_request(f"r{next(counter)}", {"prompt_token_ids": ids},
                           SamplingParams(max_tokens=max_tokens, ignore_eos=True))

    sync = (lambda: None) if args.cpu else torch.cuda.synchronize

    def timed_step() -> float:
        # vLLM schedules asynchronously: step() can return while the step's kernels still
        # run (a 3200-token step timed 24-27 ms without this, for ~66 ms of linears), so
        # the time ends when the GPU is done (the engine runs in this process).
        sync()
        start = time.perf_counter()
        engine.step()
        sync()
        return time.perf_counter() - start

    def drain() -> None:
        while engine.has_unfinished_requests():
            engine.step()

    def scenario(kind: str) -> float:
        """Set up, time the one step of this kind, finish the requests."""
        if kind == "prefill_200":
            add(200, 1)
            t = timed_step()
        elif kind in ("prefill_600", "prefill_3200"):
            for _ in range(int(kind.split("_")[1]) // 200):
                add(200, 1)
            t = timed_step()
        elif kind == "mixed_601":
            add(200, 4)
            engine.step()  # its prefill
            engine.step()  # a decode step: it is now decoding
            for _ in range(3):
                add(200, 1)
            t = timed_step()
        elif kind == "decode_1":
            add(200, 4)
            engine.step()
            engine.step()
            t = timed_step()
        else:
            raise ValueError(kind)
        drain()
        return t

    kinds = ["prefill_200", "prefill_600", "prefill_3200", "mixed_601", "decode_1"]
    for kind in kinds:  # warm-up: first calls at each shape (cuBLAS heuristics, allocator)
        scenario(kind)
    times = {k: [] for k in kinds}
    cpu_before, wall = thread_cpu_seconds(), time.perf_counter()
    for _ in range(args.reps):
        for kind in kinds:  # interleaved, so drift hits every kind alike
            times[kind].append(scenario(kind))
    wall = time.perf_counter() - wall
    cpu = {t: c - cpu_before.get(t, 0.0) for t, c in thread_cpu_seconds().items()}
    busiest = sorted(cpu.items(), key=lambda kv: -kv[1])[:8]
    result = {"variant": name, "median_ms": {k: 1e3 * statistics.median(v)
                                            for k, v in times.items()},
              "all_ms": {k: [1e3 * t for t in v] for k, v in times.items()},
              # Host threads' CPU time over the timed steps, against their wall time: a
              # thread other than the engine's that burns CPU competes with it.
              "loop_wall_s": wall, "busiest_threads_cpu_s": busiest,
              "threads": len(cpu), "torch_threads": torch.get_num_threads()}
    if not args.no_profile:
        from torch.profiler import ProfilerActivity, profile

        activities = [ProfilerActivity.CPU] + ([] if args.cpu else [ProfilerActivity.CUDA])
        add(200, 4)
        engine.step()
        engine.step()
        for _ in range(3):
            add(200, 1)
        with profile(activities=activities) as prof:
            engine.step()
        drain()
        sort = "cpu_time_total" if args.cpu else "cuda_time_total"
        table = (prof.key_averages().table(sort_by="cpu_time_total", row_limit=25) + "\n\n" +
                 prof.key_averages().table(sort_by=sort, row_limit=25))
        (args.out / f"profile-{name}.txt").write_text(table)
    return result


def add_engine_args(ap: argparse.ArgumentParser) -> None:
    """The options of the benchmarks here that time an in-process engine per variant."""
    ap.add_argument("--model", default=str(ROOT / "benchmarks/models/llama3-8b"))
    ap.add_argument("--variants", nargs="+", default=["dense", "wina-thr-0.5"],
                    choices=sorted(VARIANTS))
    ap.add_argument("--tp", type=int, default=1)
    ap.add_argument("--compile", default="graphs", choices=sorted(COMPILE_MODES))
    ap.add_argument("--cpu", action="store_true", help="CPU engine (eager, float32)")
    ap.add_argument("--one", help=argparse.SUPPRESS)  # internal: run this variant here
    ap.add_argument("--out", type=Path, required=True)


def engine_argv(args) -> list[str]:
    """``add_engine_args``' options as given, less the variants, for a child process."""
    return ["--model", args.model, "--tp", str(args.tp), "--compile", args.compile,
            "--out", str(args.out)] + ["--cpu"] * args.cpu


def run_one(script: str, name: str, argv: list[str]) -> dict:
    """``script --one name argv`` in a process of its own (a clean GPU for each engine);
    the dict it prints on its ``RESULT`` line."""
    env = {**os.environ, "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    if name.endswith("-python-op"):
        env["WINA_NATIVE_OP"] = "0"
    proc = subprocess.run([sys.executable, script, "--one", name] + argv, capture_output=True,
                          text=True, timeout=900, env=env)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
    if proc.returncode != 0 or not lines:
        raise RuntimeError(f"{name} failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-4000:]}")
    return json.loads(lines[-1][len("RESULT "):])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    add_engine_args(ap)
    ap.add_argument("--reps", type=int, default=15)
    ap.add_argument("--no-profile", action="store_true")
    args = ap.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    if args.one:
        print("RESULT " + json.dumps(run_variant(args, args.one)), flush=True)
        return
    results = []
    for name in args.variants:
        argv = engine_argv(args) + ["--reps", str(args.reps)] + ["--no-profile"] * args.no_profile
        results.append(run_one(__file__, name, argv))
        print(name, json.dumps(results[-1]["median_ms"]), "loop %.1f s, busiest threads %s"
              % (results[-1]["loop_wall_s"], results[-1]["busiest_threads_cpu_s"][:4]),
              flush=True)
        (args.out / "step_times.json").write_text(json.dumps(results, indent=1))
    base = results[0]["median_ms"]
    for r in results[1:]:
        print(r["variant"], "vs", results[0]["variant"], " ".join(
            f"{k} {v / base[k]:.3f}x" for k, v in r["median_ms"].items()))


if __name__ == "__main__":
    main()
