"""A learner's code in another process, called by the checks as if it were here.

When the grader judges a submission, the learner's functions and classes live in a sandboxed
process (llmlab.course.sandbox), and each check runs in the grader's own process, where the
submission never ran a line. A :class:`RemoteObject` stands for one object over there: calling
it, reading or setting an attribute sends the request as data (llmlab.checks.wire) and waits for
the answer, within the time the grader allows. Tensors and arrays travel by value, copied in and,
where the learner's code changed them in place, copied back, so a check sees what it would see
in the notebook. What comes back is data or another handle, never code.

Two helpers let a check say what must happen on the learner's side:

- :func:`in_learner_process` runs one of the checks' own measuring functions (a training loop that
  records what the optimiser saw, say) where the learner's code is, and returns its result as data;
- :func:`lend` hands the learner's code an object of the judge (a model) that it may call but not
  hold: each call comes back to the judge, which runs it and records it.

In the notebook, both simply run the function here, on the object itself.
"""

from __future__ import annotations

import builtins
import os
import select
import time
from typing import BinaryIO

import numpy as np
import torch

from llmlab.checks import wire


MAX_LENT_CALL_ELEMENTS = 100_000  # what one call back to a lent model may pass: its work runs in the judge, so it is bounded


class LearnerTimeout(BaseException):
    """The learner's process did not answer within the time left for the exercise (a BaseException: no check catches it)."""


class ChannelBroken(BaseException):
    """The learner's process died or broke the format; nothing more can be asked of it."""


class RemoteError(Exception):
    """An exception raised by the learner's code over there, known by its type's name and message."""

    remote_type = "Exception"


def remote_exception(type_name: str, message: str) -> Exception:
    """An exception that the checks' ``except`` clauses treat as the remote one: a subclass of the built-in exception of
    that name (RuntimeError, NotImplementedError, …) where there is one, else of RemoteError alone."""
    base = getattr(builtins, type_name, None)
    bases = (RemoteError,)
    if isinstance(base, type) and issubclass(base, Exception) and base is not Exception:
        bases = (RemoteError, base)
    kind = type(f"Remote{type_name}", bases, {"remote_type": type_name})
    error = kind(message)
    return error


class Channel:
    """The judge's end of the pipes to one sandboxed process: send a request, answer its callbacks, return the reply."""

    def __init__(self, requests: BinaryIO, replies: BinaryIO):
        self.requests, self.replies = requests, replies
        self.deadline = float("inf")
        self.lent: dict[int, object] = {}
        self.lent_calls = 0

    # --- objects of the judge that the learner's code may call back -----------------------------------

    def lend(self, value, data: tuple[str, ...] = (), methods: tuple[str, ...] = ()) -> wire.Handle:
        """A handle for ``value``: the learner's code may call it and the ``methods`` named, and reads ``data`` as values."""
        number = len(self.lent) + 1
        self.lent[number] = (value, frozenset(methods))
        return wire.Handle(number, "lent", tuple((name, getattr(value, name)) for name in data))

    def _as_handle(self, value) -> wire.Handle:
        if isinstance(value, Lent):
            return self.lend(value.value, value.data, value.methods)
        if isinstance(value, RemoteObject) and value._channel is self:
            return wire.Handle(value._number)
        raise wire.WireError(f"a check tried to send a {type(value).__name__} to the learner's code; lend() it")

    def _from_handle(self, handle: wire.Handle):
        if handle.kind != "object":
            raise wire.WireError("the learner's process sent a handle of the judge's")
        return RemoteObject(self, handle.number)

    def _answer_callback(self, header: dict, tensors: dict) -> None:
        """Run a call the learner's code made on a lent object; only calling it, or calling one of its public methods."""
        self.lent_calls += 1
        try:
            if self.lent_calls > 100_000:
                raise RuntimeError("more than 100,000 calls back to the grader")
            target, methods = self.lent[int(header["target"])]
            method = str(header.get("method") or "__call__")
            if method != "__call__" and method not in methods:
                raise AttributeError(f"the grader's {type(target).__name__} lends no method {method!r} "
                                     f"(only calling it{''.join(', .' + name + '()' for name in sorted(methods))})")
            if sum(tensor.numel() for tensor in tensors.values()) > MAX_LENT_CALL_ELEMENTS:
                raise ValueError(f"a call to the grader's model may pass at most {MAX_LENT_CALL_ELEMENTS:,} numbers")
            args, kwargs = wire.decode(header["call"], tensors, from_handle=self._lent_object)
            with torch.no_grad():
                result = getattr(target, method)(*args, **kwargs)
            # What a lent method returns that is not data (a KV cache, say) is lent in turn: passed back, never opened.
            structure, out = wire.encode(result, as_handle=lambda value: self.lend(value, ("length",) if hasattr(value, "length") else ()))
            wire.write_message(self.requests, {"reply": "ok", "value": structure}, out)
        except Exception as error:  # the judge's own model refused the call: the learner's call fails, not the grader
            wire.write_message(self.requests, {"reply": "error", "type": type(error).__name__, "message": str(error)[:500]})

    def _lent_object(self, handle: wire.Handle):
        if handle.kind != "lent" or handle.number not in self.lent:
            raise wire.WireError("the learner's process sent back a handle the judge never lent")
        return self.lent[handle.number][0]

    # --- requests ---------------------------------------------------------------------------------------

    def wait_readable(self) -> None:
        left = self.deadline - time.monotonic()
        if left <= 0:
            raise LearnerTimeout
        ready, _, _ = select.select([self.replies], [], [], left if left != float("inf") else None)
        if not ready:
            raise LearnerTimeout

    def request(self, header: dict, value=None):
        """Send ``header`` (with ``value`` encoded as its "call"), serve callbacks, and return the decoded reply."""
        structure, tensors = wire.encode(value, as_handle=self._as_handle)
        seconds = self.deadline - time.monotonic()
        if seconds <= 0:
            raise LearnerTimeout
        try:  # the learner's side stops the call itself a little before the judge gives up on it
            wire.write_message(self.requests, {**header, "call": structure, "seconds": min(seconds * 0.9, 86_400)}, tensors)
            while True:
                self.wait_readable()
                reply, reply_tensors = wire.read_message(self.replies)
                if reply.get("op") == "callback":
                    self._answer_callback(reply, reply_tensors)
                    continue
                break
        except (EOFError, BrokenPipeError, OSError, wire.WireError) as error:
            raise ChannelBroken(f"the submission's process stopped answering ({type(error).__name__}: {error})") from None
        if reply.get("reply") == "ok":
            try:
                return (wire.decode(reply.get("value"), reply_tensors, from_handle=self._from_handle),
                        wire.decode(reply.get("updated"), reply_tensors))
            except (wire.WireError, KeyError, TypeError, ValueError) as error:
                raise ChannelBroken(f"the submission's process sent a broken reply ({error})") from None
        if reply.get("reply") == "error":
            raise _reply_error(reply)
        raise ChannelBroken("the submission's process sent a reply of no known kind")


def _reply_error(reply: dict) -> BaseException:
    from llmlab.checks.core import LearnerCodeError, Mismatch, ReferenceWithheld

    type_name, message = str(reply.get("type", "Exception"))[:80], str(reply.get("message", ""))[:2000]
    if reply.get("withheld"):
        return ReferenceWithheld(str(reply["withheld"])[:20], message)
    if type_name == "Mismatch":  # a check's own measuring function, run over there, named a mistake
        return Mismatch(message)
    if type_name == "LearnerCodeError":
        return LearnerCodeError(remote_exception(str(reply.get("original", "Exception"))[:80], message))
    return remote_exception(type_name, message)


def _copy_back(originals: list, updated) -> None:
    """Where the learner's code changed a tensor or array argument in place, change the judge's copy the same way."""
    if not isinstance(updated, list):
        return
    for original, new in zip(originals, updated):
        if isinstance(original, torch.Tensor) and isinstance(new, torch.Tensor) and new.shape == original.shape \
                and new.dtype == original.dtype and not torch.equal(new.to(original.device), original):
            with torch.no_grad():
                original.copy_(new)
        elif isinstance(original, np.ndarray) and isinstance(new, np.ndarray) and new.shape == original.shape \
                and not np.array_equal(new, original):
            np.copyto(original, new.astype(original.dtype))


class RemoteObject:
    """An object in the learner's process: call it, read or set its attributes; dunder names stay here."""

    _llmlab_remote = True

    def __init__(self, channel: Channel, number: int):
        object.__setattr__(self, "_channel", channel)
        object.__setattr__(self, "_number", number)

    def __call__(self, *args, **kwargs):
        # The global random state travels with the call and back, so that a check that seeds torch before calling
        # the learner's code (dropout masks, say) sees the same draws as in the notebook.
        value, updated = self._channel.request({"op": "call", "target": self._number, "grad": torch.is_grad_enabled()},
                                               [list(args), kwargs, torch.random.get_rng_state()])
        *updated, random_state = updated
        _copy_back([*args, *kwargs.values()], updated)
        if isinstance(random_state, torch.Tensor) and random_state.dtype == torch.uint8:
            try:
                torch.random.set_rng_state(random_state)
            except RuntimeError:  # not a generator state: the learner's side broke the format
                raise ChannelBroken("the submission's process sent back a broken random state") from None
        return value

    def __getattr__(self, name: str):
        if name.startswith("__") and name.endswith("__"):
            raise AttributeError(name)
        value, _ = self._channel.request({"op": "getattr", "target": self._number, "name": name})
        return value

    def __setattr__(self, name: str, value) -> None:
        self._channel.request({"op": "setattr", "target": self._number, "name": name}, value)

    def __repr__(self) -> str:
        return f"<the learner's object #{self._number}>"


def is_remote(code) -> bool:
    """True for a learner's object in the grader's sandbox, also once wrapped by ``learner()`` (functools.wraps)."""
    while not getattr(type(code), "_llmlab_remote", False) and hasattr(code, "__wrapped__"):
        code = code.__wrapped__
    return getattr(type(code), "_llmlab_remote", False) is True


def _unwrapped(code):
    while not getattr(type(code), "_llmlab_remote", False) and hasattr(code, "__wrapped__"):
        code = code.__wrapped__
    return code


class Lent:
    """An object of the judge handed to the learner's code: calls come back to the judge (see :func:`lend`)."""

    def __init__(self, value, data: tuple[str, ...], methods: tuple[str, ...]):
        self.value, self.data, self.methods = value, data, methods


def lend(value, code, data: tuple[str, ...] = (), methods: tuple[str, ...] = ()):
    """``value`` as the learner's code ``code`` should receive it: itself in the notebook; when ``code`` runs in the
    grader's sandbox, a lent object: calling it and the ``methods`` named run here, on ``value``, and the attributes
    named in ``data`` travel as data."""
    return Lent(value, data, methods) if is_remote(code) else value


def in_learner_process(function, code, *args):
    """``function(code, *args)``: here in the notebook; in the learner's process when ``code`` is remote, where
    ``function`` (a module-level function of llmlab.checks) runs on the learner's object and returns data."""
    if not is_remote(code):
        return function(code, *args)
    code = _unwrapped(code)
    name = f"{function.__module__}:{function.__qualname__}"
    from llmlab.checks.core import current_variant

    value, _ = code._channel.request({"op": "harness", "target": code._number, "function": name, "variant": current_variant(),
                                      "grad": torch.is_grad_enabled()}, [list(args), {}])
    return value


def start_deadline(channel: Channel, seconds: float) -> None:
    channel.deadline = time.monotonic() + seconds


def pipe_files() -> tuple[tuple[int, int], tuple[int, int]]:
    """Two pipes: (judge → learner read end, write end), (learner → judge read end, write end)."""
    return os.pipe(), os.pipe()
