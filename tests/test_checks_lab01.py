"""Lab 1's self-checks pass the reference code and name each classic mistake (01.1 BPE, 01.2 cosine, 01.3 perplexity)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch.nn import functional as F

from llmlab import embeddings, metrics, tokenization
from llmlab.checks import lab01


def expect(result, phrase: str | None) -> None:
    """``phrase`` None: the check passes; otherwise it fails with a message that contains ``phrase``."""
    assert bool(result) is (phrase is None), result
    assert phrase is None or phrase in result.message, result


# --- 01.1: one BPE merge ----------------------------------------------------------------------------


def best_pair(counts) -> tuple:
    return min(counts, key=lambda pair: (-counts[pair], pair))


def merge_with(merge_word, add_counts: bool = True):
    """A learner's merge step: the right pair, each word rewritten by ``merge_word(symbols, pair)``."""
    def merge_step(words):
        pair = best_pair(tokenization.pair_counts(words))
        merged = {}
        for symbols, count in words.items():
            word = tuple(merge_word(symbols, pair))
            merged[word] = merged.get(word, 0) + count if add_counts else count
        return pair, merged
    return merge_step


def right_merge(symbols, pair):
    return tokenization.merge_pair({symbols: 1}, pair).popitem()[0]


def advance_one_symbol(symbols, pair):
    """After fusing a pair, move on by one symbol only: ('a','a','a') -> ('aa','aa','a')."""
    out, i = [], 0
    while i < len(symbols):
        out.append(symbols[i] + symbols[i + 1] if symbols[i:i + 2] == pair else symbols[i])
        i += 1
    return out


def first_occurrence_only(symbols, pair):
    for i in range(len(symbols) - 1):
        if symbols[i:i + 2] == pair:
            return symbols[:i] + (pair[0] + pair[1],) + symbols[i + 2:]
    return symbols


def from_the_right(symbols, pair):
    """Scanning right to left: ('a','a','a') -> ('a','aa'), the overlap resolved the other way."""
    out, i = [], len(symbols) - 1
    while i >= 0:
        fuse = i > 0 and symbols[i - 1:i + 1] == pair
        out.insert(0, pair[0] + pair[1] if fuse else symbols[i])
        i -= 2 if fuse else 1
    return out


def keeps_both_symbols(symbols, pair):
    """Inserts the fused symbol but also keeps the pair's two symbols: a merge that forgets to delete them."""
    out = list(symbols)
    for i in reversed(range(len(symbols) - 1)):
        if symbols[i:i + 2] == pair:
            out.insert(i, pair[0] + pair[1])
    return out


def by_word_type(words):
    counts = tokenization.pair_counts({symbols: 1 for symbols in words})  # each word counted once
    pair = best_pair(counts)
    return pair, tokenization.merge_pair(words, pair)


def least_frequent(words):
    counts = tokenization.pair_counts(words)
    pair = min(counts, key=lambda p: (counts[p], p))
    return pair, tokenization.merge_pair(words, pair)


def drops_unmerged_words(words):
    pair, merged = tokenization.bpe_merge_step(words)
    return pair, {word: count for word, count in merged.items() if pair[0] + pair[1] in word}


def in_place(words):
    pair, merged = tokenization.bpe_merge_step(words)
    words.clear()
    words.update(merged)
    return pair, merged


@pytest.mark.parametrize("merge_step, phrase", [
    pytest.param(tokenization.bpe_merge_step, None, id="reference"),
    pytest.param(lambda words: tokenization.bpe_merge_step(words)[1], "return a pair (best_pair, merged_words)", id="corpus-only"),
    pytest.param(lambda words: ("".join(tokenization.bpe_merge_step(words)[0]), tokenization.bpe_merge_step(words)[1]),
                 "the best pair should be a tuple of two symbols", id="pair-as-one-string"),
    pytest.param(lambda words: (tokenization.bpe_merge_step(words)[0], list(tokenization.bpe_merge_step(words)[1].items())),
                 "the merged corpus should be a dict", id="corpus-as-list"),
    pytest.param(in_place, "changed the input corpus in place", id="modifies-input"),
    pytest.param(by_word_type, "weight every pair by the count of the word", id="counts-by-word-type"),
    pytest.param(least_frequent, "count adjacent pairs zip(symbols, symbols[1:])", id="not-the-most-frequent"),
    pytest.param(merge_with(right_merge, add_counts=False), "add their counts", id="overwrites-collisions"),
    pytest.param(drops_unmerged_words, "changed the total word count", id="drops-words"),
    pytest.param(merge_with(advance_one_symbol), "jump past both symbols", id="advances-one-symbol"),
    pytest.param(merge_with(from_the_right), "jump past both symbols", id="overlap-from-the-right"),
    pytest.param(merge_with(first_occurrence_only), "fuse every occurrence of the pair in a word, not only the first",
                 id="first-occurrence-only"),
])
def test_bpe_check(merge_step, phrase):
    expect(lab01.check_bpe_merge_step(merge_step), phrase)


def test_bpe_other_wrong_merge_shows_expected_corpus():
    result = lab01.check_bpe_merge_step(merge_with(keeps_both_symbols))
    expect(result, "expected {")
    assert result.message.endswith("}"), result  # no hint: neither an overlap nor a missed occurrence


def test_the_overlap_mistakes_are_the_ones_named():
    assert advance_one_symbol(("a", "a", "a"), ("a", "a")) == ["aa", "aa", "a"]
    assert from_the_right(("a", "a", "a"), ("a", "a")) == ["a", "aa"]
    assert first_occurrence_only(("a", "b", "x", "a", "b"), ("a", "b")) == ("ab", "x", "a", "b")


# --- 01.2: cosine similarity ------------------------------------------------------------------------


def rows_normalised(a):
    return F.normalize(a, dim=1)


@pytest.mark.parametrize("cosine, phrase", [
    pytest.param(embeddings.cosine_similarity, None, id="reference"),
    pytest.param(lambda a, b: (rows_normalised(a) @ rows_normalised(b).T).numpy(), "should be a torch.Tensor", id="numpy"),
    pytest.param(lambda a, b: embeddings.cosine_similarity(b, a), "expected (3, 4): one row per row of a", id="transposed"),
    pytest.param(lambda a, b: (rows_normalised(a) @ rows_normalised(b).T).flatten(), "has shape (12,), expected (3, 4)",
                 id="flattened"),
    pytest.param(lambda a, b: a @ b.T, "plain dot products", id="not-normalised"),
    pytest.param(lambda a, b: F.normalize(a, dim=0) @ F.normalize(b, dim=0).T, "normalised the columns", id="columns"),
    pytest.param(lambda a, b: rows_normalised(a) @ b.T, "only one of the two matrices is normalised", id="only-a"),
    pytest.param(lambda a, b: a @ rows_normalised(b).T, "only one of the two matrices is normalised", id="only-b"),
    pytest.param(lambda a, b: 1 - rows_normalised(a) @ rows_normalised(b).T, "cosines differ from", id="cosine-distance"),
])
def test_cosine_check(cosine, phrase):
    expect(lab01.check_cosine_similarity(cosine), phrase)


# --- 01.3: perplexity ---------------------------------------------------------------------------------


def token_losses(logits, targets):
    return F.cross_entropy(logits, targets, reduction="none")


@pytest.mark.parametrize("perplexity, phrase", [
    pytest.param(metrics.perplexity_from_logits, None, id="reference"),
    pytest.param(lambda logits, targets: np.float64(metrics.perplexity_from_logits(logits, targets)), None, id="numpy-number"),
    pytest.param(lambda logits, targets: token_losses(logits, targets).exp(), "should be one number, got a tensor of shape",
                 id="per-token"),
    pytest.param(lambda logits, targets: f"{metrics.perplexity_from_logits(logits, targets):.2f}", "should be a number, got str",
                 id="string"),
    pytest.param(lambda logits, targets: float("nan"), "return a finite number", id="nan"),
    pytest.param(lambda logits, targets: token_losses(logits, targets).mean(), "you return the cross-entropy", id="cross-entropy"),
    pytest.param(lambda logits, targets: 2 ** token_losses(logits, targets).mean(), "base 2", id="base-2"),
    pytest.param(lambda logits, targets: token_losses(logits, targets).exp().mean(), "averaged per-token perplexities",
                 id="mean-of-exp"),
    pytest.param(lambda logits, targets: token_losses(logits, targets).sum().exp(), "exponentiated the summed cross-entropy",
                 id="summed"),
    pytest.param(lambda logits, targets: torch.exp(-logits[torch.arange(len(targets)), targets].mean()),
                 "used the raw logits as log-probabilities", id="raw-logits"),
    pytest.param(lambda logits, targets: F.cross_entropy(logits.log_softmax(0), targets).exp(), "log_softmax over the vocabulary",
                 id="softmax-over-tokens"),
])
def test_perplexity_check(perplexity, phrase):
    expect(lab01.check_perplexity_from_logits(perplexity), phrase)

