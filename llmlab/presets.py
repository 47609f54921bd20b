"""Every lab's settings for the three presets, as plain data.

smoke: seconds, what CI runs (checks that the code works, not that it learns much).
cpu:   a few minutes on a 2-core laptop; the committed solution outputs come from it.
gpu:   a free Colab T4 (16 GB), sized with headroom; minutes, not hours.
"""

LAB_PRESETS: dict[str, dict[str, dict]] = {
    "06_business": {
        # pool_per_intent None = the whole training split (minus the validation set) is the pool of
        # known, labelled questions; test_size None = the whole test split.
        "smoke": dict(
            validation_per_intent=2, pool_per_intent=10, test_size=300, max_wrong_answer_rate=0.02,
            evidence_count=3, flywheel_start_per_intent=2, flywheel_months=3, flywheel_messages_per_month=150,
        ),
        "cpu": dict(
            validation_per_intent=10, pool_per_intent=None, test_size=None, max_wrong_answer_rate=0.02,
            evidence_count=3, flywheel_start_per_intent=2, flywheel_months=8, flywheel_messages_per_month=1000,
        ),
        "gpu": dict(
            validation_per_intent=10, pool_per_intent=None, test_size=None, max_wrong_answer_rate=0.02,
            evidence_count=3, flywheel_start_per_intent=2, flywheel_months=8, flywheel_messages_per_month=1000,
        ),
    },
    "04_fine_tuning": {
        # train_per_intent / test_size None = the full BANKING77 split; curve None = all examples
        "smoke": dict(
            train_per_intent=5, test_size=200, tfidf_C=10.0, curve_per_intent=[2, 5], curve_seeds=1,
            frozen_settings=dict(C=20.0, max_length=32),
            finetune_settings=dict(epochs=1, batch_size=32, learning_rate=1e-4, head_learning_rate=3e-3, max_length=32),
            lora_settings=dict(epochs=1, batch_size=32, learning_rate=2e-3, head_learning_rate=3e-3, max_length=32,
                               lora_r=8, lora_alpha=16, lora_dropout=0.0),
            bench_recipe="frozen",
        ),
        "cpu": dict(
            train_per_intent=None, test_size=None, tfidf_C=10.0, curve_per_intent=[5, 10, 25, 50, None], curve_seeds=3,
            frozen_settings=dict(C=20.0, max_length=64),
            finetune_settings=dict(epochs=2, batch_size=32, learning_rate=1e-4, head_learning_rate=3e-3, max_length=64),
            lora_settings=dict(epochs=2, batch_size=32, learning_rate=2e-3, head_learning_rate=3e-3, max_length=64,
                               lora_r=8, lora_alpha=16, lora_dropout=0.0),
            bench_recipe="frozen",
        ),
        "gpu": dict(
            train_per_intent=None, test_size=None, tfidf_C=10.0, curve_per_intent=[5, 10, 25, 50, None], curve_seeds=3,
            frozen_settings=dict(C=20.0, max_length=64),
            finetune_settings=dict(epochs=8, batch_size=32, learning_rate=1e-4, head_learning_rate=3e-3, max_length=64),
            lora_settings=dict(epochs=8, batch_size=32, learning_rate=2e-3, head_learning_rate=3e-3, max_length=64,
                               lora_r=8, lora_alpha=16, lora_dropout=0.1),
            bench_recipe="finetune",
        ),
    },
    "03_pretraining": {
        "smoke": dict(
            context=32, d_model=32, n_heads=2, n_layers=2, dropout=0.0, rotary=True, bias=False,
            batch_size=16, steps=60, learning_rate=3e-3, warmup_steps=10, weight_decay=0.1, betas=[0.9, 0.99],
            eval_every=20, eval_windows=64, checkpoint_every=20,
            sample_characters=120, resume_demo_steps=30,
            scaling_sizes=[[16, 1], [32, 2], [48, 2]], scaling_steps=40,
        ),
        # Same width as nanoGPT's CPU "baby GPT" (128 channels, context 64), one layer fewer, rotary
        # positions, 32-window batches and a higher peak learning rate: see Chapter 3, "A recipe for a laptop".
        "cpu": dict(
            context=64, d_model=128, n_heads=4, n_layers=3, dropout=0.0, rotary=True, bias=False,
            batch_size=32, steps=600, learning_rate=5e-3, warmup_steps=30, weight_decay=0.1, betas=[0.9, 0.99],
            eval_every=25, eval_windows=300, checkpoint_every=100,
            sample_characters=500, resume_demo_steps=60,
            scaling_sizes=[[32, 2], [64, 3], [128, 3]], scaling_steps=300,
        ),
        # nanoGPT's shakespeare_char configuration (its README: val loss 1.4697 on an A100), with rotary
        # positions as in the cpu preset; about 10.7M parameters, well within a T4's 16 GB in fp16.
        "gpu": dict(
            context=256, d_model=384, n_heads=6, n_layers=6, dropout=0.2, rotary=True, bias=False,
            batch_size=64, steps=5000, learning_rate=1e-3, warmup_steps=100, weight_decay=0.1, betas=[0.9, 0.99],
            eval_every=250, eval_windows=1024, checkpoint_every=500,
            sample_characters=1000, resume_demo_steps=200,
            scaling_sizes=[[96, 3], [192, 4], [384, 6]], scaling_steps=1000,
        ),
    },
    "01_what_is_an_llm": {
        "smoke": dict(
            text_characters=60_000, bpe_vocab_sizes=[300, 500, 1000], banking_train=300, banking_test=100, knn_k=5,
            bigram_steps=60, mlp_steps=100, mlp_context=8, mlp_embedding=16, mlp_hidden=64,
            batch_size=64, bigram_learning_rate=0.1, mlp_learning_rate=3e-3, eval_every=50, sample_length=120,
        ),
        "cpu": dict(
            text_characters=None, bpe_vocab_sizes=[300, 500, 1000, 2000, 4000, 8000], banking_train=None, banking_test=None, knn_k=10,
            bigram_steps=1500, mlp_steps=6000, mlp_context=12, mlp_embedding=32, mlp_hidden=512,
            batch_size=256, bigram_learning_rate=0.1, mlp_learning_rate=3e-3, eval_every=500, sample_length=400,
        ),
        "gpu": dict(
            text_characters=None, bpe_vocab_sizes=[300, 500, 1000, 2000, 4000, 8000, 16000], banking_train=None, banking_test=None, knn_k=10,
            bigram_steps=1500, mlp_steps=10000, mlp_context=16, mlp_embedding=48, mlp_hidden=1024,
            batch_size=1024, bigram_learning_rate=0.1, mlp_learning_rate=2e-3, eval_every=500, sample_length=400,
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
}
