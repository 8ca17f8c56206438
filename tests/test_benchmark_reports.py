"""The benchmark scripts' report writers, on synthetic rows (the runs need a GPU)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def test_load_test_replot_draws_the_png_from_the_json(tmp_path):
    rows = [{"variant": v, "concurrency": c, "out_tok_s": 100.0 * c * (1.1 if v != "dense" else 1),
             "ttft_ms": 40.0 + c, "tpot_ms": 5.0} for v in ("dense", "wina") for c in (1, 4)]
    (tmp_path / "load_test.json").write_text(json.dumps(rows))
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks/load_test.py"), "--replot",
                           str(tmp_path)], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    png = (tmp_path / "load_test.png").read_bytes()
    assert png.startswith(b"\x89PNG") and len(png) > 10_000


def test_load_test_needs_settings_to_run():
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks/load_test.py")],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode != 0 and "--wina is required" in proc.stderr


def test_paired_ratio_tells_a_real_gap_from_window_noise():
    sys.path.insert(0, str(ROOT / "benchmarks"))
    from accuracy import paired_ratio

    base = [3.0 + 0.5 * (i % 7) for i in range(32)]  # windows differ far more than methods
    better = [v - 0.01 for v in base]  # lower on every window: exp(-0.01) = 0.990
    ratio, lo, hi, frac = paired_ratio(better, base)
    assert abs(ratio - 0.99005) < 1e-4 and hi < 1.0 and frac == 1.0
    noisy = [v + (0.02 if i % 2 else -0.018) for i, v in enumerate(base)]  # +0.001 on average
    ratio, lo, hi, frac = paired_ratio(noisy, base)
    assert lo < 1.0 < hi and frac == 0.5
    with pytest.raises(ValueError, match="32 and 31 windows"):
        paired_ratio(base, base[1:])


def test_op_overhead_times_calls_that_compute_the_same_product():
    """Every call op_overhead.py times computes x @ W^T on its shape (the C++ op's calls on
    CUDA too), so the timings compare like with like."""
    sys.path.insert(0, str(ROOT / "benchmarks"))
    import torch
    from op_overhead import calls

    outs = {name: fn() for name, fn in calls(torch.device("cpu")).items()}
    assert {"torch.mm", "F.linear"} <= set(outs) and len(outs) >= 3
    want = outs["torch.mm"]
    for name, out in outs.items():
        assert out.shape == want.shape and torch.allclose(out, want, atol=1e-4), name


def test_accuracy_windows_refuse_more_than_the_text_holds():
    """Windows past the end of the text would be short or empty and skew the perplexity."""
    sys.path.insert(0, str(ROOT / "benchmarks"))
    import torch
    from accuracy import windows

    class Tok:  # one token per character
        def __call__(self, text, add_special_tokens, return_tensors):
            return type("Enc", (), {"input_ids": torch.tensor([[ord(c) for c in text]])})

    assert [w.tolist() for w in windows(Tok(), "abcdefgh", 2, 4)] == [
        [97, 98, 99, 100], [101, 102, 103, 104]]
    with pytest.raises(ValueError, match="room for at most 2"):
        windows(Tok(), "abcdefgh", 3, 4)


def _kernel_points(times: list[float]) -> dict:
    return {"points": [{"layer": "llama3-8b/o", "M": 1, "sparsity": s, "dense_us": 12.0,
                        "wina_threshold_us": t, "wina_topk_us": 2 * t}
                       for s, t in zip((0.0, 0.5), times)]}


def test_kernel_ab_tables_medians_per_tree_and_ratio_to_the_first(tmp_path):
    runs = {"main-1": [12.0, 8.0], "main-2": [12.4, 8.6], "main-3": [11.8, 8.2],
            "exp-1": [12.0, 7.0], "exp-2": [13.0, 7.2], "exp-3": [12.2, 9.9]}
    for name, times in runs.items():
        (tmp_path / name).mkdir()
        (tmp_path / name / "kernel_bench.json").write_text(json.dumps(_kernel_points(times)))
    (tmp_path / "trees.json").write_text(json.dumps(["main", "exp"]))
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks/kernel_ab.py"), "--compare",
                           str(tmp_path)], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    rows = [ln.split("|")[1:-1] for ln in proc.stdout.splitlines()[2:]]
    assert [[c.strip() for c in r] for r in rows] == [
        ["o", "1", "0.00", "12.00", "12.00", "12.20", f"{12.2 / 12.0:.3f}"],
        ["o", "1", "0.50", "12.00", "8.20", "7.20", f"{7.2 / 8.2:.3f}"]]
    topk = subprocess.run([sys.executable, str(ROOT / "benchmarks/kernel_ab.py"), "--compare",
                           str(tmp_path), "--mode", "topk"], capture_output=True, text=True,
                          timeout=120)
    assert topk.returncode == 0, topk.stderr
    rows = [ln.split("|")[1:-1] for ln in topk.stdout.splitlines()[2:]]
    assert [c.strip() for c in rows[1]] == ["o", "1", "0.50", "12.00", "16.40", "14.40",
                                            f"{14.4 / 16.4:.3f}"]


def test_kernel_ab_refuses_a_tree_without_the_package(tmp_path):
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks/kernel_ab.py"), "--out",
                           str(tmp_path / "o"), "main=.", f"exp={tmp_path}"],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode != 0 and "exp=" in proc.stderr and "wina_vllm" in proc.stderr


def test_pdl_race_refuses_a_tree_without_the_package_and_no_repeats(tmp_path):
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks/select_probe/pdl_race.py"),
                           str(tmp_path)], capture_output=True, text=True, timeout=120)
    assert proc.returncode != 0 and str(tmp_path) in proc.stderr and "wina_vllm" in proc.stderr
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks/select_probe/pdl_race.py"),
                           "--repeats", "0", str(ROOT)], capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode != 0 and "--repeats 0" in proc.stderr


def test_transform_error_gating_error_matches_hand_computed_cases():
    sys.path.insert(0, str(ROOT / "benchmarks"))
    import torch
    from transform_error import gating_error

    x = torch.tensor([[3.0, -1.0, 0.5, 2.0]], dtype=torch.float64)
    # Orthogonal columns of equal norm: the error is the dropped share of |x|, and the
    # kept energy that of the two largest |x_i| (3 and 2).
    err, energy = gating_error(x, 2 * torch.eye(4, dtype=torch.float64), 0.5,
                               torch.ones(4, dtype=torch.float64))
    total = 9 + 1 + 0.25 + 4
    assert abs(energy - 13 / total) < 1e-12 and abs(err - (1.25 / total) ** 0.5) < 1e-12
    # One column 10x longer: |x| alone drops its channel, |x| * norm keeps it, and the
    # output error falls accordingly.
    w = torch.eye(4, dtype=torch.float64)
    w[2, 2] = 10.0
    teal, _ = gating_error(x, w, 0.5, torch.ones(4, dtype=torch.float64))
    wina, _ = gating_error(x, w, 0.5, w.norm(dim=0))
    assert wina < 0.5 * teal


def test_kernel_ab_refuses_zero_rounds(tmp_path):
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks/kernel_ab.py"), "--out",
                           str(tmp_path / "o"), "--rounds", "0", "main=.", "same=."],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode != 0 and "--rounds 0" in proc.stderr
    assert not (tmp_path / "o").exists()  # refused before anything is built or written


def test_random_lora_adapter_matches_the_model_and_the_table_marks_it(tmp_path):
    from safetensors import safe_open

    from wina_vllm.evaluate import format_table
    from wina_vllm.tiny_model import write_random_lora

    (tmp_path / "config.json").write_text(json.dumps({
        "hidden_size": 64, "intermediate_size": 96, "num_attention_heads": 4,
        "num_key_value_heads": 2, "num_hidden_layers": 3}))  # head_dim from hidden / heads
    out = write_random_lora(tmp_path, tmp_path / "adapter", rank=4, dtype="bfloat16")
    config = json.loads((out / "adapter_config.json").read_text())
    assert config["r"] == 4 and len(config["target_modules"]) == 7
    with safe_open(str(out / "adapter_model.safetensors"), "pt") as f:
        keys = list(f.keys())
        assert len(keys) == 3 * 7 * 2
        k_b = f.get_tensor("base_model.model.model.layers.2.self_attn.k_proj.lora_B.weight")
        down_a = f.get_tensor("base_model.model.model.layers.0.mlp.down_proj.lora_A.weight")
    assert tuple(k_b.shape) == (2 * 16, 4) and str(k_b.dtype) == "torch.bfloat16"
    assert tuple(down_a.shape) == (4, 96)
    speed = [{"batch": 1, "decode_tok_s": 100.0, "ms_per_step": 10.0}]
    table = format_table([{"variant": {"name": "dense", "wina": None}, "speed": speed},
                          {"variant": {"name": "wina-topk-0.5", "wina": {}}, "speed": speed,
                           "lora": str(out), "realized_sparsity": 0.5}])
    assert "| dense | 1 |" in table and "| wina-topk-0.5 + LoRA | 1 | 100.0 | 1.00x |" in table


def test_transform_error_counts_the_sublayers_a_transform_gains_on():
    sys.path.insert(0, str(ROOT / "benchmarks"))
    from transform_error import sublayers_gained

    def rows(errs: dict[str, dict[str, float]]) -> dict:
        return {f"{c}-0.5": {"per_projection": e} for c, e in errs.items()}

    ones = {f"{i}.{p}": 1.0 for i in range(2) for p in ("q", "k", "v", "o", "gate", "up", "down")}
    plain = rows({"teal": ones, "wina": {**ones, "0.q": 0.7}})  # layer 0 attention: 2.7
    better = {**ones, "0.q": 0.6, "1.gate": 0.5}  # layer 0 attention 2.6, layer 1 MLP 1.5
    transformed = rows({"teal": ones, "wina": better})
    assert sublayers_gained(plain, transformed, 0.5) == {"attention": 1, "mlp": 1}
    worse = rows({"teal": ones, "wina": {**ones, "0.q": 0.8}})  # 2.8 > plain WINA's 2.7
    assert sublayers_gained(plain, worse, 0.5) == {"attention": 0, "mlp": 0}


def test_batch_union_counts_rows_any_token_of_a_step_keeps():
    sys.path.insert(0, str(ROOT / "benchmarks"))
    import torch
    from batch_union import kept_masks, union_fraction

    # Every token alike: a step of any size reads the one token's half of the rows.
    same = torch.arange(8.0).repeat(3, 4, 1)  # [windows, tokens, K]
    mask = kept_masks(same, torch.ones(5, 8), "teal", "o", 0.5)
    assert mask[0, 0].tolist() == [False] * 4 + [True] * 4
    gen = torch.Generator().manual_seed(0)
    assert union_fraction(mask, 2, "requests", 10, gen) == 0.5
    assert union_fraction(mask, 4, "consecutive", 10, gen) == 0.5
    # Windows with disjoint halves: one token from each of two windows reads every row,
    # two consecutive tokens of one window read half.
    split = torch.zeros(2, 4, 8, dtype=torch.bool)
    split[0, :, :4] = True
    split[1, :, 4:] = True
    assert union_fraction(split, 2, "requests", 10, gen) == 1.0
    assert union_fraction(split, 2, "consecutive", 10, gen) == 0.5
    # The WINA criterion ranks by |x| times the column norm: a long column wins a tie.
    w = torch.ones(5, 8)
    w[:, 0] = 10.0
    flat = torch.ones(1, 1, 8)
    assert kept_masks(flat, w, "wina", "o", 0.875)[0, 0].tolist() == [True] + [False] * 7


@pytest.mark.skipif(__import__("shutil").which("nvcc") is None, reason="needs nvcc")
def test_small_steps_keep_four_blocks_per_sm():
    """ptxas, no GPU: the sparse GEMV for 1 and 2 tokens fits 64 registers, so four
    256-thread blocks share an SM. A counting change that took M = 2 to 74 registers ran
    o_proj 12% slower on the H200 (RESULTS.md, section 2)."""
    sys.path.insert(0, str(ROOT / "benchmarks"))
    from ptxas_registers import registers

    for source in ("kernels_bf16.cu", "kernels_fp16.cu"):
        found = registers(source, "sm_90")
        assert {f"sparse_gemv M={m}" for m in range(1, 9)} | {"topk_thresholds"} <= set(found)
        assert all(spills == 0 for _, spills in found.values()), found
        assert found["sparse_gemv M=1"][0] <= 64 and found["sparse_gemv M=2"][0] <= 64, found


def test_decode_breakdown_sorts_kernels_by_name_and_sums_per_step():
    sys.path.insert(0, str(ROOT / "benchmarks"))
    from decode_breakdown import breakdown, category

    names = {
        "void wina::sparse_gemv_kernel<__nv_bfloat16, 1>(wina::SparseGemvParams)": "wina gated linears",
        "void wina::topk_thresholds_kernel<__half>(...)": "wina gated linears",
        "void vllm::reshape_and_cache_flash_kernel<__nv_bfloat16>(...)": "kv-cache write",
        "void cutlass::device_kernel<flash::FlashAttnFwdSm90<...>>(...)": "attention",
        "nvjet_tst_64x8_64x16_4x1_v_bz_TNT": "matmul (cuBLAS)",
        "void gemv2T_kernel_val<int, int, __nv_bfloat16>(...)": "matmul (cuBLAS)",
        "void vllm::fused_add_rms_norm_kernel<c10::BFloat16, 8>(...)": "norms",
        "void vllm::rotary_embedding_kernel<c10::BFloat16, true>(...)": "rotary",
        "void vllm::act_and_mul_kernel<c10::BFloat16, &vllm::silu_kernel>(...)": "activation",
        "Memcpy DtoH (Device -> Pinned)": "copies",
        "void at::native::elementwise_kernel<128, 2>(...)": "other",
    }
    assert {n: category(n) for n in names} == names
    # Two steps: per step a 10 us gated linear, a 4 us norm, 6 us idle between them.
    records = [("sparse_gemv_kernel", 0.0, 10.0), ("rms_norm_kernel", 16.0, 20.0),
               ("sparse_gemv_kernel", 30.0, 40.0), ("rms_norm_kernel", 46.0, 50.0)]
    out = breakdown(records, steps=2)
    assert out["categories"]["wina gated linears"] == {"ms": 0.010, "kernels": 1.0}
    assert out["categories"]["norms"]["ms"] == pytest.approx(0.004)
    assert list(out["categories"]) == ["wina gated linears", "norms"]  # by time
    assert out["busy_ms"] == pytest.approx(0.014) and out["span_ms"] == pytest.approx(0.025)
    assert out["idle_ms"] == pytest.approx(0.011)
    with pytest.raises(ValueError, match="no GPU kernels"):
        breakdown([], steps=1)


def test_decode_breakdown_ceiling_keeps_what_sparsity_cannot_shrink():
    sys.path.insert(0, str(ROOT / "benchmarks"))
    from decode_breakdown import ceiling, layer_linear_bytes

    config = json.loads((ROOT / "benchmarks/models/llama3-8b/config.json").read_text())
    per_layer = 4096 * 6144 + 4096 * 4096 + 4096 * 2 * 14336 + 14336 * 4096
    assert layer_linear_bytes(config) == 2 * 32 * per_layer  # bf16, 32 layers
    cublas = "matmul (cuBLAS)"
    dense = {"step_ms": 5.0, "categories": {cublas: {"ms": 3.8}}}
    wina = {"step_ms": 3.5, "categories": {cublas: {"ms": 0.3}}}  # lm_head only
    c = ceiling(dense, wina, linear_bytes=14e9, sparsity=0.5, bandwidth=4e12)
    assert c["dense_linears_ms"] == pytest.approx(3.5) and c["rest_ms"] == pytest.approx(1.5)
    assert c["linears_bytes_bound_ms"] == pytest.approx(1.75)  # 7 GB at 4 TB/s
    assert c["bound_step_ms"] == pytest.approx(3.25)
    assert c["bound_speedup"] == pytest.approx(5.0 / 3.25)
    assert c["measured_speedup"] == pytest.approx(5.0 / 3.5)


def test_decode_breakdown_weighs_realized_sparsity_by_weight_bytes():
    sys.path.insert(0, str(ROOT / "benchmarks"))
    from decode_breakdown import weighted_sparsity

    config = json.loads((ROOT / "benchmarks/models/llama3-8b/config.json").read_text())
    assert weighted_sparsity(dict.fromkeys(["q", "k", "v", "o", "gate", "up", "down"], 0.5),
                             config) == pytest.approx(0.5)
    # Only the MLP sparse: its share of a layer's weight bytes.
    mlp = 3 * 4096 * 14336
    share = mlp / (4096 * 6144 + 4096 * 4096 + mlp)
    assert weighted_sparsity({"gate": 1.0, "up": 1.0, "down": 1.0}, config) == pytest.approx(share)


def test_decode_breakdown_tells_the_four_linears_apart_by_order():
    sys.path.insert(0, str(ROOT / "benchmarks"))
    from decode_breakdown import gated_by_linear

    # 2 steps x 3 layers x (qkv 10 us, o 8 us, gate_up 30 us, down 20 us), other kernels between.
    records, t = [], 0.0
    for _ in range(2 * 3):
        for us in (10.0, 8.0, 30.0, 20.0):
            records += [("void wina::sparse_gemv_kernel<__nv_bfloat16, 1>", t, t + us),
                        ("rms_norm_kernel", t + us, t + us + 2)]
            t += us + 5
    assert gated_by_linear(records, steps=2, layers=3) == {
        "qkv": 10.0, "o": 8.0, "gate_up": 30.0, "down": 20.0}
    assert gated_by_linear(records[2:], steps=2, layers=3) is None  # a layer ran dense
