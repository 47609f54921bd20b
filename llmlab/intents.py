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
import re
import time
import warnings
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from llmlab.embeddings import (
    MAX_TOKENS, check_texts, embed, length_sorted_batches, load_minilm, mean_pool, pad_batch, run_encoder, sentence_vectors,
    shared_minilm,
)
from llmlab.metrics import token_cross_entropy
from llmlab.model import count_parameters
from llmlab.runtime import pick_device, seed_everything
from llmlab.training import History, train

RECIPES = ("frozen", "finetune", "lora")

# What a recipe uses when ``settings`` leaves a key out; the lab's presets override these. The
# frozen recipe reads texts exactly as llmlab.embeddings embeds them (at most MAX_TOKENS tokens).
DEFAULT_SETTINGS = {
    "frozen": dict(C=20.0, max_iter=300),
    # cache_lower_layers: run the frozen layers below the top ``train_layers`` once and train on their
    # outputs; head_init "linear_probe": start the head from the frozen recipe's logistic regression
    # (C = probe_C) on the unit-length vectors (needs normalize=True).
    "finetune": dict(
        epochs=3, batch_size=32, learning_rate=5e-5, head_learning_rate=2e-3, weight_decay=0.01,
        warmup_fraction=0.1, dropout=0.1, max_length=64, train_layers=None, seed=0,
        label_smoothing=0.0, normalize=False, head_init="random", probe_C=20.0, cache_lower_layers=False,
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

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return self.head(self.dropout(sentence_vectors(self.encoder, input_ids, attention_mask, self.normalize)))


class IntentClassifier:
    """A trained intent router: ``predict(texts)`` → [(intent, confidence)], ``save``/``load`` a folder.

    ``intents`` lists the intent names in label-id order; ``recipe`` says how it was trained;
    ``training_seconds`` and ``trainable_parameters`` describe what training cost.
    """

    def __init__(self, intents: list[str], model: EncoderClassifier, tokenizer, recipe: str, max_length: int = MAX_TOKENS,
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

    @torch.no_grad()
    def logits(self, texts: list[str], batch_size: int = 128, progress: bool = False) -> torch.Tensor:
        """(len(texts), len(intents)) scores before the softmax, computed in float32 on the classifier's device."""
        self.model.eval()
        return run_encoder(texts, self.tokenizer, self.model, self.device, self.max_length, batch_size, progress, "classifying")

    def predict_proba(self, texts: list[str], batch_size: int = 128, progress: bool = False) -> np.ndarray:
        """(len(texts), len(intents)) probabilities; each row sums to 1."""
        return torch.softmax(self.logits(texts, batch_size, progress).double(), dim=-1).numpy()

    def predict(self, texts: list[str], batch_size: int = 128, progress: bool = False) -> list[tuple[str, float]]:
        """The most likely intent of each text and its probability (the model's confidence, in [0, 1])."""
        probabilities = self.predict_proba(texts, batch_size, progress)
        best = probabilities.argmax(axis=1)
        return [(self.intents[i], float(probabilities[row, i])) for row, i in enumerate(best)]

    @torch.no_grad()
    def probabilities_from_embeddings(self, embeddings) -> np.ndarray:
        """Class probabilities of a frozen-recipe classifier from precomputed embeddings (skips the encoder).

        Equal to ``predict_proba(texts)`` when ``embeddings = llmlab.embeddings.embed(texts)``, and much
        faster when the same texts are scored by many classifiers (Lab 6's flywheel simulation).
        """
        if self.recipe != "frozen":
            raise ValueError(f"probabilities_from_embeddings needs a classifier trained with recipe='frozen' "
                             f"(its encoder never changes), this one is {self.recipe!r}")
        head = self.model.head
        logits = head(torch.as_tensor(np.asarray(embeddings, dtype=np.float32)).to(head.weight.device))
        return torch.softmax(logits.double(), dim=-1).cpu().numpy()

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
        if config.get("recipe") not in RECIPES:
            raise ValueError(f"{folder / _CONFIG_FILE} names the recipe {config.get('recipe')!r}; a saved classifier is one of {', '.join(RECIPES)}")
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


def choose_head_C(embeddings, labels, n_intents: int, candidates=(1.0, 5.0, 20.0, 100.0), folds: int = 3,
                  seed: int = 0) -> tuple[float, dict[float, float]]:
    """The regularisation strength C of :func:`fit_linear_head`, chosen by cross-validation on the training data.

    Each candidate is scored by its mean accuracy over ``folds`` stratified folds of
    (``embeddings``, ``labels``), so the validation split stays free for choosing between whole
    models. Returns (best C, {C: mean accuracy}); ties go to the smaller C (the simpler head).
    """
    from sklearn.model_selection import StratifiedKFold

    embeddings, labels = np.asarray(embeddings, dtype=np.float32), np.asarray(labels)
    if labels.ndim != 1 or len(labels) != len(embeddings) or len(labels) == 0:
        raise ValueError(f"expected one label per embedding, got {len(labels)} labels for {len(embeddings)} embeddings")
    smallest_intent = int(np.bincount(labels)[np.unique(labels)].min())
    if smallest_intent < 2:
        raise ValueError("cross-validation needs at least 2 examples of every intent in the training data, one intent has 1")
    splitter = StratifiedKFold(n_splits=min(folds, smallest_intent), shuffle=True, random_state=seed)
    scores = {}
    for C in candidates:
        fold_scores = []
        for fit_rows, held_rows in splitter.split(embeddings, labels):
            head = fit_linear_head(embeddings[fit_rows], labels[fit_rows], n_intents, C=C)
            with torch.no_grad():
                predicted = head(torch.as_tensor(embeddings[held_rows])).argmax(1).numpy()
            fold_scores.append(float((predicted == labels[held_rows]).mean()))
        scores[C] = float(np.mean(fold_scores))
    best = max(sorted(scores), key=lambda C: (scores[C], -C))
    return best, scores


# --- fine-tuning and LoRA: a plain training loop ---------------------------------------------


def lora_encoder(encoder: nn.Module, settings: dict) -> nn.Module:
    """``encoder`` with peft's LoRA adapters (``lora_r``, ``lora_alpha``, ``lora_dropout`` of ``settings``) on the
    ``lora_targets`` of its transformer layers, every other weight frozen."""
    from peft import LoraConfig, get_peft_model

    # only the transformer layers: a bare "dense" would also catch the pooler, which mean pooling never uses
    names = "|".join(re.escape(name) for name in settings["lora_targets"])
    config = LoraConfig(r=settings["lora_r"], lora_alpha=settings["lora_alpha"], lora_dropout=settings["lora_dropout"],
                        target_modules=rf".*encoder\.layer\.\d+\..*\.({names})", bias="none")
    with warnings.catch_warnings():  # peft calls a transformers method that transformers 5 marks deprecated
        warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)
        return get_peft_model(encoder, config)


def freeze_lower_layers(encoder: nn.Module, train_layers: int | None) -> None:
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


class BatchSchedule:
    """Every batch of every epoch, drawn in advance from one seed, and how many a run has used.

    ``train`` stores ``get_state()`` in its checkpoints and calls ``set_state`` when it resumes,
    so a resumed fine-tuning run sees exactly the batches the uninterrupted run would have.
    """

    def __init__(self, lengths: list[int], batch_size: int, epochs: int, seed: int):
        generator = np.random.default_rng(seed)
        self.batches = [batch for _ in range(epochs) for batch in length_sorted_batches(lengths, batch_size, generator)]
        self.position = 0

    def next(self) -> np.ndarray:
        batch = self.batches[self.position]
        self.position += 1
        return batch

    def get_state(self) -> torch.Tensor:
        return torch.tensor([self.position])

    def set_state(self, state: torch.Tensor) -> None:
        self.position = int(state[0])


def _fine_tune(model: EncoderClassifier, tokenizer, texts: list[str], labels: np.ndarray, settings: dict,
               device: torch.device, description: str, checkpoint_path=None) -> History:
    """Cross-entropy training with llmlab's loop: length-sorted batches, a faster-learning new head, warm-up and decay to 0.

    With ``checkpoint_path`` the run writes a checkpoint ten times and, if the file is there
    already (a cell re-run after a disconnect), continues from it.
    """
    token_ids = tokenizer(texts, truncation=True, max_length=settings["max_length"])["input_ids"]
    schedule = BatchSchedule([len(ids) for ids in token_ids], settings["batch_size"], settings["epochs"], settings["seed"])
    steps = len(schedule.batches)
    labels_tensor = torch.as_tensor(labels)

    def next_batch():
        batch = schedule.next()
        return pad_batch([token_ids[i] for i in batch], tokenizer.pad_token_id, device), labels_tensor[batch].to(device)

    body = [p for name, p in model.named_parameters() if p.requires_grad and not name.startswith("head.")]
    groups = [{"params": list(model.head.parameters()), "weight_decay": settings["weight_decay"],
               "peak_learning_rate": settings["head_learning_rate"]}]
    if body:
        groups.append({"params": body, "weight_decay": settings["weight_decay"], "peak_learning_rate": settings["learning_rate"]})
    return train(model, next_batch, steps, settings["learning_rate"], device,
                 loss_fn=lambda model, batch: token_cross_entropy(model(*batch[0]), batch[1]),
                 parameter_groups=groups, warmup_steps=max(1, int(settings["warmup_fraction"] * steps)), floor_ratio=0.0,
                 betas=(0.9, 0.999), description=description,
                 checkpoint_path=checkpoint_path, checkpoint_every=max(1, steps // 10), resume=True, data_generator=schedule,
                 run_settings={"description": description, "texts": len(texts), **settings})


# --- fine-tuning the top layers on cached outputs of the frozen lower layers -------------------


def _additive_mask(attention_mask: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """(batch, n) 1/0 mask → (batch, 1, 1, n) scores to add before the softmax: 0 for tokens, a huge negative for padding."""
    return (1.0 - attention_mask[:, None, None, :].to(dtype)) * torch.finfo(dtype).min


@torch.no_grad()
def lower_layer_states(encoder: nn.Module, token_ids: list[list[int]], first_trained: int, pad_id: int,
                       device: torch.device, batch_size: int = 128) -> list[torch.Tensor]:
    """Each text's hidden states where layer ``first_trained`` reads them: (tokens, hidden) float32 on the CPU.

    The embeddings and the frozen layers below ``first_trained`` run once, in eval mode (no dropout),
    so every epoch after that costs only the layers that learn.
    """
    from llmlab.progress import tqdm

    was_training = encoder.training
    encoder.eval()
    states: list[torch.Tensor] = [torch.empty(0)] * len(token_ids)
    batches = length_sorted_batches([len(ids) for ids in token_ids], batch_size)
    for batch in tqdm(batches, desc="caching the frozen layers", disable=len(batches) < 4):
        input_ids, attention_mask = pad_batch([token_ids[i] for i in batch], pad_id, device)
        hidden = encoder.embeddings(input_ids=input_ids)
        scores = _additive_mask(attention_mask, hidden.dtype)
        for layer in encoder.encoder.layer[:first_trained]:
            hidden = layer(hidden, scores)
        for row, i in enumerate(batch):
            states[i] = hidden[row, :len(token_ids[i])].float().cpu()
    encoder.train(was_training)
    return states


def pad_states(states: list[torch.Tensor], device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """(hidden states, attention mask) of a batch of cached texts of different lengths, padded on the right with zeros."""
    width = max(len(s) for s in states)
    padded = torch.zeros(len(states), width, states[0].shape[-1])
    attention_mask = torch.zeros(len(states), width, dtype=torch.long)
    for row, s in enumerate(states):
        padded[row, :len(s)] = s
        attention_mask[row, :len(s)] = 1
    return padded.to(device), attention_mask.to(device)


class TopOfClassifier(nn.Module):
    """The part of an :class:`EncoderClassifier` above its cached layers: the top layers, pooling and the head.

    It shares its layers and head with the classifier (no copies), so training it trains the classifier.
    """

    def __init__(self, classifier: EncoderClassifier, first_trained: int):
        super().__init__()
        self.layers = nn.ModuleList(classifier.encoder.encoder.layer[first_trained:])
        self.dropout = classifier.dropout
        self.head = classifier.head
        self.normalize = classifier.normalize

    def pooled(self, hidden: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        scores = _additive_mask(attention_mask, hidden.dtype)
        for layer in self.layers:
            hidden = layer(hidden, scores)
        pooled = mean_pool(hidden, attention_mask)
        return F.normalize(pooled, dim=-1) if self.normalize else pooled

    def forward(self, hidden: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return self.head(self.dropout(self.pooled(hidden, attention_mask)))


@torch.no_grad()
def _pooled_from_states(top: TopOfClassifier, states: list[torch.Tensor], device: torch.device, batch_size: int = 256) -> np.ndarray:
    was_training = top.training
    top.eval()
    rows = np.zeros((len(states), top.head.in_features), dtype=np.float32)
    for batch in length_sorted_batches([len(s) for s in states], batch_size):
        rows[batch] = top.pooled(*pad_states([states[i] for i in batch], device)).float().cpu().numpy()
    top.train(was_training)
    return rows


def _fine_tune_top_layers(model: EncoderClassifier, tokenizer, texts: list[str], labels: np.ndarray, settings: dict,
                          device: torch.device, description: str, checkpoint_path=None) -> History:
    """Fine-tune the top ``train_layers`` layers and the head on cached outputs of the frozen layers below them."""
    layers = len(model.encoder.encoder.layer)
    if settings["train_layers"] is None or not 1 <= settings["train_layers"] <= layers:
        raise ValueError(f"cache_lower_layers needs train_layers between 1 and {layers}, got {settings['train_layers']}")
    first_trained = layers - settings["train_layers"]
    token_ids = tokenizer(texts, truncation=True, max_length=settings["max_length"])["input_ids"]
    states = lower_layer_states(model.encoder, token_ids, first_trained, tokenizer.pad_token_id, device)
    top = TopOfClassifier(model, first_trained)
    if settings["head_init"] == "linear_probe":  # linear probe first, then fine-tune (Kumar et al. 2022)
        pooled = _pooled_from_states(top, states, device)
        model.head.load_state_dict(fit_linear_head(pooled, labels, model.head.out_features, C=settings["probe_C"]).state_dict())
    schedule = BatchSchedule([len(s) for s in states], settings["batch_size"], settings["epochs"], settings["seed"])
    steps = len(schedule.batches)
    labels_tensor = torch.as_tensor(labels)

    def next_batch():
        batch = schedule.next()
        return pad_states([states[i] for i in batch], device), labels_tensor[batch].to(device)

    groups = [{"params": list(top.head.parameters()), "weight_decay": settings["weight_decay"],
               "peak_learning_rate": settings["head_learning_rate"]},
              {"params": list(top.layers.parameters()), "weight_decay": settings["weight_decay"],
               "peak_learning_rate": settings["learning_rate"]}]
    smoothing = settings["label_smoothing"]
    return train(top, next_batch, steps, settings["learning_rate"], device,
                 loss_fn=lambda top, batch: F.cross_entropy(top(*batch[0]).float(), batch[1], label_smoothing=smoothing),
                 parameter_groups=groups, warmup_steps=max(1, int(settings["warmup_fraction"] * steps)), floor_ratio=0.0,
                 betas=(0.9, 0.999), description=description,
                 checkpoint_path=checkpoint_path, checkpoint_every=max(1, steps // 10), resume=True, data_generator=schedule,
                 run_settings={"description": description, "texts": len(texts), **settings})


# --- the one entry point -----------------------------------------------------------------------


def train_intent_classifier(texts: list[str], labels, intents: list[str], recipe: str = "frozen", settings: dict | None = None,
                            device: torch.device | str | None = None, embeddings: np.ndarray | None = None,
                            checkpoint_path=None) -> IntentClassifier:
    """Train an intent classifier by one of three recipes (see the module docstring).

    ``settings`` overrides :data:`DEFAULT_SETTINGS` [recipe]; unknown keys are ignored so a lab's
    preset can carry other entries. ``embeddings`` (frozen recipe only): the output of
    ``llmlab.embeddings.embed`` for ``texts``, so retraining the head skips the encoder.
    ``checkpoint_path`` (finetune and lora): checkpoints of the training run, which a second
    call resumes, e.g. after a disconnect.
    """
    if recipe not in RECIPES:
        raise ValueError(f"unknown recipe {recipe!r}; choose one of {', '.join(RECIPES)}")
    texts = check_texts(texts)
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
            embeddings = embed(texts, device=device)
        embeddings = np.asarray(embeddings, dtype=np.float32)
        if embeddings.shape[0] != len(texts) or embeddings.ndim != 2:
            raise ValueError(f"embeddings has shape {embeddings.shape}, expected ({len(texts)}, 384): one row per text")
        tokenizer, encoder = shared_minilm(device)
        model = EncoderClassifier(encoder, len(intents), normalize=True)
        model.head = fit_linear_head(embeddings, labels, len(intents), chosen["C"], chosen["max_iter"])
        model.to(device)
        trainable = count_parameters(model.head)
    else:
        seed_everything(chosen["seed"])
        tokenizer, encoder = load_minilm(device, verbose=False)
        if recipe == "lora":
            encoder = lora_encoder(encoder, chosen)
        else:
            freeze_lower_layers(encoder, chosen["train_layers"])
        normalize = recipe == "finetune" and chosen["normalize"]
        if recipe == "finetune" and chosen["head_init"] not in ("random", "linear_probe"):
            raise ValueError(f"head_init must be 'random' or 'linear_probe', got {chosen['head_init']!r}")
        if recipe == "finetune" and chosen["head_init"] == "linear_probe" and not (normalize and chosen["cache_lower_layers"]):
            raise ValueError("head_init='linear_probe' needs normalize=True and cache_lower_layers=True "
                             "(the probe is fitted on unit-length vectors from the cached layers)")
        model = EncoderClassifier(encoder, len(intents), normalize=normalize, dropout=chosen["dropout"]).to(device)
        trainable = count_parameters(model, trainable_only=True)
        fine_tune = _fine_tune_top_layers if recipe == "finetune" and chosen["cache_lower_layers"] else _fine_tune
        fine_tune(model, tokenizer, texts, labels, chosen, device, description=f"{recipe} training",
                  checkpoint_path=checkpoint_path)
    seconds = time.perf_counter() - started
    return IntentClassifier(intents, model, tokenizer, recipe, chosen.get("max_length", MAX_TOKENS), seconds, trainable)


# --- a frozen encoder and a lexical classifier, blended ----------------------------------------

# The lexical classifier's share of the blended log-probabilities, tried on a validation split.
BLEND_WEIGHTS = (0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8)


def tfidf_classifier(C: float = 10.0):
    """TF-IDF of words (1- and 2-grams) and of characters (2- to 5-grams inside words), then a logistic
    regression: a lexical classifier that keeps the exact words and spellings a sentence encoder smooths over."""
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline, make_union

    return make_pipeline(
        make_union(TfidfVectorizer(ngram_range=(1, 2), sublinear_tf=True),
                   TfidfVectorizer(analyzer="char_wb", ngram_range=(2, 5), sublinear_tf=True, min_df=2)),
        LogisticRegression(C=C, max_iter=1000))


def blend_log_probabilities(semantic: np.ndarray, lexical: np.ndarray, lexical_weight: float) -> np.ndarray:
    """(1 - w) · log p_semantic + w · log p_lexical, row by row: a weighted geometric mean of the two
    classifiers' probabilities, unnormalised (its argmax is the blended prediction)."""
    if not 0.0 <= lexical_weight <= 1.0:
        raise ValueError(f"lexical_weight must be in [0, 1], got {lexical_weight}")
    if np.shape(semantic) != np.shape(lexical):
        raise ValueError(f"the two classifiers' probabilities differ in shape: {np.shape(semantic)} and {np.shape(lexical)}")
    floor = 1e-12  # an intent one classifier never saw gets a tiny probability, not log(0)
    return (1 - lexical_weight) * np.log(np.maximum(semantic, floor)) + lexical_weight * np.log(np.maximum(lexical, floor))


def choose_lexical_weight(semantic: np.ndarray, lexical: np.ndarray, labels, weights=BLEND_WEIGHTS) -> tuple[float, dict]:
    """The weight of ``weights`` whose blend is most accurate on these (validation) labels, the smaller
    weight on a tie, and the accuracy of every weight tried."""
    labels = np.asarray(labels)
    accuracy = {weight: float(np.mean(blend_log_probabilities(semantic, lexical, weight).argmax(axis=1) == labels))
                for weight in weights}
    return max(weights, key=lambda weight: (accuracy[weight], -weight)), accuracy


def _lexical_probabilities(model, texts: list[str], n_intents: int) -> np.ndarray:
    """predict_proba with one column per intent, also for intents absent from the training labels."""
    probabilities = np.zeros((len(texts), n_intents))
    probabilities[:, model.classes_] = model.predict_proba(texts)
    return probabilities


class BlendedClassifier:
    """The frozen recipe's linear head on MiniLM's embeddings and ``tfidf_classifier``, their
    log-probabilities blended with the weight ``lexical_weight``. ``predict_proba`` returns the blend
    renormalised to probabilities."""

    def __init__(self, head: nn.Linear, lexical, lexical_weight: float, n_intents: int, device: torch.device,
                 validation_accuracy: dict | None = None):
        self.head, self.lexical, self.lexical_weight = head, lexical, lexical_weight
        self.n_intents, self.device = n_intents, device
        self.validation_accuracy = validation_accuracy or {}
        self.trainable_parameters = count_parameters(head) + lexical[-1].coef_.size + lexical[-1].intercept_.size

    def predict_proba(self, texts: list[str], embeddings: np.ndarray | None = None) -> np.ndarray:
        texts = check_texts(texts)
        vectors = embed(texts, device=self.device, progress=False) if embeddings is None else embeddings
        with torch.no_grad():
            semantic = torch.softmax(self.head(torch.as_tensor(np.asarray(vectors), dtype=torch.float32)).double(), -1).numpy()
        blended = blend_log_probabilities(semantic, _lexical_probabilities(self.lexical, texts, self.n_intents),
                                          self.lexical_weight)
        blended = np.exp(blended - blended.max(axis=1, keepdims=True))
        return blended / blended.sum(axis=1, keepdims=True)


def train_blended_classifier(texts: list[str], labels, n_intents: int, settings: dict | None = None,
                             device: torch.device | str | None = None, validation_share: float = 0.1,
                             seed: int = 0) -> BlendedClassifier:
    """Choose the blend's weight on a random ``validation_share`` of the training texts (both classifiers
    trained on the rest), then train both on all of them. ``settings``: ``C`` of the head, ``tfidf_C``."""
    settings = {"C": 20.0, "tfidf_C": 10.0} | dict(settings or {})
    texts = check_texts(texts)
    labels = _check_labels(labels, len(texts), n_intents)
    device = torch.device(device) if device is not None else pick_device()
    vectors = embed(texts, device=device, progress=False).numpy()
    order = np.random.default_rng(seed).permutation(len(texts))
    held = order[:max(1, round(validation_share * len(texts)))]
    kept = order[len(held):]

    def trained(rows) -> tuple[nn.Linear, object]:
        lexical = tfidf_classifier(settings["tfidf_C"]).fit([texts[i] for i in rows], labels[rows])
        return fit_linear_head(vectors[rows], labels[rows], n_intents, settings["C"]), lexical

    head, lexical = trained(kept)
    with torch.no_grad():
        semantic = torch.softmax(head(torch.as_tensor(vectors[held])).double(), -1).numpy()
    weight, accuracy = choose_lexical_weight(
        semantic, _lexical_probabilities(lexical, [texts[i] for i in held], n_intents), labels[held])
    head, lexical = trained(np.arange(len(texts)))
    return BlendedClassifier(head, lexical, weight, n_intents, device, accuracy)


def folder_megabytes(folder) -> float:
    """Size on disk of everything under ``folder`` (or of one file), in MB (10^6 bytes)."""
    folder = Path(folder)
    if folder.is_file():
        return folder.stat().st_size / 1e6
    return sum(path.stat().st_size for path in folder.rglob("*") if path.is_file()) / 1e6


# --- the benchmark behind `python -m llmlab.bench finetune` -----------------------------------


def benchmark(preset: str) -> dict:
    """Train the preset's benchmark recipe on BANKING77, evaluate on the test split and print what was measured.

    The recipe's settings were chosen on Lab 4's validation split (10 % of the training data), never on
    the test split; the benchmark then trains on the whole training split and reports test accuracy
    with its 95 % Wilson interval over the test messages.
    """
    from llmlab.data import banking77
    from llmlab.instruct import wilson_interval
    from llmlab.metrics import accuracy, macro_f1
    from llmlab.presets import lab_settings
    from llmlab.runtime import describe_machine

    settings = lab_settings("04_fine_tuning", preset)
    recipe = settings["bench_recipe"]
    recipe_settings = settings["bench_settings"]
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
    intents = data["train"].features["label"].names
    started = time.perf_counter()
    if recipe == "frozen+tfidf":
        classifier = train_blended_classifier(train["text"], train["label"], len(intents), recipe_settings, device)
        shares = ", ".join(f"{weight:g}: {share:.3f}" for weight, share in classifier.validation_accuracy.items())
        print(f"lexical weight {classifier.lexical_weight:g}, chosen on 10 % of the training texts (accuracy by weight: "
              f"{shares})")
    else:
        classifier = train_intent_classifier(train["text"], train["label"], intents, recipe, recipe_settings, device)
    trained = time.perf_counter()
    predicted = classifier.predict_proba(test["text"]).argmax(axis=1)
    finished = time.perf_counter()
    correct = int(np.sum(np.asarray(test["label"]) == predicted))
    result = dict(
        preset=preset, recipe=recipe, test_accuracy=accuracy(test["label"], predicted),
        test_accuracy_interval=wilson_interval(correct, len(test)),
        macro_f1=macro_f1(test["label"], predicted, len(intents)),
        train_seconds=trained - started, total_seconds=finished - started,
        trainable_parameters=classifier.trainable_parameters,
        machine=f"{describe_machine(device)}, torch {torch.__version__}",
    )
    low, high = result["test_accuracy_interval"]
    print(f"test accuracy {result['test_accuracy']:.4f} (95 % interval {low:.4f} to {high:.4f}) | macro-F1 {result['macro_f1']:.4f} | "
          f"{result['train_seconds']:.1f} s training (embedding included), {result['total_seconds']:.1f} s with the test set | "
          f"{result['trainable_parameters']:,} trainable parameters")
    print("machine:", result["machine"])
    return result


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
