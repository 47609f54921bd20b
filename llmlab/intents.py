"""Route customer messages to intents: the classifier of Lab 4, reused by the business lab.

Three recipes share one model shape, MiniLM → mean pooling → a linear layer over the intents:

- ``"frozen"``:   the pretrained encoder untouched; only the linear layer is learned, by a
                  logistic regression on sentence embeddings (seconds once the embeddings exist);
- ``"finetune"``: every encoder weight (or the top ``train_layers`` layers) trained with the head;
- ``"lora"``:     the encoder frozen, low-rank adapters (``peft``) trained in its attention layers.

    classifier = train_intent_classifier(texts, labels, intents, recipe="frozen")
    classifier.predict(["I still haven't received my card"])   # [("card_arrival", 0.93)]
    classifier.save("runs/intents"); IntentClassifier.load("runs/intents")
"""

from __future__ import annotations

import json
import os
import platform
import re
import time
import warnings
from pathlib import Path

import numpy as np
import torch
from torch import nn

from llmlab.encoders import load_minilm, mean_pool
from llmlab.progress import tqdm
from llmlab.runtime import autocast, grad_scaler, pick_device, pick_precision, seed_everything
from llmlab.training import cosine_learning_rate

RECIPES = ("frozen", "finetune", "lora")

# What a recipe uses when ``settings`` leaves a key out; the lab's presets override these.
DEFAULT_SETTINGS = {
    "frozen": dict(C=20.0, max_iter=300, max_length=64, embed_batch_size=128),
    "finetune": dict(
        epochs=3, batch_size=32, learning_rate=5e-5, head_learning_rate=2e-3, weight_decay=0.01,
        warmup_fraction=0.1, dropout=0.1, max_length=64, train_layers=None, seed=0,
    ),
    "lora": dict(
        epochs=3, batch_size=32, learning_rate=1e-3, head_learning_rate=2e-3, weight_decay=0.01,
        warmup_fraction=0.1, dropout=0.1, max_length=64, lora_r=8, lora_alpha=16, lora_dropout=0.1,
        lora_targets=["query", "key", "value", "dense"], seed=0,
    ),
}

_CONFIG_FILE = "intent_classifier.json"
_HEAD_FILE = "head.safetensors"


# --- input checks: one clear line for each kind of bad input ----------------------------------


def _check_texts(texts) -> list[str]:
    if isinstance(texts, str):
        raise TypeError("expected a list of strings, got a single string; wrap it: [text]")
    texts = list(texts)
    if not texts:
        raise ValueError("expected at least one text, got an empty list")
    for position, text in enumerate(texts):
        if not isinstance(text, str):
            raise TypeError(f"text {position} is a {type(text).__name__}, expected a str")
    return texts


def _check_labels(labels, n_texts: int, n_intents: int) -> np.ndarray:
    labels = np.asarray(labels)
    if labels.ndim != 1 or len(labels) != n_texts:
        raise ValueError(f"expected one label per text ({n_texts}), got labels of shape {labels.shape}")
    if not np.issubdtype(labels.dtype, np.integer):
        raise TypeError(f"labels must be integer intent ids, got dtype {labels.dtype}")
    bad = labels[(labels < 0) | (labels >= n_intents)]
    if bad.size:
        raise ValueError(f"label {int(bad[0])} is out of range: ids run from 0 to {n_intents - 1} ({n_intents} intents)")
    return labels.astype(np.int64)


# --- the model ----------------------------------------------------------------------------------


class EncoderClassifier(nn.Module):
    """Encoder → mean pooling (→ unit length) → dropout → linear layer: logits over the intents."""

    def __init__(self, encoder: nn.Module, n_intents: int, normalize: bool, dropout: float = 0.0):
        super().__init__()
        self.encoder = encoder
        self.normalize = normalize
        self.dropout = nn.Dropout(dropout)
        self.head = nn.Linear(encoder.config.hidden_size, n_intents)

    def sentence_vectors(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        hidden = self.encoder(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        pooled = mean_pool(hidden, attention_mask)
        return nn.functional.normalize(pooled, dim=-1) if self.normalize else pooled

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return self.head(self.dropout(self.sentence_vectors(input_ids, attention_mask)).to(self.head.weight.dtype))


def _length_sorted_batches(lengths: list[int], batch_size: int, generator: np.random.Generator | None) -> list[np.ndarray]:
    """Batches of similar-length texts, so padding wastes little compute.

    For training (``generator`` given) the texts are shuffled, sorted by length inside windows
    of 50 batches and the batches shuffled again: each epoch sees different neighbours.
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


def _pad(token_ids: list[list[int]], pad_id: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(len(ids) for ids in token_ids)
    input_ids = torch.full((len(token_ids), width), pad_id, dtype=torch.long)
    attention_mask = torch.zeros((len(token_ids), width), dtype=torch.long)
    for row, ids in enumerate(token_ids):
        input_ids[row, :len(ids)] = torch.tensor(ids)
        attention_mask[row, :len(ids)] = 1
    return input_ids.to(device), attention_mask.to(device)


def _tokenize(tokenizer, texts: list[str], max_length: int) -> list[list[int]]:
    return tokenizer(texts, truncation=True, max_length=max_length)["input_ids"]


@torch.no_grad()
def _sentence_vectors_or_logits(model: EncoderClassifier, tokenizer, texts: list[str], max_length: int, batch_size: int,
                                logits: bool, progress: bool, description: str) -> torch.Tensor:
    device = next(model.parameters()).device
    precision = pick_precision(device)
    token_ids = _tokenize(tokenizer, texts, max_length)
    batches = _length_sorted_batches([len(ids) for ids in token_ids], batch_size, generator=None)
    was_training = model.training
    model.eval()
    outputs = [None] * len(batches)
    for number, batch in enumerate(tqdm(batches, desc=description, disable=not progress or len(batches) < 4)):
        input_ids, attention_mask = _pad([token_ids[i] for i in batch], tokenizer.pad_token_id, device)
        with autocast(device, precision):
            out = model(input_ids, attention_mask) if logits else model.sentence_vectors(input_ids, attention_mask)
        outputs[number] = out.float().cpu()
    model.train(was_training)
    result = torch.empty(len(texts), outputs[0].shape[-1])
    for batch, out in zip(batches, outputs):
        result[torch.as_tensor(batch)] = out
    return result


class IntentClassifier:
    """A trained intent router: ``predict(texts)`` → [(intent, confidence)], ``save``/``load`` a folder.

    ``intents`` lists the intent names in label-id order; ``recipe`` says how it was trained;
    ``training_seconds`` and ``trainable_parameters`` describe what training cost.
    """

    def __init__(self, intents: list[str], model: EncoderClassifier, tokenizer, recipe: str, max_length: int = 64,
                 training_seconds: float = float("nan"), trainable_parameters: int = 0):
        self.intents = list(intents)
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.recipe = recipe
        self.max_length = max_length
        self.training_seconds = training_seconds
        self.trainable_parameters = trainable_parameters

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def to(self, device: torch.device | str) -> "IntentClassifier":
        self.model.to(device)
        return self

    def logits(self, texts: list[str], batch_size: int = 128, progress: bool = False) -> torch.Tensor:
        texts = _check_texts(texts)
        return _sentence_vectors_or_logits(self.model, self.tokenizer, texts, self.max_length, batch_size,
                                           logits=True, progress=progress, description="classifying")

    def predict_proba(self, texts: list[str], batch_size: int = 128, progress: bool = False) -> np.ndarray:
        """(len(texts), len(intents)) probabilities; each row sums to 1."""
        return torch.softmax(self.logits(texts, batch_size, progress).double(), dim=-1).numpy()

    def predict(self, texts: list[str], batch_size: int = 128, progress: bool = False) -> list[tuple[str, float]]:
        """The most likely intent of each text and its probability (the model's confidence, in [0, 1])."""
        probabilities = self.predict_proba(texts, batch_size, progress)
        best = probabilities.argmax(axis=1)
        return [(self.intents[i], float(probabilities[row, i])) for row, i in enumerate(best)]

    def save(self, folder) -> None:
        """Write the classifier to ``folder`` as safetensors + JSON.

        frozen: only the linear head (the encoder is the published MiniLM, loaded again);
        lora: the head and the small adapter; finetune: the head and the whole encoder.
        """
        from safetensors.torch import save_file

        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        save_file({k: v.detach().cpu().contiguous() for k, v in self.model.head.state_dict().items()}, str(folder / _HEAD_FILE))
        if self.recipe == "finetune":
            self.model.encoder.save_pretrained(folder / "encoder")
            self.tokenizer.save_pretrained(folder / "encoder")
        elif self.recipe == "lora":
            self.model.encoder.save_pretrained(folder / "adapter")
        config = dict(recipe=self.recipe, intents=self.intents, max_length=self.max_length, normalize=self.model.normalize,
                      training_seconds=self.training_seconds, trainable_parameters=self.trainable_parameters)
        (folder / _CONFIG_FILE).write_text(json.dumps(config, indent=1), encoding="utf-8")

    @classmethod
    def load(cls, folder, device: torch.device | str | None = None) -> "IntentClassifier":
        """Read a classifier written by :meth:`save`."""
        from safetensors.torch import load_file
        from transformers import AutoModel, AutoTokenizer

        folder = Path(folder)
        if not (folder / _CONFIG_FILE).is_file():
            raise FileNotFoundError(f"{folder} holds no saved intent classifier (no {_CONFIG_FILE})")
        config = json.loads((folder / _CONFIG_FILE).read_text(encoding="utf-8"))
        device = torch.device(device) if device is not None else pick_device()
        if config["recipe"] == "finetune":
            tokenizer = AutoTokenizer.from_pretrained(folder / "encoder")
            encoder = AutoModel.from_pretrained(folder / "encoder")
        else:
            tokenizer, encoder = load_minilm(verbose=False)
            if config["recipe"] == "lora":
                from peft import PeftModel

                encoder = PeftModel.from_pretrained(encoder, folder / "adapter")
        model = EncoderClassifier(encoder, len(config["intents"]), normalize=config["normalize"])
        model.head.load_state_dict(load_file(str(folder / _HEAD_FILE)))
        return cls(config["intents"], model.to(device), tokenizer, config["recipe"], config["max_length"],
                   config.get("training_seconds", float("nan")), config.get("trainable_parameters", 0))


# --- the frozen recipe: embeddings once, then a logistic regression in seconds ----------------

_FROZEN_ENCODER: dict[str, tuple] = {}


def _frozen_minilm(device: torch.device):
    """The pretrained MiniLM, loaded once per device and never trained (the frozen recipe shares it)."""
    if str(device) not in _FROZEN_ENCODER:
        tokenizer, encoder = load_minilm(device, verbose=False)
        for parameter in encoder.parameters():
            parameter.requires_grad_(False)
        _FROZEN_ENCODER[str(device)] = (tokenizer, encoder)
    return _FROZEN_ENCODER[str(device)]


def embed_texts(texts: list[str], device: torch.device | None = None, max_length: int = 64, batch_size: int = 128,
                progress: bool = True) -> np.ndarray:
    """Unit-length MiniLM sentence embeddings, (len(texts), 384) float32 — compute once, reuse for every head."""
    texts = _check_texts(texts)
    device = device or pick_device()
    tokenizer, encoder = _frozen_minilm(device)
    body = EncoderClassifier(encoder, 1, normalize=True).to(device)
    return _sentence_vectors_or_logits(body, tokenizer, texts, max_length, batch_size, logits=False,
                                       progress=progress, description="embedding").numpy()


def fit_linear_head(embeddings: np.ndarray, labels: np.ndarray, n_intents: int, C: float = 20.0, max_iter: int = 300) -> nn.Linear:
    """A multinomial logistic regression on the embeddings, returned as the ``nn.Linear`` it is.

    softmax(W x + b) is exactly what scikit-learn's ``predict_proba`` computes, so the head
    can sit on the encoder and be saved like any other layer. Intents absent from the
    labels keep a very low bias, so they are never predicted.
    """
    from sklearn.linear_model import LogisticRegression

    present = np.unique(labels)
    regression = LogisticRegression(C=C, max_iter=max_iter)
    regression.fit(embeddings, labels)
    head = nn.Linear(embeddings.shape[1], n_intents)
    with torch.no_grad():
        head.weight.zero_()
        head.bias.fill_(-1e4)
        if len(present) == 1:  # scikit-learn refuses one class; the answer is that class
            head.bias[present[0]] = 0.0
            return head
        weight = torch.as_tensor(regression.coef_, dtype=torch.float32)
        bias = torch.as_tensor(regression.intercept_, dtype=torch.float32)
        if len(present) == 2:  # binary case: one row of weights for the second class
            weight, bias = torch.cat([-weight / 2, weight / 2]), torch.cat([-bias / 2, bias / 2])
        head.weight[torch.as_tensor(present)] = weight
        head.bias[torch.as_tensor(present)] = bias
    return head


# --- fine-tuning and LoRA: a plain training loop ---------------------------------------------


def _lora_encoder(encoder: nn.Module, settings: dict) -> nn.Module:
    from peft import LoraConfig, get_peft_model

    # only the transformer layers: a bare "dense" would also catch the pooler, which mean pooling never uses
    names = "|".join(re.escape(name) for name in settings["lora_targets"])
    config = LoraConfig(r=settings["lora_r"], lora_alpha=settings["lora_alpha"], lora_dropout=settings["lora_dropout"],
                        target_modules=rf".*encoder\.layer\.\d+\..*\.({names})", bias="none")
    with warnings.catch_warnings():  # peft calls a transformers method that transformers 5 marks deprecated
        warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)
        return get_peft_model(encoder, config)


def _freeze_lower_layers(encoder: nn.Module, train_layers: int | None) -> None:
    """Train only the top ``train_layers`` transformer layers (None: all of them, embeddings included)."""
    if train_layers is None:
        return
    layers = encoder.encoder.layer
    if not 0 <= train_layers <= len(layers):
        raise ValueError(f"train_layers={train_layers} but the encoder has {len(layers)} layers")
    for parameter in encoder.parameters():
        parameter.requires_grad_(False)
    for layer in layers[len(layers) - train_layers:]:
        for parameter in layer.parameters():
            parameter.requires_grad_(True)


def count_trainable_parameters(model: nn.Module) -> int:
    return sum(parameter.numel() for parameter in model.parameters() if parameter.requires_grad)


def _train_loop(model: EncoderClassifier, tokenizer, texts: list[str], labels: np.ndarray, settings: dict,
                device: torch.device, description: str) -> list[float]:
    """Cross-entropy training with AdamW, warm-up + decay, length-sorted batches and mixed precision on GPU."""
    precision = pick_precision(device)
    token_ids = _tokenize(tokenizer, texts, settings["max_length"])
    lengths = [len(ids) for ids in token_ids]
    generator = np.random.default_rng(settings["seed"])
    batches_per_epoch = -(-len(texts) // settings["batch_size"])
    total_steps = settings["epochs"] * batches_per_epoch
    warmup_steps = max(1, int(settings["warmup_fraction"] * total_steps))
    head_parameters = list(model.head.parameters())
    body_parameters = [p for name, p in model.named_parameters() if p.requires_grad and not name.startswith("head.")]
    groups = [{"params": head_parameters, "peak": settings["head_learning_rate"]}]
    if body_parameters:
        groups.append({"params": body_parameters, "peak": settings["learning_rate"]})
    optimizer = torch.optim.AdamW(groups, lr=settings["learning_rate"], weight_decay=settings["weight_decay"])
    scaler = grad_scaler(device, precision)
    labels_tensor = torch.as_tensor(labels)
    model.to(device).train()
    losses = []
    progress = tqdm(total=total_steps, desc=description)
    step = 0
    for _ in range(settings["epochs"]):
        for batch in _length_sorted_batches(lengths, settings["batch_size"], generator):
            for group in optimizer.param_groups:
                group["lr"] = cosine_learning_rate(step, total_steps, group["peak"], warmup_steps, floor_ratio=0.0)
            input_ids, attention_mask = _pad([token_ids[i] for i in batch], tokenizer.pad_token_id, device)
            with autocast(device, precision):
                logits = model(input_ids, attention_mask)
            loss = nn.functional.cross_entropy(logits.float(), labels_tensor[batch].to(device))
            if not torch.isfinite(loss):
                raise FloatingPointError(f"loss became {loss.item()} at step {step}; lower the learning rate")
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            scaler.unscale_(optimizer)  # clip the true gradients, not the loss-scaled ones
            torch.nn.utils.clip_grad_norm_([p for group in groups for p in group["params"]], 1.0)
            scaler.step(optimizer)
            scaler.update()
            losses.append(loss.item())
            step += 1
            progress.update(1)
            if step % 10 == 0:
                progress.set_postfix(loss=f"{np.mean(losses[-10:]):.3f}")
    progress.close()
    model.eval()
    return losses


# --- the one entry point -----------------------------------------------------------------------


def train_intent_classifier(texts: list[str], labels, intents: list[str], recipe: str = "frozen", settings: dict | None = None,
                            device: torch.device | str | None = None, embeddings: np.ndarray | None = None) -> IntentClassifier:
    """Train an intent classifier by one of three recipes (see the module docstring).

    ``settings`` overrides :data:`DEFAULT_SETTINGS` [recipe]; unknown keys are ignored so a lab's
    preset can carry other entries. ``embeddings`` (frozen recipe only): the output of
    :func:`embed_texts` for ``texts``, so retraining the head skips the encoder.
    """
    if recipe not in RECIPES:
        raise ValueError(f"unknown recipe {recipe!r}; choose one of {', '.join(RECIPES)}")
    texts = _check_texts(texts)
    intents = list(intents)
    if not intents:
        raise ValueError("expected the list of intent names, got an empty list")
    labels = _check_labels(labels, len(texts), len(intents))
    chosen = dict(DEFAULT_SETTINGS[recipe])
    chosen.update({key: value for key, value in (settings or {}).items() if key in chosen})
    device = torch.device(device) if device is not None else pick_device()
    started = time.perf_counter()

    if recipe == "frozen":
        if embeddings is None:
            embeddings = embed_texts(texts, device, chosen["max_length"], chosen["embed_batch_size"])
        embeddings = np.asarray(embeddings, dtype=np.float32)
        if embeddings.shape[0] != len(texts) or embeddings.ndim != 2:
            raise ValueError(f"embeddings has shape {embeddings.shape}, expected ({len(texts)}, 384): one row per text")
        tokenizer, encoder = _frozen_minilm(device)
        model = EncoderClassifier(encoder, len(intents), normalize=True)
        model.head = fit_linear_head(embeddings, labels, len(intents), chosen["C"], chosen["max_iter"])
        model.to(device)
        trainable = model.head.weight.numel() + model.head.bias.numel()
    else:
        seed_everything(chosen["seed"])
        tokenizer, encoder = load_minilm(device, verbose=False)
        if recipe == "lora":
            encoder = _lora_encoder(encoder, chosen)
        else:
            _freeze_lower_layers(encoder, chosen["train_layers"])
        model = EncoderClassifier(encoder, len(intents), normalize=False, dropout=chosen["dropout"]).to(device)
        trainable = count_trainable_parameters(model)
        _train_loop(model, tokenizer, texts, labels, chosen, device, description=f"{recipe} training")
    seconds = time.perf_counter() - started
    return IntentClassifier(intents, model, tokenizer, recipe, chosen["max_length"], seconds, trainable)


def folder_megabytes(folder) -> float:
    """Size on disk of everything under ``folder`` (or of one file), in MB (10^6 bytes)."""
    folder = Path(folder)
    if folder.is_file():
        return folder.stat().st_size / 1e6
    return sum(path.stat().st_size for path in folder.rglob("*") if path.is_file()) / 1e6


# --- the benchmark behind `python -m llmlab.bench finetune` -----------------------------------


def benchmark(preset: str) -> dict:
    """Train the preset's benchmark recipe on BANKING77, evaluate on the test split and print what was measured."""
    from llmlab.data import banking77
    from llmlab.metrics_classification import accuracy, macro_f1
    from llmlab.presets import LAB_PRESETS
    from llmlab.runtime import describe_device

    settings = LAB_PRESETS["04_fine_tuning"][preset]
    recipe = settings["bench_recipe"]
    recipe_settings = settings[f"{recipe}_settings"]
    device = pick_device()
    data = banking77()
    train = data["train"]
    test = data["test"]
    if settings["train_per_intent"] is not None:
        keep = sample_per_intent(train["label"], settings["train_per_intent"], seed=0)
        train = train.select(keep)
    if settings["test_size"] is not None:
        test = test.shuffle(seed=0).select(range(settings["test_size"]))
    print(f"bench finetune | preset {preset} | recipe {recipe} | {len(train)} training texts, {len(test)} test texts")
    print("recipe settings:", ", ".join(f"{k}={v}" for k, v in recipe_settings.items()))
    started = time.perf_counter()
    classifier = train_intent_classifier(train["text"], train["label"], data["train"].features["label"].names, recipe,
                                         recipe_settings, device)
    trained = time.perf_counter()
    predicted = classifier.predict_proba(test["text"]).argmax(axis=1)
    finished = time.perf_counter()
    result = dict(
        preset=preset, recipe=recipe, test_accuracy=accuracy(test["label"], predicted),
        macro_f1=macro_f1(test["label"], predicted, len(classifier.intents)),
        train_seconds=trained - started, total_seconds=finished - started,
        trainable_parameters=classifier.trainable_parameters,
        machine=f"{describe_device(device)}, {_cpu_model()}, {os.cpu_count()} cores, torch {torch.__version__}",
    )
    print(f"test accuracy {result['test_accuracy']:.4f} | macro-F1 {result['macro_f1']:.4f} | "
          f"{result['train_seconds']:.1f} s training (embedding included), {result['total_seconds']:.1f} s with the test set | "
          f"{result['trainable_parameters']:,} trainable parameters")
    print("machine:", result["machine"])
    return result


def _cpu_model() -> str:
    """The processor's model name where Linux reports it (/proc/cpuinfo), else the architecture."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


# --- data helpers ----------------------------------------------------------------------------


def sample_per_intent(labels, per_intent: int, seed: int = 0) -> list[int]:
    """Indices of ``per_intent`` examples of every intent (all of an intent's examples if it has fewer), in sorted order.

    A stratified few-shot sample: each intent gets the same number, so a small training set
    still covers all 77 of them.
    """
    if per_intent < 1:
        raise ValueError(f"per_intent must be at least 1, got {per_intent}")
    labels = np.asarray(labels)
    generator = np.random.default_rng(seed)
    chosen = []
    for intent in np.unique(labels):
        members = np.flatnonzero(labels == intent)
        chosen.extend(generator.permutation(members)[:per_intent].tolist())
    return sorted(chosen)
