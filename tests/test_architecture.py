"""The shape of llmlab's import graph, read with ``ast`` from the package's own files (nothing is imported).

Four rules, each with a test on the package and a test that plants a breach and sees the rule report it:

- no circle among llmlab's modules, counting the imports inside functions (the lazy ones) too;
- no module uses another's private name (one leading underscore, not a dunder): neither
  ``from llmlab.intents import _x`` nor ``intents._x`` on an imported llmlab module;
- no teaching module imports ``llmlab.course``: only the course's own modules do (``llmlab.grade``, the grader's
  command line ``python -m llmlab.grade``, is the course's entry point and the one exception);
- ``llmlab.checks`` in particular (the self-checks a learner runs) imports nothing from ``llmlab.course``.

``layers()`` orders the modules: layer 0 imports no llmlab module, layer k only modules of the layers below.
``python tests/test_architecture.py`` prints one line per layer.
"""

from __future__ import annotations

import ast
from dataclasses import dataclass, field
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "llmlab"
COURSE = "llmlab.course"
CHECKS = "llmlab.checks"
# Modules outside llmlab/course/ that may import it: the grader's command line, `python -m llmlab.grade`.
COURSE_ENTRY_POINTS = frozenset({"llmlab.grade"})


@dataclass
class Module:
    """One module's llmlab imports: the modules it imports (with a line each) and the private names it reaches for."""

    name: str
    imports: dict[str, int] = field(default_factory=dict)  # imported llmlab module -> first line
    private: list[str] = field(default_factory=list)  # "line N: llmlab.intents._x", one per reach-in


def module_name(path: Path, root: Path) -> str:
    """``llmlab/checks/core.py`` -> ``llmlab.checks.core``; a package's ``__init__.py`` is the package."""
    parts = list(path.relative_to(root.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def is_private(name: str) -> bool:
    return name.startswith("_") and not (name.startswith("__") and name.endswith("__"))


def _dotted(node: ast.AST) -> list[str] | None:
    """``a.b.c`` -> ["a", "b", "c"]; None for anything that is not a chain of names."""
    names = []
    while isinstance(node, ast.Attribute):
        names.append(node.attr)
        node = node.value
    if not isinstance(node, ast.Name):
        return None
    return [node.id, *reversed(names)]


def read_module(name: str, source: str, modules: set[str], is_package: bool = False) -> Module:
    """The llmlab imports of module ``name`` (every ``import`` and ``from … import``, at any depth) and its reach-ins.

    ``modules`` is every module of the package: ``from llmlab import memory`` imports the module ``llmlab.memory``,
    ``from llmlab.memory import GIB`` the module ``llmlab.memory``; ``import llmlab.memory`` imports ``llmlab.memory``.
    """
    found = Module(name)
    package = name.split(".")[0]
    tree = ast.parse(source)
    bound: dict[str, str] = {}  # a local name -> the llmlab module it stands for

    def add(target: str, line: int) -> None:
        if target != name:
            found.imports.setdefault(target, line)

    def owner(dotted: str) -> str | None:
        """The longest llmlab module that ``dotted`` names or starts with."""
        parts = dotted.split(".")
        for end in range(len(parts), 0, -1):
            if ".".join(parts[:end]) in modules:
                return ".".join(parts[:end])
        return None

    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.split(".")[0] != package:
                    continue
                target = owner(alias.name)
                if target is None:
                    continue
                add(target, node.lineno)
                if alias.asname:
                    bound[alias.asname] = target
                else:
                    bound[package] = package  # `import llmlab.x` binds `llmlab`; attribute chains resolve below
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: from the importing module's package
                here = name.split(".") if is_package else name.split(".")[:-1]
                here = here[: len(here) - (node.level - 1)]
                base = ".".join([*here, base] if base else here)
            if base.split(".")[0] != package or owner(base) is None:
                continue
            for alias in node.names:
                submodule = f"{base}.{alias.name}"
                if submodule in modules:
                    add(submodule, node.lineno)
                    bound[alias.asname or alias.name] = submodule
                    continue
                add(owner(base), node.lineno)
                if is_private(alias.name):
                    found.private.append(f"line {node.lineno}: from {base} import {alias.name}")
    for node in ast.walk(tree):
        if not isinstance(node, ast.Attribute):
            continue
        chain = _dotted(node)
        if chain is None or chain[0] not in bound:
            continue
        dotted = ".".join([bound[chain[0]], *chain[1:]])
        target = owner(dotted)
        rest = dotted[len(target) + 1:].split(".") if target and dotted != target else []
        if target and target != name and rest and is_private(rest[0]) and len(rest) == 1:
            found.private.append(f"line {node.lineno}: {target}.{rest[0]}")
    return found


def read_package(root: Path = PACKAGE) -> dict[str, Module]:
    """Every module under ``root`` (a package folder), by name, with its llmlab imports."""
    paths = {module_name(path, root): path for path in sorted(root.rglob("*.py"))}
    return {name: read_module(name, path.read_text(encoding="utf-8"), set(paths), path.name == "__init__.py")
            for name, path in paths.items()}


def circles(graph: dict[str, Module]) -> list[list[str]]:
    """Every strongly connected group of modules with more than one member (a circle of imports), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(module: str) -> None:  # Tarjan's algorithm
        index[module] = low[module] = len(index)
        stack.append(module)
        on_stack.add(module)
        for target in graph[module].imports:
            if target not in graph:
                continue
            if target not in index:
                visit(target)
                low[module] = min(low[module], low[target])
            elif target in on_stack:
                low[module] = min(low[module], index[target])
        if low[module] == index[module]:
            group = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                group.append(member)
                if member == module:
                    break
            if len(group) > 1:
                found.append(sorted(group))

    for module in sorted(graph):
        if module not in index:
            visit(module)
    return sorted(found)


def private_reach_ins(graph: dict[str, Module]) -> list[str]:
    return [f"{name}, {reach}" for name, module in sorted(graph.items()) for reach in module.private]


def in_package(module: str, package: str) -> bool:
    return module == package or module.startswith(f"{package}.")


def course_imports(graph: dict[str, Module], importers=lambda name: not in_package(name, COURSE)) -> list[str]:
    """"<module> imports <course module> (line N)" for each module that ``importers`` selects and imports llmlab.course."""
    return [f"{name} imports {target} (line {line})" for name, module in sorted(graph.items()) if importers(name)
            for target, line in module.imports.items() if in_package(target, COURSE)]


def teaching_course_imports(graph: dict[str, Module]) -> list[str]:
    return course_imports(graph, lambda name: not in_package(name, COURSE) and name not in COURSE_ENTRY_POINTS)


def checks_course_imports(graph: dict[str, Module]) -> list[str]:
    return course_imports(graph, lambda name: in_package(name, CHECKS))


def layers(graph: dict[str, Module] | None = None) -> list[list[str]]:
    """Layer 0: the modules that import no llmlab module; layer k: those whose llmlab imports are all in layers below k."""
    graph = read_package() if graph is None else graph
    placed: dict[str, int] = {}
    result: list[list[str]] = []
    while len(placed) < len(graph):
        layer = sorted(name for name, module in graph.items() if name not in placed
                       and all(target in placed for target in module.imports if target in graph))
        if not layer:
            raise ValueError(f"no layering: these modules import each other in a circle: {circles(graph)}")
        for name in layer:
            placed[name] = len(result)
        result.append(layer)
    return result


# --- the package --------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def graph() -> dict[str, Module]:
    return read_package()


def test_the_graph_is_read_from_every_module(graph):
    assert {"llmlab", "llmlab.runtime", "llmlab.memory", "llmlab.checks", "llmlab.checks.core", "llmlab.course.notebooks"} <= set(graph)
    assert "llmlab.presets" in graph["llmlab.runtime"].imports
    assert "llmlab.intents" in graph["llmlab.memory"].imports  # a lazy import, inside a function


def test_no_import_circle(graph):
    assert circles(graph) == [], "llmlab's modules import each other in a circle (lazy imports count)"


def test_no_module_uses_another_modules_private_name(graph):
    assert private_reach_ins(graph) == [], "make the name public in its module, or keep its use inside that module"


def test_no_teaching_module_imports_the_course(graph):
    assert teaching_course_imports(graph) == []


def test_checks_import_nothing_from_the_course(graph):
    assert checks_course_imports(graph) == []
    assert not any(in_package(target, COURSE) for target in graph[CHECKS].imports)


def test_layers_hold_every_module_once_and_import_only_downwards(graph):
    found = layers(graph)
    print("\n" + "\n".join(f"layer {k}: {', '.join(layer)}" for k, layer in enumerate(found)))
    level = {name: k for k, layer in enumerate(found) for name in layer}
    assert sorted(level) == sorted(graph)
    assert found[0] and all(not graph[name].imports for name in found[0])
    for name, module in graph.items():
        assert all(level[target] < level[name] for target in module.imports), name


def declared_exercises(lab: str) -> dict[str, tuple[str, int]]:
    """``EXERCISES`` of ``llmlab/checks/lab<lab>.py``, read from its source (a literal; the module is not imported)."""
    tree = ast.parse((PACKAGE / "checks" / f"lab{lab}.py").read_text(encoding="utf-8"))
    values = [node.value for node in tree.body if isinstance(node, ast.Assign)
              and any(isinstance(target, ast.Name) and target.id == "EXERCISES" for target in node.targets)]
    assert len(values) == 1, f"llmlab/checks/lab{lab}.py assigns EXERCISES {len(values)} times, not once"
    return ast.literal_eval(values[0])


def test_each_check_module_declares_the_exercises_of_its_notebook():
    """The checks read a lab's exercises from its module's EXERCISES, the course from the notebook's metadata: equal."""
    from llmlab.course.notebooks import exercises_by_lab

    by_lab = {name.split("_", 1)[0]: exercises for name, exercises in exercises_by_lab().items()}
    lab_modules = sorted(path.stem[3:] for path in (PACKAGE / "checks").glob("lab*.py"))
    assert sorted(by_lab) == lab_modules, "one check module per solution notebook"
    for lab, exercises in by_lab.items():
        declared = declared_exercises(lab)
        assert list(declared) == [exercise["id"] for exercise in exercises], f"lab{lab}.EXERCISES: ids or their order"
        assert declared == {exercise["id"]: (exercise["title"], exercise["points"]) for exercise in exercises}, \
            f"llmlab/checks/lab{lab}.py's EXERCISES differs from solutions/{lab}_*.ipynb's exercise metadata"


# --- the rules can fail: each on a planted package ----------------------------------------------------------


def plant(tmp_path: Path, files: dict[str, str]) -> dict[str, Module]:
    """A package ``llmlab`` in ``tmp_path`` made of ``files`` (path under llmlab/ -> source), read as the real one is."""
    root = tmp_path / "llmlab"
    for path, source in {"__init__.py": "", **files}.items():
        (root / path).parent.mkdir(parents=True, exist_ok=True)
        (root / path).write_text(source, encoding="utf-8")
    for folder in {(root / path).parent for path in files}:
        (folder / "__init__.py").touch()
    return read_package(root)


def test_a_circle_is_found_even_through_a_lazy_import(tmp_path):
    planted = plant(tmp_path, {
        "low.py": "def f():\n    from llmlab.high import g\n    return g()\n",  # lazy: inside a function
        "high.py": "from llmlab import low\n\ndef g():\n    return 1\n",
        "alone.py": "import llmlab.low\n",
    })
    assert circles(planted) == [["llmlab.high", "llmlab.low"]]
    with pytest.raises(ValueError, match="circle"):
        layers(planted)


def test_a_longer_circle_and_a_relative_import_are_found(tmp_path):
    planted = plant(tmp_path, {
        "a.py": "import llmlab.b as b\n",
        "b.py": "from . import c\n",
        "c.py": "from llmlab.a import VALUE\n",
    })
    assert circles(planted) == [["llmlab.a", "llmlab.b", "llmlab.c"]]


def test_a_private_name_imported_from_another_module_is_found(tmp_path):
    planted = plant(tmp_path, {
        "intents.py": "_x = 1\n__all__ = []\n\ndef _own():\n    return _x\n",
        "memory.py": "def f():\n    from llmlab.intents import _x, __all__\n    return _x\n",
    })
    assert private_reach_ins(planted) == ["llmlab.memory, line 2: from llmlab.intents import _x"]


def test_a_private_attribute_of_an_imported_module_is_found(tmp_path):
    planted = plant(tmp_path, {
        "intents.py": "_x = 1\n",
        "memory.py": "from llmlab import intents\n\nintents._x\nintents.__name__\n",
        "runtime.py": "import llmlab.intents\n\nllmlab.intents._x\n",
        "lab.py": "import llmlab.intents as it\n\nit._x\n",
        "fine.py": "import torch\n\ntorch._C\n",
    })
    assert private_reach_ins(planted) == ["llmlab.lab, line 3: llmlab.intents._x",
                                          "llmlab.memory, line 3: llmlab.intents._x",
                                          "llmlab.runtime, line 3: llmlab.intents._x"]


def test_a_teaching_module_importing_the_course_is_found(tmp_path):
    planted = plant(tmp_path, {
        "course/notebooks.py": "from llmlab import runtime\n",
        "course/grading.py": "from llmlab.course.notebooks import f\n",  # the course may import itself
        "runtime.py": "def f():\n    import llmlab.course.notebooks\n",
        "grade.py": "from llmlab.course.grading import main\n",  # the grader's command line: allowed
    })
    assert teaching_course_imports(planted) == ["llmlab.runtime imports llmlab.course.notebooks (line 2)"]


def test_the_checks_importing_the_course_is_found(tmp_path):
    planted = plant(tmp_path, {
        "course/notebooks.py": "",
        "checks/core.py": "def lab_summary():\n    from llmlab.course.notebooks import exercises_by_lab\n",
        "checks/lab01.py": "from llmlab.course import notebooks\n",
    })
    assert checks_course_imports(planted) == ["llmlab.checks.core imports llmlab.course.notebooks (line 2)",
                                              "llmlab.checks.lab01 imports llmlab.course.notebooks (line 1)"]
    assert teaching_course_imports(planted) == checks_course_imports(planted)


def test_layers_of_a_planted_package(tmp_path):
    planted = plant(tmp_path, {"a.py": "", "b.py": "import llmlab.a\n", "c.py": "from llmlab import a, b\n"})
    assert layers(planted) == [["llmlab", "llmlab.a"], ["llmlab.b"], ["llmlab.c"]]


if __name__ == "__main__":
    for k, layer in enumerate(layers()):
        print(f"layer {k}: {', '.join(layer)}")
