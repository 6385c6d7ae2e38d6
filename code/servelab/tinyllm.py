"""A tiny Llama with random weights and a word-level tokenizer, built offline and saved like a real model.

Nothing is downloaded: the weights come from a :class:`transformers.LlamaConfig` and a seed, and the
tokenizer is a ``tokenizers`` WordLevel vocabulary (``<unk>``, ``<s>``, ``</s>``, then ``w0``, ``w1``, …)
wrapped in :class:`transformers.PreTrainedTokenizerFast`. :func:`save` writes ``config.json``, the
safetensors weights and the tokenizer to one folder, which any server that loads Hugging Face folders
(ours, ``transformers serve``, vLLM) can serve. One word is one token, so a prompt of *n* words is
exactly *n* tokens long (:func:`prompt`).
Taught in: chapters/06_generative.ipynb.
"""

from __future__ import annotations

import functools
import tempfile
from pathlib import Path
from typing import Any

#: The model of chapter 6: Llama architecture, 4 layers of width 256, 4 heads, a 4096-word vocabulary.
CONFIG: dict[str, Any] = {
    "hidden_size": 256,
    "intermediate_size": 688,
    "num_hidden_layers": 4,
    "num_attention_heads": 4,
    "num_key_value_heads": 4,
    "vocab_size": 4096,
    "max_position_embeddings": 2048,
    "bos_token_id": 1,
    "eos_token_id": 2,
    "pad_token_id": 0,
}
SPECIAL_TOKENS = ("<unk>", "<s>", "</s>")
SEED = 0


def vocabulary(size: int = CONFIG["vocab_size"]) -> dict[str, int]:
    """Word → id: the special tokens first, then ``w0 … w{size - 4}``."""
    vocab = {token: i for i, token in enumerate(SPECIAL_TOKENS)}
    for i in range(size - len(SPECIAL_TOKENS)):
        vocab[f"w{i}"] = len(vocab)
    return vocab


def build_tokenizer() -> "PreTrainedTokenizerFast":  # noqa: F821
    """A whitespace word-level tokenizer over :func:`vocabulary`, as a transformers fast tokenizer."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    core = Tokenizer(models.WordLevel(vocabulary(), unk_token="<unk>"))
    core.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return PreTrainedTokenizerFast(tokenizer_object=core, unk_token="<unk>", bos_token="<s>", eos_token="</s>",
                                   pad_token="<unk>")  # fmt: skip


def build_model(seed: int = SEED, **overrides: Any) -> "LlamaForCausalLM":  # noqa: F821
    """The tiny Llama with random weights drawn from ``seed`` (same seed, same weights), in eval mode."""
    import torch
    from transformers import GenerationConfig, LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(**{**CONFIG, **overrides})
    with torch.random.fork_rng():  # leave the caller's random state alone
        torch.manual_seed(seed)
        model = LlamaForCausalLM(config)
    # Random weights rarely pick </s>; still, serving benchmarks ignore end-of-sequence so every
    # request generates exactly its max_tokens (vLLM's benchmark does the same with ignore_eos).
    model.generation_config = GenerationConfig(bos_token_id=1, eos_token_id=None, pad_token_id=0, do_sample=False)
    return model.eval()


def save(directory: str | Path, seed: int = SEED) -> Path:
    """Write the model (config.json, model.safetensors) and its tokenizer to ``directory``."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    build_model(seed).save_pretrained(directory)
    build_tokenizer().save_pretrained(directory)
    return directory


@functools.lru_cache(maxsize=None)
def saved_model_dir(seed: int = SEED) -> Path:
    """The model saved once per process to a temporary folder (for servers to load)."""
    return save(Path(tempfile.mkdtemp(prefix="servelab-tinyllm-")), seed)


def prompt(tokens: int, seed: int = 0) -> str:
    """A prompt of exactly ``tokens`` tokens: random words of the vocabulary (no special tokens)."""
    import numpy as np

    if tokens < 1:
        raise ValueError(f"a prompt needs at least one token, not {tokens}")
    words = np.random.default_rng(seed).integers(0, CONFIG["vocab_size"] - len(SPECIAL_TOKENS), size=tokens)
    return " ".join(f"w{w}" for w in words)
