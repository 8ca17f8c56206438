"""Load test: `vllm bench serve` (vLLM's own load tester) against `vllm serve`, dense vs WINA.

For each variant a server starts (Llama-3-8B architecture, dummy weights, a synthetic
word-level tokenizer so that text goes in and out), then `vllm bench serve` runs the
random dataset at each concurrency. Reports throughput, TTFT, TPOT, p99 and failures.

Writes load_test.json, load_test.md and load_test.png (throughput vs dense, TTFT, TPOT).

Usage: python benchmarks/load_test.py --out DIR --name NAME --wina '{"sparsity": 0.5}'
       python benchmarks/load_test.py --replot DIR   (the PNG again from DIR/load_test.json)
       [--compile default]   (vLLM's default Inductor setup instead of plain CUDA graphs)
       [--tp 2]   (tensor parallelism: each server on 2 GPUs)
"""

from __future__ import annotations

import argparse
import json
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import requests

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))
from compile_modes import COMPILE_MODES  # noqa: E402

from wina_vllm.tiny_model import write_synthetic_tokenizer  # noqa: E402

VLLM = [sys.executable, "-m", "vllm.entrypoints.cli.main"]


def model_dir(config: Path) -> Path:
    d = Path(tempfile.mkdtemp(prefix="wina-load-"))
    shutil.copy(config, d / "config.json")
    write_synthetic_tokenizer(d, json.loads(config.read_text())["vocab_size"])
    return d


def start_server(model: Path, port: int, wina: dict | None, log: Path, cpu: bool,
                 compile_mode: str, tp: int = 1) -> subprocess.Popen:
    cmd = VLLM + ["serve", str(model), "--host", "127.0.0.1", "--port", str(port),
                  "--load-format", "dummy", "--max-model-len", "512", "--max-num-seqs", "64",
                  "--served-model-name", "llama3-8b-dummy", "--tensor-parallel-size", str(tp)]
    cmd += ["--enforce-eager", "--dtype", "float32"] if cpu else [
        "--compilation-config", json.dumps(COMPILE_MODES[compile_mode])]
    if wina is not None:
        cmd += ["--quantization", "wina", "--additional-config", json.dumps({"wina": wina})]
    proc = subprocess.Popen(cmd, stdout=open(log, "w"), stderr=subprocess.STDOUT)
    deadline = time.time() + 600  # Inductor compiles take minutes
    while time.time() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited {proc.returncode}: {log.read_text()[-3000:]}")
        try:
            if requests.get(f"http://127.0.0.1:{port}/health", timeout=2).ok:
                return proc
        except requests.ConnectionError:
            pass
        time.sleep(1)
    proc.kill()
    raise RuntimeError("server did not start: " + log.read_text()[-3000:])


def bench(model: Path, port: int, concurrency: int, out: Path, name: str, out_len: int,
          num_prompts: int | None = None) -> dict:
    n = num_prompts or max(16, 4 * concurrency)
    fname = f"{name}-c{concurrency}.json"
    cmd = VLLM + ["bench", "serve", "--backend", "vllm", "--base-url", f"http://127.0.0.1:{port}",
                  "--model", "llama3-8b-dummy", "--tokenizer", str(model),
                  "--dataset-name", "random", "--random-input-len", "200",
                  "--random-output-len", str(out_len), "--ignore-eos", "--num-prompts", str(n),
                  "--max-concurrency", str(concurrency), "--percentile-metrics", "ttft,tpot,itl,e2el",
                  "--metric-percentiles", "50,99", "--save-result", "--save-detailed",
                  "--result-dir", str(out),
                  "--result-filename", fname]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    if proc.returncode != 0:
        raise RuntimeError(proc.stdout[-2000:] + proc.stderr[-3000:])
    r = json.loads((out / fname).read_text())
    return {"variant": name, "concurrency": concurrency, "num_prompts": n,
            "completed": r.get("completed"), "failed": n - int(r.get("completed", 0)),
            "req_s": r.get("request_throughput"), "out_tok_s": r.get("output_throughput"),
            "ttft_ms": r.get("mean_ttft_ms"), "p50_ttft_ms": r.get("median_ttft_ms"),
            "p99_ttft_ms": r.get("p99_ttft_ms"),
            "tpot_ms": r.get("mean_tpot_ms"), "p99_tpot_ms": r.get("p99_tpot_ms"),
            "p99_e2el_ms": r.get("p99_e2el_ms")}


def plot(rows: list[dict], path: Path) -> None:
    """Output tokens/s vs dense, mean TTFT and mean TPOT against concurrency, per variant."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    dense = {r["concurrency"]: r for r in rows if r["variant"] == "dense"}
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.8))
    panels = [
        ("throughput vs dense", lambda r: r["out_tok_s"] / dense[r["concurrency"]]["out_tok_s"]),
        ("mean TTFT (ms)", lambda r: r["ttft_ms"]),
        ("mean TPOT (ms)", lambda r: r["tpot_ms"])]
    for ax, (title, value) in zip(axes, panels):
        for name in dict.fromkeys(r["variant"] for r in rows):
            pts = [r for r in rows if r["variant"] == name]
            ax.plot([r["concurrency"] for r in pts], [value(r) for r in pts], marker="o",
                    label=name)
        ax.set_xscale("log", base=2)
        ax.set_xlabel("concurrency")
        ax.set_title(title)
        ax.legend(fontsize=7)
    axes[0].axhline(0.97, color="grey", lw=0.5, ls="--")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--config", type=Path, default=ROOT / "benchmarks/models/llama3-8b/config.json")
    ap.add_argument("--wina", help="settings JSON of the WINA variant (required to run)")
    ap.add_argument("--replot", type=Path, help="only redraw DIR/load_test.png")
    ap.add_argument("--name", default="wina", help="name of the WINA variant")
    ap.add_argument("--concurrency", type=int, nargs="+", default=[1, 4, 16, 64])
    ap.add_argument("--output-len", type=int, default=128)
    ap.add_argument("--num-prompts", type=int, help="prompts per concurrency (default: "
                    "max(16, 4 x concurrency))")
    ap.add_argument("--cpu", action="store_true", help="CPU engine (eager, float32)")
    ap.add_argument("--compile", default="graphs", choices=sorted(COMPILE_MODES))
    ap.add_argument("--tp", type=int, default=1, help="tensor-parallel size (GPUs per server)")
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks/results")
    args = ap.parse_args()
    if args.replot:
        plot(json.loads((args.replot / "load_test.json").read_text()),
             args.replot / "load_test.png")
        return
    if args.wina is None:
        ap.error("--wina is required")
    if args.num_prompts is not None and args.num_prompts < 1:
        ap.error(f"--num-prompts {args.num_prompts}: give at least 1")
    args.out.mkdir(parents=True, exist_ok=True)
    model = model_dir(args.config)
    variants = [("dense", None), (args.name, json.loads(args.wina))]
    rows = []
    for name, wina in variants:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        server = start_server(model, port, wina, args.out / f"serve-{name}.log", args.cpu,
                              args.compile, args.tp)
        try:
            for c in args.concurrency:
                rows.append(bench(model, port, c, args.out, name, args.output_len,
                                  args.num_prompts))
                print(json.dumps(rows[-1]), flush=True)
        finally:
            server.terminate()
            server.wait(timeout=60)
    (args.out / "load_test.json").write_text(json.dumps(rows, indent=1))
    lines = ["| variant | concurrency | req/s | output tok/s | vs dense | mean TTFT ms | p99 TTFT ms "
             "| mean TPOT ms | p99 TPOT ms | failed |", "|" + "---|" * 10]
    dense = {r["concurrency"]: r for r in rows if r["variant"] == "dense"}
    for r in rows:
        lines.append(f"| {r['variant']} | {r['concurrency']} | {r['req_s']:.2f} | "
                     f"{r['out_tok_s']:.0f} | {r['out_tok_s'] / dense[r['concurrency']]['out_tok_s']:.2f}x "
                     f"| {r['ttft_ms']:.1f} | {r['p99_ttft_ms']:.1f} | {r['tpot_ms']:.2f} | "
                     f"{r['p99_tpot_ms']:.2f} | {r['failed']} |")
    (args.out / "load_test.md").write_text("\n".join(lines) + "\n")
    plot(rows, args.out / "load_test.png")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
