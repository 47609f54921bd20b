"""A small GPT, readable top to bottom (in the spirit of nanoGPT).

Token embeddings (+ learned positions unless attention is rotary) → blocks of
[LayerNorm → causal multi-head attention → residual, LayerNorm → MLP → residual]
→ final LayerNorm → a linear layer to vocabulary logits. The attention class and the block class
are parameters, so that a learner's own attention (Lab 2) or block (Lab 3) can be dropped in.

The defaults build GPT-2's architecture. Three options of ``GPTConfig`` take changes from the
modded-nanoGPT speedrun (Jordan et al. 2024) that make small models train faster: a ReLU² MLP
(``activation="relu2"``, So et al. 2021), residual projections and an untied output layer that
start at zero (``zero_init_projections``), and logits soft-capped by ``cap · tanh(logits / cap)``
(``logit_softcap``, as in Gemma 2).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
from torch import nn
from torch.nn import functional as F

from llmlab.attention import KVCache, LayerCache, MultiHeadSelfAttention


def count_parameters(module: nn.Module, trainable_only: bool = False) -> int:
    """Numbers in a module's parameters (a tied matrix counts once); only those with gradients if ``trainable_only``."""
    return sum(p.numel() for p in module.parameters() if p.requires_grad or not trainable_only)


def relu_squared(x: torch.Tensor) -> torch.Tensor:
    """max(0, x)²: the MLP activation of So et al. (2021), used by the modded-nanoGPT speedrun."""
    return F.relu(x).square()


ACTIVATIONS = {"gelu": F.gelu, "relu2": relu_squared}


@dataclass
class GPTConfig:
    vocab_size: int
    context: int
    d_model: int = 64
    n_heads: int = 4
    n_layers: int = 2
    dropout: float = 0.0
    rotary: bool = False
    bias: bool = True
    tie_weights: bool = True
    activation: str = "gelu"  # or "relu2": max(0, x)²
    zero_init_projections: bool = False  # attention and MLP outputs (and an untied lm_head) start at zero
    logit_softcap: float | None = None  # logits → cap · tanh(logits / cap)

    def __post_init__(self):
        if self.activation not in ACTIVATIONS:
            raise ValueError(f"activation must be one of {sorted(ACTIVATIONS)}, got {self.activation!r}")
        if self.logit_softcap is not None and self.logit_softcap <= 0:
            raise ValueError(f"logit_softcap must be positive (or None), got {self.logit_softcap}")

    def as_dict(self) -> dict:
        return asdict(self)


class MLP(nn.Module):
    def __init__(self, config: GPTConfig):
        super().__init__()
        self.up = nn.Linear(config.d_model, 4 * config.d_model, bias=config.bias)
        self.down = nn.Linear(4 * config.d_model, config.d_model, bias=config.bias)
        self.dropout = nn.Dropout(config.dropout)
        self.activation = ACTIVATIONS[config.activation]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.dropout(self.down(self.activation(self.up(x))))


class Block(nn.Module):
    def __init__(self, config: GPTConfig, attention_cls=MultiHeadSelfAttention):
        super().__init__()
        self.norm_attention = nn.LayerNorm(config.d_model, bias=config.bias)
        self.attention = attention_cls(
            config.d_model, config.n_heads, bias=config.bias,
            rotary=config.rotary, max_positions=config.context,
        )
        self.norm_mlp = nn.LayerNorm(config.d_model, bias=config.bias)
        self.mlp = MLP(config)
        self.dropout = nn.Dropout(config.dropout)

    def forward(self, x: torch.Tensor, keep_weights: bool = False,
                cache: LayerCache | None = None) -> torch.Tensor:
        # The cache is passed on only during cached generation,
        # so an attention without one still fits.
        attention_options = {"keep_weights": keep_weights} | (
            {"cache": cache} if cache is not None else {})
        x = x + self.dropout(
            self.attention(self.norm_attention(x), **attention_options))
        return x + self.mlp(self.norm_mlp(x))


class GPT(nn.Module):
    """``block_cls(config, attention_cls)`` builds each block; it must keep Block's submodule names
    (so weights and checkpoints carry over) and its forward(x, keep_weights=False); only cached
    generation also passes ``cache``."""

    def __init__(self, config: GPTConfig, attention_cls=MultiHeadSelfAttention,
                 block_cls=Block):
        super().__init__()
        self.config = config
        self.token_embedding = nn.Embedding(config.vocab_size, config.d_model)
        # Rotary attention carries position inside every attention layer,
        # so no position table is needed.
        self.position_embedding = (
            None if config.rotary else nn.Embedding(config.context, config.d_model))
        self.dropout = nn.Dropout(config.dropout)
        self.blocks = nn.ModuleList(
            block_cls(config, attention_cls) for _ in range(config.n_layers))
        self.final_norm = nn.LayerNorm(config.d_model, bias=config.bias)
        self.lm_head = nn.Linear(config.d_model, config.vocab_size, bias=False)
        if config.tie_weights:
            # Input and output embeddings share one matrix (Press & Wolf 2017),
            # as GPT-2 does.
            self.lm_head.weight = self.token_embedding.weight
        self.apply(self._init_weights)
        for name, parameter in self.named_parameters():
            if name.endswith(("out.weight", "down.weight")):
                # Scale the residual-stream projections down with depth, as GPT-2
                # does, so the sum of blocks stays O(1).
                nn.init.normal_(
                    parameter, mean=0.0, std=0.02 / (2 * config.n_layers) ** 0.5)
        if config.zero_init_projections:
            # Every block then starts as the identity, and an untied output layer
            # gives equal logits: the first prediction is the uniform guess.
            untied_head = () if config.tie_weights else ("lm_head.weight",)
            for name, parameter in self.named_parameters():
                if name.endswith(("out.weight", "down.weight", *untied_head)):
                    nn.init.zeros_(parameter)

    @staticmethod
    def _init_weights(module: nn.Module) -> None:
        if isinstance(module, (nn.Linear, nn.Embedding)):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)
        if isinstance(module, nn.Linear) and module.bias is not None:
            nn.init.zeros_(module.bias)

    @property
    def context(self) -> int:
        """The most tokens the model reads at once."""
        return self.config.context

    def parameter_count(self) -> int:
        return count_parameters(self)

    def forward(self, tokens: torch.Tensor, keep_weights: bool = False, cache: KVCache | None = None) -> torch.Tensor:
        """Logits (batch, n, vocab): at position t, scores for the token that follows tokens[:, :t + 1].

        With ``cache`` (from :meth:`new_cache`), ``tokens`` continue the texts whose keys and values the
        cache already holds, and their own keys and values are added to it.
        """
        if tokens.dim() != 2:
            raise ValueError(f"expected token ids of shape (batch, positions), got {tuple(tokens.shape)}")
        n = tokens.shape[1]
        seen = cache.length if cache is not None else 0
        if seen + n > self.config.context:
            raise ValueError(f"sequence of {seen + n} tokens is longer than the model's context of {self.config.context}")
        x = self.token_embedding(tokens)
        if self.position_embedding is not None:
            positions = torch.arange(n, device=tokens.device) if cache is None else cache.positions[:, seen:seen + n]
            x = x + self.position_embedding(positions)
        x = self.dropout(x)
        for layer, block in enumerate(self.blocks):
            if cache is None:
                x = block(x, keep_weights=keep_weights)
            else:
                x = block(x, keep_weights=keep_weights, cache=LayerCache(cache, layer))
        if cache is not None:
            cache.advance(n)
        logits = self.lm_head(self.final_norm(x))
        if self.config.logit_softcap is not None:
            # A smooth bound on every logit: near-identity for small ones, at most ±cap for large ones.
            logits = self.config.logit_softcap * torch.tanh(logits / self.config.logit_softcap)
        return logits

    def new_cache(self, batch: int = 1, max_tokens: int | None = None) -> KVCache:
        """An empty KV cache for ``batch`` texts of up to ``max_tokens`` tokens (default: the context), on the model's device."""
        weight = self.token_embedding.weight
        d_head = self.config.d_model // self.config.n_heads
        return KVCache(self.config.n_layers, batch, self.config.n_heads, d_head, max_tokens or self.config.context,
                       device=weight.device, dtype=weight.dtype)

    def attention_weights(self) -> list[torch.Tensor]:
        """Weights (batch, heads, n, n) of each layer from the last forward pass run with keep_weights=True."""
        return [block.attention.last_weights for block in self.blocks]
