"""Pretraining a small character-level GPT on Tiny Shakespeare (Lab 3).

The pieces, in the order a run uses them: a character tokenizer, the 90/10
train/validation split that nanoGPT's shakespeare_char benchmark uses, random
training windows, a validation loss on fixed windows, the training run itself
(``llmlab.training.train`` with checkpoints), and sampling with temperature and
top-k. ``benchmark`` is what ``python -m llmlab.bench pretrain`` runs.
"""

from __future__ import annotations

import json
import platform
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from torch.nn import functional as F

from llmlab.compute import training_flops
from llmlab.data import tiny_shakespeare
from llmlab.metrics import perplexity
from llmlab.model import GPT, GPTConfig
from llmlab.presets import LAB_PRESETS
from llmlab.runtime import describe_device, pick_device, pick_precision, seed_everything
from llmlab.training import History, train


class CharTokenizer:
    """One token per distinct character of the training text (65 for Tiny Shakespeare)."""

    def __init__(self, alphabet: str):
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
        return "".join(self.alphabet[int(i)] for i in ids)


@dataclass
class CharCorpus:
    tokenizer: CharTokenizer
    train: torch.Tensor
    val: torch.Tensor


def shakespeare_corpus(fraction: float = 1.0) -> CharCorpus:
    """Tiny Shakespeare as token ids: first 90% for training, last 10% for validation (as nanoGPT splits it).

    ``fraction`` < 1 keeps only the start of each split (for the smoke preset).
    """
    text = tiny_shakespeare()
    tokenizer = CharTokenizer.from_text(text)
    ids = tokenizer.encode(text)
    split = int(0.9 * len(ids))
    train_ids, val_ids = ids[:split], ids[split:]
    if fraction < 1.0:
        train_ids = train_ids[: int(len(train_ids) * fraction)]
        val_ids = val_ids[: max(int(len(val_ids) * fraction), 1024)]
    return CharCorpus(tokenizer, train_ids, val_ids)


def random_windows(ids: torch.Tensor, batch_size: int, context: int, generator: torch.Generator, device=None):
    """``batch_size`` random windows of ``context`` tokens, and the same windows shifted by one as targets."""
    if len(ids) <= context:
        raise ValueError(f"the text has {len(ids)} tokens, fewer than the context of {context} + 1")
    starts = torch.randint(0, len(ids) - context, (batch_size,), generator=generator)
    offsets = torch.arange(context)
    inputs = ids[starts[:, None] + offsets]
    targets = ids[starts[:, None] + offsets + 1]
    return inputs.to(device), targets.to(device)


class FixedWindowLoss:
    """Mean cross-entropy over the same windows every time, spread evenly across a split.

    Evenly spaced windows make successive evaluations comparable (no sampling
    noise between them) and representative of the whole split, not of one random
    corner of it. ``FixedWindowLoss.whole(ids, context)`` tiles the entire split.
    """

    def __init__(self, ids: torch.Tensor, n_windows: int, context: int, batch_size: int = 256, starts: torch.Tensor | None = None):
        if len(ids) <= context:
            raise ValueError(f"the split has {len(ids)} tokens, fewer than the context of {context} + 1")
        if starts is None:
            starts = torch.linspace(0, len(ids) - context - 1, n_windows).long()
        offsets = torch.arange(context)
        self.inputs = ids[starts[:, None] + offsets]
        self.targets = ids[starts[:, None] + offsets + 1]
        self.batch_size = batch_size

    @classmethod
    def whole(cls, ids: torch.Tensor, context: int) -> "FixedWindowLoss":
        """Non-overlapping windows covering the split: every token is predicted once."""
        n_windows = (len(ids) - 1) // context
        return cls(ids, n_windows, context, starts=torch.arange(n_windows) * context)

    @property
    def tokens(self) -> int:
        return self.targets.numel()

    @torch.no_grad()
    def __call__(self, model: torch.nn.Module) -> float:
        device = next(model.parameters()).device
        total = 0.0
        for start in range(0, len(self.inputs), self.batch_size):
            inputs = self.inputs[start:start + self.batch_size].to(device)
            targets = self.targets[start:start + self.batch_size].to(device)
            logits = model(inputs)
            total += F.cross_entropy(logits.flatten(0, 1).float(), targets.flatten(), reduction="sum").item()
        return total / self.tokens


def causal_lm_loss(logits: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
    """Cross-entropy of predicting token t+1 from positions ≤ t: logits (B, n, V) for tokens (B, n)."""
    if logits.shape[:2] != tokens.shape:
        raise ValueError(f"logits {tuple(logits.shape)} and tokens {tuple(tokens.shape)} must share (batch, positions)")
    scores = logits[:, :-1].flatten(0, 1)
    if scores.dtype in (torch.float16, torch.bfloat16):
        scores = scores.float()  # a softmax over a large vocabulary needs fp32's range and precision
    return F.cross_entropy(scores, tokens[:, 1:].flatten())


@torch.no_grad()
def generate(model: GPT, prompt: torch.Tensor, new_tokens: int, temperature: float = 1.0, top_k: int | None = None,
             generator: torch.Generator | None = None) -> torch.Tensor:
    """Extend ``prompt`` (1-D ids) by sampling one token at a time.

    ``temperature`` divides the logits (below 1 sharpens, above 1 flattens);
    ``top_k`` keeps only the k most likely tokens before sampling.
    """
    if temperature <= 0:
        raise ValueError(f"temperature must be positive, got {temperature}")
    model.eval()
    device = next(model.parameters()).device
    tokens = prompt.to(device).view(1, -1)
    for _ in range(new_tokens):
        window = tokens[:, -model.config.context:]
        logits = model(window)[:, -1, :].float() / temperature
        if top_k is not None:
            kth_largest = torch.topk(logits, min(top_k, logits.shape[-1])).values[:, -1, None]
            logits = logits.masked_fill(logits < kth_largest, float("-inf"))
        probabilities = torch.softmax(logits, dim=-1)
        next_token = torch.multinomial(probabilities.cpu(), 1, generator=generator).to(device)
        tokens = torch.cat([tokens, next_token], dim=1)
    return tokens[0]


def model_config(settings: dict, vocab_size: int) -> GPTConfig:
    return GPTConfig(
        vocab_size=vocab_size, context=settings["context"], d_model=settings["d_model"], n_heads=settings["n_heads"],
        n_layers=settings["n_layers"], dropout=settings["dropout"], rotary=settings["rotary"], bias=settings["bias"],
    )


def pretrain(settings: dict, device: torch.device | None = None, corpus: CharCorpus | None = None, seed: int = 0,
             checkpoint_path: str | Path | None = None, resume: bool = False, stop_after_step: int | None = None,
             description: str = "pretraining") -> tuple[GPT, History, CharCorpus]:
    """Train a character-level GPT on Tiny Shakespeare with the given preset settings."""
    device = device or pick_device()
    corpus = corpus or shakespeare_corpus(settings.get("data_fraction", 1.0))
    seed_everything(seed)
    model = GPT(model_config(settings, corpus.tokenizer.vocab_size))
    data_generator = torch.Generator().manual_seed(seed + 1)
    train_ids = corpus.train
    validation = FixedWindowLoss(corpus.val, settings["eval_windows"], settings["context"])
    history = train(
        model,
        next_batch=lambda: random_windows(train_ids, settings["batch_size"], settings["context"], data_generator, device),
        steps=settings["steps"],
        learning_rate=settings["learning_rate"],
        device=device,
        precision=pick_precision(device),
        evaluate=lambda: {"val_loss": validation(model)},
        eval_every=settings["eval_every"],
        warmup_steps=settings["warmup_steps"],
        weight_decay=settings["weight_decay"],
        betas=tuple(settings["betas"]),
        description=description,
        checkpoint_path=checkpoint_path,
        checkpoint_every=settings.get("checkpoint_every"),
        resume=resume,
        data_generator=data_generator,
        stop_after_step=stop_after_step,
        checkpoint_metadata={"settings": settings, "alphabet": corpus.tokenizer.alphabet},
    )
    return model, history, corpus


def benchmark(preset: str, milestones=(2.5, 2.2, 2.0, 1.9, 1.88)) -> dict:
    """Train Lab 3's model with a preset and print seconds to each validation-loss milestone and the final loss."""
    settings = LAB_PRESETS["03_pretraining"][preset]
    device = pick_device()
    torch.set_num_threads(torch.get_num_threads())  # the default: one thread per core
    process_started = time.perf_counter()
    corpus = shakespeare_corpus(settings.get("data_fraction", 1.0))
    model, history, _ = pretrain(settings, device, corpus, description=f"pretrain ({preset})")
    final_validation = FixedWindowLoss.whole(corpus.val, settings["context"])
    final_loss = final_validation(model)
    tokens = settings["steps"] * settings["batch_size"] * settings["context"]
    report = {
        "preset": preset,
        "device": describe_device(device),
        "machine": platform.processor() or platform.machine(),
        "parameters": model.parameter_count(),
        "training_seconds": history.eval_seconds[-1],
        "seconds_since_start": time.perf_counter() - process_started,
        "milestones": {str(m): history.first_time_at_most("val_loss", m) for m in milestones},
        "val_loss_last_eval": history.evals[-1]["val_loss"],
        "val_loss_final": final_loss,
        "final_eval_tokens": final_validation.tokens,
        "training_tokens": tokens,
        "training_flops_6ND": training_flops(model.parameter_count(), tokens),
    }
    print(f"bench pretrain | preset {preset} | {report['device']} | {report['parameters']:,} parameters | {settings['steps']} steps")
    for milestone, seconds in report["milestones"].items():
        shown = f"{seconds:6.1f} s" if seconds is not None else "   not reached"
        print(f"  val loss ≤ {milestone:<5}: {shown}")
    print(f"  training wall time: {report['training_seconds']:.1f} s (process: {report['seconds_since_start']:.1f} s)")
    print(f"  val loss at the last evaluation ({settings['eval_windows'] * settings['context']:,} tokens): {report['val_loss_last_eval']:.4f}")
    print(f"  val loss, final, on the whole validation split ({report['final_eval_tokens']:,} characters): {final_loss:.4f} "
          f"(perplexity {perplexity(final_loss):.2f})")
    print(json.dumps(report))
    return report
