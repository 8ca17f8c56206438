"""WINA settings: parsed and validated in one place.

Users pass them as ``--additional-config '{"wina": {...}}'``; vLLM keeps them in
``VllmConfig.additional_config``. Everything else in the package receives a
validated :class:`WinaSettings` and never looks at the raw dict.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Mapping

PROJECTIONS: tuple[str, ...] = ("q", "k", "v", "o", "gate", "up", "down")
# Which projections score by |x_i| * ||W[:, i]|| (the rest by |x_i|, as TEAL does):
# "wina" every one (the paper's formula); "wina-k-gate" only k and gate, as the WINA
# authors' released code (k's norms gate the attention input, gate's the MLP input);
# "teal" none.
NORMED_PROJECTIONS: dict[str, tuple[str, ...]] = {
    "wina": PROJECTIONS, "wina-k-gate": ("k", "gate"), "teal": ()}
CRITERIA: tuple[str, ...] = tuple(NORMED_PROJECTIONS)
# The default: ahead of "wina" at 14 of 16 accuracy points on SmolLM2-135M, and of TEAL at
# 8 of 16 (benchmarks/RESULTS.md, section 4).
DEFAULT_CRITERION = "wina-k-gate"
MODES: tuple[str, ...] = ("topk", "threshold")
PREFILL: tuple[str, ...] = ("dense", "sparse")
DEFAULT_MAX_SPARSE_BATCH = 2  # kernel crossover on the H200 (benchmarks/RESULTS.md)
MAX_KERNEL_BATCH = 8  # the CUDA kernel is instantiated for 1..8 tokens


@dataclass(frozen=True)
class WinaSettings:
    """Validated WINA settings (see README, "Settings")."""

    sparsity: Mapping[str, float] = field(default_factory=lambda: dict.fromkeys(PROJECTIONS, 0.5))
    criterion: str | None = None  # None: the calibration file's, else DEFAULT_CRITERION
    mode: str = "topk"
    calibration: str | None = None
    skip_layers: tuple[int, ...] = ()
    prefill: str = "dense"
    max_sparse_batch: int = DEFAULT_MAX_SPARSE_BATCH
    metrics_port: int | None = None  # Prometheus endpoint of each worker (port + local rank)

    def sparsity_of(self, projection: str) -> float:
        return self.sparsity[projection]


def uses_norms(criterion: str, projection: str | None) -> bool:
    """Whether ``criterion`` scales ``projection``'s scores by its weight's column norms
    (``projection`` None: a criterion that treats every projection alike)."""
    if criterion not in NORMED_PROJECTIONS:
        raise ValueError(f"criterion: got {criterion!r}; accepted: {list(CRITERIA)}")
    normed = NORMED_PROJECTIONS[criterion]
    if projection is not None:
        return projection in normed
    if normed not in (PROJECTIONS, ()):
        raise ValueError(f"criterion {criterion!r} uses column norms on {list(normed)} only: "
                         "name the projection")
    return normed == PROJECTIONS


def check_speculative(settings: WinaSettings, num_speculative_tokens: int) -> None:
    """Refuse speculative decoding whose verification steps would all run dense.

    A verification step carries ``num_speculative_tokens + 1`` tokens per request; above
    ``max_sparse_batch`` the op runs dense (unless ``prefill`` is "sparse", which gates
    every step), so the gate would apply only to steps where no draft was proposed (a mix
    that changes outputs with the drafter, for no speedup).
    """
    tokens = num_speculative_tokens + 1
    if (num_speculative_tokens > 0 and tokens > settings.max_sparse_batch
            and settings.prefill != "sparse"):
        raise ValueError(
            f"wina setting 'max_sparse_batch': got {settings.max_sparse_batch}, but speculative "
            f"decoding (num_speculative_tokens={num_speculative_tokens}) verifies {tokens} "
            f"tokens per request in every decode step, and steps of more than "
            f"max_sparse_batch tokens run dense; accepted: max_sparse_batch >= {tokens} (at "
            f"most {MAX_KERNEL_BATCH}; on the H200 the sparse kernel is slower than dense from "
            "4 tokens a step, benchmarks/RESULTS.md), or serve without speculative decoding")


# Below this mean sparsity, top-k mode's per-call select costs about what the skipped rows
# save: on the H200, Llama-3-8B decoded at 1.01x dense at 0.25 and 1.20x at 0.5 in top-k
# mode, against 1.16x and 1.43x in threshold mode (benchmarks/RESULTS.md, section 2).
TOPK_SLOW_BELOW = 0.4


def topk_speed_warning(settings: WinaSettings, sparsities: list[float]) -> str | None:
    """The start-up warning for top-k mode at a mean sparsity (over the gated projections)
    where it decodes at about dense speed; None where there is nothing to warn of."""
    if settings.mode != "topk" or settings.prefill == "sparse" or not sparsities:
        return None
    mean = sum(sparsities) / len(sparsities)
    if mean >= TOPK_SLOW_BELOW:
        return None
    return (f"wina: top-k mode at mean sparsity {mean:.2f} decodes at about dense speed: each "
            "call's select costs about what the skipped rows save (H200, Llama-3-8B at 0.25: "
            "1.01x dense in top-k mode, 1.16x in threshold mode). For speed, serve mode "
            "'threshold' with a calibration file (wina-vllm calibrate)")


def check_graph_sizes(settings: WinaSettings, capture_sizes: list[int]) -> None:
    """Refuse a ``max_sparse_batch`` that vLLM's CUDA graphs would pad past.

    vLLM runs a step of n tokens as its next CUDA-graph size (1, 2, 4, 8, 16, ... by
    default), and the op sees the padded count: with ``max_sparse_batch`` 3, every 3-token
    step would run as 4 tokens, and so dense, silently. Every step of up to
    ``max_sparse_batch`` tokens stays at or below it exactly when it is itself a graph size
    or above the largest one (larger steps run without graphs, unpadded). ``capture_sizes``
    is empty without CUDA graphs (``enforce_eager``, the CPU).
    """
    msb = settings.max_sparse_batch
    if msb == 0 or settings.prefill == "sparse" or not capture_sizes:
        return
    padded = min((c for c in capture_sizes if c >= msb), default=msb)
    if padded != msb:
        fits = [0] + [c for c in sorted(capture_sizes) if c <= MAX_KERNEL_BATCH]
        raise ValueError(
            f"wina setting 'max_sparse_batch': got {msb}, but vLLM runs a step of {msb} tokens "
            f"as its CUDA-graph size {padded} (cudagraph_capture_sizes), above "
            f"max_sparse_batch, so such steps would run dense; accepted: one of {fits}, or "
            f"add {msb} to compilation_config's cudagraph_capture_sizes, or enforce_eager")


_KEYS = ("sparsity", "criterion", "mode", "calibration", "skip_layers", "prefill",
         "max_sparse_batch", "metrics_port")


def _fail(key: str, value: Any, accepted: str) -> ValueError:
    return ValueError(f"wina setting {key!r}: got {value!r}; accepted: {accepted}")


def _parse_fraction(key: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise _fail(key, value, "a number in [0, 1)")
    value = float(value)
    if not (0.0 <= value < 1.0) or math.isnan(value):
        raise _fail(key, value, "a number in [0, 1)")
    return value


def _parse_sparsity(value: Any) -> dict[str, float]:
    if isinstance(value, Mapping):
        unknown = sorted(set(value) - set(PROJECTIONS))
        if unknown:
            raise _fail("sparsity", dict(value), f"a mapping with keys among {list(PROJECTIONS)} "
                        f"(unknown: {unknown})")
        return {p: _parse_fraction(f"sparsity.{p}", value.get(p, 0.0)) for p in PROJECTIONS}
    return dict.fromkeys(PROJECTIONS, _parse_fraction("sparsity", value))


def _parse_choice(key: str, value: Any, choices: tuple[str, ...]) -> str:
    if value not in choices:
        raise _fail(key, value, " or ".join(repr(c) for c in choices))
    return value


def _parse_skip_layers(value: Any) -> tuple[int, ...]:
    accepted = "a list of decoder-layer indices (non-negative integers)"
    if not isinstance(value, (list, tuple)):
        raise _fail("skip_layers", value, accepted)
    for item in value:
        if isinstance(item, bool) or not isinstance(item, int) or item < 0:
            raise _fail("skip_layers", value, accepted)
    return tuple(sorted(set(value)))


def parse_settings(raw: Mapping[str, Any] | None) -> WinaSettings:
    """Validate the ``additional_config["wina"]`` mapping; raise ValueError naming the bad key."""
    if raw is None:
        raw = {}
    if not isinstance(raw, Mapping):
        raise _fail("wina", raw, "a JSON object of settings")
    unknown = sorted(set(raw) - set(_KEYS))
    if unknown:
        raise ValueError(f"unknown wina setting(s) {unknown}; accepted keys: {list(_KEYS)}")

    mode = _parse_choice("mode", raw.get("mode", "topk"), MODES)
    calibration = raw.get("calibration")
    if calibration is not None and (not isinstance(calibration, str) or not calibration):
        raise _fail("calibration", calibration, "a path to a calibration file (string)")
    if mode == "threshold" and calibration is None:
        raise _fail("calibration", None, "a calibration file path, required when mode is "
                    "'threshold' (make one with `wina-vllm calibrate`)")
    if calibration is not None and "sparsity" in raw:
        raise _fail("sparsity", raw["sparsity"], "no sparsity with a calibration file: the "
                    "file sets it per layer and projection (in mode 'topk', as each "
                    "projection's k)")

    max_sparse_batch = raw.get("max_sparse_batch", DEFAULT_MAX_SPARSE_BATCH)
    if (isinstance(max_sparse_batch, bool) or not isinstance(max_sparse_batch, int)
            or not 0 <= max_sparse_batch <= MAX_KERNEL_BATCH):
        raise _fail("max_sparse_batch", max_sparse_batch,
                    f"an integer in [0, {MAX_KERNEL_BATCH}] (0 runs every step dense)")

    metrics_port = raw.get("metrics_port")
    if metrics_port is not None and (isinstance(metrics_port, bool)
                                     or not isinstance(metrics_port, int)
                                     or not 1 <= metrics_port <= 65535):
        raise _fail("metrics_port", metrics_port, "a TCP port in [1, 65535] (the node's worker r, "
                    "counting every tensor- and pipeline-parallel rank, serves on port + r), "
                    "or null for none")

    return WinaSettings(
        sparsity=_parse_sparsity(raw.get("sparsity", 0.5)),
        criterion=None if raw.get("criterion") is None
        else _parse_choice("criterion", raw["criterion"], CRITERIA),
        mode=mode,
        calibration=calibration,
        skip_layers=_parse_skip_layers(raw.get("skip_layers", [])),
        prefill=_parse_choice("prefill", raw.get("prefill", "dense"), PREFILL),
        max_sparse_batch=max_sparse_batch,
        metrics_port=metrics_port,
    )
