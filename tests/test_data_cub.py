"""CUB-200-2011: synthetic birds in the raw layout -> reader -> CMR crops; crop math; data check."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from sfd_lightning.datacheck.cub import check
from sfd_lightning.datamodules import cub_annotations as ann
from sfd_lightning.datamodules.cub import CUBDataModule, CUBDataset
from sfd_lightning.datamodules.cub_crop import (FLIP_PERMUTATION, crop_resize, flip_keypoints, from_ndc, square_box,
                                                to_ndc, to_output_pixels, warp_between_boxes)
from sfd_lightning.errors import InputError
from sfd_lightning.synthetic.birds import BACK, BELLY, HEAD, BirdModel, sample_class_params, sample_instance_params
from sfd_lightning.tools.data import main

N_IMAGES, SIZE = 10, 64
L_EYE, R_EYE = ann.CUB_KEYPOINT_NAMES.index("LEye"), ann.CUB_KEYPOINT_NAMES.index("REye")


@pytest.fixture(scope="module")
def tree(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("cub") / "synth_cub"
    assert main(["synth", "cub", "--out", str(root), "--images", str(N_IMAGES), "--classes", "2",
                 "--image_size", "96", "--part_map_size", "96", "--seed", "3"]) == 0
    return root


@pytest.fixture(scope="module")
def module(tree) -> CUBDataModule:
    dm = CUBDataModule(root=str(tree), image_size=SIZE, batch_size=4, part_maps="part_maps")
    dm.setup()
    return dm


def _batch(dm: CUBDataModule, split: str) -> dict[str, torch.Tensor]:
    batches = list(dm.val_dataloader() if split == "val" else dm.test_dataloader())
    return {k: torch.cat([b[k] for b in batches]) for k in batches[0]}


def _ndc_to_pixel(values: torch.Tensor, size: int) -> np.ndarray:
    return np.round(((values.numpy() + 1.0) * size - 1.0) / 2.0).astype(int)


# ------------------------------------------------------------------------------------- birds
def test_bird_is_mirror_symmetric_with_surface_keypoints():
    rng = np.random.default_rng(0)
    bird = BirdModel(sample_instance_params(rng, sample_class_params(rng), wing_spread_prob=1.0))
    lo, hi = bird.bounds()
    points = rng.uniform(lo, hi, size=(2000, 3))
    np.testing.assert_allclose(bird(points), bird(points * [1, -1, 1]), atol=1e-12)
    kp = bird.keypoints()
    assert np.abs(bird(kp)).max() < 1e-4  # on the surface
    for left, right in (("LEye", "REye"), ("LLeg", "RLeg"), ("LWing", "RWing")):
        i, j = ann.CUB_KEYPOINT_NAMES.index(left), ann.CUB_KEYPOINT_NAMES.index(right)
        np.testing.assert_allclose(kp[i], kp[j] * [1, -1, 1], atol=1e-9)
        assert kp[i, 1] > 0  # the bird's left is +y
    labels = dict(zip(ann.CUB_KEYPOINT_NAMES, bird.part_labels(kp)))
    assert {labels[k] for k in ("Beak", "Crown", "FHead", "LEye")} == {HEAD}
    assert {labels[k] for k in ("Back", "Tail", "LWing")} == {BACK}
    assert {labels[k] for k in ("Belly", "Breast", "LLeg")} == {BELLY}


# ---------------------------------------------------------------------------------- crop math
def test_square_box_pads_and_squares_around_the_centre():
    # 40 x 20 box: pad 2 / 1 px per side -> 44 x 22, squared to 44 around the same centre.
    assert square_box(np.array([10.0, 20.0, 49.0, 39.0])) == (8, 8, 44)
    # jitter moves each side by noise * 0.05 * size
    assert square_box(np.array([10.0, 20.0, 49.0, 39.0]), pad=0.0, jitter=0.05,
                      noise=np.array([1.0, 0.0, 0.0, 0.0])) == (12, 11, 38)  # 38 x 20 -> squared to 38


def test_crop_is_white_outside_and_follows_the_pixel_mapping():
    height, width = 30, 50
    ramp = np.broadcast_to(np.arange(width, dtype=np.float32)[None, :, None], (height, width, 3)).copy()
    box = (-10, 5, 40)  # 10 columns left of the image are outside
    out = crop_resize(ramp / 100.0, box, 64, 1.0)
    assert out.shape == (64, 64, 3)
    u_outside = to_output_pixels(np.array([[-3.0, 10.0]]), box, 64)[0]
    assert np.allclose(out[int(u_outside[1]), :int(u_outside[0])], 1.0)  # white padding
    rows_below = to_output_pixels(np.array([[0.0, height + 2.0]]), box, 64)[0, 1]
    assert np.allclose(out[int(np.ceil(rows_below)):], 1.0)
    # bilinear resize of a linear ramp is exact: output column u shows source x of the mapping
    u = np.arange(25, 60)
    x_src = (u + 0.5) * 40 / 64 - 0.5 + box[0]
    np.testing.assert_allclose(out[30, u, 0] * 100.0, x_src, atol=1e-3)
    xy = np.array([[3.0, 7.0], [17.5, 22.25]])
    np.testing.assert_allclose(to_ndc(xy, box), (2 * to_output_pixels(xy, box, 64) + 1) / 64 - 1, atol=1e-12)
    np.testing.assert_allclose(from_ndc(to_ndc(xy, box), box), xy, atol=1e-12)


def test_flip_permutation_twice_is_identity_and_swaps_eyes():
    kp = np.random.default_rng(1).uniform(-1, 1, size=(15, 3))
    np.testing.assert_allclose(flip_keypoints(flip_keypoints(kp)), kp)
    flipped = flip_keypoints(kp)
    np.testing.assert_allclose(flipped[R_EYE], [-kp[L_EYE, 0], kp[L_EYE, 1], kp[L_EYE, 2]])
    assert sorted(FLIP_PERMUTATION) == list(range(15))


def test_part_map_warp_between_boxes_is_exact_for_the_same_box():
    values = np.random.default_rng(2).random((32, 32, 5)).astype(np.float32)
    same = warp_between_boxes(values, (4, 9, 70), (4, 9, 70), 32, np.array([1, 0, 0, 0, 0.0]))
    np.testing.assert_allclose(same, values, atol=1e-5)


# ---------------------------------------------------------------------------- writer / reader
def test_round_trip_matches_ground_truth(tree):
    layout, records, problems = ann.read_raw(tree)
    assert not problems and len(records) == N_IMAGES
    cameras = json.loads((tree / "gt" / "cameras.json").read_text())["images"]
    visible_total = 0
    for record in records:
        cam = cameras[str(record.image_id)]
        K, R, t = (np.asarray(cam[k]) for k in ("K", "R", "t"))
        projected = (np.asarray(cam["keypoints_3d"]) @ R.T + t) @ K.T
        projected = projected[:, :2] / projected[:, 2:]
        visible = record.keypoints[:, 2] > 0
        visible_total += int(visible.sum())
        np.testing.assert_allclose(record.keypoints[visible, :2], projected[visible], atol=0.006)
        mask = cv2.imread(str(layout.segmentation_path(record)), cv2.IMREAD_GRAYSCALE)
        rows, cols = np.nonzero(mask >= 128)
        np.testing.assert_allclose(record.bbox, [cols.min(), rows.min(), cols.max(), rows.max()])
        assert mask.shape == (cam["height"], cam["width"])
    assert visible_total >= 4 * N_IMAGES  # measured 7 of 15 per photo on average
    assert 0 < sum(r.is_train for r in records) < N_IMAGES


def test_batches_have_documented_shapes_and_are_deterministic(module):
    batch = next(iter(module.train_dataloader()))
    assert batch["img"].shape == (4, 3, SIZE, SIZE) and batch["img"].dtype == torch.float32
    assert batch["mask"].shape == (4, 1, SIZE, SIZE) and batch["kp"].shape == (4, 15, 3)
    assert batch["part_prob"].shape == (4, 5, SIZE, SIZE) and batch["index"].dtype == torch.int64
    assert 0.0 <= batch["img"].min() and batch["img"].max() <= 1.0
    first, second = _batch(module, "test"), _batch(module, "test")
    assert torch.equal(first["img"], second["img"]) and torch.equal(first["kp"], second["kp"])
    assert (first["crop"][:, 3] == 0).all()  # never flipped at test time
    n_testval = sum(not r.is_train for r in ann.read_raw(module.root)[1])
    assert len(first["index"]) == n_testval // 2 + 1 and len(module.datasets["val"]) == n_testval - n_testval // 2
    kp = first["kp"]
    assert (kp[..., :2].abs() <= 1.0).all()
    assert (kp[kp[..., 2] == 0] == 0).all()  # invisible keypoints zeroed
    part_sum = first["part_prob"].sum(dim=1)
    assert torch.allclose(part_sum, torch.ones_like(part_sum), atol=2e-2)


def test_keypoints_land_on_the_bird_and_parts_inside_the_mask(module):
    batch = _batch(module, "val")
    on_mask, count = 0, 0
    for kp, mask in zip(batch["kp"], batch["mask"][:, 0]):
        pixels = _ndc_to_pixel(kp[:, :2], SIZE)
        for (u, v), vis in zip(pixels, kp[:, 2]):
            if vis > 0:
                count += 1
                on_mask += int(mask[max(v - 1, 0):v + 2, max(u - 1, 0):u + 2].max() > 0.5)
    assert count > 0 and on_mask / count >= 0.9  # measured 0.95-1.0 (3 seeds, val/test/train)
    for split in ("val", "train"):  # deterministic crop, then jittered and flipped crops
        batch = _batch(module, "val") if split == "val" else next(iter(module.train_dataloader()))
        parts = (1.0 - batch["part_prob"][:, 0]) > 0.5
        inside = batch["mask"][:, 0] > 0.5
        assert (parts & inside).sum() / parts.sum() >= 0.98  # measured >= 0.999
        assert (parts & inside).sum() / (parts | inside).sum() >= 0.95  # measured >= 0.997


def test_flip_mirrors_image_mask_parts_and_keypoints(module):
    base = module.datasets["test"]
    flipping = CUBDataset(base.layout, base.records, SIZE, flip=True, part_dir=base.part_dir)
    plain = base[0]
    torch.manual_seed(0)
    items = [flipping[0] for _ in range(8)]
    flipped = next(item for item in items if item["crop"][3] == 1)
    assert any(item["crop"][3] == 0 for item in items)
    assert torch.equal(flipped["img"], plain["img"].flip(-1))
    assert torch.equal(flipped["mask"], plain["mask"].flip(-1))
    assert torch.equal(flipped["part_prob"], plain["part_prob"].flip(-1))
    np.testing.assert_allclose(flipped["kp"].numpy(), flip_keypoints(plain["kp"].numpy()), atol=1e-6)
    if plain["kp"][L_EYE, 2] > 0:
        assert flipped["kp"][R_EYE, 0] == pytest.approx(-plain["kp"][L_EYE, 0].item(), abs=1e-6)


def test_cmr_cache_gives_the_same_samples(tree, module, tmp_path):
    from scipy.io import savemat

    layout, records, _ = ann.read_raw(tree)
    fields = ("rel_path", "bbox", "parts", "mask", "id", "class_id", "train")
    for split in ann.SPLITS:
        chosen = ann.split_records(records, split)
        table = np.zeros(len(chosen), dtype=[(f, object) for f in fields])
        for i, r in enumerate(chosen):
            parts = r.keypoints.T.copy()
            parts[:2, parts[2] > 0] += 1.0  # 1-based
            mask = cv2.imread(str(layout.segmentation_path(r)), cv2.IMREAD_GRAYSCALE) > 127
            table[i] = (r.rel_path, r.bbox + 1.0, parts, mask, r.image_id, r.class_id, int(r.is_train))
        (tmp_path / "data").mkdir(exist_ok=True)
        savemat(tmp_path / "data" / f"{split}_cub_cleaned.mat", {"images": table})
    cached = CUBDataModule(root=str(tree), image_size=SIZE, cmr_cache=str(tmp_path))
    cached.setup()
    a, b = cached.datasets["test"][1], module.datasets["test"][1]
    assert a["image_id"] == b["image_id"]
    assert torch.equal(a["img"], b["img"]) and torch.allclose(a["kp"], b["kp"], atol=1e-6)
    assert ((a["mask"] > 0.5) == (b["mask"] > 0.5)).float().mean() > 0.98


def test_default_synthetic_data_is_cached(tmp_path, monkeypatch):
    monkeypatch.setenv("SFD_CACHE", str(tmp_path))
    small = {"n_images": 4, "n_classes": 1, "image_size": 64, "part_map_size": 32}
    dm = CUBDataModule(image_size=32, batch_size=2, part_maps="part_maps", synthetic=small)
    dm.prepare_data()
    dm.setup()
    root = dm.root
    assert root.is_relative_to(tmp_path) and (root / ".complete").exists()
    stamp = (root / "CUB_200_2011" / "images.txt").stat().st_mtime_ns
    assert next(iter(dm.train_dataloader()))["part_prob"].shape == (2, 5, 32, 32)
    again = CUBDataModule(synthetic=small)
    assert again.root == root and (root / "CUB_200_2011" / "images.txt").stat().st_mtime_ns == stamp


def test_bad_paths_raise_input_errors(tree, tmp_path):
    with pytest.raises(InputError, match="dataset root not found"):
        CUBDataModule(root=str(tmp_path / "nowhere")).setup()
    with pytest.raises(InputError, match="no CUB_200_2011/images.txt"):
        CUBDataModule(root=str(tmp_path)).setup()
    with pytest.raises(InputError, match="part-map folder not found"):
        CUBDataModule(root=str(tree), part_maps="scops_missing").setup()


# ------------------------------------------------------------------------------------- check
def _drop_line(path: Path, index: int) -> None:
    lines = path.read_text().splitlines()
    path.write_text("\n".join(lines[:index] + lines[index + 1:]) + "\n")


def _replace_line(path: Path, index: int, text: str) -> None:
    lines = path.read_text().splitlines()
    lines[index] = text
    path.write_text("\n".join(lines) + "\n")


def _first_seg(root: Path) -> Path:
    return sorted((root / "segmentations").rglob("*.png"))[0]


BROKEN = {
    "bounding_boxes.txt: file not found": lambda r: (r / "CUB_200_2011/bounding_boxes.txt").unlink(),
    "no line for image id 3": lambda r: _drop_line(r / "CUB_200_2011/image_class_labels.txt", 2),
    "exceeds the": lambda r: _replace_line(r / "CUB_200_2011/bounding_boxes.txt", 0, "1 5.0 5.0 900.0 20.0"),
    "non-numeric": lambda r: _replace_line(r / "CUB_200_2011/bounding_boxes.txt", 1, "2 a b c d"),
    "part id 16 out of range": lambda r: _replace_line(r / "CUB_200_2011/parts/part_locs.txt", 0,
                                                        "1 16 5.0 5.0 1"),
    "which is not in classes.txt": lambda r: _replace_line(r / "CUB_200_2011/image_class_labels.txt", 0, "1 99"),
    "split flag": lambda r: _replace_line(r / "CUB_200_2011/train_test_split.txt", 0, "1 7"),
    "image missing or unreadable": lambda r: sorted((r / "CUB_200_2011/images").rglob("*.jpg"))[0].unlink(),
    "segmentation missing": lambda r: _first_seg(r).unlink(),
    "but the image is": lambda r: cv2.imwrite(str(_first_seg(r)), np.zeros((7, 9), np.uint8)),
    "part map has shape": lambda r: np.save(sorted((r / "part_maps").rglob("*.npy"))[0], np.zeros((8, 8, 3))),
}


def test_check_passes_on_a_fresh_tree(tree):
    assert check(tree) == []


@pytest.mark.parametrize("expected", sorted(BROKEN))
def test_check_flags_each_broken_tree_once(tree, tmp_path, expected):
    broken = tmp_path / "broken"
    shutil.copytree(tree, broken)
    BROKEN[expected](broken)
    problems = check(broken)
    assert len(problems) == 1, problems
    assert expected in problems[0] and str(broken) in problems[0] and " — " in problems[0]
