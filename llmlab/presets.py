"""Every lab's settings for the three presets, as plain data.

smoke: seconds, what CI runs (checks that the code works, not that it learns much).
cpu:   a few minutes on a 2-core laptop; the committed solution outputs come from it.
gpu:   a free Colab T4 (16 GB), sized with headroom; minutes, not hours.
"""

LAB_PRESETS: dict[str, dict[str, dict]] = {
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
