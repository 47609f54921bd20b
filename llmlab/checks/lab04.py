"""Self-checks of Lab 4 (fine-tuning): the LoRA forward pass, macro-F1, a stratified few-shot sampler."""

from __future__ import annotations

import math

import numpy as np
import torch

from llmlab import intents, metrics
from llmlab.checks.core import (
    Mismatch,
    close,
    devices,
    expect_shape,
    expect_tensor,
    grown,
    lab_shortcuts,
    max_difference,
    seeded,
    seeded_numpy,
    self_check,
)


@self_check("04.1")
def check_lora_forward(call) -> str:
    """fn(x, weight, bias, lora_A, lora_B, alpha, r) -> x Wᵀ + b + (alpha / r) · x Aᵀ Bᵀ."""
    generator = seeded(4)
    cases = [(3, 6, 10, 2, 4.0), (2, 16, 8, 4, 16.0), (5, 12, 12, 8, 8.0)]
    for device in devices():
        for n, d_in, d_out, r, alpha in [(*grown(n, d_in, d_out), r, alpha) for n, d_in, d_out, r, alpha in cases]:
            x = torch.randn(n, d_in, generator=generator, dtype=torch.float64).to(device)
            weight = torch.randn(d_out, d_in, generator=generator, dtype=torch.float64).to(device)
            bias = torch.randn(d_out, generator=generator, dtype=torch.float64).to(device)
            lora_A = torch.randn(r, d_in, generator=generator, dtype=torch.float64).to(device)
            lora_B = torch.randn(d_out, r, generator=generator, dtype=torch.float64).to(device)
            base = x @ weight.T + bias
            update = x @ lora_A.T @ lora_B.T
            output = expect_tensor(call(x, weight, bias, lora_A, lora_B, alpha, r), "the output")
            expect_shape(output, (n, d_out), "the output", "x (n, in) times Wᵀ (in, out) gives (n, out)")
            expected = base + (alpha / r) * update
            if close(output, expected):
                continue
            if close(output, base):
                raise Mismatch("the output equals the frozen layer alone: add the low-rank update (alpha / r) · x Aᵀ Bᵀ")
            if close(output, base + update):
                raise Mismatch("the update is missing its scale: multiply x Aᵀ Bᵀ by alpha / r")
            if close(output, base + (r / alpha) * update):
                raise Mismatch("the scale is upside down: it is alpha / r, not r / alpha")
            if close(output, (alpha / r) * update):
                raise Mismatch("the output is the update alone: add it to the frozen layer's output x Wᵀ + b")
            if close(output, x @ weight.T + (alpha / r) * update):
                raise Mismatch("the frozen layer's bias is missing: its output is x Wᵀ + b, bias included")
            raise Mismatch(f"the output differs from x Wᵀ + b + (alpha/r)·x Aᵀ Bᵀ by up to {max_difference(output, expected):.2e}")
    return f"x Wᵀ + b + (alpha/r)·x Aᵀ Bᵀ right on {len(cases)} random layers (ranks 2, 4, 8)"


@self_check("04.2")
def check_macro_f1(call) -> str:
    """fn(true, predicted, n_classes) -> macro-averaged F1 over the classes present in true or predicted."""
    generator = seeded_numpy(4)
    for n_classes, size in (grown(4, 50), grown(9, 300), grown(20, 500)):
        true = generator.integers(0, n_classes, size)
        predicted = np.where(generator.random(size) < 0.7, true, generator.integers(0, n_classes, size))
        predicted[predicted == n_classes - 1] = 0  # one class never predicted: its F1 must count as 0
        true[true == 1] = 2                          # one class never true but predicted sometimes: also F1 0
        predicted[:3] = 1
        n_classes += 1  # one more class that occurs nowhere: it must not count
        value = call(true, predicted, n_classes)
        try:
            if isinstance(value, (str, bytes)):
                raise TypeError
            value = float(value)
        except (TypeError, ValueError):
            raise Mismatch(f"return one number (a float), got {type(value).__name__}") from None
        expected = metrics.macro_f1(true, predicted, n_classes)
        if math.isclose(value, expected, abs_tol=1e-9):
            continue
        if math.isnan(value):
            raise Mismatch("got nan: a class that is never predicted has precision 0/0; use F1 = 2·TP / (2·TP + FP + FN), which is 0 there")
        if math.isclose(value, metrics.accuracy(true, predicted), abs_tol=1e-9):
            raise Mismatch("this is the accuracy (= micro-F1): compute F1 per class, then average the classes with equal weight")
        f1 = metrics.per_class_f1(true, predicted, n_classes)
        support = np.bincount(true, minlength=n_classes)
        if math.isclose(value, float((f1 * support).sum() / support.sum()), abs_tol=1e-9):
            raise Mismatch("this is the support-weighted F1: in the macro average every class counts the same")
        if math.isclose(value, float(f1.mean()), abs_tol=1e-9):
            raise Mismatch("you averaged over all n_classes, including classes absent from both lists; average over the classes that occur")
        present = f1[support > 0]
        if math.isclose(value, float(present.mean()), abs_tol=1e-9):
            raise Mismatch("you averaged only over classes that occur in `true`; a class that is only predicted (all false positives) counts too, with F1 0")
        raise Mismatch(f"macro-F1 is {expected:.6f} on a random case, you returned {value:.6f}")
    return "matches the macro-F1 on 3 random cases, including a class never predicted, one never true and one absent"


@self_check("04.3")
def check_sample_per_intent(call) -> str:
    """fn(labels, per_intent, seed) -> sorted list of indices, per_intent of each label (all if fewer), random but repeatable."""
    labels = np.repeat(np.arange(6), [12, 3, 9, 30, 1, 7])
    seeded_numpy(0).shuffle(labels)
    for per_intent in (1, 4, 10):
        chosen = call(labels, per_intent, 0)
        if not isinstance(chosen, (list, np.ndarray)):
            raise Mismatch(f"return a list of indices, got {type(chosen).__name__}")
        if any(np.ndim(i) != 0 for i in chosen):
            raise Mismatch("return one flat list of indices, not one list or array per intent: "
                           "extend a single list (or np.concatenate the per-intent arrays)")
        chosen = [int(i) for i in chosen]
        if any(i < 0 or i >= len(labels) for i in chosen):
            raise Mismatch("some indices are outside 0 … len(labels) - 1: return positions in labels, not labels")
        counts = np.bincount(labels[chosen], minlength=6)
        expected = np.minimum(np.bincount(labels), per_intent)
        if sorted(chosen) == np.repeat(np.arange(6), expected).tolist() and not np.array_equal(counts, expected):
            raise Mismatch("these are the intents of the chosen examples, not their positions: return positions in labels, not labels")
        if len(set(chosen)) != len(chosen):
            raise Mismatch("an index appears twice: sample without replacement")
        if not np.array_equal(counts, expected):
            if counts.sum() == expected.sum():
                raise Mismatch(f"right total but wrong mix per intent {counts.tolist()} (expected {expected.tolist()}): sample within each intent separately")
            raise Mismatch(f"with per_intent={per_intent} you took {counts.tolist()} per intent, expected {expected.tolist()} (an intent with fewer examples gives all it has)")
        if chosen != sorted(chosen):
            raise Mismatch("return the indices in increasing order (sorted), so a subset keeps the dataset's order")
        if chosen != [int(i) for i in call(labels, per_intent, 0)]:
            raise Mismatch("the same seed gave a different sample: draw with np.random.default_rng(seed)")
    first_ones = sorted(int(i) for intent in range(6) for i in np.flatnonzero(labels == intent)[:4])
    if [int(i) for i in call(labels, 4, 0)] == first_ones and [int(i) for i in call(labels, 4, 1)] == first_ones:
        raise Mismatch("you take the first examples of each intent: shuffle them with the seeded generator first")
    if [int(i) for i in call(labels, 4, 0)] == [int(i) for i in call(labels, 4, 1)]:
        raise Mismatch("seeds 0 and 1 gave the same sample: pick the examples at random (seeded), not the first ones")
    return "stratified, without repeats, sorted, repeatable for a seed and different across seeds"


# The exercises of this lab, id -> (title, points): what solutions/04_fine_tuning.ipynb's metadata declares
# (tests/test_architecture.py keeps the two equal); checks.summary() reads them.
EXERCISES = {"04.1": ("the LoRA forward pass", 2), "04.2": ("macro-F1", 2),
             "04.3": ("a stratified few-shot sampler", 1)}

CHECKS = {"04.1": check_lora_forward, "04.2": check_macro_f1, "04.3": check_sample_per_intent}


def lora_forward_reference(x, weight, bias, lora_A, lora_B, alpha, r):
    """x Wᵀ + b + (alpha / r) · x Aᵀ Bᵀ: the frozen layer plus the scaled low-rank update (Chapter 4, eq-lora)."""
    return x @ weight.T + bias + (alpha / r) * (x @ lora_A.T @ lora_B.T)


# What use_reference("04.k") puts in the notebook: the name its exercise defines, and the course's implementation.
REFERENCES = {"04.1": ("lora_forward", lora_forward_reference), "04.2": ("macro_f1", metrics.macro_f1),
              "04.3": ("sample_per_intent", intents.sample_per_intent)}

# checks.use_reference("04.k") when stuck, checks.summary() at the end of the lab
use_reference, summary = lab_shortcuts("04")
