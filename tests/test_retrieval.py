"""llmlab.retrieval: each piece against a hand-worked answer, and permissions as a property over random users.

Tiny corpora and a fake embedder (a hashed bag of words), so the whole file runs in about a second.
"""

from __future__ import annotations

import math
import random
import zlib

import numpy as np
import pytest

from llmlab import instruct, retrieval
from llmlab.retrieval import BM25, Chunk, Retriever


def fake_embed(texts: list[str], dimensions: int = 16) -> np.ndarray:
    """A hashed bag of words (not unit length on purpose: the index must normalise), plus a constant so none is zero."""
    vectors = np.full((len(texts), dimensions), 0.1, dtype=np.float32)
    for row, text in enumerate(texts):
        for word in retrieval.words_of(text):
            vectors[row, zlib.crc32(word.encode()) % dimensions] += 1.0
    return vectors


# --- BM25 ---------------------------------------------------------------------------------------

CORPUS = ["the cat sat", "the dog sat on the mat", "cats and dogs"]
# By hand, k1 = 1.2, b = 0.75: N = 3 documents of 3, 6 and 3 terms, avgdl = 4.
#   idf(cat) = ln(1 + (3 - 1 + 0.5) / (1 + 0.5)) = ln(8/3)   ("cats" is another term: no stemming)
#   idf(sat) = idf(the) = ln(1 + (3 - 2 + 0.5) / (2 + 0.5)) = ln(1.6)
#   length factor K = k1 * (1 - b + b * |d| / avgdl): 1.2 * 0.8125 = 0.975 for |d| = 3, 1.2 * 1.375 = 1.65 for |d| = 6
#   a term with tf = 1 in document 0 weighs 2.2 / (1 + 0.975); in document 1, 2.2 / (1 + 1.65), with tf = 2, 4.4 / (2 + 1.65)
IDF_CAT, IDF_SAT = math.log(8 / 3), math.log(1.6)


def test_bm25_matches_a_hand_computed_score():
    bm25 = BM25(CORPUS)
    assert bm25.scores("cat sat") == pytest.approx([(IDF_CAT + IDF_SAT) * 2.2 / 1.975, IDF_SAT * 2.2 / 2.65, 0.0])
    # a repeated term saturates: tf = 2 in the long document, against tf = 1 in the short one
    assert bm25.scores("the") == pytest.approx([IDF_SAT * 2.2 / 1.975, IDF_SAT * 4.4 / 3.65, 0.0])
    assert bm25.scores("Cat, SAT!") == pytest.approx(bm25.scores("cat sat")), "terms are case- and punctuation-blind"
    assert bm25.scores("zebra").tolist() == [0.0, 0.0, 0.0]


def test_bm25_parameters_change_the_score_as_stated():
    no_length_norm = BM25(CORPUS, k1=1.2, b=0.0)  # b = 0: every document counts as average length, K = k1
    assert no_length_norm.scores("the") == pytest.approx([IDF_SAT * 2.2 / 2.2, IDF_SAT * 4.4 / 3.2, 0.0])
    binary = BM25(CORPUS, k1=0.0)  # k1 = 0: only presence counts, each matching term adds its idf
    assert binary.scores("the cat") == pytest.approx([IDF_SAT + IDF_CAT, IDF_SAT, 0.0])


def test_bm25_search_skips_documents_without_a_shared_term():
    bm25 = BM25(CORPUS)
    assert bm25.search("cat sat", k=3).tolist() == [0, 1]
    assert bm25.search("cat sat", k=3, allowed=np.array([False, True, True])).tolist() == [1]


# --- reciprocal-rank fusion ---------------------------------------------------------------------


def test_rrf_matches_a_hand_worked_example():
    fused = retrieval.reciprocal_rank_fusion([["a", "b", "c"], ["c", "a", "d"]], k=60)
    # a: 1/61 + 1/62, c: 1/63 + 1/61, b: 1/62, d: 1/63 (ranks start at 1)
    assert [item for item, _ in fused] == ["a", "c", "b", "d"]
    assert [score for _, score in fused] == pytest.approx([1 / 61 + 1 / 62, 1 / 63 + 1 / 61, 1 / 62, 1 / 63])


def test_rrf_ties_keep_first_met_order_and_k_matters():
    assert [item for item, _ in retrieval.reciprocal_rank_fusion([["x", "y"], ["y", "x"]])] == ["x", "y"]
    # k decides between one excellent and one poor rank (p: 1st and 10th) and two middling ones (q: 3rd and 3rd):
    # k = 0 gives p 1 + 1/10 = 1.1 against q 2/3, k = 60 gives p 1/61 + 1/70 = 0.03068 against q 2/63 = 0.03175
    rankings = [["p", "a1", "q"], ["b1", "b2", "q", "b4", "b5", "b6", "b7", "b8", "b9", "p"]]
    assert retrieval.reciprocal_rank_fusion(rankings, k=0)[0][0] == "p"
    assert retrieval.reciprocal_rank_fusion(rankings, k=60)[0][0] == "q"
    with pytest.raises(ValueError, match="twice"):
        retrieval.reciprocal_rank_fusion([["a", "a"]])


# --- chunking -----------------------------------------------------------------------------------

TEN_WORDS = " ".join(f"w{i}" for i in range(10))


@pytest.mark.parametrize(("size", "overlap", "spans"), [
    (4, 1, [(0, 4), (3, 7), (6, 10)]),
    (4, 2, [(0, 4), (2, 6), (4, 8), (6, 10)]),
    (4, 0, [(0, 4), (4, 8), (8, 10)]),
    (3, 2, [(0, 3), (1, 4), (2, 5), (3, 6), (4, 7), (5, 8), (6, 9), (7, 10)]),
    (10, 3, [(0, 10)]),
    (25, 5, [(0, 10)]),
])
def test_chunk_boundaries(size, overlap, spans):
    chunks = retrieval.chunk_words("doc", TEN_WORDS, size, overlap)
    assert [(c.start, c.end) for c in chunks] == spans
    words = TEN_WORDS.split()
    assert all(c.text == " ".join(words[c.start:c.end]) and c.document_id == "doc" for c in chunks)
    assert chunks[0].id == f"doc:0-{spans[0][1]}"


def test_any_span_of_overlap_plus_one_words_lies_whole_in_a_chunk():
    rng = random.Random(7)
    for _ in range(200):
        n, size = rng.randint(1, 40), rng.randint(1, 12)
        overlap = rng.randint(0, size - 1)
        chunks = retrieval.chunk_words("d", " ".join(map(str, range(n))), size, overlap)
        for start in range(0, n - overlap):
            assert any(c.start <= start and start + overlap + 1 <= c.end for c in chunks), (n, size, overlap, start)
        assert chunks[-1].end == n and all(b.start > a.start and b.end > a.end for a, b in zip(chunks, chunks[1:]))


def test_a_header_goes_with_every_chunk_and_moves_no_offset():
    plain = retrieval.chunk_documents([("doc", TEN_WORDS)], 4, 1)
    titled = retrieval.chunk_documents([("doc", TEN_WORDS), ("other", "x y")], 4, 1, headers={"doc": "Zebra"})
    assert [(c.start, c.end, c.text) for c in titled[:-1]] == [(c.start, c.end, c.text) for c in plain]
    assert all(c.searchable_text == f"Zebra. {c.text}" for c in titled[:-1]) and titled[-1].searchable_text == "x y"
    retriever = Retriever(titled)
    assert len(retriever.search("zebra", k=10, method="bm25")) == len(plain), "every chunk of doc is found by its title"


def test_chunking_rejects_bad_arguments():
    for size, overlap in [(0, 0), (4, 4), (4, -1)]:
        with pytest.raises(ValueError):
            retrieval.chunk_words("d", TEN_WORDS, size, overlap)
    with pytest.raises(ValueError, match="no words"):
        retrieval.chunk_words("empty", "   ", 4, 1)
    with pytest.raises(ValueError, match="unique"):
        retrieval.chunk_documents([("a", "x y"), ("a", "z")], 4, 1)


# --- metrics ------------------------------------------------------------------------------------

# The gold document "a" is at rank 1, 2, absent and 4.
RANKINGS = [["a", "b", "c"], ["b", "a", "c"], ["c", "b", "d"], ["d", "c", "b", "a"]]
GOLD = ["a", "a", "a", "a"]


def test_recall_at_k_on_a_known_ranking():
    assert [retrieval.recall_at_k(RANKINGS, GOLD, k).value for k in (1, 2, 3, 4)] == [0.25, 0.5, 0.5, 0.75]
    estimate = retrieval.recall_at_k(RANKINGS, GOLD, 2)
    assert (estimate.low, estimate.high) == instruct.wilson_interval(2, 4)
    with pytest.raises(ValueError, match="one ranking per gold"):
        retrieval.recall_at_k(RANKINGS, GOLD[:3], 1)


def test_mrr_on_a_known_ranking():
    assert retrieval.reciprocal_ranks(RANKINGS, GOLD).tolist() == [1.0, 0.5, 0.0, 0.25]
    estimate = retrieval.mean_reciprocal_rank(RANKINGS, GOLD)
    assert estimate.value == pytest.approx(1.75 / 4) and 0.0 <= estimate.low < estimate.value < estimate.high <= 1.0
    assert retrieval.mean_reciprocal_rank(RANKINGS, GOLD, k=3).value == pytest.approx(1.5 / 4)


def test_bootstrap_interval_covers_a_known_mean_at_the_stated_rate():
    constant = retrieval.bootstrap_interval(np.full(50, 0.5))
    assert constant == pytest.approx((0.5, 0.5))
    # 400 draws of a 0/1 variable with p = 0.3: the interval should be about +-1.96 * sqrt(0.21 / 400) = +-0.045
    values = (np.random.default_rng(1).random(400) < 0.3).astype(float)
    low, high = retrieval.bootstrap_interval(values)
    assert low < values.mean() < high and 0.07 < high - low < 0.11


# --- dense --------------------------------------------------------------------------------------


def test_dense_scores_are_cosines_of_the_embeddings():
    texts = ["red apple", "green apple pie", "blue sky"]
    index = retrieval.DenseIndex(texts, fake_embed)
    vectors = fake_embed(texts)
    query = fake_embed(["apple pie"])[0]
    cosines = vectors @ query / (np.linalg.norm(vectors, axis=1) * np.linalg.norm(query))
    assert index.scores("apple pie") == pytest.approx(cosines, abs=1e-6)
    assert index.search("apple pie", k=2).tolist() == np.argsort(-cosines)[:2].tolist()
    with pytest.raises(ValueError, match="shape"):
        retrieval.DenseIndex(texts, lambda batch: np.ones((len(batch) + 1, 4)))
    with pytest.raises(ValueError, match="zero vector"):
        retrieval.DenseIndex(texts, lambda batch: np.zeros((len(batch), 4)))


# --- permissions --------------------------------------------------------------------------------

VOCABULARY = "card transfer refund account fee limit pin cash top up travel exchange rate phone".split()


def random_collection(rng: random.Random, n_documents: int, tenants: list[str]):
    documents = [(f"d{i}", " ".join(rng.choices(VOCABULARY, k=rng.randint(3, 25)))) for i in range(n_documents)]
    tenant_of = {document_id: rng.choice(tenants) for document_id, _ in documents}
    return retrieval.chunk_documents(documents, size=6, overlap=2), tenant_of


def test_no_user_ever_gets_a_chunk_of_another_tenant_and_top_k_is_full():
    rng = random.Random(2024)
    tenants = [f"t{i}" for i in range(5)]
    for _ in range(4):
        chunks, tenant_of = random_collection(rng, rng.randint(5, 30), tenants)
        retriever = Retriever(chunks, embed=fake_embed, tenant_of=tenant_of)
        for _ in range(25):
            user = set(rng.sample(tenants, rng.randint(0, 3)))
            query = " ".join(rng.choices(VOCABULARY, k=rng.randint(1, 4)))
            visible = [i for i, c in enumerate(chunks) if tenant_of[c.document_id] in user]
            lexical_matches = [i for i in visible if retriever.bm25.scores(query)[i] > 0]
            for k in (1, 3, 10):
                for method in Retriever.METHODS:
                    hits = retriever.search(query, k, method, user_tenants=user)
                    assert all(tenant_of[h.chunk.document_id] in user for h in hits), (method, user)
                    assert all(tenant_of[d] in user for d in retrieval.document_ranking(hits))
                    # filtered before ranking: as many results as the user's own chunks allow, never fewer
                    expected = min(k, len(lexical_matches) if method == "bm25" else len(visible))
                    assert len(hits) == expected, (method, k, len(hits), expected)
                # and they are the user's best chunks, not merely allowed ones
                dense_scores = retriever.dense.scores(query)
                best = sorted((dense_scores[i] for i in visible), reverse=True)[:k]
                assert [h.score for h in retriever.search(query, k, "dense", user)] == pytest.approx(best)


def test_a_collection_with_owners_refuses_a_search_without_a_user():
    chunks, tenant_of = random_collection(random.Random(0), 5, ["a", "b"])
    retriever = Retriever(chunks, embed=fake_embed, tenant_of=tenant_of)
    with pytest.raises(ValueError, match="user_tenants"):
        retriever.search("card", 3, "bm25")
    with pytest.raises(ValueError, match="no tenant"):
        Retriever(chunks, tenant_of={"d0": "a"})
    with pytest.raises(ValueError, match="needs an embed"):
        Retriever(chunks).search("card", 3, "dense")
    assert retriever.search("card", 3, "hybrid", user_tenants=set()) == []


def test_document_ranking_keeps_each_document_at_its_best_chunk():
    hits = [retrieval.Hit(Chunk(d, s, s + 1, "x"), 0.0) for d, s in [("b", 0), ("a", 3), ("b", 5), ("c", 0)]]
    assert retrieval.document_ranking(hits) == ["b", "a", "c"]
