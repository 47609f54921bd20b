"""GPU memory each lab needs at its ``gpu`` preset, as recorded: the numbers ``start_lab`` prints, and their form.

``llmlab.memory`` estimates the memory by measuring each lab's parts on the CPU (seconds to tens of seconds);
this module keeps what it measured, so that ``llmlab.runtime.start_lab`` prints a lab's largest part at the gpu
preset at once (``gpu_memory_line``), and ``make gpu-check`` sets it beside the peak a GPU reports.
``tests/test_gpu_paths.py`` measures every lab again and fails when a recorded number is off;
``python -m llmlab.memory`` prints the entries to record here. Plain data and formatting: it imports no other
llmlab module and no torch.
"""

from __future__ import annotations

from dataclasses import dataclass

GIB = 2**30
MIB = 2**20
T4_MEMORY = "16 GB"  # NVIDIA T4 datasheet: 16 GB GDDR6


def size_text(nbytes: int) -> str:
    """``nbytes`` for a reader: "1.9 GiB" from half a GiB up, "41 MiB" below."""
    return f"{nbytes / GIB:.1f} GiB" if nbytes >= GIB / 2 else f"{nbytes / MIB:.0f} MiB"


@dataclass(frozen=True)
class MemoryEstimate:
    """GPU memory of one part of a lab at the gpu preset, in bytes, by what holds it."""

    lab: str
    part: str  # what runs, e.g. "pretraining the GPT, batch 64 × 256"
    precision: str  # "fp16 autocast" or "fp32"
    weights: int
    gradients: int = 0
    optimizer: int = 0
    activations: int = 0
    kv_cache: int = 0
    notes: tuple[str, ...] = ()

    @property
    def total(self) -> int:
        return self.weights + self.gradients + self.optimizer + self.activations + self.kv_cache

    @property
    def total_gib(self) -> float:
        return self.total / GIB

    def line(self) -> str:
        """One line for a lab's output, e.g. "gpu preset on a T4: ~1.9 GiB (weights 41 MiB, …) of 16 GB; …"."""
        parts = [f"weights {size_text(self.weights)}"]
        if self.gradients or self.optimizer:
            parts += [f"gradients {size_text(self.gradients)}", f"AdamW {size_text(self.optimizer)}"]
        parts.append(f"activations {size_text(self.activations)}")
        if self.kv_cache:
            parts.append(f"KV cache {size_text(self.kv_cache)}")
        return (f"gpu preset on a T4: ~{self.total_gib:.1f} GiB ({', '.join(parts)}; {self.precision}) of {T4_MEMORY}, "
                f"estimated for the part that needs the most: {self.part}")


# llmlab.memory.gpu_memory_estimate(lab) as measured, in MiB, so that start_lab can print it at once (measuring
# takes seconds to tens of seconds of CPU time). tests/test_gpu_paths.py measures every lab again and fails when a
# number here is off by more than RECORDED_TOLERANCE; `python -m llmlab.memory` prints the entries to paste here.
RECORDED_MIB: dict[str, dict] = {
    "01_what_is_an_llm": {"part": "MiniLM embeddings, batch 128 × 128 tokens", "precision": "fp32",
                          "weights": 87, "gradients": 0, "optimizer": 0, "activations": 264, "kv_cache": 0},
    "02_attention": {"part": "timing your attention at n = 8192 (4 heads)", "precision": "fp32",
                     "weights": 0, "gradients": 0, "optimizer": 0, "activations": 2200, "kv_cache": 0},
    "03_pretraining": {"part": "checking your training step in fp32, batch 64 × 256", "precision": "fp32",
                       "weights": 41, "gradients": 41, "optimizer": 81, "activations": 3105, "kv_cache": 0},
    "04_fine_tuning": {"part": "fine-tuning MiniLM, batch 32 × 64 tokens", "precision": "fp16 autocast",
                       "weights": 87, "gradients": 87, "optimizer": 174, "activations": 360, "kv_cache": 0},
    "04b_instruction_tuning": {"part": "full SFT of Qwen2.5-0.5B, batch 16 × 384 tokens, 1 per pass, gradient checkpointing "
                                       "(base model on the GPU too)", "precision": "fp32",
                               "weights": 3769, "gradients": 1885, "optimizer": 3769, "activations": 741, "kv_cache": 0},
    "05_inference": {"part": "pretraining the GPT, batch 64 × 256 (Lab 3's run, when its checkpoint is missing)",
                     "precision": "fp16 autocast",
                     "weights": 41, "gradients": 41, "optimizer": 81, "activations": 1745, "kv_cache": 0},
    "06_business": {"part": "MiniLM embeddings, batch 128 × 128 tokens", "precision": "fp32",
                    "weights": 87, "gradients": 0, "optimizer": 0, "activations": 264, "kv_cache": 0},
}

# Labs that have a gpu preset but no estimate, and why; start_lab says so instead of printing a number.
# (Lab 4b's Qwen2.5-0.5B is built from its published configuration with random weights: no download.)
NOT_ESTIMATED: dict[str, str] = {
    "07_building_on_a_model": "its generator, Qwen2.5-1.5B-Instruct in fp32, holds 5.75 GiB of weights and the key-value "
                              "cache of 8 prompts of 1,028 tokens 0.44 GiB (2 × 28 layers × 256 × 4 bytes a token); its "
                              "activations would have to be measured on a forward pass too large for the course's tests",
}

RECORDED_TOLERANCE = 0.05  # relative, per component; at least 2 MiB
# The versions RECORDED_MIB was measured with: requirements.txt's. Others save other tensors (transformers 4.45's
# MiniLM, under torch 2.3, saves 279 MiB where this records 360), so the comparison runs with these only.
RECORDED_WITH = {"torch": "2.13.0", "transformers": "5.24.0"}


def recorded_entry(estimate: MemoryEstimate) -> dict:
    """``estimate`` as an entry of RECORDED_MIB: its part, its precision and each component in MiB."""
    mib = {key: round(getattr(estimate, key) / MIB) for key in ("weights", "gradients", "optimizer", "activations", "kv_cache")}
    return {"part": estimate.part, "precision": estimate.precision, **mib}


def recorded_gpu_memory_estimate(lab: str) -> MemoryEstimate:
    """The recorded ``llmlab.memory.gpu_memory_estimate`` of ``lab`` (no measuring); a KeyError naming the labs that have one."""
    if lab in NOT_ESTIMATED:
        raise KeyError(f"no GPU memory estimate for lab {lab!r}: {NOT_ESTIMATED[lab]}")
    if lab not in RECORDED_MIB:
        raise KeyError(f"no recorded GPU memory estimate for lab {lab!r}; recorded: {', '.join(sorted(RECORDED_MIB))} "
                       "(run `python -m llmlab.memory` and add its entry to llmlab.memory_records.RECORDED_MIB)")
    entry = dict(RECORDED_MIB[lab])
    part, precision = entry.pop("part"), entry.pop("precision")
    return MemoryEstimate(lab, part, precision, **{key: value * MIB for key, value in entry.items()})


def gpu_memory_line(lab: str) -> str:
    """What ``start_lab`` prints at the gpu preset: the recorded estimate, or why there is none."""
    if lab in NOT_ESTIMATED:
        return f"gpu preset on a T4: not estimated for this lab ({NOT_ESTIMATED[lab]})"
    return recorded_gpu_memory_estimate(lab).line()
