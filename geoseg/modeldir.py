"""The model directory contract: what ``geoseg train`` writes and predict / vectorize / baseline /
evaluate / export read. A foundation module: it imports no stage.

Layout::

    model/model.pt      torch state_dict of the smp model (CPU tensors)
    model/config.json   arch, encoder, in_channels, num_classes, classes [{id,name,color}],
                        boundary_class, ignore_index, bands [names], normalisation {mean,std},
                        tile_size, resolution_m, dataset, date_range, geoseg/schema versions,
                        weights_sha256 (sha256 of model.pt, written by save_model, checked by load_model)

``classes`` + ``boundary_class`` are the class table (:meth:`geoseg.classes.ClassTable.from_model_config`).
A *run directory* (``geoseg train --out RUN``) holds the model in ``RUN/model``; every reader
accepts either (:func:`resolve_model_dir`). :func:`read_model_config` checks the keys predict
relies on (:func:`validate_model_config`), so a damaged or hand-edited config.json is a one-line
error naming the key before any output is written. ``arch`` names an entry of :data:`ARCHS`
(the smp architectures :func:`build_model` can rebuild).
"""

from __future__ import annotations

import hashlib
import logging
import math
import os
import re
from pathlib import Path
from typing import Any

import torch

from geoseg.config import read_json, write_json
from geoseg.errors import ModelError, first_line
from geoseg.io.output import atomic_path
from geoseg.registry import Registry

__all__ = [
    "ARCHS",
    "CONFIG_KEYS",
    "build_model",
    "file_sha256",
    "load_model",
    "read_model_config",
    "resolve_model_dir",
    "save_model",
    "validate_model_config",
]

log = logging.getLogger(__name__)

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
    """Write ``model.pt`` + ``config.json`` into ``model_dir`` atomically: both go to a temp sibling folder
    (``model.pt`` fsynced, via :func:`geoseg.io.output.atomic_path`), which then replaces ``model_dir``
    (a folder swap, so not ``atomic_path`` itself: a fixed temp name that the next save clears after a kill)."""
    model_dir = Path(model_dir)
    tmp = model_dir.with_name(f".{model_dir.name}.tmp")
    if tmp.exists():
        import shutil

        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    module: torch.nn.Module = getattr(model, "module", model)  # unwrap DataParallel / compiled wrappers
    state = {k: v.detach().cpu() for k, v in module.state_dict().items()}
    with atomic_path(tmp / "model.pt", fsync=True) as part:
        torch.save(state, part)
    write_json(tmp / "config.json", {**config, "weights_sha256": file_sha256(tmp / "model.pt")})
    old = model_dir.with_name(f".{model_dir.name}.old")
    if model_dir.exists():
        os.replace(model_dir, old)
    os.replace(tmp, model_dir)
    if old.exists():
        import shutil

        shutil.rmtree(old)
    return model_dir


def file_sha256(path: str | Path) -> str:
    """Hex sha256 of a file, read in 1 MiB blocks (memory: constant)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def read_model_config(model: str | Path) -> dict[str, Any]:
    """``config.json`` of a model directory (or of a run directory containing ``model/``), schema-checked."""
    model_dir = resolve_model_dir(model)
    cfg = read_json(model_dir / "config.json", what="model config")
    validate_model_config(cfg, model_dir / "config.json")
    return cfg


_HEX_COLOUR = re.compile(r"#?([0-9a-fA-F]{3}|[0-9a-fA-F]{6})")


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_finite(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def validate_model_config(cfg: dict[str, Any], path: str | Path) -> None:
    """Check the keys predict relies on; :class:`ModelError` names ``path`` and the first bad key.

    num_classes an int >= 2; classes ids 0..K-1, each with a name and (if given) a ``#rrggbb``
    colour; in_channels an int >= 1; normalisation mean/std ``in_channels`` finite numbers, std > 0;
    tile_size an int >= 8; boundary_class None or a class id 1..K-1; arch/encoder strings.
    """

    def bad(key: str, expected: str, value: Any = None, *, missing: bool = False) -> ModelError:
        if missing:
            return ModelError(f"{path}: missing key {key!r}; re-train or re-export the model")
        got = f"got {str(value) if isinstance(value, str) else repr(value)}"[:80]
        return ModelError(f"{path}: key {key!r}: expected {expected}, {got}; re-train or re-export the model")

    for key in ("arch", "encoder", "in_channels", "num_classes", "classes", "normalisation", "tile_size"):
        if key not in cfg:
            raise bad(key, "a value", missing=True)
    for key in ("arch", "encoder"):
        if not isinstance(cfg[key], str) or not cfg[key]:
            raise bad(key, "a name", cfg[key])
    k, c = cfg["num_classes"], cfg["in_channels"]
    if not _is_int(k) or k < 2:
        raise bad("num_classes", "an integer >= 2", k)
    if not _is_int(c) or c < 1:
        raise bad("in_channels", "an integer >= 1", c)
    ts = cfg["tile_size"]
    if not _is_int(ts) or ts < 8:
        raise bad("tile_size", "an integer >= 8 (pixels)", ts)
    classes = cfg["classes"]
    if not isinstance(classes, list) or not all(isinstance(x, dict) for x in classes):
        raise bad("classes", "a list of {id, name, color}", classes)
    ids = [x.get("id") for x in classes]
    if not all(_is_int(i) for i in ids) or sorted(ids) != list(range(k)):
        raise bad("classes", f"ids 0..{k - 1} (num_classes {k}), each once", ids)
    for x in classes:
        if not isinstance(x.get("name"), str) or not x["name"].strip():
            raise bad(f"classes[id={x['id']}].name", "a non-empty name", x.get("name"))
        col = x.get("color")
        if col is not None and not (isinstance(col, str) and _HEX_COLOUR.fullmatch(col)):
            raise bad(f"classes[id={x['id']}].color", "a colour like #e31a1c", col)
    bc = cfg.get("boundary_class")
    if bc is not None and (not _is_int(bc) or not 1 <= bc < k):
        raise bad("boundary_class", f"null or a class id 1..{k - 1}", bc)
    ii = cfg.get("ignore_index")
    if ii is not None and (not _is_int(ii) or not 0 <= ii <= 255):
        raise bad("ignore_index", "null or an integer 0..255", ii)
    norm = cfg["normalisation"]
    if not isinstance(norm, dict):
        raise bad("normalisation", "{mean: [...], std: [...]}", norm)
    for part in ("mean", "std"):
        v = norm.get(part)
        if not isinstance(v, list) or len(v) != c or not all(_is_finite(x) for x in v):
            raise bad(f"normalisation.{part}", f"{c} finite numbers (one per input channel)", v, missing=v is None)
    if not all(x > 0 for x in norm["std"]):
        raise bad("normalisation.std", "values > 0", norm["std"])
    sha = cfg.get("weights_sha256")
    if sha is not None and not (isinstance(sha, str) and re.fullmatch(r"[0-9a-f]{64}", sha)):
        raise bad("weights_sha256", "a hex sha256", sha)


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
    weights = model_dir / "model.pt"
    expected = cfg.get("weights_sha256")
    if expected is None:
        log.debug("%s: no weights_sha256 in config.json (an older model); weights not verified", weights)
    elif file_sha256(weights) != expected:
        raise ModelError(
            f"{weights}: does not match config.json (corrupt or replaced); re-export or re-train the model"
        )
    net = build_model(cfg["arch"], cfg["encoder"], int(cfg["in_channels"]), int(cfg["num_classes"]))
    try:
        state = torch.load(model_dir / "model.pt", map_location="cpu", weights_only=True)
        net.load_state_dict(state)
    except Exception as e:
        raise ModelError(f"{model_dir / 'model.pt'}: unreadable weights ({first_line(e)})") from None
    net.eval().to(device)
    return net, cfg
