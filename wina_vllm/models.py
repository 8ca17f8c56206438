"""vLLM model classes for checkpoints made by ``wina-vllm transform`` (see transform.py).

Architecture: a transformed checkpoint has the original layout plus shortcut matrices that
carry the residual stream from one sublayer's basis to the next. ``WinaLlamaForCausalLM``
is vLLM's ``LlamaForCausalLM`` built with a decoder layer that, where the checkpoint has a
shortcut, adds the sublayer output to the residual and multiplies by the shortcut before
the next norm. Everything else (loading, TP, the "wina" quantization of the rotated
linears) is vLLM's own code. Transformed Mistral and Qwen2 checkpoints use this class too
(their decoder layers are Llama's; Qwen2's q/k/v bias comes from the config's ``qkv_bias``).
The global-basis variant has no shortcut and is served by the original class.

Constraints: the shortcut multiply runs dense on the full hidden size on every rank.
"""

from __future__ import annotations

import torch
from vllm.model_executor.models.llama import LlamaDecoderLayer, LlamaForCausalLM


def shortcut_flags(config, layer_index: int) -> tuple[bool, bool]:
    """(after attention, after MLP): which shortcuts decoder layer ``layer_index`` has."""
    variant = (getattr(config, "wina_transform", None) or {}).get("variant")
    if variant not in ("per-layer", "shared"):
        raise ValueError(f"wina: transformed checkpoint has wina_transform.variant {variant!r}; "
                         "expected 'per-layer' or 'shared' (serve 'global' as the original "
                         "architecture)")
    last = layer_index == config.num_hidden_layers - 1
    return variant == "per-layer", not last


class WinaLlamaDecoderLayer(LlamaDecoderLayer):
    """Llama decoder layer that moves the residual stream between bases."""

    def __init__(self, vllm_config, prefix: str = "", config=None, **kwargs) -> None:
        super().__init__(vllm_config, prefix, config, **kwargs)
        config = config or vllm_config.model_config.hf_config
        index = int(prefix.rsplit(".", 1)[-1])
        has_attn, has_mlp = shortcut_flags(config, index)
        dtype = vllm_config.model_config.dtype
        d = config.hidden_size
        self.shortcut_attn = torch.nn.Parameter(torch.empty(d, d, dtype=dtype),
                                                requires_grad=False) if has_attn else None
        self.shortcut_mlp = torch.nn.Parameter(torch.empty(d, d, dtype=dtype),
                                               requires_grad=False) if has_mlp else None

    def forward(self, positions, hidden_states, residual, **kwargs):
        if residual is None:
            residual = hidden_states
            hidden_states = self.input_layernorm(hidden_states)
        else:
            hidden_states, residual = self.input_layernorm(hidden_states, residual)
        hidden_states = self.self_attn(positions=positions, hidden_states=hidden_states)
        if self.shortcut_attn is not None:
            residual = torch.mm(residual + hidden_states, self.shortcut_attn.t())
            hidden_states = self.post_attention_layernorm(residual)
        else:
            hidden_states, residual = self.post_attention_layernorm(hidden_states, residual)
        hidden_states = self.mlp(hidden_states)
        if self.shortcut_mlp is not None:
            # The next layer takes the moved stream as its residual (residual None).
            return torch.mm(residual + hidden_states, self.shortcut_mlp.t()), None
        return hidden_states, residual


class WinaLlamaForCausalLM(LlamaForCausalLM):
    """``LlamaForCausalLM`` for per-layer and shared-basis transformed checkpoints."""

    def __init__(self, *, vllm_config, prefix: str = "") -> None:
        super().__init__(vllm_config=vllm_config, prefix=prefix,
                         layer_type=WinaLlamaDecoderLayer)


def identity_shortcuts(model: torch.nn.Module) -> None:
    """Set every shortcut matrix to the identity (benchmarks on dummy weights only).

    vLLM's dummy initialisation (small uniform values) shrinks the residual stream ~16x
    per shortcut, to exact zeros within a few layers, where the gate keeps every channel
    (all scores tie at 0) and the measured speed is not that of the set sparsity. The
    identity keeps the stream's scale and costs the same dense multiply.
    """
    with torch.no_grad():
        for module in model.modules():
            for name in ("shortcut_attn", "shortcut_mlp"):
                weight = getattr(module, name, None)
                if isinstance(weight, torch.Tensor):
                    weight.copy_(torch.eye(weight.shape[0], dtype=weight.dtype))
