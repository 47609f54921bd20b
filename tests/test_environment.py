"""One pinned environment: requirements.txt, environment.yml, the Makefile and pyproject agree."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

import yaml
from packaging.version import Version

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
    """pyproject's lower bound is what the README promises, and the conda environment satisfies it."""
    minimum = re.fullmatch(r">=(\d+)\.(\d+)", tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["requires-python"])
    assert minimum, "requires-python should be a lower bound such as >=3.11"
    major, minor = int(minimum.group(1)), int(minimum.group(2))
    assert f"Python {major}.{minor}+" in (ROOT / "README.md").read_text(), "README states another minimum Python"
    environment = yaml.safe_load((ROOT / "environment.yml").read_text())
    conda_python = next(entry for entry in environment["dependencies"] if isinstance(entry, str) and entry.startswith("python="))
    assert tuple(int(part) for part in conda_python.removeprefix("python=").split(".")[:2]) >= (major, minor)
    # the tests themselves read TOML with the standard library, which has tomllib from 3.11 on
    assert (major, minor) >= (3, 11)


def lower_bounds() -> dict[str, str]:
    """{name: X} for every `name>=X` that pyproject.toml declares, core and extras."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    requirements = project["dependencies"] + [r for extra in project["optional-dependencies"].values() for r in extra]
    bounds = {}
    for requirement in requirements:
        match = re.fullmatch(r"([A-Za-z0-9_.\-]+)>=([\w.]+)", requirement.replace(" ", ""))
        assert match, f"pyproject.toml: {requirement!r} should be a plain lower bound, name>=X"
        bounds[match.group(1).lower().replace("_", "-")] = match.group(2)
    return bounds


def test_min_versions_pin_every_lower_bound():
    """.ci/min-versions.txt installs exactly the oldest version pyproject allows; its test tools are requirements.txt's."""
    pinned = pins((ROOT / ".ci" / "min-versions.txt").read_text().splitlines())
    bounds = lower_bounds()
    differ = [f"{name}>={bound} but {name}=={pinned.get(name)}" for name, bound in bounds.items()
              if name not in pinned or Version(pinned[name]) != Version(bound)]  # 1.24 is 1.24.0
    assert not differ, f"pyproject.toml and .ci/min-versions.txt differ: {'; '.join(differ)}"
    tools = {name: version for name, version in pinned.items() if name not in bounds}
    assert tools == {name: requirements().get(name) for name in tools}, \
        "test tools in .ci/min-versions.txt must be pinned as in requirements.txt"


def test_min_versions_use_the_oldest_python():
    minimum = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["requires-python"].removeprefix(">=")
    assert re.search(rf"^MIN_PYTHON \?= python{re.escape(minimum)}$", (ROOT / "Makefile").read_text(), re.M), \
        f"the Makefile's MIN_PYTHON should be python{minimum}, the oldest Python pyproject.toml allows"
