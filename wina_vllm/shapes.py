"""Linear shapes (K inputs -> projections' output widths) of the models WINA targets.

Used by the kernel tests and benchmarks so both cover the same layers. Widths are
at tensor-parallel size 1; fused layers list one width per projection.
``shapes_from_config`` derives the same table for any supported checkpoint's
config.json, as one GPU holds it under tensor parallelism, so a user can benchmark
the kernel on their own model's layers before serving it.
"""

from __future__ import annotations

from typing import Any, Mapping

LAYER_SHAPES: dict[str, dict[str, tuple[int, tuple[int, ...]]]] = {
    "llama3-8b": {
        "qkv": (4096, (4096, 1024, 1024)),
        "o": (4096, (4096,)),
        "gate_up": (4096, (14336, 14336)),
        "down": (14336, (4096,)),
    },
    "qwen2.5-7b": {
        "qkv": (3584, (3584, 512, 512)),
        "o": (3584, (3584,)),
        "gate_up": (3584, (18944, 18944)),
        "down": (18944, (3584,)),
    },
    "smollm2-135m": {
        "qkv": (576, (576, 192, 192)),
        "o": (576, (576,)),
        "gate_up": (576, (1536, 1536)),
        "down": (1536, (576,)),
    },
    # Awkward sizes: N not a multiple of 8, segments that split an 8-column group.
    "odd": {
        "576x4100": (576, (4100,)),
        "4100x1536": (4100, (1536,)),
        "1536x100+36+36": (1536, (100, 36, 36)),
        "4100x4100": (4100, (4100,)),
    },
}


def all_shapes() -> list[tuple[str, int, tuple[int, ...]]]:
    """(``model/layer``, K, segment widths) for every layer above."""
    return [(f"{model}/{layer}", k, segs)
            for model, layers in LAYER_SHAPES.items() for layer, (k, segs) in layers.items()]


SIZE_KEYS = ("num_hidden_layers", "hidden_size", "intermediate_size", "num_attention_heads",
             "num_key_value_heads", "head_dim", "vocab_size")


def model_sizes(config: Any) -> dict[str, Any]:
    """The decoder's sizes (``SIZE_KEYS``) from a Hugging Face config, as a transformers
    object or as config.json's dict; a vision-language model's from its ``text_config``.
    Unset key/value heads and head_dim take transformers' defaults: every head, and
    hidden size / heads."""
    def getter(c: Any):
        return c.get if isinstance(c, Mapping) else lambda key: getattr(c, key, None)

    text = getter(config)("text_config") or config
    sizes = {key: getter(text)(key) for key in SIZE_KEYS}
    hidden, heads = sizes["hidden_size"], sizes["num_attention_heads"]
    if sizes["num_key_value_heads"] is None:
        sizes["num_key_value_heads"] = heads
    if sizes["head_dim"] is None and isinstance(hidden, int) and isinstance(heads, int):
        sizes["head_dim"] = hidden // heads
    return sizes


def shapes_from_config(config: Mapping[str, Any],
                       tp: int = 1) -> dict[str, tuple[int, tuple[int, ...]]]:
    """The four gated linears of a decoder layer as one GPU of a ``tp``-way tensor-parallel
    group holds them: q/k/v and gate/up split by output columns, o and down by input rows,
    as vLLM shards them. ``config`` is a Hugging Face config (a vision-language model's
    language model is read from its ``text_config``)."""
    sizes = model_sizes(config)
    missing = [k for k in ("hidden_size", "intermediate_size", "num_attention_heads")
               if not isinstance(sizes[k], int)]
    if missing:
        raise ValueError(f"config: {missing} missing or not integers; accepted: a Hugging Face "
                         "config.json of a decoder-only model (or with a text_config)")
    hidden, inter = sizes["hidden_size"], sizes["intermediate_size"]
    heads, kv_heads = sizes["num_attention_heads"], sizes["num_key_value_heads"]
    head_dim = sizes["head_dim"]
    if isinstance(tp, bool) or not isinstance(tp, int) or tp < 1:
        raise ValueError(f"tp: got {tp!r}; accepted: a positive integer")
    if heads % tp or inter % tp:
        raise ValueError(f"tp: got {tp}; accepted: a divisor of the attention heads ({heads}) "
                         f"and the MLP width ({inter})")
    # vLLM replicates k/v heads when there are fewer than ranks: each rank holds one.
    kv_local = max(kv_heads // tp, 1) if kv_heads % tp == 0 or tp % kv_heads == 0 else None
    if kv_local is None:
        raise ValueError(f"tp: got {tp}; accepted: a divisor or multiple of the key/value "
                         f"heads ({kv_heads})")
    q, kv, mlp = heads // tp * head_dim, kv_local * head_dim, inter // tp
    return {"qkv": (hidden, (q, kv, kv)), "o": (q, (hidden,)),
            "gate_up": (hidden, (mlp, mlp)), "down": (mlp, (hidden,))}
