"""Demos: a Gradio page and a command-line demo over any Detectron2 config and checkpoint.

Modules: ``images`` (robust decoding of uploads), ``predictor`` (config + weights → model,
timed prediction), ``drawing`` (Detectron2's ``Visualizer``), ``results`` (filtering, table
rows, COCO results JSON), ``examples`` and ``photos`` (example images), ``model_zoo``
(Detectron2's COCO models, weights fetched on first use), ``app`` (the Gradio page) and
``batch`` (files, folders and videos for ``tools/demo.py``). Gradio is imported only by
``app.build_app``, so the rest works without it.
"""
from .app import DemoResult, DetectionDemo, build_app, launch_app
from .batch import expand_inputs, run_on_image_file, run_on_inputs, run_on_video
from .drawing import DRAW_PARTS, draw_detections
from .examples import make_example_images
from .images import DecodedImage, ImageDecodeError, decode_image
from .model_zoo import (
    COCO_MASK_RCNN_R50_FPN_3X,
    MODEL_ZOO_MODELS,
    ModelZooModel,
    build_model_zoo_predictor,
    fetch_model_zoo_weights,
)
from .photos import make_photo_examples
from .predictor import DemoPredictor, Prediction, model_name_from_config, build_inference_config
from .results import TABLE_HEADERS, coco_results, detection_rows, filter_instances, write_coco_json

__all__ = [k for k in globals().keys() if not k.startswith("_")]
