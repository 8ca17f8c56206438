"""WinaConfig: the ``"wina"`` quantization method vLLM selects with ``--quantization wina``.

It picks the WINA linear method for the attention and MLP linears of supported
models (see :mod:`wina_vllm.layers`) and leaves everything else to vLLM. Its
settings come from ``additional_config["wina"]``, read once, inside the worker.
"""

from __future__ import annotations

import dataclasses
import hashlib
from pathlib import Path
from typing import Any

import torch

from wina_vllm import calibration_file, compat, envs, metrics
from wina_vllm.layers import TargetLinear, check_architecture, match_target
from wina_vllm.settings import (
    DEFAULT_CRITERION,
    PROJECTIONS,
    WinaSettings,
    check_graph_sizes,
    check_speculative,
    parse_settings,
    topk_speed_warning,
)

logger = compat.get_logger(__name__)


# Key beside "wina" in additional_config where the worker records compile_factors().
COMPILE_FACTORS_KEY = "wina_compile_factors"


def load_settings() -> WinaSettings:
    """The validated settings of the running engine (``additional_config["wina"]``)."""
    config = compat.get_current_vllm_config()
    if config.additional_config is None:
        config.additional_config = {}
    extra = config.additional_config
    if not isinstance(extra, dict):
        raise ValueError(f"additional_config: got {extra!r}; accepted: a JSON object")
    settings = parse_settings(extra.get("wina"))
    extra[COMPILE_FACTORS_KEY] = compile_factors(settings)
    return settings


def compile_factors(settings: WinaSettings) -> dict[str, Any]:
    """What the traced graph depends on besides the settings themselves.

    vLLM keys its torch.compile cache on the engine config, ``additional_config``
    included, so a cached graph is reused whenever the settings are the same. The graph
    also bakes in which op each layer calls (``WINA_NATIVE_OP``), the programmatic-launch
    flag (``WINA_PDL``) and the per-layer kept counts of a calibration file, whose path is
    in the settings but whose contents are not. Recorded in the config (the worker's, before
    compilation hashes it), they make a graph traced under other values a cache miss: on
    the H200 a server started with ``WINA_NATIVE_OP=0`` ran the cached C++-op graph.
    """
    digest = None
    if settings.calibration is not None:
        try:
            digest = hashlib.sha256(Path(settings.calibration).read_bytes()).hexdigest()
        except OSError:
            digest = None  # calibration_file.load reports a missing or unreadable file
    return {"native_op": envs.native_op(), "pdl": envs.programmatic_launch(),
            "calibration_sha256": digest}


class WinaConfig(compat.QuantizationConfig):
    """WINA activation sparsity on the attention and MLP linears."""

    def __init__(self, settings: WinaSettings | None = None) -> None:
        super().__init__()
        self._settings = settings
        self._calibration: calibration_file.Calibration | None = None
        self._hf_config: Any = None
        self._ready: list[tuple[TargetLinear, list[float]]] = []
        self._created = 0
        self._native = 0  # linears running wina_C.linear (the rest run the Python op)

    # -- vLLM's QuantizationConfig interface ------------------------------------------
    def get_name(self) -> str:
        return "wina"

    def get_supported_act_dtypes(self) -> list[torch.dtype]:
        return [torch.bfloat16, torch.float16, torch.float32]

    @classmethod
    def get_min_capability(cls) -> int:
        return 80

    @staticmethod
    def get_config_filenames() -> list[str]:
        return []

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> "WinaConfig":
        method = config.get("quant_method", config.get("quantization", "unknown"))
        raise ValueError(
            f"wina: the checkpoint is already quantized (quant_method={method!r}); WINA gates "
            "bf16/fp16/fp32 weights only. Serve an unquantized checkpoint.")

    def maybe_update_config(self, model_name: str, hf_config: Any = None,
                            revision: str | None = None, **kwargs: Any) -> None:
        if hf_config is not None:
            check_architecture(getattr(hf_config, "architectures", None))

    def get_quant_method(self, layer: torch.nn.Module, prefix: str):
        if not isinstance(layer, compat.LinearBase):
            return None
        target = match_target(prefix)
        settings = self.settings
        if target is None or target.layer_index in settings.skip_layers:
            return compat.UnquantizedLinearMethod()
        sparsities = [self.sparsity(target, p) for p in target.projections]
        if not any(sparsities):
            return compat.UnquantizedLinearMethod()
        from wina_vllm.linear import WinaLinearMethod

        self._created += 1
        return WinaLinearMethod(self, target, sparsities)

    # -- settings and calibration ------------------------------------------------------
    @property
    def settings(self) -> WinaSettings:
        if self._settings is None:
            settings = load_settings()
            check_speculative(settings, compat.speculative_tokens())
            check_graph_sizes(settings, compat.cudagraph_token_counts())
            self._hf_config = compat.get_current_vllm_config().model_config.hf_config
            check_architecture(getattr(self._hf_config, "architectures", None))
            criterion = settings.criterion
            if settings.calibration is not None:
                cal = calibration_file.load(settings.calibration)
                criterion = criterion or cal.criterion  # unset: the file's
                calibration_file.check_model(cal, self._hf_config, criterion,
                                             settings.calibration)
                self._calibration = cal
            self._settings = dataclasses.replace(settings,
                                                 criterion=criterion or DEFAULT_CRITERION)
        return self._settings

    def sparsity(self, target: TargetLinear, projection: str) -> float:
        if self._calibration is not None:
            return float(self._calibration.sparsity[target.layer_index,
                                                    PROJECTIONS.index(projection)])
        return self.settings.sparsity_of(projection)

    def thresholds(self, target: TargetLinear) -> list[float]:
        """Per-projection thresholds of a layer (unused in top-k mode; 0 keeps every
        nonzero channel: the gate never keeps a zero score)."""
        if self._calibration is None or self.settings.mode == "topk":
            return [0.0] * len(target.projections)
        row = self._calibration.thresholds[target.layer_index]
        return [float(row[PROJECTIONS.index(p)]) for p in target.projections]

    def check_signature(self, target: TargetLinear, norm_means: torch.Tensor) -> None:
        """Refuse a calibration file made for other weights: ``norm_means`` [S] is each
        projection's mean column norm over its whole (unsharded) matrix."""
        if self._calibration is None:
            return
        for j, projection in enumerate(target.projections):
            calibration_file.check_signature(self._calibration, target.layer_index, projection,
                                             float(norm_means[j]), self.settings.calibration)

    def report_ready(self, target: TargetLinear, sparsities: list[float],
                     native: bool = False) -> None:
        """Once the last gated linear is ready: log what runs sparse and how, and have the
        counters restart after vLLM's warm-up (see metrics.py)."""
        self._ready.append((target, sparsities))
        self._native += native
        if len(self._ready) != self._created:
            return
        s = self.settings
        per_proj: dict[str, list[float]] = {}
        layers = sorted({t.layer_index for t, _ in self._ready})
        for t, sp in self._ready:
            for p, v in zip(t.projections, sp):
                per_proj.setdefault(p, []).append(v)
        summary = ", ".join(f"{p}={sum(v) / len(v):.3f}" for p, v in per_proj.items())
        logger.info(
            "wina: %d linears gated in %d decoder layers (criterion=%s, mode=%s, prefill=%s, "
            "max_sparse_batch=%d); mean sparsity %s; op: wina_C.linear (C++) on %d, the "
            "Python-dispatched op on %d; dense: skip_layers=%s, embeddings, lm_head and all "
            "other layers", len(self._ready), len(layers), s.criterion, s.mode, s.prefill,
            s.max_sparse_batch, summary, self._native, len(self._ready) - self._native,
            list(s.skip_layers))
        warning = topk_speed_warning(s, [v for sp in per_proj.values() for v in sp])
        if warning:
            logger.warning(warning)
        compat.after_warm_up(metrics.reset)
        if s.metrics_port is not None:
            rank = compat.local_rank()
            port = s.metrics_port + rank
            try:
                served = metrics.serve(port)
            except (OSError, OverflowError) as e:
                raise ValueError(
                    f"wina setting 'metrics_port': got {s.metrics_port}, but this worker (local "
                    f"rank {rank}) cannot serve on port {port}: {e}. Accepted: a port such that "
                    "port + r is free for every worker r of the node, or null") from e
            if served:
                logger.info("wina: realized sparsity for Prometheus at http://0.0.0.0:%d/metrics",
                            port)
