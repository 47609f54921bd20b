"""The intent classifier of Lab 4: three recipes, predictions, save/load, clear errors, LoRA, the benchmark."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from llmlab import intents as routing
from llmlab.embeddings import embed
from llmlab.lora import LoRALinear, lora_parameter_count

INTENTS = ["card_arrival", "exchange_rate", "lost_or_stolen_card"]
TEXTS = [
    "When will my new card arrive?", "My card still has not come in the post", "How long does card delivery take?",
    "Is my card on its way?",
    "What is today's euro to dollar rate?", "Which exchange rate do you use?", "How much is one pound in yen?",
    "Do you convert currencies at a fair rate?",
    "I lost my card", "Someone stole my wallet with my card in it", "My card is gone, please block it",
    "I cannot find my card anywhere",
]
LABELS = [0] * 4 + [1] * 4 + [2] * 4
NEW_MESSAGES = ["my card hasn't arrived yet", "what rate for dollars to euros", "help, my card was stolen"]


@pytest.fixture(scope="module")
def frozen():
    return routing.train_intent_classifier(TEXTS, LABELS, INTENTS, recipe="frozen", device="cpu")


def test_frozen_recipe_learns_the_toy_intents(frozen):
    predictions = frozen.predict(NEW_MESSAGES)
    assert [intent for intent, _ in predictions] == INTENTS
    assert all(0.0 <= confidence <= 1.0 for _, confidence in predictions)
    probabilities = frozen.predict_proba(NEW_MESSAGES)
    assert probabilities.shape == (3, 3)
    np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, atol=1e-9)
    assert frozen.intents == INTENTS and frozen.trainable_parameters == 3 * 384 + 3


def test_frozen_head_equals_scikit_learn_and_reuses_embeddings(frozen):
    from sklearn.linear_model import LogisticRegression

    embeddings = embed(TEXTS, progress=False).numpy()
    reference = LogisticRegression(C=20.0, max_iter=300).fit(embeddings, LABELS)
    again = routing.train_intent_classifier(TEXTS, LABELS, INTENTS, recipe="frozen", device="cpu", embeddings=embeddings)
    np.testing.assert_allclose(again.predict_proba(NEW_MESSAGES), reference.predict_proba(embed(NEW_MESSAGES, progress=False).numpy()),
                               atol=1e-4)
    # the classifier reads a text exactly as llmlab.embeddings embeds it: the head on the embeddings gives the same answer
    np.testing.assert_allclose(again.probabilities_from_embeddings(embed(NEW_MESSAGES, progress=False)),
                               again.predict_proba(NEW_MESSAGES), atol=1e-5)
    np.testing.assert_allclose(again.predict_proba(TEXTS), frozen.predict_proba(TEXTS), atol=1e-5)


def test_order_and_batching_do_not_change_predictions(frozen):
    texts = TEXTS + NEW_MESSAGES
    whole = frozen.predict_proba(texts, batch_size=64)
    in_pairs = frozen.predict_proba(texts, batch_size=2)
    np.testing.assert_allclose(whole, in_pairs, atol=1e-5)
    reversed_order = frozen.predict_proba(texts[::-1])
    np.testing.assert_allclose(whole, reversed_order[::-1], atol=1e-5)


def test_intents_absent_from_training_are_never_predicted():
    classifier = routing.train_intent_classifier(TEXTS[:8], LABELS[:8], INTENTS, device="cpu")
    probabilities = classifier.predict_proba(NEW_MESSAGES)
    assert probabilities[:, 2].max() < 1e-6
    assert [intent for intent, _ in classifier.predict(NEW_MESSAGES[:2])] == INTENTS[:2]


@pytest.mark.parametrize("recipe", ["frozen", "finetune", "lora"])
def test_save_and_load_give_the_same_predictions(recipe, tmp_path, frozen):
    settings = dict(epochs=1, batch_size=4, max_length=16)
    classifier = frozen if recipe == "frozen" else routing.train_intent_classifier(TEXTS, LABELS, INTENTS, recipe, settings, "cpu")
    classifier.save(tmp_path / recipe)
    loaded = routing.IntentClassifier.load(tmp_path / recipe, device="cpu")
    assert loaded.intents == INTENTS and loaded.recipe == recipe
    np.testing.assert_allclose(loaded.predict_proba(NEW_MESSAGES), classifier.predict_proba(NEW_MESSAGES), atol=1e-5)
    files = {path.name for path in (tmp_path / recipe).rglob("*.safetensors")}
    assert {"frozen": {"head.safetensors"}, "finetune": {"head.safetensors", "model.safetensors"},
            "lora": {"head.safetensors", "adapter_model.safetensors"}}[recipe] == files


def test_trainable_parameter_counts():
    settings = dict(epochs=1, batch_size=12, max_length=16, lora_r=4, lora_targets=["query", "value"])
    lora = routing.train_intent_classifier(TEXTS, LABELS, INTENTS, "lora", settings, "cpu")
    # 6 layers × 2 matrices (384 × 384) × r(d + k), plus the 384 → 3 head
    assert lora.trainable_parameters == 6 * 2 * lora_parameter_count(384, 384, 4) + 384 * 3 + 3
    # the default targets: q, k, v, the attention output and both feed-forward matrices of each layer, not the pooler
    lora = routing.train_intent_classifier(TEXTS, LABELS, INTENTS, "lora", dict(epochs=1, batch_size=12, lora_r=4), "cpu")
    per_layer = 4 * lora_parameter_count(384, 384, 4) + 2 * lora_parameter_count(1536, 384, 4)
    assert lora.trainable_parameters == 6 * per_layer + 384 * 3 + 3
    assert not any("pooler" in name and "lora" in name for name, _ in lora.model.named_parameters())
    top = routing.train_intent_classifier(TEXTS, LABELS, INTENTS, "finetune", dict(epochs=1, batch_size=12, train_layers=1), "cpu")
    layer = top.model.encoder.encoder.layer[-1]
    assert top.trainable_parameters == sum(p.numel() for p in layer.parameters()) + 384 * 3 + 3


def test_fine_tuning_changes_the_encoder_and_lowers_the_loss():
    from llmlab.embeddings import load_minilm

    settings = dict(epochs=3, batch_size=4, learning_rate=2e-4, max_length=16)
    classifier = routing.train_intent_classifier(TEXTS, LABELS, INTENTS, "finetune", settings, "cpu")
    _, original = load_minilm(verbose=False)
    moved = [(a - b).abs().max().item() for a, b in zip(classifier.model.encoder.parameters(), original.parameters())]
    assert max(moved) > 0
    log_likelihood = np.log(classifier.predict_proba(TEXTS)[np.arange(12), LABELS]).mean()
    assert log_likelihood > np.log(1 / 3)  # better than the uniform guess it started near


@pytest.mark.parametrize("bad, message", [
    ([], "empty list"),
    ("When will my card arrive?", "single string"),
    (["fine", 42], "text 1 is a int"),
])
def test_bad_texts_give_one_clear_line(frozen, bad, message):
    with pytest.raises((TypeError, ValueError), match=message):
        frozen.predict(bad)


def test_bad_training_input_gives_one_clear_line():
    with pytest.raises(ValueError, match="label 3 is out of range"):
        routing.train_intent_classifier(TEXTS, LABELS[:-1] + [3], INTENTS, device="cpu")
    with pytest.raises(ValueError, match="label -1 is out of range"):
        routing.train_intent_classifier(TEXTS, [-1] + LABELS[1:], INTENTS, device="cpu")
    with pytest.raises(ValueError, match="one label per text"):
        routing.train_intent_classifier(TEXTS, LABELS[:5], INTENTS, device="cpu")
    with pytest.raises(ValueError, match="unknown recipe 'bert'"):
        routing.train_intent_classifier(TEXTS, LABELS, INTENTS, recipe="bert")
    with pytest.raises(ValueError, match="empty list"):
        routing.train_intent_classifier([], [], INTENTS)
    with pytest.raises(ValueError, match="expected \\(12, 384\\)"):
        routing.train_intent_classifier(TEXTS, LABELS, INTENTS, device="cpu", embeddings=np.zeros((5, 384)))
    with pytest.raises(FileNotFoundError, match="no saved intent classifier"):
        routing.IntentClassifier.load("/nonexistent/folder")


def test_a_saved_classifier_with_an_unknown_recipe_is_refused(frozen, tmp_path):
    import json

    frozen.save(tmp_path / "saved")
    config_file = tmp_path / "saved" / "intent_classifier.json"
    for recipe in ("distilled", None):
        config = json.loads(config_file.read_text())
        config["recipe"] = recipe
        config_file.write_text(json.dumps(config))
        with pytest.raises(ValueError, match=f"names the recipe {recipe!r}; a saved classifier is one of frozen, finetune, lora"):
            routing.IntentClassifier.load(tmp_path / "saved", device="cpu")


def test_probabilities_from_embeddings_need_the_frozen_recipe(frozen):
    finetuned = routing.train_intent_classifier(TEXTS, LABELS, INTENTS, "finetune", dict(epochs=1, batch_size=12, max_length=16), "cpu")
    with pytest.raises(ValueError, match="recipe='frozen'.*this one is 'finetune'"):
        finetuned.probabilities_from_embeddings(np.zeros((2, 384)))


def test_sample_per_intent_is_stratified_and_repeatable():
    labels = np.repeat(np.arange(5), [10, 3, 7, 20, 1])
    chosen = routing.sample_per_intent(labels, 4, seed=1)
    assert np.bincount(labels[chosen]).tolist() == [4, 3, 4, 4, 1]
    assert chosen == sorted(chosen) and len(set(chosen)) == len(chosen)
    assert chosen == routing.sample_per_intent(labels, 4, seed=1)
    assert chosen != routing.sample_per_intent(labels, 4, seed=2)
    with pytest.raises(ValueError, match="at least 1"):
        routing.sample_per_intent(labels, 0)


def test_lora_linear_starts_at_the_base_layer_and_matches_peft():
    from peft import LoraConfig, get_peft_model

    torch.manual_seed(0)
    base = nn.Linear(24, 40)
    layer = LoRALinear(base, r=4, alpha=12.0)
    x = torch.randn(5, 24)
    torch.testing.assert_close(layer(x), base(x))  # B = 0: no change before training
    assert sum(p.numel() for p in layer.parameters() if p.requires_grad) == lora_parameter_count(40, 24, 4) == 4 * 64
    nn.init.normal_(layer.lora_B)
    wrapper = nn.Sequential()
    wrapper.add_module("proj", nn.Linear(24, 40))
    wrapper.proj.load_state_dict(base.state_dict())
    peft_model = get_peft_model(wrapper, LoraConfig(r=4, lora_alpha=12, target_modules=["proj"]))
    peft_layer = peft_model.base_model.model.proj
    with torch.no_grad():
        peft_layer.lora_A["default"].weight.copy_(layer.lora_A)
        peft_layer.lora_B["default"].weight.copy_(layer.lora_B)
    torch.testing.assert_close(layer(x), peft_model(x))
    torch.testing.assert_close(x @ layer.merged_weight().T + base.bias, layer(x))


def test_benchmark_measures_on_the_smoke_preset(capsys):
    result = routing.benchmark("smoke")
    printed = capsys.readouterr().out
    assert result["preset"] == "smoke" and result["recipe"] == "frozen+tfidf"
    assert "lexical weight " in printed and "chosen on 10 % of the training texts" in printed
    assert 0.3 < result["test_accuracy"] <= 1.0 and 0.0 < result["macro_f1"] <= 1.0
    assert result["train_seconds"] > 0 and result["total_seconds"] >= result["train_seconds"]
    assert f"test accuracy {result['test_accuracy']:.4f} (95 % interval" in printed and "machine: cpu: " in printed
    low, high = result["test_accuracy_interval"]
    assert 0.0 <= low < result["test_accuracy"] < high <= 1.0 and high - low > 0.05  # 100 test messages: a wide interval
    with pytest.raises(ValueError, match="unknown preset 'tiny'; valid presets: smoke, cpu, gpu"):
        routing.benchmark("tiny")


# --- the frozen recipe blended with a lexical classifier (the cpu benchmark's recipe) ---------------------------


def test_blend_at_the_ends_is_either_classifier_and_between_them_can_beat_both():
    semantic = np.array([[0.6, 0.4], [0.6, 0.4], [0.2, 0.8]])
    lexical = np.array([[0.9, 0.1], [0.3, 0.7], [0.7, 0.3]])
    assert (routing.blend_log_probabilities(semantic, lexical, 0.0).argmax(1) == semantic.argmax(1)).all()
    assert (routing.blend_log_probabilities(semantic, lexical, 1.0).argmax(1) == lexical.argmax(1)).all()
    labels = [0, 1, 1]  # each classifier gets one message wrong; the even blend gets all three right
    np.testing.assert_allclose(routing.blend_log_probabilities(semantic, lexical, 0.5),
                               0.5 * np.log(semantic) + 0.5 * np.log(lexical))
    weight, accuracy = routing.choose_lexical_weight(semantic, lexical, labels, weights=(0.0, 0.5, 1.0))
    assert accuracy == {0.0: pytest.approx(2 / 3), 0.5: 1.0, 1.0: pytest.approx(2 / 3)} and weight == 0.5
    # a tie goes to the smaller lexical weight
    assert routing.choose_lexical_weight(semantic, lexical, [0, 0, 1], weights=(0.0, 0.2))[0] == 0.0
    with pytest.raises(ValueError, match="lexical_weight must be in"):
        routing.blend_log_probabilities(semantic, lexical, 1.5)
    with pytest.raises(ValueError, match="differ in shape"):
        routing.blend_log_probabilities(semantic, lexical[:2], 0.5)


def test_blended_classifier_learns_the_toy_intents_and_handles_an_intent_absent_from_training():
    blend = routing.train_blended_classifier(TEXTS, LABELS, len(INTENTS) + 1, device="cpu", validation_share=0.25)
    probabilities = blend.predict_proba(NEW_MESSAGES)
    assert probabilities.shape == (3, 4) and np.allclose(probabilities.sum(1), 1.0)
    assert probabilities.argmax(1).tolist() == [0, 1, 2] and (probabilities[:, 3] < 1e-3).all()
    assert blend.lexical_weight in routing.BLEND_WEIGHTS and set(blend.validation_accuracy) == set(routing.BLEND_WEIGHTS)
    lexical = blend.lexical[-1]
    assert blend.trainable_parameters == 4 * 384 + 4 + lexical.coef_.size + lexical.intercept_.size


def test_folder_megabytes_counts_files_and_folders(tmp_path):
    (tmp_path / "a.bin").write_bytes(b"x" * 1000)
    (tmp_path / "inner").mkdir()
    (tmp_path / "inner" / "b.bin").write_bytes(b"x" * 500)
    assert routing.folder_megabytes(tmp_path) == pytest.approx(0.0015)
    assert routing.folder_megabytes(tmp_path / "a.bin") == pytest.approx(0.001)


def test_head_C_is_chosen_on_training_folds_only():
    generator = np.random.default_rng(0)
    centres = generator.normal(size=(4, 8))
    labels = np.repeat(np.arange(4), 12)
    embeddings = centres[labels] + 0.8 * generator.normal(size=(48, 8))
    best, scores = routing.choose_head_C(embeddings, labels, 4, candidates=(0.01, 1.0, 100.0), folds=3)
    assert set(scores) == {0.01, 1.0, 100.0} and all(0.0 <= score <= 1.0 for score in scores.values())
    assert best == min(C for C, score in scores.items() if score == max(scores.values()))  # ties: the simpler head
    assert max(scores.values()) > 0.8  # the clusters are separable: cross-validated accuracy says so
    with pytest.raises(ValueError, match="at least 2 examples of every intent"):
        routing.choose_head_C(embeddings[:13], labels[:13], 4)


@pytest.mark.parametrize("recipe", ["finetune", "lora"])
def test_a_fine_tuning_run_cut_short_resumes_to_the_same_classifier(recipe, tmp_path, monkeypatch, capsys):
    import functools

    from llmlab import training

    settings = dict(epochs=2, batch_size=4, max_length=16, lora_r=4, dropout=0.1)  # dropout: the random state must resume too
    whole = routing.train_intent_classifier(TEXTS, LABELS, INTENTS, recipe, settings, "cpu")
    checkpoint = tmp_path / "run.safetensors"
    monkeypatch.setattr(routing, "train", functools.partial(training.train, stop_after_step=2))  # a disconnect after step 2
    routing.train_intent_classifier(TEXTS, LABELS, INTENTS, recipe, settings, "cpu", checkpoint_path=checkpoint)
    monkeypatch.setattr(routing, "train", training.train)
    resumed = routing.train_intent_classifier(TEXTS, LABELS, INTENTS, recipe, settings, "cpu", checkpoint_path=checkpoint)
    assert f"resumed from {checkpoint} at step 3 of" in capsys.readouterr().out
    for (name, a), (_, b) in zip(whole.model.state_dict().items(), resumed.model.state_dict().items()):
        assert torch.equal(a, b), name
    changed = dict(settings, epochs=3)
    with pytest.raises(training.SettingsMismatch, match="epochs"):
        routing.train_intent_classifier(TEXTS, LABELS, INTENTS, recipe, changed, "cpu", checkpoint_path=checkpoint)


def test_cached_lower_layers_give_the_classifier_s_own_logits():
    """The top layers on cached lower-layer outputs compute exactly what the whole classifier computes."""
    from llmlab.embeddings import load_minilm, pad_batch

    tokenizer, encoder = load_minilm(verbose=False)
    model = routing.EncoderClassifier(encoder, 3, normalize=True).eval()
    token_ids = tokenizer(TEXTS, truncation=True, max_length=32)["input_ids"]
    states = routing.lower_layer_states(encoder, token_ids, 4, tokenizer.pad_token_id, torch.device("cpu"))
    assert [len(s) for s in states] == [len(ids) for ids in token_ids] and states[0].shape[1] == 384
    top = routing.TopOfClassifier(model, 4).eval()
    with torch.no_grad():
        from_cache = top(*routing.pad_states(states, torch.device("cpu")))
        whole = model(*pad_batch(token_ids, tokenizer.pad_token_id, torch.device("cpu")))
    torch.testing.assert_close(from_cache, whole, atol=1e-5, rtol=1e-5)


def test_top_layer_recipe_trains_only_the_top_layers_and_starts_from_the_probe(tmp_path):
    from llmlab.embeddings import load_minilm

    settings = dict(epochs=2, batch_size=4, learning_rate=2e-4, max_length=32, train_layers=1, cache_lower_layers=True,
                    head_init="linear_probe", normalize=True, label_smoothing=0.1)
    classifier = routing.train_intent_classifier(TEXTS, LABELS, INTENTS, "finetune", settings, "cpu")
    _, original = load_minilm(verbose=False)
    trained, pretrained = classifier.model.encoder.encoder.layer, original.encoder.layer
    assert all(torch.equal(a, b) for a, b in zip(trained[:5].parameters(), pretrained[:5].parameters()))
    assert max((a - b).abs().max().item() for a, b in zip(trained[5].parameters(), pretrained[5].parameters())) > 0
    assert [intent for intent, _ in classifier.predict(NEW_MESSAGES)] == INTENTS
    classifier.save(tmp_path / "top")
    again = routing.IntentClassifier.load(tmp_path / "top", device="cpu")
    assert again.model.normalize and again.max_length == 32
    np.testing.assert_allclose(again.predict_proba(NEW_MESSAGES), classifier.predict_proba(NEW_MESSAGES), atol=1e-5)


@pytest.mark.parametrize("settings, message", [
    (dict(cache_lower_layers=True), "cache_lower_layers needs train_layers between 1 and 6, got None"),
    (dict(head_init="probe"), "head_init must be 'random' or 'linear_probe', got 'probe'"),
    (dict(head_init="linear_probe", train_layers=1, cache_lower_layers=True), "needs normalize=True and cache_lower_layers=True"),
])
def test_top_layer_recipe_rejects_settings_that_do_not_fit(settings, message):
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
        routing.train_intent_classifier(TEXTS, LABELS, INTENTS, "finetune", dict(epochs=1, batch_size=12, **settings), "cpu")
