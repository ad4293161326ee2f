"""Weight-normalised Linear layer: ``W = g · V / ‖V‖`` (row-wise), Salimans & Kingma 2016.

State-dict keys equal those of ``torch.nn.utils.parametrizations.weight_norm`` on an
``nn.Linear`` (``parametrizations.weight.original0`` = g ``(out, 1)``,
``parametrizations.weight.original1`` = V ``(out, in)``, ``bias``), so checkpoints are
interchangeable; unlike the parametrization, this module pickles (``ddp_spawn`` needs that).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn


class _WeightNormParameters(nn.Module):
    def __init__(self, weight: Tensor) -> None:
        super().__init__()
        self.original0 = nn.Parameter(weight.norm(dim=1, keepdim=True).detach().clone())
        self.original1 = nn.Parameter(weight.detach().clone())


class WeightNormLinear(nn.Module):
    """``y = x Wᵀ + b`` with ``W = g · V / ‖V‖_row``; ``x (..., in) -> (..., out)``."""

    def __init__(self, linear: nn.Linear) -> None:
        super().__init__()
        self.in_features = linear.in_features
        self.out_features = linear.out_features
        self.parametrizations = nn.ModuleDict({"weight": _WeightNormParameters(linear.weight)})
        self.bias = nn.Parameter(linear.bias.detach().clone()) if linear.bias is not None else None

    @property
    def weight(self) -> Tensor:
        params = self.parametrizations["weight"]
        return params.original1 * (params.original0 / params.original1.norm(dim=1, keepdim=True))

    def forward(self, x: Tensor) -> Tensor:
        return nn.functional.linear(x, self.weight, self.bias)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, weight_norm=True"
