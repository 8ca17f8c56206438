"""Layer selection: the attention and MLP linears of decoder layers, nothing else."""

from __future__ import annotations

import pytest

from wina_vllm.layers import SUPPORTED_ARCHITECTURES, check_architecture, match_target


@pytest.mark.parametrize("prefix,index,name,projections", [
    ("model.layers.0.self_attn.qkv_proj", 0, "qkv_proj", ("q", "k", "v")),
    ("model.layers.17.self_attn.o_proj", 17, "o_proj", ("o",)),
    ("model.layers.3.mlp.gate_up_proj", 3, "gate_up_proj", ("gate", "up")),
    ("model.layers.29.mlp.down_proj", 29, "down_proj", ("down",)),
    ("language_model.model.layers.2.mlp.down_proj", 2, "down_proj", ("down",)),
    ("model.language_model.layers.5.self_attn.qkv_proj", 5, "qkv_proj", ("q", "k", "v")),
])
def test_targets(prefix, index, name, projections):
    t = match_target(prefix)
    assert t is not None and (t.layer_index, t.name, t.projections) == (index, name, projections)


@pytest.mark.parametrize("prefix", [
    "lm_head", "model.embed_tokens", "model.norm", "model.layers.0.input_layernorm",
    "model.layers.0.mlp.experts.3.down_proj", "model.layers.0.mlp.shared_expert.gate_up_proj",
    "vision_tower.encoder.layers.0.mlp.fc1", "model.layers.0.self_attn.q_proj.lora",
    "model.layers.0.mlp.gate", "model.layers.x.mlp.down_proj",
    # a vision-language model's image side: SigLIP names its attention like a decoder's
    "vision_tower.vision_model.encoder.layers.0.self_attn.qkv_proj",
    "model.vision_tower.vision_model.encoder.layers.3.self_attn.qkv_proj",
    "visual.layers.1.mlp.down_proj", "multi_modal_projector.layers.0.mlp.down_proj",
])
def test_everything_else_is_left_alone(prefix):
    assert match_target(prefix) is None


def test_supported_architectures_pass():
    for arch in SUPPORTED_ARCHITECTURES:
        check_architecture([arch])


@pytest.mark.parametrize("archs", [["MixtralForCausalLM"], ["GPT2LMHeadModel"], [], None])
def test_unsupported_architecture_is_refused(archs):
    with pytest.raises(ValueError, match="unsupported model architecture"):
        check_architecture(archs)
