"""Every tokenizer of the course: characters, byte-pair encoding by hand, and BPE trained with `tokenizers`.

- ``CharTokenizer``: one token per distinct character (the character-level models of Labs 1 and 3);
- ``toy_corpus`` … ``train_toy_bpe``: BPE merges written out (Lab 1's exercise);
- ``train_byte_level_bpe``: a GPT-2-style byte-level BPE trained with the `tokenizers` library;
- ``count_tokens`` / ``characters_per_token``: what a tokenizer makes of a text, for any tokenizer.

A toy corpus here is a dict from a word, written as a tuple of symbols, to how
often it occurs: ``{("l", "o", "w"): 5, ("l", "o", "w", "e", "r"): 2}``. One BPE
merge finds the most frequent adjacent pair of symbols, counted over the whole
corpus, and fuses every occurrence of it into one new symbol (Sennrich et al., 2016).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterable

import torch

Words = dict[tuple[str, ...], int]
Pair = tuple[str, str]


class CharTokenizer:
    """One token per distinct character, in sorted order (65 for Tiny Shakespeare)."""

    def __init__(self, alphabet: str):
        if not alphabet:
            raise ValueError("the alphabet is empty: build the tokenizer from a non-empty text")
        if len(set(alphabet)) != len(alphabet):
            raise ValueError("the alphabet must list each character once")
        self.alphabet = alphabet
        self.ids = {character: index for index, character in enumerate(alphabet)}

    @classmethod
    def from_text(cls, text: str) -> "CharTokenizer":
        return cls("".join(sorted(set(text))))

    @property
    def vocab_size(self) -> int:
        return len(self.alphabet)

    def encode(self, text: str) -> torch.Tensor:
        unknown = sorted(set(text) - set(self.ids))
        if unknown:
            raise ValueError(f"characters not in the tokenizer's alphabet: {''.join(unknown)[:20]!r}")
        return torch.tensor([self.ids[character] for character in text], dtype=torch.long)

    def decode(self, ids) -> str:
        return "".join(self.alphabet[int(i)] for i in torch.as_tensor(ids).tolist())


def toy_corpus(text: str) -> Words:
    """Split ``text`` on whitespace and write each word as a tuple of its characters, with its count."""
    return dict(Counter(tuple(word) for word in text.split()))


def pair_counts(words: Words) -> Counter:
    """How often each adjacent pair of symbols occurs, each word weighted by its count."""
    counts: Counter = Counter()
    for symbols, count in words.items():
        for pair in zip(symbols, symbols[1:]):
            counts[pair] += count
    return counts


def merge_pair(words: Words, pair: Pair) -> Words:
    """Replace every occurrence of ``pair`` by one fused symbol, scanning each word left to right."""
    first, second = pair
    merged: Words = {}
    for symbols, count in words.items():
        out, i = [], 0
        while i < len(symbols):
            if i + 1 < len(symbols) and symbols[i] == first and symbols[i + 1] == second:
                out.append(first + second)
                i += 2  # a fused pair is not available to overlap the next one: "aaa" -> "aa", "a"
            else:
                out.append(symbols[i])
                i += 1
        key = tuple(out)
        merged[key] = merged.get(key, 0) + count
    return merged


def bpe_merge_step(words: Words) -> tuple[Pair, Words]:
    """One BPE merge: the most frequent pair and the corpus after merging it.

    Ties go to the smallest pair in sorted order.
    """
    counts = pair_counts(words)
    if not counts:
        raise ValueError("no word has two symbols left: nothing to merge")
    best = min(counts, key=lambda pair: (-counts[pair], pair))
    return best, merge_pair(words, best)


def train_toy_bpe(words: Words, merges: int) -> tuple[list[Pair], Words]:
    """Apply ``merges`` merge steps (fewer if the words run out of pairs); returns the merges in order and the final corpus."""
    learned = []
    for _ in range(merges):
        if not pair_counts(words):
            break
        pair, words = bpe_merge_step(words)
        learned.append(pair)
    return learned, words


def train_byte_level_bpe(texts: Iterable[str], vocab_size: int, min_frequency: int = 2):
    """A byte-level BPE tokenizer (as in GPT-2) trained on ``texts`` with the `tokenizers` library.

    It starts from the 256 byte symbols, so it can encode any text without an
    unknown token, and learns ``vocab_size - 256`` merges.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    if vocab_size < 256:
        raise ValueError(f"a byte-level vocabulary holds at least the 256 bytes; got vocab_size={vocab_size}")
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, min_frequency=min_frequency, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tokenizer.train_from_iterator(texts, trainer)
    return tokenizer


def count_tokens(texts: list[str], encode: Callable[[list[str]], list[list[int]]]) -> list[int]:
    """Number of tokens of each text under ``encode`` (a function from a batch of texts to lists of ids)."""
    if isinstance(texts, str):
        raise TypeError("count_tokens expects a list of strings, not one string")
    return [len(ids) for ids in encode(list(texts))]


def bpe_encoder(tokenizer) -> Callable[[list[str]], list[list[int]]]:
    """A batch encode function for a `tokenizers.Tokenizer`."""
    return lambda texts: [encoding.ids for encoding in tokenizer.encode_batch(texts)]


def hf_encoder(tokenizer) -> Callable[[list[str]], list[list[int]]]:
    """A batch encode function for a `transformers` tokenizer, without the special tokens ([CLS], [SEP]) it adds."""
    return lambda texts: tokenizer(texts, add_special_tokens=False)["input_ids"]


def characters_per_token(texts: list[str], encode: Callable[[list[str]], list[list[int]]]) -> float:
    """Total characters divided by total tokens: how much text one token carries on average (higher = cheaper)."""
    tokens = sum(count_tokens(texts, encode))
    if tokens == 0:
        raise ValueError("the texts produced no tokens")
    return sum(len(text) for text in texts) / tokens
