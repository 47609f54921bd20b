"""A small GPT, readable top to bottom (in the spirit of nanoGPT).

Token embeddings (+ learned positions unless attention is rotary) → blocks of
[LayerNorm → causal multi-head attention → residual, LayerNorm → MLP → residual]
→ final LayerNorm → a linear layer to vocabulary logits. The attention class is a
parameter so that a learner's own implementation from Lab 2 can be dropped in.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
from torch import nn
from torch.nn import functional as F

from llmlab.attention import MultiHeadSelfAttention


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

    def as_dict(self) -> dict:
        return asdict(self)


class MLP(nn.Module):
    def __init__(self, config: GPTConfig):
        super().__init__()
        self.up = nn.Linear(config.d_model, 4 * config.d_model, bias=config.bias)
        self.down = nn.Linear(4 * config.d_model, config.d_model, bias=config.bias)
        self.dropout = nn.Dropout(config.dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.dropout(self.down(F.gelu(self.up(x))))


class Block(nn.Module):
    def __init__(self, config: GPTConfig, attention_cls=MultiHeadSelfAttention):
        super().__init__()
        self.norm_attention = nn.LayerNorm(config.d_model, bias=config.bias)
        self.attention = attention_cls(
            config.d_model, config.n_heads, bias=config.bias, rotary=config.rotary, max_positions=config.context
        )
        self.norm_mlp = nn.LayerNorm(config.d_model, bias=config.bias)
        self.mlp = MLP(config)
        self.dropout = nn.Dropout(config.dropout)

    def forward(self, x: torch.Tensor, keep_weights: bool = False) -> torch.Tensor:
        x = x + self.dropout(self.attention(self.norm_attention(x), keep_weights=keep_weights))
        return x + self.mlp(self.norm_mlp(x))


class GPT(nn.Module):
    def __init__(self, config: GPTConfig, attention_cls=MultiHeadSelfAttention):
        super().__init__()
        self.config = config
        self.token_embedding = nn.Embedding(config.vocab_size, config.d_model)
        # Rotary attention carries position inside every attention layer, so no position table is needed.
        self.position_embedding = None if config.rotary else nn.Embedding(config.context, config.d_model)
        self.dropout = nn.Dropout(config.dropout)
        self.blocks = nn.ModuleList(Block(config, attention_cls) for _ in range(config.n_layers))
        self.final_norm = nn.LayerNorm(config.d_model, bias=config.bias)
        self.lm_head = nn.Linear(config.d_model, config.vocab_size, bias=False)
        if config.tie_weights:
            # Input and output embeddings share one matrix (Press & Wolf 2017), as GPT-2 does.
            self.lm_head.weight = self.token_embedding.weight
        self.apply(self._init_weights)
        for name, parameter in self.named_parameters():
            if name.endswith(("out.weight", "down.weight")):
                # Scale the residual-stream projections down with depth, as GPT-2 does, so the sum of blocks stays O(1).
                nn.init.normal_(parameter, mean=0.0, std=0.02 / (2 * config.n_layers) ** 0.5)

    @staticmethod
    def _init_weights(module: nn.Module) -> None:
        if isinstance(module, (nn.Linear, nn.Embedding)):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)
        if isinstance(module, nn.Linear) and module.bias is not None:
            nn.init.zeros_(module.bias)

    def parameter_count(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def forward(self, tokens: torch.Tensor, targets: torch.Tensor | None = None, keep_weights: bool = False):
        """Logits (batch, n, vocab); with targets also the mean cross-entropy (targets of -100 are ignored)."""
        if tokens.dim() != 2:
            raise ValueError(f"expected token ids of shape (batch, positions), got {tuple(tokens.shape)}")
        n = tokens.shape[1]
        if n > self.config.context:
            raise ValueError(f"sequence of {n} tokens is longer than the model's context of {self.config.context}")
        x = self.token_embedding(tokens)
        if self.position_embedding is not None:
            x = x + self.position_embedding(torch.arange(n, device=tokens.device))
        x = self.dropout(x)
        for block in self.blocks:
            x = block(x, keep_weights=keep_weights)
        logits = self.lm_head(self.final_norm(x))
        if targets is None:
            return logits
        loss = F.cross_entropy(logits.flatten(0, 1).float(), targets.flatten(), ignore_index=-100)
        return logits, loss

    def attention_weights(self) -> list[torch.Tensor]:
        """Weights (batch, heads, n, n) of each layer from the last forward pass run with keep_weights=True."""
        return [block.attention.last_weights for block in self.blocks]
