"""The SfD scene: shared fields seen through N rigid instance frames and one camera.

Frames (methods/sfd.md §2.1, framework OpenCV camera): ``x_world = T_i · x_norm`` with
``T_i = O_i · S · Δ_i`` (``Δ_i`` the optional pose residual). Rays are marched in the world frame
(unit directions, distances in world units); every sample is mapped into the normalised frame of
its instance, where the shared SDF ``f`` lives. ``∇_world f`` comes from autograd through the
instance transform, so NeuS's ``dot(d, ∇f)`` and normals are consistent for any scale ``r``;
the eikonal term uses ``∇_norm f``. The SDF network always runs in fp32 (autocast disabled); the
colour, visibility and material MLPs follow the ambient autocast.
"""

from __future__ import annotations

from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from sfd_lightning.modules.sfd.fields import (ColorNetwork, MaterialNetwork, ProxyClassifier, SGLighting,
                                              VisibilityNetwork, sdf_network)
from sfd_lightning.modules.sfd.pose_refinement import PoseResidual
from sfd_lightning.nn.positional_encoding import PositionalEncoding
from sfd_lightning.render.neus import (alpha_to_weights, interval_midpoints, neus_alpha, uniform_samples,
                                       upsample_rounds)

Assign = Callable[[Tensor], Tensor]


def transform_points(matrices: Tensor, points: Tensor) -> Tensor:
    """``matrices (P, 4, 4)`` (or ``(4, 4)``) applied to ``points (P, 3)``."""
    if matrices.dim() == 2:
        return points @ matrices[:3, :3].T + matrices[:3, 3]
    return torch.einsum("pij,pj->pi", matrices[:, :3, :3], points) + matrices[:, :3, 3]


class SfDModel(nn.Module):
    """All networks and scene constants of SfD (sizes: see :class:`~sfd_lightning.modules.sfd.system.SfD`)."""

    def __init__(self, num_instances: int = 0, sdf_width: int = 512, sdf_depth: int = 8, sdf_multires: int = 6,
                 feature_dim: int = 256, albedo_width: int = 512, albedo_depth: int = 4, shading_width: int = 128,
                 shading_depth: int = 3, color_multires: int = 4, proxy_width: int = 96, proxy_depth: int = 7,
                 proxy_multires: int = 6, vis_width: int = 256, vis_depth: int = 4, mat_multires: int = 10, mat_enc_width: int = 512,
                 mat_enc_depth: int = 4, mat_latent: int = 64, mat_dec_width: int = 128, mat_dec_depth: int = 2,
                 num_lobes: int = 128, variance_init: float = 0.3, seed: int = 0) -> None:
        super().__init__()
        self._proxy_args = dict(width=proxy_width, depth=proxy_depth, multires=proxy_multires)
        self.sdf = sdf_network(sdf_width, sdf_depth, sdf_multires, feature_dim)
        self.color = ColorNetwork(feature_dim, albedo_width, albedo_depth, shading_width, shading_depth, color_multires)
        self.variance = nn.Parameter(torch.tensor(float(variance_init)))
        self.proxy = ProxyClassifier(num_instances, **self._proxy_args)
        self.visibility = VisibilityNetwork(vis_width, vis_depth)
        self.material = MaterialNetwork(mat_multires, mat_enc_width, mat_enc_depth, mat_latent, mat_dec_width,
                                        mat_dec_depth)
        self.light = SGLighting(num_lobes, seed)
        self.pose = PoseResidual(num_instances)
        self.register_buffer("object_to_world", torch.eye(4).repeat(num_instances, 1, 1))
        self.register_buffer("scale_matrix", torch.eye(4))
        self.register_buffer("c2w", torch.eye(4))
        self.register_buffer("K", torch.eye(3))
        self.register_buffer("image_size", torch.zeros(2, dtype=torch.long))  # (H, W)
        self.register_buffer("scene_center", torch.zeros(3))
        self.register_buffer("scene_radius", torch.ones(()))
        self.register_buffer("near", torch.ones(()))
        self.register_buffer("far", torch.full((), 2.0))
        self.register_buffer("pe_progress", torch.zeros(()))

    # ------------------------------------------------------------------ instances and scene
    @property
    def num_instances(self) -> int:
        return int(self.object_to_world.shape[0])

    def resize_instances(self, count: int) -> None:
        """Rebuild the instance-sized parts (proxy classifier, pose residuals) for ``count`` instances."""
        if count == self.num_instances:
            return
        device = self.object_to_world.device
        self.proxy = ProxyClassifier(count, **self._proxy_args).to(device)
        self.proxy.encoding.alpha.fill_(self.proxy.encoding.num_frequencies * float(self.pe_progress))
        self.pose = PoseResidual(count).to(device)
        self.object_to_world = torch.eye(4, device=device).repeat(count, 1, 1)

    def set_scene(self, scene) -> None:
        """Copy camera, poses and scene constants from a :class:`~sfd_lightning.datamodules.pile.PileScene`."""
        self.resize_instances(len(scene.object_to_world))
        as_t = lambda a: torch.as_tensor(np.asarray(a), dtype=torch.float32, device=self.c2w.device)  # noqa: E731
        with torch.no_grad():
            self.object_to_world.copy_(as_t(scene.object_to_world))
            self.scale_matrix.copy_(as_t(scene.scale_matrix))
            self.c2w.copy_(as_t(scene.c2w))
            self.K.copy_(as_t(scene.K))
            self.image_size.copy_(torch.tensor([scene.height, scene.width]))
            self.scene_center.copy_(as_t(scene.bounds.center))
            self.scene_radius.fill_(float(scene.bounds.radius))
            self.near.fill_(float(scene.bounds.near))
            self.far.fill_(float(scene.bounds.far))

    def transforms(self) -> Tensor:
        """``T_i (N, 4, 4)``: normalised object frame -> world, pose residual included."""
        return self.object_to_world @ self.scale_matrix @ self.pose()

    def encodings(self) -> list[PositionalEncoding]:
        return [m for m in self.modules() if isinstance(m, PositionalEncoding) and m.num_frequencies > 0
                and m is not self.material.encoding]

    def set_pe_progress(self, progress: float) -> None:
        """Coarse-to-fine PE: every geometry/colour encoding gets ``alpha = L · progress``."""
        with torch.no_grad():
            self.pe_progress.fill_(float(progress))
            for enc in self.encodings():
                enc.alpha.fill_(enc.num_frequencies * float(progress))

    def inv_s(self) -> Tensor:
        return torch.exp(10.0 * self.variance).clamp(1e-6, 1e6)

    # ------------------------------------------------------------------ fields
    def sdf_features(self, x_norm: Tensor) -> Tensor:
        """``x_norm (P, 3) -> (P, 1 + F)`` in fp32."""
        with torch.autocast(device_type=x_norm.device.type, enabled=False):
            return self.sdf.forward_features(x_norm.float())

    def sdf_in_instances(self, x_world: Tensor, inst: Tensor, inverse: Tensor) -> Tensor:
        """SDF ``(P,)`` of world points in the frames of ``inst (P,)`` (no input gradient needed)."""
        x_norm = transform_points(inverse[inst], x_world)
        return self.sdf_features(x_norm)[:, 0]

    def proxy_all(self, x_world: Tensor, inverse: Tensor) -> Tensor:
        """Proxy SDFs ``(N, P)`` of world points ``(P, 3)`` in every instance frame."""
        local = torch.einsum("nij,pj->npi", inverse[:, :3, :3], x_world) + inverse[:, None, :3, 3]
        with torch.autocast(device_type=x_world.device.type, enabled=False):
            return self.proxy(local.float())

    def classify(self, x_world: Tensor, inverse: Tensor) -> Tensor:
        """Instance index ``(P,)`` of world points by the proxy classifier (argmin over instances)."""
        return self.proxy_all(x_world, inverse).argmin(0)

    def field(self, x_world: Tensor, inst: Tensor, inverse: Tensor, create_graph: bool) -> dict[str, Tensor]:
        """SDF, feature and gradients at world points ``(P, 3)`` of instances ``inst (P,)``.

        Returns ``sdf (P,)``, ``feature (P, F)``, ``x_norm (P, 3)``, ``grad_world (P, 3)``,
        ``grad_norm (P, 3)``. Works under ``no_grad`` callers too (gradients enabled locally).
        """
        with torch.enable_grad():
            x_world = x_world.detach().requires_grad_(True)
            inv = inverse[inst]
            x_norm = transform_points(inv, x_world)
            out = self.sdf_features(x_norm)
            sdf = out[:, 0]
            (grad_world,) = torch.autograd.grad(sdf, x_world, torch.ones_like(sdf), create_graph=create_graph)
        linear = torch.linalg.inv(inverse[:, :3, :3])[inst]  # T_i's linear part, per point
        grad_norm = torch.einsum("pj,pjk->pk", grad_world, linear)
        return {"sdf": sdf, "feature": out[:, 1:], "x_norm": x_norm, "grad_world": grad_world, "grad_norm": grad_norm}

    # ------------------------------------------------------------------ rendering
    def camera_rays(self, dirs_cam: Tensor) -> tuple[Tensor, Tensor]:
        """Camera-frame unit directions ``(R, 3)`` -> world ``(origins (R, 3), directions (R, 3))``."""
        d = F.normalize(dirs_cam.float() @ self.c2w[:3, :3].T, dim=-1)
        return self.c2w[:3, 3].expand_as(d), d

    def render(self, rays_o: Tensor, rays_d: Tensor, assign: Assign, near: Tensor, far: Tensor, n_samples: int,
               n_importance: int, up_sample_steps: int, jitter: Tensor | None = None, create_graph: bool = False,
               color: bool = True, transforms: Tensor | None = None) -> dict[str, Tensor]:
        """NeuS rendering of world rays ``(R, 3)``.

        Args:
            assign: world points ``(R, S, 3)`` -> instance indices ``(R, S)`` (primary rays: the
                pixel's instance; secondary rays: the proxy classifier).
            near, far: ``(R,)``. create_graph: keep second-order graphs (training the SDF).
            color: evaluate the Geo-stage colour network.
        Returns:
            per ray ``weights_sum``, ``depth``, ``rgb`` (if colour), ``normal`` (world, unit),
            ``normal_local``, ``point`` (world), ``point_local``; per sample ``weights``, ``sdf``,
            ``grad_norm``, ``x_world``, ``x_norm``, ``inst`` ``(R, S, ·)``.
        """
        transforms = self.transforms() if transforms is None else transforms
        inverse = torch.linalg.inv(transforms)
        rays = rays_o.shape[0]
        center = self.scene_center.expand(rays, 3)
        radius = self.scene_radius.expand(rays)

        def sdf_fn(points: Tensor) -> Tensor:
            flat = points.reshape(-1, 3)
            return self.sdf_in_instances(flat, assign(points).reshape(-1), inverse.detach()).reshape(points.shape[:2])

        z = uniform_samples(near, far, n_samples, jitter)
        z = upsample_rounds(sdf_fn, rays_o, rays_d, z, n_importance, up_sample_steps, center, radius)
        mid_z, dists = interval_midpoints(z, (far - near) / n_samples)
        x_world = rays_o[:, None] + rays_d[:, None] * mid_z[..., None]
        samples = x_world.shape[1]
        with torch.no_grad():
            inst = assign(x_world)
        out = self.field(x_world.reshape(-1, 3), inst.reshape(-1), inverse, create_graph)
        sdf = out["sdf"].reshape(rays, samples)
        grad_world = out["grad_world"].reshape(rays, samples, 3)
        alpha = neus_alpha(sdf, grad_world, rays_d[:, None], dists, self.inv_s())
        weights = alpha_to_weights(alpha)
        weights_sum = weights.sum(-1)
        inside = ((x_world - center[:, None]).norm(dim=-1) < radius[:, None]).float()
        normal_world = F.normalize(grad_world, dim=-1)
        normal_norm = F.normalize(out["grad_norm"].reshape(rays, samples, 3), dim=-1)
        x_norm = out["x_norm"].reshape(rays, samples, 3)
        denom = weights_sum.clamp_min(1e-6)[:, None]
        result = {
            "weights": weights, "weights_sum": weights_sum, "depth": (weights * mid_z).sum(-1) / denom[:, 0],
            "sdf": sdf, "grad_norm": out["grad_norm"].reshape(rays, samples, 3), "x_world": x_world,
            "x_norm": x_norm, "inst": inst,
            "normal": F.normalize((weights[..., None] * normal_world * inside[..., None]).sum(1), dim=-1),
            "normal_local": F.normalize((weights[..., None] * normal_norm).sum(1), dim=-1),
            "point": (weights[..., None] * x_world).sum(1) / denom,
            "point_local": (weights[..., None] * x_norm).sum(1) / denom}
        if color:
            dirs = rays_d[:, None].expand(-1, samples, -1).reshape(-1, 3)
            rgb, albedo = self.color(out["x_norm"], normal_norm.reshape(-1, 3),
                                     x_world.reshape(-1, 3) - self.scene_center, dirs, normal_world.reshape(-1, 3),
                                     out["feature"])
            result["rgb"] = (weights[..., None] * rgb.float().reshape(rays, samples, 3)).sum(1)
            result["albedo"] = (weights[..., None] * albedo.float().reshape(rays, samples, 3)).sum(1)
        return result

    def primary_assign(self, ray_inst: Tensor) -> Assign:
        """Assignment of every sample of a ray to the ray's instance ``ray_inst (R,)``."""
        return lambda points: ray_inst[:, None].expand(points.shape[:2])

    def proxy_assign(self, transforms: Tensor | None = None) -> Assign:
        """Assignment of samples by the proxy classifier (secondary rays, no segmentation)."""
        inverse = torch.linalg.inv(self.transforms() if transforms is None else transforms).detach()
        return lambda points: self.classify(points.reshape(-1, 3), inverse).reshape(points.shape[:2])
