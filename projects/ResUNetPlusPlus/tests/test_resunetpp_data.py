"""Layouts, split files, registration, the validator and the synthetic polyp set."""
import hashlib
import os

import numpy as np
import pytest
from PIL import Image

from resunetpp.data import (
    SyntheticPolypSpec,
    generate_synthetic_polyps,
    make_split,
    parse_dataset_spec,
    read_mask,
    read_split_file,
    register_segmentation_dataset,
    scan_pairs,
    validate_registered,
    write_split_file,
)


def _digest(folder):
    digest = hashlib.sha256()
    for name in sorted(os.listdir(folder)):
        with open(os.path.join(folder, name), "rb") as file:
            digest.update(name.encode() + file.read())
    return digest.hexdigest()


def test_synthetic_set_is_deterministic_and_polyp_like(tmp_path):
    spec = SyntheticPolypSpec(num_images=6, height=96, width=112, seed=3)
    first = generate_synthetic_polyps(str(tmp_path / "a"), spec)
    second = generate_synthetic_polyps(str(tmp_path / "b"), spec)
    other = generate_synthetic_polyps(str(tmp_path / "c"), SyntheticPolypSpec(6, 96, 112, 4))
    for sub in ("images", "masks"):
        assert _digest(os.path.join(first, sub)) == _digest(os.path.join(second, sub))
    assert _digest(os.path.join(first, "images")) != _digest(os.path.join(other, "images"))
    scan = scan_pairs("kvasir", first)
    assert len(scan.pairs) == 6 and not scan.images_without_mask
    for _, image_path, mask_path in scan.pairs:
        image = np.asarray(Image.open(image_path))
        gray = np.asarray(Image.open(mask_path).convert("L"))
        mask = read_mask(mask_path)
        assert image.shape == (96, 112, 3) and mask.shape == (96, 112)
        # JPEG masks: near 0/255 with few grey edge pixels; every image has a polyp
        assert ((gray > 32) & (gray < 223)).mean() < 0.05
        assert 0.02 < mask.mean() < 0.6
        # reddish tissue, and specular highlights (near-white pixels) somewhere
        assert image[..., 0].mean() > image[..., 2].mean() + 20
        assert (image.min(axis=2) > 200).any()


def test_layouts_pair_by_stem(tmp_path):
    cvc = tmp_path / "CVC"
    for sub in ("Original", "Ground Truth"):
        (cvc / sub).mkdir(parents=True)
    for stem in ("1", "2"):
        Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(cvc / "Original" / f"{stem}.tif")
        Image.fromarray(np.full((8, 8), 255, np.uint8)).save(cvc / "Ground Truth" / f"{stem}.tif")
    scan = scan_pairs("cvc", str(cvc))
    assert [stem for stem, _, _ in scan.pairs] == ["1", "2"]
    assert read_mask(scan.pairs[0][2]).sum() == 64
    with pytest.raises(FileNotFoundError, match="masks"):
        scan_pairs("kvasir", str(cvc))
    with pytest.raises(ValueError, match="kvasir, cvc, folder"):
        parse_dataset_spec("x=nope:/data")
    with pytest.raises(ValueError, match="NAME=LAYOUT:ROOT"):
        parse_dataset_spec("kvasir:/data")
    assert parse_dataset_spec("k=kvasir:/d/K") == ("k", "kvasir", "/d/K")


def test_split_is_seeded_and_round_trips(tmp_path):
    stems = [f"s{i:03d}" for i in range(100)]
    split = make_split(stems, seed=7)
    assert [len(split[k]) for k in ("train", "val", "test")] == [80, 10, 10]
    assert sorted(sum(split.values(), [])) == stems
    assert make_split(list(reversed(stems)), seed=7) == split  # order of listing does not matter
    assert make_split(stems, seed=8) != split
    path = tmp_path / "split.txt"
    write_split_file(str(path), split, "seed 7")
    assert read_split_file(str(path)) == split
    path.write_text("train\ta\nvalidation\tb\n")
    with pytest.raises(ValueError, match="split.txt:2"):
        read_split_file(str(path))


def test_registration_writes_then_reuses_split_file(tmp_path):
    from detectron2.data import DatasetCatalog, MetadataCatalog

    root = generate_synthetic_polyps(str(tmp_path / "set"), SyntheticPolypSpec(10, 48, 48))
    split_file = str(tmp_path / "split.txt")
    names = register_segmentation_dataset("rupp_reg", "kvasir", root, split_file, seed=1)
    assert names == ["rupp_reg_train", "rupp_reg_val", "rupp_reg_test", "rupp_reg_all"]
    assert os.path.isfile(split_file)
    train = DatasetCatalog.get("rupp_reg_train")
    assert len(train) == 8 and train[0]["height"] == 48 and train[0]["mask_format"] == "binary"
    assert MetadataCatalog.get("rupp_reg_val").stuff_classes == ["background", "polyp"]
    # a different seed now does not change the split: the file decides
    register_segmentation_dataset("rupp_reg", "kvasir", root, split_file, seed=2)
    assert DatasetCatalog.get("rupp_reg_train") == train


def test_validator_reports_one_defect_of_each_kind(tmp_path):
    root = tmp_path / "bad"
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()

    def image(stem, size=(16, 12)):
        Image.fromarray(np.full((size[1], size[0], 3), 120, np.uint8)).save(
            root / "images" / f"{stem}.png")

    def mask(stem, values, size=(16, 12)):
        Image.fromarray(np.full((size[1], size[0]), values, np.uint8)).save(
            root / "masks" / f"{stem}.png")

    image("good"), mask("good", 255)
    image("lonely_image")
    mask("lonely_mask", 0)
    image("mismatch", (16, 12)), mask("mismatch", 0, (20, 12))
    image("grey"), mask("grey", 128)
    (root / "images" / "broken.png").write_bytes(b"not a png"), mask("broken", 0)
    image("zero_one"), mask("zero_one", 1)
    register_segmentation_dataset("rupp_bad", "folder", str(root), "", seed=0)
    report = validate_registered("rupp_bad_all")
    counts = {kind: len(found) for kind, found in report.problems.items()}
    assert counts == {"image_without_mask": 1, "mask_without_image": 1, "unreadable": 1,
                      "size_mismatch": 1, "non_binary_mask": 2, "bad_mask_values": 0}
    text = report.summary()
    assert "5 image/mask pairs checked" in text
    for needle in ("lonely_image.png", "lonely_mask.png", "broken.png", "16x12, mask 20x12",
                   "grey (32..223)", "0/1 masks"):
        assert needle in text
    assert str(root / "images" / "good.png") not in report.bad_files()


def test_validator_checks_class_index_masks(tmp_path):
    root = tmp_path / "index"
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(root / "images" / "a.png")
    values = np.array([[0, 1, 2, 255] * 2] * 8, np.uint8)
    values[0, 0] = 7
    Image.fromarray(values).save(root / "masks" / "a.png")
    (root / "classes.txt").write_text("background\nsmall\nlarge\n")
    register_segmentation_dataset("rupp_index", "folder-index", str(root), "", seed=0)
    report = validate_registered("rupp_index_all", num_classes=3)
    assert [d for _, d in report.problems["bad_mask_values"]] == [
        "values [7] outside [0, 3) and not 255"]
