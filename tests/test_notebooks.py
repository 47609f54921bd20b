"""The lab machinery: labs generated from solutions, exercises with self-checks, Colab cells from _config.yml."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import unicodedata
from pathlib import Path

import nbformat
import pytest
import yaml

from llmlab.course import notebooks
from llmlab.presets import LAB_PRESETS

ROOT = Path(__file__).resolve().parent.parent
SOLUTIONS = notebooks.solution_paths()


def read(path: Path):
    return nbformat.read(path, as_version=4)


def solution_lines(notebook) -> list[str]:
    """Every line between BEGIN and END SOLUTION markers, stripped."""
    lines, inside = [], False
    for cell in notebook.cells:
        for line in cell.source.split("\n"):
            if line.strip() == notebooks.BEGIN:
                inside = True
            elif line.strip() == notebooks.END:
                inside = False
            elif inside and line.strip():
                lines.append(line.strip())
    return lines


def test_there_is_at_least_one_lab():
    assert SOLUTIONS, "no solutions/NN_name.ipynb found"


def test_labs_are_in_step_with_solutions():
    problems = notebooks.out_of_date()
    assert not problems, "\n".join(problems) + "\nrun `make labs`"


@pytest.mark.parametrize("path", SOLUTIONS, ids=lambda p: p.name)
def test_no_solution_line_leaks_into_the_lab(path):
    solution = read(path)
    lab = read(ROOT / "labs" / path.name)
    lab_code = "\n".join(cell.source for cell in lab.cells if cell.cell_type == "code")
    assert notebooks.BEGIN not in lab_code and notebooks.END not in lab_code
    # Short lines such as `return x` or `else:` may legitimately appear elsewhere in the lab.
    distinctive = [line for line in solution_lines(solution) if len(line) >= 25]
    assert distinctive, f"{path.name}: no solution lines found"
    solution_code_outside_blocks = "\n".join(
        cell.source for cell in solution.cells if cell.cell_type == "code" and notebooks.exercise_of(cell) is None
    )
    leaked = [line for line in distinctive if line in lab_code and line not in solution_code_outside_blocks]
    assert not leaked, f"labs/{path.name} contains solution lines: {leaked[:3]}"


@pytest.mark.parametrize("path", SOLUTIONS, ids=lambda p: p.name)
def test_labs_have_no_outputs_and_name_each_exercise(path):
    lab = read(ROOT / "labs" / path.name)
    for cell in lab.cells:
        if cell.cell_type == "code":
            assert cell.outputs == [] and cell.execution_count is None
            assert notebooks.NBVAL_MARKER not in cell.source, "the tests' marker means nothing to a learner: leave it out"
    for exercise in notebooks.exercises_by_lab()[path.name]:
        assert f"Exercise {exercise['id']}: write your code here" in "\n".join(c.source for c in lab.cells)
    assert "runs" not in lab.metadata.get("llmlab", {})


@pytest.mark.parametrize("path", SOLUTIONS, ids=lambda p: p.name)
def test_every_exercise_has_metadata_and_a_self_check_cell(path):
    exercises = notebooks.validate_exercises(read(path), path.name)
    assert exercises, f"{path.name} has no exercises"
    for exercise in exercises:
        assert isinstance(exercise["points"], int) and exercise["points"] > 0
        assert re.fullmatch(r"\d\d[a-z]?\.\d+", exercise["id"]), exercise["id"]
        assert exercise["id"].startswith(notebooks.lab_key(path.name) + ".")


def _exercise_notebook(check_follows: bool = True, metadata: bool = True, end_marker: bool = True):
    source = "def f():\n    ### BEGIN SOLUTION\n    return 42\n" + ("    ### END SOLUTION" if end_marker else "")
    meta = {"llmlab": {"exercise": {"id": "99.1", "title": "answer", "points": 1, "difficulty": "recall"}}} if metadata else {}
    cells = [nbformat.v4.new_code_cell(source, metadata=meta)]
    if check_follows:
        cells.append(nbformat.v4.new_code_cell("checks.check_answer(f)", metadata={"llmlab": {"check": "99.1"}}))
    return nbformat.v4.new_notebook(cells=cells)


def test_validation_rejects_broken_exercises():
    notebooks.validate_exercises(_exercise_notebook(), "ok.ipynb")
    with pytest.raises(ValueError, match="self-check"):
        notebooks.validate_exercises(_exercise_notebook(check_follows=False), "x.ipynb")
    with pytest.raises(ValueError, match="no metadata"):
        notebooks.validate_exercises(_exercise_notebook(metadata=False), "x.ipynb")


def test_strip_solution_keeps_indentation_and_names_the_exercise():
    notebook = _exercise_notebook()
    exercise = notebooks.exercise_of(notebook.cells[0])
    stripped = notebooks.strip_solution(notebook.cells[0].source, exercise)
    assert stripped == 'def f():\n    raise NotImplementedError("Exercise 99.1: write your code here")'
    with pytest.raises(ValueError, match="without"):
        notebooks.strip_solution(_exercise_notebook(end_marker=False).cells[0].source, exercise)


def test_colab_badge_and_setup_cell_match_config():
    url, branch = notebooks.repository()
    config = yaml.safe_load((ROOT / "_config.yml").read_text())
    assert url == config["repository"]["url"].rstrip("/")
    for path in SOLUTIONS:
        for notebook in (read(path), read(ROOT / "labs" / path.name)):
            badge, setup = notebook.cells[0], notebook.cells[1]
            student_lab = notebooks.colab_url(url, branch, f"labs/{path.name}")
            assert badge.cell_type == "markdown" and f"]({student_lab})" in badge.source
            assert "solutions/" not in badge.source, "the badge must open the student lab, never the solution"
            assert setup.cell_type == "code" and f'COURSE_REPOSITORY = "{url}"' in setup.source


def test_a_fork_changes_one_line(tmp_path):
    """Changing repository.url in _config.yml is all it takes for badge and set-up cell to follow."""
    config = (ROOT / "_config.yml").read_text()
    url, _ = notebooks.repository()
    fork_config = tmp_path / "_config.yml"
    fork_config.write_text(config.replace(url, "https://github.com/someone/fork"))
    notebook = read(SOLUTIONS[0])
    assert notebooks.sync_colab_cells(notebook, SOLUTIONS[0].name, fork_config)
    assert "colab.research.google.com/github/someone/fork/blob/" in notebook.cells[0].source
    assert 'COURSE_REPOSITORY = "https://github.com/someone/fork"' in notebook.cells[1].source
    assert not notebooks.sync_colab_cells(notebook, SOLUTIONS[0].name, fork_config)


def test_labs_open_on_a_t4_and_link_to_the_published_chapters():
    from llmlab.course.site import site_address

    for path in SOLUTIONS:
        for notebook in (read(path), read(ROOT / "labs" / path.name)):
            assert notebook.metadata["accelerator"] == "GPU" and notebook.metadata["colab"]["gpuType"] == "T4"
            assert "T4 GPU runtime" in notebook.cells[0].source
        lab_text = "\n".join(cell.source for cell in read(ROOT / "labs" / path.name).cells if cell.cell_type == "markdown")
        assert "](../" not in lab_text, f"labs/{path.name}: a relative link does not work on Colab"
        assert f"]({site_address()}{notebooks.chapter_of(path.stem)}.html)" in lab_text


def test_setup_cell_clones_the_configured_branch_and_explains_failures(tmp_path):
    """Run the set-up cell as Colab would (a fake google.colab module, git and pip replaced by failing stand-ins)."""
    url, branch = notebooks.repository()
    source = read(SOLUTIONS[0]).cells[1].source
    assert f'COURSE_BRANCH = "{branch}"' in source and '"--branch", COURSE_BRANCH' in source
    assert "Save a copy in Drive" in source and "LLMLAB_PRESET" in source and "KEEP_RUNS_IN_DRIVE" in source
    fake_bin = tmp_path / "bin"
    fake_bin.mkdir()
    (fake_bin / "git").write_text("#!/bin/sh\necho 'fatal: repository not found' >&2\nexit 128\n")
    (fake_bin / "git").chmod(0o755)
    script = ("import sys, types\nsys.modules['google.colab'] = types.ModuleType('google.colab')\n" + source)
    env = {**os.environ, "PATH": f"{fake_bin}{os.pathsep}{os.environ['PATH']}"}
    result = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, capture_output=True, text=True, timeout=60, env=env)
    assert result.returncode != 0
    assert "fatal: repository not found" in result.stdout, "git's own message is shown"
    assert "set-up stopped: `git clone --depth 1 --branch" in result.stderr and "COURSE_REPOSITORY" in result.stderr


def test_setup_cell_does_nothing_outside_colab(tmp_path):
    url, _ = notebooks.repository()
    script = notebooks.setup_source(url) + "\nprint(os.getcwd())"
    result = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == str(tmp_path)
    assert list(tmp_path.iterdir()) == [], "the set-up cell created files outside Colab"


@pytest.mark.parametrize("path", SOLUTIONS, ids=lambda p: p.name)
def test_solution_outputs_come_from_one_real_cpu_or_gpu_run(path):
    notebook = read(path)
    runs = notebook.metadata.get("llmlab", {}).get("runs", {})
    shown = [preset for preset, run in runs.items() if run.get("outputs_committed")]
    assert shown and set(shown) <= {"cpu", "gpu"}, f"{path.name}: outputs must come from a cpu or gpu run, found {runs}"
    code_cells = [cell for cell in notebook.cells if cell.cell_type == "code"]
    counts = [cell.execution_count for cell in code_cells]
    assert counts == list(range(1, len(code_cells) + 1)), f"{path.name}: cells were not run once, top to bottom"
    first_output = "".join(o.get("text", "") for o in code_cells[1].outputs)
    assert any(f"| preset {preset} |" in first_output for preset in shown), "the printed preset differs from the recorded run"
    assert any("image/png" in o.get("data", {}) for cell in code_cells for o in cell.outputs), f"{path.name}: no plot in the outputs"


@pytest.mark.parametrize("path", SOLUTIONS, ids=lambda p: p.name)
def test_lab_reads_its_own_presets(path):
    source = "\n".join(cell.source for cell in read(path).cells)
    assert f'start_lab("{path.stem}")' in source
    assert set(LAB_PRESETS[path.stem]) == {"smoke", "cpu", "gpu"}


def test_chapter_files_share_number_and_name_and_toc_lists_only_existing_pages():
    toc = (ROOT / "_toc.yml").read_text()
    files = re.findall(r"file:\s*(\S+)", toc)
    for entry in files:
        assert any((ROOT / f"{entry}{suffix}").is_file() for suffix in (".md", ".ipynb")), f"_toc.yml lists missing page {entry}"
    for path in SOLUTIONS:
        assert (ROOT / "labs" / path.name).is_file()
        chapter = notebooks.chapter_of(path.stem)  # a chapter's first lab shares its name; a further one (04b_…) its number
        assert chapter == f"book/{path.stem}" or (re.fullmatch(r"\d\d[a-z]_\w+", path.stem) and chapter.startswith(f"book/{path.stem[:2]}_")), \
            f"solutions/{path.name} is listed under {chapter}"
        assert (ROOT / f"{chapter}.md").is_file() and f"solutions/{path.stem}" in files


def test_lab_keys_and_chapters_of_further_labs():
    assert notebooks.lab_key("04b_instruction_tuning.ipynb") == "04b" and notebooks.lab_key("solutions/02_attention.ipynb") == "02"
    assert notebooks.chapter_of("04b_instruction_tuning") == "book/04_fine_tuning"
    assert notebooks.chapter_of("02_attention") == "book/02_attention"
    with pytest.raises(KeyError, match="solutions/99_nothing"):
        notebooks.chapter_of("99_nothing")
    wrong_prefix = _exercise_notebook()
    with pytest.raises(ValueError, match="must start with the lab's key, 04b."):
        notebooks.validate_exercises(wrong_prefix, "04b_second_lab.ipynb")


def test_tidy_outputs_keeps_only_finished_progress_bars():
    cell = nbformat.v4.new_code_cell("loop()")
    cell.outputs = [
        nbformat.v4.new_output("stream", name="stderr", text="\rtraining:  10%|#"),
        nbformat.v4.new_output("stream", name="stderr", text="\rtraining:  50%|#####"),
        nbformat.v4.new_output("stream", name="stderr", text="\rtraining: 100%|##########\n"),
        nbformat.v4.new_output("stream", name="stdout", text="done\n"),
    ]
    notebook = nbformat.v4.new_notebook(cells=[cell])
    notebooks.tidy_outputs(notebook)
    assert [o["text"] for o in notebook.cells[0].outputs] == ["training: 100%|##########\n", "done\n"]


@pytest.mark.parametrize("path", SOLUTIONS, ids=lambda p: p.name)
def test_committed_outputs_are_tidy(path):
    notebook = read(path)
    for cell in notebook.cells:
        if cell.cell_type == "code":
            kinds = [(o.get("output_type"), o.get("name")) for o in cell.outputs]
            assert all(a != b or a[0] != "stream" for a, b in zip(kinds, kinds[1:])), f"{path.name}: untidy stream outputs"


# What a committed output must not show: a path of the machine that ran it (a temporary runs folder, a checkout,
# a virtual environment), which means nothing to a reader and differs from run to run.
MACHINE_PATH = re.compile(r"/tmp/|/home/|/work/|/Users/|site-packages|\\.venv/")


def machine_paths(notebook) -> list[str]:
    found = []
    for cell in notebook.cells:
        for output in cell.get("outputs", []) if cell.cell_type == "code" else []:
            texts = [output.get("text", "")] + [str(v) for k, v in output.get("data", {}).items() if k.startswith("text/")]
            found += [line for text in texts for line in str(text).splitlines() if MACHINE_PATH.search(line)]
    return found


@pytest.mark.parametrize("path", SOLUTIONS, ids=lambda p: p.name)
def test_committed_outputs_name_no_path_of_the_machine_that_ran_them(path):
    found = machine_paths(read(path))
    assert not found, f"{path.name}: an output names a path of the machine that ran it: {found[0][:200]!r}"


def test_the_machine_path_check_finds_a_runs_folder():
    cell = nbformat.v4.new_code_cell("print(folder)")
    cell.outputs = [nbformat.v4.new_output("stream", name="stdout", text="saved to /tmp/llmlab-runs-x1/04b/base-cpu\n")]
    assert machine_paths(nbformat.v4.new_notebook(cells=[cell])) == ["saved to /tmp/llmlab-runs-x1/04b/base-cpu"]


def test_book_exercises_use_the_labs_difficulty_scale():
    """One scale for lab and chapter exercises: every ':::{exercise} (level) title' names a level of notebooks.DIFFICULTIES."""
    for chapter in sorted((ROOT / "book").glob("*.md")):
        for header in re.findall(r"^:::\{exercise\}.*$", chapter.read_text(encoding="utf-8"), re.M):
            level = re.match(r":::\{exercise\} \((\w+)\) ", header)
            assert level and level.group(1) in notebooks.DIFFICULTIES, f"{chapter.name}: {header!r} has no level of {notebooks.DIFFICULTIES}"


@pytest.mark.parametrize("path", SOLUTIONS, ids=lambda p: p.name)
def test_exercises_are_named_by_their_ids_everywhere(path):
    """"Exercise 03.1", as use_reference("03.1") and the grader name it, never "Exercise 3.1"."""
    text = "\n".join(cell.source for cell in read(path).cells)
    ids = {exercise["id"] for exercise in notebooks.exercises_by_lab()[path.name]}
    mentioned = set(re.findall(r"\bExercise (\d+[a-z]?\.\d+)\b", text))
    assert mentioned <= ids, f"{path.name} names exercises {sorted(mentioned - ids)}; its ids are {sorted(ids)}"



# The widest code line a reader sees: at a 1280-px-wide window a code block holds 88 characters of
# the course's code font (book/_static/code-width.css); tests/test_browser.py checks the built pages.
CODE_WIDTH = 88
REMOVED = {"remove-cell", "remove-input"}  # never shown; hide-input and hide-cell fold code a reader can unfold
FENCE = re.compile(r"^(`{3,}|~{3,})\s*(\S*)\s*(.*)$")
SHOWN_FENCES = {"", "python", "python3", "ipython3", "bash", "sh", "shell", "console", "text"}


def _fenced_blocks(text: str):
    """(line number of the body's first line, info word, argument, option lines, body lines) of each fenced block."""
    lines, index = text.split("\n"), 0
    while index < len(lines):
        opening = FENCE.match(lines[index])
        if not opening:
            index += 1
            continue
        fence, info, argument = opening.groups()
        index, body = index + 1, []
        first = index + 1  # 1-based
        while index < len(lines) and not re.fullmatch(re.escape(fence[0]) + "{%d,}\\s*" % len(fence), lines[index]):
            body.append(lines[index])
            index += 1
        options = []
        if info.startswith("{"):  # a directive: its options are `:key: value` lines or a `---` YAML block first
            if body[:1] == ["---"] and "---" in body[1:]:
                end = body.index("---", 1)
                options, body = body[1:end], body[end + 1:]
                first += end + 1
            else:
                while body and body[0].startswith(":"):
                    options.append(body.pop(0))
                    first += 1
        yield first, info, argument, options, body
        index += 1


def _tags(options: list[str]) -> set[str]:
    for option in options:
        key, _, value = option.lstrip(":").partition(":")
        if key.strip() == "tags":
            return set(yaml.safe_load(value.strip()) or [])
    return set()


def _included_lines(chapter: Path, argument: str, options: list[str]) -> list[str]:
    """The lines a {literalinclude} shows, read as Sphinx reads them."""
    from types import SimpleNamespace

    from sphinx.directives.code import LiteralInclude, LiteralIncludeReader

    settings = {}
    for option in options:  # each option converted as the directive converts it (:dedent: 4 is a number)
        key, _, value = option.lstrip(":").partition(":")
        settings[key.strip()] = LiteralInclude.option_spec[key.strip()](value.strip() or None)
    text, _ = LiteralIncludeReader(str(chapter.parent / argument), settings, SimpleNamespace(source_encoding="utf-8-sig")).read()
    return text.split("\n")


def chapter_code_lines(chapter: Path) -> list[tuple[str, str]]:
    """(where, line) for every code line a reader of the chapter's page sees or can unfold."""
    shown = []
    for first, info, argument, options, body in _fenced_blocks(chapter.read_text(encoding="utf-8")):
        if info == "{code-cell}" and not _tags(options) & REMOVED or info in SHOWN_FENCES:
            shown += [(f"{chapter.name}:{first + n}", line) for n, line in enumerate(body)]
        elif info == "{literalinclude}":
            shown += [(f"{chapter.name}, {argument}", line) for line in _included_lines(chapter, argument, options)]
    return shown


def notebook_code_lines(path: Path) -> list[tuple[str, str]]:
    """(where, line) for every code line a reader of the lab's page sees or can unfold (the Colab set-up cell)."""
    shown = []
    for number, cell in enumerate(read(path).cells):
        if cell.cell_type == "code" and not set(cell.metadata.get("tags", [])) & REMOVED:
            shown += [(f"{path.name} cell {number} line {n + 1}", line) for n, line in enumerate(cell.source.split("\n"))]
        elif cell.cell_type == "markdown":
            for first, info, _, _, body in _fenced_blocks(cell.source):
                if info in SHOWN_FENCES:
                    shown += [(f"{path.name} cell {number} line {first + n}", line) for n, line in enumerate(body)]
    return shown


def columns(line: str) -> int:
    """The width of a line in a monospace font: a Chinese character takes the room of two letters."""
    return sum(2 if unicodedata.east_asian_width(character) in "WF" else 1 for character in line)


def too_wide(shown: list[tuple[str, str]]) -> list[str]:
    return [f"{where}: {columns(line)} characters: {line.strip()[:60]}" for where, line in shown if columns(line) > CODE_WIDTH]


# the student edition shows labs/ where the main site shows solutions/
READER_PAGES = (sorted((ROOT / "book").glob("*.md")) + SOLUTIONS
                + sorted((ROOT / "labs").glob("*.ipynb")))


@pytest.mark.parametrize("path", READER_PAGES, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_code_shown_to_readers_fits_the_page(path):
    """No code a reader sees scrolls sideways: visible code lines are at most CODE_WIDTH characters."""
    shown = notebook_code_lines(path) if path.suffix == ".ipynb" else chapter_code_lines(path)
    wide = too_wide(shown)
    assert not wide, f"{len(wide)} code lines over {CODE_WIDTH} characters (`ruff format --line-length {CODE_WIDTH}`):\n" + "\n".join(wide[:30])


def test_the_code_width_check_finds_a_long_line(tmp_path):
    """A planted 89-character line in each place a reader sees code is found; removed cells are not read."""
    long_line = "x = " + "1 + " * 20 + "12345"
    assert len(long_line) == CODE_WIDTH + 1
    (tmp_path / "shown.py").write_text(f"def shown():\n    return 1\n\n\n{long_line}\n")
    chapter = tmp_path / "chapter.md"
    chapter.write_text(
        f"```{{code-cell}} ipython3\n{long_line}\n```\n\n"
        f"```{{code-cell}} ipython3\n:tags: [hide-input]\n\n{long_line}\n```\n\n"
        f"```{{code-cell}} ipython3\n:tags: [remove-cell]\n{long_line}\n```\n\n"
        f"```{{code-cell}} ipython3\n---\ntags: [remove-input]\n---\n{long_line}\n```\n\n"
        f"```text\n{long_line}\n```\n\n"
        f"```{{math}}\n{long_line}\n```\n\n"
        "```{literalinclude} shown.py\n:language: python\n:pyobject: shown\n```\n\n"
        "```{literalinclude} shown.py\n:language: python\n:lines: 5\n```\n"
    )
    assert [where for where, _ in chapter_code_lines(chapter) if len(_) > CODE_WIDTH] == [
        "chapter.md:2", "chapter.md:8", "chapter.md:24", "chapter.md, shown.py"]
    assert not too_wide([(where, long_line[:-1]) for where, _ in chapter_code_lines(chapter)])
    assert too_wide([("Chinese", "x = '" + "卡" * 42 + "'")]) and not too_wide([("Chinese", "x = '" + "卡" * 41 + "'")])
    notebook = nbformat.v4.new_notebook(cells=[
        nbformat.v4.new_code_cell(long_line, metadata={"tags": ["hide-input"]}),
        nbformat.v4.new_code_cell(long_line, metadata={"tags": ["remove-cell"]}),
        nbformat.v4.new_markdown_cell(f"Run:\n\n```python\n{long_line}\n```"),
        nbformat.v4.new_code_cell("print(1)"),
    ])
    nbformat.write(notebook, tmp_path / "lab.ipynb")
    assert [line.split(":")[0] for line in too_wide(notebook_code_lines(tmp_path / "lab.ipynb"))] == [
        "lab.ipynb cell 0 line 1", "lab.ipynb cell 2 line 4"]
