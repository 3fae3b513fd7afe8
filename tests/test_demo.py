"""The demo: predictor vs Detectron2's DefaultPredictor, results, the page logic, both CLIs, the
served page through gradio_client, and a real browser (Chromium driven by Playwright).

The model is a tiny Mask R-CNN (ResNet-18 FPN, 128 px test size) with random weights whose class
logits are damped, so that scores spread over (0, 1) and a 1.0 threshold leaves nothing.
"""
import contextlib
import io
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pycocotools.mask as mask_util
import pytest
import torch
from detectron2.engine import DefaultPredictor
from detectron2.modeling import build_model
from PIL import Image

from resbackbones.compat import detectron2_config_file
from resbackbones.demo import (
    COCO_MASK_RCNN_R50_FPN_3X,
    TABLE_HEADERS,
    DemoPredictor,
    DetectionDemo,
    coco_results,
    detection_rows,
    draw_detections,
    filter_instances,
    make_example_images,
    build_inference_config,
)

REPO = Path(__file__).resolve().parents[1]
ARTIFACTS = REPO / "test-artifacts"
CONFIG_FILE = detectron2_config_file("COCO-InstanceSegmentation/mask_rcnn_R_50_FPN_1x.yaml")
TINY_OPTS = [
    "MODEL.DEVICE", "cpu",
    "MODEL.RESNETS.DEPTH", "18", "MODEL.RESNETS.RES2_OUT_CHANNELS", "64",
    "MODEL.FPN.OUT_CHANNELS", "64", "MODEL.ROI_BOX_HEAD.FC_DIM", "128",
    "MODEL.ROI_MASK_HEAD.CONV_DIM", "64", "MODEL.RPN.POST_NMS_TOPK_TEST", "200",
    "INPUT.MIN_SIZE_TEST", "128", "INPUT.MAX_SIZE_TEST", "192", "TEST.DETECTIONS_PER_IMAGE", "12",
]


def _shapes(seed: int = 0, size=(96, 128)) -> np.ndarray:
    """A small RGB image with a few filled rectangles (smaller than the test size)."""
    rng = np.random.default_rng(seed)
    image = np.full((*size, 3), 200, dtype=np.uint8)
    for _ in range(4):
        y, x = rng.integers(0, size[0] - 20), rng.integers(0, size[1] - 20)
        image[y:y + 20, x:x + 20] = rng.integers(0, 255, 3)
    return image


def _png(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG")
    return buffer.getvalue()


@pytest.fixture(scope="module")
def model_files(tmp_path_factory):
    """(config file, opts with MODEL.WEIGHTS) of a tiny random Mask R-CNN saved to disk."""
    cfg = build_inference_config(CONFIG_FILE, TINY_OPTS)
    torch.manual_seed(0)
    model = build_model(cfg)
    with torch.no_grad():  # damped class logits: scores spread below 1.0, several classes
        cls_score = model.roi_heads.box_predictor.cls_score
        cls_score.weight.normal_(0, 0.01)
        cls_score.bias.zero_()
        cls_score.bias[[0, 2, -1]] = torch.tensor([4.0, 3.5, 4.0])
    weights = tmp_path_factory.mktemp("model") / "model_final.pth"
    torch.save({"model": model.state_dict()}, weights)
    return CONFIG_FILE, TINY_OPTS + ["MODEL.WEIGHTS", str(weights)]


@pytest.fixture(scope="module")
def predictor(model_files):
    config_file, opts = model_files
    return DemoPredictor(build_inference_config(config_file, opts), name="tiny")


@pytest.fixture(scope="module")
def demo(predictor, tmp_path_factory):
    return DetectionDemo({"tiny": predictor}, output_dir=str(tmp_path_factory.mktemp("json")))


def test_predictions_match_default_predictor(predictor, model_files):
    image = _shapes()
    reference = DefaultPredictor(predictor.cfg)(image[:, :, ::-1].copy())["instances"].to("cpu")
    ours = predictor(_png(image)).instances
    assert len(ours) == len(reference) > 0
    torch.testing.assert_close(ours.pred_boxes.tensor, reference.pred_boxes.tensor)
    torch.testing.assert_close(ours.scores, reference.scores)
    assert torch.equal(ours.pred_classes, reference.pred_classes)
    assert torch.equal(ours.pred_masks, reference.pred_masks)
    assert ours.image_size == image.shape[:2]


def test_resbackbone_config_matches_default_predictor(tmp_path):
    """Our own backbone (configs/quick_schedules), RGB input format, class names saved by
    training next to the weights (the synthetic dataset is not registered in this process)."""
    config_file = str(REPO / "configs" / "quick_schedules"
                      / "mask_rcnn_R_18_FPN_synthetic_instant_test.yaml")
    opts = ["MODEL.DEVICE", "cpu", "MODEL.ROI_HEADS.SCORE_THRESH_TEST", "0.0"]
    torch.manual_seed(0)
    random_model = DemoPredictor(build_inference_config(config_file, opts), name="random").model
    weights = tmp_path / "model.pth"
    torch.save({"model": random_model.state_dict()}, weights)
    (tmp_path / "class_names.json").write_text(
        json.dumps({"thing_classes": ["circle", "triangle", "rectangle"]}))
    cfg = build_inference_config(config_file, opts + ["MODEL.WEIGHTS", str(weights)])
    assert cfg.INPUT.FORMAT == "RGB"
    predictor = DemoPredictor(cfg, name="resbackbone")
    assert predictor.class_names == ["circle", "triangle", "rectangle"]
    image = _shapes(size=(200, 260))
    reference = DefaultPredictor(cfg)(image[:, :, ::-1].copy())["instances"].to("cpu")
    ours = predictor(_png(image)).instances
    assert len(ours) == len(reference) > 0
    torch.testing.assert_close(ours.pred_boxes.tensor, reference.pred_boxes.tensor)
    torch.testing.assert_close(ours.scores, reference.scores)


def test_prediction_timings_and_class_names(predictor):
    prediction = predictor(_png(_shapes()))
    assert set(prediction.timings) == {"preprocess", "model"}
    assert all(t > 0 for t in prediction.timings.values())
    # coco_2017_val is a builtin Detectron2 dataset: its metadata names the 80 classes.
    assert predictor.class_names[0] == "person" and len(predictor.class_names) == 80
    scores = prediction.instances.scores
    assert 0.0 < float(scores.min()) and float(scores.max()) < 1.0


def test_class_names_fallbacks(model_files):
    config_file, opts = model_files
    cfg = build_inference_config(config_file, opts + ["DATASETS.TEST", "('not_registered',)"])
    assert DemoPredictor(cfg).class_names[:2] == ["class_0", "class_1"]  # as exports name them
    names = [f"thing{i}" for i in range(80)]
    assert DemoPredictor(cfg, class_names=names).class_names == names


def test_bad_weights_fail_clearly(model_files, tmp_path):
    config_file, opts = model_files
    with pytest.raises(FileNotFoundError, match="make quickstart"):
        DemoPredictor(build_inference_config(config_file, opts + ["MODEL.WEIGHTS", str(tmp_path / "no.pth")]))
    tiny = tmp_path / "tiny.pth"
    tiny.write_bytes(b"version https://git-lfs.github.com/spec/v1\n")
    with pytest.raises(ValueError, match="not a checkpoint"):
        DemoPredictor(build_inference_config(config_file, opts + ["MODEL.WEIGHTS", str(tiny)]))
    wrong = tmp_path / "wrong.pth"
    torch.save({"model": {"backbone.bottom_up.stem.conv1.weight": torch.zeros(1)},
                "padding": torch.zeros(1000)}, wrong)
    with pytest.raises(ValueError, match="does not fit the model"):
        DemoPredictor(build_inference_config(config_file, opts + ["MODEL.WEIGHTS", str(wrong)]))


def test_drawing_results_and_json(predictor, tmp_path):
    prediction = predictor(_png(_shapes()))
    instances = prediction.instances
    drawn = draw_detections(prediction.image, instances, predictor.class_names)
    assert drawn.shape == prediction.image.shape and drawn.dtype == np.uint8
    assert not np.array_equal(drawn, prediction.image)
    for parts in (["boxes"], ["masks"], ["labels"], []):
        assert draw_detections(prediction.image, instances, predictor.class_names,
                               parts).shape == drawn.shape
    assert np.array_equal(draw_detections(prediction.image, instances[:0],
                                          predictor.class_names), prediction.image)

    threshold = float(instances.scores.median())
    kept = filter_instances(instances, threshold)
    assert len(kept) == int((instances.scores >= threshold).sum()) and len(kept) < len(instances)
    first_class = int(instances.pred_classes[0])
    only = filter_instances(instances, 0.0, [first_class])
    assert len(only) and set(only.pred_classes.tolist()) == {first_class}
    assert len(filter_instances(instances, 0.0, [])) == len(instances)

    rows = detection_rows(instances, predictor.class_names)
    assert len(rows) == len(instances) and len(rows[0]) == len(TABLE_HEADERS)
    assert rows[0][0] == predictor.class_names[first_class]

    results = coco_results(instances, image_id=7)
    from pycocotools.coco import COCO

    height, width = prediction.image.shape[:2]
    gt = COCO()
    gt.dataset = {"images": [{"id": 7, "height": height, "width": width}],
                  "categories": [{"id": i} for i in range(80)], "annotations": []}
    gt.createIndex()
    loaded = gt.loadRes(json.loads(json.dumps(results)))  # what a user's evaluation does
    assert len(loaded.getAnnIds()) == len(instances)
    x0, y0, x1, y1 = instances.pred_boxes.tensor[0].tolist()
    np.testing.assert_allclose(results[0]["bbox"], [x0, y0, x1 - x0, y1 - y0], atol=0.01)
    assert np.array_equal(mask_util.decode(results[0]["segmentation"]),
                          instances.pred_masks[0].numpy().astype(np.uint8))


def _instances(boxes, scores, classes, size=(100, 100)):
    from detectron2.structures import Boxes, Instances

    instances = Instances(size)
    instances.pred_boxes = Boxes(torch.tensor(boxes, dtype=torch.float32))
    instances.scores = torch.tensor(scores)
    instances.pred_classes = torch.tensor(classes)
    return instances


def test_one_label_per_object_drops_cross_class_duplicates():
    # 0 and 1: one object seen as two classes (box IoU 0.82); 2: a neighbouring object of
    # class 0 (IoU 0.33 with 0); 3: far away, another class.
    instances = _instances(
        [[10, 10, 50, 50], [12, 12, 52, 52], [30, 10, 70, 50], [80, 80, 95, 95]],
        [0.9, 0.8, 0.7, 0.6], [0, 1, 0, 2])
    kept = filter_instances(instances, 0.0, cross_class_iou=0.7)
    assert kept.scores.tolist() == pytest.approx([0.9, 0.7, 0.6])  # score order kept
    assert kept.pred_classes.tolist() == [0, 0, 2]
    assert len(filter_instances(instances, 0.0)) == 4  # off by default, as Detectron2
    assert len(filter_instances(instances, 0.0, cross_class_iou=0.9)) == 4  # IoU 0.82 < 0.9
    # the class filter applies first: hiding class 0 brings class 1 back
    assert filter_instances(instances, 0.0, [1, 2], 0.7).pred_classes.tolist() == [1, 2]
    with pytest.raises(ValueError, match=r"cross_class_iou must be in \(0, 1\]"):
        filter_instances(instances, 0.0, cross_class_iou=1.5)


def test_demo_one_label_option(demo, predictor):
    prediction = predictor(_png(_shapes()))
    duplicated = _instances([[10, 10, 50, 50], [12, 12, 52, 52]], [0.9, 0.8], [0, 1],
                            prediction.image.shape[:2])
    duplicated.pred_masks = torch.zeros((2,) + prediction.image.shape[:2], dtype=torch.bool)
    prediction.instances = duplicated
    one = demo.render(prediction, score_threshold=0.0)
    assert len(one.rows) == 1 and one.rows[0][0] == predictor.class_names[0]
    assert "1 shown of 2" in one.message and "1 hidden as another class" in one.message
    both = demo.render(prediction, score_threshold=0.0, one_label=False)
    assert len(both.rows) == 2 and "hidden" not in both.message
    assert len(json.loads(Path(one.json_path).read_text())) == 1  # the JSON lists what is shown


def test_demo_bad_inputs_give_messages_and_recover(demo, tmp_path):
    good = _png(_shapes())
    result = demo.detect(good, score_threshold=0.0)
    assert not result.error and result.image.shape == (96, 128, 3) and result.rows
    assert "**Model:** tiny" in result.message and "**Device:** cpu" in result.message
    assert re.search(r"model \d+ ms, drawing \d+ ms", result.message)
    first = json.load(open(result.json_path))[0]
    assert first["score"] == pytest.approx(result.rows[0][1], abs=1e-3)

    buffer = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64, 3), np.uint8)).save(
        buffer, format="PNG")
    bad_inputs = {
        "non-image": b"<html>not an image</html>",
        "truncated": buffer.getvalue()[: len(buffer.getvalue()) // 2],
    }
    for name, data in bad_inputs.items():
        result = demo.detect(data)
        assert result.error and result.image is None and result.json_path is None, name
        assert "truncated" in result.message or "not an image" in result.message
        assert "/" not in result.message  # no server path

    gray = Image.fromarray(_shapes()[:, :, 0])
    rgba = Image.fromarray(_shapes()).convert("RGBA")
    wide = Image.fromarray(_shapes()[:, :, 0].astype(np.uint16) * 257)
    palette = Image.fromarray(_shapes()).convert("P")
    large = Image.fromarray(_shapes()).resize((2000, 1500))
    for image in (gray, rgba, wide, palette, large):
        buffer = io.BytesIO()
        image.save(buffer, format="PNG")
        result = demo.detect(buffer.getvalue(), score_threshold=0.0)
        assert not result.error, (image.mode, result.message)
        expected = (96, 128, 3) if image.size[0] < 1000 else (128, 171, 3)
        assert result.image.shape == expected
    assert "downscaled from 2000x1500 to 171x128" in result.message

    empty = demo.detect(good, score_threshold=1.0)
    assert not empty.error and empty.rows == [] and "No detections" in empty.message
    assert json.load(open(empty.json_path)) == []
    assert demo.detect(None).image is None
    unknown = demo.detect(good, classes=["unicorn"])
    assert unknown.error and "unicorn" in unknown.message
    assert not demo.detect(good, score_threshold=0.0).error  # still serving normally


def test_example_images_decode(demo, tmp_path):
    paths = make_example_images(str(tmp_path), dataset_name="not_registered")
    assert len(paths) == 4
    modes = {Image.open(p).mode for p in paths}
    assert {"RGB", "L", "RGBA"} <= modes
    result = demo.detect(paths[-1], score_threshold=0.0)
    assert not result.error and result.image.shape[2] == 3


@pytest.mark.slow
def test_cli_demo_on_a_folder(model_files, tmp_path):
    from resbackbones.demo.batch import main as demo_cli  # tools/demo.py's command line

    config_file, opts = model_files
    inputs = tmp_path / "images"
    inputs.mkdir()
    for i in range(3):
        Image.fromarray(_shapes(i)).save(inputs / f"{i:06d}.png")
    output = tmp_path / "out"
    code = demo_cli(["--config-file", config_file, "--input", str(inputs),
                                      "--output", str(output), "--confidence-threshold", "0.0",
                                      "--opts", *opts])
    assert code == 0
    assert sorted(p.name for p in output.iterdir()) == [
        "000000.json", "000000.png", "000001.json", "000001.png", "000002.json", "000002.png"]
    assert Image.open(output / "000001.png").size == (128, 96)
    detections = json.load(open(output / "000002.json"))
    assert detections and {d["image_id"] for d in detections} == {2}

    # --one-label-per-object: with 100 detections kept, the random model repeats objects
    # across classes; the flag drops exactly what class-agnostic NMS at IoU 0.7 drops.
    def boxes_of(folder, flags):
        assert demo_cli(["--config-file", config_file, "--input", str(inputs / "000002.png"),
                         "--output", str(folder), "--confidence-threshold", "0.0", *flags,
                         "--opts", *opts, "TEST.DETECTIONS_PER_IMAGE", "100"]) == 0
        found = json.load(open(folder / "000002.json"))
        boxes = torch.tensor([d["bbox"] for d in found])
        return torch.cat([boxes[:, :2], boxes[:, :2] + boxes[:, 2:]], dim=1), found

    from torchvision.ops import nms

    all_boxes, every = boxes_of(tmp_path / "all", [])
    one_boxes, _ = boxes_of(tmp_path / "one_label", ["--one-label-per-object"])
    expected = nms(all_boxes, torch.tensor([d["score"] for d in every]), 0.7).sort().values
    assert 0 < len(one_boxes) < len(all_boxes)
    torch.testing.assert_close(one_boxes, all_boxes[expected])


def test_video_input(predictor, tmp_path):
    import cv2

    from resbackbones.demo import run_on_inputs

    video = tmp_path / "clip.avi"
    writer = cv2.VideoWriter(str(video), cv2.VideoWriter_fourcc(*"MJPG"), 5, (128, 96))
    for i in range(2):
        writer.write(np.ascontiguousarray(_shapes(i)[:, :, ::-1]))
    writer.release()
    summary = run_on_inputs(predictor, [str(video)], str(tmp_path / "out"), 0.0)
    assert summary.failed == []
    assert sorted(os.path.basename(p) for p in summary.written) == ["clip.json", "clip.mp4"]
    capture = cv2.VideoCapture(str(tmp_path / "out" / "clip.mp4"))
    assert int(capture.get(cv2.CAP_PROP_FRAME_COUNT)) == 2
    capture.release()
    frames = {d["image_id"] for d in json.load(open(tmp_path / "out" / "clip.json"))}
    assert frames == {0, 1}
    (tmp_path / "junk.mp4").write_bytes(b"not a video")
    summary = run_on_inputs(predictor, [str(tmp_path / "junk.mp4")], str(tmp_path / "out"))
    assert summary.written == [] and "cannot open" in summary.failed[0]


def test_gradio_demo_model_arguments():
    from resbackbones.demo import serve as tool  # tools/gradio_demo.py's command line
    args = tool.get_parser().parse_args([
        "--model", "a=x.yaml:a.pth", "--model", "b=y.yaml", "--opts", "MODEL.DEVICE", "cpu"])
    specs = tool.parse_model_specs(args)
    assert list(specs) == ["a", "b"]
    assert specs["a"] == ("x.yaml", ["MODEL.DEVICE", "cpu", "MODEL.WEIGHTS", "a.pth"])
    assert specs["b"] == ("y.yaml", ["MODEL.DEVICE", "cpu"])
    for bad in (["--model", "noequals"], ["--model", "a=x.yaml", "--model", "a=y.yaml"], []):
        with pytest.raises(SystemExit):
            tool.parse_model_specs(tool.get_parser().parse_args(bad))
    assert tool.quickstart_args("q") == ["--config-file", "q/config.yaml", "--opts",
                                         "MODEL.WEIGHTS", "q/model_final.pth"]


@contextlib.contextmanager
def _refusing_url():
    """A URL on 127.0.0.1 that refuses connections for as long as the block runs: a socket bound
    to a port the system picks and never listening (the kernel answers every connection with a
    reset), held so that no other process can take the port meanwhile."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        yield f"http://127.0.0.1:{sock.getsockname()[1]}/"


# The demo chooses its own port (no --port: Gradio binds the first free one from 7860 and moves
# on when another process has it) and prints its URL, which the tests read.
URL_LINE = r"running at (http://127\.0\.0\.1:\d+/?)"


SERVER_PROCESS = {}


@pytest.fixture(scope="module")
def server(model_files):
    """tools/gradio_demo.py serving the tiny model on 127.0.0.1; yields its printed URL."""
    config_file, opts = model_files
    log = tempfile.NamedTemporaryFile("w+", suffix=".log", delete=False)
    # The COCO model in the dropdown: an empty cache and a model-zoo URL that refuses
    # connections, so choosing it shows the offline message and never reaches the internet.
    refusing = contextlib.ExitStack()
    offline = {"FVCORE_CACHE": tempfile.mkdtemp(prefix="resbackbones-test-cache-"),
               "RESBACKBONES_MODEL_ZOO_URL": refusing.enter_context(_refusing_url())}
    process = subprocess.Popen(
        [sys.executable, str(REPO / "tools" / "gradio_demo.py"), "--config-file", config_file,
         "--confidence-threshold", "0.0", "--opts", *opts],
        stdout=log, stderr=subprocess.STDOUT, cwd=str(REPO),
        env=dict(os.environ, GRADIO_ANALYTICS_ENABLED="False", **offline))
    url = None
    deadline = time.time() + 180
    while time.time() < deadline and process.poll() is None:
        match = re.search(URL_LINE, Path(log.name).read_text())
        if match:
            url = match.group(1)
            break
        time.sleep(0.5)
    if url is None:
        process.kill()
        refusing.close()
        pytest.fail(f"gradio_demo.py did not print its URL:\n{Path(log.name).read_text()}")
    SERVER_PROCESS["pid"] = process.pid
    yield url
    process.terminate()
    try:
        process.wait(timeout=20)
    except subprocess.TimeoutExpired:
        process.kill()
    refusing.close()
    os.unlink(log.name)


@pytest.mark.slow
def test_server_answers_gradio_client(server, tmp_path):
    from gradio_client import Client, handle_file

    client = Client(server, verbose=False)

    def call(path, threshold=0.0):
        return client.predict(handle_file(str(path)), "model_zoo_unused", threshold, [],
                              ["boxes", "masks", "labels"], api_name="/detect")

    good = tmp_path / "good.png"
    Image.fromarray(_shapes()).save(good)
    # The model dropdown is hidden with one model; its value comes from the client here and an
    # unknown name must be reported, not crash the server.
    image, table, json_path, message = call(good)
    assert image is None and "Unknown model" in message

    def detect(path, threshold=0.0):
        return client.predict(handle_file(str(path)), "mask_rcnn_R_50_FPN_1x", threshold, [],
                              ["boxes", "masks", "labels"], api_name="/detect")

    image, table, json_path, message = detect(good)
    assert Image.open(image).size == (128, 96)
    assert table["headers"] == TABLE_HEADERS and len(table["data"]) > 0
    assert len(json.load(open(json_path))) == len(table["data"])
    assert "**Device:** cpu" in message

    bad = {"non-image.png": b"GIF89a but not really", "truncated.png": _png(
        np.random.default_rng(1).integers(0, 255, (64, 64, 3), np.uint8))[:900]}
    for name, data in bad.items():
        (tmp_path / name).write_bytes(data)
        image, table, json_path, message = detect(tmp_path / name)
        assert image is None and json_path is None and name in message, message
    for mode in ("L", "RGBA", "P", "I;16"):
        path = tmp_path / f"{mode.replace(';', '')}.png"
        array = _shapes()[:, :, 0] if mode in ("L", "I;16") else _shapes()
        source = Image.fromarray(array.astype(np.uint16) * 257 if mode == "I;16" else array)
        (source if mode in ("L", "I;16") else source.convert(mode)).save(path)
        image, table, _, message = detect(path)
        assert image is not None and Image.open(image).size == (128, 96), (mode, message)
    large = tmp_path / "large.jpg"
    Image.fromarray(_shapes()).resize((4000, 3000)).save(large)
    image, _, _, message = detect(large)
    assert Image.open(image).size == (171, 128) and "downscaled from 4000x3000" in message
    image, table, json_path, message = detect(good, threshold=1.0)
    assert table["data"] == [] and "No detections" in message
    image, table, _, _ = detect(good)  # the server still answers normally
    assert image is not None and table["data"]


@pytest.mark.slow
def test_server_exposes_no_server_files(server, model_files):
    import urllib.error
    import urllib.request

    weights = model_files[1][-1]
    for path in (str(REPO / "setup.cfg"), weights, "/etc/passwd"):
        with pytest.raises(urllib.error.HTTPError) as info:
            urllib.request.urlopen(f"{server.rstrip('/')}/gradio_api/file={path}", timeout=10)
        assert info.value.code in (403, 404), path


def _chromium() -> str:
    for candidate in ("/usr/bin/chromium", shutil.which("chromium") or ""):
        if candidate and os.path.exists(candidate):
            return candidate
    pytest.fail("Chromium not found at /usr/bin/chromium: run `make browser` (installs Debian's "
                "chromium; CI runs it before the tests).")


@pytest.mark.slow
@pytest.mark.browser
def test_browser_upload_shows_result(server, tmp_path):
    executable = _chromium()
    from playwright.sync_api import expect, sync_playwright

    image_path = tmp_path / "shapes.png"
    Image.fromarray(_shapes(3, size=(240, 320))).save(image_path)
    ARTIFACTS.mkdir(exist_ok=True)
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch_persistent_context(
            str(tmp_path / "profile"), executable_path=executable, headless=True,
            args=["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync", "--no-first-run"],
            viewport={"width": 1400, "height": 1000})
        try:
            page = browser.new_page()
            page.goto(server, wait_until="domcontentloaded", timeout=60_000)
            expect(page.locator("#detect")).to_be_visible(timeout=30_000)
            page.locator("#input-image input[type=file]").set_input_files(str(image_path))
            result = page.locator("#result-image img")
            expect(result).to_be_visible(timeout=120_000)
            expect(page.locator("#status")).to_contain_text("Device:", timeout=30_000)
            expect(page.locator("#table")).to_contain_text("score")
            cells = page.locator("#table").get_by_role("gridcell")
            expect(cells.first).to_be_visible(timeout=30_000)
            assert cells.count() >= len(TABLE_HEADERS)
            size = result.evaluate("img => [img.naturalWidth, img.naturalHeight]")
            assert size == [171, 128]  # 320x240 is downscaled to the 128 px test size
            expect(page.locator("#json")).to_contain_text(".json")
            screenshot = ARTIFACTS / "demo_page.png"
            page.screenshot(path=str(screenshot), full_page=True)
            assert screenshot.stat().st_size > 10_000
            # Detectron2's COCO model while offline: the page says where to put the file, and
            # the first model still answers when chosen again.
            page.locator("#model input").click()
            page.get_by_role("option", name=COCO_MASK_RCNN_R50_FPN_3X.name).click()
            status = page.locator("#status")
            expect(status).to_contain_text("is not available", timeout=60_000)
            expect(status).to_contain_text("model_final_f10217.pkl")
            expect(status).to_contain_text("Offline?")
            expect(result).to_have_count(0, timeout=30_000)  # the other model's result cleared
            page.screenshot(path=str(ARTIFACTS / "demo_page_offline_model.png"))
            page.locator("#model input").click()
            page.get_by_role("option", name="mask_rcnn_R_50_FPN_1x").click()
            expect(status).to_contain_text("Device:", timeout=60_000)
        finally:
            browser.close()


@pytest.mark.slow
def test_server_under_load_and_malformed_flood(server, tmp_path):
    """8 concurrent clients for 30 s, half of them sending malformed uploads: every request is
    answered (or queued and then answered), server memory stays bounded, and it still works."""
    import threading

    import httpx
    import psutil
    from gradio_client import Client, handle_file

    good = tmp_path / "good.png"
    Image.fromarray(_shapes()).save(good)
    rng = np.random.default_rng(7)
    malformed = []
    for index in range(6):
        path = tmp_path / f"malformed{index}.png"
        data = _png(_shapes(index)) if index % 2 else rng.bytes(int(rng.integers(1, 5000)))
        path.write_bytes(data[: len(data) // (index + 1)] if index % 2 else data)
        malformed.append(path)
    server_process = psutil.Process(SERVER_PROCESS["pid"])
    memory = {"start": server_process.memory_info().rss, "peak": 0}
    outcomes = {"answered": 0, "messages": 0, "failed": [], "retried": 0}
    lock = threading.Lock()
    stop_at = time.time() + 30

    def request(client, path):
        """One call; a dropped keep-alive connection is retried once, as HTTP clients do (the
        server closed an idle connection while a queued client reused it)."""
        for attempt in range(2):
            try:
                return client.predict(handle_file(str(path)), "mask_rcnn_R_50_FPN_1x", 0.0, [],
                                      ["boxes", "masks", "labels"], api_name="/detect")
            except httpx.TransportError:
                with lock:
                    outcomes["retried"] += 1
                if attempt:
                    raise

    def client_loop(index: int) -> None:
        client = Client(server, verbose=False)
        turn = 0
        while time.time() < stop_at:
            path = malformed[turn % len(malformed)] if index % 2 else good
            turn += 1
            try:
                image, table, _, message = request(client, path)
            except Exception as error:  # a crash or a refused request is what we test for
                with lock:
                    outcomes["failed"].append(f"{path.name}: {error!r}")
                continue
            with lock:
                if image is not None and table["data"]:
                    outcomes["answered"] += 1
                elif image is None and message:
                    outcomes["messages"] += 1
                else:
                    outcomes["failed"].append(f"{path.name}: empty answer {message!r}")

    def watch_memory() -> None:
        while time.time() < stop_at + 5:
            memory["peak"] = max(memory["peak"], server_process.memory_info().rss)
            time.sleep(0.2)

    # Daemon threads: one stuck in a request must fail this test, not keep pytest from exiting.
    threads = [threading.Thread(target=client_loop, args=(i,), name=f"client {i}", daemon=True)
               for i in range(8)]
    threads.append(threading.Thread(target=watch_memory, name="memory watch", daemon=True))
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=180)
    stuck = [thread.name for thread in threads if thread.is_alive()]
    assert not stuck, f"still running 180 s after the 30 s load ended (a request hung): {stuck}"
    print(f"load test: {outcomes['answered']} detections answered, {outcomes['messages']} "
          f"malformed uploads answered with a message, {len(outcomes['failed'])} failed, "
          f"{outcomes['retried']} retried after a dropped connection; "
          f"server RSS {memory['start'] / 2**20:.0f} MiB -> peak {memory['peak'] / 2**20:.0f} MiB")
    assert outcomes["failed"] == []
    assert outcomes["retried"] <= 0.05 * (outcomes["answered"] + outcomes["messages"])
    assert outcomes["answered"] >= 8 and outcomes["messages"] >= 8
    assert memory["peak"] - memory["start"] < 1.5 * 2**30
    image, table, _, _ = Client(server, verbose=False).predict(
        handle_file(str(good)), "mask_rcnn_R_50_FPN_1x", 0.0, [], ["boxes"], api_name="/detect")
    assert image is not None and table["data"]


# `make screenshot` sets this to a trained model's output folder (the quickstart's) and the
# synthetic set: the README picture is then taken from a real run, never drawn by hand.
README_MODEL = os.environ.get("RESBACKBONES_README_MODEL", "")
README_IMAGES = os.environ.get("RESBACKBONES_README_IMAGES", "datasets/synthetic_shapes/val")
# Only `make screenshot` (which sets this to 1) replaces docs/demo.png in the source tree; any
# other run writes the picture into the test's temporary folder.
UPDATE_README_SCREENSHOT = os.environ.get("RESBACKBONES_UPDATE_README_SCREENSHOT") == "1"


@pytest.mark.slow
@pytest.mark.browser
@pytest.mark.skipif(not README_MODEL, reason="`make screenshot` regenerates docs/demo.png from "
                    "a trained model (RESBACKBONES_README_MODEL)")
def test_browser_readme_screenshot(tmp_path):
    """docs/demo.png: the web demo serving the trained quickstart model on a validation image,
    with the detections it really makes (at the README's threshold, 0.5)."""
    executable = _chromium()
    from playwright.sync_api import expect, sync_playwright

    model = Path(README_MODEL)
    images = sorted(Path(README_IMAGES).glob("*.png")) + sorted(Path(README_IMAGES).glob("*.jpg"))
    assert (model / "config.yaml").is_file() and (model / "model_final.pth").is_file(), model
    assert images, f"no images in {README_IMAGES}"
    log = tmp_path / "server.log"
    refusing = contextlib.ExitStack()
    offline = {"FVCORE_CACHE": str(tmp_path / "cache"),
               "RESBACKBONES_MODEL_ZOO_URL": refusing.enter_context(_refusing_url())}
    with open(log, "w") as log_file:
        process = subprocess.Popen(
            [sys.executable, str(REPO / "tools" / "gradio_demo.py"), "--config-file",
             str(model / "config.yaml"), "--confidence-threshold", "0.5",
             "--opts", "MODEL.WEIGHTS", str(model / "model_final.pth"), "MODEL.DEVICE", "cpu"],
            stdout=log_file, stderr=subprocess.STDOUT, cwd=str(REPO),
            env=dict(os.environ, GRADIO_ANALYTICS_ENABLED="False", **offline))
    try:
        deadline, url = time.time() + 180, None
        while time.time() < deadline and process.poll() is None and url is None:
            match = re.search(URL_LINE, log.read_text())
            url = match.group(1) if match else time.sleep(0.5)
        assert url, log.read_text()
        with sync_playwright() as playwright:
            browser = playwright.chromium.launch_persistent_context(
                str(tmp_path / "profile"), executable_path=executable, headless=True,
                args=["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
                      "--disable-background-networking", "--disable-component-update",
                      "--disable-sync"],
                viewport={"width": 1400, "height": 1000})
            try:
                page = browser.new_page()
                page.goto(url, wait_until="domcontentloaded", timeout=60_000)
                page.locator("#input-image input[type=file]").set_input_files(str(images[0]))
                expect(page.locator("#result-image img")).to_be_visible(timeout=120_000)
                cells = page.locator("#table").get_by_role("gridcell")
                expect(cells.first).to_be_visible(timeout=30_000)
                target = (REPO / "docs" / "demo.png" if UPDATE_README_SCREENSHOT
                          else tmp_path / "demo.png")
                page.screenshot(path=str(target), full_page=True)
                assert target.stat().st_size > 10_000
            finally:
                browser.close()
    finally:
        process.terminate()
        process.wait(timeout=30)
        refusing.close()
