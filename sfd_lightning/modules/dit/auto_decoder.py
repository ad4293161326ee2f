"""Deep Implicit Templates (Zheng et al., CVPR 2021): auto-decoder with LSTM warper + template.

Each training scene owns a code (``Embedding(num_scenes, C, max_norm=code_bound)``); the code
drives the warper only, the template ``T`` is code-free (methods/dit.md §3). Batches come from
:class:`~sfd_lightning.datamodules.shapenet.ShapeNetSDFDataModule`: ``samples (B, S, 4)``,
``index (B,)``. All network maths and loss reductions run in fp32 (autocast off).

* ``sfd fit``: losses of dit.md §4 with ramps in DIT epochs (``ramp_unit: epoch``) or scaled to
  ``max_steps`` (``step``); one Adam with groups [warper, template, codes].
* ``sfd test``: test-time latent optimisation per held-out shape, mesh, ``deepsdf`` protocol
  (mean and median per category, ``n_failed``), plus the mean-train-code baseline.
* ``sfd export``: the template mesh and one mesh per training shape (original frames).
"""

from __future__ import annotations

import time
from typing import Any, Sequence

import numpy as np
import torch
from torch import Tensor, nn

from sfd_lightning.errors import InputError
from sfd_lightning.geometry.io import Mesh, save_mesh
from sfd_lightning.geometry.surface import SurfaceHandle, similarity_matrix
from sfd_lightning.modules.base import BaseReconSystem
from sfd_lightning.modules.dit.evaluation import log_and_summarise, mesh_path, safe_name, score_mesh, to_original
from sfd_lightning.modules.dit.losses import (DITSchedule, code_norm_loss, point_pair_loss,
                                              pointwise_warp_loss, sdf_loss)
from sfd_lightning.modules.dit.networks import DITNetwork, clip_to_ball
from sfd_lightning.modules.dit.reconstruct import reconstruct_codes, sdf_error

BOX = 1.0  # the normalised frame: queries in [-1, 1]^3


def dit_objective(net: DITNetwork, codes: Tensor, samples: Tensor, schedule: DITSchedule, epoch: float,
                  clamp: float = 0.1, curriculum: bool = True, use_pointwise: bool = True,
                  use_pointpair: bool = True, pp_anchor_divisor: int = 8,
                  pp_clamp: float | None = None) -> dict[str, Tensor]:
    """DIT loss terms for ``codes (B, C)`` and ``samples (B, S, 4)``, each already weighted.

    Every term is divided by N = B·S (with gradient accumulation Lightning averages the
    micro-batches, which gives the original full-batch mean). Runs with autocast disabled.
    """
    b, s = samples.shape[:2]
    n = b * s
    with torch.autocast(device_type=samples.device.type, enabled=False):
        xyz = samples[..., :3].reshape(-1, 3).float()
        gt = samples[..., 3].reshape(-1).float()
        per_point = codes.float().repeat_interleave(s, dim=0)
        out = net(per_point, xyz, all_stages=True)
        terms = {"sdf": sdf_loss(out.sdfs, gt, clamp, n, curriculum)}
        if schedule.code_reg > 0:
            terms["code"] = schedule.code_weight(epoch) * code_norm_loss(per_point, n)
        if use_pointwise and schedule.pointwise > 0:
            terms["pointwise"] = schedule.pointwise_weight(epoch) * pointwise_warp_loss(out.stages, xyz, n)
        if use_pointpair and schedule.pointpair > 0:
            terms["pointpair"] = schedule.pointpair_weight(epoch) * point_pair_loss(
                out.stages[-1].view(b, s, 3), xyz.view(b, s, 3), n, pp_anchor_divisor, clamp=pp_clamp)
    return terms


class DITAutoDecoder(BaseReconSystem):
    """DIT auto-decoder system.

    Args:
        code_dim, warper_hidden, steps, template_dims, dropout: network (DIT: 256, 512, 8, [256]*5, 0.05).
        code_bound: max code norm (``Embedding(max_norm)``; DIT 1.0; ``None`` = uncapped).
        code_init_std: code init std (default ``1/sqrt(code_dim)``).
        lr_warper, lr_template, lr_codes: Adam group LRs (DIT chairs 5e-4, 5e-4, 1e-3).
        clamp: SDF clamp δ (0.1). curriculum: stage-averaged soft-L1 curriculum (else plain L1).
        code_reg, pointwise_weight, pointpair_weight: term weights (1e-4, 0.005, 1e-4).
        use_pointwise, use_pointpair: warp regularisers on/off.
        pp_anchor_divisor: anchors = S // this (8). pp_clamp: per-pair clamp (Kaminyou 5.0; DIT none).
        ramp_unit: ``epoch`` (original) or ``step`` (ramps scaled to ``max_steps``, see DITSchedule).
        ramp_epochs, lr_halving_epochs, total_epochs: 100, 500, 2001.
        tto_*: test-time optimisation (DIT: 800 iterations, 8000 samples, lr 5e-3, ×0.1 at 0.5,
            init std 0.01, reg 1e-4); tto_max_norm: keep test codes in the training code ball
            (None = original); tto_holdout: fraction of each test pool kept out of the optimisation
            and used only to score ``sdf_l1`` (0 = score on the optimised samples, as DeepSDF).
        test_resolution: mesh grid of test shapes (DIT 256); extraction_mode / extraction_lipschitz:
            coarse-to-fine settings (the warped field is not exactly 1-Lipschitz).
        bound_radius: intersect every decoded field (meshes, exports, test scores) with the ball of
            this radius (:func:`~sfd_lightning.modules.dit.networks.clip_to_ball`; the DeepSDF frame
            puts every shape inside 1/1.03 ≈ 0.971); ``None`` = the original (box only).
        protocol, eval_samples: evaluation protocol (``deepsdf``) and optional sample override.
        score_mean_code: also mesh and score the mean training code per test shape (baseline).
        export_max_shapes: cap on per-shape meshes written by ``sfd export`` (None = all).
        num_scenes, scene_names: filled from the data at ``fit`` (stored in the checkpoint).
    """

    def __init__(self, code_dim: int = 256, warper_hidden: int = 512, steps: int = 8,
                 template_dims: Sequence[int] = (256, 256, 256, 256, 256), dropout: float = 0.05,
                 code_bound: float | None = 1.0, code_init_std: float | None = None,
                 lr_warper: float = 5e-4, lr_template: float = 5e-4, lr_codes: float = 1e-3,
                 clamp: float = 0.1, curriculum: bool = True, code_reg: float = 1e-4,
                 pointwise_weight: float = 0.005, pointpair_weight: float = 1e-4, use_pointwise: bool = True,
                 use_pointpair: bool = True, pp_anchor_divisor: int = 8, pp_clamp: float | None = None,
                 ramp_unit: str = "epoch", ramp_epochs: float = 100.0, lr_halving_epochs: float = 500.0,
                 total_epochs: float = 2001.0, tto_iterations: int = 800, tto_samples: int = 8000,
                 tto_lr: float = 5e-3, tto_decay_at: float = 0.5, tto_code_std: float = 0.01,
                 tto_reg: float = 1e-4, tto_max_norm: float | None = None, tto_holdout: float = 0.0,
                 test_resolution: int = 256, extraction_mode: str = "coarse_to_fine",
                 extraction_lipschitz: float = 2.0, protocol: str = "deepsdf", eval_samples: int | None = None,
                 score_mean_code: bool = True, export_max_shapes: int | None = None,
                 num_scenes: int | None = None, scene_names: list[str] | None = None,
                 bound_radius: float | None = None) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.extraction_lipschitz = extraction_lipschitz
        self.net = DITNetwork(code_dim, warper_hidden, steps, template_dims, dropout)
        self.schedule = DITSchedule(code_reg, pointwise_weight, pointpair_weight, ramp_epochs,
                                    lr_halving_epochs, total_epochs, ramp_unit)
        self.codes: nn.Embedding | None = None
        if num_scenes:
            self._build_codes(int(num_scenes))
        self._test_records: list[dict[str, Any]] = []
        self._mean_mesh: Mesh | None = None  # mean-code mesh of the current test (normalised frame)

    # ------------------------------------------------------------------ codes and data frame
    def _build_codes(self, count: int) -> None:
        dim = self.hparams.code_dim
        self.codes = nn.Embedding(count, dim, max_norm=self.hparams.code_bound)
        std = self.hparams.code_init_std or 1.0 / np.sqrt(dim)
        nn.init.normal_(self.codes.weight, 0.0, std)
        self.register_buffer("scene_offset", torch.zeros(count, 3))
        self.register_buffer("scene_scale", torch.ones(count))

    def setup(self, stage: str) -> None:
        """Create one code per training scene (count and names go into the hyper-parameters)."""
        if stage != "fit":
            return
        datamodule = getattr(self.trainer, "datamodule", None)
        if datamodule is None or not hasattr(datamodule, "train_set"):
            return
        datamodule.setup("fit")
        train = datamodule.train_set
        count = len(train)
        if self.codes is None:
            self._build_codes(count)
        elif self.codes.num_embeddings != count:
            raise InputError(None, f"the model has {self.codes.num_embeddings} codes but the train split has "
                             f"{count} scenes", "train on the split the checkpoint was trained on")
        self.hparams.num_scenes = count
        self.hparams.scene_names = [train.name(i) for i in range(count)]
        with torch.no_grad():
            for i in range(count):
                try:
                    offset, scale = train.normalization(i)
                except InputError:
                    offset, scale = np.zeros(3), 1.0
                self.scene_offset[i] = torch.as_tensor(offset, dtype=torch.float32)
                self.scene_scale[i] = float(scale)

    def code(self, index: int | Tensor) -> Tensor:
        """Code(s) of training scene(s) ``index`` after the norm cap: ``(C,)`` or ``(B, C)``."""
        if self.codes is None:
            raise RuntimeError("no codes yet: train the model (or load a checkpoint) first")
        idx = torch.as_tensor(index, device=self.codes.weight.device, dtype=torch.long)
        return self.codes(idx)

    def mean_code(self) -> Tensor:
        """Mean of the (norm-capped) training codes ``(C,)``: the mean-latent baseline."""
        with torch.no_grad():
            return self.code(torch.arange(self.codes.num_embeddings)).mean(0)

    # ------------------------------------------------------------------ surfaces and export
    def sdf_fn(self, code: Tensor | None):
        """``points (N, 3) -> (N,)`` for a code ``(C,)`` (``None`` = the template), fp32, no grad;
        shape fields are clipped to ``bound_radius`` when set (the template is not)."""
        net = self.net
        radius = self.hparams.get("bound_radius")

        def fn(points: Tensor) -> Tensor:
            with torch.no_grad(), torch.autocast(device_type=points.device.type, enabled=False):
                pts = points.float()
                if code is None:
                    return net.template(pts)
                return clip_to_ball(net.sdf(code.to(pts).expand(len(pts), -1), pts), pts, radius)
        return fn

    def surface(self, item: Any = None) -> SurfaceHandle:
        """``None``/``"template"``: the template; an int: training scene (original frame);
        a code tensor ``(C,)``: that code (normalised frame)."""
        box = (torch.full((3,), -BOX), torch.full((3,), BOX))
        if isinstance(item, Tensor) and item.dim() == 1 and item.numel() == self.hparams.code_dim:
            return SurfaceHandle(self.sdf_fn(item.detach()), box)
        if item is None or item == "template":
            return SurfaceHandle(self.sdf_fn(None), box)
        index = int(item)
        with torch.no_grad():
            code = self.code(index)
        scale = float(self.scene_scale[index])
        to_orig = similarity_matrix(-self.scene_offset[index].cpu(), 1.0 / scale)
        return SurfaceHandle(self.sdf_fn(code), box, to_orig)

    def extract(self, item: Any = None, resolution: int = 256, level: float = 0.0,
                mode: str = "coarse_to_fine") -> Mesh:
        """Mesh of ``item`` with correspondence colours ``255·(0.5 + 0.5·x₈)`` of the warped vertices
        (dit.md §5): the same template point gets the same colour on every shape."""
        mesh = super().extract(item, resolution, level, mode)
        if mesh.is_empty:
            return mesh
        handle = self.surface(item)
        transform = handle.to_original.double()
        verts = torch.from_numpy(mesh.vertices)
        normalized = (verts - transform[:3, 3]) @ torch.linalg.inv(transform[:3, :3]).T  # back to the SDF frame
        with torch.no_grad(), torch.autocast(device_type=self.device.type, enabled=False):
            pts = normalized.float().to(self.device)
            if isinstance(item, Tensor) or not (item is None or item == "template"):
                code = item.detach() if isinstance(item, Tensor) else self.code(int(item))
                was_training = self.net.training
                self.net.eval()
                warped = torch.cat([self.net.warper(code.to(pts).expand(len(chunk), -1), chunk)[-1]
                                    for chunk in pts.split(65536)])
                self.net.train(was_training)
            else:
                warped = pts
        colors = (255.0 * (0.5 + 0.5 * warped.clamp(-1, 1))).round().to(torch.uint8).cpu().numpy()
        alpha = np.full((len(colors), 1), 255, dtype=np.uint8)
        return Mesh(mesh.vertices, mesh.faces, np.concatenate([colors, alpha], axis=1))

    def export_items(self) -> list[Any]:
        count = 0 if self.codes is None else self.codes.num_embeddings
        cap = self.hparams.export_max_shapes
        return ["template", *range(count if cap is None else min(count, cap))]

    def item_name(self, item: Any) -> str:
        if item is None or (isinstance(item, str) and item == "template"):
            return "template"
        names = self.hparams.scene_names
        return safe_name(names[int(item)]) if names and int(item) < len(names) else f"scene_{int(item):05d}"

    # ------------------------------------------------------------------ training
    def dit_epoch(self) -> float:
        """DIT epoch (1-indexed, or the step position scaled to it) — computed in one place."""
        if self._trainer is None:
            return 1.0
        return self.schedule.epoch(self.current_epoch, self.global_step, self.trainer.max_steps)

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> Tensor:
        samples = batch["samples"]
        codes = self.code(batch["index"])
        epoch = self.dit_epoch()
        hp = self.hparams
        terms = dit_objective(self.net, codes, samples, self.schedule, epoch, hp.clamp, hp.curriculum,
                              hp.use_pointwise, hp.use_pointpair, hp.pp_anchor_divisor, hp.pp_clamp)
        loss = torch.stack(list(terms.values())).sum()
        bs = samples.shape[0]
        for key, value in terms.items():
            self.log(f"train/{key}", value.detach(), batch_size=bs)
        self.log("train/loss", loss.detach(), prog_bar=True, batch_size=bs)
        self.log("train/dit_epoch", epoch, batch_size=bs)
        with torch.no_grad():
            self.log("train/code_norm", codes.detach().norm(dim=-1).mean(), batch_size=bs)
        return loss

    def configure_optimizers(self) -> dict[str, Any]:
        hp = self.hparams
        if self.codes is None:
            raise InputError(None, "the auto-decoder has no codes", "train with a ShapeNetSDFDataModule")
        optimizer = torch.optim.Adam([
            {"params": self.net.warper.parameters(), "lr": hp.lr_warper, "name": "warper"},
            {"params": self.net.sdf_decoder.parameters(), "lr": hp.lr_template, "name": "template"},
            {"params": self.codes.parameters(), "lr": hp.lr_codes, "name": "codes"},
        ])
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda _: self.schedule.lr_factor(self.dit_epoch()))
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    # ------------------------------------------------------------------ evaluation (TTO)
    def reconstruct(self, pools: list[Tensor], iterations: int | None = None, seed: int = 0):
        """Test-time optimisation of one code per pool ``(M, 4)`` (see :func:`reconstruct_codes`)."""
        hp = self.hparams
        return reconstruct_codes(self.net, pools, iterations or hp.tto_iterations, hp.tto_samples, hp.tto_lr,
                                 hp.tto_decay_at, hp.tto_code_std, hp.tto_reg, hp.clamp, seed=seed,
                                 max_norm=hp.tto_max_norm)

    def _eval_batch(self, batch: dict[str, Any], stage: str, batch_idx: int) -> None:
        samples = batch["samples"]
        keep = samples.shape[1] - int(round(self.hparams.tto_holdout * samples.shape[1]))
        pools = [samples[b, :keep] for b in range(samples.shape[0])]  # rows are shuffled by the dataset
        checks = [samples[b, keep:] if keep < samples.shape[1] else samples[b] for b in range(samples.shape[0])]
        start = time.perf_counter()
        result = self.reconstruct(pools, seed=batch_idx)
        tto_s = (time.perf_counter() - start) / len(pools)
        self.log(f"{stage}/tto_s_per_shape", tto_s, batch_size=len(pools))
        self.log(f"{stage}/tto_loss_end", result.loss_end, batch_size=len(pools))
        mean_code = self.mean_code() if self.codes is not None else None
        dataset = getattr(getattr(self.trainer, "datamodule", None), f"{'test' if stage == 'test' else 'val'}_set", None)
        for b, pool in enumerate(checks):
            name = f"{batch['synset'][b]}/{batch['instance'][b]}"
            record: dict[str, Any] = {"name": name, "synset": batch["synset"][b], "tto_s": tto_s,
                                      "tto_loss_start": result.loss_start, "tto_loss_end": result.loss_end,
                                      "sdf_l1": sdf_error(self.net, result.codes[b], pool, self.hparams.clamp)}
            if mean_code is not None:
                record["sdf_l1_mean_code"] = sdf_error(self.net, mean_code, pool, self.hparams.clamp)
            self.log(f"{stage}/sdf_l1", record["sdf_l1"], batch_size=1)
            if stage == "test" and dataset is not None:
                self._score_shape(record, result.codes[b], mean_code, dataset, int(batch["index"][b]))
            self._test_records.append(record)

    def _score_shape(self, record: dict[str, Any], code: Tensor, mean_code: Tensor | None, dataset: Any,
                     index: int) -> None:
        from sfd_lightning.datamodules.shapenet_files import read_surface_samples

        hp = self.hparams
        offset, scale = dataset.normalization(index)
        gt = read_surface_samples(dataset.surface_samples_path(index))
        mesh = self.extract(code, hp.test_resolution, 0.0, hp.extraction_mode)
        path = save_mesh(mesh_path(self.run_dir / "meshes" / "test", record["name"]), mesh)
        record["mesh"] = str(path)
        scores = score_mesh(to_original(mesh, offset, scale), gt, hp.protocol, record["name"], hp.eval_samples)
        record["metrics"] = scores["metrics"]
        record["failed"] = bool(scores["metrics"].get("n_failed", 0))
        record["protocol"] = {"name": scores["protocol"], "version": scores["version"], "scale": scores["scale"]}
        if mean_code is not None and hp.score_mean_code:
            if self._mean_mesh is None:  # the same code for every shape: extracted once per test
                self._mean_mesh = self.extract(mean_code, hp.test_resolution, 0.0, hp.extraction_mode)
            base = self._mean_mesh
            base_scores = score_mesh(to_original(base, offset, scale), gt, hp.protocol, record["name"],
                                     hp.eval_samples)
            record["mean_code_metrics"] = base_scores["metrics"]

    def on_test_epoch_start(self) -> None:
        self._test_records = []
        self._mean_mesh = None

    def test_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        self._eval_batch(batch, "test", batch_idx)

    def on_validation_epoch_start(self) -> None:
        self._test_records = []

    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        self._eval_batch(batch, "val", batch_idx)

    def on_test_epoch_end(self) -> None:
        records = self._test_records
        if not records:
            return
        body = log_and_summarise(self, records)
        if self.trainer.is_global_zero:
            path = self.write_results({
                **body,
                "tto": {"iterations": self.hparams.tto_iterations, "samples": self.hparams.tto_samples},
                "frame": "original (SurfaceSamples)", "shapes": records})
            print(f"metrics: {path}")
