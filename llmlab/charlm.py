"""First language models: predict the next character from the few characters before it.

Two models with the same interface, ``model(inputs, targets=None) -> (logits, loss)``
where ``inputs`` is (batch, context) character ids and ``targets`` (batch,) the
character that follows, so `llmlab.training.train` can train either:

- ``BigramLM`` looks only at the last character: a table of next-character scores;
- ``MLPLM`` reads the last ``context`` characters through embeddings and a hidden
  layer, in the style of Bengio et al. (2003).
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from llmlab.metrics import cross_entropy, perplexity


class CharVocabulary:
    """Every distinct character of a text gets an id, in sorted order."""

    def __init__(self, text: str):
        if not text:
            raise ValueError("cannot build a vocabulary from an empty text")
        self.characters = sorted(set(text))
        self.ids = {character: i for i, character in enumerate(self.characters)}

    @property
    def size(self) -> int:
        return len(self.characters)

    def encode(self, text: str) -> torch.Tensor:
        unknown = sorted(set(text) - self.ids.keys())
        if unknown:
            raise ValueError(f"characters not in the vocabulary: {unknown[:10]}")
        return torch.tensor([self.ids[c] for c in text], dtype=torch.long)

    def decode(self, ids) -> str:
        return "".join(self.characters[i] for i in torch.as_tensor(ids).tolist())


def train_validation_split(text: str, train_fraction: float = 0.9) -> tuple[str, str]:
    """The first ``train_fraction`` of the characters for training, the rest for validation (as nanoGPT splits Tiny Shakespeare)."""
    if not 0 < train_fraction < 1:
        raise ValueError(f"train_fraction must be between 0 and 1, got {train_fraction}")
    cut = int(len(text) * train_fraction)
    return text[:cut], text[cut:]


def next_character_batch(ids: torch.Tensor, context: int, batch_size: int, generator: torch.Generator, device: torch.device):
    """``batch_size`` random windows: inputs (batch, context) and the character after each window (batch,)."""
    ends = torch.randint(context, len(ids), (batch_size,), generator=generator)
    inputs = ids[ends.unsqueeze(1) + torch.arange(-context, 0)]
    return inputs.to(device), ids[ends].to(device)


class BigramLM(nn.Module):
    """Next-character scores from the last character alone: one row of a (vocab, vocab) table per character."""

    def __init__(self, vocab_size: int):
        super().__init__()
        self.context = 1
        self.table = nn.Embedding(vocab_size, vocab_size)
        nn.init.zeros_(self.table.weight)  # start from the uniform prediction, perplexity = vocab size

    def forward(self, inputs: torch.Tensor, targets: torch.Tensor | None = None):
        logits = self.table(inputs[:, -1])
        loss = None if targets is None else F.cross_entropy(logits.float(), targets)
        return logits, loss


class MLPLM(nn.Module):
    """Embed each of the last ``context`` characters, concatenate, one hidden layer, scores for the next character."""

    def __init__(self, vocab_size: int, context: int, embedding_dim: int = 24, hidden: int = 256):
        super().__init__()
        self.context = context
        self.embedding = nn.Embedding(vocab_size, embedding_dim)
        self.hidden = nn.Linear(context * embedding_dim, hidden)
        self.norm = nn.LayerNorm(hidden)  # keeps the hidden activations in range, so training is stable at a high learning rate
        self.output = nn.Linear(hidden, vocab_size)

    def forward(self, inputs: torch.Tensor, targets: torch.Tensor | None = None):
        if inputs.shape[1] < self.context:
            raise ValueError(f"the model reads {self.context} characters, got windows of {inputs.shape[1]}")
        vectors = self.embedding(inputs[:, -self.context:]).flatten(1)
        logits = self.output(F.gelu(self.norm(self.hidden(vectors))))
        loss = None if targets is None else F.cross_entropy(logits.float(), targets)
        return logits, loss


def parameter_count(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


@torch.no_grad()
def evaluate(model: nn.Module, ids: torch.Tensor, start: int, device: torch.device, batch_size: int = 4096) -> dict[str, float]:
    """Cross-entropy (nats) and perplexity of predicting every character of ``ids`` from position ``start`` on.

    Use the same ``start`` (the longest context among the models compared) so that
    every model is scored on exactly the same characters.
    """
    if start < getattr(model, "context", 1):
        raise ValueError(f"start={start} leaves less context than the model reads ({model.context})")
    was_training = model.training
    model.eval()
    ends = torch.arange(start, len(ids))
    windows = ends.unsqueeze(1) + torch.arange(-start, 0).unsqueeze(0)
    logits = torch.cat([model(ids[windows[i:i + batch_size]].to(device))[0].float().cpu() for i in range(0, len(ends), batch_size)])
    model.train(was_training)
    loss = cross_entropy(logits, ids[ends])
    return {"cross_entropy": loss, "perplexity": perplexity(loss)}


@torch.no_grad()
def sample(model: nn.Module, vocabulary: CharVocabulary, prompt: str, length: int, generator: torch.Generator, temperature: float = 1.0) -> str:
    """Extend ``prompt`` by ``length`` characters, each drawn from the model's predicted distribution."""
    if len(prompt) < model.context:
        raise ValueError(f"the prompt needs at least {model.context} characters for this model")
    device = next(model.parameters()).device
    ids = vocabulary.encode(prompt).tolist()
    model.eval()
    for _ in range(length):
        window = torch.tensor([ids[-model.context:]], device=device)
        probabilities = torch.softmax(model(window)[0].float().cpu() / temperature, dim=-1)
        ids.append(torch.multinomial(probabilities[0], 1, generator=generator).item())
    return vocabulary.decode(ids)
