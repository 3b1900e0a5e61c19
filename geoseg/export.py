"""``geoseg export``: a trained model as ONNX (dynamic batch and spatial size) + its config beside it.

Files written (atomically, temp name then rename)::

    model.onnx        graph input ``input`` (B, C, H, W) float32 normalised (config.json mean/std),
                      output ``logits`` (B, K, H, W) float32 (softmax over axis 1 gives probabilities);
                      B, H and W are dynamic (H, W multiples of 32 for the smp encoders).
                      metadata_props: ``geoseg_config`` (config.json as JSON), ``geoseg_export`` (below)
    model.onnx.json   the model config.json plus ``onnx_export``: opset, check shapes, max abs difference
                      ONNX Runtime vs PyTorch on random input (``max_abs_diff``: softmax probabilities, the
                      values predict uses; ``max_abs_diff_logits``), versions, sha256 of the source model.pt

Requires the optional extra ``pip install geoseg[onnx]`` (onnx, onnxruntime).
"""

from __future__ import annotations

import hashlib
import json
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from geoseg import __version__
from geoseg.config import read_json, write_json
from geoseg.errors import ConfigError, InputNotFoundError, ModelError, first_line
from geoseg.io.output import atomic_path

DEFAULT_OPSET = 17
FORMATS = ("onnx",)
#: ONNX Runtime must agree with PyTorch this closely (max abs difference of the softmax probabilities)
CHECK_TOLERANCE = 1e-4


@dataclass(frozen=True)
class ExportResult:
    out: Path
    config_json: Path
    opset: int
    max_abs_diff: float  # softmax probabilities
    check_shapes: list[list[int]]
    max_abs_diff_logits: float = 0.0


def require_onnx() -> None:
    try:
        import onnx  # noqa: F401
        import onnxruntime  # noqa: F401
    except ImportError:
        raise ModelError("ONNX needs the optional extra: pip install 'geoseg[onnx]' (onnx, onnxruntime)") from None


def weights_sha256(model_dir: Path) -> str:
    h = hashlib.sha256()
    with open(model_dir / "model.pt", "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def onnx_session(path: str | Path, device: str = "cpu") -> Any:
    """An ONNX Runtime session: the CUDA provider when ``device`` is CUDA and it is installed, else CPU."""
    require_onnx()
    import onnxruntime as ort

    providers = ["CPUExecutionProvider"]
    if str(device).startswith("cuda") and "CUDAExecutionProvider" in ort.get_available_providers():
        providers.insert(0, "CUDAExecutionProvider")
    so = ort.SessionOptions()
    so.log_severity_level = 3  # errors only
    try:
        return ort.InferenceSession(str(path), sess_options=so, providers=providers)
    except Exception as e:  # onnxruntime raises its own (untyped) exceptions
        raise ModelError(f"{path}: not a loadable ONNX model ({first_line(e)})") from None


def read_onnx_config(path: str | Path) -> dict[str, Any]:
    """The model config of an exported ``.onnx``: ``<file>.json`` beside it, else its ``geoseg_config`` metadata."""
    p = Path(path)
    if not p.is_file():
        raise InputNotFoundError(f"{p}: ONNX model not found")
    side = p.with_name(p.name + ".json")
    if side.is_file():
        return read_json(side, what="ONNX model config")
    require_onnx()
    import onnx

    model = onnx.load(str(p), load_external_data=False)
    meta = {m.key: m.value for m in model.metadata_props}
    if "geoseg_config" not in meta:
        raise ModelError(f"{p}: no {side.name} beside it and no geoseg_config metadata; re-export with geoseg export")
    return dict(json.loads(meta["geoseg_config"]))


def export_onnx(
    model: str | Path, out: str | Path, *, opset: int = DEFAULT_OPSET, check_batch: int = 2, seed: int = 0
) -> ExportResult:
    """Export the model of run/model directory ``model`` to ``out`` (see the module docstring).

    The check runs ONNX Runtime (CPU) and PyTorch (CPU, fp32) on random normal input at two shapes
    (``check_batch`` x tile, and batch 1 at 1.5x tile rounded to 32 px, which exercises the dynamic
    axes) and raises :class:`ModelError` when the max abs difference of the softmax probabilities
    exceeds 1e-4 (logits are not bounded, so their difference scales with the weights; it is recorded).
    """
    require_onnx()
    import onnx
    import torch

    from geoseg.modeldir import load_model, resolve_model_dir

    if opset < 13:
        raise ConfigError(f"--opset {opset}: use 13 or newer")
    model_dir = resolve_model_dir(model)
    net, cfg = load_model(model_dir, "cpu")
    c, tile = int(cfg["in_channels"]), int(cfg["tile_size"])
    out = Path(out)
    with atomic_path(out) as tmp:  # removed again if the check fails
        shapes, diff, diff_logits = _export_checked(net, tmp, out, (c, tile), opset, check_batch, seed)
        import onnxruntime

        info = {
            "format": "onnx", "opset": opset, "input": "input", "output": "logits",
            "layout": "NCHW float32 normalised", "dynamic_axes": ["batch", "height", "width"], "check_shapes": shapes,
            "max_abs_diff": diff, "max_abs_diff_logits": diff_logits,
            "tolerance": CHECK_TOLERANCE, "source_model": str(model_dir.resolve()),
            "weights_sha256": weights_sha256(model_dir), "torch": torch.__version__, "onnx": onnx.__version__,
            "onnxruntime": onnxruntime.__version__, "geoseg": __version__,
        }  # fmt: skip
        proto = onnx.load(str(tmp))
        del proto.metadata_props[:]
        for key, value in (("geoseg_config", cfg), ("geoseg_export", info)):
            entry = proto.metadata_props.add()
            entry.key, entry.value = key, json.dumps(value, default=str)
        proto.producer_name = "geoseg"
        proto.producer_version = __version__
        onnx.save(proto, str(tmp))
    side = write_json(out.with_name(out.name + ".json"), {**cfg, "onnx_export": info})
    return ExportResult(out, Path(side), opset, diff, shapes, diff_logits)


def _export_checked(
    net: Any, tmp: Path, out: Path, c_tile: tuple[int, int], opset: int, check_batch: int, seed: int
) -> tuple[list[list[int]], float, float]:
    """Export ``net`` to ``tmp`` and compare ONNX Runtime with PyTorch on random input at two shapes;
    returns ``(shapes, max abs probability difference, max abs logit difference)``; ModelError past
    :data:`CHECK_TOLERANCE`."""
    import torch

    c, tile = c_tile
    gen = torch.Generator().manual_seed(seed)
    x0 = torch.randn(check_batch, c, tile, tile, generator=gen)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the TorchScript-based exporter's deprecation and tracer warnings
        torch.onnx.export(
            net, (x0,), str(tmp), dynamo=False, opset_version=opset, input_names=["input"], output_names=["logits"],
            dynamic_axes={name: {0: "batch", 2: "height", 3: "width"} for name in ("input", "logits")},
        )  # fmt: skip
    sess = onnx_session(tmp, "cpu")
    big = max(32, round(tile * 1.5 / 32) * 32)
    shapes = [list(x0.shape), [1, c, big, big]]
    diff = diff_logits = 0.0
    for shape in shapes:
        x = x0 if shape == list(x0.shape) else torch.randn(*shape, generator=gen)
        with torch.no_grad():
            ref = net(x).numpy()
        got = sess.run(None, {"input": x.numpy()})[0]
        if got.shape != ref.shape:
            raise ModelError(f"{out}: ONNX output shape {got.shape} != PyTorch {ref.shape} for input {shape}")
        diff_logits = max(diff_logits, float(np.abs(got - ref).max()))
        p_ref, p_got = torch.softmax(torch.from_numpy(ref), 1), torch.softmax(torch.from_numpy(got), 1)
        diff = max(diff, float((p_got - p_ref).abs().max()))
    if not diff <= CHECK_TOLERANCE:
        raise ModelError(f"{out}: ONNX Runtime differs from PyTorch by {diff:.3g} (> {CHECK_TOLERANCE}) on random data")
    return shapes, diff, diff_logits


def onnx_for_run(model_dir: Path) -> Path | None:
    """``model_dir/model.onnx`` when it exists and was exported from the current ``model.pt``, else None."""
    cand = model_dir / "model.onnx"
    side = cand.with_name(cand.name + ".json")
    if not (cand.is_file() and side.is_file()):
        return None
    info = read_json(side, what="ONNX model config").get("onnx_export", {})
    return cand if info.get("weights_sha256") == weights_sha256(model_dir) else None


__all__ = ["DEFAULT_OPSET", "ExportResult", "export_onnx", "onnx_for_run", "onnx_session", "read_onnx_config"]
