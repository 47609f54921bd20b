"""Character-level language modelling on Tiny Shakespeare: the one pipeline of Labs 1 and 3.

In the order a run uses them:

- ``shakespeare_corpus``: the text as token ids, split as nanoGPT splits it (first 90% training,
  last 10% validation, one contiguous block each, so no validation character sits inside a
  training window);
- ``random_windows``: a training batch, random windows and the same windows shifted by one;
- ``causal_lm_loss``: the next-token cross-entropy of a whole sequence (Chapter 3, Exercise 03.1);
- ``HeldOutLoss``: the validation loss, scored on the same positions every time;
  ``validation_loss`` is the one Labs 1 and 3 report for a finished model, so theirs compare.

Every model of the course (``llmlab.first_models``, ``llmlab.model``) maps token ids
(batch, n) to logits (batch, n, vocab), so these functions serve them all; training is
``llmlab.training.train`` and sampling ``llmlab.generation.generate``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from llmlab.data import tiny_shakespeare
from llmlab.metrics import perplexity, token_cross_entropy
from llmlab.tokenization import CharTokenizer


@dataclass
class CharCorpus:
    """A text as character ids: the tokenizer and the training and validation splits."""

    tokenizer: CharTokenizer
    train: torch.Tensor
    val: torch.Tensor


def shakespeare_corpus(characters: int | None = None, train_fraction: float = 0.9) -> CharCorpus:
    """Tiny Shakespeare as ids: the first ``train_fraction`` of the characters for training, the rest for validation.

    ``characters`` keeps only the start of the text (the smoke presets use a slice). The tokenizer
    always covers the whole text's 65 characters, so a model's shape does not depend on the slice.
    """
    if not 0 < train_fraction < 1:
        raise ValueError(f"train_fraction must be between 0 and 1, got {train_fraction}")
    text = tiny_shakespeare()
    tokenizer = CharTokenizer.from_text(text)
    if characters is not None:
        if characters < 2:
            raise ValueError(f"characters must be at least 2 (one to train on, one to validate), got {characters}")
        text = text[:characters]
    ids = tokenizer.encode(text)
    cut = int(train_fraction * len(ids))
    return CharCorpus(tokenizer, ids[:cut], ids[cut:])


def random_windows(ids: torch.Tensor, batch_size: int, length: int, generator: torch.Generator, device=None):
    """``batch_size`` random windows of ``length`` tokens, and the same windows shifted by one as targets."""
    if len(ids) <= length:
        raise ValueError(f"the text has {len(ids)} tokens, fewer than the window of {length} + 1")
    starts = torch.randint(0, len(ids) - length, (batch_size,), generator=generator)
    positions = starts[:, None] + torch.arange(length)
    return ids[positions].to(device), ids[positions + 1].to(device)


def causal_lm_loss(logits: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
    """Cross-entropy of predicting token t+1 from positions ≤ t.

    ``logits`` is (B, n, V) for ``tokens`` (B, n).
    """
    if logits.shape[:2] != tokens.shape:
        raise ValueError(f"logits {tuple(logits.shape)} and tokens "
                         f"{tuple(tokens.shape)} must share (batch, positions)")
    return token_cross_entropy(logits[:, :-1], tokens[:, 1:])


class HeldOutLoss:
    """Mean next-token cross-entropy on held-out ids, scored on the same positions every time it is called.

    The ids are cut into windows of ``window`` tokens that start ``stride`` tokens apart. A window
    scores only its last ``stride`` predictions, so every scored token has at least
    ``window - stride + 1`` tokens of context before it (within the window) and each is scored
    once. ``stride = window`` tiles the text (cheapest; early positions of each window see little
    context); a small stride gives every prediction almost the whole window (fairest, and
    ``window / stride`` times the work). Two models compare only when scored with the same
    ``ids``, ``window`` and ``stride``: then they predict exactly the same tokens.

    ``max_windows`` keeps that many windows, evenly spread over the text, for quick repeated
    evaluations during training.
    """

    def __init__(self, ids: torch.Tensor, window: int, stride: int | None = None,
                 max_windows: int | None = None, batch_size: int = 64):
        stride = window if stride is None else stride
        if not 1 <= stride <= window:
            raise ValueError(
                f"stride must be between 1 and the window ({window}), got {stride}")
        if len(ids) <= window:
            raise ValueError(f"the held-out text has {len(ids)} tokens, "
                             f"fewer than the window of {window} + 1")
        last_start = len(ids) - window - 1
        if max_windows is None:
            starts = torch.arange(0, last_start + 1, stride)
        else:
            starts = torch.linspace(
                0, last_start, max(1, max_windows)).round().long().unique()
        positions = starts[:, None] + torch.arange(window)
        self.inputs = ids[positions]
        self.targets = ids[positions + 1].clone()
        # predicted with less context: scored by the window before
        self.targets[:, : window - stride] = -100
        self.batch_size = batch_size
        self.window, self.stride = window, stride

    @property
    def tokens(self) -> int:
        """How many predictions are scored."""
        return int((self.targets != -100).sum())

    @torch.no_grad()
    def __call__(self, model: torch.nn.Module) -> float:
        device = next(model.parameters()).device
        was_training = model.training
        model.eval()
        total = 0.0
        for start in range(0, len(self.inputs), self.batch_size):
            targets = self.targets[start:start + self.batch_size].to(device)
            logits = model(self.inputs[start:start + self.batch_size].to(device))
            total += token_cross_entropy(logits, targets).item() * int((targets != -100).sum())
        model.train(was_training)
        return total / self.tokens

    def report(self, model: torch.nn.Module) -> dict[str, float]:
        """Cross-entropy (nats per token) and perplexity."""
        loss = self(model)
        return {"cross_entropy": loss, "perplexity": perplexity(loss)}


def validation_loss(ids: torch.Tensor, window: int = 64) -> HeldOutLoss:
    """How Labs 1 and 3 score a finished model: windows of ``window`` tokens, 1/8 of a window apart.

    Every prediction then sees at least 7/8 of the window before it (57 characters for a window
    of 64), so a model with a long context is not judged on predictions made from almost none,
    and models scored with the same ``ids`` and ``window`` predict exactly the same characters.
    """
    return HeldOutLoss(ids, window=window, stride=max(1, window // 8))
