"""The course datasets: present, unchanged, loadable, and a one-line error when they are not."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import pytest

from llmlab import data

ROOT = Path(__file__).resolve().parent.parent


def test_readmes_state_the_checked_hashes_and_licences():
    for relative, digest in data.CHECKSUMS.items():
        folder, name = relative.split("/")
        readme = (ROOT / "data" / folder / "README.md").read_text()
        assert f"sha256 {name} {digest}" in readme, f"data/{folder}/README.md lacks the sha256 of {name}"
        assert re.search(r"[Ll]icen[cs]e", readme), f"data/{folder}/README.md names no licence"
        assert folder in (ROOT / "data" / "README.md").read_text()


def test_every_file_matches_its_hash():
    for relative in data.CHECKSUMS:
        assert data.data_file(relative).is_file()


def test_tiny_shakespeare():
    text = data.tiny_shakespeare()
    assert len(text) == 1_115_394 and text.startswith("First Citizen:")


def test_banking77_splits_and_labels():
    dataset = data.banking77()
    assert dataset["train"].num_rows == 10_003 and dataset["test"].num_rows == 3_080
    labels = dataset["train"].features["label"]
    assert labels.num_classes == 77 and labels.names == data.banking77_intents()
    first = dataset["train"][0]
    assert first["text"] == "I am still waiting on my card?" and labels.int2str(first["label"]) == "card_arrival"
    assert set(dataset["test"]["label"]) == set(range(77))


def _copy_data(tmp_path: Path) -> Path:
    root = tmp_path / "data"
    shutil.copytree(ROOT / "data", root)
    return root


def test_missing_file_is_a_one_line_error(tmp_path):
    root = _copy_data(tmp_path)
    (root / "tinyshakespeare" / "input.txt").unlink()
    with pytest.raises(data.DataFileError) as error:
        data.tiny_shakespeare(root)
    assert "missing data file" in str(error.value) and "input.txt" in str(error.value) and "\n" not in str(error.value)


def test_corrupt_file_is_a_one_line_error(tmp_path):
    root = _copy_data(tmp_path)
    with open(root / "banking77" / "test.csv", "a") as handle:
        handle.write("one more line,card_arrival\n")
    with pytest.raises(data.DataFileError) as error:
        data.banking77(root)
    assert "corrupt data file" in str(error.value) and "test.csv" in str(error.value) and "\n" not in str(error.value)


def test_unknown_file_names_the_known_ones():
    with pytest.raises(KeyError, match="tinyshakespeare/input.txt"):
        data.data_file("nope.txt")


def test_data_dir_can_be_moved(monkeypatch, tmp_path):
    root = _copy_data(tmp_path)
    monkeypatch.setenv("LLMLAB_DATA", str(root))
    assert data.data_dir() == root and data.tiny_shakespeare().startswith("First Citizen:")


def test_coffee_dialogs_alternate_and_start_with_the_customer():
    dialogs = data.coffee_dialogs()
    assert len(dialogs) == 3_710 and sum(len(d["turns"]) for d in dialogs) == 13_915
    assert len({d["conversation_id"] for d in dialogs}) == 3_710
    for dialog in dialogs:
        speakers = [turn["speaker"] for turn in dialog["turns"]]
        assert speakers[0] == "user" and all(a != b for a, b in zip(speakers, speakers[1:]))


def test_clapnq_questions_and_passages():
    questions, passages = data.clapnq()
    assert len(questions) == 600 and sum(q.answerable for q in questions) == 300
    assert len(passages) == 597 and len({p.id for p in passages}) == 597
    assert len({(p.title, p.text) for p in passages}) == 597, "a passage appears twice under two ids"
    by_id = {p.id: p for p in passages}
    first = questions[0]
    assert first.id == "6401197308716204890" and by_id[first.gold_passage_id].title == "Forecasting"
    assert first.answer.startswith("Seasonality, in which data experiences regular")
    assert all(q.gold_passage_id in by_id for q in questions)
    assert all(bool(q.answer) == q.answerable and (q.answer in q.all_answers) == q.answerable for q in questions)
    assert "NA" not in {a for q in questions for a in q.all_answers}
    assert all(p.sentences and p.sentences[0].split()[0] == p.text.split()[0] for p in passages)
