"""Lab 5's measurements: the formulas by hand, the timers' bookkeeping, int8 copies, Lab 3's model and the benchmark."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn

from llmlab import inference, intents
from llmlab.checkpoint import save_checkpoint
from llmlab.generation import generate
from llmlab.lm import shakespeare_corpus
from llmlab.model import GPT, GPTConfig
from llmlab import pretraining
from llmlab.pretraining import model_config, run_settings
from llmlab.presets import lab_settings
from llmlab.training import History


def tiny_gpt(context: int = 40, rotary: bool = True, seed: int = 0) -> GPT:
    torch.manual_seed(seed)
    return GPT(GPTConfig(vocab_size=17, context=context, d_model=64, n_heads=4, n_layers=2, rotary=rotary, bias=False)).eval()


def test_memory_bound_ceiling_by_hand():
    # 7e9 weights of 2 bytes read once per step at 3.35e12 bytes/s: 3.35e12 / 14e9 steps per second
    assert inference.memory_bound_tokens_per_second(14e9, 3.35e12) == pytest.approx(239.2857, rel=1e-6)
    assert inference.memory_bound_tokens_per_second(14e9, 320e9, batch=8) == pytest.approx(8 * 320 / 14, rel=1e-9)
    for bad in ((0, 1e9), (1e9, 0), (1e9, 1e9, 0)):
        with pytest.raises(ValueError, match="positive"):
            inference.memory_bound_tokens_per_second(*bad)


def test_kv_bytes_per_token_from_published_configs():
    # Llama 2 7B: 32 layers, 32 KV heads of 128, 16-bit values; Mistral 7B / Llama 3 8B: 8 KV heads (GQA)
    assert inference.kv_bytes_per_token(32, 32, 128) == 2 * 32 * 32 * 128 * 2 == 524_288
    assert inference.kv_bytes_per_token(32, 8, 128) == inference.kv_bytes_per_token(32, 32, 128) / 4
    with pytest.raises(ValueError, match="positive"):
        inference.kv_bytes_per_token(32, 0, 128)


def test_memory_bound_ceiling_with_a_kv_cache():
    kv = inference.kv_bytes_per_token(32, 32, 128)
    # batch 1 without a cache: the weights-only formula, bandwidth / weight bytes
    assert inference.memory_bound_tokens_per_second(14e9, 3.35e12, batch=1, context_tokens=0, kv_bytes_per_token=kv) \
        == pytest.approx(3.35e12 / 14e9, rel=1e-12)
    assert inference.memory_bound_tokens_per_second(14e9, 3.35e12, context_tokens=4096) == pytest.approx(3.35e12 / 14e9)
    # with a cache every step also reads batch x context x KV bytes, so the bound is lower, by hand:
    with_cache = inference.memory_bound_tokens_per_second(14e9, 3.35e12, batch=32, context_tokens=4096, kv_bytes_per_token=kv)
    assert with_cache == pytest.approx(32 * 3.35e12 / (14e9 + 32 * 4096 * kv), rel=1e-12)
    assert with_cache < inference.memory_bound_tokens_per_second(14e9, 3.35e12, batch=32) / 2
    # a bigger batch still helps, but less than in proportion
    one = inference.memory_bound_tokens_per_second(14e9, 3.35e12, 1, 4096, kv)
    assert one < with_cache < 32 * one
    for bad in ({"context_tokens": -1}, {"kv_bytes_per_token": -1.0}):
        with pytest.raises(ValueError, match=">= 0"):
            inference.memory_bound_tokens_per_second(14e9, 3.35e12, **bad)


def test_fits_in_memory_counts_the_caches_of_the_whole_batch():
    llama2, mistral = inference.kv_bytes_per_token(32, 32, 128), inference.kv_bytes_per_token(32, 8, 128)
    t4, h100 = inference.DATASHEET_MEMORY["T4"], inference.DATASHEET_MEMORY["H100 SXM"]
    assert inference.fits_in_memory(14e9, t4)                                 # 14 GB of weights alone fit in 16 GB
    assert not inference.fits_in_memory(14e9, t4, 32, 4096, llama2)          # + 32 caches of 4,096 tokens: 83 GB
    assert not inference.fits_in_memory(14e9, h100, 32, 4096, llama2)        # ... not even on 80 GB
    assert inference.fits_in_memory(14e9, h100, 32, 4096, mistral)           # GQA: a quarter of the cache fits
    assert inference.memory_needed_bytes(14e9, 32, 4096, llama2) == 14e9 + 32 * 4096 * 524_288
    assert inference.fits_in_memory(26e9, 80e9, 1, 54e9, 1.0) and not inference.fits_in_memory(26e9, 80e9, 1, 54e9 + 1, 1.0)
    with pytest.raises(ValueError, match="positive memory"):
        inference.fits_in_memory(14e9, 0)


def test_int8_copy_keeps_the_outputs_close_shrinks_the_file_and_leaves_the_original_alone():
    model = tiny_gpt()
    tokens = torch.randint(0, 17, (2, 30), generator=torch.Generator().manual_seed(1))
    quantised = inference.int8_copy(model)
    assert isinstance(model.blocks[0].mlp.up, nn.Linear) and type(quantised.blocks[0].mlp.up) is not nn.Linear
    with torch.no_grad():
        before, after = model(tokens), quantised(tokens)
    assert ((after - before).norm() / before.norm()).item() < 0.05
    assert inference.saved_megabytes(quantised) < 0.5 * inference.saved_megabytes(model)
    # the int8 copy generates with the KV cache like the original
    assert generate(quantised, tokens[0, :5], 10, inference.GREEDY, use_cache=True).shape == (15,)


# --- the machine's roofs, and decoding a model larger than the caches ---------------------------------------


def test_read_bandwidth_is_measured_and_says_how():
    measured = inference.measure_read_bandwidth(megabytes=8, repeats=2)
    assert measured["bytes_per_second"] > 0 and measured["megabytes"] == pytest.approx(8, rel=1e-6)
    assert measured["bytes_per_second"] == pytest.approx(8e6 / measured["seconds"], rel=1e-9)
    assert "torch.sum" in measured["method"] and "8 MB" in measured["method"] and "thread" in measured["method"]
    for bad in ({"megabytes": 0}, {"repeats": 0}):
        with pytest.raises(ValueError, match="positive megabytes"):
            inference.measure_read_bandwidth(**bad)


def test_matmul_rate_is_positive_and_caches_are_read_where_linux_reports_them():
    assert inference.measure_matmul_flops(64, repeats=2) > 0
    with pytest.raises(ValueError, match="size >= 1"):
        inference.measure_matmul_flops(0)
    cache = inference.largest_cpu_cache_bytes()
    assert cache is None or cache >= 1024


def test_weight_bytes_count_a_tied_matrix_once_and_flops_per_token_by_hand():
    model = tiny_gpt()  # vocab 17, width 64, 2 layers, no biases, output tied to the embedding
    per_layer = 4 * 64 * 64 + 2 * 4 * 64 * 64 + 2 * 64                   # q, k, v, out; up and down; 2 LayerNorms
    parameters = 17 * 64 + 2 * per_layer + 64                             # embedding (= output layer), final norm
    assert model.parameter_count() == parameters
    assert inference.weight_bytes(model) == 4 * parameters
    assert inference.weight_bytes(model.to(torch.bfloat16)) == 2 * parameters
    # 2 operations per weight (the tied embedding is the output product) + 4 × layers × context × width
    assert inference.decode_flops_per_token(tiny_gpt(), 10) == 2 * parameters + 4 * 2 * 10 * 64


def test_prefilled_cache_holds_the_context_and_decodes_from_there():
    model = tiny_gpt()
    cache = inference.prefilled_cache(model, batch=2, context_tokens=5, max_tokens=8)
    assert cache.length == 5 and cache.keys.shape[1] == 2
    assert cache.keys[:, :, :, :5].abs().sum() > 0 and cache.keys[:, :, :, 5:].abs().sum() == 0
    with torch.no_grad():
        logits = model(torch.zeros(2, 1, dtype=torch.long), cache=cache)
    assert logits.shape == (2, 1, 17) and torch.isfinite(logits).all() and cache.length == 6
    with pytest.raises(ValueError, match="context_tokens < max_tokens"):
        inference.prefilled_cache(model, 1, 8, 8)


def test_decode_sweep_reports_each_batch_against_the_kv_aware_bound():
    model = tiny_gpt(context=40)
    rows = inference.decode_sweep(model, [1, 3], context_tokens=20, steps=3, repeats=2, bandwidth_megabytes=2)
    assert [row["batch"] for row in rows] == [1, 3]
    kv = inference.kv_bytes_per_token(2, 4, 16, 4)                          # float32 keys and values
    assert kv == 2 * 2 * 4 * 16 * 4 == 1024
    for row in rows:
        assert row["context_tokens"] == 20 + (3 + 1) / 2                   # steps attend over 21, 22 and 23 positions
        assert row["tokens_per_second"] == pytest.approx(row["batch"] * 1000 / row["ms_per_step"])
        by_hand = row["batch"] * row["bandwidth_bytes_per_second"] / (inference.weight_bytes(model)
                                                                          + row["batch"] * 22 * kv)
        assert row["kv_aware_bound"] == pytest.approx(by_hand, rel=1e-12)
        assert row["kv_aware_bound"] < row["weights_only_bound"]
        assert row["share_of_bound"] == pytest.approx(row["tokens_per_second"] / row["kv_aware_bound"])
    given = inference.decode_sweep(model, [1], 20, 1, 1, 2, model_bytes=1e6)[0]
    assert given["bytes_per_step"] == pytest.approx(1e6 + 21 * kv)
    with pytest.raises(ValueError, match="batch sizes >= 1"):
        inference.decode_sweep(model, [0], 20, 3)


def test_decode_in_turn_times_every_model_and_the_memory_read():
    models = {"float32": tiny_gpt(), "bfloat16": inference.bfloat16_copy(tiny_gpt())}
    timed = inference.decode_in_turn(models, context_tokens=8, steps=2, repeats=1, bandwidth_megabytes=2)
    assert set(timed["ms_per_step"]) == {"float32", "bfloat16"} and all(ms > 0 for ms in timed["ms_per_step"].values())
    assert timed["bandwidth_bytes_per_second"] > 0
    assert models["bfloat16"].token_embedding.weight.dtype == torch.bfloat16


def test_relative_logit_error_is_zero_for_the_same_model_and_small_for_bfloat16():
    model, tokens = tiny_gpt(), torch.randint(0, 17, (1, 12), generator=torch.Generator().manual_seed(2))
    assert inference.relative_logit_error(model, model, tokens) == 0
    assert 0 < inference.relative_logit_error(model, inference.bfloat16_copy(model), tokens) < 0.05


def test_torchao_weight_only_copies_hold_quantised_weights_or_refuse():
    pytest.importorskip("torchao")
    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=17, context=40, d_model=128, n_heads=4, n_layers=1, rotary=True, bias=False)).eval()
    tokens = torch.randint(0, 17, (1, 12), generator=torch.Generator().manual_seed(3))
    for bits, tolerance in ((8, 0.05), (4, 0.5)):
        quantised = inference.torchao_weight_only_copy(model, bits)
        assert type(quantised.blocks[0].mlp.up.weight) not in (torch.Tensor, nn.Parameter)
        assert type(model.blocks[0].mlp.up.weight) is nn.Parameter              # the original is untouched
        assert 0 < inference.relative_logit_error(model, quantised, tokens) < tolerance
    assert inference.saved_megabytes(inference.torchao_weight_only_copy(model, 8)) < 0.5 * inference.saved_megabytes(model)
    narrow = GPT(GPTConfig(vocab_size=17, context=40, d_model=96, n_heads=3, n_layers=1, rotary=True, bias=False))
    with pytest.raises(ValueError, match=r"unquantised at 4 bits with group_size 64: widths must be multiples"):
        inference.torchao_weight_only_copy(narrow, 4, group_size=64)              # torchao skips width 96 silently
    with pytest.raises(ValueError, match="bits must be 4 or 8"):
        inference.torchao_weight_only_copy(model, 2)


def test_without_torchao_the_copy_says_how_to_install_it(monkeypatch):
    import builtins

    real_import = builtins.__import__

    def no_torchao(name, *args, **kwargs):
        if name.startswith("torchao"):
            raise ImportError(f"No module named {name!r}")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_torchao)
    with pytest.raises(ImportError, match=r"pip install torchao==0\.18\.0") as raised:
        inference.torchao_weight_only_copy(tiny_gpt(), 8)
    assert "\n" not in str(raised.value)


def test_ms_per_token_and_speed_rows_measure_each_length():
    model = tiny_gpt()
    assert inference.ms_per_token(model, 4, 6, use_cache=True, repeats=1) > 0
    rows = inference.speed_rows(model, 4, [4, 8], repeats=1)
    assert [row["new_tokens"] for row in rows] == [4, 8]
    for row in rows:
        assert row["cache_ms"] > 0 and row["no_cache_ms"] > 0
        assert row["cache_speedup"] == pytest.approx(row["no_cache_ms"] / row["cache_ms"])


def test_time_in_turn_calls_each_candidate_in_turn_and_reports_medians():
    calls = []
    seconds = inference.time_in_turn({"a": lambda: calls.append("a"), "b": lambda: calls.append("b")}, torch.device("cpu"),
                                     repeats=3, warmup=1)
    assert calls == ["a", "b"] * 4 and set(seconds) == {"a", "b"} and all(value >= 0 for value in seconds.values())
    with pytest.raises(ValueError, match="repeats"):
        inference.time_in_turn({"a": lambda: None}, torch.device("cpu"), repeats=0)


def test_prefill_and_decode_report_both_phases_consistently():
    phases = inference.prefill_and_decode(tiny_gpt(), prompt_length=20, new_tokens=5, batch=3, repeats=2)
    assert set(phases) == {"prefill_ms", "decode_ms_per_step", "prompt_tokens_per_second", "generated_tokens_per_second"}
    assert all(value > 0 for value in phases.values())
    assert phases["prompt_tokens_per_second"] == pytest.approx(3 * 20 / (phases["prefill_ms"] / 1000))
    assert phases["generated_tokens_per_second"] == pytest.approx(3 / (phases["decode_ms_per_step"] / 1000))


def test_batch_throughput_has_one_row_per_batch_size():
    rows = inference.batch_throughput(tiny_gpt(), [1, 3], prompt_length=8, new_tokens=4, repeats=1)
    assert [row["batch"] for row in rows] == [1, 3]
    for row in rows:
        assert row["tokens_per_second"] == pytest.approx(row["batch"] * 1000 / row["ms_per_step"])


def test_continuation_log_probability_is_the_sum_of_the_next_token_log_probabilities():
    model = tiny_gpt()
    tokens = torch.tensor([3, 1, 4, 1, 5, 9, 2, 6])
    with torch.no_grad():
        log_probabilities = torch.log_softmax(model(tokens.view(1, -1)), dim=-1)[0]
    by_hand = sum(log_probabilities[t - 1, tokens[t]].item() for t in range(3, len(tokens)))
    assert inference.continuation_log_probability(model, tokens, 3) == pytest.approx(by_hand, abs=1e-5)
    assert inference.continuation_log_probability(model, tokens, len(tokens)) == 0
    with pytest.raises(ValueError, match="context"):
        inference.continuation_log_probability(model, torch.zeros(41, dtype=torch.long), 3)


# --- Lab 3's model: loaded only from a finished run of the same preset ---------------------------------------


@pytest.fixture(scope="module")
def corpus():
    return shakespeare_corpus()


def write_checkpoint(path, corpus, step=None, alphabet=None, **changed):
    """A checkpoint as Lab 3's smoke run writes it (random weights), with some of its record changed."""
    settings = lab_settings("03_pretraining", "smoke")
    model = GPT(model_config(settings, corpus.tokenizer.vocab_size))
    record = run_settings(settings, seed=0) | changed
    save_checkpoint(path, model, step=settings["steps"] if step is None else step,
                    metadata={"run_settings": record, "alphabet": alphabet or corpus.tokenizer.alphabet})
    return model


@pytest.fixture
def no_training(monkeypatch):
    """pretrain replaced by a stand-in that records that it was asked to train."""
    calls = []

    def pretend(settings, device, corpus, description=""):
        calls.append(settings)
        return GPT(model_config(settings, corpus.tokenizer.vocab_size)), History(eval_seconds=[2.0]), corpus

    monkeypatch.setattr("llmlab.pretraining.pretrain", pretend)
    return calls


def test_lab3_model_loads_the_checkpoint_of_a_finished_run_of_the_same_preset(tmp_path, corpus, no_training):
    saved = write_checkpoint(tmp_path / "checkpoint.safetensors", corpus, clip_norm=None)  # unset clip_norm means 1.0
    model, origin = inference.lab3_model("smoke", torch.device("cpu"), corpus, tmp_path / "checkpoint.safetensors")
    assert origin.startswith("loaded Lab 3's 'smoke' model") and not no_training
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), saved.state_dict().values()))


def test_lab3_model_loads_what_lab3s_own_training_wrote_with_a_recipe_beyond_gpt2s(tmp_path, corpus, monkeypatch):
    """The checkpoint comes from the real pretrain, with the recipe settings of the cpu preset (Muon, ReLU², ...): a
    record that Lab 5 reads differently from how Lab 3 writes it would make Lab 5 retrain Lab 3's model every time."""
    recipe = {key: value for key, value in lab_settings("03_pretraining", "cpu").items() if key in pretraining.RECIPE_DEFAULTS}
    settings = lab_settings("03_pretraining", "smoke") | recipe | {"steps": 4, "eval_every": 4, "eval_windows": 8}
    assert recipe["optimizer"] != pretraining.RECIPE_DEFAULTS["optimizer"], "the cpu preset no longer sets a recipe"
    path = tmp_path / "pretraining-smoke.safetensors"
    trained, _, _ = pretraining.pretrain(settings, torch.device("cpu"), corpus, checkpoint_path=path)
    monkeypatch.setattr(inference, "lab_settings", lambda lab, preset: settings)
    monkeypatch.setattr("llmlab.pretraining.pretrain", lambda *a, **k: pytest.fail("Lab 3's checkpoint was not loaded"))
    model, origin = inference.lab3_model("smoke", torch.device("cpu"), corpus, path)
    assert origin.startswith("loaded Lab 3's 'smoke' model"), origin
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), trained.state_dict().values()))


@pytest.mark.parametrize("record, reason", [
    pytest.param({"d_model": 128}, "was written with other settings (d_model 128 there, 32 here)", id="other-settings"),
    pytest.param({"step": 20}, "holds step 20 of 60, an unfinished run", id="unfinished"),
    pytest.param({"alphabet": "abc"}, "was trained on another alphabet", id="other-alphabet"),
    pytest.param(None, "there is no checkpoint at", id="missing"),
])
def test_lab3_model_trains_and_says_why_when_the_checkpoint_is_not_that_run(tmp_path, corpus, no_training, record, reason):
    path = tmp_path / "checkpoint.safetensors"
    if record is not None:
        write_checkpoint(path, corpus, **record)
    _, origin = inference.lab3_model("smoke", torch.device("cpu"), corpus, path)
    assert origin.startswith("trained Lab 3's 'smoke' model here (60 steps, 2 s) because") and reason in origin, origin
    assert no_training == [lab_settings("03_pretraining", "smoke")]


# --- Lab 4's classifier in int8 ------------------------------------------------------------------------------


def test_int8_intent_classifier_agrees_with_the_float_one_and_is_smaller():
    texts = ["Where is my new card?", "My card has not arrived", "When does the card come?",
             "I want a refund", "Please return my money", "Refund this payment"]
    classifier = intents.train_intent_classifier(texts, [0, 0, 0, 1, 1, 1], ["card_arrival", "request_refund"], "frozen", device="cpu")
    quantised = inference.int8_intent_classifier(classifier)
    queries = ["has my card shipped yet", "give me my money back"]
    assert [intent for intent, _ in quantised.predict(queries)] == [intent for intent, _ in classifier.predict(queries)]
    assert inference.saved_megabytes(quantised.model) < 0.8 * inference.saved_megabytes(classifier.model)
    assert isinstance(classifier.model.head, nn.Linear)  # the original keeps its float head


# --- the benchmark --------------------------------------------------------------------------------------------


def test_benchmark_prints_its_table_and_matches_hugging_face_on_the_smoke_preset(capsys):
    report = inference.benchmark("smoke")
    printed = capsys.readouterr().out
    assert "bench generate | preset smoke |" in printed and "cache ms/token" in printed and "HF generate ms/token" in printed
    assert json.loads(printed.strip().splitlines()[-1]) == json.loads(json.dumps(report))
    assert [row["new_tokens"] for row in report["rows"]] == lab_settings("05_inference", "smoke")["bench_new_tokens"]
    assert all(row["same_tokens_as_hf"] for row in report["rows"])
