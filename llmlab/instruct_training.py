"""Lab 4b's models and their training: a base model, supervised fine-tuning (full and LoRA), DPO, and the measurements.

- the base model: at the ``gpu`` preset a small pretrained decoder loaded from the Hugging Face
  Hub by name (``load_base_model``); at ``cpu`` and ``smoke`` one the lab builds itself: a
  byte-level BPE tokenizer trained with ``tokenizers`` (``train_chat_tokenizer``), a small Llama-shaped
  decoder (``small_decoder``) pretrained briefly on plain text with the course's training
  loop (``pretrain_decoder``), saved with ``save_pretrained`` and read back with ``from_pretrained``,
  so every later step runs the same Hugging Face code on both;
- ``sft_train``: supervised fine-tuning with ``transformers.Trainer``, of every weight or of LoRA
  adapters (``with_lora``, ``peft``); ``dpo_train``: DPO with ``llmlab.instruct.dpo_loss`` in the
  course's training loop, against reference log-probabilities computed once;
- ``evaluate_model``: assistant-token loss, the task metric on generated replies and preference
  accuracy, on held-out dialogs; ``benchmark`` is what ``python -m llmlab.bench sft`` runs.
"""

from __future__ import annotations

import contextlib
import io
import math
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from llmlab.instruct import (
    CHAT_TEMPLATE, SPECIAL_TOKENS, ChatCollator, ConversationTooLong, assistant_token_loss, batches, dpo_loss, encode_conversation,
    judged_rates, preference_scores, reply_is_right, response_log_probs, summed_log_probs,
)
from llmlab.metrics import token_cross_entropy
from llmlab.progress import tqdm
from llmlab.runtime import Precision, autocast, pick_precision, shown_path
from llmlab.training import History, train

# The linear layers of a Llama- or Qwen2-shaped decoder that LoRA adapts: attention and feed-forward.
LORA_TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


# --- the base model ---------------------------------------------------------------------------------------


# How a transcript names the two speakers in the base model's pretraining text (the chat format names them otherwise).
TRANSCRIPT_SPEAKERS = {"user": "Customer", "assistant": "Barista"}


def plain_transcript(messages: Sequence[dict]) -> str:
    """A conversation as plain text, one ``Speaker: text`` line per message: how dialogs appear in web text and books,
    with no chat template, no special token and nothing that marks where the barista should stop."""
    return "\n".join(f"{TRANSCRIPT_SPEAKERS[message['role']]}: {message['content']}" for message in messages)


def pretraining_text(characters: int | None = None, conversations: Sequence[Sequence[dict]] = ()) -> str:
    """Plain text for the lab's own base model: the BANKING77 training messages (customer-service English), one per
    line, then ``conversations`` as plain transcripts (``plain_transcript``), a blank line between two; the first
    ``characters`` of it (None = all).

    The lab passes its *training* dialogs, never a validation or test one. A real base model has read
    billions of words, conversations among them; this one can read about a million characters in a few minutes,
    so it reads the kind of text its task is about, as a transcript. What it has not seen is the chat format:
    the role markers, the turn boundaries, the end-of-turn token. That is what supervised fine-tuning teaches.
    """
    import pandas as pd

    from llmlab.data import data_file

    messages = pd.read_csv(data_file("banking77/train.csv"))["text"].tolist()
    text = "\n".join(messages) + "".join("\n\n" + plain_transcript(conversation) for conversation in conversations)
    return text if characters is None else text[:characters]


def train_chat_tokenizer(text: str, vocab_size: int):
    """A byte-level BPE tokenizer trained on ``text`` with the chat format's special tokens and ``CHAT_TEMPLATE``.

    ``<|im_end|>`` ends a turn (the model's end-of-sequence token) and ``<|endoftext|>`` pads.
    """
    from transformers import PreTrainedTokenizerFast

    from llmlab.tokenization import train_byte_level_bpe

    if vocab_size <= 256 + len(SPECIAL_TOKENS):
        raise ValueError(f"vocab_size {vocab_size} leaves no room for merges: use more than {256 + len(SPECIAL_TOKENS)}")
    bpe = train_byte_level_bpe(text.splitlines(), vocab_size - len(SPECIAL_TOKENS))
    bpe.add_special_tokens(list(SPECIAL_TOKENS))
    # clean_up_tokenization_spaces=False: decoding gives back the text exactly (older transformers "cleaned" " ." to ".")
    return PreTrainedTokenizerFast(tokenizer_object=bpe, eos_token="<|im_end|>", pad_token="<|endoftext|>",
                                   chat_template=CHAT_TEMPLATE, clean_up_tokenization_spaces=False)


def end_of_turn_id(tokenizer) -> int:
    """The token a chat template writes right after a reply: what generation stops at (``<|im_end|>`` in ChatML)."""
    conversation = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]
    encoded = encode_conversation(tokenizer, conversation, max_length=10_000)
    reply = [i for i, flag in enumerate(encoded["assistant_mask"]) if flag]
    return encoded["input_ids"][reply[-1]]


def chat_token_ids(tokenizer) -> list[int]:
    """The special tokens the chat template writes (in ChatML ``<|im_start|>`` and ``<|im_end|>``).

    Read from the tokenizer's added special tokens, not from ``all_special_ids``: that lists only the
    tokens with a named role (end of sequence, padding), which leaves ``<|im_start|>`` out.
    """
    conversation = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]
    ids = encode_conversation(tokenizer, conversation, max_length=10_000)["input_ids"]
    special = {index for index, token in tokenizer.added_tokens_decoder.items() if token.special} | set(tokenizer.all_special_ids)
    return sorted(set(ids) & special)


def small_decoder(tokenizer, settings: dict, seed: int = 0):
    """A randomly initialised Llama-shaped causal LM (``transformers.LlamaForCausalLM``) of the preset's size."""
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=settings["d_model"], intermediate_size=settings["d_ff"],
        num_hidden_layers=settings["n_layers"], num_attention_heads=settings["n_heads"],
        num_key_value_heads=settings["n_heads"], max_position_embeddings=settings["max_length"],
        tie_word_embeddings=True, eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
        bos_token_id=None,
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return LlamaForCausalLM(config)


def pretrain_decoder(model, tokenizer, text: str, settings: dict, device: torch.device, checkpoint_path=None,
                     seed: int = 0) -> History:
    """Next-token pretraining on random windows of ``text`` with the course's loop (``llmlab.training.train``).

    The last 5 % of the tokens are held out and their loss measured every ``pretrain_eval_every``
    steps. With ``checkpoint_path`` a re-run resumes where an interrupted one stopped.
    """
    from llmlab.lm import random_windows

    ids = torch.tensor(tokenizer(text, add_special_tokens=False)["input_ids"])
    cut = int(len(ids) * 0.95)
    train_ids, held_out = ids[:cut], ids[cut:]
    context, generator = settings["context"], torch.Generator().manual_seed(seed)
    evaluation_windows = random_windows(held_out, 32, context, torch.Generator().manual_seed(seed + 1), device)

    def loss_fn(model, batch):
        inputs, targets = batch
        return token_cross_entropy(model(input_ids=inputs).logits, targets)

    return train(
        model, next_batch=lambda: random_windows(train_ids, settings["pretrain_batch_size"], context, generator, device),
        steps=settings["pretrain_steps"], learning_rate=settings["pretrain_learning_rate"], device=device, loss_fn=loss_fn,
        evaluate=lambda: {"held_out_loss": loss_fn(model, evaluation_windows).item()}, eval_every=settings["pretrain_eval_every"],
        weight_decay=0.1, description="pretraining", checkpoint_path=checkpoint_path, checkpoint_every=settings["pretrain_eval_every"],
        resume=checkpoint_path is not None, data_generator=generator,
        run_settings={key: settings[key] for key in ("vocab_size", "d_model", "d_ff", "n_layers", "n_heads", "context",
                                                     "pretrain_steps", "pretrain_batch_size", "pretrain_learning_rate",
                                                     "pretrain_characters")},
    )


def load_causal_lm(source, device: torch.device | str = "cpu"):
    """(tokenizer, model) read with ``from_pretrained`` from a Hub name or a folder written by ``save_pretrained``.

    A model without a chat template is refused: the lab formats every conversation with it.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(source)
    if not tokenizer.chat_template:
        raise ValueError(f"{source} has no chat template: pick a model whose tokenizer defines one (tokenizer.chat_template)")
    if tokenizer.pad_token is None:
        raise ValueError(f"{source} defines no padding token: set tokenizer.pad_token before batching")
    # Weights in float32 whatever the checkpoint stores (Qwen's are bfloat16); autocast lowers precision where it is safe.
    model = AutoModelForCausalLM.from_pretrained(source).to(device, torch.float32).eval()
    return tokenizer, model


def load_base_model(name: str, device: torch.device | str = "cpu"):
    """The gpu preset's base model, by its Hugging Face Hub name (downloaded once, then read from the local cache)."""
    return load_causal_lm(name, device)


def lab_precision(settings: dict, device: torch.device) -> Precision:
    """The precision every step of the lab runs in: ``pick_precision(device)``, or float32 where the preset says
    ``fp32_only`` (Qwen2 models overflow float16, and a T4 has no fast bfloat16)."""
    return Precision(None, False) if settings.get("fp32_only") else pick_precision(device)


# --- what training costs ------------------------------------------------------------------------------------


def trainable_parameters(model) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def training_state_megabytes(model) -> float:
    """Weights, plus a gradient and AdamW's two moments (float32) for each trainable weight, in MB (computed, not measured;
    activations come on top and grow with the batch)."""
    weights = sum(p.numel() * p.element_size() for p in model.parameters())
    return (weights + 3 * 4 * trainable_parameters(model)) / 1e6


def folder_megabytes(folder) -> float:
    return sum(path.stat().st_size for path in Path(folder).rglob("*") if path.is_file()) / 1e6


# --- supervised fine-tuning with the Trainer ----------------------------------------------------------------


def with_lora(model, tokenizer, settings: dict):
    """``model`` wrapped by ``peft`` with LoRA adapters of rank ``lora_r`` on its attention and feed-forward layers.

    The embeddings of the chat template's special tokens are trained too (``trainable_token_indices``):
    a base model that never saw ``<|im_start|>`` and ``<|im_end|>`` has untrained rows for them, and
    frozen, they could never learn to end a turn.
    """
    import warnings

    from peft import LoraConfig, get_peft_model

    config = LoraConfig(r=settings["lora_r"], lora_alpha=settings["lora_alpha"], lora_dropout=settings["lora_dropout"],
                        target_modules=LORA_TARGETS, task_type="CAUSAL_LM",
                        trainable_token_indices={"embed_tokens": chat_token_ids(tokenizer)})
    with warnings.catch_warnings():  # peft calls a transformers method that transformers 5 renamed; nothing to act on
        warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)
        return get_peft_model(model, config)


def _progress_callback():
    """A Trainer callback showing one llmlab progress bar with the latest loss, instead of a printed dict per log."""
    from transformers import TrainerCallback

    class ProgressBar(TrainerCallback):
        def on_train_begin(self, args, state, control, **kwargs):
            self.bar = tqdm(total=state.max_steps, initial=state.global_step, desc="SFT (Trainer)")

        def on_step_end(self, args, state, control, **kwargs):
            self.bar.update(state.global_step - self.bar.n)

        def on_log(self, args, state, control, logs=None, **kwargs):
            if logs and "loss" in logs:
                self.bar.set_postfix(loss=f"{logs['loss']:.3f}")

        def on_train_end(self, args, state, control, **kwargs):
            self.bar.close()

    return ProgressBar()


SECONDS_FILE = "llmlab_training_seconds.json"


def _seconds_recorder(output_dir, seconds_before: float):
    """A Trainer callback that writes the training seconds so far into each checkpoint, for a resumed run to add to."""
    import json

    from transformers import TrainerCallback

    class SecondsRecorder(TrainerCallback):
        def on_train_begin(self, args, state, control, **kwargs):
            self.started = time.perf_counter()

        def on_save(self, args, state, control, **kwargs):
            folder = Path(output_dir) / f"checkpoint-{state.global_step}"
            if folder.is_dir():
                (folder / SECONDS_FILE).write_text(json.dumps({"seconds": seconds_before + time.perf_counter() - self.started}))

    return SecondsRecorder()


def micro_batches(batch_size: int, micro_batch_size: int | None, name: str) -> tuple[int, int]:
    """(examples per forward pass, passes per optimiser step) for an optimiser batch of ``batch_size``.

    ``micro_batch_size`` None is the whole batch in one pass. A smaller one adds up the gradients of
    ``batch_size // micro_batch_size`` passes before each step (gradient accumulation): the same
    mean-loss gradient, with the activations of one micro-batch on the GPU at a time.
    """
    micro = batch_size if micro_batch_size is None else micro_batch_size
    if micro < 1 or batch_size % micro:
        raise ValueError(f"{name}_micro_batch_size must be a positive divisor of {name}_batch_size {batch_size}, got {micro}")
    return micro, batch_size // micro


def _checkpointing_arguments(arguments_class, checkpointing: bool) -> dict:
    """The Trainer's switch for recomputing activations, under the name the installed transformers uses: it was
    ``gradient_checkpointing`` until transformers 5.x renamed it ``activation_checkpointing`` (the old name still
    works there, with a FutureWarning). Off, nothing is passed, so neither version warns."""
    import dataclasses

    if not checkpointing:
        return {}
    names = {field.name for field in dataclasses.fields(arguments_class)}
    prefix = "activation_checkpointing" if "activation_checkpointing" in names else "gradient_checkpointing"
    return {prefix: True, f"{prefix}_kwargs": {"use_reentrant": False}}


def sft_train(model, train_data, collator: ChatCollator, settings: dict, learning_rate: float, device: torch.device, output_dir,
              precision: Precision | None = None, seed: int = 0) -> dict:
    """Fine-tune ``model`` on ``train_data`` (encoded conversations) with ``transformers.Trainer``; returns what it cost.

    ``remove_unused_columns=False`` keeps the ``assistant_mask`` column, which the model's forward
    does not take but the collator needs to build the labels. Checkpoints go to ``output_dir``
    and a re-run resumes from the last one (its seconds add to those the interrupted run recorded
    at its last checkpoint). ``sft_batch_size`` is the batch of one optimiser step; ``sft_micro_batch_size`` (optional)
    splits it into micro-batches whose gradients add up (the Trainer's ``gradient_accumulation_steps``), and
    ``gradient_checkpointing`` (optional) recomputes each layer in the backward pass: both lower the GPU memory, and
    neither changes what is computed (up to rounding). Returns trainable parameters, seconds, the computed training-state
    memory, the measured peak GPU memory (on a GPU) and the logged losses.
    """
    import json

    from transformers import Trainer, TrainingArguments
    from transformers.trainer_callback import PrinterCallback, ProgressCallback
    from transformers.trainer_utils import get_last_checkpoint

    precision = precision or lab_precision(settings, device)
    steps = math.ceil(len(train_data) / settings["sft_batch_size"]) * settings["sft_epochs"]
    micro, accumulation = micro_batches(settings["sft_batch_size"], settings.get("sft_micro_batch_size"), "sft")
    checkpointing = bool(settings.get("gradient_checkpointing", False))
    arguments = TrainingArguments(
        output_dir=str(output_dir), per_device_train_batch_size=micro, gradient_accumulation_steps=accumulation,
        **_checkpointing_arguments(TrainingArguments, checkpointing),
        num_train_epochs=settings["sft_epochs"],
        learning_rate=learning_rate, lr_scheduler_type="cosine", warmup_steps=max(1, round(0.05 * steps)), weight_decay=0.01,
        max_grad_norm=1.0, logging_steps=settings["sft_log_every"], save_strategy="steps", save_steps=settings["sft_save_every"],
        save_total_limit=1, report_to="none", use_cpu=device.type == "cpu", seed=seed, data_seed=seed,
        fp16=precision.needs_loss_scaling, bf16=precision.dtype == torch.bfloat16, remove_unused_columns=False,
        dataloader_num_workers=0, disable_tqdm=True,
    )
    trainer = Trainer(model=model, args=arguments, train_dataset=train_data, data_collator=collator)
    for callback in (ProgressCallback, PrinterCallback):
        trainer.remove_callback(callback)
    trainer.add_callback(_progress_callback())
    last = get_last_checkpoint(str(output_dir)) if Path(output_dir).is_dir() else None
    seconds_before = json.loads((Path(last) / SECONDS_FILE).read_text())["seconds"] if last and (Path(last) / SECONDS_FILE).is_file() else 0.0
    trainer.add_callback(_seconds_recorder(output_dir, seconds_before))
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    started = time.perf_counter()
    with contextlib.redirect_stdout(io.StringIO()):  # the Trainer prints a line when it resumes; the bar says enough
        trainer.train(resume_from_checkpoint=last)
    seconds = seconds_before + time.perf_counter() - started
    if last is not None:
        print(f"resumed from {shown_path(last)} (delete {shown_path(output_dir)} to train from scratch)")
    if checkpointing:  # the Trainer switched it on; the model goes back as it came, so later steps (DPO) decide for themselves
        model.gradient_checkpointing_disable()
    model.eval()
    return {
        "trainable parameters": trainable_parameters(model),
        "training seconds": seconds,
        "training state MB (computed)": training_state_megabytes(model),
        "peak GPU MB (measured)": torch.cuda.max_memory_allocated(device) / 1e6 if device.type == "cuda" else float("nan"),
        "steps": trainer.state.global_step,
        "losses": [entry["loss"] for entry in trainer.state.log_history if "loss" in entry],
        "loss steps": [entry["step"] for entry in trainer.state.log_history if "loss" in entry],
        "resumed": last is not None,
    }


# --- preference pairs as tokens, and DPO -------------------------------------------------------------------


def encode_pairs(tokenizer, pairs: list[dict], max_length: int) -> tuple[list[dict], int]:
    """Each pair's chosen and rejected conversation encoded with only the final reply marked, and the pair's ``reply``
    (which reply it was made from, for grouping); (encoded, skipped as too long)."""
    encoded, skipped = [], 0
    for number, pair in enumerate(pairs):
        try:
            encoded.append({side: encode_conversation(tokenizer, pair["prompt"] + [{"role": "assistant", "content": pair[side]}],
                                                      max_length, last_only=True) for side in ("chosen", "rejected")}
                           | {"reply": pair.get("reply", number)})
        except ConversationTooLong:
            skipped += 1
    return encoded, skipped


@torch.no_grad()
def pair_log_probs(model, encoded_pairs: list[dict], collator: ChatCollator, batch_size: int, device: torch.device,
                   precision: Precision | None = None, score=summed_log_probs) -> tuple[torch.Tensor, torch.Tensor]:
    """Summed log-probabilities of each pair's chosen and rejected reply under ``model``: two tensors of shape (pairs,).

    ``score(logits, input_ids, assistant_mask)`` sums them (``llmlab.instruct.summed_log_probs``, or the learner's 04b.4).
    """
    model.eval()
    precision = precision or pick_precision(device)
    scores = {}
    for side in ("chosen", "rejected"):
        rows = [pair[side] for pair in encoded_pairs]
        with autocast(device, precision):
            scores[side] = torch.cat([response_log_probs(model, batch, score).float().cpu()
                                      for batch in batches(rows, collator, batch_size, device)])
    return scores["chosen"], scores["rejected"]


DPO_EVALUATION_PAIRS = 64  # training pairs on which dpo_train follows the implicit reward while it trains
DPO_EVALUATIONS = 10  # how many times during the run (and at its end) dpo_train records them


def dpo_train(policy, encoded_pairs: list[dict], reference_chosen: torch.Tensor, reference_rejected: torch.Tensor,
              collator: ChatCollator, settings: dict, device: torch.device, checkpoint_path=None, seed: int = 0,
              loss=dpo_loss, score=summed_log_probs) -> History:
    """Direct preference optimisation of ``policy`` with the course's loop; the reference's log-probabilities are given.

    Each step draws ``dpo_batch_size`` pairs, scores their chosen and rejected replies in one
    batch and minimises ``loss`` (by default ``llmlab.instruct.dpo_loss``; the lab passes the
    learner's); ``score`` sums each reply's log-probability (``llmlab.instruct.summed_log_probs``, or
    the learner's). The reference model is not needed while training: its log-probabilities on the
    fixed pairs never change, so they are computed once. ``DPO_EVALUATIONS`` times during the run (and at the
    end) the history records, on the first ``DPO_EVALUATION_PAIRS`` pairs, the share whose implicit
    reward margin β[(log π − log π_ref)(chosen) − (log π − log π_ref)(rejected)] is positive, the
    mean of that margin, and the policy's mean summed log-probability of the chosen and of the rejected
    replies (to see which side moved); its ``eval_seconds`` hold the training seconds, a resumed run's included.
    With ``checkpoint_path`` a re-run resumes from the checkpoint. ``dpo_micro_batch_size`` (pairs, optional) splits
    each step's pairs into micro-batches whose gradients add up (gradient accumulation), and ``gradient_checkpointing``
    (optional) recomputes each layer in the backward pass: both lower the GPU memory, and neither changes what is computed
    (up to rounding).
    """
    generator = torch.Generator().manual_seed(seed)
    size, beta, steps = settings["dpo_batch_size"], settings["dpo_beta"], settings["dpo_steps"]
    micro, accumulation = micro_batches(size, settings.get("dpo_micro_batch_size"), "dpo")
    watched = list(range(min(DPO_EVALUATION_PAIRS, len(encoded_pairs))))
    pending: list[torch.Tensor] = []  # the micro-batches of this step's pairs not yet used

    def next_batch():
        # A step's pairs are drawn at once, as without accumulation (so the same generator gives the same pairs),
        # then served `micro` pairs at a time; each pair's chosen and rejected reply stay in the same micro-batch.
        if not pending:
            pending.extend(torch.randint(len(encoded_pairs), (size,), generator=generator).split(micro))
        rows = pending.pop(0)
        features = [encoded_pairs[i]["chosen"] for i in rows] + [encoded_pairs[i]["rejected"] for i in rows]
        batch = {key: value.to(device) for key, value in collator(features).items()}
        batch["reference"] = torch.cat([reference_chosen[rows], reference_rejected[rows]]).to(device)
        return batch

    def loss_fn(model, batch):
        log_probs = response_log_probs(model, batch, score)
        reference, pairs = batch["reference"], len(batch["reference"]) // 2
        # the mean over this micro-batch's pairs; train() divides by `accumulation`: the mean over the step's pairs
        return loss(log_probs[:pairs], log_probs[pairs:], reference[:pairs], reference[pairs:], beta)

    def evaluate():
        margins, chosen_sums, rejected_sums = [], [], []
        for start in range(0, len(watched), micro):  # no larger batch than training's, so no higher peak either
            rows = watched[start:start + micro]
            batch = {key: value.to(device) for key, value in
                     collator([encoded_pairs[i]["chosen"] for i in rows] + [encoded_pairs[i]["rejected"] for i in rows]).items()}
            log_probs = response_log_probs(policy, batch, score).float().cpu()
            chosen_sums.append(log_probs[:len(rows)])
            rejected_sums.append(log_probs[len(rows):])
            chosen, rejected = log_probs[:len(rows)] - reference_chosen[rows], log_probs[len(rows):] - reference_rejected[rows]
            margins.append(beta * (chosen - rejected))
        margins = torch.cat(margins)
        return {"pair accuracy": (margins > 0).float().mean().item(), "reward margin": margins.mean().item(),
                "chosen log-prob": torch.cat(chosen_sums).mean().item(), "rejected log-prob": torch.cat(rejected_sums).mean().item()}

    checkpointing = bool(settings.get("gradient_checkpointing", False))
    if checkpointing:  # keep only each layer's input and recompute the rest during the backward pass
        policy.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    try:
        # Neither the micro-batch nor checkpointing changes what is computed, so neither is in run_settings: a checkpoint
        # written with one resumes with another.
        return train(policy, next_batch, steps=steps, learning_rate=settings["dpo_learning_rate"], device=device,
                     precision=lab_precision(settings, device), loss_fn=loss_fn, weight_decay=0.0, description="DPO", evaluate=evaluate,
                     eval_every=max(1, steps // DPO_EVALUATIONS),
                     checkpoint_path=checkpoint_path, checkpoint_every=max(1, steps // 5), resume=checkpoint_path is not None,
                     data_generator=generator, accumulation_steps=accumulation,
                     run_settings={**{key: settings[key] for key in ("dpo_steps", "dpo_batch_size", "dpo_beta",
                                                                     "dpo_learning_rate", "lora_r", "lora_alpha")},
                                   "evaluations": DPO_EVALUATIONS})  # a checkpoint of another schedule is refused
    finally:
        if checkpointing:
            policy.gradient_checkpointing_disable()


# --- generation and the held-out measurements --------------------------------------------------------------


@torch.no_grad()
def generate_replies(model, tokenizer, histories: list[list[dict]], max_new_tokens: int, batch_size: int,
                     device: torch.device, precision: Precision | None = None) -> list[tuple[str, bool]]:
    """The greedy reply to each history, and whether the model ended its turn within ``max_new_tokens``.

    Prompts are the chat template's rendering with the generation prompt, padded on the left so
    every row's next token comes right after its own prompt; similar lengths are batched together,
    ``batch_size`` prompts per ``generate`` call.
    """
    model.eval()
    stop, pad = end_of_turn_id(tokenizer), tokenizer.pad_token_id
    prompts = [tokenizer(tokenizer.apply_chat_template(h, tokenize=False, add_generation_prompt=True), add_special_tokens=False)["input_ids"]
               for h in histories]
    order = np.argsort([len(p) for p in prompts], kind="stable")
    replies: list[tuple[str, bool]] = [("", False)] * len(prompts)
    precision = precision or pick_precision(device)
    for start in tqdm(range(0, len(order), batch_size), desc="generating", leave=False):
        rows = order[start:start + batch_size]
        longest = max(len(prompts[i]) for i in rows)
        input_ids = torch.tensor([[pad] * (longest - len(prompts[i])) + prompts[i] for i in rows], device=device)
        attention = torch.tensor([[0] * (longest - len(prompts[i])) + [1] * len(prompts[i]) for i in rows], device=device)
        with autocast(device, precision):
            output = model.generate(input_ids=input_ids, attention_mask=attention, max_new_tokens=max_new_tokens, do_sample=False,
                                    eos_token_id=stop, pad_token_id=pad)
        for row, tokens in zip(rows, output[:, longest:].tolist()):
            finished = stop in tokens
            tokens = tokens[:tokens.index(stop)] if finished else tokens
            replies[row] = (tokenizer.decode(tokens, skip_special_tokens=True).strip(), finished)
    return replies


def evaluate_model(model, tokenizer, held_out: dict, settings: dict, device: torch.device) -> dict:
    """Every held-out measurement of one model.

    ``held_out`` holds ``data`` (encoded conversations), ``prompts`` ((history, real reply) for
    every assistant turn) and ``pairs`` (encoded preference pairs). Returns the assistant-token
    loss and perplexity, the task metric and its three parts over every held-out reply (and, under
    "counts", each as (successes, trials)), preference accuracy and margin, the generated replies
    and each reply's verdict. Teacher-forced scoring runs ``eval_batch_size`` sequences at a time,
    greedy generation ``generate_batch_size`` prompts per call (decoding holds one token's logits, not
    a whole conversation's, so it affords more).
    """
    collator = ChatCollator(tokenizer.pad_token_id)
    size = settings["eval_batch_size"]
    precision = lab_precision(settings, device)
    with autocast(device, precision):
        loss = assistant_token_loss(model, held_out["data"], collator, size, device)
    replies = generate_replies(model, tokenizer, [h for h, _ in held_out["prompts"]], settings["max_new_tokens"],
                               settings.get("generate_batch_size", size), device, precision)
    judged = [reply_is_right(text, finished, reference, history)
              for (text, finished), (history, reference) in zip(replies, held_out["prompts"])]
    chosen, rejected = pair_log_probs(model, held_out["pairs"], collator, size, device, precision)
    preference = preference_scores(chosen.numpy(), rejected.numpy())
    counts = judged_rates(judged)
    return {
        "assistant-token loss": loss["loss"], "perplexity": loss["perplexity"],
        "task metric": counts["right"][0] / counts["right"][1],
        "finished": counts["finished"][0] / counts["finished"][1],
        "same step": counts["same_step"][0] / counts["same_step"][1],
        "no unrequested item": counts["no_unrequested_item"][0] / counts["no_unrequested_item"][1],
        "preference accuracy": preference["accuracy"], "preference margin": preference["margin"],
        "replies": replies, "judged": judged, "counts": counts, "chosen log-probs": chosen, "rejected log-probs": rejected,
    }


# --- the whole pipeline, for the benchmark -----------------------------------------------------------------


def conversations_by_split(settings: dict, seed: int = 0) -> dict[str, list[list[dict]]]:
    """The coffee dialogs (the first ``dialogs`` of them, None = all) as checked conversations, split by dialog."""
    from llmlab.data import coffee_dialogs
    from llmlab.instruct import dialog_messages, split_by_dialog

    dialogs = coffee_dialogs()[:settings["dialogs"]] if settings["dialogs"] is not None else coffee_dialogs()
    splits = split_by_dialog(dialogs, settings["validation_fraction"], settings["test_fraction"], seed)
    return {split: [dialog_messages(dialog) for dialog in chosen] for split, chosen in splits.items()}


def prepare_base_model(settings: dict, device: torch.device, folder, training_conversations: Sequence[Sequence[dict]],
                       checkpoint_path=None, seed: int = 0):
    """(tokenizer, base model, pretraining history or None): loaded from the Hub by name, or built (its weights and
    pretraining windows drawn with ``seed``), pretrained on ``pretraining_text`` with ``training_conversations`` as
    transcripts, saved with ``save_pretrained`` to ``folder`` and read back with ``from_pretrained``."""
    if settings["base_model"] is not None:
        tokenizer, model = load_base_model(settings["base_model"], device)
        return tokenizer, model, None
    text = pretraining_text(settings["pretrain_characters"], training_conversations)
    tokenizer = train_chat_tokenizer(text, settings["vocab_size"])
    model = small_decoder(tokenizer, settings, seed)
    history = pretrain_decoder(model, tokenizer, text, settings, device, checkpoint_path, seed)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    tokenizer, model = load_causal_lm(folder, device)
    return tokenizer, model, history


def use_cpu_threads(settings: dict, device: torch.device) -> int:
    """Set torch's CPU threads to the preset's ``cpu_threads`` (when on a CPU and set); returns the threads in use."""
    if device.type == "cpu" and settings.get("cpu_threads"):
        torch.set_num_threads(settings["cpu_threads"])
    return torch.get_num_threads()


def held_out_set(tokenizer, conversations: list[list[dict]], item_counts, settings: dict, seed: int = 1) -> dict:
    """What ``evaluate_model`` measures a model on, from held-out conversations: ``data`` (encoded, too long ones
    skipped), ``skipped`` (their count), ``prompts`` (history, real reply) and ``pairs`` (encoded preference pairs,
    ``test_pairs_per_reply`` of each reply that names an ordered item)."""
    from llmlab.instruct import preference_pairs, reply_prompts, sft_dataset

    data, skipped = sft_dataset(tokenizer, conversations, settings["max_length"])
    pairs, _ = encode_pairs(tokenizer, preference_pairs(conversations, seed, item_counts, settings["test_pairs_per_reply"]),
                            settings["max_length"])
    return {"data": data, "skipped": len(skipped), "prompts": reply_prompts(conversations), "pairs": pairs}


def benchmark(preset: str, seed: int = 0) -> dict:
    """``python -m llmlab.bench sft``: base → SFT (full) → SFT (LoRA) → + DPO, measured on held-out dialogs, from scratch.

    DPO starts from whichever SFT model has the lower assistant-token loss on the validation dialogs. ``seed`` draws
    the base model's weights and pretraining windows, the SFT data order and DPO's pairs; the split of the dialogs
    and the test pairs stay the same, so runs with other seeds are measured on the same held-out set.
    """
    import copy
    import tempfile

    import pandas as pd

    from llmlab.instruct import (
        customer_item_counts, most_common_reply, preference_pairs, sft_dataset, token_kl_to_reference, wilson_interval,
    )
    from llmlab.presets import lab_settings
    from llmlab.runtime import describe_machine, pick_device, seed_everything

    settings = lab_settings("04b_instruction_tuning", preset)
    device = pick_device()
    use_cpu_threads(settings, device)  # describe_machine then names the threads in use
    seed_everything(seed)
    started = time.perf_counter()
    workspace = Path(tempfile.mkdtemp(prefix="llmlab-bench-sft-"))  # no checkpoint of an earlier run is resumed
    print(f"benchmark sft | preset {preset} | seed {seed} | {describe_machine(device)} | {lab_precision(settings, device).name}")
    conversations = conversations_by_split(settings)
    base_started = time.perf_counter()
    tokenizer, base, _ = prepare_base_model(settings, device, workspace / "base", conversations["train"],
                                            workspace / "pretraining.safetensors", seed)
    base_seconds = time.perf_counter() - base_started
    train_data, skipped = sft_dataset(tokenizer, conversations["train"], settings["max_length"])
    validation_data, _ = sft_dataset(tokenizer, conversations["validation"], settings["max_length"])
    item_counts = customer_item_counts(conversations["train"])  # what customers order, from the training dialogs only
    train_pairs, _ = encode_pairs(tokenizer, preference_pairs(conversations["train"], 0, item_counts), settings["max_length"])
    held_out = held_out_set(tokenizer, conversations["test"], item_counts, settings)
    print(f"dialogs: train {len(conversations['train'])}, validation {len(conversations['validation'])}, test "
          f"{len(conversations['test'])} ({len(held_out['prompts'])} replies, {len(held_out['pairs'])} preference pairs); "
          f"skipped as longer than {settings['max_length']} tokens: {len(skipped)} train, {held_out['skipped']} test; "
          f"{len(train_pairs)} training pairs")
    collator = ChatCollator(tokenizer.pad_token_id)
    rows, costs, evaluation_seconds = {}, {}, {}

    def measure(name, model):
        evaluation_started = time.perf_counter()
        rows[name] = evaluate_model(model, tokenizer, held_out, settings, device)
        evaluation_seconds[name] = time.perf_counter() - evaluation_started

    measure("base", base)
    built = settings["base_model"] is None  # pretrained here, every weight; a Hub model was trained elsewhere
    costs["base"] = {"trainable parameters": trainable_parameters(base) if built else 0, "training seconds": base_seconds,
                     "training state MB (computed)": training_state_megabytes(base) if built else float("nan")}

    full = copy.deepcopy(base)
    costs["SFT (full)"] = sft_train(full, train_data, collator, settings, settings["learning_rate"], device, workspace / "sft-full",
                                    seed=seed)
    measure("SFT (full)", full)

    lora = with_lora(copy.deepcopy(base), tokenizer, settings)
    costs["SFT (LoRA)"] = sft_train(lora, train_data, collator, settings, settings["lora_learning_rate"], device, workspace / "sft-lora",
                                    seed=seed)
    lora = lora.merge_and_unload()
    measure("SFT (LoRA)", lora)

    size = settings["eval_batch_size"]
    validation_loss = {name: assistant_token_loss(model, validation_data, collator, size, device)["loss"]
                       for name, model in (("SFT (full)", full), ("SFT (LoRA)", lora))}
    start_name = min(validation_loss, key=validation_loss.get)
    sft_model = {"SFT (full)": full, "SFT (LoRA)": lora}[start_name]
    reference_chosen, reference_rejected = pair_log_probs(sft_model, train_pairs, collator, size, device,
                                                          lab_precision(settings, device))
    policy = with_lora(copy.deepcopy(sft_model), tokenizer, settings)
    history = dpo_train(policy, train_pairs, reference_chosen, reference_rejected, collator, settings, device, seed=seed)
    costs["+ DPO"] = {"trainable parameters": trainable_parameters(policy), "training seconds": history.eval_seconds[-1],
                      "training state MB (computed)": training_state_megabytes(policy)}
    dpo_model = policy.merge_and_unload()
    measure("+ DPO", dpo_model)
    kl = token_kl_to_reference(dpo_model, sft_model, held_out["data"], collator, size, device)

    floor_reply = most_common_reply(conversations["train"])
    floor = judged_rates([reply_is_right(floor_reply, True, reference, history) for history, reference in held_out["prompts"]])
    columns = ["assistant-token loss", "perplexity", "task metric", "same step", "no unrequested item", "finished",
               "preference accuracy", "preference margin"]
    cost_columns = ["trainable parameters", "training seconds", "training state MB (computed)"]
    table = pd.DataFrame({name: {**{c: row[c] for c in columns}, **{c: costs[name][c] for c in cost_columns},
                                 "evaluation seconds": evaluation_seconds[name]} for name, row in rows.items()}).T
    table.loc["constant reply"] = {"task metric": floor["right"][0] / floor["right"][1],
                                   "same step": floor["same_step"][0] / floor["same_step"][1],
                                   "no unrequested item": floor["no_unrequested_item"][0] / floor["no_unrequested_item"][1],
                                   "finished": 1.0, "trainable parameters": 0}
    table["trainable parameters"] = table["trainable parameters"].astype(int)
    with pd.option_context("display.width", 250, "display.max_columns", 20, "display.float_format", "{:.3f}".format):
        print(table)
    print(f"base: {'loaded from the Hub (seconds: loading it)' if not built else 'built here (seconds: training its tokenizer and pretraining it)'}; "
          "training state = weights + gradients and AdamW moments of the trainable ones (float32, computed; activations extra)")
    print("validation assistant-token loss: " + ", ".join(f"{name} {loss:.3f}" for name, loss in validation_loss.items())
          + f" -> DPO starts from {start_name}")
    print(f"KL(DPO ‖ {start_name}) per assistant token on held-out dialogs: {kl:.4f} nats")
    print(f"constant reply: always {floor_reply!r} (the most common training reply)")
    replies = len(held_out["prompts"])
    for name, row in rows.items():
        low, high = wilson_interval(*row["counts"]["right"])
        print(f"task metric {name}: {row['task metric']:.3f} [{low:.3f}, {high:.3f}] over {replies} replies")
    low, high = wilson_interval(*floor["right"])
    print(f"task metric constant reply: {floor['right'][0] / replies:.3f} [{low:.3f}, {high:.3f}]")
    print(f"total {time.perf_counter() - started:.0f} s")
    return {"table": table, "kl": kl, "dpo_from": start_name}
