"""Course notebook tooling: student labs from solutions, Colab cells from _config.yml, timed runs, recorded results.

    python -m llmlab.course.notebooks labs          # sync Colab cells, write labs/ from solutions/ (make labs)
    python -m llmlab.course.notebooks check         # exit 1 if labs/ or the Colab cells are out of date
    python -m llmlab.course.notebooks execute solutions/02_attention.ipynb --preset cpu
                                                    # run a solution in place and record preset, machine, seconds

Conventions in a solution notebook:
- cell 0 is the Colab badge (markdown) and cell 1 the set-up cell; both are generated;
- an exercise is a code cell with ``metadata.llmlab.exercise = {id, title, points, difficulty}``
  whose solution lines sit between ``### BEGIN SOLUTION`` and ``### END SOLUTION``;
- the next code cell is its self-check, with ``metadata.llmlab.check = <exercise id>``.
"""

from __future__ import annotations

import argparse
import copy
import datetime
import json
import os
import re
import sys
import time
from pathlib import Path

from typing import TYPE_CHECKING

from llmlab.presets import PRESET_NAMES

if TYPE_CHECKING:
    import nbformat


def _nbformat():
    """nbformat, imported when first needed: a lab that imports this module to print its results never waits for it."""
    import nbformat

    return nbformat

ROOT = Path(__file__).resolve().parent.parent.parent
BEGIN, END = "### BEGIN SOLUTION", "### END SOLUTION"
DIFFICULTIES = ("recall", "core", "stretch")
COLAB_BADGE_IMAGE = "https://colab.research.google.com/assets/colab-badge.svg"
# What Colab reads from a notebook's metadata to open it on a GPU runtime with a T4.
COLAB_METADATA = {"accelerator": "GPU", "colab": {"gpuType": "T4", "provenance": []}}


def repository(config_path: Path | None = None) -> tuple[str, str]:
    """(GitHub URL, branch) from _config.yml — the one place a fork changes."""
    import yaml

    config = yaml.safe_load((config_path or ROOT / "_config.yml").read_text(encoding="utf-8"))
    url = config["repository"]["url"].rstrip("/")
    if not re.fullmatch(r"https://github\.com/[\w.-]+/[\w.-]+", url):
        raise ValueError(f"_config.yml repository.url must look like https://github.com/OWNER/NAME, got {url!r}")
    return url, config["repository"].get("branch", "main")


def colab_url(url: str, branch: str, notebook: str) -> str:
    return f"https://colab.research.google.com/github/{url.removeprefix('https://github.com/')}/blob/{branch}/{notebook}"


def badge_source(url: str, branch: str, lab_name: str) -> str:
    # The badge always opens the student lab, also when shown on a solution page.
    link = colab_url(url, branch, f"labs/{lab_name}")
    return (f"[![Open the student lab in Colab]({COLAB_BADGE_IMAGE})]({link})\n\n"
            "*On Colab this lab opens on a T4 GPU runtime (Runtime → Change runtime type shows it) and runs its "
            "`gpu` preset; without a GPU it runs the `cpu` preset. Run the first code cell first: it sets the lab up.*")


def site_address(config_path: Path | None = None) -> str:
    """The GitHub Pages address of the repository named in _config.yml.

    https://github.com/OWNER/NAME is published at https://owner.github.io/NAME/, except a
    repository named OWNER.github.io, which is published at https://owner.github.io/.
    """
    url, _ = repository(config_path)
    owner, name = url.removeprefix("https://github.com/").split("/")
    host = f"{owner.lower()}.github.io"
    return f"https://{host}/" if name.lower() == host else f"https://{host}/{name}/"


def setup_source(url: str, branch: str = "main") -> str:
    # Every line at most 88 characters: readers unfold this cell on the lab's page
    # (tests/test_notebooks.py::test_code_shown_to_readers_fits_the_page).
    return f'''# Set-up. On Google Colab: fetch the course, install llmlab, go into the course folder.
# Anywhere else (your laptop, Binder, the course's tests) this cell does nothing.
#
# On Colab, before you run it:
# - the preset: leave the line below commented for the default ("gpu" on a GPU runtime,
#   else "cpu"), or uncomment it and pick "smoke" (seconds: to try the whole lab), "cpu"
#   or "gpu";
# - your edits: File → Save a copy in Drive, or they are lost when the runtime
#   disconnects;
# - long runs: KEEP_RUNS_IN_DRIVE = True keeps checkpoints in your Drive (llmlab-runs/),
#   so a training cell re-run after a disconnect continues where it stopped.
# The pretrained encoder all-MiniLM-L6-v2 (about 90 MB) is downloaded from the Hugging
# Face Hub the first time a lab uses it; the datasets ship with the course.
import os, subprocess, sys

# os.environ["LLMLAB_PRESET"] = "smoke"
KEEP_RUNS_IN_DRIVE = False
COURSE_REPOSITORY = "{url}"
COURSE_BRANCH = "{branch}"


def run_or_explain(command, advice):
    result = subprocess.run(command, capture_output=True, text=True)
    if result.returncode != 0:
        print(result.stdout[-2000:], result.stderr[-4000:], sep="\\n")
        raise SystemExit(f"set-up stopped: `{{' '.join(command[:6])}} ...` failed "
                         f"(exit code {{result.returncode}}); {{advice}}")


if "google.colab" in sys.modules and not os.path.isdir("llmlab"):
    if not os.path.isdir("course"):
        run_or_explain(["git", "clone", "--depth", "1", "--branch", COURSE_BRANCH,
                        COURSE_REPOSITORY, "course"],
                       "check COURSE_REPOSITORY and COURSE_BRANCH above (a fork sets "
                       "both in its _config.yml), or upload the course as a folder "
                       "named `course` and run this cell again")
    os.chdir("course")
    # Colab already has torch, transformers and datasets; this adds llmlab without
    # replacing them.
    run_or_explain([sys.executable, "-m", "pip", "install", "-q", "-e", ".[labs]"],
                   "pip's message is printed above; Runtime → Restart session and run "
                   "this cell again, and if it fails the same way, report it with that "
                   "message")
    sys.path.insert(0, os.getcwd())
if "google.colab" in sys.modules and KEEP_RUNS_IN_DRIVE:
    from google.colab import drive

    drive.mount("/content/drive")
    os.environ["LLMLAB_RUNS"] = "/content/drive/MyDrive/llmlab-runs"'''


def _role(cell) -> str | None:
    return cell.get("metadata", {}).get("llmlab", {}).get("role")


def sync_colab_cells(notebook, lab_name: str, config_path: Path | None = None) -> bool:
    """Make cells 0 and 1 the badge and set-up cell for this repository; True if anything changed."""
    url, branch = repository(config_path)
    wanted = [
        _nbformat().v4.new_markdown_cell(badge_source(url, branch, lab_name), metadata={"llmlab": {"role": "colab-badge"}}),
        # Collapsed on the book's pages: readers of the website need not run it.
        _nbformat().v4.new_code_cell(setup_source(url, branch), metadata={"llmlab": {"role": "colab-setup"}, "tags": ["hide-input"]}),
    ]
    changed = False
    for key, value in COLAB_METADATA.items():  # Colab opens the notebook on a T4 GPU runtime
        if notebook.metadata.get(key) != value:
            notebook.metadata[key] = copy.deepcopy(value)
            changed = True
    for index, cell in enumerate(wanted):
        role = cell.metadata["llmlab"]["role"]
        existing = notebook.cells[index] if len(notebook.cells) > index else None
        if existing is not None and _role(existing) == role:
            if existing.source != cell.source or existing.metadata != cell.metadata:
                existing.source, existing.metadata = cell.source, cell.metadata
                changed = True
        else:
            notebook.cells.insert(index, cell)
            changed = True
    return changed


def exercise_of(cell) -> dict | None:
    return cell.get("metadata", {}).get("llmlab", {}).get("exercise")


def check_of(cell) -> str | None:
    return cell.get("metadata", {}).get("llmlab", {}).get("check")


def strip_solution(source: str, exercise: dict) -> str:
    """Replace each BEGIN/END SOLUTION block by a NotImplementedError naming the exercise."""
    lines = source.split("\n")
    result, inside = [], False
    # the id only: the exercise's title is in the text above it, and the line stays within the page's width
    message = f"Exercise {exercise['id']}: write your code here"
    for line in lines:
        stripped = line.strip()
        if stripped == BEGIN:
            if inside:
                raise ValueError(f"exercise {exercise['id']}: nested {BEGIN}")
            inside = True
            indent = line[: len(line) - len(line.lstrip())]
            result.append(f'{indent}raise NotImplementedError("{message}")')
        elif stripped == END:
            if not inside:
                raise ValueError(f"exercise {exercise['id']}: {END} without {BEGIN}")
            inside = False
        elif not inside:
            result.append(line)
    if inside:
        raise ValueError(f"exercise {exercise['id']}: {BEGIN} without {END}")
    return "\n".join(result)


def validate_exercises(notebook, name: str) -> list[dict]:
    """The exercises of a solution notebook, after checking markers, metadata and self-check cells."""
    exercises, seen = [], set()
    code_cells = [cell for cell in notebook.cells if cell.cell_type == "code"]
    for position, cell in enumerate(code_cells):
        has_markers = BEGIN in cell.source or END in cell.source
        exercise = exercise_of(cell)
        if has_markers and exercise is None:
            raise ValueError(f"{name}: a cell with solution markers has no metadata.llmlab.exercise:\n{cell.source[:200]}")
        if exercise is None:
            continue
        missing = [key for key in ("id", "title", "points", "difficulty") if key not in exercise]
        if missing:
            raise ValueError(f"{name}: exercise {exercise.get('id', '?')} lacks {missing} in its metadata")
        if exercise["difficulty"] not in DIFFICULTIES:
            raise ValueError(f"{name}: exercise {exercise['id']} has difficulty {exercise['difficulty']!r}; use one of {DIFFICULTIES}")
        if exercise["id"].split(".")[0] != lab_key(name) and LAB_NAME.fullmatch(name):
            raise ValueError(f"{name}: exercise id {exercise['id']} must start with the lab's key, {lab_key(name)}.")
        if exercise["id"] in seen:
            raise ValueError(f"{name}: exercise id {exercise['id']} is used twice")
        seen.add(exercise["id"])
        if not has_markers:
            raise ValueError(f"{name}: exercise {exercise['id']} has no {BEGIN} / {END} block")
        following = code_cells[position + 1] if position + 1 < len(code_cells) else None
        if following is None or check_of(following) != exercise["id"] or "check_" not in following.source:
            raise ValueError(f"{name}: exercise {exercise['id']} must be followed by its self-check cell (metadata.llmlab.check)")
        exercises.append(exercise)
    return exercises


CHAPTER_LINK = re.compile(r"\]\(\.\./book/([\w-]+)\.md(#[\w-]*)?\)")


def absolute_chapter_links(markdown: str, config_path: Path | None = None) -> str:
    """``](../book/NAME.md)`` → ``](https://…/book/NAME.html)`` on the published site: a lab opened on Colab has no book beside it."""
    address = site_address(config_path)
    return CHAPTER_LINK.sub(lambda match: f"]({address}book/{match.group(1)}.html{match.group(2) or ''})", markdown)


NBVAL_MARKER = "# NBVAL_CHECK_OUTPUT"  # tells the tests (nbval) to compare a solution cell's output; it means nothing to a learner


def without_test_markers(source: str) -> str:
    """A code cell's source without the line that marks it for nbval's output comparison."""
    return "\n".join(line for line in source.split("\n") if line.strip() != NBVAL_MARKER)


def make_lab(solution) -> nbformat.NotebookNode:
    """The student version: solutions replaced, outputs and run records cleared, links to chapters made absolute, the
    tests' output markers left out (the tests run the solutions, never the student labs)."""
    lab = copy.deepcopy(solution)
    for cell in lab.cells:
        if cell.cell_type == "markdown":
            cell.source = absolute_chapter_links(cell.source)
        if cell.cell_type != "code":
            continue
        cell.source = without_test_markers(cell.source)
        exercise = exercise_of(cell)
        if exercise is not None:
            cell.source = strip_solution(cell.source, exercise)
        cell.outputs = []
        cell.execution_count = None
        cell.metadata.pop("execution", None)
    lab.metadata.get("llmlab", {}).pop("runs", None)
    return lab


LAB_NAME = re.compile(r"(\d\d[a-z]?)_\w+\.ipynb")


def solution_paths() -> list[Path]:
    """solutions/NN_name.ipynb, and NNx_name.ipynb for a chapter's further labs (04b_…), in order."""
    return sorted(path for path in (ROOT / "solutions").glob("*.ipynb") if LAB_NAME.fullmatch(path.name))


def lab_key(name: str) -> str:
    """The key of a lab: its notebook's name up to the first "_" ("04b" for 04b_instruction_tuning.ipynb).

    Its exercise ids are "<key>.<k>" and its self-checks live in ``llmlab/checks/lab<key>.py``.
    """
    return Path(name).name.split("_", 1)[0]


def chapter_of(lab: str, toc_path: Path | None = None) -> str:
    """The book page a lab belongs to, read from _toc.yml: "book/04_fine_tuning" for "04b_instruction_tuning"."""
    import yaml

    toc = yaml.safe_load((toc_path or ROOT / "_toc.yml").read_text(encoding="utf-8"))
    for part in toc.get("parts", []):
        for chapter in part.get("chapters", []):
            if any(section.get("file") == f"solutions/{lab}" for section in chapter.get("sections", [])):
                return chapter["file"]
    raise KeyError(f"_toc.yml lists solutions/{lab} under no chapter")


def write_labs() -> list[Path]:
    """Sync the Colab cells in every solution, then write labs/ from solutions/. Returns files written."""
    written = []
    (ROOT / "labs").mkdir(exist_ok=True)
    for path in solution_paths():
        solution = _nbformat().read(path, as_version=4)
        if sync_colab_cells(solution, path.name):
            _nbformat().write(solution, path)
            written.append(path)
        validate_exercises(solution, path.name)
        lab_path = ROOT / "labs" / path.name
        text = _nbformat().writes(make_lab(solution)) + "\n"
        if not lab_path.exists() or lab_path.read_text(encoding="utf-8") != text:
            lab_path.write_text(text, encoding="utf-8")
            written.append(lab_path)
    orphans = sorted({p.name for p in (ROOT / "labs").glob("*.ipynb")} - {p.name for p in solution_paths()})
    for name in orphans:
        (ROOT / "labs" / name).unlink()
        written.append(ROOT / "labs" / name)
    return written


def out_of_date() -> list[str]:
    """What `labs` would change, without changing it."""
    problems = []
    for path in solution_paths():
        solution = _nbformat().read(path, as_version=4)
        if sync_colab_cells(copy.deepcopy(solution), path.name):
            problems.append(f"{path.name}: Colab badge or set-up cell does not match _config.yml")
        validate_exercises(solution, path.name)
        lab_path = ROOT / "labs" / path.name
        expected = _nbformat().writes(make_lab(solution)) + "\n"
        if not lab_path.exists() or lab_path.read_text(encoding="utf-8") != expected:
            problems.append(f"labs/{path.name} is not what solutions/{path.name} generates")
    return problems


def exercises_by_lab() -> dict[str, list[dict]]:
    """{lab file name: its exercises' metadata}, for the instructors' page and the grader."""
    return {path.name: validate_exercises(_nbformat().read(path, as_version=4), path.name) for path in solution_paths()}


def recorded_runs() -> dict[str, dict[str, dict]]:
    """{lab file name: {preset: {seconds, machine, date, outputs_committed}}} as recorded by `execute`."""
    return {
        path.name: _nbformat().read(path, as_version=4).metadata.get("llmlab", {}).get("runs", {})
        for path in solution_paths()
    }


RESULTS_PREFIX = "LAB RESULTS "


def print_results(results: dict) -> None:
    """Print a lab's headline results as one line of JSON that a chapter can read back with :func:`recorded_results`."""
    print(RESULTS_PREFIX + json.dumps(results))


def recorded_results(lab: str) -> dict:
    """The results that the committed run of ``solutions/<lab>.ipynb`` printed with :func:`print_results`.

    A chapter quotes its lab's measured numbers from here, so the prose and the lab page always show the same run.
    """
    path = ROOT / "solutions" / f"{lab}.ipynb"
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: the chapter reads the lab's committed results from it")
    for cell in _nbformat().read(path, as_version=4).cells:
        for output in cell.get("outputs", []):
            for line in output.get("text", "").splitlines():
                if line.startswith(RESULTS_PREFIX):
                    return json.loads(line[len(RESULTS_PREFIX):])
    raise ValueError(f"{path.name} has no '{RESULTS_PREFIX.strip()}' line in its outputs: run it with "
                     f"`python -m llmlab.course.notebooks execute solutions/{lab}.ipynb --preset cpu`")


def final_progress_lines(text: str) -> str:
    """Keep only what a terminal would show: text overwritten by a carriage return is dropped."""
    return "\n".join(line.rsplit("\r", 1)[-1] if "\r" in line.rstrip("\r") else line.rstrip("\r") for line in text.split("\n"))


def tidy_outputs(notebook) -> None:
    """Merge each cell's consecutive stream outputs and keep the final state of progress bars.

    A progress bar sends one output per update; a page should show only the finished bar.
    """
    for cell in notebook.cells:
        if cell.cell_type != "code":
            continue
        merged = []
        for output in cell.get("outputs", []):
            previous = merged[-1] if merged else None
            if output.get("output_type") == "stream" and previous is not None and previous.get("output_type") == "stream" \
                    and previous.get("name") == output.get("name"):
                previous["text"] += output["text"]
            else:
                merged.append(output)
        for output in merged:
            if output.get("output_type") == "stream":
                output["text"] = final_progress_lines(output["text"])
        cell.outputs = merged


def execute(path: Path, preset: str, timeout: int = 1800) -> float:
    """Run a solution notebook top to bottom with LLMLAB_PRESET=preset and record how long it took.

    A cpu or gpu run keeps its outputs in the notebook (they are what the book shows);
    a smoke run records only its time and leaves the committed outputs alone.
    """
    from nbclient import NotebookClient

    from llmlab.runtime import describe_machine

    notebook = _nbformat().read(path, as_version=4)
    previous = os.environ.get("LLMLAB_PRESET")
    os.environ["LLMLAB_PRESET"] = preset
    try:
        started = time.perf_counter()
        NotebookClient(notebook, timeout=timeout, kernel_name="python3", record_timing=False, resources={"metadata": {"path": str(path.parent)}}).execute()
        seconds = time.perf_counter() - started
    finally:
        if previous is None:
            os.environ.pop("LLMLAB_PRESET", None)
        else:
            os.environ["LLMLAB_PRESET"] = previous
    tidy_outputs(notebook)
    target = notebook if preset != "smoke" else _nbformat().read(path, as_version=4)
    runs = target.metadata.setdefault("llmlab", {}).setdefault("runs", {})
    runs[preset] = {
        "seconds": round(seconds, 1),
        "machine": describe_machine(),
        "date": datetime.date.today().isoformat(),
        "outputs_committed": preset != "smoke",
    }
    _nbformat().write(target, path)
    return seconds


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m llmlab.course.notebooks", description=__doc__.split("\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("labs", help="write labs/ from solutions/ (and sync Colab cells)")
    commands.add_parser("check", help="fail if labs/ or Colab cells are out of date")
    run = commands.add_parser("execute", help="run solution notebooks in place with a preset and record the time")
    run.add_argument("notebooks", nargs="+", type=Path)
    run.add_argument("--preset", required=True, choices=PRESET_NAMES)
    run.add_argument("--runs", type=Path, default=None,
                     help="the checkpoints folder an earlier recorded command printed, to re-run one of its labs "
                          "with what the labs before it wrote (default: a fresh folder)")
    arguments = parser.parse_args(argv)

    if arguments.command == "labs":
        written = write_labs()
        print("\n".join(f"wrote {p.relative_to(ROOT)}" for p in written) or "labs/ already up to date")
    elif arguments.command == "check":
        problems = out_of_date()
        if problems:
            print("\n".join(problems) + "\nrun `make labs` to regenerate", file=sys.stderr)
            return 1
        print("labs/ and Colab cells are up to date")
    else:
        # A recorded run starts from nothing: its checkpoints go to a fresh folder (shared by the notebooks of this
        # command, so Lab 5 finds the model Lab 3 trained just before), never to one an earlier run resumes from.
        import tempfile

        if arguments.runs is not None and not arguments.runs.is_dir():
            parser.error(f"--runs {arguments.runs}: no such folder")
        os.environ["LLMLAB_RUNS"] = str(arguments.runs or tempfile.mkdtemp(prefix="llmlab-runs-"))
        print(f"checkpoints of this run: {os.environ['LLMLAB_RUNS']}")
        for path in arguments.notebooks:
            seconds = execute(path.resolve(), arguments.preset)
            from llmlab.runtime import describe_machine

            print(f"{path}: preset {arguments.preset}, {seconds:.1f} s on {describe_machine()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
