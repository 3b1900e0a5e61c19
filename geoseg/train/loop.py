"""Training and validation steps, device/AMP/DDP runtime, LR schedule and checkpoints (no file layout here).

Device policy (:func:`resolve_runtime`): ``auto`` = CUDA when visible, else CPU. Under ``torchrun`` (``WORLD_SIZE``
> 1) each process uses ``cuda:LOCAL_RANK`` (NCCL), or CPU with gloo. AMP: bf16 autocast on GPUs that support it,
else fp16 with a ``GradScaler``; on CPU AMP is off unless asked for (then bf16). ``channels_last`` is on by default
on both: on CUDA for tensor cores, and on CPU because oneDNN's NHWC kernels trained the default UNet about 1.5x
faster (2 cores, 8 x 256², interleaved runs; ``benchmarks/train_bench.py`` times both).
"""

from __future__ import annotations

import contextlib
import math
import os
import random
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from geoseg.errors import ConfigError, DeviceError, ModelError, first_line
from geoseg.io.output import atomic_path
from geoseg.train.metrics import confusion_matrix


@dataclass(frozen=True)
class Runtime:
    """Where and how the model runs; ``rank``/``world`` are 0/1 outside ``torchrun``."""

    device: torch.device
    amp_dtype: torch.dtype | None
    channels_last: bool
    rank: int = 0
    local_rank: int = 0
    world: int = 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world > 1

    def describe(self) -> dict[str, Any]:
        name = str(self.device)
        if self.device.type == "cuda":
            name += f" ({torch.cuda.get_device_name(self.device)})"
        return {
            "device": name,
            "amp": str(self.amp_dtype).replace("torch.", "") if self.amp_dtype else None,
            "channels_last": self.channels_last,
            "world_size": self.world,
            "torch_threads": torch.get_num_threads(),
        }


def dist_env() -> tuple[int, int, int]:
    """``(rank, local_rank, world_size)`` from the ``torchrun`` environment (0, 0, 1 when absent)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local = int(os.environ.get("LOCAL_RANK", str(rank)))
    return rank, local, world


def resolve_runtime(device: str = "auto", amp: bool | None = None, channels_last: bool | None = None) -> Runtime:
    """Pick device, AMP dtype and memory format; :class:`DeviceError` if CUDA is asked for but absent."""
    rank, local, world = dist_env()
    spec = device.lower().strip()
    has_cuda = torch.cuda.is_available()
    if spec == "auto":
        spec = "cuda" if has_cuda else "cpu"
    if spec.startswith("cuda"):
        if not has_cuda:
            raise DeviceError(
                f"--device {device}: no CUDA GPU is visible to torch (torch.cuda.is_available() is False); "
                "use --device cpu or --device auto"
            )
        if world > 1:
            dev = torch.device("cuda", local)
        elif ":" in spec:
            dev = torch.device(spec)
        else:
            dev = torch.device("cuda", torch.cuda.current_device())
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise DeviceError(f"--device {device}: only {torch.cuda.device_count()} CUDA device(s) visible")
        torch.cuda.set_device(dev)
    elif spec == "cpu":
        dev = torch.device("cpu")
    else:
        raise ConfigError(f"--device {device}: expected auto, cpu, cuda or cuda:N")
    amp_dtype: torch.dtype | None = None
    if amp is None:
        amp = dev.type == "cuda"
    if amp:
        if dev.type == "cuda":
            amp_dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        else:
            amp_dtype = torch.bfloat16
    if channels_last is None:
        channels_last = True
    if dev.type == "cuda":
        torch.backends.cudnn.benchmark = True  # fixed tile size: let cuDNN pick the fastest kernels
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    return Runtime(dev, amp_dtype, bool(channels_last), rank, local, world)


def init_distributed(rt: Runtime) -> None:
    """Join the ``torchrun`` process group (NCCL on CUDA, gloo on CPU); no-op for a single process."""
    if rt.distributed and not torch.distributed.is_initialized():
        torch.distributed.init_process_group(backend="nccl" if rt.device.type == "cuda" else "gloo")


def all_reduce_sum(t: torch.Tensor, rt: Runtime) -> torch.Tensor:
    """Sum ``t`` over DDP ranks (in place) and return it."""
    if rt.distributed:
        torch.distributed.all_reduce(t, op=torch.distributed.ReduceOp.SUM)
    return t


def make_scaler(rt: Runtime) -> torch.amp.GradScaler:
    """A GradScaler that is active only for fp16 autocast (bf16 and fp32 need none)."""
    return torch.amp.GradScaler(rt.device.type, enabled=rt.amp_dtype == torch.float16)


def _autocast(rt: Runtime) -> contextlib.AbstractContextManager[Any]:
    if rt.amp_dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=rt.device.type, dtype=rt.amp_dtype)


def to_device(x: torch.Tensor, y: torch.Tensor, rt: Runtime) -> tuple[torch.Tensor, torch.Tensor]:
    """Batch onto the device (non-blocking from pinned memory), image in the model's memory format."""
    x = x.to(rt.device, non_blocking=True)
    if rt.channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    return x, y.to(rt.device, non_blocking=True).long()


class WarmupCosine:
    """LR factor: linear warm-up over ``warmup`` steps, then cosine from 1 to ``floor`` at ``total`` steps."""

    def __init__(self, total: int, warmup: int, floor: float = 0.01) -> None:
        self.total, self.warmup, self.floor = max(1, total), max(0, warmup), floor

    def __call__(self, step: int) -> float:
        if step < self.warmup:
            return (step + 1) / self.warmup
        t = min(1.0, (step - self.warmup) / max(1, self.total - self.warmup))
        return self.floor + (1 - self.floor) * 0.5 * (1 + math.cos(math.pi * t))


def train_step(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    criterion: nn.Module,
    optimizer: torch.optim.Optimizer,
    scaler: torch.amp.GradScaler,
    rt: Runtime,
) -> torch.Tensor:
    """One optimisation step on an on-device batch (autocast forward, scaled backward); returns the loss."""
    with _autocast(rt):
        logits = model(x)
    loss = criterion(logits, y)
    optimizer.zero_grad(set_to_none=True)
    scaler.scale(loss).backward()
    scaler.step(optimizer)
    scaler.update()
    return loss


def train_one_epoch(
    model: nn.Module,
    loader: Iterable[tuple[torch.Tensor, torch.Tensor]],
    criterion: nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    scaler: torch.amp.GradScaler,
    rt: Runtime,
    *,
    max_steps: int | None = None,
    progress: Any | None = None,
) -> dict[str, float]:
    """One pass over ``loader`` (at most ``max_steps`` batches); returns mean ``loss`` (over all ranks),
    ``samples`` (this rank) and ``seconds``. ``progress`` (tqdm) is advanced per batch with the running loss."""
    model.train()
    t0 = time.perf_counter()
    loss_sum = torch.zeros((), dtype=torch.float64, device=rt.device)
    n = 0
    steps = 0
    for x, y in loader:
        x, y = to_device(x, y, rt)
        loss = train_step(model, x, y, criterion, optimizer, scaler, rt)
        scheduler.step()
        loss_sum += loss.detach().double() * x.shape[0]
        n += x.shape[0]
        steps += 1
        # reading a value back syncs a GPU: only every 10 steps there (every step on CPU, where it is free)
        if rt.device.type == "cpu" or steps % 10 == 1:
            running = loss_sum.item() / n
            if not math.isfinite(running):
                raise ConfigError(f"training loss became {running}; lower --lr or check the dataset's band statistics")
            if progress is not None:
                progress.set_postfix(loss=f"{running:.4f}", refresh=False)
        if progress is not None:
            progress.update(1)
        if max_steps is not None and steps >= max_steps:
            break
    tot = all_reduce_sum(torch.stack([loss_sum, torch.tensor(float(n), dtype=torch.float64, device=rt.device)]), rt)
    return {
        "loss": float(tot[0] / tot[1]) if tot[1] > 0 else math.nan,
        "samples": float(n),
        "seconds": time.perf_counter() - t0,
    }


@torch.no_grad()
def evaluate(
    model: nn.Module,
    loader: Iterable[tuple[torch.Tensor, torch.Tensor]],
    criterion: nn.Module,
    num_classes: int,
    ignore_index: int,
    rt: Runtime,
    *,
    progress: Any | None = None,
) -> tuple[float, np.ndarray]:
    """Validation loss (pixel-weighted mean over all ranks) and the summed ``(K, K)`` confusion matrix."""
    model.eval()
    cm = torch.zeros((num_classes, num_classes), dtype=torch.int64, device=rt.device)
    acc = torch.zeros(2, dtype=torch.float64, device=rt.device)  # loss * valid pixels, valid pixels
    for x, y in loader:
        x, y = to_device(x, y, rt)
        with _autocast(rt):
            logits = model(x)
        valid = (y != ignore_index).sum()
        acc[0] += criterion(logits, y).double() * valid
        acc[1] += valid
        cm += confusion_matrix(logits.argmax(1), y, num_classes, ignore_index)
        if progress is not None:
            progress.update(1)
    all_reduce_sum(cm, rt)
    all_reduce_sum(acc, rt)
    loss = float(acc[0] / acc[1]) if acc[1] > 0 else math.nan
    return loss, cm.cpu().numpy()


def save_checkpoint(path: str | Path, payload: dict[str, Any]) -> Path:
    """``torch.save`` via :func:`geoseg.io.output.atomic_path` (fsync, then rename): a kill never leaves a torn file."""
    path = Path(path)
    with atomic_path(path, fsync=True) as tmp:
        torch.save(payload, tmp)
    return path


def rng_state() -> dict[str, Any]:
    """The process's torch (CPU and CUDA), numpy and ``random`` generator states, in types ``torch.load`` accepts
    with ``weights_only`` (the augmentation is seeded per draw by the sampler, so it needs no state here)."""
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "numpy": [kind, torch.from_numpy(np.asarray(keys, dtype=np.int64)), int(pos), int(has_gauss), float(cached)],
        "python": random.getstate(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore what :func:`rng_state` saved (a resumed run then draws what the uninterrupted one would have)."""
    torch.set_rng_state(state["torch"])
    kind, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


#: what ``geoseg train --resume`` needs from a checkpoint
CHECKPOINT_KEYS = ("model", "optimizer", "scheduler", "epoch", "best_score", "best_epoch", "history")


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """A checkpoint written by :func:`save_checkpoint` (tensors on CPU; only plain types unpickled).

    An empty, truncated or foreign file is a one-line :class:`ModelError` naming it.
    """
    path = Path(path)
    fix = "delete it to start over, or train with --overwrite"
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # EOFError (empty), RuntimeError (truncated zip), UnpicklingError, ...
        raise ModelError(f"{path}: unreadable checkpoint ({first_line(e, 160)}); {fix}") from None
    missing = [k for k in CHECKPOINT_KEYS if not isinstance(ckpt, dict) or k not in ckpt]
    if missing:
        raise ModelError(f"{path}: not a geoseg training checkpoint (missing {', '.join(missing)}); {fix}")
    return ckpt
