"""What crosses between the grader and a submission: data in, data out, and nothing else accepted."""

from __future__ import annotations

import io
import json
import math
import struct

import numpy as np
import pytest
import torch

from llmlab.checks import wire
from llmlab.economics import SupportCosts
from llmlab.model import GPTConfig


def _round_trip(value):
    stream = io.BytesIO()
    structure, tensors = wire.encode(value)
    wire.write_message(stream, {"value": structure}, tensors)
    stream.seek(0)
    header, tensors = wire.read_message(stream)
    return wire.decode(header["value"], tensors)


def test_every_kind_of_data_comes_back_as_it_went():
    tensor = torch.randn(3, 4, dtype=torch.float64).requires_grad_(True)
    value = {
        "numbers": [1, 2.5, math.inf, -math.inf, True, None, "text"],
        "tuple": (1, ("a", "b")),
        "tensor": tensor, "mask": torch.ones(2, 2, dtype=torch.bool), "ids": torch.arange(5),
        "array": np.array([0.5, 1.5]), "flags": np.array([True, False]), "scalar": np.float64(2.0),
        "device": torch.device("cpu"), "dtype": torch.float16,
        "config": GPTConfig(vocab_size=11, context=8, d_model=16, n_heads=2, n_layers=1),
        "costs": SupportCosts(), "pairs": {("t", "h"): 3, ("h", "e"): 1},
    }
    back = _round_trip(value)
    assert back["numbers"][:2] == [1, 2.5] and back["numbers"][2:] == [math.inf, -math.inf, True, None, "text"]
    assert back["tuple"] == (1, ("a", "b"))
    assert torch.equal(back["tensor"], tensor.detach()) and back["tensor"].requires_grad and back["tensor"].dtype == torch.float64
    assert back["mask"].dtype == torch.bool and back["ids"].tolist() == [0, 1, 2, 3, 4]
    assert back["array"].dtype == np.float64 and back["flags"].dtype == np.bool_ and back["scalar"] == 2.0
    assert back["device"] == torch.device("cpu") and back["dtype"] is torch.float16
    assert back["config"] == value["config"] and back["costs"] == SupportCosts()
    assert back["pairs"] == {("t", "h"): 3, ("h", "e"): 1}
    assert math.isnan(_round_trip(math.nan))


def test_what_is_not_data_goes_only_as_a_handle():
    with pytest.raises(wire.WireError, match="cannot send a Linear"):
        wire.encode(torch.nn.Linear(2, 2))
    structure, _ = wire.encode([torch.nn.Linear(2, 2)], as_handle=lambda value: wire.Handle(7))
    assert wire.decode(structure, {}) == [wire.Handle(7)]
    with pytest.raises(wire.WireError, match="not a dataclass the course sends"):
        wire.decode({"$dataclass": "subprocess.CompletedProcess", "fields": []}, {})
    with pytest.raises(wire.WireError):
        wire.decode({"$float": "__import__('os')"}, {})
    with pytest.raises(wire.WireError, match="array of dtype"):
        wire.decode({"$ndarray": "0", "dtype": "|O"}, {"0": torch.zeros(1)})


def test_broken_messages_are_refused_not_run():
    def message(body: bytes, blob: bytes = b"") -> io.BytesIO:
        return io.BytesIO(struct.pack("<II", len(body), len(blob)) + body + blob)

    with pytest.raises(wire.WireError, match="not JSON"):
        wire.read_message(message(b"\x80\x04 pickled"))
    with pytest.raises(wire.WireError, match="not a JSON object"):
        wire.read_message(message(json.dumps([1]).encode()))
    with pytest.raises(wire.WireError, match="not a safetensors blob"):
        wire.read_message(message(b"{}", b"\x80\x04\x95 a pickle, not tensors"))
    with pytest.raises(wire.WireError, match="more than the"):
        wire.read_message(io.BytesIO(struct.pack("<II", wire.MAX_MESSAGE_BYTES, 1)))
    with pytest.raises(EOFError):  # the other side died in the middle of a message
        wire.read_message(io.BytesIO(struct.pack("<II", 100, 0) + b'{"cut'))
