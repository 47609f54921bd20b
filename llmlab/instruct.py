"""Instruction tuning a generative model on coffee-shop dialogs (Lab 4b): the data side and the measurements.

From dialogs to training batches, the standard way:

    conversation → chat template (a string) → tokens with offsets → which tokens the assistant wrote
    → labels = token ids on the assistant's tokens, -100 elsewhere → a collator that pads a batch

and from preferences to a loss: ``preference_pairs`` (the real barista reply against the same
reply with the customer's drink, size, milk or flavour swapped for another) and ``dpo_loss``
(Rafailov et al., 2023; Chapter 4, eq-dpo). The measurements on held-out dialogs are here too:
assistant-token loss, the task metric ``reply_is_right`` (fixed before any training), preference
accuracy and the KL divergence to a reference model. The models and their training live in
``llmlab.instruct_training``.

Bad input is a one-line ``ValueError``: a conversation whose roles do not alternate, an empty
message, or one longer than the model's context (``ConversationTooLong``; ``sft_dataset`` counts
and reports those it skips instead, and never truncates labels).
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

IGNORE = -100  # the label PyTorch's cross-entropy (and every Hugging Face model) leaves out of the loss
ROLES = ("user", "assistant")

# The course's chat format for the model the lab builds itself: ChatML, the format of the Qwen models
# the gpu preset uses, without Qwen's default system message. A Jinja program, run by apply_chat_template.
CHAT_TEMPLATE = (
    "{%- for message in messages -%}"
    "{{- '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n' -}}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{- '<|im_start|>assistant\\n' -}}{%- endif -%}"
)
SPECIAL_TOKENS = ("<|endoftext|>", "<|im_start|>", "<|im_end|>")


def format_chat(messages: Sequence[dict], add_generation_prompt: bool = False) -> str:
    """What ``CHAT_TEMPLATE`` renders, written in Python: each message as
    ``<|im_start|>ROLE\\nCONTENT<|im_end|>\\n``, then ``<|im_start|>assistant\\n`` if a reply is to follow."""
    text = "".join(f"<|im_start|>{message['role']}\n{message['content']}<|im_end|>\n" for message in messages)
    return text + ("<|im_start|>assistant\n" if add_generation_prompt else "")


# --- conversations: checked, split by dialog ---------------------------------------------------------------


def check_conversation(messages: Sequence[dict], name: str = "conversation") -> list[dict]:
    """``messages`` as a list if it is a conversation the lab can train on, else a one-line ValueError naming the problem.

    It starts with the user, alternates user and assistant, has no empty message and at least one reply.
    """
    if not messages:
        raise ValueError(f"{name} has no messages")
    for position, message in enumerate(messages, start=1):
        role, content = message.get("role"), message.get("content")
        if role not in ROLES:
            raise ValueError(f"{name}: message {position} has role {role!r}; expected one of {', '.join(ROLES)}")
        expected = ROLES[(position - 1) % 2]
        if role != expected:
            raise ValueError(f"{name}: message {position} is from the {role} but should be from the {expected}: "
                             "roles must alternate, starting with the user")
        if not isinstance(content, str) or not content.strip():
            raise ValueError(f"{name}: message {position} ({role}) is empty")
    if len(messages) < 2:
        raise ValueError(f"{name} has no assistant reply to learn from")
    return list(messages)


def dialog_messages(dialog: dict) -> list[dict]:
    """A Taskmaster dialog (``turns`` of ``speaker`` and ``text``) as chat messages, checked."""
    messages = [{"role": turn["speaker"], "content": turn["text"]} for turn in dialog["turns"]]
    return check_conversation(messages, f"dialog {dialog.get('conversation_id', '?')}")


def split_by_dialog(dialogs: Sequence[dict], validation_fraction: float, test_fraction: float,
                    seed: int = 0) -> dict[str, list[dict]]:
    """{"train", "validation", "test"}: whole dialogs, shuffled with ``seed``, so no turn of a test dialog is trained on.

    Splitting turns instead would put the reply to "one latte please" in training and its
    confirmation in the test set: the test would measure memory of the same conversation.
    """
    if not 0 < validation_fraction + test_fraction < 1 or min(validation_fraction, test_fraction) < 0:
        raise ValueError(f"fractions must be ≥ 0 and leave some training dialogs; got validation {validation_fraction}, "
                         f"test {test_fraction}")
    identifiers = [dialog["conversation_id"] for dialog in dialogs]
    if len(set(identifiers)) != len(identifiers):
        twice = next(i for i in identifiers if identifiers.count(i) > 1)
        raise ValueError(f"dialog id {twice!r} appears more than once: a split by dialog needs unique ids")
    order = np.random.default_rng(seed).permutation(len(dialogs))
    n_test, n_validation = round(len(dialogs) * test_fraction), round(len(dialogs) * validation_fraction)
    chosen = {"test": order[:n_test], "validation": order[n_test:n_test + n_validation], "train": order[n_test + n_validation:]}
    return {split: [dialogs[i] for i in sorted(indices)] for split, indices in chosen.items()}


# --- tokens, and which of them the assistant wrote ---------------------------------------------------------


class ConversationTooLong(ValueError):
    """A conversation has more tokens than the model's context; cutting it would drop replies from the labels."""


def assistant_spans(tokenizer, messages: Sequence[dict], last_only: bool = False) -> tuple[str, list[tuple[int, int]]]:
    """(the rendered conversation, the character spans of the assistant's replies in it).

    A reply's span runs from the end of the prompt that asks for it (the history rendered with
    ``add_generation_prompt=True``) to the end of its own turn, end-of-turn marker included
    (the model must learn to stop) and trailing whitespace excluded. Works for any chat template
    that renders a conversation's beginning as a prefix of the whole.
    """
    text = tokenizer.apply_chat_template(list(messages), tokenize=False)
    spans = []
    for index, message in enumerate(messages):
        if message["role"] != "assistant" or (last_only and index != len(messages) - 1):
            continue
        prompt = tokenizer.apply_chat_template(list(messages[:index]), tokenize=False, add_generation_prompt=True)
        through_reply = tokenizer.apply_chat_template(list(messages[:index + 1]), tokenize=False).rstrip()
        if not (text.startswith(prompt) and text.startswith(through_reply) and len(prompt) < len(through_reply)):
            raise ValueError("this chat template does not render a conversation's beginning as a prefix of the whole; "
                             "the assistant's tokens cannot be found by rendering prefixes")
        spans.append((len(prompt), len(through_reply)))
    return text, spans


def encode_conversation(tokenizer, messages: Sequence[dict], max_length: int, last_only: bool = False,
                        name: str = "conversation") -> dict[str, list[int]]:
    """``input_ids``, ``attention_mask`` and ``assistant_mask`` (1 on the tokens of the assistant's replies) of one conversation.

    ``last_only`` marks only the final reply (a preference pair's response). The text is
    tokenised without adding special tokens: the chat template already wrote every one it
    needs, and a tokenizer that adds a beginning-of-text token would add a second one.
    """
    text, spans = assistant_spans(tokenizer, messages, last_only)
    encoding = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    ids = encoding["input_ids"]
    if len(ids) > max_length:
        raise ConversationTooLong(f"{name} has {len(ids)} tokens, more than the context of {max_length}: "
                                  "skip it or raise max_length (cutting it would drop replies from the labels)")
    mask = [int(any(start <= token_start < end for start, end in spans)) for token_start, _ in encoding["offset_mapping"]]
    return {"input_ids": ids, "attention_mask": [1] * len(ids), "assistant_mask": mask}


def mask_labels(input_ids: torch.Tensor, attention_mask: torch.Tensor, assistant_mask: torch.Tensor) -> torch.Tensor:
    """Labels for a causal LM: the token ids where the assistant wrote them, -100 on the prompt and on padding.

    Not shifted: a Hugging Face causal LM compares the logits at position t with the label at
    t + 1 itself. Padding is found through the attention mask, never through the pad id, which
    is often also the end-of-text token that the model must learn to write.
    """
    keep = assistant_mask.bool() & attention_mask.bool()
    return torch.where(keep, input_ids, torch.full_like(input_ids, IGNORE))


def collate_conversations(features: Sequence[dict], pad_token_id: int) -> dict[str, torch.Tensor]:
    """One training batch from encoded conversations (lists ``input_ids`` and ``assistant_mask``), padded on the right.

    input_ids are padded with ``pad_token_id`` and the attention mask with 0; the labels are
    ``mask_labels`` of the padded batch: the assistant's tokens, -100 on the prompt and on padding.
    """
    if not features:
        raise ValueError("the batch is empty")
    longest = max(len(feature["input_ids"]) for feature in features)

    def padded(key: str, value: int) -> torch.Tensor:
        return torch.tensor([list(f[key]) + [value] * (longest - len(f[key])) for f in features], dtype=torch.long)

    input_ids = padded("input_ids", pad_token_id)
    attention_mask = torch.tensor([[1] * len(f["input_ids"]) + [0] * (longest - len(f["input_ids"])) for f in features])
    return {"input_ids": input_ids, "attention_mask": attention_mask,
            "labels": mask_labels(input_ids, attention_mask, padded("assistant_mask", 0))}


@dataclass
class ChatCollator:
    """The ``data_collator`` a Trainer calls on each list of examples: ``collate_fn(features, pad_token_id)``.

    Right padding is for training; generation pads on the left, so that each row's next token
    comes right after its own prompt.
    """

    pad_token_id: int
    collate_fn: object = collate_conversations

    def __call__(self, features: list[dict]) -> dict[str, torch.Tensor]:
        return self.collate_fn(features, self.pad_token_id)


def sft_dataset(tokenizer, conversations: Sequence[list[dict]], max_length: int, names: Sequence[str] | None = None):
    """A ``datasets.Dataset`` of encoded conversations (``datasets.map``), and the names of those skipped as too long.

    A conversation longer than ``max_length`` tokens is dropped whole and counted, never cut.
    """
    from datasets import Dataset

    names = list(names) if names is not None else [f"conversation {i}" for i in range(len(conversations))]
    raw = Dataset.from_dict({"name": names, "messages": [list(c) for c in conversations]})

    def encode(example):
        try:
            encoded = encode_conversation(tokenizer, example["messages"], max_length, name=example["name"])
            return {**encoded, "fits": True}
        except ConversationTooLong:
            return {"input_ids": [], "attention_mask": [], "assistant_mask": [], "fits": False}

    encoded = raw.map(encode, remove_columns=["messages"], desc="tokenising")
    skipped = [name for name, fits in zip(encoded["name"], encoded["fits"]) if not fits]
    kept = encoded.filter(lambda example: example["fits"]).remove_columns(["fits", "name"])
    return kept, skipped


# --- the task metric, fixed before training -----------------------------------------------------------------

# What a customer orders, by kind. Longer names first, so "chai latte" is found before "latte".
MENU = {
    "drink": ["hot chocolate", "chai latte", "matcha latte", "flat white", "cold brew", "iced coffee", "drip coffee",
              "green tea", "black tea", "cappuccino", "americano", "macchiato", "frappuccino", "espresso", "cortado",
              "steamer", "latte", "mocha", "tea"],
    "size": ["extra large", "small", "medium", "large", "tall", "grande", "venti"],
    "milk": ["oat milk", "almond milk", "soy milk", "whole milk", "skim milk", "coconut milk", "nonfat milk"],
    "flavour": ["pumpkin spice", "vanilla", "caramel", "hazelnut", "chocolate", "cinnamon", "honey"],
}
_ITEM = {kind: [re.compile(rf"\b{re.escape(name)}(?:e?s)?\b", re.IGNORECASE) for name in names] for kind, names in MENU.items()}

# What a barista's reply does, by its words; the first rule that matches decides.
ACTS = (
    ("decline", re.compile(r"\b(sorry|unfortunately|apologi[sz]e|(?:do not|don't|doesn't|does not|can't|cannot) "
                           r"(?:have|carry|sell|offer|find|help)|not on (?:the|our) menu)", re.IGNORECASE)),
    ("confirm", re.compile(r"\b(confirm\w*|correct\w*|right|look\w*|screen|review\w*|accura\w*|check\w*|verify)\b", re.IGNORECASE)),
    ("ready", re.compile(r"\b(ready|bar|pick\w* (?:it )?up|minutes?|moments?|momentarily|shortly|soon|sent|send\w*|made|"
                         r"on its way|coming)\b", re.IGNORECASE)),
)


def menu_items(text: str) -> list[tuple[str, str, int, int]]:
    """(kind, name, start, end) of every menu item named in ``text``, in order; a longer name hides the shorter inside it."""
    found, taken = [], np.zeros(len(text), dtype=bool)
    for kind, patterns in _ITEM.items():
        for name, pattern in zip(MENU[kind], patterns):
            for match in pattern.finditer(text):
                if not taken[match.start():match.end()].any():
                    taken[match.start():match.end()] = True
                    found.append((kind, name, match.start(), match.end()))
    return sorted(found, key=lambda item: item[2])


def reply_act(text: str) -> str:
    """"decline" (not on the menu, sorry), "confirm" (check the order), "ready" (it is on its way) or "other"."""
    return next((act for act, pattern in ACTS if pattern.search(text)), "other")


def reply_is_right(generated: str, finished: bool, reference: str, history: Sequence[dict]) -> dict[str, bool]:
    """The lab's task metric for one generated reply, defined before any training.

    A reply is right when (1) it is *finished*: the model ended its turn within the token budget;
    (2) it takes the *same next step* as the real barista's reply (``reply_act``: ask to confirm,
    say the order is coming, decline, or other); and (3) it names *no menu item* (drink, size, milk,
    flavour) that neither the customer asked for earlier in the conversation nor the real reply named.
    """
    customer_items = {name for message in history if message["role"] == "user" for _, name, _, _ in menu_items(message["content"])}
    allowed = customer_items | {name for _, name, _, _ in menu_items(reference)}
    same_step = reply_act(generated) == reply_act(reference)
    no_unrequested_item = all(name in allowed for _, name, _, _ in menu_items(generated))
    return {"finished": finished, "same_step": same_step, "no_unrequested_item": no_unrequested_item,
            "right": finished and same_step and no_unrequested_item}


def reply_prompts(conversations: Sequence[list[dict]]) -> list[tuple[list[dict], str]]:
    """(history, real reply) for every assistant turn of every conversation: what the task metric is computed on."""
    return [(list(messages[:i]), message["content"]) for messages in conversations
            for i, message in enumerate(messages) if message["role"] == "assistant"]


# --- preference pairs ---------------------------------------------------------------------------------------


def customer_item_counts(conversations: Sequence[list[dict]]) -> dict[str, Counter]:
    """How often customers name each menu item, by kind, in ``conversations``."""
    counts = {kind: Counter() for kind in MENU}
    for messages in conversations:
        for message in messages:
            if message["role"] == "user":
                for kind, name, _, _ in menu_items(message["content"]):
                    counts[kind][name] += 1
    return counts


def swap_item(reply: str, history: Sequence[dict], generator: np.random.Generator,
              item_counts: dict[str, Counter], avoid: Sequence[str] = ()) -> tuple[str, tuple[str, str, str]] | None:
    """The reply with the first menu item the customer asked for replaced by another of its kind, or None if it names none.

    The replacement is drawn with ``generator`` among the items of the same kind that neither the
    customer nor the reply names, with probability proportional to how often customers order
    each (``item_counts``): the rejected reply then names items as common as the chosen one does,
    so a model that ignores what the customer said prefers neither. It takes the original's
    capitalisation and plural ending; no replacement in ``avoid`` is drawn (None when none is left).
    Returns (rejected reply, (kind, original, replacement)).
    """
    asked = {name for message in history if message["role"] == "user" for _, name, _, _ in menu_items(message["content"])}
    named = menu_items(reply)
    target = next((item for item in named if item[1] in asked), None)
    if target is None:
        return None
    kind, original, _, _ = target
    candidates = [name for name in MENU[kind] if name not in asked and name not in {n for _, n, _, _ in named}
                  and original not in name and name not in original and item_counts[kind][name] > 0 and name not in avoid]
    if not candidates:
        return None
    weights = np.array([item_counts[kind][name] for name in candidates], dtype=float)
    replacement = candidates[int(generator.choice(len(candidates), p=weights / weights.sum()))]

    def substitute(match: re.Match) -> str:
        word = match.group(0)
        new = replacement[0].upper() + replacement[1:] if word[0].isupper() else replacement
        return new + word[len(original):]  # keep a plural ending

    rejected = _ITEM[kind][MENU[kind].index(original)].sub(substitute, reply)
    return rejected, (kind, original, replacement)


def preference_pairs(conversations: Sequence[list[dict]], seed: int = 0, item_counts: dict[str, Counter] | None = None,
                     per_reply: int = 1) -> list[dict]:
    """Preference pairs from real dialogs: for every assistant reply that names a menu item the customer asked for,
    chosen = the real reply, rejected = the same reply with that item swapped for another (``swap_item``).

    The two replies differ only in whether the barista listened; the preference is the customer's
    own order, not anyone's taste. ``item_counts`` (default: counted in ``conversations``) sets
    how often each replacement is drawn. ``per_reply`` > 1 makes up to that many pairs of each such
    reply, each with another replacement: more pairs to measure on, but pairs of one reply share its
    prompt and chosen side, so they are not independent (``reply`` numbers the replies, to group them).
    Each pair: ``prompt`` (the messages before the reply), ``chosen``, ``rejected``, ``swap``
    (kind, original, replacement) and ``reply``.
    """
    if per_reply < 1:
        raise ValueError(f"per_reply must be at least 1, got {per_reply}")
    generator = np.random.default_rng(seed)
    item_counts = item_counts if item_counts is not None else customer_item_counts(conversations)
    pairs, replies = [], 0
    for messages in conversations:
        for index, message in enumerate(messages):
            if message["role"] != "assistant":
                continue
            used: list[str] = []
            for _ in range(per_reply):
                swapped = swap_item(message["content"], messages[:index], generator, item_counts, avoid=used)
                if swapped is None:
                    break
                used.append(swapped[1][2])
                pairs.append({"prompt": list(messages[:index]), "chosen": message["content"], "rejected": swapped[0],
                              "swap": swapped[1], "reply": replies})
            replies += bool(used)
    return pairs


# --- losses and measurements --------------------------------------------------------------------------------


def dpo_loss(policy_chosen: torch.Tensor, policy_rejected: torch.Tensor, reference_chosen: torch.Tensor,
             reference_rejected: torch.Tensor, beta: float) -> torch.Tensor:
    """Mean over pairs of -log σ(β·[(log π(y_w|x) − log π_ref(y_w|x)) − (log π(y_l|x) − log π_ref(y_l|x))]) (Chapter 4, eq-dpo).

    Each argument holds one summed log-probability of a whole response per pair.
    """
    margin = beta * ((policy_chosen - reference_chosen) - (policy_rejected - reference_rejected))
    return -F.logsigmoid(margin).mean()


def shifted_token_log_probs(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(log p of each label token given the tokens before it, 1 where a label counts); both (batch, n - 1).

    The logits at position t predict the token at t + 1, so they are paired with labels[:, 1:].
    """
    targets, counted = labels[:, 1:], labels[:, 1:] != IGNORE
    log_probs = torch.log_softmax(logits[:, :-1].float(), dim=-1)
    picked = log_probs.gather(-1, targets.clamp(min=0).unsqueeze(-1)).squeeze(-1)
    return picked * counted, counted


def summed_log_probs(logits: torch.Tensor, input_ids: torch.Tensor, assistant_mask: torch.Tensor) -> torch.Tensor:
    """log π(reply | prompt) of each row: the sum, over the tokens marked in ``assistant_mask``, of the log-probability
    the model gave that token from the tokens before it; shape (batch,).

    The one-position shift: the logits at position t predict the token at t + 1, so token t + 1 is
    scored by ``log_softmax(logits[:, t])`` and counted where ``assistant_mask[:, t + 1]`` is 1 (the
    mask moves with the token it marks). Low-precision logits are scored in float32.
    """
    scored = logits[:, :-1]
    scored = scored.float() if scored.dtype in (torch.float16, torch.bfloat16) else scored
    picked = torch.log_softmax(scored, dim=-1).gather(-1, input_ids[:, 1:].unsqueeze(-1)).squeeze(-1)
    return (picked * assistant_mask[:, 1:].to(picked.dtype)).sum(-1)


def response_log_probs(model, batch: dict[str, torch.Tensor], score=summed_log_probs) -> torch.Tensor:
    """Summed log-probability of each row's labelled tokens (a whole response) under ``model``: shape (batch,).

    ``score(logits, input_ids, assistant_mask)`` does the summing (``summed_log_probs``, or a learner's
    exercise 04b.4); the labelled tokens are those whose label is not -100.
    """
    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    return score(logits, batch["input_ids"], (batch["labels"] != IGNORE).long())


def batches(dataset, collator, batch_size: int, device: torch.device):
    """The rows of ``dataset`` in order, ``batch_size`` at a time, collated and moved to ``device``."""
    for start in range(0, len(dataset), batch_size):
        rows = [dataset[i] for i in range(start, min(start + batch_size, len(dataset)))]
        yield {key: value.to(device) for key, value in collator(rows).items()}


@torch.no_grad()
def assistant_token_loss(model, dataset, collator, batch_size: int, device: torch.device) -> dict[str, float]:
    """Mean cross-entropy (nats) over every assistant token of ``dataset``, its perplexity, and the token count."""
    model.eval()
    total, count = 0.0, 0
    for batch in batches(dataset, collator, batch_size, device):
        picked, counted = shifted_token_log_probs(model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits,
                                                  batch["labels"])
        total, count = total - picked.sum().item(), count + int(counted.sum())
    if count == 0:
        raise ValueError("no assistant tokens to score: the dataset is empty or every label is -100")
    return {"loss": total / count, "perplexity": float(np.exp(total / count)), "tokens": count}


@torch.no_grad()
def token_kl_to_reference(model, reference, dataset, collator, batch_size: int, device: torch.device) -> float:
    """Mean over assistant tokens of KL(π_model ‖ π_reference) of the next-token distributions, in nats.

    Teacher-forced on the real conversations of ``dataset``: at each position of an assistant
    reply both models see the same history, and the KL is summed exactly over the vocabulary.
    """
    model.eval()
    reference.eval()
    total, count = 0.0, 0
    for batch in batches(dataset, collator, batch_size, device):
        inputs = {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"]}
        log_p = torch.log_softmax(model(**inputs).logits[:, :-1].float(), -1)
        log_q = torch.log_softmax(reference(**inputs).logits[:, :-1].float(), -1)
        counted = batch["labels"][:, 1:] != IGNORE
        kl = (log_p.exp() * (log_p - log_q)).sum(-1)
        total, count = total + kl[counted].sum().item(), count + int(counted.sum())
    return total / count


def preference_scores(chosen_log_probs, rejected_log_probs) -> dict[str, float]:
    """Share of pairs whose chosen reply is more likely than the rejected one, and the mean margin in nats."""
    margin = np.asarray(chosen_log_probs, dtype=float) - np.asarray(rejected_log_probs, dtype=float)
    if margin.size == 0:
        raise ValueError("no preference pairs to score")
    return {"accuracy": float((margin > 0).mean()), "margin": float(margin.mean()), "pairs": int(margin.size)}


def wilson_interval(successes: int, trials: int, z: float = 1.96) -> tuple[float, float]:
    """The 95 % Wilson score interval of a proportion: how far a rate measured on few examples can be trusted."""
    if trials <= 0:
        raise ValueError(f"trials must be positive, got {trials}")
    p = successes / trials
    centre = (p + z * z / (2 * trials)) / (1 + z * z / trials)
    half = z * np.sqrt(p * (1 - p) / trials + z * z / (4 * trials * trials)) / (1 + z * z / trials)
    return float(centre - half), float(centre + half)


def most_common_reply(conversations: Sequence[list[dict]]) -> str:
    """The barista reply that occurs most often in ``conversations`` (ties: the first met): the constant-reply floor."""
    counts = Counter(reply for _, reply in reply_prompts(conversations))
    if not counts:
        raise ValueError("no assistant replies in these conversations")
    return counts.most_common(1)[0][0]


def judged_rates(judged: Sequence[dict[str, bool]]) -> dict[str, tuple[int, int]]:
    """(successes, trials) of each part of ``reply_is_right`` ("finished", "same_step", "no_unrequested_item") and of
    "right", over the judged replies: what a table with Wilson intervals needs."""
    if not judged:
        raise ValueError("no judged replies")
    return {part: (sum(bool(j[part]) for j in judged), len(judged))
            for part in ("right", "finished", "same_step", "no_unrequested_item")}


def grouped_bootstrap_difference(before: Sequence[bool], after: Sequence[bool], groups: Sequence[int],
                                 resamples: int = 2000, seed: int = 0) -> tuple[float, float, float]:
    """(change, low, high): the change of a rate from ``before`` to ``after``, measured on the same items, and its 95 %
    bootstrap interval when whole groups (items that share a reply, say) are resampled together.

    Wilson intervals treat items as independent; items of one group are not, and resampling the
    groups keeps that dependence, so this interval is the honest one for several pairs per reply.
    """
    before, after, groups = np.asarray(before, float), np.asarray(after, float), np.asarray(groups)
    if not (len(before) == len(after) == len(groups)) or len(before) == 0:
        raise ValueError(f"before, after and groups must be equally long and not empty; got {len(before)}, {len(after)}, "
                         f"{len(groups)}")
    names, index = np.unique(groups, return_inverse=True)
    change_by_group = np.bincount(index, weights=after - before, minlength=len(names))
    size_by_group = np.bincount(index, minlength=len(names)).astype(float)
    draws = np.random.default_rng(seed).integers(len(names), size=(resamples, len(names)))
    changes = change_by_group[draws].sum(1) / size_by_group[draws].sum(1)
    low, high = np.percentile(changes, [2.5, 97.5])
    return float((after - before).mean()), float(low), float(high)
