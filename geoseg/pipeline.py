"""``geoseg run PIPELINE.yaml``: run the stages a pipeline file names.

A pipeline file is YAML::

    name: sample_aoi
    device: auto                 # default for train/predict/mine (overridable per stage)
    stages:
      tile:     {scenes: [...], labels: ..., <any TileConfig field>}
      train:    {<any TrainConfig field>}            # dataset = the tile stage's output
      predict:  {scenes: [...], aoi: ..., <any PredictConfig field>}   # model = the train stage's output
      evaluate: {truth: ..., aoi: ...}               # predicted = the predict stage's output
      baseline: {}                                   # colour classifier, predicted + evaluated likewise
      mine:     {scenes: [...], labels: ..., coverage: ...}            # model = the train stage's output
      tile_r2:  {uses: tile, hard_negatives: [..., "@mine"], ...}      # a named stage: its own folder
      train_r2: {uses: train, dataset: "@tile_r2", ...}

**Stage kinds**: ``tile``, ``train``, ``predict``, ``evaluate``, ``baseline``, ``mine``. A stage keyed by
a kind's name is that kind, writes where it always did (``dataset/``, ``train/``, ``predict/``,
``eval.json``, ``baseline/``, ``mine/``) and takes its upstream input implicitly from the stage keyed
by the producing kind (train's ``dataset`` from ``tile``, predict's and mine's ``model`` from ``train``,
evaluate's ``predicted`` from ``predict``, baseline's ``dataset``/``model``), as before. Any other key
is a **named stage**: ``uses: KIND`` says what it runs, it writes to ``OUT/<name>/`` (an evaluate
stage to ``OUT/<name>/eval.json``) and it takes no implicit input: name it.

**References**: a path option may be ``"@NAME"`` (also inside a list): the output of stage ``NAME`` of
this file: a tile stage's dataset folder, a train stage's run folder, a predict stage's folder, an
evaluate stage's ``eval.json``, a baseline stage's folder, a mine stage's ``false_positives.gpkg``;
``"@NAME/relative/path"`` is a file inside that stage's folder (e.g. ``"@mine/false_negatives.gpkg"``).
References are checked up front (the stage exists, no stage refers to itself, no cycle).

**Order**: file order, except that a stage always runs after the stages whose outputs it uses
(references and implicit inputs): a stable topological order.

Relative paths are relative to the pipeline file. Everything is validated before any work starts
(unknown stage, kind or key, missing input file, bad reference, and every stage's options: each
config is a :class:`~geoseg.config.StageConfig`, checked on construction). A stage whose outputs are complete and
whose resolved config, input files and upstream stages are unchanged is skipped; a stage that runs makes
every stage that uses its output run too; ``--from STAGE`` forces that stage and the ones after it.
Each evaluate/baseline stage's headline metrics are collected side by side in ``OUT/evaluations.json``
and printed as one table (e.g. two training rounds on the same holdout).
"""

from __future__ import annotations

import dataclasses
import hashlib
import importlib
import json
import logging
import re
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

ORDER = ("tile", "train", "predict", "evaluate", "baseline", "mine")  # the stage kinds
STATE_FILE = "pipeline_state.json"
EVALUATIONS = "evaluations.json"
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")


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
    product: str = ""  # what ``@name`` gives, relative to the stage's out ("" = the out itself)

    def out_for(self, name: str) -> str:
        """The stage's out relative to the pipeline's --out: the usual one for a stage keyed by its kind,
        else ``<name>`` (an evaluate stage, whose out is a file: ``<name>/eval.json``)."""
        if name == self.name:
            return self.out
        return f"{name}/{self.out}" if self.out.endswith(".json") else name

    def marker_for(self, name: str) -> str:
        """File (relative to --out) that exists only once the stage ``name`` completed."""
        return self.out_for(name) + self.marker[len(self.out) :]

    def config_cls(self) -> type:
        return getattr(importlib.import_module(self.module), self.config)

    def run(self, cfg: Any) -> Any:
        return importlib.import_module(self.module).run(cfg)


STAGES: dict[str, Stage] = {
    s.name: s
    for s in (
        Stage(
            "tile",
            "geoseg.tile.run",
            "TileConfig",
            "dataset",
            "dataset/dataset.json",
            ("scenes", "labels", "coverage", "hard_negatives", "val_area"),
        ),
        Stage(
            "train",
            "geoseg.train.run",
            "TrainConfig",
            "train",
            "train/model/config.json",
            ("weights", "dataset"),
            {"dataset": "tile"},
            device=True,
        ),
        Stage(
            "predict",
            "geoseg.predict.run",
            "PredictConfig",
            "predict",
            "predict/run.json",
            ("scenes", "aoi", "model"),
            {"model": "train"},
            device=True,
        ),
        Stage(
            "evaluate",
            "geoseg.evaluate",
            "EvaluateConfig",
            "eval.json",
            "eval.json",
            ("truth", "aoi", "predicted"),
            {"predicted": "predict"},
        ),
        Stage(
            "baseline",
            "geoseg.baseline",
            "BaselineConfig",
            "baseline",
            "baseline/eval.json",
            ("scenes", "aoi", "truth", "dataset", "model"),
            {"dataset": "tile", "model": "train"},
        ),
        Stage(
            "mine",
            "geoseg.mine",
            "MineConfig",
            "mine",
            "mine/mine.json",
            ("scenes", "model", "labels", "coverage", "aoi"),
            {"model": "train"},
            device=True,
            product="false_positives.gpkg",
        ),
    )
}


@dataclass(frozen=True)
class Pipeline:
    """A validated pipeline file: name, defaults, the stage options and kinds, in run order."""

    path: Path
    name: str
    device: str | None
    stages: dict[str, dict[str, Any]]  # stage name -> options (without ``uses``), in run order
    kinds: dict[str, str] = dataclasses.field(default_factory=dict)  # stage name -> kind (a key of STAGES)

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
        raw = doc.get("stages") or {}
        if not isinstance(raw, dict) or not raw:
            raise ConfigError(f"{path}: 'stages' must map stage names ({', '.join(ORDER)}, or any name with "
                              "'uses: KIND') to their options")  # fmt: skip
        stages: dict[str, dict[str, Any]] = {}
        kinds: dict[str, str] = {}
        for key, opts in raw.items():
            key = str(key)
            opts = dict(opts or {}) if isinstance(opts, dict) or opts is None else None
            if opts is None:
                raise ConfigError(f"{path}: stage {key}: options must be a mapping")
            uses = opts.pop("uses", None)
            if key in STAGES and uses not in (None, key):
                raise ConfigError(f"{path}: stage {key}: a stage named after a kind is that kind; rename it to use "
                                  f"'uses: {uses}'")  # fmt: skip
            kind = str(uses) if uses is not None else key
            if kind not in STAGES:
                hint = f"unknown kind {kind!r} in 'uses'" if uses is not None else "a named stage needs 'uses: KIND'"
                raise ConfigError(f"{path}: stage {key}: {hint}; kinds: {', '.join(ORDER)}")
            if not _NAME.match(key):
                raise ConfigError(f"{path}: stage {key!r}: use letters, digits, '_', '-', '.' (it names a folder)")
            stages[key], kinds[key] = opts, kind
        for item in overrides or []:
            k, sep, value = item.partition("=")
            stage, dot, opt = k.partition(".")
            if not sep or not dot or stage not in stages:
                raise ConfigError(f"--set {item!r}: expected STAGE.OPTION=VALUE with STAGE one of {', '.join(stages)}")
            if opt == "uses":
                raise ConfigError(f"--set {item!r}: a stage's kind cannot be overridden")
            stages[stage][opt] = yaml.safe_load(value)
        outs: dict[str, str] = {}
        for name, kind in kinds.items():
            o = STAGES[kind].out_for(name).split("/")[0]
            if o in outs or o == STATE_FILE or o == EVALUATIONS:
                raise ConfigError(f"{path}: stage {name}: its output folder {o!r} is also stage {outs.get(o, o)}'s; "
                                  "rename it")  # fmt: skip
            outs[o] = name
        pipe = cls(path, str(doc.get("name") or path.stem), doc.get("device"), stages, kinds)
        order = pipe._order()
        return cls(pipe.path, pipe.name, pipe.device, {n: stages[n] for n in order}, {n: kinds[n] for n in order})

    def kind(self, stage: str) -> Stage:
        return STAGES[self.kinds.get(stage, stage)]

    def out_of(self, stage: str) -> str:
        """The stage's output, relative to the pipeline's --out."""
        return self.kind(stage).out_for(stage)

    def implicit(self, stage: str) -> dict[str, str]:
        """Implicit inputs (field -> producing stage): only for a stage keyed by its kind, from the stage keyed
        by the producing kind, when the file has it."""
        if stage not in STAGES:
            return {}
        return {k: src for k, src in STAGES[stage].implicit.items() if src in self.stages}

    def dependencies(self, stage: str) -> list[str]:
        """Stages whose outputs ``stage`` uses (references and implicit inputs), in file order."""
        deps = set(self.implicit(stage).values())
        for key in self.kind(stage).path_fields:
            for ref, _ in _refs(self.stages[stage].get(key)):
                if ref not in self.stages:
                    raise ConfigError(f"{self.path}: stage {stage}: {key}: @{ref} is not a stage of this file; "
                                      f"stages: {', '.join(self.stages)}")  # fmt: skip
                if ref == stage:
                    raise ConfigError(f"{self.path}: stage {stage}: {key}: a stage cannot use its own output")
                deps.add(ref)
        for key, value in self.stages[stage].items():
            if key not in self.kind(stage).path_fields and _refs(value):
                raise ConfigError(f"{self.path}: stage {stage}: {key}: only path options take @STAGE references")
        return [s for s in self.stages if s in deps]

    def _order(self) -> list[str]:
        """Stable topological order: file order, each stage after the stages it uses."""
        done: list[str] = []
        visiting: list[str] = []

        def visit(s: str) -> None:
            if s in done:
                return
            if s in visiting:
                cycle = " -> ".join([*visiting[visiting.index(s) :], s])
                raise ConfigError(f"{self.path}: stages use each other's outputs in a cycle: {cycle}")
            visiting.append(s)
            for d in self.dependencies(s):
                visit(d)
            visiting.pop()
            done.append(s)

        for s in self.stages:
            visit(s)
        return done

    def resolve(self, stage: str, out: Path) -> Any:
        """The stage's config object: options + implicit upstream paths + references + resolved paths."""
        spec = self.kind(stage)
        opts = dict(self.stages[stage])
        base = self.path.parent
        cls = spec.config_cls()
        fields = {f.name for f in dataclasses.fields(cls)}
        # inputs made by an earlier stage of this pipeline come from its output; otherwise the user names them
        implicit = {k: str(out / self.out_of(src)) for k, src in self.implicit(stage).items()}
        clash = sorted(set(opts) & set(implicit))
        if clash:
            raise ConfigError(f"{self.path}: stage {stage}: {', '.join(clash)} come(s) from an earlier stage; remove")
        missing = sorted(k for k in spec.implicit if k not in implicit and k not in opts)
        if missing:
            if stage in STAGES:
                raise ConfigError(
                    f"{self.path}: stage {stage}: give {', '.join(missing)} (the pipeline has no "
                    f"{', '.join(spec.implicit[k] for k in missing)} stage to take it from)"
                )
            src = spec.implicit[missing[0]]
            raise ConfigError(f"{self.path}: stage {stage}: give {', '.join(missing)}, e.g. {missing[0]}: "
                              f'"@<{src} stage>" (named stages take no implicit input)')  # fmt: skip
        unknown = sorted(set(opts) - fields)
        if unknown:
            valid = ", ".join(sorted(fields - set(implicit) - {"out"}))
            raise ConfigError(f"{self.path}: stage {stage}: unknown option(s) {', '.join(unknown)}; valid: {valid}")
        self.dependencies(stage)  # reference checks
        for key in spec.path_fields:
            if key in opts and opts[key] is not None:
                opts[key] = self._paths(opts[key], base, out, f"{self.path}: stage {stage}: {key}")
        if spec.device and "device" in fields and "device" not in opts and self.device:
            opts["device"] = self.device
        if "overwrite" in fields and "overwrite" not in opts and "resume" not in opts:
            opts["overwrite"] = True  # the pipeline decided this stage must run again
        opts = {k: tuple(v) if isinstance(v, list) else v for k, v in opts.items()}
        opts.update(implicit)
        opts["out"] = str(out / self.out_of(stage))
        try:
            return cls(**opts)  # a StageConfig checks its options on construction: all up front, before any stage runs
        except (TypeError, ValueError) as e:
            raise ConfigError(f"{self.path}: stage {stage}: {e}") from None

    def _paths(self, value: Any, base: Path, out: Path, what: str) -> Any:
        if isinstance(value, (list, tuple)):
            return tuple(self._paths(v, base, out, what) for v in value)
        refs = _refs(value)
        if refs:
            ref, sub = refs[0]
            target = out / self.out_of(ref)
            product = sub if sub else self.kind(ref).product
            return str(target / product if product else target)
        return _resolve_paths(value, base, what)


def _refs(value: Any) -> list[tuple[str, str]]:
    """``(stage, sub path)`` of each ``@stage[/sub/path]`` string in ``value`` (a string or a list)."""
    items = value if isinstance(value, (list, tuple)) else [value]
    out = []
    for v in items:
        if isinstance(v, str) and v.startswith("@"):
            name, _, sub = v[1:].partition("/")
            out.append((name, sub))
    return out


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


def _input_stamps(cfg: Any, fields: tuple[str, ...], out: Path | None = None) -> list[Any]:
    """(path, size, mtime) of the stage's input files, so an edited input re-runs the stage. Files under the
    pipeline's ``out`` (outputs of other stages) are left out: their stage's digest stands for them."""
    stamps = []
    root = out.resolve() if out is not None else None
    for key in fields:
        value = getattr(cfg, key, None)
        for v in value if isinstance(value, (list, tuple)) else [value]:
            p = Path(str(v)) if v is not None else None
            if p is not None and p.is_file():
                if root is not None and p.resolve().is_relative_to(root):
                    continue
                st = p.stat()
                stamps.append([str(p), st.st_size, st.st_mtime_ns])
    return stamps


def run_pipeline(
    path: str | Path, out: str | Path, *, from_stage: str | None = None, overrides: list[str] | None = None
) -> dict[str, Any]:
    """Validate everything, then run (or skip) each stage in order. Returns a summary dict."""
    pipe = Pipeline.load(path, overrides)
    out = Path(out)
    if from_stage is not None and from_stage not in pipe.stages:
        raise ConfigError(f"--from {from_stage}: not a stage of {pipe.path}; stages: {', '.join(pipe.stages)}")
    configs = {name: pipe.resolve(name, out) for name in pipe.stages}  # validate all before any work
    preflight(pipe, configs)
    check_writable_dir(out)
    with output_lock(out):  # one pipeline per --out at a time (each stage also locks its own folder)
        return _run_stages(pipe, out, configs, from_stage)


def preflight(pipe: Pipeline, configs: Mapping[str, Any]) -> None:
    """Checks across stages and against this machine that no single config can make, before any work:
    a CUDA ``device`` where CUDA is unavailable; predict ``--bands`` beyond a local scene's band count;
    predict ``overlap`` (or ``tile_size``) that cannot fit the tile size its model will be trained on
    (when that model is made by a train stage of this file from a tile stage of this file). Each problem
    is a one-line :class:`ConfigError` naming the file and the stage."""
    for name, cfg in configs.items():
        where = f"{pipe.path}: stage {name}"
        device = str(getattr(cfg, "device", "auto") or "auto").lower()
        if pipe.kind(name).device and device.startswith("cuda"):
            import torch

            if not torch.cuda.is_available():
                raise ConfigError(f"{where}: device {device}: CUDA is not available here; use cpu or auto")
        if pipe.kinds.get(name, name) != "predict":
            continue
        if cfg.bands:
            _check_bands(where, cfg.scenes, cfg.bands)
        tile = _trained_tile_size(pipe, configs, name)
        size = cfg.tile_size or tile
        if size is not None and cfg.overlap is not None and not 0 <= cfg.overlap < size:
            raise ConfigError(f"{where}: overlap must be in [0, {size - 1}] pixels for tile size {size} "
                              f"(the model's, from the tile stage), got {cfg.overlap}")  # fmt: skip


def _check_bands(where: str, scenes: tuple[str, ...], bands: tuple[int, ...]) -> None:
    """``bands`` within the band count of every scene that is a local file (URLs and STAC Items are read later)."""
    import rasterio

    for scene in scenes:
        if not Path(scene).is_file() or Path(scene).suffix.lower() == ".json":
            continue
        try:
            with rasterio.open(scene) as ds:
                count = ds.count
        except rasterio.errors.RasterioError:
            continue  # the stage itself reports an unreadable scene with its own message
        bad = [b for b in bands if b > count]
        if bad:
            raise ConfigError(f"{where}: bands: {bad[0]} out of range; {scene} has {count} bands")


def _trained_tile_size(pipe: Pipeline, configs: Mapping[str, Any], stage: str) -> int | None:
    """The tile size of the model a predict stage uses, when a train stage of this file makes that model
    from a tile stage of this file; else None (an existing model: predict checks it when it loads it)."""
    for dep in pipe.dependencies(stage):
        if pipe.kinds.get(dep, dep) != "train":
            continue
        for src in pipe.dependencies(dep):
            if pipe.kinds.get(src, src) == "tile":
                return int(configs[src].tile_size)
    return None


def _run_stages(pipe: Pipeline, out: Path, configs: dict[str, Any], from_stage: str | None) -> dict[str, Any]:
    state_path = out / STATE_FILE
    state = read_json(state_path, what="pipeline state").get("stages", {}) if state_path.exists() else {}
    summary: dict[str, Any] = {"pipeline": str(pipe.path), "name": pipe.name, "out": str(out), "stages": {}}
    names = list(configs)
    deps = {name: pipe.dependencies(name) for name in names}
    forced_from = names.index(from_stage) if from_stage is not None else len(names)
    digests: dict[str, str] = {}
    ran: set[str] = set()
    for i, (name, cfg) in enumerate(configs.items()):
        spec = pipe.kind(name)
        digest = _digest([[digests[d] for d in deps[name]], to_dict(cfg), _input_stamps(cfg, spec.path_fields, out)])
        digests[name] = digest
        marker = out / spec.marker_for(name)
        forced = i >= forced_from or any(d in ran for d in deps[name])  # a re-run stage re-runs its users
        if not forced and state.get(name, {}).get("digest") == digest and marker.exists():
            log.info("stage %s: unchanged and complete, skipped (use --from %s to force)", name, name)
            summary["stages"][name] = {"skipped": True, "kind": pipe.kinds[name], "out": str(out / pipe.out_of(name))}
            continue
        ran.add(name)
        # forget this stage and its users first: an interrupted re-run must never look complete next time
        for later in [name, *_users(name, names[i + 1 :], deps)]:
            state.pop(later, None)
        write_json(state_path, {"pipeline": str(pipe.path), "stages": state})
        log.info("stage %s: running -> %s", name, out / pipe.out_of(name))
        t0 = time.perf_counter()
        result = spec.run(cfg)
        secs = time.perf_counter() - t0
        state[name] = {"digest": digest, "seconds": round(secs, 1), "finished": time.strftime("%Y-%m-%dT%H:%M:%S")}
        write_json(state_path, {"pipeline": str(pipe.path), "stages": state})
        summary["stages"][name] = {"skipped": False, "kind": pipe.kinds[name], "seconds": round(secs, 1),
                                   "out": str(out / pipe.out_of(name)), "result": _summarise(result)}  # fmt: skip
    evals = evaluations(pipe, out)
    summary["evaluations"] = evals
    if evals:
        write_json(out / EVALUATIONS, {"pipeline": str(pipe.path), "stages": evals})
    write_json(out / "pipeline.json", {**summary, "config": {k: to_dict(v) for k, v in configs.items()},
                                       "kinds": pipe.kinds})  # fmt: skip
    return summary


def _users(name: str, later: list[str], deps: Mapping[str, list[str]]) -> list[str]:
    """The stages of ``later`` that use ``name``'s output, directly or through another stage."""
    hit = {name}
    for s in later:
        if any(d in hit for d in deps[s]):
            hit.add(s)
    return [s for s in later if s in hit]


def evaluations(pipe: Pipeline, out: Path) -> dict[str, Any]:
    """Headline metrics (:func:`_headline`) of every evaluate/baseline stage whose ``eval.json`` exists,
    in run order: ``{stage: {"kind", "eval_json", "metrics"}}``."""
    res: dict[str, Any] = {}
    for name, kind in pipe.kinds.items():
        if kind not in ("evaluate", "baseline"):
            continue
        path = out / pipe.kind(name).marker_for(name)
        if path.exists():
            res[name] = {"kind": kind, "eval_json": str(path), "metrics": _headline(read_json(path, what="evaluation"))}
    return res


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
    """Print per-stage timing and the held-out metrics of every evaluate/baseline stage side by side."""
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
    evals = summary.get("evaluations") or {}
    labels = {"baseline": "baseline (pixel colour)"}
    if sum(e.get("kind") == "evaluate" for e in evals.values()) == 1:
        labels["evaluate"] = "model"  # one model: "model" vs "baseline"; several: their stage names
    rows = {labels.get(name, name): e["metrics"] for name, e in evals.items()}
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
