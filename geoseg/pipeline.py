"""``geoseg run PIPELINE.yaml``: run the stages a pipeline file names, in order.

A pipeline file is YAML::

    name: sample_aoi
    device: auto                 # default for train/predict (overridable per stage)
    stages:                      # any subset, run in the order tile, train, predict, evaluate, baseline
      tile:     {scenes: [...], labels: ..., <any TileConfig field>}
      train:    {<any TrainConfig field>}            # dataset = the tile stage's output
      predict:  {scenes: [...], aoi: ..., <any PredictConfig field>}   # model = the train stage's output
      evaluate: {truth: ..., aoi: ...}               # predicted = the predict stage's output
      baseline: {}                                   # colour classifier, predicted + evaluated likewise

Relative paths are relative to the pipeline file. Everything is validated before any work starts:
unknown stage or key, missing input file, and every stage's options (each config is a
:class:`~geoseg.config.StageConfig`, checked on construction). Each stage writes under
``OUT/<stage dir>``; a stage whose outputs are complete and whose resolved config (and upstream
configs) are unchanged is skipped; ``--from STAGE`` forces that stage and the ones after it.
"""

from __future__ import annotations

import dataclasses
import hashlib
import importlib
import json
import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from geoseg.config import read_json, to_dict, write_json
from geoseg.errors import ConfigError, InputNotFoundError, first_line
from geoseg.io.lock import output_lock
from geoseg.io.output import check_writable_dir

log = logging.getLogger(__name__)

ORDER = ("tile", "train", "predict", "evaluate", "baseline")
STATE_FILE = "pipeline_state.json"


@dataclass(frozen=True)
class Stage:
    """How the pipeline builds, runs and recognises the outputs of one stage."""

    name: str
    module: str  # module with the config dataclass and ``run(config)``
    config: str  # name of the config dataclass in ``module``
    out: str  # the stage's ``out`` relative to the pipeline's --out
    marker: str  # file (relative to --out) that exists only once the stage completed
    path_fields: tuple[str, ...]  # options holding input paths (resolved against the YAML, must exist)
    implicit: Mapping[str, str] = dataclasses.field(default_factory=dict)  # field -> producing stage
    device: bool = False

    def config_cls(self) -> type:
        return getattr(importlib.import_module(self.module), self.config)

    def run(self, cfg: Any) -> Any:
        return importlib.import_module(self.module).run(cfg)


STAGES: dict[str, Stage] = {
    s.name: s
    for s in (
        Stage("tile", "geoseg.tile.run", "TileConfig", "dataset", "dataset/dataset.json",
              ("scenes", "labels", "coverage", "hard_negatives", "val_area")),
        Stage("train", "geoseg.train.run", "TrainConfig", "train", "train/model/config.json",
              ("weights", "dataset"), {"dataset": "tile"}, device=True),
        Stage("predict", "geoseg.predict.run", "PredictConfig", "predict", "predict/run.json",
              ("scenes", "aoi", "model"), {"model": "train"}, device=True),
        Stage("evaluate", "geoseg.evaluate", "EvaluateConfig", "eval.json", "eval.json",
              ("truth", "aoi", "predicted"), {"predicted": "predict"}),
        Stage("baseline", "geoseg.baseline", "BaselineConfig", "baseline", "baseline/eval.json",
              ("scenes", "aoi", "truth", "dataset", "model"), {"dataset": "tile", "model": "train"}),
    )
}


@dataclass(frozen=True)
class Pipeline:
    """A validated pipeline file: name, defaults and the ordered stage options."""

    path: Path
    name: str
    device: str | None
    stages: dict[str, dict[str, Any]]

    @classmethod
    def load(cls, path: str | Path, overrides: list[str] | None = None) -> Pipeline:
        path = Path(path)
        if not path.is_file():
            raise InputNotFoundError(f"{path}: pipeline file not found")
        try:
            doc = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as e:
            raise ConfigError(f"{path}: not valid YAML ({first_line(e)})") from None
        if not isinstance(doc, dict):
            raise ConfigError(f"{path}: a pipeline file is a mapping with a 'stages' key")
        unknown = sorted(set(doc) - {"name", "device", "stages", "description"})
        if unknown:
            raise ConfigError(f"{path}: unknown key(s) {', '.join(unknown)}; valid: name, description, device, stages")
        stages = doc.get("stages") or {}
        if not isinstance(stages, dict) or not stages:
            raise ConfigError(f"{path}: 'stages' must map stage names ({', '.join(ORDER)}) to their options")
        bad = sorted(set(stages) - set(ORDER))
        if bad:
            raise ConfigError(f"{path}: unknown stage(s) {', '.join(bad)}; valid: {', '.join(ORDER)}")
        stages = {k: dict(stages[k] or {}) for k in ORDER if k in stages}
        for item in overrides or []:
            key, sep, value = item.partition("=")
            stage, dot, opt = key.partition(".")
            if not sep or not dot or stage not in stages:
                raise ConfigError(f"--set {item!r}: expected STAGE.OPTION=VALUE with STAGE one of {', '.join(stages)}")
            stages[stage][opt] = yaml.safe_load(value)
        return cls(path, str(doc.get("name") or path.stem), doc.get("device"), stages)

    def resolve(self, stage: str, out: Path) -> Any:
        """The stage's config object: options + implicit upstream paths + resolved paths."""
        spec = STAGES[stage]
        opts = dict(self.stages[stage])
        base = self.path.parent
        cls = spec.config_cls()
        fields = {f.name for f in dataclasses.fields(cls)}
        # inputs made by an earlier stage of this pipeline come from its output; otherwise the user names them
        implicit = {k: str(out / STAGES[src].out) for k, src in spec.implicit.items() if src in self.stages}
        clash = sorted(set(opts) & set(implicit))
        if clash:
            raise ConfigError(f"{self.path}: stage {stage}: {', '.join(clash)} come(s) from an earlier stage; remove")
        missing = sorted(k for k in spec.implicit if k not in implicit and k not in opts)
        if missing:
            raise ConfigError(
                f"{self.path}: stage {stage}: give {', '.join(missing)} (the pipeline has no "
                f"{', '.join(spec.implicit[k] for k in missing)} stage to take it from)"
            )
        unknown = sorted(set(opts) - fields)
        if unknown:
            valid = ", ".join(sorted(fields - set(implicit) - {"out"}))
            raise ConfigError(f"{self.path}: stage {stage}: unknown option(s) {', '.join(unknown)}; valid: {valid}")
        for key in spec.path_fields:
            if key in opts and opts[key] is not None:
                opts[key] = _resolve_paths(opts[key], base, f"{self.path}: stage {stage}: {key}")
        if spec.device and "device" in fields and "device" not in opts and self.device:
            opts["device"] = self.device
        if "overwrite" in fields and "overwrite" not in opts and "resume" not in opts:
            opts["overwrite"] = True  # the pipeline decided this stage must run again
        opts = {k: tuple(v) if isinstance(v, list) else v for k, v in opts.items()}
        opts.update(implicit)
        opts["out"] = str(out / spec.out)
        try:
            return cls(**opts)  # a StageConfig checks its options on construction: all up front, before any stage runs
        except (TypeError, ValueError) as e:
            raise ConfigError(f"{self.path}: stage {stage}: {e}") from None


def _resolve_paths(value: Any, base: Path, what: str) -> Any:
    if isinstance(value, (list, tuple)):
        return tuple(_resolve_paths(v, base, what) for v in value)
    if str(value) in {"imagenet", "none"}:  # train --weights keywords
        return value
    if str(value).startswith(("http://", "https://", "/vsi", "s3://", "gs://")):  # remote scenes / STAC Items
        return str(value)
    p = Path(str(value))
    p = p if p.is_absolute() else (base / p).resolve()
    if not p.exists():
        raise InputNotFoundError(f"{what}: {p} not found")
    return str(p)


def _digest(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _input_stamps(cfg: Any, fields: tuple[str, ...]) -> list[Any]:
    """(path, size, mtime) of the stage's input files, so an edited input re-runs the stage."""
    stamps = []
    for key in fields:
        value = getattr(cfg, key, None)
        for v in value if isinstance(value, (list, tuple)) else [value]:
            p = Path(str(v)) if v is not None else None
            if p is not None and p.is_file():
                st = p.stat()
                stamps.append([str(p), st.st_size, st.st_mtime_ns])
    return stamps


def run_pipeline(path: str | Path, out: str | Path, *, from_stage: str | None = None,
                 overrides: list[str] | None = None) -> dict[str, Any]:
    """Validate everything, then run (or skip) each stage in order. Returns a summary dict."""
    pipe = Pipeline.load(path, overrides)
    out = Path(out)
    if from_stage is not None and from_stage not in pipe.stages:
        raise ConfigError(f"--from {from_stage}: not a stage of {pipe.path}; stages: {', '.join(pipe.stages)}")
    configs = {name: pipe.resolve(name, out) for name in pipe.stages}  # validate all before any work
    check_writable_dir(out)
    with output_lock(out):  # one pipeline per --out at a time (each stage also locks its own folder)
        return _run_stages(pipe, out, configs, from_stage)


def _run_stages(pipe: Pipeline, out: Path, configs: dict[str, Any], from_stage: str | None) -> dict[str, Any]:
    state_path = out / STATE_FILE
    state = read_json(state_path, what="pipeline state").get("stages", {}) if state_path.exists() else {}
    summary: dict[str, Any] = {"pipeline": str(pipe.path), "name": pipe.name, "out": str(out), "stages": {}}
    forced = False
    upstream = ""
    for name, cfg in configs.items():
        spec = STAGES[name]
        forced = forced or name == from_stage
        digest = _digest([upstream, to_dict(cfg), _input_stamps(cfg, spec.path_fields)])
        upstream = digest
        marker = out / spec.marker
        if not forced and state.get(name, {}).get("digest") == digest and marker.exists():
            log.info("stage %s: unchanged and complete, skipped (use --from %s to force)", name, name)
            summary["stages"][name] = {"skipped": True, "out": str(out / spec.out)}
            continue
        forced = True  # everything downstream of a re-run stage re-runs too
        # forget this and later stages first: an interrupted re-run must never look complete next time
        for later in list(configs)[list(configs).index(name):]:
            state.pop(later, None)
        write_json(state_path, {"pipeline": str(pipe.path), "stages": state})
        log.info("stage %s: running -> %s", name, out / spec.out)
        t0 = time.perf_counter()
        result = spec.run(cfg)
        secs = time.perf_counter() - t0
        state[name] = {"digest": digest, "seconds": round(secs, 1), "finished": time.strftime("%Y-%m-%dT%H:%M:%S")}
        write_json(state_path, {"pipeline": str(pipe.path), "stages": state})
        summary["stages"][name] = {"skipped": False, "seconds": round(secs, 1), "out": str(out / spec.out),
                                   "result": _summarise(result)}
    write_json(out / "pipeline.json", {**summary, "config": {k: to_dict(v) for k, v in configs.items()}})
    return summary


def _summarise(result: Any) -> Any:
    if result is None or isinstance(result, (str, int, float, bool)):
        return result
    if isinstance(result, Mapping):
        return {k: v for k, v in result.items() if isinstance(v, (str, int, float, bool, type(None)))}
    if dataclasses.is_dataclass(result) and not isinstance(result, type):
        return _summarise(to_dict(result))
    return str(result)


def _headline(ev: Mapping[str, Any]) -> dict[str, Any]:
    """Foreground pixel IoU/F1 per class and object P/R/F1 from an ``eval.json`` payload."""
    out: dict[str, Any] = {}
    for name, m in ev.get("pixel", {}).get("classes", {}).items():
        if name not in ("background", "boundary"):
            out[f"{name}: pixel IoU"] = m.get("iou")
            out[f"{name}: pixel F1"] = m.get("f1")
    obj = ev.get("object") or {}
    for key in ("precision", "recall", "f1"):
        out[f"object {key} (IoU >= {obj.get('iou_threshold', 0.5)})"] = obj.get(key)
    out["objects predicted / true"] = f"{obj.get('n_pred')} / {obj.get('n_truth')}"
    ms = obj.get("merges_splits")
    if isinstance(ms, dict):
        out["merges / splits (predictions / truths)"] = f"{ms.get('merges')} / {ms.get('splits')}"
    return out


def print_summary(summary: Mapping[str, Any]) -> None:
    """Print per-stage timing and the held-out metrics of the model next to the baseline."""
    from rich.console import Console
    from rich.table import Table

    out = Path(summary["out"])
    console = Console(stderr=False)
    t = Table(title=f"pipeline {summary['name']} -> {out}")
    t.add_column("stage")
    t.add_column("status")
    t.add_column("seconds", justify="right")
    for name, st in summary["stages"].items():
        t.add_row(name, "skipped (unchanged)" if st.get("skipped") else "ran", str(st.get("seconds", "")))
    console.print(t)
    rows = {}
    for label, path in (("model", out / "eval.json"), ("baseline (pixel colour)", out / "baseline" / "eval.json")):
        if path.exists():
            rows[label] = _headline(read_json(path, what="evaluation"))
    if rows:
        keys = list(dict.fromkeys(k for r in rows.values() for k in r))
        m = Table(title="held-out evaluation (eval.json)")
        m.add_column("metric")
        for label in rows:
            m.add_column(label, justify="right")
        for k in keys:
            m.add_row(k, *[_fmt(rows[label].get(k)) for label in rows])
        console.print(m)


def _fmt(v: Any) -> str:
    return f"{v:.3f}" if isinstance(v, float) else ("" if v is None else str(v))
