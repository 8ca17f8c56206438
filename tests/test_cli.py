"""The `wina-vllm` command line: arguments reach the functions they name."""

from __future__ import annotations

import json

import pytest
import torch

from wina_vllm import cli
from wina_vllm.tiny_model import ARCHS


@pytest.mark.parametrize("arch,architecture", [("gemma", "GemmaForCausalLM"),
                                               ("gemma3-mm", "Gemma3ForConditionalGeneration")])
def test_tiny_model_builds_every_architecture(tmp_path, capsys, arch, architecture):
    assert arch in ARCHS
    cli.main(["tiny-model", str(tmp_path / arch), "--arch", arch])
    out = capsys.readouterr().out.strip()
    assert json.loads((tmp_path / arch / "config.json").read_text())["architectures"] == [
        architecture]
    assert out.endswith(arch)


def test_tiny_model_refuses_an_unknown_architecture(tmp_path, capsys):
    with pytest.raises(SystemExit) as exc:
        cli.main(["tiny-model", str(tmp_path / "x"), "--arch", "gpt2"])
    assert exc.value.code == 2 and "invalid choice: 'gpt2'" in capsys.readouterr().err


def test_calibrate_greedy_no_blend_keeps_the_greedy_allocation_whole(tiny_models, tmp_path,
                                                                      capsys):
    text = tmp_path / "cal.txt"
    from wina_vllm.text import stdlib_prose

    text.write_text(stdlib_prose(60_000))
    args = ["calibrate", str(tiny_models["llama"]), "--sparsity", "0.4", "--text", str(text),
            "--window", "128", "--windows", "4", "--greedy"]
    cli.main(args + ["--out", str(tmp_path / "pure.safetensors"), "--no-blend"])
    assert capsys.readouterr().out.rstrip().endswith("greedy blend 1.0")
    cli.main(args + ["--out", str(tmp_path / "blended.safetensors")])
    from wina_vllm import calibration_file as cf
    from wina_vllm.greedy import BLENDS

    pure, mixed = (cf.load(tmp_path / f) for f in ("pure.safetensors", "blended.safetensors"))
    a = mixed.greedy_blend
    assert pure.greedy_blend == 1.0 and a in BLENDS
    # The same greedy allocation, blended with uniform by a.
    assert torch.allclose(mixed.sparsity, 0.4 + a * (pure.sparsity - 0.4), atol=1e-6)
    with pytest.raises(SystemExit, match="--no-blend: got it without --greedy"):
        cli.main(["calibrate", str(tiny_models["llama"]), "--sparsity", "0.4", "--out",
                  str(tmp_path / "x.safetensors"), "--no-blend"])
