"""The demo's example gallery: real photos from scikit-image (the ``demo`` extra) when it is
installed, the generated shapes alone when it is not."""
import logging
import os
import sys

import numpy as np
import pytest
from PIL import Image

from resbackbones.demo import DemoPredictor, DetectionDemo, build_app, build_inference_config
from resbackbones.demo.photos import PHOTO_NAMES, make_photo_examples

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIG = os.path.join(REPO, "configs", "quick_schedules",
                      "mask_rcnn_R_18_FPN_synthetic_instant_test.yaml")


@pytest.fixture
def without_skimage(monkeypatch):
    """scikit-image made unimportable, as on an install without the ``demo`` extra."""
    for name in [m for m in sys.modules if m == "skimage" or m.startswith("skimage.")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "skimage", None)  # None: `import skimage` raises


def test_photos_are_scikit_images_bundled_data(tmp_path):
    data = pytest.importorskip("skimage.data", reason="the demo extra (scikit-image)")
    paths = make_photo_examples(str(tmp_path))
    assert [os.path.basename(p) for p in paths] == list(PHOTO_NAMES)
    references = {"astronaut.jpg": data.astronaut(), "coffee.jpg": data.coffee(),
                  "chelsea.jpg": data.chelsea(), "motorcycle_left.jpg":
                  data.stereo_motorcycle()[0], "rocket.jpg": data.rocket()}
    for path in paths:
        photo = np.asarray(Image.open(path).convert("RGB"))
        reference = references[os.path.basename(path)]
        assert photo.shape == reference.shape
        # JPEG quality 92: small differences only (a different photo would differ by ~60).
        assert np.abs(photo.astype(int) - reference).mean() < 4, path
    mtimes = [os.path.getmtime(p) for p in paths]
    assert make_photo_examples(str(tmp_path)) == paths  # written once, then reused
    assert [os.path.getmtime(p) for p in paths] == mtimes


def test_no_photos_without_the_extra(tmp_path, without_skimage, caplog):
    with caplog.at_level(logging.INFO, logger="resbackbones.demo.photos"):
        assert make_photo_examples(str(tmp_path)) == []
    assert "pip install 'resbackbones[demo]'" in caplog.text
    assert os.listdir(tmp_path) == []


@pytest.fixture(scope="module")
def demo():
    cfg = build_inference_config(CONFIG, ["MODEL.DEVICE", "cpu", "MODEL.WEIGHTS", ""])
    return DetectionDemo({"random": DemoPredictor(cfg, name="random")})


def _galleries(app):
    config = app.get_config_file()
    return {c["props"]["label"]: len(c["props"]["samples"])
            for c in config["components"] if c.get("type") == "dataset"}


def test_page_shows_photos_and_shapes(demo, tmp_path):
    pytest.importorskip("skimage.data", reason="the demo extra (scikit-image)")
    photos = make_photo_examples(str(tmp_path))
    assert _galleries(build_app(demo, photos=photos)) == {
        "Photos (COCO classes: for the COCO model)": len(PHOTO_NAMES), "Synthetic shapes": 4}


def test_page_falls_back_to_shapes_without_the_extra(demo, without_skimage):
    assert _galleries(build_app(demo)) == {"Examples": 4}
