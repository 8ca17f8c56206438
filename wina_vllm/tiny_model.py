"""Tiny random models with a locally trained tokenizer, for demos and engine tests.

No model hub is reachable on CI, so the project builds its own: a few-layer
Llama, Qwen2, Gemma3 or Mistral with seeded random weights and a byte-level BPE
tokenizer trained on :func:`wina_vllm.text.stdlib_prose`.
"""

from __future__ import annotations

from pathlib import Path

CHAT_TEMPLATE = (
    "{% for m in messages %}<|{{ m['role'] }}|>\n{{ m['content'] }}\n{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>\n{% endif %}"
)
ARCHS = ("llama", "qwen2", "gemma3", "mistral")


def _train_tokenizer(out: Path, vocab_size: int) -> None:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    from wina_vllm.text import stdlib_prose

    tok = Tokenizer(models.BPE(unk_token=None))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    specials = ["<s>", "</s>", "<pad>", "<|user|>", "<|assistant|>", "<|system|>"]
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=specials,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(stdlib_prose(60_000).split("\n\n"), trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>",
                                   pad_token="<pad>")
    fast.chat_template = CHAT_TEMPLATE
    fast.save_pretrained(out)


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
    if arch == "mistral":
        return tf.MistralConfig(**common, head_dim=32, sliding_window=None)
    if arch == "gemma3":
        return tf.Gemma3TextConfig(**common, head_dim=32, sliding_window=64)
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
    model = tf.AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    with torch.no_grad():  # larger-than-default init so that outputs depend on every layer
        for p in model.parameters():
            if p.dim() == 2:
                p.normal_(0.0, 0.08)
    model.save_pretrained(out, safe_serialization=True)
    _train_tokenizer(out, vocab_size)
    return out


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
