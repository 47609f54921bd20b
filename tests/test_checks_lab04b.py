"""Lab 4b's self-checks pass the reference code and name each classic mistake (04b.1 chat format, 04b.2 labels and padding,
04b.3 the DPO loss, 04b.4 the summed log-probability of a reply); hidden variants: tests/test_checks_core.py."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from llmlab import instruct
from llmlab.checks import lab04b
from llmlab.instruct import IGNORE


def expect(result, phrase: str | None) -> None:
    """``phrase`` None: the check passes; otherwise it fails with a message that contains ``phrase``."""
    assert bool(result) is (phrase is None), result
    assert phrase is None or phrase in result.message, result
    assert "\n" not in result.message


# --- 04b.1: the chat format ----------------------------------------------------------------------------------


def chat_with(turn="<|im_start|>{role}\n{content}<|im_end|>\n", cue="<|im_start|>assistant\n", cue_when=(True,), strip=False,
              roles=None):
    def format_chat(messages, add_generation_prompt=False):
        text = "".join(turn.format(role=(roles or {}).get(m["role"], m["role"]), content=m["content"].strip() if strip else m["content"])
                       for m in messages)
        return text + (cue if add_generation_prompt in cue_when else "")
    return format_chat


@pytest.mark.parametrize("format_chat, phrase", [
    pytest.param(instruct.format_chat, None, id="reference"),
    pytest.param(chat_with(), None, id="rewritten"),
    pytest.param(chat_with(cue_when=()), "must end with '<|im_start|>assistant\\n'", id="no-generation-prompt"),
    pytest.param(chat_with(cue_when=(True, False)), "belongs only where add_generation_prompt is True", id="prompt-always"),
    pytest.param(chat_with(turn="<|im_start|>{role}{content}<|im_end|>\n"), "put a newline between the role and the content",
                 id="no-newline-after-role"),
    pytest.param(chat_with(turn="<|im_start|>{role}\n{content}<|im_end|>"), "after each '<|im_end|>' comes a newline",
                 id="no-newline-after-end"),
    pytest.param(chat_with(turn="<|im_start|>{role}\n{content}\n"), "every message must end with '<|im_end|>'", id="no-end-token"),
    pytest.param(chat_with(strip=True), "do not strip its spaces", id="stripped"),
    pytest.param(chat_with(roles={"user": "customer", "assistant": "barista"}), "use each message's own role", id="renamed-roles"),
    pytest.param(lambda messages, add: [instruct.format_chat(messages, add)], "return one string, got list", id="list"),
    pytest.param(lambda messages, add: instruct.format_chat(messages, add).replace("<|im_start|>", "<|start|>"),
                 "differs from the expected format at character 2: got '<|start|>user", id="other-format"),
])
def test_format_chat_check(format_chat, phrase):
    expect(lab04b.check_format_chat(format_chat), phrase)


# --- 04b.2: labels and padding of a training batch -------------------------------------------------------------


def collate_with(labels_from, left=False, attention_all_ones=False, as_lists=False):
    """A collator whose labels are ``labels_from(input_ids, attention_mask, assistant_mask, pad_token_id)``."""
    def collate(features, pad_token_id):
        longest = max(len(f["input_ids"]) for f in features)

        def pad(values, value):
            padding = [value] * (longest - len(values))
            return padding + list(values) if left else list(values) + padding

        ids = torch.tensor([pad(f["input_ids"], pad_token_id) for f in features])
        attention = torch.tensor([pad([1] * len(f["input_ids"]), 0) for f in features])
        assistant = torch.tensor([pad(f["assistant_mask"], 0) for f in features])
        labels = labels_from(ids, attention, assistant, pad_token_id)
        if attention_all_ones:
            attention = torch.ones_like(attention)
        batch = {"input_ids": ids, "attention_mask": attention, "labels": labels}
        return {key: value.tolist() for key, value in batch.items()} if as_lists else batch
    return collate


def right_labels(ids, attention, assistant, pad):
    return torch.where(assistant.bool() & attention.bool(), ids, IGNORE)


@pytest.mark.parametrize("collate, phrase", [
    pytest.param(instruct.collate_conversations, None, id="reference"),
    pytest.param(collate_with(right_labels), None, id="rewritten"),
    pytest.param(collate_with(lambda ids, attention, assistant, pad: torch.where(attention.bool(), ids, IGNORE)),
                 "the prompt's tokens are in the labels", id="prompt-in-loss"),
    pytest.param(collate_with(lambda ids, attention, assistant, pad: torch.cat(
        [right_labels(ids, attention, assistant, pad)[:, 1:], torch.full_like(ids[:, :1], IGNORE)], 1)),
        "shifted by one position", id="shifted"),
    pytest.param(collate_with(lambda ids, attention, assistant, pad: right_labels(ids, attention, assistant, pad)[:, 1:]),
                 "one position shorter than input_ids", id="shortened"),
    pytest.param(collate_with(lambda ids, attention, assistant, pad: torch.where(attention.bool(), right_labels(ids, attention, assistant, pad), ids)),
                 "padding is not masked: the labels of padded positions must be -100 (not the pad id)", id="padding-in-loss"),
    pytest.param(collate_with(lambda ids, attention, assistant, pad: torch.where(assistant.bool() & (ids != pad), ids, IGNORE)),
                 "find padding by its position (the attention mask), not by its id", id="masked-by-pad-id"),
    pytest.param(collate_with(right_labels, left=True), "pad on the right", id="left-padding"),
    pytest.param(collate_with(right_labels, attention_all_ones=True), "the attention mask must be 1 on each conversation's tokens and 0",
                 id="attention-all-ones"),
    pytest.param(collate_with(right_labels, as_lists=True), "input_ids should be a torch.Tensor, got list", id="lists"),
    pytest.param(lambda features, pad: {"input_ids": None}, "return a dict with the keys input_ids, attention_mask and labels",
                 id="missing-keys"),
])
def test_collate_batch_check(collate, phrase):
    expect(lab04b.check_collate_batch(collate), phrase)


# --- 04b.3: the DPO loss -------------------------------------------------------------------------------------------


def dpo_with(margin_of, reduce=torch.mean, loss_of=lambda margin: -F.logsigmoid(margin)):
    def dpo_loss(policy_chosen, policy_rejected, reference_chosen, reference_rejected, beta):
        return reduce(loss_of(margin_of(policy_chosen, policy_rejected, reference_chosen, reference_rejected, beta)))
    return dpo_loss


def right_margin(pc, pr, rc, rr, beta):
    return beta * ((pc - rc) - (pr - rr))


@pytest.mark.parametrize("dpo_loss, phrase", [
    pytest.param(instruct.dpo_loss, None, id="reference"),
    pytest.param(dpo_with(right_margin, loss_of=lambda margin: F.softplus(-margin)), None, id="softplus"),
    pytest.param(dpo_with(lambda pc, pr, rc, rr, beta: -right_margin(pc, pr, rc, rr, beta)), "the margin has the wrong sign",
                 id="sign"),
    pytest.param(dpo_with(lambda pc, pr, rc, rr, beta: right_margin(pc, pr, rc, rr, 1.0)), "beta is missing", id="no-beta"),
    pytest.param(dpo_with(lambda pc, pr, rc, rr, beta: beta * (pc - pr)), "the reference model is missing", id="no-reference"),
    pytest.param(dpo_with(right_margin, reduce=torch.sum), "this is the sum over pairs", id="sum"),
    pytest.param(dpo_with(right_margin, reduce=lambda losses: losses), "return one number, the mean over the pairs", id="per-pair"),
    pytest.param(dpo_with(right_margin, loss_of=lambda margin: -torch.sigmoid(margin)), "not −σ(margin): take the log", id="no-log"),
    pytest.param(dpo_with(right_margin, loss_of=lambda margin: -torch.log(torch.sigmoid(margin))), "use F.logsigmoid(x)",
                 id="log-of-sigmoid-underflows"),
    pytest.param(lambda *args: instruct.dpo_loss(*args).item(), None, id="python-float-is-accepted"),
    pytest.param(lambda *args: instruct.dpo_loss(*args).detach(), "the loss carries no gradient", id="detached"),
])
def test_dpo_loss_check(dpo_loss, phrase):
    expect(lab04b.check_dpo_loss(dpo_loss), phrase)


# --- 04b.4: the summed log-probability of a reply ------------------------------------------------------------------


def picked(logits, targets):
    return torch.log_softmax(logits, -1).gather(-1, targets.unsqueeze(-1)).squeeze(-1)


def loop_version(logits, input_ids, assistant_mask):
    """A correct answer written another way: a Python loop over positions, F.cross_entropy per token."""
    rows = []
    for row in range(logits.shape[0]):
        total = logits.new_zeros(())
        for t in range(1, logits.shape[1]):
            if assistant_mask[row, t]:
                total = total - F.cross_entropy(logits[row, t - 1], input_ids[row, t])
        rows.append(total)
    return torch.stack(rows)


@pytest.mark.parametrize("score, phrase", [
    pytest.param(instruct.summed_log_probs, None, id="reference"),
    pytest.param(loop_version, None, id="loop"),
    pytest.param(lambda logits, ids, mask: instruct.summed_log_probs(logits.float(), ids, mask), None, id="float32"),
    pytest.param(lambda logits, ids, mask: (picked(logits, ids) * mask).sum(-1), "no shift", id="no-shift"),
    pytest.param(lambda logits, ids, mask: (picked(logits[:, :-1], ids[:, 1:]) * mask[:, :-1]).sum(-1),
                 "the mask is not shifted with the tokens", id="mask-not-shifted"),
    pytest.param(lambda logits, ids, mask: picked(logits[:, :-1], ids[:, 1:]).sum(-1), "every token is counted",
                 id="prompt-counted"),
    pytest.param(lambda logits, ids, mask: (picked(logits[:, :-1], ids[:, 1:]) * mask[:, 1:]).sum(-1) / mask[:, 1:].sum(-1),
                 "this is the mean over the reply's tokens", id="mean"),
    pytest.param(lambda logits, ids, mask: -instruct.summed_log_probs(logits, ids, mask), "the sign is flipped", id="sign"),
    pytest.param(lambda logits, ids, mask: (torch.softmax(logits[:, :-1], -1).gather(-1, ids[:, 1:, None])[..., 0]
                                            * mask[:, 1:]).sum(-1), "take log_softmax of the logits, not softmax", id="softmax"),
    pytest.param(lambda logits, ids, mask: instruct.summed_log_probs(logits, ids, mask).sum(), "one sum per row", id="batch-sum"),
    pytest.param(lambda logits, ids, mask: instruct.summed_log_probs(logits, ids, mask).detach(), "carries no gradient",
                 id="detached"),
    pytest.param(lambda logits, ids, mask: instruct.summed_log_probs(logits, ids, mask).tolist(), "should be a torch.Tensor",
                 id="list"),
])
def test_response_log_prob_check(score, phrase):
    expect(lab04b.check_response_log_prob(score), phrase)


def test_the_reference_log_prob_is_what_the_lab_trains_dpo_with():
    """summed_log_probs on a collated batch equals the sum of shifted_token_log_probs over the labelled tokens."""
    generator = torch.Generator().manual_seed(0)
    logits = torch.randn(2, 7, 11, generator=generator)
    input_ids = torch.randint(11, (2, 7), generator=generator)
    mask = torch.tensor([[0, 0, 1, 1, 1, 0, 0], [0, 0, 0, 1, 1, 1, 1]])
    labels = torch.where(mask.bool(), input_ids, torch.full_like(input_ids, IGNORE))
    token_log_probs, _ = instruct.shifted_token_log_probs(logits, labels)
    assert torch.allclose(instruct.summed_log_probs(logits, input_ids, mask), token_log_probs.sum(-1))


# --- the grader's hidden variants ----------------------------------------------------------------------------------
# A memoriser of the self-check's answers fails the hidden variants: tests/test_checks_core.py, with every lab's.
