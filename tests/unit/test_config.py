"""The stage-config contract: every stage's options validate on construction, one error type naming
the option, and the CLI's defaults are the config fields' defaults (issue 8, item 2)."""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest
import typer.main

from geoseg.baseline import BaselineConfig
from geoseg.cli import PARAM_OF, app
from geoseg.config import StageConfig
from geoseg.errors import ConfigError
from geoseg.evaluate import EvaluateConfig
from geoseg.mine import MineConfig
from geoseg.predict.run import PredictConfig
from geoseg.tile.run import TileConfig
from geoseg.train.run import TrainConfig
from geoseg.vectorize import VectorizeConfig

REQUIRED: dict[type, dict[str, Any]] = {
    TileConfig: {"scenes": ("s.tif",), "labels": "l.gpkg", "out": "o"},
    TrainConfig: {"dataset": "ds", "out": "o"},
    PredictConfig: {"scenes": ("s.tif",), "model": "m", "out": "o"},
    EvaluateConfig: {"predicted": "p", "truth": "t.gpkg"},
    VectorizeConfig: {"raster": "p.tif", "out": "o.gpkg"},
    BaselineConfig: {"dataset": "ds", "model": "m", "scenes": ("s.tif",), "truth": "t.gpkg", "out": "o"},
}

# (config, bad option, value, text of the one-line error)
BAD = [
    (TileConfig, "tile_size", "big", "--tile-size: expected an integer"),
    (TileConfig, "stride", 999, "--stride"),
    (TileConfig, "processes", "yes", "--processes: expected true or false"),
    (TrainConfig, "lr", "fast", "--lr: expected a number, got 'fast'"),
    (TrainConfig, "epochs", 0, "--epochs"),
    (TrainConfig, "arch", "segformer9", "--arch: unknown"),
    (TrainConfig, "loss", "hinge", "--loss: unknown"),
    (PredictConfig, "threshold", 7, "--threshold"),
    (PredictConfig, "blend", "nonsense", "--blend: unknown"),
    (PredictConfig, "batch_size", 0, "--batch-size"),
    (PredictConfig, "min_area", -5, "--min-area"),
    (PredictConfig, "compress", "FOO", "--compress"),
    (PredictConfig, "bands", ("red",), "--bands: expected a list of integers"),
    (PredictConfig, "scenes", (), "give at least one scene"),
    (EvaluateConfig, "size_bins", ("banana",), "--size-bins: expected a list of numbers"),
    (EvaluateConfig, "size_bins", (-5.0,), "--size-bins"),
    (EvaluateConfig, "size_bins", 50, "--size-bins: expected a list of numbers"),
    (EvaluateConfig, "iou", 2.0, "--iou"),
    (VectorizeConfig, "block_size", 4, "--block-size"),
    (VectorizeConfig, "threshold", 1.5, "--threshold"),
    (VectorizeConfig, "min_area_m2", -1.0, "--min-area"),
    (BaselineConfig, "threshold", 7.0, "--threshold"),
    (BaselineConfig, "max_pixels", "many", "--max-pixels: expected an integer"),
]


@pytest.mark.parametrize(("cls", "field", "value", "needle"), BAD, ids=[f"{c.__name__}.{f}" for c, f, _, _ in BAD])
def test_bad_option_is_refused_on_construction(cls: type, field: str, value: Any, needle: str) -> None:
    cls(**REQUIRED[cls])  # the required options alone are valid
    with pytest.raises(ConfigError) as e:
        cls(**{**REQUIRED[cls], field: value})
    msg = str(e.value)
    assert needle in msg and "\n" not in msg, msg


def test_every_stage_config_is_a_frozen_stage_config() -> None:
    for cls, req in REQUIRED.items():
        assert issubclass(cls, StageConfig), cls
        cfg = cls(**req)
        with pytest.raises(dataclasses.FrozenInstanceError):
            cfg.out = "elsewhere"  # type: ignore[misc]
        assert dataclasses.replace(cfg) == cfg  # replace() re-validates and keeps a valid config


def test_replace_revalidates() -> None:
    cfg = PredictConfig(**REQUIRED[PredictConfig])
    with pytest.raises(ConfigError, match="--threshold"):
        dataclasses.replace(cfg, threshold=1.5)


# fields that are deliberately not command-line options (set by the pipeline file or by Python)
NOT_ON_CLI = {
    "tile": set(),
    "train": {"focal_gamma", "calibrate_max_tiles"},
    "predict": set(),
    "vectorize": set(),
    "evaluate": set(),
    "mine": {"valid_from_field", "valid_to_field"},
}
COMMANDS = {"tile": TileConfig, "train": TrainConfig, "predict": PredictConfig, "vectorize": VectorizeConfig,
            "evaluate": EvaluateConfig, "mine": MineConfig}  # fmt: skip


def _same(cli: Any, field: Any) -> bool:
    if isinstance(field, tuple) and isinstance(cli, str):  # comma-separated on the command line
        cli = tuple(float(v) for v in cli.split(","))
    if field == () and cli is None:  # an empty repeatable / list option
        cli = ()
    return bool(cli == field or (cli is not None and field is not None and str(cli) == str(field)))


@pytest.mark.parametrize("command", list(COMMANDS))
def test_cli_defaults_are_the_config_defaults(command: str) -> None:
    """The Typer signature carries its defaults literally (the CLI must not import the stage modules:
    torch makes that seconds per usage error), so this test is what keeps them equal to the fields."""
    cls = COMMANDS[command]
    params = {p.name: p for p in typer.main.get_command(app).commands[command].params}  # type: ignore[attr-defined]
    to_param = PARAM_OF.get(cls.__name__, {})
    missing = []
    for f in dataclasses.fields(cls):
        name = to_param.get(f.name, f.name)
        if name not in params:
            missing.append(f.name)
            continue
        p = params[name]
        if p.required or f.default is dataclasses.MISSING:
            continue
        assert _same(p.default, f.default), f"{command} --{name.replace('_', '-')}: CLI {p.default!r} != {f.default!r}"
    assert set(missing) == NOT_ON_CLI[command], f"{command}: fields without an option: {missing}"
    unused = set(params) - {to_param.get(f.name, f.name) for f in dataclasses.fields(cls)}
    assert not unused, f"{command}: options that reach no config field: {unused}"
