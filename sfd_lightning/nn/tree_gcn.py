"""TreeGCN point-cloud decoder (tree-structured graph convolution, Shu et al. 2019), generic.

A latent vector is the root of a tree; layer ``l`` turns the ``n_l`` nodes of level ``l`` into
``n_l · k_l`` children (``k_l`` = degree). Node ordering: the children of node ``j`` are the
contiguous block ``[j·k, (j+1)·k)``, so an ancestor's term reaches its descendants by
``repeat_interleave`` along the node axis. The output has ``prod(degrees)`` points.

Per layer (``F_in`` -> ``F_out``, level ``l`` holding ``n_l`` nodes):

* ancestor term ``Σ_{i ≤ l} Linear_i(tree[i])`` (no bias), each broadcast to the ``n_l · k``
  children of level ``l + 1`` by ``repeat_interleave``;
* branching: a per-node tensor ``W (n_l, F_in, k·F_in)`` maps each node to ``k`` children
  ``(n_l·k, F_in)``, LeakyReLU(0.2), then ``Linear(F_in -> support·F_in)`` and
  ``Linear(support·F_in -> F_out)`` (no bias, no activation between);
* sum of both; non-final layers add a per-degree bias ``(1, k, F_out)`` (tiled over nodes) and a
  LeakyReLU(0.2); the final layer has neither (raw coordinates).
"""

from __future__ import annotations

import math
from typing import Sequence

import torch
from torch import Tensor, nn


class TreeGCNLayer(nn.Module):
    """One TreeGCN level: ``tree`` (list of ``(B, n_i, F_i)``, i = 0..l) -> ``(B, n_l·k, F_out)``.

    Args:
        level_features: feature widths ``F_0..F_l`` of every level so far (the last is ``F_in``).
        out_features: ``F_out``.
        nodes: ``n_l``, nodes at the input level.
        degree: ``k`` children per node.
        support: width multiplier of the loop MLP (10 in TreeGAN/LIST).
        final: last layer (no bias, no activation).
    """

    def __init__(self, level_features: Sequence[int], out_features: int, nodes: int, degree: int,
                 support: int = 10, final: bool = False) -> None:
        super().__init__()
        in_features = int(level_features[-1])
        self.nodes, self.degree, self.final = int(nodes), int(degree), bool(final)
        self.in_features, self.out_features = in_features, int(out_features)
        self.ancestors = nn.ModuleList(nn.Linear(f, out_features, bias=False) for f in level_features)
        self.branch = nn.Parameter(torch.empty(self.nodes, in_features, self.degree * in_features))
        self.loop = nn.Sequential(nn.Linear(in_features, support * in_features, bias=False),
                                  nn.Linear(support * in_features, out_features, bias=False))
        self.activation = nn.LeakyReLU(0.2)
        if self.final:
            self.register_parameter("bias", None)
        else:
            self.bias = nn.Parameter(torch.empty(1, self.degree, out_features))
        self.reset_branch()

    def reset_branch(self) -> None:
        """Kaiming-normal branch tensor (a = 0.2, fan_in, leaky_relu); bias U(±1/√F_out)."""
        nn.init.kaiming_normal_(self.branch, a=0.2, mode="fan_in", nonlinearity="leaky_relu")
        if self.bias is not None:
            bound = 1.0 / math.sqrt(self.out_features)
            nn.init.uniform_(self.bias, -bound, bound)

    def forward(self, tree: list[Tensor]) -> Tensor:
        """``tree[i]`` ``(B, n_i, F_i)``; returns the next level ``(B, n_l·k, F_out)``."""
        current = tree[-1]
        batch, nodes, _ = current.shape
        if nodes != self.nodes:
            raise ValueError(f"TreeGCN level expects {self.nodes} nodes, got {nodes}")
        children = nodes * self.degree
        ancestor = 0
        for linear, level in zip(self.ancestors, tree):
            repeat = children // level.shape[1]
            ancestor = ancestor + torch.repeat_interleave(linear(level), repeat, dim=1)
        # (B, n, 1, F_in) @ (n, F_in, k·F_in) -> (B, n, 1, k·F_in) -> (B, n·k, F_in)
        branch = torch.matmul(current.unsqueeze(2), self.branch).reshape(batch, children, self.in_features)
        out = self.loop(self.activation(branch)) + ancestor
        if self.final:
            return out
        return self.activation(out + self.bias.repeat(1, nodes, 1))


class TreeGCNDecoder(nn.Module):
    """Latent ``(B, F_0)`` -> points ``(B, prod(degrees), F_last)``.

    Args:
        features: widths per level ``[F_0, ..., F_L]`` (LIST: [128, 128, 256, 256, 256, 128, 128, 3]).
        degrees: children per node per layer, ``len(features) - 1`` entries (LIST: [2]*6 + [64]).
        support: loop-MLP width multiplier (10).
    """

    def __init__(self, features: Sequence[int] = (128, 128, 256, 256, 256, 128, 128, 3),
                 degrees: Sequence[int] = (2, 2, 2, 2, 2, 2, 64), support: int = 10) -> None:
        super().__init__()
        features, degrees = [int(f) for f in features], [int(d) for d in degrees]
        if len(degrees) != len(features) - 1 or min(degrees, default=0) < 1:
            raise ValueError(f"need len(degrees) == len(features) - 1 and degrees >= 1, got {features} / {degrees}")
        self.features, self.degrees = features, degrees
        layers, nodes = [], 1
        for l, degree in enumerate(degrees):
            layers.append(TreeGCNLayer(features[:l + 1], features[l + 1], nodes, degree, support,
                                       final=l == len(degrees) - 1))
            nodes *= degree
        self.layers = nn.ModuleList(layers)
        self.num_points = nodes

    def forward(self, latent: Tensor) -> Tensor:
        """``(B, F_0)`` -> ``(B, prod(degrees), F_last)``."""
        tree = [latent.unsqueeze(1)]
        for layer in self.layers:
            tree.append(layer(tree))
        return tree[-1]
