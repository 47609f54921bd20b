"""Self-checks of Lab 4b (instruction tuning): the chat format, a training batch's labels and padding, the DPO loss, and
the summed log-probability of a reply."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from llmlab import instruct
from llmlab.checks.core import (
    Mismatch,
    expect_number,
    expect_tensor,
    grown,
    lab_shortcuts,
    seeded,
    seeded_python,
    self_check,
)

# --- 04b.1: the chat format -------------------------------------------------------------------------------

_SENTENCES = ["Can I get a large latte?", "Sure, is the order on the screen right?", "yes", "It will be ready soon.",
              "Do you have oat milk?", "We do. Anything else?", " one mocha, please ", "Okay!\nSee you at the bar.",
              "no thanks", "Please confirm your order."]


def _conversations(seed: int) -> list[list[dict]]:
    """Random conversations of alternating turns, some ending with the user (a reply is to follow), some not; the first
    one always has content with spaces around it and a line break inside, which must be kept as they are."""
    generator = seeded_python(seed)
    conversations = [[{"role": "user", "content": " one mocha, please "}, {"role": "assistant", "content": "Okay!\nSee you at the bar."}]]
    for length in grown(1, 2, 3, 4, 5):
        conversations.append([{"role": instruct.ROLES[i % 2], "content": generator.choice(_SENTENCES)} for i in range(length)])
    return conversations


@self_check("04b.1")
def check_format_chat(call) -> str:
    """fn(messages, add_generation_prompt) -> the conversation in the lab's ChatML format, as one string."""
    cases = [(messages, add) for messages in _conversations(41) for add in (False, True)]
    for messages, add in cases:
        text = call([dict(m) for m in messages], add)
        if not isinstance(text, str):
            raise Mismatch(f"return one string, got {type(text).__name__}")
        expected = instruct.format_chat(messages, add)
        if text == expected:
            continue
        without = instruct.format_chat(messages, False)
        cue = "<|im_start|>assistant\n"
        if add and text == without:
            raise Mismatch("with add_generation_prompt=True the text must end with '<|im_start|>assistant\\n': "
                           "the cue that the assistant speaks next")
        if not add and text == without + cue:
            raise Mismatch("the generation prompt '<|im_start|>assistant\\n' belongs only where add_generation_prompt is True")
        if "<|im_end|>" not in text:
            raise Mismatch("every message must end with '<|im_end|>': it is how the model learns where a turn stops")
        if text.replace("<|im_start|>user<", "<|im_start|>user\n<") == expected or \
                all(f"<|im_start|>{m['role']}{m['content']}" in text for m in messages):
            raise Mismatch("put a newline between the role and the content: '<|im_start|>user\\nCONTENT'")
        if text == expected.replace("<|im_end|>\n", "<|im_end|>"):
            raise Mismatch("after each '<|im_end|>' comes a newline, '\\n', before the next '<|im_start|>'")
        stripped = [dict(m, content=m["content"].strip()) for m in messages]
        if text == instruct.format_chat(stripped, add):
            raise Mismatch("keep each message's content exactly as it is: do not strip its spaces")
        if any(f"<|im_start|>{name}" in text for name in ("customer", "barista", "User", "Assistant", "system")):
            raise Mismatch("use each message's own role ('user' or 'assistant') after '<|im_start|>'")
        position = next((i for i, (a, b) in enumerate(zip(text, expected)) if a != b), min(len(text), len(expected)))
        raise Mismatch(f"the text differs from the expected format at character {position}: "
                       f"got {text[max(0, position - 15):position + 15]!r}, expected {expected[max(0, position - 15):position + 15]!r}")
    return f"the ChatML text is right on {len(cases) // 2} conversations, with and without the generation prompt"


# --- 04b.2: labels and padding of a training batch ------------------------------------------------------------


def _features(seed: int, pad_token_id: int) -> list[dict]:
    """Encoded conversations of different lengths: a prompt, a reply ending with the end-of-turn token (= the pad id
    here, as in many real tokenizers), sometimes a second exchange."""
    generator = seeded(seed)
    features = []
    for turns, length in zip((1, 2, 1, 2), grown(5, 9, 14, 7)):
        ids, mask = [], []
        for _ in range(turns):
            prompt = torch.randint(10, 60, (length,), generator=generator).tolist()
            reply = torch.randint(10, 60, (int(torch.randint(2, 6, (1,), generator=generator)),), generator=generator).tolist()
            ids += prompt + reply + [pad_token_id]
            mask += [0] * len(prompt) + [1] * (len(reply) + 1)
        features.append({"input_ids": ids, "attention_mask": [1] * len(ids), "assistant_mask": mask})
    return features


def _diagnose_labels(labels: torch.Tensor, batch: dict, expected: torch.Tensor, pad_token_id: int) -> None:
    attention = batch["attention_mask"]
    padding = attention == 0
    if labels.shape == (expected.shape[0], expected.shape[1] - 1):
        raise Mismatch("the labels are one position shorter than input_ids: do not shift them yourself, "
                       "a Hugging Face causal LM shifts them inside (an off-by-one)")
    if labels.shape != expected.shape:
        raise Mismatch(f"labels has shape {tuple(labels.shape)}, expected {tuple(expected.shape)} (one label per input token)")
    if torch.equal(labels, expected):
        return
    if torch.equal(labels[:, :-1], expected[:, 1:]) or torch.equal(labels[:, 1:], expected[:, :-1]):
        raise Mismatch("the labels are shifted by one position against input_ids: keep them aligned, "
                       "the model compares its prediction at t with the label at t + 1 itself (an off-by-one)")
    prompt = (expected == instruct.IGNORE) & ~padding
    if (labels[prompt] != instruct.IGNORE).any():
        raise Mismatch("the prompt's tokens are in the labels: set every token the assistant did not write to -100, "
                       "so the loss counts the replies only")
    if (labels[padding] != instruct.IGNORE).any():
        raise Mismatch("padding is not masked: the labels of padded positions must be -100"
                       + (" (not the pad id)" if (labels[padding] == pad_token_id).all() else ""))
    ends = (expected == pad_token_id) & ~padding
    if (labels[ends] == instruct.IGNORE).all():
        raise Mismatch("the end-of-turn tokens are set to -100 too: here the pad id is also the end-of-turn token, which the "
                       "model must learn to write; find padding by its position (the attention mask), not by its id")
    raise Mismatch(f"{int((labels != expected).sum())} labels differ from the assistant's tokens (with -100 elsewhere)")


@self_check("04b.2")
def check_collate_batch(call) -> str:
    """fn(features, pad_token_id) -> {"input_ids", "attention_mask", "labels"}: right-padded, labels on the replies only."""
    pad_token_id = 3
    for seed in (42, 43):
        features = _features(seed, pad_token_id)
        batch = call([{key: list(value) for key, value in feature.items()} for feature in features], pad_token_id)
        if not isinstance(batch, dict) or not {"input_ids", "attention_mask", "labels"} <= set(batch):
            raise Mismatch("return a dict with the keys input_ids, attention_mask and labels")
        expected = instruct.collate_conversations(features, pad_token_id)
        for key in ("input_ids", "attention_mask", "labels"):
            expect_tensor(batch[key], key)
        for key in ("input_ids", "attention_mask"):
            if batch[key].shape != expected[key].shape:
                raise Mismatch(f"{key} has shape {tuple(batch[key].shape)}, expected {tuple(expected[key].shape)}: "
                               "pad every row to the longest one in the batch")
        longest = expected["input_ids"].shape[1]
        left_padded = torch.tensor([[pad_token_id] * (longest - len(f["input_ids"])) + f["input_ids"] for f in features])
        if torch.equal(batch["input_ids"], left_padded):
            raise Mismatch("pad on the right (after each conversation) for training; left padding is for generation")
        if not torch.equal(batch["input_ids"], expected["input_ids"]):
            raise Mismatch("pad input_ids with pad_token_id, after each conversation's own tokens")
        if not torch.equal(batch["attention_mask"].long(), expected["attention_mask"]):
            raise Mismatch("the attention mask must be 1 on each conversation's tokens and 0 on its padding")
        _diagnose_labels(batch["labels"].long(), expected, expected["labels"], pad_token_id)
    return "right padding, attention mask and labels (replies and end-of-turn tokens only) right on 2 random batches"


# --- 04b.3: the DPO loss --------------------------------------------------------------------------------------


@self_check("04b.3")
def check_dpo_loss(call) -> str:
    """fn(policy_chosen, policy_rejected, reference_chosen, reference_rejected, beta) -> the mean DPO loss."""
    generator = seeded(43)
    for size, beta, spread in zip(grown(6, 9, 4), (0.1, 0.5, 2.0), (5.0, 20.0, 200.0)):
        policy_chosen, policy_rejected, reference_chosen, reference_rejected = (
            -spread * torch.rand(size, generator=generator, dtype=torch.float64) - 1 for _ in range(4))
        if spread >= 200:  # one pair the policy gets badly wrong: a margin of −2000 nats, where σ underflows to 0
            policy_chosen[0], policy_rejected[0] = reference_chosen[0] - 500, reference_rejected[0] + 500
        policy_chosen.requires_grad_(True)
        value = call(policy_chosen, policy_rejected, reference_chosen, reference_rejected, beta)
        if isinstance(value, torch.Tensor) and value.numel() == size and size > 1:
            raise Mismatch("return one number, the mean over the pairs, not one loss per pair")
        loss = expect_number(value, "the loss")
        if isinstance(value, torch.Tensor) and not value.requires_grad:
            raise Mismatch("the loss carries no gradient: compute it with torch operations (no .item(), no numpy) "
                           "so that training can differentiate it")

        def candidate(margin: torch.Tensor) -> float:
            return (-F.logsigmoid(margin)).mean().item()

        chosen_ratio = (policy_chosen - reference_chosen).detach()
        rejected_ratio = policy_rejected - reference_rejected
        expected = candidate(beta * (chosen_ratio - rejected_ratio))
        if math.isclose(loss, expected, rel_tol=1e-9, abs_tol=1e-12):
            continue
        if math.isinf(loss) or math.isnan(loss):
            raise Mismatch(f"got {loss} for a pair with a large margin: log(sigmoid(x)) underflows; use F.logsigmoid(x)")
        if math.isclose(loss, candidate(beta * (rejected_ratio - chosen_ratio)), rel_tol=1e-9):
            raise Mismatch("the margin has the wrong sign: it is the chosen log-ratio minus the rejected one, "
                           "so that the loss falls as the chosen reply gains probability")
        if math.isclose(loss, candidate(chosen_ratio - rejected_ratio), rel_tol=1e-9):
            raise Mismatch("beta is missing: multiply the difference of the log-ratios by beta")
        policy_only = beta * (policy_chosen.detach() - policy_rejected)
        if math.isclose(loss, candidate(policy_only), rel_tol=1e-9):
            raise Mismatch("the reference model is missing: each log-probability is taken relative to the reference, "
                           "log π(y|x) − log π_ref(y|x)")
        if math.isclose(loss, size * expected, rel_tol=1e-9):
            raise Mismatch("this is the sum over pairs: take the mean")
        margin = beta * (chosen_ratio - rejected_ratio)
        if math.isclose(loss, (-torch.sigmoid(margin)).mean().item(), rel_tol=1e-9) or \
                math.isclose(loss, (1 - torch.sigmoid(margin)).mean().item(), rel_tol=1e-9):
            raise Mismatch("the loss is −log σ(margin), not −σ(margin): take the log")
        raise Mismatch(f"the loss is {expected:.6f} on a random batch, you returned {loss:.6f}")
    at_start = call(*(torch.full((3,), -7.0, dtype=torch.float64) for _ in range(4)), 0.1)
    if not math.isclose(expect_number(at_start, "the loss"), math.log(2), rel_tol=1e-9):
        raise Mismatch(f"when the policy equals the reference the loss must be log 2 = {math.log(2):.6f}")
    return "matches −mean log σ(β·[(log π − log π_ref)(chosen) − (log π − log π_ref)(rejected)]) on 3 random batches, large margins included"


# --- 04b.4: the summed log-probability of a reply -------------------------------------------------------------


def _scored_batch(seed: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(logits, input_ids, assistant_mask) of a right-padded batch: each row a prompt (mask 0), a reply (mask 1), then
    padding (mask 0); float64 logits that are far from uniform, so that every mistake changes the sum."""
    generator = seeded(seed)
    rows, vocabulary = grown(3, 4)
    lengths = [grown(9)[0] + 3 * row for row in range(rows)]
    longest = max(lengths) + 2
    logits = 3 * torch.randn(rows, longest, vocabulary + 5, generator=generator, dtype=torch.float64)
    input_ids = torch.randint(vocabulary + 5, (rows, longest), generator=generator)
    assistant_mask = torch.zeros(rows, longest, dtype=torch.long)
    for row, length in enumerate(lengths):
        prompt = 3 + int(torch.randint(3, (1,), generator=generator))
        assistant_mask[row, prompt:length] = 1
    return logits, input_ids, assistant_mask


def _picked(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    return torch.log_softmax(logits, -1).gather(-1, targets.unsqueeze(-1)).squeeze(-1)


@self_check("04b.4")
def check_response_log_prob(call) -> str:
    """fn(logits, input_ids, assistant_mask) -> log π(reply | prompt) of each row, shape (batch,)."""
    for seed in (44, 45):
        logits, input_ids, assistant_mask = _scored_batch(seed)
        logits.requires_grad_(True)
        value = call(logits, input_ids.clone(), assistant_mask.clone())
        rows = logits.shape[0]
        value = expect_tensor(value, "the result")
        if value.numel() == 1 and rows > 1:
            raise Mismatch("return one sum per row (shape (batch,)), not one number for the whole batch: DPO compares "
                           "each pair's own chosen and rejected reply")
        if value.shape != (rows,):
            raise Mismatch(f"the result has shape {tuple(value.shape)}, expected ({rows},): one summed log-probability per row")
        if not value.requires_grad:
            raise Mismatch("the result carries no gradient: compute it with torch operations (no .item(), no numpy), "
                           "DPO differentiates it")
        got = value.detach().double()
        expected = instruct.summed_log_probs(logits.detach(), input_ids, assistant_mask)
        tolerance = 1e-9 if value.dtype == torch.float64 else 1e-4

        def same(candidate: torch.Tensor) -> bool:
            return torch.allclose(got, candidate, atol=tolerance, rtol=tolerance)

        if same(expected):
            continue
        shifted, targets, mask = logits.detach()[:, :-1], input_ids[:, 1:], assistant_mask[:, 1:].double()
        unshifted = _picked(logits.detach(), input_ids)
        if same((unshifted * assistant_mask).sum(-1)):
            raise Mismatch("no shift: the logits at position t predict the token at t + 1, so score input_ids[:, 1:] "
                           "with logits[:, :-1] (scoring token t with the logits at t lets the model see the answer)")
        if same(-expected) or same((-_picked(shifted, targets) * mask).sum(-1)):
            raise Mismatch("the sign is flipped: return the log-probability (a negative number), not the loss")
        if same((_picked(shifted, targets) * assistant_mask[:, :-1]).sum(-1)):
            raise Mismatch("the mask is not shifted with the tokens: the token at t + 1 counts where assistant_mask[:, t + 1] "
                           "is 1, so use assistant_mask[:, 1:] (with assistant_mask[:, :-1] the reply's first token is "
                           "left out and the token after its end is counted)")
        if same(_picked(shifted, targets).sum(-1)) or same(unshifted.sum(-1)):
            raise Mismatch("every token is counted: multiply by the assistant mask so that only the reply's tokens count, "
                           "not the prompt's (nor the padding)")
        if same((_picked(shifted, targets) * mask).sum(-1) / mask.sum(-1)):
            raise Mismatch("this is the mean over the reply's tokens: DPO uses the sum, log π(y|x) of the whole reply")
        if same((torch.softmax(shifted, -1).gather(-1, targets.unsqueeze(-1)).squeeze(-1) * mask).sum(-1)):
            raise Mismatch("these are probabilities: take log_softmax of the logits, not softmax")
        if same((shifted.gather(-1, targets.unsqueeze(-1)).squeeze(-1) * mask).sum(-1)):
            raise Mismatch("these are raw logits: turn them into log-probabilities with log_softmax over the vocabulary first")
        worst = int((got - expected).abs().argmax())
        raise Mismatch(f"row {worst}: expected {expected[worst].item():.6f}, got {got[worst].item():.6f}")
    return "summed log-probabilities of the replies right on 2 random batches: shifted by one, reply tokens only"


# The exercises of this lab, id -> (title, points): what solutions/04b_instruction_tuning.ipynb's metadata declares
# (tests/test_architecture.py keeps the two equal); checks.summary() reads them.
EXERCISES = {"04b.1": ("format a conversation with a chat template", 1),
             "04b.2": ("label masking and padding in a collator", 2), "04b.3": ("the DPO loss", 2),
             "04b.4": ("the summed log-probability of a reply", 2)}

CHECKS = {"04b.1": check_format_chat, "04b.2": check_collate_batch, "04b.3": check_dpo_loss,
          "04b.4": check_response_log_prob}

# What use_reference("04b.k") puts in the notebook: the name its exercise defines, and the course's implementation.
REFERENCES = {"04b.1": ("format_chat", instruct.format_chat), "04b.2": ("collate_batch", instruct.collate_conversations),
              "04b.3": ("dpo_loss", instruct.dpo_loss), "04b.4": ("response_log_prob", instruct.summed_log_probs)}

# checks.use_reference("04b.k") when stuck, checks.summary() at the end of the lab
use_reference, summary = lab_shortcuts("04b")
