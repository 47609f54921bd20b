"""Lab 1's tokenizer helpers and token economics, and the self-checks of its BPE, cosine and perplexity exercises."""

from __future__ import annotations

import math

import pytest
import torch
from torch.nn import functional as F

from llmlab import checks, metrics, similarity, token_costs, tokenization


def test_merge_step_on_the_classic_example():
    words = tokenization.toy_corpus("low low low low low lower lower newest newest newest newest newest newest widest widest widest")
    pair, merged = tokenization.bpe_merge_step(words)
    assert pair == ("e", "s")  # 6 (newest) + 3 (widest) = 9, ahead of ("s", "t") only by the tie-break
    assert merged[("n", "e", "w", "es", "t")] == 6
    merges, final = tokenization.train_toy_bpe(words, 3)
    assert merges == [("e", "s"), ("es", "t"), ("l", "o")]
    assert sum(final.values()) == sum(words.values())


def test_merge_does_not_overlap_and_keeps_counts():
    assert tokenization.merge_pair({("a", "a", "a"): 2, ("a", "a"): 1}, ("a", "a")) == {("aa", "a"): 2, ("aa",): 1}
    with pytest.raises(ValueError, match="nothing to merge"):
        tokenization.bpe_merge_step({("a",): 3})


def test_byte_level_bpe_round_trips_and_compresses():
    text = "the cat sat on the mat. the dog sat on the log. " * 200
    tokenizer = tokenization.train_byte_level_bpe([text], vocab_size=300)
    assert tokenizer.get_vocab_size() <= 300
    encode = tokenization.bpe_encoder(tokenizer)
    ids = encode(["the cat sat, naïve café ✓"])[0]
    assert tokenizer.decode(ids) == "the cat sat, naïve café ✓"  # bytes cover any text: nothing is unknown
    assert tokenization.characters_per_token([text[:500]], encode) > 2.0
    assert tokenization.count_tokens(["ab", ""], encode)[1] == 0
    with pytest.raises(ValueError, match="256"):
        tokenization.train_byte_level_bpe([text], vocab_size=100)
    with pytest.raises(TypeError):
        tokenization.count_tokens("one string", encode)


def test_monthly_cost_and_table():
    # 100k requests × (200 in, 50 out) tokens = 20M in, 5M out; at $1 / $4 per million: 20 + 20 = $40
    assert token_costs.monthly_cost(100_000, 200, 50, 1.0, 4.0) == pytest.approx(40.0)
    table = token_costs.cost_table(100_000, {"bpe": (200, 50), "chars": (800, 200)}, {"cheap": (1.0, 4.0), "dear": (10.0, 40.0)})
    assert table.loc["bpe", "dear"] == pytest.approx(400.0)
    assert table.loc["chars", "cheap"] == pytest.approx(160.0)
    with pytest.raises(ValueError, match="negative"):
        token_costs.monthly_cost(-1, 1, 1, 1, 1)


def test_perplexity_definitions():
    uniform = torch.zeros(7, 65)
    assert metrics.perplexity_from_logits(uniform, torch.arange(7)) == pytest.approx(65.0, rel=1e-5)
    assert metrics.perplexity(math.log(4.0)) == pytest.approx(4.0)
    with pytest.raises(ValueError, match="dimension"):
        metrics.cross_entropy(torch.zeros(3, 5), torch.zeros(4, dtype=torch.long))


def test_knn_classifier_and_neighbours():
    index = torch.tensor([[1.0, 0.0], [0.9, 0.1], [0.0, 1.0], [0.1, 0.9]])
    labels = torch.tensor([0, 0, 1, 1])
    queries = torch.tensor([[2.0, 0.1], [0.0, -0.5], [0.2, 3.0]])
    assert similarity.knn_classify(queries, index, labels, k=3, n_classes=2).tolist() == [0, 0, 1]
    scores, positions = similarity.nearest_neighbours(queries[:1], index, k=2)
    assert positions.tolist() == [[0, 1]] and scores[0, 0] > scores[0, 1]
    with pytest.raises(ValueError, match="larger than the index"):
        similarity.nearest_neighbours(queries, index, k=5)


# --- the self-checks pass correct code and name typical mistakes ---------------------------


def test_reference_implementations_pass_the_checks():
    assert checks.check_bpe_merge_step(tokenization.bpe_merge_step)
    assert checks.check_cosine_similarity(similarity.cosine_similarity)
    assert checks.check_perplexity_from_logits(metrics.perplexity_from_logits)


def test_bpe_check_names_mistakes():
    def unweighted(words):
        counts = tokenization.pair_counts({symbols: 1 for symbols in words})
        best = max(counts, key=counts.get)
        return best, tokenization.merge_pair(words, best)

    def overlapping(words):
        pair, _ = tokenization.bpe_merge_step(words)
        merged = {}
        for symbols, count in words.items():
            out = [a + b if (a, b) == pair else a for a, b in zip(symbols, symbols[1:] + ("",))]
            merged[tuple(out)] = merged.get(tuple(out), 0) + count
        return pair, merged

    def in_place(words):
        pair, merged = tokenization.bpe_merge_step(words)
        words.clear()
        words.update(merged)
        return pair, merged

    def not_done(words):
        raise NotImplementedError("Exercise 01.1")

    assert "weight every pair by the count" in checks.check_bpe_merge_step(unweighted).message
    result = checks.check_bpe_merge_step(overlapping)
    assert not result and "expected {('l', 'o', 'w'): 5" in result.message
    assert "changed the input corpus in place" in checks.check_bpe_merge_step(in_place).message
    assert "not implemented yet" in checks.check_bpe_merge_step(not_done).message
    assert "return a pair" in checks.check_bpe_merge_step(lambda words: None).message


def test_cosine_check_names_mistakes():
    assert "plain dot products" in checks.check_cosine_similarity(lambda a, b: a @ b.T).message
    assert "normalised the columns" in checks.check_cosine_similarity(lambda a, b: F.normalize(a, dim=0) @ F.normalize(b, dim=0).T).message
    assert "expected" in checks.check_cosine_similarity(lambda a, b: similarity.cosine_similarity(b, a)).message


def test_perplexity_check_names_mistakes():
    cross_entropy = lambda logits, targets: F.cross_entropy(logits, targets)
    base_two = lambda logits, targets: 2 ** F.cross_entropy(logits, targets)
    mean_of_exp = lambda logits, targets: F.cross_entropy(logits, targets, reduction="none").exp().mean()
    raw_logits = lambda logits, targets: torch.exp(-logits[torch.arange(len(targets)), targets].mean())
    assert "you return the cross-entropy" in checks.check_perplexity_from_logits(cross_entropy).message
    assert "base 2" in checks.check_perplexity_from_logits(base_two).message
    assert "averaged per-token perplexities" in checks.check_perplexity_from_logits(mean_of_exp).message
    assert "log_softmax" in checks.check_perplexity_from_logits(raw_logits).message
