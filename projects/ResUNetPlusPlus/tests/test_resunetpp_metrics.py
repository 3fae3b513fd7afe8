"""Dice/IoU/precision/recall against hand-computed values, the losses, and the evaluators."""
import csv

import numpy as np
import pytest
import torch
from torch.nn import functional as F

from resunetpp.losses import binary_dice_bce_loss, multiclass_dice_ce_loss, soft_dice_loss
from resunetpp.metrics import confusion_matrix, image_scores, mean_iou

EMPTY = np.zeros((4, 4), int)
FULL = np.ones((4, 4), int)
LEFT = np.zeros((4, 4), int)
LEFT[:, :2] = 1  # 8 pixels
TOP = np.zeros((4, 4), int)
TOP[:2, :] = 1  # 8 pixels; overlaps LEFT in 4


def _scores(prediction, truth, num_classes=2):
    return image_scores(confusion_matrix(prediction, truth, num_classes))


@pytest.mark.parametrize("prediction, truth, want", [
    # both empty: nothing to find, nothing found
    (EMPTY, EMPTY, dict(dice=1.0, iou=1.0, precision=1.0, recall=1.0)),
    # all-foreground, predicted perfectly
    (FULL, FULL, dict(dice=1.0, iou=1.0, precision=1.0, recall=1.0)),
    # perfect on a partial mask
    (LEFT, LEFT, dict(dice=1.0, iou=1.0, precision=1.0, recall=1.0)),
    # disjoint: LEFT vs its complement
    (LEFT, 1 - LEFT, dict(dice=0.0, iou=0.0, precision=0.0, recall=0.0)),
    # missed everything: empty prediction, 8 true pixels
    (EMPTY, LEFT, dict(dice=0.0, iou=0.0, precision=0.0, recall=0.0)),
    # false alarm on an empty image
    (LEFT, EMPTY, dict(dice=0.0, iou=0.0, precision=0.0, recall=0.0)),
    # TP 4, FP 4, FN 4: Dice 8/16, IoU 4/12, precision 4/8, recall 4/8
    (TOP, LEFT, dict(dice=0.5, iou=1 / 3, precision=0.5, recall=0.5)),
    # all-foreground prediction on LEFT: TP 8, FP 8, FN 0
    (FULL, LEFT, dict(dice=16 / 24, iou=0.5, precision=0.5, recall=1.0)),
])
def test_binary_scores_hand_computed(prediction, truth, want):
    got = _scores(prediction, truth)
    assert got == pytest.approx(want)


def test_ignored_pixels_do_not_count():
    truth = LEFT.copy()
    truth[0, :] = 255
    prediction = LEFT.copy()
    prediction[0, 2:] = 1  # wrong, but on ignored pixels
    matrix = confusion_matrix(prediction, truth, 2, 255)
    assert matrix.sum() == 12
    assert image_scores(matrix)["dice"] == 1.0


def test_multiclass_scores_and_mean_iou():
    truth = np.array([[0, 1], [2, 2]])
    prediction = np.array([[0, 1], [2, 1]])
    matrix = confusion_matrix(prediction, truth, 3)
    # class 1: TP 1, FP 1, FN 0 -> IoU 1/2, Dice 2/3; class 2: TP 1, FP 0, FN 1 -> IoU 1/2
    assert image_scores(matrix)["iou"] == pytest.approx(0.5)
    assert image_scores(matrix)["dice"] == pytest.approx(2 / 3)
    # mIoU with background (IoU 1): (1 + 1/2 + 1/2) / 3
    assert mean_iou(matrix) == pytest.approx(2 / 3)


def test_confusion_matrix_rejects_out_of_range_labels():
    with pytest.raises(ValueError, match="outside"):
        confusion_matrix(np.array([[3]]), np.array([[0]]), 2)


def test_soft_dice_loss_limits():
    target = torch.tensor(LEFT, dtype=torch.float32)[None, None]
    valid = torch.ones_like(target)
    assert soft_dice_loss(target, target, valid, smooth=0.0) == pytest.approx(0.0)
    assert soft_dice_loss(1 - target, target, valid, smooth=0.0) == pytest.approx(1.0)


def test_binary_loss_matches_torch_and_ignores_padding():
    torch.manual_seed(0)
    logits = torch.randn(2, 1, 4, 4)
    targets = torch.tensor(np.stack([LEFT, TOP]))
    padded = targets.clone()
    padded[:, :, 3] = 255
    losses = binary_dice_bce_loss(logits, padded, 255)
    keep = padded != 255
    want_bce = F.binary_cross_entropy_with_logits(logits[:, 0][keep], targets[keep].float())
    assert losses["loss_bce"].item() == pytest.approx(want_bce.item(), rel=1e-5)
    p, t = torch.sigmoid(logits[:, 0])[keep], targets[keep].float()
    want_dice = 1 - (2 * (p * t).sum() + 1) / (p.sum() + t.sum() + 1)
    assert losses["loss_dice"].item() == pytest.approx(want_dice.item(), rel=1e-5)
    with pytest.raises(ValueError, match="NUM_CLASSES"):
        binary_dice_bce_loss(logits, torch.full((2, 4, 4), 2), 255)


def test_multiclass_loss_matches_cross_entropy():
    torch.manual_seed(0)
    logits = torch.randn(1, 3, 4, 4)
    targets = torch.randint(0, 3, (1, 4, 4))
    targets[0, 0, 0] = 255
    losses = multiclass_dice_ce_loss(logits, targets, 255, dice_weight=0.0)
    want = F.cross_entropy(logits, targets, ignore_index=255)
    assert losses["loss_ce"].item() == pytest.approx(want.item(), rel=1e-6)
    with pytest.raises(ValueError, match="NUM_CLASSES"):
        multiclass_dice_ce_loss(logits, torch.full((1, 4, 4), 5), 255)


def test_evaluators_write_csv_and_agree_with_semseg(tmp_path):
    """Our pooled mIoU equals Detectron2's SemSegEvaluator's on the same predictions."""
    from PIL import Image

    from resunetpp.data import register_segmentation_dataset
    from resunetpp.evaluation import MaskFileSemSegEvaluator, SegmentationMetricsEvaluator

    root = tmp_path / "set"
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    truths = {"a": LEFT, "b": EMPTY, "c": TOP}
    for stem, truth in truths.items():
        Image.fromarray(np.zeros((4, 4, 3), np.uint8)).save(root / "images" / f"{stem}.png")
        Image.fromarray((truth * 255).astype(np.uint8)).save(root / "masks" / f"{stem}.png")
    register_segmentation_dataset("rupp_eval", "kvasir", str(root), "", seed=0)
    predictions = {"a": LEFT, "b": LEFT, "c": LEFT}
    inputs = [{"file_name": str(root / "images" / f"{s}.png"), "image_id": s} for s in truths]
    outputs = [{"sem_seg": torch.tensor(np.stack([1 - predictions[s], predictions[s]]),
                                        dtype=torch.float32)} for s in truths]
    ours = SegmentationMetricsEvaluator("rupp_eval_all", str(tmp_path), distributed=False)
    theirs = MaskFileSemSegEvaluator("rupp_eval_all", distributed=False)
    for evaluator in (ours, theirs):
        evaluator.reset()
        evaluator.process(inputs, outputs)
    result = ours.evaluate()["segmentation"]
    # per image Dice: a 1.0, b 0.0 (false alarm), c 0.5
    assert result["dice"] == pytest.approx(100 * 1.5 / 3)
    assert result["miou"] == pytest.approx(theirs.evaluate()["sem_seg"]["mIoU"])
    with open(tmp_path / "rupp_eval_all_per_image.csv") as file:
        rows = {row["image_id"]: row for row in csv.DictReader(file)}
    assert float(rows["c"]["dice"]) == pytest.approx(0.5)
    assert int(rows["b"]["predicted_pixels"]) == 8 and int(rows["b"]["true_pixels"]) == 0
