"""Compiled serving (modeling/serving.py): eager outputs, no recompiles, fallbacks, the choice.

Tolerances: an image whose padded size is a bucket gives the eager detections as the
whole-detector test of tests/test_speedups.py states them (the compiled graph computes BN and
the 3x3 convs without the eager speed-ups' folding and Winograd: rounding-level differences):
at least 80% of detections match one-to-one (IoU > 0.99), with boxes within 0.05 px, scores
within 1e-4, the same classes and masks differing in < 0.1% of pixels. A smaller image in a
bucket gives the eager backbone's features on the same zero-padded input within 1e-4 of their
largest magnitude (the padding itself changes features near the bottom and right edges, as in
Detectron2's batched inference).

Most tests compile with a counting eager backend (dynamo's tracing, no code generation: fast);
one slow test compiles with inductor.
"""
import logging
import math

import pytest
import torch
import torch.nn.functional as F
from detectron2.config import get_cfg
from detectron2.modeling import build_model

from resbackbones.config import add_resbackbone_config
from resbackbones.modeling import serving
from resbackbones.modeling.serving import (
    BucketedCompiledBackbone,
    check_serving_compile,
    default_buckets,
    enable_compiled_serving,
    remove_compiled_serving,
)

BUCKETS = [(96, 128), (128, 96)]


class CountingBackend:
    """A torch.compile backend that runs the traced graph as is, counting compilations and
    graph runs."""

    def __init__(self, fail_at: str = ""):
        self.compiled = 0
        self.runs = 0
        self.fail_at = fail_at

    def __call__(self, graph_module, example_inputs):
        if self.fail_at == "compile":
            raise RuntimeError("injected compile failure")
        self.compiled += 1

        def run(*args):
            if self.fail_at == "run":
                raise RuntimeError("injected run-time failure")
            self.runs += 1
            return graph_module.forward(*args)

        return run


@pytest.fixture(autouse=True)
def _fresh_dynamo():
    torch._dynamo.reset()  # graphs of earlier tests (same code objects) must not be reused
    yield
    torch._dynamo.reset()


@pytest.fixture(scope="module")
def detector():
    """ResBackboneRCNN Mask R-CNN R18-FPN on the CPU with the default speed-ups, random weights,
    FrozenBN calibrated on a real input (a trained network's activation scale)."""
    from resbackbones.benchmark.contenders import (bias_towards_one_class,
                                                   calibrate_frozen_batchnorm)
    from resbackbones.compat import detectron2_config_file

    cfg = add_resbackbone_config(get_cfg())
    cfg.merge_from_file(detectron2_config_file("Base-RCNN-FPN.yaml"))
    cfg.MODEL.META_ARCHITECTURE = "ResBackboneRCNN"
    cfg.MODEL.BACKBONE.NAME = "build_resbackbone_fpn_backbone"
    cfg.MODEL.BACKBONE.FREEZE_AT = 0
    cfg.MODEL.RESBACKBONE.ARCH = "resnet18"
    cfg.MODEL.WEIGHTS = "loaded-below.pth"  # FrozenBN needs weights: calibrated below
    cfg.MODEL.MASK_ON = True
    cfg.MODEL.ROI_HEADS.NUM_CLASSES = 3
    cfg.MODEL.DEVICE = "cpu"
    cfg.TEST.DETECTIONS_PER_IMAGE = 20
    torch.manual_seed(0)
    model = build_model(cfg).eval()
    bias_towards_one_class(model.roi_heads.box_predictor.cls_score, 0)
    calibrate_frozen_batchnorm(model, lambda: model([{"image": _image(96, 128)}]))
    return model


def _image(height, width, seed=0):
    return torch.randint(0, 255, (3, height, width), dtype=torch.uint8,
                         generator=torch.Generator().manual_seed(seed))


def _detect(model, image):
    with torch.no_grad():
        return model([{"image": image}])[0]["instances"]


@pytest.fixture
def served(detector):
    """Whatever a test installs is taken out again: the module's detector stays eager."""
    yield detector
    remove_compiled_serving(detector)


def _assert_same_detections(reference, output):
    from detectron2.structures import pairwise_iou

    assert len(reference) == len(output) > 0
    best = pairwise_iou(reference.pred_boxes, output.pred_boxes).max(dim=1)
    matched = best.values > 0.99
    assert matched.float().mean() >= 0.8
    reference, output = reference[matched], output[best.indices[matched]]
    assert (reference.pred_boxes.tensor - output.pred_boxes.tensor).abs().max() < 0.05
    assert (reference.scores - output.scores).abs().max() < 1e-4
    assert torch.equal(reference.pred_classes, output.pred_classes)
    assert (reference.pred_masks != output.pred_masks).float().mean() < 1e-3


def _relative_error(reference, other):
    return float((reference - other).abs().max() / reference.abs().max().clamp_min(1e-12))


def test_default_buckets_hold_every_test_time_resize():
    from detectron2.data.transforms import ResizeShortestEdge

    buckets = default_buckets(800, 1333, 32)
    assert buckets == [(800, 1344), (1344, 800)]
    for height, width in [(480, 640), (640, 480), (1080, 1920), (1000, 1000), (300, 2000),
                          (2000, 301), (37, 41)]:
        new_h, new_w = ResizeShortestEdge.get_output_shape(height, width, 800, 1333)
        padded = (math.ceil(new_h / 32) * 32, math.ceil(new_w / 32) * 32)
        assert any(padded[0] <= h and padded[1] <= w for h, w in buckets), (height, width)
    assert default_buckets(96, 96, 32) == [(96, 96)]
    with pytest.raises(ValueError, match="MIN_SIZE_TEST 0 does not resize"):
        default_buckets(0, 1333)


def test_invalid_settings_are_refused(detector):
    with pytest.raises(ValueError, match="--compile 'yes' is invalid; valid: off, auto, on"):
        check_serving_compile("yes")
    with pytest.raises(ValueError, match=r"buckets \[\(100, 128\)\] are invalid.*divisibility 32"):
        BucketedCompiledBackbone(detector.backbone, [(100, 128), (96, 128)])


def test_compiled_serving_gives_the_eager_detections_without_recompiling(served):
    """(a) and (b) of issue #18 item 3, with the counting backend."""
    bucket_sized, smaller = _image(96, 128, seed=1), _image(70, 100, seed=2)
    reference = _detect(served, bucket_sized)
    backend = CountingBackend()
    wrapper = enable_compiled_serving(served, BUCKETS, mode="on", backend=backend)
    assert served.backbone is wrapper and backend.compiled == len(BUCKETS)  # warm-up compiled
    runs = backend.runs
    _assert_same_detections(reference, _detect(served, bucket_sized))
    _detect(served, smaller)  # ImageList pads it to 96x128 (size divisibility 32)
    _detect(served, _image(64, 96, seed=3))  # 64x96, padded to the 96x128 bucket here
    assert backend.compiled == len(BUCKETS)  # no recompilation
    assert backend.runs == runs + 3  # and each image ran the compiled graph
    # The smaller image's features are the eager backbone's on the same zero-padded input.
    images = torch.randn(1, 3, 64, 96)
    assert wrapper.bucket_for(64, 96) == (96, 128)  # equal areas: the first bucket given
    with torch.no_grad():
        served_features = wrapper(images)
        padded = wrapper.eager(F.pad(images, (0, 128 - 96, 0, 96 - 64)))
    for name, feature in served_features.items():
        stride = wrapper.output_shape()[name].stride
        expected = padded[name][:, :, :math.ceil(64 / stride), :math.ceil(96 / stride)]
        assert feature.shape == expected.shape and feature.is_contiguous()
        assert _relative_error(expected, feature) < 1e-4, name
    assert backend.compiled == len(BUCKETS)


def test_larger_inputs_batches_and_training_run_eagerly(served, caplog):
    backend = CountingBackend()
    wrapper = enable_compiled_serving(served, BUCKETS, mode="on", backend=backend)
    runs = backend.runs
    with torch.no_grad(), caplog.at_level(logging.INFO, logger=serving.__name__):
        wrapper(torch.randn(1, 3, 128, 128))  # larger than both buckets
        wrapper(torch.randn(1, 3, 128, 128))
        wrapper(torch.randn(2, 3, 64, 64))
    wrapper(torch.randn(1, 3, 64, 64))  # grad enabled: eager
    assert backend.runs == runs and backend.compiled == len(BUCKETS)
    assert sum("larger than every serving bucket" in r.message for r in caplog.records) == 1


@pytest.mark.parametrize("fail_at", ["compile", "run"])
def test_a_compiler_failure_gives_eager_outputs_and_a_warning(served, caplog, fail_at):
    """(c): a failure at compile time (warm-up) or at run time never reaches the caller."""
    image = _image(96, 128, seed=1)
    reference = _detect(served, image)
    with caplog.at_level(logging.WARNING, logger=serving.__name__):
        wrapper = enable_compiled_serving(served, BUCKETS, mode="on",
                                          backend=CountingBackend(fail_at=fail_at))
        output = _detect(served, image)
    warnings = [r.message for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and f"injected {fail_at}" in warnings[0]
    assert "running eagerly" in warnings[0]
    assert not any(report.use_compiled for report in wrapper.reports.values())
    # The eager path itself: bit-identical detections.
    assert torch.equal(reference.pred_boxes.tensor, output.pred_boxes.tensor)
    assert torch.equal(reference.scores, output.scores)
    assert torch.equal(reference.pred_masks, output.pred_masks)


@pytest.mark.parametrize("eager_ms, compiled_ms, kept", [(10.0, 20.0, False), (20.0, 10.0, True)])
def test_auto_keeps_the_compiled_graph_only_where_it_is_faster(served, monkeypatch, caplog,
                                                               eager_ms, compiled_ms, kept):
    """(d): timings injected, so the decision does not depend on this machine's speed."""
    timed = []

    def fake_timer(candidates, rounds=3):
        timed.append(sorted(candidates))
        return {"eager": eager_ms, "compiled": compiled_ms}

    monkeypatch.setattr(serving, "time_candidates", fake_timer)
    backend = CountingBackend()
    with caplog.at_level(logging.INFO, logger=serving.__name__):
        wrapper = enable_compiled_serving(served, BUCKETS, mode="auto", backend=backend)
    assert timed == [["compiled", "eager"]] * len(BUCKETS)
    assert all(r.use_compiled == kept for r in wrapper.reports.values())
    decisions = [r.message for r in caplog.records if "eager 10.0 ms" in r.message
                 or "eager 20.0 ms" in r.message]
    assert len(decisions) == len(BUCKETS)
    assert ("compiled graph used" if kept else "eager kept (faster here)") in decisions[0]
    assert "compiled in" in decisions[0]
    runs = backend.runs
    _detect(served, _image(96, 128))
    assert backend.runs == runs + (1 if kept else 0)


@pytest.mark.slow
def test_inductor_serving_gives_the_eager_detections(served):
    """The real compiler (inductor's C++ code on the CPU), one tiny bucket."""
    image = _image(64, 96, seed=4)
    reference = _detect(served, image)
    wrapper = enable_compiled_serving(served, [(64, 96)], mode="on")
    report = wrapper.reports[(64, 96)]
    assert report.use_compiled and report.compile_seconds > 0 and not report.error
    _assert_same_detections(reference, _detect(served, image))
    _detect(served, _image(40, 70, seed=5))  # another size, same bucket
    assert not wrapper._failed
    # The graph reads the model's own parameters: a weight changed in place is seen.
    conv = wrapper.eager.bottom_up.body.conv1
    images = torch.randn(1, 3, 64, 96)
    try:
        with torch.no_grad():
            conv.weight.mul_(1.5)
            changed, expected = wrapper(images), wrapper.eager(images)
    finally:
        with torch.no_grad():
            conv.weight.div_(1.5)
    for name in expected:
        assert _relative_error(expected[name], changed[name]) < 1e-4, name
    assert not wrapper._failed


def test_demo_predictor_compiles_the_config_buckets_once(monkeypatch):
    """The demos' shared predictor: buckets from INPUT.MIN/MAX_SIZE_TEST, compiled at start-up,
    then images of several sizes (after the test-time resize) without a new compilation."""
    import functools

    import numpy as np

    from resbackbones.demo import predictor as demo_predictor

    backend = CountingBackend()
    monkeypatch.setattr(demo_predictor, "enable_compiled_serving",
                        functools.partial(enable_compiled_serving, backend=backend))
    cfg = demo_predictor.build_inference_config(
        "configs/COCO-InstanceSegmentation/mask_rcnn_resnet18_FPN_1x.yaml",
        ["MODEL.DEVICE", "cpu", "MODEL.RESBACKBONE.WEIGHTS", "", "MODEL.RESBACKBONE.NORM", "BN",
         "MODEL.BACKBONE.FREEZE_AT", "0", "INPUT.MIN_SIZE_TEST", "64",
         "INPUT.MAX_SIZE_TEST", "96"])
    predictor = demo_predictor.DemoPredictor(cfg, compile_serving="on")
    assert predictor.serving.buckets == [(64, 96), (96, 64)] and backend.compiled == 2
    runs = backend.runs
    for shape in [(60, 80), (50, 90), (90, 50)]:  # resized to 64x85, 53x96 and 96x53
        predictor.predict(np.zeros(shape + (3,), dtype=np.uint8))
    assert backend.compiled == 2 and backend.runs == runs + 3


def test_demo_command_lines_take_compile():
    from resbackbones.demo import batch, serve

    required = ["--config-file", "c.yaml", "--input", "x", "--output", "o"]
    assert batch.get_parser().parse_args(required).compile == "off"
    assert batch.get_parser().parse_args(required + ["--compile", "auto"]).compile == "auto"
    assert serve.get_parser().parse_args(["--compile", "on"]).compile == "on"
    with pytest.raises(SystemExit):
        batch.get_parser().parse_args(required + ["--compile", "yes"])
