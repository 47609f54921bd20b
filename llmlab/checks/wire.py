"""What crosses between the grader and a submission's process: plain data, never code.

The grader (llmlab.course.grading) runs a learner's code in a sandboxed process of its own and
the checks in another, so nothing the submission does can touch the judge. The two talk through
pipes in messages of this format: a JSON header for the structure, and one safetensors blob for
every tensor and array in it. Neither side ever unpickles or evaluates what the other wrote; a
message that is not this format, or too large, is an error, never something run.

What a value may be: None, bool, int, float (inf and nan included), str, a list, tuple or dict
of values (a dict's keys may be any hashable such value), a torch.Tensor (any device: it travels through the CPU), a NumPy array
or scalar, a torch.device or dtype, one of the course's plain dataclasses (``DATACLASSES``),
and a handle: the number of an object that stays on the other side (a learner's class, a module
instance, a model the judge lends). Anything else is sent as a handle by the side that owns it.
"""

from __future__ import annotations

import dataclasses
import json
import math
import struct
from typing import BinaryIO

import numpy as np
import torch

MAX_MESSAGE_BYTES = 64 * 2**20  # a message larger than this is refused: no check needs it, and the judge's memory is safe
MAX_HEADER_BYTES = 8 * 2**20    # of which the JSON structure

# The course's dataclasses that checks pass to learners' code, rebuilt field by field on the other side.
DATACLASSES = {"llmlab.model.GPTConfig", "llmlab.economics.SupportCosts"}


class WireError(Exception):
    """A message that breaks the format: the other side is broken or hostile."""


@dataclasses.dataclass(frozen=True)
class Handle:
    """An object that lives on the other side, known here by its number."""

    number: int
    kind: str = "object"  # "object" (the learner's) or "lent" (the judge's, which the learner may call back)
    data: tuple = ()       # attributes sent along with a lent object as data: ((name, value), ...)


def _dataclass_name(value) -> str:
    return f"{type(value).__module__}.{type(value).__qualname__}"


def _dataclass_type(name: str):
    import importlib

    if name not in DATACLASSES:
        raise WireError(f"not a dataclass the course sends: {name}")
    module, _, qualname = name.rpartition(".")
    return getattr(importlib.import_module(module), qualname)


def is_data(value) -> bool:
    """True if ``value`` crosses as data (see the module's docstring); False for what must go as a handle."""
    if value is None or isinstance(value, (bool, int, float, str, torch.Tensor, np.ndarray, np.generic, torch.device, torch.dtype, Handle)):
        return not isinstance(value, np.ndarray) or value.dtype.kind in "biuf"
    if isinstance(value, (list, tuple)):
        return all(is_data(item) for item in value)
    if isinstance(value, dict):
        return all(is_data(key) and is_data(item) for key, item in value.items())
    if dataclasses.is_dataclass(value) and not isinstance(value, type) and _dataclass_name(value) in DATACLASSES:
        return all(is_data(getattr(value, f.name)) for f in dataclasses.fields(value))
    return False


def encode(value, as_handle=None) -> tuple[object, dict[str, torch.Tensor]]:
    """(JSON-able structure, tensors by key). ``as_handle(obj) -> Handle`` turns what is not data into a handle;
    without it, such a value is an error."""
    tensors: dict[str, torch.Tensor] = {}

    def walk(item):
        if item is None or isinstance(item, (bool, str)):
            return item
        if isinstance(item, int):
            return item
        if isinstance(item, float):
            return item if math.isfinite(item) else {"$float": repr(item)}
        if isinstance(item, Handle):
            return {"$handle": item.number, "kind": item.kind, "data": [[name, walk(value)] for name, value in item.data]}
        if isinstance(item, torch.Tensor):
            key = str(len(tensors))
            tensors[key] = item.detach().to("cpu").contiguous().clone()
            return {"$tensor": key, "device": item.device.type, "requires_grad": bool(item.requires_grad)}
        if isinstance(item, np.ndarray) and item.dtype.kind in "biuf":
            key = str(len(tensors))
            tensors[key] = torch.from_numpy(np.ascontiguousarray(item).copy())
            return {"$ndarray": key, "dtype": item.dtype.str}
        if isinstance(item, np.generic):
            return walk(item.item())
        if isinstance(item, torch.device):
            return {"$device": str(item)}
        if isinstance(item, torch.dtype):
            return {"$dtype": str(item).removeprefix("torch.")}
        if isinstance(item, tuple):
            return {"$tuple": [walk(x) for x in item]}
        if isinstance(item, list):
            return [walk(x) for x in item]
        if isinstance(item, dict) and all(isinstance(key, str) for key in item):
            return {"$dict": [[key, walk(value)] for key, value in item.items()]}
        if isinstance(item, dict) and all(is_data(key) for key in item):
            return {"$map": [[walk(key), walk(value)] for key, value in item.items()]}
        if dataclasses.is_dataclass(item) and not isinstance(item, type) and _dataclass_name(item) in DATACLASSES:
            return {"$dataclass": _dataclass_name(item), "fields": [[f.name, walk(getattr(item, f.name))] for f in dataclasses.fields(item)]}
        if as_handle is not None:
            return walk(as_handle(item))
        raise WireError(f"cannot send a {type(item).__name__} as data")

    return walk(value), tensors


_TORCH_DTYPES = {name: getattr(torch, name) for name in ("float16", "bfloat16", "float32", "float64", "int8", "int16", "int32",
                                                          "int64", "uint8", "bool")}


def decode(structure, tensors: dict[str, torch.Tensor], from_handle=None, device_ok=None):
    """The value ``encode`` gave; ``from_handle(Handle) -> object`` turns handles back into objects (default: Handle).

    ``device_ok(name) -> bool`` says whether a tensor may be put on that device here; where it may not (no GPU on
    this side), it stays on the CPU."""

    def walk(item):
        if item is None or isinstance(item, (bool, int, str)):
            return item
        if isinstance(item, float):
            return item
        if isinstance(item, list):
            return [walk(x) for x in item]
        if not isinstance(item, dict) or len(item) == 0:
            raise WireError(f"unexpected item in a message: {type(item).__name__}")
        if "$float" in item:
            text = item["$float"]
            if text not in ("inf", "-inf", "nan"):
                raise WireError(f"not a float: {text!r}")
            return float(text)
        if "$tensor" in item:
            tensor = tensors[str(item["$tensor"])]
            device = str(item.get("device", "cpu"))
            if device != "cpu" and (device_ok is None or device_ok(device)):
                tensor = tensor.to(device)
            if item.get("requires_grad") and tensor.is_floating_point():
                tensor.requires_grad_(True)
            return tensor
        if "$ndarray" in item:
            dtype = np.dtype(str(item["dtype"]))
            if dtype.kind not in "biuf":
                raise WireError(f"array of dtype {dtype} is not data")
            return tensors[str(item["$ndarray"])].numpy().astype(dtype, copy=True)
        if "$device" in item:
            device = str(item["$device"])
            return torch.device(device if device_ok is None or device_ok(device) else "cpu")
        if "$dtype" in item:
            name = str(item["$dtype"])
            if name not in _TORCH_DTYPES:
                raise WireError(f"unknown dtype {name!r}")
            return _TORCH_DTYPES[name]
        if "$tuple" in item:
            return tuple(walk(x) for x in item["$tuple"])
        if "$dict" in item:
            return {str(key): walk(value) for key, value in item["$dict"]}
        if "$map" in item:
            try:
                return {walk(key): walk(value) for key, value in item["$map"]}
            except TypeError as error:  # a key that cannot be hashed
                raise WireError(f"a dictionary key that is not hashable: {error}") from None
        if "$dataclass" in item:
            kind = _dataclass_type(str(item["$dataclass"]))
            names = {f.name for f in dataclasses.fields(kind)}
            fields = {str(name): walk(value) for name, value in item["fields"]}
            if not set(fields) <= names:
                raise WireError(f"{kind.__name__} has no fields {sorted(set(fields) - names)}")
            return kind(**fields)
        if "$handle" in item:
            handle = Handle(int(item["$handle"]), str(item.get("kind", "object")),
                            tuple((str(name), walk(value)) for name, value in item.get("data", [])))
            return from_handle(handle) if from_handle is not None else handle
        raise WireError(f"unknown item in a message: {sorted(item)[:3]}")

    return walk(structure)


def write_message(stream: BinaryIO, header: dict, tensors: dict[str, torch.Tensor] | None = None) -> None:
    """One message: 8 bytes of lengths, the JSON header, the safetensors blob (empty when there are no tensors)."""
    from safetensors.torch import save

    body = json.dumps(header, allow_nan=False).encode("utf-8")
    blob = save(tensors) if tensors else b""
    stream.write(struct.pack("<II", len(body), len(blob)) + body + blob)
    stream.flush()


def _read_exactly(stream: BinaryIO, size: int) -> bytes:
    chunks, left = [], size
    while left:
        chunk = stream.read(left)
        if not chunk:
            raise EOFError("the other side closed the channel")
        chunks.append(chunk)
        left -= len(chunk)
    return b"".join(chunks)


def read_message(stream: BinaryIO) -> tuple[dict, dict[str, torch.Tensor]]:
    """(header, tensors) of the next message; WireError if it breaks the format, EOFError if the channel closed."""
    from safetensors.torch import load

    body_size, blob_size = struct.unpack("<II", _read_exactly(stream, 8))
    if body_size + blob_size > MAX_MESSAGE_BYTES or body_size > MAX_HEADER_BYTES:
        raise WireError(f"a message of {body_size + blob_size:,} bytes is more than the {MAX_MESSAGE_BYTES:,} allowed")
    try:
        header = json.loads(_read_exactly(stream, body_size).decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise WireError(f"the header is not JSON: {error}") from None
    if not isinstance(header, dict):
        raise WireError("the header is not a JSON object")
    blob = _read_exactly(stream, blob_size) if blob_size else b""
    try:
        tensors = load(blob) if blob else {}
    except Exception as error:  # safetensors' own parser: whatever it rejects is not data
        raise WireError(f"the tensors are not a safetensors blob: {error}") from None
    return header, tensors
