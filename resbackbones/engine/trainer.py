"""The project's trainer: Detectron2's ``DefaultTrainer`` with COCO evaluation that works without
Detectron2's C++ extension, CPU mixed precision, and end-of-run plots and drawings.

Why a subclass and not a copy of ``tools/train_net.py``: everything (hooks, checkpointing, ETA
logging through ``CommonMetricPrinter``, TensorBoard, ``metrics.json``) stays Detectron2's; only
the evaluator and two end-of-run artefacts are added.
"""
from __future__ import annotations

import json
import logging
import os
import time
import weakref
from typing import Dict

import torch
from detectron2.config import CfgNode
from detectron2.data import DatasetMapper, build_detection_train_loader
from detectron2.checkpoint import DetectionCheckpointer
from detectron2.engine import AMPTrainer, DefaultTrainer, HookBase, SimpleTrainer
from detectron2.engine.hooks import EvalHook, PeriodicCheckpointer, PreciseBN
from detectron2.engine.train_loop import TrainerBase
from detectron2.evaluation import DatasetEvaluator
from detectron2.utils import comm
from detectron2.utils.logger import setup_logger

from resbackbones import compat

from resbackbones._requirements import MissingExtraError
from resbackbones.checkpoint.atomic import atomic_open
from resbackbones.checkpoint.checkpointer import ResBackboneCheckpointer
from resbackbones.data.lsj import build_lsj_train_mapper
from resbackbones.data.robust_mapper import SkipCorruptedImages

from .class_names import write_class_names
from .distributed import RankAgreementHook
from .ema import EMA_CHECKPOINT_KEY, EMAHook, build_model_ema, evaluate_with_ema
from .evaluation import build_coco_evaluator
from .plots import plot_metrics
from .visualize import draw_predictions

__all__ = ["CPUAutocastTrainer", "PortableDefaultTrainer", "Trainer", "write_run_report"]

logger = logging.getLogger(__name__)

EVAL_RESULTS_FILE = "eval_results.json"


class CPUAutocastTrainer(SimpleTrainer):
    """``SimpleTrainer`` whose forward pass runs under bfloat16 autocast on the CPU.

    Detectron2's ``AMPTrainer`` asserts CUDA; bfloat16 needs no gradient scaling, so the backward
    pass and the optimizer step are the plain ones.
    """

    def run_step(self) -> None:
        assert self.model.training, "[CPUAutocastTrainer] model was changed to eval mode!"
        start = time.perf_counter()
        data = next(self._data_loader_iter)
        data_time = time.perf_counter() - start
        with torch.autocast("cpu", dtype=torch.bfloat16):
            loss_dict = self.model(data)
        if isinstance(loss_dict, torch.Tensor):
            loss_dict = {"total_loss": loss_dict}
        loss_dict = {k: v.float() for k, v in loss_dict.items()}
        losses = sum(loss_dict.values())
        self.optimizer.zero_grad()
        losses.backward()
        self._write_metrics(loss_dict, data_time)
        self.optimizer.step()


def write_run_report(cfg: CfgNode, model: torch.nn.Module, results: Dict) -> None:
    """Write ``eval_results.json``, ``metrics.png``, ``visualizations/`` and
    ``class_names.json`` (read by the demo) into cfg.OUTPUT_DIR.

    Only the main process writes; the others return at once. Without the ``plots`` extra
    (matplotlib, OpenCV) the two pictures are skipped with a log line that says how to install it.
    """
    if not comm.is_main_process():
        return
    output_dir = cfg.OUTPUT_DIR
    write_class_names(cfg)
    if results:  # atomically: a run killed here keeps the previous file or none, not half
        with atomic_open(os.path.join(output_dir, EVAL_RESULTS_FILE), "w") as f:
            f.write(json.dumps(results, indent=2, sort_keys=True))
    # The two pictures need the `plots` extra; a run without it keeps its results and says so.
    if os.path.isfile(os.path.join(output_dir, "metrics.json")):
        try:
            logger.info(f"Loss and AP curves: {plot_metrics(output_dir)}")
        except MissingExtraError as error:
            logger.info(f"metrics.png not written: {error}")
    if len(cfg.DATASETS.TEST):
        directory = os.path.join(output_dir, "visualizations")
        try:
            paths = draw_predictions(cfg, model, cfg.DATASETS.TEST[0], directory)
        except MissingExtraError as error:
            logger.info(f"visualizations/ not written: {error}")
        else:
            logger.info(f"Predictions drawn on {len(paths)} images of {cfg.DATASETS.TEST[0]}: "
                        f"{directory}")


class _RunReportHook(HookBase):
    """Runs :func:`write_run_report` once training ends (after the final evaluation)."""

    def after_train(self) -> None:
        trainer = self.trainer
        # Only a completed run: an exception also triggers after_train.
        if trainer.iter + 1 >= trainer.max_iter:
            write_run_report(trainer.cfg, trainer.model,
                             getattr(trainer, "_last_eval_results", None) or {})


class PortableDefaultTrainer(DefaultTrainer):
    """Detectron2's ``DefaultTrainer`` that runs the same on v0.6 and upstream main.

    Two of its parts differ between the flavours and are done here instead (everything else,
    hooks, checkpointing, evaluation, is ``DefaultTrainer``'s):

    - the model is wrapped by :func:`resbackbones.compat.create_ddp_model` (main's
      ``create_ddp_model`` passes ``device_ids`` for a CPU module, which DDP refuses in a
      multi-process CPU run);
    - the inner trainer's state is saved under main's ``_trainer`` key on both flavours and
      restored when present, so that a checkpoint written on either resumes on the other (main's
      ``load_state_dict`` raises ``KeyError: '_trainer'`` on a v0.6 checkpoint).

    Subclasses choose the inner loop with :meth:`build_inner_trainer`.
    """

    def __init__(self, cfg: CfgNode):
        TrainerBase.__init__(self)
        if not logging.getLogger("detectron2").isEnabledFor(logging.INFO):
            setup_logger()
        cfg = DefaultTrainer.auto_scale_workers(cfg, comm.get_world_size())
        # The order of DefaultTrainer: model, optimizer, data, then DDP.
        model = self.build_model(cfg)
        optimizer = self.build_optimizer(cfg, model)
        data_loader = self.build_train_loader(cfg)
        model = compat.create_ddp_model(model, broadcast_buffers=False)
        self._trainer = self.build_inner_trainer(cfg, model, data_loader, optimizer)
        self.scheduler = self.build_lr_scheduler(cfg, optimizer)
        self.checkpointer = DetectionCheckpointer(model, cfg.OUTPUT_DIR,
                                                  trainer=weakref.proxy(self))
        self.start_iter = 0
        self.max_iter = cfg.SOLVER.MAX_ITER
        self.cfg = cfg
        self.register_hooks(self.build_hooks())

    def build_inner_trainer(self, cfg: CfgNode, model: torch.nn.Module, data_loader,
                            optimizer: torch.optim.Optimizer) -> SimpleTrainer:
        """The loop that runs one iteration: ``AMPTrainer`` with SOLVER.AMP.ENABLED, else
        ``SimpleTrainer`` (Detectron2's choice)."""
        return (AMPTrainer if cfg.SOLVER.AMP.ENABLED else SimpleTrainer)(
            model, data_loader, optimizer)

    def state_dict(self) -> Dict:
        state = TrainerBase.state_dict(self)
        state[compat.TRAINER_STATE_KEY] = compat.trainer_state_dict(self._trainer)
        return state

    def load_state_dict(self, state_dict: Dict) -> None:
        TrainerBase.load_state_dict(self, state_dict)
        if not compat.load_trainer_state(self._trainer, state_dict):
            logging.getLogger("detectron2").info(f"The checkpoint has no '{compat.TRAINER_STATE_KEY}' state (written by "
                        "Detectron2 v0.6's trainer): resuming with a fresh inner-trainer state "
                        "(e.g. AMP's gradient scale).")


class Trainer(PortableDefaultTrainer):
    """``DefaultTrainer`` + COCO box/mask evaluation, CPU bf16 autocast and a run report.

    ``SOLVER.AMP.ENABLED`` uses Detectron2's ``AMPTrainer`` (fp16 + GradScaler) on CUDA and
    :class:`CPUAutocastTrainer` (bf16) on the CPU. ``MODEL_EMA.ENABLED`` keeps an EMA of the
    weights (:mod:`resbackbones.engine.ema`, ``self.model_ema``), checkpointed and evaluated.
    """

    model_ema = None  # the ModelEMA with MODEL_EMA.ENABLED (made in build_hooks)

    def build_inner_trainer(self, cfg: CfgNode, model: torch.nn.Module, data_loader,
                            optimizer: torch.optim.Optimizer) -> SimpleTrainer:
        if cfg.SOLVER.AMP.ENABLED and not cfg.MODEL.DEVICE.startswith("cuda"):
            # AMPTrainer refuses the CPU: bfloat16 needs no gradient scaling.
            logging.getLogger("detectron2").info(
                "SOLVER.AMP.ENABLED on the CPU: training with bfloat16 autocast.")
            return CPUAutocastTrainer(model, data_loader, optimizer)
        return super().build_inner_trainer(cfg, model, data_loader, optimizer)

    @classmethod
    def build_evaluator(cls, cfg: CfgNode, dataset_name: str) -> DatasetEvaluator:
        """COCO AP for every task the model predicts (boxes, and masks when MASK_ON).

        faster-coco-eval when installed (same AP, several times faster), else pycocotools;
        never Detectron2's fast path, which needs its C++ extension.
        """
        return build_coco_evaluator(dataset_name, os.path.join(cfg.OUTPUT_DIR, "inference"))

    def train(self) -> Dict:
        """Train to cfg.SOLVER.MAX_ITER; returns the final evaluation results ({} if none).

        (Detectron2 v0.6 returns them only when TEST.EXPECTED_RESULTS is set.)
        """
        try:
            super().train()
        except FloatingPointError as error:
            last = self.checkpointer.get_checkpoint_file() if self.checkpointer.has_checkpoint() \
                else None
            raise FloatingPointError(
                f"{error}\nTraining diverged at iteration {self.iter}. Last good checkpoint: "
                f"{last or 'none written yet'}. Lower SOLVER.BASE_LR (scale it with "
                f"SOLVER.IMS_PER_BATCH) or add warm-up, then start again"
                + (" with --resume." if last else ".")) from error
        return getattr(self, "_last_eval_results", None) or {}

    @classmethod
    def build_train_loader(cls, cfg: CfgNode):
        """Detectron2's loader, except that an image which fails to read is skipped (logged and
        counted) instead of ending the run; with ``INPUT.LSJ.ENABLED`` its mapper applies
        large-scale jitter (:mod:`resbackbones.data.lsj`)."""
        lsj = "LSJ" in cfg.INPUT and cfg.INPUT.LSJ.ENABLED
        mapper = build_lsj_train_mapper(cfg) if lsj else DatasetMapper(cfg, is_train=True)
        return build_detection_train_loader(cfg, mapper=SkipCorruptedImages(mapper))

    def build_hooks(self):
        # DefaultTrainer made a plain DetectionCheckpointer just before calling this; checkpoints
        # are written atomically and Detectron2's own weights load into our backbones.
        self.model_ema = build_model_ema(self.cfg, self._trainer.model)
        ema = {EMA_CHECKPOINT_KEY: self.model_ema} if self.model_ema is not None else {}
        self.checkpointer = ResBackboneCheckpointer(
            self._trainer.model, self.cfg.OUTPUT_DIR, trainer=weakref.proxy(self),
            allow_partial_weights=self.cfg.MODEL.RESBACKBONE.ALLOW_PARTIAL_WEIGHTS, **ema)
        hooks = super().build_hooks()
        if self.model_ema is not None:
            hooks = self._with_ema_hooks(hooks)
        hooks.append(_RunReportHook())  # after PeriodicWriter: metrics.json is complete
        hooks.append(RankAgreementHook())  # several processes: same weights on every rank?
        return hooks

    def _with_ema_hooks(self, default_hooks):
        """The EMA update goes before the hooks that save or evaluate the step's weights, and
        the evaluation hook evaluates the average (:func:`evaluate_with_ema`)."""
        def test_ema_and_save_results():
            self._last_eval_results = evaluate_with_ema(self.test, self.cfg, self.model,
                                                        self.model_ema)
            return self._last_eval_results

        result = []
        for hook in default_hooks:
            if isinstance(hook, (PreciseBN, PeriodicCheckpointer, EvalHook)) and not any(
                    isinstance(h, EMAHook) for h in result):
                result.append(EMAHook(self.model_ema))
            if isinstance(hook, EvalHook):
                hook = EvalHook(self.cfg.TEST.EVAL_PERIOD, test_ema_and_save_results)
            result.append(hook)
        return result
