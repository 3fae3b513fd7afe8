#!/usr/bin/env python
"""ResUNet++ (paper encoder, resnet34 encoder) and smp's UnetPlusPlus side by side.

Same data (the synthetic polyp set, the same seeded split and the same batches and flips for
every model), same loss (Dice + BCE), optimiser (Adam), learning rate, steps and input size.
Prints Dice, IoU, mIoU (with background), parameters and seconds per iteration, and writes them
to ``OUTPUT/compare_peers.json``::

    pip install segmentation-models-pytorch      # or: pip install -e ".[resunetpp]"
    python compare_peers.py --steps 300 --size 64 --output output/compare_peers
"""
import argparse
import json
import os
import sys
import time
from typing import Callable, Dict, List

import numpy as np
import torch
from torch.nn import functional as F

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from detectron2.modeling import build_model  # noqa: E402

from resunetpp import build_resunetpp_config  # noqa: E402
from resunetpp.data import (  # noqa: E402
    SyntheticPolypSpec,
    generate_synthetic_polyps,
    make_split,
    read_mask,
    scan_pairs,
)
from resunetpp.losses import binary_dice_bce_loss  # noqa: E402
from resunetpp.metrics import confusion_matrix, image_scores, mean_iou  # noqa: E402

PROJECT_DIR = os.path.dirname(os.path.abspath(__file__))
BASE_CONFIG = os.path.join(PROJECT_DIR, "configs", "Base-ResUNetPP.yaml")
MEAN = torch.tensor([123.675, 116.28, 103.53]).view(1, 3, 1, 1)
STD = torch.tensor([58.395, 57.12, 57.375]).view(1, 3, 1, 1)


def load_split(root: str, size: int, seed: int):
    """Images resized to ``size`` (normalised tensors), masks at ``size`` and at full size."""
    from PIL import Image

    pairs = {stem: (image, mask) for stem, image, mask in scan_pairs("kvasir", root).pairs}
    split = make_split(sorted(pairs), seed)
    data = {}
    for part in ("train", "val"):
        images, masks, full_masks = [], [], []
        for stem in split[part]:
            image = Image.open(pairs[stem][0]).convert("RGB").resize((size, size),
                                                                     Image.BILINEAR)
            mask = read_mask(pairs[stem][1])
            images.append(torch.tensor(np.asarray(image)).permute(2, 0, 1).float())
            masks.append(torch.tensor(np.asarray(Image.fromarray(mask).resize(
                (size, size), Image.NEAREST))).long())
            full_masks.append(mask)
        data[part] = ((torch.stack(images) - MEAN) / STD, torch.stack(masks), full_masks)
    return data


def resunetpp_logits(encoder: str) -> Callable[[], torch.nn.Module]:
    def build() -> torch.nn.Module:
        cfg = build_resunetpp_config(BASE_CONFIG, ["MODEL.DEVICE", "cpu", "MODEL.BACKBONE.NAME",
                                                   encoder, "MODEL.RESBACKBONE.ARCH", "resnet34"])
        model = build_model(cfg)

        class Logits(torch.nn.Module):  # normalised tensor in, one logit channel out
            def __init__(self):
                super().__init__()
                self.model = model

            def forward(self, x):
                return self.model.sem_seg_head.layers(self.model.backbone(x))
        return Logits()
    return build


def smp_unetplusplus() -> torch.nn.Module:
    import segmentation_models_pytorch as smp

    return smp.UnetPlusPlus(encoder_name="tu-resnet34", encoder_weights=None, classes=1)


def train_and_evaluate(build: Callable[[], torch.nn.Module], data, steps: int, batch: int,
                       lr: float, seed: int) -> Dict[str, float]:
    torch.manual_seed(seed)
    model = build()
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    images, masks, _ = data["train"]
    order = np.random.default_rng(seed)  # the same batches and flips for every model
    model.train()
    start, cpu_start = time.perf_counter(), time.process_time()
    for step in range(steps):
        index = torch.as_tensor(order.choice(len(images), batch, replace=False))
        x, y = images[index], masks[index]
        if order.uniform() < 0.5:
            x, y = x.flip(-1), y.flip(-1)
        if order.uniform() < 0.5:
            x, y = x.flip(-2), y.flip(-2)
        if step == int(0.8 * steps):
            for group in optimizer.param_groups:
                group["lr"] = lr * 0.1
        losses = binary_dice_bce_loss(model(x), y, ignore_value=255)
        optimizer.zero_grad()
        sum(losses.values()).backward()
        optimizer.step()
    seconds = (time.perf_counter() - start) / steps
    cpu_seconds = (time.process_time() - cpu_start) / steps
    model.eval()
    val_images, _, full_masks = data["val"]
    rows, pooled = [], np.zeros((2, 2), np.int64)
    with torch.no_grad():
        for image, truth in zip(val_images, full_masks):
            logits = model(image[None])
            logits = F.interpolate(logits, size=truth.shape, mode="bilinear", align_corners=False)
            matrix = confusion_matrix((logits[0, 0] > 0).numpy().astype(int), truth, 2)
            pooled += matrix
            rows.append(image_scores(matrix))
    return {"dice": 100 * float(np.mean([r["dice"] for r in rows])),
            "iou": 100 * float(np.mean([r["iou"] for r in rows])),
            "miou": 100 * mean_iou(pooled),
            "params_M": sum(p.numel() for p in model.parameters()) / 1e6,
            "s_per_iter": seconds, "cpu_s_per_iter": cpu_seconds}


def main(argv: List[str] = None) -> Dict[str, Dict[str, float]]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default="datasets/synthetic_polyps")
    parser.add_argument("--output", default="output/compare_peers")
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--size", type=int, default=64, help="square input side (multiple of 32)")
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--models", default="paper,resnet34,smp",
                        help="comma-separated subset of paper, resnet34, smp")
    args = parser.parse_args(argv)
    if not os.path.isdir(os.path.join(args.data, "masks")):
        generate_synthetic_polyps(args.data, SyntheticPolypSpec())
    data = load_split(args.data, args.size, args.seed)
    contenders = {"paper": ("ResUNet++ (paper encoder)",
                            resunetpp_logits("build_resunetpp_paper_encoder")),
                  "resnet34": ("ResUNet++ (resnet34 encoder)",
                               resunetpp_logits("build_resunetpp_resbackbone_encoder")),
                  "smp": ("smp UnetPlusPlus (tu-resnet34)", smp_unetplusplus)}
    results = {}
    os.makedirs(args.output, exist_ok=True)
    for key in args.models.split(","):
        label, build = contenders[key]
        results[label] = train_and_evaluate(build, data, args.steps, args.batch, args.lr,
                                            args.seed)
        print(f"{label}: " + ", ".join(f"{k} {v:.3f}" for k, v in results[label].items()),
              flush=True)
        with open(os.path.join(args.output, "compare_peers.json"), "w") as file:
            json.dump({"settings": vars(args), "results": results}, file, indent=2)
    print("| model | Dice | IoU | mIoU | params M | s/iter | CPU s/iter |\n"
          "|:--|--:|--:|--:|--:|--:|--:|")
    for label, r in results.items():
        print(f"| {label} | {r['dice']:.1f} | {r['iou']:.1f} | {r['miou']:.1f} | "
              f"{r['params_M']:.1f} | {r['s_per_iter']:.2f} | {r['cpu_s_per_iter']:.2f} |")
    return results


if __name__ == "__main__":
    main()
