"""Calibration files: round trip, and refusal of corrupt or mismatched files."""

from __future__ import annotations

import json

import pytest
import torch
from transformers import LlamaConfig

from conftest import requires_vllm
from wina_vllm import calibration_file as cf


def _config(**overrides):
    base = dict(vocab_size=512, hidden_size=128, intermediate_size=320, num_hidden_layers=2,
                num_attention_heads=4, num_key_value_heads=2, head_dim=32)
    base.update(overrides)
    cfg = LlamaConfig(**base)
    cfg.architectures = ["LlamaForCausalLM"]
    return cfg


def _calibration(layers=2, criterion="wina"):
    norm_mean = torch.rand(layers, 7) + 0.5
    return cf.Calibration(thresholds=torch.rand(layers, 7), sparsity=torch.full((layers, 7), 0.5),
                          norm_mean=norm_mean, criterion=criterion, target_sparsity=0.5,
                          greedy=False, fingerprint=cf.model_fingerprint(_config(), norm_mean))


def test_round_trip(tmp_path):
    cal = _calibration()
    path = tmp_path / "c.safetensors"
    cf.save(path, cal)
    got = cf.load(path)
    assert torch.equal(got.thresholds, cal.thresholds) and got.criterion == "wina"
    assert got.fingerprint == cal.fingerprint and got.target_sparsity == 0.5
    cf.check_model(got, _config(), "wina", path)
    cf.check_signature(got, 1, "down", float(cal.norm_mean[1, 6]) * 1.01, path)


def test_greedy_blend_round_trips_and_older_files_have_none(tmp_path):
    import dataclasses

    cal = dataclasses.replace(_calibration(), greedy=True, greedy_blend=0.75)
    cf.save(tmp_path / "g.safetensors", cal)
    assert cf.load(tmp_path / "g.safetensors").greedy_blend == 0.75
    cf.save(tmp_path / "u.safetensors", _calibration())  # written without the key
    assert cf.load(tmp_path / "u.safetensors").greedy_blend is None


def test_missing_and_corrupt_files(tmp_path):
    with pytest.raises(ValueError, match="no such file"):
        cf.load(tmp_path / "missing.safetensors")
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"\x00garbage" * 10)
    with pytest.raises(ValueError, match="cannot be read as safetensors"):
        cf.load(bad)
    path = tmp_path / "c.safetensors"
    cf.save(path, _calibration())
    data = bytearray(path.read_bytes())
    path.write_bytes(bytes(data[: len(data) // 2]))  # truncated
    with pytest.raises(ValueError, match="not usable"):
        cf.load(path)


def test_wrong_format_or_version(tmp_path):
    from safetensors.torch import save_file

    path = tmp_path / "c.safetensors"
    save_file({"thresholds": torch.zeros(2, 7)}, str(path), metadata={"format": "other"})
    with pytest.raises(ValueError, match="format is 'other'"):
        cf.load(path)
    cal = _calibration()
    cf.save(path, cal)
    from safetensors import safe_open
    with safe_open(str(path), "pt") as f:
        meta, tensors = f.metadata(), {k: f.get_tensor(k) for k in f.keys()}
    meta["format_version"] = "99"
    save_file(tensors, str(path), metadata=meta)
    with pytest.raises(ValueError, match="format_version"):
        cf.load(path)
    meta["format_version"] = "1"
    tensors["sparsity"] = torch.zeros(3, 7)
    save_file(tensors, str(path), metadata=meta)
    with pytest.raises(ValueError, match=r"\[num_layers, 7\]"):
        cf.load(path)


@pytest.mark.parametrize("override,key", [
    ({"hidden_size": 256, "head_dim": 64}, "hidden_size"),
    ({"num_hidden_layers": 3}, "num_hidden_layers"),
    ({"intermediate_size": 64}, "intermediate_size"),
])
def test_other_model_is_refused(tmp_path, override, key):
    path = tmp_path / "c.safetensors"
    cf.save(path, _calibration())
    with pytest.raises(ValueError, match=f"model mismatch: {key}"):
        cf.check_model(cf.load(path), _config(**override), "wina", path)


def test_other_criterion_or_weights_are_refused(tmp_path):
    path = tmp_path / "c.safetensors"
    cal = _calibration()
    cf.save(path, cal)
    got = cf.load(path)
    with pytest.raises(ValueError, match="criterion 'wina'"):
        cf.check_model(got, _config(), "teal", path)
    with pytest.raises(ValueError, match="weights differ"):
        cf.check_signature(got, 0, "q", float(cal.norm_mean[0, 0]) * 1.5, path)
    assert json.loads(json.dumps(got.fingerprint))["architecture"] == ["LlamaForCausalLM"]


@requires_vllm
def test_signature_of_a_row_parallel_shard_is_the_whole_matrix(monkeypatch):
    """Under TP a row-parallel layer (o, down) holds half the columns: its signature must
    be the whole matrix's mean column norm, which a file made on one GPU records."""
    from wina_vllm import linear

    norms = (torch.rand(2, 64) * torch.linspace(0.5, 2.0, 64)).float()  # halves differ
    mine, other = norms[:, :32], norms[:, 32:]

    def all_reduce(t):  # rank 0's view of the group's sum: rank 1 adds its totals
        return t + torch.stack([other.sum(1), torch.full_like(other[:, 0], 32)], dim=1)

    monkeypatch.setattr(linear, "all_reduce_sum", all_reduce)
    torch.testing.assert_close(linear.mean_column_norms(mine, row_parallel=True), norms.mean(1))
    # The shard's own mean is far off (a file made on one GPU would be refused) ...
    assert ((mine.mean(1) - norms.mean(1)).abs() > cf.SIGNATURE_RTOL * norms.mean(1)).all()
    # ... and column-parallel layers, whose norms are already the whole matrix's, don't reduce.
    torch.testing.assert_close(linear.mean_column_norms(norms, row_parallel=False),
                               norms.mean(1))
