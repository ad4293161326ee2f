"""UMR semantic template (methods/umr.md §4 avg_uv): part probabilities in UV space, vertex part labels.

File format (one ``.npz``): ``mean_v (P + R, 3)`` float32 (the predicted half of the template),
``uv_prob (H_uv, W_uv, 5)`` float32, ``uv_label (H_uv, W_uv)`` uint8 (0 background, 1 head, 2 neck,
3 back, 4 belly), ``head_vertices``, ``neck_vertices``, ``back_vertices``, ``belly_vertices``
(int64 indices into all ``V`` template vertices), ``mesh_level``, ``texels``.

Building (:func:`build_semantic_template`, run by ``sfd umr build-template``):
1. exemplar = the train instance with the lowest texture loss of its render under the flipped
   camera (tx, qy, qz negated) against the flipped image, plus the rescaled squared distance of
   its shape to the template; its UV part map = SCOPS map sampled by its UV flow;
2. per batch, the ``per_batch`` instances whose UV part maps are closest (MSE) to the exemplar's
   are added up; the mean is ``uv_prob``, its arg-max ``uv_label``;
3. face label = most frequent texel label (nearest sampling at the UV sampler, left faces copy
   right ones), vertex label = most frequent label of its faces; labels > 0 give the index lists.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Iterable

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from sfd_lightning.errors import InputError
from sfd_lightning.modules.umr.template import IcoTemplate

__all__ = ["PART_NAMES", "save_template", "load_template", "face_labels", "vertex_labels",
           "geometric_template", "build_semantic_template"]

PART_NAMES = ("head", "neck", "back", "belly")


def face_labels(uv_label: np.ndarray, tpl: IcoTemplate, mode: str = "nearest") -> np.ndarray:
    """Per-face texel labels ``(F, T·T)`` int64 from the UV label image (left faces copy right ones)."""
    lab = torch.from_numpy(np.ascontiguousarray(uv_label)).float()[None, None]
    grid = torch.from_numpy(tpl.uv_sampler)[None]
    if mode == "nearest":
        vals = F.grid_sample(lab, grid, mode="nearest", align_corners=False)[0, 0]
    else:  # original: bilinear on labels, rounded
        vals = F.grid_sample(lab, grid, mode="bilinear", align_corners=False)[0, 0].round()
    tex = vals.long().numpy()
    q, m = tpl.n_plane_faces, tpl.n_face_pairs
    return np.concatenate([tex, tex[q:q + m][:, tpl.mirror_texel]])


def vertex_labels(texel_labels: np.ndarray, tpl: IcoTemplate, n_labels: int = 5) -> np.ndarray:
    """Vertex labels ``(V,)``: most frequent label of the incident faces (face = most frequent texel label)."""
    valid = (np.arange(tpl.texels)[:, None] + np.arange(tpl.texels)[None]).reshape(-1) <= tpl.texels - 1
    counts = np.stack([(texel_labels[:, valid] == k).sum(1) for k in range(n_labels)], 1)
    flab = counts.argmax(1)
    votes = np.zeros((len(tpl.vertices), n_labels), dtype=np.int64)
    for corner in range(3):
        np.add.at(votes, (tpl.faces[:, corner], flab), 1)
    return votes.argmax(1)


def save_template(path: str | Path, mean_v: np.ndarray, uv_prob: np.ndarray, tpl: IcoTemplate,
                  label_sampling: str = "nearest", extra: dict[str, Any] | None = None) -> Path:
    """Write the template ``.npz`` (see the module doc); vertex lists come from ``uv_prob``'s arg-max."""
    from sfd_lightning.geometry.io import atomic_write

    uv_label = uv_prob.argmax(-1).astype(np.uint8)
    vlab = vertex_labels(face_labels(uv_label, tpl, label_sampling), tpl)
    arrays = {"mean_v": mean_v.astype(np.float32), "uv_prob": uv_prob.astype(np.float32), "uv_label": uv_label,
              "mesh_level": np.int64(tpl.level), "texels": np.int64(tpl.texels)}
    for k, name in enumerate(PART_NAMES, start=1):
        arrays[f"{name}_vertices"] = np.flatnonzero(vlab == k).astype(np.int64)
    for key, value in (extra or {}).items():
        arrays[key] = np.asarray(value)
    path = Path(path)
    if path.suffix != ".npz":
        path = path.with_suffix(".npz")

    def write(tmp: Path) -> None:
        with open(tmp, "wb") as handle:
            np.savez(handle, **arrays)

    return atomic_write(path, write)


def load_template(path: str | Path, tpl: IcoTemplate) -> dict[str, np.ndarray]:
    """Read and check a template ``.npz`` against the module's mesh ``tpl``."""
    p = Path(path)
    if not p.is_file():
        raise InputError(p, "semantic template not found",
                         "run `sfd umr build-template --config <stage-1 config> --ckpt_path <stage-1 ckpt>`")
    try:
        data = dict(np.load(p, allow_pickle=False))
    except Exception as exc:  # numpy raises several types for corrupt files
        raise InputError(p, f"cannot read the template ({type(exc).__name__})", "rebuild it") from None
    needed = ["mean_v", "uv_prob", "uv_label"] + [f"{n}_vertices" for n in PART_NAMES]
    missing = [k for k in needed if k not in data]
    if missing:
        raise InputError(p, f"template lacks {missing}", "rebuild it with `sfd umr build-template`")
    if data["mean_v"].shape != (tpl.n_pred, 3) or data["uv_label"].shape != tuple(tpl.uv_size):
        raise InputError(p, f"template is for another mesh (mean_v {data['mean_v'].shape}, UV "
                         f"{data['uv_label'].shape}; model needs ({tpl.n_pred}, 3), {tpl.uv_size})",
                         "use the same mesh_level in stage 1 and stage 2")
    return data


def geometric_template(tpl: IcoTemplate) -> dict[str, np.ndarray]:
    """A stand-in template without stage 1: the unit sphere stretched to a bird-like ellipsoid
    (x forward) with parts by position (head: front-top cap, neck: front, back: top, belly: bottom).
    Only for out-of-the-box smoke runs of stage 2 (``template_path: null``)."""
    v = tpl.vertices * np.array([0.55, 0.3, 0.35])
    h, w = tpl.uv_size
    u = (np.arange(w) + 0.5) / w * 2 - 1
    vv = (np.arange(h) + 0.5) / h * 2 - 1
    phi, theta = np.meshgrid(u * np.pi, (vv + 1) * np.pi / 2)
    x, z = np.sin(theta) * np.cos(phi), np.cos(theta)
    label = np.where(z > 0.0, 3, 4)
    label = np.where((x > 0.5) & (z > -0.2), 2, label)
    label = np.where((x > 0.75) & (z > 0.0), 1, label)
    prob = np.eye(5, dtype=np.float32)[label]
    labels = vertex_labels(face_labels(label.astype(np.uint8), tpl), tpl)
    out = {"mean_v": v[: tpl.n_pred].astype(np.float32), "uv_prob": prob, "uv_label": label.astype(np.uint8)}
    for k, name in enumerate(PART_NAMES, start=1):
        out[f"{name}_vertices"] = np.flatnonzero(labels == k)
    return out


@torch.no_grad()
def build_semantic_template(model: Any, batches: Iterable[dict[str, Tensor]], per_batch: int = 5,
                            shape_weight: float = 1.0) -> dict[str, Any]:
    """Steps 1-2 of the module doc over a deterministic train loader; returns ``mean_v``, ``uv_prob``
    and diagnostics. ``model`` is a trained stage-1 system (eval mode); batches need ``part_prob``."""
    from sfd_lightning.modules.umr.cameras import flip_camera
    from sfd_lightning.modules.umr.losses import texture_l1_dssim

    model.eval()
    device = model.mean_v.device
    template = model.template_vertices()
    records: list[tuple[Tensor, Tensor]] = []  # (score (B,), uv part maps (B, 5, H, W)) per batch
    for batch in batches:
        if "part_prob" not in batch:
            raise InputError(None, "the data module gives no part maps",
                             "set data.init_args.part_maps (SCOPS layout; synthetic birds: part_maps)")
        img = batch["img"].float().to(device)
        mask = batch["mask"].float().to(device)
        out = model(img, sample=False)
        cam, _ = model.select_cameras(out, sample=False)
        flipped = model.render(out.verts, flip_camera(cam), out.texture)
        alpha = flipped.image[:, -1:]
        target = model.resize(img.flip(-1) * mask.flip(-1))
        tex = texture_l1_dssim(flipped.image[:, :3] * alpha, target)
        shape = (out.verts - template).pow(2).sum(-1).mean(-1)
        score = tex + shape_weight * shape / (template.pow(2).sum(-1).mean() + 1e-8)
        parts = batch["part_prob"].float().to(device)
        uv_parts = F.grid_sample(parts, out.flow.float().permute(0, 2, 3, 1), mode="bilinear",
                                 padding_mode="border", align_corners=False)
        records.append((score.cpu(), uv_parts.cpu()))
    if not records:
        raise InputError(None, "no training images", "check the data module's train split")
    scores = torch.cat([r[0] for r in records])
    best = int(scores.argmin())
    exemplar = torch.cat([r[1] for r in records])[best]
    total, count = torch.zeros_like(exemplar), 0
    for _, uv in records:
        dist = (uv - exemplar).pow(2).flatten(1).mean(1)
        keep = dist.topk(min(per_batch, len(dist)), largest=False).indices
        total += uv[keep].sum(0)
        count += len(keep)
    uv_prob = (total / count).permute(1, 2, 0).numpy()
    return {"mean_v": model.mean_v.detach().cpu().numpy(), "uv_prob": uv_prob, "exemplar_index": best,
            "averaged": count}
