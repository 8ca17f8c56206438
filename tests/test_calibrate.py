"""Calibration: thresholds reach their sparsity on held-out text; greedy; the vLLM path."""

from __future__ import annotations

import pytest
import torch

from wina_vllm import calibration_file as cf
from wina_vllm import gate
from wina_vllm.calibrate import (
    HF_MODULES,
    _tables_from_inputs,
    calibrate,
    collect_hf,
    load_hf_model,
    quantile,
    token_windows,
)
from wina_vllm import greedy
from wina_vllm.layers import hf_decoder_layers
from wina_vllm.settings import PROJECTIONS
from wina_vllm.text import stdlib_prose


@pytest.mark.parametrize("criterion", ["wina", "teal"])
@pytest.mark.parametrize("sparsity", [0.25, 0.5])
def test_thresholds_reach_target_on_held_out_text(tiny_models, tmp_path, criterion, sparsity):
    path = tmp_path / "cal.safetensors"
    text = stdlib_prose(400_000)
    cal = calibrate(str(tiny_models["llama"]), path, sparsity, criterion, text=text[:200_000],
                    window=256, windows=32)
    loaded = cf.load(path)
    assert torch.equal(loaded.thresholds, cal.thresholds) and loaded.criterion == criterion
    # Held-out text: the last part of the prose, never seen by calibration.
    model, tok = load_hf_model(str(tiny_models["llama"]))
    held_out = token_windows(tok, text[-100_000:], 256, 16)
    layers = collect_hf(model, held_out, criterion)
    for i, layer in enumerate(layers):
        for j, p in enumerate(PROJECTIONS):
            scores = layer[p].score_sample()
            realized = float((scores < loaded.thresholds[i, j]).double().mean())
            assert abs(realized - sparsity) <= 0.02, (i, p, realized)


def _greedy(model, texts, layers, targets, criterion="wina"):
    """The greedy allocation itself, before its blend with uniform."""
    return greedy.allocate(model, texts, layers, targets, criterion, _modules, quantile).greedy


def _modules(layer):
    return {p: layer.get_submodule(HF_MODULES[p]) for p in PROJECTIONS}


def test_greedy_keeps_the_average_and_spends_it_where_error_is_small(tiny_models):
    model, tok = load_hf_model(str(tiny_models["llama"]))
    # Make most input channels of o_proj nearly irrelevant (tiny weight columns): dropping
    # them barely moves the layer's output, so greedy should sparsify o the most.
    with torch.no_grad():
        model.model.layers[0].self_attn.o_proj.weight[:, 8:].mul_(1e-3)
    texts = token_windows(tok, stdlib_prose(100_000), 128, 6)
    layers = collect_hf(model, texts, "wina")
    alloc = _greedy(model, texts[:2], layers, [0.25, 0.5])
    params = {p: layers[0][p].weight.numel() for p in PROJECTIONS}
    for target in (0.25, 0.5):
        for layer_alloc in alloc:
            mean = sum(layer_alloc[target][p] * params[p] for p in PROJECTIONS) / sum(
                params.values())
            assert abs(mean - target) < 1e-6
    assert alloc[0][0.5]["o"] == max(alloc[0][0.5].values()) and alloc[0][0.5]["o"] > 0.6
    # Another layer, untouched, spreads its sparsity differently.
    assert alloc[1][0.5] != alloc[0][0.5]


def test_greedy_path_lowers_layer_error_below_uniform(tiny_models):
    """At the same parameter-weighted sparsity, the greedy allocation's layer-output error
    is at most the uniform allocation's (the path starts from every better cheap step)."""
    model, tok = load_hf_model(str(tiny_models["llama"]))
    texts = token_windows(tok, stdlib_prose(100_000), 128, 6)
    layers = collect_hf(model, texts, "teal")
    alloc = _greedy(model, texts[:2], layers, [0.5], "teal")
    inputs = greedy.capture_layer_inputs(model, texts[:2])[0]
    layer = model.model.layers[0]

    def error(sparsity: dict[str, float]) -> float:
        gates = {p: quantile(layers[0][p].score_sample(), sparsity[p]) for p in PROJECTIONS}
        handles = [layer.get_submodule(HF_MODULES[p]).register_forward_pre_hook(
            lambda m, a, t=gates[p]: (torch.where(a[0].abs() >= t, a[0], 0.0),))
            for p in PROJECTIONS]
        try:
            with torch.no_grad():
                return float((greedy.layer_output(layer, inputs) - dense).square().sum())
        finally:
            for h in handles:
                h.remove()

    with torch.no_grad():
        dense = greedy.layer_output(layer, inputs)
    assert error(alloc[0][0.5]) < error(dict.fromkeys(PROJECTIONS, 0.5))


def test_blend_with_uniform_keeps_the_parameter_weighted_mean():
    params = {"q": 16, "k": 4, "v": 4, "o": 16, "gate": 40, "up": 40, "down": 40}
    alloc = {"q": 0.1, "k": 0.0, "v": 0.0, "o": 0.3, "gate": 0.5, "up": 0.5, "down": 0.26}
    target = sum(alloc[p] * n for p, n in params.items()) / sum(params.values())
    assert greedy.blended(alloc, target, 0.0) == pytest.approx(dict.fromkeys(PROJECTIONS, target))
    assert greedy.blended(alloc, target, 1.0) == pytest.approx(alloc)
    for a in greedy.BLENDS:
        mix = greedy.blended(alloc, target, a)
        assert sum(mix[p] * n for p, n in params.items()) / sum(params.values()) == \
            pytest.approx(target)


def test_choose_blend_backs_off_an_allocation_the_model_pays_for(tiny_models):
    """Sparsity piled on two projections per layer (0.9) costs the model more than the
    same mean spread evenly; the blend picked is the one of least model KL, so not all of
    the piled allocation is kept."""
    model, tok = load_hf_model(str(tiny_models["llama"]))
    texts = token_windows(tok, stdlib_prose(100_000), 128, 6)
    layers = collect_hf(model, texts, "wina")
    params = {p: layers[0][p].weight.numel() for p in PROJECTIONS}
    target = 0.3
    piled = {"o": 0.9, "down": 0.9}
    rest = (target * sum(params.values()) - 0.9 * (params["o"] + params["down"])) / sum(
        params[p] for p in PROJECTIONS if p not in ("o", "down"))
    piled.update({p: rest for p in PROJECTIONS if p not in ("o", "down")})
    assert 0.0 <= rest < target
    allocation = [piled for _ in layers]
    scores = [{p: layer[p].score_sample() for p in PROJECTIONS} for layer in layers]

    def gate_at(i, p, s):
        return layers[i][p].norms, quantile(scores[i][p], s)

    dense = greedy.log_probs(model, texts[:2], None, _modules)
    chosen = greedy.choose_blend(model, texts[:2], allocation, target, gate_at, _modules, dense)
    kl = {a: greedy.model_kl(model, texts[:2], [
        {p: gate_at(i, p, s) for p, s in greedy.blended(alloc, target, a).items()}
        for i, alloc in enumerate(allocation)], _modules, dense) for a in greedy.BLENDS}
    assert kl[1.0] > kl[0.0] > 0.0  # piling costs more than spreading; gating costs something
    assert chosen < 1.0 and kl[chosen] == min(kl.values())
    keep_all = [{p: gate_at(i, p, 0.0) for p in PROJECTIONS} for i in range(len(layers))]
    assert greedy.model_kl(model, texts[:2], keep_all, _modules, dense) == pytest.approx(0.0, abs=1e-9)


def test_allocation_at_scales_onto_the_target():
    path = [(0.2, dict.fromkeys(PROJECTIONS, 2)), (0.3, dict(dict.fromkeys(PROJECTIONS, 2),
                                                             down=8))]
    alloc = greedy.allocation_at(path, 0.25)
    assert alloc["down"] == pytest.approx(0.8 * 0.25 / 0.3)
    assert alloc["q"] == pytest.approx(0.2 * 0.25 / 0.3)
    assert greedy.allocation_at(path, 0.0) == dict.fromkeys(PROJECTIONS, 0.0)
    with pytest.raises(ValueError, match="below the target 0.5"):
        greedy.allocation_at(path, 0.5)


def test_vllm_tables_from_recorded_inputs():
    """calibrate_vllm's worker side, on a stand-in module tree with vLLM's names."""
    torch.manual_seed(0)

    class Linear(torch.nn.Module):
        def __init__(self, sizes, k):
            super().__init__()
            self.weight = torch.nn.Parameter(torch.randn(sum(sizes), k) * torch.rand(1, k))
            self.output_partition_sizes = sizes
            self._wina_rows = [torch.randn(40, k), torch.randn(24, k)]
            self._wina_hook = self.register_forward_pre_hook(lambda m, a: None)

    model = torch.nn.Module()
    shapes = {"self_attn.qkv_proj": ([32, 16, 16], 32), "self_attn.o_proj": ([32], 32),
              "mlp.gate_up_proj": ([48, 48], 32), "mlp.down_proj": ([32], 48)}
    for name, (sizes, k) in shapes.items():
        model.register_module(f"model.layers.0.{name}".replace(".", "_"), None)
    layer = torch.nn.Module()
    attn, mlp = torch.nn.Module(), torch.nn.Module()
    attn.qkv_proj, attn.o_proj = Linear(*shapes["self_attn.qkv_proj"]), Linear(*shapes["self_attn.o_proj"])
    mlp.gate_up_proj, mlp.down_proj = Linear(*shapes["mlp.gate_up_proj"]), Linear(*shapes["mlp.down_proj"])
    layer.self_attn, layer.mlp = attn, mlp
    model.model = torch.nn.Module()
    model.model.layers = torch.nn.ModuleList([layer])
    rows = {"q": attn.qkv_proj, "o": attn.o_proj, "gate": mlp.gate_up_proj, "down": mlp.down_proj}
    x_of = {p: torch.cat(m._wina_rows) for p, m in rows.items()}
    out = _tables_from_inputs(model, ["wina", "teal"], [0.5])
    thr = out["tables"]["wina:0.5"]
    q_norms = gate.column_scales(attn.qkv_proj.weight.data, [32, 16, 16], "wina")[0]
    want = torch.quantile((x_of["q"].abs() * q_norms).flatten().double(), 0.5)
    assert float(thr[0, 0]) == pytest.approx(float(want), rel=1e-6)
    assert float(out["tables"]["teal:0.5"][0, 6]) == pytest.approx(
        float(torch.quantile(x_of["down"].abs().flatten().double(), 0.5)), rel=1e-6)
    assert out["norm_mean"][0, 3] == pytest.approx(float(attn.o_proj.weight.norm(dim=0).mean()))
    assert not hasattr(attn.qkv_proj, "_wina_rows")


def test_hf_module_names_cover_every_projection():
    assert sorted(HF_MODULES) == sorted(PROJECTIONS)


@pytest.mark.parametrize("arch", ["llama", "gemma3-mm"])
def test_calibrate_greedy_writes_a_file_at_the_target(tiny_models, tmp_path, arch):
    """Also a vision-language model, whose language model's layers are calibrated."""
    path = tmp_path / "greedy.safetensors"
    cal = calibrate(str(tiny_models[arch]), path, 0.4, "wina", greedy=True,
                    text=stdlib_prose(60_000), window=128, windows=4)
    loaded = cf.load(path)
    assert loaded.greedy and torch.equal(loaded.sparsity, cal.sparsity)
    model, _ = load_hf_model(str(tiny_models[arch]))
    layers = hf_decoder_layers(model)
    assert cal.sparsity.shape[0] == len(layers) == 2
    params = torch.tensor([[layers[i].get_submodule(HF_MODULES[p]).weight.numel()
                            for p in PROJECTIONS] for i in range(cal.sparsity.shape[0])],
                          dtype=torch.float64)
    per_layer = (cal.sparsity.double() * params).sum(1) / params.sum(1)
    assert torch.allclose(per_layer, torch.full_like(per_layer, 0.4), atol=1e-6)
    assert loaded.greedy_blend == cal.greedy_blend and cal.greedy_blend in greedy.BLENDS
    # What the blend keeps of the greedy allocation spreads the sparsity unevenly.
    assert (cal.sparsity.std() > 1e-3) == (cal.greedy_blend > 0), (cal.greedy_blend, cal.sparsity)
