"""The Detectron2-free ONNX runner: Detectron2's pre/postprocessing reproduced with numpy and
Pillow, a process in which Detectron2 and PyTorch cannot be imported, refusal of a model that
does not match its meta file, and ``tools/demo.py --onnx``."""
import json
import shutil
import subprocess
import sys

import numpy as np
import pytest
import torch
from detectron2.data import transforms as T
from detectron2.layers import paste_masks_in_image
from PIL import Image

from resbackbones.deploy.export import export_model
from resbackbones.deploy.onnx_runner import (
    META_FILE,
    ModelMismatchError,
    OnnxDetector,
    paste_masks,
    preprocess,
    resize_shortest_edge_shape,
)

pytest.importorskip("onnxruntime")

from export_helpers import (  # noqa: E402
    MASK_RCNN,
    REPO,
    assert_same_detections,
    eager_detections,
    other_image,
    write_checkpoint,
)


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """A tiny Mask R-CNN R18 exported to ONNX, and the opts of its eager twin."""
    directory = tmp_path_factory.mktemp("onnx_runner")
    opts = write_checkpoint(directory, MASK_RCNN, "resnet18")
    export_model(MASK_RCNN, str(directory / "export"), "onnx", opts=opts)
    return directory / "export", opts


@pytest.mark.parametrize("size", [(480, 640), (640, 480), (100, 3000), (801, 1333), (7, 9),
                                  (333, 333)])
def test_resize_rule_and_pixels_match_detectron2(size):
    short_edge, max_size = 800, 1333
    height, width = size
    augmentation = T.ResizeShortestEdge([short_edge, short_edge], max_size)
    assert resize_shortest_edge_shape(height, width, short_edge, max_size) == (
        T.ResizeShortestEdge.get_output_shape(height, width, short_edge, max_size))
    if height * width > 10**6:
        return
    rgb = np.random.default_rng(0).integers(0, 256, (height, width, 3), dtype=np.uint8)
    meta = {"input": {"channel_order": "BGR",
                      "resize": {"short_edge": short_edge, "max_size": max_size}}}
    expected = augmentation.get_transform(rgb[:, :, ::-1]).apply_image(rgb[:, :, ::-1])
    assert np.array_equal(preprocess(rgb, meta), expected.transpose(2, 0, 1).astype(np.float32))


def test_paste_masks_matches_detectron2():
    rng = np.random.default_rng(0)
    count, height, width = 30, 90, 120
    # Probabilities away from the 0.5 threshold; boxes of all sizes, clipped to the image as
    # the postprocess does before pasting (some touch its borders).
    logits = rng.normal(0, 4, (count, 28, 28)).astype(np.float32)
    probabilities = 1 / (1 + np.exp(-logits))
    x0 = rng.uniform(-20, width - 5, count)
    y0 = rng.uniform(-20, height - 5, count)
    boxes = np.stack([x0, y0, x0 + rng.uniform(5, 150, count),
                      y0 + rng.uniform(5, 100, count)], axis=1).astype(np.float32)
    boxes[:, 0::2] = boxes[:, 0::2].clip(0, width)
    boxes[:, 1::2] = boxes[:, 1::2].clip(0, height)
    expected = paste_masks_in_image(torch.from_numpy(probabilities), torch.from_numpy(boxes),
                                    (height, width), threshold=0.5).numpy()
    pasted = paste_masks(probabilities, boxes, (height, width))
    assert pasted.shape == expected.shape and pasted.dtype == bool
    assert (pasted != expected).sum() <= 2, "only float rounding at the threshold may differ"
    assert expected.any(axis=(1, 2)).sum() > count // 2


_BLOCKED_RUN = """
import importlib.abc, json, sys

class Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in ("detectron2", "torch", "torchvision"):
            raise ModuleNotFoundError(f"No module named {name!r} (blocked)", name=name)
        return None

sys.meta_path.insert(0, Block())
try:
    import detectron2  # noqa: F401
except ImportError:
    pass
else:
    raise SystemExit("detectron2 imported despite the block")

import numpy
import resbackbones
from resbackbones.deploy.onnx_runner import OnnxDetector

detections = OnnxDetector(sys.argv[1])(sys.argv[2])
numpy.savez(sys.argv[3], boxes=detections.boxes, scores=detections.scores,
            classes=detections.classes, masks=detections.masks)
print(json.dumps({"modules": sorted(m for m in sys.modules if m.split(".")[0] in
                                    ("torch", "detectron2", "torchvision")),
                  "labels": detections.labels}))
"""


def test_runner_without_detectron2_and_torch_equals_the_eager_model(exported, tmp_path):
    folder, opts = exported
    rgb = other_image()
    Image.fromarray(rgb).save(tmp_path / "image.png")
    result = subprocess.run(
        [sys.executable, "-c", _BLOCKED_RUN, str(folder), str(tmp_path / "image.png"),
         str(tmp_path / "out.npz")], capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report["modules"] == []
    assert set(report["labels"]) <= {"class_0", "class_1", "class_2"}
    loaded = np.load(tmp_path / "out.npz")
    runner = {name: loaded[name] for name in ("boxes", "scores", "classes", "masks")}
    assert_same_detections(eager_detections(MASK_RCNN, opts, rgb), runner,
                           large_mask_iou=0.95, small_mask_iou=0.9)


def test_runner_refuses_a_model_that_does_not_match_its_meta_file(exported, tmp_path):
    folder, _ = exported
    copy = tmp_path / "copy"
    shutil.copytree(folder, copy)
    OnnxDetector(str(copy))  # the untouched copy loads

    with open(copy / "model.onnx", "ab") as model_file:  # another model file in its place
        model_file.write(b"\0")
    with pytest.raises(ModelMismatchError, match="come from different exports"):
        OnnxDetector(str(copy))
    shutil.copy(folder / "model.onnx", copy / "model.onnx")

    meta = json.loads((copy / META_FILE).read_text())
    meta["class_names"] = meta["class_names"][:2]
    (copy / META_FILE).write_text(json.dumps(meta))
    with pytest.raises(ModelMismatchError, match="2 class names for a model with 3 classes"):
        OnnxDetector(str(copy))
    shutil.copy(folder / META_FILE, copy / META_FILE)

    with open(copy / "config.yaml", "a") as config:
        config.write("# edited\n")
    with pytest.raises(ModelMismatchError, match="not the config"):
        OnnxDetector(str(copy))
    with pytest.raises(FileNotFoundError, match="tools/export_model.py"):
        OnnxDetector(str(tmp_path))


def test_demo_cli_runs_the_onnx_export(exported, tmp_path):
    """``tools/demo.py --onnx`` as a user runs it (a subprocess)."""
    import subprocess
    import sys

    folder, _ = exported
    images = tmp_path / "images"
    images.mkdir()
    Image.fromarray(other_image()).save(images / "shapes.png")
    (images / "notes.txt").write_text("not an image")
    tool = [sys.executable, str(REPO / "tools" / "demo.py")]
    run = subprocess.run(tool + ["--onnx", str(folder), "--input", str(images), "--output",
                                 str(tmp_path / "out"), "--confidence-threshold", "0.3"],
                         capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-2000:]
    drawing = np.asarray(Image.open(tmp_path / "out" / "shapes.png"))
    assert drawing.shape == other_image().shape and not np.array_equal(drawing, other_image())
    records = json.loads((tmp_path / "out" / "shapes.json").read_text())
    # resbackbones.results_format's records (tests/test_results_in_input_pixels.py compares
    # them with DefaultPredictor's); masks as RLE in the image's pixels.
    assert records and all(r["score"] >= 0.3 and r["image_id"] == "shapes"
                           and r["class_name"] in {"class_0", "class_1", "class_2"}
                           and r["segmentation"]["size"] == list(other_image().shape[:2])
                           for r in records)
    missing = subprocess.run(tool + ["--input", str(images), "--output", str(tmp_path / "out")],
                             capture_output=True, text=True, timeout=600)
    assert missing.returncode == 2 and "--config-file" in missing.stderr
