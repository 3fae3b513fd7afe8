"""Run a predictor over files, folders, globs and videos, writing drawings and COCO JSON.

The library side of ``tools/demo.py`` (Detectron2's demo style): for each image
``<output>/<name>.png`` (the drawing) and ``<output>/<name>.json`` (the records of
:mod:`resbackbones.results_format`: COCO results plus ``class_name``); for a video
``<output>/<name>.mp4`` and one JSON whose ``image_id`` is the frame index. Images are decoded at
full size, so drawings, boxes and masks are in the input's pixels and equal Detectron2's
``DefaultPredictor``'s. A file that fails to decode is reported and skipped; the run goes on.
"""
from __future__ import annotations

import argparse
import glob
import logging
import os
from dataclasses import dataclass, field
from typing import Iterable, List, Optional, Sequence

import numpy as np
from PIL import Image
from tqdm import tqdm

from resbackbones._requirements import require_extra
from resbackbones.modeling.serving import SERVING_COMPILE_CHOICES
from resbackbones.results_format import ImageId, image_id_from_name

from .drawing import draw_detections
from .images import ImageDecodeError
from .predictor import (
    SERVING_COMPILE_HELP,
    DemoPredictor,
    build_inference_config,
    model_name_from_config,
)
from .results import ONE_LABEL_IOU, coco_results, filter_instances, write_coco_json

__all__ = ["BatchSummary", "expand_inputs", "get_parser", "main", "run_on_image_file",
           "run_on_inputs", "run_on_video"]

_USAGE = """Run a detector on images, folders, globs or videos and save drawings and COCO JSON.

Detectron2's ``demo/demo.py`` style::

    python tools/demo.py --config-file output/quickstart/config.yaml \\
        --input datasets/synthetic_shapes/val 'photos/*.jpg' clip.mp4 --output output/demo \\
        --confidence-threshold 0.5 --opts MODEL.WEIGHTS output/quickstart/model_final.pth

For each image ``<output>/<name>.png`` and ``<output>/<name>.json`` (COCO results plus
``class_name``, in the input's pixels; ``image_id``: the file stem, an int when it is all digits);
for a video ``<output>/<name>.mp4`` and ``<output>/<name>.json`` (``image_id`` = frame index). An
ONNX export (tools/export_model.py) runs without Detectron2 and writes the same JSON:
``tools/demo.py --onnx MODEL_DIR --input ... --output ...``."""

logger = logging.getLogger(__name__)

VIDEO_EXTENSIONS = (".mp4", ".avi", ".mov", ".mkv", ".webm", ".m4v", ".mpg", ".mpeg")


@dataclass
class BatchSummary:
    """What a batch run did: written files and inputs that failed, with why."""

    written: List[str] = field(default_factory=list)
    failed: List[str] = field(default_factory=list)


def expand_inputs(inputs: Sequence[str]) -> List[str]:
    """Expand files, folders (their files, sorted, not recursive) and glob patterns.

    Raises:
        FileNotFoundError: an input matches nothing.
    """
    files: List[str] = []
    for item in inputs:
        if os.path.isdir(item):
            found = sorted(os.path.join(item, f) for f in os.listdir(item)
                           if os.path.isfile(os.path.join(item, f)) and not f.startswith("."))
        elif os.path.isfile(item):
            found = [item]
        else:
            found = sorted(f for f in glob.glob(os.path.expanduser(item)) if os.path.isfile(f))
        if not found:
            raise FileNotFoundError(f"--input {item!r} matches no file (give files, a folder or "
                                    "a quoted glob such as 'images/*.jpg').")
        files.extend(found)
    return files


def run_on_image_file(predictor: DemoPredictor, path: str, output_dir: str,
                      score_threshold: float = 0.5, image_id: Optional[ImageId] = None,
                      cross_class_iou: Optional[float] = None) -> List[str]:
    """Predict on one image file at its full size; write ``<stem>.png`` (drawing) and
    ``<stem>.json``, both in the file's pixels.

    ``image_id``: written in the JSON (default: ``results_format.image_id_from_name`` of the
    file). ``cross_class_iou``: see :func:`~resbackbones.demo.results.filter_instances`.

    Returns:
        The two written paths.

    Raises:
        ImageDecodeError: the file is not a usable image.
    """
    prediction = predictor(path, name=os.path.basename(path), full_size=True)
    kept = filter_instances(prediction.instances, score_threshold,
                            cross_class_iou=cross_class_iou)
    drawn = draw_detections(prediction.image, kept, predictor.class_names)
    stem = os.path.splitext(os.path.basename(path))[0]
    os.makedirs(output_dir, exist_ok=True)
    image_path = os.path.join(output_dir, f"{stem}.png")
    Image.fromarray(drawn).save(image_path)
    mapping = predictor.metadata.get("thing_dataset_id_to_contiguous_id", None)
    records = coco_results(kept, image_id_from_name(path) if image_id is None else image_id,
                           mapping, predictor.class_names, prediction.input_size)
    json_path = write_coco_json(records, os.path.join(output_dir, f"{stem}.json"))
    logger.info(f"{path}: {len(kept)} detections, {prediction.timings['model'] * 1000:.0f} ms "
                f"in the model")
    return [image_path, json_path]


def _is_video(path: str) -> bool:
    return path.lower().endswith(VIDEO_EXTENSIONS)


def run_on_video(predictor: DemoPredictor, path: str, output_dir: str,
                 score_threshold: float = 0.5,
                 cross_class_iou: Optional[float] = None) -> List[str]:
    """Predict on every frame of a video readable by OpenCV; write ``<stem>.mp4`` and JSON.

    Raises:
        ValueError: OpenCV cannot read the file.
    """
    cv2 = require_extra("demo", "cv2", "Video input in the demo")
    capture = cv2.VideoCapture(path)
    if not capture.isOpened():
        raise ValueError(f"{path}: OpenCV cannot open this video (codec missing or not a "
                         "video).")
    fps = capture.get(cv2.CAP_PROP_FPS) or 25.0
    frames = int(capture.get(cv2.CAP_PROP_FRAME_COUNT)) or None
    stem = os.path.splitext(os.path.basename(path))[0]
    os.makedirs(output_dir, exist_ok=True)
    video_path = os.path.join(output_dir, f"{stem}.mp4")
    mapping = predictor.metadata.get("thing_dataset_id_to_contiguous_id", None)
    writer = None
    results = []
    try:
        for index in tqdm(range(frames) if frames else iter(int, 1), desc=stem, unit="frame",
                          leave=False):
            ok, frame_bgr = capture.read()
            if not ok:
                break
            prediction = predictor.predict(np.ascontiguousarray(frame_bgr[:, :, ::-1]))
            kept = filter_instances(prediction.instances, score_threshold,
                                    cross_class_iou=cross_class_iou)
            drawn = draw_detections(prediction.image, kept, predictor.class_names)
            if writer is None:
                fourcc = cv2.VideoWriter_fourcc(*"mp4v")
                writer = cv2.VideoWriter(video_path, fourcc, fps, (drawn.shape[1],
                                                                   drawn.shape[0]))
            writer.write(np.ascontiguousarray(drawn[:, :, ::-1]))
            results.extend(coco_results(kept, index, mapping, predictor.class_names))
    finally:
        capture.release()
        if writer is not None:
            writer.release()
    if writer is None:
        raise ValueError(f"{path}: OpenCV opened the file but read no frame from it.")
    json_path = write_coco_json(results, os.path.join(output_dir, f"{stem}.json"))
    return [video_path, json_path]


def run_on_inputs(predictor: DemoPredictor, inputs: Iterable[str], output_dir: str,
                  score_threshold: float = 0.5,
                  cross_class_iou: Optional[float] = None) -> BatchSummary:
    """Run on every input (see :func:`expand_inputs`), with a progress bar.

    Images go through Pillow; a file Pillow cannot read is tried as a video with OpenCV.

    Returns:
        Written files and failures (``"path: reason"``).
    """
    files = expand_inputs(list(inputs))
    summary = BatchSummary()
    for path in tqdm(files, desc="demo", unit="file"):
        try:
            if _is_video(path):
                summary.written += run_on_video(predictor, path, output_dir, score_threshold,
                                                cross_class_iou)
                continue
            try:
                summary.written += run_on_image_file(predictor, path, output_dir,
                                                     score_threshold,
                                                     cross_class_iou=cross_class_iou)
            except ImageDecodeError as image_error:
                try:
                    summary.written += run_on_video(predictor, path, output_dir,
                                                    score_threshold, cross_class_iou)
                except ValueError:
                    raise image_error from None
        except (ValueError, OSError) as err:
            logger.warning(f"Skipped {path}: {err}")
            summary.failed.append(f"{path}: {err}")
    return summary


def get_parser() -> argparse.ArgumentParser:
    """The command line of ``tools/demo.py`` (Detectron2 models; ``--onnx`` is dispatched by the
    tool to :mod:`resbackbones.deploy.onnx_demo` before Detectron2 is imported)."""
    parser = argparse.ArgumentParser(description=_USAGE.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog="\n\n".join(_USAGE.split("\n\n")[1:]))
    parser.add_argument("--config-file", metavar="FILE", required=True,
                        help="Detectron2 config of the model.")
    parser.add_argument("--input", nargs="+", required=True,
                        help="Image or video files, folders, or quoted glob patterns.")
    parser.add_argument("--output", required=True, help="Folder for drawings and JSON files.")
    parser.add_argument("--confidence-threshold", type=float, default=0.5,
                        help="Minimum score of the detections kept.")
    parser.add_argument("--one-label-per-object", action="store_true",
                        help="Drop a detection whose box overlaps a higher-scored one of another "
                             f"class (IoU >= {ONE_LABEL_IOU:g}); by default, as Detectron2, "
                             "overlaps are suppressed within a class only.")
    parser.add_argument("--device", default=None,
                        help="cpu, cuda, cuda:N (default: MODEL.DEVICE, or the CPU without CUDA).")
    parser.add_argument("--class-names", default=None,
                        help="Comma-separated class names, when the config's test dataset is not "
                             "registered and the checkpoint stores none.")
    parser.add_argument("--compile", default="off", choices=SERVING_COMPILE_CHOICES,
                        help=SERVING_COMPILE_HELP)
    parser.add_argument("--opts", default=[], nargs=argparse.REMAINDER,
                        help="KEY VALUE config overrides; put it last.")
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Run ``tools/demo.py``'s command line; returns the exit code (1 if an input failed)."""
    from detectron2.utils.logger import setup_logger

    args = get_parser().parse_args(argv)
    setup_logger(name="resbackbones")
    logger = logging.getLogger("resbackbones")
    logger.setLevel(logging.INFO)
    class_names = [c.strip() for c in args.class_names.split(",")] if args.class_names else None
    try:
        cfg = build_inference_config(args.config_file, args.opts, device=args.device,
                                     score_threshold=args.confidence_threshold)
        predictor = DemoPredictor(cfg, name=model_name_from_config(args.config_file),
                                  class_names=class_names, compile_serving=args.compile)
        summary = run_on_inputs(predictor, args.input, args.output, args.confidence_threshold,
                                ONE_LABEL_IOU if args.one_label_per_object else None)
    except (FileNotFoundError, ValueError) as err:
        raise SystemExit(f"error: {err}") from None
    logger.info(f"Wrote {len(summary.written)} files to {args.output}")
    for failure in summary.failed:
        logger.warning(f"failed: {failure}")
    return 1 if summary.failed else 0
