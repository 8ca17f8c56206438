"""shapes_from_config: a checkpoint's gated linears as one GPU holds them (kernel_bench.py
--hf-config). The engine tests check the same table against vLLM's own layers."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from wina_vllm.shapes import LAYER_SHAPES, shapes_from_config

LLAMA3_8B = json.loads((Path(__file__).resolve().parent.parent / "benchmarks" / "models"
                        / "llama3-8b" / "config.json").read_text())


def test_llama3_8b_config_gives_the_built_in_table():
    assert shapes_from_config(LLAMA3_8B) == LAYER_SHAPES["llama3-8b"]


def test_tensor_parallel_shards_columns_and_rows():
    assert shapes_from_config(LLAMA3_8B, tp=4) == {
        "qkv": (4096, (1024, 256, 256)), "o": (1024, (4096,)),
        "gate_up": (4096, (3584, 3584)), "down": (3584, (4096,))}


def test_more_ranks_than_kv_heads_replicate_them():
    # 8 key/value heads over 16 ranks: each rank holds one (128 columns), as vLLM does.
    assert shapes_from_config(LLAMA3_8B, tp=16)["qkv"] == (4096, (256, 128, 128))


def test_explicit_head_dim_and_a_text_config():
    # Gemma-style: head_dim 256 with 16 heads on a 3072-wide model, nested as in Gemma 3 VL.
    text = {"hidden_size": 3072, "intermediate_size": 24576, "num_attention_heads": 16,
            "num_key_value_heads": 16, "head_dim": 256}
    assert shapes_from_config({"text_config": text}) == {
        "qkv": (3072, (4096, 4096, 4096)), "o": (4096, (3072,)),
        "gate_up": (3072, (24576, 24576)), "down": (24576, (3072,))}


@pytest.mark.parametrize("tp,message", [
    (3, "tp: got 3; accepted: a divisor of the attention heads (32)"),
    (0, "tp: got 0; accepted: a positive integer"),
    (True, "tp: got True"),
])
def test_bad_tp_is_named(tp, message):
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
        shapes_from_config(LLAMA3_8B, tp=tp)


def test_kv_heads_that_do_not_split_are_refused():
    config = {**LLAMA3_8B, "num_key_value_heads": 6, "num_attention_heads": 48,
              "intermediate_size": 12288}
    with pytest.raises(ValueError, match="key/value heads \\(6\\)"):
        shapes_from_config(config, tp=4)


def test_a_config_without_the_sizes_is_refused():
    with pytest.raises(ValueError, match="'intermediate_size'"):
        shapes_from_config({"hidden_size": 64, "num_attention_heads": 4})
