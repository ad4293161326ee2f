"""DIT networks: the LSTM warper, the code-free template decoder and their composition.

Shapes: codes ``(N, C)`` (one row per query point, the scene's code repeated), points ``(N, 3)``.
The warper moves each point through ``steps`` per-point affine updates
``x_{s+1} = (1 + a_scale) ⊙ x_s + a_trans`` (methods/dit.md §3); the template ``T`` maps the
final warped point to an SDF in ``(-1, 1)`` (tanh). The template never sees a code.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping, Sequence

import torch
from torch import Tensor, nn

from sfd_lightning.nn.weight_norm import WeightNormLinear

GRAD_CLAMP = 10.0


def _clamp_grad(grad: Tensor) -> Tensor:
    return grad.clamp(-GRAD_CLAMP, GRAD_CLAMP)


class LSTMWarper(nn.Module):
    """``(code (N, C), xyz (N, 3)) -> list of 4 warped stages, each (N, 3)`` (last = final point).

    One ``LSTMCell(C + 3, hidden)`` shared over ``steps`` (multiple of 4); head ``Linear(hidden, 6)``.
    Init (dit.md §3): ``weight_ih`` Kaiming-normal, ``weight_hh`` orthogonal, biases 0 with the
    forget-gate slice of both bias vectors at 1, head ``U(±1e-5)`` and zero bias: a near-identity warp.
    """

    def __init__(self, code_dim: int = 256, hidden: int = 512, steps: int = 8) -> None:
        super().__init__()
        if steps % 4 != 0 or steps <= 0:
            raise ValueError(f"steps must be a positive multiple of 4, got {steps}")
        self.code_dim, self.hidden, self.steps = code_dim, hidden, steps
        self.lstm = nn.LSTMCell(code_dim + 3, hidden)
        self.out_layer_coord_affine = nn.Linear(hidden, 6)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        with torch.no_grad():
            nn.init.kaiming_normal_(self.lstm.weight_ih)
            nn.init.orthogonal_(self.lstm.weight_hh)
            n = self.lstm.bias_ih.numel()
            for bias in (self.lstm.bias_ih, self.lstm.bias_hh):
                bias.zero_()
                bias[n // 4:n // 2] = 1.0
            nn.init.uniform_(self.out_layer_coord_affine.weight, -1e-5, 1e-5)
            self.out_layer_coord_affine.bias.zero_()

    def forward(self, code: Tensor, xyz: Tensor) -> list[Tensor]:
        """Warped points after steps ``steps/4, steps/2, 3·steps/4, steps``: 4 tensors ``(N, 3)``."""
        state: tuple[Tensor, Tensor] | None = None
        x = xyz
        record = self.steps // 4
        stages = []
        for s in range(self.steps):
            h, c = self.lstm(torch.cat([code, x], dim=-1), state)
            if h.requires_grad:
                h.register_hook(_clamp_grad)
            state = (h, c)
            affine = self.out_layer_coord_affine(h)
            x = (1.0 + affine[:, :3]) * x + affine[:, 3:]
            if (s + 1) % record == 0:
                stages.append(x)
        return stages


class TemplateDecoder(nn.Module):
    """Code-free template ``T: (N, 3) -> (N,)`` in (-1, 1).

    ``3 -> dims... -> 1``; hidden layers weight-normed Linear + ReLU + Dropout, last plain Linear,
    tanh always (DIT: dims ``[256]*5``, dropout 0.05). Keys ``lin{i}`` as the original.
    """

    def __init__(self, dims: Sequence[int] = (256,) * 5, dropout: float = 0.05, weight_norm: bool = True) -> None:
        super().__init__()
        sizes = [3, *[int(d) for d in dims], 1]
        self.num_layers = len(sizes) - 1
        for i in range(self.num_layers):
            linear = nn.Linear(sizes[i], sizes[i + 1])
            last = i == self.num_layers - 1
            setattr(self, f"lin{i}", linear if (last or not weight_norm) else WeightNormLinear(linear))
        self.relu = nn.ReLU()
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()

    def forward(self, xyz: Tensor) -> Tensor:
        h = xyz
        for i in range(self.num_layers):
            h = getattr(self, f"lin{i}")(h)
            if i < self.num_layers - 1:
                h = self.dropout(self.relu(h))
        return torch.tanh(h)[:, 0]


@dataclass
class WarpOutput:
    """Recorded warped stages (4 × ``(N, 3)``) and their template SDFs (4 × ``(N,)``)."""

    stages: list[Tensor]
    sdfs: list[Tensor]

    @property
    def final(self) -> Tensor:
        return self.sdfs[-1]


class DITNetwork(nn.Module):
    """Warper + template. :meth:`forward` returns every stage; :meth:`sdf` only the final value.

    Args:
        code_dim: latent size (DIT 256). warper_hidden: LSTM width (512). steps: warp steps (8).
        template_dims: hidden widths of T (``[256]*5``). dropout: T's dropout (0.05).
    """

    def __init__(self, code_dim: int = 256, warper_hidden: int = 512, steps: int = 8,
                 template_dims: Sequence[int] = (256,) * 5, dropout: float = 0.05) -> None:
        super().__init__()
        self.config = {"code_dim": int(code_dim), "warper_hidden": int(warper_hidden), "steps": int(steps),
                       "template_dims": [int(d) for d in template_dims], "dropout": float(dropout)}
        self.warper = LSTMWarper(code_dim, warper_hidden, steps)
        self.sdf_decoder = TemplateDecoder(template_dims, dropout)

    def forward(self, code: Tensor, xyz: Tensor, all_stages: bool = True) -> WarpOutput:
        """``code (N, C)``, ``xyz (N, 3)`` -> stages and SDFs (only the final one unless ``all_stages``)."""
        stages = self.warper(code, xyz)
        used = stages if all_stages else stages[-1:]
        sdfs = [self.sdf_decoder(x) for x in used]
        return WarpOutput(stages=used if all_stages else stages, sdfs=sdfs)

    def sdf(self, code: Tensor, xyz: Tensor) -> Tensor:
        """Final SDF ``(N,)`` of points ``(N, 3)`` under codes ``(N, C)`` (or one code ``(C,)``)."""
        if code.dim() == 1:
            code = code.expand(len(xyz), -1)
        return self.sdf_decoder(self.warper(code, xyz)[-1])

    def template(self, xyz: Tensor) -> Tensor:
        """Template SDF ``(N,)`` at un-warped points ``(N, 3)``."""
        return self.sdf_decoder(xyz)


#: Radius of the DeepSDF/DIT normalised frame's bounding ball: the farthest vertex of every shape
#: sits at 1/1.03 (methods/dit.md §2.1), so the true surface never leaves this ball.
DEEPSDF_BALL_RADIUS = 1.0 / 1.03


def clip_to_ball(sdf: Tensor, xyz: Tensor, radius: float | None) -> Tensor:
    """``max(sdf, ‖x‖ − radius)``: the field intersected with the frame's bounding ball.

    ``sdf (N,)`` at points ``xyz (N, 3)``; ``radius None`` returns ``sdf`` unchanged. A short
    training run leaves the far field (beyond the data's near-surface band) under-constrained, and
    thin parts (legs, backrests) extrude up to the extraction box; the DeepSDF normalisation
    guarantees no surface outside ``DEEPSDF_BALL_RADIUS``, so the intersection removes only
    surface that cannot belong to the shape (1-Lipschitz, safe for coarse-to-fine extraction).
    """
    if radius is None:
        return sdf
    return torch.maximum(sdf, xyz.norm(dim=-1) - float(radius))


def map_legacy_state_dict(state: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """Original DIT checkpoint keys -> :class:`DITNetwork` keys.

    Strips the DataParallel ``module.`` prefix and maps ``lin{i}.weight_g/weight_v`` (legacy
    weight norm) to ``lin{i}.parametrizations.weight.original0/original1``.
    """
    out: dict[str, Tensor] = {}
    for key, value in state.items():
        key = key[len("module."):] if key.startswith("module.") else key
        if key.endswith(".weight_g"):
            key = key[:-len("weight_g")] + "parametrizations.weight.original0"
        elif key.endswith(".weight_v"):
            key = key[:-len("weight_v")] + "parametrizations.weight.original1"
        out[key] = value
    return out


def network_from_config(config: Mapping[str, Any]) -> DITNetwork:
    """Rebuild a :class:`DITNetwork` from its ``config`` dict."""
    return DITNetwork(**dict(config))
