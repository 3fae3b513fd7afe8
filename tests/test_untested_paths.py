"""Options and warnings that no other test reached, each checked by what the user gets.

The rank weight-disagreement warning, the web demo's ``--max-file-size`` / ``--host`` /
``--no-model-zoo``, ``tools/generate_configs.py --check``, ``convert-weights --prefix`` /
``--allow-partial``, ``validate-dataset --no-decode`` / ``--examples``, and export's ``--opset``
and ``--sample-image``.
"""
import io
import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
QUICK = str(REPO / "configs/quick_schedules/mask_rcnn_R_18_FPN_synthetic_instant_test.yaml")
# The quick config's Mask R-CNN ResNet-18, small enough to build and serve in seconds.
TINY_DEMO = ["MODEL.DEVICE", "cpu", "INPUT.MIN_SIZE_TEST", "96", "INPUT.MAX_SIZE_TEST", "128",
             "MODEL.FPN.OUT_CHANNELS", "64", "MODEL.ROI_BOX_HEAD.FC_DIM", "128",
             "MODEL.ROI_MASK_HEAD.CONV_DIM", "64", "MODEL.RPN.POST_NMS_TOPK_TEST", "100",
             "MODEL.ROI_HEADS.SCORE_THRESH_TEST", "0.0", "TEST.DETECTIONS_PER_IMAGE", "10"]


def _png(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG")
    return buffer.getvalue()


def _shapes(height: int = 96, width: int = 128) -> np.ndarray:
    image = np.full((height, width, 3), 40, np.uint8)
    image[10:50, 15:60] = (220, 60, 60)
    image[40:85, 70:120] = (60, 200, 90)
    return image


# --- the rank weight-disagreement warning (2 real Gloo processes) ---------------------------

def _disagreeing_worker(log_dir: str) -> None:
    import logging

    from detectron2.utils import comm
    from torch import nn

    from resbackbones.engine.distributed import ranks_agree_on_weights

    log = logging.getLogger("detectron2")
    handler = logging.FileHandler(os.path.join(log_dir, f"rank{comm.get_rank()}.log"))
    handler.setFormatter(logging.Formatter("%(levelname)s %(message)s"))
    log.addHandler(handler)
    log.setLevel(logging.INFO)
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 8), nn.BatchNorm1d(8))
    with torch.no_grad():
        model[1].running_mean.add_(comm.get_rank())  # buffers may differ: not compared
        if comm.get_rank() == 1:  # a parameter updated outside DDP on rank 1 only
            model[0].weight[0, 0] += 1e-3
    fingerprints = ranks_agree_on_weights(model)
    handler.close()
    Path(log_dir, f"rank{comm.get_rank()}.json").write_text(
        json.dumps({str(rank): value for rank, value in fingerprints.items()}))


@pytest.mark.slow
def test_rank_weight_disagreement_warning_names_the_rank(tmp_path):
    from resbackbones.engine.distributed import launch

    launch(_disagreeing_worker, 2, args=(str(tmp_path),))
    for rank in (0, 1):  # logged on every rank, naming rank 1 only
        lines = (tmp_path / f"rank{rank}.log").read_text().splitlines()
        assert len(lines) == 1 and lines[0].startswith(
            "WARNING Weights differ from rank 0 on rank(s) [1]: "), lines
    fingerprints = json.loads((tmp_path / "rank0.json").read_text())
    assert fingerprints == json.loads((tmp_path / "rank1.json").read_text())
    assert fingerprints["0"][0] != fingerprints["1"][0]


# --- web demo: --no-model-zoo, --host, --max-file-size ---------------------------------------

@pytest.fixture(scope="module")
def demo_weights(tmp_path_factory) -> str:
    from detectron2.modeling import build_model

    from resbackbones.demo import build_inference_config

    torch.manual_seed(0)
    model = build_model(build_inference_config(QUICK, TINY_DEMO))
    path = tmp_path_factory.mktemp("demo_model") / "model_final.pth"
    torch.save({"model": model.state_dict()}, path)
    return str(path)


def _serve_in_process(monkeypatch, *flags: str, weights: str) -> dict:
    """Run tools/gradio_demo.py's main() up to serving; return what it would serve."""
    from resbackbones.demo import serve

    seen = {}

    def build_app(demo, score_threshold):
        seen["models"] = demo.model_names
        return "the app"

    def launch_app(app, **kwargs):
        seen.update(kwargs)
        return "http://served/"

    monkeypatch.setattr(serve, "build_app", build_app)
    monkeypatch.setattr(serve, "launch_app", launch_app)
    assert serve.main(["--config-file", QUICK, *flags, "--opts", *TINY_DEMO,
                       "MODEL.WEIGHTS", weights]) == "http://served/"
    return seen


def test_no_model_zoo_leaves_the_coco_model_out_of_the_dropdown(demo_weights, monkeypatch):
    from resbackbones.demo.model_zoo import MODEL_ZOO_MODELS
    from resbackbones.demo.predictor import model_name_from_config

    ours = model_name_from_config(QUICK)
    offered = _serve_in_process(monkeypatch, weights=demo_weights)
    assert offered["models"] == [ours] + [entry.name for entry in MODEL_ZOO_MODELS]
    assert (offered["host"], offered["max_file_size"]) == ("127.0.0.1", "25mb")  # defaults
    offered = _serve_in_process(monkeypatch, "--no-model-zoo", "--host", "0.0.0.0",
                                "--max-file-size", "2mb", weights=demo_weights)
    assert offered["models"] == [ours]
    assert (offered["host"], offered["max_file_size"]) == ("0.0.0.0", "2mb")


def test_bad_max_file_size_is_refused_before_any_model_is_built(monkeypatch):
    from resbackbones.demo import serve

    monkeypatch.setattr(serve, "build_models", lambda *a, **k: pytest.fail("models built"))
    for value in ("25 megabytes", "mb", "-3kb"):
        with pytest.raises(SystemExit):
            serve.main(["--config-file", QUICK, "--max-file-size", value])
    with pytest.raises(SystemExit) as error:
        serve.get_parser().parse_args(["--max-file-size", "25 megabytes"])
    assert error.value.code == 2


SIZE_LIMIT = "20kb"
MODEL_NAME = Path(QUICK).stem  # the dropdown's name for the model (its config's file stem)


@pytest.fixture(scope="module")
def limited_server(demo_weights, tmp_path_factory):
    """tools/gradio_demo.py on 127.0.0.2 with a 20 KB upload limit and no model-zoo entry;
    Gradio chooses the port (the first free one from 7860), read back from what it prints.
    Yields (url, pid)."""
    folder = tmp_path_factory.mktemp("limited_server")
    log = folder / "server.log"
    with open(log, "w") as log_file:
        process = subprocess.Popen(
            [sys.executable, str(REPO / "tools" / "gradio_demo.py"), "--config-file", QUICK,
             "--host", "127.0.0.2", "--max-file-size", SIZE_LIMIT, "--no-model-zoo",
             "--opts", *TINY_DEMO, "MODEL.WEIGHTS", demo_weights],
            stdout=log_file, stderr=subprocess.STDOUT, cwd=str(REPO),
            env=dict(os.environ, GRADIO_ANALYTICS_ENABLED="False",
                     FVCORE_CACHE=str(folder / "cache")))
    url, deadline = None, time.time() + 300
    while url is None and time.time() < deadline and process.poll() is None:
        match = re.search(r"running at (http://[\d.]+:\d+/?)", log.read_text())
        url = match.group(1).rstrip("/") + "/" if match else time.sleep(0.5)
    if url is None:
        process.kill()
        pytest.fail(f"gradio_demo.py did not print its URL:\n{log.read_text()}")
    yield url, process.pid
    process.terminate()
    try:
        process.wait(timeout=30)
    except subprocess.TimeoutExpired:
        process.kill()


@pytest.mark.slow
def test_host_serves_on_the_given_interface_only(limited_server):
    import urllib.request

    import psutil

    url, pid = limited_server
    assert url.startswith("http://127.0.0.2:")
    port = int(url.rstrip("/").rsplit(":", 1)[1])
    with urllib.request.urlopen(url, timeout=30) as response:
        assert response.status == 200
    listening = {(c.laddr.ip, c.laddr.port) for c in psutil.Process(pid).net_connections("inet")
                 if c.status == psutil.CONN_LISTEN}
    assert listening == {("127.0.0.2", port)}


@pytest.mark.slow
def test_upload_over_the_size_limit_is_refused_and_the_server_keeps_serving(limited_server,
                                                                           tmp_path):
    import httpx
    from gradio_client import Client, handle_file

    url, _ = limited_server
    large = tmp_path / "large.png"  # noise compresses badly: about 48 KB
    large.write_bytes(_png(np.random.default_rng(0).integers(0, 255, (128, 128, 3), np.uint8)))
    assert large.stat().st_size > 20 * 1024
    with open(large, "rb") as file:
        refused = httpx.post(f"{url}gradio_api/upload", files={"files": file}, timeout=60)
    assert refused.status_code == 413
    assert "File size exceeded maximum allowed size of 20480 bytes" in refused.text
    client = Client(url, verbose=False)  # the client refuses it too, before uploading
    with pytest.raises(Exception, match=re.escape(
            f"File {large} exceeds the maximum file size of 20480 bytes")):
        client.predict(handle_file(str(large)), MODEL_NAME, 0.0, [], ["boxes"],
                       api_name="/detect")
    small = tmp_path / "small.png"
    small.write_bytes(_png(_shapes()))
    image, table, json_path, message = client.predict(
        handle_file(str(small)), MODEL_NAME, 0.0, [], ["boxes"], api_name="/detect")
    assert image is not None and Image.open(image).size == (128, 96), message
    assert table["data"] and MODEL_NAME in message


# --- tools/generate_configs.py --check --------------------------------------------------------

def _checkout_copy(tmp_path: Path) -> Path:
    """The two parts of a checkout that the tool reads: itself and configs/."""
    copy = tmp_path / "checkout"
    (copy / "tools").mkdir(parents=True)
    shutil.copy(REPO / "tools" / "generate_configs.py", copy / "tools")
    shutil.copytree(REPO / "configs", copy / "configs")
    return copy


def _check(copy: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(copy / "tools" / "generate_configs.py"),
                           "--check"], capture_output=True, text=True, timeout=600)


def test_generate_configs_check_passes_on_a_fresh_tree_and_names_stale_files(tmp_path):
    copy = _checkout_copy(tmp_path)
    fresh = _check(copy)
    assert fresh.returncode == 0, fresh.stderr
    assert fresh.stdout.strip() == "checked configs: 0 stale"
    edited = copy / "configs/COCO-Detection/faster_rcnn_resnet18_FPN_1x.yaml"
    removed = copy / "configs/COCO-InstanceSegmentation/mask_rcnn_resnet50_FPN_1x.yaml"
    original = edited.read_text()
    edited.write_text(original.replace("resnet18", "resnet34"))
    removed.unlink()
    stale = _check(copy)
    assert stale.returncode == 1 and stale.stdout == ""
    assert "2 generated configs" in stale.stderr, stale.stderr
    assert "COCO-Detection/faster_rcnn_resnet18_FPN_1x.yaml (differs)" in stale.stderr
    assert "COCO-InstanceSegmentation/mask_rcnn_resnet50_FPN_1x.yaml (missing)" in stale.stderr
    assert "python tools/generate_configs.py" in stale.stderr
    # --check writes nothing: the edit is still there, the removed file still absent.
    assert edited.read_text() != original and not removed.exists()


# --- convert-weights --prefix / --allow-partial ----------------------------------------------

@pytest.fixture
def torchvision_resnet18(tmp_path) -> tuple:
    """(file, state dict) of a randomly initialised torchvision ResNet-18."""
    import torchvision

    torch.manual_seed(0)
    state = torchvision.models.resnet18(weights=None).state_dict()
    path = tmp_path / "tv_resnet18.pth"
    torch.save(state, path)
    return str(path), state


def _body_keys() -> set:
    from resbackbones.catalog import get_entry
    from resbackbones.modeling.timm_backbone import TimmBackbone

    return set(TimmBackbone(get_entry("resnet18"), norm="BN").body.state_dict())


def test_convert_prefix_puts_the_backbone_where_the_builder_expects_it(torchvision_resnet18,
                                                                       tmp_path):
    from resbackbones.checkpoint.convert import main as convert_main  # convert-weights

    source, state = torchvision_resnet18
    output = tmp_path / "plain_backbone.pth"
    assert convert_main(["--arch", "resnet18", "--input", source, "--output", str(output),
                         "--prefix", "backbone.body."]) == 0
    written = torch.load(output, weights_only=True)["model"]
    assert set(written) == {"backbone.body." + key for key in _body_keys()}
    torch.testing.assert_close(written["backbone.body.layer3.1.conv2.weight"],
                               state["layer3.1.conv2.weight"])
    with pytest.raises(ValueError, match=r"--prefix 'backbone\.body' .*end with '\.'"):
        convert_main(["--arch", "resnet18", "--input", source, "--output",
                      str(tmp_path / "bad.pth"), "--prefix", "backbone.body"])
    assert not (tmp_path / "bad.pth").exists()


def test_convert_allow_partial_writes_what_exists_and_refuses_without_it(torchvision_resnet18,
                                                                         tmp_path):
    from resbackbones.checkpoint.convert import convert_to_detectron2, main as convert_main
    from resbackbones.weights import IncompatibleWeightsError

    _, state = torchvision_resnet18
    partial = {k: v for k, v in state.items() if not k.startswith("layer4.")}
    source = tmp_path / "no_layer4.pth"
    torch.save(partial, source)
    refused = tmp_path / "refused.pth"
    with pytest.raises(IncompatibleWeightsError, match=r"'resnet18': \d+ missing") as error:
        convert_main(["--arch", "resnet18", "--input", str(source), "--output", str(refused)])
    assert "layer4." in str(error.value)
    assert not refused.exists()  # nothing half-converted is written
    output = tmp_path / "partial.pth"
    report = convert_to_detectron2(str(source), "resnet18", str(output), allow_partial=True)
    missing = {k for k in _body_keys()
               if k.startswith("layer4.") and not k.endswith("num_batches_tracked")}
    assert set(report.missing) == missing
    written = torch.load(output, weights_only=True)["model"]
    prefix = "backbone.bottom_up.body."
    assert set(written) == {prefix + key for key in _body_keys()}  # layer4 stays random
    torch.testing.assert_close(written[prefix + "layer2.0.conv1.weight"],
                               state["layer2.0.conv1.weight"])
    with pytest.raises(SystemExit):  # only ImageNet backbones can be partial
        convert_main(["--from", "detectron2", "--to", "resbackbones", "--input", str(output),
                      "--output", str(tmp_path / "x.pth"), "--allow-partial"])


# --- validate-dataset --no-decode / --examples -----------------------------------------------

def _dataset_with_a_truncated_image_and_bad_boxes(root: Path, bad_boxes: int = 3) -> Path:
    images = root / "images"
    images.mkdir(parents=True)
    good = _png(_shapes(40, 60))
    (images / "good.png").write_bytes(good)
    (images / "truncated.png").write_bytes(good[:len(good) // 2])  # header intact
    annotations = [{"id": 100 + i, "image_id": 1, "category_id": 1, "bbox": [5, 5, 0, 10],
                    "iscrowd": 0, "area": 0} for i in range(bad_boxes)]
    annotations.append({"id": 1, "image_id": 1, "category_id": 1, "bbox": [5, 5, 10, 10],
                        "iscrowd": 0, "area": 100})
    json_file = root / "instances.json"
    json_file.write_text(json.dumps({
        "images": [{"id": 1, "file_name": "good.png", "width": 60, "height": 40},
                   {"id": 2, "file_name": "truncated.png", "width": 60, "height": 40}],
        "annotations": annotations, "categories": [{"id": 1, "name": "shape"}]}))
    return json_file


def test_validate_dataset_no_decode_reads_headers_only(tmp_path, capsys):
    from resbackbones.data.cli import validate_dataset_main  # validate-dataset

    json_file = _dataset_with_a_truncated_image_and_bad_boxes(tmp_path, bad_boxes=0)
    flags = ["--json", str(json_file), "--image-root", str(tmp_path / "images")]
    assert validate_dataset_main(flags) == 1
    decoded = capsys.readouterr().out
    assert "unreadable_image" in decoded and "truncated.png" in decoded
    assert validate_dataset_main(flags + ["--no-decode"]) == 0  # the header is fine
    assert "no problems found" in capsys.readouterr().out


def test_validate_dataset_examples_limits_the_examples_per_problem(tmp_path, capsys):
    from resbackbones.data.cli import validate_dataset_main

    json_file = _dataset_with_a_truncated_image_and_bad_boxes(tmp_path)
    flags = ["--json", str(json_file), "--image-root", str(tmp_path / "images"), "--no-decode"]
    shown = {}
    for examples in ("3", "1", "0"):
        assert validate_dataset_main(flags + ["--examples", examples]) == 1
        out = capsys.readouterr().out
        assert re.search(r"\| bad_box\s+\|\s+3 \|", out), out  # the count is always all
        shown[examples] = sorted(set(re.findall(r"annotation (10\d) \(image 1\)", out)))
    assert shown == {"3": ["100", "101", "102"], "1": ["100"], "0": []}
    with pytest.raises(SystemExit):
        validate_dataset_main(flags + ["--examples", "-1"])
    assert "--examples -1 is invalid; valid: an integer >= 0" in capsys.readouterr().err


# --- export --opset / --sample-image ---------------------------------------------------------

@pytest.fixture(scope="module")
def onnx_export(tmp_path_factory):
    """tools/export_model.py's main() with --opset 16 and a 100x150 --sample-image."""
    from export_helpers import FASTER_RCNN, write_checkpoint

    from resbackbones.deploy import export_cli  # tools/export_model.py's command line

    folder = tmp_path_factory.mktemp("export_flags")
    opts = write_checkpoint(folder, FASTER_RCNN, "resnet18")
    image = folder / "sample.png"
    image.write_bytes(_png(_shapes(100, 150)))
    output = folder / "onnx"
    assert export_cli.main(["--config-file", FASTER_RCNN, "--format", "onnx", "--opset", "16",
                            "--sample-image", str(image), "--output", str(output), *opts]) == 0
    return output, FASTER_RCNN, opts


@pytest.mark.slow
def test_export_opset_is_the_one_asked(onnx_export):
    import onnx

    output, _, _ = onnx_export
    model = onnx.load(str(output / "model.onnx"))
    assert {entry.version for entry in model.opset_import if entry.domain in ("", "ai.onnx")} \
        == {16}  # the default is 17
    assert json.loads((output / "model_meta.json").read_text())["onnx_opset"] == 16


@pytest.mark.slow
def test_export_parity_is_computed_on_the_sample_image(onnx_export, tmp_path):
    from detectron2.data.transforms import ResizeShortestEdge

    from resbackbones.deploy import export_cli

    output, config_file, opts = onnx_export
    sample = json.loads((output / "model_meta.json").read_text())["sample"]
    assert sample["image_size"] == [100, 150]
    assert sample["input_size"] == list(ResizeShortestEdge.get_output_shape(100, 150, 128, 160))
    assert sample["parity_with_eager"]["matched"] == sample["detections"] > 0
    missing = tmp_path / "no_such.png"
    with pytest.raises(SystemExit, match=f"error: --sample-image '{missing}' does not exist"):
        export_cli.main(["--config-file", config_file, "--format", "onnx", "--sample-image",
                         str(missing), "--output", str(tmp_path / "out"), *opts])
    assert not (tmp_path / "out").exists()
