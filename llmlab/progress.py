"""Progress bars for every loop that takes more than a few seconds.

Where ipywidgets is installed (Colab, a JupyterLab with widgets) the bar is a
notebook widget; elsewhere it is a plain text bar on stderr, which is also what
the committed solution outputs and the book show.
"""

import warnings

try:
    import ipywidgets  # noqa: F401  (only probing whether widget bars can render)

    from tqdm.auto import tqdm
except ImportError:
    from tqdm import TqdmExperimentalWarning, TqdmWarning  # noqa: F401
    from tqdm.std import tqdm

    # Libraries the labs use (transformers, datasets) import tqdm.auto, which warns once that it
    # falls back to text bars without ipywidgets. Text bars are what we want here, so say it once, here.
    warnings.filterwarnings("ignore", message="IProgress not found", category=TqdmWarning)

__all__ = ["tqdm"]
