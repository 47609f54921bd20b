"""The bridge between llmlab's attention and GPT and Hugging Face's GPT-2: weights copied both ways.

Nothing is downloaded: the GPT-2 models here are built from a configuration of the same shape.

GPT-2 stores its projections in ``Conv1D`` layers whose weight is (in, out), the
transpose of ``nn.Linear``'s (out, in); q, k and v sit side by side in one
``c_attn`` matrix, in that order, exactly like llmlab's fused ``qkv``.
"""

from __future__ import annotations

import torch


def tiny_gpt2(d_model: int = 64, n_heads: int = 4, n_layers: int = 1, n_positions: int = 64, vocab_size: int = 50, seed: int = 0):
    """A randomly initialised ``transformers`` GPT2Model of the given shape, with eager attention so weights can be returned.

    The weights depend only on ``seed``; the caller's random state is left as it was.
    """
    from transformers import GPT2Config, GPT2Model

    config = GPT2Config(
        vocab_size=vocab_size, n_positions=n_positions, n_embd=d_model, n_layer=n_layers, n_head=n_heads,
        resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0, attn_implementation="eager",
        bos_token_id=vocab_size - 1, eos_token_id=vocab_size - 1,
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return GPT2Model(config).eval()


def copy_gpt2_attention_weights(gpt2_attention, ours, to_gpt2: bool = False) -> None:
    """Copy a GPT2Attention's c_attn / c_proj into a module with ``qkv`` and ``out`` nn.Linear layers (or back)."""
    pairs = [(gpt2_attention.c_attn, ours.qkv), (gpt2_attention.c_proj, ours.out)]
    with torch.no_grad():
        for conv1d, linear in pairs:
            if to_gpt2:
                conv1d.weight.copy_(linear.weight.T)
                conv1d.bias.copy_(linear.bias)
            else:
                linear.weight.copy_(conv1d.weight.T)
                linear.bias.copy_(conv1d.bias)


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


def gpt2_config_for(config):
    """The GPT2Config with the same shape as an llmlab GPTConfig (learned positions, exact GELU, no dropout)."""
    from transformers import GPT2Config

    if config.rotary:
        raise ValueError("GPT-2 has learned positions only; build the llmlab model with rotary=False to compare")
    if not config.bias:
        raise ValueError("GPT-2's layers all have biases; build the llmlab model with bias=True to compare")
    return GPT2Config(
        vocab_size=config.vocab_size, n_positions=config.context, n_embd=config.d_model, n_layer=config.n_layers,
        n_head=config.n_heads, n_inner=4 * config.d_model, activation_function="gelu", layer_norm_epsilon=1e-5,
        resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0, tie_word_embeddings=config.tie_weights,
        bos_token_id=config.vocab_size - 1, eos_token_id=config.vocab_size - 1,
    )


def to_gpt2_lm_head_model(model):
    """A ``transformers`` GPT2LMHeadModel holding exactly the weights of an llmlab GPT."""
    from transformers import GPT2LMHeadModel

    gpt2 = GPT2LMHeadModel(gpt2_config_for(model.config)).eval()
    with torch.no_grad():
        gpt2.transformer.wte.weight.copy_(model.token_embedding.weight)
        gpt2.transformer.wpe.weight.copy_(model.position_embedding.weight)
        for ours, theirs in zip(model.blocks, gpt2.transformer.h):
            theirs.ln_1.weight.copy_(ours.norm_attention.weight)
            theirs.ln_1.bias.copy_(ours.norm_attention.bias)
            copy_gpt2_attention_weights(theirs.attn, ours.attention, to_gpt2=True)
            theirs.ln_2.weight.copy_(ours.norm_mlp.weight)
            theirs.ln_2.bias.copy_(ours.norm_mlp.bias)
            theirs.mlp.c_fc.weight.copy_(ours.mlp.up.weight.T)
            theirs.mlp.c_fc.bias.copy_(ours.mlp.up.bias)
            theirs.mlp.c_proj.weight.copy_(ours.mlp.down.weight.T)
            theirs.mlp.c_proj.bias.copy_(ours.mlp.down.bias)
        gpt2.transformer.ln_f.weight.copy_(model.final_norm.weight)
        gpt2.transformer.ln_f.bias.copy_(model.final_norm.bias)
        if not model.config.tie_weights:
            gpt2.lm_head.weight.copy_(model.lm_head.weight)
    return gpt2
