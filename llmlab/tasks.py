"""Small synthetic sequence tasks whose solution is an attention pattern you can predict."""

from __future__ import annotations

import torch


class ReversalTask:
    """Read ``length`` random symbols, a separator, then write them back in reverse.

    A sequence is ``x_1 … x_L  SEP  x_L … x_1``. The loss counts only the answer
    half, so a model scores well only by looking back at the right input
    position: the answer token at step j must copy the input at L + 1 - j,
    which draws an anti-diagonal in the attention map.
    """

    def __init__(self, length: int, n_symbols: int = 10):
        if length < 1 or n_symbols < 2:
            raise ValueError(f"need length ≥ 1 and n_symbols ≥ 2, got length={length}, n_symbols={n_symbols}")
        self.length = length
        self.n_symbols = n_symbols
        self.separator = n_symbols
        self.vocab_size = n_symbols + 1
        self.context = 2 * length  # the model sees every token but the last

    def sequences(self, batch: int, generator: torch.Generator | None = None) -> torch.Tensor:
        symbols = torch.randint(0, self.n_symbols, (batch, self.length), generator=generator)
        separator = torch.full((batch, 1), self.separator)
        return torch.cat([symbols, separator, symbols.flip(1)], dim=1)

    def batch(self, batch: int, generator: torch.Generator | None = None, device=None) -> tuple[torch.Tensor, torch.Tensor]:
        """Inputs (batch, 2L) and next-token targets, with -100 (ignored) on the question half."""
        sequences = self.sequences(batch, generator)
        inputs, targets = sequences[:, :-1].clone(), sequences[:, 1:].clone()
        targets[:, : self.length - 1] = -100  # nothing to predict while the question is still being read
        targets[:, self.length - 1] = -100  # the separator itself is not an answer
        return inputs.to(device), targets.to(device)

    @torch.no_grad()
    def accuracy(self, model, batch: int = 512, generator: torch.Generator | None = None, device=None) -> dict[str, float]:
        """Share of answer tokens and of whole answers the model gets right (greedy, teacher-forced)."""
        inputs, targets = self.batch(batch, generator, device)
        logits = model(inputs)
        answer = targets != -100
        correct = (logits.argmax(-1) == targets) & answer
        per_token = correct.sum().item() / answer.sum().item()
        per_sequence = (correct.sum(1) == answer.sum(1)).float().mean().item()
        return {"token_accuracy": per_token, "sequence_accuracy": per_sequence}

    def mirror_share(self, weights: torch.Tensor) -> torch.Tensor:
        """Per head, the average attention weight that answer positions put on their mirrored input.

        ``weights`` is (batch, heads, 2L, 2L) from a model run on ``batch(...)`` inputs. The query
        at position p (L ≤ p < 2L) predicts the input digit at position 2L - 1 - p; a head that
        copies in reverse puts close to all its weight there, so its share approaches 1.
        """
        n = 2 * self.length
        if weights.dim() != 4 or weights.shape[-2:] != (n, n):
            raise ValueError(f"expected weights of shape (batch, heads, {n}, {n}), got {tuple(weights.shape)}")
        queries = torch.arange(self.length, n)
        sources = n - 1 - queries
        return weights[:, :, queries, sources].mean(dim=(0, 2))
