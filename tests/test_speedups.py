"""Each speed-up leaves the outputs unchanged within a stated tolerance.

Tolerances (relative to the largest magnitude of each output):
- BN folding alone, float64: 1e-9 (exact up to rounding);
- folding + channels-last, float32, backbone + FPN: 1e-4;
- bf16 autocast of backbone + FPN: 5e-2 (bf16 keeps 8 bits of mantissa);
- Winograd (NNPACK) 3x3 convs, float32: 1e-4 per layer and for the FPN outputs;
- ParallelROIAlign: bit-identical to ROIAlign;
- ResBackboneRCNN vs GeneralizedRCNN, same weights: identical training losses; at inference
  1e-4 for RPN logits and mask probabilities of given boxes;
- whole Mask R-CNN with the default speed-ups (ResBackboneRCNN, random weights): at least 80% of
  detections match one-to-one (IoU > 0.99; FrozenBN statistics calibrated on the input so that
  proposal scores are not near-tied noise), and those have boxes within 0.05 px, scores within
  1e-4, the same classes and masks differing in < 0.1% of pixels.
"""
import copy

import pytest
import timm
import torch
from detectron2.config import get_cfg
from detectron2.modeling import build_backbone, build_model

from resbackbones.catalog import Family, get_entry, one_per_family
from resbackbones.config import add_resbackbone_config
from resbackbones.modeling.inference import fold_batchnorm
from helpers import count_nnpack_calls, needs_nnpack, randomize_norm_statistics

# Every block type, without the wide and SE-ResNeXt variants (same blocks, wider: slower in
# float64).
ONE_PER_FAMILY = one_per_family([Family.RESNET, Family.RESNET_D, Family.RESNEXT, Family.SE_RESNET,
                                 Family.RESNET_RS, Family.RESNET_V2])


def _relative_error(reference: torch.Tensor, other: torch.Tensor) -> float:
    return float((reference - other).abs().max() / reference.abs().max().clamp_min(1e-12))


@pytest.mark.parametrize("name", ONE_PER_FAMILY)
def test_batchnorm_folding_is_exact_in_float64(name):
    model = timm.create_model(get_entry(name).timm_name, pretrained=False, features_only=True,
                              out_indices=(1, 2, 3, 4)).double().eval()
    randomize_norm_statistics(model)
    folded = copy.deepcopy(model)
    count = fold_batchnorm(folded)
    batchnorms = sum(isinstance(m, torch.nn.BatchNorm2d) for m in model.modules())
    if name.startswith("resnetv2"):
        assert count == 0  # pre-activation: each norm precedes its conv, nothing to fold into
    else:
        assert count == batchnorms and not any(
            isinstance(m, torch.nn.BatchNorm2d) for m in folded.modules())
    images = torch.randn(1, 3, 32, 32, dtype=torch.float64)
    with torch.no_grad():
        for reference, output in zip(model(images), folded(images)):
            assert _relative_error(reference, output) < 1e-9


def _cfg(arch="resnet18", **speedups):
    cfg = get_cfg()
    add_resbackbone_config(cfg)
    cfg.MODEL.BACKBONE.NAME = "build_resbackbone_fpn_backbone"
    cfg.MODEL.BACKBONE.FREEZE_AT = 0
    cfg.MODEL.RESBACKBONE.ARCH = arch
    cfg.MODEL.RESBACKBONE.NORM = speedups.pop("norm", "BN")
    cfg.MODEL.RESBACKBONE.CHANNELS_LAST = "off"
    cfg.MODEL.RESBACKBONE.FOLD_BN_FOR_INFERENCE = False
    cfg.MODEL.RESBACKBONE.WINOGRAD = False
    for key, value in speedups.items():
        cfg.MODEL.RESBACKBONE[key.upper()] = value
    return cfg


def _mask_rcnn_cfg(meta_architecture, **speedups):
    """Detectron2's Base-RCNN-FPN Mask R-CNN (3 classes, CPU) on a resbackbones R18-FPN."""
    from resbackbones.compat import detectron2_config_file

    cfg = _cfg(**speedups)
    cfg.merge_from_file(detectron2_config_file("Base-RCNN-FPN.yaml"))
    cfg.MODEL.META_ARCHITECTURE = meta_architecture
    cfg.MODEL.BACKBONE.NAME = "build_resbackbone_fpn_backbone"  # the base file names its own
    cfg.MODEL.MASK_ON = True
    cfg.MODEL.DEVICE = "cpu"
    cfg.MODEL.ROI_HEADS.NUM_CLASSES = 3
    return cfg


def _plain_and_fast(arch="resnet18", **speedups):
    plain = build_backbone(_cfg(arch)).eval()
    randomize_norm_statistics(plain)
    fast = build_backbone(_cfg(arch, **speedups)).eval()
    fast.load_state_dict(plain.state_dict())
    return plain, fast


@pytest.mark.parametrize("arch", ["resnet18", "resnext50_32x4d"])
def test_folding_and_channels_last_keep_fpn_outputs(arch):
    plain, fast = _plain_and_fast(arch, channels_last="on", fold_bn_for_inference=True)
    images = torch.randn(1, 3, 96, 128)
    with torch.no_grad():
        reference, output = plain(images), fast(images)
    assert fast.bottom_up._inference_body.folded_count > 0
    for name in reference:
        assert output[name].is_contiguous() and output[name].dtype == torch.float32
        assert _relative_error(reference[name], output[name]) < 1e-4, name


def test_folded_copy_is_not_part_of_the_model_and_follows_weight_changes():
    plain, fast = _plain_and_fast(channels_last="on", fold_bn_for_inference=True)
    images = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        fast(images)
    assert fast.state_dict().keys() == plain.state_dict().keys()
    assert len(list(fast.parameters())) == len(list(plain.parameters()))
    # A checkpoint load changes the weights: the folded copy must be rebuilt from them.
    randomize_norm_statistics(plain)
    with torch.no_grad():
        plain.bottom_up.body.conv1.weight.mul_(1.5)
    fast.load_state_dict(plain.state_dict())
    with torch.no_grad():
        reference, output = plain(images), fast(images)
    for name in reference:
        assert _relative_error(reference[name], output[name]) < 1e-4


def test_training_and_grad_never_use_the_folded_copy():
    _, fast = _plain_and_fast(channels_last="on", fold_bn_for_inference=True)
    fast.train()
    fast(torch.randn(2, 3, 64, 64))["p2"].sum().backward()
    fast.eval()
    fast(torch.randn(1, 3, 64, 64))  # eval with grad enabled (e.g. saliency maps)
    assert fast.bottom_up._inference_body._copy is None
    assert fast.bottom_up.body.conv1.weight.grad is not None


def test_bf16_inference_autocast_within_tolerance():
    plain, fast = _plain_and_fast(channels_last="on", inference_amp="bf16")
    images = torch.randn(1, 3, 96, 128)
    with torch.no_grad():
        reference, output = plain(images), fast(images)
    for name in reference:
        assert output[name].dtype == torch.float32
        assert _relative_error(reference[name], output[name]) < 5e-2, name


def test_invalid_speedup_settings_are_refused():
    with pytest.raises(ValueError, match="CHANNELS_LAST 'yes' is invalid; valid: auto, on, off"):
        build_backbone(_cfg(channels_last="yes"))
    with pytest.raises(ValueError, match="INFERENCE_AMP 'half' is invalid"):
        build_backbone(_cfg(inference_amp="half"))


def _matched_detections(reference, output):
    """Index into ``output`` of each reference detection's match, and which ones matched."""
    from detectron2.structures import pairwise_iou

    assert len(reference) == len(output) > 0
    iou = pairwise_iou(reference.pred_boxes, output.pred_boxes)
    best = iou.max(dim=1)
    return best.indices, best.values > 0.99


def test_whole_detector_with_default_speedups_gives_the_same_detections():
    from resbackbones.benchmark.contenders import (bias_towards_one_class,
                                                   calibrate_frozen_batchnorm)

    def detector(meta_architecture="GeneralizedRCNN", **speedups):
        cfg = _mask_rcnn_cfg(meta_architecture, norm="FrozenBN", **speedups)
        cfg.MODEL.WEIGHTS = "loaded-below.pth"  # FrozenBN needs weights: the state_dict below
        cfg.TEST.DETECTIONS_PER_IMAGE = 20
        return build_model(cfg).eval()

    torch.manual_seed(0)
    plain = detector()
    bias_towards_one_class(plain.roi_heads.box_predictor.cls_score, 0)
    defaults = add_resbackbone_config(get_cfg()).MODEL.RESBACKBONE
    fast = detector(channels_last=defaults.CHANNELS_LAST, winograd=defaults.WINOGRAD,
                    parallel_roi_align=defaults.PARALLEL_ROI_ALIGN,
                    fold_bn_for_inference=defaults.FOLD_BN_FOR_INFERENCE,
                    meta_architecture="ResBackboneRCNN")
    assert type(fast).__name__ == "ResBackboneRCNN" and type(plain).__name__ == "GeneralizedRCNN"
    fast.load_state_dict(plain.state_dict())
    # Large enough for Winograd on P2/P3, the RPN and the mask head (>= 32x32 output pixels).
    image = torch.randint(0, 255, (3, 256, 320), dtype=torch.uint8,
                          generator=torch.Generator().manual_seed(0))
    # Frozen BN statistics of the real activations: a trained network's scale, not the chaos of
    # random statistics in which any rounding difference reorders the proposals.
    calibrate_frozen_batchnorm(plain, lambda: plain([{"image": image}]))
    fast.load_state_dict(plain.state_dict())
    with torch.no_grad():
        reference = plain([{"image": image}])[0]["instances"]
        output = fast([{"image": image}])[0]["instances"]
    order, matched = _matched_detections(reference, output)
    # A random detector has many near-tied proposal scores, so a 1e-6 change may swap which
    # proposal survives: most detections must match exactly, and the matched ones agree tightly.
    assert matched.float().mean() >= 0.8
    reference, output = reference[matched], output[order[matched]]
    assert (reference.pred_boxes.tensor - output.pred_boxes.tensor).abs().max() < 0.05
    assert (reference.scores - output.scores).abs().max() < 1e-4
    assert torch.equal(reference.pred_classes, output.pred_classes)
    assert (reference.pred_masks != output.pred_masks).float().mean() < 1e-3


@pytest.mark.slow
def test_compiled_backbone_matches_or_falls_back():
    plain, fast = _plain_and_fast(channels_last="off", fold_bn_for_inference=True, compile=True)
    images = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        reference, output = plain(images), fast(images)
    for name in reference:
        assert _relative_error(reference[name], output[name]) < 1e-4


# --- Winograd convolutions, parallel ROIAlign and ResBackboneRCNN ---------------------------

@needs_nnpack
def test_winograd_conv_layers_match_the_direct_convolution(monkeypatch):
    from detectron2.layers import Conv2d as Detectron2Conv2d

    from resbackbones.modeling.winograd import (
        WinogradConv2d,
        WinogradDetectron2Conv2d,
        with_winograd_convolutions,
    )

    torch.manual_seed(0)
    layers = torch.nn.Sequential(
        torch.nn.Conv2d(16, 32, 3, padding=1),
        Detectron2Conv2d(32, 32, 3, padding=1, bias=False, norm=torch.nn.BatchNorm2d(32),
                         activation=torch.nn.functional.relu),
        torch.nn.Conv2d(32, 32, 3, stride=2, padding=1),  # strided: not eligible
        torch.nn.Conv2d(32, 8, 1),  # 1x1: not eligible
    ).eval()
    randomize_norm_statistics(layers)
    direct = copy.deepcopy(layers)
    shared = list(layers)  # the Winograd twins must share these modules' parameters
    assert with_winograd_convolutions(layers) is layers
    assert [type(layer) for layer in layers][:2] == [WinogradConv2d, WinogradDetectron2Conv2d]
    assert [type(layer) for layer in layers][2:] == [torch.nn.Conv2d, torch.nn.Conv2d]
    assert all(layer.weight is original.weight for layer, original in zip(layers, shared))
    assert layers.state_dict().keys() == direct.state_dict().keys()
    calls = count_nnpack_calls(monkeypatch)
    images = torch.randn(2, 16, 40, 48)
    with torch.no_grad():
        assert _relative_error(direct(images), layers(images)) < 1e-4
        assert _relative_error(direct[:2](images), layers[:2](images)) < 1e-4
    assert len(calls) == 4  # both eligible layers, twice
    # Training (grad enabled) and maps below 32x32 output pixels keep PyTorch's own path.
    assert torch.equal(direct(images), layers(images))
    with torch.no_grad():
        small = torch.randn(1, 16, 16, 16)
        assert torch.equal(direct(small), layers(small))
    assert len(calls) == 4


@needs_nnpack
def test_winograd_keeps_fpn_outputs(monkeypatch):
    plain, fast = _plain_and_fast("resnet18", winograd=True)
    calls = count_nnpack_calls(monkeypatch)
    images = torch.randn(1, 3, 256, 256)  # P2 64x64 and P3 32x32 take the Winograd path
    with torch.no_grad():
        reference, output = plain(images), fast(images)
    assert len(calls) == 2
    for name in reference:
        assert output[name].is_contiguous()
        assert _relative_error(reference[name], output[name]) < 1e-4, name


def test_parallel_roi_align_is_bit_identical_and_keeps_gradients():
    from detectron2.layers import ROIAlign

    from resbackbones.modeling.roi_align import ParallelROIAlign, with_parallel_roi_align

    torch.manual_seed(0)
    features = torch.randn(2, 8, 48, 64)
    corners = torch.rand(300, 2) * torch.tensor([50.0, 30.0])
    boxes = torch.cat([corners, corners + 1 + torch.rand(300, 2) * 14], dim=1)
    rois = torch.cat([torch.randint(0, 2, (300, 1)).float(), boxes], dim=1)
    stock = ROIAlign((7, 7), spatial_scale=1.0, sampling_ratio=0, aligned=True)
    holder = torch.nn.Sequential(ROIAlign((7, 7), spatial_scale=1.0, sampling_ratio=0,
                                          aligned=True))
    assert with_parallel_roi_align(holder) is holder
    parallel = holder[0]
    assert type(parallel) is ParallelROIAlign
    assert (parallel.output_size, parallel.spatial_scale, parallel.sampling_ratio,
            parallel.aligned) == ((7, 7), 1.0, 0, True)
    previous_threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        with torch.no_grad():
            expected = stock(features, rois)
            assert torch.equal(parallel(features, rois), expected)
        assert parallel._executor is not None  # the ROIs were really split over threads
        with torch.inference_mode():
            assert torch.equal(parallel(features, rois), expected)
        # With autograd the stock path runs: same values and gradients.
        leaf = features.clone().requires_grad_(True)
        stock(leaf, rois).square().sum().backward()
        expected_grad = leaf.grad.clone()
        leaf.grad = None
        parallel(leaf, rois).square().sum().backward()
        assert torch.equal(leaf.grad, expected_grad)
    finally:
        torch.set_num_threads(previous_threads)


def _rcnn_pair(**resbackbone):
    """A GeneralizedRCNN and a ResBackboneRCNN (R18, Mask R-CNN) with the same weights and
    backbone settings: they differ in the meta-architecture only."""
    torch.manual_seed(0)
    stock = build_model(_mask_rcnn_cfg("GeneralizedRCNN", norm="BN", **resbackbone))
    randomize_norm_statistics(stock)
    ours = build_model(_mask_rcnn_cfg("ResBackboneRCNN", norm="BN", **resbackbone))
    assert ours.state_dict().keys() == stock.state_dict().keys()
    ours.load_state_dict(stock.state_dict())
    return stock, ours


def test_resbackbone_rcnn_trains_exactly_like_generalized_rcnn():
    from detectron2.structures import Boxes, Instances
    from detectron2.utils.events import EventStorage

    stock, ours = _rcnn_pair(channels_last="auto", winograd=True, parallel_roi_align=True)
    image = torch.randint(0, 255, (3, 128, 160), dtype=torch.uint8)
    targets = Instances((128, 160), gt_boxes=Boxes(torch.tensor([[10.0, 20.0, 90.0, 100.0]])),
                        gt_classes=torch.tensor([1]),
                        gt_masks=torch.zeros(1, 128, 160, dtype=torch.bool))
    targets.gt_masks[0, 20:100, 10:90] = True
    from detectron2.structures import BitMasks

    targets.gt_masks = BitMasks(targets.gt_masks)
    losses = []
    for model in (stock, ours):
        model.train()
        torch.manual_seed(1)  # the same ROI sampling for both
        with EventStorage():
            losses.append(model([{"image": image, "instances": targets}]))
    assert losses[0].keys() == losses[1].keys()
    for name in losses[0]:
        assert torch.equal(losses[0][name], losses[1][name]), name


@needs_nnpack
def test_resbackbone_rcnn_inference_matches_generalized_rcnn(monkeypatch):
    stock, ours = _rcnn_pair(channels_last="auto", winograd=True, parallel_roi_align=True)
    stock.eval()
    ours.eval()
    calls = count_nnpack_calls(monkeypatch)
    image = torch.randint(0, 255, (3, 256, 320), dtype=torch.uint8,
                          generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        images = stock.preprocess_image([{"image": image}])
        reference_features = stock.backbone(images.tensor)
        features = ours.backbone(images.tensor)
        reference_rpn = stock.proposal_generator.rpn_head(
            [reference_features[f] for f in stock.proposal_generator.in_features])
        rpn = ours.proposal_generator.rpn_head(
            [features[f] for f in ours.proposal_generator.in_features])
        for reference_level, level in zip(sum(reference_rpn, []), sum(rpn, [])):
            assert _relative_error(reference_level, level) < 1e-4
        # The mask head on the same boxes: probabilities before pasting.
        from detectron2.structures import Boxes, Instances

        boxes = Instances((256, 320), pred_boxes=Boxes(torch.tensor(
            [[10.0, 20.0, 90.0, 100.0], [100.0, 50.0, 300.0, 240.0]] * 20)),
            pred_classes=torch.tensor([0, 2] * 20))
        reference_masks = stock.inference([{"image": image}], [boxes], do_postprocess=False)
        masks = ours.inference([{"image": image}], [boxes], do_postprocess=False)
        assert _relative_error(reference_masks[0].pred_masks, masks[0].pred_masks) < 1e-4
        # And the whole pipeline runs through the fast path.
        calls.clear()
        ours([{"image": image}])
    assert len(calls) >= 4  # FPN outputs on P2/P3 (2), then the RPN conv on P2/P3 (2) and more


@needs_nnpack
def test_resbackbone_retinanet_head_matches_retinanet(monkeypatch):
    cfg = _cfg("resnet18", norm="BN")
    cfg.merge_from_file("configs/Base-RetinaNet-resbackbone.yaml")
    cfg.MODEL.BACKBONE.FREEZE_AT = 0
    cfg.MODEL.DEVICE = "cpu"
    cfg.MODEL.RETINANET.NUM_CLASSES = 3
    cfg.MODEL.RESBACKBONE.WINOGRAD = True
    assert cfg.MODEL.META_ARCHITECTURE == "ResBackboneRetinaNet"
    ours = build_model(cfg).eval()
    randomize_norm_statistics(ours)
    stock_cfg = cfg.clone()
    stock_cfg.MODEL.META_ARCHITECTURE = "RetinaNet"
    stock = build_model(stock_cfg).eval()
    assert ours.state_dict().keys() == stock.state_dict().keys()
    stock.load_state_dict(ours.state_dict())
    calls = count_nnpack_calls(monkeypatch)
    image = torch.randint(0, 255, (3, 256, 320), dtype=torch.uint8)
    with torch.no_grad():
        images = ours.preprocess_image([{"image": image}])
        features = stock.backbone(images.tensor)
        levels = [features[f] for f in stock.head_in_features]
        for reference, output in zip(sum(stock.head(levels), []), sum(ours.head(levels), [])):
            assert _relative_error(reference, output) < 1e-4
    assert len(calls) >= 10  # P3 (32x40 = 1280 px) through all ten head convs
