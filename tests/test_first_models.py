"""Lab 1's character-level language models: vocabulary, split, batches, training, evaluation, sampling."""

from __future__ import annotations

import math

import pytest
import torch

from llmlab import charlm
from llmlab.training import train

TEXT = "to be or not to be, that is the question. " * 40


def test_vocabulary_round_trip_and_split():
    vocabulary = charlm.CharVocabulary(TEXT)
    assert vocabulary.size == len(set(TEXT))
    assert vocabulary.decode(vocabulary.encode("to be")) == "to be"
    with pytest.raises(ValueError, match="not in the vocabulary"):
        vocabulary.encode("xyz")
    train_text, validation_text = charlm.train_validation_split("abcdefghij")
    assert (train_text, validation_text) == ("abcdefghi", "j")


def test_batches_are_windows_followed_by_their_next_character():
    ids = torch.arange(100)
    inputs, targets = charlm.next_character_batch(ids, context=5, batch_size=16, generator=torch.Generator().manual_seed(0), device=torch.device("cpu"))
    assert inputs.shape == (16, 5) and targets.shape == (16,)
    assert torch.equal(inputs[:, -1] + 1, targets) and torch.equal(inputs[:, 0] + 4, inputs[:, -1])


def test_untrained_bigram_is_uniform():
    vocabulary = charlm.CharVocabulary(TEXT)
    result = charlm.evaluate(charlm.BigramLM(vocabulary.size), vocabulary.encode(TEXT), start=1, device=torch.device("cpu"))
    assert result["perplexity"] == pytest.approx(vocabulary.size, rel=1e-5)
    assert result["cross_entropy"] == pytest.approx(math.log(vocabulary.size), rel=1e-5)


@pytest.mark.parametrize("make_model", [lambda v: charlm.BigramLM(v), lambda v: charlm.MLPLM(v, context=6, embedding_dim=8, hidden=64)])
def test_models_learn_a_repetitive_text(make_model):
    torch.manual_seed(0)
    vocabulary = charlm.CharVocabulary(TEXT)
    ids = vocabulary.encode(TEXT)
    model = make_model(vocabulary.size)
    generator = torch.Generator().manual_seed(1)
    device = torch.device("cpu")
    before = charlm.evaluate(model, ids, start=6, device=device)["perplexity"]
    history = train(model, lambda: charlm.next_character_batch(ids, model.context, 64, generator, device), steps=150,
                    learning_rate=3e-2, device=device)
    after = charlm.evaluate(model, ids, start=6, device=device)["perplexity"]
    assert after < before / 2 and history.losses[-1] < history.losses[0]
    text = charlm.sample(model, vocabulary, "to be or", 30, torch.Generator().manual_seed(0))
    assert text.startswith("to be or") and len(text) == 38 and set(text) <= set(TEXT)


def test_mlp_scores_every_character_from_the_same_start():
    vocabulary = charlm.CharVocabulary(TEXT)
    model = charlm.MLPLM(vocabulary.size, context=4)
    with pytest.raises(ValueError, match="less context"):
        charlm.evaluate(model, vocabulary.encode(TEXT), start=2, device=torch.device("cpu"))
    with pytest.raises(ValueError, match="reads 4 characters"):
        model(torch.zeros(2, 3, dtype=torch.long))
    assert charlm.parameter_count(model) == sum(p.numel() for p in model.parameters())
