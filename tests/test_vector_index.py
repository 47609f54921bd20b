"""llmlab.vector_index: FAISS's exact index agrees with a matrix product, HNSW approaches it as its beam widens,
and a permission filter lets nothing else through. Small random collections: about a second."""

from __future__ import annotations

import numpy as np
import pytest

from llmlab.vector_index import VectorIndex, recall_vs_latency


def clustered(n: int, dimensions: int = 32, clusters: int = 20, seed: int = 0) -> np.ndarray:
    """Vectors around a few centres, as sentence embeddings are (uniform random vectors have no near neighbours)."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((clusters, dimensions))
    return (centres[rng.integers(0, clusters, n)] + 0.5 * rng.standard_normal((n, dimensions))).astype(np.float32)


def brute_force(vectors: np.ndarray, query: np.ndarray, k: int, allowed: np.ndarray | None = None):
    cosines = vectors @ query / (np.linalg.norm(vectors, axis=1) * np.linalg.norm(query))
    candidates = np.arange(len(vectors)) if allowed is None else np.flatnonzero(allowed)
    best = candidates[np.argsort(-cosines[candidates])[:k]]
    return best, cosines[best]


def test_exact_index_is_the_matrix_product():
    vectors, queries = 3.0 * clustered(500), clustered(5, seed=1)  # not unit length: the index must normalise
    index = VectorIndex(vectors, "exact")
    for query, (positions, scores) in zip(queries, index.search(queries, 7)):
        expected_positions, expected_scores = brute_force(vectors, query, 7)
        assert positions.tolist() == expected_positions.tolist()
        assert scores == pytest.approx(expected_scores, abs=1e-5)


def test_hnsw_recall_grows_with_its_beam_and_reaches_the_exact_answer():
    rows = recall_vs_latency(clustered(2000), clustered(40, seed=2), k=10, ef_values=(10, 200), links=8,
                             ef_construction=40, progress=False)
    exact, narrow, wide = rows
    assert exact["index"] == "exact" and exact["recall"] == 1.0
    assert narrow["recall"] < wide["recall"] and wide["recall"] >= 0.95, rows
    assert all(row["recall_low"] <= row["recall"] <= row["recall_high"] and row["p50_ms"] > 0 for row in rows)


@pytest.mark.parametrize("kind", ["exact", "hnsw"])
def test_a_permission_filter_lets_only_allowed_vectors_through(kind):
    rng = np.random.default_rng(3)
    vectors = clustered(800)
    index = VectorIndex(vectors, kind, links=16, ef_construction=40)
    for trial in range(20):
        allowed = rng.random(len(vectors)) < rng.choice([0.005, 0.05, 0.5])
        query = clustered(1, seed=100 + trial)[0]
        ef = None if kind == "exact" else 64
        positions, _ = index.search(query, 10, ef, allowed=allowed)[0]
        assert allowed[positions].all() and len(positions) <= min(10, allowed.sum())
        if kind == "exact":  # filtered before ranking: the best allowed ones, as many as there are
            assert positions.tolist() == brute_force(vectors, query, 10, allowed)[0].tolist()
        same_by_positions, _ = index.search(query, 10, ef, allowed=np.flatnonzero(allowed))[0]
        assert same_by_positions.tolist() == positions.tolist()


def test_bad_arguments_are_one_line_errors():
    index, hnsw = VectorIndex(clustered(50), "exact"), VectorIndex(clustered(50), "hnsw")
    query = clustered(1)[0]
    for call, message in [(lambda: index.search(query, 3, ef_search=10), "exact index has none"),
                          (lambda: hnsw.search(query, 10, ef_search=5), "at least k"),
                          (lambda: index.search(query, 51), "between 1 and"),
                          (lambda: index.search(query[:5], 3), "dimensions"),
                          (lambda: index.search(query, 3, allowed=np.ones(7, bool)), "one entry per stored"),
                          (lambda: VectorIndex(clustered(5), "ivf"), "kind must be")]:
        with pytest.raises(ValueError, match=message) as error:
            call()
        assert "\n" not in str(error.value)
