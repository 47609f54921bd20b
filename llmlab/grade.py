"""The grader's command line: ``python -m llmlab.grade SUBMISSIONS_DIR --lab NN --out gradebook.csv`` (see llmlab.course.grading)."""

import sys

from llmlab.course.grading import main

if __name__ == "__main__":
    sys.exit(main())
