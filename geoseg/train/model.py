"""The segmentation model: build (smp), save (weights + config.json), load for prediction.

Model directory contract (read by predict)::

    model/model.pt      torch state_dict of the smp model (CPU tensors)
    model/config.json   arch, encoder, in_channels, num_classes, classes [{id,name,color}],
                        boundary_class, ignore_index, bands [names], normalisation {mean,std},
                        tile_size, resolution_m, dataset, date_range, geoseg/schema versions
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch

from geoseg.config import read_json, write_json
from geoseg.errors import ModelError, first_line
from geoseg.registry import Registry

ARCHS: Registry[str] = Registry("architecture")
for _name, _cls in {
    "unet": "Unet",
    "unetplusplus": "UnetPlusPlus",
    "fpn": "FPN",
    "linknet": "Linknet",
    "deeplabv3plus": "DeepLabV3Plus",
    "manet": "MAnet",
    "pspnet": "PSPNet",
}.items():
    ARCHS.register(_name)(_cls)

DEFAULT_ENCODER = "tu-tf_efficientnet_lite0"

#: every key ``geoseg train`` writes into ``model/config.json`` (the contract above; predict may rely on all)
CONFIG_KEYS = (
    "arch", "encoder", "in_channels", "num_classes", "classes", "boundary_class", "ignore_index", "bands",
    "normalisation", "tile_size", "resolution_m", "dataset", "date_range",
)  # fmt: skip


def build_model(arch: str, encoder: str, in_channels: int, num_classes: int) -> torch.nn.Module:
    """An smp model with random weights (pretrained weights are loaded separately)."""
    import segmentation_models_pytorch as smp

    cls = getattr(smp, ARCHS[arch.lower()])
    try:
        return cls(encoder_name=encoder, encoder_weights=None, in_channels=in_channels, classes=num_classes)
    except (KeyError, ValueError, RuntimeError) as e:
        raise ModelError(f"cannot build {arch} with encoder {encoder!r}: {first_line(e)}") from None


def save_model(model_dir: str | Path, model: torch.nn.Module, config: dict[str, Any]) -> Path:
    """Write ``model.pt`` + ``config.json`` into ``model_dir`` atomically (temp dir, then rename)."""
    model_dir = Path(model_dir)
    tmp = model_dir.with_name(f".{model_dir.name}.tmp")
    if tmp.exists():
        import shutil

        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    module: torch.nn.Module = getattr(model, "module", model)  # unwrap DataParallel / compiled wrappers
    state = {k: v.detach().cpu() for k, v in module.state_dict().items()}
    torch.save(state, tmp / "model.pt")
    write_json(tmp / "config.json", config)
    old = model_dir.with_name(f".{model_dir.name}.old")
    if model_dir.exists():
        os.replace(model_dir, old)
    os.replace(tmp, model_dir)
    if old.exists():
        import shutil

        shutil.rmtree(old)
    return model_dir


def read_model_config(model: str | Path) -> dict[str, Any]:
    """``config.json`` of a model directory (or of a run directory containing ``model/``)."""
    model_dir = resolve_model_dir(model)
    cfg = read_json(model_dir / "config.json", what="model config")
    for key in ("arch", "encoder", "in_channels", "num_classes", "classes", "normalisation", "tile_size"):
        if key not in cfg:
            raise ModelError(f"{model_dir / 'config.json'}: missing key {key!r}; re-train or re-export the model")
    return cfg


def resolve_model_dir(model: str | Path) -> Path:
    """Accept ``RUN`` or ``RUN/model``; error if neither holds a model."""
    p = Path(model)
    for cand in (p, p / "model"):
        if (cand / "config.json").is_file() and (cand / "model.pt").is_file():
            return cand
    raise ModelError(f"{model}: not a geoseg model directory (expected config.json and model.pt in it or in model/)")


def load_model(model: str | Path, device: str | torch.device = "cpu") -> tuple[torch.nn.Module, dict[str, Any]]:
    """Load a trained model in eval mode on ``device``; returns ``(model, config)``."""
    model_dir = resolve_model_dir(model)
    cfg = read_model_config(model_dir)
    net = build_model(cfg["arch"], cfg["encoder"], int(cfg["in_channels"]), int(cfg["num_classes"]))
    try:
        state = torch.load(model_dir / "model.pt", map_location="cpu", weights_only=True)
        net.load_state_dict(state)
    except Exception as e:
        raise ModelError(f"{model_dir / 'model.pt'}: unreadable weights ({first_line(e)})") from None
    net.eval().to(device)
    return net, cfg
