"""Weight EMA in training: d2go's ``MODEL_EMA.*`` keys on Detectron2's trainer.

With ``MODEL_EMA.ENABLED`` the trainer keeps a :class:`~resbackbones.modeling.ema.ModelEMA` of
the model (of the module inside DDP: every rank holds the same weights, so every rank averages
its own copy and no communication is needed):

- :class:`EMAHook` updates it after every step, before the checkpointer and the evaluation hook
  of that step run, so a checkpoint written at iteration ``i`` holds the average including ``i``;
- it is the ``ema`` checkpointable of the trainer's checkpointer: saved in every checkpoint and
  restored by ``--resume`` (a checkpoint without it: the average starts again from the model's
  weights, with a warning); loading ``MODEL.WEIGHTS`` without resuming starts it from them;
- the trainer's evaluations (``TEST.EVAL_PERIOD`` and the final one) run on the averaged weights
  (:func:`evaluate_with_ema`), and with ``MODEL_EMA.EVAL_BOTH`` also on the trained weights,
  reported under ``raw/``;
- ``--eval-only`` with ``MODEL_EMA.USE_EMA_WEIGHTS_FOR_EVAL_ONLY`` evaluates a checkpoint's
  averaged weights (:func:`load_weights_for_evaluation`).
"""
from __future__ import annotations

import logging
from typing import Callable, Dict, Optional

from detectron2.config import CfgNode
from detectron2.engine import HookBase
from torch import nn

from resbackbones.modeling.ema import ModelEMA

__all__ = ["EMA_CHECKPOINT_KEY", "EMAHook", "RAW_RESULTS_KEY", "build_model_ema",
           "evaluate_with_ema", "load_weights_for_evaluation"]

logger = logging.getLogger(__name__)

# The checkpoint entry holding the average.
EMA_CHECKPOINT_KEY = "ema"
# With MODEL_EMA.EVAL_BOTH, the trained (not averaged) weights' results go under this key.
RAW_RESULTS_KEY = "raw"


def build_model_ema(cfg: CfgNode, model: nn.Module) -> Optional[ModelEMA]:
    """The average of ``model`` that ``cfg.MODEL_EMA`` asks for, or None when it is off."""
    if "MODEL_EMA" not in cfg or not cfg.MODEL_EMA.ENABLED:
        return None
    return ModelEMA(model, decay=cfg.MODEL_EMA.DECAY, device=cfg.MODEL_EMA.DEVICE)


class EMAHook(HookBase):
    """Updates ``ema`` from the trainer's model after every step.

    Before training it starts the average from the model's weights unless a resumed checkpoint
    provided one (the checkpointer has already run then).
    """

    def __init__(self, ema: ModelEMA) -> None:
        self.ema = ema

    def before_train(self) -> None:
        if self.ema.loaded:
            logger.info(f"MODEL_EMA: resumed the average ({self.ema.num_updates} updates) from "
                        "the checkpoint.")
            return
        if self.trainer.start_iter > 0:
            logger.warning(
                f"MODEL_EMA.ENABLED: the checkpoint resumed at iteration {self.trainer.start_iter}"
                f" has no EMA state ('{EMA_CHECKPOINT_KEY}'; written without MODEL_EMA); the "
                "average starts again from the model's weights.")
        self.ema.reset(self.trainer.model)

    def after_step(self) -> None:
        self.ema.update(self.trainer.model)


def evaluate_with_ema(test: Callable[[CfgNode, nn.Module], Dict], cfg: CfgNode,
                      model: nn.Module, ema: ModelEMA) -> Dict:
    """``test(cfg, model)`` on the averaged weights (the model's own are put back after).

    With ``MODEL_EMA.EVAL_BOTH`` the trained weights are evaluated too and their results added
    under ``"raw"`` (``raw/bbox/AP`` in the metrics).
    """
    logger.info("MODEL_EMA: evaluating the averaged (EMA) weights.")
    with ema.apply_to(model):
        results = dict(test(cfg, model))
    if cfg.MODEL_EMA.EVAL_BOTH:
        logger.info("MODEL_EMA.EVAL_BOTH: evaluating the trained weights too (results under "
                    f"'{RAW_RESULTS_KEY}/').")
        results[RAW_RESULTS_KEY] = test(cfg, model)
    return results


def load_weights_for_evaluation(cfg: CfgNode, model: nn.Module, checkpointer,
                                resume: bool) -> None:
    """Load the checkpoint to evaluate into ``model``: its averaged weights with
    ``MODEL_EMA.USE_EMA_WEIGHTS_FOR_EVAL_ONLY`` (d2go's key), else its model weights.

    Args:
        checkpointer: a Detectron2 checkpointer of ``model`` (``ResBackboneCheckpointer``).
        resume: ``--resume``: the last checkpoint in OUTPUT_DIR if there is one, as
            ``resume_or_load`` does, else ``MODEL.WEIGHTS``.
    """
    if not cfg.MODEL_EMA.USE_EMA_WEIGHTS_FOR_EVAL_ONLY:
        checkpointer.resume_or_load(cfg.MODEL.WEIGHTS, resume=resume)
        return
    path = (checkpointer.get_checkpoint_file() if resume and checkpointer.has_checkpoint()
            else cfg.MODEL.WEIGHTS)
    ema = ModelEMA(model, decay=cfg.MODEL_EMA.DECAY, device=cfg.MODEL_EMA.DEVICE)
    checkpointer.add_checkpointable(EMA_CHECKPOINT_KEY, ema)
    checkpointer.load(path)
    if ema.loaded:
        ema.copy_to(model)
        logger.info(f"MODEL_EMA.USE_EMA_WEIGHTS_FOR_EVAL_ONLY: evaluating the averaged weights "
                    f"of {path} ({ema.num_updates} updates).")
    else:
        logger.warning(f"MODEL_EMA.USE_EMA_WEIGHTS_FOR_EVAL_ONLY: {path} has no EMA state "
                       f"('{EMA_CHECKPOINT_KEY}'); evaluating its model weights.")
