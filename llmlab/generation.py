"""Text from a language model, one token at a time: how the next token is chosen, and how fast (Chapter 5).

A decoding strategy turns the model's logits for the next token into a choice:

- ``greedy``: always the most likely token (deterministic);
- ``sample``: draw from the distribution, after optionally reshaping it: a repetition penalty
  (Keskar et al., 2019) makes tokens already in the text less likely, ``temperature`` divides
  the logits (below 1 sharpens, above 1 flattens), ``top_k`` keeps the k most likely tokens,
  ``top_p`` keeps the smallest set of most likely tokens whose probabilities add up to p
  (nucleus sampling, Holtzman et al., 2020);
- beam search (:func:`beam_search`) keeps the ``beams`` most likely partial texts.

``generate`` runs one text, with the model's KV cache (``use_cache=True``: the prompt is
processed once, then one token per step) or without it (the whole text again at every step);
``generate_batch`` runs several prompts of different lengths at once, padded on the left.
Every model of the course works without the cache; the cache needs ``llmlab.model.GPT``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

STRATEGIES = ("greedy", "sample")


@dataclass(frozen=True)
class Decoding:
    """How to choose each next token. Invalid settings are refused with one line that names the value."""

    strategy: str = "sample"
    temperature: float = 1.0
    top_k: int | None = None
    top_p: float | None = None
    repetition_penalty: float = 1.0

    def __post_init__(self):
        if self.strategy not in STRATEGIES:
            raise ValueError(f"unknown decoding strategy {self.strategy!r}; choose one of {', '.join(STRATEGIES)} "
                             "(or call beam_search)")
        if not self.temperature > 0:
            raise ValueError(f"temperature must be positive, got {self.temperature}")
        if self.top_k is not None and self.top_k < 1:
            raise ValueError(f"top_k must be at least 1 (or None for no limit), got {self.top_k}")
        if self.top_p is not None and not 0 < self.top_p <= 1:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")
        if not self.repetition_penalty >= 1:
            raise ValueError(f"repetition_penalty must be at least 1 (1 = no penalty), got {self.repetition_penalty}")


def top_k_filter(logits: torch.Tensor, k: int) -> torch.Tensor:
    """Keep the ``k`` highest logits of each row (and any tied with the k-th), set the others to -inf."""
    if k >= logits.shape[-1]:
        return logits
    kth_largest = torch.topk(logits, k, dim=-1).values[..., -1:]
    return logits.masked_fill(logits < kth_largest, float("-inf"))


def top_p_filter(logits: torch.Tensor, p: float) -> torch.Tensor:
    """Keep the smallest set of most likely tokens whose probabilities add up to at
    least ``p``; -inf elsewhere.

    The most likely token is always kept; tokens exactly as likely as the least likely
    kept one are kept too, so the result does not depend on how ties happen to be
    sorted. p = 1 keeps all.
    """
    if p >= 1:
        return logits
    probabilities = torch.softmax(logits.float(), dim=-1)
    sorted_probabilities, _ = torch.sort(probabilities, dim=-1, descending=True)
    # total of the more likely tokens
    before = sorted_probabilities.cumsum(dim=-1) - sorted_probabilities
    in_nucleus = before < p  # a token joins while the tokens before it fall short of p
    smallest_kept = sorted_probabilities.masked_fill(~in_nucleus, float("inf")).amin(
        dim=-1, keepdim=True)
    return logits.masked_fill(probabilities < smallest_kept, float("-inf"))


def penalise_repetition(logits: torch.Tensor, previous: torch.Tensor, penalty: float) -> torch.Tensor:
    """Make tokens that already occur in ``previous`` (batch, n) less likely: positive logits ÷ penalty, negative × penalty."""
    if penalty == 1:
        return logits
    seen = torch.gather(logits, -1, previous)
    logits = logits.clone()
    logits.scatter_(-1, previous, torch.where(seen > 0, seen / penalty, seen * penalty))
    return logits


def next_token_logits(logits: torch.Tensor, decoding: Decoding,
                      previous: torch.Tensor | None = None) -> torch.Tensor:
    """The logits of the next token after every reshaping ``decoding`` asks for.

    Float32, with -inf for excluded tokens.
    """
    logits = logits.float()
    if previous is not None:
        logits = penalise_repetition(logits, previous, decoding.repetition_penalty)
    logits = logits / decoding.temperature
    if decoding.top_k is not None:
        logits = top_k_filter(logits, decoding.top_k)
    if decoding.top_p is not None:
        logits = top_p_filter(logits, decoding.top_p)
    return logits


def choose(logits: torch.Tensor, decoding: Decoding, previous: torch.Tensor | None, generator: torch.Generator | None) -> torch.Tensor:
    """(batch,) next tokens from (batch, vocab) logits.

    Greedy takes the highest of the reshaped logits (temperature and the filters never change
    which one that is; a repetition penalty can). Sampling draws from ``generator`` on the CPU,
    so a seed gives the same text on any device.
    """
    shaped = next_token_logits(logits, decoding, previous)
    if decoding.strategy == "greedy":
        return shaped.argmax(-1)
    probabilities = torch.softmax(shaped, dim=-1).cpu()
    return torch.multinomial(probabilities, 1, generator=generator).squeeze(1).to(logits.device)


def _check_prompt(model, prompt: torch.Tensor, new_tokens: int, use_cache: bool) -> torch.Tensor:
    prompt = torch.as_tensor(prompt)
    if prompt.dim() != 1 or len(prompt) == 0:
        raise ValueError(f"the prompt must be a non-empty 1-D tensor of token ids, got shape {tuple(prompt.shape)}")
    if new_tokens < 0:
        raise ValueError(f"new_tokens must be 0 or more, got {new_tokens}")
    # A GPT cannot read more than its context (it has no position for token context + 1); the
    # first models of Chapter 1 read any text and look only at its last `context` tokens.
    if hasattr(model, "config") and len(prompt) > model.context:
        raise ValueError(f"the prompt has {len(prompt)} tokens, more than the model's context of {model.context}")
    if use_cache and len(prompt) + new_tokens > model.context:
        raise ValueError(f"prompt ({len(prompt)} tokens) + new_tokens ({new_tokens}) = {len(prompt) + new_tokens} exceeds the "
                         f"model's context of {model.context}: generate fewer tokens, or use use_cache=False, which slides "
                         f"a window of the last {model.context} tokens")
    return prompt


def _ends_with_stop(tokens: list[int], stop: list[list[int]]) -> bool:
    return any(len(tokens) >= len(sequence) and tokens[-len(sequence):] == sequence for sequence in stop)


@torch.no_grad()
def generate(model: torch.nn.Module, prompt: torch.Tensor, new_tokens: int, decoding: Decoding = Decoding(),
             generator: torch.Generator | None = None, use_cache: bool = False, stop: list[list[int]] | None = None) -> torch.Tensor:
    """Extend ``prompt`` (1-D ids) by up to ``new_tokens`` tokens chosen by ``decoding``; returns prompt + new tokens.

    ``stop``: token-id sequences that end the text as soon as it ends with one of them (kept in the
    output). Without the cache the model reads at most its last ``model.context`` tokens.
    """
    prompt = _check_prompt(model, prompt, new_tokens, use_cache)
    stop = [list(sequence) for sequence in stop or [] if len(sequence)]
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    tokens = prompt.to(device).view(1, -1)
    cache = model.new_cache(1, len(prompt) + new_tokens) if use_cache else None
    step_input = tokens  # the prefill: the whole prompt once
    for _ in range(new_tokens):
        window = step_input if use_cache else tokens[:, -model.context:]
        logits = model(window, cache=cache)[:, -1, :] if use_cache else model(window)[:, -1, :]
        next_token = choose(logits, decoding, tokens if decoding.repetition_penalty != 1 else None, generator)
        tokens = torch.cat([tokens, next_token.view(1, 1)], dim=1)
        step_input = next_token.view(1, 1)  # with the cache, each later step reads only the newest token
        if stop and _ends_with_stop(tokens[0].tolist(), stop):
            break
    model.train(was_training)
    return tokens[0].cpu()


@torch.no_grad()
def generate_batch(model: torch.nn.Module, prompts: list[torch.Tensor], new_tokens: int, decoding: Decoding = Decoding(),
                   generator: torch.Generator | None = None, pad_id: int = 0) -> list[torch.Tensor]:
    """Generate for several prompts at once with the KV cache; shorter prompts are padded on the left.

    Padding sits at the left so that every text's newest token is in the last column; the cache
    keeps padded positions out of every attention and out of the position count, so each text
    gets exactly what it would get alone (up to rounding). Returns prompt + new tokens per text.
    """
    if not prompts:
        raise ValueError("expected at least one prompt, got an empty list")
    prompts = [_check_prompt(model, prompt, new_tokens, use_cache=True) for prompt in prompts]
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    longest = max(len(prompt) for prompt in prompts)
    tokens = torch.full((len(prompts), longest), pad_id, dtype=torch.long, device=device)
    is_padding = torch.ones(len(prompts), longest, dtype=torch.bool, device=device)
    for row, prompt in enumerate(prompts):
        tokens[row, longest - len(prompt):] = prompt.to(device)
        is_padding[row, longest - len(prompt):] = False
    cache = model.new_cache(len(prompts), longest + new_tokens)
    cache.pad(is_padding)
    step_input = tokens
    for _ in range(new_tokens):
        logits = model(step_input, cache=cache)[:, -1, :]
        previous = tokens.masked_fill(torch.cat([is_padding, torch.zeros_like(tokens[:, longest:], dtype=torch.bool)], 1), pad_id) \
            if decoding.repetition_penalty != 1 else None
        next_tokens = choose(logits, decoding, previous, generator)
        tokens = torch.cat([tokens, next_tokens.view(-1, 1)], dim=1)
        step_input = next_tokens.view(-1, 1)
    model.train(was_training)
    return [tokens[row, longest - len(prompt):].cpu() for row, prompt in enumerate(prompts)]


@torch.no_grad()
def beam_search(model: torch.nn.Module, prompt: torch.Tensor, new_tokens: int, beams: int = 4,
                length_penalty: float = 1.0) -> torch.Tensor:
    """The most likely continuation found by keeping the ``beams`` best partial texts at every step.

    Each step extends every kept text by every token and keeps the ``beams`` with the highest
    total log-probability; at the end the best is chosen by total log-probability divided by
    (its number of new tokens) ** ``length_penalty``. Deterministic, like greedy decoding, and
    ``beams=1`` *is* greedy decoding. Runs without the cache, so it reads the last ``context`` tokens.
    """
    prompt = _check_prompt(model, prompt, new_tokens, use_cache=False)
    if beams < 1:
        raise ValueError(f"beams must be at least 1, got {beams}")
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    texts = prompt.to(device).view(1, -1)
    scores = torch.zeros(1, device=device)
    for _ in range(new_tokens):
        log_probabilities = torch.log_softmax(model(texts[:, -model.context:])[:, -1, :].float(), dim=-1)
        candidates = (scores[:, None] + log_probabilities).flatten()
        scores, best = candidates.topk(min(beams, len(candidates)))
        vocab = log_probabilities.shape[-1]
        texts = torch.cat([texts[best // vocab], (best % vocab).view(-1, 1)], dim=1)
    model.train(was_training)
    normalised = scores / max(new_tokens, 1) ** length_penalty
    return texts[normalised.argmax()].cpu()
