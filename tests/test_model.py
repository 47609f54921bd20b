"""The small GPT (its blocks and attention exchangeable) and the reversal task of Lab 2, trained with the course's loop."""

from __future__ import annotations

import math

import pytest
import torch

from llmlab.attention import MultiHeadSelfAttention
from llmlab.metrics import token_cross_entropy
from llmlab.model import GPT, Block, GPTConfig
from llmlab.tasks import ReversalTask
from llmlab.training import train


def test_reversal_batches_mask_the_question():
    task = ReversalTask(length=4, n_symbols=5)
    inputs, targets = task.batch(3, torch.Generator().manual_seed(0))
    assert inputs.shape == targets.shape == (3, 8)
    assert (inputs[:, 4] == task.separator).all()
    assert (targets[:, :4] == -100).all()
    assert torch.equal(targets[:, 4:], inputs[:, :4].flip(1))
    with pytest.raises(ValueError, match="length"):
        ReversalTask(length=0)


def test_gpt_shapes_errors_and_tied_weights():
    config = GPTConfig(vocab_size=11, context=8, d_model=16, n_heads=2, n_layers=2)
    model = GPT(config)
    tokens = torch.randint(0, 11, (3, 8))
    logits = model(tokens)
    assert logits.shape == (3, 8, 11) and model.context == 8
    assert model.lm_head.weight is model.token_embedding.weight
    with pytest.raises(ValueError, match="longer than the model's context"):
        model(torch.randint(0, 11, (1, 9)))
    with pytest.raises(ValueError, match="batch, positions"):
        model(torch.randint(0, 11, (8,)))
    rotary = GPT(GPTConfig(vocab_size=11, context=8, d_model=16, n_heads=2, rotary=True))
    assert rotary.position_embedding is None
    assert rotary.parameter_count() == model.parameter_count() - 8 * 16


def test_untrained_loss_is_near_uniform():
    model = GPT(GPTConfig(vocab_size=11, context=8, d_model=32, n_heads=4))
    # Targets independent of the inputs: with tied embeddings, predicting the input token itself would score better.
    tokens, targets = torch.randint(0, 11, (2, 64, 8)).unbind(0)
    assert abs(token_cross_entropy(model(tokens), targets).item() - math.log(11)) < 0.2


def test_training_learns_to_reverse():
    torch.manual_seed(0)
    task = ReversalTask(length=6)
    model = GPT(GPTConfig(vocab_size=task.vocab_size, context=task.context, d_model=32, n_heads=4, n_layers=2))
    generator = torch.Generator().manual_seed(1)
    before = task.accuracy(model, generator=torch.Generator().manual_seed(2))
    history = train(model, lambda: task.batch(32, generator), steps=150, learning_rate=3e-3, device=torch.device("cpu"),
                    evaluate=lambda: task.accuracy(model, 256, torch.Generator().manual_seed(2)), eval_every=50)
    after = history.evals[-1]
    assert before["token_accuracy"] < 0.3
    assert after["token_accuracy"] > 0.95, after
    assert history.losses[-1] < history.losses[0] / 5
    assert history.eval_steps == [0, 50, 100, 149]


def test_mirror_share_finds_the_reversing_pattern():
    task = ReversalTask(length=3)
    n = 2 * task.length
    perfect = torch.zeros(1, 2, n, n)
    for query in range(task.length, n):
        perfect[0, 0, query, n - 1 - query] = 1.0
    perfect[0, 1] = torch.eye(n)
    shares = task.mirror_share(perfect)
    assert shares.tolist() == [1.0, 0.0]
    with pytest.raises(ValueError, match="expected weights"):
        task.mirror_share(torch.zeros(2, 5, 5))


def test_gpt_builds_its_blocks_from_block_cls():
    class ScaledBlock(Block):
        """Block's weights, another output: a GPT built from it must compute something else."""

        def forward(self, x, keep_weights=False):
            return 2 * super().forward(x, keep_weights)

    class Attention(MultiHeadSelfAttention):
        pass

    config = GPTConfig(vocab_size=11, context=8, d_model=16, n_heads=2, n_layers=2)
    torch.manual_seed(0)
    default = GPT(config)
    torch.manual_seed(0)
    scaled = GPT(config, attention_cls=Attention, block_cls=ScaledBlock)
    assert all(isinstance(block, ScaledBlock) and isinstance(block.attention, Attention) for block in scaled.blocks)
    assert all(torch.equal(a, b) for a, b in zip(default.state_dict().values(), scaled.state_dict().values()))
    tokens = torch.randint(0, 11, (2, 8))
    assert not torch.allclose(default(tokens), scaled(tokens))
    assert all(type(block) is Block for block in GPT(config).blocks)


def test_speedrun_options_relu_squared_zero_init_and_soft_cap():
    torch.manual_seed(0)
    config = GPTConfig(vocab_size=13, context=8, d_model=16, n_heads=2, n_layers=2, tie_weights=False,
                       activation="relu2", zero_init_projections=True, logit_softcap=2.0)
    model = GPT(config)
    tokens = torch.randint(0, 13, (3, 8))
    # Zero output projections and a zero, untied output layer: every logit 0, the loss exactly ln V.
    assert token_cross_entropy(model(tokens), tokens).item() == pytest.approx(math.log(13), abs=1e-6)
    assert model.lm_head.weight is not model.token_embedding.weight
    x = torch.linspace(-3, 3, 7)
    assert torch.equal(model.blocks[0].mlp.activation(x), torch.relu(x) ** 2)
    with torch.no_grad():
        model.lm_head.weight.normal_(0, 10.0)  # huge logits, which the cap must bound
    logits = model(tokens)
    assert logits.abs().max() <= 2.0 and logits.abs().max() > 1.9  # tanh saturates to the cap in float32
    with pytest.raises(ValueError, match="activation must be one of"):
        GPTConfig(vocab_size=5, context=4, activation="swish")
    with pytest.raises(ValueError, match="logit_softcap must be positive"):
        GPTConfig(vocab_size=5, context=4, logit_softcap=0.0)
