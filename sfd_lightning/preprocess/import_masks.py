"""``sfd data import-masks``: users' instance masks -> ``PILE/raw/000_instance_seg.png``.

Formats:

- ``coco``: a COCO instances JSON (polygons, uncompressed or compressed RLE); the first image
  (or ``--image-id``) is used, instances in annotation order;
- ``labelme``: a LabelMe JSON (``polygon``, ``rectangle``, ``circle`` shapes), in shape order;
- ``pngs``: a folder of binary PNG masks, one per instance, in sorted file-name order.

Instance ``k`` (1-based, in that order) is written as grey ``k·255//N`` (the shared encoder of
:mod:`sfd_lightning.synthetic.instance_labels`). Overlapping pixels go to the later instance.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from sfd_lightning.errors import InputError
from sfd_lightning.synthetic.instance_labels import MAX_INSTANCES, encode_instance_labels

FORMATS = ("coco", "labelme", "pngs")


def configure_parser(parser) -> None:
    """Options of ``sfd data import-masks``."""
    parser.add_argument("--input", type=str, required=True, help="COCO/LabelMe JSON file or folder of PNG masks")
    parser.add_argument("--format", type=str, required=True, choices=list(FORMATS))
    parser.add_argument("--out", type=str, required=True, help="pile folder; writes OUT/raw/000_instance_seg.png")
    parser.add_argument("--image_id", type=int, default=None, help="COCO image id (default: the first image)")


def run(args) -> int:
    """Entry point; prints what was written."""
    path = import_masks(args.input, args.format, args.out, image_id=getattr(args, "image_id", None))
    print(f"wrote {path}")
    return 0


def import_masks(source: str | Path, fmt: str, out: str | Path, image_id: int | None = None) -> Path:
    """Convert ``source`` in format ``fmt`` to ``out/raw/000_instance_seg.png``; returns that path."""
    from sfd_lightning.datamodules.pile_files import RAW_SEG, write_png

    source = Path(source)
    if not source.exists():
        raise InputError(source, "not found", "check the --input path")
    if fmt == "coco":
        masks = coco_masks(source, image_id)
    elif fmt == "labelme":
        masks = labelme_masks(source)
    elif fmt == "pngs":
        masks = png_masks(source)
    else:
        raise InputError(source, f"unknown format '{fmt}'", f"use one of {', '.join(FORMATS)}")
    labels = masks_to_labels(masks, source)
    target = Path(out) / RAW_SEG
    write_png(target, labels)
    return target


def masks_to_labels(masks: list[np.ndarray], source: Path) -> np.ndarray:
    """Stack ``N`` boolean ``(H, W)`` masks into ``(H, W)`` uint8 grey labels ``k·255//N``."""
    if not masks:
        raise InputError(source, "no instance masks found", "give at least one instance")
    if len(masks) > MAX_INSTANCES:
        raise InputError(source, f"{len(masks)} instances (at most {MAX_INSTANCES} fit in 8-bit labels)",
                         "split the pile")
    ids = np.zeros(masks[0].shape, dtype=np.int64)
    for k, mask in enumerate(masks, 1):
        if mask.shape != ids.shape:
            raise InputError(source, f"instance {k} mask is {mask.shape[::-1]} but the first is {ids.shape[::-1]}",
                             "give every mask at the photo's size")
        ids[mask] = k
    present = set(np.unique(ids).tolist()) - {0}
    empty = [k for k in range(1, len(masks) + 1) if k not in present]
    if empty:
        raise InputError(source, f"instance(s) {empty} have no pixels (empty or fully covered)",
                         "remove empty annotations")
    return encode_instance_labels(ids, len(masks), zero_based=False)


def _load_json(path: Path):
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise InputError(path, f"not readable JSON ({str(exc)[:60]})", "export the annotations as JSON") from None


def _polygon_mask(points: np.ndarray, height: int, width: int) -> np.ndarray:
    import cv2

    mask = np.zeros((height, width), dtype=np.uint8)
    cv2.fillPoly(mask, [np.round(np.asarray(points, dtype=np.float64).reshape(-1, 2)).astype(np.int32)], 1)
    return mask > 0


def rle_decode(counts, height: int, width: int) -> np.ndarray:
    """COCO RLE (list of run lengths, or the compressed string) -> ``(H, W)`` bool (column-major)."""
    if isinstance(counts, str):
        counts = _rle_string_to_counts(counts)
    flat = np.zeros(height * width, dtype=bool)
    position, value = 0, False
    for run in counts:
        if value:
            flat[position:position + int(run)] = True
        position += int(run)
        value = not value
    return flat.reshape(width, height).T


def _rle_string_to_counts(text: str) -> list[int]:
    """Decode COCO's compressed RLE string (6-bit chunks, delta-coded from the third run)."""
    counts: list[int] = []
    pos = 0
    data = text.encode()
    while pos < len(data):
        value, shift, more = 0, 0, True
        while more:
            chunk = data[pos] - 48
            value |= (chunk & 0x1F) << (5 * shift)
            more = bool(chunk & 0x20)
            pos += 1
            shift += 1
            if not more and (chunk & 0x10):
                value |= -1 << (5 * shift)
        if len(counts) > 2:
            value += counts[-2]
        counts.append(value)
    return counts


def coco_masks(path: Path, image_id: int | None = None) -> list[np.ndarray]:
    """Instance masks of one image of a COCO instances JSON."""
    data = _load_json(path)
    if not isinstance(data, dict) or not data.get("images") or "annotations" not in data:
        raise InputError(path, "not a COCO instances file (needs 'images' and 'annotations')",
                         "export COCO instance segmentation, or use --format labelme / pngs")
    images = {int(im["id"]): im for im in data["images"]}
    chosen = image_id if image_id is not None else int(data["images"][0]["id"])
    if chosen not in images:
        raise InputError(path, f"image id {chosen} not in the file", f"use one of {sorted(images)[:10]}")
    height, width = int(images[chosen]["height"]), int(images[chosen]["width"])
    masks = []
    for ann in data["annotations"]:
        if int(ann.get("image_id", -1)) != chosen:
            continue
        seg = ann.get("segmentation")
        if isinstance(seg, list):
            mask = np.zeros((height, width), dtype=bool)
            for polygon in seg:
                mask |= _polygon_mask(np.asarray(polygon), height, width)
        elif isinstance(seg, dict) and "counts" in seg:
            mask = rle_decode(seg["counts"], height, width)
        else:
            raise InputError(path, f"annotation {ann.get('id')} has no polygon or RLE segmentation",
                             "export segmentations, not only boxes")
        masks.append(mask)
    return masks


def labelme_masks(path: Path) -> list[np.ndarray]:
    """Instance masks of a LabelMe JSON, one per shape (shapes sharing a ``group_id`` are merged)."""
    data = _load_json(path)
    if not isinstance(data, dict) or "shapes" not in data or "imageHeight" not in data:
        raise InputError(path, "not a LabelMe file (needs 'shapes', 'imageHeight', 'imageWidth')",
                         "save the annotation from LabelMe, or use --format coco / pngs")
    height, width = int(data["imageHeight"]), int(data["imageWidth"])
    groups: dict = {}
    for index, shape in enumerate(data["shapes"]):
        points = np.asarray(shape.get("points", []), dtype=np.float64)
        kind = shape.get("shape_type", "polygon")
        if kind == "rectangle" and len(points) == 2:
            (x0, y0), (x1, y1) = points
            points = np.array([[x0, y0], [x1, y0], [x1, y1], [x0, y1]])
        elif kind == "circle" and len(points) == 2:
            centre, edge = points
            radius = float(np.linalg.norm(edge - centre))
            angles = np.linspace(0, 2 * np.pi, 64, endpoint=False)
            points = centre + radius * np.stack([np.cos(angles), np.sin(angles)], 1)
        elif kind != "polygon" or len(points) < 3:
            raise InputError(path, f"shape {index} ('{kind}', {len(points)} points) is not an area",
                             "use polygon, rectangle or circle shapes")
        key = shape.get("group_id")
        key = ("group", key) if key is not None else ("shape", index)
        mask = _polygon_mask(points, height, width)
        groups[key] = groups[key] | mask if key in groups else mask
    return list(groups.values())


def png_masks(folder: Path) -> list[np.ndarray]:
    """Binary masks (non-zero = instance) from every PNG of ``folder``, sorted by name."""
    import cv2

    if not folder.is_dir():
        raise InputError(folder, "expected a folder of PNG masks", "give the folder holding one PNG per instance")
    masks = []
    for path in sorted(folder.glob("*.png")):
        image = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
        if image is None:
            raise InputError(path, "not a readable image", "save each instance mask as a PNG")
        if image.ndim == 3:
            image = image[..., :3].max(axis=2) if image.shape[2] >= 3 else image[..., 0]
        masks.append(image > 0)
    if not masks:
        raise InputError(folder, "no PNG files", "put one binary PNG mask per instance in the folder")
    return masks
