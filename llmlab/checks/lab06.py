"""Self-checks of Lab 6 (from model to business): the threshold sweep, the break-even volume, Luhn and IBAN checks."""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np

from llmlab import economics
from llmlab.assistant import threshold_sweep
from llmlab.checks.core import (
    Mismatch,
    grown,
    lab_shortcuts,
    seeded_numpy,
    seeded_python,
    self_check,
)
from llmlab.privacy import iban_valid, luhn_valid


def _rate(row: dict, key: str, threshold: float) -> float:
    """``row[key]`` as one number, or the Mismatch that says it is not (an array when the share was not taken, say)."""
    try:
        return float(row[key])
    except (TypeError, ValueError):
        raise Mismatch(f"at threshold {threshold}, {key} should be one number (a share of all messages), "
                       f"got {type(row[key]).__name__}: take the mean over the messages") from None


@self_check("06.1")
def check_threshold_sweep(call) -> str:
    """fn(confidences, correct, thresholds) -> [{"threshold", "automation_rate", "wrong_answer_rate"}, ...]."""
    generator = seeded_numpy(6)
    cases = [(np.array([0.9, 0.8, 0.6, 0.3]), np.array([True, False, True, True]), [0.0, 0.5, 0.6, 0.85, 1.0])]
    for size in grown(10, 57, 300):
        confidences = np.round(generator.uniform(0, 1, size), 2)  # rounded, so some sit exactly on a threshold
        correct = generator.uniform(0, 1, size) < 0.3 + 0.7 * confidences
        cases.append((confidences, correct, list(np.round(np.linspace(0, 1, 21), 2))))
    for confidences, correct, thresholds in cases:
        rows = call(confidences.copy(), correct.copy(), thresholds)
        if not isinstance(rows, (list, tuple)):
            raise Mismatch(f"return a list of rows (one dict per threshold), got {type(rows).__name__}")
        if len(rows) != len(thresholds):
            raise Mismatch(f"return one row per threshold ({len(thresholds)}), got {len(rows)}")
        expected = threshold_sweep(confidences, correct, thresholds)
        for row, reference_row in zip(rows, expected):
            if not isinstance(row, dict) or not {"threshold", "automation_rate", "wrong_answer_rate"} <= set(row):
                raise Mismatch("each row should be a dict with the keys threshold, automation_rate and wrong_answer_rate")
            threshold = reference_row["threshold"]
            answered = confidences >= threshold
            row = {key: _rate(row, key, threshold) for key in ("automation_rate", "wrong_answer_rate")}
            if not math.isclose(row["automation_rate"], reference_row["automation_rate"], abs_tol=1e-12):
                if math.isclose(row["automation_rate"], float((confidences > threshold).mean()), abs_tol=1e-12):
                    raise Mismatch(f"at threshold {threshold} a confidence equal to the threshold should be answered: use >=, not >")
                if math.isclose(row["automation_rate"], float((answered & correct).mean()), abs_tol=1e-12):
                    raise Mismatch("the automation rate counts every answered message, right or wrong")
                raise Mismatch(f"at threshold {threshold}: automation rate {row['automation_rate']:.4f}, expected {reference_row['automation_rate']:.4f}")
            if not math.isclose(row["wrong_answer_rate"], reference_row["wrong_answer_rate"], abs_tol=1e-12):
                if answered.any() and math.isclose(row["wrong_answer_rate"], float((answered & ~correct).sum() / answered.sum()), abs_tol=1e-12):
                    raise Mismatch("the wrong-answer rate is a share of *all* messages (so it can be priced per ticket), not of the answered ones")
                if math.isclose(row["wrong_answer_rate"], float((~correct).mean()), abs_tol=1e-12):
                    raise Mismatch("only answered messages can get a wrong answer: count mistakes where confidence >= threshold")
                raise Mismatch(f"at threshold {threshold}: wrong-answer rate {row['wrong_answer_rate']:.4f}, expected {reference_row['wrong_answer_rate']:.4f}")
    return f"automation and wrong-answer rates right at every threshold of {len(cases)} cases (ties included)"


@self_check("06.2")
def check_break_even_volume(call) -> str:
    """fn(costs: SupportCosts, automation_rate, wrong_answer_rate) -> tickets per month to break even (math.inf if never)."""
    generator = seeded_python(6)
    cases = [(economics.SupportCosts(), 0.8, 0.02), (economics.SupportCosts(wrong_answer_cost=200.0), 0.5, 0.05)]
    for _ in range(30):
        automation = generator.uniform(0.05, 0.95)
        costs = economics.SupportCosts(
            human_cost_per_ticket=generator.uniform(1, 8), assistant_cost_per_ticket=generator.uniform(0, 0.5),
            wrong_answer_cost=generator.uniform(0, 30), fixed_monthly_cost=generator.uniform(500, 20_000))
        cases.append((costs, automation, generator.uniform(0, 0.1) * automation))
    for costs, automation, wrong in cases:
        got = call(costs, automation, wrong)
        if not isinstance(got, (int, float)) or isinstance(got, bool):
            raise Mismatch(f"return a number (tickets per month), got {type(got).__name__}")
        expected = economics.break_even_volume(costs, automation, wrong)
        if math.isinf(expected):
            if not (isinstance(got, float) and math.isinf(got) and got > 0):
                raise Mismatch(f"when each ticket loses money (margin {economics.margin_per_ticket(costs, automation, wrong):.3f} ≤ 0) "
                                f"the assistant never breaks even: return math.inf, got {got}")
            continue
        if math.isclose(got, expected, rel_tol=1e-9):
            continue
        h, c, p, fixed = costs.human_cost_per_ticket, costs.assistant_cost_per_ticket, costs.wrong_answer_cost, costs.fixed_monthly_cost
        mistakes = {
            "the wrong answers are left out: subtract wrong_answer_rate × wrong_answer_cost from the margin": fixed / (automation * h - c),
            "the assistant's cost is paid on every ticket, not only on the automated ones": fixed / (automation * h - automation * c - wrong * p),
            "only the automated share of tickets saves the human cost: multiply it by automation_rate": fixed / (h - c - wrong * p),
            "the margin is per ticket: divide the fixed cost by it, do not multiply": fixed * (automation * h - c - wrong * p),
        }
        for hint, value in mistakes.items():
            if math.isfinite(value) and math.isclose(got, value, rel_tol=1e-9):
                raise Mismatch(hint)
        raise Mismatch(f"for {costs}, automation {automation:.3f}, wrong answers {wrong:.4f}: got {got:.2f} tickets, expected {expected:.2f}")
    return f"matches fixed / (a·h − c − w·p) on {len(cases)} cases, including ones that never break even"


def _luhn_cases() -> list[tuple[str, bool]]:
    generator = seeded_python(6)
    cases = [("4111 1111 1111 1111", True), ("4111-1111-1111-1112", False), ("79927398713", True), ("79927398710", False),
             ("378282246310005", True), ("18", True), ("81", False)]
    for length in (13, 15, 16, 16, 19):
        for _ in range(6):
            digits = "".join(str(generator.randrange(10)) for _ in range(length))
            grouped = " ".join(digits[i:i + 4] for i in range(0, length, 4)) if generator.random() < 0.5 else digits
            cases.append((grouped, luhn_valid(grouped)))
            # make a valid one by fixing the last digit
            for last in "0123456789":
                candidate = digits[:-1] + last
                if luhn_valid(candidate):
                    cases.append(("-".join(candidate[i:i + 4] for i in range(0, length, 4)), True))
                    break
    return cases


def _luhn_doubled_from_left(digits: str) -> bool:
    """The Luhn test with every second digit doubled counting from the left, so the check digit may be doubled."""
    return sum((int(d) * 2 - 9 if int(d) > 4 else int(d) * 2) if i % 2 == 1 else int(d) for i, d in enumerate(digits)) % 10 == 0


def _luhn_without_minus_nine(digits: str) -> bool:
    """The Luhn test with a doubled digit above 9 kept as it is (14, not 1 + 4 = 5)."""
    return sum(int(d) * 2 if i % 2 == 1 else int(d) for i, d in enumerate(reversed(digits))) % 10 == 0


@self_check("06.3")
def check_luhn_valid(call) -> str:
    """fn(number: str) -> bool, the Luhn check with spaces and dashes ignored."""
    cases = _luhn_cases()
    for number, expected in cases:
        got = call(number)
        if not isinstance(got, bool):
            raise Mismatch(f"return True or False, got {got!r} for {number!r}")
        if got == expected:
            continue
        digits = number.replace(" ", "").replace("-", "")
        if digits != number and call(digits) == expected:
            raise Mismatch(f"{number!r}: right without the separators, wrong with them: remove spaces and dashes first")

        def behaves_like(variant: Callable[[str], bool]) -> bool:
            """One wrong answer says little; the same answers as ``variant`` on every number name the mistake."""
            return all(call(n) == variant(n.replace(" ", "").replace("-", "")) for n, _ in cases)

        if behaves_like(_luhn_without_minus_nine):
            raise Mismatch(f"{number!r}: a doubled digit above 9 counts as the sum of its digits (subtract 9), e.g. 7 → 14 → 5")
        if behaves_like(_luhn_doubled_from_left):
            raise Mismatch(f"{number!r}: double every second digit counting from the right (the check digit is not doubled)")
        raise Mismatch(f"{number!r}: got {got}, expected {expected}")
    return f"right on {len(cases)} numbers, grouped with spaces, dashes or not at all"


# Its mod-97 remainder is 1 only when the first four characters are NOT moved to the end, so only that slip accepts it.
_UNMOVED_IBAN = "GB67 WEST 1234 5698 7654 32"
_MOVE_HINT = "move the first four characters to the end before taking mod 97"


@self_check("06.4")
def check_iban_valid(call) -> str:
    """fn(iban: str) -> bool: known country and length, then the ISO 13616 mod-97 test, case and spaces ignored."""
    cases = [
        ("GB82 WEST 1234 5698 7654 32", True, ""), ("gb82west12345698765432", True, "upper-case the letters before converting them"),
        ("DE89 3704 0044 0532 0130 00", True, ""), ("FR14 2004 1010 0505 0001 3M02 606", True, "letters inside the number count as 10..35 too"),
        ("NO93 8601 1117 947", True, ""), ("GB82 WEST 1234 5698 7654 33", False, "the mod-97 remainder must be exactly 1"),
        ("DE89 3704 0044 0532 0130 01", False, "the mod-97 remainder must be exactly 1"),
        # the next three pass the mod-97 test: only the length or the country rules them out
        ("GB04 WEST 1234 5698 7654", False, "check the length for the country (GB: 22 characters)"),
        ("DE51 3704 0044 0532 0130 0", False, "check the length for the country (DE: 22 characters)"),
        ("ZZ33 WEST 1234 5698 7654 32", False, "a country not in IBAN_LENGTHS is not an IBAN"),
        (_UNMOVED_IBAN, False, _MOVE_HINT),
        ("de89 3704 0044 0532 0130 00", True, "upper-case the letters before converting them"),
    ]
    for iban, expected, hint in cases:
        got = call(iban)
        if not isinstance(got, bool):
            raise Mismatch(f"return True or False, got {got!r} for {iban!r}")
        if got != expected:
            if expected and not hint and call(_UNMOVED_IBAN) is True:  # rejects a valid IBAN, accepts one valid only unmoved
                hint = _MOVE_HINT
            raise Mismatch(f"{iban!r}: got {got}, expected {expected}" + (f" — {hint}" if hint else ""))
    return f"right on {len(cases)} IBANs: valid ones in any case and spacing, wrong check digits, wrong length, unknown country"


# The exercises of this lab, id -> (title, points): what solutions/06_business.ipynb's metadata declares
# (tests/test_architecture.py keeps the two equal); checks.summary() reads them.
EXERCISES = {"06.1": ("threshold sweep", 2), "06.2": ("break-even volume", 2), "06.3": ("Luhn check", 1),
             "06.4": ("IBAN check", 2)}

CHECKS = {"06.1": check_threshold_sweep, "06.2": check_break_even_volume, "06.3": check_luhn_valid, "06.4": check_iban_valid}


# What use_reference("06.k") puts in the notebook: the name its exercise defines, and the course's implementation.
REFERENCES = {"06.1": ("threshold_sweep", threshold_sweep), "06.2": ("break_even_volume", economics.break_even_volume),
              "06.3": ("luhn_valid", luhn_valid), "06.4": ("iban_valid", iban_valid)}

# checks.use_reference("06.k") when stuck, checks.summary() at the end of the lab
use_reference, summary = lab_shortcuts("06")
