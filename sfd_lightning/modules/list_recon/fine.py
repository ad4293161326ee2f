"""LIST stage 2: coarse points -> voxel features + learned projection -> SDF (methods/list.md §3-5).

Modules: ``im_encoder`` + ``point_decoder`` (stage 1, frozen), ``im_encoder2`` (trainable, warm
started from stage 1's encoder), ``point_mlp_coarse``, ``spatial_transformer`` (predicts a 4×3
projective matrix; no camera is ever given), ``vox_encoder``, ``sdf_decoder``.

Warm start: ``coarse_checkpoint`` is a normal Lightning checkpoint of :class:`ListCoarse`; at the
start of ``fit`` its ``encoder.*`` weights go into ``im_encoder`` and ``im_encoder2`` and its
``decoder.*`` weights into ``point_decoder`` (prefix selection only). A resume (``--ckpt_path``)
restores all weights afterwards. Freezing (``requires_grad=False`` and eval mode, unless
``frozen_bn_mode="train"``) is applied at construction and re-applied in ``configure_model`` and
``on_fit_start``, so it survives resume.

Spec §6 switches: ``st_bias_init`` (``none`` = LIST; ``disn_camera`` starts the spatial transformer at a
mean DISN camera, see :func:`~sfd_lightning.modules.list_recon.networks.disn_camera_matrix`);
``uniform_fraction`` lives in the data module (``ShapeNetImageDataModule``). Short high-LR runs should
call :meth:`ListFine.precise_batchnorm` before eval (BatchNorm running averages lag the weights).

Precision: the ResNets, TreeGCN and voxel encoder follow autocast (bf16 under ``bf16-mixed``);
the spatial transformer, the perspective divide and the SDF head always run in fp32.
"""

from __future__ import annotations

import itertools
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np
import torch
from torch import Tensor

from sfd_lightning.errors import InputError
from sfd_lightning.geometry.io import Mesh, save_mesh
from sfd_lightning.geometry.surface import SurfaceHandle
from sfd_lightning.modules.base import BaseReconSystem
from sfd_lightning.modules.list_recon.common import (ListEvaluationMixin, item_names, legacy_vertex_norm,
                                                     normalize_images, occupancy_loss, sdf_loss)
from sfd_lightning.modules.list_recon.networks import (DISN_PRIOR, ST_BIAS_INITS, ImageEncoder, PointMLP, SDFDecoder,
                                                       SpatialTransformer, VoxelEncoder, check_vox_res,
                                                       disn_camera_matrix, perceptual_pool,
                                                       sample_voxel_features, voxelize, weights_path_or_none)
from sfd_lightning.nn.tree_gcn import TreeGCNDecoder

#: fine-module attribute -> prefix of the coarse checkpoint's state dict it is loaded from.
WARM_START = {"im_encoder": "encoder", "im_encoder2": "encoder", "point_decoder": "decoder"}
FROZEN = ("im_encoder", "point_decoder")


def load_prefixed(module: torch.nn.Module, state: dict[str, Tensor], prefix: str, path: str) -> None:
    """Load the entries ``<prefix>.*`` of ``state`` into ``module`` (strict; one-line error)."""
    sub = {k[len(prefix) + 1:]: v for k, v in state.items() if k.startswith(prefix + ".")}
    if not sub:
        raise InputError(path, f"checkpoint has no '{prefix}.*' weights", "pass a checkpoint written by ListCoarse")
    try:
        module.load_state_dict(sub, strict=True)
    except RuntimeError as exc:
        first = str(exc).splitlines()[1].strip() if len(str(exc).splitlines()) > 1 else str(exc)
        raise InputError(path, f"coarse weights do not fit ({first[:120]})",
                         "set latent_dim/tree_features/tree_degrees/tree_support to the coarse run's values") from None


class ListFine(ListEvaluationMixin, BaseReconSystem):
    """LIST fine network (SDF from one image; methods/list.md).

    Args:
        coarse_checkpoint: ListCoarse ``.ckpt`` loaded at the start of ``fit`` (None: random coarse
            branch, for tests).
        latent_dim, tree_features, tree_degrees, tree_support: must match the coarse run.
        weights_path: local ResNet-18 weights for both encoders when no coarse checkpoint is given.
        vox_res: voxel grid (power of two >= 32; LIST 128). vox_channels: widths of the 5 stored
            voxel levels (LIST 16, 32, 64, 128, 128 -> 369-channel pyramid; CPU tests use fewer). map_size: perceptual-pooling map size
            (137 for 224 px). displacement: voxel-sampling offset in normalised grid units (0.0722).
        sdf_scale: the network predicts ``sdf_scale · SDF`` (10).
        occ_weight, occ_pos_weight, occ_neg_weight: ``L_occ`` (1000, 0.9, 0.1).
        frozen_bn_mode: ``eval`` (frozen modules in eval mode) or ``train`` (original: BN stats move).
        imagenet_normalize: ImageNet normalisation of inputs (LIST: identity).
        lr, betas, weight_decay: Adam (1e-4, (0.9, 0.999), 1e-5).
        test_resolution, extraction_mode, extraction_lipschitz, test_pointnum: meshing (128³,
            coarse-to-fine, SDF evaluated in chunks of ``test_pointnum`` queries).
        legacy_vertex_norm: the original min/max vertex re-normalisation instead of the exact map.
        protocol, test_samples, test_iou_points, save_test_outputs: test scoring (``list``).
        st_bias_init: ``none`` (LIST: the spatial transformer has no init prior) or ``disn_camera``
            (its last layer starts at a mean DISN camera, weights ×0.1: :func:`disn_camera_matrix`).
        precise_bn_batches: after the last training step (``trainer.max_steps``), recompute the
            trainable BatchNorm statistics over this many training batches (:meth:`precise_batchnorm`)
            before the final validation and checkpoint; 0 (LIST) keeps the running averages.
    """

    def __init__(self, coarse_checkpoint: str | None = None, latent_dim: int = 128,
                 tree_features: Sequence[int] = (128, 128, 256, 256, 256, 128, 128, 3),
                 tree_degrees: Sequence[int] = (2, 2, 2, 2, 2, 2, 64), tree_support: int = 10,
                 weights_path: str | None = None, vox_res: int = 128,
                 vox_channels: Sequence[int] = (16, 32, 64, 128, 128), map_size: int = 137,
                 displacement: float = 0.0722, sdf_scale: float = 10.0, occ_weight: float = 1000.0,
                 occ_pos_weight: float = 0.9, occ_neg_weight: float = 0.1, frozen_bn_mode: str = "eval",
                 imagenet_normalize: bool = False, lr: float = 1e-4, betas: Sequence[float] = (0.9, 0.999),
                 weight_decay: float = 1e-5, test_resolution: int = 128, extraction_mode: str = "coarse_to_fine",
                 extraction_lipschitz: float = 2.0, test_pointnum: int = 65536, legacy_vertex_norm: bool = False,
                 protocol: str = "list", test_samples: int | None = None, test_iou_points: int | None = None,
                 save_test_outputs: bool = True, st_bias_init: str = "none", precise_bn_batches: int = 0) -> None:
        super().__init__()
        self.save_hyperparameters()
        if frozen_bn_mode not in ("eval", "train"):
            raise InputError(None, f"frozen_bn_mode must be 'eval' or 'train', got {frozen_bn_mode!r}", "use eval")
        self.vox_res = check_vox_res(vox_res)
        self.extraction_lipschitz = float(extraction_lipschitz)
        weights = weights_path_or_none(weights_path)
        self.im_encoder = ImageEncoder(latent_dim, weights)
        self.point_decoder = TreeGCNDecoder(tree_features, tree_degrees, tree_support)
        self.im_encoder2 = ImageEncoder(latent_dim, weights)
        self.point_mlp_coarse = PointMLP()
        if st_bias_init not in ST_BIAS_INITS:
            raise InputError(None, f"st_bias_init must be one of {list(ST_BIAS_INITS)}, got {st_bias_init!r}",
                             "use none (LIST) or disn_camera")
        prior = disn_camera_matrix(map_size, **DISN_PRIOR) if st_bias_init == "disn_camera" else None
        self.spatial_transformer = SpatialTransformer(self.point_mlp_coarse.out_dim + latent_dim, bias_init=prior)
        self.vox_encoder = VoxelEncoder(vox_channels)
        self.sdf_decoder = SDFDecoder(7 * self.vox_encoder.channels + self.im_encoder2.map_channels + 3)
        self._coarse_loaded = False
        self.freeze_coarse()

    # ------------------------------------------------------------------ warm start and freezing
    def load_coarse(self, path: str | Path | None = None) -> None:
        """Copy stage-1 weights (:data:`WARM_START` prefixes) from a Lightning checkpoint."""
        path = str(path or self.hparams.coarse_checkpoint)
        if not Path(path).is_file():
            raise InputError(path, "coarse checkpoint not found",
                             "pass --model.init_args.coarse_checkpoint runs/<coarse run>/checkpoints/last.ckpt "
                             "(or null when resuming with --ckpt_path)")
        try:
            checkpoint = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as exc:
            raise InputError(path, f"not a readable checkpoint ({type(exc).__name__})",
                             "pass a .ckpt written by sfd fit") from None
        state = checkpoint.get("state_dict") if isinstance(checkpoint, dict) else None
        if not state:
            raise InputError(path, "has no state_dict", "pass a .ckpt written by sfd fit")
        for target, prefix in WARM_START.items():
            load_prefixed(getattr(self, target), state, prefix, path)
        self._coarse_loaded = True
        self.freeze_coarse()

    def freeze_coarse(self) -> None:
        """``requires_grad=False`` on the frozen branch, and eval mode unless ``frozen_bn_mode='train'``."""
        for name in FROZEN:
            module = getattr(self, name)
            module.requires_grad_(False)
            if self.hparams.frozen_bn_mode == "eval":
                module.eval()

    def train(self, mode: bool = True):  # noqa: D401 - keeps frozen modules in eval mode
        super().train(mode)
        if mode and self.hparams.frozen_bn_mode == "eval":
            for name in FROZEN:
                getattr(self, name).eval()
        return self

    def configure_model(self) -> None:
        trainer = self._trainer
        fitting = trainer is not None and trainer.state.fn == "fit"
        if fitting and self.hparams.coarse_checkpoint and not self._coarse_loaded:
            self.load_coarse()
        elif fitting and not self.hparams.coarse_checkpoint:
            import warnings

            warnings.warn("ListFine: no coarse_checkpoint, the frozen coarse branch keeps its random init "
                          "(pass --model.init_args.coarse_checkpoint <coarse run>/checkpoints/last.ckpt)", stacklevel=2)
        self.freeze_coarse()

    def on_fit_start(self) -> None:
        self.freeze_coarse()

    def precise_batchnorm(self, batches: Iterable[dict[str, Any]]) -> int:
        """Recompute the running statistics of the trainable BatchNorm layers as exact averages over
        ``batches`` (train-mode forward of :meth:`encode`, no gradients; "precise BN"). The frozen
        coarse branch keeps its statistics. Short high-LR runs (tests, tiny presets) need it: their
        running averages (momentum 0.1) lag the fast-moving weights, and eval mode then diverges from
        the training fit (measured: training-batch L_sdf 16 in train mode, 119 in eval mode, 15 after
        this). Returns the number of batches used; leaves the model in eval mode."""
        layers = [m for name, m in self.named_modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)
                  and not name.startswith(tuple(f"{f}." for f in FROZEN))]
        momenta = [m.momentum for m in layers]
        for m in layers:
            m.reset_running_stats()
            m.momentum = None  # cumulative average
        self.train()
        count = 0
        with torch.no_grad():
            for batch in batches:
                self.encode(batch["image"].to(self.device))
                count += 1
        for m, momentum in zip(layers, momenta):
            m.momentum = momentum
        self.eval()
        return count

    # ------------------------------------------------------------------ forward
    def encode(self, image: Tensor, transmat: Tensor | None = None) -> dict[str, Any]:
        """Per-image context: coarse points ``pc (B, P, 3)``, image maps, ``M (B, 4, 3)``, voxel
        pyramid and refined occupancy ``(B, 1, R, R, R)``. ``transmat`` replaces the predicted M."""
        image = normalize_images(image, self.hparams.imagenet_normalize)
        with torch.no_grad():
            code, _ = self.im_encoder(image)
            points = self.point_decoder(code).float()
        global2, maps = self.im_encoder2(image)
        device = image.device.type
        with torch.autocast(device_type=device, enabled=False):
            coarse = self.point_mlp_coarse(points)
            predicted = self.spatial_transformer(torch.cat([coarse.float(), global2.float()], dim=1))
        transform = predicted if transmat is None else transmat.float()
        occupancy, pyramid = self.vox_encoder(voxelize(points, self.vox_res))
        return {"points": points, "maps": maps, "transform": transform, "predicted_transform": predicted,
                "pyramid": pyramid, "occupancy": occupancy}

    def decode(self, context: dict[str, Any], queries: Tensor) -> Tensor:
        """``sdf_scale · SDF`` ``(B, N)`` at ``queries (B, N, 3)`` (xyz in [−0.5, 0.5]³), fp32 head."""
        voxel = sample_voxel_features(context["pyramid"], queries.float(), self.hparams.displacement)
        with torch.autocast(device_type=queries.device.type, enabled=False):
            pixel = perceptual_pool([m.float() for m in context["maps"]], queries.float(), context["transform"],
                                    self.hparams.map_size)
            features = torch.cat([voxel.float(), pixel, queries.float().transpose(1, 2)], dim=1)
            return self.sdf_decoder(features)

    def forward(self, image: Tensor, queries: Tensor, transmat: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """Refined occupancy ``(B, 1, R, R, R)`` and ``sdf_scale · SDF`` ``(B, N)``."""
        context = self.encode(image, transmat)
        return context["occupancy"], self.decode(context, queries)

    # ------------------------------------------------------------------ training
    def _losses(self, batch: dict[str, Any]) -> dict[str, Tensor]:
        from sfd_lightning.modules.list_recon.common import coarse_target

        occupancy, pred = self(batch["image"], batch["points"], batch.get("transmat"))
        target = voxelize(coarse_target(batch), self.vox_res)
        hp = self.hparams
        l_sdf = sdf_loss(pred, batch["values"], hp.sdf_scale)
        l_occ = occupancy_loss(occupancy, target, hp.occ_pos_weight, hp.occ_neg_weight, hp.occ_weight)
        with torch.no_grad():
            gt_inside, pred_inside = batch["values"] < 0, pred < 0
            union = (gt_inside | pred_inside).sum().clamp_min(1)
            mse = (batch["values"].float() - pred.float() / hp.sdf_scale).pow(2).mean() * 1e4
        return {"loss": l_sdf + l_occ, "sdf": l_sdf, "occ": l_occ, "sdf_mse_x1e4": mse,
                "iou_queries": (gt_inside & pred_inside).sum() / union,
                "sign_accuracy": (gt_inside == pred_inside).float().mean()}

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> Tensor:
        losses = self._losses(batch)
        size = len(batch["image"])
        self.log("train/loss", losses["loss"], prog_bar=True, batch_size=size)
        for key in ("sdf", "occ", "sdf_mse_x1e4"):
            self.log(f"train/{key}", losses[key], batch_size=size)
        return losses["loss"]

    def on_train_batch_end(self, outputs: Any, batch: dict[str, Any], batch_idx: int) -> None:
        """At the last step, precise BN (``precise_bn_batches``): the final validation and the last
        checkpoint, which Lightning writes after this hook, then carry exact statistics."""
        count, trainer = int(self.hparams.precise_bn_batches), self._trainer
        if count <= 0 or trainer is None or trainer.max_steps is None or trainer.max_steps <= 0:
            return
        if self.global_step < trainer.max_steps:
            return
        datamodule = getattr(trainer, "datamodule", None)
        loader = datamodule.train_dataloader() if datamodule is not None else trainer.train_dataloader
        batches = itertools.islice(iter(loader), count)
        self.precise_batchnorm(batches)
        self.train()

    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        losses = self._losses(batch)
        size = len(batch["image"])
        for key in ("loss", "sdf", "occ", "sdf_mse_x1e4", "iou_queries", "sign_accuracy"):
            self.log(f"val/{key}", losses[key], batch_size=size, prog_bar=key == "iou_queries")

    def configure_optimizers(self) -> torch.optim.Optimizer:
        hp = self.hparams
        params = [p for p in self.parameters() if p.requires_grad]
        return torch.optim.Adam(params, lr=hp.lr, betas=tuple(hp.betas), weight_decay=hp.weight_decay)

    # ------------------------------------------------------------------ surfaces, test, predict
    def surface(self, item: Any = None) -> SurfaceHandle:
        """SDF of one image: ``item`` = image ``(3, H, W)`` (or a dict with ``image``, optional
        ``transmat (4, 3)``). Image features, coarse points, pyramid and M are computed once."""
        if item is None:
            raise InputError(None, "LIST surfaces need an image", "call surface(image) / use sfd predict")
        image = item["image"] if isinstance(item, dict) else item
        transmat = item.get("transmat") if isinstance(item, dict) else None
        image = image.to(self.device, torch.float32)[None]
        transmat = None if transmat is None else transmat.to(self.device)[None]
        with torch.no_grad():
            context = self.encode(image, transmat)
        chunk, scale = int(self.hparams.test_pointnum), float(self.hparams.sdf_scale)

        def sdf(points: Tensor) -> Tensor:
            with torch.no_grad():
                out = [self.decode(context, points[s:s + chunk].to(self.device, torch.float32)[None])[0]
                       for s in range(0, len(points), chunk)]
            return torch.cat(out) / scale

        lo = torch.full((3,), -0.5)
        return SurfaceHandle(sdf=sdf, bbox=(lo, -lo))

    def mesh_from_image(self, image: Tensor, resolution: int | None = None) -> Mesh:
        """Mesh ``{SDF = 0}`` of one image on a ``resolution³`` grid over [−0.5, 0.5]³."""
        resolution = int(resolution or self.hparams.test_resolution)
        mesh = self.extract(image, resolution, 0.0, self.hparams.extraction_mode)
        return legacy_vertex_norm(mesh, resolution) if self.hparams.legacy_vertex_norm else mesh

    def test_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        for i, name in enumerate(item_names(batch)):
            mesh = self.mesh_from_image(batch["image"][i])
            if self.hparams.save_test_outputs and self.trainer.is_global_zero:
                save_mesh(self.run_dir / "meshes" / f"{name}.ply", mesh)
            if "mesh_path" in batch:
                self.score_item(mesh, batch["mesh_path"][i], name)

    def predict_step(self, batch: dict[str, Any], batch_idx: int) -> list[str]:
        written = []
        for i, name in enumerate(item_names(batch)):
            mesh = self.mesh_from_image(batch["image"][i])
            written.append(str(save_mesh(self.run_dir / "meshes" / f"{name}.ply", mesh)))
            print(f"mesh: {written[-1]} ({len(mesh.faces)} faces)")
        return written

    def export_items(self) -> list[Any]:
        """``sfd export``: one mesh per image of the data module's test set."""
        datamodule = getattr(self._trainer, "datamodule", None) if self._trainer is not None else None
        if datamodule is None:
            raise InputError(None, "LIST export needs images", "use `sfd predict --data ImageFolderDataModule ...`")
        datamodule.setup("test")
        return [datamodule.test_set[i] for i in range(len(datamodule.test_set))]

    def item_name(self, item: Any) -> str:
        return item_names({k: [v] for k, v in item.items()} | {"image": [item["image"]]})[0] \
            if isinstance(item, dict) else "mesh"


def sdf_grid(model: ListFine, image: Tensor, resolution: int) -> np.ndarray:
    """Dense ``(R, R, R)`` SDF of one image on ``linspace(−0.5, 0.5, R)`` (indexed [x, y, z])."""
    from sfd_lightning.geometry.extraction import evaluate_grid

    handle = model.surface(image)
    return evaluate_grid(handle.sdf, handle.bbox[0], handle.bbox[1], resolution)
