"""The synthetic shapes set: COCO validity, determinism, idempotency, masks that match pixels."""
import json
import os

import numpy as np
import pytest
from PIL import Image
from pycocotools.coco import COCO

from detectron2.data import DatasetCatalog
from detectron2.data.datasets import register_coco_instances
from resbackbones.data import SHAPE_CLASSES, SyntheticSpec, generate_synthetic_coco, synthetic_paths

SPEC = SyntheticSpec(num_train=6, num_val=3, seed=7, height=96, width=128)


@pytest.fixture(scope="module")
def dataset_root(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("synthetic"))
    assert generate_synthetic_coco(root, SPEC) is True
    return root


def test_layout_and_counts_with_pycocotools(dataset_root):
    for split, count in (("train", SPEC.num_train), ("val", SPEC.num_val)):
        json_file, image_root = synthetic_paths(dataset_root, split)
        coco = COCO(json_file)
        assert len(coco.getImgIds()) == count
        assert sorted(os.listdir(image_root)) == [f"{i:06d}.png" for i in range(count)]
        assert [c["name"] for c in coco.loadCats(coco.getCatIds())] == list(SHAPE_CLASSES)
        assert min(coco.getCatIds()) == 1  # id 0 breaks Detectron2's class mapping
        for image_id in coco.getImgIds():
            annotations = coco.loadAnns(coco.getAnnIds(imgIds=[image_id]))
            assert 1 <= len(annotations) <= SPEC.max_instances
            file_name = coco.loadImgs(image_id)[0]["file_name"]
            with Image.open(os.path.join(image_root, file_name)) as im:
                assert im.size == (SPEC.width, SPEC.height)


def test_masks_match_declared_area_and_boxes(dataset_root):
    coco = COCO(synthetic_paths(dataset_root, "train")[0])
    for annotation in coco.loadAnns(coco.getAnnIds()):
        mask = coco.annToMask(annotation)
        # Rasterised polygon area agrees with the shoelace area up to boundary pixels.
        perimeter_pixels = 2 * (annotation["bbox"][2] + annotation["bbox"][3])
        assert abs(mask.sum() - annotation["area"]) < perimeter_pixels
        ys, xs = np.nonzero(mask)
        x, y, w, h = annotation["bbox"]
        assert xs.min() >= np.floor(x) - 1 and xs.max() <= np.ceil(x + w) + 1
        assert ys.min() >= np.floor(y) - 1 and ys.max() <= np.ceil(y + h) + 1


def test_shapes_do_not_overlap(dataset_root):
    # Non-overlapping placement is what makes every polygon the visible region.
    coco = COCO(synthetic_paths(dataset_root, "train")[0])
    for image_id in coco.getImgIds():
        masks = [coco.annToMask(a) for a in coco.loadAnns(coco.getAnnIds(imgIds=[image_id]))]
        assert np.stack(masks).sum(axis=0).max() == 1


def test_pixels_inside_masks_differ_from_background(dataset_root):
    coco = COCO(synthetic_paths(dataset_root, "val")[0])
    image_root = synthetic_paths(dataset_root, "val")[1]
    for image_id in coco.getImgIds():
        info = coco.loadImgs(image_id)[0]
        pixels = np.asarray(Image.open(os.path.join(image_root, info["file_name"])), np.float32)
        for annotation in coco.loadAnns(coco.getAnnIds(imgIds=[image_id])):
            mask = coco.annToMask(annotation).astype(bool)
            inside = pixels[mask].mean(axis=0)
            ring = np.zeros_like(mask)
            x, y, w, h = (int(v) for v in annotation["bbox"])
            ring[max(y - 3, 0):y + h + 4, max(x - 3, 0):x + w + 4] = True
            ring &= ~mask
            if ring.sum() > 20:
                assert np.abs(inside - pixels[ring].mean(axis=0)).sum() > 40


def test_deterministic_byte_identical(dataset_root, tmp_path):
    other = str(tmp_path / "again")
    generate_synthetic_coco(other, SPEC)
    for split in ("train", "val"):
        with open(synthetic_paths(dataset_root, split)[0], "rb") as a, \
                open(synthetic_paths(other, split)[0], "rb") as b:
            assert a.read() == b.read()
        for name in os.listdir(synthetic_paths(other, split)[1]):
            first = np.asarray(
                Image.open(os.path.join(synthetic_paths(dataset_root, split)[1], name)))
            second = np.asarray(Image.open(os.path.join(synthetic_paths(other, split)[1], name)))
            assert np.array_equal(first, second)
    different = str(tmp_path / "seed8")
    generate_synthetic_coco(different, SyntheticSpec(**{**SPEC.__dict__, "seed": 8}))
    with open(synthetic_paths(dataset_root, "train")[0]) as a, \
            open(synthetic_paths(different, "train")[0]) as b:
        assert json.load(a)["annotations"] != json.load(b)["annotations"]


def test_idempotent_and_regenerates_on_new_parameters(tmp_path):
    root = str(tmp_path / "ds")
    assert generate_synthetic_coco(root, SPEC) is True
    json_file = synthetic_paths(root, "train")[0]
    mtime = os.path.getmtime(json_file)
    assert generate_synthetic_coco(root, SPEC) is False
    assert os.path.getmtime(json_file) == mtime
    bigger = SyntheticSpec(**{**SPEC.__dict__, "num_train": SPEC.num_train + 2})
    assert generate_synthetic_coco(root, bigger) is True
    assert len(os.listdir(synthetic_paths(root, "train")[1])) == bigger.num_train
    os.remove(os.path.join(synthetic_paths(root, "val")[1], "000000.png"))
    assert generate_synthetic_coco(root, bigger) is True  # a missing image is noticed


def test_loads_through_detectron2_register_coco_instances(dataset_root):
    name = "test_synthetic_register_coco_instances"
    json_file, image_root = synthetic_paths(dataset_root, "train")
    register_coco_instances(name, {}, json_file, image_root)
    try:
        records = DatasetCatalog.get(name)
        assert len(records) == SPEC.num_train
        total = sum(len(r["annotations"]) for r in records)
        assert total == len(COCO(json_file).getAnnIds())
        # Detectron2 maps json category ids 1..3 to contiguous 0..2.
        assert {a["category_id"] for r in records for a in r["annotations"]} <= {0, 1, 2}
    finally:
        DatasetCatalog.remove(name)


def test_make_synthetic_coco_tool(tmp_path):
    import subprocess
    import sys

    root = str(tmp_path / "cli")
    command = [sys.executable, "tools/make_synthetic_coco.py", "--out", root, "--num-train", "2",
               "--num-val", "1", "--seed", "3", "--image-size", "64", "80"]
    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    first = subprocess.run(command, cwd=repo, capture_output=True, text=True, check=True)
    assert "wrote" in first.stdout
    second = subprocess.run(command, cwd=repo, capture_output=True, text=True, check=True)
    assert "up to date" in second.stdout
    with open(os.path.join(root, "manifest.json")) as f:
        assert json.load(f)["height"] == 64


def test_refuses_to_overwrite_a_data_set_it_did_not_write(tmp_path):
    """Pointing the quickstart's --data at one's own COCO folder must not delete its images."""
    root = tmp_path / "mine"
    image_root = root / "train"
    image_root.mkdir(parents=True)
    photo = image_root / "holiday.png"
    photo.write_bytes(b"not ours")
    with pytest.raises(FileExistsError, match=r"did not write .*holiday\.png.*empty or new"):
        generate_synthetic_coco(str(root), SPEC)
    assert photo.read_bytes() == b"not ours"
    assert not (root / "annotations").exists()


def test_an_interrupted_run_is_redone(tmp_path, monkeypatch):
    """The marker written before any file lets a rerun finish what a killed run started."""
    root = tmp_path / "ds"
    import resbackbones.data.synthetic as synthetic

    def fail(*args, **kwargs):
        raise KeyboardInterrupt

    with monkeypatch.context() as patch:
        patch.setattr(synthetic, "_split_dict", fail)
        with pytest.raises(KeyboardInterrupt):
            generate_synthetic_coco(str(root), SPEC)
    assert (root / ".generating").exists() and not (root / "manifest.json").exists()
    assert generate_synthetic_coco(str(root), SPEC) is True
    assert not (root / ".generating").exists()
    assert len(os.listdir(synthetic_paths(str(root), "train")[1])) == SPEC.num_train
