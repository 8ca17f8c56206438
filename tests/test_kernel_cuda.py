"""The CUDA op against float64 references: masks, outputs, stats, CUDA graphs.

Skipped without CUDA. Every case draws fresh random inputs, and outputs are
poisoned (NaN left in the allocator's block the op's output reuses) before calls.
"""

from __future__ import annotations

import zlib

import pytest
import torch

from wina_vllm import dense, gate, ops  # noqa: F401  (ops registers torch.ops.wina)
from wina_vllm.packing import pack_linear
from wina_vllm.shapes import all_shapes

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(),
                                                  reason="needs a CUDA GPU")]

SHAPES = all_shapes()
TOKENS = list(range(1, 9))
SPARSITIES = [0.0, 0.25, 0.5, 0.65, 0.9]
# bf16 operands with fp32 accumulation land between 1e-3 and 1e-2 (output rounding).
DTYPES = [(torch.bfloat16, 1e-2), (torch.float16, 5e-3)]


def _poison(m: int, n: int, dtype: torch.dtype) -> None:
    """Leave NaN in the allocator block an [m, n] output will reuse."""
    t = torch.full((m, n), float("nan"), dtype=dtype, device="cuda")
    del t


def _calibrated_thresholds(packed, k: int, sparsity: float, dtype) -> torch.Tensor:
    """Per-segment thresholds at the sparsity's quantile of scores of other random tokens."""
    sample = torch.randn(64, k, device="cuda", dtype=dtype)
    score = gate.scores(sample, packed.scale)  # [64, S, K]
    return torch.stack([torch.quantile(score[:, s].flatten()[:1 << 20].float(), sparsity)
                        for s in range(score.shape[1])]).float()


def _call(x, packed, bias, thresholds, keep, topk):
    return torch.ops.wina.sparse_linear(x, packed.weight_t, bias, packed.scale, thresholds,
                                        packed.stats, packed.workspace, packed.seg_ends, keep,
                                        topk, 8, False)


def _reference(x, weight, bias, mask, seg_ends):
    ref = torch.empty(x.shape[0], seg_ends[-1], dtype=torch.float64, device=x.device)
    start = 0
    for s, end in enumerate(seg_ends):
        xm = torch.where(mask[:, s], x, 0).double()
        ref[:, start:end] = xm @ weight[start:end].double().t()
        start = end
    return ref + bias.double() if bias is not None else ref


@pytest.mark.parametrize("sparsity", SPARSITIES)
@pytest.mark.parametrize("name,k,segments", SHAPES, ids=[s[0] for s in SHAPES])
def test_sparse_gemv_matches_float64(name, k, segments, sparsity):
    torch.manual_seed(zlib.crc32(f"{name}{sparsity}".encode()))
    for dtype, tol in DTYPES:
        n = sum(segments)
        weight = torch.randn(n, k, device="cuda", dtype=dtype) / k**0.5
        bias = torch.randn(n, device="cuda", dtype=dtype) if "qkv" in name else None
        packed = pack_linear(weight, segments, "wina")
        keep = gate.keep_counts(k, [sparsity] * len(segments))
        thresholds = _calibrated_thresholds(packed, k, sparsity, dtype)
        for m in TOKENS:
            for topk in (True, False):
                x = torch.randn(m, k, device="cuda", dtype=dtype)
                score = gate.scores(x, packed.scale)
                thr = gate.topk_thresholds(score, keep) if topk else thresholds
                mask = gate.gate_mask(score, thr)
                packed.stats.zero_()
                _poison(m, n, dtype)
                out = _call(x, packed, bias, thresholds, keep, topk)
                torch.cuda.synchronize()
                assert not out.isnan().any(), f"{name} m={m}: unwritten outputs"
                ref = _reference(x, weight, bias, mask, packed.seg_ends)
                err = ((out.double() - ref).norm() / ref.norm()).item()
                assert err <= tol, f"{name} {dtype} m={m} topk={topk}: rel err {err:.2e}"
                assert packed.stats[:, 0].tolist() == mask.sum(dim=(0, 2)).tolist()
                assert packed.stats[:, 1].tolist() == [m * k] * len(segments)
                assert not packed.workspace.any(), "arrival counters must return to zero"


@pytest.mark.parametrize("k", [576, 4096, 4100, 14336])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_kernel_mask_equals_cpu_reference(k, dtype):
    """With an identity weight the output is x * mask: the kernel's mask, exactly."""
    torch.manual_seed(k)
    packed = pack_linear(torch.eye(k, device="cuda", dtype=dtype), [k], "wina")
    packed.scale.copy_(torch.rand(1, k, device="cuda") + 0.5)  # non-trivial column scales
    for m in TOKENS:
        for sparsity in SPARSITIES:
            x = torch.randn(m, k, device="cuda", dtype=dtype)
            keep = gate.keep_counts(k, [sparsity])
            out = _call(x, packed, None, torch.zeros(1, device="cuda"), keep, True)
            score_cpu = gate.scores(x.cpu(), packed.scale.cpu())
            mask_cpu = gate.gate_mask(score_cpu, gate.topk_thresholds(score_cpu, keep))[:, 0]
            kernel_mask = out.cpu() != 0
            assert torch.equal(kernel_mask, mask_cpu & (x.cpu() != 0)), f"m={m} s={sparsity}"
            assert torch.equal(out.cpu(), torch.where(mask_cpu, x.cpu(), 0))


@pytest.mark.parametrize("pdl", [True, False])
def test_topk_thresholds_are_exact_kth_values(pdl):
    """Vector loads (K % 8 == 0, aligned, K <= 32768) and the scalar path (odd K, a
    misaligned x, very large K), with and without programmatic launch."""
    from wina_vllm import kernels
    torch.manual_seed(0)
    for k in (576, 4096, 4100, 14336, 28672, 40000):
        scale = torch.rand(3, k, device="cuda") + 0.1
        for m in TOKENS:
            x = torch.randn(m, k, device="cuda", dtype=torch.bfloat16)
            misaligned = torch.empty(m * k + 1, device="cuda", dtype=torch.bfloat16)[1:].view(m, k)
            misaligned.copy_(x)
            keep = [k // 2, k // 4, 1]
            want = gate.topk_thresholds(gate.scores(x, scale), keep)
            for xin in (x, misaligned):
                got = kernels.topk_thresholds(xin, scale, keep, pdl)
                assert torch.equal(got, want), f"k={k} m={m} aligned={xin is x}"
        # Heavy ties: 5 distinct scores, so the selected bins hold thousands of equal keys.
        ties = torch.randint(-2, 3, (2, k), device="cuda").to(torch.bfloat16)
        ones = torch.ones(3, k, device="cuda")
        got = kernels.topk_thresholds(ties, ones, keep, pdl)
        assert torch.equal(got, gate.topk_thresholds(gate.scores(ties, ones), keep)), f"k={k}"
        # Mostly zero inputs: the k-th score is 0 (the gate, not the threshold, drops zeros),
        # keep-all gives 0 and keep-none +inf, as in the reference.
        few = torch.where(torch.rand(2, k, device="cuda") < 0.1, ties, 0)
        want = gate.topk_thresholds(gate.scores(few, ones), [k // 2, k, 0])
        assert want.tolist() == [[0.0, 0.0, float("inf")]] * 2
        assert torch.equal(kernels.topk_thresholds(few, ones, [k // 2, k, 0], pdl), want)


def test_topk_takes_the_largest_k_that_fits_and_names_one_beyond():
    """The wrapper's shared-memory bound is the kernel's: exact at it, ValueError past it."""
    from wina_vllm import kernels
    optin = torch.cuda.get_device_properties(0).shared_memory_per_block_optin
    largest = (optin - kernels.SELECT_STATIC_SMEM) // 4
    for dtype in (torch.bfloat16, torch.float16):
        x = torch.randn(1, largest, device="cuda", dtype=dtype)
        scale = torch.rand(1, largest, device="cuda")
        got = kernels.topk_thresholds(x, scale, [largest // 3])
        assert torch.equal(got, gate.topk_thresholds(gate.scores(x, scale), [largest // 3]))
    x = torch.randn(1, largest + 8, device="cuda", dtype=torch.bfloat16)
    scale = torch.rand(1, largest + 8, device="cuda")
    beyond = f"topk_thresholds: K {largest + 8}; expected at most {largest} "
    with pytest.raises(ValueError, match=beyond):
        kernels.topk_thresholds(x, scale, [100])


@pytest.mark.parametrize("topk", [True, False])
def test_cuda_graph_replay(topk):
    torch.manual_seed(1)
    k, segments = 4096, (4096, 1024, 1024)
    weight = torch.randn(sum(segments), k, device="cuda", dtype=torch.bfloat16) / 64
    packed = pack_linear(weight, segments, "wina")
    keep = gate.keep_counts(k, [0.5] * 3)
    thresholds = _calibrated_thresholds(packed, k, 0.5, torch.bfloat16)
    for m in (1, 4, 8):
        static_x = torch.randn(m, k, device="cuda", dtype=torch.bfloat16)
        _call(static_x, packed, None, thresholds, keep, topk)  # warm up (and build)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            static_out = _call(static_x, packed, None, thresholds, keep, topk)
        for _ in range(3):
            static_x.copy_(torch.randn(m, k, device="cuda", dtype=torch.bfloat16))
            static_out.fill_(float("nan"))
            graph.replay()
            torch.cuda.synchronize()
            score = gate.scores(static_x, packed.scale)
            mask = gate.gate_mask(score, gate.topk_thresholds(score, keep) if topk else thresholds)
            ref = _reference(static_x, weight, None, mask, packed.seg_ends)
            err = ((static_out.double() - ref).norm() / ref.norm()).item()
            assert err <= 1e-2


@pytest.mark.parametrize("topk", [True, False])
def test_programmatic_launch_chain_in_graph_equals_plain_launches(topk):
    """Each call reads the previous call's output: with programmatic dependent launch the
    next kernel starts early, so a missing wait would read a half-written input."""
    from wina_vllm import kernels

    torch.manual_seed(4)
    k, depth = 4096, 6
    packs = [pack_linear(torch.randn(k, k, device="cuda", dtype=torch.bfloat16) / 64, [k], "wina")
             for _ in range(depth)]
    keep = gate.keep_counts(k, [0.5])
    thr = _calibrated_thresholds(packs[0], k, 0.5, torch.bfloat16)

    def chain(x, pdl):
        for p in packs:  # weights / 64 at 50%: the activations' scale stays about 1
            x = kernels.sparse_gemv(x, p.weight_t, None, p.scale, thr, p.stats, p.workspace,
                                    p.seg_ends, keep, topk, pdl=pdl)
        return x

    for m in (1, 2):
        static_x = torch.randn(m, k, device="cuda", dtype=torch.bfloat16)
        chain(static_x, True)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            static_out = chain(static_x, True)
        for _ in range(3):
            static_x.copy_(torch.randn(m, k, device="cuda", dtype=torch.bfloat16))
            static_out.fill_(float("nan"))
            graph.replay()
            want = chain(static_x.clone(), False)
            torch.cuda.synchronize()
            diff = (static_out.float() - want.float()).abs().nan_to_num(float("inf"))
            assert torch.equal(static_out, want), (
                f"m={m}: {int((diff > 0).sum())} of {want.numel()} outputs differ, "
                f"max {diff.max().item():.3g}")
            assert 0.3 < static_out.float().pow(2).mean().sqrt() < 3


def test_torch_compile_fullgraph():
    torch.manual_seed(2)
    k, segments = 1536, (576,)
    weight = torch.randn(576, k, device="cuda", dtype=torch.bfloat16) / 40
    packed = pack_linear(weight, segments, "teal")
    keep = gate.keep_counts(k, [0.5])
    thr = torch.zeros(1, device="cuda")

    @torch.compile(fullgraph=True)
    def f(x):
        return _call(x, packed, None, thr, keep, True) * 2

    x = torch.randn(3, k, device="cuda", dtype=torch.bfloat16)
    torch.testing.assert_close(f(x), 2 * _call(x, packed, None, thr, keep, True),
                               rtol=0, atol=0)  # same kernel, deterministic reduction


def test_large_batch_runs_dense_on_stored_layout():
    torch.manual_seed(3)
    k, n = 4096, 4096
    weight = torch.randn(n, k, device="cuda", dtype=torch.bfloat16) / 64
    packed = pack_linear(weight, [n], "wina")
    x = torch.randn(64, k, device="cuda", dtype=torch.bfloat16)
    out = _call(x, packed, None, torch.zeros(1, device="cuda"), [k // 2], True)
    torch.testing.assert_close(out, dense.dense_linear(x, packed.weight_t, None, packed.seg_ends),
                               rtol=0, atol=0)
    assert packed.stats.sum() == 0, "dense steps count no gated channels"


@pytest.mark.parametrize("bad,name", [
    (dict(scale=torch.float64), "col_scale"), (dict(k=32), "weight_t"), (dict(m=9), "token count"),
    (dict(workspace=1), "workspace"), (dict(seg_ends=[40]), "seg_ends"),
])
def test_bad_inputs_raise_value_errors(bad, name):
    from wina_vllm import kernels

    m, k = bad.get("m", 2), 64
    x = torch.randn(m, bad.get("k", k), device="cuda", dtype=torch.bfloat16)
    wt = torch.randn(k, 32, device="cuda", dtype=torch.bfloat16)
    scale = torch.ones(1, x.shape[1], device="cuda", dtype=bad.get("scale", torch.float32))
    stats = torch.zeros(1, 2, dtype=torch.int64, device="cuda")
    ws = torch.zeros(bad.get("workspace", 4), dtype=torch.int32, device="cuda")
    with pytest.raises(ValueError, match=name):
        kernels.sparse_gemv(x, wt, None, scale, torch.zeros(1, device="cuda"), stats, ws,
                            bad.get("seg_ends", [32]), [16], False)


def test_dense_forms_agree_and_the_tuned_form_is_used(monkeypatch):
    torch.manual_seed(11)
    k, segments = 512, [384, 128, 128]
    weight = torch.randn(sum(segments), k, device="cuda", dtype=torch.bfloat16) / 16
    packed = pack_linear(weight, segments, "wina")
    bias = torch.randn(sum(segments), device="cuda", dtype=torch.bfloat16)
    x = torch.randn(40, k, device="cuda", dtype=torch.bfloat16)
    for b in (None, bias):
        want = torch.nn.functional.linear(x.double(), weight.double(),
                                          None if b is None else b.double())
        for name, form in dense.FORMS.items():
            got = form(x, packed.weight_t, b, packed.seg_ends)
            torch.testing.assert_close(got.double(), want, rtol=2e-2, atol=2e-2, msg=name)
    monkeypatch.setattr(dense, "_choice", {})
    chosen = dense.tune(packed.weight_t, None, packed.seg_ends, [16, 40])
    assert set(dense._choice) == {(k, tuple(packed.seg_ends), m, torch.bfloat16, False)
                                  for m in (16, 40)}
    assert set(chosen) <= {16, 40}
    assert all(v in ("lt", "segments") or v.startswith(dense.ALGO) for v in chosen.values())
    dense._choice[(k, tuple(packed.seg_ends), 40, torch.bfloat16, False)] = "segments"
    assert torch.equal(dense.dense_linear(x, packed.weight_t, None, packed.seg_ends),
                       dense.FORMS["segments"](x, packed.weight_t, None, packed.seg_ends))


@pytest.mark.parametrize("gating", ["topk", "calibrated", "zero"])
def test_padding_tokens_keep_nothing(gating):
    """All-zero tokens, as vLLM pads CUDA-graph steps with (on the H200 they kept every
    channel of o_proj, so a padded step read the whole weight): no row kept for them,
    output = bias, and the counters equal the CPU reference's. "zero" passes thresholds
    of 0 and -1 straight to the op: the gate itself must refuse zero scores."""
    topk = gating == "topk"
    torch.manual_seed(21)
    k, segments = 4096, [4096, 1024, 1024]
    weight = torch.randn(sum(segments), k, device="cuda", dtype=torch.bfloat16) / 64
    bias = torch.randn(sum(segments), device="cuda", dtype=torch.bfloat16)
    packed = pack_linear(weight, segments, "wina")
    cpu_stats = torch.zeros_like(packed.stats, device="cpu")
    keep = gate.keep_counts(k, [0.5] * 3)
    thresholds = (torch.tensor([0.0, -1.0, 0.0], device="cuda") if gating == "zero"
                  else _calibrated_thresholds(packed, k, 0.5, torch.bfloat16))
    for m, padding in ((4, [3]), (4, [1, 2]), (2, [0, 1]), (8, [5, 6, 7])):
        x = torch.randn(m, k, device="cuda", dtype=torch.bfloat16)
        x[padding] = 0
        x[0, :100] = 0  # a real token's zero channels
        packed.stats.zero_()
        cpu_stats.zero_()
        out = _call(x, packed, bias, thresholds, keep, topk).float()
        want = ops.reference_sparse_linear(x.cpu(), packed.weight_t.cpu(), bias.cpu(),
                                           packed.scale.cpu(), thresholds.cpu(), cpu_stats,
                                           packed.seg_ends, keep, topk)
        torch.cuda.synchronize()
        for t in padding:
            assert torch.equal(out[t], bias.float()), f"m={m}: padding token {t}"
        err = ((out.cpu() - want.float()).norm() / want.float().norm()).item()
        assert err <= 1e-2, f"m={m} topk={topk}: rel err {err:.2e}"
        assert torch.equal(packed.stats.cpu(), cpu_stats), f"m={m} topk={topk}"
        assert cpu_stats[:, 1].tolist() == [m * k] * 3
        kept = cpu_stats[:, 0].tolist()
        nonzero = int((x != 0).sum())  # the real tokens' channels less token 0's 100
        assert all(n <= nonzero for n in kept), kept
        if gating == "zero":  # every nonzero channel, nothing else
            assert kept == [nonzero] * 3, kept
