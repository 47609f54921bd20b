"""The course's datasets, read from ``data/`` and checked against their published sha256.

Nothing here downloads: the files ship with the repository (see data/README.md).
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path

# One entry per file the labs read; data/<dataset>/README.md states the same hashes
# (tests/test_data.py keeps the two in step).
CHECKSUMS = {
    "tinyshakespeare/input.txt": "86c4e6aa9db7c042ec79f339dcb96d42b0075e16b8fc2e86bf0ca57e2dc565ed",
    "banking77/train.csv": "b06e26ac675513959a63135f11b94ea7786ed02da65db93a5650d8838cbc664b",
    "banking77/test.csv": "d12d6e3bc4c3103966ae786dc435913c0c563dfa328f5a3646d0e62cfeeb474d",
    "banking77/categories.json": "53261da888122daf2d120d925458631d9619e15d82e56052e7a42e535ce32b63",
    "banking77/answers.csv": "38492c4a417e499e6ff7d6f6a290287e24f5a97f5e02261d54766a58a5ce2e5e",
    "taskmaster4_coffee/dialogs.jsonl": "346bde02e69f9a0b805fae82c64abc7d29383f51b7abb6fd8c05e072dbdcf3ba",
    "clapnq/clapnq_dev_answerable.jsonl": "3eefef4a3d4e34c0f7d2c2eceb9bde263bf43ee8edac1b4fe8d74f8b6a0bdfbe",
    "clapnq/clapnq_dev_unanswerable.jsonl": "a04f4fd625a68a521663d4c0e2b54c74c8067459adcb973a6111602fa54faaac",
}


class DataFileError(RuntimeError):
    """A course data file is missing or differs from the published version."""


def data_dir() -> Path:
    """LLMLAB_DATA if set, else the repository's data/ next to the package, else ./data."""
    if os.environ.get("LLMLAB_DATA"):
        return Path(os.environ["LLMLAB_DATA"])
    beside_package = Path(__file__).resolve().parent.parent / "data"
    if beside_package.is_dir():
        return beside_package
    return Path.cwd() / "data"


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def data_file(relative: str, root: Path | None = None) -> Path:
    """Path of a course data file after checking that it exists and has its published sha256."""
    if relative not in CHECKSUMS:
        raise KeyError(f"{relative!r} is not a course data file; known files: {', '.join(sorted(CHECKSUMS))}")
    path = (root or data_dir()) / relative
    if not path.is_file():
        raise DataFileError(f"missing data file {path} (expected in the repository's data/ folder; see data/README.md)")
    actual = sha256_of(path)
    if actual != CHECKSUMS[relative]:
        raise DataFileError(f"corrupt data file {path}: sha256 {actual[:12]}… differs from the published {CHECKSUMS[relative][:12]}…")
    return path


def tiny_shakespeare(root: Path | None = None) -> str:
    """The full Tiny Shakespeare text (1,115,394 characters)."""
    return data_file("tinyshakespeare/input.txt", root).read_text(encoding="utf-8")


def banking77_intents(root: Path | None = None) -> list[str]:
    """The 77 intent names, in the order the label ids use."""
    return json.loads(data_file("banking77/categories.json", root).read_text(encoding="utf-8"))


def banking77(root: Path | None = None):
    """BANKING77 as a ``datasets.DatasetDict`` with splits train/test and columns text, label.

    ``label`` is a ClassLabel over the 77 intents, so ``features["label"].int2str``
    turns ids back into names.
    """
    import datasets
    import pandas as pd

    intents = banking77_intents(root)
    features = datasets.Features({"text": datasets.Value("string"), "label": datasets.ClassLabel(names=intents)})
    splits = {}
    for split in ("train", "test"):
        frame = pd.read_csv(data_file(f"banking77/{split}.csv", root))
        unknown = sorted(set(frame["category"]) - set(intents))
        if unknown:
            raise DataFileError(f"banking77/{split}.csv has intents not in categories.json: {unknown[:5]}")
        frame = pd.DataFrame({"text": frame["text"], "label": frame["category"].map(intents.index)})
        splits[split] = datasets.Dataset.from_pandas(frame, features=features, preserve_index=False)
    return datasets.DatasetDict(splits)


def coffee_dialogs(root: Path | None = None) -> list[dict]:
    """The 3,710 Taskmaster-4 coffee-ordering dialogs: dicts with ``conversation_id``, ``scenario`` and ``turns``.

    Each turn is ``{"speaker": "user" | "assistant", "text": ...}``; every dialog starts with the
    customer and alternates.
    """
    with open(data_file("taskmaster4_coffee/dialogs.jsonl", root), encoding="utf-8") as handle:
        return [json.loads(line) for line in handle if line.strip()]


@dataclass(frozen=True)
class Passage:
    """One Wikipedia passage of CLAP NQ: the unit a retriever returns and an answer cites."""

    id: str  # "p000" … in order of first appearance (answerable file first); CLAP NQ itself gives passages no id
    title: str  # the Wikipedia article's title, which CC BY-SA attribution names
    text: str  # NQ's tokenised text, spaces around punctuation, exactly as published
    sentences: tuple[str, ...]  # CLAP NQ's own sentence split of ``text``


@dataclass(frozen=True)
class Question:
    """One CLAP NQ question with its gold passage and, when it has one, its reference answer."""

    id: str  # Natural Questions' example id
    text: str  # a real Google query, lower case
    answerable: bool  # False: the gold passage is on the question's topic but does not answer it
    answer: str  # the first annotation's long-form answer (CLAP NQ's output[0]); "" when unanswerable
    gold_passage_id: str  # the Passage.id of the one passage the annotators read
    all_answers: tuple[str, ...]  # every annotation with text ("" and "NA" dropped), for multi-reference scores


def clapnq(root: Path | None = None) -> tuple[list[Question], list[Passage]]:
    """CLAP NQ's dev split: 600 questions (300 answerable, then 300 unanswerable) and the 597 distinct passages.

    Every question has exactly one gold passage. Three passages are each the gold passage of two
    questions, so passages are keyed by (title, text), not by question, and a retriever searching
    the 597 passages finds the same passage for both.
    """
    questions: list[Question] = []
    passage_ids: dict[tuple[str, str], str] = {}
    passages: list[Passage] = []
    for name, answerable in (("answerable", True), ("unanswerable", False)):
        relative = f"clapnq/clapnq_dev_{name}.jsonl"
        with open(data_file(relative, root), encoding="utf-8") as handle:
            for line_number, line in enumerate(handle, start=1):
                record = json.loads(line)
                if len(record["passages"]) != 1:
                    raise DataFileError(f"{relative} line {line_number} has {len(record['passages'])} passages, expected 1")
                gold = record["passages"][0]
                key = (gold["title"], gold["text"])
                if key not in passage_ids:
                    passage_ids[key] = f"p{len(passages):03d}"
                    passages.append(Passage(passage_ids[key], gold["title"], gold["text"], tuple(gold["sentences"])))
                answers = tuple(o["answer"] for o in record["output"] if o["answer"].strip() not in ("", "NA"))
                if answerable and not answers:
                    raise DataFileError(f"{relative} line {line_number}: an answerable question without an answer")
                questions.append(Question(record["id"], record["input"], answerable, answers[0] if answerable else "",
                                          passage_ids[key], answers if answerable else ()))
    return questions, passages
