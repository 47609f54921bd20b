"""Test-wide settings: the smoke preset and no network for anything, kernels included.

Notebook kernels started by nbval inherit this process's environment, so setting
the variables here covers the labs too.
"""

import os

os.environ.setdefault("LLMLAB_PRESET", "smoke")
for variable in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_DATASETS_OFFLINE"):
    os.environ[variable] = "1"
