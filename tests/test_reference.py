"""The vLLM path (op, CPU reference) agrees with the independent transformers reference."""

from __future__ import annotations

import pytest
import torch

from conftest import requires_vllm, run_engine
from wina_vllm.calibrate import load_hf_model
from wina_vllm.reference import gated, make_gates
from wina_vllm.text import stdlib_prose

pytestmark = [requires_vllm, pytest.mark.engine]


@pytest.mark.parametrize("criterion", ["wina", "teal"])
def test_prompt_logprobs_match_the_reference(tiny_models, criterion):
    model, tok = load_hf_model(str(tiny_models["llama"]))
    ids = tok(stdlib_prose(300_000)[-4000:], add_special_tokens=False).input_ids[:96]
    with torch.no_grad(), gated(model, make_gates(model, criterion, 0.5)):
        logits = model(input_ids=torch.tensor([ids])).logits[0, :-1].double()
    ref = torch.log_softmax(logits, -1).gather(1, torch.tensor(ids[1:])[:, None])[:, 0]
    r = run_engine(model=str(tiny_models["llama"]), prompt_token_ids=[ids], max_tokens=1,
                   wina={"sparsity": 0.5, "criterion": criterion, "prefill": "sparse"})
    assert not r.get("error"), r.get("output")
    got = torch.tensor(r["prompt_logprobs"][0], dtype=torch.float64)
    # Both float32, same weights, same gate: only summation order differs.
    torch.testing.assert_close(got, ref, rtol=0, atol=2e-3)
    dense = run_engine(model=str(tiny_models["llama"]), prompt_token_ids=[ids], max_tokens=1)
    assert (torch.tensor(dense["prompt_logprobs"][0], dtype=torch.float64) - ref).abs().max() > 1e-2
