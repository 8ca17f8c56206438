"""The vLLM path (op, CPU reference) agrees with the independent transformers reference."""

from __future__ import annotations

import pytest
import torch

from conftest import requires_vllm, run_engine
from wina_vllm.calibrate import load_hf_model
from wina_vllm.reference import gated, make_gates
from wina_vllm.text import stdlib_prose
from wina_vllm.tiny_model import ARCHS

pytestmark = [requires_vllm, pytest.mark.engine]


def _prompt(model_dir) -> tuple[torch.nn.Module, list[int]]:
    """A tiny model (transformers) and 96 token ids of held-out prose."""
    model, tok = load_hf_model(str(model_dir))
    return model, tok(stdlib_prose(300_000)[-4000:], add_special_tokens=False).input_ids[:96]


def _reference_logprobs(model, ids, gates) -> torch.Tensor:
    """float64 log-probability of each prompt token after the first, with ``gates`` on."""
    with torch.no_grad(), gated(model, gates):
        logits = model(input_ids=torch.tensor([ids])).logits[0, :-1].double()
    return torch.log_softmax(logits, -1).gather(1, torch.tensor(ids[1:])[:, None])[:, 0]


def _vllm_logprobs(model_dir, ids, wina=None) -> tuple[torch.Tensor, dict]:
    """The same from vLLM's prompt logprobs (``wina`` None: dense), and the engine's result."""
    r = run_engine(model=str(model_dir), prompt_token_ids=[ids], max_tokens=1, wina=wina)
    assert not r.get("error"), r.get("output")
    return torch.tensor(r["prompt_logprobs"][0], dtype=torch.float64), r


@pytest.mark.parametrize("criterion", ["wina", "wina-k-gate", "teal"])
def test_prompt_logprobs_match_the_reference(tiny_models, criterion):
    model, ids = _prompt(tiny_models["llama"])
    ref = _reference_logprobs(model, ids, make_gates(model, criterion, 0.5))
    got, _ = _vllm_logprobs(tiny_models["llama"], ids,
                            {"sparsity": 0.5, "criterion": criterion, "prefill": "sparse"})
    # Both float32, same weights, same gate: only summation order differs.
    torch.testing.assert_close(got, ref, rtol=0, atol=2e-3)
    dense, _ = _vllm_logprobs(tiny_models["llama"], ids)
    assert (dense - ref).abs().max() > 1e-2


@pytest.mark.parametrize("arch", [a for a in ARCHS if a != "llama"])
def test_every_architecture_gates_like_the_reference(tiny_models, arch):
    """The default criterion on the other supported architectures: their vLLM model
    classes fuse q/k/v (Qwen2's with a bias) and gate/up in their own ways, and Gemma scales
    and norms differently, yet each projection's input must be gated as the reference
    gates the transformers model's."""
    model, ids = _prompt(tiny_models[arch])
    ref = _reference_logprobs(model, ids, make_gates(model, "wina-k-gate", 0.5))
    got, _ = _vllm_logprobs(tiny_models[arch], ids, {"sparsity": 0.5, "prefill": "sparse"})
    torch.testing.assert_close(got, ref, rtol=0, atol=2e-3)
    assert (_reference_logprobs(model, ids, None) - ref).abs().max() > 1e-2  # the gate matters


def test_topk_mode_takes_each_layers_k_from_a_greedy_calibration_file(tiny_models, tmp_path):
    """mode topk + a --greedy file: every (layer, projection) keeps its own k, in vLLM as in
    the reference."""
    from wina_vllm import calibration_file as cf
    from wina_vllm.calibrate import calibrate
    from wina_vllm.settings import PROJECTIONS

    path = tmp_path / "greedy.safetensors"
    calibrate(str(tiny_models["llama"]), path, 0.4, "wina", greedy=True,
              text=stdlib_prose(60_000), window=128, windows=4)
    cal = cf.load(path)
    assert cal.sparsity.std() > 0.05, "the test needs uneven per-layer sparsity"
    model, ids = _prompt(tiny_models["llama"])
    ref = _reference_logprobs(model, ids, make_gates(model, "wina", 0.0, cal, topk=True))
    got, r = _vllm_logprobs(tiny_models["llama"], ids,
                            {"calibration": str(path), "prefill": "sparse"})
    torch.testing.assert_close(got, ref, rtol=0, atol=2e-3)
    k = model.config.hidden_size
    for name, per_proj in r["sparsity"].items():
        layer = int(name.split(".")[2])
        for proj, realized in per_proj.items():
            want = float(cal.sparsity[layer, PROJECTIONS.index(proj)])
            width = model.config.intermediate_size if proj == "down" else k
            assert abs(realized - want) <= 1.0 / width + 1e-6, (name, proj, realized, want)
