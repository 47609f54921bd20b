"""The one training loop: schedule, gradient norms, parameter groups, custom losses, non-finite losses; Muon."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from llmlab.model import GPT, GPTConfig
from llmlab.optimizers import MuonWithAdamW, muon_groups, newton_schulz_orthogonalize
from llmlab.training import (
    adamw_groups,
    cosine_learning_rate,
    train,
    trapezoidal_learning_rate,
)


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


# --- Muon and the trapezoidal schedule -------------------------------------------------------------------


def test_newton_schulz_keeps_the_singular_vectors_and_moves_every_singular_value_near_one():
    torch.manual_seed(0)
    # A matrix whose singular values span two orders of magnitude (five steps lift those above about 1/200 of the largest).
    left, _ = torch.linalg.qr(torch.randn(48, 48))
    right, _ = torch.linalg.qr(torch.randn(96, 48))
    spread = torch.logspace(0, -2, 48)
    matrix = left @ torch.diag(spread) @ right.T
    for shape_of in (lambda m: m, lambda m: m.T):  # wide and tall
        orthogonalized = newton_schulz_orthogonalize(shape_of(matrix))
        singular_values = torch.linalg.svdvals(orthogonalized)
        assert singular_values.min() > 0.6 and singular_values.max() < 1.25, singular_values
        # Uᵀ O V is (almost) diagonal: the same singular vectors, in the same order.
        in_input_basis = left.T @ shape_of(orthogonalized) @ right
        off_diagonal = in_input_basis - torch.diag(torch.diagonal(in_input_basis))
        assert off_diagonal.abs().max() < 1e-3 and torch.diagonal(in_input_basis).min() > 0.6
    # The raw matrix's singular values ran from 1 to 0.01: the weakest directions got the largest boost.
    assert torch.linalg.svdvals(matrix).min() < 0.011
    with pytest.raises(ValueError, match="orthogonalises a matrix"):
        newton_schulz_orthogonalize(torch.randn(3, 4, 5))


def test_muon_groups_give_the_hidden_matrices_to_muon_and_the_rest_to_adamw():
    model = GPT(GPTConfig(vocab_size=11, context=8, d_model=16, n_heads=2, n_layers=2, tie_weights=False))
    groups = muon_groups(model, 3e-3, 0.02, 0.1)
    names = {id(p): name for name, p in model.named_parameters()}
    hidden, outer, vectors = ([names[id(p)] for p in group["params"]] for group in groups)
    assert {group["algorithm"] for group in groups} == {"muon", "adamw"} and groups[0]["algorithm"] == "muon"
    assert sorted(hidden) == sorted(f"blocks.{i}.{m}.weight" for i in range(2) for m in ("attention.qkv", "attention.out",
                                                                                         "mlp.up", "mlp.down"))
    assert sorted(outer) == ["lm_head.weight", "position_embedding.weight", "token_embedding.weight"]
    assert vectors and all(name.endswith("bias") or "norm" in name for name in vectors)  # gains and biases
    assert [group["peak_learning_rate"] for group in groups] == [0.02, 3e-3, 3e-3] and groups[2]["weight_decay"] == 0.0


def test_muon_with_adamw_steps_like_torch_adamw_and_like_the_muon_formula():
    torch.manual_seed(0)
    matrix, vector = nn.Parameter(torch.randn(6, 3)), nn.Parameter(torch.randn(5))
    twin_matrix, twin_vector = nn.Parameter(matrix.detach().clone()), nn.Parameter(vector.detach().clone())
    ours = MuonWithAdamW([{"params": [matrix], "algorithm": "muon", "weight_decay": 0.1, "lr": 0.02},
                          {"params": [vector], "algorithm": "adamw", "weight_decay": 0.1, "lr": 0.01}],
                         betas=(0.9, 0.99), momentum=0.9, nesterov=True)
    reference = torch.optim.AdamW([twin_vector], lr=0.01, betas=(0.9, 0.99), weight_decay=0.1)
    buffer = torch.zeros(6, 3)
    for _ in range(3):
        gradient, vector_gradient = torch.randn(6, 3), torch.randn(5)
        matrix.grad, vector.grad, twin_vector.grad = gradient, vector_gradient, vector_gradient.clone()
        buffer = 0.9 * buffer + gradient
        expected = twin_matrix.detach() * (1 - 0.02 * 0.1) - 0.02 * 2 ** 0.5 * newton_schulz_orthogonalize(gradient + 0.9 * buffer)
        ours.step()
        reference.step()
        twin_matrix.data = expected  # the formula, step by step: tall 6×3 matrices step √(6/3) times larger
        assert torch.allclose(matrix, expected, atol=1e-6)
        assert torch.allclose(vector, twin_vector, atol=1e-6)
    with pytest.raises(ValueError, match="Muon steps matrices only"):
        MuonWithAdamW([{"params": [nn.Parameter(torch.randn(4))], "algorithm": "muon"}])
    with pytest.raises(ValueError, match="must be 'muon' or 'adamw', got 'sgd'"):
        MuonWithAdamW([{"params": [nn.Parameter(torch.randn(4))], "algorithm": "sgd"}])


def test_train_uses_muon_for_groups_marked_muon_and_it_learns():
    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=7, context=8, d_model=16, n_heads=2, n_layers=1))
    tokens = torch.randint(0, 7, (4, 9))
    history = train(model, lambda: (tokens[:, :-1], tokens[:, 1:]), steps=40, learning_rate=1e-2, device=torch.device("cpu"),
                    parameter_groups=muon_groups(model, 1e-2, 0.02, 0.0), decay_steps=10, floor_ratio=0.0)
    assert history.losses[-1] < 0.5 * history.losses[0]


def test_trapezoidal_schedule_warms_up_holds_and_decays_to_its_floor():
    assert trapezoidal_learning_rate(0, 100, 1.0, 10, 30) == pytest.approx(0.1)
    assert trapezoidal_learning_rate(9, 100, 1.0, 10, 30) == pytest.approx(1.0)
    assert trapezoidal_learning_rate(69, 100, 1.0, 10, 30) == pytest.approx(1.0)
    assert trapezoidal_learning_rate(85, 100, 1.0, 10, 30) == pytest.approx(0.5)
    assert trapezoidal_learning_rate(100, 100, 1.0, 10, 30) == pytest.approx(0.0)
    assert trapezoidal_learning_rate(100, 100, 1.0, 10, 30, floor_ratio=0.1) == pytest.approx(0.1)
    with pytest.raises(ValueError, match="decay_steps must be between 1 and total_steps"):
        trapezoidal_learning_rate(0, 100, 1.0, 10, 0)
