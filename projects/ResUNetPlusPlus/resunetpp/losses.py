"""Dice + BCE (binary) and Dice + cross-entropy (multi-class), both ignoring padded pixels.

The soft Dice is computed over the whole batch (sums over images and pixels) rather than per
image, so an image without foreground does not produce a 0/0 term: the batch's foreground
dominates, as in the PyTorch ResUNet++ port and smp's ``DiceLoss``.
"""
from __future__ import annotations

from typing import Dict

import torch
from torch.nn import functional as F

__all__ = ["binary_dice_bce_loss", "multiclass_dice_ce_loss", "soft_dice_loss"]


def soft_dice_loss(probabilities: torch.Tensor, targets: torch.Tensor, valid: torch.Tensor,
                   smooth: float = 1.0) -> torch.Tensor:
    """``1 - mean over channels of (2 sum(p t) + s) / (sum(p) + sum(t) + s)``.

    Args:
        probabilities: (N, C, H, W) in [0, 1].
        targets: (N, C, H, W) one-hot (or 0/1 for the binary case).
        valid: (N, 1, H, W) 1 where the pixel counts, 0 for ignored/padded pixels.
        smooth: added to numerator and denominator; keeps empty channels finite.

    Returns:
        A scalar.
    """
    probabilities = probabilities * valid
    targets = targets * valid
    dims = (0, 2, 3)
    intersection = (probabilities * targets).sum(dims)
    total = probabilities.sum(dims) + targets.sum(dims)
    return 1.0 - ((2.0 * intersection + smooth) / (total + smooth)).mean()


def binary_dice_bce_loss(logits: torch.Tensor, targets: torch.Tensor, ignore_value: int,
                         dice_weight: float = 1.0, pixel_weight: float = 1.0
                         ) -> Dict[str, torch.Tensor]:
    """Binary segmentation loss on one logit channel.

    Args:
        logits: (N, 1, H, W).
        targets: (N, H, W) integer, 0 background, 1 foreground, ``ignore_value`` ignored.
        ignore_value: label of pixels that do not count (Detectron2 pads targets with it).
        dice_weight: factor of the Dice term.
        pixel_weight: factor of the binary cross-entropy term.

    Returns:
        ``{"loss_bce": ..., "loss_dice": ...}``, already weighted.
    """
    if logits.shape[1] != 1:
        raise ValueError(f"binary loss takes one logit channel, got {logits.shape[1]}.")
    bad = targets[(targets != ignore_value) & ((targets < 0) | (targets > 1))]
    if bad.numel():
        raise ValueError(f"Binary target label {int(bad[0])} is not 0, 1 or the ignore value "
                         f"{ignore_value}; multi-class data needs MODEL.SEM_SEG_HEAD.NUM_CLASSES "
                         "above 2.")
    valid = (targets != ignore_value).unsqueeze(1).to(logits.dtype)
    foreground = (targets == 1).unsqueeze(1).to(logits.dtype)
    bce = F.binary_cross_entropy_with_logits(logits, foreground, reduction="none")
    bce = (bce * valid).sum() / valid.sum().clamp(min=1.0)
    dice = soft_dice_loss(torch.sigmoid(logits), foreground, valid)
    return {"loss_bce": pixel_weight * bce, "loss_dice": dice_weight * dice}


def multiclass_dice_ce_loss(logits: torch.Tensor, targets: torch.Tensor, ignore_value: int,
                            dice_weight: float = 1.0, pixel_weight: float = 1.0
                            ) -> Dict[str, torch.Tensor]:
    """Multi-class segmentation loss: softmax cross-entropy + soft Dice over all classes.

    Args:
        logits: (N, K, H, W).
        targets: (N, H, W) integer class indices in [0, K) or ``ignore_value``.
        ignore_value: label of pixels that do not count.
        dice_weight: factor of the Dice term.
        pixel_weight: factor of the cross-entropy term.

    Returns:
        ``{"loss_ce": ..., "loss_dice": ...}``, already weighted.
    """
    num_classes = logits.shape[1]
    valid_mask = targets != ignore_value
    bad = targets[valid_mask & ((targets < 0) | (targets >= num_classes))]
    if bad.numel():
        raise ValueError(f"Target label {int(bad[0])} is outside [0, {num_classes}) and is not the "
                         f"ignore value {ignore_value}; check MODEL.SEM_SEG_HEAD.NUM_CLASSES.")
    ce = F.cross_entropy(logits, targets.long(), ignore_index=ignore_value) \
        if valid_mask.any() else logits.sum() * 0.0
    safe = torch.where(valid_mask, targets, torch.zeros_like(targets)).long()
    one_hot = F.one_hot(safe, num_classes).permute(0, 3, 1, 2).to(logits.dtype)
    valid = valid_mask.unsqueeze(1).to(logits.dtype)
    dice = soft_dice_loss(torch.softmax(logits, dim=1), one_hot, valid)
    return {"loss_ce": pixel_weight * ce, "loss_dice": dice_weight * dice}
