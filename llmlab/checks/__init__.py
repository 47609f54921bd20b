"""Self-checks a learner runs on their own code, one module per lab, and the registry the grader uses.

Each lab imports its own checks, ``from llmlab.checks import lab02 as checks``, and calls
``checks.check_…(your_function)`` after an exercise: the result is one line, ``[PASS] 02.1: …`` or
``[FAIL] 02.1: what exactly is wrong``. ``core`` holds what the checks share. ``check_for("02.1")``
finds the check of an exercise by the id in the notebook's metadata; ``use_reference("02.1")``
lets a learner who is stuck run the rest of the lab with the course's implementation, and
``summary("02")`` lists a lab's exercises with what this session's self-checks said. A lab's
exercises, with their titles and points, are its module's ``EXERCISES`` (``exercises("02")``):
plain data that ``tests/test_architecture.py`` keeps equal to the notebook's metadata, so that
the checks never import ``llmlab.course``.
"""

from __future__ import annotations

import importlib
import inspect
from collections.abc import Callable

from llmlab.checks.core import install_reference, lab_of, lab_summary

LAB_MODULES = ("lab01", "lab02", "lab03", "lab04", "lab04b", "lab05", "lab06", "lab07")


def lab_module(lab: str):
    """The check module of lab ``lab`` ("02": ``llmlab.checks.lab02``)."""
    if f"lab{lab}" not in LAB_MODULES:
        raise KeyError(f"no checks for lab {lab!r}; labs with checks: {', '.join(name[3:] for name in LAB_MODULES)}")
    return importlib.import_module(f"llmlab.checks.lab{lab}")


def _checks_module(exercise: str):
    if f"lab{lab_of(exercise)}" not in LAB_MODULES:
        raise KeyError(f"no checks for exercise {exercise!r}; labs with checks: {', '.join(name[3:] for name in LAB_MODULES)}")
    return lab_module(lab_of(exercise))


def exercises(lab: str) -> dict[str, tuple[str, int]]:
    """Lab ``lab``'s exercises, {id: (title, points)} in the notebook's order: its check module's ``EXERCISES``."""
    return lab_module(lab).EXERCISES


def check_for(exercise: str) -> Callable:
    """The check function of exercise ``exercise`` ("NN.k", or "NNx.k" for a chapter's second lab)."""
    checks = _checks_module(exercise).CHECKS
    if exercise not in checks:
        raise KeyError(f"lab {lab_of(exercise)} has no exercise {exercise!r}; its exercises: {', '.join(checks)}")
    return checks[exercise]


def use_reference(exercise: str, namespace: dict | None = None):
    """Give up on exercise ``exercise`` and let the rest of the lab run with the course's own implementation.

    The reference takes the exercise's name in the notebook (the name its self-check passes to
    the check), a line says so, and the lab's summary counts the exercise as "reference used".
    ``namespace`` defaults to the caller's globals, i.e. the notebook's.
    """
    target = namespace if namespace is not None else inspect.stack()[1].frame.f_globals
    return install_reference(exercise, _checks_module(exercise).REFERENCES, target)


def summary(lab: str) -> None:
    """Print the lab's exercises: passed, failed, not attempted or reference used, and the points of this session."""
    print(lab_summary(lab, exercises(lab)))


def mistakes_recognised(exercise: str) -> list[str]:
    """The mistakes the check of ``exercise`` names, read from its source: each ``raise Mismatch("…")`` in the check
    and in the helpers of its module that it calls (``…`` stands for a value filled in at run time)."""
    import ast

    module = _checks_module(exercise)
    tree = ast.parse(inspect.getsource(module))
    functions = {node.name: node for node in tree.body if isinstance(node, ast.FunctionDef)}
    checked_by = {
        node.name for node in functions.values()
        for decorator in node.decorator_list
        if isinstance(decorator, ast.Call) and getattr(decorator.func, "id", "") == "self_check"
        and isinstance(decorator.args[0], ast.Constant) and decorator.args[0].value == exercise
    }
    if not checked_by:
        raise KeyError(f"lab {lab_of(exercise)} has no exercise {exercise!r}")

    def text(node) -> str:
        if isinstance(node, ast.Constant) and isinstance(node.value, str):
            return node.value
        if isinstance(node, ast.JoinedStr):
            return "".join(part.value if isinstance(part, ast.Constant) else "…" for part in node.values)
        if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Add):
            return text(node.left) + text(node.right)
        return "…"

    # In source order (queue.pop() takes the last): a set's order changes from one Python process to the next.
    seen, queue, messages = set(), sorted(checked_by, key=lambda name: functions[name].lineno, reverse=True), []
    while queue:
        name = queue.pop()
        if name in seen or name not in functions:
            continue
        seen.add(name)
        for node in ast.walk(functions[name]):
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Name):
                if node.func.id == "Mismatch" and node.args:
                    messages.append(text(node.args[0]))
                else:
                    queue.append(node.func.id)
    return sorted(set(messages), key=messages.index)
