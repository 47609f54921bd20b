"""Tokenizers: BPE merges by hand, byte-level BPE trained with `tokenizers`, token counts (the character tokenizer: test_lm.py)."""

from __future__ import annotations

import pytest

from llmlab import tokenization


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
