"""``sfd preprocess pile``: one photo of a pile + instance mask -> instance poses (CONTRACTS §5.2).

Steps (each resumable: its outputs go to ``OUT/preprocess/`` atomically, and ``steps.json`` records
a hash of every setting it depends on; a later run reuses a step whose hash still matches, and
``--from-step`` forces a rerun from that step on):

1. ``views``    load and validate the raw pile, working resolution, instance views;
2. ``features`` local features per instance view (matcher-specific; rotations for DISK);
3. ``matches``  putative matches of every instance pair (rotation search for DISK);
4. ``verify``   pycolmap database, geometric verification;
5. ``sfm``      incremental mapping with several seeds and from the best-matched initial pairs (pycolmap);
6. ``select``   visibility plausibility (rejects depth-reversed solutions), instance count after the
                centre-in-own-mask check, run consensus, reprojection error; failing instances are
                excluded by id;
7. ``write``    the processed layout, original SfD files, scene.json and pose_visualization.png.
"""

from __future__ import annotations

import hashlib
import json
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np

from sfd_lightning.errors import InputError
from sfd_lightning.geometry.io import atomic_write
from sfd_lightning.preprocess import consistency
from sfd_lightning.preprocess.matchers.base import Matcher, PairMatches, ViewFeatures
from sfd_lightning.preprocess.sfm import SfmSolution, run_mapping
from sfd_lightning.preprocess.tracks.database import VerifiedPair, build_database, verify
from sfd_lightning.preprocess.views import PileViews, load_views

STEPS = ("views", "features", "matches", "verify", "sfm", "select", "write")
WORK = "preprocess"
VISUALIZATION = "pose_visualization.png"
MIN_REGISTERED = 3


@dataclass
class PreprocessOptions:
    """Settings of one preprocessing run (see ``sfd preprocess pile --help``)."""

    input: str
    out: str | None = None
    instances: int | None = None
    matcher: str = "sift"
    from_step: str | None = None
    seed: int = 0
    resolution: int = 800
    focal: float | None = None
    num_seeds: int = 5
    num_init_pairs: int = 12
    weights_dir: str | None = None
    rotation_step: float = 45.0
    min_instance_pixels: int = 150
    min_inliers: int = 15
    name: str | None = None
    quiet: bool = False

    @property
    def out_dir(self) -> Path:
        return Path(self.out) if self.out else Path(self.input)


@dataclass
class PreprocessResult:
    """What a run produced: output folder, registered/excluded ids, timings (s) and diagnostics."""

    out: Path
    registered: list[int]
    excluded: dict[int, str]
    timings: dict[str, float]
    matcher: str
    reprojection_error: float
    seed_support: int
    notes: list[str] = field(default_factory=list)


def make_matcher(options: PreprocessOptions) -> Matcher:
    """The matcher named by ``options.matcher`` (``auto``: DISK+LightGlue when weights exist, else SIFT)."""
    from sfd_lightning.preprocess.matchers.disk_lightglue import DiskLightGlueMatcher, default_weights_dir
    from sfd_lightning.preprocess.matchers.sift import SiftMatcher

    name = options.matcher
    if name == "auto":
        name = "disk-lightglue" if (options.weights_dir or default_weights_dir()) else "sift"
    if name == "sift":
        return SiftMatcher()
    if name in ("disk-lightglue", "disk_lightglue"):
        return DiskLightGlueMatcher(options.weights_dir, rotation_step=options.rotation_step)
    raise InputError(None, f"unknown matcher '{options.matcher}'", "use --matcher sift, disk-lightglue or auto")


def _hash(content: Any) -> str:
    return hashlib.sha1(json.dumps(content, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _save_npz(path: Path, arrays: dict[str, np.ndarray]) -> None:
    def write(tmp: Path) -> None:
        with open(tmp, "wb") as handle:
            np.savez(handle, **arrays)

    atomic_write(path, write)


def _features_to_npz(features: list[ViewFeatures]) -> dict[str, np.ndarray]:
    out = {"count": np.array(len(features))}
    for i, f in enumerate(features):
        out.update({f"{i}_{k}": v for k, v in f.to_npz().items()})
    return out


def _features_from_npz(data) -> list[ViewFeatures]:
    return [ViewFeatures.from_npz({k: data[f"{i}_{k}"] for k in ("keypoints", "descriptors", "groups",
                                                                 "crop_keypoints", "crop_sizes")})
            for i in range(int(data["count"]))]


class Pipeline:
    """Runs the steps of :mod:`sfd_lightning.preprocess.pipeline` with caching and timings."""

    def __init__(self, options: PreprocessOptions, log: Callable[[str], None] | None = None) -> None:
        self.options = options
        self.out = options.out_dir
        self.work = self.out / WORK
        self.log = log or (lambda msg: None if options.quiet else print(msg))
        self.timings: dict[str, float] = {}
        self.notes: list[str] = []
        if options.from_step is not None and options.from_step not in STEPS:
            raise InputError(None, f"unknown step '{options.from_step}'", f"use one of {', '.join(STEPS)}")
        self.matcher = make_matcher(options)

    # -- bookkeeping -------------------------------------------------------------------------
    def _step_hashes(self) -> dict[str, str]:
        o = self.options
        parts = {
            "views": {"input": str(Path(o.input).resolve()), "instances": o.instances, "resolution": o.resolution,
                      "focal": o.focal, "min_pixels": o.min_instance_pixels, "raw": self._raw_stamp()},
            "features": self.matcher.config(),
            "matches": {},
            "verify": {"seed": o.seed, "min_inliers": o.min_inliers},
            "sfm": {"num_seeds": o.num_seeds, "num_init_pairs": o.num_init_pairs, "version": 2},
            "select": {"version": 5},
            "write": {"name": o.name, "out": str(self.out.resolve())},
        }
        hashes, chain = {}, []
        for step in STEPS:
            chain.append(parts[step])
            hashes[step] = _hash(chain)
        return hashes

    def _raw_stamp(self) -> list:
        from sfd_lightning.datamodules.pile_files import raw_paths

        photo, seg = raw_paths(Path(self.options.input))
        return [[str(p), p.stat().st_size, p.stat().st_mtime_ns] for p in (photo, seg) if p and p.is_file()]

    def _load_record(self) -> dict:
        path = self.work / "steps.json"
        try:
            return json.loads(path.read_text()) if path.is_file() else {}
        except json.JSONDecodeError:
            return {}

    def _save_record(self, record: dict) -> None:
        atomic_write(self.work / "steps.json", lambda tmp: tmp.write_text(json.dumps(record, indent=2)))

    def _progress(self, desc: str):
        from tqdm.auto import tqdm

        return lambda iterable: tqdm(iterable, desc=f"{desc:>8}", disable=self.options.quiet, leave=False)

    # -- steps -------------------------------------------------------------------------------
    def run(self) -> PreprocessResult:
        """Run (or resume) every step; returns the result summary."""
        self.work.mkdir(parents=True, exist_ok=True)
        hashes = self._step_hashes()
        record = self._load_record()
        forced = STEPS.index(self.options.from_step) if self.options.from_step else len(STEPS)
        state: dict[str, Any] = {}
        stale = False
        for index, step in enumerate(STEPS):
            cached = record.get(step, {})
            reuse = (not stale and index < forced and cached.get("hash") == hashes[step] and step != "write")
            start = time.perf_counter()
            if reuse:
                try:
                    getattr(self, f"_load_{step}")(state)
                except (OSError, KeyError, ValueError):
                    reuse = False
            if not reuse:
                stale = True
                record.pop(step, None)
                getattr(self, f"_run_{step}")(state)
                seconds = time.perf_counter() - start
                record[step] = {"hash": hashes[step], "seconds": round(seconds, 3)}
                self._save_record({k: record[k] for k in STEPS if k in record})
                self.log(f"[{step}] {seconds:.1f} s{state.get('_msg', '')}")
            else:
                self.log(f"[{step}] reused ({cached.get('seconds', 0):.1f} s when computed){state.get('_msg', '')}")
            state["_msg"] = ""
            self.timings[step] = float(record[step]["seconds"])
        self.timings["total"] = round(sum(self.timings[s] for s in STEPS), 3)
        sel = state["select"]
        return PreprocessResult(self.out, sel["registered"], {int(k): v for k, v in sel["excluded"].items()},
                                dict(self.timings), self.matcher.name, sel["reprojection_error"], sel["support"],
                                self.notes + state["views"].warnings)

    def _run_views(self, state: dict) -> None:
        o = self.options
        views = load_views(o.input, o.instances, o.resolution, o.focal, o.min_instance_pixels)
        for note in views.warnings:  # warnings go to stderr even with --quiet
            print(f"warning: {note}", file=sys.stderr)
        state["views"] = views
        info = {"num_instances": views.num_instances, "focal": views.focal, "width": views.width,
                "height": views.height, "warnings": views.warnings}
        atomic_write(self.work / "views.json", lambda tmp: tmp.write_text(json.dumps(info, indent=2)))
        state["_msg"] = f": {views.num_instances} instances at {views.width}x{views.height}, f = {views.focal:.1f} px"

    _load_views = _run_views  # cheap and deterministic: always recomputed from the raw files

    def _run_features(self, state: dict) -> None:
        features = self.matcher.extract(state["views"], self._progress("features"))
        _save_npz(self.work / "features.npz", _features_to_npz(features))
        state["features"] = features
        state["_msg"] = f": {self.matcher.name}, keypoints per instance {[len(f.keypoints) for f in features]}"

    def _load_features(self, state: dict) -> None:
        with np.load(self.work / "features.npz") as data:
            state["features"] = _features_from_npz(data)

    def _run_matches(self, state: dict) -> None:
        feats = state["features"]
        pairs = [(i, j) for i in range(len(feats)) for j in range(i + 1, len(feats))]
        result = [self.matcher.match(feats[i], feats[j], i, j) for i, j in self._progress("matches")(pairs)]
        arrays = {"pairs": np.array(pairs, dtype=np.int64).reshape(-1, 2),
                  "angles": np.array([np.nan if p.angle_deg is None else p.angle_deg for p in result])}
        for p in result:
            arrays[f"m_{p.i}_{p.j}"] = p.matches
            arrays[f"c_{p.i}_{p.j}"] = np.asarray(p.counts, dtype=np.int64)
        _save_npz(self.work / "matches.npz", arrays)
        state["matches"] = result
        state["_msg"] = f": {sum(len(p.matches) for p in result)} putative matches over {len(result)} pairs"

    def _load_matches(self, state: dict) -> None:
        with np.load(self.work / "matches.npz") as data:
            state["matches"] = [PairMatches(int(i), int(j), data[f"m_{i}_{j}"],
                                            None if np.isnan(a) else float(a), data[f"c_{i}_{j}"].tolist())
                                for (i, j), a in zip(data["pairs"], data["angles"])]

    def _run_verify(self, state: dict) -> None:
        db = self.work / "database.db"
        ids = build_database(db, self.work / "images", state["views"], state["features"], state["matches"])
        verified = verify(db, ids, state["matches"], self.options.seed, min_inliers=self.options.min_inliers)
        arrays = {"pairs": np.array([(p.i, p.j) for p in verified], dtype=np.int64).reshape(-1, 2)}
        for p in verified:
            arrays[f"m_{p.i}_{p.j}"] = p.inliers
            if p.rotation is not None:
                arrays[f"r_{p.i}_{p.j}"] = p.rotation
        _save_npz(self.work / "verified.npz", arrays)
        state["verified"] = verified
        state["_msg"] = f": {len(verified)} verified pairs {[(p.i, p.j, len(p.inliers)) for p in verified]}"

    def _load_verify(self, state: dict) -> None:
        if not (self.work / "database.db").is_file():
            raise OSError("database missing")
        with np.load(self.work / "verified.npz") as data:
            state["verified"] = [VerifiedPair(int(i), int(j), data[f"m_{i}_{j}"],
                                              data[f"r_{i}_{j}"] if f"r_{i}_{j}" in data else None)
                                 for i, j in data["pairs"]]

    def _seeds(self) -> list[int]:
        return [self.options.seed * 1000 + k for k in range(max(1, self.options.num_seeds))]

    def _runs(self, state: dict) -> list[tuple[str, int, tuple[int, int] | None]]:
        """Mapper runs ``(name, seed, init pair)``: the mapper's own initial pair with every seed, then
        the ``num_init_pairs`` verified pairs with most inliers as forced initial pairs."""
        runs: list[tuple[str, int, tuple[int, int] | None]] = [(f"seed_{s}", s, None) for s in self._seeds()]
        ranked = sorted(state["verified"], key=lambda p: (-len(p.inliers), p.i, p.j))
        for p in ranked[: max(0, self.options.num_init_pairs)]:
            runs.append((f"init_{p.i}_{p.j}", self.options.seed * 1000, (p.i, p.j)))
        return runs

    def _run_sfm(self, state: dict) -> None:
        import shutil

        sfm_dir = self.work / "sfm"
        shutil.rmtree(sfm_dir, ignore_errors=True)
        solutions = []
        for name, seed, pair in self._progress("sfm")(self._runs(state)):
            solution = run_mapping(self.work / "database.db", self.work / "images", sfm_dir / name, seed,
                                   self.options.min_inliers, init_pair=pair)
            solutions.append(solution)
            if solution is not None:
                _save_npz(sfm_dir / f"{name}.npz", solution.to_npz())
        state["solutions"] = solutions
        state["_msg"] = f": registered per run {[s.registered if s else [] for s in solutions]}"

    def _load_sfm(self, state: dict) -> None:
        sfm_dir = self.work / "sfm"
        if not sfm_dir.is_dir():
            raise OSError("sfm folder missing")
        solutions = []
        for name, _, _ in self._runs(state):
            path = sfm_dir / f"{name}.npz"
            if path.is_file():
                with np.load(path) as data:
                    solutions.append(SfmSolution.from_npz(data))
            else:
                solutions.append(None)
        state["solutions"] = solutions

    def _run_select(self, state: dict) -> None:
        views: PileViews = state["views"]
        found = [s for s in state["solutions"] if s is not None and len(s.registered) > 0]
        if not found:
            raise InputError(views.seg_path, "structure from motion registered no instance (too few matches "
                             f"between instances: verified pairs {[(p.i, p.j) for p in state['verified']]})",
                             _ADVICE)
        pairwise = {(p.i, p.j): p.rotation for p in state["verified"] if p.rotation is not None}
        support = consistency.seed_consensus([s.object_to_camera for s in found])
        scored = []
        for index, (solution, sup) in enumerate(zip(found, support)):
            failing = self._failing(solution, views, pairwise)
            plausible = consistency.plausible_visibility(
                consistency.visibility_scores(solution.object_to_camera, solution.points, solution.observers))
            # plausible visibility first: the depth-reversed twin has the same reprojection error and
            # epipolar support (real airplane pile); then count, seed/run consensus, reprojection error
            scored.append(((plausible, len(solution.registered) - len(failing), sup, -solution.reprojection_error,
                            -index), solution, failing, sup))
        key, best, failing, sup = max(scored, key=lambda item: item[0])
        if not key[0]:
            self.notes.append("every SfM solution looks depth-reversed (observed points behind unobserved ones); "
                              "poses may be wrong")
        excluded = {i: "not registered" for i in range(views.num_instances) if i not in best.registered}
        excluded.update(failing)
        kept = [i for i in best.registered if i not in failing]
        selection = {"seed": best.seed, "init_pair": best.init_pair, "plausible": bool(key[0]),
                     "registered": kept, "excluded": {str(k): v for k, v in excluded.items()},
                     "support": sup, "seeds_with_model": len(found),
                     "two_view_disagreement": {str(i): v for i, v in consistency.loop_inconsistent_instances(
                         best.object_to_camera, pairwise).items()}, "reprojection_error": best.reprojection_error}
        atomic_write(self.work / "select.json", lambda tmp: tmp.write_text(json.dumps(selection, indent=2)))
        state["select"] = selection
        state["solution"] = best
        state["_msg"] = (f": seed {best.seed}, initial pair {best.init_pair or 'auto'} (agreed by {sup} of "
                         f"{len(found) - 1} other runs, {sum(k[0][0] for k in scored)} plausible), registered {kept}, "
                         f"excluded {excluded or 'none'}, reprojection {best.reprojection_error:.2f} px")
        if len(kept) < MIN_REGISTERED:
            raise InputError(views.seg_path, f"only {len(kept)} of {views.num_instances} instances registered "
                             f"consistently ({kept}; excluded {excluded})", _ADVICE)

    def _failing(self, solution: SfmSolution, views: PileViews, pairwise: dict) -> dict[int, str]:
        """Instances of ``solution`` to exclude: object centre projecting outside its own mask.

        Disagreement with the two-view relative rotations is NOT a reason: on the real airplane
        pile the two-view estimates of correctly matched narrow views are off by 15-172° and the
        check excluded instances of the correct solution (it is reported in ``select.json``)."""
        failing: dict[int, str] = {}
        if len(solution.points):
            center = consistency.robust_center(solution.points)
            for i in consistency.centers_outside_masks(solution.object_to_camera, center, views.K, views.instance):
                failing[i] = "object centre projects outside its mask"
        return failing

    def _load_select(self, state: dict) -> None:
        selection = json.loads((self.work / "select.json").read_text())
        pair = tuple(selection["init_pair"]) if selection.get("init_pair") else None
        matches = [s for s in state["solutions"] if s is not None and s.seed == selection["seed"]
                   and s.init_pair == pair]
        if not matches:
            raise OSError("selected solution missing")
        state["select"], state["solution"] = selection, matches[0]
        if len(selection["registered"]) < MIN_REGISTERED:
            raise ValueError("too few registered")

    def _run_write(self, state: dict) -> None:
        from sfd_lightning.preprocess.pose_io import geometry_from_solution, write_layout
        from sfd_lightning.preprocess.visualize import draw_poses, save_visualization

        views: PileViews = state["views"]
        solution: SfmSolution = state["solution"]
        kept = state["select"]["registered"]
        geometry = geometry_from_solution({i: solution.object_to_camera[i] for i in kept}, solution.points,
                                          {i: solution.observers[i] for i in kept})
        timings = {k: v for k, v in self.timings.items()}
        write_layout(self.out, views, geometry, self.matcher.name, timings, name=self.options.name)
        self._annotate_scene(state)
        excluded = {int(k): v for k, v in state["select"]["excluded"].items()}
        canvas = draw_poses(views.image, views.K, geometry.c2w, geometry.object_to_world, geometry.scale_matrix,
                            geometry.points_world, excluded, views.instance)
        save_visualization(self.out / VISUALIZATION, canvas)
        state["_msg"] = f": {self.out}"

    def _annotate_scene(self, state: dict) -> None:
        """Add the selection diagnostics to ``scene.json`` (additive keys)."""
        from sfd_lightning.datamodules.pile_files import SCENE

        path = self.out / SCENE
        scene = json.loads(path.read_text())
        sel = state["select"]
        scene.update({"excluded": sel["excluded"], "sfm_seed": sel["seed"], "seed_support": sel["support"],
                      "reprojection_error_px": sel["reprojection_error"],
                      "preprocess_options": {k: v for k, v in asdict(self.options).items() if k != "quiet"}})
        atomic_write(path, lambda tmp: tmp.write_text(json.dumps(scene, indent=4)))


_ADVICE = ("use a sharper / higher-resolution photo (--resolution), try --matcher disk-lightglue, "
           "pass the known --focal, or check that every labelled instance is the same object")


def preprocess_pile(options: PreprocessOptions) -> PreprocessResult:
    """Run the whole pipeline (resuming cached steps); returns the result summary."""
    return Pipeline(options).run()
