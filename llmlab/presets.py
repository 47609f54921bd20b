"""Every lab's settings for the three presets, as plain data.

smoke: seconds, what CI runs (checks that the code works, not that it learns much).
cpu:   a few minutes on a 2-core laptop; the committed solution outputs come from it.
gpu:   a free Colab T4 (16 GB), sized with headroom; minutes, not hours.

``lab_settings(lab, preset)`` is how every lab, benchmark and test reads them: an unknown lab or
preset is a one-line error that lists the valid names.
"""

from __future__ import annotations

PRESET_NAMES = ("smoke", "cpu", "gpu")
PRESET_HELP = "smoke = seconds (what the tests run), cpu = a few minutes on a laptop, gpu = a Colab T4"


def check_preset(name: str) -> str:
    """``name`` if it is a preset, else a one-line ValueError naming the valid ones."""
    if name not in PRESET_NAMES:
        raise ValueError(f"unknown preset {name!r}; valid presets: {', '.join(PRESET_NAMES)} ({PRESET_HELP})")
    return name


def lab_settings(lab: str, preset: str) -> dict:
    """A copy of one lab's settings for one preset."""
    if lab not in LAB_PRESETS:
        raise KeyError(f"no presets for lab {lab!r}; labs with presets: {', '.join(sorted(LAB_PRESETS))}")
    return dict(LAB_PRESETS[lab][check_preset(preset)])


# A candidate laptop recipe for Lab 4 (top_layers_settings): the top layers and the head fine-tuned on
# cached outputs of the frozen lower layers, the head started from the linear probe, label smoothing.
# Set on the lab's validation split (10 % of the training data), where it tied the frozen recipe, so
# the cpu benchmark keeps the cheaper frozen recipe.
_LAB4_TOP_LAYERS = dict(
    epochs=3, batch_size=32, learning_rate=1e-4, head_learning_rate=1e-3, max_length=128, dropout=0.1,
    train_layers=2, cache_lower_layers=True, head_init="linear_probe", normalize=True, label_smoothing=0.1,
)

LAB_PRESETS: dict[str, dict[str, dict]] = {
    "04b_instruction_tuning": {
        # base_model: a Hugging Face Hub name (gpu), or None for the decoder the lab builds itself: a byte-level BPE of
        # vocab_size tokens and a Llama-shaped model (d_model, d_ff, n_layers, n_heads) pretrained for pretrain_steps
        # on windows of `context` tokens of plain text: BANKING77's messages and the training dialogs as transcripts
        # (instruct_training.pretraining_text; pretrain_characters None = all of it). dialogs None = all 3,710.
        # max_length: the longest conversation trained on (longer ones are skipped and counted, never cut).
        # test_pairs_per_reply: held-out preference pairs made of each reply that names an ordered item, each with another
        # swapped-in item (the test dialogs have about 90 such replies; DPO's effect needs more pairs than that to show).
        # cpu_threads: the torch threads on a CPU (None = torch's default); one thread keeps a small model's steps steady
        # on a 2-core machine that also runs other work, where two threads wait on each other (as in Lab 5).
        "smoke": dict(
            cpu_threads=1, base_model=None, vocab_size=600, d_model=32, d_ff=86, n_layers=1, n_heads=2, context=64,
            pretrain_steps=20, pretrain_batch_size=8, pretrain_learning_rate=3e-3, pretrain_eval_every=10,
            pretrain_characters=None, dialogs=300, validation_fraction=0.05, test_fraction=0.1, max_length=256,
            sft_batch_size=16, sft_micro_batch_size=16, gradient_checkpointing=False,
            sft_epochs=1, learning_rate=1e-3, lora_learning_rate=3e-3, sft_log_every=5, sft_save_every=10,
            lora_r=4, lora_alpha=8, lora_dropout=0.0,
            dpo_batch_size=4, dpo_micro_batch_size=4, dpo_steps=5, dpo_beta=0.1, dpo_learning_rate=1e-3,
            eval_batch_size=32, generate_batch_size=32, max_new_tokens=16, test_pairs_per_reply=2, fp32_only=False,
        ),
        # The cpu learning rates of LoRA and DPO were picked on the validation dialogs when the lab was built: LoRA 1e-2
        # had a lower validation loss than 3e-3; DPO 2e-4 sits between 1e-4 (hardly moved the model) and 3e-4 (raised the
        # SFT model's validation loss the most, for a larger preference margin).
        "cpu": dict(
            cpu_threads=1, base_model=None, vocab_size=2048, d_model=128, d_ff=344, n_layers=4, n_heads=4, context=128,
            pretrain_steps=300, pretrain_batch_size=32, pretrain_learning_rate=3e-3, pretrain_eval_every=25,
            pretrain_characters=None, dialogs=None, validation_fraction=0.05, test_fraction=0.15, max_length=256,
            sft_batch_size=32, sft_micro_batch_size=32, gradient_checkpointing=False,
            sft_epochs=1, learning_rate=1e-3, lora_learning_rate=1e-2, sft_log_every=10, sft_save_every=50,
            lora_r=16, lora_alpha=32, lora_dropout=0.0,
            dpo_batch_size=16, dpo_micro_batch_size=16, dpo_steps=60, dpo_beta=0.1, dpo_learning_rate=2e-4,
            eval_batch_size=64, generate_batch_size=64, max_new_tokens=40, test_pairs_per_reply=4, fp32_only=False,
        ),
        # Qwen2.5-0.5B (base, 0.49B parameters, Apache-2.0) ships ChatML's chat template and tokens. In float32 each copy
        # of it takes 1.8 GiB, and the notebook keeps every model it makes on the GPU (base, full SFT, LoRA SFT, DPO);
        # full fine-tuning adds gradients and AdamW (5.5 GiB). Its vocabulary has 151,936 tokens: one 384-token
        # conversation has 58M logits, 223 MiB in float32, and the loss's backward holds three such tensors at once. So,
        # to fit a T4 (llmlab.memory estimates each part): micro-batches whose gradients add up to the same optimiser
        # batches (sft_batch_size 16, dpo_batch_size 8 pairs), gradient checkpointing, and evaluation 2 conversations at a time.
        # smoke and cpu run whole batches (micro-batch = batch) without checkpointing, as before.
        # Greedy generation holds one position's logits per row, not a conversation's, so it runs 32 prompts per call
        # (left-padded): 33 `generate` calls per model for the 1,050 test replies instead of 525 at eval_batch_size.
        # fp32_only: Qwen2 models overflow float16 (activations beyond its 65,504 turn into inf and NaN) and a T4 has no
        # fast bfloat16, so every step runs in float32 there, not under fp16 autocast.
        "gpu": dict(
            cpu_threads=None, base_model="Qwen/Qwen2.5-0.5B", dialogs=None, validation_fraction=0.05, test_fraction=0.15, max_length=384,
            # The model is loaded, not built: nothing to size or pretrain (None, so every preset has the same keys).
            vocab_size=None, d_model=None, d_ff=None, n_layers=None, n_heads=None, context=None, pretrain_steps=None,
            pretrain_batch_size=None, pretrain_learning_rate=None, pretrain_eval_every=None, pretrain_characters=None,
            sft_batch_size=16, sft_micro_batch_size=1, gradient_checkpointing=True,
            sft_epochs=1, learning_rate=2e-5, lora_learning_rate=2e-4, sft_log_every=10, sft_save_every=50,
            lora_r=16, lora_alpha=32, lora_dropout=0.05,
            dpo_batch_size=8, dpo_micro_batch_size=1, dpo_steps=100, dpo_beta=0.1, dpo_learning_rate=2e-5,
            eval_batch_size=2, generate_batch_size=32, max_new_tokens=48, test_pairs_per_reply=4, fp32_only=True,
        ),
    },
    "05_inference": {
        # Lab 5 generates with Lab 3's model of the same preset. speed_*: ms/token against the number of
        # generated tokens on a random GPT of that width with a longer context; prefill_*: the two phases
        # timed apart (same model); batch_*: throughput of Lab 3's model against the batch size;
        # int8_*: the validation characters and generated tokens that int8 is measured on (on the CPU);
        # classifier_*: Lab 4's intent classifier if none was saved (None = the whole split).
        # cpu_threads: the torch threads the lab times with on a CPU (None = torch's default).
        # bench_*: the model `python -m llmlab.bench generate` times (random weights: speed does not depend on them).
        # large_*: a random GPT whose weights are far larger than the caches (cpu: 403 MB in float32), timed at batch 1
        # and against the batch with large_context positions in each text's cache; bandwidth_megabytes: the array summed
        # to measure the memory bandwidth; matmul_size: the square matrix product that measures the arithmetic rate;
        # quant_*: the decode steps that time its float32, bfloat16, int8 and int4 copies (on the CPU).
        "smoke": dict(
            cpu_threads=1, sample_characters=40, beam_width=3, beam_tokens=12, exercise_tokens=16,
            speed_prompt=8, speed_lengths=[8, 16], speed_repeats=1,
            prefill_prompts=[16], prefill_new_tokens=4, prefill_repeats=1,
            batch_sizes=[1, 2, 4], batch_prompt=8, batch_new_tokens=8, batch_repeats=1,
            int8_val_characters=2_000, int8_latency_tokens=8, int8_repeats=1,
            classifier_train_per_intent=3, classifier_test_size=150, classifier_latency_texts=16,
            bench_vocab=65, bench_d_model=64, bench_heads=4, bench_layers=2, bench_prompt=16, bench_new_tokens=[16, 32],
            bench_repeats=1,
            large_d_model=128, large_heads=4, large_layers=2, large_context=16, large_batches=[1, 2], large_steps=2,
            large_repeats=1, bandwidth_megabytes=4, matmul_size=128, quant_steps=2, quant_repeats=1,
        ),
        "cpu": dict(
            cpu_threads=1, sample_characters=200, beam_width=4, beam_tokens=30, exercise_tokens=40,
            speed_prompt=16, speed_lengths=[32, 128, 512, 1024], speed_repeats=2,
            prefill_prompts=[64, 256, 1024], prefill_new_tokens=32, prefill_repeats=3,
            batch_sizes=[1, 4, 16, 64, 256], batch_prompt=16, batch_new_tokens=32, batch_repeats=2,
            int8_val_characters=20_000, int8_latency_tokens=32, int8_repeats=3,
            classifier_train_per_intent=None, classifier_test_size=None, classifier_latency_texts=64,
            bench_vocab=65, bench_d_model=128, bench_heads=4, bench_layers=3, bench_prompt=16, bench_new_tokens=[64, 256, 512, 1024],
            bench_repeats=3,
            large_d_model=1024, large_heads=16, large_layers=8, large_context=512, large_batches=[1, 2, 4, 8, 16, 32],
            large_steps=4, large_repeats=3, bandwidth_megabytes=512, matmul_size=1024, quant_steps=8, quant_repeats=3,
        ),
        "gpu": dict(
            cpu_threads=None, sample_characters=400, beam_width=4, beam_tokens=60, exercise_tokens=100,
            speed_prompt=16, speed_lengths=[64, 256, 512, 1024], speed_repeats=3,
            prefill_prompts=[256, 1024], prefill_new_tokens=64, prefill_repeats=5,
            batch_sizes=[1, 4, 16, 64, 256], batch_prompt=32, batch_new_tokens=64, batch_repeats=3,
            int8_val_characters=8_000, int8_latency_tokens=48, int8_repeats=3,
            classifier_train_per_intent=None, classifier_test_size=None, classifier_latency_texts=64,
            bench_vocab=65, bench_d_model=384, bench_heads=6, bench_layers=6, bench_prompt=16, bench_new_tokens=[64, 256, 512, 1024],
            bench_repeats=3,
            # 1.6 GB of float32 weights: 5 ms a step to read them at a T4's datasheet 320 GB/s
            large_d_model=2048, large_heads=16, large_layers=8, large_context=1024, large_batches=[1, 4, 16, 32, 64],
            large_steps=8, large_repeats=3, bandwidth_megabytes=2000, matmul_size=4096, quant_steps=4, quant_repeats=3,
        ),
    },
    "06_business": {
        # pool_per_intent None = the whole training split (minus the validation set) is the pool of
        # known, labelled questions; test_size None = the whole test split.
        # validation_per_intent: the threshold is chosen so that the upper end of the 95 % Wilson interval of the
        # validation wrong-answer rate stays under the cap, and that needs room: 770 messages (10 per intent) allow
        # at most 7 wrong answers under a 2 % cap (0.9 %), 1,540 (20 per intent) allow 20 (1.3 %). They come out of
        # the pool: 770 fewer known questions, and BANKING77's smallest intent (35 training messages) keeps 15.
        # Lab 6 prints the table for 10, 20 and 30. Below about 190 messages not even 0 wrong answers is allowed.
        "smoke": dict(
            validation_per_intent=3, pool_per_intent=10, test_size=300, max_wrong_answer_rate=0.02,
            evidence_count=3, flywheel_start_per_intent=2, flywheel_months=3, flywheel_messages_per_month=150,
            flywheel_wrong_answers_reported=0.5, flywheel_label_error_rate=0.1,
        ),
        "cpu": dict(
            validation_per_intent=20, pool_per_intent=None, test_size=None, max_wrong_answer_rate=0.02,
            evidence_count=3, flywheel_start_per_intent=2, flywheel_months=8, flywheel_messages_per_month=1000,
            flywheel_wrong_answers_reported=0.5, flywheel_label_error_rate=0.1,
        ),
        "gpu": dict(
            validation_per_intent=20, pool_per_intent=None, test_size=None, max_wrong_answer_rate=0.02,
            evidence_count=3, flywheel_start_per_intent=2, flywheel_months=8, flywheel_messages_per_month=1000,
            flywheel_wrong_answers_reported=0.5, flywheel_label_error_rate=0.1,
        ),
    },
    "04_fine_tuning": {
        # train_per_intent / test_size None = the full BANKING77 split; curve None = all examples. bench_recipe
        # "frozen+tfidf": the frozen recipe and a TF-IDF classifier blended (llmlab.intents.train_blended_classifier).
        "smoke": dict(
            train_per_intent=4, test_size=100, tfidf_C=10.0, curve_per_intent=[2, 4], curve_seeds=1,
            frozen_settings=dict(C=20.0),
            finetune_settings=dict(epochs=1, batch_size=32, learning_rate=1e-4, head_learning_rate=3e-3, max_length=32),
            lora_settings=dict(epochs=1, batch_size=32, learning_rate=2e-3, head_learning_rate=3e-3, max_length=32,
                               lora_r=8, lora_alpha=16, lora_dropout=0.0),
            top_layers_settings=dict(_LAB4_TOP_LAYERS, epochs=1, max_length=32, train_layers=1),
            bench_recipe="frozen+tfidf", bench_settings=dict(C=20.0, tfidf_C=10.0),
        ),
        "cpu": dict(
            train_per_intent=None, test_size=None, tfidf_C=10.0, curve_per_intent=[5, 10, 25, 50, None], curve_seeds=3,
            frozen_settings=dict(C=20.0),
            finetune_settings=dict(epochs=2, batch_size=32, learning_rate=1e-4, head_learning_rate=3e-3, max_length=64),
            lora_settings=dict(epochs=2, batch_size=32, learning_rate=2e-3, head_learning_rate=3e-3, max_length=64,
                               lora_r=8, lora_alpha=16, lora_dropout=0.0),
            top_layers_settings=_LAB4_TOP_LAYERS,
            bench_recipe="frozen+tfidf", bench_settings=dict(C=20.0, tfidf_C=10.0),
        ),
        "gpu": dict(
            train_per_intent=None, test_size=None, tfidf_C=10.0, curve_per_intent=[5, 10, 25, 50, None], curve_seeds=3,
            frozen_settings=dict(C=20.0),
            finetune_settings=dict(epochs=8, batch_size=32, learning_rate=1e-4, head_learning_rate=3e-3, max_length=64),
            lora_settings=dict(epochs=8, batch_size=32, learning_rate=2e-3, head_learning_rate=3e-3, max_length=64,
                               lora_r=8, lora_alpha=16, lora_dropout=0.1),
            top_layers_settings=_LAB4_TOP_LAYERS,
            bench_recipe="finetune",
            bench_settings=dict(epochs=8, batch_size=32, learning_rate=1e-4, head_learning_rate=3e-3, max_length=64),
        ),
    },
    "03_pretraining": {
        # scaling_sizes are [d_model, n_layers] (one head per 32 channels), each trained at every budget of
        # scaling_budgets (training FLOPs, 6·N·D): at the cpu preset the study took 166 s on a 2-core CPU.
        "smoke": dict(
            context=64, d_model=32, n_heads=2, n_layers=2, dropout=0.0, rotary=True, bias=False,
            batch_size=16, steps=60, learning_rate=3e-3, warmup_steps=10, weight_decay=0.1, betas=[0.9, 0.99], clip_norm=1.0,
            optimizer="muon", muon_learning_rate=0.02, muon_weight_decay=0.1, activation="relu2", tie_weights=False, zero_init_projections=True,
            logit_softcap=15.0, schedule="trapezoidal", decay_fraction=0.4, floor_ratio=0.0,
            eval_every=20, eval_windows=64, checkpoint_every=20,
            sample_characters=120, resume_demo_steps=30, step_check_steps=10, ablation_steps=8,
            scaling_sizes=[[16, 1], [24, 1], [32, 1], [48, 1]], scaling_budgets=[2.5e8, 5e8, 1e9],
            baseline=dict(steps=60, warmup_steps=10, batch_size=16, learning_rate=3e-3),
        ),
        # Same width as nanoGPT's CPU "baby GPT" (128 channels, context 64), one layer fewer, rotary
        # positions, 32-window batches, Muon, ReLU², an untied zero-initialised output layer, soft-capped
        # logits and a trapezoidal schedule to zero: see Chapter 3, "A recipe for a laptop". `baseline` is
        # GPT-2's recipe as this preset trained it before (600 steps): the isoFLOP study and the ablation's first row.
        # muon_learning_rate 0.015, not the 0.02 used before: measured on the validation windows with one thread (7 Dec
        # 2026), 0.015 reached 1.88 at step 300 instead of 375 and was lower at each step compared, 300 to 1,100 (1.652 against
        # 1.671 at step 1,000); 0.03 was worse (step 450); 0.01 also reached it at step 300 and was lower still at steps
        # 400-475, but was not run to the end, so the smaller change was kept.
        "cpu": dict(
            context=64, d_model=128, n_heads=4, n_layers=3, dropout=0.0, rotary=True, bias=False,
            batch_size=32, steps=1200, learning_rate=5e-3, warmup_steps=30, weight_decay=0.1, betas=[0.9, 0.99], clip_norm=1.0,
            optimizer="muon", muon_learning_rate=0.015, muon_weight_decay=0.1, activation="relu2", tie_weights=False, zero_init_projections=True,
            logit_softcap=15.0, schedule="trapezoidal", decay_fraction=0.4, floor_ratio=0.0,
            eval_every=25, eval_windows=300, checkpoint_every=250,
            sample_characters=500, resume_demo_steps=60, step_check_steps=40, ablation_steps=300,
            # Three budgets and 300-step ablation runs keep the lab under 10 minutes on 2 cores (with a 4e11 budget
            # and 400 steps it took 732 s): the 4e11 budget alone was 124 s of tiny models, each step mostly overhead.
            scaling_sizes=[[16, 1], [16, 2], [24, 2], [32, 2], [48, 2]], scaling_budgets=[5e10, 1e11, 2e11],
            baseline=dict(steps=600, warmup_steps=30, batch_size=32, learning_rate=5e-3),
        ),
        # nanoGPT's shakespeare_char configuration (its README: val loss 1.4697 on an A100), with rotary
        # positions as in the cpu preset; about 10.7M parameters, well within a T4's 16 GB in fp16.
        "gpu": dict(
            context=256, d_model=384, n_heads=6, n_layers=6, dropout=0.2, rotary=True, bias=False,
            batch_size=64, steps=5000, learning_rate=1e-3, warmup_steps=100, weight_decay=0.1, betas=[0.9, 0.99], clip_norm=1.0,
            # GPT-2's recipe (llmlab.pretraining.RECIPE_DEFAULTS), spelled out: the speedrun's changes were measured on
            # the cpu preset only, and no gpu run has tested them yet. No ablation here (ablation_steps=None), and
            # the baseline is the preset itself.
            optimizer="adamw", muon_learning_rate=None, muon_weight_decay=0.0, activation="gelu", tie_weights=True,
            zero_init_projections=False, logit_softcap=None, schedule="cosine", decay_fraction=None, floor_ratio=0.1,
            eval_every=250, eval_windows=1024, checkpoint_every=500,
            sample_characters=1000, resume_demo_steps=200, step_check_steps=100, ablation_steps=None,
            scaling_sizes=[[32, 2], [48, 2], [64, 2], [96, 3], [128, 3], [192, 4]], scaling_budgets=[3e12, 1e13, 3e13],
            baseline=dict(),
        ),
    },
    "01_what_is_an_llm": {
        # batch_size windows of `window` characters per step; every position of a window is a prediction.
        "smoke": dict(
            characters=60_000, bpe_vocab_sizes=[300, 500, 1000], banking_train=300, banking_test=100, knn_k=5,
            bigram_steps=60, mlp_steps=100, mlp_context=8, mlp_embedding=16, mlp_hidden=64,
            batch_size=8, window=32, bigram_learning_rate=0.1, mlp_learning_rate=3e-3, eval_every=50, sample_length=120,
        ),
        "cpu": dict(
            characters=None, bpe_vocab_sizes=[300, 500, 1000, 2000, 4000, 8000], banking_train=None, banking_test=None, knn_k=10,
            bigram_steps=1500, mlp_steps=4000, mlp_context=12, mlp_embedding=32, mlp_hidden=512,
            batch_size=16, window=64, bigram_learning_rate=0.1, mlp_learning_rate=3e-3, eval_every=500, sample_length=400,
        ),
        "gpu": dict(
            characters=None, bpe_vocab_sizes=[300, 500, 1000, 2000, 4000, 8000, 16000], banking_train=None, banking_test=None, knn_k=10,
            bigram_steps=1500, mlp_steps=10000, mlp_context=16, mlp_embedding=48, mlp_hidden=1024,
            batch_size=64, window=64, bigram_learning_rate=0.1, mlp_learning_rate=2e-3, eval_every=500, sample_length=400,
        ),
    },
    "02_attention": {
        "smoke": dict(
            timing_lengths=[64, 128, 256], timing_d_head=64, timing_repeats=3,
            sequence_length=6, d_model=32, n_heads=4, n_layers=2,
            train_steps=120, batch_size=32, learning_rate=3e-3, eval_every=40,
        ),
        "cpu": dict(
            timing_lengths=[128, 256, 512, 1024, 2048], timing_d_head=64, timing_repeats=5,
            sequence_length=16, d_model=64, n_heads=4, n_layers=2,
            train_steps=1500, batch_size=64, learning_rate=3e-3, eval_every=100,
        ),
        "gpu": dict(
            timing_lengths=[512, 1024, 2048, 4096, 8192], timing_d_head=64, timing_repeats=10,
            sequence_length=32, d_model=128, n_heads=4, n_layers=2,
            train_steps=3000, batch_size=256, learning_rate=2e-3, eval_every=200,
        ),
    },
    "07_building_on_a_model": {
        # CLAP NQ: tuning_split questions (half answerable) choose everything, the rest only evaluate; tuning/test_questions
        # take the first N of each (None: all); corpus_passages None = all 597 passages, else the questions' gold passages
        # plus others up to N. chunk_grid: (words, overlap) pairs tried on tuning questions, None = whole passages.
        # index_distractors: Tiny Shakespeare lines and BANKING77 messages added to the vector index (Part 5).
        # help_centre_messages: BANKING77 test messages searching Lab 6's 77 answer articles (Part 3); None = all 3,080.
        # order_*: the structured-output experiment (llmlab.structured.ORDER_DEFAULTS). generator: the gpu preset's Hub
        # instruction model, which also judges; None = extractive answers only (no generative model offline).
        "smoke": dict(
            tuning_split=200, split_seed=0, tuning_questions=10, test_questions=20, corpus_passages=40, k=5,
            method="dense", depth=50, chunk_grid=[(None, 0), (60, 15)], answer_sentences_grid=[1, 2],
            recall_ks=[1, 5], help_centre_messages=60, resamples=1000, gate_method="hybrid", gate_margin=0.02, injection_targets=2,
            permission_tenants=4, permission_users=50,
            index_distractors=300, ef_values=[16, 64], hnsw_links=16, hnsw_ef_construction=40,
            order_dialogs=150, order_steps=10, order_curve_steps=[], order_curve_examples=8, order_max_new_tokens=48,
            order_generate_batch_size=64, order_library=False, cpu_threads=None,
            serve_concurrencies=[1, 4], serve_requests=16, serve_max_batch=8, serve_max_wait_ms=5.0,
            serve_overload_concurrency=16, serve_overload_queue=2,
            generator=None, max_new_tokens=96, generation_batch_size=8, judge_items=20, judge_label_margin=0.2,
        ),
        "cpu": dict(
            tuning_split=200, split_seed=0, tuning_questions=None, test_questions=None, corpus_passages=None, k=5,
            method="dense", depth=50, chunk_grid=[(None, 0), (60, 15), (100, 20), (150, 30)],
            answer_sentences_grid=[1, 2, 3], recall_ks=[1, 5, 10], help_centre_messages=None, resamples=10_000, gate_method="hybrid",
            gate_margin=0.02, injection_targets=40, permission_tenants=5, permission_users=500,
            index_distractors=30_000, ef_values=[16, 32, 64, 128, 256], hnsw_links=32, hnsw_ef_construction=200,
            order_dialogs=None, order_steps=500, order_curve_steps=[25, 50, 100, 200], order_curve_examples=100,
            order_max_new_tokens=None, order_generate_batch_size=64, order_library=False, cpu_threads=None,
            serve_concurrencies=[1, 8, 32], serve_requests=200, serve_max_batch=32, serve_max_wait_ms=5.0,
            serve_overload_concurrency=64, serve_overload_queue=16,
            generator=None, max_new_tokens=96, generation_batch_size=8, judge_items=100, judge_label_margin=0.2,
        ),
        "gpu": dict(
            tuning_split=200, split_seed=0, tuning_questions=None, test_questions=None, corpus_passages=None, k=5,
            method="dense", depth=50, chunk_grid=[(None, 0), (60, 15), (100, 20), (150, 30)],
            answer_sentences_grid=[1, 2, 3], recall_ks=[1, 5, 10], help_centre_messages=None, resamples=10_000, gate_method="hybrid",
            gate_margin=0.02, injection_targets=40, permission_tenants=5, permission_users=500,
            index_distractors=30_000, ef_values=[16, 32, 64, 128, 256], hnsw_links=32, hnsw_ef_construction=200,
            order_dialogs=None, order_steps=500, order_curve_steps=[25, 50, 100, 200], order_curve_examples=100,
            order_max_new_tokens=None, order_generate_batch_size=64, order_library=True, cpu_threads=None,
            serve_concurrencies=[1, 8, 32], serve_requests=200, serve_max_batch=32, serve_max_wait_ms=5.0,
            serve_overload_concurrency=64, serve_overload_queue=16,
            generator="Qwen/Qwen2.5-1.5B-Instruct", max_new_tokens=128, generation_batch_size=8, judge_items=100,
            judge_label_margin=0.2,
        ),
    },
}
