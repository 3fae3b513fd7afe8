"""``tools/gradio_demo.py``: serve a detector as a Gradio page: upload an image, see boxes, labels and masks.

One model (what ``make demo`` runs after ``make quickstart``)::

    python tools/gradio_demo.py --config-file output/quickstart/config.yaml \\
        --opts MODEL.WEIGHTS output/quickstart/model_final.pth

Several models, picked in a dropdown (``--opts`` applies to all models given)::

    python tools/gradio_demo.py --model r18=configs/a.yaml:out/a/model_final.pth \\
        --model r50=configs/b.yaml:out/b/model_final.pth --opts MODEL.DEVICE cpu

Without ``--config-file``/``--model`` it serves ``output/quickstart`` when that exists. The
dropdown also offers Detectron2's model-zoo COCO Mask R-CNN R50-FPN 3x (through the twin config
configs/Detectron2-ModelZoo/mask_rcnn_R_50_FPN_3x.yaml); its weights (about 180 MB) are
downloaded into Detectron2's cache when it is first chosen (``--model-zoo-url`` or
$RESBACKBONES_MODEL_ZOO_URL: a mirror; ``--no-model-zoo``: leave it out). The page is served on
127.0.0.1 unless ``--host`` says otherwise; it has no login.
"""
from __future__ import annotations

import argparse
import logging
import os
import re
import sys
from collections import OrderedDict
from functools import partial
from typing import Callable, Dict, List, Optional, Sequence

from detectron2.utils.logger import setup_logger

from resbackbones.checkpoint import WeightsUnavailableError
from resbackbones.modeling.serving import SERVING_COMPILE_CHOICES

from .app import DetectionDemo, build_app, launch_app
from .model_zoo import MODEL_ZOO_MODELS, build_model_zoo_predictor
from .predictor import (
    SERVING_COMPILE_HELP,
    DemoPredictor,
    build_inference_config,
    model_name_from_config,
)

__all__ = ["get_parser", "main", "parse_model_specs", "quickstart_args"]

QUICKSTART_OUTPUT = "output/quickstart"


def _file_size(text: str) -> str:
    """``--max-file-size``, checked when parsed (Gradio would refuse it only after the models
    are built)."""
    if not re.fullmatch(r"\s*\d+\s*(b|kb|mb|gb|tb)\s*", text, flags=re.IGNORECASE):
        raise argparse.ArgumentTypeError(
            f"--max-file-size {text!r} is invalid; valid: a whole number and a unit b, kb, mb, "
            "gb or tb, e.g. 25mb.")
    return text


def get_parser() -> argparse.ArgumentParser:
    """The command line of ``tools/gradio_demo.py`` (its usage text is this module's docstring)."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog="\n\n".join(__doc__.split("\n\n")[1:]))
    parser.add_argument("--config-file", metavar="FILE", help="Detectron2 config of the model.")
    parser.add_argument("--model", action="append", default=[], metavar="NAME=CONFIG[:WEIGHTS]",
                        help="A model for the dropdown (repeat for several); WEIGHTS overrides "
                             "the config's MODEL.WEIGHTS.")
    parser.add_argument("--host", default="127.0.0.1",
                        help="Interface to listen on (default: this machine only).")
    parser.add_argument("--port", type=int, default=None,
                        help="Port (default: the first free one from 7860).")
    parser.add_argument("--device", default=None,
                        help="cpu, cuda, cuda:N (default: MODEL.DEVICE, or the CPU without CUDA).")
    parser.add_argument("--confidence-threshold", type=float, default=0.5,
                        help="Initial value of the score slider.")
    parser.add_argument("--class-names", default=None,
                        help="Comma-separated class names, when the config's test dataset is not "
                             "registered and the checkpoint stores none.")
    parser.add_argument("--max-file-size", default="25mb", type=_file_size,
                        help="Upload size limit: a number and b, kb, mb, gb or tb (default "
                             "25mb); a larger upload is refused with a message.")
    parser.add_argument("--model-zoo-url", default=None, metavar="URL",
                        help="Base URL of a Detectron2 model-zoo mirror (default: "
                             "$RESBACKBONES_MODEL_ZOO_URL, else Detectron2's).")
    parser.add_argument("--no-model-zoo", action="store_true",
                        help="Do not offer Detectron2's COCO model in the dropdown.")
    parser.add_argument("--compile", default="off", choices=SERVING_COMPILE_CHOICES,
                        help=SERVING_COMPILE_HELP + " Applies to the models given here (each "
                             "is compiled when it is built), not to the model-zoo entry.")
    parser.add_argument("--opts", default=[], nargs=argparse.REMAINDER,
                        help="KEY VALUE config overrides, applied to every model; put it last.")
    return parser


def parse_model_specs(args: argparse.Namespace) -> "OrderedDict[str, tuple]":
    """Name → (config file, opts) from ``--config-file`` and/or ``--model`` arguments."""
    specs: "OrderedDict[str, tuple]" = OrderedDict()
    if args.config_file:
        specs[model_name_from_config(args.config_file)] = (args.config_file, list(args.opts))
    for item in args.model:
        name, sep, rest = item.partition("=")
        if not sep or not name or not rest:
            raise SystemExit(f"--model {item!r}: expected NAME=CONFIG[:WEIGHTS], e.g. "
                             "r50=configs/mask_rcnn.yaml:output/r50/model_final.pth")
        config_file, _, weights = rest.partition(":")
        opts = list(args.opts) + (["MODEL.WEIGHTS", weights] if weights else [])
        if name in specs:
            raise SystemExit(f"--model name {name!r} is given twice; names must be unique.")
        specs[name] = (config_file, opts)
    if not specs:
        raise SystemExit("Give --config-file (with --opts MODEL.WEIGHTS ...) or --model "
                         "NAME=CONFIG:WEIGHTS. After `make quickstart`: `make demo`.")
    return specs


def build_models(specs: Dict[str, tuple], device: Optional[str],
                 class_names: Optional[List[str]], compile_serving: str = "off"
                 ) -> Dict[str, Callable[[], DemoPredictor]]:
    """Configs are read now (so a typo fails at start); models are built (and, with
    ``compile_serving``, compiled) on first use."""
    models = OrderedDict()
    for name, (config_file, opts) in specs.items():
        cfg = build_inference_config(config_file, opts, device=device)
        weights = cfg.MODEL.WEIGHTS
        if weights and "://" not in weights and not os.path.isfile(weights):
            raise FileNotFoundError(f"Model {name!r}: MODEL.WEIGHTS file {weights!r} does not "
                                    "exist (after `make quickstart`: "
                                    f"{QUICKSTART_OUTPUT}/model_final.pth).")
        models[name] = partial(DemoPredictor, cfg, name=name, class_names=class_names,
                               compile_serving=compile_serving)
    return models


def add_model_zoo_models(models: Dict[str, Callable[[], DemoPredictor]], device: Optional[str],
                         opts: Sequence[str], base_url: Optional[str]) -> None:
    """Offer the model-zoo detectors after the user's models; built (downloaded) when chosen."""
    for entry in MODEL_ZOO_MODELS:
        if entry.name not in models:
            models[entry.name] = partial(build_model_zoo_predictor, entry, device=device,
                                         opts=opts, base_url=base_url)


def quickstart_args(output_dir: str = QUICKSTART_OUTPUT) -> List[str]:
    """The arguments ``make demo`` passes: the model trained by ``make quickstart``."""
    return ["--config-file", os.path.join(output_dir, "config.yaml"),
            "--opts", "MODEL.WEIGHTS", os.path.join(output_dir, "model_final.pth")]


def main(argv: Optional[Sequence[str]] = None) -> str:
    """Parse ``argv``, load the models and serve the page; returns what ``launch_app`` returns."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if not any(a in ("--config-file", "--model", "-h", "--help") for a in argv) and \
            os.path.isfile(os.path.join(QUICKSTART_OUTPUT, "config.yaml")):
        # No model given: serve the quickstart's (its MODEL.WEIGHTS first, so user opts win).
        opts_at = argv.index("--opts") if "--opts" in argv else len(argv)
        argv = argv[:opts_at] + quickstart_args() + argv[opts_at + 1:]
    args = get_parser().parse_args(argv)
    setup_logger(name="resbackbones")
    logging.getLogger("resbackbones").setLevel(logging.INFO)
    class_names = [c.strip() for c in args.class_names.split(",")] if args.class_names else None
    try:
        given = args.config_file or args.model or args.no_model_zoo
        models = build_models(parse_model_specs(args), args.device, class_names,
                              args.compile) if given \
            else OrderedDict()  # nothing trained yet: the COCO model alone
        if not args.no_model_zoo:  # --opts are meant for the user's models, not for these
            add_model_zoo_models(models, args.device, (), args.model_zoo_url)
        demo = DetectionDemo(models)
        demo.predictor()  # build the default model now: a bad checkpoint fails before serving
    except (FileNotFoundError, ValueError, WeightsUnavailableError) as err:
        raise SystemExit(f"error: {err}") from None
    app = build_app(demo, score_threshold=args.confidence_threshold)
    return launch_app(app, host=args.host, port=args.port, max_file_size=args.max_file_size)
