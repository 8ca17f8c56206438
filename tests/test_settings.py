"""Settings: every bad key, type or value is refused with a message naming it."""

from __future__ import annotations

import pytest

from conftest import requires_vllm

from wina_vllm.settings import PROJECTIONS, parse_settings


def test_criteria_and_the_projections_they_scale():
    from wina_vllm.settings import uses_norms

    assert parse_settings({"criterion": "wina-k-gate"}).criterion == "wina-k-gate"
    assert [p for p in PROJECTIONS if uses_norms("wina-k-gate", p)] == ["k", "gate"]
    assert all(uses_norms("wina", p) for p in PROJECTIONS)
    assert not any(uses_norms("teal", p) for p in PROJECTIONS)
    with pytest.raises(ValueError, match=r"accepted: \['wina', 'wina-k-gate', 'teal'\]"):
        uses_norms("l2", "q")


def test_defaults():
    s = parse_settings(None)
    assert s.criterion is None and s.mode == "topk" and s.prefill == "dense"  # resolved at load
    assert s.max_sparse_batch == 2 and s.skip_layers == () and s.metrics_port is None
    assert all(s.sparsity_of(p) == 0.5 for p in PROJECTIONS)


def test_per_projection_sparsity_fills_missing_with_zero():
    s = parse_settings({"sparsity": {"q": 0.3, "gate": 0.6}})
    assert s.sparsity_of("q") == 0.3 and s.sparsity_of("gate") == 0.6
    assert s.sparsity_of("k") == 0.0 and s.sparsity_of("down") == 0.0


def test_full_valid_config():
    s = parse_settings({"sparsity": 0.25, "criterion": "teal", "skip_layers": [3, 0, 3],
                        "prefill": "sparse", "max_sparse_batch": 4, "metrics_port": 9400})
    assert s.skip_layers == (0, 3) and s.criterion == "teal" and s.max_sparse_batch == 4
    assert s.metrics_port == 9400


def test_speculative_decoding_needs_its_verification_steps_to_run_sparse():
    from wina_vllm.settings import check_speculative

    check_speculative(parse_settings(None), 0)  # off
    check_speculative(parse_settings(None), 1)  # 2 tokens a step: the default's 2 run sparse
    with pytest.raises(ValueError, match=r"'max_sparse_batch': got 2, .*"
                                         r"num_speculative_tokens=3\) verifies 4 tokens.*"
                                         r"accepted: max_sparse_batch >= 4"):
        check_speculative(parse_settings(None), 3)
    check_speculative(parse_settings({"max_sparse_batch": 4}), 3)
    check_speculative(parse_settings({"prefill": "sparse"}), 3)  # every step is gated
    with pytest.raises(ValueError, match=r"max_sparse_batch >= 9 \(at most 8"):
        check_speculative(parse_settings({"max_sparse_batch": 8}), 8)


def test_cuda_graph_padding_must_not_push_steps_past_max_sparse_batch():
    """vLLM runs a step as its next CUDA-graph size: max_sparse_batch 3 would make every
    3-token step a 4-token one, run dense. So it must be a graph size itself."""
    from wina_vllm.settings import check_graph_sizes

    default = [1, 2, 4, 8, 16, 24, 32]
    for ok in (0, 1, 2, 4, 8):
        check_graph_sizes(parse_settings({"max_sparse_batch": ok}), default)
    for bad, padded in ((3, 4), (5, 8), (7, 8)):
        with pytest.raises(ValueError, match=rf"'max_sparse_batch': got {bad}, but vLLM runs a "
                           rf"step of {bad} tokens as its CUDA-graph size {padded} .*"
                           r"accepted: one of \[0, 1, 2, 4, 8\], or add"):
            check_graph_sizes(parse_settings({"max_sparse_batch": bad}), default)
    check_graph_sizes(parse_settings({"max_sparse_batch": 3}), [])  # no graphs: no padding
    check_graph_sizes(parse_settings({"max_sparse_batch": 3}), [1, 2, 3, 4, 8])  # a size
    check_graph_sizes(parse_settings({"max_sparse_batch": 6}), [1, 2, 4])  # above them all
    check_graph_sizes(parse_settings({"max_sparse_batch": 3, "prefill": "sparse"}), default)
    with pytest.raises(ValueError, match=r"got 2, .* size 8 "):  # custom sizes without 1, 2
        check_graph_sizes(parse_settings(None), [8, 16])


def test_threshold_mode(tmp_path):
    s = parse_settings({"mode": "threshold", "calibration": str(tmp_path / "c.safetensors")})
    assert s.mode == "threshold"


def test_topk_mode_takes_a_calibration_file_for_its_per_layer_k(tmp_path):
    s = parse_settings({"calibration": str(tmp_path / "c.safetensors")})
    assert (s.mode, s.calibration) == ("topk", str(tmp_path / "c.safetensors"))


@pytest.mark.parametrize("raw,names", [
    ({"sparsity": 1.0}, ["sparsity", "1.0", "[0, 1)"]),
    ({"sparsity": -0.1}, ["sparsity", "-0.1"]),
    ({"sparsity": "0.5"}, ["sparsity", "'0.5'"]),
    ({"sparsity": True}, ["sparsity", "True"]),
    ({"sparsity": float("nan")}, ["sparsity", "nan"]),
    ({"sparsity": {"qq": 0.5}}, ["sparsity", "qq"]),
    ({"sparsity": {"q": 2}}, ["sparsity.q", "2"]),
    ({"criterion": "l1"}, ["criterion", "'l1'", "'wina'", "'teal'"]),
    ({"mode": "random"}, ["mode", "'random'", "'topk'", "'threshold'"]),
    ({"mode": "threshold"}, ["calibration", "required"]),
    ({"mode": "threshold", "calibration": "c.st", "sparsity": 0.5}, ["sparsity", "calibration"]),
    ({"calibration": "c.st", "sparsity": 0.25}, ["sparsity", "calibration", "topk"]),
    ({"calibration": 3, "mode": "threshold"}, ["calibration", "3"]),
    ({"skip_layers": "0,1"}, ["skip_layers", "'0,1'"]),
    ({"skip_layers": [-1]}, ["skip_layers", "-1"]),
    ({"prefill": "mixed"}, ["prefill", "'mixed'"]),
    ({"max_sparse_batch": 9}, ["max_sparse_batch", "9", "[0, 8]"]),
    ({"max_sparse_batch": 2.0}, ["max_sparse_batch", "2.0"]),
    ({"metrics_port": 0}, ["metrics_port", "0", "[1, 65535]"]),
    ({"metrics_port": "9400"}, ["metrics_port", "'9400'"]),
    ({"sparsty": 0.5}, ["sparsty", "accepted keys"]),
    ([0.5], ["wina", "[0.5]"]),
])
def test_bad_settings_name_key_and_value(raw, names):
    with pytest.raises(ValueError) as err:
        parse_settings(raw)
    for name in names:
        assert name in str(err.value), (name, str(err.value))


def _config_hash(wina: dict, monkeypatch, native: str) -> tuple[str, dict]:
    """vLLM's config hash (its compile-cache key) after the worker has read the settings."""
    from vllm.config import VllmConfig, set_current_vllm_config

    from wina_vllm import config, envs
    monkeypatch.setenv("WINA_NATIVE_OP", native)
    envs.native_op.cache_clear()
    vllm_config = VllmConfig(additional_config={"wina": dict(wina)})
    try:
        with set_current_vllm_config(vllm_config):
            config.load_settings()
    finally:
        envs.native_op.cache_clear()
    return vllm_config.compute_hash(), vllm_config.additional_config[config.COMPILE_FACTORS_KEY]


@requires_vllm
def test_compile_cache_key_covers_op_choice_and_calibration_contents(tmp_path, monkeypatch):
    """A graph traced with the C++ op, or with another file's kept counts, must not be
    reused: both reach vLLM's compile-cache key through the recorded factors."""
    cal = tmp_path / "cal.safetensors"
    cal.write_bytes(b"first calibration")
    wina = {"mode": "topk", "calibration": str(cal)}
    native, factors = _config_hash(wina, monkeypatch, "1")
    assert factors["native_op"] is True and factors["calibration_sha256"] is not None
    assert _config_hash(wina, monkeypatch, "1")[0] == native  # same inputs, same key
    python_op, factors = _config_hash(wina, monkeypatch, "0")
    assert factors["native_op"] is False and python_op != native
    cal.write_bytes(b"recalibrated, same path")
    assert _config_hash(wina, monkeypatch, "1")[0] != native


def test_topk_mode_at_low_sparsity_warns_of_its_speed():
    from wina_vllm.settings import topk_speed_warning

    low = topk_speed_warning(parse_settings({"sparsity": 0.25}), [0.25] * 7)
    assert low is not None and "mean sparsity 0.25" in low and "'threshold'" in low
    assert topk_speed_warning(parse_settings({"sparsity": 0.5}), [0.5] * 7) is None
    assert topk_speed_warning(parse_settings({"sparsity": 0.25, "prefill": "sparse"}),
                              [0.25] * 7) is None  # accuracy runs: speed is not the point
    threshold = parse_settings({"mode": "threshold", "calibration": "c.safetensors"})
    assert topk_speed_warning(threshold, [0.25] * 7) is None
