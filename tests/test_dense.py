"""The op's dense path: its forms compute the same product; the tuner's choice rule."""

from __future__ import annotations

import pytest
import torch

from conftest import requires_vllm

from wina_vllm import dense, kernels
from wina_vllm.packing import pack_linear


@pytest.mark.parametrize("segments", [(48,), (32, 16, 16), (20, 28)])
@pytest.mark.parametrize("with_bias", [False, True])
def test_every_form_computes_the_plain_product(segments, with_bias):
    torch.manual_seed(len(segments))
    k = 24
    weight = torch.randn(sum(segments), k, dtype=torch.float64)
    packed = pack_linear(weight, segments, "wina")
    bias = torch.randn(sum(segments), dtype=torch.float64) if with_bias else None
    x = torch.randn(7, k, dtype=torch.float64)
    want = x @ weight.T + (bias if with_bias else 0)
    for name, form in dense.FORMS.items():
        got = form(x, packed.weight_t, bias, packed.seg_ends)
        assert got.shape == want.shape, name
        torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12, msg=name)


def test_pick_takes_a_form_only_when_it_wins_by_the_margin():
    assert dense.pick({"mm": 100.0, "lt": 99.0, "segments": 64.0}) == "segments"
    assert dense.pick({"mm": 100.0, "lt": 94.0}) == "lt"
    assert dense.pick({"mm": 100.0, "lt": 96.0}) == "mm"  # inside the 5% margin: noise
    assert dense.pick({"mm": 100.0, "lt": 120.0, "segments": 101.0}) == "mm"
    assert dense.pick({"mm": 100.0, "lt": 98.0}, margin=0.01) == "lt"


def test_cpu_ignores_tuning_and_uses_the_plain_product(monkeypatch):
    packed = pack_linear(torch.randn(16, 8), [8, 8], "wina")
    x = torch.randn(5, 8)
    assert dense.tune(packed.weight_t, None, packed.seg_ends, [5]) == {}
    key = (8, tuple(packed.seg_ends), 5, x.dtype, False)
    assert key not in dense._choice, "nothing is timed on the CPU"
    monkeypatch.setitem(dense._choice, key, "segments")
    calls = []
    monkeypatch.setitem(dense.FORMS, "segments", lambda *a: calls.append(a))
    assert torch.equal(dense.dense_linear(x, packed.weight_t, None, packed.seg_ends),
                       x @ packed.weight_t[:, :16])
    assert not calls


@requires_vllm
@pytest.mark.parametrize("prefill,budget,want", [("dense", 2048, [4, 8, 16, 2048]),
                                                 ("dense", 65536, [4, 8, 16]),
                                                 ("sparse", 2048, None)])
def test_layers_tune_at_the_dense_graph_sizes_and_the_prefill_budget(monkeypatch, prefill,
                                                                     budget, want):
    from types import SimpleNamespace

    from wina_vllm import linear
    from wina_vllm.layers import TargetLinear
    from wina_vllm.settings import parse_settings

    seen = {}
    monkeypatch.setattr(linear, "cudagraph_token_counts", lambda: [1, 2, 4, 8, 16])
    monkeypatch.setattr(linear, "max_batched_tokens", lambda: budget)
    monkeypatch.setattr(linear.dense, "tune",
                        lambda wt, bias, seg_ends, counts: seen.update(counts=list(counts)) or {})
    settings = parse_settings({"max_sparse_batch": 2, "prefill": prefill})
    method = linear.WinaLinearMethod(SimpleNamespace(settings=settings),
                                     TargetLinear(0, "gate_up_proj", ("gate", "up")), [0.5])
    packed = SimpleNamespace(weight_t=SimpleNamespace(is_cuda=True, shape=(8, 16)),
                             seg_ends=[8, 16], n=16)
    method._tune_dense_path(torch.nn.Module(), packed)
    # Sparse prefill never runs the dense product; a budget past MAX_TUNED_TOKENS is not tuned.
    assert seen.get("counts") == want


@requires_vllm
@pytest.mark.parametrize("tp_rank,skip,want", [(0, False, True), (1, False, False),
                                               (0, True, False)])
def test_tuning_keys_on_the_bias_apply_will_get(monkeypatch, tp_rank, skip, want):
    """Row-parallel layers pass their bias on TP rank 0 only (vLLM), none with skip_bias_add."""
    from types import SimpleNamespace

    from wina_vllm import linear
    from wina_vllm.layers import TargetLinear
    from wina_vllm.settings import parse_settings

    seen = {}
    monkeypatch.setattr(linear, "cudagraph_token_counts", lambda: [16])
    monkeypatch.setattr(linear.dense, "tune",
                        lambda wt, bias, seg_ends, counts: seen.update(bias=bias) or {})
    layer = linear.RowParallelLinear.__new__(linear.RowParallelLinear)
    torch.nn.Module.__init__(layer)
    layer.bias = torch.nn.Parameter(torch.zeros(16), requires_grad=False)
    layer.tp_rank, layer.skip_bias_add = tp_rank, skip
    method = linear.WinaLinearMethod(SimpleNamespace(settings=parse_settings({})),
                                     TargetLinear(0, "down_proj", ("down",)), [0.5])
    packed = SimpleNamespace(weight_t=SimpleNamespace(is_cuda=True, shape=(8, 16)),
                             seg_ends=[16], n=16)
    method._tune_dense_path(layer, packed)
    assert (seen["bias"] is not None) == want


cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


@cuda
@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("tokens", [16, 100])
def test_every_cublaslt_algorithm_computes_the_product(dtype, tokens):
    """Each listed algorithm on a padded layer (ldw > N: only N columns are used)."""
    torch.manual_seed(tokens)
    segments = [200, 60, 60]  # N = 320, stored rows padded to a multiple of 8 as packed
    packed = pack_linear(torch.randn(sum(segments), 512, dtype=dtype, device="cuda") / 512**0.5,
                         segments, "wina")
    wt = torch.nn.functional.pad(packed.weight_t, (0, 8)).contiguous()  # ldw = N + 8
    x = torch.randn(tokens, 512, dtype=dtype, device="cuda")
    want = (x.double() @ wt[:, :320].double())
    count = kernels.lt_algos(x, wt, 320)
    assert count >= 1
    for algo in range(count):
        got = kernels.lt_matmul(x, wt, 320, algo)
        assert got.shape == (tokens, 320)
        err = (got.double() - want).abs().max() / want.abs().max()
        assert err <= 1e-2, (algo, float(err))


@cuda
@pytest.mark.gpu
def test_tuned_algorithm_runs_and_misaligned_inputs_fall_back(monkeypatch):
    packed = pack_linear(torch.randn(256, 128, dtype=torch.bfloat16, device="cuda"), [256], "wina")
    x = torch.randn(33, 128, dtype=torch.bfloat16, device="cuda")
    key = (128, tuple(packed.seg_ends), 33, torch.bfloat16, False)
    monkeypatch.setitem(dense._choice, key, f"{dense.ALGO}0")
    calls = []
    real = kernels.lt_matmul
    monkeypatch.setattr(kernels, "lt_matmul", lambda *a: calls.append(a) or real(*a))
    want = x.float() @ packed.weight_t[:, :256].float()
    got = dense.dense_linear(x, packed.weight_t, None, packed.seg_ends)
    assert len(calls) == 1 and (got.float() - want).abs().max() <= 0.02 * want.abs().max()
    # A view 2 bytes into a buffer is not 16-byte aligned: the plain product runs instead.
    buf = torch.randn(33 * 128 + 1, dtype=torch.bfloat16, device="cuda")
    shifted = buf[1:].view(33, 128)
    got = dense.dense_linear(shifted, packed.weight_t, None, packed.seg_ends)
    assert len(calls) == 1
    torch.testing.assert_close(got, shifted @ packed.weight_t[:, :256])


def test_tuner_rotates_over_copies_that_exceed_l2(monkeypatch):
    """Small weights get temporary copies up to ROTATE_BYTES; large ones none."""
    monkeypatch.setattr(dense, "ROTATE_BYTES", 4096)
    small = torch.randn(8, 16)  # 512 bytes: 8 tensors make 4096
    copies = dense._copies(small)
    assert len(copies) == 8 and copies[0] is small
    assert all(torch.equal(c, small) and c.data_ptr() != small.data_ptr() for c in copies[1:])
    big = torch.randn(64, 32)  # 8192 bytes
    only = dense._copies(big)
    assert len(only) == 1 and only[0] is big
    monkeypatch.setattr(dense, "MAX_COPIES", 5)
    assert len(dense._copies(small)) == 5  # capped


def test_a_timing_burst_holds_a_bounded_amount_of_output():
    assert dense.burst_size(4096, 2048) == 4096  # decode-sized outputs: one call per copy
    assert dense.burst_size(4096, 4 << 20) == 256  # 16384 tokens of a tiny layer: 1 GB
    assert dense.burst_size(2, 1024) == 8  # large weights: few copies, still 8 calls
    assert dense.burst_size(1, 940 << 20) == 8  # gate_up of Llama-3-8B at 16384 tokens


@pytest.mark.skipif(not torch.cuda.is_available(), reason="the tuner times CUDA weights only")
def test_a_failed_timing_keeps_the_plain_product_instead_of_failing_the_load(monkeypatch):
    def fail(*args, **kwargs):
        raise RuntimeError("CUDA error: operation not permitted when stream is capturing")

    monkeypatch.setattr(dense, "_time_us", fail)
    monkeypatch.setattr(dense, "_choice", {})
    wt = torch.randn(64, 48, dtype=torch.bfloat16, device="cuda")
    assert dense.tune(wt, None, [48], [16, 32]) == {}
    x = torch.randn(16, 64, dtype=torch.bfloat16, device="cuda")
    assert dense._choice[dense._key(16, wt, None, [48])] == "mm"
    torch.testing.assert_close(dense.dense_linear(x, wt, None, [48]), x @ wt)


@requires_vllm
@pytest.mark.parametrize("native", [True, False])
@pytest.mark.parametrize("shape", [(3, 8), (2, 3, 8)])
def test_apply_calls_the_op_chosen_at_load(monkeypatch, native, shape):
    """Layers the kernels cover call wina_C.linear (with the PDL switch), the rest the
    Python-dispatched op (with the sparse-prefill flag); a 3-D input comes back 3-D."""
    from types import SimpleNamespace

    from wina_vllm import kernels, linear, ops
    from wina_vllm.layers import TargetLinear
    from wina_vllm.settings import parse_settings

    calls = []

    def native(x, w, b, scale, thr, seg_ends, keep, topk, msb, pdl):
        calls.append(("native", pdl))
        return ops.sparse_linear(x, w, b, scale, thr, layer.wina_stats, layer.wina_workspace,
                                 seg_ends, keep, topk, msb, False)

    monkeypatch.setattr(kernels, "linear", native)
    method = linear.WinaLinearMethod(
        SimpleNamespace(settings=parse_settings({"max_sparse_batch": 2})),
        TargetLinear(0, "gate_up_proj", ("gate", "up")), [0.5, 0.5])
    packed = pack_linear(torch.randn(16, 8), [8, 8], "wina")
    layer = torch.nn.Module()
    layer.weight = torch.nn.Parameter(packed.weight_t, requires_grad=False)
    layer.wina_scale, layer.wina_thresholds = packed.scale, torch.zeros(2)
    layer.wina_stats, layer.wina_workspace = packed.stats, packed.workspace
    layer.wina_seg_ends, layer.wina_keep = packed.seg_ends, [4, 4]
    layer.wina_native, layer.wina_pdl = native, True
    x = torch.randn(*shape)
    y = method.apply(layer, x)
    assert y.shape == (*shape[:-1], 16)
    torch.testing.assert_close(y.reshape(-1, 16), x.reshape(-1, 8) @ packed.weight_t[:, :16])
    assert calls == ([("native", True)] if native else [])
