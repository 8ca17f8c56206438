"""Layer selection: which linears of which models WINA gates.

WINA gates the input of the attention (qkv, o) and MLP (gate_up, down) linears
of the decoder layers of dense text models. vLLM fuses q/k/v and gate/up into
one linear each; WINA keeps one gate per projection (segment) of a fused linear.
Everything else (embeddings, lm_head, vision towers, MoE experts) stays dense.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

SUPPORTED_ARCHITECTURES: tuple[str, ...] = (
    "LlamaForCausalLM",
    "MistralForCausalLM",
    "Qwen2ForCausalLM",
    "Qwen3ForCausalLM",
    "GemmaForCausalLM",
    "Gemma2ForCausalLM",
    "Gemma3ForCausalLM",
    "Gemma3ForConditionalGeneration",  # Gemma 3 4B-27B: the language model is gated
    "WinaLlamaForCausalLM",  # a Llama checkpoint made by `wina-vllm transform`
)

# vLLM module name -> projections (segments), in the order of its output columns.
FUSED_SEGMENTS: dict[str, tuple[str, ...]] = {
    "qkv_proj": ("q", "k", "v"),
    "o_proj": ("o",),
    "gate_up_proj": ("gate", "up"),
    "down_proj": ("down",),
}

_TARGET = re.compile(
    r"(?:^|\.)layers\.(?P<index>\d+)\.(?:self_attn|mlp)\.(?P<name>qkv_proj|o_proj|gate_up_proj|down_proj)$"
)


@dataclass(frozen=True)
class TargetLinear:
    """A linear WINA may gate: decoder layer index, vLLM name and its projections."""

    layer_index: int
    name: str
    projections: tuple[str, ...]


# The image side of a vision-language model stays dense: its encoder (SigLIP's layers are
# also named ``layers.N.self_attn.qkv_proj``) runs once per image, at prefill.
_TOWER = re.compile(r"(?:^|\.)(?:vision_tower|vision_model|visual|multi_modal_projector)\.")


def match_target(prefix: str) -> TargetLinear | None:
    """Return the target for a module prefix such as ``model.layers.3.mlp.down_proj`` (or
    ``language_model.model.layers.3.mlp.down_proj`` in a vision-language model)."""
    if _TOWER.search(prefix):
        return None
    m = _TARGET.search(prefix)
    if m is None:
        return None
    name = m.group("name")
    return TargetLinear(int(m.group("index")), name, FUSED_SEGMENTS[name])


def check_architecture(architectures: list[str] | None) -> None:
    """Refuse a model WINA was not built for, rather than serve it silently dense."""
    archs = list(architectures or [])
    if not any(a in SUPPORTED_ARCHITECTURES for a in archs):
        raise ValueError(
            f"wina: unsupported model architecture {archs}; supported: "
            f"{list(SUPPORTED_ARCHITECTURES)}. Serve it without --quantization wina."
        )


def hf_decoder_layers(model):
    """The text decoder layers of a transformers causal LM: ``model.model.layers``, or its
    language model's in a vision-language one (Gemma3ForConditionalGeneration)."""
    inner = model.model
    return getattr(inner, "language_model", inner).layers
