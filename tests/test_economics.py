"""The support assistant's unit economics: the break-even formula and its edge cases."""

from __future__ import annotations

import math

import pytest

from llmlab import economics
from llmlab.economics import SupportCosts


def test_break_even_formula_by_hand():
    costs = SupportCosts(human_cost_per_ticket=4.0, assistant_cost_per_ticket=0.1, wrong_answer_cost=10.0, fixed_monthly_cost=3000.0)
    # margin = 0.6 * 4 - 0.1 - 0.02 * 10 = 2.1 per ticket; 3000 / 2.1 tickets a month to break even
    assert economics.margin_per_ticket(costs, 0.6, 0.02) == pytest.approx(2.1)
    assert economics.break_even_volume(costs, 0.6, 0.02) == pytest.approx(3000 / 2.1)
    assert economics.cost_per_ticket_with_assistant(costs, 0.6, 0.02) == pytest.approx(0.1 + 0.4 * 4 + 0.2)


def test_savings_are_zero_exactly_at_break_even_and_grow_linearly():
    costs = SupportCosts()
    volume = economics.break_even_volume(costs, 0.8, 0.02)
    assert economics.monthly_savings(costs, 0.8, 0.02, tickets_per_month=volume) == pytest.approx(0.0, abs=1e-6)
    margin = economics.margin_per_ticket(costs, 0.8, 0.02)
    assert economics.monthly_savings(costs, 0.8, 0.02, volume + 1000) == pytest.approx(1000 * margin)


def test_an_assistant_that_loses_money_per_ticket_never_breaks_even():
    costs = SupportCosts(wrong_answer_cost=100.0)
    assert economics.margin_per_ticket(costs, 0.5, 0.05) < 0
    assert economics.break_even_volume(costs, 0.5, 0.05) == math.inf
    assert economics.payback_months(costs, 0.5, 0.05) == math.inf


def test_bad_inputs_are_refused_in_one_line():
    with pytest.raises(ValueError, match="human_cost_per_ticket"):
        SupportCosts(human_cost_per_ticket=-1)
    with pytest.raises(ValueError, match="automation_rate"):
        economics.margin_per_ticket(SupportCosts(), 1.2, 0.0)
    with pytest.raises(ValueError, match="share of all tickets"):
        economics.margin_per_ticket(SupportCosts(), 0.3, 0.4)


def test_sensitivity_table_moves_the_right_way():
    costs = SupportCosts()
    rows = economics.sensitivity_table(costs, 0.8, 0.02)
    base = economics.break_even_volume(costs, 0.8, 0.02)
    by_key = {(row["assumption"], row["factor"]): row for row in rows}
    assert by_key[("human_cost_per_ticket", 1.0)]["break_even_volume"] == pytest.approx(base)
    assert by_key[("human_cost_per_ticket", 1.5)]["break_even_volume"] < base < by_key[("human_cost_per_ticket", 0.5)]["break_even_volume"]
    assert by_key[("fixed_monthly_cost", 1.5)]["break_even_volume"] == pytest.approx(1.5 * base)
    assert by_key[("wrong_answer_cost", 1.5)]["break_even_volume"] > base
    assert by_key[("automation_rate", 1.5)]["value"] == 1.0  # capped


def test_build_buy_adapt_crossover():
    api = economics.SourcingOption("API", upfront=1_000, monthly_fixed=0, per_request=0.002)
    hosted = economics.SourcingOption("open-weight, self-hosted", upfront=10_000, monthly_fixed=1_500, per_request=0.0002)
    months = 12
    volume = economics.crossover_volume(api, hosted, months)
    # (9,000 + 12 × 1,500) / (12 × 0.0018) = 27,000 / 0.0216 = 1,250,000 requests a month
    assert volume == pytest.approx(1_250_000)
    assert economics.total_cost(api, volume, months) == pytest.approx(economics.total_cost(hosted, volume, months))
    assert economics.cheapest_option([api, hosted], volume / 2, months) is api
    assert economics.cheapest_option([api, hosted], volume * 2, months) is hosted
    assert economics.crossover_volume(hosted, api, months) == math.inf  # the API never gets cheaper per request
    with pytest.raises(ValueError, match="per_request"):
        economics.SourcingOption("bad", 0, 0, -1)
