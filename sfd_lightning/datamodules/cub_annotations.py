"""CUB-200-2011 annotations from the raw dataset files or the CMR ``.mat`` cache (methods/umr.md §2).

Raw layout (``root`` holds ``CUB_200_2011/``, or is that folder)::

    CUB_200_2011/images.txt               <image_id> <class_dir>/<name>.jpg
    CUB_200_2011/image_class_labels.txt   <image_id> <class_id>
    CUB_200_2011/classes.txt              <class_id> <class_dir>
    CUB_200_2011/train_test_split.txt     <image_id> <1 train | 0 test>
    CUB_200_2011/bounding_boxes.txt       <image_id> <x> <y> <width> <height>
    CUB_200_2011/parts/parts.txt          <part_id> <part name>            (15 parts, CUB order)
    CUB_200_2011/parts/part_locs.txt      <image_id> <part_id> <x> <y> <visible>
    CUB_200_2011/images/<class_dir>/<name>.jpg
    segmentations/<class_dir>/<name>.png  (beside CUB_200_2011/, or inside it; soft, 0..255)

Ids are 1-based. Pixel coordinates are 1-based (MATLAB, as inherited by the CMR cache): a box
``x y w h`` covers 0-based pixels ``x-1 .. x+w-2``; a keypoint ``x y`` is 0-based ``(x-1, y-1)``;
invisible keypoints are written ``0 0 0``. Every record is returned in 0-based pixel coordinates.

Splits (deterministic): ``train`` = the official train images; the official test images, sorted by
id, are permuted by ``RandomState(split_seed=100)`` and halved as CMR did: with ``n = N // 2``,
``test = perm[:n + 1]`` and ``val = perm[n:]`` (one image in both). With the CMR cache the
splits are its ``{train,val,test}_cub_cleaned.mat`` files.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from sfd_lightning.errors import InputError

CUB_DIR = "CUB_200_2011"
CUB_KEYPOINT_NAMES = ("Back", "Beak", "Belly", "Breast", "Crown", "FHead", "LEye", "LLeg", "LWing",
                      "Nape", "REye", "RLeg", "RWing", "Tail", "Throat")
CUB_PART_NAMES = ("back", "beak", "belly", "breast", "crown", "forehead", "left eye", "left leg",
                  "left wing", "nape", "right eye", "right leg", "right wing", "tail", "throat")
SCOPS_PART_NAMES = ("background", "head", "neck", "back", "belly")
NUM_KEYPOINTS = 15
SPLITS = ("train", "val", "test")
TABLES = {  # file keyed by its first column -> number of columns (parts/part_locs.txt is read apart)
    "images.txt": 2, "image_class_labels.txt": 2, "classes.txt": 2, "train_test_split.txt": 2,
    "bounding_boxes.txt": 5, "parts/parts.txt": 2,
}
PART_LOCS = "parts/part_locs.txt"
MAX_REPEATS = 20  # per kind of problem; the rest is summarised in one line


@dataclass
class CubRecord:
    """One annotated image (0-based pixel coordinates).

    Attributes:
        image_id: CUB id (1-based).
        rel_path: ``<class_dir>/<name>.jpg`` under ``images/``.
        class_id: 1-based class id.
        is_train: official split.
        bbox: ``(4,)`` float64 ``x1, y1, x2, y2`` inclusive pixel bounds.
        keypoints: ``(15, 3)`` float64 ``x, y, visible`` (invisible rows zero).
        mask: ``(H, W)`` float32 silhouette from the CMR cache, else ``None`` (segmentation file).
    """

    image_id: int
    rel_path: str
    class_id: int
    is_train: bool
    bbox: np.ndarray
    keypoints: np.ndarray
    mask: np.ndarray | None = None


@dataclass
class CubLayout:
    """Where the parts of a CUB tree are: data ``root``, ``cub_dir``, ``images`` and ``segmentations``."""

    root: Path
    cub_dir: Path
    images: Path
    segmentations: Path | None

    def image_path(self, record: CubRecord) -> Path:
        return self.images / record.rel_path

    def segmentation_path(self, record: CubRecord) -> Path | None:
        if self.segmentations is None:
            return None
        return (self.segmentations / record.rel_path).with_suffix(".png")


def locate(root: str | Path) -> CubLayout:
    """Find the CUB folder under ``root`` (``root/CUB_200_2011`` or ``root`` itself)."""
    root = Path(root)
    for cub_dir, data_root in ((root / CUB_DIR, root), (root, root.parent)):
        if (cub_dir / "images.txt").is_file():
            seg = next((p for p in (data_root / "segmentations", cub_dir / "segmentations") if p.is_dir()), None)
            return CubLayout(data_root, cub_dir, cub_dir / "images", seg)
    raise InputError(root, f"no {CUB_DIR}/images.txt found",
                     f"point root at the folder that holds {CUB_DIR}/ (extracted CUB_200_2011.tgz)")


class ProblemList(list):
    """Problems as ``"<path>: <problem> — <fix>"`` lines, at most :data:`MAX_REPEATS` per kind."""

    def __init__(self) -> None:
        super().__init__()
        self.counts: dict[str, int] = {}

    def add(self, path: Path | str, problem: str, fix: str, kind: str | None = None) -> None:
        kind = kind or problem
        self.counts[kind] = self.counts.get(kind, 0) + 1
        if self.counts[kind] <= MAX_REPEATS:
            self.append(str(InputError(path, problem, fix)))

    def summarise(self) -> "ProblemList":
        for kind, count in self.counts.items():
            if count > MAX_REPEATS:
                self.append(f"... {count - MAX_REPEATS} more of: {kind}")
        return self


def read_table(path: Path, columns: int, problems: ProblemList) -> dict[int, list[str]]:
    """Rows of a whitespace table keyed by their first (integer) column; the last column keeps spaces."""
    rows: dict[int, list[str]] = {}
    if not path.is_file():
        problems.add(path, "file not found", "restore it from CUB_200_2011.tgz (or re-run sfd data synth cub)")
        return rows
    for number, line in enumerate(path.read_text(errors="replace").splitlines(), 1):
        if not line.strip():
            continue
        fields = line.split(None, columns - 1)
        try:
            key = int(fields[0])
            if len(fields) != columns:
                raise ValueError
        except ValueError:
            problems.add(f"{path}:{number}", f"malformed line {line.strip()[:60]!r}, expected {columns} columns "
                         "starting with an integer id", "fix or remove the line", kind=f"malformed {path.name}")
            continue
        if key in rows:
            problems.add(f"{path}:{number}", f"duplicate id {key}", "keep one line per id", kind=f"dup {path.name}")
        rows[key] = fields[1:]
    return rows


def _floats(values: list[str], where: str, problems: ProblemList) -> np.ndarray | None:
    try:
        out = np.array([float(v) for v in values])
    except ValueError:
        problems.add(where, f"non-numeric values {values}", "write numbers", kind=f"non-numeric {where.split(':')[0]}")
        return None
    if not np.isfinite(out).all():
        problems.add(where, f"NaN or infinite values {values}", "write finite numbers", kind="non-finite")
        return None
    return out


def read_raw(root: str | Path) -> tuple[CubLayout, list[CubRecord], ProblemList]:
    """Records of every image listed in ``images.txt`` (sorted by id) and the problems found."""
    layout = locate(root)
    problems = ProblemList()
    tables = {name: read_table(layout.cub_dir / name, cols, problems) for name, cols in TABLES.items()}
    images, labels, classes = tables["images.txt"], tables["image_class_labels.txt"], tables["classes.txt"]
    split, boxes = tables["train_test_split.txt"], tables["bounding_boxes.txt"]
    parts = tables["parts/parts.txt"]
    if parts and sorted(parts) != list(range(1, NUM_KEYPOINTS + 1)):
        problems.add(layout.cub_dir / "parts/parts.txt", f"part ids {sorted(parts)} are not 1..{NUM_KEYPOINTS}",
                     "list the 15 CUB parts with ids 1..15 in CUB order")
    for name in ("image_class_labels.txt", "train_test_split.txt", "bounding_boxes.txt"):
        if not tables[name] and not (layout.cub_dir / name).is_file():
            continue
        for missing in sorted(set(images) - set(tables[name])):
            problems.add(layout.cub_dir / name, f"no line for image id {missing} (listed in images.txt)",
                         "add the line or remove the image from images.txt", kind=f"missing id {name}")
        for extra in sorted(set(tables[name]) - set(images)):
            problems.add(layout.cub_dir / name, f"image id {extra} is not in images.txt",
                         "remove the line or list the image in images.txt", kind=f"extra id {name}")
    keypoints = {i: np.zeros((NUM_KEYPOINTS, 3)) for i in images}
    locs_path = layout.cub_dir / PART_LOCS
    if locs_path.is_file():
        _read_part_locs(locs_path, keypoints, problems)
    else:
        problems.add(locs_path, "file not found", "restore it from CUB_200_2011.tgz (or re-run sfd data synth cub)")
    records = []
    for image_id in sorted(images):
        rel = images[image_id][0].strip()
        if image_id not in labels or image_id not in split or image_id not in boxes:
            continue
        where = f"{layout.cub_dir / 'bounding_boxes.txt'} (image {image_id})"
        box = _floats(boxes[image_id], where, problems)
        if box is None:
            continue
        if box[2] <= 0 or box[3] <= 0:
            problems.add(where, f"box width/height {box[2]:g}x{box[3]:g} not positive", "fix the box")
            continue
        class_id = _int(labels[image_id][0], layout.cub_dir / "image_class_labels.txt", image_id, problems)
        if class_id is not None and classes and class_id not in classes:
            problems.add(layout.cub_dir / "image_class_labels.txt", f"image {image_id} has class {class_id} "
                         "which is not in classes.txt", "use a class id listed in classes.txt", kind="unknown class")
        flag = split[image_id][0].strip()
        if flag not in ("0", "1"):
            problems.add(layout.cub_dir / "train_test_split.txt", f"image {image_id} has split flag {flag!r}",
                         "write 1 (train) or 0 (test)", kind="split flag")
        x1, y1 = box[0] - 1.0, box[1] - 1.0
        records.append(CubRecord(image_id, rel, class_id or 0, flag == "1",
                                 np.array([x1, y1, x1 + box[2] - 1.0, y1 + box[3] - 1.0]), keypoints[image_id]))
    return layout, records, problems


def _int(text: str, path: Path, image_id: int, problems: ProblemList) -> int | None:
    try:
        return int(text.strip())
    except ValueError:
        problems.add(path, f"image {image_id}: {text.strip()!r} is not an integer id", "write an integer")
        return None


def _read_part_locs(path: Path, keypoints: dict[int, np.ndarray], problems: ProblemList) -> None:
    """Fill ``keypoints[image_id] (15, 3)`` (0-based x, y, visible) from ``part_locs.txt``."""
    for number, line in enumerate(path.read_text(errors="replace").splitlines(), 1):
        if not line.strip():
            continue
        where = f"{path}:{number}"
        values = _floats(line.split(), where, problems)
        if values is None:
            continue
        if len(values) != 5:
            problems.add(where, f"expected 5 columns, got {len(values)}", "write: image_id part_id x y visible",
                         kind="part_locs columns")
            continue
        image_id, part_id, x, y, visible = values
        if int(image_id) not in keypoints:
            problems.add(where, f"image id {int(image_id)} is not in images.txt", "remove the line",
                         kind="part_locs image id")
        elif not 1 <= part_id <= NUM_KEYPOINTS or part_id != int(part_id):
            problems.add(where, f"part id {part_id:g} out of range 1..{NUM_KEYPOINTS}", "use the ids of parts.txt",
                         kind="part id range")
        elif visible not in (0, 1):
            problems.add(where, f"visible flag {visible:g} is not 0 or 1", "write 0 or 1", kind="visible flag")
        elif visible:
            keypoints[int(image_id)][int(part_id) - 1] = (x - 1.0, y - 1.0, 1.0)


def validate_sample(record: CubRecord, image_path: Path, image_shape: tuple[int, ...] | None,
                    mask_path: Path | None, mask_shape: tuple[int, ...] | None, problems: ProblemList) -> None:
    """Check one image against its annotations (shapes are ``None`` when the file was unreadable)."""
    if image_shape is None:
        problems.add(image_path, "image missing or unreadable", "restore the file from the dataset archive",
                     kind="image unreadable")
        return
    height, width = image_shape[:2]
    x1, y1, x2, y2 = record.bbox
    if x1 < -0.5 or y1 < -0.5 or x2 > width - 0.5 or y2 > height - 0.5:
        problems.add(image_path, f"bounding box (x1 {x1 + 1:g}, y1 {y1 + 1:g}, x2 {x2 + 1:g}, y2 {y2 + 1:g}, "
                     f"1-based) exceeds the {width}x{height} image", "fix its line in bounding_boxes.txt",
                     kind="bbox outside image")
    visible = record.keypoints[:, 2] > 0
    xy = record.keypoints[visible, :2]
    if len(xy) and ((xy < -0.5).any() or (xy[:, 0] > width - 0.5).any() or (xy[:, 1] > height - 0.5).any()):
        problems.add(image_path, f"a visible keypoint lies outside the {width}x{height} image",
                     "fix its lines in parts/part_locs.txt", kind="keypoint outside image")
    if mask_path is not None:
        if mask_shape is None:
            problems.add(mask_path, "segmentation missing or unreadable",
                         "restore it from segmentations.tgz (or pass a CMR cache)", kind="segmentation missing")
        elif tuple(mask_shape[:2]) != (height, width):
            problems.add(mask_path, f"segmentation is {mask_shape[1]}x{mask_shape[0]} but the image is "
                         f"{width}x{height}", "use the segmentation of this image", kind="mask size")


def part_map_path(part_dir: Path, record: CubRecord) -> Path | None:
    """The part-map file of ``record``: ``<class_dir>/<basename>.npy`` or ``<basename>_<k>.npy``."""
    stem = Path(record.rel_path).with_suffix("")
    exact = part_dir / stem.with_suffix(".npy")
    if exact.is_file():
        return exact
    return next(iter(sorted((part_dir / stem.parent).glob(f"{stem.name}_*.npy"))), None)


def read_part_map(path: Path) -> np.ndarray:
    """A SCOPS part map ``(P, P, 5)`` float32 (uint8 maps are divided by 255)."""
    try:
        values = np.load(path, allow_pickle=False)
    except Exception as exc:  # numpy raises several types for corrupt files
        raise InputError(path, f"cannot be read as .npy ({type(exc).__name__})", "re-export the part map") from None
    if values.ndim != 3 or values.shape[2] != 5 or values.shape[0] != values.shape[1]:
        raise InputError(path, f"part map has shape {values.shape}, expected (P, P, 5)",
                         "store SCOPS maps as P x P x 5 (background, head, neck, back, belly)")
    values = values.astype(np.float32) / (255.0 if values.dtype == np.uint8 else 1.0)
    if not np.isfinite(values).all():
        raise InputError(path, "part map contains NaN or infinite values", "re-export the part map")
    return values


def split_records(records: list[CubRecord], split: str, split_seed: int = 100) -> list[CubRecord]:
    """The ``train`` / ``val`` / ``test`` records of the raw annotations (see the module doc)."""
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    if split == "train":
        return [r for r in records if r.is_train]
    testval = sorted((r for r in records if not r.is_train), key=lambda r: r.image_id)
    perm = np.random.RandomState(split_seed).permutation(len(testval))
    half = len(testval) // 2
    chosen = perm[:half + 1] if split == "test" else perm[half:]
    return [testval[i] for i in chosen]


def read_cmr_cache(cache_dir: str | Path, split: str) -> list[CubRecord]:
    """Records of ``<cache_dir>/data/<split>_cub_cleaned.mat`` (CMR cache; 1-based -> 0-based)."""
    from scipy.io import loadmat

    path = Path(cache_dir) / "data" / f"{split}_cub_cleaned.mat"
    if not path.is_file():
        raise InputError(path, "CMR cache file not found", "pass the folder holding data/<split>_cub_cleaned.mat, "
                         "or cmr_cache=None to read the raw CUB files")
    try:
        images = np.atleast_1d(loadmat(str(path), struct_as_record=False, squeeze_me=True)["images"])
    except Exception as exc:  # scipy raises many types for corrupt files
        raise InputError(path, f"cannot be read as a CMR cache ({type(exc).__name__})",
                         "re-download the cache or use the raw CUB files") from None
    records = []
    for entry in images:
        parts = np.asarray(entry.parts, dtype=np.float64).reshape(3, NUM_KEYPOINTS).T.copy()
        visible = parts[:, 2] > 0
        parts[visible, :2] -= 1.0
        parts[~visible] = 0.0
        records.append(CubRecord(int(entry.id), str(entry.rel_path), int(entry.class_id), bool(entry.train),
                                 np.asarray(entry.bbox, dtype=np.float64).reshape(4) - 1.0, parts,
                                 np.asarray(entry.mask, dtype=np.float32)))
    return records
