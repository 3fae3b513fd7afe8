"""Large-scale jitter from YAML keys (INPUT.LSJ.*): Detectron2's new-baselines augmentations.

References: the LazyConfig baseline's own augmentation list (same transforms and parameters),
and the image itself: objects are drawn in pure red, green and blue on black, so after the
pipeline the pixels of each colour are where that object really is; the transformed polygons
and boxes, drawn independently, must cover them (IoU >= 0.9). Gray 128 appears only as padding.
"""
import numpy as np
import pytest
import torch
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.structures import BoxMode, polygons_to_bitmask
from PIL import Image, ImageDraw

from resbackbones.compat import detectron2_config
from resbackbones.config import ConfigError, build_config
from resbackbones.data.lsj import build_lsj_augmentations, build_lsj_train_mapper

SIZE = 128
COLOURS = ((255, 0, 0), (0, 255, 0), (0, 0, 255))  # category k is drawn in channel k


def _lsj_cfg(*extra, mask_on=True):
    return build_config("", ["INPUT.LSJ.ENABLED", "True", "INPUT.LSJ.SIZE", str(SIZE),
                             "INPUT.MIN_SIZE_TEST", "96", "INPUT.MAX_SIZE_TEST", "128",
                             "INPUT.FORMAT", "RGB", "MODEL.MASK_ON", str(mask_on), *extra])


def _shapes(height, width):
    """A rectangle, a triangle and a 24-gon at asymmetric places (a missed flip shows)."""
    h, w = height, width
    rectangle = [0.05 * w, 0.1 * h, 0.35 * w, 0.3 * h]
    rectangle = [rectangle[0], rectangle[1], rectangle[2], rectangle[1], rectangle[2],
                 rectangle[3], rectangle[0], rectangle[3]]
    triangle = [0.55 * w, 0.15 * h, 0.95 * w, 0.2 * h, 0.7 * w, 0.55 * h]
    angles = np.linspace(0, 2 * np.pi, 24, endpoint=False)
    cx, cy, r = 0.3 * w, 0.72 * h, 0.2 * min(h, w)
    polygon = [v for a in angles for v in (cx + r * np.cos(a), cy + r * np.sin(a))]
    return [rectangle, triangle, polygon]


def _write_image(path, height, width, supersampling=8):
    """Drawn 8x larger and box-filtered down: a pixel is its colour where the polygon covers
    more than half of it (PIL alone fills every pixel the outline touches, a pixel too many on
    each side, which upscaling by LSJ would magnify)."""
    image = Image.new("RGB", (width * supersampling, height * supersampling))
    draw = ImageDraw.Draw(image)
    annotations = []
    for category, (colour, polygon) in enumerate(zip(COLOURS, _shapes(height, width))):
        draw.polygon([tuple(p * supersampling) for p in np.reshape(polygon, (-1, 2))],
                     fill=colour)
        xs, ys = polygon[0::2], polygon[1::2]
        annotations.append({"bbox": [min(xs), min(ys), max(xs), max(ys)],
                            "bbox_mode": BoxMode.XYXY_ABS, "category_id": category,
                            "segmentation": [list(map(float, polygon))], "iscrowd": 0})
    image.resize((width, height), Image.BOX).save(path)
    return {"file_name": str(path), "height": height, "width": width,
            "image_id": path.stem, "annotations": annotations}


@pytest.fixture(scope="module")
def records(tmp_path_factory):
    folder = tmp_path_factory.mktemp("lsj")
    return {"small": _write_image(folder / "small.png", 60, 80),  # both sides below SIZE
            "large": _write_image(folder / "large.png", 300, 200)}  # both above


def _box_iou(a, b):
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union


def _colour_regions(image: torch.Tensor):
    """category -> boolean mask of the pixels drawn in its colour (CHW uint8 RGB image)."""
    pixels = image.numpy().astype(int)
    return {k: (pixels[k] > 127) & (np.delete(pixels, k, axis=0) < 64).all(0)
            for k in range(len(COLOURS))}


def test_same_augmentations_as_the_lazyconfig_baseline():
    from detectron2.config import instantiate

    baseline = instantiate(detectron2_config(
        "new_baselines/mask_rcnn_R_50_FPN_100ep_LSJ.py").dataloader.train.mapper.augmentations)
    ours = build_lsj_augmentations(1024, (0.1, 2.0))
    assert [type(a) for a in ours] == [type(a) for a in baseline]
    for mine, theirs in zip(ours, baseline):
        assert vars(mine) == vars(theirs), type(mine).__name__
    defaults = build_config("").INPUT.LSJ
    assert (defaults.ENABLED, tuple(defaults.SCALE_RANGE), defaults.SIZE) == (False, (0.1, 2.0),
                                                                              1024)


@pytest.mark.parametrize("which", ["small", "large"])
def test_every_training_image_is_size_by_size(records, which):
    mapper = build_lsj_train_mapper(_lsj_cfg())
    np.random.seed(0)
    shapes = {tuple(mapper(dict(records[which]))["image"].shape) for _ in range(30)}
    assert shapes == {(3, SIZE, SIZE)}


def test_smaller_results_are_padded_with_detectron2s_gray(records):
    mapper = build_lsj_train_mapper(_lsj_cfg("INPUT.LSJ.SCALE_RANGE", "(0.1, 0.5)"))
    np.random.seed(1)
    for _ in range(10):
        image = mapper(dict(records["large"]))["image"]
        assert image.shape == (3, SIZE, SIZE)
        # Scaled to at most half of SIZE: the bottom-right corner is padding (black image).
        assert image[:, -SIZE // 4:, -SIZE // 4:].eq(128).all()


@pytest.mark.parametrize("mask_on", [True, False])
def test_boxes_and_masks_stay_on_their_objects(records, mask_on):
    """Polygons (masks) and boxes after resize, crop, pad and flip vs the pixels of their
    colour; objects cut by the crop to slivers (under 16 pixels across) are not judged."""
    mapper = build_lsj_train_mapper(_lsj_cfg("INPUT.LSJ.SCALE_RANGE", "(0.8, 2.0)",
                                             mask_on=mask_on))
    np.random.seed(2)
    ious, flipped_seen = [], set()
    for sample in range(40):
        record = records["small" if sample % 2 else "large"]
        out = mapper(dict(record))
        image, instances = out["image"], out["instances"]
        regions = _colour_regions(image)
        for i, category in enumerate(instances.gt_classes.tolist()):
            region = regions[category]
            if not region.any():
                continue
            ys, xs = np.nonzero(region)
            region_box = [xs.min(), ys.min(), xs.max() + 1, ys.max() + 1]
            if min(region_box[2] - region_box[0], region_box[3] - region_box[1]) < 16:
                continue  # a sliver: one pixel of rounding is more than 6% of it
            box = instances.gt_boxes.tensor[i].tolist()
            # Without masks Detectron2 clips the whole object's box to the crop: the visible
            # part's box only for a rectangle, or for an object the crop does not cut.
            cut = min(box[:2]) <= 0.5 or max(box[2:]) >= SIZE - 0.5
            if mask_on or category == 0 or not cut:
                ious.append(("box", _box_iou(box, region_box)))
            if mask_on:
                drawn = polygons_to_bitmask(instances.gt_masks.polygons[i], SIZE, SIZE)
                iou = (drawn & region).sum() / (drawn | region).sum()
                ious.append(("mask", iou))
            # Where the rectangle sits tells a flipped sample from one that is not.
            if category == 0:
                flipped_seen.add(bool(region_box[0] > image.shape[2] / 2))
    assert len(ious) >= 50 and flipped_seen == {True, False}
    worst = {kind: min(v for k, v in ious if k == kind) for kind, _ in ious}
    print(f"mask_on={mask_on}: {len(ious)} checks, worst IoU {worst}")
    assert all(v >= 0.9 for v in worst.values()), worst


def test_the_trainer_loads_lsj_batches(records):
    from resbackbones.engine import Trainer

    name = "lsj_test_train"
    if name not in DatasetCatalog.list():
        DatasetCatalog.register(name, lambda: [dict(records["small"]), dict(records["large"])])
        MetadataCatalog.get(name).thing_classes = ["rectangle", "triangle", "polygon"]
    cfg = _lsj_cfg("DATASETS.TRAIN", f"('{name}',)", "SOLVER.IMS_PER_BATCH", "2",
                   "DATALOADER.NUM_WORKERS", "0")
    batch = next(iter(Trainer.build_train_loader(cfg)))
    assert [tuple(d["image"].shape) for d in batch] == [(3, SIZE, SIZE)] * 2


@pytest.mark.parametrize("opts, message", [
    (["INPUT.LSJ.SIZE", "64", "INPUT.MIN_SIZE_TEST", "96"],
     "INPUT.LSJ.SIZE 64 is smaller than INPUT.MIN_SIZE_TEST 96; valid: INPUT.LSJ.SIZE >= "
     "INPUT.MIN_SIZE_TEST"),
    (["INPUT.LSJ.SIZE", "0"], "INPUT.LSJ.SIZE 0 is invalid; valid: a positive integer"),
    (["INPUT.LSJ.SCALE_RANGE", "(2.0, 0.1)"],
     "INPUT.LSJ.SCALE_RANGE (2.0, 0.1) is invalid; valid: two numbers (low, high) with 0 < low"),
    (["INPUT.LSJ.SCALE_RANGE", "(0.0, 1.0)"], "INPUT.LSJ.SCALE_RANGE (0.0, 1.0) is invalid"),
    (["INPUT.CROP.ENABLED", "True"], "INPUT.LSJ.ENABLED and INPUT.CROP.ENABLED are both True"),
])
def test_bad_lsj_settings_name_the_key(opts, message):
    with pytest.raises(ConfigError) as error:
        build_config("", ["INPUT.LSJ.ENABLED", "True", *opts])
    assert message in str(error.value)
    build_config("", opts)  # the same values are not checked while LSJ is off

