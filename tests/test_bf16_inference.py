"""bf16 inference of the whole detector (``INFERENCE_AMP``: backbone, FPN, RPN and ROI heads).

Tolerances on a Mask R-CNN R18-FPN with calibrated random weights (bf16 keeps 8 bits of
mantissa, so scores move by up to ~1e-2, and random weights give many near-tied scores that
then swap in and out of the top 20; measured 75% kept): at least 60% of the float32 detections
are found again (IoU > 0.9), with scores within 3e-2; outputs are float32. The COCO AP of a
trained model in bf16 is checked against float32 in tests/test_train.py (within 0.5 AP).
"""
import pytest
import torch
from detectron2.modeling import build_model

from resbackbones.benchmark.contenders import bias_towards_one_class, calibrate_frozen_batchnorm
from resbackbones.config import build_config
from resbackbones.modeling import fpn
from resbackbones.modeling.cpu_info import parse_cpuinfo

QUICK = "configs/quick_schedules/mask_rcnn_R_18_FPN_synthetic_instant_test.yaml"


def _detector(amp):
    cfg = build_config(QUICK, ["MODEL.RESBACKBONE.NORM", "BN", "MODEL.BACKBONE.FREEZE_AT", "0",
                               "MODEL.DEVICE", "cpu", "MODEL.RESBACKBONE.INFERENCE_AMP", amp,
                               "TEST.DETECTIONS_PER_IMAGE", "20"])
    return build_model(cfg).eval()


@pytest.fixture(scope="module")
def calibrated():
    """A float32 detector whose random weights detect like a trained one, and its image."""
    torch.manual_seed(0)
    model = _detector("off")
    bias_towards_one_class(model.roi_heads.box_predictor.cls_score, 0)
    image = torch.randint(0, 255, (3, 256, 320), dtype=torch.uint8,
                          generator=torch.Generator().manual_seed(0))
    calibrate_frozen_batchnorm(model, lambda: model([{"image": image}]))
    return model, image


def _run(model, image):
    with torch.no_grad():
        return model([{"image": image}])[0]["instances"]


def test_bf16_heads_give_float32_outputs_close_to_float32(calibrated, monkeypatch):
    from detectron2.structures import pairwise_iou

    reference_model, image = calibrated
    model = _detector("bf16")
    model.load_state_dict(reference_model.state_dict())
    autocast_calls = []
    original = torch.autocast.__init__

    def spy(self, device_type, *args, **kwargs):
        autocast_calls.append(kwargs.get("dtype"))
        original(self, device_type, *args, **kwargs)

    monkeypatch.setattr(torch.autocast, "__init__", spy)
    reference, output = _run(reference_model, image), _run(model, image)
    assert autocast_calls.count(torch.bfloat16) >= 2  # backbone + FPN, and the heads
    assert len(reference) == len(output) > 0
    assert output.scores.dtype == torch.float32 and output.pred_boxes.tensor.dtype == torch.float32
    iou = pairwise_iou(reference.pred_boxes, output.pred_boxes)
    best = iou.max(dim=1)
    matched = best.values > 0.9
    assert matched.float().mean() >= 0.6
    assert (reference.scores[matched] - output.scores[best.indices[matched]]).abs().max() < 3e-2


def test_auto_without_native_bf16_is_exactly_float32(calibrated, monkeypatch):
    reference_model, image = calibrated
    monkeypatch.setattr(fpn, "cpu_info", lambda: parse_cpuinfo(
        "model name : AMD EPYC 7763\nflags : avx avx2 fma avx512f\n", "AVX2"))
    model = _detector("auto")
    model.load_state_dict(reference_model.state_dict())
    reference, output = _run(reference_model, image), _run(model, image)
    assert torch.equal(reference.pred_boxes.tensor, output.pred_boxes.tensor)
    assert torch.equal(reference.scores, output.scores)
