"""Reproduce the course's headline measurements from the command line.

    python -m llmlab.bench pretrain --preset cpu   # Lab 3: seconds to each validation milestone, final val loss
    python -m llmlab.bench finetune --preset cpu   # Lab 4: the best cpu recipe's test accuracy, macro-F1, seconds
    python -m llmlab.bench generate --preset cpu   # Lab 5: ms/token with and without the KV cache, and Hugging Face's
    python -m llmlab.bench sft --preset cpu        # Lab 4b: base, SFT (full, LoRA) and DPO on held-out dialogs
    python -m llmlab.bench sft --preset cpu --seed 1   # the same with other random weights and data order
    python -m llmlab.bench rag --preset cpu        # Lab 7: retrieval recall@k/MRR, answer F1, citations, abstention,
                                                   # prompt injection, each with its 95 % interval

Each benchmark prints what it measured and the machine it ran on; nothing is read
from a file of earlier results.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from llmlab.presets import PRESET_NAMES

BENCHMARKS = {
    "pretrain": ("llmlab.pretraining", "benchmark"),
    "finetune": ("llmlab.intents", "benchmark"),
    "generate": ("llmlab.inference", "benchmark"),
    "sft": ("llmlab.instruct_training", "benchmark"),
    "rag": ("llmlab.rag", "benchmark"),
}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m llmlab.bench", description="Run a course benchmark and print what it measured.")
    parser.add_argument("benchmark", choices=sorted(BENCHMARKS))
    parser.add_argument("--preset", choices=PRESET_NAMES, default=None, help="default: as LLMLAB_PRESET, else gpu with CUDA, else cpu")
    parser.add_argument("--seed", type=int, default=None, help="sft only: the seed of the weights and data order (default 0)")
    arguments = parser.parse_args(argv)
    if arguments.seed is not None and arguments.benchmark != "sft":
        parser.error(f"--seed applies to the sft benchmark only, not to {arguments.benchmark}")
    module_name, function_name = BENCHMARKS[arguments.benchmark]
    module = importlib.import_module(module_name)
    from llmlab.runtime import preset_name

    options = {} if arguments.seed is None else {"seed": arguments.seed}
    getattr(module, function_name)(arguments.preset or preset_name(), **options)
    return 0


if __name__ == "__main__":
    sys.exit(main())
