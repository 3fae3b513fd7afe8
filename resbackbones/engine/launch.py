"""Command-line set-up and the per-process main function behind ``tools/train_net.py``.

Why here and not in the tool: tests and ``tools/quickstart.py`` call the same functions, so the
tool stays a few lines (Detectron2's ``default_argument_parser`` conventions + ``launch``).
"""
from __future__ import annotations

import argparse
import logging
import os
from typing import Dict, List, Optional, Sequence

import torch
from detectron2.config import CfgNode
from detectron2.engine import default_argument_parser, default_setup, launch
from detectron2.evaluation import verify_results
from detectron2.utils import comm

import resbackbones  # noqa: F401  (registers the backbones)
from resbackbones.checkpoint.checkpointer import ResBackboneCheckpointer
from resbackbones.config import build_config
from resbackbones.data import check_datasets_exist, register_dataset_specs
from resbackbones.data.validation import validate_registered_datasets

from .trainer import Trainer, write_run_report

__all__ = ["build_argument_parser", "main", "run", "setup_cfg"]


def build_argument_parser(epilog: Optional[str] = None) -> argparse.ArgumentParser:
    """Detectron2's standard flags plus a repeatable ``--dataset NAME=JSON:IMAGE_DIR``."""
    parser = default_argument_parser(epilog)
    parser.add_argument(
        "--dataset", action="append", default=[], metavar="NAME=JSON:IMAGE_DIR",
        help="register a COCO-format dataset under NAME (repeatable); name it in "
             "DATASETS.TRAIN / DATASETS.TEST. Put it before the trailing KEY VALUE options.")
    return parser


def build_cfg(config_file: str, opts: Sequence[str] = ()) -> CfgNode:
    """A fresh config with this project's keys, merged with ``config_file`` and ``opts``.

    On a machine without CUDA, ``MODEL.DEVICE`` "cuda" becomes "cpu" (Detectron2 would crash in
    the first forward pass, detectron2#300).
    """
    cfg = build_config(config_file, opts)
    if cfg.MODEL.DEVICE.startswith("cuda") and not torch.cuda.is_available():
        cfg.MODEL.DEVICE = "cpu"
        logging.getLogger("resbackbones").info("No CUDA device: MODEL.DEVICE set to cpu.")
    return cfg


def setup_cfg(args: argparse.Namespace) -> CfgNode:
    """Build, freeze and log the config of ``args``; register and check its datasets.

    Runs in every process (Detectron2's dataset catalog is per process). Raises before any
    model is built if a dataset is unknown or its files are missing.
    """
    cuda_missing = not torch.cuda.is_available()
    cfg = build_cfg(args.config_file, args.opts)
    cfg.freeze()
    default_setup(cfg, args)  # logger, OUTPUT_DIR/config.yaml, seeds
    log = logging.getLogger("detectron2")
    if cuda_missing:
        log.info("No CUDA device found: running on the CPU (MODEL.DEVICE=cpu); "
                 "--num-gpus N starts N Gloo processes.")
    register_dataset_specs(getattr(args, "dataset", []))
    check_datasets_exist(cfg)
    datasets = list(cfg.DATASETS.TEST) if args.eval_only else (
        list(cfg.DATASETS.TRAIN) + list(cfg.DATASETS.TEST))
    validate_registered_datasets(datasets, mode=cfg.DATASETS.VALIDATE,
                                 skip_bad=cfg.DATASETS.SKIP_BAD_RECORDS,
                                 cleaned_dir=os.path.join(cfg.OUTPUT_DIR, "cleaned_datasets"))
    return cfg


def main(args: argparse.Namespace) -> Dict:
    """Train (or, with ``--eval-only``, evaluate) in one process; returns the COCO results."""
    cfg = setup_cfg(args)
    if args.eval_only:
        model = Trainer.build_model(cfg)
        ResBackboneCheckpointer(
            model, save_dir=cfg.OUTPUT_DIR,
            allow_partial_weights=cfg.MODEL.RESBACKBONE.ALLOW_PARTIAL_WEIGHTS,
        ).resume_or_load(cfg.MODEL.WEIGHTS, resume=args.resume)
        results = Trainer.test(cfg, model)
        if comm.is_main_process():
            verify_results(cfg, results)
        write_run_report(cfg, model, results)
        return results
    trainer = Trainer(cfg)
    trainer.resume_or_load(resume=args.resume)
    return trainer.train()


def run(argv: Optional[List[str]] = None) -> None:
    """Parse ``argv`` and launch :func:`main` on ``--num-gpus`` processes per machine."""
    args = build_argument_parser().parse_args(argv)
    logging.getLogger("detectron2").info(f"Command line arguments: {args}")
    launch(_main_then_leave_process_group, args.num_gpus, num_machines=args.num_machines,
           machine_rank=args.machine_rank, dist_url=args.dist_url, args=(args,))


def _main_then_leave_process_group(args: argparse.Namespace) -> Dict:
    """:func:`main`, then a clean exit from the process group (Gloo threads still alive at
    interpreter exit can abort a worker with "terminate called without an active exception")."""
    import torch.distributed as dist

    results = main(args)
    if dist.is_available() and dist.is_initialized():
        comm.synchronize()
        dist.destroy_process_group()
    return results
