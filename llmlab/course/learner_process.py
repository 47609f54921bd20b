"""What runs inside the grader's sandbox: a submission's cells, then its objects, served to the judge as data.

    python -m llmlab.course.learner_process NOTEBOOK CELL_SECONDS   (file descriptors 3: requests in, 4: replies out)

The grader (llmlab.course.grading) starts this in a bubblewrap sandbox (llmlab.course.sandbox).
It runs every code cell of the submission in one IPython shell, as a kernel would, except the
self-check cells (the judge runs the checks itself, elsewhere), each cell stopped after
CELL_SECONDS. It then reports which cells raised what, and answers the judge's requests: look up a
name, call an object, read or set an attribute, run one of the checks' measuring functions on an
object (llmlab.checks.remote). Everything in this process is the submission's to change; that is
why nothing the judge decides is computed here. Requests and replies are llmlab.checks.wire
messages on their own pipes: what the submission prints goes nowhere.
"""

from __future__ import annotations

import contextlib
import importlib
import io
import os
import signal
import sys

import torch

from llmlab.checks import wire


class _Silenced(io.TextIOBase):
    """Where the submission's printing goes: nowhere (the judge reads only the pipes)."""

    def write(self, text: str) -> int:
        return len(text)

    def writable(self) -> bool:
        return True


@contextlib.contextmanager
def _time_limit(seconds: float):
    """A KeyboardInterrupt in the main thread after ``seconds``, as a kernel interrupt would give."""

    def interrupt(signum, frame):
        raise KeyboardInterrupt(f"stopped after {seconds:g} s")

    previous = signal.signal(signal.SIGALRM, interrupt)
    signal.setitimer(signal.ITIMER_REAL, max(seconds, 0.001))
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def _error_line(error: BaseException) -> str:
    text = str(error).strip().splitlines()
    return f"{type(error).__name__}: {text[0][:160]}" if text else type(error).__name__


def run_cells(notebook_path: str, cell_seconds: float) -> tuple[dict, dict[int, str]]:
    """Run the submission's code cells (not its self-check cells) in one shell; (namespace, {code-cell index: first error})."""
    import json

    from IPython.core.interactiveshell import InteractiveShell

    # The grader wrote this file with nbformat, so it is a version 4 notebook: read as plain JSON, which starts in a
    # fraction of the time importing nbformat takes.
    with open(notebook_path, encoding="utf-8") as handle:
        notebook = json.load(handle)
    shell = InteractiveShell.instance()
    errors: dict[int, str] = {}
    code_cells = [cell for cell in notebook["cells"] if cell.get("cell_type") == "code"]
    for index, cell in enumerate(code_cells):
        if ((cell.get("metadata") or {}).get("llmlab") or {}).get("check"):
            continue  # a self-check cell: the judge runs the checks itself
        source = cell.get("source", "")
        source = "".join(source) if isinstance(source, list) else str(source)
        try:
            with _time_limit(cell_seconds):
                result = shell.run_cell(source, store_history=False, silent=True)
        except BaseException as error:  # an interrupt that escaped the shell
            errors[index] = _error_line(error)
            continue
        error = result.error_before_exec or result.error_in_exec
        if error is not None:
            errors[index] = _error_line(error) if not isinstance(error, KeyboardInterrupt) else \
                f"stopped after the cell time limit of {cell_seconds:g} s (an endless loop?)"
    return shell.user_ns, errors


class _Server:
    """Answers the judge's requests about the objects of one namespace."""

    def __init__(self, namespace: dict, requests, replies):
        self.namespace, self.requests, self.replies = namespace, requests, replies
        self.objects: dict[int, object] = {}

    # --- objects both ways ------------------------------------------------------------------------

    def handle(self, value) -> wire.Handle:
        number = len(self.objects) + 1
        self.objects[number] = value
        return wire.Handle(number)

    def resolve(self, handle: wire.Handle):
        if handle.kind == "lent":
            return _LentObject(self, handle)
        return self.objects[handle.number]

    def call_back(self, number: int, method: str, args, kwargs):
        """The learner's code calls an object the judge lent: ask the judge, wait for its answer."""
        structure, tensors = wire.encode([list(args), kwargs], as_handle=self._handle_for_callback)
        wire.write_message(self.replies, {"op": "callback", "target": number, "method": method, "call": structure}, tensors)
        reply, reply_tensors = wire.read_message(self.requests)
        if reply.get("reply") != "ok":
            raise RuntimeError(f"{reply.get('type', 'Error')}: {reply.get('message', '')}")
        return wire.decode(reply.get("value"), reply_tensors, from_handle=self.resolve, device_ok=_device_ok)

    @staticmethod
    def _handle_for_callback(value) -> wire.Handle:
        if isinstance(value, _LentObject):
            return wire.Handle(value._handle.number, "lent")
        raise TypeError(f"cannot pass a {type(value).__name__} to the grader's model")

    # --- requests ---------------------------------------------------------------------------------

    def serve(self) -> None:
        while True:
            try:
                header, tensors = wire.read_message(self.requests)
            except EOFError:
                return
            seconds = float(header.get("seconds", 60))
            try:
                with torch.set_grad_enabled(bool(header.get("grad", True))), _time_limit(seconds):
                    value, updated = self.answer(header, tensors)
                structure, out = wire.encode(value, as_handle=self.handle)
                updated_structure, updated_tensors = wire.encode(updated, as_handle=lambda item: None)
                out.update({f"u{key}": tensor for key, tensor in updated_tensors.items()})
                wire.write_message(self.replies, {"reply": "ok", "value": structure,
                                                  "updated": _renamed(updated_structure)}, out)
            except BaseException as error:  # whatever the learner's code raised, even SystemExit, goes back as a reply
                wire.write_message(self.replies, _error_reply(error, seconds))

    def answer(self, header: dict, tensors: dict):
        op = header.get("op")
        if op == "lookup":
            name = str(header["name"])
            if name not in self.namespace:
                raise NameError(f"name {name!r} is not defined")
            return self.handle(self.namespace[name]), None
        target = self.objects[int(header["target"])]
        call = wire.decode(header.get("call"), tensors, from_handle=self.resolve, device_ok=_device_ok)
        if op == "getattr":
            return getattr(target, str(header["name"])), None
        if op == "setattr":
            setattr(target, str(header["name"]), call)
            return None, None
        if op == "call":
            args, kwargs, random_state = call
            torch.random.set_rng_state(random_state)  # the judge's global random state, as the call would find it there
            result = target(*args, **kwargs)
            return result, [*_changeable(args, kwargs), torch.random.get_rng_state()]
        if op == "harness":
            from llmlab.checks.core import learner, variant

            args, kwargs = call
            with variant(int(header.get("variant", 0))):  # what the learner's code raises comes back as theirs
                result = _harness(str(header["function"]))(learner(target), *args, **kwargs)
            return result, None
        raise ValueError(f"unknown request {op!r}")


def _changeable(args, kwargs) -> list:
    """The tensor and array arguments after the call (the learner's code may have changed them in place), None for others."""
    return [item if isinstance(item, torch.Tensor) or _is_array(item) else None for item in [*args, *kwargs.values()]]


def _renamed(structure):
    """The copied-back arguments' tensors travel under keys 'u0', 'u1', … beside the value's."""
    if isinstance(structure, dict):
        renamed = {key: _renamed(value) for key, value in structure.items()}
        for key in ("$tensor", "$ndarray"):
            if key in renamed:
                renamed[key] = f"u{renamed[key]}"
        return renamed
    if isinstance(structure, list):
        return [_renamed(item) for item in structure]
    return structure


def _is_array(item) -> bool:
    import numpy as np

    return isinstance(item, np.ndarray)


def _device_ok(name: str) -> bool:
    return name == "cpu" or (name.startswith("cuda") and torch.cuda.is_available())


def _harness(name: str):
    """One of the checks' measuring functions, by "module:qualname"; only functions of llmlab.checks."""
    module_name, _, qualname = name.partition(":")
    if not module_name.startswith("llmlab.checks.") or "." in qualname or not qualname:
        raise ValueError(f"not a function of the checks: {name}")
    return getattr(importlib.import_module(module_name), qualname)


def _withheld_in(error: BaseException):
    from llmlab.checks.core import ReferenceWithheld

    seen = set()
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        if isinstance(error, ReferenceWithheld):
            return error
        error = error.__cause__ or error.__context__ or getattr(error, "original", None)
    return None


def _error_reply(error: BaseException, seconds: float) -> dict:
    from llmlab.checks.core import LearnerCodeError

    withheld = _withheld_in(error)
    if withheld is not None:
        return {"reply": "error", "type": "ReferenceWithheld", "withheld": withheld.exercise, "message": withheld.where}
    if isinstance(error, KeyboardInterrupt):
        return {"reply": "error", "type": "TimeoutError", "message": f"did not finish within {seconds:g} s (an endless loop?)"}
    if isinstance(error, LearnerCodeError):
        return {"reply": "error", "type": "LearnerCodeError", "original": type(error.original).__name__,
                "message": str(error.original)[:2000]}
    return {"reply": "error", "type": type(error).__name__, "message": str(error)[:2000]}


class _LentObject:
    """An object of the judge (a model) as the learner's code sees it: calls and public methods go back to the judge."""

    def __init__(self, server: _Server, handle: wire.Handle):
        self._server, self._handle = server, handle
        self._data = dict(handle.data)

    def __call__(self, *args, **kwargs):
        return self._server.call_back(self._handle.number, "__call__", args, kwargs)

    def __getattr__(self, name: str):
        if name.startswith("_"):
            raise AttributeError(name)
        if name in self._data:
            return self._data[name]
        return lambda *args, **kwargs: self._server.call_back(self._handle.number, name, args, kwargs)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    notebook_path, cell_seconds = argv[0], float(argv[1])
    requests, replies = os.fdopen(3, "rb"), os.fdopen(4, "wb")
    os.environ["MPLBACKEND"] = "Agg"
    sys.stdout = sys.stderr = _Silenced()
    namespace, errors = run_cells(notebook_path, cell_seconds)
    wire.write_message(replies, {"ready": True, "errors": [[index, text] for index, text in errors.items()]})
    _Server(namespace, requests, replies).serve()
    return 0


if __name__ == "__main__":
    os._exit(main())  # no atexit handler of the submission's runs after the judge is done
