"""UMR stage 1: template learning with one camera (methods/umr.md §4, column s1).

Losses: mask 3.0, Laplacian 0.15, flatten 4e-4, deformation 5.0 (only after ``deform_start_epoch``),
ori 0.4 (only before ``ori_epochs``), texture (L1 + DSSIM substitute) 3.0, texture DT 3.0, texture
cycle 0.5, silhouette GAN 1.0. The template buffer ``mean_v`` is re-centred every
``template_update_every`` epochs (mean μ over the train loader through the shape MLP, added in
place; never gradient-trained).
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import Tensor

from sfd_lightning.modules.umr import losses as L
from sfd_lightning.modules.umr.cameras import rotate_about_y
from sfd_lightning.modules.umr.networks import Discriminator, ShapeMLP, SingleCamera
from sfd_lightning.modules.umr.system import UMRBase

__all__ = ["UMRStage1"]


class UMRStage1(UMRBase):
    """UMR stage 1 (single camera, template learning).

    Args:
        img_size: input crop side ``S`` (= data image_size).
        mesh_level, texels: icosphere level (3: 642 vertices) and texels per face side (6).
        feat_dim, z_dim: encoder feature (200) and latent (350) sizes.
        encoder_weights: local torchvision ResNet-18 state dict (None: random init).
        flow_fc_widths, flow_c0: texture-flow FC widths and start channels (8192, 8192 / 256).
        shape_hidden: shape-MLP hidden widths (350, 700, 1400, 2800).
        render_size: render/mask-loss resolution (default ``img_size``); ``anti_alias``: render at 2×
            and average-pool; ``sigma_512``: σ at 512² (scaled by (512/S)²); ``gamma``: depth softmax.
        lr, lr_decay: Adam lr·1/(1 + lr_decay·iteration) (the original's fixed per-iteration rate).
        lr_decay_total: when set, the decay follows ``trainer.max_steps``: lr·1/(1 + lr_decay_total·step/max_steps)
            (``lr_decay`` is then ignored; the original's 5e-4 over ~186k iterations is about 93).
        camera_init: ``identity`` (the original's default quaternion layer) or ``upright`` (start at an
            upright side view of the template: 90° about x; see ``networks.base_rotations``).
        w_*: loss weights; ``deform_start_epoch`` / ``ori_epochs`` / ``template_update_every``:
            epoch schedule of the deformation prior, the ori prior and the template re-centring (0 = off).
        gan_rotation_max: novel-view rotation range in degrees about y for the GAN fake.
        eval_protocol, pck_pairs, keypoint_sigma_256, turntable_views: evaluation / export settings.
    """

    def __init__(self, img_size: int = 256, mesh_level: int = 3, texels: int = 6, feat_dim: int = 200,
                 z_dim: int = 350, encoder_weights: str | None = None,
                 flow_fc_widths: Sequence[int] = (8192, 8192), flow_c0: int = 256,
                 shape_hidden: Sequence[int] = (350, 700, 1400, 2800), render_size: int | None = None,
                 anti_alias: bool = False, sigma_512: float = 1e-5, gamma: float = 1e-4, lr: float = 1e-4,
                 lr_decay: float = 5e-4, w_mask: float = 3.0, w_laplacian: float = 0.15, w_flatten: float = 4e-4,
                 w_deform: float = 5.0, w_ori: float = 0.4, w_texture: float = 3.0, w_dt: float = 3.0,
                 w_cycle: float = 0.5, w_gan: float = 1.0, deform_start_epoch: int = 5, ori_epochs: int = 3,
                 template_update_every: int = 5, gan_rotation_max: float = 180.0,
                 eval_protocol: str = "deterministic", pck_pairs: int = 10000, keypoint_sigma_256: float = 3.0,
                 turntable_views: int = 8, raster_chunk_pairs: int = 1 << 19,
                 lr_decay_total: float | None = None, camera_init: str = "identity") -> None:
        super().__init__(img_size, mesh_level, texels, feat_dim, z_dim, encoder_weights, flow_fc_widths, flow_c0,
                         render_size, anti_alias, sigma_512, gamma, lr, lr_decay, eval_protocol, pck_pairs,
                         keypoint_sigma_256, turntable_views, raster_chunk_pairs, lr_decay_total)
        self.save_hyperparameters()
        self.shape_net = ShapeMLP(z_dim, self.tpl.n_pred, shape_hidden)
        self.camera_net = SingleCamera(feat_dim, init=camera_init)
        self.discriminator = Discriminator(self.render_size, 1)
        self.register_buffer("template_updates", torch.zeros((), dtype=torch.long))

    def predict_shape(self, z: Tensor) -> Tensor:
        return self.shape_net(z)

    def predict_cameras(self, feat: Tensor) -> tuple[Tensor, Tensor]:
        return self.camera_net(feat)

    def training_step(self, batch: dict[str, Tensor], batch_idx: int) -> Tensor:
        hp = self.hparams
        img = batch["img"].float()
        mask = self.resize(batch["mask"].float())
        out = self(img, sample=True)
        cam = out.cams[:, 0]
        hard = self.render(out.verts, cam, face_index=True, centroids=True)
        alpha = hard.image[:, -1:]
        terms = {"mask": L.mask_loss(alpha[:, 0], mask[:, 0]).mean()}
        terms.update(self.regularisers(out))
        terms["ori"] = L.ori_loss(out.verts, self.tpl.n_plane)
        terms["texture_l1_dssim"] = self.texture_terms(out, img, mask, cam, alpha).mean()
        terms["texture_dt"] = L.texture_dt_loss(out.tex_flow, L.dt_barrier(batch["mask"]))
        terms["texture_cycle"] = L.cycle_loss(out.tex_flow, hard.centroids, self.visible_faces(hard.face_index))
        weights = {"mask": hp.w_mask, "laplacian": hp.w_laplacian, "flatten": hp.w_flatten,
                   "deform": hp.w_deform if self.current_epoch > hp.deform_start_epoch else 0.0,
                   "ori": hp.w_ori if self.current_epoch < hp.ori_epochs else 0.0,
                   "texture_l1_dssim": hp.w_texture, "texture_dt": hp.w_dt, "texture_cycle": hp.w_cycle}
        if hp.w_gan > 0:
            angle = torch.rand(len(img), device=img.device) * hp.gan_rotation_max
            fake = self.render(out.verts, rotate_about_y(cam, angle.floor())).image[:, -1:]
            terms["gan"] = L.gan_loss(self.discriminator(alpha.detach()), self.discriminator(fake))
            weights["gan"] = hp.w_gan
        total = sum(weights[k] * v for k, v in terms.items() if weights.get(k, 0.0) != 0.0)
        self.log_terms(terms, total, len(img))
        return total

    def validation_step(self, batch: dict[str, Tensor], batch_idx: int) -> None:
        res = self.evaluate_batch(batch)
        self.log("val/mask_iou_soft", res["soft_iou"].mean(), batch_size=len(res["iou"]), prog_bar=True)
        self.log("val/mask_iou", res["iou"].mean(), batch_size=len(res["iou"]))

    def on_train_epoch_end(self) -> None:
        every = int(self.hparams.template_update_every)
        if every > 0 and (self.current_epoch + 1) % every == 0:
            self.update_template()

    @torch.no_grad()
    def update_template(self) -> None:
        """Re-centre ``mean_v``: average μ over the train loader, decode, add in place."""
        loader = self.trainer.datamodule.train_dataloader() if self.trainer.datamodule is not None else \
            self.trainer.train_dataloader
        was_training = self.training
        self.eval()
        total, count = None, 0
        for batch in loader:
            z = self.heads(self.encoder(batch["img"].float().to(self.device)), sample=False)
            total = z.sum(0) if total is None else total + z.sum(0)
            count += len(z)
        self.train(was_training)
        if count:
            self.mean_v.add_(self.shape_net((total / count).unsqueeze(0))[0])
            self.template_updates += 1
