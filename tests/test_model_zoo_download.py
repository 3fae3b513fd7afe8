"""The demo's Detectron2 model-zoo model: the real download path against a local HTTP server.

A random-weights Mask R-CNN R50-FPN is saved as Detectron2's model zoo saves its files (a pickle
of numpy arrays under Detectron2's own ResNet names) and served from 127.0.0.1; the twin config
must load it, and a cut-short, corrupt or unreachable download must leave nothing in the cache.
"""
import filecmp
import functools
import http.server
import io
import json
import os
import pickle
import shutil
import socket
import threading

import numpy as np
import pytest
import torch
from detectron2.config import get_cfg
from detectron2.modeling import build_model
from PIL import Image

from resbackbones.checkpoint.download import (
    MODEL_ZOO_URL_ENV,
    DownloadError,
    fetch_model_zoo_file,
    model_zoo_cache_path,
    model_zoo_url,
)
from resbackbones.compat import detectron2_config_file
from resbackbones.demo import DemoPredictor, DetectionDemo, build_inference_config
from resbackbones.demo.model_zoo import (
    COCO_MASK_RCNN_R50_FPN_3X as COCO,
    build_model_zoo_predictor,
    check_checkpoint_fits,
    fetch_model_zoo_weights,
)

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SMALL = ["INPUT.MIN_SIZE_TEST", "128", "INPUT.MAX_SIZE_TEST", "192"]


@pytest.fixture(scope="module")
def zoo_files(tmp_path_factory):
    """Detectron2's own Mask R-CNN R50-FPN 3x with random weights, saved in model-zoo format,
    plus a file of the wrong model and one that is not a pickle at all."""
    cfg = get_cfg()
    cfg.merge_from_file(detectron2_config_file(
        "COCO-InstanceSegmentation/mask_rcnn_R_50_FPN_3x.yaml"))
    cfg.merge_from_list(["MODEL.DEVICE", "cpu", "MODEL.WEIGHTS", ""])
    torch.manual_seed(0)
    model = build_model(cfg)
    state = {k: v.numpy() for k, v in model.state_dict().items()}
    folder = tmp_path_factory.mktemp("served")
    good = folder / "good.pkl"
    with open(good, "wb") as f:
        pickle.dump({"model": state, "__author__": "Detectron2 Model Zoo"}, f)
    del state["roi_heads.mask_head.predictor.weight"]  # a model without one tensor
    state["roi_heads.extra.weight"] = np.zeros(3, np.float32)  # and with one it does not have
    wrong = folder / "wrong.pkl"
    with open(wrong, "wb") as f:
        pickle.dump({"model": state, "__author__": "Detectron2 Model Zoo"}, f)
    garbage = folder / "garbage.pkl"
    garbage.write_bytes(np.random.default_rng(0).bytes(200_000))
    stem_weight = model.backbone.bottom_up.stem.conv1.weight.detach().clone()
    return {"good": str(good), "wrong": str(wrong), "garbage": str(garbage),
            "stem_weight": stem_weight}


class _Server:
    """An HTTP server on 127.0.0.1 serving ``/zoo/<model-zoo name>`` from ``self.file``;
    ``self.cut_after`` bytes, if set, closes the connection mid-body."""

    def __init__(self):
        self.file = None
        self.cut_after = None
        self.requests = []
        owner = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):
                owner.requests.append(self.path)
                if owner.file is None or not self.path.startswith("/zoo/"):
                    self.send_error(404)
                    return
                size = os.path.getsize(owner.file)
                self.send_response(200)
                self.send_header("Content-Type", "application/octet-stream")
                self.send_header("Content-Length", str(size))
                self.end_headers()
                with open(owner.file, "rb") as f:
                    if owner.cut_after is None:
                        shutil.copyfileobj(f, self.wfile)
                    else:
                        self.wfile.write(f.read(owner.cut_after))
                        self.wfile.flush()
                        self.close_connection = True
                        self.connection.shutdown(socket.SHUT_RDWR)

            def log_message(self, *args):
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.base_url = f"http://127.0.0.1:{self.httpd.server_address[1]}/zoo/"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def server():
    server = _Server()
    yield server
    server.close()


@pytest.fixture
def cache(tmp_path, monkeypatch):
    """An empty Detectron2/iopath cache; returns where the COCO model's file belongs."""
    monkeypatch.setenv("FVCORE_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv(MODEL_ZOO_URL_ENV, raising=False)
    return model_zoo_cache_path(COCO.checkpoint)


def _files_next_to(path):
    folder = os.path.dirname(path)
    return sorted(n for n in os.listdir(folder) if not n.endswith(".lock")) \
        if os.path.isdir(folder) else []


def _dead_url():
    with socket.socket() as s:  # a port nothing listens on: connection refused
        s.bind(("127.0.0.1", 0))
        return f"http://127.0.0.1:{s.getsockname()[1]}/zoo/"


def test_cache_path_and_url_follow_detectron2(cache, monkeypatch):
    assert cache == os.path.join(os.environ["FVCORE_CACHE"], "detectron2", COCO.checkpoint)
    assert model_zoo_url(COCO.checkpoint) == ("https://dl.fbaipublicfiles.com/detectron2/"
                                              + COCO.checkpoint)
    # The twin config's MODEL.WEIGHTS names the same file, so Detectron2 finds the download.
    cfg = build_inference_config(COCO.config_path, device="cpu")
    assert cfg.MODEL.WEIGHTS == "detectron2://" + COCO.checkpoint
    monkeypatch.setenv(MODEL_ZOO_URL_ENV, "http://mirror.invalid/d2")
    assert model_zoo_url(COCO.checkpoint) == "http://mirror.invalid/d2/" + COCO.checkpoint
    assert model_zoo_cache_path(COCO.checkpoint) == cache  # a mirror fills the same cache


@pytest.mark.slow
def test_download_loads_into_the_twin_and_is_reused(zoo_files, server, cache, capfd):
    server.file = zoo_files["good"]
    predictor = build_model_zoo_predictor(COCO, device="cpu", opts=SMALL,
                                          base_url=server.base_url)
    assert server.requests == ["/zoo/" + COCO.checkpoint]
    assert filecmp.cmp(cache, zoo_files["good"], shallow=False)
    assert _files_next_to(cache) == [os.path.basename(cache)]  # no temporary file left
    progress = capfd.readouterr().err
    assert "model_final_f10217.pkl" in progress and "100%" in progress  # the tqdm bar
    # Detectron2's ResNet names were converted into the twin's backbone.
    assert torch.equal(predictor.model.backbone.bottom_up.body.conv1.weight,
                       zoo_files["stem_weight"])
    assert len(predictor.class_names) == 80 and predictor.class_names[:3] == [
        "person", "bicycle", "car"] and predictor.class_names[-1] == "toothbrush"
    # COCO results carry COCO's own category ids (90 for toothbrush), not contiguous ids.
    assert predictor.metadata.thing_dataset_id_to_contiguous_id[90] == 79
    image = np.random.default_rng(0).integers(0, 255, (120, 160, 3), np.uint8)
    prediction = predictor.predict(image)
    assert prediction.instances.image_size == (120, 160)
    # Second use: the cached file, no request (also with the server gone).
    server.close()
    assert fetch_model_zoo_weights(COCO, base_url=server.base_url) == cache
    assert fetch_model_zoo_file(COCO.checkpoint, base_url=_dead_url()) == cache
    assert len(server.requests) == 1


@pytest.mark.slow
def test_interrupted_download_leaves_nothing(zoo_files, server, cache):
    server.file, server.cut_after = zoo_files["good"], 5_000_000
    with pytest.raises(DownloadError) as error:
        fetch_model_zoo_weights(COCO, base_url=server.base_url, progress=False)
    message = str(error.value)
    size = os.path.getsize(zoo_files["good"])
    assert f"of {size} bytes" in message and server.base_url in message
    assert cache in message  # where to put the file by hand
    assert _files_next_to(cache) == []
    server.cut_after = None  # the next attempt starts afresh and succeeds
    assert fetch_model_zoo_weights(COCO, base_url=server.base_url, progress=False) == cache
    assert filecmp.cmp(cache, zoo_files["good"], shallow=False)


@pytest.mark.slow
@pytest.mark.parametrize("kind, expected", [
    ("garbage", "not usable and was deleted"),
    ("wrong", "1 tensors missing (e.g. roi_heads.mask_head.predictor.weight); "
              "1 tensors unused (e.g. roi_heads.extra.weight)"),
])
def test_corrupt_file_is_refused_and_not_kept(zoo_files, server, cache, kind, expected):
    server.file = zoo_files[kind]
    with pytest.raises(DownloadError, match="not usable and was deleted") as error:
        fetch_model_zoo_weights(COCO, base_url=server.base_url, progress=False)
    assert expected in str(error.value)
    assert _files_next_to(cache) == []


def test_pickle_that_runs_code_is_refused(tmp_path):
    class RunsCode:
        def __reduce__(self):
            return (os.system, ("true",))

    path = tmp_path / "evil.pkl"
    path.write_bytes(pickle.dumps({"model": {"x": RunsCode()}, "__author__": "x"}))
    cfg = build_inference_config(COCO.config_path, device="cpu")
    with pytest.raises(Exception, match="os.system|posix.system"):
        check_checkpoint_fits(cfg, str(path))


def test_http_error_names_the_url(server, cache):
    server.file = None  # 404
    with pytest.raises(DownloadError, match="HTTP 404") as error:
        fetch_model_zoo_file(COCO.checkpoint, base_url=server.base_url, progress=False)
    assert server.base_url + COCO.checkpoint in str(error.value)
    assert _files_next_to(cache) == []


@pytest.fixture(scope="module")
def quickstart_like(tmp_path_factory):
    """A small trained-looking model folder: config, model_final.pth and class_names.json,
    trained on a dataset this process has never heard of."""
    folder = tmp_path_factory.mktemp("quickstart")
    config = os.path.join(REPO, "configs", "quick_schedules",
                          "mask_rcnn_R_18_FPN_synthetic_instant_test.yaml")
    opts = ["MODEL.DEVICE", "cpu", "DATASETS.TEST", "('never_registered_val',)",
            "DATASETS.TRAIN", "('never_registered_train',)"]
    torch.manual_seed(0)
    model = build_model(build_inference_config(config, opts + ["MODEL.WEIGHTS", ""]))
    torch.save({"model": model.state_dict()}, folder / "model_final.pth")
    (folder / "class_names.json").write_text(json.dumps({
        "thing_classes": ["disc", "wedge", "box"],
        "thing_dataset_id_to_contiguous_id": {"7": 0, "8": 1, "9": 2}}))
    return build_inference_config(config, opts + ["MODEL.WEIGHTS", str(folder / "model_final.pth")])


def _png(seed):
    buffer = io.BytesIO()
    Image.fromarray(np.random.default_rng(seed).integers(0, 255, (96, 128, 3), np.uint8)).save(
        buffer, format="PNG")
    return buffer.getvalue()


@pytest.mark.slow
def test_offline_message_in_the_demo_and_the_other_model_keeps_working(
        quickstart_like, zoo_files, cache, tmp_path):
    dead = _dead_url()
    demo = DetectionDemo({
        "quickstart": functools.partial(DemoPredictor, quickstart_like, name="quickstart"),
        COCO.name: functools.partial(build_model_zoo_predictor, COCO, device="cpu", opts=SMALL,
                                     base_url=dead, progress=False),
    }, output_dir=str(tmp_path))
    names, failure = demo.select_model(COCO.name)
    assert names == [] and not demo.is_built(COCO.name)
    for text in ("not available", "ConnectionRefusedError", dead + COCO.checkpoint,
                 "https://dl.fbaipublicfiles.com/detectron2/" + COCO.checkpoint, cache):
        assert text in failure, text
    result = demo.detect(_png(0), model_name=COCO.name)
    assert result.error and result.image is None and cache in result.message
    # The quickstart model is unaffected, and its class names come from class_names.json.
    assert demo.select_model("quickstart") == (["disc", "wedge", "box"], None)
    result = demo.detect(_png(1), model_name="quickstart", score_threshold=0.0)
    assert not result.error and result.image is not None
    predictor = demo.predictor("quickstart")
    assert predictor.metadata.thing_dataset_id_to_contiguous_id == {7: 0, 8: 1, 9: 2}
    # The file copied by hand to the path the message gives: choosing the model again works.
    os.makedirs(os.path.dirname(cache), exist_ok=True)
    shutil.copyfile(zoo_files["good"], cache)
    names, failure = demo.select_model(COCO.name)
    assert failure is None and names[0] == "person" and demo.is_built(COCO.name)


def test_gradio_demo_offers_the_coco_model_with_the_mirror_flag(cache):
    from resbackbones.demo import serve as tool  # tools/gradio_demo.py's command line

    dead = _dead_url()
    args = tool.get_parser().parse_args(["--model-zoo-url", dead])
    models = {}
    tool.add_model_zoo_models(models, "cpu", (), args.model_zoo_url)
    assert list(models) == [COCO.name]
    with pytest.raises(DownloadError, match="ConnectionRefusedError") as error:
        models[COCO.name]()  # built on first use: the download from the mirror is tried
    assert error.value.url == dead + COCO.checkpoint and error.value.destination == cache
