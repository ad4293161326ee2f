"""UMR base system: template buffers, the shared forward pass, rendering, evaluation and export.

Stage 1 (:class:`~sfd_lightning.modules.umr.stage1.UMRStage1`) and stage 2
(:class:`~sfd_lightning.modules.umr.stage2.UMRStage2`) add their heads and training steps.

Forward (``img (B, 3, S, S)`` in [0, 1]) -> :class:`UMROutput`: per-instance vertices
``(B, V, 3)`` (symmetric template + deformation), cameras ``(B, H, 7)`` with probabilities
``(B, H)``, UV flow ``(B, 2, H_uv, W_uv)``, per-face texel flow ``(B, F, T, 2)`` and texture
``(B, F, T, 3)``. Training samples z and a hypothesis; evaluation is deterministic (μ, argmax
hypothesis), unless ``eval_protocol="original"`` (sampled z and hypothesis).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, NamedTuple, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from sfd_lightning.errors import InputError
from sfd_lightning.modules.base import BaseReconSystem
from sfd_lightning.modules.umr import losses as L
from sfd_lightning.modules.umr.cameras import mean_camera, project
from sfd_lightning.modules.umr.networks import Encoder, GaussianHeads, TextureFlow
from sfd_lightning.modules.umr.template import build_template, symmetric_vertices
from sfd_lightning.render.soft_rasterizer import RasterOutput, SoftRasterizer

__all__ = ["UMRBase", "UMROutput"]

TEXTURE_LOSS_KIND = "l1_dssim"  # the documented substitute for the AlexNet perceptual loss


class UMROutput(NamedTuple):
    """See the module docstring; ``delta (B, P + R, 3)`` is the predicted deformation."""

    feat: Tensor
    z: Tensor
    delta: Tensor
    verts: Tensor
    cams: Tensor
    probs: Tensor
    flow: Tensor
    tex_flow: Tensor
    texture: Tensor


class UMRBase(BaseReconSystem):
    """Shared parts of both stages (arguments documented on the stage classes)."""

    def __init__(self, img_size: int = 256, mesh_level: int = 3, texels: int = 6, feat_dim: int = 200,
                 z_dim: int = 350, encoder_weights: str | None = None,
                 flow_fc_widths: Sequence[int] = (8192, 8192), flow_c0: int = 256, render_size: int | None = None,
                 anti_alias: bool = False, sigma_512: float = 1e-5, gamma: float = 1e-4, lr: float = 1e-4,
                 lr_decay: float = 5e-4, eval_protocol: str = "deterministic", pck_pairs: int = 10000,
                 keypoint_sigma_256: float = 3.0, turntable_views: int = 8, raster_chunk_pairs: int = 1 << 19,
                 lr_decay_total: float | None = None) -> None:
        super().__init__()
        if eval_protocol not in ("deterministic", "original"):
            raise InputError(None, f"eval_protocol {eval_protocol!r}", "use 'deterministic' or 'original'")
        tpl = build_template(mesh_level, texels)
        self.tpl = tpl
        self.register_buffer("faces", torch.from_numpy(tpl.faces), persistent=False)
        self.register_buffer("sphere", torch.from_numpy(tpl.vertices).float(), persistent=False)
        self.register_buffer("uv_sampler", torch.from_numpy(tpl.uv_sampler), persistent=False)
        self.register_buffer("mirror_texel", torch.from_numpy(tpl.mirror_texel), persistent=False)
        self.register_buffer("edges", torch.from_numpy(tpl.edges), persistent=False)
        self.register_buffer("edge_opposite", torch.from_numpy(tpl.edge_opposite), persistent=False)
        self.register_buffer("laplacian", L.uniform_laplacian(torch.from_numpy(tpl.faces), len(tpl.vertices)),
                             persistent=False)
        # the category template (predicted half); stage 1 re-centres it, stage 2 loads it
        self.register_buffer("mean_v", torch.from_numpy(tpl.vertices[: tpl.n_pred]).float().clone())
        self.encoder = Encoder(img_size, feat_dim, encoder_weights)
        self.heads = GaussianHeads(feat_dim, z_dim)
        self.texture_net = TextureFlow(feat_dim, tpl.uv_size, flow_fc_widths, flow_c0)
        self.img_size = int(img_size)
        size = int(render_size or img_size)
        self.render_size = size
        raster_size = 2 * size if anti_alias else size
        sigma = sigma_512 * (512.0 / raster_size) ** 2
        common = dict(sigma=sigma, gamma=gamma, dist_eps=1e-10, perspective_correct=False,
                      chunk_pairs=raster_chunk_pairs)
        self.renderer = SoftRasterizer(raster_size, background=0.0, **common)
        self.renderer_white = SoftRasterizer(raster_size, background=1.0, **common)
        self._eval_store: dict[str, list] = {}

    # ------------------------------------------------------------------ model
    def predict_shape(self, z: Tensor) -> Tensor:
        raise NotImplementedError

    def predict_cameras(self, feat: Tensor) -> tuple[Tensor, Tensor]:
        raise NotImplementedError

    def template_vertices(self) -> Tensor:
        """The symmetric category template ``(V, 3)``."""
        return symmetric_vertices(self.mean_v, self.tpl.n_plane)

    def forward(self, img: Tensor, sample: bool | None = None) -> UMROutput:
        """See the module docstring. ``sample`` defaults to ``self.training`` (or the original protocol)."""
        if sample is None:
            sample = self.training or self.hparams.eval_protocol == "original"
        feat = self.encoder(img)
        z = self.heads(feat, sample)
        delta = self.predict_shape(z)
        verts = symmetric_vertices(self.mean_v + delta, self.tpl.n_plane)
        cams, probs = self.predict_cameras(feat)
        flow = self.texture_net(feat)
        tex_flow = self.face_flow(flow)
        texture = self.sample_texture(img, tex_flow)
        return UMROutput(feat, z, delta, verts, cams.float(), probs.float(), flow, tex_flow, texture)

    def face_flow(self, flow: Tensor) -> Tensor:
        """UV flow ``(B, 2, H_uv, W_uv)`` -> per-face texel flow ``(B, F, T, 2)`` (left faces copy right ones)."""
        b = flow.shape[0]
        grid = self.uv_sampler.unsqueeze(0).expand(b, -1, -1, -1).to(flow.dtype)
        tex = F.grid_sample(flow, grid, mode="bilinear", align_corners=False).permute(0, 2, 3, 1)
        q, m = self.tpl.n_plane_faces, self.tpl.n_face_pairs
        left = tex[:, q:q + m][:, :, self.mirror_texel]
        return torch.cat([tex, left], dim=1).float()

    @staticmethod
    def sample_texture(img: Tensor, tex_flow: Tensor) -> Tensor:
        """Image colours at the texel flow: ``(B, F, T, 3)``."""
        out = F.grid_sample(img.float(), tex_flow.float(), mode="bilinear", padding_mode="border",
                            align_corners=False)
        return out.permute(0, 2, 3, 1)

    def select_cameras(self, out: UMROutput, sample: bool) -> tuple[Tensor, Tensor]:
        """One camera per image ``(B, 7)`` and its hypothesis index ``(B,)``: sampled from the
        probabilities (``sample``) or the most probable one."""
        if out.cams.shape[1] == 1:
            idx = torch.zeros(out.cams.shape[0], dtype=torch.long, device=out.cams.device)
        elif sample:
            idx = torch.multinomial(out.probs.detach(), 1).squeeze(-1)
        else:
            idx = out.probs.argmax(-1)
        return out.cams[torch.arange(len(idx), device=idx.device), idx], idx

    # ------------------------------------------------------------------ rendering
    def _pool(self, image: Tensor) -> Tensor:
        return F.avg_pool2d(image, 2) if self.hparams.anti_alias else image

    def render(self, verts: Tensor, cam: Tensor, texture: Tensor | None = None, white: bool = False,
               face_index: bool = False, centroids: bool = False) -> RasterOutput:
        """Render ``verts (B, V, 3)`` under ``cam (B, 7)``: image ``(B, C + 1, S_r, S_r)`` (alpha last)."""
        renderer = self.renderer_white if white else self.renderer
        out = renderer.rasterize(project(verts.float(), cam.float()), self.faces, texture,
                                 return_face_index=face_index, return_centroids=centroids)
        return out._replace(image=self._pool(out.image))

    def resize(self, x: Tensor) -> Tensor:
        """Resize ``(B, C, S, S)`` maps to the render size (bilinear)."""
        if x.shape[-1] == self.render_size:
            return x
        return F.interpolate(x, size=(self.render_size,) * 2, mode="bilinear", align_corners=False)

    def visible_faces(self, face_index: Tensor) -> Tensor:
        """Faces hit by the hard render ``(B, F)`` bool (background −1 excluded)."""
        b, n_faces = face_index.shape[0], self.faces.shape[0]
        vis = torch.zeros(b, n_faces + 1, dtype=torch.bool, device=face_index.device)
        idx = face_index.reshape(b, -1).clamp_min(-1) + 1
        vis.scatter_(1, idx, True)
        return vis[:, 1:]

    def visible_vertices(self, face_index: Tensor) -> Tensor:
        """Vertices ``(B, V)`` bool of the faces hit by the hard render (corners of visible faces)."""
        vis_f = UMRBase.visible_faces(self, face_index)  # (B, F); background never counts here
        b, n_vert = vis_f.shape[0], self.sphere.shape[0]
        hits = torch.zeros(b, n_vert, dtype=torch.long, device=vis_f.device)
        for corner in range(3):
            hits.scatter_add_(1, self.faces[:, corner].unsqueeze(0).expand(b, -1), vis_f.long())
        return hits > 0

    # ------------------------------------------------------------------ shared losses
    def regularisers(self, out: UMROutput) -> dict[str, Tensor]:
        return {"laplacian": L.laplacian_loss(out.verts, self.laplacian.to(out.verts)),
                "flatten": L.flatten_loss(out.verts, self.edges, self.edge_opposite),
                "deform": L.deform_loss(out.delta)}

    def texture_terms(self, out: UMROutput, img: Tensor, mask: Tensor, cam: Tensor, alpha: Tensor) -> Tensor:
        """Per-sample texture loss ``(B,)``: render with shape and camera detached, ``render·m̂`` vs
        ``img·m`` (``m̂ = alpha`` not detached)."""
        rgb = self.render(out.verts.detach(), cam.detach(), out.texture).image[:, :3]
        return L.texture_l1_dssim(rgb * alpha, self.resize(img) * mask)

    def log_terms(self, terms: dict[str, Tensor], total: Tensor, batch_size: int) -> None:
        for key, value in terms.items():
            self.log(f"train/{key}", value.detach(), batch_size=batch_size)
        self.log("train/loss", total.detach(), prog_bar=True, batch_size=batch_size)

    def on_fit_start(self) -> None:
        print(f"UMR texture loss: {TEXTURE_LOSS_KIND} (masked L1 + DSSIM substitute; no local AlexNet weights)")
        datamodule = getattr(self.trainer, "datamodule", None)
        size = getattr(datamodule, "image_size", self.img_size)
        if size != self.img_size:
            raise InputError(None, f"model img_size {self.img_size} != data image_size {size}",
                             "set model.init_args.img_size to data.init_args.image_size")

    # ------------------------------------------------------------------ optimisation
    def configure_optimizers(self) -> dict[str, Any]:
        optimizer = torch.optim.Adam(self.parameters(), lr=self.hparams.lr, betas=(0.9, 0.999))
        decay = float(self.hparams.lr_decay)
        total = self.hparams.get("lr_decay_total")
        if total is not None:  # the same hyperbolic curve stretched over the run: 1/(1 + total) at max_steps
            steps = self.trainer.max_steps if self.trainer.max_steps and self.trainer.max_steps > 0 \
                else int(self.trainer.estimated_stepping_batches)
            decay = float(total) / max(int(steps), 1)
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda it: 1.0 / (1.0 + decay * it))
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    # ------------------------------------------------------------------ evaluation
    def evaluate_batch(self, batch: dict[str, Tensor]) -> dict[str, Tensor]:
        """Deterministic predictions + per-image metrics of one batch (no grad)."""
        from sfd_lightning.metrics.image_metrics import mask_iou
        from sfd_lightning.metrics.keypoints import keypoint_faces

        img = batch["img"].float()
        with torch.no_grad():
            out = self(img, sample=self.hparams.eval_protocol == "original")
            cam, _ = self.select_cameras(out, sample=self.hparams.eval_protocol == "original")
            hard = self.render(out.verts, cam, face_index=True)
            alpha = hard.image[:, -1]
            gt = self.resize(batch["mask"].float())[:, 0]
            tpl = self.template_vertices().unsqueeze(0).expand(len(img), -1, -1)
            proj_tpl = project(tpl, cam)[..., :2]
            vis_tpl = self.visible_vertices(hard.face_index)
            sigma = self.hparams.keypoint_sigma_256 * 2.0 / 256.0
            faces = keypoint_faces(batch["kp"].float(), out.tex_flow, sigma)
        return {"soft_iou": L.soft_iou(alpha, gt), "iou": mask_iou(alpha, gt, 0.5), "cam": cam,
                "kp": batch["kp"].float(), "kp_faces": faces, "mean_flow": out.tex_flow.mean(2),
                "proj_tpl": proj_tpl, "vis_tpl": vis_tpl, "pred_mask": alpha > 0, "gt_small": F.interpolate(
                    batch["mask"].float(), size=(min(self.img_size, 64),) * 2, mode="bilinear",
                    align_corners=False)[:, 0]}

    def on_test_epoch_start(self) -> None:
        self._eval_store = {}

    def test_step(self, batch: dict[str, Tensor], batch_idx: int) -> None:
        res = self.evaluate_batch(batch)
        for key, value in res.items():
            self._eval_store.setdefault(key, []).append(value.detach().cpu())
        self.log("test/mask_iou_soft", res["soft_iou"].mean(), batch_size=len(res["iou"]))

    def on_test_epoch_end(self) -> None:
        results = self.summarise_evaluation({k: torch.cat(v) for k, v in self._eval_store.items()})
        for key, value in results["metrics"].items():
            self.log(f"test/{key}", float(value), batch_size=1)
        if self.trainer.is_global_zero:
            path = self.write_results(results)
            print("UMR test:", {k: round(float(v), 4) for k, v in results["metrics"].items()}, f"-> {path}")

    def summarise_evaluation(self, store: dict[str, Tensor]) -> dict[str, Any]:
        """Dataset-level metrics from the concatenated per-image predictions."""
        from sfd_lightning.metrics.keypoints import transfer_pck

        n = len(store["iou"])
        metrics: dict[str, float] = {"mask_iou_soft": float(store["soft_iou"].mean()),
                                     "mask_iou": float(store["iou"].mean())}
        # trivial baseline: the category template under the mean predicted camera
        with torch.no_grad():
            cam = mean_camera(store["cam"].to(self.device)).unsqueeze(0)
            size = store["gt_small"].shape[-1]
            base = SoftRasterizer(size, sigma=self.hparams.sigma_512 * (512.0 / size) ** 2, gamma=1e-4,
                                  dist_eps=1e-10, perspective_correct=False)
            alpha = base(project(self.template_vertices().unsqueeze(0), cam), self.faces)[0, 0].cpu()
            metrics["baseline_template_mean_camera_iou_soft"] = float(
                L.soft_iou(alpha.expand_as(store["gt_small"]), store["gt_small"]).mean())
            # the keypoint baseline uses the same single camera (pck*_mean_cam)
            proj_mean = project(self.template_vertices().unsqueeze(0), cam)[0, :, :2].cpu()
        pck = transfer_pck({**store, "proj_mean_cam": proj_mean}, n_pairs=self.hparams.pck_pairs)
        metrics.update(pck)
        return {"protocol": f"umr ({self.hparams.eval_protocol})", "images": n, "metrics": metrics,
                "units": {"mask_iou": "IoU (soft render > 0.5 vs GT > 0.5)", "mask_iou_soft": "soft IoU",
                          "pck": "fraction of keypoints within alpha·max bbox side (err·0.55 in NDC)"},
                "texture_loss": TEXTURE_LOSS_KIND}

    # ------------------------------------------------------------------ meshes and export
    def mesh(self, batch: dict[str, Tensor]) -> tuple[Tensor, Tensor, Tensor]:
        """Deterministic mesh of each image: vertices ``(B, V, 3)``, faces ``(F, 3)``, texture ``(B, F, T, 3)``."""
        with torch.no_grad():
            out = self(batch["img"].float(), sample=False)
        return out.verts, self.faces, out.texture

    def export_meshes(self, output: str | Path | None = None, resolution: int = 256, level: float = 0.0,
                      mode: str = "coarse_to_fine") -> list[Path]:
        """``sfd export``: the category template as a mesh (per-image meshes: ``sfd predict``)."""
        from sfd_lightning.geometry.io import Mesh, save_mesh

        output = Path(output) if output is not None else self.run_dir / "meshes"
        path = output if output.suffix else output / "template.obj"
        mesh = Mesh(self.template_vertices().detach().cpu().double().numpy(), self.faces.cpu().numpy())
        return [save_mesh(path, mesh)]

    def predict_step(self, batch: dict[str, Tensor], batch_idx: int) -> list[str]:
        """Write ``<name>.obj`` + ``<name>.mtl`` + ``<name>_texture.png``, ``<name>_turntable.png`` and
        ``<name>_camera.json`` per input into ``<run>/predictions/``."""
        from sfd_lightning.modules.umr.export import write_prediction

        with torch.no_grad():
            out = self(batch["img"].float(), sample=False)
            cam, _ = self.select_cameras(out, sample=False)
        names = batch.get("name")
        written = []
        for i in range(len(cam)):
            name = names[i] if names is not None else f"{int(batch['image_id'][i]):06d}"
            written += write_prediction(self, self.run_dir / "predictions", name, batch["img"][i], out, i, cam[i])
        return [str(p) for p in written]
