"""The orthogonal transform computes the same function and orthogonalizes its bases."""

from __future__ import annotations

import pytest
import torch

from conftest import requires_vllm

from wina_vllm.transform import (
    VARIANTS,
    attach_shortcuts,
    load_transformed,
    transform_checkpoint,
    transform_model,
)


def _logits(model, ids):
    with torch.no_grad():
        return model(input_ids=ids).logits.double()


@pytest.mark.parametrize("arch", ["llama", "qwen2", "mistral"])
@pytest.mark.parametrize("variant", VARIANTS)
def test_transformed_model_computes_the_same_function(tiny_models, tmp_path, arch, variant):
    from transformers import AutoModelForCausalLM

    src = tiny_models[arch]
    ref = AutoModelForCausalLM.from_pretrained(src, dtype=torch.float32).eval()
    out = transform_checkpoint(str(src), tmp_path / variant, variant)
    model, _ = load_transformed(out)
    ids = torch.randint(5, 500, (2, 48), generator=torch.Generator().manual_seed(0))
    a, b = _logits(ref, ids), _logits(model, ids)
    assert float((a - b).norm() / a.norm()) <= 1e-4
    shortcut_file = (out / "wina_shortcuts.safetensors").exists()
    assert shortcut_file == (variant != "global")


@pytest.mark.parametrize("shared", [True, False])
def test_given_bases_compute_the_same_function(tiny_models, shared):
    """Any orthogonal bases (e.g. from activations, benchmarks/transform_pca.py) keep the
    function; one matrix repeated everywhere needs no shortcut."""
    from transformers import AutoModelForCausalLM

    src = tiny_models["llama"]
    ref = AutoModelForCausalLM.from_pretrained(src, dtype=torch.float32).eval()
    model = AutoModelForCausalLM.from_pretrained(src, dtype=torch.float64).eval()
    n, d = len(model.model.layers), model.config.hidden_size
    gen = torch.Generator().manual_seed(1)
    rand = [torch.linalg.qr(torch.randn(d, d, generator=gen, dtype=torch.float64))[0]
            for _ in range(2 * n)]
    bases = ([rand[0]] * n, [rand[0]] * n) if shared else (rand[:n], rand[n:])
    emb = model.model.embed_tokens.weight.detach().clone()
    shortcuts = transform_model(model, "global" if shared else "per-layer", bases=bases)
    torch.testing.assert_close(model.model.embed_tokens.weight, emb @ bases[0][0])  # used
    attach_shortcuts(model, shortcuts)
    ids = torch.randint(5, 500, (2, 48), generator=gen)
    a, b = _logits(ref, ids), _logits(model.float(), ids)
    assert float((a - b).norm() / a.norm()) <= 1e-4
    assert (shortcuts == {}) == shared


@pytest.mark.parametrize("variant", VARIANTS)
def test_basis_matrices_have_orthogonal_columns(tiny_models, tmp_path, variant):
    out = transform_checkpoint(str(tiny_models["llama"]), tmp_path / variant, variant)
    model, _ = load_transformed(out)
    layers = [getattr(layer, "layer", layer) for layer in model.model.layers]
    checked = [layer.self_attn.k_proj.weight for layer in layers] if variant != "global" else \
        [torch.cat([layer.self_attn.k_proj.weight for layer in layers])]
    if variant == "per-layer":
        checked += [layer.mlp.gate_proj.weight for layer in layers]
    for w in checked:
        gram = w.double().t() @ w.double()
        off = gram - torch.diag(torch.diagonal(gram))
        assert float(off.abs().max()) <= 1e-5 * float(gram.diagonal().max())
    # q_proj shares k's basis but is not itself orthogonalized
    q = layers[0].self_attn.q_proj.weight.double()
    gram = q.t() @ q
    assert float((gram - torch.diag(gram.diagonal())).abs().max()) > 1e-3 * float(gram.max())


@requires_vllm
def test_identity_shortcuts_for_dummy_benchmarks():
    """Dummy weights' shortcuts become the identity (benchmarks/serve_bench.py --transformed)."""
    from wina_vllm.models import identity_shortcuts

    layers = torch.nn.ModuleList([torch.nn.Module() for _ in range(2)])
    layers[0].shortcut_attn = torch.nn.Parameter(torch.rand(8, 8), requires_grad=False)
    layers[0].shortcut_mlp = torch.nn.Parameter(torch.rand(8, 8), requires_grad=False)
    layers[1].shortcut_attn, layers[1].shortcut_mlp = None, None
    identity_shortcuts(layers)
    assert torch.equal(layers[0].shortcut_attn, torch.eye(8))
    assert torch.equal(layers[0].shortcut_mlp, torch.eye(8))
    assert layers[1].shortcut_mlp is None
