"""Save and resume training in safetensors files, so a disconnect loses minutes, not the run.

A checkpoint is one ``.safetensors`` file holding the model's weights, the
optimiser's moment estimates and the random-number states, plus a JSON header
with the step, the training history and anything else the caller adds. It is
written to a temporary name and renamed, so an interruption while saving never
leaves a half-written checkpoint behind.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file

_MODEL, _OPTIMIZER, _RNG = "model.", "optimizer.", "rng."


def _unique_model_tensors(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The state dict without the second name of a tied weight (safetensors stores each tensor once)."""
    seen, tensors = set(), {}
    for name, tensor in model.state_dict().items():
        if tensor.data_ptr() in seen:
            continue
        seen.add(tensor.data_ptr())
        tensors[_MODEL + name] = tensor.detach().contiguous().cpu()
    return tensors


def save_checkpoint(path, model: torch.nn.Module,
                    optimizer: torch.optim.Optimizer | None = None, step: int = 0,
                    rng: dict[str, torch.Tensor] | None = None,
                    metadata: dict | None = None) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tensors = _unique_model_tensors(model)
    optimizer_header = None
    if optimizer is not None:
        state = optimizer.state_dict()
        for index, slots in state["state"].items():
            for slot, value in slots.items():
                tensors[f"{_OPTIMIZER}{index}.{slot}"] = (
                    torch.as_tensor(value).detach().contiguous().cpu())
        optimizer_header = state["param_groups"]
    for name, value in (rng or {}).items():
        tensors[_RNG + name] = value.contiguous().cpu()
    header = {"step": step, "optimizer_param_groups": optimizer_header,
              "metadata": metadata or {}}
    temporary = path.with_name(path.name + ".partial")
    save_file(tensors, str(temporary), metadata={"llmlab": json.dumps(header)})
    os.replace(temporary, path)
    return path


def load_checkpoint(path, model: torch.nn.Module, optimizer: torch.optim.Optimizer | None = None,
                    before_loading=None) -> tuple[int, dict[str, torch.Tensor], dict]:
    """Restore weights (and optimiser state) in place; returns (step, rng states, metadata).

    ``before_loading(metadata)``, if given, sees the stored metadata before anything is loaded,
    so a caller can refuse a checkpoint of another run with a clearer message than a shape error.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no checkpoint at {path}")
    with safe_open(str(path), framework="pt") as handle:
        header = json.loads(handle.metadata()["llmlab"])
        if before_loading is not None:
            before_loading(header["metadata"])
        tensors = {name: handle.get_tensor(name) for name in handle.keys()}
    model_state = {name[len(_MODEL):]: t for name, t in tensors.items() if name.startswith(_MODEL)}
    try:
        missing, unexpected = model.load_state_dict(model_state, strict=False)
    except RuntimeError as error:  # shapes differ: a checkpoint of another configuration
        detail = str(error).splitlines()[1].strip() if len(str(error).splitlines()) > 1 else str(error)
        raise ValueError(f"checkpoint {path} does not fit this model: {detail}") from None
    tied = {name for name in missing if _is_tied(model, name)}
    if set(missing) - tied or unexpected:
        raise ValueError(f"checkpoint {path} does not fit this model: missing {sorted(set(missing) - tied)[:5]}, unexpected {unexpected[:5]}")
    if optimizer is not None:
        if header["optimizer_param_groups"] is None:
            raise ValueError(f"checkpoint {path} holds no optimiser state to resume from")
        state: dict[int, dict] = {}
        for name, tensor in tensors.items():
            if name.startswith(_OPTIMIZER):
                index, slot = name[len(_OPTIMIZER):].split(".", 1)
                state.setdefault(int(index), {})[slot] = tensor
        optimizer.load_state_dict({"state": state, "param_groups": header["optimizer_param_groups"]})
    rng = {name[len(_RNG):]: t for name, t in tensors.items() if name.startswith(_RNG)}
    return header["step"], rng, header["metadata"]


def _is_tied(model: torch.nn.Module, name: str) -> bool:
    """True when ``name`` is a second name of a tensor that was saved under another name."""
    target = model.state_dict()[name]
    return any(other != name and t.data_ptr() == target.data_ptr() for other, t in model.state_dict().items())
