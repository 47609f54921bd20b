"""Attention, written the way Chapter 2 derives it.

Every formula in the chapter has a function here, and the tests in
``tests/test_attention.py`` check each one against PyTorch or against the
closed form stated in the chapter.  Shapes follow one convention throughout:
``(batch, heads, positions, features)`` for per-head tensors and
``(batch, positions, d_model)`` for the residual stream.
"""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn import functional as F


def _require_last_dims_match(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> None:
    if q.shape[-1] != k.shape[-1]:
        raise ValueError(
            f"queries and keys need the same feature size d_k, got q {tuple(q.shape)} and k {tuple(k.shape)}"
        )
    if k.shape[-2] != v.shape[-2]:
        raise ValueError(
            f"keys and values need the same number of positions, got k {tuple(k.shape)} and v {tuple(v.shape)}"
        )


def causal_mask(n_queries: int, n_keys: int | None = None, device=None) -> torch.Tensor:
    """Boolean mask, True where query i may look at key j (j <= i).

    With a KV cache the newest ``n_queries`` queries sit at the end of a
    longer sequence of ``n_keys`` keys, so the diagonal is shifted.
    """
    n_keys = n_queries if n_keys is None else n_keys
    if n_keys < n_queries:
        raise ValueError(f"need at least as many keys as queries, got {n_keys} keys for {n_queries} queries")
    offset = n_keys - n_queries
    return torch.ones(n_queries, n_keys, dtype=torch.bool, device=device).tril(diagonal=offset)


def scaled_dot_product_attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """softmax(q kᵀ / √d_k) v  — equation (eq-attention) of Chapter 2.

    ``mask`` is boolean and broadcasts against the (…, n_q, n_k) score
    matrix; True keeps a score, False removes it before the softmax.
    Returns the output and the attention weights, so they can be plotted.
    """
    _require_last_dims_match(q, k, v)
    d_k = q.shape[-1]
    scores = q @ k.transpose(-2, -1) / math.sqrt(d_k)
    if mask is not None:
        # -inf gives exactly zero weight after the softmax, whatever the other
        # scores are.
        scores = scores.masked_fill(~mask, float("-inf"))
    weights = torch.softmax(scores, dim=-1)
    return weights @ v, weights


def split_heads(x: torch.Tensor, n_heads: int) -> torch.Tensor:
    """(batch, n, d_model) -> (batch, heads, n, d_model / heads)."""
    batch, n, d_model = x.shape
    if d_model % n_heads:
        raise ValueError(f"d_model={d_model} is not divisible by n_heads={n_heads}")
    return x.view(batch, n, n_heads, d_model // n_heads).transpose(1, 2)


def merge_heads(x: torch.Tensor) -> torch.Tensor:
    """(batch, heads, n, d_head) -> (batch, n, heads * d_head)."""
    batch, heads, n, d_head = x.shape
    return x.transpose(1, 2).reshape(batch, n, heads * d_head)


def rope_angles(n_positions: int, d_head: int, base: float = 10000.0,
                device=None) -> torch.Tensor:
    """θ_{m,i} = m · base^(-2i/d) for position m and pair i (Su et al. 2021, eq. 15)."""
    if d_head % 2:
        raise ValueError(
            f"rotary positions need an even head size, got d_head={d_head}")
    inverse_frequencies = base ** (
        -torch.arange(0, d_head, 2, device=device, dtype=torch.float32) / d_head)
    positions = torch.arange(n_positions, device=device, dtype=torch.float32)
    return torch.outer(positions, inverse_frequencies)  # (n_positions, d_head / 2)


def apply_rope(x: torch.Tensor, angles: torch.Tensor) -> torch.Tensor:
    """Rotate each pair (x_{2i}, x_{2i+1}) of features by the angle of its position.

    ``x`` is (…, n, d_head) and ``angles`` is (n, d_head/2) from :func:`rope_angles`,
    or, when the sequences of a batch sit at different positions (generation with a KV
    cache), one table per sequence, (batch, 1, n, d_head/2). Pairs are adjacent
    features, as in the RoFormer paper.
    """
    n, d_head = x.shape[-2], x.shape[-1]
    if angles.shape[-2:] != (n, d_head // 2):
        raise ValueError(f"angles must have shape {(n, d_head // 2)} for x of shape "
                         f"{tuple(x.shape)}, got {tuple(angles.shape)}")
    cos, sin = angles.cos().to(x.dtype), angles.sin().to(x.dtype)
    even, odd = x[..., 0::2], x[..., 1::2]
    rotated = torch.stack((even * cos - odd * sin, even * sin + odd * cos), dim=-1)
    return rotated.flatten(-2)


def sinusoidal_positions(n_positions: int, d_model: int) -> torch.Tensor:
    """PE(m, 2i) = sin(m / 10000^(2i/d)), PE(m, 2i+1) = cos(…)  (Vaswani et al. 2017, §3.5)."""
    if d_model % 2:
        raise ValueError(f"sinusoidal positions need an even d_model, got {d_model}")
    angles = rope_angles(n_positions, d_model)
    table = torch.empty(n_positions, d_model)
    table[:, 0::2] = angles.sin()
    table[:, 1::2] = angles.cos()
    return table


class KVCache:
    """The keys and values of every layer for the tokens processed so far: what generation keeps.

    Without it, every generation step runs the model over the whole text again; with it, the
    prompt is processed once (the *prefill*) and each later step processes only the newest
    token (the *decode* step), whose query attends over the stored keys and values. Memory:
    2 (keys and values) × layers × batch × heads × d_head × ``max_tokens`` numbers, set aside
    up front. Prompts of different lengths share a batch by padding them on the left:
    ``is_padding`` marks those positions (no query ever attends to them) and ``positions`` gives
    every token its position within its own text, padding not counted.
    """

    def __init__(self, n_layers: int, batch: int, n_heads: int, d_head: int, max_tokens: int,
                 device=None, dtype: torch.dtype = torch.float32):
        shape = (n_layers, batch, n_heads, max_tokens, d_head)
        self.keys = torch.zeros(shape, device=device, dtype=dtype)
        self.values = torch.zeros(shape, device=device, dtype=dtype)
        self.max_tokens = max_tokens
        self.length = 0  # positions filled so far, the same for every sequence of the batch
        self.is_padding = torch.zeros(batch, max_tokens, dtype=torch.bool, device=device)
        self.positions = torch.arange(max_tokens, device=device).expand(batch, max_tokens).clone()

    def pad(self, is_padding: torch.Tensor) -> None:
        """Declare which of the first positions are padding, (batch, n) with True for padding; call before the prefill."""
        if self.length:
            raise ValueError("padding must be declared before the first tokens go into the cache")
        n = is_padding.shape[1]
        self.is_padding[:, :n] = is_padding
        real = (~self.is_padding).long()
        self.positions = (real.cumsum(dim=1) - 1).clamp(min=0)  # padding takes position 0; it is never attended to

    def memory_bytes(self) -> int:
        return 2 * self.keys.numel() * self.keys.element_size()

    def store(self, layer: int, keys: torch.Tensor, values: torch.Tensor
              ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """Write one layer's keys and values for the new tokens; return all of them so
        far and the attention mask.

        The mask (batch, 1, new, all) lets each new query see earlier and its own
        positions, never padding; ``None`` when there is nothing to hide (one new token,
        no padding).
        """
        start, n = self.length, keys.shape[-2]
        end = start + n
        if end > self.max_tokens:
            raise ValueError(
                f"the KV cache holds {self.max_tokens} positions; {end} were asked for")
        self.keys[layer, :, :, start:end] = keys
        self.values[layer, :, :, start:end] = values
        mask = None
        if n > 1 or self.is_padding[:, :end].any():
            mask = (causal_mask(n, end, device=keys.device)
                    & ~self.is_padding[:, None, None, :end])
            # a padding query may attend to itself, so that no row of the softmax is
            # empty (which would give NaN)
            mask[..., torch.arange(n), torch.arange(start, end)] = True
        return self.keys[layer, :, :, :end], self.values[layer, :, :, :end], mask

    def advance(self, n: int) -> None:
        """Count ``n`` new positions as filled, once every layer has stored them."""
        self.length += n


class LayerCache:
    """One layer's view of a :class:`KVCache`: what an attention module is handed during generation."""

    def __init__(self, cache: KVCache, layer: int):
        self.cache, self.layer = cache, layer

    def positions(self, n: int) -> torch.Tensor:
        """(batch, n) positions of the next ``n`` tokens within their own texts."""
        return self.cache.positions[:, self.cache.length:self.cache.length + n]

    def store(self, keys: torch.Tensor, values: torch.Tensor):
        return self.cache.store(self.layer, keys, values)


class MultiHeadSelfAttention(nn.Module):
    """Causal multi-head self-attention with one fused q/k/v projection (GPT-2 layout).

    ``rotary=True`` rotates queries and keys by their positions (RoPE) before
    the dot product; otherwise the block is position-blind and the model has
    to add positions to its input.
    """

    def __init__(self, d_model: int, n_heads: int, bias: bool = True,
                 rotary: bool = False, max_positions: int = 2048):
        super().__init__()
        if d_model % n_heads:
            raise ValueError(f"d_model={d_model} is not divisible by n_heads={n_heads}")
        self.n_heads = n_heads
        self.qkv = nn.Linear(d_model, 3 * d_model, bias=bias)
        self.out = nn.Linear(d_model, d_model, bias=bias)
        self.rotary = rotary
        if rotary:
            self.register_buffer("angles",
                                 rope_angles(max_positions, d_model // n_heads),
                                 persistent=False)
        self.last_weights: torch.Tensor | None = None

    def forward(self, x: torch.Tensor, keep_weights: bool = False,
                cache: LayerCache | None = None) -> torch.Tensor:
        """Causal self-attention over ``x`` (batch, n, d_model); with ``cache``, also
        over the tokens stored in it."""
        if x.dim() != 3:
            raise ValueError("expected input of shape (batch, positions, d_model), "
                             f"got {tuple(x.shape)}")
        q, k, v = self.qkv(x).chunk(3, dim=-1)
        q, k, v = (split_heads(t, self.n_heads) for t in (q, k, v))
        n = x.shape[1]
        if cache is None:
            if self.rotary:
                q, k = apply_rope(q, self.angles[:n]), apply_rope(k, self.angles[:n])
            mask = causal_mask(n, device=x.device)
        else:
            # tokens rotate by their own text's positions, which padding does not shift
            if self.rotary:
                angles = self.angles[cache.positions(n)].unsqueeze(1)
                q, k = apply_rope(q, angles), apply_rope(k, angles)
            k, v, mask = cache.store(k, v)
        if keep_weights:
            out, weights = scaled_dot_product_attention(q, k, v, mask)
            self.last_weights = weights.detach()
        elif cache is None:
            # The fused kernel gives the same numbers faster and never builds the n×n
            # matrix in memory.
            out = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        else:
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        return self.out(merge_heads(out))


def mha_parameter_count(d_model: int, bias: bool = True) -> int:
    """4·d² weights (+ 4·d biases): W_Q, W_K, W_V and W_O, whatever the number of heads."""
    return 4 * d_model * d_model + (4 * d_model if bias else 0)


def attention_flops(n: int, d_model: int) -> dict[str, int]:
    """Multiply-adds ×2 for one forward pass of one attention layer over n positions.

    Projections: 4 matrix products of (n×d)(d×d).  Scores QKᵀ and weights·V:
    two products of size n×n×d.  Softmax and masking are lower-order and left out.
    """
    projections = 2 * 4 * n * d_model * d_model
    scores_and_mixing = 2 * 2 * n * n * d_model
    return {"projections": projections, "scores_and_mixing": scores_and_mixing,
            "total": projections + scores_and_mixing}


def kv_cache_bytes(n_layers: int, n_positions: int, d_model: int, batch: int = 1, bytes_per_value: int = 2,
                   n_heads: int = 1, n_kv_heads: int | None = None) -> int:
    """Memory for cached keys and values: 2 (K and V) × layers × kv_heads × d_head × positions × batch × bytes.

    With every head keeping its own keys and values (multi-head attention) kv_heads × d_head is
    d_model. Grouped-query attention shares each key/value head among n_heads / n_kv_heads query
    heads, and multi-query attention (n_kv_heads = 1) among all of them, which divides the cache.
    """
    n_kv_heads = n_heads if n_kv_heads is None else n_kv_heads
    if d_model % n_heads or n_heads % n_kv_heads:
        raise ValueError(f"need n_heads dividing d_model and n_kv_heads dividing n_heads, got d_model={d_model}, "
                         f"n_heads={n_heads}, n_kv_heads={n_kv_heads}")
    d_head = d_model // n_heads
    return 2 * n_layers * n_kv_heads * d_head * n_positions * batch * bytes_per_value


def decoding_attention_flops(n_generated: int, d_model: int, prompt: int = 0,
                             cached: bool = True) -> int:
    """Attention FLOPs for generating ``n_generated`` tokens one at a time after a
    prompt.

    Without a cache, step t recomputes the whole prefix of length L = prompt + t;
    with one, step t projects only the new token and attends over L keys.
    """
    total = 0
    for t in range(1, n_generated + 1):
        length = prompt + t
        if cached:
            total += 2 * 4 * d_model * d_model + 2 * 2 * length * d_model
        else:
            total += attention_flops(length, d_model)["total"]
    return total


def stable_softmax(scores: torch.Tensor, dim: int = -1,
                   temperature: float = 1.0) -> torch.Tensor:
    """exp((s_i - max s) / T) / Σ_j exp((s_j - max s) / T).

    Equation (eq-softmax-stable) of Chapter 2.

    Equal to the plain softmax of s / T for every finite input, because the
    softmax ignores a constant added to all scores.
    """
    if temperature <= 0:
        raise ValueError(f"temperature must be positive, got {temperature}")
    scaled = scores / temperature
    # Subtracting the largest score makes every exponent <= 0, so exp() cannot
    # overflow and the largest term is exactly exp(0) = 1.
    shifted = scaled - scaled.amax(dim=dim, keepdim=True)
    exponentials = shifted.exp()
    return exponentials / exponentials.sum(dim=dim, keepdim=True)


def softmax_jacobian(p: torch.Tensor) -> torch.Tensor:
    """∂p_i/∂s_j = p_i (δ_ij − p_j), i.e. diag(p) − p pᵀ  — equation (eq-softmax-grad) of Chapter 2.

    ``p`` is (…, n), a softmax output; the result is (…, n, n).
    """
    # Written from p alone: once p is one-hot every entry is 0, which is the
    # saturation that stops gradients reaching the scores.
    return torch.diag_embed(p) - p.unsqueeze(-1) * p.unsqueeze(-2)


def dot_product_variance(d_k: int, var_q: float = 1.0, var_k: float = 1.0) -> float:
    """Var(q·k) = d_k · Var(q_i) · Var(k_i) for independent zero-mean components — equation (eq-variance)."""
    if d_k < 1:
        raise ValueError(f"d_k must be a positive integer, got {d_k}")
    return d_k * var_q * var_k


def attention_entropy(weights: torch.Tensor, dim: int = -1) -> torch.Tensor:
    """−Σ_j a_j ln a_j in nats: 0 when one key takes all the weight, ln(n_keys) when weights are uniform."""
    # entr() takes 0 · ln 0 as 0 (its limit), which masked or saturated weights need.
    return torch.special.entr(weights).sum(dim=dim)
