"""The orthogonal transform that makes WINA's weight columns orthogonal (paper-faithful WINA).

Architecture: RMSNorm weights are folded into the linears that follow them; then each
sublayer's input is expressed in an orthogonal basis Q taken from an SVD (right singular
vectors), so that for the matrix the basis came from, ``W Q = U S`` has orthogonal columns
whose norms are the singular values. q/k/v and gate/up are rotated on their input side,
o and down on their output side (each sublayer reads and writes the residual stream in its
own basis), embeddings and lm_head to match, and the residual stream is carried from one
basis to the next by shortcut matrices ``S = Q_next^T Q_prev``. RMSNorm without weight
commutes with an orthogonal rotation, so the transformed model computes the same function.

Variants (``VARIANTS``):
- ``per-layer``: attention basis from SVD(k_proj), MLP basis from SVD(gate_proj), per
  decoder layer (the official code's choice); two shortcuts per layer.
- ``shared``: one basis per layer (from k_proj) for attention and MLP; one shortcut per layer.
- ``global``: one basis for the whole model (from all k_proj rows stacked); no shortcut,
  so the result is a plain checkpoint of the original architecture.

Serving: a checkpoint with shortcuts names ``WinaLlamaForCausalLM`` (wina_vllm/models.py)
whatever it was made from: Llama, Mistral and Qwen2 decoder layers are the same in vLLM's
Llama class, Qwen2's q/k/v bias included (the config's ``qkv_bias``, which that class reads).

Constraints: Llama, Mistral and Qwen2 (pre-norm RMSNorm, no norm offset). Work is done in
float64 and saved in the model's dtype.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

VARIANTS = ("per-layer", "shared", "global")
SUPPORTED = ("LlamaForCausalLM", "MistralForCausalLM", "Qwen2ForCausalLM")
SHORTCUTS_FILE = "wina_shortcuts.safetensors"


def basis(weight: torch.Tensor) -> torch.Tensor:
    """[K, K] orthogonal Q (right singular vectors of ``weight``, largest first)."""
    _, _, vh = torch.linalg.svd(weight.double(), full_matrices=True)
    return vh.T.contiguous()


def _set(linear: torch.nn.Linear, w: torch.Tensor) -> None:
    linear.weight.data = w.to(linear.weight.dtype).contiguous()


def weight_bases(model, variant: str) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """Per decoder layer, the attention and MLP input bases of ``variant`` (SVDs of the
    RMSNorm-folded k_proj / gate_proj weights; see the module docstring)."""
    layers = model.model.layers
    k_folded = [layer.self_attn.k_proj.weight.double() * layer.input_layernorm.weight.double()
                for layer in layers]
    if variant == "global":
        q = basis(torch.cat(k_folded))  # one object: the same basis everywhere, no shortcut
        return [q] * len(layers), [q] * len(layers)
    attn_b = [basis(w) for w in k_folded]
    mlp_b = attn_b if variant == "shared" else [
        basis(layer.mlp.gate_proj.weight.double() * layer.post_attention_layernorm.weight.double())
        for layer in layers]
    return attn_b, mlp_b


@torch.no_grad()
def transform_model(model, variant: str, progress=None,
                    bases: tuple[list[torch.Tensor], list[torch.Tensor]] | None = None
                    ) -> dict[int, dict[str, torch.Tensor]]:
    """Transform a transformers decoder in place; return its shortcut matrices per layer.

    ``bases``: (attention, MLP) orthogonal bases per layer to use instead of the variant's
    weight SVDs (``weight_bases``); a list that repeats one matrix makes no shortcut there.
    """
    if variant not in VARIANTS:
        raise ValueError(f"variant: got {variant!r}; accepted: {', '.join(VARIANTS)}")
    archs = list(getattr(model.config, "architectures", None) or [type(model).__name__])
    if not any(a in SUPPORTED for a in archs):
        raise ValueError(f"transform: unsupported architecture {archs}; supported: {SUPPORTED}")
    layers = model.model.layers
    g_attn = [layer.input_layernorm.weight.double() for layer in layers]
    g_mlp = [layer.post_attention_layernorm.weight.double() for layer in layers]
    attn_b, mlp_b = bases if bases is not None else weight_bases(model, variant)

    emb = model.model.embed_tokens.weight
    lm_head = model.lm_head.weight.double() * model.model.norm.weight.double()
    model.config.tie_word_embeddings = False
    if model.lm_head.weight is emb:  # untie: embeddings and lm_head now differ
        model.lm_head.weight = torch.nn.Parameter(emb.detach().clone())
    emb.data = (emb.double() @ attn_b[0]).to(emb.dtype)

    shortcuts: dict[int, dict[str, torch.Tensor]] = {}
    for i, layer in enumerate(progress(layers) if progress else layers):
        a, m = attn_b[i], mlp_b[i]
        attn, mlp = layer.self_attn, layer.mlp
        for lin in (attn.q_proj, attn.k_proj, attn.v_proj):
            _set(lin, lin.weight.double() * g_attn[i] @ a)
        _set(attn.o_proj, a.T @ attn.o_proj.weight.double())
        for lin in (mlp.gate_proj, mlp.up_proj):
            _set(lin, lin.weight.double() * g_mlp[i] @ m)
        _set(mlp.down_proj, m.T @ mlp.down_proj.weight.double())
        layer.input_layernorm.weight.data.fill_(1.0)
        layer.post_attention_layernorm.weight.data.fill_(1.0)
        nxt = attn_b[i + 1] if i + 1 < len(layers) else m
        entry = {}
        if m is not a:
            entry["shortcut_attn"] = (m.T @ a).float()
        if nxt is not m:
            entry["shortcut_mlp"] = (nxt.T @ m).float()
        if entry:
            shortcuts[i] = entry
    _set(model.lm_head, lm_head @ mlp_b[-1])
    model.model.norm.weight.data.fill_(1.0)
    model.config.wina_transform = {"variant": variant, "format_version": 1}
    if shortcuts:  # vLLM must pick the class that applies them
        model.config.architectures = ["WinaLlamaForCausalLM"]
        if any(a.startswith("Qwen2") for a in archs):
            model.config.qkv_bias = True  # vLLM's Llama layer: bias on q/k/v, none on o
    return shortcuts


class ShortcutDecoderLayer(torch.nn.Module):
    """A transformers decoder layer that moves the residual stream between bases."""

    def __init__(self, layer: torch.nn.Module, shortcut_attn: torch.Tensor | None,
                 shortcut_mlp: torch.Tensor | None):
        super().__init__()
        self.layer = layer
        self.register_buffer("shortcut_attn", shortcut_attn)
        self.register_buffer("shortcut_mlp", shortcut_mlp)
        if hasattr(layer, "attention_type"):
            self.attention_type = layer.attention_type

    def forward(self, hidden_states, attention_mask=None, position_ids=None, past_key_values=None,
                use_cache=False, position_embeddings=None, **kwargs):
        layer = self.layer
        h = layer.input_layernorm(hidden_states)
        h, _ = layer.self_attn(hidden_states=h, attention_mask=attention_mask,
                               position_ids=position_ids, past_key_values=past_key_values,
                               use_cache=use_cache, position_embeddings=position_embeddings,
                               **kwargs)
        x = hidden_states + h
        if self.shortcut_attn is not None:
            x = x @ self.shortcut_attn.to(x.dtype).T
        x = x + layer.mlp(layer.post_attention_layernorm(x))
        if self.shortcut_mlp is not None:
            x = x @ self.shortcut_mlp.to(x.dtype).T
        return x


def attach_shortcuts(model, shortcuts: dict[int, dict[str, torch.Tensor]]) -> None:
    """Wrap the decoder layers that carry shortcuts (transformers reference forward)."""
    for i, entry in shortcuts.items():
        model.model.layers[i] = ShortcutDecoderLayer(model.model.layers[i],
                                                     entry.get("shortcut_attn"),
                                                     entry.get("shortcut_mlp"))


def save_transformed(model, tokenizer, shortcuts, out_dir: str | Path, dtype=None) -> Path:
    """Checkpoint in the original layout + ``wina_shortcuts.safetensors``."""
    from safetensors.torch import save_file

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    if dtype is not None:
        model.to(dtype)
    archs = list(model.config.architectures or [])
    model.save_pretrained(out, safe_serialization=True)  # writes its own class name ...
    cfg = json.loads((out / "config.json").read_text())
    cfg["architectures"] = archs  # ... so restore the plugin class that applies shortcuts
    (out / "config.json").write_text(json.dumps(cfg, indent=2))
    tokenizer.save_pretrained(out)
    if shortcuts:
        tensors = {f"model.layers.{i}.{k}": v.to(dtype or torch.float32).contiguous()
                   for i, e in shortcuts.items() for k, v in e.items()}
        save_file(tensors, str(out / SHORTCUTS_FILE),
                  metadata={"variant": model.config.wina_transform["variant"]})
    return out


def load_transformed(path: str | Path, dtype=torch.float32):
    """Load a transformed checkpoint for the transformers reference (shortcuts attached)."""
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = Path(path)
    model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype).eval()
    shortcuts: dict[int, dict[str, torch.Tensor]] = {}
    if (path / SHORTCUTS_FILE).exists():
        for name, t in load_file(str(path / SHORTCUTS_FILE)).items():
            _, _, i, kind = name.split(".")
            shortcuts.setdefault(int(i), {})[kind] = t.float()
    attach_shortcuts(model, shortcuts)
    return model, AutoTokenizer.from_pretrained(path)


def transform_checkpoint(model_path: str, out_dir: str | Path, variant: str) -> Path:
    """``wina-vllm transform``: load, transform in float64, save in the model's dtype."""
    from tqdm import tqdm
    from transformers import AutoModelForCausalLM, AutoTokenizer

    config = json.loads((Path(model_path) / "config.json").read_text())
    dtype = getattr(torch, str(config.get("torch_dtype") or config.get("dtype") or "float32"))
    model = AutoModelForCausalLM.from_pretrained(model_path, dtype=torch.float64).eval()
    tok = AutoTokenizer.from_pretrained(model_path)
    shortcuts = transform_model(model, variant,
                                progress=lambda it: tqdm(it, desc=f"transform ({variant})",
                                                         unit="layer"))
    return save_transformed(model, tok, shortcuts, out_dir, dtype)
