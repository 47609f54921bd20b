"""Find the passages that answer a question: chunking, BM25, dense and hybrid retrieval, permissions, metrics.

Lab 7 grounds answers in documents. Everything a retriever does is here, small enough to read:

- ``chunk_documents`` cuts documents into overlapping windows of words, each remembering its
  document and word offsets, so an answer built from a chunk can cite where it came from;
- ``BM25`` ranks by shared words (Okapi BM25, Robertson et al.), ``DenseIndex`` by the
  cosine of sentence embeddings, and ``reciprocal_rank_fusion`` merges rankings (Cormack et al.);
- ``Retriever.search`` does all three for one user: documents carry a tenant, and a user's
  search ranks only the documents of that user's tenants, so no ranking ever holds another's;
- ``recall_at_k`` and ``mean_reciprocal_rank`` measure a ranking against the gold passages, each
  with a 95 % interval (Wilson for recall, a percentile bootstrap for MRR).

    chunks = chunk_documents([(p.id, p.text) for p in passages], size=100, overlap=20,
                             headers={p.id: p.title for p in passages})
    retriever = Retriever(chunks, embed=llmlab.embeddings.embed, tenant_of={p.id: "public" for p in passages})
    hits = retriever.search("who wrote the iliad", k=5, method="hybrid", user_tenants={"public"})
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Callable, Collection, Hashable, Mapping, Sequence
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np

from llmlab.instruct import wilson_interval

# --- chunking -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Chunk:
    """A window of a document's words: what gets embedded, ranked and cited."""

    document_id: str
    start: int  # index of the chunk's first word in the document's ``text.split()``
    end: int  # one past its last word, so the chunk is words[start:end]
    text: str
    header: str = ""  # e.g. the document's title: searched with the chunk, but not part of what it quotes

    @property
    def id(self) -> str:
        return f"{self.document_id}:{self.start}-{self.end}"

    @property
    def searchable_text(self) -> str:
        """What BM25 and the embedder see: the header, then the words. A chunk from the middle of a
        page no longer says what the page is about; its title does."""
        return f"{self.header}. {self.text}" if self.header else self.text


def chunk_words(document_id: str, text: str, size: int, overlap: int, header: str = "") -> list[Chunk]:
    """``text`` cut into windows of ``size`` words, each starting ``size - overlap`` words after the last.

    The overlap exists because a sentence cut at a window's edge would otherwise be whole in no
    chunk; with ``overlap`` words repeated, any span of up to ``overlap + 1`` words lies whole in one
    chunk. The last window ends at the last word (it may be shorter), and no window lies wholly
    inside the one before it. Words are whitespace-separated, which is what CLAP NQ's tokenised
    text gives. ``header`` goes with every chunk (see ``Chunk.searchable_text``) and moves no offset.
    """
    if size < 1:
        raise ValueError(f"chunk size must be at least 1 word, got {size}")
    if not 0 <= overlap < size:
        raise ValueError(f"overlap must be between 0 and size - 1 = {size - 1} words, got {overlap}")
    words = text.split()
    if not words:
        raise ValueError(f"document {document_id!r} has no words to chunk")
    chunks, start = [], 0
    while True:
        end = min(start + size, len(words))
        chunks.append(Chunk(document_id, start, end, " ".join(words[start:end]), header))
        if end == len(words):
            return chunks
        start += size - overlap


def chunk_documents(documents: Sequence[tuple[str, str]], size: int, overlap: int,
                    headers: Mapping[str, str] | None = None) -> list[Chunk]:
    """Every document of ``documents`` (pairs of id and text) chunked by :func:`chunk_words`, in order.

    ``headers`` maps a document id to the header its chunks carry (a title, say); documents it
    does not name get none.
    """
    headers = headers or {}
    ids = [document_id for document_id, _ in documents]
    repeated = [document_id for document_id, count in Counter(ids).items() if count > 1]
    if repeated:
        raise ValueError(f"document ids must be unique; repeated: {repeated[:5]}")
    return [chunk for document_id, text in documents
            for chunk in chunk_words(document_id, text, size, overlap, headers.get(document_id, ""))]


# --- ranking, with permissions applied first ----------------------------------------------------


def visible_to(document_tenants: Sequence[str], user_tenants: Collection[str]) -> np.ndarray:
    """A boolean mask over documents: True where the document's tenant is one of the user's tenants."""
    user_tenants = frozenset(user_tenants)
    return np.fromiter((tenant in user_tenants for tenant in document_tenants), dtype=bool, count=len(document_tenants))


def rank(scores: np.ndarray, k: int, allowed: np.ndarray | None = None, above: float = -np.inf) -> np.ndarray:
    """Positions of the ``k`` highest ``scores`` among the ``allowed`` documents scoring more than ``above``, best first.

    The mask is applied before sorting, not to the top ``k`` afterwards: filtering a finished top-k
    would hand a user with few visible documents fewer than ``k`` results (often none), and any
    code that forgot the filter would leak the others'. Ties keep document order, so a ranking is
    reproducible.
    """
    scores = np.asarray(scores, dtype=np.float64)
    if scores.ndim != 1:
        raise ValueError(f"expected one score per document (a 1-d array), got shape {scores.shape}")
    if k < 1:
        raise ValueError(f"k must be at least 1, got {k}")
    if allowed is None:
        candidates = np.arange(len(scores))
    else:
        allowed = np.asarray(allowed, dtype=bool)
        if allowed.shape != scores.shape:
            raise ValueError(f"the permission mask has shape {allowed.shape}, the scores {scores.shape}")
        candidates = np.flatnonzero(allowed)
    candidates = candidates[scores[candidates] > above]
    return candidates[np.argsort(-scores[candidates], kind="stable")[:k]]


# --- lexical: BM25 ------------------------------------------------------------------------------


def words_of(text: str) -> list[str]:
    """Lower-cased runs of letters and digits: BM25's terms. No stemming and no stop list, to stay visible."""
    return re.findall(r"\w+", text.lower())


class BM25:
    """Okapi BM25 (Robertson et al., "Okapi at TREC-3", 1995; Robertson and Zaragoza 2009) over a list of texts.

    score(q, d) = sum over the distinct terms t of q of  qtf(t) * idf(t) * tf(t, d) * (k1 + 1)
                                                          / (tf(t, d) + k1 * (1 - b + b * |d| / avgdl))

    tf is the term's count in d, |d| the length of d in terms, avgdl the mean length, and qtf the
    term's count in the query. k1 = 1.2 says how fast repeats stop adding (tf saturates towards
    k1 + 1); b = 0.75 how much a long document is discounted for being long; both are the values
    Robertson and Zaragoza give as usual. idf(t) = ln(1 + (N - n(t) + 0.5) / (n(t) + 0.5)) is the
    Robertson-Sparck Jones weight (1976) with 1 added inside the log, as Lucene does, because the bare
    weight is negative for a term in more than half the documents, and a matching word would then
    lower a document's score.

    The index is inverted: for each term, the documents holding it and their weights, so a query
    touches only the documents that share a word with it.
    """

    def __init__(self, texts: Sequence[str], k1: float = 1.2, b: float = 0.75):
        if not texts:
            raise ValueError("BM25 needs at least one text to index")
        if k1 < 0 or not 0 <= b <= 1:
            raise ValueError(f"BM25 needs k1 >= 0 and 0 <= b <= 1, got k1={k1}, b={b}")
        self.k1, self.b, self.n_documents = k1, b, len(texts)
        counts = [Counter(words_of(text)) for text in texts]
        self.lengths = np.array([sum(c.values()) for c in counts], dtype=np.float64)
        self.mean_length = float(self.lengths.mean())
        if self.mean_length == 0:
            raise ValueError("BM25 cannot index texts that hold no words at all")
        postings: dict[str, tuple[list[int], list[int]]] = {}
        for position, document_counts in enumerate(counts):
            for term, count in document_counts.items():
                documents, term_counts = postings.setdefault(term, ([], []))
                documents.append(position)
                term_counts.append(count)
        length_norm = k1 * (1 - b + b * self.lengths / self.mean_length)
        self.postings: dict[str, tuple[np.ndarray, np.ndarray]] = {}
        for term, (documents, term_counts) in postings.items():
            documents, tf = np.array(documents), np.array(term_counts, dtype=np.float64)
            # The whole per-document part of the formula is fixed at indexing time; a query only adds.
            self.postings[term] = (documents, self.idf(len(documents)) * tf * (k1 + 1) / (tf + length_norm[documents]))

    def idf(self, document_frequency: int) -> float:
        return float(np.log(1 + (self.n_documents - document_frequency + 0.5) / (document_frequency + 0.5)))

    def scores(self, query: str) -> np.ndarray:
        """BM25 score of every indexed text for ``query`` (0 for a text that shares no term with it)."""
        total = np.zeros(self.n_documents)
        for term, query_count in Counter(words_of(query)).items():
            if term in self.postings:
                documents, weights = self.postings[term]
                total[documents] += query_count * weights
        return total

    def search(self, query: str, k: int, allowed: np.ndarray | None = None) -> np.ndarray:
        """Positions of the best ``k`` allowed texts that share at least one term with ``query``."""
        return rank(self.scores(query), k, allowed, above=0.0)


# --- dense: cosine of embeddings ------------------------------------------------------------------


def unit_rows(vectors, expected_rows: int, what: str) -> np.ndarray:
    """``vectors`` as float32 rows of length 1, after checking there is one non-zero row per text."""
    vectors = np.asarray(vectors, dtype=np.float32)
    if vectors.ndim != 2 or len(vectors) != expected_rows:
        raise ValueError(f"embed() returned shape {vectors.shape} for {expected_rows} {what}; expected ({expected_rows}, d)")
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    if (norms == 0).any():
        raise ValueError(f"embed() returned a zero vector for {what} number {int(np.flatnonzero(norms == 0)[0])}")
    # Normalised here even if embed() already did it: then a dot product is a cosine, whoever embedded.
    return vectors / norms


class DenseIndex:
    """Texts ranked by the cosine between their embedding and the query's.

    ``embed`` maps a list of texts to an (n, d) array or tensor: the course's MiniLM
    (``llmlab.embeddings.embed``) in the lab, a small fake in the tests. The search here is exact, a
    matrix product with every vector; ``llmlab.vector_index`` does the same with a real index.
    """

    def __init__(self, texts: Sequence[str], embed: Callable[[list[str]], object]):
        if not texts:
            raise ValueError("a dense index needs at least one text")
        self.embed = embed
        self.vectors = unit_rows(embed(list(texts)), len(texts), "texts")

    def scores_many(self, queries: Sequence[str]) -> np.ndarray:
        """(len(queries), n) cosines: all queries embedded in one call, which batches the encoder."""
        return unit_rows(self.embed(list(queries)), len(queries), "queries") @ self.vectors.T

    def scores(self, query: str) -> np.ndarray:
        return self.scores_many([query])[0]

    def search(self, query: str, k: int, allowed: np.ndarray | None = None) -> np.ndarray:
        return rank(self.scores(query), k, allowed)


# --- hybrid: reciprocal-rank fusion ---------------------------------------------------------------

RRF_K = 60  # Cormack, Clarke and Buettcher (2009) fixed 60 in a pilot; a large k keeps one list's top item from outweighing agreement


def reciprocal_rank_fusion(rankings: Sequence[Sequence[Hashable]], k: int = RRF_K) -> list[tuple[Hashable, float]]:
    """One ranking from several: each item scores the sum over rankings of 1 / (k + its rank there), rank 1 first.

    Only ranks are used, never the scores, which is why BM25's unbounded scores and a cosine can be
    fused without calibrating one against the other. An item missing from a ranking gets nothing
    from it. Ties keep the order in which the items were first met.
    """
    if k < 0:
        raise ValueError(f"the fusion constant k must be >= 0, got {k}")
    fused: dict[Hashable, float] = {}
    for ranking in rankings:
        if len(set(ranking)) != len(ranking):
            raise ValueError(f"a ranking lists an item twice: {ranking}")
        for rank_, item in enumerate(ranking, start=1):
            fused[item] = fused.get(item, 0.0) + 1.0 / (k + rank_)
    return sorted(fused.items(), key=lambda pair: -pair[1])  # sorted() is stable: ties stay in first-met order


# --- one retriever over chunks, for one user at a time ---------------------------------------------


@dataclass(frozen=True)
class Hit:
    chunk: Chunk
    score: float  # BM25 score, cosine or fused RRF score, depending on the method


class Retriever:
    """BM25, dense and hybrid search over ``chunks``, restricted to what the searching user may see.

    ``tenant_of`` maps each document id to the tenant that owns it. When it is given, every search
    must name the user's tenants, and only chunks of those tenants' documents are ranked: a
    forgotten user is an error, never a search over everything.
    """

    METHODS = ("bm25", "dense", "hybrid")

    def __init__(self, chunks: Sequence[Chunk], embed: Callable[[list[str]], object] | None = None,
                 tenant_of: Mapping[str, str] | None = None, k1: float = 1.2, b: float = 0.75):
        if not chunks:
            raise ValueError("a retriever needs at least one chunk")
        self.chunks = list(chunks)
        texts = [chunk.searchable_text for chunk in self.chunks]
        self.bm25 = BM25(texts, k1, b)
        self.dense = DenseIndex(texts, embed) if embed is not None else None
        self.tenants = None
        if tenant_of is not None:
            missing = sorted({c.document_id for c in self.chunks if c.document_id not in tenant_of})
            if missing:
                raise ValueError(f"no tenant for documents {missing[:5]} (tenant_of must cover every document)")
            self.tenants = [tenant_of[chunk.document_id] for chunk in self.chunks]

    def allowed(self, user_tenants: Collection[str] | None) -> np.ndarray | None:
        if self.tenants is None:
            if user_tenants is not None:
                raise ValueError("this retriever has no tenants (tenant_of was not given), so user_tenants means nothing")
            return None
        if user_tenants is None:
            raise ValueError("documents have owners: name the searching user's tenants (user_tenants)")
        return visible_to(self.tenants, user_tenants)

    def search(self, query: str, k: int, method: str = "hybrid", user_tenants: Collection[str] | None = None,
               depth: int = 100, dense_scores: np.ndarray | None = None) -> list[Hit]:
        """The best ``k`` chunks for ``query`` that the user may see; hybrid fuses the top ``depth`` of each method.

        ``dense_scores``: the query's cosines with every chunk, if already computed (a row of
        ``self.dense.scores_many``): a server embeds a whole batch of queries in one call.
        """
        if method not in self.METHODS:
            raise ValueError(f"method must be one of {', '.join(self.METHODS)}, got {method!r}")
        if method != "bm25" and self.dense is None:
            raise ValueError(f"method {method!r} needs an embed function: Retriever(chunks, embed=...)")
        allowed = self.allowed(user_tenants)
        if dense_scores is not None and np.shape(dense_scores) != (len(self.chunks),):
            raise ValueError(f"dense_scores has shape {np.shape(dense_scores)}; expected ({len(self.chunks)},), one per chunk")
        if method == "bm25":
            scores = self.bm25.scores(query)
            return [Hit(self.chunks[i], float(scores[i])) for i in rank(scores, k, allowed, above=0.0)]
        cosines = self.dense.scores(query) if dense_scores is None else dense_scores
        if method == "dense":
            return [Hit(self.chunks[i], float(cosines[i])) for i in rank(cosines, k, allowed)]
        # Both lists are already restricted to the user's chunks, so the fusion can only hold those.
        lexical = rank(self.bm25.scores(query), max(k, depth), allowed, above=0.0).tolist()
        semantic = rank(cosines, max(k, depth), allowed).tolist()
        return [Hit(self.chunks[i], score) for i, score in reciprocal_rank_fusion([lexical, semantic])[:k]]


def document_ranking(hits: Sequence[Hit]) -> list[str]:
    """The documents of ranked chunks, each once, at the rank of its best chunk: what recall@k is measured on."""
    return list(dict.fromkeys(hit.chunk.document_id for hit in hits))


# --- metrics ------------------------------------------------------------------------------------


class Estimate(NamedTuple):
    """A measured mean with its 95 % interval."""

    value: float
    low: float
    high: float

    def __str__(self) -> str:
        return f"{self.value:.3f} [{self.low:.3f}, {self.high:.3f}]"


def check_rankings(rankings: Sequence[Sequence[str]], gold: Sequence[str]) -> None:
    if len(rankings) != len(gold) or not rankings:
        raise ValueError(f"expected one ranking per gold id, got {len(rankings)} rankings and {len(gold)} gold ids")


def recall_at_k(rankings: Sequence[Sequence[str]], gold: Sequence[str], k: int) -> Estimate:
    """Share of questions whose gold document is among the first ``k`` of its ranking, with a Wilson interval.

    Each question is a success or not, so the share is a binomial proportion; Wilson's interval
    stays inside [0, 1] and keeps its coverage near 0 and 1, where retrieval recall often sits.
    """
    check_rankings(rankings, gold)
    if k < 1:
        raise ValueError(f"k must be at least 1, got {k}")
    found = sum(g in list(ranking)[:k] for ranking, g in zip(rankings, gold))
    return Estimate(found / len(gold), *wilson_interval(found, len(gold)))


def reciprocal_ranks(rankings: Sequence[Sequence[str]], gold: Sequence[str], k: int | None = None) -> np.ndarray:
    """1 / (the gold document's rank) per question; 0 when it is not in the ranking (or not in its first ``k``)."""
    check_rankings(rankings, gold)
    values = np.zeros(len(gold))
    for question, (ranking, g) in enumerate(zip(rankings, gold)):
        ranking = list(ranking)[:k] if k is not None else list(ranking)
        if g in ranking:
            values[question] = 1.0 / (ranking.index(g) + 1)
    return values


def bootstrap_interval(values, resamples: int = 10_000, confidence: float = 0.95, seed: int = 0) -> tuple[float, float]:
    """Percentile bootstrap interval of the mean of ``values``: resample the questions with replacement.

    Used for MRR because reciprocal ranks are far from normal (piled at 0 and 1, with a few
    halves and thirds), where a t-interval can reach outside [0, 1]. Seeded, so a run repeats.
    """
    values = np.asarray(values, dtype=np.float64)
    if values.ndim != 1 or len(values) == 0:
        raise ValueError(f"expected a non-empty 1-d array of values, got shape {values.shape}")
    rng = np.random.default_rng(seed)
    means = np.concatenate([values[rng.integers(0, len(values), (min(1000, resamples - start), len(values)))].mean(axis=1)
                            for start in range(0, resamples, 1000)])  # blocks of 1,000 keep memory small
    tail = (1 - confidence) / 2
    low, high = np.quantile(means, [tail, 1 - tail])
    return float(low), float(high)


def mean_reciprocal_rank(rankings: Sequence[Sequence[str]], gold: Sequence[str], k: int | None = None,
                         seed: int = 0) -> Estimate:
    """Mean over questions of 1 / (rank of the gold document), with a 95 % percentile-bootstrap interval."""
    values = reciprocal_ranks(rankings, gold, k)
    return Estimate(float(values.mean()), *bootstrap_interval(values, seed=seed))
