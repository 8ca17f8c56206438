"""wina-vllm: WINA activation sparsity for vLLM decoding.

``register()`` is the ``vllm.general_plugins`` entry point. vLLM calls it in every
process (API server, engine core, workers), so it only registers Python objects:
no CUDA, no kernel build, safe to call again.
"""

from __future__ import annotations

import functools

__version__ = "0.1.0"


@functools.cache
def register() -> None:
    """Register the ``"wina"`` quantization method, the ``wina::sparse_linear`` op and the
    model class for transformed checkpoints."""
    from wina_vllm import ops  # noqa: F401  (registers torch.ops.wina.sparse_linear)
    from wina_vllm.compat import register_quantization_config
    from wina_vllm.config import WinaConfig

    register_quantization_config("wina")(WinaConfig)

    from vllm import ModelRegistry

    # By name: the module (and vLLM's model code) is imported only when such a model loads.
    # Transformed Llama, Mistral and Qwen2 checkpoints all name this class (transform.py).
    ModelRegistry.register_model("WinaLlamaForCausalLM", "wina_vllm.models:WinaLlamaForCausalLM")
