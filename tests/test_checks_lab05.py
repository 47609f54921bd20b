"""Lab 5's self-checks pass the reference code and name each classic mistake
(05.1 top-k filter, 05.2 top-p filter, 05.3 greedy generation with the KV cache)."""

from __future__ import annotations

import pytest
import torch

from llmlab.checks import lab05
from llmlab.generation import Decoding, generate, top_k_filter, top_p_filter

NEG_INF = float("-inf")


def expect(result, phrase: str | None) -> None:
    """``phrase`` None: the check passes; otherwise it fails with a message that contains ``phrase``."""
    assert bool(result) is (phrase is None), result
    assert phrase is None or phrase in result.message, result


# --- 05.1: top-k ------------------------------------------------------------------------------------------


def top_k_by_sorting(logits, k):
    """A second correct top-k: sort each row, read the k-th value, keep everything at least as high."""
    if k >= logits.shape[-1]:
        return logits.clone()
    kth = logits.sort(dim=-1, descending=True).values[:, k - 1:k]
    return torch.where(logits >= kth, logits, torch.full_like(logits, NEG_INF))


def top_k_exactly_k(logits, k):
    """Keeps exactly the k indices torch.topk returns, so a tie at the k-th place loses some of its tokens."""
    if k >= logits.shape[-1]:
        return logits
    kept = torch.zeros_like(logits, dtype=torch.bool).scatter(-1, torch.topk(logits, k, dim=-1).indices, True)
    return logits.masked_fill(~kept, NEG_INF)


def top_k_without_guard(logits, k):
    kth = torch.topk(logits, k, dim=-1).values[..., -1:]
    return logits.masked_fill(logits < kth, NEG_INF)


def top_k_in_place(logits, k):
    if k >= logits.shape[-1]:
        return logits
    kth = torch.topk(logits, k, dim=-1).values[..., -1:]
    logits[logits < kth] = NEG_INF
    return logits


def top_k_down_columns(logits, k):
    if k >= logits.shape[0]:
        return logits
    kth = torch.topk(logits, k, dim=0).values[-1:]
    return logits.masked_fill(logits < kth, NEG_INF)


def top_k_of_probabilities(logits, k):
    if k >= logits.shape[-1]:
        return logits
    probabilities = torch.softmax(logits, dim=-1)
    kth = torch.topk(probabilities, k, dim=-1).values[..., -1:]
    return logits.masked_fill(probabilities < kth, NEG_INF)


def top_k_returning(kind):
    def filtered(logits, k):
        kept = top_k_filter(logits, k) > NEG_INF
        if kind == "probabilities":
            return torch.softmax(logits, dim=-1) * kept / (torch.softmax(logits, dim=-1) * kept).sum(-1, keepdim=True)
        if kind == "zeros":
            return logits * kept
        return torch.log_softmax(logits.masked_fill(~kept, NEG_INF), dim=-1)  # renormalised log-probabilities
    return filtered


@pytest.mark.parametrize("filter_fn, phrase", [
    pytest.param(top_k_filter, None, id="reference"),
    pytest.param(top_k_by_sorting, None, id="reference-by-sorting"),
    pytest.param(lambda logits, k: top_k_filter(logits, k).tolist(), "should be a torch.Tensor, got list", id="list"),
    pytest.param(lambda logits, k: top_k_filter(logits, k)[0], "the filtered logits has shape", id="first-row-only"),
    pytest.param(lambda logits, k: top_k_filter(logits, max(1, k - 1)), "keeps k − 1 tokens", id="k-minus-1"),
    pytest.param(lambda logits, k: top_k_filter(logits, k + 1), "keeps k + 1 tokens", id="k-plus-1"),
    pytest.param(top_k_exactly_k, "tokens tied with the k-th highest logit were dropped", id="ties-dropped"),
    pytest.param(top_k_of_probabilities, "you ranked by float32 probabilities", id="ranked-by-probability"),
    pytest.param(top_k_down_columns, "you ranked the tokens down each column", id="wrong-dim"),
    pytest.param(top_k_in_place, "changed the logits it was given (in place)", id="in-place"),
    pytest.param(top_k_without_guard, "return the logits unchanged (torch.topk cannot pick more", id="k-above-vocabulary"),
    pytest.param(top_k_returning("probabilities"), "you returned probabilities", id="probabilities"),
    pytest.param(top_k_returning("zeros"), "no token was set to -inf", id="zeros-for-removed"),
    pytest.param(top_k_returning("log-probabilities"), "the right tokens are kept but their logits changed", id="renormalised"),
    pytest.param(lambda logits, k: top_k_filter(logits, k).roll(1, dims=-1), "row 0 keeps tokens", id="other"),
])
def test_top_k_check(filter_fn, phrase):
    expect(lab05.check_top_k_filter(filter_fn), phrase)


# --- 05.2: top-p ------------------------------------------------------------------------------------------


def nucleus(logits, p, keep, sort=True, guard=True, dim=-1):
    """Top-p written the common way: softmax, sort, cumulative sum, ``keep(cumulative, sorted)`` in sorted order,
    then scattered back. ``sort=False`` takes the cumulative sum in the logits' own order; ``guard=False`` has no
    special case for p = 1; ``dim`` is where the softmax and the sort run."""
    if guard and p >= 1:
        return logits
    probabilities = torch.softmax(logits, dim=dim)
    if not sort:
        return logits.masked_fill(~keep(probabilities.cumsum(dim), probabilities), NEG_INF)
    ordered, order = probabilities.sort(dim=dim, descending=True)
    kept_sorted = keep(ordered.cumsum(dim), ordered)
    kept = torch.zeros_like(kept_sorted).scatter(dim, order, kept_sorted)
    return logits.masked_fill(~kept, NEG_INF)


def before_below_p(p):
    """Correct apart from ties: a token joins while the tokens before it add up to less than p."""
    return lambda cumulative, ordered: cumulative - ordered < p


def shifted_mask(p, keep_first=True):
    """Hugging Face's shift: remove where the total exceeds p, one place to the right; optionally forget the first token."""
    def keep(cumulative, ordered):
        remove = cumulative > p
        shifted = remove.clone()
        shifted[..., 1:] = remove[..., :-1]
        if keep_first:
            shifted[..., 0] = False
        return ~shifted
    return keep


def with_ties(filter_fn):
    """``filter_fn`` followed by keeping every token as likely as the least likely one it kept."""
    def filtered(logits, p):
        result = filter_fn(logits, p)
        probabilities = torch.softmax(logits, dim=-1)
        smallest = probabilities.masked_fill(result == NEG_INF, 2).amin(dim=-1, keepdim=True)
        return logits.masked_fill(probabilities < smallest, NEG_INF)
    return filtered


def top_p_in_place(logits, p):
    removed = top_p_filter(logits, p) == NEG_INF
    logits[removed] = NEG_INF
    return logits


@pytest.mark.parametrize("filter_fn, phrase", [
    pytest.param(top_p_filter, None, id="reference"),
    pytest.param(with_ties(lambda logits, p: nucleus(logits, p, shifted_mask(p))), None, id="reference-shifted-mask"),
    pytest.param(lambda logits, p: nucleus(logits, p, before_below_p(p)),
                 "tokens exactly as likely as the least likely kept token were dropped", id="ties-dropped"),
    pytest.param(with_ties(lambda logits, p: nucleus(logits, p, lambda cumulative, ordered: cumulative <= p)),
                 "keep the token that takes the total past p too", id="crossing-token-excluded"),
    pytest.param(lambda logits, p: nucleus(logits, p, before_below_p(p), sort=False),
                 "sort the probabilities (descending) before taking the cumulative sum", id="cumsum-before-sorting"),
    pytest.param(with_ties(lambda logits, p: nucleus(logits, p, before_below_p(p), sort=False)),
                 "take the cumulative sum in that order, and stop adding tokens once the total reaches p",
                 id="cumsum-before-sorting-ties-kept"),
    pytest.param(with_ties(lambda logits, p: nucleus(logits, p, shifted_mask(p, keep_first=False))),
                 "keeps no token at all: the most likely token always stays", id="top-token-not-kept"),
    pytest.param(with_ties(lambda logits, p: nucleus(logits, p, before_below_p(p), guard=False)),
                 "with p = 1 every token stays", id="p-equals-1"),
    pytest.param(lambda logits, p: top_p_filter(logits.T, p).T, "the softmax and the sort ran down each column",
                 id="wrong-dim"),
    pytest.param(top_p_in_place, "changed the logits it was given (in place)", id="in-place"),
    pytest.param(lambda logits, p: torch.softmax(top_p_filter(logits, p), dim=-1), "you returned probabilities",
                 id="probabilities"),
    pytest.param(lambda logits, p: top_p_filter(logits, p) / 2, "the right tokens are kept but their logits changed",
                 id="logits-changed"),
    pytest.param(lambda logits, p: top_k_filter(logits, 2), "row 0 keeps tokens", id="other"),
])
def test_top_p_check(filter_fn, phrase):
    expect(lab05.check_top_p_filter(filter_fn), phrase)


def test_no_partial_sum_of_a_top_p_case_sits_at_p():
    """Implementations that round differently (cumsum - p, or a shifted cumsum) must agree on every case."""
    for _, logits, p in lab05._top_p_cases():
        if p >= 1:
            continue
        ordered = torch.softmax(logits.double(), dim=-1).sort(dim=-1, descending=True).values
        assert (ordered.cumsum(dim=-1) - p).abs().min() > 1e-4


def test_the_top_k_cases_underflow_only_where_they_mean_to():
    cases = {what: (logits, k) for what, logits, k in lab05._top_k_cases()}
    for what, (logits, k) in cases.items():
        if k >= logits.shape[-1]:
            continue
        same = torch.equal(lab05._kept_by_probability_rank(logits, k), top_k_filter(logits, k) > NEG_INF)
        assert same is ("underflow" not in what and "float32 probabilities are 0" not in what), what


# --- 05.3: greedy generation with the KV cache ------------------------------------------------------------


def cached_loop(model, prompt, new_tokens, feed="newest", prefill="whole", fresh_cache=False, argmax_dim=-1, use_cache=True,
                returned="all"):
    """Greedy generation with the cache, written out, with one part done the wrong way on request.

    feed: "newest" (right), "whole" (the whole text every step) or "stale" (the token before the newest);
    prefill: "whole" (right), "last" (only the prompt's last token), "one by one" (right tokens, one call per
    prompt token) or "uncached" (the prompt runs without the cache); fresh_cache makes a new cache every step;
    argmax_dim 1 takes the argmax over positions; use_cache False never passes the cache; returned "new" returns
    only the new tokens.
    """
    tokens = prompt.view(1, -1)
    cache = model.new_cache(1, model.context) if use_cache else None
    options = lambda: {"cache": cache} if use_cache else {}
    if prefill == "one by one":
        for position in range(len(prompt)):
            logits = model(tokens[:, position:position + 1], **options())
    else:
        logits = model({"whole": tokens, "last": tokens[:, -1:], "uncached": tokens}[prefill],
                       **(options() if prefill != "uncached" else {}))
    for _ in range(new_tokens):
        if argmax_dim == -1:
            next_token = logits[:, -1, :].argmax(dim=-1, keepdim=True)
        else:
            next_token = logits.argmax(dim=1)[:, -1:]
        tokens = torch.cat([tokens, next_token], dim=1)
        if fresh_cache:
            cache = model.new_cache(1, model.context)
        step = {"newest": next_token, "whole": tokens, "stale": tokens[:, -2:-1]}[feed]
        if not use_cache:
            step = tokens
        logits = model(step, **options())
    return tokens[0] if returned == "all" else tokens[0, len(prompt):]


@pytest.mark.parametrize("generate_fn, phrase", [
    pytest.param(lambda model, prompt, n: generate(model, prompt, n, Decoding("greedy"), use_cache=True), None, id="reference"),
    pytest.param(cached_loop, None, id="reference-written-out"),
    pytest.param(lambda *args: cached_loop(*args, feed="whole"), "a step after the prefill fed", id="whole-text-every-step"),
    pytest.param(lambda *args: cached_loop(*args, prefill="last"), "prefill once with the whole prompt", id="no-prefill"),
    pytest.param(lambda *args: cached_loop(*args, prefill="uncached"), "calls ran the model without the cache",
                 id="prompt-without-the-cache"),
    pytest.param(lambda *args: cached_loop(*args, prefill="one by one"), "the first call with the cache read 1 token(s)",
                 id="prompt-token-by-token"),
    pytest.param(lambda *args: cached_loop(*args, feed="stale"), "feed that same token in the next call", id="new-token-not-fed"),
    pytest.param(lambda *args: cached_loop(*args, argmax_dim=1), "take the argmax over the vocabulary", id="argmax-wrong-dim"),
    pytest.param(lambda *args: cached_loop(*args, fresh_cache=True), "a new cache was created after the first step",
                 id="fresh-cache-every-step"),
    pytest.param(lambda *args: cached_loop(*args, use_cache=False), "the model never received a cache", id="no-cache"),
    pytest.param(lambda *args: cached_loop(*args, returned="new"), "you returned only the new tokens", id="only-new-tokens"),
    pytest.param(lambda *args: cached_loop(*args).view(1, -1), "return a 1-D tensor", id="two-dimensional"),
    pytest.param(lambda model, prompt, n: torch.cat([prompt.cpu(), torch.zeros(n, dtype=torch.long)]),
                 "greedy decoding without the cache gives", id="other"),
])
def test_cached_generation_check(generate_fn, phrase):
    expect(lab05.check_cached_generation(generate_fn), phrase)


def test_whole_text_every_step_overflows_a_tight_cache_and_is_still_named():
    def tight(model, prompt, new_tokens):
        cache = model.new_cache(1, len(prompt) + new_tokens)
        tokens = prompt.view(1, -1)
        logits = model(tokens, cache=cache)
        for _ in range(new_tokens):
            tokens = torch.cat([tokens, logits[:, -1].argmax(-1, keepdim=True)], dim=1)
            logits = model(tokens, cache=cache)
        return tokens[0]

    expect(lab05.check_cached_generation(tight), "a step after the prefill fed")


def test_the_checks_leave_the_random_state_alone():
    state = torch.get_rng_state()
    lab05.check_cached_generation(cached_loop)
    lab05.check_top_k_filter(top_k_filter)
    assert torch.equal(state, torch.get_rng_state())
