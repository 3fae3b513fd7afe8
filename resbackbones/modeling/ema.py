"""An exponential moving average (EMA) of a model's weights: parameters and buffers.

Why here, below the engine: the average is a property of a model's weights (like the BN-folded
copy in ``inference.py``), and ``config.validate_config`` must ask its owner about
``MODEL_EMA.DECAY`` / ``MODEL_EMA.DEVICE``. Training glue (the hook, checkpoints, evaluation on
the averaged weights) is :mod:`resbackbones.engine.ema`.

After every optimizer step each floating-point tensor of the model's ``state_dict`` is averaged::

    ema = decay * ema + (1 - decay) * weight

and every other tensor (BatchNorm's ``num_batches_tracked``) is copied. The keys and shapes are
the model's own, so the averaged weights load into the model (``apply_to``) or into a checkpoint
reader as they are.
"""
from __future__ import annotations

import contextlib
import math
from typing import Any, Dict, Iterator, Mapping

import torch
from torch import nn

from resbackbones.errors import ConfigError

__all__ = ["ModelEMA", "check_ema_decay", "check_ema_device", "unwrap_model"]


def check_ema_decay(value: float) -> float:
    """The owner of ``MODEL_EMA.DECAY``: returns it as a float or raises ConfigError."""
    try:
        decay = float(value)
    except (TypeError, ValueError):
        decay = math.nan
    if not 0.0 < decay < 1.0:  # also refuses NaN
        raise ConfigError(f"MODEL_EMA.DECAY {value!r} is invalid; valid: a number in (0, 1), "
                          "the weight of the old average at each step (d2go's default 0.999; "
                          "about 1 - 1/N averages over the last N steps).")
    return decay


def check_ema_device(value: str) -> str:
    """The owner of ``MODEL_EMA.DEVICE``: "" (the model's device) or a torch device name."""
    if value == "":
        return value
    try:
        torch.device(value)
    except (RuntimeError, TypeError, ValueError) as error:
        raise ConfigError(f"MODEL_EMA.DEVICE {value!r} is invalid ({error}); valid: '' (the "
                          "model's device) or a torch device such as 'cpu' or 'cuda:0'.") from error
    return value


def unwrap_model(model: nn.Module) -> nn.Module:
    """The module inside DistributedDataParallel / DataParallel (whose weights every rank holds
    alike), or ``model`` itself."""
    wrappers = (nn.parallel.DistributedDataParallel, nn.DataParallel)
    return model.module if isinstance(model, wrappers) else model


class ModelEMA:
    """The EMA of a model's ``state_dict``, a checkpointable (``state_dict``/``load_state_dict``).

    ``loaded`` tells whether the current average came from a checkpoint (``load_state_dict``)
    rather than from the model's weights (``reset``), so that the trainer knows when a resumed
    run has to start the average afresh.
    """

    def __init__(self, model: nn.Module, decay: float, device: str = "") -> None:
        """
        Args:
            model: the model (DDP-wrapped or not) whose weights are averaged; they are also the
                average's starting point.
            decay: weight of the old average, in (0, 1) (``MODEL_EMA.DECAY``).
            device: where the average lives; "" for each tensor's own device
                (``MODEL_EMA.DEVICE``; "cpu" saves accelerator memory at some speed).
        """
        self.decay = check_ema_decay(decay)
        self.device = check_ema_device(device)
        self.weights: Dict[str, torch.Tensor] = {}
        self.num_updates = 0
        self.loaded = False
        self.reset(model)

    def _model_state(self, model: nn.Module) -> Dict[str, torch.Tensor]:
        return unwrap_model(model).state_dict()

    @torch.no_grad()
    def reset(self, model: nn.Module) -> None:
        """Start the average from ``model``'s current weights."""
        self.weights = {name: tensor.detach().to(self.device or tensor.device, copy=True)
                        for name, tensor in self._model_state(model).items()}
        self.num_updates = 0
        self.loaded = False

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        """One step: ``ema = decay * ema + (1 - decay) * weight`` (other dtypes copied)."""
        state = self._model_state(model)
        if state.keys() != self.weights.keys():
            raise KeyError(f"ModelEMA: the model's state_dict keys changed since the average "
                           f"started ({len(state)} now, {len(self.weights)} averaged).")
        for name, value in state.items():
            average = self.weights[name]
            value = value.detach().to(average.device)
            if average.is_floating_point():
                average.mul_(self.decay).add_(value, alpha=1.0 - self.decay)
            else:
                average.copy_(value)
        self.num_updates += 1

    @contextlib.contextmanager
    def apply_to(self, model: nn.Module) -> Iterator[nn.Module]:
        """Within the block ``model`` holds the averaged weights; its own come back after.

        In-place copies, so the optimizer, DDP and the BN-folded inference copy (which watches
        tensor versions) keep working and see the change.
        """
        module = unwrap_model(model)
        own = {name: tensor.detach().clone() for name, tensor in module.state_dict().items()}
        module.load_state_dict(self.weights)
        try:
            yield model
        finally:
            module.load_state_dict(own)

    def copy_to(self, model: nn.Module) -> None:
        """Load the averaged weights into ``model`` for good (evaluation of a checkpoint)."""
        unwrap_model(model).load_state_dict(self.weights)

    def state_dict(self) -> Dict[str, Any]:
        """What a checkpoint stores: the averaged tensors, the decay and the update count."""
        return {"weights": dict(self.weights), "decay": self.decay,
                "num_updates": self.num_updates}

    @torch.no_grad()
    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore a checkpoint's average bit for bit (into this average's tensors and device).

        Raises:
            KeyError: the checkpoint's average is of a model with other tensors.
        """
        weights = state["weights"]
        if weights.keys() != self.weights.keys():
            missing = sorted(set(self.weights) - set(weights))[:5]
            extra = sorted(set(weights) - set(self.weights))[:5]
            raise KeyError(f"The checkpoint's EMA ('ema') is of another model: missing "
                           f"{missing}, unexpected {extra} (first 5 of each).")
        for name, value in weights.items():
            self.weights[name].copy_(value)
        self.num_updates = int(state.get("num_updates", 0))
        self.loaded = True
