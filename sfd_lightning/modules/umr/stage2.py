"""UMR stage 2: fixed semantic template, 8 camera hypotheses, semantic part losses (methods/umr.md §4, s2).

Losses: mask Σ_h p_h·L_h 2.5 (p not detached), Laplacian 0.15, flatten 5e-4, deformation 1.0,
texture (L1 + DSSIM substitute) Σ_h p̄_h·L_h 3.0 (p̄ detached), texture DT 3.0, texture cycle 1.0
(soft-centroid target; ``cycle_target: zero`` = the released code's all-zero target), masked-RGB
GAN 1.0 (real = previous batch), camera entropy 0.05, part map 5.0 (×¼ inside), vertex Chamfer 10.0.

The template (``template_path``, from ``sfd umr build-template``) is read when fitting starts and
kept in buffers (``mean_v``, per-face part texels, per-vertex part labels), so test/predict need
only the checkpoint. ``template_path: null`` uses a geometric stand-in (smoke runs only).
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch
from torch import Tensor

from sfd_lightning.modules.umr import losses as L
from sfd_lightning.modules.umr.cameras import project, rotate_about_y
from sfd_lightning.modules.umr.networks import Discriminator, MultiCamera, ShapeLinear
from sfd_lightning.modules.umr.semantic import PART_NAMES, face_labels, geometric_template, load_template
from sfd_lightning.modules.umr.system import UMRBase

__all__ = ["UMRStage2"]


class UMRStage2(UMRBase):
    """UMR stage 2 (multi-hypothesis cameras, semantic consistency).

    Args (beyond :class:`~sfd_lightning.modules.umr.stage1.UMRStage1`'s shared ones):
        template_path: semantic template ``.npz`` (``sfd umr build-template``); None: geometric stand-in.
        hypotheses: camera hypotheses (8); ``camera_azimuth_bias``: start hypothesis h at 360°·h/H about y.
        part_points: SCOPS points per part (head, neck, back, belly) for the vertex Chamfer.
        chamfer_weights: per-part weights (head 1, neck 0, back 0, belly 1).
        cycle_target: ``soft`` (soft centroids) or ``zero`` (released code); ``legacy_vis_index``:
            count background (−1) as visible face F − 1 (released code); ``label_sampling``:
            ``nearest`` or ``bilinear`` (released code) for the per-face part labels.
        w_*: loss weights (table of methods/umr.md §4).
        lr_decay_total: lr decay following ``trainer.max_steps`` (see the stage-1 class); None: ``lr_decay`` per step.
        camera_init: ``identity`` (released code: every hypothesis starts at the identity rotation) or
            ``upright`` (the original's unused base rotations: 90° about x, then 360°·h/H about the
            image's vertical axis; with y-symmetric, z-up templates every start is an upright side view).
    """

    def __init__(self, img_size: int = 256, mesh_level: int = 3, texels: int = 6, feat_dim: int = 200,
                 z_dim: int = 350, encoder_weights: str | None = None,
                 flow_fc_widths: Sequence[int] = (8192, 8192), flow_c0: int = 256, render_size: int | None = None,
                 anti_alias: bool = False, sigma_512: float = 1e-5, gamma: float = 1e-4, lr: float = 1e-4,
                 lr_decay: float = 5e-4, template_path: str | None = None, hypotheses: int = 8,
                 camera_azimuth_bias: bool = False, part_points: Sequence[int] = (10, 10, 30, 30),
                 chamfer_weights: Sequence[float] = (1.0, 0.0, 0.0, 1.0), cycle_target: str = "soft",
                 legacy_vis_index: bool = False, label_sampling: str = "nearest", w_mask: float = 2.5,
                 w_laplacian: float = 0.15, w_flatten: float = 5e-4, w_deform: float = 1.0, w_texture: float = 3.0,
                 w_dt: float = 3.0, w_cycle: float = 1.0, w_gan: float = 1.0, w_entropy: float = 0.05,
                 w_part: float = 5.0, w_chamfer: float = 10.0, gan_rotation_max: float = 180.0,
                 eval_protocol: str = "deterministic", pck_pairs: int = 10000, keypoint_sigma_256: float = 3.0,
                 turntable_views: int = 8, raster_chunk_pairs: int = 1 << 19,
                 lr_decay_total: float | None = None, camera_init: str = "identity") -> None:
        super().__init__(img_size, mesh_level, texels, feat_dim, z_dim, encoder_weights, flow_fc_widths, flow_c0,
                         render_size, anti_alias, sigma_512, gamma, lr, lr_decay, eval_protocol, pck_pairs,
                         keypoint_sigma_256, turntable_views, raster_chunk_pairs, lr_decay_total)
        self.save_hyperparameters()
        if cycle_target not in ("soft", "zero") or label_sampling not in ("nearest", "bilinear"):
            raise ValueError("cycle_target must be soft|zero and label_sampling nearest|bilinear")
        self.shape_net = ShapeLinear(z_dim, self.tpl.n_pred)
        self.camera_net = MultiCamera(feat_dim, hypotheses, camera_azimuth_bias, init=camera_init)
        self.discriminator = Discriminator(self.render_size, 3)
        n_faces, n_tex = len(self.tpl.faces), self.tpl.texels ** 2
        self.register_buffer("part_texture", torch.zeros(n_faces, n_tex, 4))
        self.register_buffer("vertex_part", torch.zeros(len(self.tpl.vertices), dtype=torch.long))
        self.apply_template(geometric_template(self.tpl))
        self._prev_real: Tensor | None = None

    def apply_template(self, data: dict[str, np.ndarray]) -> None:
        """Copy a template dict (see :mod:`~sfd_lightning.modules.umr.semantic`) into the buffers."""
        with torch.no_grad():
            self.mean_v.copy_(torch.as_tensor(data["mean_v"], dtype=torch.float32))
            labels = torch.from_numpy(face_labels(np.asarray(data["uv_label"]), self.tpl,
                                                  self.hparams.label_sampling))
            onehot = torch.nn.functional.one_hot(labels.clamp(0, 4), 5)[..., 1:].float()
            self.part_texture.copy_(onehot)
            self.vertex_part.zero_()
            for k, name in enumerate(PART_NAMES, start=1):
                idx = torch.as_tensor(np.asarray(data[f"{name}_vertices"]), dtype=torch.long)
                self.vertex_part[idx] = k

    def setup(self, stage: str) -> None:
        if stage == "fit" and self.hparams.template_path is not None:
            self.apply_template(load_template(self.hparams.template_path, self.tpl))
        elif stage == "fit":
            print("UMR stage 2: no template_path, using the geometric stand-in template (smoke runs only)")

    def predict_shape(self, z: Tensor) -> Tensor:
        return self.shape_net(z)

    def predict_cameras(self, feat: Tensor) -> tuple[Tensor, Tensor]:
        return self.camera_net(feat)

    def visible_faces(self, face_index: Tensor) -> Tensor:
        vis = super().visible_faces(face_index)
        if self.hparams.legacy_vis_index:  # released code: background index −1 marks face F − 1
            vis[:, -1] |= (face_index.reshape(len(vis), -1) < 0).any(1)
        return vis

    def training_step(self, batch: dict[str, Tensor], batch_idx: int) -> Tensor:
        hp = self.hparams
        img = batch["img"].float()
        mask = self.resize(batch["mask"].float())
        b = len(img)
        out = self(img, sample=True)
        n_h = out.cams.shape[1]
        probs = out.probs
        verts_h = out.verts.unsqueeze(1).expand(-1, n_h, -1, -1).reshape(b * n_h, *out.verts.shape[1:])
        cams_h = out.cams.reshape(b * n_h, 7)
        alpha_h = self.render(verts_h, cams_h).image[:, -1:]
        mask_h = mask.repeat_interleave(n_h, 0)
        terms = {"mask": (probs * L.mask_loss(alpha_h[:, 0], mask_h[:, 0]).view(b, n_h)).sum(1).mean()}
        terms.update(self.regularisers(out))
        tex_h = self.texture_terms(out._replace(verts=verts_h, texture=out.texture.repeat_interleave(n_h, 0)),
                                   img.repeat_interleave(n_h, 0), mask_h, cams_h, alpha_h).view(b, n_h)
        terms["texture_l1_dssim"] = (probs.detach() * tex_h).sum(1).mean()
        terms["texture_dt"] = L.texture_dt_loss(out.tex_flow, L.dt_barrier(batch["mask"]))
        cam, _ = self.select_cameras(out, sample=True)
        hard = self.render(out.verts, cam, face_index=True, centroids=True)
        target = hard.centroids if hp.cycle_target == "soft" else torch.zeros_like(hard.centroids)
        terms["texture_cycle"] = L.cycle_loss(out.tex_flow, target, self.visible_faces(hard.face_index))
        terms["camera_entropy"] = L.entropy_loss(probs)
        weights = {"mask": hp.w_mask, "laplacian": hp.w_laplacian, "flatten": hp.w_flatten, "deform": hp.w_deform,
                   "texture_l1_dssim": hp.w_texture, "texture_dt": hp.w_dt, "texture_cycle": hp.w_cycle,
                   "camera_entropy": hp.w_entropy}
        if "part_prob" in batch and (hp.w_part > 0 or hp.w_chamfer > 0):
            parts = self.resize(batch["part_prob"].float())
            norm = parts * mask
            norm = norm / norm.flatten(2).amax(-1).clamp_min(1e-6)[..., None, None]
            tex = self.part_texture.unsqueeze(0).expand(b, -1, -1, -1)
            rendered = self.render(out.verts, cam.detach(), tex).image[:, :4]
            terms["part_map"] = L.part_map_loss(rendered, norm)
            points = L.sample_part_points(batch["part_prob"].float(), batch["mask"].float(), tuple(hp.part_points))
            tpl = self.template_vertices().unsqueeze(0).expand(b * n_h, -1, -1)
            proj = project(tpl, cams_h)[..., :2]
            per_part = [proj[:, self.vertex_part == k] for k in range(1, 5)]
            pts = [p.repeat_interleave(n_h, 0) for p in points]
            chamfer = L.vertex_chamfer_loss(per_part, pts, tuple(hp.chamfer_weights)).view(b, n_h)
            terms["vertex_chamfer"] = (probs.detach() * chamfer).sum(1).mean()
            weights.update(part_map=hp.w_part, vertex_chamfer=hp.w_chamfer)
        if hp.w_gan > 0:
            real_now = (self.resize(img) * mask).detach()
            real = self._prev_real if self._prev_real is not None and self._prev_real.shape == real_now.shape \
                else real_now
            self._prev_real = real_now
            angle = (torch.rand(b, device=img.device) * hp.gan_rotation_max).floor()
            fake = self.render(out.verts, rotate_about_y(cam, angle), out.texture.detach()).image[:, :3]
            terms["gan"] = L.gan_loss(self.discriminator(real), self.discriminator(fake))
            weights["gan"] = hp.w_gan
        total = sum(weights[k] * v for k, v in terms.items() if weights.get(k, 0.0) != 0.0)
        self.log_terms(terms, total, b)
        self.log("train/camera_max_prob", probs.detach().amax(-1).mean(), batch_size=b)
        return total

    def validation_step(self, batch: dict[str, Tensor], batch_idx: int) -> None:
        res = self.evaluate_batch(batch)
        self.log("val/mask_iou_soft", res["soft_iou"].mean(), batch_size=len(res["iou"]), prog_bar=True)
        self.log("val/mask_iou", res["iou"].mean(), batch_size=len(res["iou"]))
