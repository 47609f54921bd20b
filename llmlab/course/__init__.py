"""The machinery that serves the course, apart from what the chapters teach.

``notebooks``: student labs generated from solutions, Colab cells from ``_config.yml``, timed runs
and the results a run recorded. The teaching modules of ``llmlab`` never import this package.
"""
