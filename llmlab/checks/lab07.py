"""Self-checks of Lab 7 (building on a model): chunking with overlap, reciprocal-rank fusion, recall@k and reciprocal
ranks, filtering before ranking, token F1, citation precision, and the token mask of one constrained-decoding step.

Each check compares the learner's function with the course's one implementation in llmlab (retrieval, rag,
structured) on cases built so that every classic mistake changes the answer, and names the mistake when the
learner's answer is the one that mistake gives.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import numpy as np

from llmlab import retrieval
from llmlab.checks.core import (
    LearnerCodeError,
    Mismatch,
    grown,
    lab_shortcuts,
    seeded_numpy,
    seeded_python,
    self_check,
)

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

    what = f"with k = {k}"
    if math.isclose(recall, share(k) * len(gold), rel_tol=1e-9) and len(gold) > 1:
        raise Mismatch(f"{what} recall@k is a share of the questions (between 0 and 1), not a count: divide by "
                       "the number of questions")
    if math.isclose(recall, share(None), rel_tol=1e-9):
        raise Mismatch(f"{what} recall counts a gold document anywhere in the ranking: recall@k counts it only "
                       "among the first k, ranking[:k]")
    if math.isclose(recall, share(k + 1), rel_tol=1e-9) or (k > 1 and math.isclose(recall, share(k - 1), rel_tol=1e-9)):
        raise Mismatch(f"{what} recall is off by one: the first k documents are ranking[:k], so a gold document "
                       "at rank k counts and one at rank k + 1 does not")
    raise Mismatch(f"{what} recall@k is {expected:.4f}, you returned {recall:.4f}")


def _diagnose_reciprocal_ranks(values: np.ndarray, expected: np.ndarray, rankings, gold, k: int) -> None:
    def same(candidate: np.ndarray) -> bool:
        return np.allclose(values, candidate, rtol=1e-9, atol=1e-12)

    what = f"with k = {k}"
    if not np.isfinite(values).all() or same(_reciprocal_ranks_with(rankings, gold, lambda p: 0.0 if p is None else
                                                                     (1 / p if p else 0.0), k)):
        raise Mismatch(f"{what} the top document's reciprocal rank is not 1: ranks start at 1, so a 0-based "
                       "position p has reciprocal rank 1 / (p + 1)")
    if same(_reciprocal_ranks_with(rankings, gold, lambda p: 1 / (k + 1) if p is None else 1 / (p + 1), k)):
        raise Mismatch(f"{what} a question whose gold document is not in the first k scores 1 / (k + 1) = "
                       f"{1 / (k + 1):.4f}: a miss scores 0")
    if same(_reciprocal_ranks_with(rankings, gold, lambda p: 0.0 if p is None else 1 / (p + 1), None)):
        raise Mismatch(f"{what} a gold document after rank k still scores 1 / rank: cut each ranking at k first "
                       "(a gold document after rank k is a miss and scores 0)")
    for cut in (k + 1, k - 1):
        if cut >= 1 and same(_reciprocal_ranks_with(rankings, gold, lambda p: 0.0 if p is None else 1 / (p + 1), cut)):
            raise Mismatch(f"{what} the reciprocal ranks are cut at {cut} documents, not k = {k}: an off-by-one "
                           "(keep ranking[:k])")
    worst = int(np.abs(values - expected).argmax())
    raise Mismatch(f"{what} question {worst} (gold {gold[worst]!r}): reciprocal rank {values[worst]:.4f}, "
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


# The exercises of this lab, id -> (title, points): what solutions/07_building_on_a_model.ipynb's metadata declares
# (tests/test_architecture.py keeps the two equal); checks.summary() reads them.
EXERCISES = {"07.1": ("chunking with overlap", 2), "07.2": ("reciprocal-rank fusion", 2),
             "07.3": ("recall@k and reciprocal ranks", 1), "07.4": ("filter before ranking", 2)}

CHECKS = {"07.1": check_chunk_words, "07.2": check_reciprocal_rank_fusion, "07.3": check_recall_and_reciprocal_ranks,
          "07.4": check_rank}

# What use_reference("07.k") puts in the notebook: the name its exercise defines, and the course's implementation.
REFERENCES = {"07.1": ("chunk_words", retrieval.chunk_words),
              "07.2": ("reciprocal_rank_fusion", retrieval.reciprocal_rank_fusion),
              "07.3": ("recall_and_reciprocal_ranks", recall_and_reciprocal_ranks), "07.4": ("rank", retrieval.rank)}

# checks.use_reference("07.k") when stuck, checks.summary() at the end of the lab
use_reference, summary = lab_shortcuts("07")
