"""What every self-check shares: the result line, the rules for reporting, small comparison helpers.

A check calls the learner's code only through :func:`learner`, so it can tell three kinds of
failure apart: a wrong answer (a :class:`Mismatch` with the sentence that names the mistake),
an error raised by the learner's code ("your code raised …", or "not implemented yet"), and an
error of the check itself, which is reported as such and never blamed on the learner. A check
never raises, never changes the learner's random state, and its message names no device, so
the same line is printed on a laptop and on a Colab GPU.
"""

from __future__ import annotations

import contextlib
import contextvars
import functools
import random
import sys
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch


@dataclass
class CheckResult:
    """One line per check: ``[PASS] 02.1: …`` or ``[FAIL] 02.1: what is wrong``; ``bool(result)`` is ``passed``."""

    exercise: str
    passed: bool
    message: str

    def __bool__(self) -> bool:
        return self.passed

    def __repr__(self) -> str:
        mark = "PASS" if self.passed else "FAIL"
        return f"[{mark}] {self.exercise}: {self.message}"


class Mismatch(Exception):
    """Raised inside a check with the sentence that tells the learner what is wrong."""


class ReferenceWithheld(BaseException):
    """Raised, while grading, by the course's implementation of an exercise: the grader's sandbox holds only a stub of
    it, so a submission that calls or wraps the reference gets nothing from it (a BaseException, so that an ordinary
    ``except Exception`` in the learner's code does not swallow it)."""

    def __init__(self, exercise: str, where: str = ""):
        super().__init__(f"{where or 'the course implementation'} is withheld while exercise {exercise} is graded")
        self.exercise, self.where = exercise, where


class LearnerCodeError(Exception):
    """The learner's code raised ``original``."""

    def __init__(self, original: BaseException):
        super().__init__(str(original))
        self.original = original


def learner(code: Callable) -> Callable:
    """``code`` (a learner's function, class or module) wrapped so that whatever it raises becomes a LearnerCodeError."""

    @functools.wraps(code)
    def call(*args, **kwargs):
        try:
            return code(*args, **kwargs)
        except Exception as error:  # the learner's code, whatever it raised
            raise LearnerCodeError(error) from error

    return call


@contextlib.contextmanager
def preserved_random_state():
    """Run a check without touching the random generators of Python, NumPy and torch (CPU and CUDA)."""
    python_state, numpy_state = random.getstate(), np.random.get_state()
    cuda_devices = list(range(torch.cuda.device_count())) if torch.cuda.is_available() else []
    with torch.random.fork_rng(devices=cuda_devices):
        try:
            yield
        finally:
            random.setstate(python_state)
            np.random.set_state(numpy_state)


def _first_line(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else ""


# The latest result of each exercise's self-check in this session, and the exercises given up on.
LATEST_RESULTS: dict[str, CheckResult] = {}
REFERENCE_USED: set[str] = set()


def run_check(exercise: str, body: Callable[[], str]) -> CheckResult:
    """Run ``body`` (which returns the pass message or raises) and turn the outcome into a CheckResult."""
    result = _outcome(exercise, body)
    if _VARIANT.get() == 0:
        LATEST_RESULTS[exercise] = result
    return result


def _outcome(exercise: str, body: Callable[[], str]) -> CheckResult:
    with preserved_random_state():
        try:
            return CheckResult(exercise, True, body())
        except Mismatch as problem:
            return CheckResult(exercise, False, str(problem))
        except LearnerCodeError as error:
            if isinstance(error.original, NotImplementedError):
                return CheckResult(exercise, False, "not implemented yet: replace the `raise NotImplementedError` line with your code")
            kind = getattr(error.original, "remote_type", type(error.original).__name__)  # the learner's process, when graded
            return CheckResult(exercise, False, f"your code raised {kind}: {_first_line(error.original)}")
        except Exception as error:  # a failure of the check, not of the learner's code
            return CheckResult(exercise, False, f"the check itself failed ({type(error).__name__}: {_first_line(error)}); "
                                                "this says nothing about your code: tell your instructor")


_VARIANT = contextvars.ContextVar("llmlab_check_variant", default=0)


@contextlib.contextmanager
def variant(number: int):
    """Run checks on other random inputs than the learner's self-check sees: the grader's hidden variants.

    Variant 0 is the self-check itself. Inside ``with variant(k)`` every generator a check
    makes with :func:`seeded` starts from another seed, so the inputs (and, where a check
    draws them, the shapes) differ, while what is checked stays the same.
    """
    token = _VARIANT.set(number)
    try:
        yield
    finally:
        _VARIANT.reset(token)


def current_variant() -> int:
    """0 in the learner's self-check, k in the grader's hidden variant k."""
    return _VARIANT.get()


def variant_seed(seed: int) -> int:
    """``seed`` in the self-check (variant 0); another seed, far from the others, in each hidden variant."""
    return seed + 7919 * _VARIANT.get()


def seeded(seed: int) -> torch.Generator:
    """A torch generator for a check's random inputs; the grader's hidden variants shift the seed."""
    return torch.Generator().manual_seed(variant_seed(seed))


def seeded_numpy(seed: int) -> np.random.Generator:
    return np.random.default_rng(variant_seed(seed))


def seeded_python(seed: int) -> random.Random:
    return random.Random(variant_seed(seed))


def grown(*sizes: int) -> tuple[int, ...]:
    """The sizes of a check's inputs: unchanged in the self-check, each one larger by k in hidden variant k.

    So a solution written for the self-check's exact shapes (a hard-coded length, a reshape to a
    fixed size) fails the grader while any general one passes.
    """
    return tuple(size + _VARIANT.get() for size in sizes)


def self_check(exercise: str):
    """Turn ``body(code) -> pass message`` into a check ``check(code, exercise=...) -> CheckResult``.

    ``body`` receives the learner's function or class already wrapped by :func:`learner`, and
    raises :class:`Mismatch` with the sentence that names a mistake.
    """

    def decorate(body: Callable[[Callable], str]) -> Callable[..., CheckResult]:
        @functools.wraps(body)
        def check(code: Callable, exercise: str = exercise) -> CheckResult:
            return run_check(exercise, lambda: body(learner(code)))

        return check

    return decorate


def devices() -> list[torch.device]:
    """Where a check runs the learner's code: the CPU, and the GPU when there is one (as the lab does)."""
    found = [torch.device("cpu")]
    if torch.cuda.is_available():
        found.append(torch.device("cuda"))
    return found


def on_every_device(cases: list) -> list[tuple[torch.device, object]]:
    """(device, case) for every case on every device of :func:`devices`."""
    return [(device, case) for device in devices() for case in cases]


def random_float64(generator: torch.Generator, *shape: int, device: torch.device, scale=1.0) -> torch.Tensor:
    """Standard normal float64 numbers, drawn on the CPU (the same on every device), times ``scale``, moved to ``device``."""
    return (torch.randn(*shape, generator=generator, dtype=torch.float64) * scale).to(device)


def expect_tensor(value, what: str) -> torch.Tensor:
    if not isinstance(value, torch.Tensor):
        raise Mismatch(f"{what} should be a torch.Tensor, got {type(value).__name__}")
    return value


def expect_shape(value: torch.Tensor, shape: tuple, what: str, hint: str = "") -> None:
    if tuple(value.shape) != tuple(shape):
        raise Mismatch(f"{what} has shape {tuple(value.shape)}, expected {tuple(shape)}" + (f" ({hint})" if hint else ""))


def expect_number(value, what: str) -> float:
    """``value`` as a float if it is one number (a Python number or a one-element tensor), else a Mismatch."""
    if isinstance(value, torch.Tensor):
        if value.numel() != 1:
            raise Mismatch(f"{what} should be one number, got a tensor of shape {tuple(value.shape)}")
        value = value.item()
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise Mismatch(f"{what} should be a number, got {type(value).__name__}")
    return float(value)


def close(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Equal up to rounding: 1e-9 for float64, 2e-5 for float32 (on the device of ``a``)."""
    tolerance = 1e-9 if a.dtype == torch.float64 else 2e-5
    return a.shape == b.shape and torch.allclose(a, b.to(a.device, a.dtype), atol=tolerance, rtol=tolerance)


def max_difference(a: torch.Tensor, b: torch.Tensor) -> float:
    return (a.double().cpu() - b.double().cpu()).abs().max().item()


def lab_of(exercise: str) -> str:
    """The lab key of an exercise id "<lab>.<k>": "02" for "02.1", "04b" for "04b.3"."""
    return exercise.split(".", 1)[0]


def lab_summary(lab: str, exercises: dict[str, tuple[str, int]]) -> str:
    """One line per exercise of lab ``lab`` ("02"): passed, failed, not attempted, or reference used; with points.

    ``exercises`` is the lab module's ``EXERCISES``: {id: (title, points)}, in the notebook's order.
    """
    lines, earned, possible = [], 0, 0
    for exercise_id, (title, points) in exercises.items():
        result = LATEST_RESULTS.get(exercise_id)
        if exercise_id in REFERENCE_USED:
            status, got = "reference used", 0
        elif result is None:
            status, got = "not attempted", 0
        elif result.passed:
            status, got = "passed", points
        else:
            status, got = "failed", 0
        earned, possible = earned + got, possible + points
        lines.append(f"  {exercise_id}  {title:<40} {status:<15} {got}/{points} points")
    return "\n".join([f"Lab {lab}: {earned} of {possible} points from the self-checks of this session", *lines])


def install_reference(exercise: str, references: dict[str, tuple[str, object]], namespace: dict):
    """Put the course's implementation of ``exercise`` into ``namespace`` under the exercise's name, and say so.

    ``references`` is the lab module's ``REFERENCES``: {id: (name in the notebook, implementation)}. The lab's
    summary counts the exercise as "reference used".
    """
    if exercise not in references:
        raise KeyError(f"lab {lab_of(exercise)} has no exercise {exercise!r}; its exercises: {', '.join(references)}")
    name, reference = references[exercise]
    namespace[name] = reference
    REFERENCE_USED.add(exercise)
    print(f"[REFERENCE] {exercise}: `{name}` is now the course's implementation ({reference.__module__}.{reference.__qualname__}); "
          "the lab runs on, and this exercise earns no points")
    return reference


def lab_shortcuts(lab: str):
    """``use_reference`` and ``summary`` for one lab's check module, so a notebook calls ``checks.use_reference("02.1")``
    and ``checks.summary()`` on the module it already imported.

    The lab's module calls this at its end; the two functions read its ``REFERENCES`` and ``EXERCISES`` when they
    are called, from the module itself (loaded by then: it made them), so nothing here imports a lab's module.
    """
    module_name = f"{__name__.rsplit('.', 1)[0]}.lab{lab}"

    def lab_module():
        if module_name not in sys.modules:
            raise KeyError(f"the shortcuts of lab {lab} belong to {module_name}, which is not loaded")
        return sys.modules[module_name]

    def use_reference(exercise: str, namespace: dict | None = None):
        """Give up on ``exercise`` of this lab: its name in the notebook becomes the course's implementation, and it earns no points."""
        import inspect

        if not exercise.startswith(f"{lab}."):
            raise KeyError(f"exercise {exercise!r} is not in lab {lab}: its ids start with '{lab}.'")
        return install_reference(exercise, lab_module().REFERENCES,
                                 namespace if namespace is not None else inspect.stack()[1].frame.f_globals)

    def summary() -> None:
        """This lab's exercises: passed, failed, not attempted or reference used, with the points of this session."""
        print(lab_summary(lab, lab_module().EXERCISES))

    return use_reference, summary
