"""Lab 6's self-checks pass the reference code and name each classic mistake (06.1 sweep … 06.4 IBAN)."""

from __future__ import annotations

import re

import numpy as np
import pytest

from llmlab import economics, privacy
from llmlab.assistant import threshold_sweep
from llmlab.checks import lab06


# --- 06.1: the threshold sweep -------------------------------------------------------------------------------


def share(mask) -> float:
    return float(np.mean(mask))


def answered_share(answered, correct):
    return share(answered)


def answered_wrongly_share(answered, correct):
    return share(answered & ~correct)


def sweep_with(automation=answered_share, wrong=answered_wrongly_share, answers=lambda confidences, t: confidences >= t):
    """Rows with the rates automation(answered, correct) and wrong(answered, correct), answered = answers(confidences, t)."""
    def sweep(confidences, correct, thresholds):
        rows = []
        for t in thresholds:
            answered = answers(confidences, t)
            rows.append({"threshold": t, "automation_rate": automation(answered, correct), "wrong_answer_rate": wrong(answered, correct)})
        return rows
    return sweep


def expect(result, phrase: str | None) -> None:
    """``phrase`` None: the check passes; otherwise it fails with a message that contains ``phrase``."""
    assert bool(result) is (phrase is None), result
    assert phrase is None or phrase in result.message, result


@pytest.mark.parametrize("sweep, phrase", [
    pytest.param(threshold_sweep, None, id="reference"),
    pytest.param(sweep_with(), None, id="reference-rewritten"),
    pytest.param(lambda *args: {row["threshold"]: row for row in threshold_sweep(*args)},
                 "return a list of rows (one dict per threshold), got dict", id="dict-of-rows"),
    pytest.param(lambda *args: [row for row in threshold_sweep(*args) if row["automation_rate"] > 0],
                 "return one row per threshold (5), got 4", id="drops-empty-thresholds"),
    pytest.param(lambda *args: [tuple(row.values()) for row in threshold_sweep(*args)], "each row should be a dict with the keys",
                 id="rows-as-tuples"),
    pytest.param(sweep_with(automation=lambda answered, correct: answered), "automation_rate should be one number",
                 id="share-not-taken"),
    pytest.param(sweep_with(answers=lambda confidences, t: confidences > t), "use >=, not >", id="strict-threshold"),
    pytest.param(sweep_with(automation=lambda answered, correct: share(answered & correct)), "counts every answered message",
                 id="only-right-answers-automated"),
    pytest.param(sweep_with(automation=lambda answered, correct: share(~answered)), "automation rate 0.0000, expected 1.0000",
                 id="escalated-share"),
    pytest.param(sweep_with(wrong=lambda answered, correct: (answered & ~correct).sum() / max(1, answered.sum())),
                 "a share of *all* messages", id="share-of-answered"),
    pytest.param(sweep_with(wrong=lambda answered, correct: share(~correct)), "only answered messages can get a wrong answer",
                 id="every-mistake-counted"),
    pytest.param(sweep_with(wrong=lambda answered, correct: share(~answered & ~correct)),
                 "wrong-answer rate 0.0000, expected 0.2500", id="mistakes-of-escalated"),
])
def test_sweep_check(sweep, phrase):
    expect(lab06.check_threshold_sweep(sweep), phrase)


# --- 06.2: the break-even volume ----------------------------------------------------------------------------------


def break_even_with(margin, combine=lambda fixed, margin: fixed / margin):
    """combine(fixed, margin(h, c, p, a, w)), with h, c, p the human, assistant and wrong-answer costs per ticket."""
    def volume(costs, a, w):
        h, c, p = costs.human_cost_per_ticket, costs.assistant_cost_per_ticket, costs.wrong_answer_cost
        return combine(costs.fixed_monthly_cost, margin(h, c, p, a, w))
    return volume


@pytest.mark.parametrize("volume, phrase", [
    pytest.param(economics.break_even_volume, None, id="reference"),
    pytest.param(lambda *args: (economics.break_even_volume(*args), "tickets"), "return a number (tickets per month), got tuple",
                 id="tuple"),
    pytest.param(break_even_with(lambda h, c, p, a, w: a * h - c - w * p), "return math.inf", id="negative-when-losing"),
    pytest.param(break_even_with(lambda h, c, p, a, w: a * h - c), "the wrong answers are left out", id="no-wrong-answers"),
    pytest.param(break_even_with(lambda h, c, p, a, w: a * (h - c) - w * p), "the assistant's cost is paid on every ticket",
                 id="assistant-cost-on-automated-only"),
    pytest.param(break_even_with(lambda h, c, p, a, w: h - c - w * p), "multiply it by automation_rate", id="all-tickets-save"),
    pytest.param(break_even_with(lambda h, c, p, a, w: a * h - c - w * p, combine=lambda fixed, margin: fixed * margin),
                 "divide the fixed cost by it, do not multiply", id="multiplied"),
    pytest.param(break_even_with(lambda h, c, p, a, w: a * (h - w * p) - c), "tickets, expected",
                 id="wrong-cost-weighted-by-automation"),
])
def test_break_even_check(volume, phrase):
    expect(lab06.check_break_even_volume(volume), phrase)


# --- 06.3: Luhn ---------------------------------------------------------------------------------------------------


def digits_of(number: str) -> str:
    return number.replace(" ", "").replace("-", "")


def luhn_with(double, from_right=True):
    """Sum of the digits, every second one (from the right or the left) passed through ``double``; valid if it ends in 0."""
    def valid(number):
        digits = digits_of(number)
        ordered = reversed(digits) if from_right else digits
        return sum(double(int(d)) if i % 2 else int(d) for i, d in enumerate(ordered)) % 10 == 0
    return valid


def doubled(d: int) -> int:
    return d * 2 - 9 if d > 4 else d * 2


@pytest.mark.parametrize("valid, phrase", [
    pytest.param(privacy.luhn_valid, None, id="reference"),
    pytest.param(luhn_with(doubled), None, id="reference-rewritten"),
    pytest.param(lambda number: sum(int(d) for d in digits_of(number)) % 10, "return True or False, got", id="returns-remainder"),
    pytest.param(lambda number: number.isdigit() and luhn_with(doubled)(number), "remove spaces and dashes first",
                 id="separators-not-removed"),
    pytest.param(luhn_with(lambda d: 2 * d), "subtract 9", id="no-minus-nine"),
    pytest.param(luhn_with(doubled, from_right=False), "counting from the right", id="doubled-from-the-left"),
    pytest.param(luhn_with(lambda d: d), "'4111 1111 1111 1111': got False, expected True", id="nothing-doubled"),
])
def test_luhn_check(valid, phrase):
    expect(lab06.check_luhn_valid(valid), phrase)


# --- 06.4: IBAN ---------------------------------------------------------------------------------------------------


def as_number(characters: str) -> int:
    return int("".join(str(int(c, 36)) for c in characters))


def iban_with(normalise=lambda iban: re.sub(r"[ -]", "", iban).upper(),
              known_length=lambda compact: privacy.IBAN_LENGTHS.get(compact[:2]),
              rearrange=lambda compact: compact[4:] + compact[:4],
              remainder_ok=lambda remainder: remainder == 1):
    """An IBAN test built from four steps, each replaceable by a mistaken one."""
    def valid(iban):
        compact = normalise(iban)
        if known_length(compact) != len(compact):
            return False
        return remainder_ok(as_number(rearrange(compact)) % 97)
    return valid


def letters_only_in_bank_code(iban):
    """Converts letters in the country and the bank code only; a letter further on makes the number invalid."""
    compact = re.sub(r"[ -]", "", iban).upper()
    return compact[8:].isdigit() and privacy.iban_valid(iban)


@pytest.mark.parametrize("valid, phrase", [
    pytest.param(privacy.iban_valid, None, id="reference"),
    pytest.param(iban_with(), None, id="reference-rewritten"),
    pytest.param(lambda iban: int(privacy.iban_valid(iban)), "return True or False, got 1", id="returns-int"),
    pytest.param(iban_with(normalise=lambda iban: iban.replace(" ", "")), "upper-case the letters", id="case-sensitive"),
    pytest.param(letters_only_in_bank_code, "letters inside the number count as 10..35 too", id="letters-only-in-bank-code"),
    pytest.param(iban_with(remainder_ok=lambda remainder: True), "the mod-97 remainder must be exactly 1", id="no-mod-97"),
    pytest.param(iban_with(known_length=lambda compact: len(compact) if 15 <= len(compact) <= 34 else 0),
                 "check the length for the country (GB: 22 characters)", id="no-length-per-country"),
    pytest.param(iban_with(known_length=lambda compact: privacy.IBAN_LENGTHS.get(compact[:2], len(compact))),
                 "a country not in IBAN_LENGTHS is not an IBAN", id="unknown-country-accepted"),
    pytest.param(iban_with(rearrange=lambda compact: compact), "move the first four characters to the end", id="not-rearranged"),
    pytest.param(iban_with(remainder_ok=lambda remainder: remainder == 0), "got False, expected True", id="remainder-zero"),
])
def test_iban_check(valid, phrase):
    expect(lab06.check_iban_valid(valid), phrase)


def test_iban_wrong_remainder_is_not_mistaken_for_a_missing_move():
    """A valid IBAN rejected for another reason gets no hint about moving characters (the probe IBAN tells them apart)."""
    message = lab06.check_iban_valid(iban_with(remainder_ok=lambda remainder: remainder == 0)).message
    assert message == "'GB82 WEST 1234 5698 7654 32': got False, expected True", message
