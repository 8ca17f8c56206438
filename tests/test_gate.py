"""Gate math and the op's CPU reference: top-k sets, thresholds, sparsity 0, TP shards."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from wina_vllm import dense, gate, ops
from wina_vllm.packing import pack_linear

SEEDS = [0, 1, 2]
SHAPES = [(576, (576, 192, 192)), (1536, (576,)), (100, (36, 20, 20)), (257, (100,))]


def _call(x, packed, thresholds, keep, topk, bias=None, max_sparse_batch=8, sparse_prefill=False):
    return ops.sparse_linear(x, packed.weight_t, bias, packed.scale, thresholds, packed.stats,
                             packed.workspace, packed.seg_ends, keep, topk, max_sparse_batch,
                             sparse_prefill)


def _brute_force_topk_mask(x, weight, segments, criterion, keep):
    """Sort every token's scores by hand; keep the `keep` largest channels."""
    m, k = x.shape
    mask = torch.zeros(m, len(segments), k, dtype=torch.bool)
    for s, w in enumerate(torch.split(weight, list(segments))):
        col = w.double().norm(dim=0) if criterion == "wina" else torch.ones(k, dtype=torch.float64)
        for t in range(m):
            score = x[t].abs().double() * col
            order = sorted(range(k), key=lambda i: -float(score[i]))
            mask[t, s, order[:keep[s]]] = True
    return mask


@pytest.mark.parametrize("criterion", ["wina", "teal"])
@pytest.mark.parametrize("seed", SEEDS)
def test_kept_set_is_brute_force_topk(seed, criterion):
    torch.manual_seed(seed)
    k, segments = 96, (40, 24)
    weight = torch.randn(sum(segments), k) * torch.rand(1, k) * 3  # uneven column norms
    x = torch.randn(5, k)
    keep = gate.keep_counts(k, [0.5, 0.7])
    packed = pack_linear(weight, segments, criterion)
    score = gate.scores(x, packed.scale)
    mask = gate.gate_mask(score, gate.topk_thresholds(score, keep))
    assert torch.equal(mask, _brute_force_topk_mask(x, weight, segments, criterion, keep))
    assert mask.sum(-1).tolist() == [keep] * 5


def test_wina_k_gate_uses_column_norms_on_k_and_gate_only():
    """The WINA authors' released code: k's norms gate the attention input, gate's the MLP
    input; q, v, o, up and down score by |x| as TEAL does."""
    torch.manual_seed(0)
    k = 64
    qkv = torch.randn(3 * 32, k) * torch.linspace(0.1, 3, k)
    packed = pack_linear(qkv, [32, 32, 32], "wina-k-gate", projections=("q", "k", "v"))
    norms = pack_linear(qkv, [32, 32, 32], "wina").scale
    torch.testing.assert_close(packed.scale[1], norms[1])
    assert torch.equal(packed.scale[0], torch.ones(k)) and torch.equal(packed.scale[2],
                                                                      torch.ones(k))
    gate_up = pack_linear(qkv[:64], [32, 32], "wina-k-gate", projections=("gate", "up"))
    assert not torch.equal(gate_up.scale[0], torch.ones(k))
    assert torch.equal(gate_up.scale[1], torch.ones(k))
    down = pack_linear(qkv[:32], [32], "wina-k-gate", projections=("down",))
    assert torch.equal(down.scale, torch.ones(1, k))
    with pytest.raises(ValueError, match="name the projection"):
        pack_linear(qkv, [32, 32, 32], "wina-k-gate")


@pytest.mark.parametrize("criterion,normed", [("wina", "q k v o gate up down"),
                                              ("wina-k-gate", "k gate"), ("teal", "")])
def test_criterion_scale_is_the_norms_exactly_where_the_criterion_uses_them(criterion, normed):
    norms = torch.rand(16) + 0.5
    for projection in ("q", "k", "v", "o", "gate", "up", "down"):
        want = norms if projection in normed.split() else torch.ones(16)
        assert torch.equal(gate.criterion_scale(norms, criterion, projection), want)


def test_wina_and_teal_differ_when_column_norms_vary():
    torch.manual_seed(0)
    k = 128
    weight = torch.randn(64, k) * torch.linspace(0.1, 3, k)
    x = torch.randn(1, k)
    masks = {}
    for criterion in ("wina", "teal"):
        p = pack_linear(weight, [64], criterion)
        score = gate.scores(x, p.scale)
        masks[criterion] = gate.gate_mask(score, gate.topk_thresholds(score, [64]))
    assert not torch.equal(masks["wina"], masks["teal"])


@pytest.mark.parametrize("k,segments", SHAPES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_sparsity_zero_is_the_dense_product(k, segments, dtype):
    torch.manual_seed(k)
    weight = torch.randn(sum(segments), k, dtype=dtype)
    packed = pack_linear(weight, segments, "wina")
    x = torch.randn(4, k, dtype=dtype)
    bias = torch.randn(sum(segments), dtype=dtype)
    out = _call(x, packed, torch.zeros(len(segments)), [k] * len(segments), True, bias)
    # Every channel kept but exact zeros, which add nothing (bf16 draws have a few).
    assert packed.stats[:, 0].tolist() == [int((x != 0).sum())] * len(segments)
    assert packed.stats[:, 1].tolist() == [4 * k] * len(segments)
    if len(segments) == 1:  # one segment: the very same product as the dense path
        assert torch.equal(out, dense.dense_linear(x, packed.weight_t, bias, packed.seg_ends))
    torch.testing.assert_close(out, F.linear(x, weight, bias),
                               **({"rtol": 1e-5, "atol": 1e-4} if dtype == torch.float32 else
                                  {"rtol": 1.6e-2, "atol": 1e-1}))  # summation order only


def test_masked_product_matches_float64():
    torch.manual_seed(3)
    k, segments = 257, (100, 13)
    weight = torch.randn(sum(segments), k)
    packed = pack_linear(weight, segments, "wina")
    x = torch.randn(6, k)
    keep = gate.keep_counts(k, [0.5, 0.25])
    out = _call(x, packed, torch.zeros(2), keep, True)
    score = gate.scores(x, packed.scale)
    mask = gate.gate_mask(score, gate.topk_thresholds(score, keep))
    start = 0
    for s, end in enumerate(packed.seg_ends):
        ref = (x.double() * mask[:, s]) @ weight[start:end].double().t()
        torch.testing.assert_close(out[:, start:end].double(), ref, rtol=1e-5, atol=1e-4)
        start = end
    assert packed.stats[:, 0].tolist() == [6 * keep[0], 6 * keep[1]]


def test_threshold_mode_uses_the_given_thresholds():
    torch.manual_seed(4)
    k = 64
    weight = torch.randn(32, k)
    packed = pack_linear(weight, [32], "teal")
    x = torch.randn(3, k)
    thr = torch.tensor([0.8])
    _call(x, packed, thr, [0], False)
    assert packed.stats[0, 0] == int((x.abs() >= 0.8).sum())


@pytest.mark.parametrize("low", [0.0, -1.0, 1e-45, float("-inf")])
def test_no_threshold_keeps_a_zero_score(low):
    """The gate itself refuses zero scores, so a threshold from any source (a calibration
    file, a caller, a top-k of mostly zero scores) cannot make it read a zero channel;
    nonzero ones all pass. A NaN threshold keeps nothing, as in the kernel."""
    x = torch.tensor([[0.0, 1e-30, -2.0, 0.0], [0.0, 0.0, 0.0, 0.0]])
    score = gate.scores(x, torch.ones(1, 4))
    mask = gate.gate_mask(score, torch.tensor([low]))
    assert mask[:, 0].tolist() == [[False, True, True, False], [False] * 4]
    assert not gate.gate_mask(score, torch.tensor([float("nan")])).any()
    weight = torch.randn(8, 4)
    packed = pack_linear(weight, [8], "teal")
    _call(x, packed, torch.tensor([low]), [0], False)
    assert packed.stats[0].tolist() == [2, 8]


def test_large_batches_run_dense_unless_sparse_prefill():
    torch.manual_seed(5)
    k = 64
    packed = pack_linear(torch.randn(48, k), [48], "wina")
    x = torch.randn(9, k)
    keep = [k // 2]
    plain = _call(x, packed, torch.zeros(1), keep, True, max_sparse_batch=8)
    assert torch.equal(plain, dense.dense_linear(x, packed.weight_t, None, packed.seg_ends))
    assert packed.stats.sum() == 0
    sparse = _call(x, packed, torch.zeros(1), keep, True, max_sparse_batch=8, sparse_prefill=True)
    assert not torch.equal(sparse, plain)
    assert packed.stats[0].tolist() == [9 * keep[0], 9 * k]


# -- tensor parallelism, simulated: shards of one matrix, summed "all-reduce" --------------
def _column_parallel_norms(weight, segments, tp, criterion):
    """Each rank holds 1/tp of every segment's output rows; squares are all-reduced."""
    shards = [torch.cat([seg.chunk(tp)[r] for seg in torch.split(weight, list(segments))])
              for r in range(tp)]
    sizes = [s // tp for s in segments]
    partial = [gate.column_scales(w, sizes, "wina") ** 2 for w in shards]
    total = sum(partial)
    return shards, sizes, [gate.column_scales(w, sizes, criterion, lambda t: total.double())
                           for w in shards]


@pytest.mark.parametrize("tp", [2, 4])
def test_column_parallel_norms_equal_unsharded(tp):
    torch.manual_seed(tp)
    k, segments = 96, (64, 32, 32)
    weight = torch.randn(sum(segments), k) * torch.rand(1, k)
    full = gate.column_scales(weight, segments, "wina")
    shards, sizes, norms = _column_parallel_norms(weight, segments, tp, "wina")
    for n in norms:
        torch.testing.assert_close(n, full, rtol=1e-6, atol=0)
    # Same norms and the full input: every rank keeps the same channels as TP=1.
    x = torch.randn(3, k)
    keep = gate.keep_counts(k, [0.5] * 3)
    ref = pack_linear(weight, segments, "wina")
    ref_out = _call(x, ref, torch.zeros(3), keep, True)
    outs = []
    for w, n in zip(shards, norms):
        p = pack_linear(w, sizes, "wina")
        p.scale.copy_(n)
        outs.append(_call(x, p, torch.zeros(3), keep, True))
    # Reassemble q|k|v from the ranks' shards and compare to the unsharded output.
    per_seg = [torch.cat([o.split(sizes, dim=1)[s] for o in outs], dim=1) for s in range(3)]
    torch.testing.assert_close(torch.cat(per_seg, dim=1), ref_out, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("tp", [2, 4])
def test_row_parallel_threshold_mode_equals_unsharded(tp):
    """Row-parallel ranks hold whole columns: local norms are exact; outputs sum up."""
    torch.manual_seed(10 + tp)
    k, n = 128, 48
    weight = torch.randn(n, k) * torch.rand(1, k)
    x = torch.randn(4, k)
    ref = pack_linear(weight, [n], "wina")
    thr = torch.tensor([0.7])
    ref_out = _call(x, ref, thr, [0], False)
    total = torch.zeros_like(ref_out)
    kept = 0
    for w, xs, cols in zip(weight.chunk(tp, dim=1), x.chunk(tp, dim=1),
                           ref.norms[0].chunk(tp)):
        p = pack_linear(w, [n], "wina")
        torch.testing.assert_close(p.norms[0], cols, rtol=1e-6, atol=0)
        total += _call(xs.contiguous(), p, thr, [0], False)
        kept += int(p.stats[0, 0])
    torch.testing.assert_close(total, ref_out, rtol=1e-5, atol=1e-5)
    assert kept == int(ref.stats[0, 0])
