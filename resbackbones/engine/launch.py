"""Command-line set-up and the per-process main function behind ``tools/train_net.py``.

Why here and not in the tool: tests and ``tools/quickstart.py`` call the same functions, so the
tool stays a few lines (Detectron2's ``default_argument_parser`` conventions + ``launch``).
"""
from __future__ import annotations

import argparse
import logging
import os
from typing import Dict, List, Optional, Sequence

from detectron2.config import CfgNode
from detectron2.engine import default_argument_parser, default_setup
from detectron2.evaluation import verify_results
from detectron2.utils import comm

import resbackbones  # noqa: F401  (registers the backbones)
from resbackbones import compat
from resbackbones.checkpoint.checkpointer import ResBackboneCheckpointer
from resbackbones.config import build_config
from resbackbones.data import check_datasets_exist, register_dataset_specs, register_known_datasets
from resbackbones.model_zoo_files import resolve_config_file

from .devices import resolve_device
from .distributed import (
    check_launch_arguments,
    detect_launch_environment,
    init_process_group_from_environment,
    launch,
    leave_process_group,
    process_group_backend,
    validate_datasets_on_main_process,
)
from .ema import load_weights_for_evaluation
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

    ``MODEL.DEVICE`` goes through :func:`~resbackbones.engine.devices.resolve_device` for this
    process's world size: "cuda" on a machine without any GPU becomes "cpu" with a warning in a
    one-process run (Detectron2 would crash in the first forward pass, detectron2#300); CUDA that
    cannot start on a GPU machine, or several processes without CUDA and without an explicit
    ``MODEL.DEVICE cpu``, raise instead of training on the CPU by accident.
    """
    cfg = build_config(config_file, opts)
    cfg.MODEL.DEVICE = resolve_device(cfg.MODEL.DEVICE, comm.get_world_size())
    return cfg


def setup_cfg(args: argparse.Namespace) -> CfgNode:
    """Build, freeze and log the config of ``args``; register and check its datasets.

    Runs in every process (Detectron2's dataset catalog is per process). Raises before any
    model is built if a dataset is unknown or its files are missing.
    """
    # A packaged config name (``--config-file quick_schedules/...``) becomes its path here:
    # default_setup opens the file to log it.
    if args.config_file:
        args.config_file = resolve_config_file(args.config_file)
    cfg = build_cfg(args.config_file, args.opts)
    cfg.freeze()
    default_setup(cfg, args)  # logger, OUTPUT_DIR/config.yaml, seeds
    flavour = compat.require_supported_detectron2()
    logging.getLogger("detectron2").info(f"Running on {flavour.describe()}.")
    register_dataset_specs(getattr(args, "dataset", []))
    register_known_datasets(list(cfg.DATASETS.TRAIN) + list(cfg.DATASETS.TEST))
    check_datasets_exist(cfg)
    datasets = list(cfg.DATASETS.TEST) if args.eval_only else (
        list(cfg.DATASETS.TRAIN) + list(cfg.DATASETS.TEST))
    # Rank 0 reads the images; every rank gets its outcome (and fails or goes on with it).
    validate_datasets_on_main_process(datasets, mode=cfg.DATA_VALIDATION.MODE,
                                      skip_bad=cfg.DATA_VALIDATION.SKIP_BAD_RECORDS,
                                      cleaned_dir=os.path.join(cfg.OUTPUT_DIR, "cleaned_datasets"))
    return cfg


def main(args: argparse.Namespace) -> Dict:
    """Train (or, with ``--eval-only``, evaluate) in one process; returns the COCO results.

    A job that its launcher restarted (torchrun ``--max-restarts``: TORCHELASTIC_RESTART_COUNT
    > 0; a requeued SLURM job: SLURM_RESTART_COUNT > 0) resumes from its last checkpoint as if
    ``--resume`` had been given: a restart must continue the run it restarts, not begin again.
    """
    cfg = setup_cfg(args)
    launch_env = detect_launch_environment()
    if launch_env.external:
        logging.getLogger("detectron2").info(f"Started by {launch_env}.")
    restarts = launch_env.restart_count
    if restarts and not args.resume:
        logging.getLogger("detectron2").info(
            f"Restart {restarts} of this job: resuming from the last checkpoint in "
            f"{cfg.OUTPUT_DIR} (as with --resume).")
        args.resume = True
    if args.eval_only:
        model = Trainer.build_model(cfg)
        # With MODEL_EMA.USE_EMA_WEIGHTS_FOR_EVAL_ONLY: the checkpoint's averaged weights.
        load_weights_for_evaluation(cfg, model, ResBackboneCheckpointer(
            model, save_dir=cfg.OUTPUT_DIR,
            allow_partial_weights=cfg.MODEL.RESBACKBONE.ALLOW_PARTIAL_WEIGHTS,
        ), resume=args.resume)
        results = Trainer.test(cfg, model)
        if comm.is_main_process():
            verify_results(cfg, results)
        write_run_report(cfg, model, results)
        return results
    trainer = Trainer(cfg)
    trainer.resume_or_load(resume=args.resume)
    return trainer.train()


def run(argv: Optional[List[str]] = None) -> None:
    """Parse ``argv`` and run :func:`main` in every process of the job.

    Started by torchrun or by ``srun`` (one task per GPU), this process joins the job's process
    group (``env://``) and runs :func:`main` itself; otherwise Detectron2's ``launch`` spawns
    ``--num-gpus`` processes per machine. The device rule is checked before any process starts.
    """
    args = build_argument_parser().parse_args(argv)
    logging.getLogger("detectron2").info(f"Command line arguments: {args}")
    launch_env = detect_launch_environment()
    check_launch_arguments(launch_env, args.num_gpus, args.num_machines, args.machine_rank)
    world_size = (launch_env.world_size if launch_env.external
                  else args.num_gpus * args.num_machines)
    device = build_config(args.config_file, args.opts).MODEL.DEVICE
    if world_size > 1:  # one process: build_cfg applies (and logs) the rule itself
        device = resolve_device(device, world_size)
    if launch_env.external:
        init_process_group_from_environment(launch_env, device)
        _main_then_leave_process_group(args)
        return
    launch(main, args.num_gpus, num_machines=args.num_machines, machine_rank=args.machine_rank,
           dist_url=_rendezvous_url(args), args=(args,), backend=process_group_backend(device))


def _rendezvous_url(args: argparse.Namespace) -> Optional[str]:
    """``--dist-url`` as given, or None (a port the system picks) for a one-machine run that
    kept Detectron2's default: that default is one fixed port per user, so a stray worker of an
    earlier run on the same machine breaks the next one."""
    default = build_argument_parser().get_default("dist_url")
    if args.num_machines == 1 and args.dist_url in (default, "auto"):
        return None
    return args.dist_url


def _main_then_leave_process_group(args: argparse.Namespace) -> Dict:
    """:func:`main`, then a clean exit from the process group in every case (Gloo threads still
    alive at interpreter exit can abort a worker with "terminate called without an active
    exception"); a rank that failed leaves without waiting for the others."""
    finished = False
    try:
        results = main(args)
        finished = True
        return results
    finally:
        leave_process_group(wait_for_others=finished)
