"""Self-checks of Lab 5 (inference): the top-k and top-p filters, and greedy generation with a KV cache.

The two filters are compared with ``llmlab.generation.top_k_filter`` and ``top_p_filter`` on
float32 logits, the type a model returns. Both keep every token tied with the last one kept,
so that the result never depends on how a sort happens to order equal numbers. The generation
loop runs on small GPTs in float64 whose forward calls are recorded, so a check can say what
went into the cache at each step, not only that the text came out wrong.
"""

from __future__ import annotations

import torch

from llmlab.checks.core import (
    LearnerCodeError,
    Mismatch,
    devices,
    expect_shape,
    expect_tensor,
    grown,
    lab_shortcuts,
    seeded,
    self_check,
)
from llmlab.checks.remote import lend
from llmlab.generation import top_k_filter, top_p_filter

NEG_INF = float("-inf")


def _kept(logits: torch.Tensor) -> torch.Tensor:
    """Which tokens a filter kept: every entry above -inf."""
    return logits > NEG_INF


def _token_list(mask_row: torch.Tensor) -> list[int]:
    return mask_row.nonzero().flatten().tolist()


def _log_probabilities(*rows: list[float]) -> torch.Tensor:
    """float32 logits whose softmax is exactly each row of probabilities (each row sums to 1)."""
    return torch.tensor(rows, dtype=torch.float64).log().float()


def _filtered(filter_fn, logits: torch.Tensor, parameter, name: str, device: torch.device) -> torch.Tensor:
    """The learner's filter applied to ``logits`` on ``device``, returned on the CPU as float32, after the
    checks every filter shares: a tensor of the input's shape, the input left alone, -inf for removed tokens."""
    given = logits.to(device)
    untouched = given.clone()
    result = expect_tensor(filter_fn(given, parameter), "the filtered logits")
    expect_shape(result, logits.shape, "the filtered logits", "the same shape as the logits: one row per text, one column per token")
    if not torch.equal(given, untouched):
        raise Mismatch("your function changed the logits it was given (in place): the caller still needs them, e.g. to try "
                       "another setting; return a new tensor (masked_fill without the underscore, or work on logits.clone())")
    result = result.detach().to("cpu", torch.float32)
    expected = _reference(name)(logits, parameter)
    if not _kept(result).all() or _kept(expected).all() or torch.equal(result, logits):
        return result
    rows_sum_to_one = torch.allclose(result.sum(dim=-1), torch.ones(len(result)), atol=1e-4) and bool((result >= 0).all())
    if rows_sum_to_one:
        raise Mismatch("you returned probabilities; return the logits, unchanged for the kept tokens and float('-inf') for the "
                       "others (the softmax that follows turns -inf into a probability of exactly 0)")
    raise Mismatch("no token was set to -inf: mark each removed token with float('-inf'), not 0 or a large negative number, "
                   "so that its probability after the softmax is exactly 0")


def _reference(name: str):
    return {"top-k": top_k_filter, "top-p": top_p_filter}[name]


def _same_filtering(result: torch.Tensor, expected: torch.Tensor, logits: torch.Tensor) -> bool:
    kept = _kept(expected)
    return torch.equal(_kept(result), kept) and torch.allclose(result[kept], logits[kept], atol=1e-6, rtol=0)


def _first_difference(result: torch.Tensor, expected: torch.Tensor, what: str) -> Mismatch:
    row = int((_kept(result) != _kept(expected)).any(dim=-1).nonzero()[0])
    return Mismatch(f"({what}) row {row} keeps tokens {_token_list(_kept(result)[row])}, expected {_token_list(_kept(expected)[row])}")


def _run_filter_cases(filter_fn, name: str, cases, diagnose) -> None:
    """Every case on every device: equal to the reference, or the Mismatch that ``diagnose`` finds."""
    for device in devices():
        for what, logits, parameter in cases:
            result = _filtered(filter_fn, logits, parameter, name, device)
            expected = _reference(name)(logits, parameter)
            if _same_filtering(result, expected, logits):
                continue
            if torch.equal(_kept(result), _kept(expected)):
                raise Mismatch(f"({what}) the right tokens are kept but their logits changed: return the kept logits exactly as "
                               "they were (no softmax, temperature or renormalisation), with -inf for the others")
            diagnose(logits, parameter, _kept(result), what)
            raise _first_difference(result, expected, what)


# --- 05.1: top-k ----------------------------------------------------------------------------------


def _top_k_cases() -> list[tuple[str, torch.Tensor, int]]:
    generator = seeded(5)
    six = torch.tensor([[1.0, -0.5, 2.5, 0.0, 3.0, -2.0]])
    return [
        ("4 rows of 11 random logits, k = 3", 2 * torch.randn(4, 11, generator=generator), 3),
        ("a tie at the k-th place, k = 2", torch.tensor([[3.0, 1.0, 2.0, 2.0, -1.0, 0.5]]), 2),
        ("three tokens tied for first place, k = 1", torch.tensor([[0.5, 4.0, -2.0, 4.0, 4.0, 1.0]]), 1),
        ("k = 6, the whole vocabulary of 6", six, 6),
        ("k = 50, more than the vocabulary of 6", six, 50),
        ("one token with almost all the probability, k = 2", torch.tensor([[40.0, 0.0, -1.0, -2.0, -3.0, 1.0]]), 2),
        ("tokens so unlikely that their float32 probabilities are 0, k = 3", torch.tensor([[5.0, 0.0, -200.0, -300.0, -400.0, -500.0]]), 3),
        ("3 rows of 65 random logits, k = 10", 3 * torch.randn(3, 65, generator=generator), 10),
    ]


def _kept_by_probability_rank(logits: torch.Tensor, k: int) -> torch.Tensor:
    """Top-k ranked by float32 probabilities: the same as by logits, except where probabilities round to equal numbers."""
    probabilities = torch.softmax(logits, dim=-1)
    return probabilities >= torch.topk(probabilities, k, dim=-1).values[..., -1:]


def _diagnose_top_k(logits: torch.Tensor, k: int, kept: torch.Tensor, what: str) -> None:
    from llmlab.generation import top_k_filter

    rows, vocab = logits.shape
    expected = _kept(top_k_filter(logits, k))
    if k > 1 and torch.equal(kept, _kept(top_k_filter(logits, k - 1))):
        raise Mismatch(f"({what}) each row keeps k − 1 tokens: keep the k highest logits (with torch.topk(logits, k), the k-th "
                       "is .values[..., -1:]; keep every logit >= it)")
    if k < vocab and torch.equal(kept, _kept(top_k_filter(logits, k + 1))):
        raise Mismatch(f"({what}) each row keeps k + 1 tokens: keep the k highest logits, the k-th included and no more")
    if k <= rows and torch.equal(kept, _kept(top_k_filter(logits.T, k).T)):
        raise Mismatch(f"({what}) you ranked the tokens down each column (over the texts of the batch): rank along the last "
                       "dimension, the vocabulary (dim=-1), so that each row is filtered on its own")
    if k < vocab and torch.equal(kept, _kept_by_probability_rank(logits, k)):
        raise Mismatch(f"({what}) you ranked by float32 probabilities: these tokens' probabilities all round to 0 and tie, "
                       "although their logits differ; rank the logits themselves (the softmax keeps their order, but not "
                       "their differences once they underflow)")
    missing = expected & ~kept
    if not (kept & ~expected).any() and missing.any():
        kth = torch.topk(logits, min(k, vocab), dim=-1).values[..., -1:].expand_as(logits)
        if torch.equal(logits[missing], kth[missing]):
            raise Mismatch(f"({what}) tokens tied with the k-th highest logit were dropped: keep every logit >= the k-th "
                           "(torch.topk picks one of equal values arbitrarily, so keeping exactly k makes the result depend "
                           "on the sort)")


@self_check("05.1")
def check_top_k_filter(filter_fn) -> str:
    """fn(logits (batch, vocab), k) -> the logits with all but the k highest of each row (and ties with the k-th) at -inf."""
    cases = _top_k_cases()
    vocab_cases = [case for case in cases if case[2] >= case[1].shape[-1]]

    def call(logits, k):
        try:
            return filter_fn(logits, k)
        except LearnerCodeError as error:
            if k >= logits.shape[-1]:
                raise Mismatch(f"with k = {k} and a vocabulary of {logits.shape[-1]} your code raised "
                               f"{type(error.original).__name__}: when k is at least the vocabulary every token stays, so "
                               "return the logits unchanged (torch.topk cannot pick more values than there are)") from None
            raise

    _run_filter_cases(call, "top-k", cases, _diagnose_top_k)
    return (f"equals llmlab's top_k_filter on {len(cases)} cases: several rows at once, ties at the k-th place, "
            f"k ≥ the vocabulary ({len(vocab_cases)} cases), a row dominated by one token and float32 underflow")


# --- 05.2: top-p (nucleus) ----------------------------------------------------------------------------


TOP_P_NUCLEUS = 0.725  # the rows of the first case have probabilities in hundredths, so no partial sum equals it


def _top_p_cases() -> list[tuple[str, torch.Tensor, float]]:
    generator = seeded(7)
    return [
        (f"4 rows of 6 tokens, p = {TOP_P_NUCLEUS}", _log_probabilities(
            [0.1, 0.35, 0.05, 0.2, 0.25, 0.05],     # 0.35 + 0.25 = 0.6 < p: 0.2 crosses p and stays
            [0.05, 0.1, 0.6, 0.15, 0.06, 0.04],     # 0.6 + 0.15 = 0.75 reaches p
            [0.9, 0.02, 0.02, 0.02, 0.02, 0.02],    # the top token alone is more than p
            [0.18, 0.17, 0.16, 0.17, 0.16, 0.16],   # 0.68 < p: the first 0.16 crosses p and its ties stay too
        ), TOP_P_NUCLEUS),
        ("a tie at the boundary, p = 0.45", _log_probabilities([0.1, 0.2, 0.3, 0.2, 0.2]), 0.45),
        ("p = 0.01: only the most likely token", 2 * torch.randn(3, 9, generator=generator), 0.01),
        ("one token with almost all the probability, p = 0.9", torch.tensor([[30.0, 0.0, 0.0, 0.0, 0.0, 0.0]]), 0.9),
        ("p = 1: every token stays, even where float32 rounds the top token's probability to 1",
         torch.cat([torch.tensor([[2.0, 0.0, -30.0, -60.0, -90.0, -120.0], [30.0, 0.0, 0.0, 0.0, 0.0, 0.0]]),
                    torch.randn(2, 6, generator=generator)]), 1.0),
        ("3 rows of 65 random logits, p = 0.9", 2 * torch.randn(3, 65, generator=generator), 0.9),
    ]


def _diagnose_top_p(logits: torch.Tensor, p: float, kept: torch.Tensor, what: str) -> None:
    from llmlab.generation import top_p_filter

    expected = _kept(top_p_filter(logits, p))
    probabilities = torch.softmax(logits.double(), dim=-1)
    if p >= 1:
        raise Mismatch(f"({what}) with p = 1 every token stays: nucleus sampling with p = 1 is plain sampling, so return the "
                       "logits unchanged (rounding can make the running total reach 1 before the last token)")
    if len(logits) > 1 and torch.equal(kept, _kept(top_p_filter(logits.T, p).T)):
        raise Mismatch(f"({what}) the softmax and the sort ran down each column (over the texts of the batch): use dim=-1, the "
                       "vocabulary, so that each row is filtered on its own")
    highest_removed = probabilities.masked_fill(kept, 0).amax(dim=-1)
    lowest_kept = probabilities.masked_fill(~kept, 2).amin(dim=-1)
    if (highest_removed > lowest_kept * (1 + 1e-6)).any():
        raise Mismatch(f"({what}) a token was removed while a less likely one was kept: sort the probabilities (descending) "
                       "before taking the cumulative sum, so that the nucleus is made of the most likely tokens")
    wrong_rows = (kept != expected).any(dim=-1)
    subset = ~(kept & ~expected).any(dim=-1)
    short = wrong_rows & subset & kept.any(dim=-1) & ((probabilities * kept).sum(dim=-1) < p)
    if short.any():
        row = int(short.nonzero()[0])
        total = float((probabilities[row] * kept[row]).sum())
        raise Mismatch(f"({what}) row {row} keeps tokens that add up to {total:.3f}, less than p = {p}: keep the token that "
                       "takes the total past p too (a token joins while the tokens more likely than it add up to less than p)")
    if (wrong_rows & ~kept.any(dim=-1)).any():
        row = int((wrong_rows & ~kept.any(dim=-1)).nonzero()[0])
        raise Mismatch(f"({what}) row {row} keeps no token at all: the most likely token always stays, even when its "
                       "probability alone is more than p")
    if (wrong_rows & ~subset).any() and not (wrong_rows & subset).any():
        row = int(wrong_rows.nonzero()[0])
        ordered = probabilities[row].sort(descending=True).values
        needed = int((ordered.cumsum(dim=0) - ordered < p).sum())
        raise Mismatch(f"({what}) row {row} keeps {int(kept[row].sum())} tokens, but its {needed} most likely tokens already add "
                       f"up to at least p = {p}: sort the probabilities (descending), take the cumulative sum in that order, "
                       "and stop adding tokens once the total reaches p")
    missing = expected & ~kept
    if not (wrong_rows & ~subset).any() and missing.any():
        smallest_kept = probabilities.masked_fill(~kept, 2).amin(dim=-1, keepdim=True).expand_as(probabilities)
        if torch.equal(probabilities[missing], smallest_kept[missing]):
            raise Mismatch(f"({what}) tokens exactly as likely as the least likely kept token were dropped: keep them too, so "
                           "that the result does not depend on how the sort orders equal probabilities")


@self_check("05.2")
def check_top_p_filter(filter_fn) -> str:
    """fn(logits (batch, vocab), p) -> the logits outside each row's nucleus at -inf."""
    cases = _top_p_cases()
    _run_filter_cases(filter_fn, "top-p", cases, _diagnose_top_p)
    return (f"equals llmlab's top_p_filter on {len(cases)} cases: several rows at once, the token that crosses p, ties at the "
            "boundary, the top token kept when it alone exceeds p, and p = 1")


# --- 05.3: greedy generation with the KV cache -------------------------------------------------------


CACHE_CASES = [  # rotary positions, biases, layers, prompt length, new tokens
    (True, False, 2, 5, 10),
    (False, True, 2, 7, 12),
    (True, True, 3, 1, 8),
]


def _random_gpt(rotary: bool, bias: bool, n_layers: int, seed: int):
    """A small float64 GPT with weights drawn large enough that each step's most likely token is clear-cut and
    depends on the whole text (a freshly initialised GPT's logits are almost flat)."""
    from llmlab.model import GPT, GPTConfig

    config = GPTConfig(vocab_size=13, context=24, d_model=16, n_heads=2, n_layers=n_layers, rotary=rotary, bias=bias,
                       tie_weights=False)  # with tied weights a random GPT mostly repeats the token it just read
    model = GPT(config).double()
    generator = seeded(seed)
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            noise = torch.randn(parameter.shape, generator=generator, dtype=torch.float64)
            if "norm" in name and name.endswith("weight"):
                parameter.copy_(1 + 0.3 * noise)
            elif parameter.dim() == 1:
                parameter.copy_(0.3 * noise)
            elif "embedding" in name:
                parameter.copy_(noise)
            else:
                parameter.copy_(noise / parameter.shape[1] ** 0.5)
    return model.eval()


class _ForwardRecorder:
    """Records every forward call of a model: the tokens it read, the cache it got (and how full it was), the logits."""

    def __init__(self, model):
        self.calls: list[dict] = []
        self.handles = [model.register_forward_pre_hook(self._before, with_kwargs=True),
                        model.register_forward_hook(self._after, with_kwargs=True)]

    def _before(self, module, args, kwargs):
        tokens = args[0] if args else kwargs.get("tokens")
        cache = kwargs.get("cache", args[2] if len(args) > 2 else None)
        self.calls.append({"tokens": tokens.detach().cpu().clone() if isinstance(tokens, torch.Tensor) else None,
                           "cache": cache, "seen": getattr(cache, "length", None), "logits": None})

    def _after(self, module, args, kwargs, output):
        self.calls[-1]["logits"] = output.detach().cpu() if isinstance(output, torch.Tensor) else None

    def remove(self) -> None:
        for handle in self.handles:
            handle.remove()


def _read(call: dict) -> int:
    """How many positions one forward call read (-1 when its input was not a (batch, n) tensor)."""
    tokens = call["tokens"]
    return tokens.shape[1] if tokens is not None and tokens.dim() == 2 else -1


def _diagnose_cache_use(calls: list[dict], prompt_length: int, where: str) -> None:
    """The Mismatch for a cache used the wrong way, judged from the recorded calls alone."""
    if not calls:
        return
    with_cache = [call for call in calls if call["cache"] is not None]
    if not with_cache:
        raise Mismatch(f"({where}) the model never received a cache: create one with model.new_cache(1, len(prompt) + "
                       "new_tokens) before the loop and pass it on every call, model(tokens, cache=cache)")
    if len(with_cache) < len(calls):
        raise Mismatch(f"({where}) {len(calls) - len(with_cache)} of the {len(calls)} calls ran the model without the cache: "
                       "pass cache=cache on every call, the prefill included")
    if any(call["cache"] is not with_cache[0]["cache"] for call in with_cache):
        raise Mismatch(f"({where}) a new cache was created after the first step: a fresh cache has forgotten the keys and "
                       "values of every earlier token; create it once, before the prefill, and reuse it")
    first = _read(with_cache[0])
    if first != prompt_length:
        raise Mismatch(f"({where}) the first call with the cache read {first} token(s), the prompt has {prompt_length}: prefill "
                       "once with the whole prompt, model(prompt.view(1, -1), cache=cache), so that its keys and values are "
                       "in the cache before the first new token is chosen")
    if any(_read(call) != 1 for call in with_cache[1:]):
        longest = max(_read(call) for call in with_cache[1:])
        raise Mismatch(f"({where}) a step after the prefill fed {longest} tokens: feed only the newest token, "
                       "model(next_token.view(1, 1), cache=cache); the cache already holds the keys and values of all the "
                       "tokens before it, and feeding them again stores them twice and shifts every position")


def _diagnose_steps(calls: list[dict], produced: torch.Tensor, prompt_length: int, where: str) -> None:
    """With the cache used the right way: was each step's token the argmax, and was it fed back?"""
    for step, call in enumerate(calls):
        position = prompt_length + step
        if position >= len(produced) or call["logits"] is None:
            break
        most_likely = int(call["logits"][0, -1].argmax())
        if int(produced[position]) != most_likely:
            raise Mismatch(f"({where}) new token {step + 1} is {int(produced[position])}, but the most likely token of the "
                           f"logits your step computed is {most_likely}: take the argmax over the vocabulary of the last "
                           "position, logits[:, -1, :].argmax(dim=-1)")
    for step, call in enumerate(calls[1:]):
        position = prompt_length + step
        if position < len(produced) and int(call["tokens"][0, 0]) != int(produced[position]):
            raise Mismatch(f"({where}) step {step + 2} fed token {int(call['tokens'][0, 0])} to the model, but the token chosen "
                           f"just before was {int(produced[position])}: after appending the new token, feed that same token "
                           "in the next call")


def _check_one_generation(generate_fn, model, prompt: torch.Tensor, new_tokens: int, where: str) -> None:
    from llmlab.generation import Decoding, generate

    expected = generate(model, prompt, new_tokens, Decoding("greedy"), use_cache=False)
    recorder = _ForwardRecorder(model)
    try:
        with torch.no_grad():
            produced = generate_fn(lend(model, generate_fn, data=("config",), methods=("new_cache", "eval")), prompt, new_tokens)  # its calls come back here
    except LearnerCodeError:
        _diagnose_cache_use(recorder.calls, len(prompt), where)
        raise
    finally:
        recorder.remove()
    produced = expect_tensor(produced, "the generated tokens").detach().cpu()
    if produced.dim() == 2 and produced.shape[0] == 1:
        raise Mismatch("return a 1-D tensor (the prompt followed by the new tokens), as generate does: tokens[0], not tokens")
    if produced.shape == (new_tokens,) and new_tokens != len(expected) and torch.equal(produced, expected[len(prompt):]):
        raise Mismatch("you returned only the new tokens: return the prompt followed by them, as generate does")
    expect_shape(produced, expected.shape, "the generated tokens", f"the prompt's {len(prompt)} tokens and {new_tokens} new ones")
    _diagnose_cache_use(recorder.calls, len(prompt), where)
    if torch.equal(produced, expected):
        return
    _diagnose_steps(recorder.calls, produced, len(prompt), where)
    first = int((produced != expected).nonzero()[0])
    raise Mismatch(f"({where}) token {first} is {int(produced[first])}, greedy decoding without the cache gives "
                   f"{int(expected[first])}: {produced.tolist()} against {expected.tolist()}")


@self_check("05.3")
def check_cached_generation(generate_fn) -> str:
    """fn(model, prompt (1-D ids on the model's device), new_tokens) -> prompt + new_tokens greedy tokens, using the KV cache."""
    prompts = seeded(9)
    for device in devices():
        for seed, (rotary, bias, n_layers, *lengths) in enumerate(CACHE_CASES):
            prompt_length, new_tokens = grown(*lengths)
            model = _random_gpt(rotary, bias, n_layers, seed).to(device)
            prompt = torch.randint(0, model.config.vocab_size, (prompt_length,), generator=prompts).to(device)
            where = (f"{'RoPE' if rotary else 'learned positions'}, a prompt of {prompt_length} token(s), "
                     f"{new_tokens} new tokens")
            _check_one_generation(generate_fn, model, prompt, new_tokens, where)
    return (f"the same greedy tokens as generate(..., use_cache=False) for {len(CACHE_CASES)} prompts on small GPTs with RoPE "
            "and with learned positions; the prompt is prefilled once and every later step feeds one token into one cache")


# The exercises of this lab, id -> (title, points): what solutions/05_inference.ipynb's metadata declares
# (tests/test_architecture.py keeps the two equal); checks.summary() reads them.
EXERCISES = {"05.1": ("top-k filter", 2), "05.2": ("top-p (nucleus) filter", 3),
             "05.3": ("the cached generation loop", 3)}

CHECKS = {"05.1": check_top_k_filter, "05.2": check_top_p_filter, "05.3": check_cached_generation}


def greedy_with_cache_reference(model, prompt: torch.Tensor, new_tokens: int) -> torch.Tensor:
    """The prompt and ``new_tokens`` greedy tokens, generated with the KV cache: what Exercise 05.3 asks for."""
    from llmlab.generation import Decoding, generate

    return generate(model, prompt, new_tokens, Decoding("greedy"), use_cache=True)


# What use_reference("05.k") puts in the notebook: the name its exercise defines, and the course's implementation.
REFERENCES = {"05.1": ("my_top_k_filter", top_k_filter), "05.2": ("my_top_p_filter", top_p_filter),
              "05.3": ("greedy_with_cache", greedy_with_cache_reference)}

# checks.use_reference("05.k") when stuck, checks.summary() at the end of the lab
use_reference, summary = lab_shortcuts("05")
