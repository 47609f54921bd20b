"""LayerNorm and RMSNorm written out agree with torch.nn, and normalise each token on its own."""

from __future__ import annotations

import pytest
import torch

from llmlab.normalization import layer_norm, rms_norm


@pytest.mark.parametrize("shape", [(4, 16), (2, 7, 32), (3, 1, 5, 8)])
def test_layer_norm_matches_torch_with_gain_and_bias(shape):
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(*shape, generator=generator) * 3 + 2
    reference = torch.nn.LayerNorm(shape[-1])
    with torch.no_grad():
        reference.weight.copy_(torch.randn(shape[-1], generator=generator))
        reference.bias.copy_(torch.randn(shape[-1], generator=generator))
        torch.testing.assert_close(layer_norm(x, reference.weight, reference.bias), reference(x))
    no_bias = torch.nn.LayerNorm(shape[-1], bias=False)
    torch.testing.assert_close(layer_norm(x, no_bias.weight), no_bias(x))


@pytest.mark.skipif(not hasattr(torch.nn, "RMSNorm"),
                    reason=f"the reference, torch.nn.RMSNorm, arrived in torch 2.4; this is torch {torch.__version__}")
@pytest.mark.parametrize("shape", [(4, 16), (2, 7, 32)])
def test_rms_norm_matches_torch(shape):
    generator = torch.Generator().manual_seed(1)
    x = torch.randn(*shape, generator=generator) * 3 + 2
    reference = torch.nn.RMSNorm(shape[-1], eps=1e-6)
    with torch.no_grad():
        reference.weight.copy_(torch.randn(shape[-1], generator=generator))
        torch.testing.assert_close(rms_norm(x, reference.weight, eps=1e-6), reference(x))


def test_each_token_is_normalised_on_its_own():
    x = torch.randn(5, 3, 8)
    gain, bias = torch.ones(8), torch.zeros(8)
    alone = layer_norm(x[:1], gain, bias)
    changed = x.clone()
    changed[1:] *= 100  # other sequences, and other tokens, change a lot
    assert torch.allclose(layer_norm(changed[:1], gain, bias), alone)
    out = layer_norm(x, gain, bias)
    assert torch.allclose(out.mean(-1), torch.zeros(5, 3), atol=1e-6)
    assert torch.allclose(out.var(-1, unbiased=False), torch.ones(5, 3), atol=1e-3)
    assert torch.allclose(rms_norm(x, gain).pow(2).mean(-1), torch.ones(5, 3), atol=1e-3)
