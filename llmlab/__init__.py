"""llmlab: the code behind the course "From Attention to Product".

Each module grows out of a chapter, and each concept lives in one module that every lab imports:

- where and how big a lab runs: ``presets`` (every lab's settings), ``runtime`` (device,
  precision, seeds, the machine a number was measured on), ``memory_records`` (the GPU memory
  each lab needs, as recorded) and ``memory`` (which measures it), ``gpu_time`` (the time
  each lab's gpu preset should take on a T4, estimated), ``data`` (the course datasets),
  ``progress``, ``plots``;
- Chapter 1: ``tokenization`` (every tokenizer), ``embeddings`` (sentence vectors and
  nearest neighbours), ``first_models`` (bigram and MLP language models), ``lm`` (the
  character-level corpus, batches, loss and validation loss), ``metrics``, ``costs``;
- Chapter 2: ``attention``, ``tasks``;
- Chapter 3: ``model`` (the GPT), ``training`` (the one training loop), ``optimizers``
  (Muon beside AdamW), ``checkpoint``,
  ``generation`` (sampling), ``pretraining`` (Lab 3's run), ``hf_bridge`` (to and from GPT-2);
- Chapter 4: ``lora``, ``intents`` (the intent classifier), ``instruct`` and
  ``instruct_training`` (Lab 4b);
- Chapter 5: ``inference``;
- Chapter 6: ``assistant``, ``economics``, ``flywheel``, ``privacy``, ``serve``;
- Chapter 7 (in progress): ``retrieval``, ``vector_index``;
- ``checks`` (one module of self-checks per lab), ``bench`` (the benchmarks' command line),
  ``course`` (lab generation and timed runs; no teaching module imports it).
"""

import logging as _logging

from llmlab import progress as _progress  # noqa: F401  (sets up progress bars before other libraries do)

# torchao (optional, Lab 5), which peft imports whenever it is installed, logs at import that its CUDA-only kernels
# cannot load on a CPU build of torch, and trips a torch deprecation notice about its own enums: harmless, not shown.
for _name in ("torchao", "torch.utils._pytree"):
    _logging.getLogger(_name).setLevel(_logging.ERROR)

__version__ = "0.1.0"
