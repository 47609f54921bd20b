"""Self-checks of Lab 7 (building on a model): chunking with overlap, reciprocal-rank fusion, recall@k and reciprocal
ranks, filtering before ranking, token F1, citation precision, and the token mask of one constrained-decoding step.

Each check compares the learner's function with the course's one implementation in llmlab (retrieval, rag,
structured) on cases built so that every classic mistake changes the answer, and names the mistake when the
learner's answer is the one that mistake gives.
"""

from __future__ import annotations

import math
import re
import string
from collections import Counter
from collections.abc import Callable, Sequence

import numpy as np

from llmlab import rag, retrieval, structured
from llmlab.checks.core import (
    LearnerCodeError,
    Mismatch,
    grown,
    lab_shortcuts,
    seeded_numpy,
    seeded_python,
    self_check,
)
from llmlab.checks.remote import lend

_PUNCTUATION = frozenset(string.punctuation)

_WORDS = ("the", "river", "flows", "north", "past", "old", "mills", "and", "bridges", "into", "a", "wide", "bay",
          "where", "ships", "wait", "for", "tide", "of", "spring")


# --- 07.1: chunking with overlap ---------------------------------------------------------------------------------


class _Runaway(Exception):
    """Raised by the words of a guarded text when the learner's loop has touched them far more often than it needs."""


class _GuardedWords(list):
    """A text's words that count how often they are read, so that a loop that never ends fails instead of hanging."""

    def __init__(self, words, budget: int):
        super().__init__(words)
        self.reads_left = budget

    def _read(self):
        self.reads_left -= 1
        if self.reads_left < 0:
            raise _Runaway

    def __getitem__(self, index):
        self._read()
        return super().__getitem__(index)

    def __len__(self):
        self._read()
        return super().__len__()


class _GuardedText(str):
    """A text whose ``split()`` gives guarded words (in the notebook; over the grader's wire it travels as a plain str,
    and the grader's time limit stops a loop that never ends)."""

    def split(self, *args, **kwargs):
        words = str.split(self, *args, **kwargs)
        return _GuardedWords(words, budget=100 * (len(words) + 10))


def _text_of(words: list[str], generator) -> str:
    """The words joined by whitespace that is sometimes more than one space (a newline, a double space, a tab)."""
    gaps = [generator.choice([" ", " ", " ", "  ", "\n", "\t "]) for _ in words]
    return "".join(word + gap for word, gap in zip(words, gaps)).strip()


def _chunk_fields(chunks, what: str) -> list[tuple]:
    """(document_id, start, end, text, header) of each chunk the learner returned."""
    if not isinstance(chunks, (list, tuple)):
        raise Mismatch(f"return a list of Chunk objects, got {type(chunks).__name__}")
    fields = []
    for chunk in chunks:
        try:
            fields.append(tuple(getattr(chunk, name) for name in ("document_id", "start", "end", "text", "header")))
        except AttributeError:
            raise Mismatch(f"each chunk should be a retrieval.Chunk(document_id, start, end, text, header), "
                           f"got {type(chunk).__name__} for {what}") from None
    return fields


def _diagnose_windows(spans: list[tuple[int, int]], expected: list[tuple[int, int]], n: int, size: int,
                      overlap: int) -> None:
    what = f"{n} words, size {size}, overlap {overlap}"
    last_end = max((end for _, end in spans), default=0)
    if last_end < n:
        raise Mismatch(f"for {what} the last {n - last_end} words are in no chunk: keep adding windows until one "
                       "ends at the last word (that last window may be shorter than size)")
    past = [(start, end) for start, end in spans if end > n]
    if past:
        raise Mismatch(f"for {what} the window {past[0][0]}-{past[0][1]} ends past the last word: end is one past a "
                       "window's last word, so end = min(start + size, number of words)")
    starts = [start for start, _ in spans]
    if overlap > 0 and len(starts) > 1 and all(b - a == size for a, b in zip(starts, starts[1:])):
        raise Mismatch(f"for {what} the windows do not overlap: each window starts size - overlap = {size - overlap} "
                       f"words after the one before, not size = {size}")
    for (start_before, end_before), (start, end) in zip(spans, spans[1:]):
        if start_before <= start and end <= end_before:
            raise Mismatch(f"for {what} the window of words {start}-{end} lies wholly inside the one before it "
                           f"({start_before}-{end_before}): it only repeats the overlap; stop as soon as a window "
                           "reaches the last word")
    raise Mismatch(f"for {what}: windows (start, end) {spans[:6]}{' …' if len(spans) > 6 else ''}, "
                   f"expected {expected[:6]}{' …' if len(expected) > 6 else ''}")


def _expect_value_error(call, size: int, overlap: int) -> None:
    words = list(_WORDS)
    try:
        got = call("doc", _GuardedText(" ".join(words)), size, overlap)
    except LearnerCodeError as error:
        if isinstance(error.original, _Runaway):
            raise Mismatch(f"with size {size} and overlap {overlap} the window never moves forward and your loop does "
                           "not stop: overlap must be smaller than size, so raise ValueError first") from None
        if not isinstance(error.original, ValueError):
            raise
        if str(overlap) not in str(error.original):
            raise Mismatch(f"with size {size} and overlap {overlap} you raise ValueError, but its message "
                           f"({str(error.original)[:80]!r}) does not name the values: say which overlap was given "
                           "and what it must be below") from None
        return
    returned = f"{len(got)} chunks" if isinstance(got, (list, tuple)) else type(got).__name__
    raise Mismatch(f"size {size} with overlap {overlap} is accepted (you returned {returned}): overlap must be "
                   "smaller than size, raise ValueError naming the values")


@self_check("07.1")
def check_chunk_words(call) -> str:
    """fn(document_id, text, size, overlap, header="") -> [Chunk, ...]: windows of size words, size - overlap apart."""
    generator = seeded_python(71)
    # (words, size, overlap): each classic mistake changes the windows of at least one of these
    cases = [(23, 8, 3), (25, 8, 3), (21, 6, 2), (30, 10, 0), (5, 8, 3), (8, 8, 3), (17, 4, 3), (1, 3, 1)]
    for _ in range(6):
        size = generator.randint(2, 12)
        cases.append((generator.randint(1, 60), size, generator.randint(0, size - 1)))
    cases = [(n + grown(0)[0] * (1 + index % 3), size, overlap) for index, (n, size, overlap) in enumerate(cases)]
    for index, (n, size, overlap) in enumerate(cases):
        words = [generator.choice(_WORDS) + (str(position) if generator.random() < 0.3 else "") for position in range(n)]
        text = _text_of(words, generator)
        document_id, header = f"doc-{index}", "River guide" if index % 2 else ""
        try:
            chunks = call(document_id, _GuardedText(text), size, overlap, header)
        except LearnerCodeError as error:
            if isinstance(error.original, _Runaway):
                raise Mismatch(f"for {n} words, size {size}, overlap {overlap} your loop does not stop: "
                               "move each window size - overlap words on, and stop once one ends at the last word") from None
            raise
        got = _chunk_fields(chunks, f"{n} words")
        expected = [(c.document_id, c.start, c.end, c.text, c.header)
                    for c in retrieval.chunk_words(document_id, text, size, overlap, header)]
        if got == expected:
            continue
        spans, expected_spans = [(g[1], g[2]) for g in got], [(e[1], e[2]) for e in expected]
        if spans != expected_spans:
            on_spaces = len(text.split(" "))
            if on_spaces != n and spans == [(c.start, c.end) for c in
                                            retrieval.chunk_words("", " ".join(["w"] * on_spaces), size, overlap)]:
                raise Mismatch("split the text on any whitespace, text.split(): text.split(' ') keeps newlines, tabs "
                               "and the empty strings between two spaces as words")
            _diagnose_windows(spans, expected_spans, n, size, overlap)
        for mine, right in zip(got, expected):
            if mine[0] != right[0]:
                raise Mismatch(f"every chunk keeps its document's id: got {mine[0]!r}, expected {right[0]!r}")
            if mine[4] != right[4]:
                raise Mismatch(f"every chunk carries the header it was given: got {mine[4]!r}, expected {right[4]!r}")
            if mine[3] != right[3]:
                if isinstance(mine[3], str) and mine[3].split() == right[3].split():
                    raise Mismatch(f"a chunk's text is its words joined by single spaces, ' '.join(words[start:end]): "
                                   f"got {mine[3][:40]!r}")
                raise Mismatch(f"the text of the chunk of words {right[1]}-{right[2]} should be words[start:end] of "
                               f"text.split() (split on any whitespace), joined by spaces: got {str(mine[3])[:40]!r}, "
                               f"expected {right[3][:40]!r}")
    _expect_value_error(call, 6, 6)
    _expect_value_error(call, 5, 8)
    return (f"windows, offsets and texts right on {len(cases)} documents (short ones, exact fits, no overlap), "
            "and overlap >= size refused")


# --- 07.2: reciprocal-rank fusion ----------------------------------------------------------------------------------


def _fused(rankings: Sequence[Sequence], score: Callable[[int], float]) -> dict:
    """{item: sum over rankings of score(its rank from 1)}, in first-met order."""
    fused: dict = {}
    for ranking in rankings:
        for position, item in enumerate(ranking, start=1):
            fused[item] = fused.get(item, 0.0) + score(position)
    return fused


def _same_scores(got: dict, expected: dict) -> bool:
    return set(got) == set(expected) and all(math.isclose(got[item], expected[item], rel_tol=1e-9, abs_tol=1e-15)
                                             for item in expected)


def _rrf_cases() -> list[tuple[list[list], int | None]]:
    """(rankings, k or None for the default) with exact ties, items in one ranking only, and other values of k."""
    generator = seeded_python(72)
    cases: list[tuple[list[list], int | None]] = [
        ([["doc-9", "doc-3", "doc-5"], ["doc-3", "doc-7"]], None),
        ([["doc-8", "doc-2"], ["doc-2", "doc-8"], ["doc-4"]], None),        # doc-8 and doc-2 tie exactly
        ([["d5", "d1"], ["d4", "d0"]], 5),                                   # d5 ties d4, d1 ties d0: first met first
        ([[3, 1, 4], [1, 5, 9, 2, 6], [5, 3]], 1),
        ([["a", "b", "c"], ["c", "b", "a"]], 0),
    ]
    for extra in grown(0, 0, 0):
        pool = [f"p{number}" for number in range(12 + extra)]
        rankings = []
        for _ in range(generator.randint(2, 4)):
            generator.shuffle(pool)
            rankings.append(list(pool[:generator.randint(1, 8 + extra)]))
        cases.append((rankings, generator.choice([None, 2, 10, 60])))
    return cases


@self_check("07.2")
def check_reciprocal_rank_fusion(call) -> str:
    """fn(rankings, k=60) -> [(item, fused score), ...], highest first, ties in the order items were first met."""
    cases = _rrf_cases()
    for rankings, k in cases:
        got = call([list(r) for r in rankings]) if k is None else call([list(r) for r in rankings], k)
        k = retrieval.RRF_K if k is None else k
        expected = retrieval.reciprocal_rank_fusion(rankings, k)
        if not isinstance(got, (list, tuple)) or not all(isinstance(p, (list, tuple)) and len(p) == 2 for p in got):
            raise Mismatch(f"return a list of (item, score) pairs, got {type(got).__name__}"
                           + (f" of {type(got[0]).__name__}" if isinstance(got, (list, tuple)) and got else ""))
        try:
            pairs = [(item, float(score)) for item, score in got]
        except (TypeError, ValueError):
            raise Mismatch("each pair is (item, fused score), the score one number") from None
        if pairs == expected or ([item for item, _ in pairs] == [item for item, _ in expected]
                                 and _same_scores(dict(pairs), dict(expected))):
            continue
        what = f"rankings {rankings} with k = {k}"
        mine, right = dict(pairs), dict(expected)
        if len(mine) != len(pairs):
            raise Mismatch(f"for {what} an item is listed more than once: sum its scores into one entry")
        if set(mine) < set(right):
            missing = [item for item in right if item not in mine]
            raise Mismatch(f"for {what} {missing} are missing: an item in only one ranking still scores "
                           "1 / (k + rank) from that one (a missing ranking adds 0, it does not drop the item)")
        if set(mine) != set(right):
            raise Mismatch(f"for {what} the items are {sorted(mine, key=str)}, expected {sorted(right, key=str)}")
        if not _same_scores(mine, right):
            if k > 0 and _same_scores(mine, _fused(rankings, lambda rank: 1 / (k + rank - 1))):
                raise Mismatch(f"for {what} the ranks are counted from 0: the top item's rank is 1, "
                               f"so it adds 1 / (k + 1) = 1/{k + 1}")
            for ignored in {retrieval.RRF_K, 0} - {k}:
                if _same_scores(mine, _fused(rankings, lambda rank: 1 / (ignored + rank))):
                    raise Mismatch(f"for {what} the scores are those of k = {ignored}"
                                   f"{' (1 / rank alone)' if ignored == 0 else ''}: use the k passed in, 1 / (k + rank)")
            item = next(item for item in right if not math.isclose(mine[item], right[item], rel_tol=1e-9))
            raise Mismatch(f"for {what} item {item!r} scores {mine[item]:.6f}, expected {right[item]:.6f} "
                           "(the sum over rankings of 1 / (k + rank), rank 1 first)")
        order = [item for item, _ in pairs]
        scores = [right[item] for item in order]
        if len(set(scores)) > 1 and all(a <= b for a, b in zip(scores, scores[1:])):
            raise Mismatch(f"for {what} the list is sorted ascending: put the highest fused score first")
        if all(a >= b - 1e-15 for a, b in zip(scores, scores[1:])):
            raise Mismatch(f"for {what} tied items are in the order {order}, expected {[i for i, _ in expected]}: "
                           "ties keep the order in which the items were first met (first ranking first, top down); "
                           "Python's sorted() is stable, so sort by the score alone")
        raise Mismatch(f"for {what} the order is {order}, expected {[item for item, _ in expected]} "
                       "(highest fused score first)")
    return f"fused scores and order right on {len(cases)} cases: items in one ranking only, exact ties, several k"


# --- 07.3: recall@k and reciprocal ranks -----------------------------------------------------------------------------


def recall_and_reciprocal_ranks(rankings: Sequence[Sequence[str]], gold: Sequence[str], k: int):
    """recall@k (the share of questions whose gold document is in the first ``k`` of its ranking) and the reciprocal rank
    of each question within those ``k`` (0 for a miss): what Exercise 07.3 asks for, from llmlab.retrieval."""
    return retrieval.recall_at_k(rankings, gold, k).value, retrieval.reciprocal_ranks(rankings, gold, k)


def _metric_cases() -> list[tuple[list[list[str]], list[str], int]]:
    """Questions whose gold document is at rank 1, k, k + 1, later, or absent (also from a ranking shorter than k)."""
    generator = seeded_numpy(73)
    cases = []
    for k, questions in zip((3, 5, 1), grown(9, 14, 6)):
        pool = [f"doc-{number}" for number in range(4 * k + 12)]
        rankings, gold = [], []
        for question in range(questions):
            length = int(generator.integers(1, 3 * k + 3)) if question >= 5 else 3 * k + 2
            ranking = [str(item) for item in generator.permutation(pool)[:length]]
            # the first five questions: gold at rank 1, k, k + 1, 2k + 1, and nowhere
            rank = (1, k, k + 1, 2 * k + 1, None)[question] if question < 5 else \
                (int(generator.integers(1, length + 1)) if generator.random() < 0.7 else None)
            if rank is None:
                gold.append(next(item for item in pool if item not in ranking))
            else:
                gold.append(ranking[rank - 1])
            rankings.append(ranking)
        cases.append((rankings, gold, k))
    return cases


def _reciprocal_ranks_with(rankings, gold, score: Callable[[int | None], float], cut: int | None) -> np.ndarray:
    """score(0-based position of the gold document within ranking[:cut], or None) for each question."""
    values = []
    for ranking, g in zip(rankings, gold):
        kept = ranking[:cut]
        values.append(score(kept.index(g) if g in kept else None))
    return np.array(values, dtype=np.float64)


def _diagnose_recall(recall: float, expected: float, rankings, gold, k: int) -> None:
    def share(cut: int | None) -> float:
        return float(np.mean([g in ranking[:cut] for ranking, g in zip(rankings, gold)]))

    if math.isclose(recall, share(k) * len(gold), rel_tol=1e-9) and len(gold) > 1:
        raise Mismatch(f"with k = {k} recall@k is a share of the questions (between 0 and 1), not a count: divide by "
                       "the number of questions")
    if math.isclose(recall, share(None), rel_tol=1e-9):
        raise Mismatch(f"with k = {k} recall counts a gold document anywhere in the ranking: recall@k counts it only "
                       "among the first k, ranking[:k]")
    if math.isclose(recall, share(k + 1), rel_tol=1e-9) or (k > 1 and math.isclose(recall, share(k - 1), rel_tol=1e-9)):
        raise Mismatch(f"with k = {k} recall is off by one: the first k documents are ranking[:k], so a gold document "
                       "at rank k counts and one at rank k + 1 does not")
    raise Mismatch(f"with k = {k} recall@k is {expected:.4f}, you returned {recall:.4f}")


def _diagnose_reciprocal_ranks(values: np.ndarray, expected: np.ndarray, rankings, gold, k: int) -> None:
    def same(candidate: np.ndarray) -> bool:
        return np.allclose(values, candidate, rtol=1e-9, atol=1e-12)

    if not np.isfinite(values).all() or same(_reciprocal_ranks_with(rankings, gold, lambda p: 0.0 if p is None else
                                                                     (1 / p if p else 0.0), k)):
        raise Mismatch(f"with k = {k} the top document's reciprocal rank is not 1: ranks start at 1, so a 0-based "
                       "position p has reciprocal rank 1 / (p + 1)")
    if same(_reciprocal_ranks_with(rankings, gold, lambda p: 1 / (k + 1) if p is None else 1 / (p + 1), k)):
        raise Mismatch(f"with k = {k} a question whose gold document is not in the first k scores 1 / (k + 1) = "
                       f"{1 / (k + 1):.4f}: a miss scores 0")
    if same(_reciprocal_ranks_with(rankings, gold, lambda p: 0.0 if p is None else 1 / (p + 1), None)):
        raise Mismatch(f"with k = {k} a gold document after rank k still scores 1 / rank: cut each ranking at k first "
                       "(a gold document after rank k is a miss and scores 0)")
    for cut in (k + 1, k - 1):
        if cut >= 1 and same(_reciprocal_ranks_with(rankings, gold, lambda p: 0.0 if p is None else 1 / (p + 1), cut)):
            raise Mismatch(f"with k = {k} the reciprocal ranks are cut at {cut} documents, not k = {k}: an off-by-one "
                           "(keep ranking[:k])")
    worst = int(np.abs(values - expected).argmax())
    raise Mismatch(f"with k = {k} question {worst} (gold {gold[worst]!r}): reciprocal rank {values[worst]:.4f}, "
                   f"expected {expected[worst]:.4f}")


@self_check("07.3")
def check_recall_and_reciprocal_ranks(call) -> str:
    """fn(rankings, gold, k) -> (recall@k as a share, the reciprocal rank within the first k of each question)."""
    cases = _metric_cases()
    for rankings, gold, k in cases:
        try:
            got = call([list(r) for r in rankings], list(gold), k)
        except LearnerCodeError as error:
            if isinstance(error.original, ZeroDivisionError):
                raise Mismatch(f"with k = {k} you divide by zero: ranks start at 1, so a 0-based position p has "
                               "reciprocal rank 1 / (p + 1)") from None
            raise
        if not isinstance(got, (list, tuple)) or len(got) != 2:
            raise Mismatch(f"return two things, (recall, reciprocal_ranks), got {type(got).__name__}")
        recall, values = got
        expected_recall, expected_values = recall_and_reciprocal_ranks(rankings, gold, k)
        try:
            recall = float(np.asarray(recall, dtype=np.float64).reshape(()))
        except (TypeError, ValueError):
            raise Mismatch(f"recall should be one number (a share of the questions), got {type(recall).__name__}") from None
        try:
            values = np.asarray(values, dtype=np.float64).reshape(-1)
        except (TypeError, ValueError):
            raise Mismatch(f"the reciprocal ranks should be numbers, one per question, got {type(values).__name__}") from None
        if len(values) != len(gold):
            raise Mismatch(f"return one reciprocal rank per question ({len(gold)}), got {len(values)}: the mean (MRR) "
                           "comes later, with its interval")
        if not math.isclose(recall, expected_recall, rel_tol=1e-9, abs_tol=1e-12):
            _diagnose_recall(recall, expected_recall, rankings, gold, k)
        if not np.allclose(values, expected_values, rtol=1e-9, atol=1e-12):
            _diagnose_reciprocal_ranks(values, expected_values, rankings, gold, k)
    return (f"recall@k and reciprocal ranks right on {len(cases)} sets of questions (gold at rank 1, k, k + 1, "
            "later, or missing)")


# --- 07.4: filter before ranking -------------------------------------------------------------------------------------


def _rank_cases() -> list[tuple[np.ndarray, int, np.ndarray | None, float]]:
    """(scores, k, allowed, above): a user whose documents all rank low, no mask, BM25-like zeros with above = 0, a user
    with fewer documents than k, and random ones; scores rounded so that ties are common."""
    generator = seeded_numpy(74)
    cases = []
    n = grown(30)[0]
    scores = np.round(generator.uniform(0, 1, n), 1)
    low = np.zeros(n, dtype=bool)
    low[np.argsort(scores, kind="stable")[:8]] = True          # the 8 lowest-scoring documents: filtered after, none left
    cases.append((scores, 5, low, -np.inf))
    cases.append((np.round(generator.uniform(0, 1, n), 1), 6, None, -np.inf))
    lexical = np.where(generator.uniform(0, 1, n) < 0.6, 0.0, np.round(generator.uniform(0, 3, n), 1))
    half = generator.uniform(0, 1, n) < 0.5
    cases.append((lexical, int(max(2, (half & (lexical > 0)).sum() + 2)), half, 0.0))   # more k than positive scores
    few = np.zeros(n, dtype=bool)
    few[generator.choice(n, 3, replace=False)] = True
    cases.append((np.round(generator.normal(0, 1, n), 1), 5, few, -np.inf))
    for size in grown(20, 41):
        allowed = generator.uniform(0, 1, size) < generator.uniform(0.2, 0.8)
        cases.append((np.round(generator.normal(0, 1, size), 1), int(generator.integers(3, 9)), allowed,
                      float(np.round(generator.normal(-0.5, 0.3), 1))))
    return cases


@self_check("07.4")
def check_rank(call) -> str:
    """fn(scores, k, allowed, above) -> positions of the k best allowed documents scoring more than above, best first."""
    cases = _rank_cases()
    for scores, k, allowed, above in cases:
        got = call(scores.copy(), k, None if allowed is None else allowed.copy(), above)
        try:
            positions = np.asarray(got).reshape(-1)
        except (TypeError, ValueError):
            positions = None
        if positions is None or (len(positions) and positions.dtype.kind not in "iu"):
            raise Mismatch(f"return the positions of the documents (integers into scores), got {type(got).__name__}"
                           + (f" of {positions.dtype}" if positions is not None else ""))
        positions = positions.astype(np.int64)
        expected = retrieval.rank(scores, k, allowed, above)
        if np.array_equal(positions, expected):
            continue
        mask = np.ones(len(scores), dtype=bool) if allowed is None else allowed
        user = (f"{int(mask.sum())} allowed of {len(scores)} documents, k = {k}"
                + (f", above = {above}" if np.isfinite(above) else ""))
        if ((positions < 0) | (positions >= len(scores))).any():
            raise Mismatch(f"{user}: positions should index scores (0 to {len(scores) - 1}), got {positions.tolist()}")
        for candidates in (np.flatnonzero(mask), np.flatnonzero(mask & (scores > above))):
            if len(positions) and positions.max() < len(candidates) and np.array_equal(candidates[positions], expected):
                raise Mismatch(f"{user}: these are positions among the allowed documents, not in scores: map them "
                               "back (np.flatnonzero(allowed)[...]) so that they name the documents")
        forbidden = [int(p) for p in positions if not mask[p]]
        if forbidden:
            raise Mismatch(f"{user}: documents {forbidden[:5]} are not allowed for this user, yet returned: "
                           "drop every document the mask forbids before ranking")
        at_or_below = [int(p) for p in positions if scores[p] <= above]
        if at_or_below:
            if all(scores[p] == above for p in at_or_below):
                raise Mismatch(f"{user}: documents {at_or_below[:5]} score exactly {above}: only scores strictly "
                               "more than above count (> not >=; for BM25, 0 means no word in common)")
            raise Mismatch(f"{user}: documents {at_or_below[:5]} score at most above = {above}: keep only "
                           "documents scoring more than above")
        kth_best_of_all = np.sort(scores)[::-1][min(k, len(scores)) - 1]
        kept = mask & (scores > above)
        surely, perhaps = int((kept & (scores > kth_best_of_all)).sum()), int((kept & (scores >= kth_best_of_all)).sum())
        if allowed is not None and len(positions) < len(expected) and surely <= len(positions) <= perhaps \
                and (scores[positions] >= kth_best_of_all).all():
            raise Mismatch(f"{user}: you returned {len(positions)} documents, expected {len(expected)}: the mask is "
                           "applied after taking the top k of all documents; filter first, then take the top k "
                           "(a user whose documents rank low would otherwise get few results, or none)")
        if np.array_equal(np.sort(scores[positions]), np.sort(scores[expected])):
            if len(set(scores[expected])) > 1 and (np.diff(scores[positions]) >= 0).all():
                raise Mismatch(f"{user}: the positions are in ascending order of score: best first")
            if (np.diff(scores[positions]) <= 0).all():
                raise Mismatch(f"{user}: tied scores give {positions.tolist()}, expected {expected.tolist()}: among "
                               "equal scores the lower position comes first, at the k-th place too (use a stable "
                               "sort, e.g. np.argsort(-scores, kind='stable'))")
        kept_positions = np.flatnonzero(kept)
        lowest = kept_positions[np.argsort(scores[kept_positions], kind="stable")[:k]]
        if len(set(scores[kept_positions])) > 1 and np.array_equal(np.sort(scores[positions]), np.sort(scores[lowest])) \
                and (np.diff(scores[positions]) >= 0).all():
            raise Mismatch(f"{user}: these are the k lowest scores in ascending order: sort descending, best first")
        if len(positions) > len(expected):
            raise Mismatch(f"{user}: you returned {len(positions)} documents, expected {len(expected)} "
                           "(at most k, only allowed ones scoring more than above)")
        raise Mismatch(f"{user}: got {positions.tolist()}, expected {expected.tolist()} (the k highest scores "
                       "among the allowed documents, best first)")
    return (f"right on {len(cases)} users: one whose documents all rank low, no mask, scores at the threshold, "
            "fewer documents than k, ties")


# --- 07.5: token F1 ----------------------------------------------------------------------------------------------


def _normalised(text: str, lower=True, punctuation="remove", articles=True) -> list[str]:
    """The tokens of ``text`` after a normalisation with each step switchable: SQuAD's with every default."""
    if lower:
        text = text.lower()
    if punctuation == "remove":
        text = "".join(ch for ch in text if ch not in _PUNCTUATION)
    elif punctuation == "space":
        text = "".join(" " if ch in _PUNCTUATION else ch for ch in text)
    if articles:
        text = re.sub(r"\b(a|an|the)\b", " ", text)
    return text.split()


def _f1_of(predicted: list[str], expected: list[str], shared="bag", mean="harmonic", empty="normalised",
           raw: tuple[str, str] = ("", "")) -> float:
    """Token F1 with each rule switchable: how shared tokens are counted, which mean, and when a side is empty."""
    if empty == "raw" and (not raw[0] or not raw[1]):
        return float(raw[0] == raw[1])
    if not predicted or not expected:
        return 0.0 if empty == "both-zero" else float(predicted == expected)
    if shared == "bag":
        common = sum((Counter(predicted) & Counter(expected)).values())
    elif shared == "set":
        common = len(set(predicted) & set(expected))
    else:  # every predicted token found in the reference, repeats included
        common = sum(token in expected for token in predicted)
    if common == 0:
        return 0.0
    precision, recall = common / len(predicted), common / len(expected)
    if mean == "arithmetic":
        return (precision + recall) / 2
    return 2 * precision * recall / (precision + recall)


def _name_f1_mistake(answers: list, cases: list[tuple[str, str]]) -> None:
    """Raise the Mismatch that names the mistake whose token F1 gives the learner's ``answers`` on every case, if one
    does: a single wrong value says little, the same values as a known mistake everywhere name it."""
    def behaves_like(mistaken: Callable[[str, str], float]) -> bool:
        return all(_same_number(value, mistaken(p, r)) for value, (p, r) in zip(answers, cases))

    if behaves_like(lambda p, r: _f1_of(p.split(), r.split())):
        raise Mismatch("no normalisation: lower-case both texts, remove punctuation and drop the articles a/an/the "
                       "before splitting (SQuAD's normalisation), so that 'The Eiffel Tower.' matches 'eiffel tower'")
    if behaves_like(lambda p, r: _f1_of(_normalised(p, lower=False), _normalised(r, lower=False))):
        raise Mismatch("the texts are not lower-cased: 'Paris' and 'paris' are the same token after normalisation")
    if behaves_like(lambda p, r: _f1_of(_normalised(p, punctuation="keep"), _normalised(r, punctuation="keep"))):
        raise Mismatch("punctuation is kept: remove it, so that 'tower.' and 'tower' are the same token")
    if behaves_like(lambda p, r: _f1_of(_normalised(p, punctuation="space"), _normalised(r, punctuation="space"))):
        raise Mismatch("punctuation is replaced by a space: remove it instead (SQuAD: 'U.S.' becomes 'us', not 'u s')")
    if behaves_like(lambda p, r: _f1_of(_normalised(p, articles=False), _normalised(r, articles=False))):
        raise Mismatch("the articles are kept: drop a, an and the (as whole words), so that 'the Beatles' matches "
                       "'Beatles'")
    if behaves_like(lambda p, r: _f1_of(_normalised(p), _normalised(r), shared="set")):
        raise Mismatch("the shared tokens are counted as a set: count them as a bag, each as often as it occurs on "
                       "both sides (Counter(prediction) & Counter(reference)), so that 'paris paris paris' against "
                       "'paris' scores 0.5")
    if behaves_like(lambda p, r: _f1_of(_normalised(p), _normalised(r), shared="each-predicted")):
        raise Mismatch("a repeated predicted token is counted as shared every time: count it at most as often as the "
                       "reference has it (Counter(prediction) & Counter(reference))")
    if behaves_like(lambda p, r: _f1_of(_normalised(p), _normalised(r), mean="arithmetic")):
        raise Mismatch("this is the arithmetic mean of precision and recall: F1 is their harmonic mean, 2PR / (P + R)")
    if behaves_like(lambda p, r: _f1_of(_normalised(p), _normalised(r), empty="raw", raw=(p, r))):
        raise Mismatch("emptiness is judged before normalising: 'The.' normalises to nothing, so against an empty "
                       "reference it scores 1.0")
    if behaves_like(lambda p, r: _f1_of(_normalised(p), _normalised(r), empty="both-zero")):
        raise Mismatch("two empty answers score 0: when both normalise to nothing they agree, F1 = 1.0 (only one "
                       "empty: 0.0)")


_F1_FIXED = [("The Eiffel Tower.", "eiffel tower"), ("Paris, France", "paris"), ("in the U.S.", "US"),
             ("don't know", "dont know"), ("the Beatles", "Beatles"), ("an apple a day", "apple, day!"),
             ("paris paris paris", "paris"), ("New York", "new york new york city"), ("London", "Paris"),
             ("", ""), ("", "Paris"), ("Paris", ""), ("The.", ""), ("a", "the"), ("the cat sat on the mat", "a cat sat")]


def _f1_cases() -> list[tuple[str, str]]:
    generator = seeded_python(75)
    cases = list(_F1_FIXED)
    decorations = (str.lower, str.upper, str.title, lambda word: word + ",", lambda word: word + ".", lambda word: word)
    for length in grown(3, 5, 8, 12):
        words = [generator.choice(_WORDS) for _ in range(length)]
        prediction = [generator.choice(decorations)(word) for word in words if generator.random() < 0.8]
        reference = [word for word in words if generator.random() < 0.7] + [generator.choice(_WORDS)]
        cases.append((" ".join(prediction), " ".join(generator.choice(decorations)(word) for word in reference)))
    return cases


def _same_number(value, expected: float) -> bool:
    """True if ``value`` (whatever the learner's code returned, or the error it raised) is the number ``expected``."""
    if isinstance(value, bool) or not isinstance(value, (int, float, np.floating, np.integer)):
        return False
    return math.isclose(float(value), expected, rel_tol=1e-9, abs_tol=1e-12)


@self_check("07.5")
def check_token_f1(call) -> str:
    """fn(prediction, reference) -> F1 of the bags of normalised tokens; both empty 1.0, one empty 0.0."""
    cases = _f1_cases()

    def answers() -> list:
        found = []
        for prediction, reference in cases:
            try:
                found.append(call(prediction, reference))
            except LearnerCodeError as error:
                found.append(error)
        return found

    for prediction, reference in cases:
        try:
            got = call(prediction, reference)
        except LearnerCodeError as error:
            if isinstance(error.original, ZeroDivisionError):
                if not rag.normalize_answer(prediction) or not rag.normalize_answer(reference):
                    raise Mismatch(f"{prediction!r} against {reference!r}: you divide by zero; when a side normalises "
                                   "to nothing, return before dividing (both empty 1.0, one empty 0.0)") from None
                raise Mismatch(f"{prediction!r} against {reference!r}: you divide by zero; with no shared token "
                               "precision and recall are 0: F1 is 0.0, return it before dividing by P + R") from None
            raise
        if isinstance(got, bool) or not isinstance(got, (int, float, np.floating, np.integer)):
            raise Mismatch(f"return one number between 0 and 1, got {type(got).__name__}")
        expected = rag.token_f1(prediction, reference)
        if math.isclose(float(got), expected, rel_tol=1e-9, abs_tol=1e-12):
            continue
        _name_f1_mistake(answers(), cases)
        raise Mismatch(f"{prediction!r} against {reference!r}: F1 {expected:.4f}, you returned {float(got):.4f}")
    return (f"right on {len(cases)} pairs: case, punctuation and articles normalised, repeated tokens, no overlap, "
            "empty answers")


# --- 07.6: citation precision --------------------------------------------------------------------------------------


def _citation_cases() -> list[tuple[list[str], list[str]]]:
    """(cited, relevant): duplicates, nothing cited, nothing relevant cited, everything relevant cited, random ones."""
    generator = seeded_python(76)
    cases = [(["d1", "d1", "d2"], ["d2"]), (["d4", "d7"], ["d7", "d9", "d3"]), ([], ["d1"]), (["d5"], ["d5"]),
             (["d2", "d3"], ["d8"]), (["d6", "d6", "d6", "d1"], ["d6", "d2"])]
    pool = [f"p{number}" for number in range(12)]
    for length in grown(2, 4, 6, 9):
        cited = [generator.choice(pool) for _ in range(length)]
        relevant = generator.sample(pool, generator.randint(1, 4))
        cases.append((cited, relevant))
    return cases


@self_check("07.6")
def check_citation_precision(call) -> str:
    """fn(cited, relevant) -> the share of the distinct cited documents that are relevant; 0.0 when nothing is cited."""
    cases = _citation_cases()
    for cited, relevant in cases:
        what = f"cited {cited} with relevant {relevant}"
        try:
            got = call(list(cited), list(relevant))
        except LearnerCodeError as error:
            if not cited and isinstance(error.original, ZeroDivisionError):
                raise Mismatch(f"{what}: you divide by zero; an answer that cites nothing gets 0.0 (it cannot be "
                               "checked against any source), return it before dividing") from None
            raise
        if isinstance(got, bool) or not isinstance(got, (int, float, np.floating, np.integer)):
            raise Mismatch(f"return one number between 0 and 1, got {type(got).__name__}")
        got = float(got)
        expected = rag.citation_precision(cited, relevant)
        if math.isclose(got, expected, rel_tol=1e-9, abs_tol=1e-12):
            continue
        if not cited:
            raise Mismatch(f"{what}: got {got}; an answer that cites nothing gets 0.0, not {got} (nothing it says "
                           "can be checked against a source; the caller skips abstentions)")
        distinct, gold = set(cited), set(relevant)
        twice = [sum(document in gold for document in cited) / len(cited), len(distinct & gold) / len(cited)]
        if any(math.isclose(got, value, rel_tol=1e-9) for value in twice):
            raise Mismatch(f"{what}: got {got:.4f}, expected {expected:.4f}: a document cited twice counts once "
                           "(take the distinct cited documents, set(cited))")
        if math.isclose(got, len(distinct & gold) / len(gold), rel_tol=1e-9):
            raise Mismatch(f"{what}: got {got:.4f}, expected {expected:.4f}: this is recall (the share of the relevant "
                           "documents that are cited); precision divides by the number of distinct cited documents")
        raise Mismatch(f"{what}: got {got:.4f}, expected {expected:.4f}")
    return (f"right on {len(cases)} answers: repeated citations, no citation, no relevant citation, random ones")


# --- 07.7: the token mask of one constrained-decoding step ---------------------------------------------------------

# Two small output languages, each a pair of predicates as JsonSchemaGrammar gives them: a few coffee orders as compact
# JSON (a valid prefix is the start of one of them), and integers of at most three digits (complete ones can go on).
_ORDERS = ('{"drink":"latte","size":"small"}', '{"drink":"latte","size":"large"}', '{"drink":"mocha","size":"small"}',
           '{"drink":"tea","size":"large"}')


def _order_valid_prefix(text: str) -> bool:
    return any(order.startswith(text) for order in _ORDERS)


def _order_complete(text: str) -> bool:
    return text in _ORDERS


def _number_valid_prefix(text: str) -> bool:
    return re.fullmatch(r"-?[0-9]{0,3}", text) is not None


def _number_complete(text: str) -> bool:
    return re.fullmatch(r"-?[0-9]{1,3}", text) is not None


_ORDER_TOKENS = ['{"', "drink", '":"', "latte", "la", "tte", "lx", "mo", "cha", "mocha\"", "tea", '","', "size",
                 "small", "large", "sm", "all", '"}', "{", '"', "l", "s", ":", ",", "}", " ", "x", "latte\"}"]
_NUMBER_TOKENS = ["0", "1", "12", "123", "1234", "-", "-1", "7", "99", "1a", "a1", "+", " 1", "9-"]
_END_TEXT = "<|end|>"  # what the end token would print: it writes no text of the output


def _mask_cases() -> list[tuple[str, list[str], Callable, Callable, int]]:
    """(prefix, vocabulary, is_valid_prefix, is_complete, end_token): the start, the middle of a token, a complete
    output that can go on and one that cannot, and a prefix no output starts with; each vocabulary holds the empty
    token and the end token at a place that differs from case to case, and tokens whose first character fits but not
    the rest."""
    generator = seeded_python(77)
    languages = [(_order_valid_prefix, _order_complete, _ORDER_TOKENS,
                  ['{"drink":"', '{"drink":"la', "", '{"drink":"latte","size":"small"}', '{"drink":"tea"',
                   '{"drink":"x']),
                 (_number_valid_prefix, _number_complete, _NUMBER_TOKENS, ["", "-", "12", "999", "7", "1a"])]
    cases = []
    for (valid, complete, tokens, prefixes), extra in zip(languages, grown(0, 0)):
        for prefix in prefixes:
            vocabulary = list(tokens) + ["".join(generator.choice('{}":,abelmst0123456789-') for _ in range(3))
                                         for _ in range(extra)] + ["", _END_TEXT]
            generator.shuffle(vocabulary)
            cases.append((prefix, vocabulary, valid, complete, vocabulary.index(_END_TEXT)))
    return cases


def _expect_mask(got, size: int) -> np.ndarray:
    try:
        mask = np.asarray(got)
    except (TypeError, ValueError):
        mask = None
    if mask is None or mask.dtype != np.bool_:
        raise Mismatch(f"return a NumPy array of booleans, one per token, got {type(got).__name__}"
                       + (f" of {mask.dtype}" if mask is not None else ""))
    if mask.shape != (size,):
        raise Mismatch(f"the mask has shape {mask.shape}, expected ({size},): one bool per token of the vocabulary")
    return mask


@self_check("07.7")
def check_token_mask(call) -> str:
    """fn(prefix, vocabulary, is_valid_prefix, is_complete, end_token) -> bool array: the tokens that may come next."""
    cases = _mask_cases()
    end_allowed: list[bool] = []
    for prefix, vocabulary, valid, complete, end in cases:
        got = call(prefix, list(vocabulary), lend(valid, call), lend(complete, call), end)
        end_allowed.append(bool(_expect_mask(got, len(vocabulary))[end]))
    for (prefix, vocabulary, valid, complete, end), got_end in zip(cases, end_allowed):
        if got_end and not complete(prefix):
            if all(end_allowed):
                raise Mismatch("the end token is always allowed: allow it only when is_complete(prefix), or decoding "
                               "may stop in the middle of an output that does not parse")
            raise Mismatch(f"the end token is allowed after {prefix!r}, which is not complete yet: allow it only when "
                           "is_complete(prefix), or decoding may stop before the output parses")
        if not got_end and complete(prefix):
            raise Mismatch(f"the end token is not allowed after {prefix!r}, which is complete, so decoding could "
                           "never stop: allow it when is_complete(prefix) (the end token writes no text, so "
                           "is_valid_prefix(prefix + its text) says nothing about it)")
    for prefix, vocabulary, valid, complete, end in cases:
        mask = _expect_mask(call(prefix, list(vocabulary), lend(valid, call), lend(complete, call), end), len(vocabulary))
        expected = structured.token_mask(prefix, vocabulary, valid, complete, end)
        if np.array_equal(mask, expected):
            continue
        wrongly_allowed = [vocabulary[i] for i in np.flatnonzero(mask & ~expected)]
        first_fits = [token for token in wrongly_allowed if len(token) > 1 and valid(prefix + token[0])]
        if first_fits:
            raise Mismatch(f"after {prefix!r} the tokens {first_fits[:4]} are allowed, but only their first character "
                           "fits: check the whole token, is_valid_prefix(prefix + token)")
        if mask[vocabulary.index("")]:
            raise Mismatch(f"the empty token '' is allowed after {prefix!r}: prefix + '' is the prefix itself, always "
                           "valid, so decoding could loop without writing anything; never allow an empty token "
                           "(the end token aside)")
        if wrongly_allowed:
            raise Mismatch(f"after {prefix!r} the tokens {wrongly_allowed[:4]} are allowed, but prefix + token is no "
                           "valid prefix")
        missing = [vocabulary[i] for i in np.flatnonzero(expected & ~mask)]
        raise Mismatch(f"after {prefix!r} the tokens {missing[:4]} are not allowed, yet prefix + token is a valid "
                       "prefix (a token may be allowed even when the prefix is already complete)")
    return (f"right on {len(cases)} steps of two grammars: at the start, inside a token, complete outputs, a dead "
            "prefix; the end token only when complete, the empty token never")


# The exercises of this lab, id -> (title, points): what solutions/07_building_on_a_model.ipynb's metadata declares
# (tests/test_architecture.py keeps the two equal); checks.summary() reads them.
EXERCISES = {"07.1": ("chunking with overlap", 2), "07.2": ("reciprocal-rank fusion", 2),
             "07.3": ("recall@k and reciprocal ranks", 1), "07.4": ("filter before ranking", 2),
             "07.5": ("token F1", 2), "07.6": ("citation precision", 1), "07.7": ("the token mask of one step", 3)}

CHECKS = {"07.1": check_chunk_words, "07.2": check_reciprocal_rank_fusion, "07.3": check_recall_and_reciprocal_ranks,
          "07.4": check_rank, "07.5": check_token_f1, "07.6": check_citation_precision, "07.7": check_token_mask}

# What use_reference("07.k") puts in the notebook: the name its exercise defines, and the course's implementation.
REFERENCES = {"07.1": ("chunk_words", retrieval.chunk_words),
              "07.2": ("reciprocal_rank_fusion", retrieval.reciprocal_rank_fusion),
              "07.3": ("recall_and_reciprocal_ranks", recall_and_reciprocal_ranks), "07.4": ("rank", retrieval.rank),
              "07.5": ("token_f1", rag.token_f1), "07.6": ("citation_precision", rag.citation_precision),
              "07.7": ("token_mask", structured.token_mask)}

# checks.use_reference("07.k") when stuck, checks.summary() at the end of the lab
use_reference, summary = lab_shortcuts("07")
