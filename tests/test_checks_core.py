"""What every self-check promises: one result line, learner errors told apart from the check's own, no effect on the
caller's random state, the same line every run and on every device, and a registry keyed by exercise id ("NN.k")."""

from __future__ import annotations

import importlib
import random
import re

import numpy as np
import pytest
import torch

from llmlab import attention, intents, training
from llmlab.checks import LAB_MODULES, check_for, lab02, lab04
from llmlab.checks.core import CheckResult, Mismatch, learner, run_check


# Each lab module's REFERENCES: exercise id -> (the name its exercise defines, the course's implementation).
REFERENCES = {exercise: named[1] for name in LAB_MODULES
              for exercise, named in importlib.import_module(f"llmlab.checks.{name}").REFERENCES.items()}

ALL_CHECKS = {exercise: check for name in LAB_MODULES
              for exercise, check in importlib.import_module(f"llmlab.checks.{name}").CHECKS.items()}


def not_done(*args, **kwargs):
    raise NotImplementedError("Exercise: write your code here")


# --- the result line -------------------------------------------------------------------------------------------


def test_result_repr_and_truth():
    assert repr(CheckResult("02.1", True, "all good")) == "[PASS] 02.1: all good"
    assert repr(CheckResult("02.1", False, "not yet")) == "[FAIL] 02.1: not yet"
    assert CheckResult("02.1", True, "") and not CheckResult("02.1", False, "")


def test_real_checks_print_pass_and_fail_lines():
    passed = lab02.check_scaled_dot_product_attention(attention.scaled_dot_product_attention)
    failed = lab02.check_scaled_dot_product_attention(lambda q, k, v, mask=None: None)
    assert repr(passed).startswith("[PASS] 02.1: ") and passed.passed
    assert repr(failed).startswith("[FAIL] 02.1: ") and not failed.passed


# --- learner errors, check errors ---------------------------------------------------------------------------------


def test_unfinished_exercise_says_not_implemented():
    result = lab02.check_causal_mask(not_done)
    assert not result
    assert result.message.startswith("not implemented yet"), result


def test_learner_error_is_reported_with_its_type_and_first_line():
    def broken(n):
        raise ValueError("n must be positive\nmore details on a second line")

    result = lab02.check_causal_mask(broken)
    assert not result
    assert result.message == "your code raised ValueError: n must be positive", result


def test_a_mismatch_is_reported_as_it_is():
    def body():
        raise Mismatch("the weights are upside down")

    assert repr(run_check("02.1", body)) == "[FAIL] 02.1: the weights are upside down"


def test_error_of_the_check_itself_is_not_blamed_on_the_learner():
    def body():
        raise ImportError("No module named 'transformers'")

    result = run_check("02.1", body)
    assert not result
    assert "the check itself failed (ImportError: No module named 'transformers')" in result.message, result
    assert "your code raised" not in result.message and "not implemented" not in result.message


def test_import_error_in_learner_code_is_the_learner_s():
    def body():
        learner(lambda: __import__("no_such_module_for_this_test"))()
        return "unreachable"

    assert run_check("02.1", body).message.startswith("your code raised ModuleNotFoundError")


def test_real_check_whose_own_machinery_fails(monkeypatch):
    """If building GPT-2 fails (say transformers is missing), the GPT-2 comparison says the check failed, not the learner."""
    import llmlab.hf_bridge

    def missing(*args, **kwargs):
        raise ImportError("No module named 'transformers'")

    monkeypatch.setattr(llmlab.hf_bridge, "tiny_gpt2", missing)
    result = lab02.check_against_gpt2(attention.MultiHeadSelfAttention)
    assert not result and result.message.startswith("the check itself failed (ImportError"), result
    assert "your code raised" not in result.message


# --- random state, determinism, devices ------------------------------------------------------------------------------


def random_states():
    return torch.random.get_rng_state(), np.random.get_state(), random.getstate()


def noisy_attention(q, k, v, mask=None):
    """Uses the global generators, as a learner's code may (dropout, a random test tensor)."""
    random.random()
    np.random.rand(3)
    output, weights = attention.scaled_dot_product_attention(q, k, v, mask)
    return output + 1e-3 * torch.randn(output.shape, dtype=output.dtype), weights


def unseeded_sample(labels, per_intent, seed):
    return intents.sample_per_intent(labels, per_intent, seed=np.random.randint(1 << 30))


def run_several_checks():
    return [
        lab02.check_scaled_dot_product_attention(noisy_attention),
        lab02.check_multi_head_attention(attention.MultiHeadSelfAttention),  # seeds torch inside
        lab02.check_against_gpt2(attention.MultiHeadSelfAttention),          # builds a GPT-2 from a seed
        lab04.check_sample_per_intent(unseeded_sample),
        check_for("03.2")(training.cosine_learning_rate),
    ]


def test_checks_leave_the_callers_random_state_alone():
    torch.manual_seed(1234), np.random.seed(1234), random.seed(1234)
    torch.rand(5), np.random.rand(5), random.random()  # somewhere in the middle of each stream
    before = random_states()
    run_several_checks()
    torch_after, numpy_after, python_after = random_states()
    assert torch.equal(before[0], torch_after)
    assert before[1][0] == numpy_after[0] and np.array_equal(before[1][1], numpy_after[1]) and before[1][2:] == numpy_after[2:]
    assert before[2] == python_after


def test_check_output_is_deterministic():
    first, second = ([repr(result) for result in run_several_checks()] for _ in range(2))
    assert first == second
    assert "by up to" in first[0]  # the noisy learner fails with a number in the message: that number repeats too


@pytest.mark.parametrize("exercise", sorted(REFERENCES))
def test_pass_message_names_no_device(exercise):
    result = check_for(exercise)(REFERENCES[exercise])
    assert result, result
    assert " on cpu" not in result.message.lower() and "cuda" not in result.message.lower(), result


def test_gpt2_pass_message_names_no_device():
    message = lab02.check_against_gpt2(attention.MultiHeadSelfAttention).message
    assert " on cpu" not in message.lower() and "cuda" not in message.lower(), message


def test_every_check_has_a_reference_in_its_lab_module():
    assert sorted(REFERENCES) == sorted(ALL_CHECKS)


def test_use_reference_stands_in_for_a_stuck_learner_and_the_summary_says_so(capsys):
    from llmlab.checks import summary, use_reference
    from llmlab.checks.core import LATEST_RESULTS, REFERENCE_USED

    saved_results, saved_references = dict(LATEST_RESULTS), set(REFERENCE_USED)
    LATEST_RESULTS.clear()  # as in a fresh notebook session
    REFERENCE_USED.clear()
    notebook = {}
    installed = use_reference("02.2", notebook)
    assert notebook == {"causal_mask": attention.causal_mask} and installed is attention.causal_mask
    assert "[REFERENCE] 02.2" in capsys.readouterr().out
    lab02.check_scaled_dot_product_attention(attention.scaled_dot_product_attention)   # passes
    lab02.check_apply_rope(lambda x, angles: x)                                          # fails
    summary("02")
    table = capsys.readouterr().out
    assert re.search(r"02\.1 .* passed .* 2/2 points", table) and re.search(r"02\.3 .* failed .* 0/2 points", table)
    assert re.search(r"02\.2 .* reference used .* 0/1 points", table) and re.search(r"02\.4 .* not attempted", table)
    assert table.startswith("Lab 02: 2 of 8 points")
    with pytest.raises(KeyError, match="has no exercise '02.9'"):
        use_reference("02.9", notebook)
    LATEST_RESULTS.clear()
    LATEST_RESULTS.update(saved_results)
    REFERENCE_USED.clear()
    REFERENCE_USED.update(saved_references)


# --- the registry ---------------------------------------------------------------------------------------------------


def test_check_for_finds_the_check():
    assert check_for("02.1") is lab02.check_scaled_dot_product_attention
    assert check_for("04.3") is lab04.check_sample_per_intent


@pytest.mark.parametrize("exercise", ["02.9", "05.9", "99.1", "x"])
def test_check_for_unknown_exercise_raises_key_error(exercise):
    with pytest.raises(KeyError) as raised:
        check_for(exercise)
    message = raised.value.args[0]
    assert "\n" not in message and repr(exercise) in message, message


@pytest.mark.parametrize("exercise", sorted(ALL_CHECKS))
def test_ids_name_their_lab_and_are_reported(exercise):
    module = ALL_CHECKS[exercise].__module__
    assert re.fullmatch(r"\d\d[a-z]?\.\d+", exercise)
    assert module == f"llmlab.checks.lab{exercise.split('.')[0]}"
    assert check_for(exercise) is ALL_CHECKS[exercise]
    result = ALL_CHECKS[exercise](not_done)
    assert result.exercise == exercise and repr(result).startswith(f"[FAIL] {exercise}: not implemented yet"), result


def test_gpt2_comparison_reports_exercise_02_4():
    assert lab02.check_against_gpt2(not_done).exercise == "02.4"


def _memoriser(exercise: str):
    """A "solution" that stores the reference's answers to the self-check's exact inputs and replays them:
    it passes the self-check, and must fail the grader's hidden variants."""
    module = importlib.import_module(f"llmlab.checks.lab{exercise.split('.')[0]}")
    _, reference = module.REFERENCES[exercise]
    answers = {}

    def key(args):
        return tuple((tuple(a.shape), a.double().sum().item()) if isinstance(a, torch.Tensor) else repr(a) for a in args)

    def record(*args):
        answers[key(args)] = reference(*args)
        return answers[key(args)]

    assert check_for(exercise)(record)

    def replay(*args):
        return answers[key(args)]

    return replay


@pytest.mark.parametrize("exercise", ["01.2", "01.3", "02.1", "03.1", "04.1", "04b.1", "04b.2", "04b.3",
                                      "04b.4"])
def test_hidden_variants_use_other_inputs_and_shapes(exercise):
    from llmlab.checks.core import variant

    replay = _memoriser(exercise)
    check = check_for(exercise)
    assert check(replay), "replaying the recorded answers passes the self-check"
    for number in (1, 2):
        with variant(number):
            result = check(replay)
        assert not result and "KeyError" in result.message, result


ALL_EXERCISES = [exercise for name in LAB_MODULES for exercise in importlib.import_module(f"llmlab.checks.{name}").REFERENCES]


@pytest.mark.parametrize("exercise", ALL_EXERCISES)
def test_the_reference_passes_every_hidden_variant(exercise):
    from llmlab.checks.core import variant

    module = importlib.import_module(f"llmlab.checks.lab{exercise.split('.')[0]}")
    _, reference = module.REFERENCES[exercise]
    for number in (1, 2):
        with variant(number):
            result = check_for(exercise)(reference)
        assert result, result
