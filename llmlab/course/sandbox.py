"""The box a submission's code runs in while it is graded: bubblewrap, limits, and a course without its answers.

On Linux the grader runs each submission's process (llmlab.course.learner_process) under
bubblewrap (``bwrap``, Debian/Ubuntu package ``bubblewrap``; Fedora: ``bubblewrap``; it needs
either root, as here, or unprivileged user namespaces), as its own unprivileged user, with:

- the Python environment and the course's data read-only, and the course's code as a copy in
  which the lab's reference implementations are stubs (see :func:`withheld_course`): a
  submission that imports, wraps or calls one gets an error instead of the answer, however it
  imported it, because the real code is nowhere in its view;
- a private writable scratch folder and /tmp (each a small tmpfs: a full disk stops the
  submission, nothing else), its notebook read-only, and nothing else: no solutions, no other
  submission, no home folder, no gradebook, results or feedback;
- no network, its own process, IPC and host-name namespaces, a new session (no terminal
  injection), and limits on address space, processes, file size, CPU time and open files.

Where bubblewrap cannot run (macOS, Windows, a container that forbids namespaces),
:func:`unavailable_reason` says why, and the grader refuses to start unless asked explicitly to
go on without a sandbox (``--no-sandbox``); it then says so in its output and in the gradebook.
"""

from __future__ import annotations

import ast
import os
import platform
import resource
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from llmlab.course.notebooks import ROOT

PACKAGE = Path(__file__).resolve().parent.parent  # the llmlab folder the judge imports
FIRST_UID = 61000  # grader slot k runs its submissions as uid FIRST_UID + k, so slots never share a process limit

# Besides each exercise's reference (the REFERENCES of its lab's checks), what does an exercise's work for the learner.
# Withheld too, as "module.name": only top-level functions and classes.
DOES_THE_WORK = {
    "03.5": ("llmlab.training.backward_and_step",),
    "04.1": ("llmlab.lora.LoRALinear",),
    "04b.2": ("llmlab.instruct.mask_labels", "llmlab.instruct.ChatCollator"),
    "05.3": ("llmlab.generation.generate", "llmlab.generation.generate_batch"),
    "07.3": ("llmlab.retrieval.recall_at_k", "llmlab.retrieval.reciprocal_ranks"),
    "07.5": ("llmlab.rag.normalize_answer",),
}

# Functions whose body the sandbox's copy replaces: the grader's preset wins over whatever the notebook sets.
OVERRIDES = {"llmlab.runtime.preset_name": 'return "smoke"'}


@dataclass
class Limits:
    memory_gb: float = 8.0         # address space of the submission's process
    processes: int = 256           # processes and threads of its user
    file_mb: int = 256             # the largest file it may write (its scratch folder holds 512 MB, /tmp 256 MB)
    cpu_seconds: int = 1800        # CPU time, all its threads together
    open_files: int = 1024


def withheld_objects(lab: str) -> dict[str, str]:
    """{"module.name": exercise id} of everything stubbed out in the sandbox's copy of the course for lab ``lab``."""
    from llmlab import checks

    withheld = {}
    for exercise, (_, reference) in checks.lab_module(lab).REFERENCES.items():
        withheld[f"{reference.__module__}.{reference.__qualname__}"] = exercise
        for name in DOES_THE_WORK.get(exercise, ()):
            withheld[name] = exercise
    return withheld


def _stub(exercise: str, where: str) -> list[ast.stmt]:
    return ast.parse(f"raise __import__('llmlab.checks.core', fromlist=['core']).ReferenceWithheld({exercise!r}, {where!r})").body


def stubbed_source(source: str, module: str, withheld: dict[str, str], overrides: dict[str, str]) -> str:
    """``source`` with the body of every withheld top-level function replaced by a ReferenceWithheld, every withheld class
    reduced to an ``__init__`` that raises it, and the overridden functions' bodies replaced."""
    tree = ast.parse(source)
    found = set()
    for node in tree.body:
        if not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            continue
        name = f"{module}.{node.name}"
        if name in withheld:
            found.add(name)
            if isinstance(node, ast.ClassDef):
                node.body = [ast.FunctionDef(name="__init__", args=ast.parse("def f(self, *args, **kwargs): pass").body[0].args,
                                             body=_stub(withheld[name], name), decorator_list=[], returns=None, type_params=[])]
            else:
                node.body = _stub(withheld[name], name)
        elif name in overrides:
            found.add(name)
            node.body = ast.parse(overrides[name]).body
    missing = {name for name in {*withheld, *overrides} if name.rpartition(".")[0] == module} - found
    if missing:
        raise ValueError(f"{module} has no top-level {', '.join(sorted(missing))} to withhold")
    return ast.unparse(ast.fix_missing_locations(tree))


def withheld_course(lab: str, destination: Path) -> Path:
    """A copy of the llmlab package in ``destination``/llmlab with lab ``lab``'s references withheld; returns its folder."""
    withheld = withheld_objects(lab)
    target = Path(destination) / "llmlab"
    shutil.copytree(PACKAGE, target, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    modules = {name.rpartition(".")[0] for name in {*withheld, *OVERRIDES}}
    for module in modules:
        path = target.joinpath(*module.split(".")[1:]).with_suffix(".py")
        path.write_text(stubbed_source(path.read_text(encoding="utf-8"), module, withheld, OVERRIDES), encoding="utf-8")
    for folder in [target, *target.rglob("*")]:
        folder.chmod(0o755 if folder.is_dir() else 0o644)
    return target


def unavailable_reason() -> str | None:
    """None where submissions can run in bubblewrap here, else why not (one line)."""
    if platform.system() != "Linux":
        return f"bubblewrap needs Linux; this is {platform.system()}"
    if not shutil.which("bwrap"):
        return "bubblewrap is not installed (Debian/Ubuntu: apt-get install bubblewrap)"
    if not shutil.which("setpriv"):
        return "setpriv (util-linux) is not installed"
    if os.geteuid() != 0:
        return "the grader runs as a user who cannot give each submission a user of its own: run it as root (e.g. in a VM or container)"
    probe = subprocess.run(["bwrap", "--ro-bind", "/", "/", "--unshare-net", "--unshare-pid", "--die-with-parent", "true"],
                           capture_output=True, text=True)
    if probe.returncode != 0:
        return f"bubblewrap cannot create namespaces here ({(probe.stderr.strip().splitlines() or ['no message'])[-1]})"
    return None


SYSTEM = ("/usr", "/bin", "/sbin", "/lib", "/lib32", "/lib64", "/etc")


class _Binds:
    """bubblewrap arguments that bind paths read-only where they are, making the folders on the way (mode 755)."""

    def __init__(self):
        self.arguments: list[str] = []
        self.made: set[Path] = set()

    def bind(self, source: Path, target: Path | None = None) -> None:
        target = Path(target or source)
        for parent in reversed(target.parents):
            if str(parent) != "/" and parent not in self.made and not any(parent.is_relative_to(p) for p in SYSTEM):
                self.arguments += ["--perms", "0755", "--dir", str(parent)]
                self.made.add(parent)
        self.arguments += ["--ro-bind", str(source), str(target)]
        self.made.add(target)


def command(notebook: Path, course: Path, cell_seconds: float, slot: int, sandboxed: bool = True) -> list[str]:
    """The command line that runs ``notebook`` in the learner process: inside bubblewrap, or bare with ``sandboxed=False``."""
    inner = [sys.executable, "-s", "-m", "llmlab.course.learner_process",
             "/submission/notebook.ipynb" if sandboxed else str(notebook), str(cell_seconds)]
    if not sandboxed:
        return inner
    uid = str(FIRST_UID + slot)
    binds = _Binds()
    for path in SYSTEM:
        if os.path.exists(path):
            binds.arguments += ["--ro-bind", path, path]
    # Every home folder is an empty tmpfs: Python may live under one (pyenv), and nothing else of it is seen. The
    # submission's /tmp and scratch folder too, made before the binds: the course may itself live under /tmp.
    binds.arguments += ["--perms", "0755", "--tmpfs", "/root", "--perms", "0755", "--tmpfs", "/home",
                        "--perms", "1777", "--size", str(512 * 2**20), "--tmpfs", "/scratch",
                        "--perms", "1777", "--size", str(256 * 2**20), "--tmpfs", "/tmp"]
    pythons = {Path(sys.base_prefix).resolve(), Path(sys.prefix).resolve()}
    for path in sorted(pythons, key=lambda p: len(p.parts)):
        if not any(path.is_relative_to(system) for system in SYSTEM):
            binds.bind(path)
    binds.bind(course, PACKAGE)  # the course's code, with the references withheld, where llmlab is imported from
    if (ROOT / "data").is_dir():
        binds.bind(ROOT / "data")
    binds.bind(notebook, Path("/submission/notebook.ipynb"))
    return [
        "bwrap", *binds.arguments,
        "--proc", "/proc", "--dev", "/dev",
        "--unshare-net", "--unshare-pid", "--unshare-ipc", "--unshare-uts", "--unshare-cgroup-try",
        "--die-with-parent", "--new-session", "--chdir", "/scratch",
        "--", "setpriv", f"--reuid={uid}", f"--regid={uid}", "--clear-groups", "--inh-caps=-all", "--bounding-set=-all",
        "--no-new-privs", "--", *inner,
    ]


def environment(threads: int, scratch: Path | None = None, course: Path | None = None) -> dict[str, str]:
    """The submission's whole environment: nothing of the grader's is passed on. Without a sandbox, ``scratch`` is its
    folder (the sandbox's is /scratch) and ``course`` the withheld copy of llmlab, found before the installed one."""
    folder = str(scratch or "/scratch")
    return {"PATH": "/usr/local/bin:/usr/bin:/bin", "HOME": folder, "TMPDIR": "/tmp" if scratch is None else folder,
            "LANG": "C.UTF-8", "LLMLAB_PRESET": "smoke", "LLMLAB_RUNS": f"{folder}/runs", "MPLBACKEND": "Agg",
            "MPLCONFIGDIR": f"{folder}/.matplotlib", "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads),
            "CUDA_VISIBLE_DEVICES": "", "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1",
            "HF_HOME": f"{folder}/.hf", "PYTHONDONTWRITEBYTECODE": "1", "PYTHONNOUSERSITE": "1",
            **({"PYTHONPATH": str(course.parent)} if course is not None else {})}


def apply_limits(limits: Limits):
    """What runs in the child before bubblewrap starts: a session of its own and the resource limits."""

    def apply() -> None:
        os.setsid()
        for name, value in ((resource.RLIMIT_AS, int(limits.memory_gb * 2**30)), (resource.RLIMIT_NPROC, limits.processes),
                            (resource.RLIMIT_FSIZE, limits.file_mb * 2**20), (resource.RLIMIT_CPU, limits.cpu_seconds),
                            (resource.RLIMIT_NOFILE, limits.open_files), (resource.RLIMIT_CORE, 0)):
            resource.setrlimit(name, (value, value))

    return apply

