"""Models are verified: weights checksum, config.json schema, checkpoint errors -- each one line (issue 13)."""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path
from typing import Any

import pytest
import torch

from geoseg.cli import main
from geoseg.errors import ModelError
from geoseg.train.loop import load_checkpoint, save_checkpoint
from geoseg.train.model import build_model, file_sha256, load_model, read_model_config, save_model

CLASSES = [
    {"id": 0, "name": "background", "color": "#000000"},
    {"id": 1, "name": "building", "color": "#e31a1c"},
    {"id": 2, "name": "boundary", "color": "#ffff00"},
]


def _config() -> dict[str, Any]:
    return {
        "arch": "unet", "encoder": "tu-tf_efficientnet_lite0", "in_channels": 3, "num_classes": 3,
        "classes": CLASSES, "boundary_class": 2, "ignore_index": 255, "bands": ["r", "g", "b"],
        "normalisation": {"mean": [100.0] * 3, "std": [50.0] * 3}, "tile_size": 64,
        "resolution_m": 0.5, "dataset": "synthetic", "date_range": None,
    }  # fmt: skip


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    torch.manual_seed(0)
    net = build_model("unet", "tu-tf_efficientnet_lite0", 3, 3)
    return save_model(tmp_path_factory.mktemp("m") / "model", net, _config())


def _copy(src: Path, dst: Path, cfg: dict[str, Any] | None = None, weights: bytes | None = None) -> Path:
    dst.mkdir()
    (dst / "model.pt").write_bytes((src / "model.pt").read_bytes() if weights is None else weights)
    text = (src / "config.json").read_text() if cfg is None else json.dumps(cfg)
    (dst / "config.json").write_text(text)
    return dst


def test_save_writes_checksum_and_load_verifies(model_dir: Path) -> None:
    cfg = json.loads((model_dir / "config.json").read_text())
    assert cfg["weights_sha256"] == file_sha256(model_dir / "model.pt")
    net, loaded = load_model(model_dir)
    assert loaded["weights_sha256"] == cfg["weights_sha256"] and not net.training


def test_flipped_bytes_refused(model_dir: Path, tmp_path: Path) -> None:
    w = bytearray((model_dir / "model.pt").read_bytes())
    mid = len(w) // 2
    w[mid : mid + 4096] = bytes(b ^ 0xFF for b in w[mid : mid + 4096])
    bad = _copy(model_dir, tmp_path / "bad", weights=bytes(w))
    with pytest.raises(ModelError) as e:
        load_model(bad)
    msg = str(e.value)
    assert "\n" not in msg and msg.startswith(str(bad / "model.pt")) and "does not match config.json" in msg


def test_older_model_without_checksum_loads(model_dir: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    cfg = json.loads((model_dir / "config.json").read_text())
    del cfg["weights_sha256"]
    old = _copy(model_dir, tmp_path / "old", cfg)
    with caplog.at_level(logging.DEBUG, logger="geoseg.modeldir"):
        load_model(old)
    assert "not verified" in caplog.text


def test_empty_weights_one_line(model_dir: Path, tmp_path: Path) -> None:
    cfg = json.loads((model_dir / "config.json").read_text())
    del cfg["weights_sha256"]
    empty = _copy(model_dir, tmp_path / "empty", cfg, weights=b"")
    with pytest.raises(ModelError, match="unreadable weights") as e:
        load_model(empty)
    assert "\n" not in str(e.value)


def _set(cfg: dict[str, Any], key: str, value: Any) -> dict[str, Any]:
    cfg = json.loads(json.dumps(cfg))
    node = cfg
    *path, last = key.split(".")
    for p in path:
        node = node[int(p)] if p.isdigit() else node[p]
    node[last] = value
    return cfg


@pytest.mark.parametrize(
    ("key", "value", "named"),
    [
        ("num_classes", "three", "num_classes"),
        ("num_classes", None, "num_classes"),
        ("num_classes", 1, "num_classes"),
        ("in_channels", 0, "in_channels"),
        ("tile_size", 0, "tile_size"),
        ("tile_size", 64.5, "tile_size"),
        ("boundary_class", 99, "boundary_class"),
        ("classes.1.color", "reddish", "classes[id=1].color"),
        ("classes.1.name", None, "classes[id=1].name"),
        ("classes.2.id", 7, "classes"),
        ("normalisation.mean", [math.nan, 0.0, 0.0], "normalisation.mean"),
        ("normalisation.mean", [0.0, 0.0], "normalisation.mean"),
        ("normalisation.std", [1.0, 0.0, 1.0], "normalisation.std"),
        ("encoder", None, "encoder"),
    ],
)
def test_bad_config_one_line_naming_the_key(model_dir: Path, tmp_path: Path, key: str, value: Any, named: str) -> None:
    cfg = _set(json.loads((model_dir / "config.json").read_text()), key, value)
    bad = _copy(model_dir, tmp_path / "bad", cfg)
    with pytest.raises(ModelError) as e:
        read_model_config(bad)
    msg = str(e.value)
    assert "\n" not in msg and msg.startswith(str(bad / "config.json")) and f"'{named}'" in msg, msg


def test_bad_config_refused_by_predict_before_any_output(
    model_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from geoseg.testing import write_scene, xy_image

    scene = tmp_path / "scene.tif"
    grid = write_scene(scene, xy_image(64, 64, 3, "uint16"))
    b = grid.bounds
    bad = _copy(model_dir, tmp_path / "bad", _set(json.loads((model_dir / "config.json").read_text()), "tile_size", 0))
    out = tmp_path / "out"
    capsys.readouterr()
    bbox = f"{b[0]},{b[1]},{b[2]},{b[3]},{grid.crs.to_string()}"
    rc = main(["predict", str(scene), "-m", str(bad), "--bbox", bbox, "--out", str(out), "--no-progress"])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and len(err.splitlines()) == 1 and "'tile_size'" in err and "--overlap" not in err, err
    assert not out.exists()


@pytest.mark.parametrize("kind", ["empty", "truncated", "foreign"])
def test_bad_checkpoint_one_line(tmp_path: Path, kind: str) -> None:
    path = tmp_path / "last.pt"
    if kind == "empty":
        path.write_bytes(b"")
    else:
        save_checkpoint(path, {"model": {"w": torch.zeros(1000)}} if kind == "foreign" else _full_checkpoint())
        if kind == "truncated":
            path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(ModelError) as e:
        load_checkpoint(path)
    msg = str(e.value)
    assert "\n" not in msg and msg.startswith(str(path)), msg
    assert ("not a geoseg training checkpoint" if kind == "foreign" else "unreadable checkpoint") in msg


def _full_checkpoint() -> dict[str, Any]:
    return {"model": {"w": torch.zeros(4096)}, "optimizer": {}, "scheduler": {}, "epoch": 1, "best_score": 0.1,
            "best_epoch": 1, "history": []}  # fmt: skip


def test_good_checkpoint_loads(tmp_path: Path) -> None:
    path = save_checkpoint(tmp_path / "last.pt", _full_checkpoint())
    assert load_checkpoint(path)["epoch"] == 1
