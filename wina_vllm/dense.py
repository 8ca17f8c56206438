"""The op's dense product on the input-major layout (prefill and large batches), tuned per shape.

cuBLAS chooses its kernel by shape and layout, and for this (non-transposed) layout it
chooses a slow one at a few shapes: on the H200, Llama-3-8B's gate_up at 128 tokens took
1.58x the time of ``F.linear`` on the original layout, while the same product computed
as one GEMM per fused projection took 1.00x (benchmarks/RESULTS.md, section 1). So when
a model loads, each distinct layer shape times the ways of computing it at the token
counts decode steps are padded to (vLLM's CUDA-graph sizes) and at the scheduler's token
budget (full chunked-prefill steps), and keeps, per token count, the fastest one where it
beats the plain product by more than ``MARGIN``. Other token counts, and every call on
the CPU, use the plain product. The choices are kept here (``dense_linear``) and in the
extension (``wina_C.linear``, which runs the same forms without Python).

Forms:
- ``mm``: ``torch.mm`` (``torch.addmm`` with a bias): cuBLAS.
- ``lt``: ``torch.addmm`` with the bias, or zeros: torch sends a product with a 1-D bias
  to cuBLASLt, whose heuristic chooses among other kernels.
- ``segments``: one product per fused projection (q/k/v, gate/up), each written in place
  into its columns of one output.
- ``algo0``, ``algo1``, ...: the algorithms cuBLASLt's heuristic lists for this exact
  problem (``csrc/lt_matmul.cpp``), without a bias; e.g. gate_up at 128 tokens 0.89x
  ``F.linear``'s time, qkv at 256 0.99x where ``mm`` took 1.06x (RESULTS.md, section 1).
"""

from __future__ import annotations

import logging
import statistics
from typing import Callable, Iterable, Optional

import torch

from wina_vllm import kernels

MARGIN = 0.05  # a form must be this much faster than ``mm`` to be chosen (timing noise)
ROTATE_BYTES = 128 << 20  # weight bytes the tuner rotates over: more than any GPU's L2
MAX_COPIES = 256  # SmolLM2-135M's smallest layer needs 203; a tiny test model's, thousands
BURST_OUT_BYTES = 1 << 30  # outputs one timing graph may write: bounds a burst of large steps

_log = logging.getLogger(f"vllm.{__name__}")  # under vLLM's logger, as compat.get_logger

Key = tuple[int, tuple[int, ...], int, torch.dtype, bool]
_choice: dict[Key, str] = {}  # (K, seg_ends, tokens, dtype, has bias) -> form
_zeros: dict[tuple[int, torch.dtype, torch.device], torch.Tensor] = {}


def _mm(x, wt, bias, seg_ends):
    w = wt[:, :seg_ends[-1]]
    return torch.addmm(bias, x, w) if bias is not None else torch.mm(x, w)


def _lt(x, wt, bias, seg_ends):
    n = seg_ends[-1]
    if bias is None:
        key = (n, x.dtype, x.device)
        if key not in _zeros:  # first made by tune(), at load: never inside a graph capture,
            # where the zeroing would be recorded rather than run
            _zeros[key] = torch.zeros(n, dtype=x.dtype, device=x.device)
        bias = _zeros[key]
    return torch.addmm(bias, x, wt[:, :n])


def _segments(x, wt, bias, seg_ends):
    out = x.new_empty(x.shape[0], seg_ends[-1])
    start = 0
    for end in seg_ends:
        if bias is not None:
            torch.addmm(bias[start:end], x, wt[:, start:end], out=out[:, start:end])
        else:
            torch.mm(x, wt[:, start:end], out=out[:, start:end])
        start = end
    return out


FORMS: dict[str, Callable] = {"mm": _mm, "lt": _lt, "segments": _segments}
ALGO = "algo"  # prefix of the cuBLASLt algorithm forms: algo<i> is the heuristic's i-th


def _run(form: str, x, wt, bias, seg_ends) -> torch.Tensor:
    """One form's product; an algorithm form runs only on 16-byte aligned, contiguous
    inputs (what it was chosen for) and falls back to ``mm`` otherwise."""
    if form.startswith(ALGO):
        if x.is_contiguous() and x.data_ptr() % 16 == 0:  # the algorithms' alignment
            return kernels.lt_matmul(x, wt, seg_ends[-1], int(form[len(ALGO):]))
        form = "mm"
    return FORMS[form](x, wt, bias, seg_ends)


def _key(tokens: int, weight_t: torch.Tensor, bias, seg_ends) -> Key:
    return (weight_t.shape[0], tuple(seg_ends), tokens, weight_t.dtype, bias is not None)


def dense_linear(x: torch.Tensor, weight_t: torch.Tensor, bias: Optional[torch.Tensor],
                 seg_ends: list[int]) -> torch.Tensor:
    """``x @ weight_t[:, :N] + bias`` by the form tuned for this shape (``mm`` if none)."""
    form = _choice.get(_key(x.shape[0], weight_t, bias, seg_ends), "mm") if x.is_cuda else "mm"
    return _run(form, x, weight_t, bias, seg_ends)


def pick(times: dict[str, float], margin: float = MARGIN) -> str:
    """The fastest form, if it beats ``mm`` by more than ``margin``; else ``mm``."""
    best = min(times, key=times.get)
    return best if times[best] < times["mm"] * (1 - margin) else "mm"


def burst_size(copies: int, out_bytes: int) -> int:
    """Calls per timing graph: one per weight copy (so a burst never finds its weight in
    L2), at least 8, and no more than ``BURST_OUT_BYTES`` of outputs allow: a tiny layer
    has thousands of copies, and a burst of thousands of 16384-token outputs once filled
    the GPU inside a capture, where the allocator cannot free its cache (the engine died
    at load, "operation not permitted when stream is capturing")."""
    return max(8, min(copies, BURST_OUT_BYTES // max(out_bytes, 1)))


def _time_us(fns: dict[str, Callable[[torch.Tensor], torch.Tensor]],
             weights: list[torch.Tensor], burst: int, reps: int = 5) -> dict[str, float]:
    """Median time per call of each function, replaying a CUDA graph of back-to-back calls
    over ``weights`` in turn, the functions taking turns (so drift hits them alike).

    As vLLM runs them: in a graph (eager calls of 10-20 us kernels time the host's launch
    rate, not the GPU), never finding the weight in L2 (the layers between evict it: with
    one L2-resident weight, or eager bursts, the tuner chose algorithms for o at 16-64 tokens
    that ran 1.04-1.17x ``F.linear``'s time from memory), and in bursts, not single calls
    (single calls with L2 flushed missed gate_up's 1.57x at 128 tokens).
    """
    for fn in fns.values():
        fn(weights[0])  # outside the capture: workspaces, handles, algorithm lists
    torch.cuda.synchronize()
    graphs, pool = {}, None
    for name, fn in fns.items():
        graphs[name] = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graphs[name], pool=pool):
            for i in range(burst):
                fn(weights[i % len(weights)])
        pool = graphs[name].pool()
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(reps + 1):  # the first round warms up
        for name, graph in graphs.items():
            start = torch.cuda.Event(enable_timing=True)
            end = torch.cuda.Event(enable_timing=True)
            start.record()
            graph.replay()
            end.record()
            end.synchronize()
            times[name].append(start.elapsed_time(end) * 1e3 / burst)
    return {name: statistics.median(t[1:]) for name, t in times.items()}


def _copies(weight_t: torch.Tensor) -> list[torch.Tensor]:
    """The weight and as many temporary copies as make ``ROTATE_BYTES`` (none for a weight
    that size or larger), at most ``MAX_COPIES``: a model whose layers need more is small
    enough that its weights stay in L2 when served too, and timing thousands of copies made
    a tiny model's load take 50 s per layer shape on the H200."""
    n = min(MAX_COPIES, -(-ROTATE_BYTES // (weight_t.numel() * weight_t.element_size())))
    return [weight_t] + [weight_t.clone() for _ in range(n - 1)]


def _algorithms(x, weight_t, bias, seg_ends) -> list[str]:
    """cuBLASLt's algorithms for this problem (bf16/fp16, no bias) that compute it: each is
    checked against ``mm`` once, so a wrong one is never timed or chosen."""
    if bias is not None or weight_t.dtype not in kernels.DTYPES:
        return []
    want = _mm(x, weight_t, None, seg_ends).float()
    tol = 0.02 * want.abs().max().item()
    return [f"{ALGO}{i}" for i in range(kernels.lt_algos(x, weight_t, seg_ends[-1]))
            if (_run(f"{ALGO}{i}", x, weight_t, None, seg_ends).float() - want).abs().max().item()
            <= tol]


@torch.no_grad()
def tune(weight_t: torch.Tensor, bias: Optional[torch.Tensor], seg_ends: list[int],
         token_counts: Iterable[int]) -> dict[int, str]:
    """Time every form at each token count (CUDA weights only; once per shape) and record
    the choices ``dense_linear`` will use. Returns the token counts that left ``mm``."""
    if not weight_t.is_cuda:
        return {}
    forms = [f for f in FORMS if f != "segments" or len(seg_ends) > 1]
    chosen, weights = {}, None
    for m in sorted(set(token_counts)):
        key = _key(m, weight_t, bias, seg_ends)
        if key in _choice:  # a layer of the same shape was tuned already
            continue
        x = torch.randn(m, weight_t.shape[0], dtype=weight_t.dtype, device=weight_t.device)
        candidates = forms + _algorithms(x, weight_t, bias, seg_ends)
        weights = weights or _copies(weight_t)
        burst = burst_size(len(weights), m * seg_ends[-1] * weight_t.element_size())
        try:
            times = _time_us({f: lambda wt, f=f: _run(f, x, wt, bias, seg_ends)
                              for f in candidates}, weights, burst)
        except RuntimeError as exc:  # the tuning is an optimization: never fail the load
            _log.warning("wina: dense tuning of K=%d, N=%d at %d tokens failed, keeping "
                         "torch.mm there: %s", weight_t.shape[0], seg_ends[-1], m,
                         str(exc).splitlines()[0])
            _choice[key] = "mm"
            continue
        _choice[key] = pick(times)
        if _choice[key] != "mm":
            chosen[m] = _choice[key]
            kernels.set_dense_form(weight_t, seg_ends, m, bias is not None, _choice[key])
    return chosen
