"""Chapter 1's first language models, before attention: a bigram table and a small MLP.

Both have the interface of the course's GPT (``llmlab.model``), so one data pipeline, one
training loop, one evaluation and one sampler serve all three (``llmlab.lm``,
``llmlab.training``, ``llmlab.generation``): ``model(tokens)`` maps token ids (batch, n) to logits
(batch, n, vocab), where position t scores the token that follows ``tokens[:, t]``, and
``model.context`` says how many of the latest tokens a prediction reads.

- ``CountNGramLM`` is not trained by gradient descent at all: it counts, in a training text,
  which token follows each run of ``context`` tokens (add-one smoothing keeps every
  probability above zero), the classic language model from before neural networks;
- ``BigramLM`` reads only the current token: one row of next-token scores per token.
- ``MLPLM`` reads the last ``context`` tokens through embeddings and a hidden layer, in the style
  of Bengio et al. (2003). Near the start of a sequence, where fewer than ``context`` tokens
  exist, the missing ones are zero vectors.
"""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn import functional as F


class BigramLM(nn.Module):
    """Next-token scores from the current token alone: a (vocab, vocab) table."""

    def __init__(self, vocab_size: int):
        super().__init__()
        self.context = 1
        self.table = nn.Embedding(vocab_size, vocab_size)
        nn.init.zeros_(self.table.weight)  # start from the uniform prediction, perplexity = vocab size

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        if tokens.dim() != 2:
            raise ValueError(f"expected token ids of shape (batch, positions), got {tuple(tokens.shape)}")
        return self.table(tokens)


class MLPLM(nn.Module):
    """Embed each of the last ``context`` tokens, concatenate, one hidden layer, scores for the next token."""

    def __init__(self, vocab_size: int, context: int, embedding_dim: int = 24, hidden: int = 256):
        super().__init__()
        if context < 1:
            raise ValueError(f"context must be at least 1 token, got {context}")
        self.context = context
        self.embedding = nn.Embedding(vocab_size, embedding_dim)
        self.hidden = nn.Linear(context * embedding_dim, hidden)
        self.norm = nn.LayerNorm(hidden)  # keeps the hidden activations in range, so training is stable at a high learning rate
        self.output = nn.Linear(hidden, vocab_size)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        if tokens.dim() != 2:
            raise ValueError(f"expected token ids of shape (batch, positions), got {tuple(tokens.shape)}")
        vectors = self.embedding(tokens)                                   # (batch, n, embedding)
        # Zero vectors stand in for the tokens before the start, then every position gets the
        # window of the `context` vectors that end at it: (batch, n, context, embedding).
        padded = F.pad(vectors, (0, 0, self.context - 1, 0))
        windows = padded.unfold(1, self.context, 1).transpose(2, 3)
        return self.output(F.gelu(self.norm(self.hidden(windows.flatten(2)))))


class CountNGramLM(nn.Module):
    """Next-token probabilities counted from a text: how often each token followed each run of ``context`` tokens.

    ``fit(ids)`` counts; positions near the start of a sequence, with fewer than ``context``
    tokens before them, read token 0 in place of the missing ones. The table has
    vocab ** (context + 1) entries, so keep ``context`` small (1 or 2 for 65 characters).
    """

    def __init__(self, vocab_size: int, context: int = 1, smoothing: float = 1.0):
        super().__init__()
        if not 1 <= context <= 3:
            raise ValueError(f"context must be 1, 2 or 3 tokens (the table grows as vocab ** (context + 1)), got {context}")
        self.context, self.vocab_size, self.smoothing = context, vocab_size, smoothing
        self.register_buffer("log_probabilities", torch.full((vocab_size ** context, vocab_size), -math.log(vocab_size)))

    def _rows(self, tokens: torch.Tensor) -> torch.Tensor:
        """The table row of every position: its last ``context`` tokens read as one number in base vocab_size."""
        padded = F.pad(tokens, (self.context - 1, 0))
        windows = padded.unfold(1, self.context, 1)  # (batch, n, context)
        powers = self.vocab_size ** torch.arange(self.context - 1, -1, -1, device=tokens.device)
        return (windows * powers).sum(-1)

    @torch.no_grad()
    def fit(self, ids: torch.Tensor) -> "CountNGramLM":
        rows = self._rows(ids[None, :-1])[0]
        counts = torch.full((self.vocab_size ** self.context, self.vocab_size), self.smoothing)
        counts.index_put_((rows, ids[1:]), torch.ones(len(rows)), accumulate=True)
        self.log_probabilities.copy_((counts / counts.sum(1, keepdim=True)).log())
        return self

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        if tokens.dim() != 2:
            raise ValueError(f"expected token ids of shape (batch, positions), got {tuple(tokens.shape)}")
        return self.log_probabilities[self._rows(tokens)]
