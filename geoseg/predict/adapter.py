"""Model -> ``predict_fn``: torch (channels_last, AMP on CUDA) or ONNX Runtime; softmax, optional 8-fold TTA."""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch

from geoseg.errors import DeviceError

_CACHE: dict[tuple[str, str], tuple[torch.nn.Module, dict[str, Any]]] = {}
_LOCK = threading.Lock()


def resolve_device(device: str) -> torch.device:
    """``auto`` -> CUDA when available else CPU; an unavailable CUDA request is a :class:`DeviceError`."""
    d = (device or "auto").lower()
    if d == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if d.startswith("cuda") and not torch.cuda.is_available():
        raise DeviceError(f"--device {device}: CUDA is not available here; use --device cpu or auto")
    try:
        return torch.device(d)
    except RuntimeError:
        raise DeviceError(f"--device {device}: unknown device; use auto, cpu, cuda or cuda:N") from None


def cached_model(model_dir: str, device: torch.device) -> tuple[torch.nn.Module, dict[str, Any]]:
    """``load_model`` once per (model, device) per process (dask workers reuse it across tasks)."""
    from geoseg.modeldir import load_model

    key = (str(Path(model_dir).resolve()), str(device))
    with _LOCK:
        if key not in _CACHE:
            net, cfg = load_model(model_dir, device)
            net = net.to(memory_format=torch.channels_last)
            _CACHE[key] = (net, cfg)
        return _CACHE[key]


def _dihedral(x: torch.Tensor, k: int, flip: bool) -> torch.Tensor:
    x = torch.rot90(x, k, dims=(2, 3)) if k else x
    return torch.flip(x, dims=(3,)) if flip else x


def _undo(y: torch.Tensor, k: int, flip: bool) -> torch.Tensor:
    y = torch.flip(y, dims=(3,)) if flip else y
    return torch.rot90(y, -k, dims=(2, 3)) if k else y


#: intra-op threads of every CPU forward pass. oneDNN's convolutions sum in a different order with one
#: thread than with several (float32 results differ by ~1e-6, enough to move a uint8 probability step),
#: and dask workers run single-threaded (OMP_NUM_THREADS=1), so a fixed count keeps in-process,
#: ``--workers`` and ``--scheduler`` runs on any machine bit-identical. Use ``--workers N`` for CPU parallelism.
CPU_FORWARD_THREADS = 1


@contextlib.contextmanager
def torch_threads(n: int) -> Iterator[None]:
    """Run the block with ``n`` torch intra-op threads, then restore the previous count."""
    old = torch.get_num_threads()
    if old != n:
        torch.set_num_threads(n)
    try:
        yield
    finally:
        if old != n:
            torch.set_num_threads(old)


class TorchPredictor:
    """``predict_fn`` for an smp model: ``(B, C, T, T)`` normalised float32 -> ``(B, K, T, T)`` softmax.

    channels_last always; on CUDA autocast (bf16 where supported, else fp16) when ``amp``. With
    ``tta`` the probabilities are the mean over the 8 rotations/flips (each undone). On CPU the forward
    runs with :data:`CPU_FORWARD_THREADS` threads whatever the process's torch thread count, so the
    output does not depend on it.
    """

    def __init__(self, model: torch.nn.Module, device: torch.device, *, amp: bool = True, tta: bool = False) -> None:
        self.model, self.device, self.tta = model, device, tta
        self.channels_last = True
        self.amp_dtype: torch.dtype | None = None
        if amp and device.type == "cuda":
            self.amp_dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16

    def _forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        ctx = (
            torch.autocast(device_type=self.device.type, dtype=self.amp_dtype)
            if self.amp_dtype is not None
            else contextlib.nullcontext()
        )
        with ctx:
            logits = self.model(x)
        return torch.softmax(logits.float(), dim=1)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        x = x.to(self.device, non_blocking=True)
        threads = torch_threads(CPU_FORWARD_THREADS) if self.device.type == "cpu" else contextlib.nullcontext()
        with torch.no_grad(), threads:
            if not self.tta:
                return self._forward(x)
            total: torch.Tensor | None = None
            for k in range(4):
                for flip in (False, True):
                    y = _undo(self._forward(_dihedral(x, k, flip)), k, flip)
                    total = y if total is None else total + y
            assert total is not None
            return total / 8.0


_SESSIONS: dict[tuple[str, str], Any] = {}


def cached_session(onnx_path: str, device: torch.device) -> Any:
    """One ONNX Runtime session per (file, device) per process (CUDA provider when ``device`` is CUDA)."""
    from geoseg.export import onnx_session

    key = (str(Path(onnx_path).resolve()), str(device))
    with _LOCK:
        if key not in _SESSIONS:
            _SESSIONS[key] = onnx_session(onnx_path, str(device))
        return _SESSIONS[key]


class OnnxPredictor(TorchPredictor):
    """``predict_fn`` running an exported model (``geoseg export``) with ONNX Runtime.

    Same contract and TTA as :class:`TorchPredictor`: the graph gives fp32 logits, softmax is taken
    here (in torch, on ``device``, where the stitcher accumulates). Input goes to ONNX Runtime as a
    contiguous float32 NCHW array (no AMP: the graph is fp32).
    """

    def __init__(self, session: Any, device: torch.device, *, tta: bool = False) -> None:
        super().__init__(torch.nn.Identity(), device, amp=False, tta=tta)
        self.session = session
        self.input_name = session.get_inputs()[0].name

    def _forward(self, x: torch.Tensor) -> torch.Tensor:
        arr = np.ascontiguousarray(x.detach().to("cpu", torch.float32).numpy())
        logits = self.session.run(None, {self.input_name: arr})[0]
        return torch.softmax(torch.from_numpy(logits).to(self.device), dim=1)
