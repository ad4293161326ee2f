"""SfD evaluation: re-rendering metrics, normals, poses and mesh Chamfer against ``gt/``.

Images are compared after ``clip(x, 0, 1)^(1/2.2)`` (sfd.md §5). PSNR is masked (GT foreground
of registered instances); SSIM is torchmetrics' with a 7×7 uniform window on the image with the
background set to 1 (close to, not exactly, the ``sfd_image`` protocol: no 49/48 factor, no border
crop). Normal error: mean angle (degrees) between camera-frame unit normals, against the normal
prior when present and against normals of the ground-truth depth (``gt/depth.npy``) when present.
Pose error: full relative rotation error over instance pairs (CONTRACTS §4) and instance-centre
error after a similarity alignment. Chamfer: the exported mesh is mapped to the camera frame,
aligned to the GT instances by the similarity estimated from the instance centres, taken into GT
instance 0's object frame and scored with protocol ``neuralpull`` (units: object units).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from sfd_lightning.metrics.image_metrics import mask_iou, psnr
from sfd_lightning.modules.sfd.pose_refinement import relative_rotation_errors, translation_errors, umeyama


def to_srgb(x: Tensor) -> Tensor:
    return x.float().clamp(0.0, 1.0) ** (1.0 / 2.2)


def _image(values: Tensor, height: int, width: int) -> Tensor:
    return values.reshape(height, width, -1)


def evaluate_render(render: dict[str, Tensor], batch: dict[str, Tensor], model) -> dict[str, float]:
    """PSNR (masked, sRGB), mask IoU (weights_sum > 0.5 vs GT), normal error vs prior (if any)."""
    fg = batch["pose_index"] >= 0
    valid = ~batch["ignore"]
    pred_mask = render["weights_sum"] > 0.5
    out = {"psnr": float(psnr(to_srgb(render["rgb"]), to_srgb(batch["rgb"]), fg[:, None])),
           "mask_iou": float(mask_iou(render["weights_sum"][None], fg.float()[None], valid=valid[None]))}
    if "normal_prior" in batch:
        sel = fg & pred_mask
        if sel.any():
            out["normal_err_prior_deg"] = angle_deg(render["normal"][sel], batch["normal_prior"][sel])
    return out


def angle_deg(a: Tensor, b: Tensor) -> float:
    """Mean angle in degrees between rows of ``a`` and ``b`` ``(P, 3)``."""
    cos = (torch.nn.functional.normalize(a, dim=-1) * torch.nn.functional.normalize(b, dim=-1)).sum(-1)
    return float(torch.rad2deg(torch.arccos(cos.clamp(-1, 1))).mean())


def ssim_srgb(pred: Tensor, target: Tensor, mask: Tensor, height: int, width: int) -> float:
    """SSIM of sRGB images with the background (``~mask``) set to 1, 7×7 uniform window."""
    from torchmetrics.functional.image import structural_similarity_index_measure as ssim

    def prep(x: Tensor) -> Tensor:
        img = torch.where(mask[:, None], to_srgb(x), torch.ones_like(x))
        return _image(img, height, width).permute(2, 0, 1)[None].double()

    return float(ssim(prep(pred), prep(target), gaussian_kernel=False, kernel_size=7, data_range=1.0))


def normals_from_depth(depth: np.ndarray, K: np.ndarray) -> np.ndarray:
    """Camera-frame unit normals ``(H, W, 3)`` from a z-depth map (NaN where a neighbour is missing)."""
    h, w = depth.shape
    v, u = np.meshgrid(np.arange(h), np.arange(w), indexing="ij")
    rays = np.stack([(u - K[0, 2]) / K[0, 0], (v - K[1, 2]) / K[1, 1], np.ones_like(depth)], -1)
    points = rays * depth[..., None]
    du = np.full_like(points, np.nan)
    dv = np.full_like(points, np.nan)
    du[:, 1:-1] = points[:, 2:] - points[:, :-2]
    dv[1:-1] = points[2:] - points[:-2]
    n = np.cross(du, dv)
    n /= np.linalg.norm(n, axis=-1, keepdims=True) + 1e-12
    n = np.where((n * rays).sum(-1, keepdims=True) > 0, -n, n)  # facing the camera
    return n


def _ground_truth(scene) -> dict[str, Any] | None:
    gt_dir = Path(scene.root) / "gt"
    if not (gt_dir / "poses.json").is_file():
        return None
    gt = json.loads((gt_dir / "poses.json").read_text())
    out: dict[str, Any] = {"object_to_camera": np.asarray(gt["object_to_camera"], np.float64), "dir": gt_dir}
    if (gt_dir / "depth.npy").is_file():
        out["depth"] = np.load(gt_dir / "depth.npy")
    return out


def pose_metrics(model, scene, gt: dict[str, Any]) -> dict[str, float]:
    """Rotation errors (relative, all pairs) and centre errors of the current instance frames."""
    ids = scene.registered_ids
    transforms = model.transforms().detach().double().cpu().numpy()
    w2c = np.linalg.inv(model.c2w.detach().double().cpu().numpy())
    pred = np.einsum("ij,njk->nik", w2c, transforms)
    gt_poses = gt["object_to_camera"][ids]
    rigid = pred.copy()
    rigid[:, :3, :3] /= np.linalg.norm(pred[:, :3, :3], axis=1, keepdims=True)  # drop the scale r of S
    out = relative_rotation_errors(rigid, gt_poses)
    gt_centre_obj = scene.scale_matrix[:3, 3]  # S's centre (object frame of the GT mesh for synthetic piles)
    pred_c = pred[:, :3, 3]
    gt_c = gt_poses[:, :3, :3] @ gt_centre_obj + gt_poses[:, :3, 3]
    if len(ids) >= 2:
        out.update(translation_errors(pred_c, gt_c, 2.0 * float(scene.scale_matrix[0, 0])))
    return out


def chamfer_to_gt(model, mesh_norm, scene, gt: dict[str, Any], samples: int) -> dict[str, Any]:
    """Score a mesh in the normalised object frame against ``gt/object.ply`` (module docstring)."""
    from sfd_lightning.geometry.io import Mesh, load_mesh
    from sfd_lightning.metrics.evaluate import evaluate

    ids = scene.registered_ids
    transforms = model.transforms().detach().double().cpu().numpy()
    w2c = np.linalg.inv(model.c2w.detach().double().cpu().numpy())
    pred = np.einsum("ij,njk->nik", w2c, transforms)
    gt_poses = gt["object_to_camera"][ids]
    gt_c = gt_poses[:, :3, :3] @ scene.scale_matrix[:3, 3] + gt_poses[:, :3, 3]
    s, rot, t = umeyama(pred[:, :3, 3], gt_c)
    if len(ids) < 3:  # too few centres for a rotation: trust the frames as they are
        s, rot, t = 1.0, np.eye(3), np.zeros(3)
    vertices = mesh_norm.vertices @ pred[0, :3, :3].T + pred[0, :3, 3]
    vertices = s * vertices @ rot.T + t
    to_obj = np.linalg.inv(gt_poses[0])
    vertices = vertices @ to_obj[:3, :3].T + to_obj[:3, 3]
    gt_mesh = load_mesh(gt["dir"] / "object.ply")
    result = evaluate(Mesh(vertices, mesh_norm.faces), gt_mesh, "neuralpull", samples=samples, seed=0)
    return {"protocol": result["protocol"], "cd_l1": result["metrics"].get("cd_l1"),
            "fscore@0.01": result["metrics"].get("fscore@0.01"),
            "gt_self_score_cd_l1": ((result.get("gt_self_score") or {}).get("metrics") or {}).get("cd_l1"),
            "object_diagonal": float(np.linalg.norm(gt_mesh.vertices.max(0) - gt_mesh.vertices.min(0)))}


def full_evaluation(system, batch: dict[str, Tensor]) -> dict[str, Any]:
    """Everything ``sfd test`` reports: image, normal, pose and mesh metrics (+ their protocols)."""
    from sfd_lightning.geometry.extraction import extract_mesh

    model, scene = system.model, system.scene
    height, width = int(model.image_size[0]), int(model.image_size[1])
    render = system.render_image(batch)
    metrics: dict[str, Any] = evaluate_render(render, batch, model)
    fg = batch["pose_index"] >= 0
    union = fg & (render["weights_sum"] > 0.01)
    metrics["psnr_union"] = float(psnr(to_srgb(render["rgb"]), to_srgb(batch["rgb"]), union[:, None]))
    metrics["ssim"] = ssim_srgb(render["rgb"], batch["rgb"], fg, height, width)
    record: dict[str, Any] = {"stage": system.hparams.stage, "metrics": metrics,
                              "protocols": {"image": "sRGB = clip(x,0,1)^(1/2.2); psnr masked by GT foreground; "
                                            "ssim 7x7 uniform window, background 1 (approx. sfd_image)",
                                            "normal": "mean angle (deg), camera-frame unit normals",
                                            "pose": "relative rotation error over instance pairs (deg); centre "
                                            "error after sim(3) alignment, in object diagonals"}}
    gt = _ground_truth(scene) if scene is not None else None
    if gt is not None:
        if "depth" in gt and gt["depth"].shape == (height, width):
            gt_normals = torch.from_numpy(normals_from_depth(gt["depth"], scene.K).reshape(-1, 3)).float()
            sel = fg.cpu() & (render["weights_sum"].cpu() > 0.5) & torch.isfinite(gt_normals).all(-1)
            if sel.any():
                metrics["normal_err_deg"] = angle_deg(render["normal"].cpu()[sel], gt_normals[sel])
            depth = torch.from_numpy(gt["depth"].reshape(-1)).float()
            sel = sel & torch.isfinite(depth)
            if sel.any():
                metrics["depth_abs_rel"] = float(((render["depth"].cpu()[sel] - depth[sel]).abs() / depth[sel]).mean())
        metrics.update(pose_metrics(model, scene, gt))
        mesh = extract_mesh(system.surface().sdf, [-1.1] * 3, [1.1] * 3, system.hparams.mesh_resolution,
                            device=model.scale_matrix.device)
        if mesh.is_empty:
            metrics["chamfer"] = {"protocol": "neuralpull", "cd_l1": None, "n_failed": 1}
        else:
            metrics["chamfer"] = chamfer_to_gt(model, mesh, scene, gt, system.hparams.chamfer_samples)
            metrics["cd_l1"] = metrics["chamfer"]["cd_l1"]
    return record


def log_render(system, render: dict[str, Tensor], batch: dict[str, Tensor], stage: str) -> None:
    """Save a panel GT | render | normals | opacity under ``<run>/images/``."""
    from sfd_lightning.callbacks.logging_utils import log_image

    trainer = system._trainer
    if trainer is None or not trainer.is_global_zero:
        return
    h, w = int(system.model.image_size[0]), int(system.model.image_size[1])
    gt = _image(to_srgb(batch["rgb"]), h, w)
    rgb = _image(to_srgb(render["rgb"]), h, w)
    normal = _image((render["normal"] * 0.5 + 0.5).clamp(0, 1) * (render["weights_sum"][:, None] > 0.5), h, w)
    opacity = _image(render["weights_sum"].clamp(0, 1)[:, None].expand(-1, 3), h, w)
    panel = torch.cat([gt, rgb, normal, opacity], 1).cpu().numpy()
    log_image(trainer, f"{stage}/render", (panel * 255).astype(np.uint8), system.global_step)
