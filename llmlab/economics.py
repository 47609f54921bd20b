"""Unit economics of a support assistant: cost per ticket, monthly savings, break-even volume.

Every price and volume is a named field of :class:`SupportCosts`. The defaults are round,
illustrative assumptions for a fictional bank, not market quotes: change them to your own
numbers before drawing any conclusion.

The model. Every ticket passes through the assistant (cost ``assistant_cost_per_ticket``).
A share ``automation_rate`` of tickets is answered automatically; the rest go to a person
(cost ``human_cost_per_ticket`` each). A share ``wrong_answer_rate`` of *all* tickets gets a
wrong automatic answer, which costs ``wrong_answer_cost`` (the repeat contact, the person who
then solves it, the customer's goodwill). The assistant also has a fixed monthly cost
(hosting, monitoring, the engineer who keeps it running). Per ticket, compared with a
human-only desk, the assistant saves

    margin = automation_rate * human_cost - assistant_cost - wrong_answer_rate * wrong_answer_cost

and it pays for itself above ``fixed_monthly_cost / margin`` tickets a month (the break-even
volume; infinite when the margin is not positive).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields, replace


@dataclass(frozen=True)
class SupportCosts:
    """Illustrative prices and volumes (euros, per month). Replace them with your own."""

    tickets_per_month: float = 10_000
    human_cost_per_ticket: float = 5.00       # a person's time on one ticket, overhead included
    assistant_cost_per_ticket: float = 0.02   # compute for classification, retrieval and logging
    wrong_answer_cost: float = 15.00          # repeat contact + the person who fixes it + goodwill
    fixed_monthly_cost: float = 12_000.0      # hosting, monitoring, part of an engineer's time
    build_cost: float = 60_000.0              # one-off: building, testing, integrating

    def __post_init__(self):
        for field in fields(self):
            value = getattr(self, field.name)
            if not isinstance(value, (int, float)) or isinstance(value, bool) or not math.isfinite(value) or value < 0:
                raise ValueError(f"SupportCosts.{field.name} must be a finite number >= 0, got {value!r}")


def _check_rates(automation_rate: float, wrong_answer_rate: float) -> None:
    if not 0 <= automation_rate <= 1:
        raise ValueError(f"automation_rate must be in [0, 1], got {automation_rate}")
    if not 0 <= wrong_answer_rate <= automation_rate:
        raise ValueError(f"wrong_answer_rate must be in [0, automation_rate={automation_rate}] (a share of all tickets), got {wrong_answer_rate}")


def cost_per_ticket_with_assistant(costs: SupportCosts, automation_rate: float, wrong_answer_rate: float) -> float:
    """Average cost of one ticket with the assistant in front: its own cost, the hand-offs and the wrong answers."""
    _check_rates(automation_rate, wrong_answer_rate)
    return (costs.assistant_cost_per_ticket
            + (1 - automation_rate) * costs.human_cost_per_ticket
            + wrong_answer_rate * costs.wrong_answer_cost)


def margin_per_ticket(costs: SupportCosts, automation_rate: float, wrong_answer_rate: float) -> float:
    """What each ticket saves compared with people answering everything, before fixed costs."""
    return costs.human_cost_per_ticket - cost_per_ticket_with_assistant(costs, automation_rate, wrong_answer_rate)


def monthly_savings(costs: SupportCosts, automation_rate: float, wrong_answer_rate: float, tickets_per_month: float | None = None) -> float:
    """Savings per month at a volume (default: ``costs.tickets_per_month``), after the fixed monthly cost."""
    volume = costs.tickets_per_month if tickets_per_month is None else tickets_per_month
    return volume * margin_per_ticket(costs, automation_rate, wrong_answer_rate) - costs.fixed_monthly_cost


def break_even_volume(costs: SupportCosts, automation_rate: float, wrong_answer_rate: float) -> float:
    """Tickets per month above which the assistant saves money; ``math.inf`` if it never does."""
    margin = margin_per_ticket(costs, automation_rate, wrong_answer_rate)
    return costs.fixed_monthly_cost / margin if margin > 0 else math.inf


def payback_months(costs: SupportCosts, automation_rate: float, wrong_answer_rate: float) -> float:
    """Months until the monthly savings repay ``build_cost``; ``math.inf`` if they are not positive."""
    savings = monthly_savings(costs, automation_rate, wrong_answer_rate)
    return costs.build_cost / savings if savings > 0 else math.inf


def summary(costs: SupportCosts, automation_rate: float, wrong_answer_rate: float) -> dict:
    """The numbers a decision memo needs, in one dictionary."""
    return dict(
        human_cost_per_ticket=costs.human_cost_per_ticket,
        cost_per_ticket_with_assistant=cost_per_ticket_with_assistant(costs, automation_rate, wrong_answer_rate),
        margin_per_ticket=margin_per_ticket(costs, automation_rate, wrong_answer_rate),
        monthly_savings=monthly_savings(costs, automation_rate, wrong_answer_rate),
        break_even_volume=break_even_volume(costs, automation_rate, wrong_answer_rate),
        payback_months=payback_months(costs, automation_rate, wrong_answer_rate),
    )


def sensitivity_table(costs: SupportCosts, automation_rate: float, wrong_answer_rate: float,
                      factors: tuple[float, ...] = (0.5, 1.0, 1.5)) -> list[dict]:
    """Break-even volume and monthly savings when one assumption at a time is multiplied by each factor.

    The automation and wrong-answer rates are varied too (the automation rate capped at 1, the
    wrong-answer rate at the automation rate), because the lab measures them on one test set
    and a different customer base will move them.
    """
    rows = []
    varied = [field.name for field in fields(costs) if field.name != "build_cost"] + ["automation_rate", "wrong_answer_rate"]
    for name in varied:
        for factor in factors:
            changed_costs, automation, wrong = costs, automation_rate, wrong_answer_rate
            if name == "automation_rate":
                automation = min(1.0, automation_rate * factor)
                wrong = min(wrong, automation)
            elif name == "wrong_answer_rate":
                wrong = min(automation_rate, wrong_answer_rate * factor)
            else:
                changed_costs = replace(costs, **{name: getattr(costs, name) * factor})
            value = {**asdict(changed_costs), "automation_rate": automation, "wrong_answer_rate": wrong}[name]
            rows.append(dict(
                assumption=name, factor=factor, value=value,
                break_even_volume=break_even_volume(changed_costs, automation, wrong),
                monthly_savings=monthly_savings(changed_costs, automation, wrong),
            ))
    return rows


# --- build, buy or adapt: the same request served three ways -------------------------------

HOURS_PER_MONTH = 365 * 24 / 12  # 730: an average month, for a machine rented around the clock


@dataclass(frozen=True)
class SourcingOption:
    """One way to get a model into production: a one-off cost, a fixed monthly cost and a cost per request.

    ``included_requests`` is how many requests a month the fixed cost already serves (the capacity
    of GPUs paid for around the clock); only requests beyond it pay ``per_request``. The default, 0,
    charges every request.
    """

    name: str
    upfront: float
    monthly_fixed: float
    per_request: float
    included_requests: float = 0.0

    def __post_init__(self):
        for name in ("upfront", "monthly_fixed", "per_request", "included_requests"):
            value = getattr(self, name)
            if not math.isfinite(value) or value < 0:
                raise ValueError(f"{self.name}: {name} must be a finite number >= 0, got {value!r}")


def total_cost(option: SourcingOption, requests_per_month: float, months: float) -> float:
    """Everything the option costs over ``months`` at a steady volume."""
    charged = max(0.0, requests_per_month - option.included_requests)
    return option.upfront + months * (option.monthly_fixed + charged * option.per_request)


def cheapest_option(options: list[SourcingOption], requests_per_month: float, months: float) -> SourcingOption:
    """The option with the lowest total cost over the horizon."""
    if not options:
        raise ValueError("expected at least one option")
    return min(options, key=lambda option: total_cost(option, requests_per_month, months))


def crossover_volume(cheap_to_start: SourcingOption, cheap_to_run: SourcingOption, months: float) -> float:
    """Requests per month above which ``cheap_to_run`` costs less over the horizon than ``cheap_to_start``.

    0 if it is never more expensive, ``math.inf`` if it never becomes cheaper. With included
    requests the costs are piecewise linear in the volume; the answer is the volume beyond which
    ``cheap_to_run`` is never the dearer of the two.
    """
    def difference(volume: float) -> float:
        return total_cost(cheap_to_run, volume, months) - total_cost(cheap_to_start, volume, months)

    breakpoints = sorted({0.0, cheap_to_start.included_requests, cheap_to_run.included_requests})
    last = breakpoints[-1]
    slope = months * (cheap_to_run.per_request - cheap_to_start.per_request)  # beyond every breakpoint
    if slope > 0 or (slope == 0 and difference(last) > 0):
        return math.inf
    if difference(last) > 0:
        return last + difference(last) / -slope
    for low, high in reversed(list(zip(breakpoints[:-1], breakpoints[1:]))):
        if difference(low) > 0:  # and difference(high) <= 0: the last crossing is in this piece
            return low + difference(low) * (high - low) / (difference(low) - difference(high))
    return 0.0


def self_hosted_option(name: str, upfront: float, monthly_other: float, gpu_price_per_hour: float,
                       gpu_seconds_per_request: float, gpus_always_on: int = 1) -> SourcingOption:
    """A model served on rented GPUs: ``gpus_always_on`` of them paid around the clock, more by the hour.

    The fixed monthly cost is ``monthly_other`` (monitoring, on-call, people) plus the always-on
    GPUs' hours; they serve ``gpus_always_on × HOURS_PER_MONTH × 3600 / gpu_seconds_per_request``
    requests a month. Each request beyond that pays its own GPU time at the same hourly price.
    """
    if gpu_seconds_per_request <= 0 or gpu_price_per_hour < 0 or gpus_always_on < 0:
        raise ValueError(f"need positive GPU seconds per request, a price >= 0 and GPUs >= 0, got "
                         f"{gpu_seconds_per_request}, {gpu_price_per_hour} and {gpus_always_on}")
    return SourcingOption(name, upfront=upfront,
                          monthly_fixed=monthly_other + gpus_always_on * HOURS_PER_MONTH * gpu_price_per_hour,
                          per_request=gpu_seconds_per_request * gpu_price_per_hour / 3600,
                          included_requests=gpus_always_on * HOURS_PER_MONTH * 3600 / gpu_seconds_per_request)


def crossover_grid(buy: SourcingOption, adapt_at_share, price_factors, shares, months: float) -> dict:
    """The crossover volume (``crossover_volume(buy, adapt)``) over a grid of two uncertain assumptions.

    ``buy``'s price per request is multiplied by each of ``price_factors``; ``adapt_at_share(share)``
    returns the self-hosted option when the server sustains ``share`` of its throughput bound.
    Returns ``{(factor, share): requests per month}``, ``math.inf`` where self-hosting never pays.
    """
    return {(factor, share): crossover_volume(replace(buy, per_request=buy.per_request * factor),
                                              adapt_at_share(share), months)
            for factor in price_factors for share in shares}


# --- how many wrong answers a validation set may show for a cap to hold ---------------------


def most_errors_under_cap(trials: int, cap: float, z: float = 1.96) -> int:
    """The most errors in ``trials`` validation examples for which the upper end of the Wilson
    interval of the error rate (95 % for z = 1.96) is still at most ``cap``; -1 if even 0 is too many.

    A threshold chosen so that its validation rate's *point estimate* is under a cap can have a true
    rate above it; chosen so that the interval's upper end is under the cap, it has a true rate under
    the cap with about that confidence, provided that live traffic is drawn like the validation set.
    """
    from llmlab.instruct import wilson_interval

    if trials < 1 or not 0 < cap < 1:
        raise ValueError(f"need trials >= 1 and a cap in (0, 1), got {trials} and {cap}")
    errors = -1  # the upper end grows with the count, so stop at the first count past the cap
    while errors < trials and wilson_interval(errors + 1, trials, z)[1] <= cap:
        errors += 1
    return errors


def most_errors_for_conformal_risk(trials: int, cap: float) -> int:
    """The most errors in ``trials`` validation examples that conformal risk control accepts for a cap.

    For a loss in [0, 1] that can only fall as the threshold rises (here: a wrong automatic answer),
    Angelopoulos et al. (2024) choose the lowest threshold with (n·R + 1) / (n + 1) <= cap, where R is
    the validation error rate; the expected error rate on a new, exchangeable example is then at most
    the cap. In counts: at most floor(cap·(n + 1) − 1) errors; -1 if none is allowed.
    """
    if trials < 1 or not 0 < cap < 1:
        raise ValueError(f"need trials >= 1 and a cap in (0, 1), got {trials} and {cap}")
    return max(-1, min(trials, math.floor(cap * (trials + 1) - 1 + 1e-9)))
