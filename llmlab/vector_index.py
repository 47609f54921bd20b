"""A real vector index for dense retrieval: FAISS, exact or HNSW, and what the approximation costs.

``llmlab.retrieval.DenseIndex`` multiplies the query with every stored vector: exact, and fine for a
few thousand passages, but its time grows with the collection. An approximate index answers in
time that grows far more slowly, and in exchange sometimes misses a true nearest neighbour.
``recall_vs_latency`` measures both sides of that trade on your own vectors.

Why FAISS (Johnson, Douze and Jegou 2021; Douze et al. 2024): ``pip install faiss-cpu`` brings one
wheel whose only requirements are NumPy and packaging; it runs in the notebook's process (nothing
to start), offline, on CPU; and the exact index (``IndexFlatIP``) and the graph index HNSW
(``IndexHNSWFlat``, Malkov and Yashunin 2020) sit behind one interface, with HNSW's knobs (links
per node, the beam widths at build and at search time) in plain view. It is a library, not a
database: it keeps vectors, not documents, owners or updates across processes. A collection that
outgrows one machine moves to a vector database server; with Qdrant, for instance, the client
code stays the same and one line changes, ``QdrantClient(path="index/")`` (embedded, in the
process) to ``QdrantClient(url="http://vectors.internal:6333")`` (a server or cluster, which
builds its HNSW graphs itself).

Vectors are scaled to length 1 here, so an inner product is a cosine, as everywhere in the course.
"""

from __future__ import annotations

import time
from collections.abc import Sequence

import numpy as np

from llmlab.progress import tqdm
from llmlab.retrieval import bootstrap_interval, unit_rows

KINDS = ("exact", "hnsw")


def import_faiss():
    try:
        import faiss
    except ImportError as error:
        raise ImportError("llmlab.vector_index needs FAISS: pip install faiss-cpu (or pip install -e '.[labs]')") from error
    return faiss


class VectorIndex:
    """Unit vectors searched by inner product (cosine): ``kind="exact"`` compares with every vector, ``"hnsw"`` walks a graph.

    HNSW (Malkov and Yashunin 2020) links each vector to ``links`` near neighbours on several
    layers and answers a query by a greedy walk that keeps the ``ef_search`` best candidates met so
    far: a wider beam finds more of the true neighbours and costs more time. ``ef_construction`` is
    the same beam when the graph is built: a better graph for a slower build.
    """

    def __init__(self, vectors, kind: str = "exact", links: int = 32, ef_construction: int = 200):
        if kind not in KINDS:
            raise ValueError(f"kind must be one of {', '.join(KINDS)}, got {kind!r}")
        faiss = import_faiss()
        vectors = np.asarray(vectors, dtype=np.float32)
        if vectors.ndim != 2 or len(vectors) == 0:
            raise ValueError(f"expected a non-empty (n, d) array of vectors, got shape {vectors.shape}")
        vectors = unit_rows(vectors, len(vectors), "vectors")
        self.kind, self.size, self.dimensions = kind, len(vectors), vectors.shape[1]
        if kind == "exact":
            self.index = faiss.IndexFlatIP(self.dimensions)
        else:
            if links < 2 or ef_construction < 1:
                raise ValueError(f"HNSW needs links >= 2 and ef_construction >= 1, got {links} and {ef_construction}")
            self.index = faiss.IndexHNSWFlat(self.dimensions, links, faiss.METRIC_INNER_PRODUCT)
            self.index.hnsw.efConstruction = ef_construction
        started = time.perf_counter()
        self.index.add(np.ascontiguousarray(vectors))
        self.build_seconds = time.perf_counter() - started

    def search(self, queries, k: int, ef_search: int | None = None,
               allowed: Sequence[int] | np.ndarray | None = None) -> list[tuple[np.ndarray, np.ndarray]]:
        """(positions, cosines) of the best ``k`` stored vectors for each query, best first.

        ``ef_search`` is HNSW's search beam (at least ``k``; the exact index takes none). ``allowed``
        (positions, or a boolean mask over the stored vectors) limits the search to those vectors,
        as a permission filter: the exact index then ranks only them, so its top-k is the best
        ``k`` allowed vectors. HNSW applies the filter while it walks the graph; every result is
        allowed, but when few vectors are allowed the walk can miss some of the best, or return
        fewer than ``k``: filtered approximate search is harder, and is measured, not assumed.
        A query can get fewer than ``k`` results, never a placeholder.
        """
        faiss = import_faiss()
        queries = np.asarray(queries, dtype=np.float32)
        queries = queries[None] if queries.ndim == 1 else queries  # one query may come as a plain vector
        queries = unit_rows(queries, len(queries), "queries")
        if queries.shape[1] != self.dimensions:
            raise ValueError(f"queries have {queries.shape[1]} dimensions, the index {self.dimensions}")
        if not 1 <= k <= self.size:
            raise ValueError(f"k={k} must be between 1 and the number of stored vectors ({self.size})")
        selector = None
        if allowed is not None:
            allowed = np.asarray(allowed)
            if allowed.dtype == bool:
                if allowed.shape != (self.size,):
                    raise ValueError(f"a boolean mask needs one entry per stored vector ({self.size}), got {allowed.shape}")
                allowed = np.flatnonzero(allowed)
            if len(allowed) and (allowed.min() < 0 or allowed.max() >= self.size):
                raise ValueError(f"allowed positions must lie in 0..{self.size - 1}")
            selector = faiss.IDSelectorBatch(np.ascontiguousarray(allowed, dtype=np.int64))
        if self.kind == "exact":
            if ef_search is not None:
                raise ValueError("ef_search is HNSW's beam width; the exact index has none")
            parameters = faiss.SearchParameters(sel=selector) if selector is not None else None
        else:
            ef_search = max(k, 16) if ef_search is None else ef_search
            if ef_search < k:
                raise ValueError(f"ef_search={ef_search} must be at least k={k}: the beam holds the results")
            parameters = faiss.SearchParametersHNSW(efSearch=ef_search)
            if selector is not None:
                parameters.sel = selector
        scores, positions = self.index.search(np.ascontiguousarray(queries), k, params=parameters)
        found = positions >= 0  # FAISS pads with -1 when it has fewer than k results
        return [(row_positions[keep], row_scores[keep]) for row_positions, row_scores, keep in zip(positions, scores, found)]


def recall_vs_latency(vectors, queries, k: int = 10, ef_values: Sequence[int] = (16, 32, 64, 128, 256), links: int = 32,
                      ef_construction: int = 200, threads: int | None = 1, progress: bool = True) -> list[dict]:
    """One row per index setting: how many of the exact top-``k`` HNSW finds, and how long one query takes.

    Each query is searched alone, as a user's request would be, and timed; latency is the median
    and 95th percentile over queries, in milliseconds. ``recall`` is the mean over queries of the
    share of the exact top-``k`` that the setting returns, with a 95 % bootstrap interval over
    queries. ``threads`` fixes FAISS's OpenMP threads during the measurement (then restores them),
    because timings taken with other work on the cores are not comparable; None leaves them.
    """
    faiss = import_faiss()
    queries = np.asarray(queries, dtype=np.float32)
    if queries.ndim != 2 or len(queries) == 0:
        raise ValueError(f"expected a non-empty (q, d) array of queries, got shape {queries.shape}")
    previous_threads = faiss.omp_get_max_threads()
    if threads is not None:
        faiss.omp_set_num_threads(threads)
    try:
        exact = VectorIndex(vectors, "exact")
        hnsw = VectorIndex(vectors, "hnsw", links=links, ef_construction=ef_construction)
        truth = [set(positions.tolist()) for positions, _ in exact.search(queries, k)]

        def measure(index: VectorIndex, ef_search: int | None) -> dict:
            seconds, recalls = [], []
            for query, expected in zip(queries, truth):
                started = time.perf_counter()
                positions, _ = index.search(query, k, ef_search)[0]
                seconds.append(time.perf_counter() - started)
                recalls.append(len(expected & set(positions.tolist())) / len(expected))
            low, high = bootstrap_interval(recalls)
            return {"index": index.kind if ef_search is None else f"hnsw ef={ef_search}", "ef_search": ef_search,
                    "recall": float(np.mean(recalls)), "recall_low": low, "recall_high": high,
                    "p50_ms": 1000 * float(np.median(seconds)), "p95_ms": 1000 * float(np.percentile(seconds, 95)),
                    "build_s": index.build_seconds}

        rows = [measure(exact, None)]
        for ef_search in tqdm(list(ef_values), desc="HNSW ef_search", disable=not progress):
            rows.append(measure(hnsw, max(ef_search, k)))
        return rows
    finally:
        faiss.omp_set_num_threads(previous_threads)
