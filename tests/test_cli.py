"""The `wina-vllm` command line: arguments reach the functions they name."""

from __future__ import annotations

import json

import pytest

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
