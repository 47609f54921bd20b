"""How long each lab's gpu preset should take on a free Colab T4: an estimate from FLOPs, not a measurement.

No run of the gpu presets on a GPU has recorded its time yet, so ``llmlab.runtime.start_lab`` prints this estimate
at the top of every lab, at every preset (``gpu_time_line``), labelled as one. Each lab's work at its gpu preset is
listed below as parts, counted from ``llmlab.presets`` (steps, batch sizes, model shapes), so the estimate follows
the presets when they change. A part's time is the sum of

- its FLOPs over an assumed share of the T4's peak: 6·N·D for training (2·N per token forward, 4·N backward; N
  counted as Chapter 3 counts it, the weights in matrix products), 4·N·D for training LoRA adapters (no gradient
  for the frozen weights), +2·N·D where gradient checkpointing recomputes the forward pass, 2·N per token for a
  forward pass or a generated token, and the attention scores (4·n·d per token per layer) where they matter: Lab 2's
  timing of attention itself and Lab 5's long contexts;
- the time Python takes to launch a small model's kernels, whatever their FLOPs: on the small models of these labs it
  is often larger than the arithmetic (assumed: ``LAYER_PASS_SECONDS`` per layer per pass, ``STEP_SECONDS`` per step);
- fixed allowances: the set-up cell on Colab (clone, ``pip install``), downloads, and CPU work that FLOPs do not count.

The numbers assumed are named below with their reasons. Summing arithmetic and launches is conservative (a GPU
overlaps them in part); the estimate is a rough guide, and none of it is measured.
``python -m llmlab.gpu_time`` prints every lab's parts. Plain data and arithmetic: it imports only ``llmlab.costs``
and ``llmlab.presets``, no torch, so that ``start_lab`` prints the line at once.
"""

from __future__ import annotations

import math
import sys
from dataclasses import dataclass

from llmlab.costs import PEAK_DENSE_FLOPS, transformer_matrix_parameters
from llmlab.presets import LAB_PRESETS, lab_settings

# --- the T4 and the share of it a lab gets ------------------------------------------------------------------------

# NVIDIA T4 datasheet (book/references.bib: nvidia2018t4): 65 TFLOPS mixed precision (fp16 tensor cores), 8.1 TFLOPS fp32.
T4_PEAK_FLOPS = {"fp16": PEAK_DENSE_FLOPS["T4 (fp16)"], "fp32": 8.1e12}

# nanoGPT's shakespeare_char configuration (Lab 3's gpu model; its README: about 3 minutes on one A100, evaluations
# included; book/references.bib: karpathy2022nanogpt). Chapter 3 derives from it the share of the peak such a small
# model gets, and assumes the same share on a T4; so does this estimate, for everything that runs in fp16.
NANOGPT_SHAKESPEARE_CHAR = dict(n_layers=6, d_model=384, vocab_size=65, steps=5000, batch_size=64, context=256, a100_minutes=3.0)


def nanogpt_utilisation() -> float:
    """6·N·D of nanoGPT's shakespeare_char run over 3 minutes of an A100's 312 TFLOPS bf16 peak: about 9 %."""
    run = NANOGPT_SHAKESPEARE_CHAR
    flops = 6 * transformer_matrix_parameters(run["n_layers"], run["d_model"], run["vocab_size"]) \
        * run["steps"] * run["batch_size"] * run["context"]
    return flops / (run["a100_minutes"] * 60 * PEAK_DENSE_FLOPS["A100 (bf16)"])


# fp16: Chapter 3's assumption (the share nanoGPT gets on an A100). fp32 (no tensor cores; MiniLM's embeddings and
# Lab 3's fp32 step check run in it): assumed 30 % of the far lower fp32 peak, below the 40 % Chapter 3 assumes for large
# models because these matrices are small. Both are assumptions, not measurements.
UTILISATION = {"fp16": nanogpt_utilisation(), "fp32": 0.30}

# Launch overhead, assumed: a layer's forward pass is some 20 kernels that Python launches one by one (tens of µs each
# on Colab's CPU); a backward pass costs two forward passes' worth. Each step adds a fixed part: the optimiser, the
# gradient clipping and scaling, reading the loss back (which waits for the GPU), building the next batch.
LAYER_PASS_SECONDS = 0.001
STEP_SECONDS = 0.005
GENERATE_STEP_SECONDS = 0.005  # Hugging Face generate's own work per token (logits processors, stopping checks): assumed

# Fixed allowances, assumed: the set-up cell on Colab (git clone, pip install of llmlab and its extras) and the speed of
# a download from the Hugging Face Hub.
SETUP_SECONDS = 60.0
DOWNLOAD_MEGABYTES_PER_SECOND = 20.0
DOWNLOAD_MEGABYTES = {"all-MiniLM-L6-v2": 90.0, "Qwen/Qwen2.5-0.5B": 988.0,  # the Hub's file sizes (safetensors)
                      "Qwen/Qwen2.5-1.5B-Instruct": 3_087.0}  # its 1.54 B parameters in bf16 (QWEN2_5_1_5B below)

# --- the data and models the labs use (published shapes; counts measured on the course's data) -------------------

SHAKESPEARE_VALIDATION_CHARACTERS = 111_540  # llmlab.lm.shakespeare_corpus(): the last 10 % of Tiny Shakespeare
SHAKESPEARE_VOCABULARY = 65
BANKING77 = dict(train=10_003, test=3_080, intents=77)
MINILM_TOKENS_PER_MESSAGE = 16.2  # mean WordPiece tokens of a BANKING77 training message, [CLS] and [SEP] included
# all-MiniLM-L6-v2: 6 layers of width 384 and a 1,536-wide feed-forward (4 × 384), as Chapter 3's 12·L·d² counts them.
MINILM = dict(n_layers=6, d_model=384)
# Qwen2.5-0.5B's config.json: 24 layers of width 896, 14 query heads and 2 key/value heads of 64, feed-forward 4,864
# (gated: three matrices), vocabulary 151,936, output layer tied to the embedding (it still costs a matrix product).
QWEN2_5_0_5B = dict(n_layers=24, d_model=896, q_heads=14, kv_heads=2, head_dim=64, d_ff=4864, vocab_size=151_936)
# Taskmaster-4's coffee dialogs (llmlab.data.coffee_dialogs), measured: dialogs, messages, characters, and the barista
# replies the lab scores (each with the history before it).
COFFEE_DIALOGS = dict(dialogs=3_710, messages_per_dialog=3.75, characters_per_dialog=179.6, replies_per_dialog=1.865,
                      history_characters_per_reply=91.1, history_messages_per_reply=2.04, characters_per_reply=62.7)
# The committed cpu run of Lab 4b, one pair per reply that names an ordered item: 432 pairs from the 2,968 training
# dialogs, 89 from the 556 test dialogs (the test split makes test_pairs_per_reply pairs of each such reply).
PREFERENCE_PAIRS_PER_DIALOG = dict(train=432 / 2_968, test=89 / 556)
# Qwen's tokenizer is not read here (it is downloaded with the model): assumed 4 characters of English per token, 5 tokens
# of ChatML markup per message (<|im_start|>, the role, a newline, <|im_end|>, a newline) and 20 for Qwen's default
# system message.
CHARACTERS_PER_QWEN_TOKEN = 4.0
CHAT_TOKENS_PER_MESSAGE = 5
CHAT_SYSTEM_TOKENS = 20
# As llmlab.instruct_training.DPO_EVALUATION_PAIRS and DPO_EVALUATIONS (a test checks they agree).
DPO_EVALUATION_PAIRS = 64
DPO_EVALUATIONS = 10
# Lab 4's TF-IDF + logistic regression fits run on the CPU: 38.4 s for 9,002 training messages, measured on one core of
# an AMD EPYC (the 2-core machine this estimate was written on; Colab's CPUs are of the same class), taken as
# proportional to the messages.
TFIDF_SECONDS_PER_MESSAGE = 38.4 / 9_002


# --- parts and estimates -----------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Part:
    """One piece of a lab's work at the gpu preset: its FLOPs and their precision, its launch overhead, a fixed allowance.

    ``condition`` names when the part runs at all (None = always), e.g. "Lab 3's checkpoint is missing".
    """

    what: str
    flops: float = 0.0
    precision: str = "fp16"
    launch_seconds: float = 0.0
    fixed_seconds: float = 0.0
    condition: str | None = None

    def __post_init__(self):
        if self.precision not in T4_PEAK_FLOPS:
            raise ValueError(f"precision {self.precision!r} is not one of {', '.join(T4_PEAK_FLOPS)}")

    @property
    def compute_seconds(self) -> float:
        return self.flops / (T4_PEAK_FLOPS[self.precision] * UTILISATION[self.precision])

    @property
    def seconds(self) -> float:
        return self.compute_seconds + self.launch_seconds + self.fixed_seconds


@dataclass(frozen=True)
class TimeEstimate:
    """A lab's parts; the totals with and without the parts that run only under a condition."""

    lab: str
    parts: tuple[Part, ...]

    def chosen(self, conditional: bool) -> list[Part]:
        return [part for part in self.parts if conditional or part.condition is None]

    def seconds(self, conditional: bool = False) -> float:
        return sum(part.seconds for part in self.chosen(conditional))

    def minutes(self, conditional: bool = False) -> float:
        return self.seconds(conditional) / 60

    def flops(self, conditional: bool = False) -> float:
        return sum(part.flops for part in self.chosen(conditional))

    def conditions(self) -> list[str]:
        return sorted({part.condition for part in self.parts if part.condition is not None})


def rounded_minutes(minutes: float) -> int:
    """Minutes as the line states them: to the minute below 10, to 5 minutes above (at least 1)."""
    return max(1, round(minutes)) if minutes < 10 else 5 * round(minutes / 5)


# --- counting helpers ------------------------------------------------------------------------------------------------

def training_launches(steps: float, layers: int, passes_per_step: float = 1) -> float:
    """Launch overhead of ``steps`` optimiser steps, each of ``passes_per_step`` forward + backward passes (3 passes' worth)."""
    return steps * (passes_per_step * 3 * (layers + 2) * LAYER_PASS_SECONDS + STEP_SECONDS)


def forward_launches(passes: float, layers: int) -> float:
    """Launch overhead of ``passes`` forward passes (embedding and output layer count as two more layers)."""
    return passes * (layers + 2) * LAYER_PASS_SECONDS


def decode_launches(tokens: float, layers: int, per_step: float = 0.0) -> float:
    """Launch overhead of generating ``tokens`` tokens one after the other (one forward pass each)."""
    return tokens * ((layers + 2) * LAYER_PASS_SECONDS + per_step)


def attention_flops(tokens: float, context: float, n_layers: int, d_model: int) -> float:
    """Forward FLOPs of the attention scores and their weighted sum: 4·n·d per token per layer (query·keys, weights·values)."""
    return 4 * tokens * context * n_layers * d_model


def qwen_matrix_parameters(model: dict = QWEN2_5_0_5B) -> int:
    """N of Qwen2.5-0.5B: per layer the query and output (d × d), key and value (d × kv_heads·head_dim), three
    feed-forward matrices (d × d_ff); plus the output layer (V × d)."""
    d, kv = model["d_model"], model["kv_heads"] * model["head_dim"]
    per_layer = 2 * d * d + 2 * d * kv + 3 * d * model["d_ff"]
    return model["n_layers"] * per_layer + model["vocab_size"] * d


def minilm_matrix_parameters() -> int:
    return transformer_matrix_parameters(MINILM["n_layers"], MINILM["d_model"], 0)


def setup_part(downloads: tuple[str, ...] = ()) -> Part:
    megabytes = sum(DOWNLOAD_MEGABYTES[name] for name in downloads)
    what = "Colab set-up (clone, pip install)" + (f" and downloading {', '.join(downloads)} ({megabytes:,.0f} MB)" if downloads else "")
    return Part(what, fixed_seconds=SETUP_SECONDS + megabytes / DOWNLOAD_MEGABYTES_PER_SECOND)


def minilm_embedding_part(messages: float, what: str, condition: str | None = None) -> Part:
    """Embedding ``messages`` BANKING77 messages with MiniLM in fp32, batches of 128 sorted by length (llmlab.embeddings.embed)."""
    tokens = messages * MINILM_TOKENS_PER_MESSAGE
    return Part(what, flops=2 * minilm_matrix_parameters() * tokens, precision="fp32",
                launch_seconds=forward_launches(math.ceil(messages / 128), MINILM["n_layers"]), condition=condition)


def gpt_training_part(what: str, settings: dict, steps: int, precision: str = "fp16", condition: str | None = None,
                      vocab_size: int = SHAKESPEARE_VOCABULARY) -> Part:
    """``steps`` steps of pretraining the character GPT these settings build (Lab 3's recipe), with its evaluations."""
    parameters = transformer_matrix_parameters(settings["n_layers"], settings["d_model"], vocab_size)
    tokens = steps * settings["batch_size"] * settings["context"]
    evaluations = steps // settings["eval_every"] + 1
    eval_tokens = evaluations * settings["eval_windows"] * settings["context"]
    eval_batches = evaluations * math.ceil(settings["eval_windows"] / settings["batch_size"])
    return Part(what, flops=6 * parameters * tokens + 2 * parameters * eval_tokens, precision=precision,
                launch_seconds=training_launches(steps, settings["n_layers"]) + forward_launches(eval_batches, settings["n_layers"]),
                condition=condition)


def lab3_model_parameters(settings: dict) -> int:
    return transformer_matrix_parameters(settings["n_layers"], settings["d_model"], SHAKESPEARE_VOCABULARY)


# --- the labs ----------------------------------------------------------------------------------------------------

def lab01_parts(s: dict) -> list[Part]:
    mlp = s["mlp_context"] * s["mlp_embedding"] * s["mlp_hidden"] + s["mlp_hidden"] * SHAKESPEARE_VOCABULARY
    tokens_per_step = s["batch_size"] * s["window"]
    quick_eval = 20_000  # the notebook's fixed slice of the validation characters, scored every eval_every steps
    full_eval = SHAKESPEARE_VALIDATION_CHARACTERS * 8  # validation_loss: windows 1/8 of a window apart
    mlp_eval = (s["mlp_steps"] // s["eval_every"] + 1) * quick_eval + full_eval
    messages = (s["banking_train"] or BANKING77["train"]) + (s["banking_test"] or BANKING77["test"])
    return [
        setup_part(("all-MiniLM-L6-v2",)),
        minilm_embedding_part(messages, f"MiniLM embeddings of {messages:,} BANKING77 messages (fp32)"),
        # The bigram model's logits are a table look-up: no matrix product, only launches.
        Part(f"bigram model: {s['bigram_steps']:,} steps", launch_seconds=training_launches(s["bigram_steps"], 0)),
        Part(f"MLP model: {s['mlp_steps']:,} steps of {tokens_per_step:,} characters and its evaluations",
             flops=6 * mlp * s["mlp_steps"] * tokens_per_step + 2 * mlp * mlp_eval,
             launch_seconds=training_launches(s["mlp_steps"], 1)),
        Part(f"two samples of {s['sample_length']} characters", launch_seconds=decode_launches(2 * s["sample_length"], 1)),
    ]


def lab02_parts(s: dict) -> list[Part]:
    heads, d_head, calls = 4, s["timing_d_head"], 2 * (s["timing_repeats"] + 1)  # yours and torch's, each after a warm-up
    timing_flops = sum(calls * heads * 4 * n * n * d_head for n in s["timing_lengths"])
    context = 2 * s["sequence_length"]  # ReversalTask: the symbols, the separator, the reversal, less the last token
    parameters = transformer_matrix_parameters(s["n_layers"], s["d_model"], 11)  # 10 symbols and the separator
    tokens = s["train_steps"] * s["batch_size"] * context
    evaluations = s["train_steps"] // s["eval_every"] + 1
    per_model = Part("", flops=6 * parameters * tokens + 3 * attention_flops(tokens, context, s["n_layers"], s["d_model"])
                     + 2 * parameters * evaluations * 512 * context,
                     launch_seconds=training_launches(s["train_steps"], s["n_layers"]) + forward_launches(evaluations, s["n_layers"]))
    return [
        setup_part(),
        Part(f"timing attention at n = {', '.join(map(str, s['timing_lengths']))} (fp32; "
             "memory traffic of the n × n weights not counted beyond the FLOPs)",
             flops=timing_flops, precision="fp32", launch_seconds=calls * len(s["timing_lengths"]) * 10 * LAYER_PASS_SECONDS),
        Part(f"two reversal models: {s['train_steps']:,} steps of {s['batch_size']} sequences each",
             flops=2 * per_model.flops, launch_seconds=2 * per_model.launch_seconds),
    ]


def lab03_pretraining_part(s: dict, condition: str | None = None, what: str | None = None) -> Part:
    return gpt_training_part(what or f"pretraining: {s['steps']:,} steps of {s['batch_size']} × {s['context']} characters",
                             s, s["steps"], condition=condition)


def lab03_parts(s: dict) -> list[Part]:
    parameters = lab3_model_parameters(s)
    check_tokens = 2 * s["step_check_steps"] * s["batch_size"] * s["context"]  # your training step and train's, fp32
    final_eval = SHAKESPEARE_VALIDATION_CHARACTERS * 8 * 2  # window/8 apart, with context 256 and again with Lab 1's 64
    isoflop = []
    tokens_per_step = s["batch_size"] * s["context"]
    for budget in s["scaling_budgets"]:
        for d_model, n_layers in s["scaling_sizes"]:
            n = transformer_matrix_parameters(n_layers, d_model, SHAKESPEARE_VOCABULARY)
            steps = max(1, round(budget / (6 * n * tokens_per_step)))  # llmlab.pretraining.steps_for_budget
            isoflop.append((n, steps, n_layers))
    isoflop_steps = sum(steps for _, steps, _ in isoflop)
    return [
        setup_part(),
        Part(f"checking your training step: 2 × {s['step_check_steps']} steps in fp32", flops=6 * parameters * check_tokens,
             precision="fp32", launch_seconds=training_launches(2 * s["step_check_steps"], s["n_layers"])),
        lab03_pretraining_part(s),
        Part("scoring the validation split twice", flops=2 * parameters * final_eval,
             launch_seconds=forward_launches(final_eval / (s["batch_size"] * s["context"]), s["n_layers"])),
        gpt_training_part(f"the resume demonstration: 2 × {s['resume_demo_steps']} steps", {**s, "eval_every": s["resume_demo_steps"]},
                          2 * s["resume_demo_steps"]),
        Part(f"two samples of {s['sample_characters']:,} characters",
             launch_seconds=decode_launches(2 * s["sample_characters"], s["n_layers"])),
        Part(f"isoFLOP study: {len(isoflop)} runs, {isoflop_steps:,} steps of small models",
             flops=sum(6 * n * steps * tokens_per_step + 2 * n * s["eval_windows"] * s["context"] for n, steps, _ in isoflop),
             launch_seconds=sum(training_launches(steps, layers) for _, steps, layers in isoflop)),
    ]


def lab04_parts(s: dict) -> list[Part]:
    train = s["train_per_intent"] * BANKING77["intents"] if s["train_per_intent"] else BANKING77["train"]
    fitted = round(0.9 * train)  # 10 % of the training split is held out for validation
    test = s["test_size"] or BANKING77["test"]
    n = minilm_matrix_parameters()
    parts = [setup_part(("all-MiniLM-L6-v2",)),
             minilm_embedding_part(train + test, "frozen recipe: MiniLM embeddings of every message (fp32)")]
    for recipe, name, flops_per_token in (("finetune_settings", "full fine-tuning", 6), ("lora_settings", "LoRA", 4)):
        run = s[recipe]
        steps = run["epochs"] * math.ceil(fitted / run["batch_size"])
        tokens = run["epochs"] * fitted * min(MINILM_TOKENS_PER_MESSAGE, run["max_length"])
        parts.append(Part(f"{name}: {run['epochs']} epochs, {steps:,} steps of {run['batch_size']}", flops=flops_per_token * n * tokens,
                          launch_seconds=training_launches(steps, MINILM["n_layers"])))
    # predict_proba: validation and test for each of three classifiers, the test split again for the best one and for
    # the calibration of the other two (every one a pass through MiniLM).
    predicted = 3 * (train - fitted + test) + 3 * test
    parts.append(minilm_embedding_part(predicted, f"classifying {predicted:,} messages (fp32)"))
    fits = [fitted] + [per_intent * BANKING77["intents"] if per_intent else fitted
                       for per_intent in s["curve_per_intent"] for _ in range(s["curve_seeds"] if per_intent else 1)]
    parts.append(Part(f"{len(fits)} TF-IDF + logistic regression fits on the CPU (measured rate, see TFIDF_SECONDS_PER_MESSAGE)",
                      fixed_seconds=TFIDF_SECONDS_PER_MESSAGE * sum(fits)))
    return parts


def qwen_tokens(characters: float, messages: float) -> float:
    return characters / CHARACTERS_PER_QWEN_TOKEN + CHAT_TOKENS_PER_MESSAGE * messages + CHAT_SYSTEM_TOKENS


def lab04b_parts(s: dict) -> list[Part]:
    if s["base_model"] is None:
        raise ValueError("the gpu time of Lab 4b is estimated for a preset that loads a base model, not for one that builds it")
    precision = "fp32" if s.get("fp32_only") else "fp16"
    n, layers = qwen_matrix_parameters(), QWEN2_5_0_5B["n_layers"]
    recompute = 2 if s["gradient_checkpointing"] else 0
    data = COFFEE_DIALOGS
    dialogs = s["dialogs"] or data["dialogs"]
    train = dialogs * (1 - s["validation_fraction"] - s["test_fraction"])
    validation, test = dialogs * s["validation_fraction"], dialogs * s["test_fraction"]
    conversation = qwen_tokens(data["characters_per_dialog"], data["messages_per_dialog"])
    prompt = qwen_tokens(data["history_characters_per_reply"], data["history_messages_per_reply"]) + 3  # + "<|im_start|>assistant\n"
    pair = prompt + data["characters_per_reply"] / CHARACTERS_PER_QWEN_TOKEN + 2  # the prompt and one reply
    train_pairs, test_pairs = train * PREFERENCE_PAIRS_PER_DIALOG["train"], test * PREFERENCE_PAIRS_PER_DIALOG["test"] * s.get("test_pairs_per_reply", 1)
    replies = test * data["replies_per_dialog"]
    eval_size = s["eval_batch_size"]
    generate_size = s.get("generate_batch_size", eval_size)
    sft_passes = math.ceil(train / s["sft_micro_batch_size"]) * s["sft_epochs"]
    sft_tokens = train * conversation * s["sft_epochs"]
    dpo_passes = s["dpo_steps"] * math.ceil(s["dpo_batch_size"] / s["dpo_micro_batch_size"])
    dpo_tokens = s["dpo_steps"] * s["dpo_batch_size"] * 2 * pair
    dpo_checks = (DPO_EVALUATIONS + 1) * DPO_EVALUATION_PAIRS * 2 * pair
    generate_calls = 4 * math.ceil(replies / generate_size)
    scored = 2 * validation * conversation + 2 * 2 * test * conversation + 2 * train_pairs * pair  # SFT losses, KL, reference
    evaluated = 4 * (test * conversation + 2 * test_pairs * pair)  # each model's test loss and preference pairs
    forward_batches = (2 * validation + 2 * 2 * test + 2 * train_pairs + 4 * (test + 2 * test_pairs)) / eval_size
    return [
        setup_part((s["base_model"],)),
        Part(f"full SFT: {round(train):,} conversations, {sft_passes:,} micro-batches" + (", checkpointed" if recompute else ""),
             flops=(6 + recompute) * n * sft_tokens, precision=precision,
             launch_seconds=training_launches(sft_passes, layers, 1 + recompute / 6)),
        Part(f"LoRA SFT: the same conversations", flops=(4 + recompute) * n * sft_tokens, precision=precision,
             launch_seconds=training_launches(sft_passes, layers, 1 + recompute / 6)),
        Part(f"DPO: {s['dpo_steps']} steps of {s['dpo_batch_size']} pairs and its {DPO_EVALUATIONS + 1} checks",
             flops=(4 + recompute) * n * dpo_tokens + 2 * n * dpo_checks, precision=precision,
             launch_seconds=training_launches(dpo_passes, layers, 1 + recompute / 6)
             + forward_launches((DPO_EVALUATIONS + 1) * math.ceil(DPO_EVALUATION_PAIRS / s["dpo_micro_batch_size"]), layers)),
        Part(f"scoring: validation and test losses, the KL, the reference's and each model's pair log-probabilities, "
             f"{eval_size} sequences at a time", flops=2 * n * (scored + evaluated), precision=precision,
             launch_seconds=forward_launches(forward_batches, layers)),
        Part(f"generating {round(replies):,} replies with each of 4 models, {generate_size} at a time, up to {s['max_new_tokens']} "
             f"tokens: {generate_calls:,} calls of generate", flops=4 * 2 * n * replies * (prompt + s["max_new_tokens"]),
             precision=precision,
             launch_seconds=decode_launches(generate_calls * s["max_new_tokens"], layers, GENERATE_STEP_SECONDS)
             + forward_launches(generate_calls, layers)),
    ]


def lab05_parts(s: dict) -> list[Part]:
    lab3 = lab_settings("03_pretraining", "gpu")
    n, layers, d = lab3_model_parameters(lab3), lab3["n_layers"], lab3["d_model"]

    def generated(tokens: float, context: float, batch: int = 1) -> float:
        """FLOPs of ``tokens`` decode steps of ``batch`` sequences with the cache, at a mean context of ``context``."""
        return batch * tokens * (2 * n + attention_flops(1, context, layers, d))

    sampling = (7 + 3) * s["sample_characters"] + 3 * 60 + 2 * s["beam_tokens"] + 2 * s["exercise_tokens"] * (2 + 5)
    speed_cached = sum((s["speed_repeats"] + 1) * length for length in s["speed_lengths"])
    # without the cache every step reads the whole text again: 2·N·t plus the attention over t, summed over t
    speed_uncached = sum((s["speed_repeats"] + 1) * sum(2 * n * (s["speed_prompt"] + t)
                                                       + attention_flops(s["speed_prompt"] + t, (s["speed_prompt"] + t) / 2, layers, d)
                                                       for t in range(length)) for length in s["speed_lengths"])
    prefill = sum((s["prefill_repeats"] + 1) * (2 * n * p + attention_flops(p, p / 2, layers, d)
                                                 + generated(s["prefill_new_tokens"], p)) for p in s["prefill_prompts"])
    prefill_steps = len(s["prefill_prompts"]) * (s["prefill_repeats"] + 1) * (s["prefill_new_tokens"] + 1)
    batch_flops = sum((s["batch_repeats"] + 1) * generated(s["batch_new_tokens"], s["batch_prompt"] + s["batch_new_tokens"] / 2, b)
                      for b in s["batch_sizes"])
    batch_steps = len(s["batch_sizes"]) * (s["batch_repeats"] + 1) * s["batch_new_tokens"]
    return [
        setup_part(),
        lab03_pretraining_part(lab3, condition="Lab 3's checkpoint is missing",
                               what=f"Lab 3's pretraining ({lab3['steps']:,} steps), when its checkpoint is missing"),
        Part(f"sampling, beam search and your cached loop: about {sampling:,} tokens one at a time",
             flops=generated(sampling, s["sample_characters"]), launch_seconds=decode_launches(sampling, layers)),
        Part(f"speed with and without the KV cache up to {max(s['speed_lengths']):,} tokens",
             flops=generated(speed_cached, max(s["speed_lengths"]) / 2) + speed_uncached,
             launch_seconds=decode_launches(2 * speed_cached, layers)),
        Part(f"prefill and decode at prompts of {', '.join(map(str, s['prefill_prompts']))}; batches up to {max(s['batch_sizes'])}",
             flops=prefill + batch_flops, launch_seconds=decode_launches(prefill_steps + batch_steps, layers)),
        Part("downloading all-MiniLM-L6-v2, when Lab 4's classifier is missing",
            fixed_seconds=DOWNLOAD_MEGABYTES["all-MiniLM-L6-v2"] / DOWNLOAD_MEGABYTES_PER_SECOND, condition="Lab 4's classifier is missing"),
        minilm_embedding_part(BANKING77["train"], "training Lab 4's frozen classifier, when it is missing",
                              condition="Lab 4's classifier is missing"),
    ]


def lab06_parts(s: dict) -> list[Part]:
    messages = BANKING77["train"] + (s["test_size"] or BANKING77["test"])
    return [
        setup_part(("all-MiniLM-L6-v2",)),
        minilm_embedding_part(messages, f"MiniLM embeddings of {messages:,} messages (fp32)"),
    ]


# Qwen2.5-1.5B-Instruct's config.json (Lab 7's gpu generator and judge): 28 layers of width 1,536, 12 query heads and 2
# key/value heads of 128, feed-forward 8,960 (gated), vocabulary 151,936, output layer tied to the embedding.
QWEN2_5_1_5B = dict(n_layers=28, d_model=1536, q_heads=12, kv_heads=2, head_dim=128, d_ff=8960, vocab_size=151_936)
# Lab 7's texts, assumed from CLAP NQ's sizes (600 questions, 597 passages of about 150 words): MiniLM tokens of a
# question, of a passage's sentences together, of the chunks of one chunking (a chunk is cut at MiniLM's 128 tokens);
# Qwen tokens of the sources of one prompt (5 chunks), a question with its system message, and an answer.
CLAPNQ = dict(questions=600, passages=597, question_tokens=12, sentence_tokens_per_passage=220,
              chunk_tokens_per_chunking=597 * 230, prompt_tokens=900, judge_prompt_tokens=400, answer_tokens=60)


def lab07_parts(s: dict) -> list[Part]:
    generator = QWEN2_5_1_5B
    n, layers = qwen_matrix_parameters(generator), generator["n_layers"]
    data = CLAPNQ
    minilm_tokens = (data["questions"] * data["question_tokens"] + data["passages"] * data["sentence_tokens_per_passage"]
                     + len(s["chunk_grid"]) * data["chunk_tokens_per_chunking"]
                     + s["index_distractors"] * MINILM_TOKENS_PER_MESSAGE)
    test = data["questions"] - s["tuning_split"]
    judged = 2 * s["judge_items"]
    injected = 3 * 2 * s["injection_targets"] * 1.5  # 3 defences, 2 payloads, about 1.5 questions per target title
    answered = test + injected
    generate_calls = math.ceil(answered / s["generation_batch_size"])
    return [
        setup_part(("all-MiniLM-L6-v2", s["generator"])),
        Part(f"MiniLM embeddings of questions, sentences, {len(s['chunk_grid'])} chunkings and "
             f"{s['index_distractors']:,} distractors (fp32)",
             flops=2 * minilm_matrix_parameters() * minilm_tokens, precision="fp32",
             launch_seconds=forward_launches(minilm_tokens / MINILM_TOKENS_PER_MESSAGE / 128, MINILM["n_layers"])),
        Part(f"{s['generator']} (fp32: Qwen2 overflows fp16) answering {round(answered):,} questions from their sources, "
             f"up to {s['max_new_tokens']} tokens, {s['generation_batch_size']} at a time",
             flops=2 * n * answered * (data["prompt_tokens"] + data["answer_tokens"]), precision="fp32",
             launch_seconds=decode_launches(generate_calls * s["max_new_tokens"], layers, GENERATE_STEP_SECONDS)),
        Part(f"the same model judging {s['judge_items']} pairs in both orders", precision="fp32",
             flops=2 * n * judged * data["judge_prompt_tokens"], launch_seconds=forward_launches(judged, layers)),
    ]


LAB_PARTS = {
    "01_what_is_an_llm": lab01_parts,
    "02_attention": lab02_parts,
    "03_pretraining": lab03_parts,
    "04_fine_tuning": lab04_parts,
    "04b_instruction_tuning": lab04b_parts,
    "05_inference": lab05_parts,
    "06_business": lab06_parts,
    "07_building_on_a_model": lab07_parts,
}

# What each lab does that the parts do not count, said in its line.
NOT_COUNTED = {
    "01_what_is_an_llm": "training the BPE tokenizers on the CPU (seconds)",
    "02_attention": "the memory traffic of your attention's n × n weights beyond its FLOPs",
    "03_pretraining": "the CPU work between steps beyond the launch allowance",
    "04_fine_tuning": "choosing the head's C (3-fold, on the CPU)",
    "04b_instruction_tuning": "copying the 0.5B model between its four versions; replies shorter than the limit end sooner",
    "05_inference": "the int8 measurements, which run on the CPU by design (seconds to a minute)",
    "06_business": "the flywheel's and the threshold's work on the CPU (under a minute)",
    "07_building_on_a_model": "BM25, the index, the coffee-order model (as at the cpu preset) and the load test, on the CPU",
}


def gpu_time_estimate(lab: str, settings: dict | None = None) -> TimeEstimate:
    """The estimate for ``lab`` at its gpu preset (or at ``settings``, e.g. a changed copy of it)."""
    if lab not in LAB_PARTS:
        raise KeyError(f"no gpu time estimate for lab {lab!r}; labs: {', '.join(sorted(LAB_PARTS))}")
    settings = lab_settings(lab, "gpu") if settings is None else settings
    return TimeEstimate(lab, tuple(LAB_PARTS[lab](settings)))


def minutes_text(estimate: TimeEstimate) -> str:
    """"about 4 min", and what each condition adds: "about 4 min, 15 min more when Lab 3's checkpoint is missing"."""
    extras = []
    for condition in estimate.conditions():
        more = sum(part.seconds for part in estimate.parts if part.condition == condition) / 60
        extras.append(f"{rounded_minutes(more) if more >= 0.5 else 'under 1'} min more when {condition}")
    return f"about {rounded_minutes(estimate.minutes())} min" + (", " + " and ".join(extras) if extras else "")


def describe(estimate: TimeEstimate) -> str:
    """One line for a lab's output: the minutes, how they were computed, and that they are not measured."""
    parts = estimate.chosen(False)
    compute = sum(part.compute_seconds for part in parts)
    launches = sum(part.launch_seconds for part in parts)
    fixed = sum(part.fixed_seconds for part in parts)
    used = [name for name in T4_PEAK_FLOPS if any(part.flops and part.precision == name for part in parts)]
    peaks = " and ".join(f"{UTILISATION[name]:.0%} of {'its' if i else 'the T4' + chr(39) + 's'} "
                         f"{T4_PEAK_FLOPS[name] / 1e12:.2g} TFLOPS {name} peak" for i, name in enumerate(used))
    return (f"gpu preset on a T4: {minutes_text(estimate)} (an estimate, not measured: "
            f"{estimate.flops() / 1e15:.2g} PFLOP at an assumed {peaks or 'share of the peak'} = {compute / 60:.1f} min, "
            f"plus {launches / 60:.1f} min launching the kernels of small steps, plus {fixed / 60:.1f} min for set-up, "
            f"downloads and CPU work; the parts, and what is left out: python -m llmlab.gpu_time {estimate.lab})")


def gpu_time_line(lab: str) -> str:
    """What ``start_lab`` prints after "time:": the estimate of ``lab``'s gpu preset on a T4."""
    return describe(gpu_time_estimate(lab))


def table(lab: str) -> str:
    """Every part of a lab's estimate, one per line, with its FLOPs and seconds."""
    estimate = gpu_time_estimate(lab)
    lines = [f"{lab}: {gpu_time_line(lab)}", f"not counted: {NOT_COUNTED[lab]}", f"{'PFLOP':>8} {'prec':>5} {'compute s':>10} {'launch s':>9} {'fixed s':>8}  part"]
    for part in estimate.parts:
        lines.append(f"{part.flops / 1e15:>8.3f} {part.precision:>5} {part.compute_seconds:>10.0f} {part.launch_seconds:>9.0f} "
                     f"{part.fixed_seconds:>8.0f}  {part.what}" + (f" [only when {part.condition}]" if part.condition else ""))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    labs = (argv if argv is not None else sys.argv[1:]) or sorted(LAB_PRESETS)
    for lab in labs:
        print(table(lab), end="\n\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
