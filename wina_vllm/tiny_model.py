"""Tiny random models with a locally trained tokenizer, for demos and engine tests.

No model hub is reachable on CI, so the project builds its own: a few-layer Llama, Qwen2,
Qwen3, Gemma, Gemma2, Gemma3 (text-only or vision-language) or Mistral with seeded random
weights and a byte-level BPE tokenizer trained on :func:`wina_vllm.text.stdlib_prose`;
and random LoRA adapters for any Llama-shaped config (tests, and the serving benchmark's
LoRA runs).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerFast

CHAT_TEMPLATE = (
    "{% for m in messages %}<|{{ m['role'] }}|>\n{{ m['content'] }}\n{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>\n{% endif %}"
)
ARCHS = ("llama", "qwen2", "qwen3", "gemma", "gemma2", "gemma3", "mistral", "gemma3-mm")
VISION_LANGUAGE = ("gemma3-mm",)
_SPECIALS = ("<s>", "</s>", "<pad>", "<|user|>", "<|assistant|>", "<|system|>")  # ids 0..5
_IMAGE_TOKENS = {"boi_token": "<start_of_image>", "eoi_token": "<end_of_image>",
                 "image_token": "<image_soft_token>"}


def _train_tokenizer(out: Path, vocab_size: int, extra: dict[str, str] | None = None,
                     literal: tuple[str, ...] = ()) -> PreTrainedTokenizerFast:
    """Train, save and return the tokenizer; ``extra`` names special tokens (attributes
    such as ``image_token``), ``literal`` adds plain strings as whole tokens."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    from wina_vllm.text import stdlib_prose

    tok = Tokenizer(models.BPE(unk_token=None))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    specials = [*_SPECIALS, *(extra or {}).values(), *literal]
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=specials,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(stdlib_prose(60_000).split("\n\n"), trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>",
                                   pad_token="<pad>", extra_special_tokens=extra or {})
    fast.chat_template = CHAT_TEMPLATE
    fast.save_pretrained(out)
    return fast


def _config(arch: str, vocab_size: int):
    import transformers as tf

    common = dict(vocab_size=vocab_size, hidden_size=128, intermediate_size=320,
                  num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                  max_position_embeddings=512, bos_token_id=0, eos_token_id=1,
                  pad_token_id=2, tie_word_embeddings=False)
    if arch == "llama":
        return tf.LlamaConfig(**common, head_dim=32)
    if arch == "qwen2":
        return tf.Qwen2Config(**common)
    if arch == "qwen3":
        return tf.Qwen3Config(**common, head_dim=32)
    if arch == "gemma":  # vLLM's Gemma ties the output to the embeddings too
        return tf.GemmaConfig(**{**common, "tie_word_embeddings": True}, head_dim=32)
    if arch == "gemma2":
        # vLLM's Gemma2 ties the output to the embeddings
        return tf.Gemma2Config(**{**common, "tie_word_embeddings": True}, head_dim=32,
                               sliding_window=64)
    if arch == "mistral":
        return tf.MistralConfig(**common, head_dim=32, sliding_window=None)
    if arch == "gemma3":
        return tf.Gemma3TextConfig(**common, head_dim=32, sliding_window=64)
    if arch == "gemma3-mm":  # Gemma 3 4B-27B's class: a 1-layer SigLIP on 28x28 images
        text = {**common, "tie_word_embeddings": True, "head_dim": 32, "sliding_window": 64}
        vision = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                      num_attention_heads=2, image_size=28, patch_size=14, vision_use_head=False)
        ids = {k: len(_SPECIALS) + i for i, k in enumerate(_IMAGE_TOKENS)}  # trained next
        return tf.Gemma3Config(text_config=text, vision_config=vision, mm_tokens_per_image=4,
                               boi_token_index=ids["boi_token"], eoi_token_index=ids["eoi_token"],
                               image_token_index=ids["image_token"], tie_word_embeddings=True)
    raise ValueError(f"arch: got {arch!r}; accepted: {', '.join(ARCHS)}")


def build_tiny_model(out_dir: str | Path, arch: str = "llama", seed: int = 0,
                     vocab_size: int = 512) -> Path:
    """Write a tiny random ``arch`` model (safetensors, config, tokenizer) to ``out_dir``."""
    import torch
    import transformers as tf

    out = Path(out_dir)
    if (out / "config.json").exists() and (out / "tokenizer.json").exists():
        return out
    out.mkdir(parents=True, exist_ok=True)
    config = _config(arch, vocab_size)
    torch.manual_seed(seed)
    model = (tf.Gemma3ForConditionalGeneration(config) if arch in VISION_LANGUAGE
             else tf.AutoModelForCausalLM.from_config(config, dtype=torch.float32))
    with torch.no_grad():  # larger-than-default init so that outputs depend on every layer
        for p in model.parameters():
            if p.dim() == 2:
                p.normal_(0.0, 0.08)
    model.save_pretrained(out, safe_serialization=True)
    if arch not in VISION_LANGUAGE:
        _train_tokenizer(out, vocab_size)
        return out
    _hub_vision_names(out / "model.safetensors")
    # vLLM's Gemma 3 processing looks up 1 to 4 newlines as tokens, as Gemma's vocabulary has
    newlines = tuple("\n" * n for n in range(1, 5))
    tok = _train_tokenizer(out, vocab_size, _IMAGE_TOKENS, literal=newlines)
    assert tok.convert_tokens_to_ids(_IMAGE_TOKENS["image_token"]) == config.image_token_index
    processor = getattr(tf, "Gemma3ImageProcessorPil", None) or tf.Gemma3ImageProcessor
    image = processor(size={"height": 28, "width": 28})  # the PIL one needs no torchvision
    tf.Gemma3Processor(image_processor=image, tokenizer=tok, chat_template=CHAT_TEMPLATE,
                       image_seq_length=4).save_pretrained(out)
    return out


def _hub_vision_names(path: Path) -> None:
    """Name the SigLIP weights as Gemma 3's published checkpoints (and vLLM) do,
    ``[model.]vision_tower.vision_model.*``; transformers 5 saves them without
    ``vision_model``."""
    from safetensors.torch import load_file, save_file

    def hub(key: str) -> str:
        head, sep, rest = key.partition("vision_tower.")
        if not sep or head not in ("", "model.") or rest.startswith("vision_model."):
            return key
        return f"{head}vision_tower.vision_model.{rest}"

    save_file({hub(k): v for k, v in load_file(path).items()}, path, metadata={"format": "pt"})


def write_synthetic_tokenizer(out_dir: str | Path, vocab_size: int) -> Path:
    """A word-level tokenizer of ``vocab_size`` tokens ``<0> .. <N>`` (for dummy-weight models).

    Load tests need text in and text out; any token id a dummy model emits decodes to a
    word, and the word encodes back to the same id.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    vocab = {f"<{i}>": i for i in range(vocab_size)}  # no token is a substring of another
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<0>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok.decoder = decoders.WordPiece(prefix="##")  # joins words with spaces
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<1>", eos_token="<2>")
    fast.chat_template = CHAT_TEMPLATE
    fast.save_pretrained(out)
    return out


def write_random_lora(model_dir: str | Path, out_dir: str | Path, rank: int = 8,
                      seed: int = 1, dtype: str = "float32") -> Path:
    """A random PEFT LoRA adapter (alpha = 2 * rank) on every attention and MLP projection
    of the Llama-shaped model whose ``config.json`` is in ``model_dir``."""
    import json

    import torch
    from safetensors.torch import save_file

    from wina_vllm.calibrate import HF_MODULES

    cfg = json.loads((Path(model_dir) / "config.json").read_text())
    hidden, inter = cfg["hidden_size"], cfg["intermediate_size"]
    head_dim = cfg.get("head_dim") or hidden // cfg["num_attention_heads"]
    q, kv = cfg["num_attention_heads"] * head_dim, cfg["num_key_value_heads"] * head_dim
    shapes = {"q": (hidden, q), "k": (hidden, kv), "v": (hidden, kv), "o": (q, hidden),
              "gate": (hidden, inter), "up": (hidden, inter), "down": (inter, hidden)}
    g = torch.Generator().manual_seed(seed)
    tensors = {}
    for layer in range(cfg["num_hidden_layers"]):
        for p, (fan_in, fan_out) in shapes.items():
            key = f"base_model.model.model.layers.{layer}.{HF_MODULES[p]}"
            for part, shape in (("lora_A", (rank, fan_in)), ("lora_B", (fan_out, rank))):
                t = torch.randn(*shape, generator=g) * 0.1
                tensors[f"{key}.{part}.weight"] = t.to(getattr(torch, dtype))
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(out / "adapter_model.safetensors"))
    (out / "adapter_config.json").write_text(json.dumps({
        "peft_type": "LORA", "task_type": "CAUSAL_LM", "r": rank, "lora_alpha": 2 * rank,
        "lora_dropout": 0.0, "bias": "none", "fan_in_fan_out": False,
        "target_modules": [HF_MODULES[p].split(".")[1] for p in shapes],
        "base_model_name_or_path": str(model_dir)}))
    return out
