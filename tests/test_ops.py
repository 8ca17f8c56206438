"""The custom op as torch sees it: schema, fake implementation, torch.compile."""

from __future__ import annotations

import pytest
import torch

from wina_vllm import gate, ops
from wina_vllm.packing import pack_linear


def _args(m=3, k=64, segments=(32, 16), topk=True):
    torch.manual_seed(m * 100 + k)
    packed = pack_linear(torch.randn(sum(segments), k), segments, "wina")
    x = torch.randn(m, k)
    keep = gate.keep_counts(k, [0.5] * len(segments))
    return (x, packed.weight_t, None, packed.scale, torch.zeros(len(segments)), packed.stats,
            packed.workspace, packed.seg_ends, keep, topk, 8, False)


def test_registered_under_torch_ops():
    assert torch.ops.wina.sparse_linear.default is not None


@pytest.mark.parametrize("m", [1, 5, 12])
def test_opcheck(m):
    torch.library.opcheck(ops.sparse_linear, _args(m=m),
                          test_utils=("test_schema", "test_faketensor", "test_aot_dispatch_static"))


def test_fake_impl_shape_without_data():
    from torch._subclasses.fake_tensor import FakeTensorMode

    args = _args(m=4, k=64, segments=(40, 8))
    with FakeTensorMode(allow_non_fake_inputs=True):
        out = torch.ops.wina.sparse_linear(*args)
    assert tuple(out.shape) == (4, 48)


def test_torch_compile_fullgraph_matches_eager():
    args = _args(m=2)
    eager = ops.sparse_linear(*args)

    @torch.compile(fullgraph=True, backend="aot_eager")
    def f(x):
        return torch.ops.wina.sparse_linear(x, *args[1:]) + 1

    torch.testing.assert_close(f(args[0]), eager + 1, rtol=0, atol=0)


def test_workspace_size_counts_eight_column_groups():
    assert ops.workspace_size([4096, 5120, 6144]) == 768
    assert ops.workspace_size([100, 136, 172]) == 13 + 5 + 5  # 96..136 and 136..176 overlap


def test_kernel_input_checks_accept_what_the_plugin_passes_and_name_what_is_wrong():
    """The CUDA wrapper's Python checks, on CPU tensors (the device check is off)."""
    from wina_vllm import kernels
    from wina_vllm.packing import pack_linear

    for segments in [(576, 192, 192), (100, 36, 36), (4100,)]:
        packed = pack_linear(torch.randn(sum(segments), 64, dtype=torch.bfloat16), segments, "wina")
        args = dict(x=torch.randn(3, 64, dtype=torch.bfloat16), weight_t=packed.weight_t,
                    bias=torch.randn(sum(segments), dtype=torch.bfloat16), col_scale=packed.scale,
                    thresholds=torch.zeros(len(segments)), stats=packed.stats,
                    workspace=packed.workspace, seg_ends=packed.seg_ends)
        kernels.check_inputs(**args, require_cuda=False)
        for key, bad, name in [
                ("x", torch.randn(9, 64, dtype=torch.bfloat16), "token count"),
                ("x", torch.randn(3, 64), "x"),
                ("col_scale", packed.scale.double(), "col_scale"),
                ("weight_t", packed.weight_t[:, :-8].contiguous().float(), "weight_t"),
                ("bias", torch.randn(7, dtype=torch.bfloat16), "bias"),
                ("thresholds", torch.zeros(len(segments) + 1), "thresholds"),
                ("stats", packed.stats.int(), "stats"),
                ("workspace", packed.workspace[:1], "workspace"),
                ("seg_ends", packed.seg_ends[::-1] if len(segments) > 1 else [10**6], "seg_ends")]:
            with pytest.raises(ValueError, match=name):
                kernels.check_inputs(**{**args, key: bad}, require_cuda=False)


def test_topk_input_checks_name_what_is_wrong():
    """The select kernel's wrapper: its activations and its kept counts, before any launch."""
    from wina_vllm import kernels

    x, scale = torch.randn(2, 64, dtype=torch.bfloat16), torch.rand(3, 64)
    with pytest.raises(ValueError, match="wina topk_thresholds: x"):
        kernels.topk_thresholds(x, scale, [32, 16, 1])  # a CPU tensor: the kernel is CUDA's
    assert kernels.check_activations(x, scale, require_cuda=False) == (2, 64, 3)
    kernels.check_keep([32, 16, 1], 3, 64, x.device, require_cuda=False)
    for keep in ([32, 16], [32, 16, 1, 1], [32, 16.0, 1]):
        with pytest.raises(ValueError, match=r"wina topk_thresholds: keep \["):
            kernels.check_keep(keep, 3, 64, x.device, require_cuda=False)


def test_cublaslt_input_checks_name_what_is_wrong(monkeypatch):
    """The cuBLASLt wrapper's Python checks, on CPU tensors (the device check is off)."""
    from wina_vllm import kernels

    x, wt = torch.randn(5, 64, dtype=torch.bfloat16), torch.randn(64, 48, dtype=torch.bfloat16)
    kernels.check_lt_inputs(x, wt, 40, require_cuda=False)
    for args, name in [((x.float(), wt, 40), "x"),
                       ((x.t(), wt, 40), "x"),
                       ((x, wt.half(), 40), "weight_t"),
                       ((x, wt[:32], 40), "weight_t"),
                       ((x, wt, 0), "n 0"),
                       ((x, wt, 49), "n 49")]:
        with pytest.raises(ValueError, match=f"lt_matmul: {name}"):
            kernels.check_lt_inputs(*args, require_cuda=False)
    # An algorithm index outside the problem's list, before anything reaches the extension.
    monkeypatch.setattr(kernels, "lt_algos", lambda *a: 3)
    for algo in (-1, 3):
        with pytest.raises(ValueError, match=f"lt_matmul: algo {algo}; expected 0..2"):
            kernels.lt_matmul(x, wt, 40, algo)


def test_cuda_impl_gates_dtypes_the_kernel_lacks():
    """A float32 decode step on CUDA runs the gated torch path, as on the CPU, not dense
    (the fallback is plain torch, so it runs here on CPU tensors)."""
    args = _args(m=2)
    expected = ops.sparse_linear(*args)
    kept = args[5].clone()
    args[5].zero_()
    out = ops._sparse_linear_cuda(*args)
    torch.testing.assert_close(out, expected, rtol=0, atol=0)
    assert torch.equal(args[5], kept) and kept[:, 0].sum() > 0


@pytest.mark.parametrize("name,read", [("WINA_PDL", "programmatic_launch"),
                                       ("WINA_NATIVE_OP", "native_op")])
def test_switch_envs_are_validated(monkeypatch, name, read):
    from wina_vllm import envs

    fn = getattr(envs, read)
    for value, want in (("0", False), ("1", True)):
        fn.cache_clear()
        monkeypatch.setenv(name, value)
        assert fn() is want
    fn.cache_clear()
    monkeypatch.setenv(name, "false")
    with pytest.raises(ValueError, match=f"{name}='false'"):
        fn()
    fn.cache_clear()


@pytest.mark.parametrize("topk", [True, False])
def test_padding_tokens_keep_nothing(topk):
    """All-zero tokens (how vLLM pads CUDA-graph steps) keep no channel, so a padded step
    reads no more rows than its real tokens need; a real token's zero channels are not kept
    either (they add nothing), even where the gate keeps everything. Every row counts as
    seen, padding included (metrics.py)."""
    args = list(_args(m=4, k=64, topk=topk))
    x, stats = args[0], args[5]
    x[1] = 0.0  # padding
    x[3] = 0.0
    x[0, :5] = 0.0  # a real token's zero channels
    if not topk:  # thresholds set for about half the channels, as a calibration would
        args[4] = torch.full((2,), 0.6)
    out = ops.sparse_linear(*args)
    assert torch.equal(out[1], torch.zeros(48)) and torch.equal(out[3], torch.zeros(48))
    score = gate.scores(x, args[3])
    mask = gate.gate_mask(score, gate.topk_thresholds(score, args[8]) if topk else args[4])
    assert not mask[[1, 3]].any() and not mask[0, :, :5].any()
    assert stats[:, 1].tolist() == [4 * 64, 4 * 64]
    assert stats[:, 0].tolist() == mask.sum(dim=(0, 2)).tolist()
    assert 0 < stats[0, 0] < 2 * 64
    # Keep-all (sparsity 0): every nonzero channel, and still none of the zero ones.
    every = gate.topk_thresholds(score, [64, 64])
    assert every.max().item() == 0.0
    assert torch.equal(gate.gate_mask(score, every), (x != 0).unsqueeze(1).expand_as(mask))
