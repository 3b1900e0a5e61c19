"""The ``geoseg`` command line: parse, validate, call the stage's ``run``. Nothing else.

Every :class:`~geoseg.errors.GeosegError` becomes one line on stderr and exit code 2.
"""

from __future__ import annotations

import dataclasses
import gc
import logging
import signal
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer

from geoseg import __version__
from geoseg.cli_options import (
    Asset,
    CoreBoundaryMax,
    Device,
    FillHoles,
    MinArea,
    Progress,
    Regularize,
    Scheduler,
    Seed,
    Threshold,
    Workers,
)
from geoseg.errors import GeosegError, Terminated
from geoseg.io.gdal_env import gdal_env

app = typer.Typer(
    name="geoseg",
    help="Geospatial segmentation: tile scenes + dated labels, train a UNet, predict COGs + polygons.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

C = TypeVar("C")

#: config field -> command parameter, where the names differ (all other fields: the same name)
PARAM_OF: dict[str, dict[str, str]] = {
    "TileConfig": {"scene_dates": "scene_date"},
    "MineConfig": {"scene_dates": "scene_date"},
    "PredictConfig": {"vectorize": "vectorize_"},
    "VectorizeConfig": {"min_area_m2": "min_area", "fill_holes_m2": "fill_holes", "simplify_px": "simplify"},
}


def _as_field(value: Any, annotation: str) -> Any:
    """A parsed parameter as the config field wants it: lists -> tuples; ``Path`` -> ``str`` unless a Path field."""
    if isinstance(value, (list, tuple)):
        return tuple(_as_field(v, annotation) for v in value)
    if isinstance(value, Path) and "Path" not in annotation:
        return str(value)
    return value


def _build(cls: type[C], params: Mapping[str, Any], **given: Any) -> C:
    """The stage config ``cls`` from a command's parsed parameters (its ``locals()``).

    Each field takes ``given[field]`` if there, else the parameter of the same name (``PARAM_OF``
    lists the exceptions), converted by :func:`_as_field`; a field with no parameter keeps its
    dataclass default. The config validates itself on construction (:class:`geoseg.config.StageConfig`).
    """
    assert dataclasses.is_dataclass(cls)
    rename = PARAM_OF.get(cls.__name__, {})
    kwargs = dict(given)
    for f in dataclasses.fields(cls):
        name = rename.get(f.name, f.name)
        if f.name not in given and name in params:
            kwargs[f.name] = _as_field(params[name], str(f.type))
    return cls(**kwargs)


def _names(value: str | None) -> tuple[str, ...]:
    """``a,b`` -> ``("a", "b")``; None or empty -> ``()``."""
    return tuple(n.strip() for n in (value or "").split(",") if n.strip())


def _version(value: bool) -> None:
    if value:
        typer.echo(f"geoseg {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: Annotated[
        bool, typer.Option("--version", callback=_version, is_eager=True, help="Print the version.")
    ] = False,
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Debug logging (and dask's INFO).")] = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="Warnings and errors only; no progress.")] = False,
) -> None:
    from geoseg.errors import ConfigError
    from geoseg.progress import set_quiet

    if verbose and quiet:
        raise ConfigError("give -v/--verbose or -q/--quiet, not both")
    level = logging.DEBUG if verbose else logging.WARNING if quiet else logging.INFO
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    logging.getLogger().setLevel(level)  # (also when logging was configured before, e.g. in-process calls)
    set_quiet(quiet)
    noisy = ["rasterio", "fiona", "pyogrio", "matplotlib", "PIL", "numba", "timm"]
    for name in noisy if verbose else [*noisy, "distributed", "distributed.nanny", "distributed.scheduler",
                                         "distributed.worker", "distributed.core", "distributed.http"]:  # fmt: skip
        logging.getLogger(name).setLevel(logging.WARNING)


# --- stage commands: each parses, builds its stage's config and calls the stage's run() ---------
@app.command()
def tile(
    scenes: Annotated[
        list[str],
        typer.Argument(
            help="Scene GeoTIFFs (any CRS, bands, dtype; tiled or striped): paths, https:// URLs "
            "(read with range requests) or STAC Items (.json file or URL)."
        ),
    ],
    labels: Annotated[Path, typer.Option("--labels", help="Label polygons (GPKG, GeoJSON, Shapefile, GeoParquet).")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Dataset directory (tiles.zarr, tiles.gpkg, dataset.json).")],
    tile_size: Annotated[int, typer.Option(help="Tile edge in pixels.")] = 256,
    stride: Annotated[
        int | None, typer.Option(help="Pixels between tile origins (default: the tile size; smaller = overlap).")
    ] = None,
    class_field: Annotated[
        str | None, typer.Option(help="Class field (default: 'class' if present, else one class).")
    ] = None,
    classes: Annotated[
        str | None, typer.Option(help="Class names in id order, comma-separated (default: sorted names).")
    ] = None,
    date_field: Annotated[str, typer.Option(help="Label date field (label valid from this date on).")] = "date",
    valid_from_field: Annotated[str, typer.Option(help="Optional field: label valid from.")] = "valid_from",
    valid_to_field: Annotated[str, typer.Option(help="Optional field: label valid until.")] = "valid_to",
    labels_layer: Annotated[str | None, typer.Option(help="Layer name in a multi-layer labels file.")] = None,
    scene_date: Annotated[
        list[str] | None,
        typer.Option(
            help="Acquisition date (once for all scenes, or once per scene in order); else GeoTIFF tag, "
            "else YYYYMMDD in the file name."
        ),
    ] = None,
    asset: Asset = None,
    max_label_age: Annotated[
        int | None, typer.Option(help="Labels older than this many days before the scene date are ignore.")
    ] = None,
    undated: Annotated[
        str, typer.Option(help="Undated labels: keep (valid for every scene, warns) or drop (ignore).")
    ] = "keep",
    coverage: Annotated[
        Path | None, typer.Option(help="Annotated areas: outside = ignore (255), inside unlabelled = background.")
    ] = None,
    hard_negatives: Annotated[
        list[Path] | None,
        typer.Option(
            help="Look-alike polygons, or false_positives.gpkg of geoseg mine (repeatable): label-free "
            "tiles touching them are hard negatives (mined ones first, kind mined_negative)."
        ),
    ] = None,
    negative_ratio: Annotated[float, typer.Option(help="Negative tiles per positive tile.")] = 1.0,
    hard_negative_share: Annotated[float, typer.Option(help="Share of the negatives that are hard.")] = 0.5,
    min_positive_fraction: Annotated[
        float, typer.Option(help="Labelled pixel fraction that makes a tile positive.")
    ] = 0.01,
    max_unusable_fraction: Annotated[
        float, typer.Option(help="Skip tiles with more nodata + ignore pixels than this fraction.")
    ] = 0.5,
    val_fraction: Annotated[float, typer.Option(help="Share of positive tiles in the validation split.")] = 0.2,
    val_block_tiles: Annotated[
        str,
        typer.Option(
            metavar="auto|N",
            help="Split block edge in tiles; auto: the largest edge (>= 2 tiles) giving the positives at least "
            "max(10, 2/--val-fraction) blocks.",
        ),
    ] = "auto",
    val_gap: Annotated[
        int | None,
        typer.Option(
            metavar="TILES",
            help="Strides of the tile grid between train and val tiles: train tiles nearer a val tile are dropped "
            "(default: the smallest with no shared pixel, 0 when --stride = --tile-size).",
        ),
    ] = None,
    val_area: Annotated[
        Path | None,
        typer.Option(
            metavar="LAYER",
            help="Validation polygons: tiles sharing area with them are val, all others train (replaces the blocks).",
        ),
    ] = None,
    boundary_width: Annotated[
        int | None,
        typer.Option(
            help="Boundary class this many pixels wide: inside outlines and in gaps between objects, so "
            "touching objects can be separated (0 = off; default: from the label object sizes)."
        ),
    ] = None,
    seed: Seed = 0,
    workers: Workers = 1,
    scheduler: Scheduler = None,
    processes: Annotated[
        bool, typer.Option("--processes/--threads", help="Local workers as processes or threads (default).")
    ] = False,
    progress: Progress = True,
) -> None:
    """Chunk SCENES + dated LABELS into a sampled, labelled tile dataset (tiles.zarr + tiles.gpkg + dataset.json)."""
    from geoseg.tile import TileConfig
    from geoseg.tile import run as run_tile

    cfg = _build(
        TileConfig,
        locals(),
        classes=tuple(c.strip() for c in classes.split(",") if c.strip()) if classes else None,
        scene_dates=tuple(scene_date or ()),
        hard_negatives=tuple(str(h) for h in hard_negatives or ()),
    )
    res = run_tile(cfg)
    c = res.counts
    typer.echo(f"{res.n_tiles} tiles -> {res.out}")
    typer.echo(f"{'kind':<14} {'requested':>9} {'realised':>9}")
    for k in c["requested"]:
        typer.echo(f"{k:<14} {c['requested'][k]:>9} {c['realised'][k]:>9}")
    share = c["val_share_of_positives"]
    real = "n/a" if share["realised"] is None else f"{share['realised']:.3f}"
    req = "val area" if share["requested"] is None else f"{share['requested']:.3f}"
    typer.echo(
        f"split: train {c['by_split']['train']}, val {c['by_split']['val']}; "
        f"val share of positives {real} (requested {req})"
    )


@app.command()
def train(
    dataset: Annotated[Path, typer.Argument(help="Tile dataset directory written by `geoseg tile`.")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Run directory (model/, metrics.csv, curves.png).")],
    arch: Annotated[str, typer.Option(help="smp architecture: unet, fpn, linknet, unetplusplus, ...")] = "unet",
    encoder: Annotated[str, typer.Option(help="smp encoder name.")] = "tu-tf_efficientnet_lite0",
    weights: Annotated[
        str, typer.Option(help="imagenet | none | PATH (local state dict or smp/timm checkpoint).")
    ] = "imagenet",
    epochs: Annotated[int, typer.Option(help="Epochs (total, also when resuming).")] = 30,
    batch_size: Annotated[int, typer.Option("--batch-size", help="Tiles per step (per GPU under torchrun).")] = 8,
    lr: Annotated[float, typer.Option(help="Peak learning rate (AdamW, warm-up then cosine).")] = 1e-3,
    weight_decay: Annotated[float, typer.Option("--weight-decay")] = 1e-4,
    loss: Annotated[str, typer.Option(help="ce | focal | dice (ce/focal get + dice-weight x Dice).")] = "ce",
    dice_weight: Annotated[float, typer.Option("--dice-weight", help="Weight of the Dice term; 0 = off.")] = 1.0,
    augment: Annotated[bool, typer.Option("--augment/--no-augment", help="Augment training tiles.")] = True,
    augment_recipe: Annotated[
        str,
        typer.Option(
            "--augment-recipe",
            help="basic (flips, rotations, mild affine, brightness/contrast) | colour "
            "(+ per-band gain/offset, hue/saturation) | scale (+ scale jitter x0.5..x2) | full (both).",
        ),
    ] = "basic",
    channel_shuffle: Annotated[
        bool, typer.Option("--channel-shuffle/--no-channel-shuffle", help="Add random band permutation.")
    ] = False,
    balance_kinds: Annotated[
        bool, typer.Option("--balance-kinds", help="Sample positive/hard/easy-negative tiles equally often.")
    ] = False,
    max_steps_per_epoch: Annotated[
        int | None, typer.Option("--max-steps-per-epoch", help="Cap training steps per epoch (quick runs).")
    ] = None,
    device: Device = "auto",
    amp: Annotated[bool | None, typer.Option("--amp/--no-amp", help="Mixed precision (default: on for CUDA).")] = None,
    channels_last: Annotated[
        bool | None, typer.Option("--channels-last/--no-channels-last", help="NHWC memory format (default on).")
    ] = None,
    workers: Annotated[int | None, typer.Option(help="DataLoader workers (default min(4, CPUs)).")] = None,
    threads: Annotated[int | None, typer.Option(help="torch CPU threads (default: torch's choice).")] = None,
    seed: Seed = 0,
    keep: Annotated[
        str, typer.Option(help="Model to keep: best (highest val mIoU) or last (final epoch; for tiny val splits).")
    ] = "best",
    calibrate: Annotated[
        bool,
        typer.Option(
            "--calibrate/--no-calibrate",
            help="Choose the post-processing (threshold, minimum area, core) "
            "that maximises object F1 on the val split; stored in model/config.json.",
        ),
    ] = True,
    resume: Annotated[bool, typer.Option("--resume", help="Continue from OUT/checkpoints/last.pt.")] = False,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Start over in an OUT that holds a run.")] = False,
    progress: Progress = True,
) -> None:
    """Train a segmentation model on a tile dataset (multi-GPU: run under torchrun with the same arguments)."""
    from geoseg.train.run import TrainConfig
    from geoseg.train.run import run as run_train

    cfg = _build(TrainConfig, locals())
    res = run_train(cfg)
    if res.is_main:
        typer.echo(
            f"{res.model_dir}: best epoch {res.best_epoch} of {res.epochs_completed}, val mIoU {res.best_miou:.4f}",
            err=True,
        )


@app.command()
def predict(
    scenes: Annotated[
        list[str],
        typer.Argument(help="Scene GeoTIFF(s) (paths, https:// URLs or STAC Items); each on its own grid."),
    ],
    model: Annotated[Path, typer.Option("--model", "-m", help="Run directory (or its model/ folder).")],
    out: Annotated[
        Path,
        typer.Option(
            "--out", "-o", help="Output folder (one scene: files in it; several: one sub-folder per scene stem)."
        ),
    ],
    aoi: Annotated[Path | None, typer.Option(help="AOI polygon layer (GeoJSON, GPKG, Shapefile...; any CRS).")] = None,
    bbox: Annotated[str | None, typer.Option(help="AOI as minx,miny,maxx,maxy[,crs] (default EPSG:4326).")] = None,
    overlap: Annotated[int | None, typer.Option(help="Window overlap in pixels (default: tile size / 4).")] = None,
    tile_size: Annotated[int | None, typer.Option("--tile-size", help="Window size (default: the model's).")] = None,
    batch_size: Annotated[int, typer.Option("--batch-size", help="Windows per forward pass.")] = 8,
    device: Device = "auto",
    amp: Annotated[bool, typer.Option("--amp/--no-amp", help="bf16/fp16 autocast on CUDA.")] = True,
    tta: Annotated[bool, typer.Option("--tta", help="Average the 8 flips/rotations (8x slower).")] = False,
    float_output: Annotated[bool, typer.Option("--float", help="float32 probabilities (NaN nodata).")] = False,
    blend: Annotated[str, typer.Option(help="Blend window: hann, cosine, triangular, uniform.")] = "hann",
    bands: Annotated[str | None, typer.Option(help="1-based scene bands fed to the model, e.g. 3,2,1.")] = None,
    threshold: Threshold = None,
    min_area: MinArea = None,
    fill_holes: FillHoles = None,
    core_boundary_max: CoreBoundaryMax = None,
    regularize: Regularize = None,
    vectorize_: Annotated[bool, typer.Option("--vectorize/--no-vectorize", help="Write instances.gpkg.")] = True,
    resume: Annotated[bool, typer.Option("--resume", help="Continue an interrupted run in OUT.")] = False,
    workers: Workers = 1,
    scheduler: Scheduler = None,
    compress: Annotated[str, typer.Option(help="COG compression: ZSTD, DEFLATE, LZW, NONE.")] = "ZSTD",
    progress: Progress = True,
    asset: Asset = None,
    engine: Annotated[
        str, typer.Option(help="torch, or onnx (ONNX Runtime; needs geoseg[onnx]; --model may be an .onnx file).")
    ] = "torch",
) -> None:
    """Predict scenes over an AOI: probabilities.tif + classes.tif (COGs), instances.gpkg, QGIS styles."""
    from geoseg.errors import InputError
    from geoseg.predict.run import PredictConfig
    from geoseg.predict.run import run as run_predict

    try:
        band_idx = tuple(int(b) for b in bands.split(",")) if bands else None
    except ValueError:
        raise InputError(f"--bands {bands!r}: expected 1-based integers like 3,2,1") from None
    if aoi is None and bbox is None:
        raise InputError("give the area of interest with --aoi FILE or --bbox minx,miny,maxx,maxy[,crs]")
    cfg = _build(PredictConfig, locals(), bands=band_idx, regularize=_names(regularize))
    res = run_predict(cfg)
    for s in res.scenes:
        typer.echo(
            f"{s.out_dir}: {s.windows} windows" + (f", {s.polygons} polygons" if s.polygons is not None else ""),
            err=True,
        )


@app.command()
def mine(
    scenes: Annotated[
        list[str], typer.Argument(help="Scene GeoTIFF(s) the labels annotate (paths, URLs, STAC Items).")
    ],
    model: Annotated[Path, typer.Option("--model", "-m", help="Run directory (or its model/ folder).")],
    labels: Annotated[Path, typer.Option("--labels", help="Label polygons (as for geoseg tile).")],
    out: Annotated[
        Path,
        typer.Option(
            "--out",
            "-o",
            help="Output folder (false_positives.gpkg, false_negatives.gpkg, review.gpkg, mine.json, predict/).",
        ),
    ],
    coverage: Annotated[
        Path | None, typer.Option(help="Annotated areas (labels complete inside); default: the whole scene.")
    ] = None,
    aoi: Annotated[
        Path | None, typer.Option(help="Predict only inside this polygon layer (default: whole scenes).")
    ] = None,
    scene_date: Annotated[
        list[str] | None, typer.Option(help="Acquisition date (once for all scenes, or once per scene).")
    ] = None,
    class_field: Annotated[str | None, typer.Option(help="Label class field (default 'class' if present).")] = None,
    date_field: Annotated[str, typer.Option(help="Label date field.")] = "date",
    labels_layer: Annotated[str | None, typer.Option(help="Layer name in a multi-layer labels file.")] = None,
    max_label_age: Annotated[int | None, typer.Option(help="Labels older than this many days are not valid.")] = None,
    undated: Annotated[str, typer.Option(help="Undated labels: keep (valid for every scene) or drop.")] = "keep",
    iou: Annotated[float, typer.Option(help="IoU for a match (one-to-one, as geoseg evaluate).")] = 0.5,
    review: Annotated[
        bool, typer.Option("--review/--no-review", help="Predict outside the coverage too and rank review cells.")
    ] = True,
    review_cell: Annotated[
        int | None, typer.Option("--review-cell", help="Review cell edge in pixels (default: the model's tile size).")
    ] = None,
    batch_size: Annotated[int, typer.Option("--batch-size", help="Windows per forward pass.")] = 8,
    device: Device = "auto",
    workers: Workers = 1,
    asset: Asset = None,
    progress: Progress = True,
) -> None:
    """Mine a model's false positives (hard negatives), missed labels and review cells outside the coverage."""
    from geoseg.mine import MineConfig
    from geoseg.mine import run as run_mine

    cfg = _build(MineConfig, locals(), scene_dates=tuple(scene_date or ()))
    res = run_mine(cfg)
    c = res.counts
    typer.echo(f"{res.out}: {c['false_positives']} false positives, {c['false_negatives']} false negatives "
               f"({c['matched']} matched of {c['predicted_inside_coverage']} predicted inside the coverage), "
               f"{c['review_cells']} review cells", err=True)  # fmt: skip


@app.command()
def export(
    run: Annotated[Path, typer.Argument(help="Run directory (or its model/ folder).")],
    out: Annotated[
        Path | None, typer.Option("--out", "-o", help="Output file (default: RUN/model/model.onnx).")
    ] = None,
    format_: Annotated[str, typer.Option("--format", help="Export format: onnx.")] = "onnx",
    opset: Annotated[int, typer.Option(help="ONNX opset version.")] = 17,
) -> None:
    """Export a trained model (ONNX: dynamic batch and size, config embedded and in OUT.json), checked vs PyTorch."""
    from geoseg.errors import ConfigError
    from geoseg.export import FORMATS, export_onnx
    from geoseg.modeldir import resolve_model_dir

    if format_.lower() not in FORMATS:
        raise ConfigError(f"--format {format_!r}: use one of {', '.join(FORMATS)}")
    dest = out or resolve_model_dir(run) / "model.onnx"
    res = export_onnx(run, dest, opset=opset)
    shapes = " and ".join("x".join(map(str, s)) for s in res.check_shapes)
    typer.echo(f"{res.out} (opset {res.opset}; config {res.config_json.name}); ONNX Runtime vs PyTorch on random "
               f"input {shapes}: max abs difference {res.max_abs_diff:.2e} (probabilities), "
               f"{res.max_abs_diff_logits:.2e} (logits)")  # fmt: skip


@app.command()
def vectorize(
    raster: Annotated[Path, typer.Argument(help="probabilities.tif of a prediction (or the prediction directory).")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Output GeoPackage (layer `instances`, styled).")],
    threshold: Threshold = None,
    min_area: MinArea = None,
    fill_holes: FillHoles = None,
    core_boundary_max: CoreBoundaryMax = None,
    simplify: Annotated[
        float | None, typer.Option(help="Topology-preserving simplification tolerance, pixels (default 0.5).")
    ] = None,
    regularize: Regularize = None,
    block_size: Annotated[int, typer.Option("--block-size", help="Pixels per block side (memory bound).")] = 1024,
    model: Annotated[
        Path | None, typer.Option(help="Model/run directory for class names (default: raster tags, run.json).")
    ] = None,
    scene: Annotated[str | None, typer.Option(help="`scene` attribute (default: from the raster tags).")] = None,
    scene_date: Annotated[str | None, typer.Option("--scene-date", help="`scene_date` attribute (ISO).")] = None,
) -> None:
    """Instance polygons from an existing prediction, with other thresholds."""
    import json as _json

    from geoseg.vectorize import VectorizeConfig
    from geoseg.vectorize import run as run_vectorize

    cfg = _build(VectorizeConfig, locals(), regularize=_names(regularize))
    res = run_vectorize(cfg)
    typer.echo(_json.dumps({"out": res["out"], "polygons": res["polygons"]}))


@app.command()
def evaluate(
    predicted: Annotated[
        Path, typer.Argument(help="Prediction directory (classes.tif + instances.gpkg) or classes.tif.")
    ],
    truth: Annotated[Path, typer.Option("--truth", help="Truth polygons (GPKG/GeoJSON/Shapefile/GeoParquet).")],
    aoi: Annotated[Path | None, typer.Option(help="Evaluate only inside this polygon layer.")] = None,
    out: Annotated[
        Path | None, typer.Option("--out", "-o", help="Metrics JSON (default: eval.json next to classes.tif).")
    ] = None,
    error_map: Annotated[
        Path | None, typer.Option("--error-map", help="Per-tile error GeoPackage (default: <out>_errors.gpkg).")
    ] = None,
    class_field: Annotated[
        str | None, typer.Option("--class-field", help="Truth class field (default `class` if present).")
    ] = None,
    instances: Annotated[Path | None, typer.Option(help="Instances GeoPackage (default: in the prediction dir).")] = (
        None
    ),
    iou: Annotated[float, typer.Option(help="IoU for an object match (one-to-one): the `object` block.")] = 0.5,
    iou_thresholds: Annotated[
        str, typer.Option("--iou-thresholds", help="Further IoU thresholds reported under object.by_iou.")
    ] = "0.25,0.5,0.75",
    min_cover: Annotated[
        float, typer.Option("--min-cover", help="Merge/split: overlap as a fraction of the truth's area.")
    ] = 0.1,
    sweep: Annotated[
        bool, typer.Option("--sweep", help="Re-derive classes + instances from probabilities.tif per threshold.")
    ] = False,
    sweep_thresholds: Annotated[
        str | None, typer.Option("--sweep-thresholds", help="Sweep thresholds (default 0.3,0.35,...,0.8).")
    ] = None,
    sweep_min_area: Annotated[
        float | None, typer.Option("--sweep-min-area", help="Sweep min object area, m² (default: run.json, else 0).")
    ] = None,
    size_bins: Annotated[str, typer.Option("--size-bins", help="Object size-bin edges in m² (comma-separated).")] = (
        "50,200"
    ),
    tile_px: Annotated[int, typer.Option("--tile-px", help="Error-map tile size in pixels.")] = 256,
    model: Annotated[Path | None, typer.Option(help="Model/run directory for class names (default: tags).")] = None,
) -> None:
    """Pixel IoU/F1 per class, object P/R/F1 (one-to-one) at several IoUs, merges and splits; JSON on stdout.

    With --sweep the threshold table also goes to stderr and the plot to <out stem>_sweep.png.
    """
    import json as _json

    from geoseg.errors import InputError
    from geoseg.evaluate import EvaluateConfig, format_sweep_table
    from geoseg.evaluate import run as run_evaluate

    def _floats(text: str, opt: str, example: str) -> tuple[float, ...]:
        try:
            return tuple(float(b) for b in text.split(",") if b.strip())
        except ValueError:
            raise InputError(f"{opt} {text!r}: expected comma-separated numbers, e.g. {example}") from None

    cfg = _build(
        EvaluateConfig,
        locals(),
        size_bins=_floats(size_bins, "--size-bins", "50,200"),
        iou_thresholds=_floats(iou_thresholds, "--iou-thresholds", "0.25,0.5,0.75"),
        sweep=sweep or sweep_thresholds is not None,
        sweep_thresholds=_floats(sweep_thresholds, "--sweep-thresholds", "0.4,0.5,0.6") if sweep_thresholds else None,
    )
    res = run_evaluate(cfg)
    if res.get("sweep"):
        typer.echo(format_sweep_table(res["sweep"]), err=True)
    typer.echo(_json.dumps(res, indent=2))


@app.command("run")
def run_cmd(
    pipeline: Annotated[Path, typer.Argument(help="Pipeline YAML (see pipelines/sample_aoi.yaml).")],
    out: Annotated[Path, typer.Option("--out", help="Directory for every stage's outputs.")] = Path("pipeline_run"),
    from_stage: Annotated[
        str | None, typer.Option("--from", help="Force this stage and the ones after it to re-run.")
    ] = None,
    set_: Annotated[
        list[str] | None,
        typer.Option("--set", help="Override an option: STAGE.OPTION=VALUE (YAML value); repeatable."),
    ] = None,
) -> None:
    """Run the stages a pipeline file names (tile, train, predict, evaluate, baseline), in order.

    A stage whose outputs are complete and whose configuration is unchanged is skipped.
    """
    from geoseg.pipeline import print_summary, run_pipeline

    summary = run_pipeline(pipeline, out, from_stage=from_stage, overrides=list(set_ or []))
    print_summary(summary)


def _click_exception_types() -> tuple[tuple[type[BaseException], ...], tuple[type[BaseException], ...]]:
    """(ClickException types, Abort types) of every click the installed typer may raise.

    typer >= 0.25 vendors click as ``typer._click``; older releases raise the exceptions of the
    standalone ``click`` package. Both are caught, so usage errors stay short on either.
    """
    import importlib

    errors: list[type[BaseException]] = []
    aborts: list[type[BaseException]] = [typer.Abort]
    for name in ("typer._click.exceptions", "click.exceptions"):
        try:
            mod = importlib.import_module(name)
        except ImportError:
            continue
        for found, attr in ((errors, "ClickException"), (aborts, "Abort")):
            if isinstance(getattr(mod, attr, None), type):
                found.append(getattr(mod, attr))
    return tuple(errors), tuple(aborts)


#: commands that can continue an interrupted run
RESUMABLE = ("train", "predict")


def _command_name(argv: list[str] | None) -> str | None:
    """The sub-command in ``argv`` (default ``sys.argv[1:]``): its first word that is not an option."""
    args = sys.argv[1:] if argv is None else argv
    return next((a for a in args if not a.startswith("-")), None)


class _SigtermHandler:
    """SIGTERM -> :class:`~geoseg.errors.Terminated` in the main thread, once (a second SIGTERM kills)."""

    def __init__(self) -> None:
        self.fired = False
        self.previous: Any = None
        self.installed = False

    def __enter__(self) -> _SigtermHandler:
        try:
            self.previous = signal.signal(signal.SIGTERM, self._handle)
            self.installed = True
        except ValueError:  # not the main thread (main() called from a thread): leave signals alone
            pass
        return self

    def _handle(self, signum: int, frame: Any) -> None:
        self.fired = True
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        raise Terminated()

    def __exit__(self, *exc: object) -> None:
        if self.installed:
            signal.signal(signal.SIGTERM, self.previous if self.previous is not None else signal.SIG_DFL)


def main(argv: list[str] | None = None) -> int:
    """Console-script entry: GDAL env set once, ``GeosegError`` -> one line + exit 2.

    Usage errors (unknown command or option, missing argument, bad value) print click's short
    usage message and exit 2; Ctrl-C (SIGINT) prints one line and exits 130, SIGTERM exits 143
    (both: "rerun with --resume" for the commands that can). Never a traceback for any of these.
    """
    click_errors, click_aborts = _click_exception_types()
    with _SigtermHandler() as term:
        try:
            with gdal_env():
                rv = app(args=argv, standalone_mode=False)
        except GeosegError as e:
            typer.echo(f"geoseg: error: {e}", err=True)
            return e.exit_code
        except KeyboardInterrupt:
            rv = 130
        except typer.Exit as e:
            rv = e.exit_code
        except click_aborts:
            return 1
        except click_errors as e:
            e.show()  # type: ignore[attr-defined]
            return int(getattr(e, "exit_code", 2))
    code = rv if isinstance(rv, int) else 0
    if code == 130:  # typer turns KeyboardInterrupt (and Terminated) into Exit(130) and *returns* it
        hint = "; rerun with --resume" if _command_name(argv) in RESUMABLE else ""
        if term.fired:
            code = 143
        typer.echo(f"geoseg: {'terminated' if term.fired else 'interrupted'}{hint}", err=True)
    if argv is None:  # the console script: the process ends now; spare it the final full cyclic GC (0.3-0.9 s)
        gc.freeze()
    return code


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
