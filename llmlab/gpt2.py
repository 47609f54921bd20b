"""Bridges between llmlab's modules and Hugging Face's GPT-2, built from a config (no download).

GPT-2 stores its projections in ``Conv1D`` layers whose weight is (in, out), the
transpose of ``nn.Linear``'s (out, in); q, k and v sit side by side in one
``c_attn`` matrix, in that order, exactly like llmlab's fused ``qkv``.
"""

from __future__ import annotations

import torch


def tiny_gpt2(d_model: int = 64, n_heads: int = 4, n_layers: int = 1, n_positions: int = 64, vocab_size: int = 50, seed: int = 0):
    """A randomly initialised ``transformers`` GPT2Model of the given shape, with eager attention so weights can be returned."""
    from transformers import GPT2Config, GPT2Model

    torch.manual_seed(seed)
    config = GPT2Config(
        vocab_size=vocab_size, n_positions=n_positions, n_embd=d_model, n_layer=n_layers, n_head=n_heads,
        resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0, attn_implementation="eager",
        bos_token_id=vocab_size - 1, eos_token_id=vocab_size - 1,
    )
    return GPT2Model(config).eval()


def copy_gpt2_attention_weights(gpt2_attention, ours) -> None:
    """Copy a GPT2Attention's c_attn / c_proj into a module with ``qkv`` and ``out`` nn.Linear layers."""
    with torch.no_grad():
        ours.qkv.weight.copy_(gpt2_attention.c_attn.weight.T)
        ours.qkv.bias.copy_(gpt2_attention.c_attn.bias)
        ours.out.weight.copy_(gpt2_attention.c_proj.weight.T)
        ours.out.bias.copy_(gpt2_attention.c_proj.bias)


def attention_block_io(gpt2_model, token_ids: torch.Tensor, layer: int = 0):
    """Run GPT-2 on ``token_ids`` and return (input, output, weights) of one layer's attention block."""
    captured = {}

    def hook(module, args, kwargs, output):
        captured["input"] = kwargs["hidden_states"] if "hidden_states" in kwargs else args[0]
        captured["output"] = output[0]

    handle = gpt2_model.h[layer].attn.register_forward_hook(hook, with_kwargs=True)
    try:
        with torch.no_grad():
            result = gpt2_model(token_ids, output_attentions=True)
    finally:
        handle.remove()
    return captured["input"], captured["output"], result.attentions[layer]


def compare_with_gpt2_attention(attention_cls, d_model: int = 64, n_heads: int = 4, n_positions: int = 12, seed: int = 0) -> float:
    """Largest absolute difference between GPT-2's first attention block and ``attention_cls`` with its weights."""
    gpt2 = tiny_gpt2(d_model, n_heads, n_positions=max(n_positions, 16), seed=seed)
    ours = attention_cls(d_model, n_heads, rotary=False, max_positions=max(n_positions, 16)).eval()
    copy_gpt2_attention_weights(gpt2.h[0].attn, ours)
    token_ids = torch.randint(0, gpt2.config.vocab_size, (2, n_positions), generator=torch.Generator().manual_seed(seed))
    block_input, block_output, _ = attention_block_io(gpt2, token_ids)
    with torch.no_grad():
        mine = ours(block_input)
    return (mine - block_output).abs().max().item()
