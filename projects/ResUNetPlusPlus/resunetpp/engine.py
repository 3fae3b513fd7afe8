"""Training and evaluation: Detectron2's ``DefaultTrainer`` with this project's data, optimiser and
evaluators, the command line behind ``train_net.py``, and the synthetic quickstart.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import time
from typing import Dict, List, Optional, Sequence

import torch
from detectron2.config import CfgNode
from detectron2.data import (
    DatasetCatalog,
    build_detection_test_loader,
    build_detection_train_loader,
)
from detectron2.engine import default_argument_parser, default_setup
from detectron2.evaluation import DatasetEvaluators
from detectron2.solver.build import get_default_optimizer_params, maybe_add_gradient_clipping
from detectron2.utils import comm

from resbackbones.engine.distributed import launch, process_group_backend
from resbackbones.engine.trainer import PortableDefaultTrainer

from .config import build_resunetpp_config
from .data import (
    DatasetValidationError,
    SegmentationMapper,
    SyntheticPolypSpec,
    generate_synthetic_polyps,
    parse_dataset_spec,
    register_segmentation_dataset,
    validate_registered,
)
from .evaluation import MaskFileSemSegEvaluator, SegmentationMetricsEvaluator

__all__ = ["ResUNetPPTrainer", "build_argument_parser", "main", "run", "run_quickstart",
           "setup_cfg", "validate_datasets"]

logger = logging.getLogger("resunetpp")

PROJECT_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
QUICKSTART_CONFIG = os.path.join(PROJECT_DIR, "configs", "quickstart_synthetic_polyps.yaml")
QUICKSTART_DATASET = "synthetic_polyps"


def validate_datasets(cfg: CfgNode) -> Dict[str, set]:
    """Check every data set of ``DATASETS.TRAIN`` and ``TEST`` (``RESUNETPP.DATA.VALIDATE``).

    Returns:
        ``{name: files to skip}`` (empty sets when nothing was found).

    Raises:
        DatasetValidationError: problems were found and ``SKIP_BAD_PAIRS`` is False.
    """
    bad: Dict[str, set] = {}
    if cfg.RESUNETPP.DATA.VALIDATE == "off":
        return bad
    reports = []
    for name in dict.fromkeys(list(cfg.DATASETS.TRAIN) + list(cfg.DATASETS.TEST)):
        report = validate_registered(name, cfg.MODEL.SEM_SEG_HEAD.NUM_CLASSES)
        bad[name] = report.bad_files()
        (logger.info if report.ok else logger.warning)(report.summary())
        if not report.ok:
            reports.append(report)
    if reports and not cfg.RESUNETPP.DATA.SKIP_BAD_PAIRS:
        raise DatasetValidationError(
            "\n".join(r.summary() for r in reports) + "\nFix or remove these files, or set "
            "RESUNETPP.DATA.SKIP_BAD_PAIRS True to train on the good pairs only.")
    return bad


class ResUNetPPTrainer(PortableDefaultTrainer):
    """``DefaultTrainer`` (as resbackbones runs it on both Detectron2 flavours) with the segmentation mapper, Adam/NAdam and the two evaluators."""

    skip_files: Dict[str, set] = {}

    @classmethod
    def build_train_loader(cls, cfg: CfgNode):
        records = []
        for name in cfg.DATASETS.TRAIN:
            skip = cls.skip_files.get(name, set())
            records += [r for r in DatasetCatalog.get(name)
                        if r["file_name"] not in skip and r["sem_seg_file_name"] not in skip]
        if not records:
            raise ValueError(f"DATASETS.TRAIN {list(cfg.DATASETS.TRAIN)} has no usable image/mask "
                             "pair.")
        return build_detection_train_loader(
            dataset=records, mapper=SegmentationMapper.from_config(cfg, True),
            total_batch_size=cfg.SOLVER.IMS_PER_BATCH, num_workers=cfg.DATALOADER.NUM_WORKERS,
            aspect_ratio_grouping=False)

    @classmethod
    def build_test_loader(cls, cfg: CfgNode, dataset_name: str):
        return build_detection_test_loader(cfg, dataset_name,
                                           mapper=SegmentationMapper.from_config(cfg, False))

    @classmethod
    def build_evaluator(cls, cfg: CfgNode, dataset_name: str, output_folder: Optional[str] = None):
        output_folder = output_folder or os.path.join(cfg.OUTPUT_DIR, "inference")
        csv_folder = output_folder if cfg.RESUNETPP.EVAL.PER_IMAGE_CSV else None
        return DatasetEvaluators([
            MaskFileSemSegEvaluator(dataset_name, distributed=True, output_dir=None),
            SegmentationMetricsEvaluator(dataset_name, output_dir=csv_folder),
        ])

    @classmethod
    def build_optimizer(cls, cfg: CfgNode, model: torch.nn.Module) -> torch.optim.Optimizer:
        name = cfg.RESUNETPP.SOLVER.OPTIMIZER
        if name == "SGD":
            return super().build_optimizer(cfg, model)
        params = get_default_optimizer_params(
            model, base_lr=cfg.SOLVER.BASE_LR, weight_decay_norm=cfg.SOLVER.WEIGHT_DECAY_NORM)
        optimizer_class = {"Adam": torch.optim.Adam, "NAdam": torch.optim.NAdam,
                           "AdamW": torch.optim.AdamW}[name]
        return maybe_add_gradient_clipping(cfg, optimizer_class)(
            params, lr=cfg.SOLVER.BASE_LR, weight_decay=cfg.SOLVER.WEIGHT_DECAY)


def build_argument_parser() -> argparse.ArgumentParser:
    """Detectron2's flags plus ``--dataset NAME=LAYOUT:ROOT``, ``--split-seed`` and
    ``--quickstart``."""
    parser = default_argument_parser(
        epilog="Example: train_net.py --config-file configs/resunetpp_paper_kvasir.yaml "
               "--dataset kvasir=kvasir:datasets/Kvasir-SEG")
    parser.add_argument(
        "--dataset", action="append", default=[], metavar="NAME=LAYOUT:ROOT",
        help="register NAME_train/_val/_test/_all from ROOT (layouts: kvasir, cvc, folder, "
             "folder-index); the split list is read from or written to "
             "OUTPUT_DIR/splits/NAME.txt unless --split-file NAME=PATH names another file.")
    parser.add_argument("--split-file", action="append", default=[], metavar="NAME=PATH",
                        help="split list file of data set NAME (created from --split-seed if "
                             "missing)")
    parser.add_argument("--split-seed", type=int, default=0, help="seed of new split lists")
    parser.add_argument("--quickstart", action="store_true",
                        help="generate the synthetic polyp set, train and evaluate on it")
    return parser


def register_from_args(cfg: CfgNode, specs: Sequence[str], split_files: Sequence[str] = (),
                       seed: int = 0) -> List[str]:
    """Register every ``NAME=LAYOUT:ROOT`` of ``specs``; returns the registered names."""
    files = {}
    for item in split_files:
        name, sep, path = item.partition("=")
        if not sep or not path:
            raise ValueError(f"--split-file {item!r} is not NAME=PATH.")
        files[name] = path
    names = []
    for spec in specs:
        name, layout, root = parse_dataset_spec(spec)
        split_file = files.get(name, os.path.join(cfg.OUTPUT_DIR, "splits", f"{name}.txt"))
        names += register_segmentation_dataset(name, layout, root, split_file, seed,
                                               cfg.MODEL.SEM_SEG_HEAD.NUM_CLASSES)
    return names


def setup_cfg(args: argparse.Namespace) -> CfgNode:
    """Config from the flags, data sets registered, Detectron2's logging and output set up."""
    config_file = args.config_file or (QUICKSTART_CONFIG if args.quickstart else "")
    cfg = build_resunetpp_config(config_file, args.opts)
    register_from_args(cfg, args.dataset, args.split_file, args.split_seed)
    if not torch.cuda.is_available():
        cfg.MODEL.DEVICE = "cpu"
    cfg.freeze()
    default_setup(cfg, args)
    return cfg


def main(args: argparse.Namespace) -> Dict:
    """Train (or evaluate with ``--eval-only``) one config; returns the evaluation results."""
    cfg = setup_cfg(args)
    if args.eval_only:
        model = ResUNetPPTrainer.build_model(cfg)
        from detectron2.checkpoint import DetectionCheckpointer

        DetectionCheckpointer(model, save_dir=cfg.OUTPUT_DIR).resume_or_load(
            cfg.MODEL.WEIGHTS, resume=args.resume)
        return ResUNetPPTrainer.test(cfg, model)
    ResUNetPPTrainer.skip_files = validate_datasets(cfg)
    trainer = ResUNetPPTrainer(cfg)
    trainer.resume_or_load(resume=args.resume)
    trainer.train()
    # DefaultTrainer.train() returns the final evaluation only with TEST.EXPECTED_RESULTS set;
    # its end-of-training EvalHook keeps it here.
    results = getattr(trainer, "_last_eval_results", None) or {}
    if comm.is_main_process() and results:
        with open(os.path.join(cfg.OUTPUT_DIR, "eval_results.json"), "w") as file:
            json.dump(results, file, indent=2)
    return results


def run_quickstart(data_root: str = "datasets/synthetic_polyps",
                   output_dir: str = "output/resunetpp_quickstart",
                   opts: Sequence[str] = (), spec: SyntheticPolypSpec = SyntheticPolypSpec()
                   ) -> Dict:
    """Generate the synthetic polyp set (if absent), train the quickstart config, evaluate.

    Returns:
        The evaluation results, plus ``"wall_seconds"`` and ``"cpu_seconds"``.
    """
    start, cpu_start = time.perf_counter(), time.process_time()
    if not os.path.isdir(os.path.join(data_root, "masks")):
        generate_synthetic_polyps(data_root, spec)
    args = build_argument_parser().parse_args(
        ["--quickstart", "--dataset", f"{QUICKSTART_DATASET}=kvasir:{data_root}",
         "OUTPUT_DIR", output_dir, *opts])
    results = dict(main(args))
    results["wall_seconds"] = time.perf_counter() - start
    results["cpu_seconds"] = time.process_time() - cpu_start  # main process, all its threads
    return results


def _summary(results: Dict) -> str:
    lines = []
    if "segmentation" in results:  # Detectron2 drops the data-set level for a single test set
        results = {"test set": results}
    for dataset, tasks in results.items():
        if not isinstance(tasks, dict):
            continue
        seg = tasks.get("segmentation", {})
        sem = tasks.get("sem_seg", {})
        lines.append(f"{dataset}: Dice {seg.get('dice', float('nan')):.2f}  IoU "
                     f"{seg.get('iou', float('nan')):.2f}  mIoU (with background) "
                     f"{seg.get('miou', float('nan')):.2f}  precision "
                     f"{seg.get('precision', float('nan')):.2f}  recall "
                     f"{seg.get('recall', float('nan')):.2f}  | SemSegEvaluator mIoU "
                     f"{sem.get('mIoU', float('nan')):.2f}")
    return "\n".join(lines)


def run(argv: Optional[Sequence[str]] = None) -> None:
    """Entry point of ``train_net.py``: Detectron2's ``launch`` over :func:`main`."""
    args = build_argument_parser().parse_args(argv)
    if args.quickstart and not args.dataset:
        output = dict(zip(args.opts[::2], args.opts[1::2])).get(
            "OUTPUT_DIR", "output/resunetpp_quickstart")
        results = run_quickstart(output_dir=output, opts=args.opts)
        print(_summary(results))
        load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
        print(f"quickstart wall time: {results['wall_seconds']:.0f} s (CPU time "
              f"{results['cpu_seconds']:.0f} s, load average now {load:.1f} on "
              f"{os.cpu_count()} cores); outputs in {output}")
        return
    config_file = args.config_file or (QUICKSTART_CONFIG if args.quickstart else "")
    device = build_resunetpp_config(config_file, args.opts).MODEL.DEVICE
    if not torch.cuda.is_available():
        device = "cpu"  # as setup_cfg does in every process
    # resbackbones' launch: the backend follows the run's device on both Detectron2 flavours
    # (main's own launch picks NCCL on any GPU machine, also for a CPU run).
    launch(main, args.num_gpus, num_machines=args.num_machines, machine_rank=args.machine_rank,
           dist_url=None if args.num_machines == 1 else args.dist_url, args=(args,),
           backend=process_group_backend(device))
