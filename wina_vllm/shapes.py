"""Linear shapes (K inputs -> projections' output widths) of the models WINA targets.

Used by the kernel tests and benchmarks so both cover the same layers. Widths are
at tensor-parallel size 1; fused layers list one width per projection.
"""

from __future__ import annotations

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
