"""Lab 7's self-checks pass the reference code, name each classic mistake, and hide other cases from a memoriser
(07.1 chunking, 07.2 reciprocal-rank fusion, 07.3 recall@k and reciprocal ranks, 07.4 filter before ranking, 07.5 token
F1, 07.6 citation precision, 07.7 the token mask of one constrained-decoding step)."""

from __future__ import annotations

import string
from collections import Counter

import numpy as np
import pytest

from llmlab import rag, retrieval, structured
from llmlab.checks import lab07
from llmlab.checks.core import variant
from llmlab.retrieval import Chunk


def expect(result, phrase: str | None) -> None:
    """``phrase`` None: the check passes; otherwise it fails with a message that contains ``phrase``."""
    assert bool(result) is (phrase is None), result
    assert phrase is None or phrase in result.message, result
    assert "\n" not in result.message


# --- 07.1: chunking with overlap ---------------------------------------------------------------------------------


def chunker(starts="until-the-end", step=lambda size, overlap: size - overlap, validate=lambda size, overlap: 0 <= overlap < size,
            split=lambda text: text.split(), join=" ", clip=True, keep_header=True, as_tuples=False):
    """chunk_words built from replaceable steps. starts: "until-the-end" (stop once a window reaches the last word),
    "range" (the same with range(0, n - overlap, step)), "every-step" (range(0, n, step)) or "whole-windows"
    (range(0, n - size + 1, step))."""
    def chunk_words(document_id, text, size, overlap, header=""):
        if not validate(size, overlap):
            raise ValueError(f"overlap must be below size = {size}, got {overlap}")
        words = split(text)
        stride = step(size, overlap)
        if starts == "until-the-end":
            found, start = [], 0
            while True:
                found.append(start)
                if min(start + size, len(words)) == len(words):
                    break
                start += stride
        elif starts == "range":
            found = range(0, max(len(words) - overlap, 1), stride)
        elif starts == "every-step":
            found = range(0, len(words), stride)
        else:
            found = range(0, len(words) - size + 1, stride)
        chunks = []
        for start in found:
            end = min(start + size, len(words)) if clip else start + size
            text_of = join.join(words[start:end])
            chunks.append((document_id, start, end, text_of, header) if as_tuples
                          else Chunk(document_id, start, end, text_of, header if keep_header else ""))
        return chunks
    return chunk_words


@pytest.mark.parametrize("chunk_words, phrase", [
    pytest.param(retrieval.chunk_words, None, id="reference"),
    pytest.param(chunker(), None, id="rewritten"),
    pytest.param(chunker(step=lambda size, overlap: size), "the windows do not overlap", id="step-is-size"),
    pytest.param(chunker(starts="whole-windows"), "words are in no chunk", id="last-window-dropped"),
    pytest.param(chunker(starts="every-step"), "lies wholly inside the one before it", id="window-of-overlap-only"),
    pytest.param(chunker(clip=False), "ends past the last word", id="end-not-clipped"),
    pytest.param(chunker(validate=lambda size, overlap: True), "your loop does not stop", id="no-validation-loops"),
    pytest.param(chunker(starts="range"), None, id="rewritten-with-range"),
    pytest.param(chunker(starts="range", validate=lambda size, overlap: True), "does not name the values",
                 id="no-validation-range-error"),
    pytest.param(chunker(starts="range", validate=lambda size, overlap: overlap != size),
                 "size 5 with overlap 8 is accepted", id="overlap-above-size-accepted"),
    pytest.param(chunker(split=lambda text: text.split(" ")), "split the text on any whitespace", id="split-on-spaces"),
    pytest.param(chunker(join="  "), "joined by single spaces", id="joined-by-two-spaces"),
    pytest.param(chunker(join=""), "should be words[start:end] of text.split()", id="joined-without-spaces"),
    pytest.param(chunker(keep_header=False), "carries the header it was given", id="header-dropped"),
    pytest.param(chunker(as_tuples=True), "each chunk should be a retrieval.Chunk", id="tuples"),
    pytest.param(lambda *args: {c.id: c for c in retrieval.chunk_words(*args)}, "return a list of Chunk objects, got dict",
                 id="dict"),
])
def test_chunk_words_check(chunk_words, phrase):
    expect(lab07.check_chunk_words(chunk_words), phrase)


# --- 07.2: reciprocal-rank fusion ----------------------------------------------------------------------------------


def fusion(first_rank=1, keep=lambda item, seen_in: True, order=lambda pairs: sorted(pairs, key=lambda p: -p[1]),
           fixed_k=None):
    """RRF with replaceable steps: the first rank's number, which items are kept, how the pairs are ordered, and a k that
    overrides the one passed."""
    def reciprocal_rank_fusion(rankings, k=60):
        k = k if fixed_k is None else fixed_k
        scores, seen_in = {}, {}
        for ranking in rankings:
            for rank, item in enumerate(ranking, start=first_rank):
                scores[item] = scores.get(item, 0.0) + 1.0 / (k + rank)
                seen_in[item] = seen_in.get(item, 0) + 1
        return order([(item, score) for item, score in scores.items() if keep(item, seen_in[item])])
    return reciprocal_rank_fusion


@pytest.mark.parametrize("fuse, phrase", [
    pytest.param(retrieval.reciprocal_rank_fusion, None, id="reference"),
    pytest.param(fusion(), None, id="rewritten"),
    pytest.param(fusion(order=lambda pairs: sorted(pairs, key=lambda p: p[1], reverse=True)), None, id="reverse-is-stable"),
    pytest.param(fusion(first_rank=0), "the ranks are counted from 0", id="ranks-from-0"),
    pytest.param(fusion(keep=lambda item, seen_in: seen_in > 1), "an item in only one ranking still scores",
                 id="single-list-items-dropped"),
    pytest.param(fusion(order=lambda pairs: sorted(pairs, key=lambda p: p[1])), "sorted ascending", id="ascending"),
    pytest.param(fusion(fixed_k=60), "the scores are those of k = 60", id="k-ignored"),
    pytest.param(fusion(fixed_k=0), "the scores are those of k = 0", id="no-k"),
    pytest.param(fusion(order=lambda pairs: sorted(pairs, key=lambda p: (-p[1], str(p[0])))),
                 "ties keep the order in which the items were first met", id="ties-by-name"),
    pytest.param(lambda rankings, k=60: dict(retrieval.reciprocal_rank_fusion(rankings, k)),
                 "return a list of (item, score) pairs, got dict", id="dict"),
    pytest.param(lambda rankings, k=60: [item for item, _ in retrieval.reciprocal_rank_fusion(rankings, k)],
                 "return a list of (item, score) pairs, got list of str", id="items-only"),
])
def test_reciprocal_rank_fusion_check(fuse, phrase):
    expect(lab07.check_reciprocal_rank_fusion(fuse), phrase)


# --- 07.3: recall@k and reciprocal ranks -----------------------------------------------------------------------------


def metrics(cut_recall=lambda k: k, cut_ranks=lambda k: k, miss=0.0, first=1, as_count=False, mean=False, numpy_division=False):
    """(recall, reciprocal ranks) with replaceable steps: where each ranking is cut (None: nowhere), what a miss scores,
    the number of the first rank."""
    def recall_and_reciprocal_ranks(rankings, gold, k):
        hits = sum(g in list(ranking)[:cut_recall(k)] for ranking, g in zip(rankings, gold))
        values = []
        for ranking, g in zip(rankings, gold):
            kept = list(ranking)[:cut_ranks(k)]
            if g not in kept:
                values.append(miss if not callable(miss) else miss(k))
            elif numpy_division:
                with np.errstate(divide="ignore"):
                    values.append(float(np.float64(1.0) / np.float64(kept.index(g) + first)))
            else:
                values.append(1 / (kept.index(g) + first))
        values = np.array(values)
        return (hits if as_count else hits / len(gold)), (values.mean() if mean else values)
    return recall_and_reciprocal_ranks


@pytest.mark.parametrize("measure, phrase", [
    pytest.param(lab07.recall_and_reciprocal_ranks, None, id="reference"),
    pytest.param(metrics(), None, id="rewritten"),
    pytest.param(metrics(cut_recall=lambda k: k + 1), "recall is off by one", id="recall-k-plus-one"),
    pytest.param(metrics(cut_recall=lambda k: k - 1), "recall is off by one", id="recall-k-minus-one"),
    pytest.param(metrics(cut_recall=lambda k: None), "recall counts a gold document anywhere in the ranking",
                 id="recall-over-everything"),
    pytest.param(metrics(as_count=True), "a share of the questions", id="recall-a-count"),
    pytest.param(metrics(first=0), "you divide by zero", id="rank-from-0"),
    pytest.param(metrics(first=0, numpy_division=True), "the top document's reciprocal rank is not 1", id="rank-from-0-numpy"),
    pytest.param(metrics(miss=lambda k: 1 / (k + 1)), "scores 1 / (k + 1)", id="miss-as-1-over-k-plus-1"),
    pytest.param(metrics(cut_ranks=lambda k: None), "cut each ranking at k first", id="ranks-not-cut"),
    pytest.param(metrics(cut_ranks=lambda k: k + 1), "cut at 4 documents, not k = 3", id="ranks-cut-off-by-one"),
    pytest.param(metrics(mean=True), "return one reciprocal rank per question", id="mean-only"),
])
def test_recall_and_reciprocal_ranks_check(measure, phrase):
    expect(lab07.check_recall_and_reciprocal_ranks(measure), phrase)


def test_the_rank_from_0_variant_that_scores_the_top_as_0_is_named():
    def top_scores_zero(rankings, gold, k):
        recall, values = lab07.recall_and_reciprocal_ranks(rankings, gold, k)
        for question, (ranking, g) in enumerate(zip(rankings, gold)):
            position = ranking[:k].index(g) if g in ranking[:k] else None
            values[question] = 0.0 if not position else 1 / position
        return recall, values

    expect(lab07.check_recall_and_reciprocal_ranks(top_scores_zero), "the top document's reciprocal rank is not 1")


# --- 07.4: filter before ranking -------------------------------------------------------------------------------------


def ranker(filter_first=True, use_mask=True, keep=lambda score, above: score > above, positions_in_scores=True,
           order=lambda values: np.argsort(-values, kind="stable")):
    """rank with replaceable steps: filter before or after the top k, the threshold's comparison, how values are ordered."""
    def rank(scores, k, allowed=None, above=-np.inf):
        scores = np.asarray(scores, dtype=float)
        mask = np.ones(len(scores), dtype=bool) if allowed is None or not use_mask else np.asarray(allowed, dtype=bool)
        mask = mask & keep(scores, above)
        if not filter_first:
            top = order(scores)[:k]
            return top[mask[top]]
        candidates = np.flatnonzero(mask)
        best = order(scores[candidates])[:k]
        return candidates[best] if positions_in_scores else best
    return rank


@pytest.mark.parametrize("rank, phrase", [
    pytest.param(retrieval.rank, None, id="reference"),
    pytest.param(ranker(), None, id="rewritten"),
    pytest.param(ranker(filter_first=False), "the mask is applied after taking the top k", id="filtered-after-top-k"),
    pytest.param(ranker(use_mask=False), "are not allowed for this user, yet returned", id="mask-ignored"),
    pytest.param(ranker(keep=lambda score, above: score >= above), "only scores strictly more than above count",
                 id="at-threshold-kept"),
    pytest.param(ranker(keep=lambda score, above: np.ones(len(score), dtype=bool)), "more than above",
                 id="threshold-ignored"),
    pytest.param(ranker(positions_in_scores=False), "positions among the allowed documents", id="positions-among-allowed"),
    pytest.param(ranker(order=lambda values: np.argsort(values, kind="stable")), "the k lowest scores in ascending order",
                 id="ascending"),
    pytest.param(ranker(order=lambda values: np.argsort(values, kind="stable")[::-1]), "among equal scores the lower position",
                 id="ties-reversed"),
    pytest.param(lambda scores, k, allowed=None, above=-np.inf: retrieval.rank(scores, k + 1, allowed, above),
                 "expected", id="k-plus-one"),
    pytest.param(lambda scores, k, allowed=None, above=-np.inf: np.isin(np.arange(len(scores)),
                                                                          retrieval.rank(scores, k, allowed, above)),
                 "return the positions of the documents", id="boolean-mask"),
])
def test_rank_check(rank, phrase):
    expect(lab07.check_rank(rank), phrase)


# --- the grader's hidden variants ------------------------------------------------------------------------------------

EXERCISES = sorted(lab07.CHECKS)


def memoriser(exercise: str):
    """Records the reference's answers to the self-check's exact inputs and replays them: passes the self-check, and must
    fail the hidden variants, whose inputs differ."""
    _, reference = lab07.REFERENCES[exercise]
    answers = {}

    def key(args):
        return tuple(repr(a.tolist()) if isinstance(a, np.ndarray) else repr(a) for a in args)

    def record(*args):
        try:
            answers[key(args)] = ("value", reference(*args))
        except ValueError as error:
            answers[key(args)] = ("error", error)
        return replay(*args)

    def replay(*args):
        kind, answer = answers[key(args)]
        if kind == "error":
            raise answer
        return answer

    assert lab07.CHECKS[exercise](record), "recording the reference passes the self-check"
    return replay


@pytest.mark.parametrize("exercise", EXERCISES)
def test_hidden_variants_use_other_inputs(exercise):
    replay = memoriser(exercise)
    check = lab07.CHECKS[exercise]
    assert check(replay), "replaying the recorded answers passes the self-check"
    for number in (1, 2):
        with variant(number):
            result = check(replay)
        assert not result and "KeyError" in result.message, result


@pytest.mark.parametrize("exercise", EXERCISES)
def test_the_reference_passes_hidden_variants(exercise):
    _, reference = lab07.REFERENCES[exercise]
    for number in (1, 2, 3, 7):
        with variant(number):
            result = lab07.CHECKS[exercise](reference)
        assert result, (number, result)


def test_every_exercise_has_a_check_a_reference_and_points():
    assert list(lab07.EXERCISES) == list(lab07.CHECKS) == list(lab07.REFERENCES)
    assert all(points in (1, 2, 3) for _, points in lab07.EXERCISES.values())


# --- 07.5: token F1 --------------------------------------------------------------------------------------------------

PUNCTUATION = set(string.punctuation)


def normalise_with(lower=True, punctuation="remove", articles=True):
    def normalise(text):
        text = text.lower() if lower else text
        if punctuation == "remove":
            text = "".join(ch for ch in text if ch not in PUNCTUATION)
        elif punctuation == "space":
            text = "".join(" " if ch in PUNCTUATION else ch for ch in text)
        if articles:
            text = " ".join(word for word in text.split() if word not in {"a", "an", "the"})
        return text.split()
    return normalise


def f1_with(normalise=normalise_with(), shared=lambda p, r: sum((Counter(p) & Counter(r)).values()),
            combine=lambda precision, recall: 2 * precision * recall / (precision + recall), empty_first=True,
            raw_empty=False, both_empty=1.0, guard_no_overlap=True):
    """Token F1 with replaceable steps."""
    def token_f1(prediction, reference):
        if raw_empty and (not prediction or not reference):
            return float(prediction == reference)
        predicted, expected = normalise(prediction), normalise(reference)
        if empty_first and (not predicted or not expected):
            return both_empty if not predicted and not expected else 0.0
        common = shared(predicted, expected)
        if guard_no_overlap and common == 0:
            return 0.0
        return combine(common / len(predicted), common / len(expected))
    return token_f1


def f1_dividing_by_an_empty_side(prediction, reference):
    """Guards against no overlap between two non-empty texts only, so an empty side reaches the division."""
    predicted, expected = normalise_with()(prediction), normalise_with()(reference)
    common = sum((Counter(predicted) & Counter(expected)).values())
    if common == 0 and predicted and expected:
        return 0.0
    precision, recall = common / len(predicted), common / len(expected)
    return 2 * precision * recall / (precision + recall)


@pytest.mark.parametrize("token_f1, phrase", [
    pytest.param(rag.token_f1, None, id="reference"),
    pytest.param(f1_with(), None, id="rewritten"),
    pytest.param(f1_with(normalise=str.split), "no normalisation", id="no-normalisation"),
    pytest.param(f1_with(normalise=normalise_with(lower=False)), "not lower-cased", id="case-kept"),
    pytest.param(f1_with(normalise=normalise_with(punctuation="keep")), "punctuation is kept", id="punctuation-kept"),
    pytest.param(f1_with(normalise=normalise_with(punctuation="space")), "punctuation is replaced by a space",
                 id="punctuation-to-space"),
    pytest.param(f1_with(normalise=normalise_with(articles=False)), "the articles are kept", id="articles-kept"),
    pytest.param(f1_with(shared=lambda p, r: len(set(p) & set(r))), "counted as a set", id="set-not-bag"),
    pytest.param(f1_with(shared=lambda p, r: sum(token in r for token in p)), "counted as shared every time",
                 id="repeats-counted-each-time"),
    pytest.param(f1_with(combine=lambda precision, recall: (precision + recall) / 2), "harmonic mean",
                 id="arithmetic-mean"),
    pytest.param(f1_with(raw_empty=True), "emptiness is judged before normalising", id="empty-before-normalising"),
    pytest.param(f1_with(both_empty=0.0), "two empty answers score 0", id="both-empty-zero"),
    pytest.param(f1_dividing_by_an_empty_side, "when a side normalises to nothing, return before dividing",
                 id="empty-divides-by-zero"),
    pytest.param(f1_with(guard_no_overlap=False), "with no shared token precision and recall are 0",
                 id="no-overlap-divides-by-zero"),
    pytest.param(lambda prediction, reference: (rag.token_f1(prediction, reference), 1.0), "return one number",
                 id="tuple"),
])
def test_token_f1_check(token_f1, phrase):
    expect(lab07.check_token_f1(token_f1), phrase)


# --- 07.6: citation precision --------------------------------------------------------------------------------------


def precision_with(distinct=set, none=0.0, divide_by_relevant=False):
    def citation_precision(cited, relevant):
        if not cited and none is not None:
            return none
        kept = distinct(cited)
        found = sum(document in set(relevant) for document in kept)
        return found / (len(set(relevant)) if divide_by_relevant else len(kept))
    return citation_precision


@pytest.mark.parametrize("citation_precision, phrase", [
    pytest.param(rag.citation_precision, None, id="reference"),
    pytest.param(precision_with(), None, id="rewritten"),
    pytest.param(precision_with(distinct=list), "a document cited twice counts once", id="duplicates-counted"),
    pytest.param(lambda cited, relevant: len(set(cited) & set(relevant)) / len(cited) if cited else 0.0,
                 "a document cited twice counts once", id="duplicates-in-the-denominator"),
    pytest.param(precision_with(none=1.0), "an answer that cites nothing gets 0.0, not 1.0", id="nothing-cited-is-1"),
    pytest.param(precision_with(none=None), "you divide by zero", id="nothing-cited-divides-by-zero"),
    pytest.param(precision_with(divide_by_relevant=True), "this is recall", id="recall"),
    pytest.param(lambda cited, relevant: f"{rag.citation_precision(cited, relevant):.2f}", "return one number",
                 id="string"),
])
def test_citation_precision_check(citation_precision, phrase):
    expect(lab07.check_citation_precision(citation_precision), phrase)


# --- 07.7: the token mask of one constrained-decoding step -----------------------------------------------------------


def masker(allowed=lambda prefix, token, valid: bool(token) and valid(prefix + token),
           end_rule=lambda prefix, end_text, valid, complete: complete(prefix), stop_when_complete=False):
    """token_mask with replaceable rules for an ordinary token and for the end token."""
    def token_mask(prefix, vocabulary, is_valid_prefix, is_complete, end_token):
        mask = np.zeros(len(vocabulary), dtype=bool)
        for index, token in enumerate(vocabulary):
            if index != end_token and not (stop_when_complete and is_complete(prefix)):
                mask[index] = allowed(prefix, token, is_valid_prefix)
        mask[end_token] = end_rule(prefix, vocabulary[end_token], is_valid_prefix, is_complete)
        return mask
    return token_mask


@pytest.mark.parametrize("token_mask, phrase", [
    pytest.param(structured.token_mask, None, id="reference"),
    pytest.param(masker(), None, id="rewritten"),
    pytest.param(lambda prefix, vocabulary, valid, complete, end: [bool(masker()(prefix, vocabulary, valid, complete, end)[i])
                                                                   for i in range(len(vocabulary))], None, id="list-of-bools"),
    pytest.param(masker(allowed=lambda prefix, token, valid: valid(prefix + token[:1])), "only their first character fits",
                 id="first-character-only"),
    pytest.param(masker(end_rule=lambda prefix, end_text, valid, complete: True), "the end token is always allowed",
                 id="end-always-allowed"),
    pytest.param(masker(end_rule=lambda prefix, end_text, valid, complete: valid(prefix)), "which is not complete yet",
                 id="end-before-complete"),
    pytest.param(masker(end_rule=lambda prefix, end_text, valid, complete: valid(prefix + end_text)),
                 "which is complete, so decoding could never stop", id="end-as-text"),
    pytest.param(masker(allowed=lambda prefix, token, valid: valid(prefix + token)), "the empty token '' is allowed",
                 id="empty-token-allowed"),
    pytest.param(masker(stop_when_complete=True), "a token may be allowed even when the prefix is already complete",
                 id="nothing-after-complete"),
    pytest.param(lambda *args: np.flatnonzero(structured.token_mask(*args)), "return a NumPy array of booleans",
                 id="indices"),
    pytest.param(lambda *args: structured.token_mask(*args)[:-1], "one bool per token of the vocabulary", id="short"),
])
def test_token_mask_check(token_mask, phrase):
    expect(lab07.check_token_mask(token_mask), phrase)
