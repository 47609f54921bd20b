"""The one training loop: schedule, gradient norms, parameter groups, custom losses, non-finite losses."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from llmlab.model import GPT, GPTConfig
from llmlab.training import adamw_groups, cosine_learning_rate, train


def test_learning_rate_schedule():
    assert cosine_learning_rate(0, 100, 1.0, 10) == pytest.approx(0.1)
    assert cosine_learning_rate(9, 100, 1.0, 10) == pytest.approx(1.0)
    assert cosine_learning_rate(55, 100, 1.0, 10) == pytest.approx(0.55)
    assert cosine_learning_rate(100, 100, 1.0, 10) == pytest.approx(0.1)


def test_gradient_norms_are_recorded_before_clipping():
    torch.manual_seed(0)
    model = nn.Linear(4, 3)
    inputs, targets = torch.randn(8, 4) * 50, torch.randint(0, 3, (8,))
    fresh = nn.Linear(4, 3)
    fresh.load_state_dict(model.state_dict())
    torch.nn.functional.cross_entropy(fresh(inputs), targets).backward()
    expected = torch.cat([p.grad.flatten() for p in fresh.parameters()]).norm().item()
    history = train(model, lambda: (inputs, targets), steps=3, learning_rate=1e-3, device=torch.device("cpu"), clip_norm=0.1)
    assert len(history.grad_norms) == 3 and history.grad_norms[0] == pytest.approx(expected, rel=1e-5)
    assert history.grad_norms[0] > 0.1  # larger than the clipping threshold: the norm before clipping is what is kept


def test_each_parameter_group_follows_the_schedule_from_its_own_peak():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 6), nn.Linear(6, 2))
    before = [p.detach().clone() for p in model.parameters()]
    groups = [{"params": list(model[0].parameters()), "weight_decay": 0.0, "peak_learning_rate": 1e-3},
              {"params": list(model[1].parameters()), "weight_decay": 0.0, "peak_learning_rate": 1e-1}]
    batch = (torch.randn(16, 6), torch.randint(0, 2, (16,)))
    train(model, lambda: batch, steps=1, learning_rate=5.0, device=torch.device("cpu"), parameter_groups=groups, warmup_steps=1,
          clip_norm=1e9)
    # Adam's first step moves every weight by about its learning rate (the gradient's sign times the rate)
    moved = [(p.detach() - b).abs().max().item() for p, b in zip(model.parameters(), before)]
    assert moved[0] == pytest.approx(1e-3, rel=0.05) and moved[2] == pytest.approx(1e-1, rel=0.05)
    decayed, not_decayed = adamw_groups(model, 3e-4, 0.1)
    assert all(p.dim() == 2 for p in decayed["params"]) and all(p.dim() == 1 for p in not_decayed["params"])
    assert decayed["weight_decay"] == 0.1 and not_decayed["weight_decay"] == 0.0 and decayed["peak_learning_rate"] == 3e-4


def test_a_custom_loss_sees_the_whole_batch():
    model = nn.Linear(3, 1)
    seen = []

    def squared_error(model, batch):
        seen.append(batch["name"])
        return ((model(batch["x"]) - batch["y"]) ** 2).mean()

    batch = {"name": "regression", "x": torch.randn(10, 3), "y": torch.randn(10, 1)}
    history = train(model, lambda: batch, steps=30, learning_rate=5e-2, device=torch.device("cpu"), loss_fn=squared_error)
    assert seen == ["regression"] * 30 and history.losses[-1] < history.losses[0]


def test_training_stops_on_a_non_finite_loss():
    model = GPT(GPTConfig(vocab_size=5, context=4, d_model=8, n_heads=2, n_layers=1))
    tokens = torch.randint(0, 5, (2, 4))

    def poisoned_batch():
        with torch.no_grad():
            model.token_embedding.weight.fill_(float("nan"))
        return tokens, tokens

    with pytest.raises(FloatingPointError, match="loss became nan"):
        train(model, poisoned_batch, steps=3, learning_rate=1e-3, device=torch.device("cpu"))
