"""Single image -> DIT code -> SDF ("Template is all you need", methods/dit.md §3-§4).

* :class:`CodeEncoder` — ResNet-18 trunk (``nn/resnet.py``, ImageNet weights only from a local
  path) + head ``linear`` (512 -> C) or ``mlp`` (512 -> 512 -> C); frozen parts stay in eval mode
  unless ``frozen_bn_mode: train`` (the original's BN drift).
* :class:`DITImageTwoPhase` — phase 2: regress the frozen phase-1 codes (``dit_checkpoint``) with L1
  (``regress_reduction: sum`` as the original, or ``mean``).
* :class:`DITImageEndToEnd` — encoder output replaces the embedding in the full DIT loss; the DIT
  warper/template may start from ``dit_checkpoint`` and be frozen (``freeze_dit``).

Trunk weights of a SimCLR run (:mod:`contrastive`) carry over through ``encoder_checkpoint``
(keys ``encoder.*``; the projection head is dropped). ``sfd test`` scores the test views under
``deepsdf``; ``sfd predict`` writes one normalised-frame mesh per image.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from sfd_lightning.errors import InputError
from sfd_lightning.geometry.io import save_mesh
from sfd_lightning.geometry.surface import SurfaceHandle
from sfd_lightning.modules.base import BaseReconSystem
from sfd_lightning.modules.dit.auto_decoder import BOX, dit_objective
from sfd_lightning.modules.dit.evaluation import log_and_summarise, mesh_path, safe_name, score_mesh, to_original
from sfd_lightning.modules.dit.losses import DITSchedule
from sfd_lightning.modules.dit.networks import DITNetwork, clip_to_ball
from sfd_lightning.modules.dit.reconstruct import sdf_error
from sfd_lightning.nn.resnet import ResNetEncoder

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
NET_KEYS = ("code_dim", "warper_hidden", "steps", "template_dims", "dropout")


def load_checkpoint(path: str | Path, what: str) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise InputError(path, f"{what} not found", f"pass the .ckpt of a finished run as {what}")
    try:
        return torch.load(path, map_location="cpu", weights_only=False)
    except Exception as exc:
        raise InputError(path, f"not a readable checkpoint ({type(exc).__name__})", "pass a .ckpt written by sfd fit") from None


def trunk_state_from_checkpoint(path: str | Path, prefix: str = "encoder.") -> dict[str, Tensor]:
    """ResNet trunk weights of a SimCLR (or image-model) checkpoint: keys under ``prefix``, head dropped."""
    state = load_checkpoint(path, "encoder_checkpoint").get("state_dict", {})
    for candidate in (prefix, "encoder.trunk.", "trunk."):
        trunk = {k[len(candidate):]: v for k, v in state.items() if k.startswith(candidate) and not k[len(candidate):].startswith(("fc.", "head", "projection"))}
        if trunk and any(k.startswith("conv1.") for k in trunk):
            return trunk
    raise InputError(Path(path), "no ResNet trunk keys ('encoder.conv1.weight', ...) in the state dict",
                     "pass a checkpoint of DITContrastive or of a DIT image model")


class CodeEncoder(nn.Module):
    """``images (B, 3, H, W)`` (ImageNet-normalised) -> codes ``(B, C)``; any H, W (adaptive pool)."""

    def __init__(self, code_dim: int, head: str = "linear", weights_path: str | None = None) -> None:
        super().__init__()
        self.trunk = ResNetEncoder("resnet18", weights_path=weights_path, include_fc=False)
        if head == "linear":
            self.head: nn.Module = nn.Linear(512, code_dim)
        elif head == "mlp":
            self.head = nn.Sequential(nn.Linear(512, 512), nn.ReLU(), nn.Linear(512, code_dim))
        else:
            raise InputError(None, f"unknown encoder head {head!r}", "use 'linear' or 'mlp'")

    def forward(self, images: Tensor) -> Tensor:
        pooled = self.trunk(images).pooled
        return self.head(torch.flatten(pooled, 1))  # explicit flatten: batch 1 works (dit.md §6)


def color_jitter(images: Tensor, strength: float, hue: float) -> Tensor:
    """Random brightness/contrast/saturation (±strength) and hue (±hue) per image (kornia)."""
    if strength <= 0 and hue <= 0:
        return images
    import kornia.augmentation as K

    with torch.autocast(device_type=images.device.type, enabled=False):
        aug = K.ColorJitter(strength, strength, strength, hue, p=1.0)
        return aug(images.float()).clamp(0, 1)


class DITImageSystem(BaseReconSystem):
    """Shared parts of the image variants: encoder, frozen DIT network, test and predict.

    Args:
        dit_checkpoint: phase-1 :class:`DITAutoDecoder` checkpoint (weights only; two-phase: required).
        net: DIT network config (filled from ``dit_checkpoint``; give it to train end-to-end from scratch).
        encoder_weights: local torchvision ResNet-18 ImageNet weights (optional, never downloaded).
        encoder_checkpoint: SimCLR/image checkpoint whose ``encoder.*`` trunk keys initialise the trunk.
        head: ``linear`` (v1/two-phase) or ``mlp`` (v2). freeze_trunk: train the head only.
        frozen_bn_mode: ``eval`` (fixed) or ``train`` (the original's drifting BN statistics).
        jitter, hue: colour jitter strength (0.4, 0.4); 0 disables.
        test_resolution, extraction_mode, extraction_lipschitz, protocol, eval_samples: evaluation.
        score_mean_code: also score the mean training code (the mean-shape baseline).
        bound_radius: clip decoded fields to this ball (as :class:`DITAutoDecoder`; ``None`` = off).
        hflip: probability of a horizontal flip per training image (0 = original). For bilaterally
            symmetric categories (chairs, tables, sofas, planes) a mirrored view is the view from the
            mirrored azimuth, so the flip adds viewpoints, not label noise.
        head_init: ``default`` (PyTorch init) or ``mean`` (two-phase: the head starts at the mean
            phase-1 code, see :meth:`_init_head_at_mean`).
    """

    def __init__(self, dit_checkpoint: str | None = None, net: dict | None = None, encoder_weights: str | None = None,
                 encoder_checkpoint: str | None = None, head: str = "linear", freeze_trunk: bool = False,
                 frozen_bn_mode: str = "eval", jitter: float = 0.4, hue: float = 0.4, test_resolution: int = 256,
                 extraction_mode: str = "coarse_to_fine", extraction_lipschitz: float = 2.0,
                 protocol: str = "deepsdf", eval_samples: int | None = None, score_mean_code: bool = True,
                 scene_names: list[str] | None = None, code_bound: float | None = 1.0,
                 bound_radius: float | None = None, hflip: float = 0.0, head_init: str = "default") -> None:
        super().__init__()
        self.extraction_lipschitz = extraction_lipschitz
        self.bound_radius = bound_radius
        self.hflip = float(hflip)
        if head_init not in ("default", "mean"):
            raise InputError(None, f"head_init must be 'default' or 'mean', got {head_init!r}", "use default or mean")
        ckpt = None
        if dit_checkpoint is not None and (net is None or Path(dit_checkpoint).is_file()):
            ckpt = load_checkpoint(dit_checkpoint, "dit_checkpoint")
            stored = ckpt.get("hyper_parameters", {})
            net = {k: stored[k] for k in NET_KEYS if k in stored}
            scene_names = list(stored.get("scene_names") or [])
            code_bound = stored.get("code_bound", code_bound)
        if net is None:
            raise InputError(None, "no DIT network given", "pass model.init_args.dit_checkpoint (phase-1 run) or net")
        self.net_config = dict(net)
        self.net = DITNetwork(**self.net_config)
        self.encoder = CodeEncoder(self.net_config["code_dim"], head, encoder_weights)
        restoring = net is not None and ckpt is None
        if encoder_checkpoint is not None and not (restoring and not Path(encoder_checkpoint).is_file()):
            result = self.encoder.trunk.load_state_dict(trunk_state_from_checkpoint(encoder_checkpoint), strict=False)
            if result.missing_keys:
                raise InputError(Path(encoder_checkpoint), f"trunk keys missing: {result.missing_keys[:3]}",
                                 "pass a ResNet-18 SimCLR checkpoint")
        self.register_buffer("target_codes", torch.zeros(0, self.net_config["code_dim"]), persistent=False)
        if ckpt is not None:
            state = ckpt.get("state_dict", {})
            net_state = {k[len("net."):]: v for k, v in state.items() if k.startswith("net.")}
            self.net.load_state_dict(net_state)
            codes = state.get("codes.weight")
            if codes is not None:
                if code_bound:  # the Embedding(max_norm) cap applied at lookup
                    norms = codes.norm(dim=1, keepdim=True).clamp_min(1e-12)
                    codes = codes * (norms.clamp(max=code_bound) / norms)
                self.target_codes = codes.float()
                if head_init == "mean":
                    self._init_head_at_mean()
        self.scene_rows = {name: i for i, name in enumerate(scene_names or [])}
        #: values derived from dit_checkpoint; subclasses store them with their hyper-parameters
        self._derived = {"net": self.net_config, "scene_names": scene_names, "code_bound": code_bound}
        self._records: list[dict[str, Any]] = []
        self._mean_mesh = None  # the mean-code mesh of the current evaluation (normalised frame)

    # ------------------------------------------------------------------ encoder
    def _init_head_at_mean(self) -> None:
        """Last head layer: bias = mean phase-1 code, weights ×0.1 — the untrained encoder predicts
        (nearly) the mean shape and moves away from it only as far as the images tell it."""
        last = [m for m in self.encoder.head.modules() if isinstance(m, nn.Linear)][-1]
        with torch.no_grad():
            last.weight.mul_(0.1)
            last.bias.copy_(self.target_codes.mean(0))

    def normalize(self, images: Tensor) -> Tensor:
        mean = images.new_tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
        std = images.new_tensor(IMAGENET_STD).view(1, 3, 1, 1)
        return (images - mean) / std

    def encode(self, images: Tensor, augment: bool = False) -> Tensor:
        """``images (B, 3, H, W)`` in [0, 1] -> codes ``(B, C)`` (fp32)."""
        if augment:
            images = color_jitter(images, self.hparams.jitter, self.hparams.hue)
            if self.hflip > 0:  # mirror image = view from the mirrored azimuth of a bilaterally symmetric shape
                flip = torch.rand(len(images), device=images.device) < self.hflip
                images = torch.where(flip.view(-1, 1, 1, 1), images.flip(-1), images)
        return self.encoder(self.normalize(images)).float()

    def frozen_modules(self) -> list[nn.Module]:
        return [self.encoder.trunk] if self.hparams.freeze_trunk else []

    def configure_model(self) -> None:
        # Before the strategy wraps the model: DDP fixes the set of parameters that need gradients
        # when it is built, so freezing only in on_fit_start leaves it waiting for gradients.
        self._apply_freezing()

    def on_fit_start(self) -> None:
        self._apply_freezing()

    def on_train_epoch_start(self) -> None:
        self._apply_freezing()

    def _apply_freezing(self) -> None:
        for module in self.frozen_modules():
            module.requires_grad_(False)
            if self.hparams.frozen_bn_mode == "eval":
                module.eval()

    # ------------------------------------------------------------------ surfaces
    def sdf_fn(self, code: Tensor | None):
        net = self.net

        def fn(points: Tensor) -> Tensor:
            with torch.no_grad(), torch.autocast(device_type=points.device.type, enabled=False):
                pts = points.float()
                if code is None:
                    return net.template(pts)
                return clip_to_ball(net.sdf(code.to(pts).expand(len(pts), -1), pts), pts, self.bound_radius)
        return fn

    def surface(self, item: Any = None) -> SurfaceHandle:
        """``None``: the template; a code ``(C,)``: that shape; an image ``(3, H, W)``: encoded first."""
        box = (torch.full((3,), -BOX), torch.full((3,), BOX))
        if item is None:
            return SurfaceHandle(self.sdf_fn(None), box)
        item = torch.as_tensor(item, device=self.device)
        if item.dim() == 3:
            with torch.no_grad():
                item = self.encode(item[None].float())[0]
        return SurfaceHandle(self.sdf_fn(item.detach()), box)

    def export_items(self) -> list[Any]:
        return [None]

    def item_name(self, item: Any) -> str:
        return "template"

    def mean_code(self) -> Tensor | None:
        return self.target_codes.mean(0) if len(self.target_codes) else None

    # ------------------------------------------------------------------ evaluation / predict
    def _eval_batch(self, batch: dict[str, Any], stage: str) -> None:
        with torch.no_grad():
            codes = self.encode(batch["image"])
        mean_code = self.mean_code()
        dataset = getattr(getattr(self.trainer, "datamodule", None), f"{stage}_set", None)
        hp = self.hparams
        for b in range(len(codes)):
            name = f"{batch['synset'][b]}/{batch['instance'][b]}/view{int(batch['view'][b]):02d}"
            record: dict[str, Any] = {"name": name, "synset": batch["synset"][b]}
            if "samples" in batch:
                record["sdf_l1"] = sdf_error(self.net, codes[b], batch["samples"][b])
                if mean_code is not None:
                    record["sdf_l1_mean_code"] = sdf_error(self.net, mean_code, batch["samples"][b])
                self.log(f"{stage}/sdf_l1", record["sdf_l1"], batch_size=1)
            if stage == "test" and dataset is not None:
                index = int(batch["index"][b])
                offset, scale = dataset.normalization(index)
                from sfd_lightning.datamodules.shapenet_files import read_surface_samples

                gt = read_surface_samples(dataset.surface_samples_path(index))
                mesh = self.extract(codes[b], hp.test_resolution, 0.0, hp.extraction_mode)
                record["mesh"] = str(save_mesh(mesh_path(self.run_dir / "meshes" / "test", name), mesh))
                scores = score_mesh(to_original(mesh, offset, scale), gt, hp.protocol, name, hp.eval_samples)
                record["metrics"] = scores["metrics"]
                record["failed"] = bool(scores["metrics"].get("n_failed", 0))
                if mean_code is not None and hp.score_mean_code:
                    if self._mean_mesh is None:  # one code, one mesh: extracted once per evaluation
                        self._mean_mesh = self.extract(mean_code, hp.test_resolution, 0.0, hp.extraction_mode)
                    base = self._mean_mesh
                    record["mean_code_metrics"] = score_mesh(to_original(base, offset, scale), gt, hp.protocol,
                                                             name, hp.eval_samples)["metrics"]
            self._records.append(record)

    def on_test_epoch_start(self) -> None:
        self._records = []
        self._mean_mesh = None

    def test_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        self._eval_batch(batch, "test")

    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        self._eval_batch(batch, "val")

    def on_test_epoch_end(self) -> None:
        records = self._records
        if not records:
            return
        body = log_and_summarise(self, records)
        if self.trainer.is_global_zero:
            path = self.write_results({**body, "views": records})
            print(f"metrics: {path}")

    def predict_step(self, batch: dict[str, Any], batch_idx: int) -> list[str]:
        """One mesh per image, kept in the normalised frame: ``<run>/meshes/<name>.ply``."""
        with torch.no_grad():
            codes = self.encode(batch["image"])
        names = batch.get("name") or [f"{s}_{i}_view{int(v):02d}" for s, i, v in
                                      zip(batch["synset"], batch["instance"], batch["view"])]
        written = []
        for code, name in zip(codes, names):
            mesh = self.extract(code, self.hparams.test_resolution, 0.0, self.hparams.extraction_mode)
            if mesh.is_empty:
                warnings.warn(f"{name}: the predicted SDF has no zero crossing; an empty mesh is written")
            path = save_mesh(self.run_dir / "meshes" / f"{safe_name(name)}.ply", mesh)
            print(f"predicted mesh: {path}")
            written.append(str(path))
        return written


class DITImageTwoPhase(DITImageSystem):
    """Phase 2: ResNet-18 + head regress the frozen phase-1 codes (L1), DIT frozen.

    Args (beyond :class:`DITImageSystem`): lr (1e-3), lr_step: StepLR period (fraction of
    ``max_steps`` when < 1; original 5 of 199 epochs ≈ 0.025), lr_gamma (0.5), weight_decay (0),
    regress_reduction ``sum`` (original) or ``mean``; hflip, head_init as :class:`DITImageSystem`.
    """

    def __init__(self, dit_checkpoint: str | None = None, net: dict | None = None, encoder_weights: str | None = None,
                 encoder_checkpoint: str | None = None, head: str = "linear", freeze_trunk: bool = False,
                 frozen_bn_mode: str = "eval", jitter: float = 0.4, hue: float = 0.4, lr: float = 1e-3,
                 lr_step: float = 0.025, lr_gamma: float = 0.5, weight_decay: float = 0.0,
                 regress_reduction: str = "sum", test_resolution: int = 256, extraction_mode: str = "coarse_to_fine",
                 extraction_lipschitz: float = 2.0, protocol: str = "deepsdf", eval_samples: int | None = None,
                 score_mean_code: bool = True, scene_names: list[str] | None = None,
                 code_bound: float | None = 1.0, bound_radius: float | None = None, hflip: float = 0.0,
                 head_init: str = "default") -> None:
        super().__init__(dit_checkpoint, net, encoder_weights, encoder_checkpoint, head, freeze_trunk, frozen_bn_mode,
                         jitter, hue, test_resolution, extraction_mode, extraction_lipschitz, protocol, eval_samples,
                         score_mean_code, scene_names, code_bound, bound_radius, hflip=hflip, head_init=head_init)
        if regress_reduction not in ("sum", "mean"):
            raise InputError(None, f"regress_reduction must be 'sum' or 'mean', got {regress_reduction!r}", "use sum or mean")
        self.save_hyperparameters()
        self.hparams.update(self._derived)
        self.net.requires_grad_(False)

    def frozen_modules(self) -> list[nn.Module]:
        return [self.net, *super().frozen_modules()]

    def targets(self, batch: dict[str, Any]) -> Tensor:
        """Phase-1 codes ``(B, C)`` of the batch's shapes (matched by ``synset/instance``)."""
        rows = []
        for synset, instance in zip(batch["synset"], batch["instance"]):
            row = self.scene_rows.get(f"{synset}/{instance}")
            if row is None:
                raise InputError(None, f"shape {synset}/{instance} has no phase-1 code",
                                 "train phase 2 on the phase-1 train split")
            rows.append(row)
        if len(self.target_codes) == 0:
            raise InputError(None, "no phase-1 codes loaded", "pass model.init_args.dit_checkpoint")
        return self.target_codes[torch.as_tensor(rows, device=self.target_codes.device)]

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> Tensor:
        pred = self.encode(batch["image"], augment=True)
        target = self.targets(batch).to(pred)
        diff = (pred.float() - target.float()).abs()
        loss = diff.sum() if self.hparams.regress_reduction == "sum" else diff.mean()
        self.log("train/loss", loss.detach(), prog_bar=True, batch_size=len(pred))
        self.log("train/code_l1_mean", diff.detach().mean(), batch_size=len(pred))
        return loss

    def configure_optimizers(self) -> dict[str, Any]:
        hp = self.hparams
        params = [p for p in self.encoder.parameters() if p.requires_grad]
        optimizer = torch.optim.Adam(params, lr=hp.lr, betas=(0.9, 0.999), weight_decay=hp.weight_decay)
        total = self.trainer.max_steps if self.trainer.max_steps and self.trainer.max_steps > 0 else 1000
        step = max(1, int(round(hp.lr_step * total)) if hp.lr_step < 1 else int(hp.lr_step))
        scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step, hp.lr_gamma)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}


class DITImageEndToEnd(DITImageSystem):
    """End-to-end: encoder output replaces the embedding in the full DIT loss (dit.md §4).

    Args (beyond :class:`DITImageSystem`): freeze_dit (train the encoder only), lr_encoder (1e-3),
    lr_warper (5e-4), lr_template (1e-3), DIT loss weights/ramps as :class:`DITAutoDecoder`.
    """

    def __init__(self, dit_checkpoint: str | None = None, net: dict | None = None, encoder_weights: str | None = None,
                 encoder_checkpoint: str | None = None, head: str = "linear", freeze_trunk: bool = True,
                 frozen_bn_mode: str = "eval", jitter: float = 0.4, hue: float = 0.4, freeze_dit: bool = False,
                 lr_encoder: float = 1e-3, lr_warper: float = 5e-4, lr_template: float = 1e-3, clamp: float = 0.1,
                 curriculum: bool = True, code_reg: float = 1e-4, pointwise_weight: float = 0.005,
                 pointpair_weight: float = 2e-5, use_pointwise: bool = True, use_pointpair: bool = True,
                 pp_anchor_divisor: int = 8, pp_clamp: float | None = None, ramp_unit: str = "epoch",
                 ramp_epochs: float = 100.0, lr_halving_epochs: float = 500.0, total_epochs: float = 2001.0,
                 test_resolution: int = 256, extraction_mode: str = "coarse_to_fine", extraction_lipschitz: float = 2.0,
                 protocol: str = "deepsdf", eval_samples: int | None = None, score_mean_code: bool = True,
                 scene_names: list[str] | None = None, code_bound: float | None = 1.0,
                 bound_radius: float | None = None) -> None:
        super().__init__(dit_checkpoint, net, encoder_weights, encoder_checkpoint, head, freeze_trunk, frozen_bn_mode,
                         jitter, hue, test_resolution, extraction_mode, extraction_lipschitz, protocol, eval_samples,
                         score_mean_code, scene_names, code_bound, bound_radius)
        self.save_hyperparameters()
        self.hparams.update(self._derived)
        self.schedule = DITSchedule(code_reg, pointwise_weight, pointpair_weight, ramp_epochs, lr_halving_epochs,
                                    total_epochs, ramp_unit)

    def frozen_modules(self) -> list[nn.Module]:
        return ([self.net] if self.hparams.freeze_dit else []) + super().frozen_modules()

    def dit_epoch(self) -> float:
        if self._trainer is None:
            return 1.0
        return self.schedule.epoch(self.current_epoch, self.global_step, self.trainer.max_steps)

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> Tensor:
        if "samples" not in batch:
            raise InputError(None, "end-to-end training needs SDF samples", "set data.init_args.load_samples true")
        codes = self.encode(batch["image"], augment=True)
        hp = self.hparams
        terms = dit_objective(self.net, codes, batch["samples"], self.schedule, self.dit_epoch(), hp.clamp,
                              hp.curriculum, hp.use_pointwise, hp.use_pointpair, hp.pp_anchor_divisor, hp.pp_clamp)
        loss = torch.stack(list(terms.values())).sum()
        for key, value in terms.items():
            self.log(f"train/{key}", value.detach(), batch_size=len(codes))
        self.log("train/loss", loss.detach(), prog_bar=True, batch_size=len(codes))
        return loss

    def configure_optimizers(self) -> dict[str, Any]:
        hp = self.hparams
        groups = [{"params": [p for p in self.encoder.parameters() if p.requires_grad], "lr": hp.lr_encoder,
                   "name": "encoder"}]
        if not hp.freeze_dit:
            groups += [{"params": self.net.warper.parameters(), "lr": hp.lr_warper, "name": "warper"},
                       {"params": self.net.sdf_decoder.parameters(), "lr": hp.lr_template, "name": "template"}]
        optimizer = torch.optim.Adam(groups)
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda _: self.schedule.lr_factor(self.dit_epoch()))
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}
