"""Named, versioned evaluation protocols (methods/evaluation.md §1, CONTRACTS.md §4).

A :class:`Protocol` pins everything that makes two "Chamfer" numbers comparable: which formulas,
squared or not, ½ or sum, sample counts, reporting scale, F-score thresholds, the empty-mesh
rule and the seed. Every result carries ``protocol`` + ``version``; change a protocol's
behaviour only together with its version.

Metric keys (raw values are in the data's frame units; squared formulas in units²):

- ``cd_l1`` / ``onet_cd_l1`` = ½(mean acc + mean comp) (Euclidean, the ONet "L1" misnomer);
- ``cd_l2`` / ``onet_cd_l2`` = ½(mean acc² + mean comp²);
- ``deepsdf_cd_x1e3`` = (mean acc² + mean comp²) × 10³;
- ``list_cd_l2_x1e4`` = ½(mean acc² + mean comp²) × 10⁴;
- ``nc`` / ``onet_nc`` = ½(mean |n·n| at pred→GT matches + at GT→pred matches);
- ``accuracy`` / ``completeness`` = mean acc / mean comp;
- ``fscore@τ`` (with ``precision@τ``, ``recall@τ``) or LIST's ``fscore_{100τ}``;
- ``iou`` / ``onet_iou`` / ``list_iou`` when both inputs are meshes (containment: winding numbers).

A key's ``_x1eK`` suffix is its reporting scale; :meth:`Protocol.scales` lists them too.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from sfd_lightning.errors import InputError

#: formula ids understood by :func:`sfd_lightning.metrics.geometry_metrics.chamfer_formula`.
CHAMFER_FORMULAS = ("cd_l1_half", "cd_l2_half", "cd_l2_sum", "accuracy", "completeness")


@dataclass(frozen=True)
class MetricSpec:
    """One reported number: output ``key``, ``formula`` id, reporting ``scale`` and the raw
    (unscaled) value an empty/failed prediction gets under the worst-case policy."""

    key: str
    formula: str
    scale: float = 1.0
    worst: float = math.nan


@dataclass(frozen=True)
class Protocol:
    """A frozen evaluation preset.

    Attributes:
        name, version, description: identity written into every result.
        pred_samples: area-uniform samples on a predicted mesh (a predicted point cloud with more
            points is reduced to a seeded subset of this size, fewer points are used as given).
        gt_samples: the same for the ground truth.
        chamfer: Chamfer-type numbers (formula ids from :data:`CHAMFER_FORMULAS`).
        nc_key: key of normal consistency (``None``: not part of the protocol).
        fscore_thresholds: absolute τ in the protocol frame.
        fscore_key: ``str.format`` template with ``kind`` (fscore/precision/recall), ``tau`` and
            ``pct`` (= 100·τ).
        fscore_eps: added to P + R in the F-score denominator (LIST: 1e-5).
        iou_key: key of volume IoU (``None``: not part of the protocol).
        iou_points: uniform points for IoU; ``iou_box``: half-extent of the cube centred at the
            origin they are drawn in (``None``: the padded union bbox of both meshes).
        failure: ``"worst_case"`` (ONet values, kept in means) or ``"nan"`` (DeepSDF: NaN,
            aggregated with nanmean/nanmedian); ``n_failed`` is always reported.
        aggregate: ``"mean"`` or ``"mean_median"`` over objects.
        seed: default seed (GT sampling; the prediction uses seed + 1, the GT self-score seed + 2).
    """

    name: str
    version: int
    description: str
    pred_samples: int
    gt_samples: int
    chamfer: tuple[MetricSpec, ...]
    nc_key: str | None = None
    nc_worst: float = -1.0
    fscore_thresholds: tuple[float, ...] = ()
    fscore_key: str = "{kind}@{tau:g}"
    fscore_eps: float = 0.0
    iou_key: str | None = None
    iou_points: int = 100_000
    iou_box: float | None = None
    failure: str = "worst_case"
    aggregate: str = "mean"
    seed: int = 0

    def fscore_name(self, kind: str, tau: float) -> str:
        """Key for ``kind`` in ``{"fscore", "precision", "recall"}`` at threshold ``tau``."""
        return self.fscore_key.format(kind=kind, tau=tau, pct=100.0 * tau)

    def metric_keys(self, with_normals: bool = True) -> list[str]:
        """Every per-object key this protocol reports from point sets (IoU excluded)."""
        keys = [spec.key for spec in self.chamfer]
        if self.nc_key and with_normals:
            keys.append(self.nc_key)
        for tau in self.fscore_thresholds:
            keys += [self.fscore_name(kind, tau) for kind in ("fscore", "precision", "recall")]
        return keys

    def worst_values(self) -> dict[str, float]:
        """Reported (scaled) value of every key for an empty or failed prediction."""
        if self.failure == "nan":
            values = {key: math.nan for key in self.metric_keys()}
            if self.iou_key:
                values[self.iou_key] = math.nan
            return values
        values = {spec.key: spec.worst * spec.scale for spec in self.chamfer}
        if self.nc_key:
            values[self.nc_key] = self.nc_worst
        for tau in self.fscore_thresholds:
            for kind in ("fscore", "precision", "recall"):
                values[self.fscore_name(kind, tau)] = 0.0
        if self.iou_key:
            values[self.iou_key] = 0.0
        return values

    def scales(self) -> dict[str, float]:
        """Keys whose reported value is multiplied by a factor other than 1."""
        return {spec.key: spec.scale for spec in self.chamfer if spec.scale != 1.0}


_SQRT3 = math.sqrt(3.0)


def _onet_family(prefix: str) -> tuple[MetricSpec, ...]:
    return (
        MetricSpec(f"{prefix}cd_l1", "cd_l1_half", worst=_SQRT3),
        MetricSpec(f"{prefix}cd_l2", "cd_l2_half", worst=3.0),
        MetricSpec("accuracy", "accuracy", worst=_SQRT3),
        MetricSpec("completeness", "completeness", worst=_SQRT3),
    )


PROTOCOLS: dict[str, Protocol] = {}


def register_protocol(protocol: Protocol, *aliases: str) -> Protocol:
    """Add a protocol (and aliases) to the registry; names must be unique."""
    for name in (protocol.name, *aliases):
        if name in PROTOCOLS:
            raise ValueError(f"protocol name '{name}' is already registered")
        PROTOCOLS[name] = protocol
    return protocol


register_protocol(Protocol(
    name="neuralpull", version=1,
    description="CONTRACTS §4: ONet CD-L1/CD-L2/NC formulas, F-score at 0.005/0.01/0.02, "
                "100k area-uniform samples per mesh, data's original frame",
    pred_samples=100_000, gt_samples=100_000, chamfer=_onet_family(""), nc_key="nc",
    fscore_thresholds=(0.005, 0.01, 0.02)))
register_protocol(Protocol(
    name="onet", version=1,
    description="Occupancy Networks / ConvONet: onet_cd_l1, onet_cd_l2, onet_nc, ConvONet "
                "F-score at 0.01/0.015/0.02 (unit cube), onet_iou on 100k points in [-0.55, 0.55]^3",
    pred_samples=100_000, gt_samples=100_000, chamfer=_onet_family("onet_"), nc_key="onet_nc",
    fscore_thresholds=(0.01, 0.015, 0.02), iou_key="onet_iou", iou_points=100_000, iou_box=0.55),
    "onet_cd_l1", "onet_cd_l2", "onet_nc", "onet_iou", "convonet_fscore")
register_protocol(Protocol(
    name="deepsdf", version=1,
    description="DeepSDF/DIT: mean comp^2 + mean acc^2 (no 1/2) x1e3, 30k samples, NaN for a "
                "failed mesh (nanmean/nanmedian over objects, n_failed explicit)",
    pred_samples=30_000, gt_samples=30_000,
    chamfer=(MetricSpec("deepsdf_cd_x1e3", "cd_l2_sum", scale=1e3),),
    failure="nan", aggregate="mean_median"),
    "deepsdf_cd")
register_protocol(Protocol(
    name="list", version=1,
    description="LIST: list_cd_l2 = 1/2(mean acc^2 + mean comp^2) x1e4, F = 2PR/(P+R+1e-5) at "
                "0.005/0.01/0.05 (keys fscore_0.5/1.0/5.0), list_iou on 1M points in [-0.5, 0.5]^3",
    pred_samples=100_000, gt_samples=100_000,
    chamfer=(MetricSpec("list_cd_l2_x1e4", "cd_l2_half", scale=1e4, worst=3.0),),
    fscore_thresholds=(0.005, 0.01, 0.05), fscore_key="{kind}_{pct:.1f}", fscore_eps=1e-5,
    iou_key="list_iou", iou_points=1_000_000, iou_box=0.5),
    "list_cd_l2", "list_fscore", "list_iou")
register_protocol(Protocol(
    name="np_shapenet", version=1,
    description="Neural-Pull ShapeNet: ONet CD-L1/CD-L2/NC formulas, 1M prediction samples vs "
                "100k ONet GT points, unit cube",
    pred_samples=1_000_000, gt_samples=100_000, chamfer=_onet_family(""), nc_key="nc"))
register_protocol(Protocol(
    name="np_famous_abc", version=1,
    description="Neural-Pull FAMOUS/ABC: ONet CD-L1/CD-L2/NC formulas, 10k vs 10k samples "
                "(GT sampled on the GT mesh), Points2Surf unit cube",
    pred_samples=10_000, gt_samples=10_000, chamfer=_onet_family(""), nc_key="nc"))


def get_protocol(name: str | Protocol) -> Protocol:
    """Resolve a protocol name (``neuralpull``, ``onet``, ``deepsdf``, ``list``, ``np_shapenet``,
    ``np_famous_abc``) or an evaluation.md row name aliasing its family (``onet_cd_l1`` -> ``onet``,
    ``deepsdf_cd`` -> ``deepsdf``, ``list_iou`` -> ``list``, ...).

    Raises:
        InputError: unknown name (the message lists the known ones).
    """
    if isinstance(name, Protocol):
        return name
    if name not in PROTOCOLS:
        raise InputError(None, f"unknown evaluation protocol '{name}'",
                         f"use one of {', '.join(sorted(PROTOCOLS))}")
    return PROTOCOLS[name]
