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


def test_crossover_with_requests_the_fixed_cost_already_serves():
    api = economics.SourcingOption("API", upfront=1_000, monthly_fixed=0, per_request=0.002)
    # 1,500 a month pays for a GPU that serves the first 1,000,000 requests; beyond them 0.0002 each.
    hosted = economics.SourcingOption("self-hosted", upfront=10_000, monthly_fixed=1_500, per_request=0.0002,
                                      included_requests=1_000_000)
    months = 12
    assert economics.total_cost(hosted, 400_000, months) == pytest.approx(10_000 + 12 * 1_500)
    assert economics.total_cost(hosted, 1_500_000, months) == pytest.approx(10_000 + 12 * (1_500 + 500_000 * 0.0002))
    # Within the included requests the crossover would be 27,000 / (12 × 0.002) = 1,125,000, past them;
    # beyond them: 27,000 + 12 × 0.0002 × (V − 1,000,000) = 12 × 0.002 × V, so V = 24,600 / 0.0216.
    volume = economics.crossover_volume(api, hosted, months)
    assert volume == pytest.approx(24_600 / 0.0216)
    assert economics.total_cost(api, volume, months) == pytest.approx(economics.total_cost(hosted, volume, months))
    roomy = economics.SourcingOption("two GPUs", 10_000, 1_500, 0.0002, included_requests=2_000_000)
    assert economics.crossover_volume(api, roomy, months) == pytest.approx(1_125_000)
    # A bought price below the self-hosted GPU cost per request: self-hosting never pays.
    cheap = economics.SourcingOption("hosted open weights", 1_000, 0, 0.0001)
    assert economics.crossover_volume(cheap, hosted, months) == math.inf
    with pytest.raises(ValueError, match="included_requests"):
        economics.SourcingOption("bad", 0, 0, 0, included_requests=-1)


def test_self_hosted_option_pays_for_an_always_on_gpu():
    # 0.36 GPU-seconds a request at 2.50 an hour: 0.00025 a request; one GPU-month (730 h) serves 7,300,000.
    option = economics.self_hosted_option("adapt", upfront=25_000, monthly_other=1_000, gpu_price_per_hour=2.5,
                                          gpu_seconds_per_request=0.36)
    assert economics.HOURS_PER_MONTH == pytest.approx(730)
    assert option.monthly_fixed == pytest.approx(1_000 + 730 * 2.5)
    assert option.per_request == pytest.approx(0.00025)
    assert option.included_requests == pytest.approx(7_300_000)
    two = economics.self_hosted_option("adapt", 25_000, 1_000, 2.5, 0.36, gpus_always_on=2)
    assert two.monthly_fixed == pytest.approx(1_000 + 2 * 730 * 2.5) and two.included_requests == pytest.approx(14_600_000)
    with pytest.raises(ValueError, match="GPU seconds"):
        economics.self_hosted_option("bad", 0, 0, 2.5, 0)


def test_crossover_grid_scales_the_price_and_the_share():
    api = economics.SourcingOption("API", upfront=1_000, monthly_fixed=0, per_request=0.002)

    def adapt(share):  # the server's speed, and so its GPU seconds per request, scale with the share
        return economics.self_hosted_option("adapt", 10_000, 0, 3.6, gpu_seconds_per_request=0.1 / share)

    grid = economics.crossover_grid(api, adapt, price_factors=(0.1, 1.0), shares=(0.5, 1.0), months=12)
    assert set(grid) == {(0.1, 0.5), (0.1, 1.0), (1.0, 0.5), (1.0, 1.0)}
    # share 1: 0.1 s a request at 3.60 an hour = 0.0001 a request; the GPU costs 730 × 3.6 = 2,628 a month
    # and serves 26,280,000 requests. At the full price: (9,000 + 12 × 2,628) / (12 × 0.002) = 1,689,000.
    assert grid[1.0, 1.0] == pytest.approx((9_000 + 12 * 2_628) / (12 * 0.002))
    assert grid[1.0, 0.5] == pytest.approx(grid[1.0, 1.0])  # still within one GPU's requests
    # At a tenth of the price (0.0002 a request) the crossover is past 13,140,000 at share 0.5 (0.0002 a
    # request beyond): never; at share 1: (9,000 + 12 × 2,628) / (12 × 0.0002) = 16,890,000 < 26,280,000.
    assert grid[0.1, 0.5] == math.inf
    assert grid[0.1, 1.0] == pytest.approx(16_890_000)


def test_how_many_validation_errors_a_cap_allows():
    # The Wilson upper end at 0 errors is z² / (n + z²): 3.8416 / 773.8416 = 0.50 % for n = 770.
    # For n = 770 and a 2 % cap: 7 errors reach 1.86 % and 8 errors 2.04 %, so at most 7 (0.9 %).
    assert economics.most_errors_under_cap(770, 0.02) == 7
    assert economics.most_errors_under_cap(100, 0.05) == 0   # 1 error: upper end 5.45 %
    assert economics.most_errors_under_cap(10, 0.05) == -1   # 0 errors: upper end 27.8 %
    # Conformal risk control: (n·R + 1) / (n + 1) <= cap, so at most floor(0.02 × 771 − 1) = 14 errors.
    assert economics.most_errors_for_conformal_risk(770, 0.02) == 14
    assert economics.most_errors_for_conformal_risk(99, 0.05) == 4
    assert economics.most_errors_for_conformal_risk(10, 0.05) == -1
    with pytest.raises(ValueError, match="cap"):
        economics.most_errors_under_cap(770, 2.0)
