"""``wina_C.linear`` (the whole gated linear in C++) against ``wina.sparse_linear`` (the
Python-dispatched op): the same kernels and dense forms, so the same outputs bit for bit,
the same realized-sparsity counts, and the same results from CUDA graphs and torch.compile.
Skipped without CUDA."""

from __future__ import annotations

import pytest
import torch

from wina_vllm import dense, gate, kernels, ops  # noqa: F401  (ops registers torch.ops.wina)
from wina_vllm.packing import pack_linear

cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
MAX_SPARSE = 2


def _layer(k: int, segments: tuple[int, ...], with_bias: bool, dtype=torch.bfloat16, seed=0):
    torch.manual_seed(seed)
    packed = pack_linear(torch.randn(sum(segments), k, dtype=dtype, device="cuda") / k**0.5,
                         segments, "wina")
    bias = torch.randn(sum(segments), dtype=dtype, device="cuda") if with_bias else None
    sample = torch.randn(16, k, dtype=dtype, device="cuda")
    thr = gate.scores(sample, packed.scale).float().median(dim=2).values.median(dim=0).values
    keep = gate.keep_counts(k, [0.5] * len(segments))
    kernels.register_layer(packed.weight_t, packed.stats, packed.workspace)
    return packed, bias, thr.contiguous(), keep


def _args(x, layer, topk):
    """The Python-dispatched op's arguments (it takes the counters)."""
    packed, bias, thr, keep = layer
    return (x, packed.weight_t, bias, packed.scale, thr, packed.stats, packed.workspace,
            packed.seg_ends, keep, topk, MAX_SPARSE)


def _native(x, layer, topk):
    """wina_C.linear's arguments (its counters are the registered ones)."""
    packed, bias, thr, keep = layer
    return (x, packed.weight_t, bias, packed.scale, thr, packed.seg_ends, keep, topk, MAX_SPARSE)


@cuda
@pytest.mark.gpu
@pytest.mark.parametrize("tokens", [1, 2, 3, 16, 100])
@pytest.mark.parametrize("topk", [False, True])
@pytest.mark.parametrize("with_bias", [False, True])
@pytest.mark.parametrize("k,segments", [(576, (576, 192, 192)), (1536, (576,)), (640, (100, 36, 36))])
def test_native_op_equals_the_python_op(tokens, topk, with_bias, k, segments):
    layer = _layer(k, segments, with_bias, seed=tokens)
    stats = layer[0].stats
    x = torch.randn(tokens, k, dtype=torch.bfloat16, device="cuda")
    before = stats.clone()
    want = torch.ops.wina.sparse_linear(*_args(x, layer, topk), False)
    counted = stats - before
    got = kernels.linear(*_native(x, layer, topk), True)
    assert got.shape == (tokens, sum(segments))
    assert torch.equal(got, want)
    assert torch.equal(stats - before, 2 * counted)  # counted again, the same (0 when dense)
    assert bool((counted[:, 1] > 0).all()) == (tokens <= MAX_SPARSE)


@cuda
@pytest.mark.gpu
@pytest.mark.parametrize("form,with_bias", [("lt", False), ("lt", True), ("segments", False),
                                            ("segments", True), ("algo0", False)])
def test_native_op_runs_the_tuned_dense_form(monkeypatch, form, with_bias):
    layer = _layer(512, (200, 60, 60), with_bias)
    packed, bias = layer[0], layer[1]
    tokens = 33
    x = torch.randn(tokens, 512, dtype=torch.bfloat16, device="cuda")
    key = (512, tuple(packed.seg_ends), tokens, torch.bfloat16, with_bias)
    monkeypatch.setitem(dense._choice, key, form)
    kernels.set_dense_form(packed.weight_t, packed.seg_ends, tokens, with_bias, form)
    try:
        want = dense.dense_linear(x, packed.weight_t, bias, packed.seg_ends)
        got = kernels.linear(*_native(x, layer, False), True)
    finally:
        kernels.set_dense_form(packed.weight_t, packed.seg_ends, tokens, with_bias, "mm")
    assert torch.equal(got, want)
    ref = x.double() @ packed.weight_t[:, :320].double() + (bias.double() if with_bias else 0)
    assert (got.double() - ref).abs().max() <= 1e-2 * ref.abs().max()


def test_set_dense_form_refuses_an_unknown_form():
    with pytest.raises(ValueError, match="form 'fast'"):
        kernels.set_dense_form(torch.empty(4, 8), [8], 16, False, "fast")


@cuda
@pytest.mark.gpu
@pytest.mark.parametrize("topk", [False, True])
def test_native_op_replays_in_cuda_graphs_and_compiles(topk):
    layer = _layer(576, (576, 192, 192), False)
    for tokens in (1, 2, 16):
        x = torch.randn(tokens, 576, dtype=torch.bfloat16, device="cuda")
        kernels.linear(*_native(x, layer, topk), True)  # warm-up outside the capture
        torch.cuda.synchronize()
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            out = kernels.linear(*_native(x, layer, topk), True)
        x.copy_(torch.randn_like(x))
        graph.replay()
        torch.testing.assert_close(out, kernels.linear(*_native(x, layer, topk), True),
                                   rtol=0, atol=0)

    compiled = torch.compile(lambda x: kernels.linear(*_native(x, layer, topk), True) + 1,
                             fullgraph=True, backend="aot_eager")
    x = torch.randn(2, 576, dtype=torch.bfloat16, device="cuda")
    torch.testing.assert_close(compiled(x), kernels.linear(*_native(x, layer, topk), True) + 1,
                               rtol=0, atol=0)


@cuda
@pytest.mark.gpu
@pytest.mark.parametrize("tokens", [1, 12])
def test_native_op_opcheck(tokens):
    layer = _layer(576, (576, 192, 192), True)
    x = torch.randn(tokens, 576, dtype=torch.bfloat16, device="cuda")
    kernels.load()
    torch.library.opcheck(torch.ops.wina_C.linear.default, _native(x, layer, True) + (True,),
                          test_utils=("test_schema", "test_faketensor", "test_aot_dispatch_static"))


@cuda
@pytest.mark.gpu
def test_native_op_runs_an_unregistered_weight_with_scratch_counters():
    """A copy of a layer's weight (nobody registered it) gives the same output and leaves
    the layer's counters alone."""
    layer = _layer(576, (576,), False)
    packed = layer[0]
    copy = packed.weight_t.clone()
    x = torch.randn(1, 576, dtype=torch.bfloat16, device="cuda")
    want = kernels.linear(*_native(x, layer, False), True)
    before = packed.stats.clone()
    got = kernels.linear(x, copy, *_native(x, layer, False)[2:], True)
    assert torch.equal(got, want)
    assert torch.equal(packed.stats, before)
