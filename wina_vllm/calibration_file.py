"""The calibration file: per-layer thresholds for ``mode: "threshold"``.

Format (version 1): a safetensors file whose tensors are float32 ``[L, 7]``
tables over decoder layers and projections (q, k, v, o, gate, up, down):

- ``thresholds``: gate threshold on the score (``|x_i| * ||W[:, i]||`` for WINA,
  ``|x_i|`` for TEAL), computed on full, unsharded weights;
- ``sparsity``: the sparsity each threshold reached on the calibration text;
- ``norm_mean``: mean L2 column norm of each projection's weight, the model's
  weight signature (checked at load, to 2% relative, so a file made for other
  weights is refused).

Its string metadata holds ``format``, ``format_version``, ``criterion``,
``target_sparsity``, ``greedy`` and ``fingerprint`` (JSON: architecture and
shapes, plus ``weights_sha256``, a hash of the rounded ``norm_mean`` table); greedy
files also ``greedy_blend``, the share of the greedy allocation kept against uniform
(optional: older files lack it).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from wina_vllm.settings import CRITERIA, PROJECTIONS
from wina_vllm.shapes import SIZE_KEYS, model_sizes

FORMAT = "wina-calibration"
FORMAT_VERSION = 1
SIGNATURE_RTOL = 0.02
_TABLES = ("thresholds", "sparsity", "norm_mean")


@dataclass
class Calibration:
    """A loaded, validated calibration file."""

    thresholds: torch.Tensor  # [L, 7] float32
    sparsity: torch.Tensor  # [L, 7] float32
    norm_mean: torch.Tensor  # [L, 7] float32
    criterion: str
    target_sparsity: float
    greedy: bool
    fingerprint: dict[str, Any]
    greedy_blend: float | None = None  # greedy files: the share of the greedy allocation kept

    def index(self, projection: str) -> int:
        return PROJECTIONS.index(projection)


def model_fingerprint(hf_config: Any, norm_mean: torch.Tensor) -> dict[str, Any]:
    """Architecture, shapes and a hash of the weight signature of a model."""
    fp: dict[str, Any] = {"architecture": list(getattr(hf_config, "architectures", None) or [])}
    fp.update(model_sizes(hf_config))
    rounded = norm_mean.to(torch.float32).mul(100).round().to(torch.int64).numpy().tobytes()
    fp["weights_sha256"] = hashlib.sha256(rounded).hexdigest()
    return fp


def save(path: str | Path, cal: Calibration) -> None:
    from safetensors.torch import save_file

    tensors = {name: getattr(cal, name).to(torch.float32).contiguous() for name in _TABLES}
    metadata = {
        "format": FORMAT,
        "format_version": str(FORMAT_VERSION),
        "criterion": cal.criterion,
        "target_sparsity": repr(float(cal.target_sparsity)),
        "greedy": json.dumps(bool(cal.greedy)),
        "fingerprint": json.dumps(cal.fingerprint, sort_keys=True),
        "projections": json.dumps(list(PROJECTIONS)),
    }
    if cal.greedy_blend is not None:
        metadata["greedy_blend"] = repr(float(cal.greedy_blend))
    save_file(tensors, str(path), metadata=metadata)


def _bad(path: Any, why: str) -> ValueError:
    return ValueError(f"wina calibration file {str(path)!r} is not usable: {why}. "
                      "Make one for this model with `wina-vllm calibrate MODEL --out FILE`.")


def load(path: str | Path) -> Calibration:
    """Read and validate a calibration file; raise ValueError saying what is wrong."""
    from safetensors import safe_open

    if not Path(path).is_file():
        raise _bad(path, "no such file")
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except Exception as exc:  # safetensors raises several error types for corrupt files
        raise _bad(path, f"cannot be read as safetensors ({exc})") from exc
    if meta.get("format") != FORMAT:
        raise _bad(path, f"format is {meta.get('format')!r}, expected {FORMAT!r}")
    if meta.get("format_version") != str(FORMAT_VERSION):
        raise _bad(path, f"format_version is {meta.get('format_version')!r}, this plugin "
                   f"reads {FORMAT_VERSION}")
    if json.loads(meta.get("projections", "null")) != list(PROJECTIONS):
        raise _bad(path, f"projection order {meta.get('projections')!r} != {list(PROJECTIONS)}")
    if meta.get("criterion") not in CRITERIA:
        raise _bad(path, f"criterion {meta.get('criterion')!r} not in {list(CRITERIA)}")
    missing = [t for t in _TABLES if t not in tensors]
    if missing:
        raise _bad(path, f"missing tensors {missing}")
    shape = tensors["thresholds"].shape
    if len(shape) != 2 or shape[1] != len(PROJECTIONS) or any(
            tensors[t].shape != shape for t in _TABLES):
        raise _bad(path, "tables must all be [num_layers, 7], got "
                   + ", ".join(f"{t}={tuple(tensors[t].shape)}" for t in _TABLES))
    if not all(torch.isfinite(tensors[t]).all() for t in _TABLES):
        raise _bad(path, "tables contain NaN or inf")
    try:
        fingerprint = json.loads(meta["fingerprint"])
        target = float(meta["target_sparsity"])
        greedy = bool(json.loads(meta["greedy"]))
        blend = float(meta["greedy_blend"]) if "greedy_blend" in meta else None
    except (KeyError, ValueError) as exc:
        raise _bad(path, f"metadata incomplete or malformed ({exc})") from exc
    return Calibration(tensors["thresholds"].float(), tensors["sparsity"].float(),
                       tensors["norm_mean"].float(), meta["criterion"], target, greedy,
                       fingerprint, blend)


def check_model(cal: Calibration, hf_config: Any, criterion: str, path: Any) -> None:
    """Refuse a file made for another model shape or another criterion."""
    if cal.criterion != criterion:
        raise _bad(path, f"it was calibrated for criterion {cal.criterion!r} but the "
                   f"settings ask for {criterion!r}")
    expected = model_fingerprint(hf_config, cal.norm_mean)
    for key in ("architecture",) + SIZE_KEYS:
        if cal.fingerprint.get(key) != expected[key]:
            raise _bad(path, f"model mismatch: {key} is {cal.fingerprint.get(key)!r} in the "
                       f"file and {expected[key]!r} in the model being served")
    if cal.thresholds.shape[0] != expected["num_hidden_layers"]:
        raise _bad(path, f"{cal.thresholds.shape[0]} layers in the file, "
                   f"{expected['num_hidden_layers']} in the model")


def check_signature(cal: Calibration, layer: int, projection: str, norm_mean: float,
                    path: Any) -> None:
    """Refuse a file made for other weights of the same shape."""
    want = float(cal.norm_mean[layer, cal.index(projection)])
    if abs(norm_mean - want) > SIGNATURE_RTOL * abs(want):
        raise _bad(path, f"weights differ from the calibrated model: layer {layer} "
                   f"{projection} mean column norm is {norm_mean:.6g}, the file says {want:.6g}")
