"""One pinned environment: requirements.txt, environment.yml, the Makefile and pyproject agree."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent


def pins(lines) -> dict[str, str]:
    found = {}
    for line in lines:
        line = line.split("#")[0].strip()
        match = re.fullmatch(r"([A-Za-z0-9_.\-\[\]]+)==([\w.+\-]+)", line)
        if match:
            found[match.group(1).lower().replace("_", "-")] = match.group(2)
    return found


def requirements() -> dict[str, str]:
    return pins((ROOT / "requirements.txt").read_text().splitlines())


def conda_pip_pins() -> dict[str, str]:
    environment = yaml.safe_load((ROOT / "environment.yml").read_text())
    pip_section = next(item["pip"] for item in environment["dependencies"] if isinstance(item, dict) and "pip" in item)
    return pins(pip_section)


def makefile_torch() -> str:
    match = re.search(r"^TORCH_SPEC \?= torch==([\w.]+)$", (ROOT / "Makefile").read_text(), re.M)
    assert match, "Makefile must pin TORCH_SPEC ?= torch==X.Y.Z"
    return match.group(1)


def test_every_requirement_is_pinned_exactly():
    for line in (ROOT / "requirements.txt").read_text().splitlines():
        line = line.split("#")[0].strip()
        if line:
            assert "==" in line, f"requirements.txt: {line!r} is not pinned with =="


def test_environment_yml_has_the_same_pins():
    conda = conda_pip_pins()
    torch_pin = conda.pop("torch")
    assert conda == requirements(), "environment.yml and requirements.txt pin different packages or versions"
    assert torch_pin == makefile_torch()


def test_torch_is_installed_only_by_the_makefile():
    assert "torch" not in requirements(), "torch comes first from the Makefile, so no requirement may pin or pull it"
    makefile = (ROOT / "Makefile").read_text()
    assert "-c $(VENV)/torch-constraint.txt" in makefile, "later installs must be constrained to the installed torch"


def test_llmlab_itself_depends_on_few_packages():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    names = [re.split(r"[<>=!~ ]", requirement)[0] for requirement in project["dependencies"]]
    assert sorted(names) == ["matplotlib", "numpy", "torch", "tqdm"]
    assert not any("==" in requirement for requirement in project["dependencies"]), "pins belong in requirements.txt"


def test_python_versions_agree():
    environment = yaml.safe_load((ROOT / "environment.yml").read_text())
    assert "python=3.11" in environment["dependencies"]
