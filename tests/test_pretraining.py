"""Lab 3's pretraining run: GPT-2 equivalence, checkpoints, kill-and-resume, refusing another run's checkpoint, the benchmark,
the learner's block class, and the pieces of the isoFLOP study."""

from __future__ import annotations

import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from llmlab.checkpoint import load_checkpoint, save_checkpoint
from llmlab.costs import transformer_matrix_parameters
from llmlab.hf_bridge import to_gpt2_lm_head_model
from llmlab.lm import shakespeare_corpus
from llmlab.metrics import token_cross_entropy
from llmlab.model import GPT, Block, GPTConfig
from llmlab.presets import lab_settings
from llmlab.pretraining import (
    benchmark, fit_power_law, frontier_fit, isoflop_frontier, isoflop_run, isoflop_study, model_config,
    parabola_minimum, pretrain, proportional_warmup, sized, steps_for_budget,
)
from llmlab.training import SettingsMismatch

ROOT = Path(__file__).resolve().parent.parent
SMOKE = lab_settings("03_pretraining", "smoke")


def test_same_architecture_as_gpt2_lm_head_model():
    torch.manual_seed(0)
    config = GPTConfig(vocab_size=65, context=32, d_model=64, n_heads=4, n_layers=3, bias=True)
    model = GPT(config).eval()
    gpt2 = to_gpt2_lm_head_model(model)
    assert model.parameter_count() == sum(p.numel() for p in gpt2.parameters())
    tokens = torch.randint(0, 65, (2, 32))
    with torch.no_grad():
        assert torch.allclose(model(tokens), gpt2(tokens).logits, atol=1e-5)
    with pytest.raises(ValueError, match="rotary"):
        to_gpt2_lm_head_model(GPT(GPTConfig(vocab_size=65, context=8, rotary=True)))


def test_checkpoint_round_trip_with_tied_weights(tmp_path):
    model = GPT(GPTConfig(vocab_size=11, context=8, d_model=16, n_heads=2, n_layers=1))
    optimizer = torch.optim.AdamW(model.parameters())
    token_cross_entropy(model(torch.randint(0, 11, (2, 8))), torch.randint(0, 11, (2, 8))).backward()
    optimizer.step()
    path = save_checkpoint(tmp_path / "c.safetensors", model, optimizer, step=7, rng={"torch": torch.get_rng_state()}, metadata={"note": "x"})
    fresh = GPT(GPTConfig(vocab_size=11, context=8, d_model=16, n_heads=2, n_layers=1))
    fresh_optimizer = torch.optim.AdamW(fresh.parameters())
    step, rng, metadata = load_checkpoint(path, fresh, fresh_optimizer)
    assert step == 7 and metadata == {"note": "x"} and "torch" in rng
    assert fresh.lm_head.weight is fresh.token_embedding.weight
    for a, b in zip(model.state_dict().values(), fresh.state_dict().values()):
        assert torch.equal(a, b)
    assert torch.equal(optimizer.state_dict()["state"][0]["exp_avg"], fresh_optimizer.state_dict()["state"][0]["exp_avg"])
    with pytest.raises(ValueError, match="does not fit"):
        load_checkpoint(path, GPT(GPTConfig(vocab_size=11, context=8, d_model=32, n_heads=2, n_layers=1)))
    assert not list(tmp_path.glob("*.partial"))


def _final_state(model):
    return {name: tensor.clone() for name, tensor in model.state_dict().items()}


def test_interrupted_and_resumed_run_equals_uninterrupted(tmp_path):
    corpus = shakespeare_corpus()
    settings = {**SMOKE, "steps": 24, "eval_every": 8, "checkpoint_every": 5}
    device = torch.device("cpu")
    reference, reference_history, _ = pretrain(settings, device, corpus)
    path = tmp_path / "run.safetensors"
    pretrain(settings, device, corpus, checkpoint_path=path, stop_after_step=12)  # "interrupted" after step 12
    step, _, _ = load_checkpoint(path, GPT(reference.config))
    assert step == 13
    resumed, resumed_history, _ = pretrain(settings, device, corpus, checkpoint_path=path, resume=True)
    assert resumed_history.losses == pytest.approx(reference_history.losses, abs=1e-6)
    assert resumed_history.evals[-1]["val_loss"] == pytest.approx(reference_history.evals[-1]["val_loss"], abs=1e-6)
    for name, tensor in _final_state(reference).items():
        assert torch.allclose(tensor, resumed.state_dict()[name], atol=1e-6), name


def test_killed_process_resumes_to_the_same_loss(tmp_path):
    """A real SIGKILL in the middle of training, then a resume from the last checkpoint."""
    settings = {**SMOKE, "steps": 40, "eval_every": 39, "checkpoint_every": 4}
    path = tmp_path / "killed.safetensors"
    script = (
        "import json, sys, torch\n"
        "from llmlab.pretraining import pretrain\n"
        "pretrain(json.loads(sys.argv[1]), torch.device('cpu'), checkpoint_path=sys.argv[2], resume=True)\n"
    )
    import json

    process = subprocess.Popen([sys.executable, "-c", script, json.dumps(settings), str(path)],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=ROOT)
    deadline = time.time() + 120
    while time.time() < deadline and process.poll() is None:
        if path.is_file():
            step, _, _ = load_checkpoint(path, GPT(model_config(settings, 65)))
            if step >= 8:
                break
        time.sleep(0.05)
    assert process.poll() is None, "the training process finished before it could be killed; make the run longer"
    os.kill(process.pid, signal.SIGKILL)
    process.wait()
    corpus = shakespeare_corpus()
    resumed, resumed_history, _ = pretrain(settings, torch.device("cpu"), corpus, checkpoint_path=path, resume=True)
    reference, reference_history, _ = pretrain(settings, torch.device("cpu"), corpus)
    assert resumed_history.evals[-1]["val_loss"] == pytest.approx(reference_history.evals[-1]["val_loss"], abs=1e-5)
    assert resumed_history.losses == pytest.approx(reference_history.losses, abs=1e-5)


def test_a_checkpoint_of_other_settings_is_refused_in_one_line(tmp_path):
    corpus = shakespeare_corpus()
    settings = {**SMOKE, "steps": 6, "eval_every": 6, "checkpoint_every": 3}
    path = tmp_path / "run.safetensors"
    pretrain(settings, torch.device("cpu"), corpus, checkpoint_path=path, stop_after_step=2)
    for changed, named in (({"d_model": 48}, "d_model 32 there, 48 here"), ({"steps": 12}, "steps 6 there, 12 here"),
                           ({"learning_rate": 1e-3}, "learning_rate")):
        with pytest.raises(SettingsMismatch, match=named) as error:
            pretrain({**settings, **changed}, torch.device("cpu"), corpus, checkpoint_path=path, resume=True)
        assert "\n" not in str(error.value) and "run.safetensors" in str(error.value)
    # settings that do not change the run (how often to evaluate) may differ
    _, history, _ = pretrain({**settings, "eval_every": 2}, torch.device("cpu"), corpus, checkpoint_path=path, resume=True)
    assert history.steps == list(range(6))


def test_benchmark_reports_on_the_smoke_preset(capsys):
    report = benchmark("smoke")
    printed = capsys.readouterr().out
    assert report["preset"] == "smoke" and report["parameters"] > 0 and 2.5 < report["val_loss_final"] < 4.5
    assert "val loss, final, on the whole validation split" in printed and report["machine"].startswith("cpu: ")
    with pytest.raises(ValueError, match="unknown preset 'fast'; valid presets: smoke, cpu, gpu"):
        benchmark("fast")


def test_pretrain_builds_the_model_from_block_cls():
    class MyBlock(Block):
        pass

    model, history, _ = pretrain({**SMOKE, "steps": 2, "eval_every": 2}, torch.device("cpu"), shakespeare_corpus(), block_cls=MyBlock)
    assert all(type(block) is MyBlock for block in model.blocks) and len(history.losses) == 2


# --- the isoFLOP study -----------------------------------------------------------------------------------------


def test_steps_for_budget_spends_the_budget_in_whole_steps():
    assert steps_for_budget(6 * 100 * 10 * 7, parameters=100, tokens_per_step=10) == 7
    assert steps_for_budget(6 * 100 * 10 * 7.4, parameters=100, tokens_per_step=10) == 7
    assert steps_for_budget(1.0, parameters=100, tokens_per_step=10) == 1  # at least one step
    with pytest.raises(ValueError, match="must be positive, got 0, 100, 10$"):
        steps_for_budget(0, 100, 10)


def test_proportional_warmup_and_sized_settings():
    settings = {**SMOKE, "steps": 600, "warmup_steps": 30}
    assert [proportional_warmup(settings, steps) for steps in (60, 600, 10, 1)] == [3, 30, 1, 1]
    with pytest.raises(ValueError, match="steps must be at least 1, got 0"):
        proportional_warmup(settings, 0)
    assert [(run["n_heads"], run["d_model"], run["n_layers"]) for run in (sized(SMOKE, 24, 2), sized(SMOKE, 96, 3))] == [(1, 24, 2), (3, 96, 3)]
    with pytest.raises(ValueError, match="d_model=33 does not split into 1 heads of an even size"):
        sized(SMOKE, 33, 1)


def test_parabola_minimum_finds_a_known_minimum():
    sizes = [1e4, 3e4, 1e5, 3e5, 1e6]
    losses = [2.0 + 0.3 * (math.log(n) - math.log(5e4)) ** 2 for n in sizes]
    assert parabola_minimum(sizes, losses) == pytest.approx(5e4, rel=1e-6)
    assert parabola_minimum(sizes, [-loss for loss in losses]) is None  # opens downwards: no minimum
    with pytest.raises(ValueError, match="need at least 3 distinct sizes, one loss each, got 2 sizes and 2 losses"):
        parabola_minimum([1e4, 1e5], [2.0, 1.9])


def test_fit_power_law_recovers_exponent_and_coefficient():
    budgets = [1e10, 1e11, 1e12]
    exponent, coefficient = fit_power_law(budgets, [0.1 * c ** 0.5 for c in budgets])
    assert exponent == pytest.approx(0.5) and coefficient == pytest.approx(0.1)
    with pytest.raises(ValueError, match="need at least 2 distinct budgets"):
        fit_power_law([1e10], [1e4])
    with pytest.raises(ValueError, match="must be positive"):
        fit_power_law([1e10, 1e11], [1e4, -1.0])


def test_isoflop_frontier_takes_each_budgets_minimum_and_fits_the_line():
    def profile(budget, optimum, sizes=(1e3, 1e4, 1e5, 1e6)):
        return [{"budget": budget, "parameters": n, "val_loss": 2 + 0.1 * math.log(n / optimum) ** 2} for n in sizes]

    results = profile(1e10, 1e4) + profile(1e12, 1e5)
    frontier = isoflop_frontier(results)
    assert [point["budget"] for point in frontier] == [1e10, 1e12]
    assert [point["optimal_parameters"] for point in frontier] == pytest.approx([1e4, 1e5])
    assert frontier[0]["smallest"] == 1e3 and frontier[0]["largest"] == 1e6 and frontier[0]["best_trained_parameters"] == 1e4
    assert frontier_fit(frontier) == pytest.approx((0.5, 1e4 / 1e10 ** 0.5))
    flat = [{**result, "val_loss": -result["val_loss"]} for result in profile(1e14, 1e4)]
    assert frontier_fit(isoflop_frontier(results[:4] + flat)) is None  # only one budget has a minimum


def test_isoflop_run_spends_its_budget_and_the_study_needs_three_sizes():
    corpus = shakespeare_corpus()
    result = isoflop_run(SMOKE, 16, 1, 1e9, torch.device("cpu"), corpus)
    parameters = transformer_matrix_parameters(1, 16, 65)
    tokens_per_step = SMOKE["batch_size"] * SMOKE["context"]
    assert result["parameters"] == parameters and result["steps"] == steps_for_budget(1e9, parameters, tokens_per_step)
    assert abs(result["flops"] - 1e9) <= 3 * parameters * tokens_per_step  # within half a step of the budget
    assert 2.0 < result["val_loss"] < 4.5
    with pytest.raises(ValueError, match="a parabola needs at least 3 sizes per budget, got 2"):
        isoflop_study({**SMOKE, "scaling_sizes": [[16, 1], [32, 1]]}, torch.device("cpu"), corpus)
