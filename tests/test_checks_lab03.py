"""Lab 3's self-checks pass the reference code and name each classic mistake
(03.1 loss, 03.2 schedule, 03.3 6·N·D, 03.4 pre-LN block, 03.5 training step)."""

from __future__ import annotations

import math

import pytest
import torch
from torch.nn import functional as F

from llmlab.checks import lab03
from llmlab.costs import transformer_matrix_parameters
from llmlab.lm import causal_lm_loss
from llmlab.metrics import token_cross_entropy
from llmlab.model import GPT, Block
from llmlab.training import cosine_learning_rate


def six_n_d(config, tokens):
    return 6 * transformer_matrix_parameters(config.n_layers, config.d_model, config.vocab_size) * tokens


def expect(result, phrase: str | None) -> None:
    """``phrase`` None: the check passes; otherwise it fails with a message that contains ``phrase``."""
    assert bool(result) is (phrase is None), result
    assert phrase is None or phrase in result.message, result


# --- 03.1: the causal language-model loss -------------------------------------------------------------


def cross_entropy(logits, targets, **options):
    return F.cross_entropy(logits.flatten(0, 1), targets.flatten(), **options)


@pytest.mark.parametrize("loss, phrase", [
    pytest.param(causal_lm_loss, None, id="reference"),  # computes in float32
    pytest.param(lambda logits, tokens: cross_entropy(logits[:, :-1], tokens[:, 1:]), None, id="float64"),
    pytest.param(lambda logits, tokens: causal_lm_loss(logits, tokens).item(), "the loss should be a torch.Tensor, got float",
                 id="python-float"),
    pytest.param(lambda logits, tokens: cross_entropy(logits[:, :-1], tokens[:, 1:], reduction="none"), "take the mean",
                 id="per-position"),
    pytest.param(lambda logits, tokens: cross_entropy(logits, tokens), "position t is scored against token t itself", id="unshifted"),
    pytest.param(lambda logits, tokens: cross_entropy(logits[:, 1:], tokens[:, :-1]), "the shift goes the wrong way",
                 id="shifted-the-wrong-way"),
    pytest.param(lambda logits, tokens: cross_entropy(logits[:, :-1], tokens[:, 1:], reduction="sum"),
                 "that is the sum over positions", id="summed"),
    pytest.param(lambda logits, tokens: cross_entropy(logits[:, 1:], tokens[:, 1:]), "the loss is", id="both-shifted"),
])
def test_loss_check(loss, phrase):
    expect(lab03.check_causal_lm_loss(loss), phrase)


# --- 03.2: the learning-rate schedule -------------------------------------------------------------------


def schedule_with(warmup_rate=None, after_end=None, floor_ratio=None):
    """The reference schedule with one part replaced: ``warmup_rate(step, peak, warmup)`` during warm-up,
    ``after_end(step, total, peak, warmup, floor)`` from the last step on, or a fixed floor ratio."""
    def rate(step, total, peak, warmup, floor=0.1):
        floor = floor if floor_ratio is None else floor_ratio
        if warmup_rate is not None and step < warmup:
            return warmup_rate(step, peak, warmup)
        if after_end is not None and step >= total:
            return after_end(step, total, peak, warmup, floor)
        return cosine_learning_rate(step, total, peak, warmup, floor)
    return rate


def unclipped(step, total, peak, warmup, floor_ratio):
    """Cosine of the unclipped progress: past the last step the rate climbs back up."""
    floor = floor_ratio * peak
    return floor + 0.5 * (peak - floor) * (1 + math.cos(math.pi * (step - warmup) / (total - warmup)))


@pytest.mark.parametrize("schedule, phrase", [
    pytest.param(cosine_learning_rate, None, id="reference"),
    pytest.param(lambda *args: [cosine_learning_rate(*args)], "the learning rate should be a number, got list", id="list"),
    pytest.param(schedule_with(warmup_rate=lambda step, peak, warmup: peak * step / warmup),
                 "during warm-up: step 0 should already get peak / warmup_steps, so use (step + 1) / warmup_steps",
                 id="warm-up-off-by-one"),
    pytest.param(schedule_with(warmup_rate=lambda step, peak, warmup: peak), "check the schedule during warm-up", id="no-warm-up"),
    pytest.param(schedule_with(after_end=unclipped), "after the last step the rate stays at the floor; clip the progress at 1",
                 id="progress-not-clipped"),
    pytest.param(schedule_with(after_end=lambda *args: 0.0), "check the schedule after the last step", id="zero-after-the-end"),
    pytest.param(schedule_with(floor_ratio=0.0), "check the schedule during the cosine decay", id="no-floor"),
])
def test_schedule_check(schedule, phrase):
    expect(lab03.check_learning_rate_schedule(schedule), phrase)


def test_schedule_message_gives_no_hint_for_other_mistakes():
    message = lab03.check_learning_rate_schedule(schedule_with(after_end=lambda *args: 0.0)).message
    assert message.endswith("after the last step"), message


# --- 03.3: 6·N·D ---------------------------------------------------------------------------------------------


def flops_with(parameters_per_block, output_layers: int = 1, per_token: int = 6):
    """per_token · N · D with N = L · parameters_per_block(d) + output_layers · V · d."""
    def flops(config, tokens):
        d = config.d_model
        matrices = config.n_layers * parameters_per_block(d) + output_layers * config.vocab_size * d
        return per_token * matrices * tokens
    return flops


@pytest.mark.parametrize("flops, phrase", [
    pytest.param(six_n_d, None, id="reference"),
    pytest.param(flops_with(lambda d: 12 * d * d), None, id="reference-rewritten"),
    pytest.param(lambda config, tokens: f"{six_n_d(config, tokens):.3e}", "the number of FLOPs should be a number, got str",
                 id="string"),
    pytest.param(lambda config, tokens: 6 * GPT(config).parameter_count() * tokens, "you counted every parameter",
                 id="every-parameter"),
    pytest.param(flops_with(lambda d: 12 * d * d, output_layers=0), "the output layer is missing", id="no-output-layer"),
    pytest.param(flops_with(lambda d: 12 * d * d, output_layers=2), "V·d is counted twice", id="embedding-counted-too"),
    pytest.param(flops_with(lambda d: 12 * d * d, per_token=2), "that is the forward pass only (2N per token)", id="forward-only"),
    pytest.param(flops_with(lambda d: 4 * d * d), "each block also has its MLP", id="attention-only"),
    pytest.param(flops_with(lambda d: 6 * d * d), "the MLP is 4·d wide", id="mlp-2-d-squared"),
    pytest.param(lambda config, tokens: six_n_d(config, tokens) + 6 * config.context * config.d_model * tokens,
                 "your estimate implies N =", id="position-table-counted"),
])
def test_flops_check(flops, phrase):
    expect(lab03.check_training_flops(flops), phrase)


# --- 03.4: a pre-LN transformer block ----------------------------------------------------------------------


def block_with(forward):
    """llmlab's Block (same __init__, so the same weights) with ``forward(block, x, keep_weights)`` as its forward."""
    return type("LearnerBlock", (Block,), {"forward": lambda self, x, keep_weights=False: forward(self, x, keep_weights)})


def attend(block, x, keep_weights):
    return block.dropout(block.attention(x, keep_weights=keep_weights))


def post_ln(block, x, keep_weights):
    x = block.norm_attention(x + attend(block, x, keep_weights))
    return block.norm_mlp(x + block.mlp(x))


def normalised_stream(block, x, keep_weights):
    x = block.norm_attention(x)
    x = x + attend(block, x, keep_weights)
    x = block.norm_mlp(x)
    return x + block.mlp(x)


def pre_ln(norm_attention, norm_mlp, attention_residual=True, mlp_residual=True, keep_weights_passed=True, dropout=True):
    """The pre-LN forward with the named norms (attributes of the block) and the named parts left out."""
    def forward(block, x, keep_weights):
        attended = block.attention(getattr(block, norm_attention)(x), keep_weights=keep_weights and keep_weights_passed)
        attended = block.dropout(attended) if dropout else attended
        x = x + attended if attention_residual else attended
        transformed = block.mlp(getattr(block, norm_mlp)(x))
        return x + transformed if mlp_residual else transformed
    return forward


REFERENCE_BLOCK = pre_ln("norm_attention", "norm_mlp")


@pytest.mark.parametrize("block_cls, phrase", [
    pytest.param(Block, None, id="reference"),
    pytest.param(block_with(REFERENCE_BLOCK), None, id="reference-rewritten"),
    pytest.param(block_with(post_ln), "that is post-LN, x = LN(x + f(x))", id="post-ln"),
    pytest.param(block_with(pre_ln("norm_attention", "norm_mlp", attention_residual=False)),
                 "the residual around the attention is missing", id="no-attention-residual"),
    pytest.param(block_with(pre_ln("norm_attention", "norm_mlp", mlp_residual=False)),
                 "the residual around the MLP is missing", id="no-mlp-residual"),
    pytest.param(block_with(normalised_stream), "you normalise the residual stream itself", id="normalised-stream"),
    pytest.param(block_with(pre_ln("norm_attention", "norm_attention")), "one LayerNorm serves both sub-layers",
                 id="norm-attention-twice"),
    pytest.param(block_with(pre_ln("norm_mlp", "norm_mlp")), "one LayerNorm serves both sub-layers", id="norm-mlp-twice"),
    pytest.param(block_with(pre_ln("norm_attention", "norm_mlp", keep_weights_passed=False)), "pass keep_weights on",
                 id="keep-weights-dropped"),
    pytest.param(block_with(pre_ln("norm_attention", "norm_mlp", dropout=False)), "with dropout on (training mode)",
                 id="no-dropout"),
    pytest.param(block_with(lambda block, x, keep_weights: 2 * REFERENCE_BLOCK(block, x, keep_weights)),
                 "your block's output differs from Block's by up to", id="other"),
    pytest.param(block_with(lambda block, x, keep_weights: x[:, -1]), "your block's output has shape", id="wrong-shape"),
])
def test_block_check(block_cls, phrase):
    expect(lab03.check_transformer_block(block_cls), phrase)


def test_block_check_names_an_init_that_does_not_match():
    class Renamed(Block):
        def __init__(self, config, attention_cls=None):
            super().__init__(config)
            self.first_norm = self.norm_attention
            del self.norm_attention

    expect(lab03.check_transformer_block(Renamed), "keep the given __init__")


# --- 03.5: one training step ---------------------------------------------------------------------------------


def training_step(model, inputs, targets, optimizer, learning_rate, clip_norm, rate_groups=None, clear="before backward",
                  clip="before step", backward=True):
    """One step in train's order; each option moves or drops one part: ``rate_groups`` how many groups get the rate,
    ``clear`` when the gradients are zeroed (None: never), ``clip`` when they are clipped (None: never)."""
    for group in optimizer.param_groups[:rate_groups]:
        group["lr"] = learning_rate
    loss = token_cross_entropy(model(inputs), targets)
    if clear == "before backward":
        optimizer.zero_grad()
    if backward:
        loss.backward()
    if clear == "after backward":
        optimizer.zero_grad()
    if clip == "before step":
        torch.nn.utils.clip_grad_norm_(model.parameters(), clip_norm)
    optimizer.step()
    if clip == "after step":
        torch.nn.utils.clip_grad_norm_(model.parameters(), clip_norm)
    if clear == "after step":
        optimizer.zero_grad()
    return loss.item()


def step_with(**options):
    return lambda *args: training_step(*args, **options)


@pytest.mark.parametrize("step, phrase", [
    pytest.param(training_step, None, id="reference"),
    pytest.param(step_with(clear="after step"), None, id="cleared-after-the-step"),
    pytest.param(lambda *args: torch.tensor(training_step(*args)), None, id="loss-as-tensor"),
    pytest.param(step_with(clear=None), "the gradients are never cleared", id="never-cleared"),
    pytest.param(step_with(clip="after step"), "you clip after optimizer.step()", id="clip-after-step"),
    pytest.param(step_with(clip=None), "the gradient is not clipped", id="no-clipping"),
    pytest.param(step_with(rate_groups=0), "the learning rate is never set", id="rate-not-set"),
    pytest.param(step_with(rate_groups=1), "only the first parameter group gets the new learning rate", id="rate-first-group"),
    pytest.param(step_with(clear="after backward"), "the gradients are cleared between backward() and optimizer.step()",
                 id="cleared-before-the-step"),
    pytest.param(step_with(backward=False), "the loss is never backpropagated", id="no-backward"),
    pytest.param(lambda *args: training_step(*args) + 1, "but the loss of the batch is", id="wrong-loss"),
    pytest.param(lambda model, inputs, targets, *rest: token_cross_entropy(model(inputs), targets).item(),
                 "optimizer.step() is never called", id="no-step"),
])
def test_training_step_check(step, phrase):
    expect(lab03.check_training_step(step), phrase)


def test_the_training_step_check_clips_a_real_gradient():
    model, _, batches = lab03._step_setup(torch.device("cpu"))
    inputs, targets = batches[0]
    token_cross_entropy(model(inputs), targets).backward()
    assert lab03._gradient_norm(model) > 2 * lab03.STEP_CLIP_NORM
