"""Run an ONNX export on image files and save drawings and JSON, without Detectron2 or PyTorch.

Used by ``tools/demo.py --onnx MODEL_DIR`` and runnable alone where Detectron2 is not installed::

    python -m resbackbones.deploy.onnx_demo --onnx exported/quickstart --input photos/ \\
        --output output/onnx_demo --confidence-threshold 0.5

For each image ``<output>/<name>.png`` (boxes, masks and labels drawn with Pillow) and
``<output>/<name>.json``: the records of :mod:`resbackbones.results_format` (COCO results plus
``class_name``, in the input's pixels, the data set's ``category_id`` when the export carries its
mapping), the same JSON as the eager ``tools/demo.py`` writes for the same model and image.
"""
from __future__ import annotations

import argparse
import glob
import os
import sys
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
from PIL import Image, ImageDraw

from resbackbones.deploy.onnx_runner import Detections, OnnxDetector
from resbackbones.results_format import (
    ImageId,
    detection_records,
    image_id_from_name,
    write_records,
)

__all__ = ["IMAGE_EXTENSIONS", "detections_json", "draw_detections", "expand_images", "main",
           "run_onnx_demo"]

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff")


def _colour(class_id: int) -> Tuple[int, int, int]:
    """A fixed, well-separated colour per class id (golden-ratio hue steps)."""
    import colorsys

    red, green, blue = colorsys.hsv_to_rgb((class_id * 0.618034) % 1.0, 0.75, 0.95)
    return int(red * 255), int(green * 255), int(blue * 255)


def draw_detections(rgb: np.ndarray, detections: Detections) -> np.ndarray:
    """Draw masks (half transparent), boxes and ``"name 87%"`` labels on an RGB image."""
    image = rgb.astype(np.float32)
    classes = detections.classes.tolist()
    if detections.masks is not None:
        for mask, class_id in zip(detections.masks, classes):
            image[mask] = image[mask] * 0.5 + np.array(_colour(class_id), np.float32) * 0.5
    canvas = Image.fromarray(image.round().clip(0, 255).astype(np.uint8))
    draw = ImageDraw.Draw(canvas)
    for box, score, label, class_id in zip(detections.boxes.tolist(),
                                           detections.scores.tolist(), detections.labels,
                                           classes):
        draw.rectangle(box, outline=_colour(class_id), width=2)
        text = f"{label} {score * 100:.0f}%"
        left, top, right, bottom = draw.textbbox((box[0], box[1]), text)
        offset = bottom - top + 2
        draw.rectangle((left, top - offset, right + 2, bottom - offset), fill=_colour(class_id))
        draw.text((box[0] + 1, box[1] - offset), text, fill=(0, 0, 0))
    return np.asarray(canvas)


def detections_json(detections: Detections, image_id: ImageId,
                    dataset_id_to_contiguous_id: Optional[Dict[int, int]] = None) -> List[dict]:
    """The runner's detections as :mod:`resbackbones.results_format` records (already in the
    input's pixels); ``dataset_id_to_contiguous_id``: ``OnnxDetector``'s, from the export."""
    return detection_records(detections.boxes, detections.scores, detections.classes,
                             detections.class_names, image_id, detections.masks,
                             dataset_id_to_contiguous_id)


def expand_images(inputs: Sequence[str]) -> List[str]:
    """Image files named by ``inputs`` (files, folders, quoted glob patterns), sorted."""
    files: List[str] = []
    for item in inputs:
        if os.path.isdir(item):
            files += sorted(os.path.join(item, name) for name in os.listdir(item)
                            if name.lower().endswith(IMAGE_EXTENSIONS))
        elif os.path.isfile(item):
            files.append(item)
        else:
            matches = sorted(glob.glob(item))
            if not matches:
                raise FileNotFoundError(f"--input {item!r}: no such file, folder or pattern.")
            files += [m for m in matches if m.lower().endswith(IMAGE_EXTENSIONS)]
    return files


def run_onnx_demo(model_dir: str, inputs: Sequence[str], output_dir: str,
                  confidence_threshold: float = 0.5) -> Tuple[List[str], List[str]]:
    """Detect on every image of ``inputs`` and write a drawing and a JSON file for each.

    Returns:
        (files written, ``"path: reason"`` for each image that failed).
    """
    detector = OnnxDetector(model_dir, score_threshold=confidence_threshold)
    os.makedirs(output_dir, exist_ok=True)
    written: List[str] = []
    failed: List[str] = []
    for path in expand_images(inputs):
        name = os.path.splitext(os.path.basename(path))[0]
        try:
            with Image.open(path) as opened:
                from PIL import ImageOps

                rgb = np.asarray(ImageOps.exif_transpose(opened).convert("RGB"))
        except OSError as error:
            failed.append(f"{path}: {error}")
            continue
        detections = detector(rgb)
        png, record = (os.path.join(output_dir, name + ext) for ext in (".png", ".json"))
        Image.fromarray(draw_detections(rgb, detections)).save(png)
        write_records(detections_json(detections, image_id_from_name(path),
                                      detector.dataset_id_to_contiguous_id), record)
        written += [png, record]
    return written, failed


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--onnx", required=True, metavar="MODEL_DIR",
                        help="folder written by tools/export_model.py --format onnx")
    parser.add_argument("--input", nargs="+", required=True, help="images, folders or globs")
    parser.add_argument("--output", required=True, help="folder for drawings and JSON files")
    parser.add_argument("--confidence-threshold", type=float, default=0.5)
    args = parser.parse_args(argv)
    try:
        written, failed = run_onnx_demo(args.onnx, args.input, args.output,
                                        args.confidence_threshold)
    except (FileNotFoundError, ValueError) as error:
        raise SystemExit(f"error: {error}") from None
    print(f"wrote {len(written)} files to {args.output}")
    for failure in failed:
        print(f"failed: {failure}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
