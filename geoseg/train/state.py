"""``TrainState``: everything ``--resume`` continues from, saved and restored as one pair.

:meth:`TrainState.state_dict` is the payload of ``RUN/checkpoints/last.pt`` (written by
:func:`geoseg.train.loop.save_checkpoint`); :meth:`TrainState.load_state_dict` restores it into a
freshly built state (same model, optimizer, scheduler and scaler types). Checkpoint keys:
``model`` (CPU tensors), ``optimizer``, ``scheduler``, ``scaler`` (``None`` without a GradScaler),
``epoch`` (epochs completed), ``best_score`` / ``best_epoch`` (model selection), ``history`` (one
record per epoch, see geoseg.train.report), ``config`` / ``model_config`` / ``weights_info`` (what
the run was started with; checked on resume) and ``rng`` (torch, numpy and ``random`` generator
states, see geoseg.train.loop.rng_state). The data order needs no state of its own: the sampler is
seeded by ``(seed, epoch)`` and its draws seed the augmentation.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from geoseg.errors import ConfigError, ModelError, first_line
from geoseg.train import loop
from geoseg.train.metrics import rank_score


@dataclass
class TrainState:
    """The mutable state of one training run (model unwrapped: not the DDP wrapper)."""

    model: torch.nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    scaler: torch.amp.GradScaler
    config: dict[str, Any]  # the run's TrainConfig as a dict
    model_config: dict[str, Any]  # the model directory config.json payload
    weights_info: dict[str, Any]
    epoch: int = 0  # epochs completed
    best_score: float = -math.inf  # rank_score of the best epoch's val mIoU
    best_epoch: int = 0  # 1-based; 0 = none yet
    history: list[dict[str, Any]] = field(default_factory=list)

    def record(self, rec: dict[str, Any], *, always_best: bool = False) -> bool:
        """Append one epoch's record (``rec["epoch"]``, ``rec["miou"]``); True if it is the new best
        (``always_best``: without validation every epoch is, so best = last)."""
        self.history.append(rec)
        self.epoch = int(rec["epoch"])
        improved = rank_score(rec["miou"]) > self.best_score or always_best
        if improved:
            self.best_score, self.best_epoch = rank_score(rec["miou"]), self.epoch
        return improved

    @property
    def best_record(self) -> dict[str, Any] | None:
        return self.history[self.best_epoch - 1] if self.best_epoch else None

    def state_dict(self) -> dict[str, Any]:
        """The checkpoint payload (tensors on CPU; only types ``torch.load(weights_only=True)`` accepts)."""
        return {
            "model": {k: v.detach().cpu() for k, v in self.model.state_dict().items()},
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict() if self.scaler.is_enabled() else None,
            "epoch": self.epoch,
            "best_score": self.best_score,
            "best_epoch": self.best_epoch,
            "history": self.history,
            "config": self.config,
            "model_config": self.model_config,
            "weights_info": self.weights_info,
            "rng": loop.rng_state(),
        }

    def load_state_dict(self, ckpt: dict[str, Any], *, path: Path | str, rng: bool = True) -> None:
        """Restore what :meth:`state_dict` saved (``path`` names the checkpoint in errors). ``rng=False``
        keeps this process's generators (DDP ranks > 0 have no saved state of their own).
        ``config`` / ``model_config`` / ``weights_info`` stay as built (check them first:
        :func:`check_compatible`). Raises a one-line :class:`ModelError` if the weights do not fit."""
        try:
            self.model.load_state_dict(ckpt["model"])
        except RuntimeError as e:
            raise ModelError(f"{path}: weights do not fit the model ({first_line(e, 160)}); use --overwrite") from None
        self.optimizer.load_state_dict(ckpt["optimizer"])
        self.scheduler.load_state_dict(ckpt["scheduler"])
        if ckpt.get("scaler"):
            self.scaler.load_state_dict(ckpt["scaler"])
        self.epoch = int(ckpt["epoch"])
        self.best_score, self.best_epoch = float(ckpt["best_score"]), int(ckpt["best_epoch"])
        self.history = list(ckpt["history"])
        if rng and ckpt.get("rng"):
            loop.set_rng_state(ckpt["rng"])


#: model_config keys a checkpoint must share with the run that resumes it
RESUME_KEYS = ("arch", "encoder", "in_channels", "num_classes")


def check_compatible(ckpt: dict[str, Any], model_config: dict[str, Any], path: Path | str) -> None:
    """Raise a one-line :class:`~geoseg.errors.ConfigError` if ``ckpt`` was made with another architecture."""
    old = ckpt.get("model_config", {})
    for key in RESUME_KEYS:
        if old.get(key) != model_config[key]:
            raise ConfigError(
                f"{path}: checkpoint has {key}={old.get(key)!r} but this run has {model_config[key]!r}; "
                "resume with the original options or train into a new --out"
            )
