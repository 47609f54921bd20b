"""llmlab: the code behind the course "From Attention to Product".

Each module grows out of a chapter: ``attention`` (Chapter 2), ``model`` and
``training`` (the small GPT the labs train), ``checks`` (the labs' self-checks),
``runtime`` and ``presets`` (where and how big a lab runs), ``data`` (the
course datasets), ``notebooks`` (labs generated from solutions).
"""

from llmlab import progress as _progress  # noqa: F401  (sets up progress bars before other libraries do)

__version__ = "0.1.0"
