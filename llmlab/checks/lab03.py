"""Self-checks of Lab 3 (pretraining): the causal LM loss, the learning-rate schedule, the 6·N·D estimate,
a pre-LN transformer block and one training step."""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn import functional as F

from llmlab.checks.core import (
    Mismatch,
    close,
    devices,
    expect_number,
    expect_shape,
    expect_tensor,
    grown,
    lab_shortcuts,
    learner,
    max_difference,
    seeded,
    self_check,
    variant_seed,
)
from llmlab.checks.remote import in_learner_process
from llmlab.costs import transformer_matrix_parameters
from llmlab.lm import causal_lm_loss
from llmlab.metrics import token_cross_entropy
from llmlab.model import GPT, MLP, Block, GPTConfig
from llmlab.training import adamw_groups, backward_and_step, cosine_learning_rate


@self_check("03.1")
def check_causal_lm_loss(loss_of) -> str:
    """fn(logits (B, n, V), tokens (B, n)) -> mean cross-entropy of predicting token t+1 at position t."""

    generator = seeded(3)
    for device in devices():
        for batch, n, vocab in (grown(2, 7, 5), grown(1, 2, 11), grown(4, 16, 65)):
            logits = torch.randn(batch, n, vocab, generator=generator, dtype=torch.float64).to(device)
            tokens = torch.randint(0, vocab, (batch, n), generator=generator).to(device)
            loss = expect_tensor(loss_of(logits, tokens), "the loss")
            if loss.dim() != 0:
                raise Mismatch(f"the loss should be one number (a 0-d tensor), got shape {tuple(loss.shape)}: take the mean")
            # The reference computes in float32 (as training does), hence 1e-5 and not float64's precision.
            expected = causal_lm_loss(logits, tokens).double()
            if torch.allclose(loss.double(), expected, atol=1e-5):
                continue
            unshifted = F.cross_entropy(logits.flatten(0, 1), tokens.flatten())
            if torch.allclose(loss.double(), unshifted, atol=1e-5):
                raise Mismatch("position t is scored against token t itself: drop the last position's logits and the first token (targets = tokens[:, 1:])")
            backwards = F.cross_entropy(logits[:, 1:].flatten(0, 1), tokens[:, :-1].flatten())
            if torch.allclose(loss.double(), backwards, atol=1e-5):
                raise Mismatch("the shift goes the wrong way: position t predicts token t+1, so pair logits[:, :-1] with tokens[:, 1:]")
            summed = F.cross_entropy(logits[:, :-1].flatten(0, 1), tokens[:, 1:].flatten(), reduction="sum")
            if torch.allclose(loss.double(), summed, atol=1e-5):
                raise Mismatch("that is the sum over positions; the loss is the mean (cross_entropy's default reduction)")
            raise Mismatch(f"for logits of shape {(batch, n, vocab)} the loss is {loss.item():.4f}, expected {expected.item():.4f}")
    return "equals the shifted next-token cross-entropy on 3 random batches"


def _unclipped_cosine(step: int, total: int, peak: float, warmup: int, floor_ratio: float) -> float:
    """The schedule with the progress not clipped at 1, so it rises again after the last step (a typical slip)."""
    floor = floor_ratio * peak
    return floor + 0.5 * (peak - floor) * (1 + math.cos(math.pi * (step - warmup) / max(1, total - warmup)))


@self_check("03.2")
def check_learning_rate_schedule(rate_at) -> str:
    """fn(step, total_steps, peak, warmup_steps, floor_ratio) -> learning rate (warm-up, then cosine to the floor)."""

    cases = [(total, warmup, floor) for total in (100, 2000) for warmup in (1, 10, 100) for floor in (0.0, 0.1)]
    for total, warmup, floor in cases:
        for step in sorted({0, warmup - 1, warmup, (warmup + total) // 2, total - 1, total, total + 5}):
            got = expect_number(rate_at(step, total, 3e-3, warmup, floor), "the learning rate")
            expected = cosine_learning_rate(step, total, 3e-3, warmup, floor)
            if abs(got - expected) <= 1e-12 + 1e-9 * expected:
                continue
            where = "during warm-up" if step < warmup else ("after the last step" if step >= total else "during the cosine decay")
            hint = ""
            if step < warmup and abs(got - 3e-3 * step / warmup) <= 1e-12:
                hint = ": step 0 should already get peak / warmup_steps, so use (step + 1) / warmup_steps"
            elif step > total and abs(got - _unclipped_cosine(step, total, 3e-3, warmup, floor)) <= 1e-12:
                hint = ": after the last step the rate stays at the floor; clip the progress at 1"
            raise Mismatch(f"at step {step} of {total} (warm-up {warmup}, floor {floor}) the rate is {got:.6g}, "
                           f"expected {expected:.6g} — check the schedule {where}{hint}")
    return f"matches warm-up + cosine decay on {len(cases)} settings, including the first, the peak and past-the-end steps"


def reference_training_flops(config, tokens) -> float:
    """6 · N · D with Chapter 3's N, the weights in matrix products: 12·L·d² + V·d."""
    return 6 * transformer_matrix_parameters(config.n_layers, config.d_model, config.vocab_size) * tokens


@self_check("03.3")
def check_training_flops(flops_for) -> str:
    """fn(config: GPTConfig, tokens) -> 6·N·D with N counted as Chapter 3 does: the weights in matrix products."""

    configurations = [
        GPTConfig(vocab_size=65, context=64, d_model=128, n_heads=4, n_layers=4),
        GPTConfig(vocab_size=65, context=256, d_model=384, n_heads=6, n_layers=6, bias=False),
        GPTConfig(vocab_size=50, context=32, d_model=48, n_heads=3, n_layers=2, rotary=True),
        GPTConfig(vocab_size=100, context=16, d_model=32, n_heads=2, n_layers=1, tie_weights=False),
    ]
    tokens = 1_000_000
    for config in configurations:
        got = expect_number(flops_for(config, tokens), "the number of FLOPs")
        L, d, V = config.n_layers, config.d_model, config.vocab_size
        expected = 6.0 * transformer_matrix_parameters(L, d, V) * tokens
        if abs(got - expected) <= 1e-9 * expected:
            continue
        mistakes = {
            6.0 * GPT(config).parameter_count() * tokens:
                "you counted every parameter; Chapter 3's N counts only weights that take part in matrix products "
                "(leave out embedding look-ups, position tables, biases and LayerNorm gains)",
            6.0 * L * 12 * d * d * tokens:
                "the output layer is missing: turning the last vectors into logits is a V × d matrix product",
            6.0 * (L * 12 * d * d + 2 * V * d) * tokens:
                "V·d is counted twice: looking up the token embedding is not a matrix product, only the output layer is",
            2.0 * transformer_matrix_parameters(L, d, V) * tokens:
                "that is the forward pass only (2N per token); the backward pass adds 4N, so training costs 6N per token",
            6.0 * (L * 4 * d * d + V * d) * tokens: "each block also has its MLP: 8·d² for the two matrices of a 4·d-wide MLP",
            6.0 * (L * 6 * d * d + V * d) * tokens: "the MLP is 4·d wide: its two matrices hold 2 × 4·d² = 8·d², so 12·d² per block",
        }
        for wrong, hint in mistakes.items():
            if abs(got - wrong) <= 1e-9 * wrong:
                raise Mismatch(f"(d_model={d}, n_layers={L}, vocab={V}) {hint}")
        raise Mismatch(f"(d_model={d}, n_layers={L}, vocab={V}) your estimate implies N = {got / (6 * tokens):,.0f}, "
                       f"Chapter 3 counts N = 12·L·d² + V·d = {expected / (6 * tokens):,.0f}")
    return f"6·N·D with N = 12·L·d² + V·d, exact for {len(configurations)} configurations"


# --- 03.4: a pre-LN transformer block ------------------------------------------------------------------


def _randomised_block(config):
    """llmlab's Block in float64 with every parameter drawn at random (LayerNorm gains around 1, non-zero
    biases), so that each classic mistake changes the output; uses the global generator (the caller seeds it)."""

    block = Block(config).double()
    with torch.no_grad():
        for name, parameter in block.named_parameters():
            noise = torch.randn_like(parameter)
            if name.startswith("norm_") and name.endswith("weight"):
                parameter.copy_(1 + 0.5 * noise)
            elif parameter.dim() == 1:
                parameter.copy_(0.3 * noise)
            else:
                parameter.copy_(noise / parameter.shape[1] ** 0.5)
    return block


def _block_mistakes(block, x: torch.Tensor) -> list[tuple[torch.Tensor, str]]:
    """What the reference block's sub-layers give when wired in each classic wrong way, with the hint for it."""
    attention, mlp, norm_attention, norm_mlp = block.attention, block.mlp, block.norm_attention, block.norm_mlp
    post_ln = norm_attention(x + attention(x))
    normalised = norm_attention(x)
    normalised = norm_mlp(normalised + attention(normalised))
    after_attention = x + attention(norm_attention(x))
    one_norm = "one LayerNorm serves both sub-layers: norm_attention goes before the attention, norm_mlp before the MLP"
    return [
        (norm_mlp(post_ln + mlp(post_ln)), ("that is post-LN, x = LN(x + f(x)); this block is pre-LN: x = x + f(LN(x)), "
                                            "the sub-layer reads the normalised x and its output is added to x itself")),
        (attention(norm_attention(x)) + mlp(norm_mlp(attention(norm_attention(x)))),
         "the residual around the attention is missing: x = x + dropout(attention(norm_attention(x)))"),
        (mlp(norm_mlp(after_attention)), "the residual around the MLP is missing: x = x + mlp(norm_mlp(x))"),
        (normalised + mlp(normalised),
         ("you normalise the residual stream itself (x = LN(x), then x = x + f(x)); keep x as it is and give only the "
          "sub-layer LN(x): x = x + f(LN(x))")),
        (after_attention + mlp(norm_attention(after_attention)), one_norm),
        (x + attention(norm_mlp(x)) + mlp(norm_mlp(x + attention(norm_mlp(x)))), one_norm),
    ]


def _check_block_dropout(block_cls, config, device) -> None:
    """In training mode, with dropout on, the learner's block draws the same masks as Block and gives the same output."""
    torch.manual_seed(variant_seed(1))
    reference = _randomised_block(config).to(device).train()
    mine = block_cls(config).double()
    mine.load_state_dict(reference.state_dict())
    mine = mine.to(device).train()
    x = torch.randn(2, 6, config.d_model, generator=seeded(4), dtype=torch.float64).to(device)
    torch.manual_seed(variant_seed(5))
    expected = reference(x)
    torch.manual_seed(variant_seed(5))
    if not close(expect_tensor(learner(mine)(x), "your block's output"), expected):
        raise Mismatch("with dropout on (training mode) your block differs from Block: apply self.dropout once, to the "
                       "attention's output before it is added to x (the MLP applies its own dropout)")


@self_check("03.4")
def check_transformer_block(block_cls) -> str:
    """block_cls(config) with llmlab.model.Block's weights copied in: the same output and the attention weights kept."""

    configurations = [(32, 4, False, True), (48, 3, True, False), (16, 2, True, True)]
    for device in devices():
        for d_model, n_heads, rotary, bias in configurations:
            setting = f"d_model={d_model}, rotary={rotary}, bias={bias}"
            config = GPTConfig(vocab_size=11, context=16, d_model=d_model, n_heads=n_heads, rotary=rotary, bias=bias)
            torch.manual_seed(variant_seed(0))
            reference = _randomised_block(config).eval()
            mine = block_cls(config).double()
            try:
                mine.load_state_dict(reference.state_dict())
            except RuntimeError as error:
                raise Mismatch(f"cannot copy Block's weights into your block (keep the given __init__): {error}".splitlines()[0]) from None
            reference, mine = reference.to(device), mine.to(device).eval()
            mine.attention.last_weights = None
            x = torch.randn(3, 10, d_model, generator=seeded(d_model), dtype=torch.float64).to(device)
            with torch.no_grad():
                output = expect_tensor(learner(mine)(x, keep_weights=True), "your block's output")
                expect_shape(output, x.shape, "your block's output", "a block maps (batch, n, d_model) to the same shape")
                expected = reference(x, keep_weights=True)
                mistakes = _block_mistakes(reference, x)
            if not close(output, expected):
                for wrong, hint in mistakes:
                    if close(output, wrong):
                        raise Mismatch(f"({setting}) {hint}")
                raise Mismatch(f"({setting}) your block's output differs from Block's by up to {max_difference(output, expected):.2e}")
            weights = mine.attention.last_weights
            if weights is None:
                raise Mismatch("forward(x, keep_weights=True) kept no attention weights: pass keep_weights on, "
                               "self.attention(…, keep_weights=keep_weights) (later cells plot those weights)")
            if not close(weights, reference.attention.last_weights):
                raise Mismatch(f"({setting}) the output is right but the attention kept other weights than Block's")
        _check_block_dropout(block_cls, GPTConfig(vocab_size=11, context=16, d_model=16, n_heads=2, dropout=0.3), device)
    return (f"matches llmlab.model.Block in {len(configurations)} configurations (with and without RoPE and biases), "
            "keeps the attention weights and applies dropout where Block does")


# --- 03.5: one training step -----------------------------------------------------------------------------

STEP_RATES = (3e-2, 2e-2, 1e-2)  # one rate per step, none equal to the rate the optimiser was built with
STEP_CLIP_NORM = 0.5  # below the first gradient norm of the tiny model (about 1.2), so clipping acts
STEP_BUILT_RATE = 1e-3


class _MLPBlock(nn.Module):
    """The blocks of 03.5's tiny model: a residual MLP, no attention. A training step does not care what the blocks
    compute, and this keeps the check from needing Block, which is Exercise 03.4's answer (the grader withholds it)."""

    def __init__(self, config, attention_cls=None):
        super().__init__()
        self.norm_mlp = nn.LayerNorm(config.d_model, bias=config.bias)
        self.mlp = MLP(config)

    def forward(self, x, keep_weights=False, cache=None):
        return x + self.mlp(self.norm_mlp(x))


def _step_setup(device):
    """A tiny seeded GPT in float64 (its blocks MLPs only), AdamW with train's two parameter groups, one batch per step."""

    torch.manual_seed(variant_seed(0))
    model = GPT(GPTConfig(vocab_size=11, context=8, d_model=16, n_heads=2, n_layers=1), block_cls=_MLPBlock).double().to(device)
    optimizer = torch.optim.AdamW(adamw_groups(model, STEP_BUILT_RATE, 0.1), lr=STEP_BUILT_RATE, betas=(0.9, 0.99))
    generator = seeded(1)
    batches = [tuple(torch.randint(0, 11, (4, 8), generator=generator).to(device) for _ in range(2)) for _ in STEP_RATES]
    return model, optimizer, batches


def reference_training_step(model, inputs, targets, optimizer, learning_rate, clip_norm) -> float:
    """Exercise 03.5 done as llmlab.training.train does it: the rate on every group, the loss, then backward_and_step."""
    for group in optimizer.param_groups:
        group["lr"] = learning_rate
    loss = token_cross_entropy(model(inputs), targets)
    backward_and_step(loss, optimizer, torch.amp.GradScaler("cpu", enabled=False), clip_norm)
    return loss.item()


def _step_that_never_clears(model, inputs, targets, optimizer, learning_rate, clip_norm) -> float:
    """The classic slip, kept to recognise it: the reference step without clearing the gradients."""
    for group in optimizer.param_groups:
        group["lr"] = learning_rate
    loss = token_cross_entropy(model(inputs), targets)
    loss.backward()
    torch.nn.utils.clip_grad_norm_([p for group in optimizer.param_groups for p in group["params"]], clip_norm)
    optimizer.step()
    return loss.item()


def _gradient_norm(model) -> float | None:
    """The norm of all gradients together; None when no parameter has one."""
    gradients = [p.grad for p in model.parameters() if p.grad is not None]
    return torch.cat([g.flatten() for g in gradients]).norm().item() if gradients else None


def _run_steps(step, device) -> dict:
    """Run ``step`` once per batch on a fresh tiny model; record what the optimiser saw at each optimizer.step()."""
    model, optimizer, batches = _step_setup(device)
    seen = {"backward": 0, "steps": [], "losses": [], "left_over": None}
    model.final_norm.weight.register_post_accumulate_grad_hook(lambda _: seen.__setitem__("backward", seen["backward"] + 1))
    optimizer.register_step_pre_hook(lambda optimizer, *_: seen["steps"].append(
        ([group["lr"] for group in optimizer.param_groups], _gradient_norm(model))))
    for (inputs, targets), rate in zip(batches, STEP_RATES):
        loss = step(model, inputs, targets, optimizer, rate, STEP_CLIP_NORM)
        seen["losses"].append(expect_number(loss, "the value training_step returns"))
        if seen["left_over"] is None:
            seen["left_over"] = _gradient_norm(model)
    seen["parameters"] = [p.detach().clone() for p in model.parameters()]
    return seen


def _same_run(a: dict, b: dict) -> bool:
    return (max(abs(x - y) for x, y in zip(a["losses"], b["losses"])) <= 1e-6
            and all(close(p, q) for p, q in zip(a["parameters"], b["parameters"])))


def _diagnose_first_step(mine: dict, expected: dict) -> None:
    """Name the mistake that the first call already shows: loss, step, backward, rates, clipping."""
    if abs(mine["losses"][0] - expected["losses"][0]) > 1e-6:
        raise Mismatch(f"training_step returned {mine['losses'][0]:.6f}, but the loss of the batch is {expected['losses'][0]:.6f}: "
                       "return token_cross_entropy(model(inputs), targets).item(), computed before the step")
    if not mine["steps"]:
        raise Mismatch("optimizer.step() is never called, so the parameters never change")
    if len(mine["steps"]) != len(STEP_RATES):
        raise Mismatch(f"optimizer.step() ran {len(mine['steps'])} times in {len(STEP_RATES)} calls: once per call")
    if mine["backward"] == 0:
        raise Mismatch("the loss is never backpropagated: without loss.backward() there are no gradients, "
                       "and optimizer.step() has nothing to apply")
    rates, norm = mine["steps"][0]
    if not norm:
        raise Mismatch("the gradients are cleared between backward() and optimizer.step(), so the step has nothing to apply "
                       "and nothing moves: clear them before backward() (or after the step)")
    if any(abs(rate - STEP_RATES[0]) > 1e-15 for rate in rates):
        if all(abs(rate - STEP_BUILT_RATE) <= 1e-15 for rate in rates):
            raise Mismatch("the learning rate is never set, so every step uses the rate the optimiser was built with: "
                           "for group in optimizer.param_groups: group['lr'] = learning_rate")
        if abs(rates[0] - STEP_RATES[0]) <= 1e-15:
            raise Mismatch("only the first parameter group gets the new learning rate: set it on every group "
                           "(train's AdamW has two, matrices with weight decay and the rest without)")
        raise Mismatch(f"optimizer.step() ran with learning rates {rates}, expected {STEP_RATES[0]} on every group")
    if norm > STEP_CLIP_NORM * (1 + 1e-9):
        left_over = mine["left_over"]
        if left_over is not None and abs(left_over - STEP_CLIP_NORM) <= 1e-4:
            raise Mismatch("you clip after optimizer.step(), when the update has already used the unclipped gradient: "
                           "clip between backward() and step()")
        raise Mismatch(f"the gradient is not clipped: optimizer.step() saw a norm of {norm:.3f}, more than clip_norm = {STEP_CLIP_NORM}; "
                       "call torch.nn.utils.clip_grad_norm_(model.parameters(), clip_norm) between backward() and step()")


@self_check("03.5")
def check_training_step(step) -> str:
    """fn(model, inputs, targets, optimizer, learning_rate, clip_norm) -> the batch's loss; 3 steps compared with train's order."""
    for device in devices():
        expected = _run_steps(reference_training_step, device)
        mine = in_learner_process(_run_steps, step, device)  # where the learner's code is: the grader's sandbox, or here
        _diagnose_first_step(mine, expected)
        if _same_run(mine, expected):
            continue
        if _same_run(mine, _run_steps(_step_that_never_clears, device)):
            raise Mismatch("the gradients are never cleared, so each backward() adds to the gradients of every earlier batch: "
                           "call optimizer.zero_grad() once per step, before backward() (or after the step)")
        difference = max(max_difference(p, q) for p, q in zip(mine["parameters"], expected["parameters"]))
        raise Mismatch(f"after {len(STEP_RATES)} steps the parameters differ from the reference step's by up to {difference:.2e}")
    return (f"{len(STEP_RATES)} steps match train's order (rate, loss, backward, clipping, AdamW step, gradients cleared) "
            "on a tiny GPT, with the gradient clipped")


# The exercises of this lab, id -> (title, points): what solutions/03_pretraining.ipynb's metadata declares
# (tests/test_architecture.py keeps the two equal); checks.summary() reads them.
EXERCISES = {"03.1": ("causal language-modelling loss", 2), "03.2": ("learning-rate schedule", 2),
             "03.3": ("the 6·N·D estimate", 2), "03.4": ("a pre-LN transformer block", 3),
             "03.5": ("one training step", 3)}

CHECKS = {"03.1": check_causal_lm_loss, "03.2": check_learning_rate_schedule, "03.3": check_training_flops,
          "03.4": check_transformer_block, "03.5": check_training_step}


# What use_reference("03.k") puts in the notebook: the name its exercise defines, and the course's implementation.
REFERENCES = {"03.1": ("causal_lm_loss", causal_lm_loss), "03.2": ("learning_rate_at", cosine_learning_rate),
              "03.3": ("training_flops_for", reference_training_flops), "03.4": ("PreLNBlock", Block),
              "03.5": ("training_step", reference_training_step)}

# checks.use_reference("03.k") when stuck, checks.summary() at the end of the lab
use_reference, summary = lab_shortcuts("03")
