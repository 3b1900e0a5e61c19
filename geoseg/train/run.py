"""``geoseg train``: tile dataset -> ``RUN/model/`` + ``metrics.csv`` + ``curves.png`` + ``run.json``.

Outputs (rank 0 writes; every file atomically)::

    RUN/model/               best epoch by validation mIoU (see geoseg.train.metrics), via save_model;
                             with ``keep="last"`` the final epoch (when the val split is too small to select on)
    RUN/checkpoints/last.pt  end of the last completed epoch: model, optimizer, scheduler, scaler, epoch,
                             best score/epoch, history, config, RNG states -- what --resume continues from
                             (on CPU a resumed run ends with the same weights as an uninterrupted one)
    RUN/metrics.csv          per epoch x class: IoU, precision, recall, F1, support + losses, mIoU, lr
    RUN/curves.png           loss and IoU curves
    RUN/run.json             config, runtime (device, AMP, world size), weights, status, best epoch, timings

Memory: the model + optimizer state + ``workers x prefetch x batch`` tiles; independent of the dataset size.
Multi-GPU: ``torchrun --nproc_per_node=N $(which geoseg) train DATA --out RUN ...`` (same command line; each rank
reads its shard of the train/val tiles, gradients are averaged by DistributedDataParallel, metrics are summed
over ranks; ``--batch-size`` is per GPU).
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import shutil
import sys
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, cast

import numpy as np
import torch

from geoseg.config import StageConfig, naming, read_json, to_dict, write_json
from geoseg.errors import ConfigError, GeosegError
from geoseg.io.lock import output_lock
from geoseg.io.output import check_writable_dir
from geoseg.train import loop
from geoseg.train.dataset import DatasetInfo, TileDataset, TileSampler, kind_weights, read_dataset
from geoseg.train.losses import LOSSES, build_loss
from geoseg.train.metrics import class_scores, mean_iou, score_classes
from geoseg.train.model import ARCHS, DEFAULT_ENCODER, build_model, load_model, read_model_config, save_model
from geoseg.train.report import plot_curves, write_metrics_csv
from geoseg.train.state import TrainState, check_compatible
from geoseg.train.transforms import DEFAULT_RECIPE, RECIPES, build_train_transform, describe
from geoseg.train.weights import apply_weights

log = logging.getLogger(__name__)

CHECKPOINT = Path("checkpoints") / "last.pt"


def default_workers() -> int:
    """DataLoader workers: ``min(4, CPUs available to this process)``."""
    try:
        cpus = len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - non-Linux
        cpus = os.cpu_count() or 1
    return min(4, cpus)


@dataclass(frozen=True)
class TrainConfig(StageConfig):
    """Options of ``geoseg train`` (see the CLI help); ``None`` means "pick for the device"."""

    dataset: Path
    out: Path
    arch: str = "unet"
    encoder: str = DEFAULT_ENCODER
    weights: str = "imagenet"
    epochs: int = 30
    batch_size: int = 8
    lr: float = 1e-3
    weight_decay: float = 1e-4
    loss: str = "ce"
    dice_weight: float = 1.0
    focal_gamma: float = 2.0
    augment: bool = True
    augment_recipe: str = DEFAULT_RECIPE  # geoseg.train.transforms.RECIPES
    channel_shuffle: bool = False
    balance_kinds: bool = False
    max_steps_per_epoch: int | None = None
    device: str = "auto"
    amp: bool | None = None
    channels_last: bool | None = None
    workers: int | None = None
    threads: int | None = None
    seed: int = 0
    keep: str = "best"  # best: epoch with the highest val mIoU; last: the final epoch (tiny val splits)
    calibrate: bool = True  # choose the post-processing on the val split (geoseg.train.calibrate)
    calibrate_max_tiles: int = 256
    resume: bool = False
    overwrite: bool = False
    progress: bool = True

    def normalize(self) -> None:
        self._set("dataset", Path(self.dataset))
        self._set("out", Path(self.out))

    def validate(self) -> None:
        """Raise :class:`ConfigError` for an out-of-range option (one line, naming the option)."""
        checks = {
            "--epochs": self.epochs >= 1,
            "--batch-size": self.batch_size >= 1,
            "--lr": self.lr > 0,
            "--weight-decay": self.weight_decay >= 0,
            "--dice-weight": self.dice_weight >= 0,
            "--max-steps-per-epoch": self.max_steps_per_epoch is None or self.max_steps_per_epoch >= 1,
            "--workers": self.workers is None or self.workers >= 0,
            "--threads": self.threads is None or self.threads >= 1,
            "--calibrate-max-tiles": self.calibrate_max_tiles >= 1,
        }
        for opt, ok in checks.items():
            if not ok:
                raise ConfigError(f"{opt}: invalid value; see geoseg train --help")
        with naming("--arch"):
            ARCHS[self.arch.lower()]  # unknown names list the valid ones
        with naming("--loss"):
            LOSSES[self.loss]
        if self.augment_recipe not in RECIPES:
            raise ConfigError(f"--augment-recipe {self.augment_recipe!r}: use one of {', '.join(RECIPES)}")
        if self.keep not in ("best", "last"):
            raise ConfigError(f"--keep {self.keep!r}: use best or last")


@dataclass(frozen=True)
class TrainResult:
    """What a finished (or already complete, when resumed) training run produced."""

    out: Path
    model_dir: Path
    epochs_completed: int
    best_epoch: int
    best_miou: float
    history: list[dict[str, Any]] = field(default_factory=list)
    is_main: bool = True  # False on the other ranks under torchrun


def model_config(cfg: TrainConfig, ds: DatasetInfo, weights_info: dict[str, Any]) -> dict[str, Any]:
    """The model-directory ``config.json`` payload (contract in geoseg.modeldir) for this run."""
    info = ds.info
    return {
        "arch": cfg.arch.lower(),
        "encoder": cfg.encoder,
        "in_channels": ds.in_channels,
        "num_classes": ds.num_classes,
        "classes": ds.classes,
        "boundary_class": ds.boundary_class,
        "ignore_index": ds.ignore_index,
        "bands": ds.band_names,
        "normalisation": {"mean": [float(v) for v in ds.mean], "std": [float(v) for v in ds.std]},
        "tile_size": ds.tile_size,
        "resolution_m": info.get("resolution_m"),
        "dataset": str(ds.path),
        "date_range": info.get("date_range"),
        "objects": info.get("objects"),  # label object areas: the instance step's derived defaults
        "dtype": ds.dtype,
        "weights": weights_info.get("source"),
        "score": {"name": "mIoU", "class_ids": score_classes(ds.num_classes, ds.boundary_class)},
    }


class _WorkerInit:
    """Per-worker setup: fresh zarr handles, own augmentation stream, one torch thread (OpenCV: see transforms)."""

    def __call__(self, worker_id: int) -> None:
        info = torch.utils.data.get_worker_info()
        torch.set_num_threads(1)
        if info is not None:
            cast(TileDataset, info.dataset).worker_start(info.seed)


def make_loader(
    dataset: TileDataset, sampler: TileSampler, batch_size: int, workers: int, rt: loop.Runtime, *, drop_last: bool
) -> torch.utils.data.DataLoader:
    """DataLoader with pinned memory on CUDA and persistent workers (zarr handles opened once per worker)."""
    kw: dict[str, Any] = {}
    if workers > 0:
        kw = {"persistent_workers": True, "prefetch_factor": 4 if rt.device.type == "cuda" else 2}
    return torch.utils.data.DataLoader(
        dataset,
        batch_size=batch_size,
        sampler=sampler,
        num_workers=workers,
        pin_memory=rt.device.type == "cuda",
        drop_last=drop_last,
        worker_init_fn=_WorkerInit(),
        generator=torch.Generator().manual_seed(0),  # worker seeds drawn from here, not the global RNG (resume)
        **kw,
    )


def _one_line(e: GeosegError) -> GeosegError:
    """A GeosegError re-raised from a DataLoader worker carries a traceback; keep its own message only."""
    msg = str(e)
    if "\n" not in msg:
        return e
    last = [ln for ln in msg.strip().splitlines() if ln.strip()][-1]
    prefix = f"{type(e).__name__}: "
    return type(e)(last.split(prefix, 1)[-1])


def run(config: TrainConfig) -> TrainResult:
    """Train as configured; see the module doc for outputs, resume and DDP behaviour.

    One run per ``--out`` at a time (rank 0 holds :func:`geoseg.io.lock.output_lock`). An interrupt
    (Ctrl-C, SIGTERM) marks ``run.json`` ``status: interrupted`` and re-raises.
    """
    main = loop.dist_env()[0] == 0
    if main:
        check_writable_dir(config.out)
    try:
        with output_lock(config.out) if main else contextlib.nullcontext():
            try:
                return _run(config)
            except KeyboardInterrupt:
                if main:
                    _mark_interrupted(config.out.expanduser().resolve() / "run.json")
                raise
    except GeosegError as e:
        raise _one_line(e) from None


def _mark_interrupted(run_json: Path) -> None:
    """``status: running`` -> ``interrupted`` in ``run_json`` (if this run got far enough to write it)."""
    with contextlib.suppress(GeosegError, OSError):
        info = read_json(run_json, what="run.json")
        if info.get("status") == "running":
            write_json(run_json, {**info, "status": "interrupted"}, stamped=False)


def _run(cfg: TrainConfig) -> TrainResult:
    """Phases: set up -> build model, data and state (restored on --resume) -> train epochs -> finish."""
    ds = read_dataset(cfg.dataset)
    cfg = replace(cfg, dataset=ds.path, out=cfg.out.expanduser().resolve())
    rt = _setup(cfg, ds)
    ckpt = _prepare_out(cfg, rt)
    torch.manual_seed(cfg.seed + rt.rank)
    np.random.seed(cfg.seed + rt.rank)
    model = build_model(cfg.arch, cfg.encoder, ds.in_channels, ds.num_classes)
    if ckpt is not None:
        weights_info = dict(ckpt.get("weights_info", {"source": "checkpoint"}))
    else:
        weights_info = apply_weights(model, cfg.encoder, cfg.weights, ds.in_channels)
    mcfg = model_config(cfg, ds, weights_info)
    if ckpt is not None:
        check_compatible(ckpt, mcfg, cfg.out / CHECKPOINT)
    net = _place(model, rt)
    data = _build_data(cfg, ds, rt)
    state = _build_state(cfg, rt, model, data.steps, mcfg, weights_info)
    if ckpt is not None:
        state.load_state_dict(ckpt, path=cfg.out / CHECKPOINT, rng=not rt.distributed)
        log.info("resuming %s after epoch %d of %d", cfg.out, state.epoch, cfg.epochs)
    criterion = build_loss(cfg.loss, dice_weight=cfg.dice_weight, ignore_index=ds.ignore_index, gamma=cfg.focal_gamma)
    s = _Session(cfg, ds, rt, net, criterion, data, state, _run_info(cfg, ds, rt, data, weights_info))
    if rt.is_main:
        cfg.out.mkdir(parents=True, exist_ok=True)
        _write_reports(s, "running")
    t_start = time.perf_counter()
    for epoch in range(state.epoch, cfg.epochs):
        _train_epoch(s, epoch)
    _finish(s, time.perf_counter() - t_start)
    rec = state.best_record
    best_miou = rec["miou"] if rec else math.nan
    return TrainResult(
        cfg.out, cfg.out / "model", len(state.history), state.best_epoch, best_miou, state.history, rt.is_main
    )


@dataclass
class _Data:
    """The loaders of one run and what the reports say about them."""

    train_ds: TileDataset
    val_ds: TileDataset
    train_sampler: TileSampler
    train_loader: torch.utils.data.DataLoader
    val_loader: torch.utils.data.DataLoader | None  # None: no val split
    workers: int
    transform: Any

    @property
    def steps(self) -> int:
        return len(self.train_loader)


@dataclass
class _Session:
    """Everything the epoch loop and the reports need (``state`` is what a checkpoint holds)."""

    cfg: TrainConfig
    ds: DatasetInfo
    rt: loop.Runtime
    net: torch.nn.Module  # the model, or its DDP wrapper
    criterion: torch.nn.Module
    data: _Data
    state: TrainState
    run_info: dict[str, Any]


def _setup(cfg: TrainConfig, ds: DatasetInfo) -> loop.Runtime:
    """Check the tile size, resolve the device / AMP / DDP runtime and the torch thread count."""
    stride = 32
    if ds.tile_size % stride:
        raise ConfigError(
            f"{ds.path}: tile size {ds.tile_size} is not a multiple of {stride}, which {cfg.arch} needs; "
            "re-tile with --tile-size 256 (or another multiple of 32)"
        )
    rt = loop.resolve_runtime(cfg.device, cfg.amp, cfg.channels_last)
    loop.init_distributed(rt)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    return rt


def _prepare_out(cfg: TrainConfig, rt: loop.Runtime) -> dict[str, Any] | None:
    """The checkpoint to resume from (``--resume``), or None; with ``--overwrite`` the old run's outputs go."""
    out = cfg.out
    ckpt_path = out / CHECKPOINT
    if ckpt_path.exists() and not cfg.resume:
        if not cfg.overwrite:
            raise ConfigError(f"{out}: already holds a training run; pass --resume to continue it or --overwrite")
        if rt.is_main:  # start over: the old model and reports must never pass for this run's
            ckpt_path.unlink()
            shutil.rmtree(out / "model", ignore_errors=True)
            for name in ("run.json", "metrics.csv", "curves.png"):
                (out / name).unlink(missing_ok=True)
    if cfg.resume:
        if ckpt_path.exists():
            return loop.load_checkpoint(ckpt_path)
        log.info("%s: no checkpoint to resume from; starting a new run", ckpt_path)
    return None


def _place(model: torch.nn.Module, rt: loop.Runtime) -> torch.nn.Module:
    """Move ``model`` to the device (channels-last if asked); the network to call (DDP-wrapped under torchrun)."""
    model.to(rt.device)
    if rt.channels_last:
        model.to(memory_format=torch.channels_last)
    if rt.distributed:
        return torch.nn.parallel.DistributedDataParallel(
            model, device_ids=[rt.local_rank] if rt.device.type == "cuda" else None
        )
    return model


def _build_data(cfg: TrainConfig, ds: DatasetInfo, rt: loop.Runtime) -> _Data:
    """Train / val datasets, samplers and loaders (this rank's shard)."""
    workers = default_workers() if cfg.workers is None else cfg.workers
    nodatas = {sc.get("nodata") for sc in ds.info.get("scenes", [])} - {None}
    nodata = float(next(iter(nodatas))) if len(nodatas) == 1 else None  # NaN is always treated as no data
    common: dict[str, Any] = {"num_classes": ds.num_classes, "ignore_index": ds.ignore_index, "nodata": nodata}
    tf = None
    if cfg.augment:
        tf = build_train_transform(
            cfg.augment_recipe, mean=ds.mean, std=ds.std, channel_shuffle=cfg.channel_shuffle,
            ignore_index=ds.ignore_index, seed=cfg.seed + rt.rank,
        )  # fmt: skip
    train_ds = TileDataset(ds.zarr_path, ds.train_rows, ds.mean, ds.std, transform=tf, **common)
    val_ds = TileDataset(ds.zarr_path, ds.val_rows, ds.mean, ds.std, **common)
    per_epoch = None
    if cfg.max_steps_per_epoch:
        per_epoch = cfg.max_steps_per_epoch * cfg.batch_size * rt.world
    train_sampler = TileSampler(
        len(train_ds),
        weights=kind_weights(ds.train_kinds) if cfg.balance_kinds else None,
        num_samples=per_epoch,
        rank=rt.rank,
        world=rt.world,
        seed=cfg.seed,
        item_seeds=True,  # augmentation seeded per draw: the same for any --workers and after --resume
    )
    val_sampler = TileSampler(len(val_ds), shuffle=False, rank=rt.rank, world=rt.world)
    drop_last = len(train_sampler) >= cfg.batch_size
    train_loader = make_loader(train_ds, train_sampler, cfg.batch_size, workers, rt, drop_last=drop_last)
    # no val split (a legitimate choice for small data): no validation pass, val metrics NaN, keep the last epoch
    val_loader = make_loader(val_ds, val_sampler, cfg.batch_size, workers, rt, drop_last=False) if len(val_ds) else None
    if val_loader is None and rt.is_main:
        log.warning("%s: no validation tiles; training without validation and keeping the last epoch", ds.path)
    if workers == 0:
        train_ds.reseed(cfg.seed + rt.rank)
    return _Data(train_ds, val_ds, train_sampler, train_loader, val_loader, workers, tf)


def _build_state(
    cfg: TrainConfig,
    rt: loop.Runtime,
    model: torch.nn.Module,
    steps: int,
    mcfg: dict[str, Any],
    weights_info: dict[str, Any],
) -> TrainState:
    """A fresh state: AdamW, warm-up + cosine LR per step over ``epochs x steps``, a GradScaler if fp16."""
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    total = cfg.epochs * steps
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, loop.WarmupCosine(total, max(1, min(200, total // 20))))
    return TrainState(model, optimizer, scheduler, loop.make_scaler(rt), to_dict(cfg), mcfg, weights_info)


def _run_info(cfg: TrainConfig, ds: DatasetInfo, rt: loop.Runtime, data: _Data, weights_info: dict[str, Any]) -> dict:
    """The run.json fields fixed for the whole run."""
    ids = score_classes(ds.num_classes, ds.boundary_class)
    return {
        "command": "train",
        "config": to_dict(cfg),
        "runtime": {**rt.describe(), "workers": data.workers, "steps_per_epoch": data.steps},
        "dataset": {
            "path": str(ds.path),
            "tiles": {"train": len(data.train_ds), "val": len(data.val_ds)},
            "tile_size": ds.tile_size,
            "in_channels": ds.in_channels,
            "dtype": ds.dtype,
            "classes": ds.classes,
        },
        "weights": weights_info,
        "augmentation": describe(data.transform, cfg.augment_recipe, cfg.channel_shuffle),
        "score": {"name": "mIoU", "class_ids": ids, "definition": "mean validation IoU over these class ids"},
    }


def _train_epoch(s: _Session, epoch: int) -> None:
    """One epoch (0-based ``epoch``): train, validate, record; rank 0 saves the model if kept, the checkpoint
    and the reports."""
    from geoseg.progress import tqdm

    cfg, ds, rt, data, st = s.cfg, s.ds, s.rt, s.data, s.state
    data.train_sampler.set_epoch(epoch)
    bar = tqdm(
        total=data.steps,
        desc=f"epoch {epoch + 1}/{cfg.epochs}",
        unit="batch",
        file=sys.stderr,
        disable=not (rt.is_main and cfg.progress),
        dynamic_ncols=True,
    )
    try:
        tr = loop.train_one_epoch(
            s.net, data.train_loader, s.criterion, st.optimizer, st.scheduler, st.scaler, rt, progress=bar
        )
        bar.set_postfix_str(f"loss={tr['loss']:.4f} validating", refresh=True)
        if data.val_loader is not None:
            val_loss, cm = loop.evaluate(s.net, data.val_loader, s.criterion, ds.num_classes, ds.ignore_index, rt)
        else:
            val_loss, cm = math.nan, np.zeros((ds.num_classes, ds.num_classes), np.int64)
    except BaseException:
        bar.close()
        raise
    sc = class_scores(cm)
    miou = mean_iou(sc["iou"], score_classes(ds.num_classes, ds.boundary_class))
    bar.set_postfix(loss=f"{tr['loss']:.4f}", val_loss=f"{val_loss:.4f}", val_mIoU=f"{miou:.3f}", refresh=True)
    bar.close()
    rec = {
        "epoch": epoch + 1,
        "train_loss": tr["loss"],
        "val_loss": val_loss,
        "miou": miou,
        "lr": float(st.scheduler.get_last_lr()[0]),
        "seconds": round(tr["seconds"], 3),
        "samples_per_s": round(tr["samples"] * rt.world / max(tr["seconds"], 1e-9), 3),
        "classes": {k: [float(x) for x in v] for k, v in sc.items()},
    }
    keep = cfg.keep if data.val_loader is not None else "last"
    improved = st.record(rec, always_best=data.val_loader is None)  # without val, best = last
    if rt.is_main:
        if improved or keep == "last":
            meta = {"epoch": epoch + 1, "val_miou": miou, "kept": keep}
            save_model(cfg.out / "model", st.model, {**st.model_config, **meta})
        loop.save_checkpoint(cfg.out / CHECKPOINT, st.state_dict())
        _write_reports(s, "running")
    if rt.distributed:
        torch.distributed.barrier()


def _finish(s: _Session, seconds: float) -> None:
    """Rank 0: export the model if missing, calibrate the post-processing, final reports; end DDP."""
    cfg, rt, st = s.cfg, s.rt, s.state
    if rt.is_main:
        model_dir = cfg.out / "model"
        if not model_dir.exists():  # resumed a run whose model/ was deleted: export the checkpoint state
            meta = {"epoch": len(st.history), "val_miou": st.history[-1]["miou"]}
            save_model(model_dir, st.model, {**st.model_config, **meta})
        if cfg.calibrate:
            s.run_info["postprocess"] = _calibrate(model_dir, s.data.val_ds, rt, cfg, s.ds.val_offsets)
        s.run_info["timing"] = {"seconds_this_session": round(seconds, 3)}
        _write_reports(s, "complete")
    if rt.distributed:
        torch.distributed.barrier()
        torch.distributed.destroy_process_group()


def _calibrate(
    model_dir: Path, val_ds: TileDataset, rt: loop.Runtime, cfg: TrainConfig, val_offsets: np.ndarray
) -> dict[str, Any]:
    """Calibrate the kept model's post-processing on the val split; store it in its config.json."""
    from geoseg.train.calibrate import calibrate, mosaic_tiles, val_probabilities

    mcfg = read_model_config(model_dir)
    if len(val_ds) == 0:
        block: dict[str, Any] = {"calibrated": False, "reason": "no validation tiles; derived defaults used"}
    else:
        model, _ = load_model(model_dir, rt.device)
        rows = np.arange(len(val_ds))
        offsets = val_offsets if len(val_offsets) == len(rows) else np.zeros((len(rows), 3), np.int64)
        if len(rows) > cfg.calibrate_max_tiles:
            rows = np.sort(np.random.default_rng(cfg.seed).choice(rows, cfg.calibrate_max_tiles, replace=False))
        sub = TileDataset(
            val_ds.zarr_path, val_ds.rows[rows], val_ds.mean.ravel(), 1.0 / val_ds.scale.ravel(),
            num_classes=val_ds.num_classes, ignore_index=val_ds.ignore_index, nodata=val_ds.nodata,
        )  # fmt: skip
        t = time.perf_counter()
        probs, masks = val_probabilities(model, sub, rt.device, batch_size=cfg.batch_size)
        if offsets[:, 1:].any():  # tiles stitched into their validation areas: objects cut only at area edges
            areas = mosaic_tiles(probs, masks, offsets[rows], val_ds.ignore_index)
            probs_in, masks_in = [a for a, _ in areas], [m for _, m in areas]
        else:
            probs_in, masks_in = list(probs), list(masks)
        block = calibrate(probs_in, masks_in, model_cfg=mcfg, progress=cfg.progress)
        block.update(tiles=len(probs), areas=len(probs_in))
        block["seconds"] = round(time.perf_counter() - t, 2)
    if block.get("calibrated"):
        p, sc, d = block["params"], block["scores"], block["default_scores"]
        log.info(
            "calibrated post-processing on %d val tiles: threshold %.2f, core %.2f, min area %.2f m² -> object F1 "
            "%.3f (defaults %.3f)", block["tiles"], p["threshold"], p["core_boundary_max"], p["min_area_m2"],
            sc["f1"], d["f1"],
        )  # fmt: skip
    else:  # (without val tiles the one warning about that has been given already)
        (log.warning if len(val_ds) else log.info)("%s: post-processing not calibrated: %s", model_dir, block["reason"])
    write_json(model_dir / "config.json", {**mcfg, "postprocess": block})
    return block


def _write_reports(s: _Session, status: str) -> None:
    """``metrics.csv`` + ``curves.png`` (once there is an epoch) and ``run.json`` with ``status``."""
    out, st, classes = s.cfg.out, s.state, s.ds.classes
    if st.history:
        write_metrics_csv(out / "metrics.csv", st.history, classes)
        plot_curves(out / "curves.png", st.history, classes)
    best_rec = st.best_record
    write_json(
        out / "run.json",
        {
            **s.run_info,
            "status": status,
            "epochs_completed": len(st.history),
            "epochs": s.cfg.epochs,
            "best": {"epoch": st.best_epoch, "miou": best_rec["miou"] if best_rec else None, "record": best_rec},
            "last": st.history[-1] if st.history else None,
            "outputs": {
                "model": "model/",
                "checkpoint": str(CHECKPOINT),
                "metrics": "metrics.csv",
                "curves": "curves.png",
            },
        },
    )
