"""Lab 4b's instruction tuning: chat format, which tokens are in the loss, the collator, bad input, the split by dialog,
preference pairs, the DPO loss against a hand computation, the Hugging Face save/load round trip, LoRA, and the training
functions at toy size. Nothing is downloaded: the tokenizer and the decoder are built here."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from llmlab import instruct
from llmlab.data import coffee_dialogs
from llmlab.instruct import IGNORE
from llmlab.instruct_training import (
    chat_token_ids, end_of_turn_id, generate_replies, load_causal_lm, small_decoder, train_chat_tokenizer, trainable_parameters,
    with_lora,
)

SETTINGS = dict(d_model=32, d_ff=64, n_layers=1, n_heads=2, max_length=128, lora_r=4, lora_alpha=8, lora_dropout=0.0)
ORDER = [{"role": "user", "content": "one large latte please"},
         {"role": "assistant", "content": "Okay, is the order on the screen right?"},
         {"role": "user", "content": "yes"},
         {"role": "assistant", "content": "It will be ready at the bar soon."}]


@pytest.fixture(scope="module")
def dialogs():
    return coffee_dialogs()


@pytest.fixture(scope="module")
def tokenizer(dialogs):
    text = "\n".join(turn["text"] for dialog in dialogs[:200] for turn in dialog["turns"])
    return train_chat_tokenizer(text, 320)


@pytest.fixture(scope="module")
def model(tokenizer):
    return small_decoder(tokenizer, SETTINGS, seed=0).eval()


def marked_text(tokenizer, encoded) -> str:
    """The text of the tokens that the assistant mask marks, in order."""
    return tokenizer.decode([i for i, flag in zip(encoded["input_ids"], encoded["assistant_mask"]) if flag])


# --- the chat format -----------------------------------------------------------------------------------------


def test_format_chat_is_what_the_tokenizer_s_chat_template_renders(tokenizer):
    for messages in (ORDER, ORDER[:1], ORDER[:3]):
        for add in (False, True):
            assert tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=add) == \
                instruct.format_chat(messages, add)
    assert instruct.format_chat(ORDER[:2]) == ("<|im_start|>user\none large latte please<|im_end|>\n"
                                               "<|im_start|>assistant\nOkay, is the order on the screen right?<|im_end|>\n")
    assert instruct.format_chat(ORDER[:1], add_generation_prompt=True).endswith("<|im_end|>\n<|im_start|>assistant\n")


def test_chat_tokens_are_single_special_tokens(tokenizer):
    ids = tokenizer("<|im_start|>user\nhi<|im_end|>\n", add_special_tokens=False)["input_ids"]
    start, end = tokenizer.convert_tokens_to_ids(["<|im_start|>", "<|im_end|>"])
    assert ids[0] == start and end in ids
    assert chat_token_ids(tokenizer) == sorted([start, end]), "both chat tokens, <|im_start|> included, are trainable under LoRA"
    assert end_of_turn_id(tokenizer) == end == tokenizer.eos_token_id
    assert tokenizer.pad_token_id not in (start, end)


# --- which tokens the assistant wrote ------------------------------------------------------------------------


def test_assistant_mask_covers_each_reply_and_its_end_of_turn_only(tokenizer):
    encoded = instruct.encode_conversation(tokenizer, ORDER, max_length=200)
    assert len(encoded["input_ids"]) == len(encoded["assistant_mask"]) == len(encoded["attention_mask"])
    assert marked_text(tokenizer, encoded) == "Okay, is the order on the screen right?<|im_end|>It will be ready at the bar soon.<|im_end|>"
    # the cue "<|im_start|>assistant\n" is prompt: the model is told who speaks, it does not learn to say it
    first = encoded["assistant_mask"].index(1)
    assert tokenizer.decode(encoded["input_ids"][:first]).endswith("<|im_start|>assistant\n")
    assert encoded["assistant_mask"][-1] == 0, "the newline after the last <|im_end|> is not part of the reply"
    last_only = instruct.encode_conversation(tokenizer, ORDER, max_length=200, last_only=True)
    assert last_only["input_ids"] == encoded["input_ids"]
    assert marked_text(tokenizer, last_only) == "It will be ready at the bar soon.<|im_end|>"


def test_no_special_token_is_added_twice(tokenizer):
    encoded = instruct.encode_conversation(tokenizer, ORDER, max_length=200)
    assert tokenizer.decode(encoded["input_ids"]) == instruct.format_chat(ORDER)


# --- labels and the collator -----------------------------------------------------------------------------------


def encoded_batch(tokenizer, conversations):
    return [instruct.encode_conversation(tokenizer, c, max_length=200) for c in conversations]


def test_collator_pads_on_the_right_and_masks_prompt_and_padding(tokenizer):
    features = encoded_batch(tokenizer, [ORDER, ORDER[:2]])
    batch = instruct.ChatCollator(tokenizer.pad_token_id)(features)
    long, short = (len(f["input_ids"]) for f in features)
    assert batch["input_ids"].shape == batch["labels"].shape == batch["attention_mask"].shape == (2, long)
    assert batch["input_ids"][1, :short].tolist() == features[1]["input_ids"]
    assert batch["input_ids"][1, short:].eq(tokenizer.pad_token_id).all() and batch["attention_mask"][1, short:].eq(0).all()
    assert batch["attention_mask"][0].eq(1).all() and batch["attention_mask"][1, :short].eq(1).all()
    for row, feature in enumerate(features):
        n = len(feature["input_ids"])
        expected = [token if flag else IGNORE for token, flag in zip(feature["input_ids"], feature["assistant_mask"])]
        assert batch["labels"][row, :n].tolist() == expected, "labels: the same ids, not shifted, -100 on the prompt"
        assert batch["labels"][row, n:].eq(IGNORE).all(), "padding is never in the loss"


def test_padding_is_found_by_position_even_when_the_pad_id_is_the_end_of_turn_token(tokenizer):
    """Many tokenizers pad with their end-of-text token; masking labels by id would drop every real end of turn."""
    end = end_of_turn_id(tokenizer)
    features = encoded_batch(tokenizer, [ORDER, ORDER[:2]])
    batch = instruct.collate_conversations(features, pad_token_id=end)
    short = len(features[1]["input_ids"])
    replies_end = torch.zeros_like(batch["input_ids"], dtype=torch.bool)
    for row, feature in enumerate(features):
        for t, (token, flag) in enumerate(zip(feature["input_ids"], feature["assistant_mask"])):
            replies_end[row, t] = token == end and flag == 1
    assert replies_end.sum() == 3 and batch["labels"][replies_end].eq(end).all(), "each reply's <|im_end|> is learned"
    assert batch["labels"][1, short:].eq(IGNORE).all() and batch["input_ids"][1, short:].eq(end).all()


def positions_in_loss(model, batch, labels) -> torch.Tensor:
    """Where the gradient of the model's own loss (Hugging Face shifts the labels inside) reaches the logits."""
    captured = []

    def keep_gradient(module, inputs, output):
        output.retain_grad()
        captured.append(output)

    hook = model.get_output_embeddings().register_forward_hook(keep_gradient)
    try:
        model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], labels=labels).loss.backward()
    finally:
        hook.remove()
        model.zero_grad(set_to_none=True)
    return captured[0].grad.abs().sum(-1) > 0


def predicting_assistant_tokens(features, width) -> torch.Tensor:
    """True at position t of a row when token t + 1 is one the assistant wrote: the positions SFT must train."""
    wanted = torch.zeros(len(features), width, dtype=torch.bool)
    for row, feature in enumerate(features):
        for t, flag in enumerate(feature["assistant_mask"][1:]):
            wanted[row, t] = bool(flag)
    return wanted


def test_the_loss_counts_exactly_the_assistant_tokens(tokenizer, model):
    """No prompt in the loss, no padding, no off-by-one: the model's loss trains exactly the predictions of reply tokens."""
    features = encoded_batch(tokenizer, [ORDER, ORDER[:2]])
    batch = instruct.ChatCollator(tokenizer.pad_token_id)(features)
    wanted = predicting_assistant_tokens(features, batch["input_ids"].shape[1])
    assert torch.equal(positions_in_loss(model, batch, batch["labels"]), wanted)
    # the value is the mean cross-entropy over those tokens, as assistant_token_loss measures it
    with torch.no_grad():
        loss = model(**batch).loss.item()
    measured = instruct.assistant_token_loss(model, features, instruct.ChatCollator(tokenizer.pad_token_id), 2, torch.device("cpu"))
    assert measured["tokens"] == int(wanted.sum())
    assert measured["loss"] == pytest.approx(loss, rel=1e-5)
    assert measured["perplexity"] == pytest.approx(math.exp(loss), rel=1e-5)


@pytest.mark.parametrize("mistake", ["prompt in the loss", "labels shifted by one", "padding not masked"])
def test_each_classic_mistake_trains_other_positions(tokenizer, model, mistake):
    """The check above is sharp: labels built with any of the classic mistakes reach other positions."""
    features = encoded_batch(tokenizer, [ORDER, ORDER[:2]])
    batch = instruct.collate_conversations(features, tokenizer.pad_token_id)
    ids, attention, labels = batch["input_ids"], batch["attention_mask"], batch["labels"]
    wrong = {"prompt in the loss": torch.where(attention.bool(), ids, IGNORE),
             "labels shifted by one": torch.cat([labels[:, 1:], torch.full_like(ids[:, :1], IGNORE)], 1),
             "padding not masked": torch.where(attention.bool(), labels, ids)}[mistake]
    wanted = predicting_assistant_tokens(features, ids.shape[1])
    assert not torch.equal(positions_in_loss(model, batch, wrong), wanted)


def test_empty_batch_is_an_error():
    with pytest.raises(ValueError, match="empty"):
        instruct.collate_conversations([], 0)


# --- bad input ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("messages, phrase", [
    ([], "no messages"),
    ([ORDER[1], ORDER[0]], "message 1 is from the assistant but should be from the user"),
    ([ORDER[0], ORDER[2], ORDER[1]], "message 2 is from the user but should be from the assistant"),
    ([ORDER[0], {"role": "assistant", "content": "   "}], "message 2 (assistant) is empty"),
    ([ORDER[0], {"role": "assistant", "content": ""}], "message 2 (assistant) is empty"),
    ([{"role": "customer", "content": "hi"}], "role 'customer'"),
    ([ORDER[0]], "no assistant reply"),
])
def test_bad_conversations_are_one_line_errors(messages, phrase):
    with pytest.raises(ValueError) as raised:
        instruct.check_conversation(messages, "dialog x")
    message = str(raised.value)
    assert phrase in message and "\n" not in message and message.startswith("dialog x"), message


def test_dialog_messages_reads_taskmaster_turns(dialogs):
    messages = instruct.dialog_messages(dialogs[0])
    assert [m["role"] for m in messages] == [t["speaker"] for t in dialogs[0]["turns"]]
    broken = {"conversation_id": "dlg-bad", "turns": [{"speaker": "user", "text": "hi"}, {"speaker": "user", "text": "hello?"}]}
    with pytest.raises(ValueError, match="dialog dlg-bad: message 2"):
        instruct.dialog_messages(broken)


def test_a_conversation_longer_than_the_context_is_refused_never_cut(tokenizer):
    length = len(instruct.encode_conversation(tokenizer, ORDER, max_length=1000)["input_ids"])
    assert len(instruct.encode_conversation(tokenizer, ORDER, max_length=length)["input_ids"]) == length
    with pytest.raises(instruct.ConversationTooLong, match=f"order 7 has {length} tokens, more than the context of {length - 1}"):
        instruct.encode_conversation(tokenizer, ORDER, max_length=length - 1, name="order 7")


def test_sft_dataset_counts_and_names_what_it_skips(tokenizer):
    length = len(instruct.encode_conversation(tokenizer, ORDER, max_length=1000)["input_ids"])
    data, skipped = instruct.sft_dataset(tokenizer, [ORDER[:2], ORDER, ORDER[:2]], max_length=length - 1,
                                         names=["short a", "long", "short b"])
    assert skipped == ["long"] and len(data) == 2
    whole = instruct.encode_conversation(tokenizer, ORDER[:2], max_length=length)
    for row in data:
        assert row["input_ids"] == whole["input_ids"] and row["assistant_mask"] == whole["assistant_mask"], "kept rows are whole"


# --- the split by dialog -------------------------------------------------------------------------------------------


def test_split_is_by_dialog_never_by_turn(dialogs):
    chosen = dialogs[:400]
    splits = instruct.split_by_dialog(chosen, validation_fraction=0.1, test_fraction=0.2, seed=3)
    ids = {name: [d["conversation_id"] for d in split] for name, split in splits.items()}
    assert (len(ids["train"]), len(ids["validation"]), len(ids["test"])) == (280, 40, 80)
    assert set(ids["train"]).isdisjoint(ids["test"]) and set(ids["train"]).isdisjoint(ids["validation"])
    assert set(ids["test"]).isdisjoint(ids["validation"])
    assert sorted(sum(ids.values(), [])) == sorted(d["conversation_id"] for d in chosen)
    by_id = {d["conversation_id"]: d for d in chosen}
    assert all(split_dialog["turns"] == by_id[split_dialog["conversation_id"]]["turns"] for split in splits.values()
               for split_dialog in split), "every dialog keeps all its turns"
    again = instruct.split_by_dialog(chosen, 0.1, 0.2, seed=3)
    assert [d["conversation_id"] for d in again["test"]] == ids["test"]
    assert [d["conversation_id"] for d in instruct.split_by_dialog(chosen, 0.1, 0.2, seed=4)["test"]] != ids["test"]


def test_the_base_model_reads_the_training_dialogs_as_transcripts_and_nothing_else():
    from llmlab.instruct_training import conversations_by_split, plain_transcript, pretraining_text
    from llmlab.presets import lab_settings

    assert plain_transcript(ORDER[:2]) == "Customer: one large latte please\nBarista: Okay, is the order on the screen right?"
    conversations = conversations_by_split(lab_settings("04b_instruction_tuning", "smoke"))
    text = pretraining_text(None, conversations["train"])
    assert text.startswith("I am still waiting on my card?")  # BANKING77's first training message comes first
    assert all(plain_transcript(c) in text for c in conversations["train"])
    # never the chat format the model is fine-tuned to, and never a held-out dialog
    assert not any(token in text for token in ("<|im_start|>", "<|im_end|>", "<|endoftext|>", "user\n", "assistant\n"))
    trained = {plain_transcript(c) for c in conversations["train"]}
    held_out = {plain_transcript(c) for split in ("validation", "test") for c in conversations[split]} - trained
    assert held_out and not any(transcript in text for transcript in held_out)  # (a dialog also in training may repeat)
    assert pretraining_text(50, conversations["train"]) == text[:50]
    assert "Barista:" not in pretraining_text()  # without dialogs: bank messages only


def test_split_refuses_duplicate_ids_and_bad_fractions(dialogs):
    with pytest.raises(ValueError, match="appears more than once"):
        instruct.split_by_dialog([dialogs[0], dialogs[1], dialogs[0]], 0.2, 0.2)
    with pytest.raises(ValueError, match="fractions"):
        instruct.split_by_dialog(dialogs[:10], 0.5, 0.5)


# --- the task metric and the preference pairs ----------------------------------------------------------------------


def test_menu_items_prefer_the_longest_name():
    assert [(kind, name) for kind, name, _, _ in instruct.menu_items("A large Chai Latte and two lattes")] == \
        [("size", "large"), ("drink", "chai latte"), ("drink", "latte")]


def test_reply_is_right_checks_finish_step_and_items():
    history = [{"role": "user", "content": "a small mocha please"}]
    reference = "Is the order on the screen correct?"
    assert instruct.reply_is_right("Does the order look right?", True, reference, history)["right"]
    assert not instruct.reply_is_right("Does the order look right?", False, reference, history)["right"]
    assert not instruct.reply_is_right("It will be ready at the bar soon.", True, reference, history)["same_step"]
    wrong_drink = instruct.reply_is_right("Is your large latte correct?", True, reference, history)
    assert wrong_drink["same_step"] and not wrong_drink["no_unrequested_item"] and not wrong_drink["right"]
    assert instruct.reply_is_right("Is your small mocha correct?", True, reference, history)["right"]


def test_preference_pairs_swap_only_what_the_customer_ordered(dialogs):
    conversations = [instruct.dialog_messages(d) for d in dialogs[:300]]
    pairs = instruct.preference_pairs(conversations, seed=0)
    assert len(pairs) > 20
    for pair in pairs:
        kind, original, replacement = pair["swap"]
        asked = {name for m in pair["prompt"] if m["role"] == "user" for _, name, _, _ in instruct.menu_items(m["content"])}
        assert pair["prompt"][-1]["role"] == "user" and pair["chosen"] != pair["rejected"]
        assert original in asked and replacement not in asked and replacement in instruct.MENU[kind]
        assert replacement in pair["rejected"].lower() and original not in {n for _, n, _, _ in instruct.menu_items(pair["rejected"])}
        real = {m["content"] for c in conversations for i, m in enumerate(c) if m["role"] == "assistant" and c[:i] == pair["prompt"]}
        assert pair["chosen"] in real
    assert instruct.preference_pairs(conversations, seed=0) == pairs, "the same seed gives the same pairs"


def test_several_pairs_per_reply_swap_in_different_items_and_keep_the_first(dialogs):
    conversations = [instruct.dialog_messages(d) for d in dialogs[:300]]
    single = instruct.preference_pairs(conversations, seed=0)
    several = instruct.preference_pairs(conversations, seed=0, per_reply=3)
    assert len(single) < len(several) <= 3 * len(single)
    assert {pair["reply"] for pair in several} == {pair["reply"] for pair in single} == set(range(len(single)))
    for reply in range(len(single)):
        group = [pair for pair in several if pair["reply"] == reply]
        assert len({pair["chosen"] for pair in group}) == 1 and len({pair["rejected"] for pair in group}) == len(group)
        assert len({pair["swap"][2] for pair in group}) == len(group), "each pair of a reply swaps in another item"
    first_of_each = [next(pair for pair in several if pair["reply"] == reply) for reply in range(len(single))]
    assert [pair["chosen"] for pair in first_of_each] == [pair["chosen"] for pair in single], "the same replies, in order"
    with pytest.raises(ValueError, match="per_reply must be at least 1, got 0"):
        instruct.preference_pairs(conversations, per_reply=0)


def test_the_constant_reply_floor_and_the_parts_of_the_metric(dialogs):
    conversations = [instruct.dialog_messages(d) for d in dialogs[:200]]
    replies = [reply for _, reply in instruct.reply_prompts(conversations)]
    floor_reply = instruct.most_common_reply(conversations)
    assert replies.count(floor_reply) == max(replies.count(reply) for reply in set(replies))
    judged = [{"right": False, "finished": True, "same_step": True, "no_unrequested_item": False},
              {"right": True, "finished": True, "same_step": True, "no_unrequested_item": True},
              {"right": False, "finished": False, "same_step": False, "no_unrequested_item": True}]
    assert instruct.judged_rates(judged) == {"right": (1, 3), "finished": (2, 3), "same_step": (2, 3),
                                             "no_unrequested_item": (2, 3)}
    with pytest.raises(ValueError, match="no judged replies"):
        instruct.judged_rates([])
    with pytest.raises(ValueError, match="no assistant replies"):
        instruct.most_common_reply([])


def test_the_grouped_bootstrap_keeps_groups_together():
    before, after = [0, 0, 0, 0, 1, 1], [1, 1, 1, 1, 1, 1]
    change, low, high = instruct.grouped_bootstrap_difference(before, after, [0, 0, 0, 0, 1, 1], resamples=500)
    assert change == pytest.approx(4 / 6)
    # two groups: a resample holds group 0 twice (change 1), group 1 twice (0) or both (4/6); nothing else
    assert low == pytest.approx(0.0) and high == pytest.approx(1.0)
    _, low, high = instruct.grouped_bootstrap_difference(before, after, range(6), resamples=2000)
    assert 0 < low < 4 / 6 < high <= 1, "as independent items the interval is narrower and excludes 0"
    with pytest.raises(ValueError, match="equally long"):
        instruct.grouped_bootstrap_difference([1], [1, 0], [0, 0])


def test_the_gpu_preset_runs_in_float32_and_generates_in_larger_batches():
    from llmlab.instruct_training import lab_precision
    from llmlab.presets import lab_settings

    gpu = lab_settings("04b_instruction_tuning", "gpu")
    assert gpu["fp32_only"] and gpu["generate_batch_size"] >= 16 * gpu["eval_batch_size"]
    assert lab_precision(gpu, torch.device("cpu")).name == "fp32"
    for preset in ("smoke", "cpu", "gpu"):
        assert lab_settings("04b_instruction_tuning", preset)["test_pairs_per_reply"] >= 1


def test_swap_keeps_capitals_and_plurals():
    counts = {kind: {name: 1 for name in names} for kind, names in instruct.MENU.items()}
    history = [{"role": "user", "content": "two mochas please"}]
    rejected, (kind, original, replacement) = instruct.swap_item("Two Mochas, coming up.", history,
                                                                 np.random.default_rng(0), counts)
    assert (kind, original) == ("drink", "mocha")
    assert rejected == f"Two {replacement[0].upper() + replacement[1:]}s, coming up."


def test_preference_scores_and_wilson_interval():
    scores = instruct.preference_scores([-1.0, -2.0, -3.0, -1.0], [-2.0, -1.0, -4.0, -1.0])
    assert scores == {"accuracy": 0.5, "margin": 0.25, "pairs": 4}
    low, high = instruct.wilson_interval(8, 10)
    assert (round(low, 4), round(high, 4)) == (0.4902, 0.9433)  # Wilson (1927) for 8 of 10 at z = 1.96
    with pytest.raises(ValueError, match="no preference pairs"):
        instruct.preference_scores([], [])
    with pytest.raises(ValueError, match="trials must be positive, got 0"):
        instruct.wilson_interval(0, 0)


# --- the DPO loss --------------------------------------------------------------------------------------------------


def test_dpo_loss_matches_a_hand_computation():
    policy_chosen, policy_rejected = torch.tensor([-10.0, -20.0]), torch.tensor([-12.0, -15.0])
    reference_chosen, reference_rejected = torch.tensor([-11.0, -21.0]), torch.tensor([-11.0, -16.0])
    # pair 1: beta·((−10 + 11) − (−12 + 11)) = 0.5·2 = 1; pair 2: 0.5·((−20 + 21) − (−15 + 16)) = 0
    by_hand = (math.log(1 + math.exp(-1.0)) + math.log(2.0)) / 2
    loss = instruct.dpo_loss(policy_chosen, policy_rejected, reference_chosen, reference_rejected, beta=0.5)
    assert loss.item() == pytest.approx(by_hand, rel=1e-6)
    same = instruct.dpo_loss(reference_chosen, reference_rejected, reference_chosen, reference_rejected, beta=0.5)
    assert same.item() == pytest.approx(math.log(2), rel=1e-6)
    huge = instruct.dpo_loss(torch.tensor([-1e4]), torch.tensor([0.0]), torch.tensor([0.0]), torch.tensor([0.0]), beta=1.0)
    assert math.isfinite(huge.item()) and huge.item() == pytest.approx(1e4)


# --- the model: Hugging Face save / load, LoRA, generation, the training functions ---------------------------------


def test_save_pretrained_and_from_pretrained_round_trip(tokenizer, model, tmp_path):
    model.save_pretrained(tmp_path)
    tokenizer.save_pretrained(tmp_path)
    loaded_tokenizer, loaded = load_causal_lm(tmp_path)
    assert type(loaded).__name__ == "LlamaForCausalLM" and loaded.config.vocab_size == len(tokenizer)
    assert loaded_tokenizer.chat_template == tokenizer.chat_template
    assert loaded_tokenizer.apply_chat_template(ORDER, tokenize=False) == instruct.format_chat(ORDER)
    ids = instruct.encode_conversation(loaded_tokenizer, ORDER, 200)["input_ids"]
    assert ids == instruct.encode_conversation(tokenizer, ORDER, 200)["input_ids"]
    with torch.no_grad():
        assert torch.equal(model(input_ids=torch.tensor([ids])).logits, loaded(input_ids=torch.tensor([ids])).logits)
    for name, weight in model.state_dict().items():
        assert torch.equal(weight, loaded.state_dict()[name]), name


def test_a_model_without_chat_template_is_refused(tokenizer, model, tmp_path):
    plain = train_chat_tokenizer("hello there\n" * 20, 270)
    plain.chat_template = None
    plain.save_pretrained(tmp_path)
    model.save_pretrained(tmp_path)
    with pytest.raises(ValueError, match="has no chat template"):
        load_causal_lm(tmp_path)


def test_lora_counts_its_parameters_and_merges_exactly(tokenizer):
    base = small_decoder(tokenizer, SETTINGS, seed=1)
    total = sum(p.numel() for p in base.parameters())
    wrapped = with_lora(small_decoder(tokenizer, SETTINGS, seed=1), tokenizer, SETTINGS)
    d, f, r = SETTINGS["d_model"], SETTINGS["d_ff"], SETTINGS["lora_r"]
    per_layer = 4 * r * (d + d) + 2 * r * (d + f) + r * (f + d)  # q, k, v, o; gate and up; down
    assert trainable_parameters(wrapped) == SETTINGS["n_layers"] * per_layer + len(chat_token_ids(tokenizer)) * d
    assert trainable_parameters(base) == total
    with torch.no_grad():  # give the adapters a non-zero update, then merge
        for name, parameter in wrapped.named_parameters():
            if "lora_B" in name:
                parameter.normal_(0, 0.1)
    ids = torch.tensor([instruct.encode_conversation(tokenizer, ORDER, 200)["input_ids"]])
    with torch.no_grad():
        adapted = wrapped(input_ids=ids).logits
        merged = wrapped.merge_and_unload()
        assert torch.allclose(merged(input_ids=ids).logits, adapted, atol=1e-5)
        assert not torch.allclose(base(input_ids=ids).logits, adapted, atol=1e-3)
    assert type(merged).__name__ == "LlamaForCausalLM"


def test_batched_generation_pads_on_the_left_and_matches_one_by_one(tokenizer, model):
    histories = [ORDER[:1], ORDER[:3]]
    together = generate_replies(model, tokenizer, histories, max_new_tokens=6, batch_size=2, device=torch.device("cpu"))
    alone = [generate_replies(model, tokenizer, [h], max_new_tokens=6, batch_size=1, device=torch.device("cpu"))[0] for h in histories]
    assert together == alone
    assert all(isinstance(text, str) and isinstance(finished, bool) for text, finished in together)


def test_sft_train_with_the_trainer_learns_and_resumes(tokenizer, tmp_path):
    from llmlab.instruct_training import sft_train

    model = small_decoder(tokenizer, SETTINGS, seed=2)
    data, skipped = instruct.sft_dataset(tokenizer, [ORDER, ORDER[:2]] * 4, max_length=200)
    assert skipped == [] and len(data) == 8
    collator = instruct.ChatCollator(tokenizer.pad_token_id)
    settings = dict(SETTINGS, sft_batch_size=4, sft_epochs=3, sft_log_every=1, sft_save_every=3)
    before = instruct.assistant_token_loss(model, data, collator, 8, torch.device("cpu"))["loss"]
    costs = sft_train(model, data, collator, settings, 1e-2, torch.device("cpu"), tmp_path / "sft")
    after = instruct.assistant_token_loss(model, data, collator, 8, torch.device("cpu"))["loss"]
    assert costs["steps"] == 6 and not costs["resumed"] and costs["trainable parameters"] == trainable_parameters(model)
    assert after < before - 0.5, (before, after)
    again = small_decoder(tokenizer, SETTINGS, seed=2)
    resumed = sft_train(again, data, collator, settings, 1e-2, torch.device("cpu"), tmp_path / "sft")
    assert resumed["resumed"] and resumed["steps"] == 6
    for name, weight in model.state_dict().items():
        assert torch.equal(weight, again.state_dict()[name]), f"{name}: the re-run did not restore the trained weights"


def test_the_trainer_refuses_untokenised_text(tokenizer):
    """The seed's mistake: a dataset of strings gives the model nothing it can read."""
    import tempfile

    from datasets import Dataset
    from transformers import Trainer, TrainingArguments

    arguments = TrainingArguments(output_dir=tempfile.mkdtemp(), max_steps=1, report_to="none", use_cpu=True, save_strategy="no",
                                  disable_tqdm=True)
    raw = Dataset.from_dict({"text": [instruct.format_chat(ORDER)] * 4})
    with pytest.raises(ValueError, match="No columns in the dataset match the model's forward method signature"):
        Trainer(model=small_decoder(tokenizer, SETTINGS), args=arguments, train_dataset=raw).train()


def test_dpo_train_moves_the_policy_towards_the_chosen_replies(tokenizer, dialogs):
    from llmlab.instruct_training import dpo_train, encode_pairs, pair_log_probs

    conversations = [instruct.dialog_messages(d) for d in dialogs[:60]]
    pairs, skipped = encode_pairs(tokenizer, instruct.preference_pairs(conversations, seed=0), max_length=400)
    assert skipped == 0 and len(pairs) >= 8
    pairs = pairs[:8]
    collator, device = instruct.ChatCollator(tokenizer.pad_token_id), torch.device("cpu")
    policy = small_decoder(tokenizer, SETTINGS, seed=3)
    reference_chosen, reference_rejected = pair_log_probs(policy, pairs, collator, 8, device)
    settings = dict(SETTINGS, dpo_batch_size=4, dpo_steps=15, dpo_beta=0.5, dpo_learning_rate=1e-2)
    history = dpo_train(policy, pairs, reference_chosen, reference_rejected, collator, settings, device)
    assert history.losses[0] == pytest.approx(math.log(2), abs=1e-4), "the policy starts as the reference"
    chosen, rejected = pair_log_probs(policy, pairs, collator, 8, device)
    margin_before = (reference_chosen - reference_rejected).mean()
    assert (chosen - rejected).mean() > margin_before + 1.0
    # the history follows each side: its last record is the policy's mean log-probabilities on the watched pairs
    assert history.evals[-1]["chosen log-prob"] == pytest.approx(chosen.mean().item(), abs=1e-4)
    assert history.evals[-1]["rejected log-prob"] == pytest.approx(rejected.mean().item(), abs=1e-4)
    assert history.evals[0]["chosen log-prob"] < 0 and len(history.evals) >= 2


def test_dpo_of_lora_adapters_resumes_from_its_checkpoint(tokenizer, dialogs, tmp_path):
    from llmlab.instruct_training import dpo_train, encode_pairs, pair_log_probs

    conversations = [instruct.dialog_messages(d) for d in dialogs[:60]]
    pairs, _ = encode_pairs(tokenizer, instruct.preference_pairs(conversations, seed=0), max_length=400)
    collator, device = instruct.ChatCollator(tokenizer.pad_token_id), torch.device("cpu")
    reference = small_decoder(tokenizer, SETTINGS, seed=4)
    reference_chosen, reference_rejected = pair_log_probs(reference, pairs, collator, 8, device)
    settings = dict(SETTINGS, dpo_batch_size=4, dpo_steps=6, dpo_beta=0.5, dpo_learning_rate=1e-2)
    policy = with_lora(small_decoder(tokenizer, SETTINGS, seed=4), tokenizer, SETTINGS)
    history = dpo_train(policy, pairs, reference_chosen, reference_rejected, collator, settings, device, checkpoint_path=tmp_path / "dpo.safetensors")
    assert len(history.losses) == 6 and history.eval_steps[-1] == 5 and history.eval_seconds[-1] > 0
    again = with_lora(small_decoder(tokenizer, SETTINGS, seed=4), tokenizer, SETTINGS)
    resumed = dpo_train(again, pairs, reference_chosen, reference_rejected, collator, settings, device, checkpoint_path=tmp_path / "dpo.safetensors")
    assert resumed.losses == history.losses, "the resumed run returns the history of the finished one"
    for (name, weight), (_, restored) in zip(policy.state_dict().items(), again.state_dict().items()):
        assert torch.equal(weight, restored), name
    with pytest.raises(ValueError, match="other settings"):
        dpo_train(with_lora(small_decoder(tokenizer, SETTINGS, seed=4), tokenizer, SETTINGS), pairs, reference_chosen, reference_rejected,
                  collator, dict(settings, dpo_beta=0.1), device, checkpoint_path=tmp_path / "dpo.safetensors")


def test_the_benchmark_runs_at_smoke_and_prints_its_table(capsys):
    from llmlab.bench import main

    threads = torch.get_num_threads()
    try:
        assert main(["sft", "--preset", "smoke"]) == 0
    finally:
        torch.set_num_threads(threads)  # the smoke preset computes with one thread; give the other tests theirs back
    printed = capsys.readouterr().out
    assert "benchmark sft | preset smoke" in printed
    for row in ("base", "SFT (full)", "SFT (LoRA)", "+ DPO"):
        assert any(line.startswith(row) for line in printed.splitlines()), row
    for column in ("assistant-token loss", "task metric", "preference accuracy", "trainable parameters", "training seconds"):
        assert column in printed
    assert "KL(DPO ‖ SFT" in printed and "-> DPO starts from SFT" in printed
    assert any(line.startswith("constant reply") for line in printed.splitlines())
    assert "task metric constant reply:" in printed and "same step" in printed and "no unrequested item" in printed


def test_the_seed_option_belongs_to_the_sft_benchmark_only(capsys):
    from llmlab.bench import main

    with pytest.raises(SystemExit):
        main(["pretrain", "--preset", "smoke", "--seed", "1"])
    assert "--seed applies to the sft benchmark only, not to pretrain" in capsys.readouterr().err
