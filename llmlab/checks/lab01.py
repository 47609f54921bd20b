"""Self-checks of Lab 1 (tokens, embeddings, a first language model): one BPE merge, cosine similarity, perplexity."""

from __future__ import annotations

import math

import torch
from torch.nn import functional as F

from llmlab import embeddings, metrics, tokenization
from llmlab.checks.core import (
    Mismatch,
    close,
    expect_number,
    expect_shape,
    expect_tensor,
    grown,
    lab_shortcuts,
    max_difference,
    on_every_device,
    random_float64,
    seeded,
    seeded_python,
    self_check,
)


def toy_corpora() -> list[dict]:
    """Small corpora of words as symbol tuples: hand-made traps (ties, repeats, counts, collisions) plus random ones."""
    corpora = [
        {("l", "o", "w"): 5, ("l", "o", "w", "e", "r"): 2, ("n", "e", "w", "e", "s", "t"): 6, ("w", "i", "d", "e", "s", "t"): 3},
        {("a", "a", "a"): 4, ("a", "b"): 1, ("b", "a", "a", "a", "a"): 2},  # "aaa": a merged pair may not overlap the next
        {("x", "y"): 1, ("x", "y", "z"): 1, ("z", "w"): 5},  # by word types (x, y) wins; weighted by counts (z, w) wins
        {("c", "d"): 2, ("a", "b"): 2},  # a tie: either pair is a correct choice
        {("t", "h", "e"): 3, ("th", "e", "n"): 1, ("t", "h", "en"): 2},  # symbols already merged earlier
        {("t", "h", "e"): 3, ("th", "e"): 2, ("t", "h", "o"): 1},  # after merging (t, h) two words are ("th", "e"): counts add up
        {("a", "b", "x", "a", "b"): 3, ("y",): 1},  # a pair twice in one word: both occurrences merge
    ]
    rng = seeded_python(0)
    for _ in range(6):
        words = {}
        for _ in range(rng.randint(3, 8)):
            words[tuple(rng.choice("abcde") for _ in range(rng.randint(2, 7)))] = rng.randint(1, 9)
        corpora.append(words)
    return corpora


def _add(merged: dict, symbols: tuple, count: int) -> None:
    merged[symbols] = merged.get(symbols, 0) + count


def _merge_without_skipping(words: dict, pair: tuple) -> dict:
    """The merge with the slip the "jump past both symbols" hint names: after a fused pair the scan moves on by one
    symbol only, so the pair's second symbol is kept again (or fused again): ('a','a','a') -> ('aa','aa','a')."""
    merged: dict = {}
    for symbols, count in words.items():
        _add(merged, tuple(a + b if (a, b) == pair else a for a, b in zip(symbols, symbols[1:] + ("",))), count)
    return merged


def _merge_first_occurrence(words: dict, pair: tuple) -> dict:
    """The merge with the slip the "every occurrence" hint names: only the first occurrence in each word is fused."""
    merged: dict = {}
    for symbols, count in words.items():
        at = next((i for i in range(len(symbols) - 1) if symbols[i:i + 2] == pair), None)
        _add(merged, symbols if at is None else symbols[:at] + (pair[0] + pair[1],) + symbols[at + 2:], count)
    return merged


@self_check("01.1")
def check_bpe_merge_step(merge_step) -> str:
    """fn(words) -> (pair, merged_words): the most frequent adjacent pair, counted with word counts, merged everywhere."""
    corpora = toy_corpora()
    for words in corpora:
        original = dict(words)
        result = merge_step(words)
        if not (isinstance(result, tuple) and len(result) == 2):
            raise Mismatch("return a pair (best_pair, merged_words), e.g. `return best, merged`")
        pair, merged = result
        if not (isinstance(pair, tuple) and len(pair) == 2 and all(isinstance(s, str) for s in pair)):
            raise Mismatch(f"the best pair should be a tuple of two symbols like ('l', 'o'), got {pair!r}")
        if not isinstance(merged, dict):
            raise Mismatch(f"the merged corpus should be a dict {{word tuple: count}}, got {type(merged).__name__}")
        if words != original:
            raise Mismatch("your function changed the input corpus in place; build a new dict instead")
        counts = tokenization.pair_counts(words)
        best = max(counts.values())
        if counts.get(pair, 0) != best:
            unweighted = tokenization.pair_counts({symbols: 1 for symbols in words})
            if unweighted.get(pair, 0) == max(unweighted.values()):
                raise Mismatch(f"in {words} you picked {pair}, the most frequent pair if each word counts once; "
                               "weight every pair by the count of the word it sits in")
            raise Mismatch(f"in {words} you picked {pair} (seen {counts.get(pair, 0)} times), but the most frequent "
                           f"pair occurs {best} times: count adjacent pairs zip(symbols, symbols[1:]) in every word")
        expected = tokenization.merge_pair(words, pair)
        if merged == expected:
            continue
        if sum(merged.values()) != sum(expected.values()):
            if len(expected) < len(words) and sum(merged.values()) < sum(expected.values()):
                raise Mismatch(f"merging {pair} in {words} turns two words into the same tuple; add their counts "
                               f"(merged[word] = merged.get(word, 0) + count) instead of overwriting one with the other")
            raise Mismatch(f"merging {pair} in {words} changed the total word count ({sum(merged.values())} instead of "
                           f"{sum(expected.values())}): keep every word and its count")
        if merged == _merge_first_occurrence(words, pair):
            raise Mismatch(f"merging {pair} in {words} gave {merged}, expected {expected}: fuse every occurrence "
                           "of the pair in a word, not only the first")
        overlapping = merged == _merge_without_skipping(words, pair) or (
            pair[0] == pair[1] and any(symbols[i:i + 3] == (pair[0],) * 3 for symbols in words for i in range(len(symbols))))
        if overlapping:
            raise Mismatch(f"merging {pair} in {words} gave {merged}, expected {expected}: after fusing a pair, "
                           "jump past both symbols, so overlapping occurrences ('a','a','a') give ('aa','a')")
        if any(sum(1 for i in range(len(s) - 1) if s[i:i + 2] == pair) > 1 for s in words):
            raise Mismatch(f"merging {pair} in {words} gave {merged}, expected {expected}: fuse every occurrence "
                           "of the pair in a word, not only the first")
        raise Mismatch(f"merging {pair} in {words} gave {merged}, expected {expected}")
    return f"picks a most frequent pair and merges it correctly on {len(corpora)} corpora (word counts, ties, overlaps, collisions)"


@self_check("01.2")
def check_cosine_similarity(cosine) -> str:
    """fn(a, b) with a (n, d) and b (m, d) -> (n, m) cosines, compared with torch's own."""
    shapes = [(3, 4, 5), (1, 7, 384), (6, 1, 2), (5, 5, 16)]  # (rows of a, rows of b, features)
    generator = seeded(0)
    for device, (n, m, d) in on_every_device([grown(*shape) for shape in shapes]):
        row_lengths = torch.rand(n, 1, generator=generator, dtype=torch.float64) * 5 + 0.1  # rows of different lengths
        a, b = random_float64(generator, n, d, device=device, scale=row_lengths), random_float64(generator, m, d, device=device, scale=3)
        result = expect_tensor(cosine(a.clone(), b.clone()), "the result")
        if tuple(result.shape) == (m, n) and n != m:
            raise Mismatch(f"result has shape {(m, n)}, expected {(n, m)}: one row per row of a, i.e. a_normalised @ b_normalised.T")
        expect_shape(result, (n, m), "the result", "one row per row of a, one column per row of b")
        expected = F.cosine_similarity(a.unsqueeze(1), b.unsqueeze(0), dim=-1)
        if close(result, expected):
            continue
        if close(result, a @ b.T):
            raise Mismatch("you return plain dot products; divide by the lengths of both vectors (or normalise the rows first)")
        if n > 1 and m > 1 and d > 1 and close(result, F.normalize(a, dim=0) @ F.normalize(b, dim=0).T):
            raise Mismatch("you normalised the columns; normalise each row (dim=1), one vector per row")
        if close(result, F.normalize(a, dim=1) @ b.T) or close(result, a @ F.normalize(b, dim=1).T):
            raise Mismatch("only one of the two matrices is normalised: divide the rows of a *and* of b by their lengths")
        raise Mismatch(f"cosines differ from torch.nn.functional.cosine_similarity by up to {max_difference(result, expected):.2e}")
    return f"matches torch.nn.functional.cosine_similarity on {len(shapes)} pairs of matrices, rows of any length"


@self_check("01.3")
def check_perplexity_from_logits(perplexity_of) -> str:
    """fn(logits (n, vocab), targets (n,)) -> perplexity, compared with exp(mean cross-entropy in nats)."""
    generator = seeded(0)
    cases = [(10, 5, 1.0), (50, 65, 3.0), (1, 3, 0.5), (200, 30, 6.0)]
    for device, (n, vocab, spread) in on_every_device([(*grown(n, vocab), spread) for n, vocab, spread in cases]):
        logits = random_float64(generator, n, vocab, device=device, scale=spread)
        targets = torch.randint(0, vocab, (n,), generator=generator).to(device)
        value = expect_number(perplexity_of(logits.clone(), targets.clone()), "the perplexity (for the whole batch)")
        if not math.isfinite(value):
            raise Mismatch(f"return a finite number, got {value!r}")
        losses = F.cross_entropy(logits, targets, reduction="none")
        expected = metrics.perplexity_from_logits(logits, targets)
        if math.isclose(value, expected, rel_tol=1e-6):
            continue
        mistakes = [
            (losses.mean().item(), "you return the cross-entropy; perplexity is exp(mean cross-entropy)"),
            (2 ** losses.mean().item(), "you used base 2; the cross-entropy here is in nats, so take exp(), not 2**"),
            (losses.exp().mean().item(), "you averaged per-token perplexities; average the cross-entropy first, then exponentiate"),
            (math.exp(losses.sum().item()), "you exponentiated the summed cross-entropy; use the mean over tokens"),
            (math.exp(-logits[torch.arange(n), targets].mean().item()),
             "you used the raw logits as log-probabilities: normalise them first with log_softmax over the vocabulary"),
        ]
        for wrong, hint in mistakes:
            if math.isclose(value, wrong, rel_tol=1e-6):
                raise Mismatch(hint)
        raise Mismatch(f"got {value:.6g} for {n} tokens over a vocabulary of {vocab}, expected {expected:.6g}: "
                       "log_softmax over the vocabulary, pick the targets' log-probabilities, negate, average, exp")
    return f"equals exp(mean cross-entropy) on {len(cases)} batches (vocabularies of 3 to 65)"


# The exercises of this lab, id -> (title, points): what solutions/01_what_is_an_llm.ipynb's metadata declares
# (tests/test_architecture.py keeps the two equal); checks.summary() reads them.
EXERCISES = {"01.1": ("one BPE merge step", 2), "01.2": ("cosine similarity", 1), "01.3": ("perplexity from logits", 2)}

CHECKS = {"01.1": check_bpe_merge_step, "01.2": check_cosine_similarity, "01.3": check_perplexity_from_logits}


# What use_reference("01.k") puts in the notebook: the name its exercise defines, and the course's implementation.
REFERENCES = {"01.1": ("bpe_merge_step", tokenization.bpe_merge_step), "01.2": ("cosine_similarity", embeddings.cosine_similarity),
              "01.3": ("perplexity_from_logits", metrics.perplexity_from_logits)}

# checks.use_reference("01.k") when stuck, checks.summary() at the end of the lab
use_reference, summary = lab_shortcuts("01")
