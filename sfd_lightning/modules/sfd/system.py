"""SfD (Structure from Duplicates) as one LightningModule with a ``stage`` argument.

``stage="geometry"`` trains the shared SDF, the colour network, the NeuS variance and the proxy
classifier (+ optional pose residuals); ``"visibility"`` the visibility network; ``"material"``
the material MLP and the SG environment. Stages chain through ``previous_stage_checkpoint``
(weights only, the PE ramp ``alpha`` buffers included); freezing is re-applied in
``on_fit_start`` and ``configure_optimizers`` so it survives resume. Everything is step based
(``trainer.max_steps``); the PE ramp bounds are fractions of it.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any, Literal, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from sfd_lightning.errors import InputError
from sfd_lightning.geometry.surface import SurfaceHandle
from sfd_lightning.modules.base import BaseReconSystem
from sfd_lightning.modules.sfd import losses
from sfd_lightning.modules.sfd.scene_model import SfDModel
from sfd_lightning.render.spherical_gaussians import render_sg

Stage = Literal["geometry", "visibility", "material"]
TRAINABLE = {"geometry": ("sdf", "color", "variance", "proxy"), "visibility": ("visibility",),
             "material": ("material", "light")}
DEFAULT_LR = {"geometry": 1e-4, "visibility": 2e-5, "material": 2e-4}


def pe_progress(step: int, max_steps: int, ramp: Sequence[float]) -> float:
    """Coarse-to-fine PE progress in [0, 1]: 0 before ``ramp[0]·max_steps``, 1 from ``ramp[1]·max_steps``."""
    start, end = ramp
    return min(1.0, max(0.0, (step / max_steps - start) / max(end - start, 1e-8)))


def cone_directions(axis: Tensor, count: int, max_sin: float = 0.95) -> Tensor:
    """``count`` random unit directions per ``axis (P, 3)`` at polar angle ``asin(U·max_sin)`` -> ``(P, count, 3)``."""
    theta = torch.asin(torch.rand(axis.shape[0], count, device=axis.device) * max_sin)
    phi = 2 * torch.pi * torch.rand(axis.shape[0], count, device=axis.device)
    return _frame_directions(axis, theta.cos(), phi)


def _frame_directions(axis: Tensor, cos_theta: Tensor, phi: Tensor) -> Tensor:
    """Directions ``(P, K, 3)`` with polar angle ``acos(cos_theta)`` and azimuth ``phi`` about ``axis (P, 3)``."""
    helper = torch.where(axis[:, 2:3].abs() < 0.9, torch.tensor([0.0, 0.0, 1.0], device=axis.device),
                         torch.tensor([1.0, 0.0, 0.0], device=axis.device))
    t1 = F.normalize(torch.cross(helper, axis, dim=-1), dim=-1)
    t2 = torch.cross(axis, t1, dim=-1)
    sin_theta = (1 - cos_theta ** 2).clamp_min(0).sqrt()
    return (cos_theta[..., None] * axis[:, None] + (sin_theta * phi.cos())[..., None] * t1[:, None]
            + (sin_theta * phi.sin())[..., None] * t2[:, None])


class SfD(BaseReconSystem):
    """Shared geometry, visibility and material of a pile of duplicates (methods/sfd.md §3-§5).

    Args:
        stage: "geometry" | "visibility" | "material".
        previous_stage_checkpoint: checkpoint of the previous stage (weights only; required for
            visibility/material to make sense, warned about when absent).
        sdf_* / feature_dim / albedo_* / shading_* / color_multires / proxy_* / vis_* / mat_* /
            num_lobes / variance_init: network sizes (defaults: the original's full sizes).
        n_samples, n_importance, up_sample_steps: NeuS sampling (32 + 4×8).
        perturb: per-ray jitter in training. chunk: rays per chunk when rendering full images.
        lr: learning rate (None: 1e-4 AdamW / 2e-5 Adam / 2e-4 Adam per stage). weight_decay: AdamW's.
        pe_ramp: PE ramp (start, end) as fractions of ``trainer.max_steps`` (geometry stage only).
        *_weight: loss weights (sfd.md §4). seg_rays: rays of the segmentation hinge.
        vis_dirs, vis_n_samples, vis_n_importance, vis_threshold: visibility labels.
        light_dirs: visibility directions per light lobe (Mat stage; 25 = 5×5 in the original).
        pose_refinement, pose_lr: optimise per-instance pose residuals in the geometry stage,
            from ``pose_start · max_steps`` on (poses stay fixed while the shape forms).
        pose_loss: what drives the pose residuals: "photometric" (every geometry loss, colour
            included) or "silhouette" (only a mask BCE on ``pose_rays`` rays sampled within
            ``pose_boundary_radius`` px of the instance silhouettes, rendered with the SDF frozen;
            the other losses then see detached poses) or "both". pose_weight: weight of that term.
            pose_min_inv_s: lower bound of the NeuS ``inv_s`` in that render (None: the learned one).
            pose_lr_final: pose lr at ``pose_end · max_steps``; it decays exponentially from
                ``pose_lr`` over the refinement window (as in BARF), so the residuals settle instead of
                wandering with the per-step ray noise. None: constant ``pose_lr``.
            pose_end: the poses stop moving at ``pose_end · max_steps`` (the shape keeps training).
        mesh_resolution: marching cubes in test; chamfer_samples: points per surface for Chamfer.
        novel_views: number of novel views of the object rendered by ``sfd predict`` (the relighting
            map is a data argument: ``--data.init_args.relight_envmap PATH``).
    """

    def __init__(self, stage: Stage = "geometry", previous_stage_checkpoint: str | None = None,
                 sdf_width: int = 512, sdf_depth: int = 8, sdf_multires: int = 6, feature_dim: int = 256,
                 albedo_width: int = 512, albedo_depth: int = 4, shading_width: int = 128, shading_depth: int = 3,
                 color_multires: int = 4, proxy_width: int = 96, proxy_depth: int = 7, proxy_multires: int = 6,
                 vis_width: int = 256,
                 vis_depth: int = 4, mat_multires: int = 10, mat_enc_width: int = 512, mat_enc_depth: int = 4,
                 mat_latent: int = 64, mat_dec_width: int = 128, mat_dec_depth: int = 2, num_lobes: int = 128,
                 variance_init: float = 0.3, n_samples: int = 32, n_importance: int = 32, up_sample_steps: int = 4,
                 perturb: bool = True, chunk: int = 2048, lr: float | None = None, weight_decay: float = 0.01,
                 pe_ramp: Sequence[float] = (0.2, 0.5), rgb_weight: float = 1.0, eikonal_weight: float = 0.1,
                 mask_weight: float = 0.5, normal_weight: float = 5.0, distill_weight: float = 10.0,
                 seg_weight: float = 50.0, seg_rays: int = 64, vis_dirs: int = 4, vis_n_samples: int = 32,
                 vis_n_importance: int = 32, vis_threshold: float = 0.95, light_dirs: int = 25,
                 kl_weight: float = 0.01, smooth_weight: float = 0.1, pose_refinement: bool = False,
                 pose_lr: float = 1e-3, pose_start: float = 0.25, mesh_resolution: int = 128, chamfer_samples: int = 20000,
                 novel_views: int = 4, seed: int = 0,
                 pose_loss: Literal["photometric", "silhouette", "both"] = "photometric", pose_rays: int = 256,
                 pose_weight: float = 1.0, pose_boundary_radius: int = 2,
                 pose_min_inv_s: float | None = None, pose_lr_final: float | None = None,
                 pose_end: float = 1.0) -> None:
        super().__init__()
        if stage not in TRAINABLE:
            raise ValueError(f"stage must be one of {list(TRAINABLE)}, got {stage!r}")
        if pose_refinement and not 0.0 <= pose_start < pose_end <= 1.0:
            raise ValueError(f"pose refinement window needs 0 <= pose_start < pose_end <= 1, got "
                             f"pose_start={pose_start}, pose_end={pose_end}")
        if pose_lr_final is not None and not 0.0 < pose_lr_final:
            raise ValueError(f"pose_lr_final must be > 0 (or null for a constant pose lr), got {pose_lr_final}")
        self.save_hyperparameters()
        self.model = SfDModel(0, sdf_width, sdf_depth, sdf_multires, feature_dim, albedo_width, albedo_depth,
                              shading_width, shading_depth, color_multires, proxy_width, proxy_depth, proxy_multires, vis_width,
                              vis_depth, mat_multires, mat_enc_width, mat_enc_depth, mat_latent, mat_dec_width,
                              mat_dec_depth, num_lobes, variance_init, seed)
        self.scene = None  # PileScene of the data (for evaluation against gt/)
        self._silhouette_pose = None  # SilhouettePoseLoss of self.scene, built on first use

    # ------------------------------------------------------------------ setup, chaining, freezing
    def setup(self, stage: str) -> None:
        datamodule = getattr(self.trainer, "datamodule", None) if self._trainer is not None else None
        if datamodule is not None and hasattr(datamodule, "scene"):
            datamodule.setup(stage)
            self.scene = datamodule.scene
            self.model.set_scene(self.scene)
        if stage == "fit" and self.hparams.previous_stage_checkpoint:
            self.load_previous_stage(self.hparams.previous_stage_checkpoint)
            if self.scene is not None:
                self.model.set_scene(self.scene)  # this run's data wins for camera and poses
        elif stage == "fit" and self.hparams.stage != "geometry":
            warnings.warn(f"SfD stage '{self.hparams.stage}' without previous_stage_checkpoint: the geometry is "
                          "untrained (a smoke run only)", stacklevel=2)
        if stage == "fit":
            # Before the strategy wraps the model: DDP records which parameters need gradients when it
            # is built, so freezing only in on_fit_start makes it wait for gradients that never come.
            self.apply_freezing()

    def load_previous_stage(self, path: str | Path) -> None:
        """Load the previous stage's weights and buffers (PE ``alpha`` included); no optimiser state."""
        path = Path(path)
        if not path.is_file():
            raise InputError(path, "previous-stage checkpoint not found",
                             "pass --model.init_args.previous_stage_checkpoint runs/<geometry run>/checkpoints/last.ckpt")
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)["state_dict"]
        except Exception as exc:
            raise InputError(path, f"not a readable checkpoint ({type(exc).__name__})",
                             "pass a .ckpt written by sfd fit") from None
        self.model.resize_instances(state.get("model.object_to_world", self.model.object_to_world).shape[0])
        own = self.state_dict()
        bad = [k for k, v in state.items() if k in own and own[k].shape != v.shape]
        if bad or set(own) - set(state):
            raise InputError(path, f"weights do not match this model ({(bad or sorted(set(own) - set(state)))[0]})",
                             "use the same network sizes (sdf_*, feature_dim, ...) as the previous stage's config")
        self.load_state_dict(state)

    def load_state_dict(self, state_dict, strict: bool = True, assign: bool = False):
        key = "model.object_to_world"
        if key in state_dict:
            self.model.resize_instances(int(state_dict[key].shape[0]))
        return super().load_state_dict(state_dict, strict=strict, assign=assign)

    def trainable_names(self) -> tuple[str, ...]:
        names = TRAINABLE[self.hparams.stage]
        if self.hparams.stage == "geometry" and self.hparams.pose_refinement:
            names = names + ("pose",)
        return names

    def apply_freezing(self) -> None:
        """``requires_grad`` only on the current stage's modules (input gradients still flow)."""
        names = self.trainable_names()
        for name, param in self.model.named_parameters():
            param.requires_grad_(name.split(".")[0] in names)

    def on_fit_start(self) -> None:
        self.apply_freezing()

    def configure_optimizers(self) -> torch.optim.Optimizer | dict[str, Any]:
        self.apply_freezing()
        stage = self.hparams.stage
        lr = self.hparams.lr if self.hparams.lr is not None else DEFAULT_LR[stage]
        main = [p for n, p in self.model.named_parameters() if p.requires_grad and not n.startswith("pose.")]
        groups: list[dict[str, Any]] = [{"params": main}]
        if stage == "geometry" and self.hparams.pose_refinement:
            groups.append({"params": list(self.model.pose.parameters()), "lr": self.hparams.pose_lr, "weight_decay": 0.0})
        if stage != "geometry":
            return torch.optim.Adam(groups, lr=lr)
        optimizer = torch.optim.AdamW(groups, lr=lr, weight_decay=self.hparams.weight_decay)
        if not (self.hparams.pose_refinement and self.hparams.pose_lr_final is not None):
            return optimizer
        schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, [lambda step: 1.0, self._pose_lr_factor])
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": schedule, "interval": "step"}}

    def _pose_lr_factor(self, step: int) -> float:
        """``pose_lr`` multiplier at ``step``: 1 until ``pose_start``, then exponential to ``pose_lr_final``."""
        hp = self.hparams
        total = self._max_steps()
        begin, end = hp.pose_start * total, hp.pose_end * total
        progress = min(1.0, max(0.0, (step - begin) / max(end - begin, 1.0)))
        return (hp.pose_lr_final / hp.pose_lr) ** progress

    # ------------------------------------------------------------------ helpers
    def _max_steps(self) -> int:
        trainer = self._trainer
        if trainer is not None and trainer.max_steps and trainer.max_steps > 0:
            return int(trainer.max_steps)
        return 100_000

    def _update_pe(self) -> None:
        self.model.set_pe_progress(pe_progress(self.global_step, self._max_steps(), self.hparams.pe_ramp))

    def _bounds(self, count: int, device: torch.device) -> tuple[Tensor, Tensor]:
        return self.model.near.expand(count).to(device), self.model.far.expand(count).to(device)

    def render_primary(self, batch: dict[str, Tensor], create_graph: bool, color: bool, jitter: bool = False,
                       transforms: Tensor | None = None) -> dict[str, Tensor]:
        """Render the batch's camera rays, each in its instance's frame (background: random instance)."""
        m = self.model
        rays_o, rays_d = m.camera_rays(batch["rays_d"])
        inst = batch["pose_index"].clone()
        background = inst < 0
        inst[background] = torch.randint(max(m.num_instances, 1), (int(background.sum()),), device=inst.device)
        near, far = self._bounds(len(inst), rays_o.device)
        offsets = None
        if jitter:
            offsets = (torch.rand(len(inst), device=rays_o.device) - 0.5) * 2 * m.scene_radius / self.hparams.n_samples
        out = m.render(rays_o, rays_d, m.primary_assign(inst), near, far, self.hparams.n_samples,
                       self.hparams.n_importance, self.hparams.up_sample_steps, offsets, create_graph, color,
                       transforms)
        out.update(inst=inst, rays_o=rays_o, rays_d=rays_d)
        return out

    # ------------------------------------------------------------------ training
    def training_step(self, batch: dict[str, Tensor], batch_idx: int) -> Tensor:
        keep = ~batch["ignore"]
        batch = {k: v[keep] for k, v in batch.items()}
        step = {"geometry": self._geometry_step, "visibility": self._visibility_step,
                "material": self._material_step}[self.hparams.stage]
        terms = step(batch)
        for name, value in terms.items():
            self.log(f"train/{name}", value.detach().float(), prog_bar=name == "loss", batch_size=len(batch["rgb"]))
        return terms["loss"]

    def _geometry_step(self, batch: dict[str, Tensor]) -> dict[str, Tensor]:
        hp, m = self.hparams, self.model
        self._update_pe()
        transforms = m.transforms()
        refining = hp.pose_refinement and hp.pose_start <= self.global_step / self._max_steps() < hp.pose_end
        pose_transforms = transforms
        if hp.pose_refinement and (not refining or hp.pose_loss == "silhouette"):
            transforms = transforms.detach() + 0.0 * transforms  # zero pose gradients (DDP sees them used)
        elif not hp.pose_refinement:
            transforms = transforms.detach()
        inverse = torch.linalg.inv(transforms)
        out = self.render_primary(batch, create_graph=True, color=True, jitter=hp.perturb, transforms=transforms)
        fg = batch["pose_index"] >= 0
        net_mask = out["weights_sum"].detach() > 0.01
        terms = {"rgb": losses.rgb_loss(out["rgb"], batch["rgb"], fg, net_mask),
                 "eikonal": losses.eikonal_loss(out["grad_norm"], out["x_world"], m.scene_center, m.scene_radius),
                 "mask": losses.mask_loss(out["weights_sum"], fg)}
        loss = hp.rgb_weight * terms["rgb"] + hp.eikonal_weight * terms["eikonal"] + hp.mask_weight * terms["mask"]
        if "normal_prior" in batch and hp.normal_weight > 0:
            normal_cam = out["normal"] @ m.c2w[:3, :3]
            terms["normal"] = losses.normal_prior_loss(normal_cam, batch["normal_prior"], fg & net_mask)
            loss = loss + hp.normal_weight * terms["normal"]
        rays, samples = out["sdf"].shape
        x_flat = out["x_world"].reshape(-1, 3).detach()
        proxy = m.proxy_all(x_flat, inverse.detach()).reshape(m.num_instances, rays, samples)
        own_proxy = proxy.gather(0, out["inst"][None, :, None].expand(1, rays, samples))[0]
        terms["distill"] = losses.distill_loss(out["weights"].detach(), own_proxy, out["sdf"])
        loss = loss + hp.distill_weight * terms["distill"]
        if hp.seg_weight > 0 and m.num_instances > 1 and fg.any():
            idx = torch.nonzero(fg)[:, 0]
            idx = idx[torch.randperm(len(idx), device=idx.device)[: hp.seg_rays]]
            x_seg = out["x_world"][idx].reshape(-1, 3).detach()
            w = out["weights"][idx]
            sdf_all = torch.stack([m.sdf_in_instances(x_seg, torch.full((len(x_seg),), j, device=x_seg.device), inverse)
                                   for j in range(m.num_instances)])  # (N, B*S)
            weighted = (w[None] * sdf_all.reshape(m.num_instances, len(idx), samples)).sum(-1).T
            proxy_seg = proxy[:, idx]
            weighted_proxy = (w.detach()[None] * proxy_seg).sum(-1).T
            terms["seg"] = losses.seg_hinge(weighted, out["inst"][idx]) + losses.seg_hinge(weighted_proxy, out["inst"][idx])
            loss = loss + hp.seg_weight * terms["seg"]
        if refining and hp.pose_loss in ("silhouette", "both"):
            terms["pose_silhouette"] = self.silhouette_pose_term(pose_transforms)
            loss = loss + hp.pose_weight * terms["pose_silhouette"]
        terms["loss"] = loss
        terms["inv_s"] = m.inv_s().detach()
        return terms

    def silhouette_pose_term(self, transforms: Tensor) -> Tensor:
        """Pose-only silhouette BCE (``pose_loss="silhouette"``; see :class:`SilhouettePoseLoss`)."""
        from sfd_lightning.modules.sfd.pose_refinement import SilhouettePoseLoss

        hp = self.hparams
        if self.scene is None:
            return transforms.sum() * 0.0
        if self._silhouette_pose is None or self._silhouette_pose[0] is not self.scene:
            self._silhouette_pose = (self.scene, SilhouettePoseLoss(self.scene, hp.pose_boundary_radius))
        return self._silhouette_pose[1](self.model, transforms, hp.pose_rays, hp.n_samples, hp.n_importance,
                                        hp.up_sample_steps, min_inv_s=hp.pose_min_inv_s)

    def _visibility_step(self, batch: dict[str, Tensor]) -> dict[str, Tensor]:
        hp, m = self.hparams, self.model
        x, d, label = self.visibility_labels(batch)
        if len(x) == 0:
            return {"loss": sum(p.sum() * 0.0 for p in m.visibility.parameters())}
        logits = m.visibility(x, d).float()
        loss = F.cross_entropy(logits, label)
        accuracy = (logits.argmax(-1) == label).float().mean()
        return {"loss": loss, "accuracy": accuracy, "visible_fraction": label.float().mean()}

    @torch.no_grad()
    def visibility_labels(self, batch: dict[str, Tensor]) -> tuple[Tensor, Tensor, Tensor]:
        """Surface points ``(M, 3)``, directions ``(M, 3)`` and labels ``(M,)`` (1 = visible) from
        secondary NeuS rays in cones around the normals, instances assigned by the proxy classifier."""
        hp, m = self.hparams, self.model
        out = self.render_primary(batch, create_graph=False, color=False)
        fg = (batch["pose_index"] >= 0) & (out["weights_sum"] > 0.5)
        points, normals = out["point"][fg], out["normal"][fg]
        dirs = cone_directions(normals, hp.vis_dirs).reshape(-1, 3)
        origins = points[:, None].expand(-1, hp.vis_dirs, -1).reshape(-1, 3)
        diameter = 2 * m.scene_radius
        near = (0.02 * diameter).expand(len(dirs))
        far = diameter.expand(len(dirs))
        if len(dirs) == 0:
            return origins, dirs, torch.zeros(0, dtype=torch.long, device=dirs.device)
        sec = m.render(origins, dirs, m.proxy_assign(), near, far, hp.vis_n_samples, hp.vis_n_importance,
                       hp.up_sample_steps, None, False, False)
        label = (sec["weights_sum"] <= hp.vis_threshold).long()
        return origins, dirs, label

    @torch.no_grad()
    def light_visibility(self, points: Tensor, lobes: Tensor, lam: Tensor) -> Tensor:
        """Per-lobe visibility ``(P, J)``: a grid of ``light_dirs`` directions in a cone of half-angle
        ``acos(1 − 1.95·λ_min/λ)`` about each lobe, softmax-weighted by the SG falloff."""
        m, count = self.model, self.hparams.light_dirs
        side = max(1, int(round(count ** 0.5)))
        u = (torch.arange(side, device=points.device) + 0.5) / side
        uu, vv = torch.meshgrid(u, u, indexing="ij")
        cos_max = (1 - 1.95 * lam.min() / lam).clamp(-1.0, 1.0)  # (J, 1)
        cos_theta = 1 - uu.reshape(1, -1) * (1 - cos_max)  # (J, K)
        dirs = _frame_directions(lobes, cos_theta, 2 * torch.pi * vv.reshape(1, -1).expand_as(cos_theta))  # (J, K, 3)
        weights = torch.softmax(lam * ((dirs * lobes[:, None]).sum(-1) - 1), -1)  # (J, K)
        out = []
        for chunk in points.split(max(1, 65536 // dirs[..., 0].numel())):
            x = chunk[:, None, None].expand(-1, *dirs.shape[:2], 3)
            vis = m.visibility.visible(x, dirs[None].expand_as(x))
            out.append((vis * weights).sum(-1))
        return torch.cat(out) if out else points.new_zeros(0, lobes.shape[0])

    def shade_material(self, out: dict[str, Tensor], select: Tensor, visibility: bool = True,
                       light: tuple[Tensor, Tensor, Tensor] | None = None) -> dict[str, Tensor]:
        """SG shading of the selected rays' surface points (world normals, view = −ray)."""
        m = self.model
        z = m.material.encode(out["point_local"][select].detach())
        albedo, roughness = m.material.decode(z)
        lobes, lam, mu = m.light.params() if light is None else light
        vis = self.light_visibility(out["point"][select].detach(), lobes.detach(), lam.detach()) if visibility else None
        shaded = render_sg(out["normal"][select].detach(), -out["rays_d"][select], albedo, roughness, lobes, lam, mu, vis)
        shaded.update(latent=z, albedo=albedo, roughness=roughness)
        return shaded

    def _material_step(self, batch: dict[str, Tensor]) -> dict[str, Tensor]:
        hp, m = self.hparams, self.model
        with torch.no_grad():
            out = self.render_primary(batch, create_graph=False, color=False)
        select = (batch["pose_index"] >= 0) & (out["weights_sum"] > 0.01)
        if not select.any():
            return {"loss": sum(p.sum() * 0.0 for p in m.material.parameters())}
        shaded = self.shade_material(out, select)
        rgb_l1 = (shaded["rgb"] - batch["rgb"][select]).abs().mean()
        kl = losses.kl_sparsity(shaded["latent"])
        noisy = m.material.decode(shaded["latent"] + 0.01 * torch.randn_like(shaded["latent"]))
        smooth = (shaded["albedo"] - noisy[0]).abs().mean() + (shaded["roughness"] - noisy[1]).abs().mean()
        loss = rgb_l1 + hp.kl_weight * kl + hp.smooth_weight * smooth
        return {"loss": loss, "rgb_l1": rgb_l1, "kl": kl, "smooth": smooth}

    # ------------------------------------------------------------------ evaluation / export
    def surface(self, item: Any = None) -> SurfaceHandle:
        """The shared SDF in the normalised object frame; ``to_original`` = ``T_i`` per instance ``(K, 4, 4)``."""
        box = torch.full((3,), 1.1, device=self.model.scale_matrix.device)
        return SurfaceHandle(sdf=lambda p: self.model.sdf_features(p)[:, 0], bbox=(-box, box),
                             to_original=self.model.transforms().detach().float().cpu())

    def validation_step(self, batch: dict[str, Tensor], batch_idx: int) -> None:
        from sfd_lightning.modules.sfd.evaluation import evaluate_render, log_render

        render = self.render_image(batch)
        metrics = evaluate_render(render, batch, self.model)
        for name, value in metrics.items():
            self.log(f"val/{name}", value, batch_size=1, prog_bar=name in ("psnr", "mask_iou"))
        log_render(self, render, batch, "val")

    def test_step(self, batch: dict[str, Tensor], batch_idx: int) -> None:
        from sfd_lightning.modules.sfd.evaluation import full_evaluation

        record = full_evaluation(self, batch)
        for name, value in record["metrics"].items():
            if isinstance(value, (int, float)):
                self.log(f"test/{name}", float(value), batch_size=1)
        path = self.write_results(record)
        print(f"metrics: {path}")

    def predict_step(self, batch: dict[str, Tensor], batch_idx: int) -> dict[str, str]:
        from sfd_lightning.modules.sfd.predict import predict_outputs

        return predict_outputs(self, batch)

    def render_image(self, batch: dict[str, Tensor], transforms: Tensor | None = None,
                     light: tuple[Tensor, Tensor, Tensor] | None = None) -> dict[str, Tensor]:
        """Render every pixel of a full-image batch in chunks: ``rgb (P, 3)`` (linear),
        ``weights_sum (P,)``, ``normal (P, 3)`` (camera frame), ``depth (P,)`` (camera z).
        ``light`` replaces the learned SG environment (material stage; relighting)."""
        outputs: dict[str, list[Tensor]] = {}
        stage_material = self.hparams.stage == "material"
        count = len(batch["rgb"])
        for start in range(0, count, self.hparams.chunk):
            part = {k: v[start:start + self.hparams.chunk] for k, v in batch.items()}
            with torch.no_grad():
                out = self.render_primary(part, create_graph=False, color=not stage_material, transforms=transforms)
                if stage_material:
                    rgb = torch.zeros_like(out["point"])
                    select = out["weights_sum"] > 0.01
                    if select.any():
                        rgb[select] = self.shade_material(out, select, light=light)["rgb"].float() * out["weights_sum"][select, None]
                    out["rgb"] = rgb
            cos = (out["rays_d"] @ self.model.c2w[:3, :3]).T[2]  # camera z of the unit ray
            values = {"rgb": out["rgb"], "weights_sum": out["weights_sum"],
                      "normal": out["normal"] @ self.model.c2w[:3, :3], "depth": out["depth"] * cos,
                      "inst": out["inst"]}
            for key, value in values.items():
                outputs.setdefault(key, []).append(value.detach().float() if key != "inst" else value.detach())
        return {k: torch.cat(v) for k, v in outputs.items()}

    def export_meshes(self, output: str | Path | None = None, resolution: int = 256, level: float = 0.0,
                      mode: str = "coarse_to_fine") -> list[Path]:
        """Shared object mesh in scene units with per-vertex albedo/roughness, plus the SG
        environment as an equirectangular image (material stage) and the instance transforms."""
        from sfd_lightning.modules.sfd.export import export_object

        output = Path(output) if output is not None else self.run_dir / "meshes"
        return export_object(self, output, resolution, level, mode)
