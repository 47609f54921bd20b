"""Muon for the hidden matrices of a transformer, AdamW for everything else, in one
optimiser.

Muon (Jordan et al. 2024, the optimiser of the modded-nanoGPT speedrun) keeps a momentum
of the gradient like SGD, but before it steps it replaces the momentum matrix M = U Σ Vᵀ
by (about) its orthogonal part U Vᵀ: every direction the matrix can move in gets a step
of the same size, where a raw gradient step would be dominated by its few largest
singular directions. Computing the SVD would be slow, so ``newton_schulz_orthogonalize``
gets there with five multiplications of small matrices. Muon is meant for the 2-D
weights inside the blocks; the token embedding (a lookup table, not a linear map of its
input), the output layer and the 1-D gains and biases are trained by AdamW, as in the
speedrun.

``MuonWithAdamW`` is one ``torch.optim.Optimizer`` whose parameter groups say which rule
they follow (``"algorithm": "muon"`` or ``"adamw"``), so the course's training loop, its
gradient clipping, mixed precision and checkpoints work with it unchanged.
"""

from __future__ import annotations

import math

import torch

# The quintic of Jordan et al. (2024): a·x + b·x³ + c·x⁵ pushes every singular value in
# (0, 1] into about [0.7, 1.2] in five steps. Chosen for speed, not to converge to 1.
NEWTON_SCHULZ_COEFFICIENTS = (3.4445, -4.7750, 2.0315)


def newton_schulz_orthogonalize(
    matrix: torch.Tensor, steps: int = 5, eps: float = 1e-7
) -> torch.Tensor:
    """About U Vᵀ for matrix = U Σ Vᵀ: the same singular vectors, every singular value
    moved near 1.

    Dividing by the Frobenius norm (at least the largest singular value) first puts
    every singular value in (0, 1]. Each step maps X to a·X + b·(X Xᵀ) X + c·(X Xᵀ)² X,
    which applies the odd polynomial p(σ) = a·σ + b·σ³ + c·σ⁵ to each singular value and
    leaves the singular vectors alone. The Gram matrix X Xᵀ is taken on the shorter
    side, so its size is the smaller dimension.
    """
    if matrix.dim() != 2:
        raise ValueError(
            "Newton–Schulz orthogonalises a matrix, "
            f"got a tensor of shape {tuple(matrix.shape)}"
        )
    a, b, c = NEWTON_SCHULZ_COEFFICIENTS
    x = matrix / (matrix.norm() + eps)
    tall = x.shape[0] > x.shape[1]
    if tall:
        x = x.T
    for _ in range(steps):
        gram = x @ x.T
        x = a * x + (b * gram + c * gram @ gram) @ x
    return x.T if tall else x


def muon_groups(
    model: torch.nn.Module,
    learning_rate: float,
    muon_learning_rate: float,
    weight_decay: float,
    muon_weight_decay: float = 0.0,
    outer_layers: tuple[str, ...] = (
        "token_embedding",
        "position_embedding",
        "lm_head",
    ),
) -> list[dict]:
    """Muon for the 2-D weights of the hidden layers; AdamW for the ``outer_layers`` (by
    name prefix) and for 1-D tensors.

    AdamW decays the outer matrices by ``weight_decay`` and not the gains and biases, as
    ``training.adamw_groups`` does. Muon's matrices decay by ``muon_weight_decay`` (none
    by default, as in the speedrun): decay shrinks a weight by η·λ per step, and Muon's
    η is several times AdamW's, so AdamW's λ would pull its matrices towards zero
    several times harder.
    """
    hidden, outer, vectors = [], [], []
    for name, parameter in model.named_parameters():
        if not parameter.requires_grad:
            continue
        if parameter.dim() < 2:
            vectors.append(parameter)
        elif name.startswith(outer_layers):
            outer.append(parameter)
        else:
            hidden.append(parameter)
    if not hidden:
        raise ValueError(
            "no hidden matrices for Muon: "
            f"every 2-D parameter starts with one of {outer_layers}"
        )
    return [
        {
            "params": hidden,
            "algorithm": "muon",
            "weight_decay": muon_weight_decay,
            "peak_learning_rate": muon_learning_rate,
        },
        {
            "params": outer,
            "algorithm": "adamw",
            "weight_decay": weight_decay,
            "peak_learning_rate": learning_rate,
        },
        {
            "params": vectors,
            "algorithm": "adamw",
            "weight_decay": 0.0,
            "peak_learning_rate": learning_rate,
        },
    ]


class MuonWithAdamW(torch.optim.Optimizer):
    """Muon on the groups marked ``"algorithm": "muon"``, AdamW on the others (see
    ``muon_groups``).

    Muon, per matrix W with gradient G: the momentum B ← μ·B + G; with Nesterov momentum
    the direction is G + μ·B (a look ahead along the momentum), else B; the step is W ←
    (1 − η·λ)·W − η·s·NS(direction), where NS is ``newton_schulz_orthogonalize`` and s =
    √max(1, rows / columns) keeps the step's size per column the same for tall matrices.
    AdamW is the usual one (Loshchilov & Hutter 2019), with bias-corrected moments and
    decoupled decay.
    """

    def __init__(
        self,
        params,
        lr: float = 1e-3,
        betas: tuple[float, float] = (0.9, 0.99),
        eps: float = 1e-8,
        weight_decay: float = 0.0,
        momentum: float = 0.95,
        nesterov: bool = True,
        newton_schulz_steps: int = 5,
    ):
        defaults = {"lr": lr, "betas": betas, "eps": eps, "weight_decay": weight_decay,
                    "momentum": momentum, "nesterov": nesterov,
                    "newton_schulz_steps": newton_schulz_steps, "algorithm": "adamw"}
        super().__init__(params, defaults)
        for group in self.param_groups:
            if group["algorithm"] not in ("muon", "adamw"):
                raise ValueError(
                    "a parameter group's algorithm must be 'muon' or 'adamw', "
                    f"got {group['algorithm']!r}"
                )
            if group["algorithm"] == "muon" and any(
                p.dim() != 2 for p in group["params"]
            ):
                shapes = [tuple(p.shape) for p in group["params"] if p.dim() != 2]
                raise ValueError(
                    "Muon steps matrices only; "
                    f"its group has tensors of shape {shapes[:3]}"
                )

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            step_rule = (
                self._muon_step if group["algorithm"] == "muon" else self._adamw_step
            )
            for parameter in group["params"]:
                if parameter.grad is not None:
                    step_rule(parameter, group)
        return loss

    def _muon_step(self, parameter: torch.Tensor, group: dict) -> None:
        state = self.state[parameter]
        if "momentum_buffer" not in state:
            state["momentum_buffer"] = torch.zeros_like(parameter)
        buffer, momentum = state["momentum_buffer"], group["momentum"]
        buffer.mul_(momentum).add_(parameter.grad)
        direction = (
            parameter.grad.add(buffer, alpha=momentum) if group["nesterov"] else buffer
        )
        # Orthogonalised in fp32 even under mixed precision: the polynomial is sensitive
        # to rounding.
        update = newton_schulz_orthogonalize(
            direction.float(), group["newton_schulz_steps"]
        ).to(parameter.dtype)
        rows, columns = parameter.shape
        parameter.mul_(1 - group["lr"] * group["weight_decay"])
        parameter.add_(update, alpha=-group["lr"] * math.sqrt(max(1.0, rows / columns)))

    def _adamw_step(self, parameter: torch.Tensor, group: dict) -> None:
        state = self.state[parameter]
        if "step" not in state:
            state["step"] = torch.zeros(())
            state["exp_avg"] = torch.zeros_like(parameter)
            state["exp_avg_sq"] = torch.zeros_like(parameter)
        beta1, beta2 = group["betas"]
        state["step"] += 1
        step = state["step"].item()
        state["exp_avg"].lerp_(parameter.grad, 1 - beta1)
        state["exp_avg_sq"].mul_(beta2).addcmul_(
            parameter.grad, parameter.grad, value=1 - beta2
        )
        first = state["exp_avg"] / (1 - beta1**step)
        second = state["exp_avg_sq"] / (1 - beta2**step)
        parameter.mul_(1 - group["lr"] * group["weight_decay"])
        parameter.addcdiv_(first, second.sqrt().add_(group["eps"]), value=-group["lr"])
