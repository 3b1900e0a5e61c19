"""What each post-processing step buys: object quality of one prediction, step by step.

Re-vectorizes an existing prediction (``probabilities.tif`` + its model) with the instance-step
settings of each step and evaluates each against the truth in the same run:

* ``raw``: threshold 0.5, no minimum area, no hole filling, core 0.3 (geoseg's instance step before
  this change);
* ``derived``: the defaults derived from the label object areas (no calibration);
* ``calibrated``: the model's calibrated ``postprocess`` (what ``geoseg predict`` uses by default);
* ``regularised``: calibrated + regular footprints for the foreground classes.

Prints pixel IoU of the foreground (pixel metrics depend only on the threshold), object
precision / recall / F1 at IoU 0.5, merges and splits, and polygon counts, one row per step.

Run on the main job's output (after ``make demo``)::

    .venv/bin/python benchmarks/quality_bench.py sample_run \
        --truth sample_aoi/buildings.geojson --aoi sample_aoi/holdout_aoi.geojson
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path
from typing import Any

from geoseg.evaluate import EvaluateConfig
from geoseg.evaluate import run as evaluate
from geoseg.train.model import read_model_config
from geoseg.vectorize import VectorizeConfig
from geoseg.vectorize import run as vectorize


def steps(model_cfg: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    """``(name, VectorizeConfig overrides)`` per step; ``None`` values mean "the model's default"."""
    fg = [c["name"] for c in model_cfg["classes"] if int(c["id"]) not in (0, model_cfg.get("boundary_class"))]
    no_cal = {k: v for k, v in model_cfg.items() if k != "postprocess"}
    return [
        ("raw", {"threshold": 0.5, "min_area_m2": 0.0, "fill_holes_m2": 0.0, "core_boundary_max": 0.3}),  # v0.1
        ("derived", {"_model_cfg": no_cal}),
        ("calibrated", {}),
        ("regularised", {"regularize": tuple(fg)}),
    ]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("run", type=Path, help="pipeline output folder (with predict/ and train/) or a prediction dir")
    ap.add_argument("--truth", type=Path, required=True)
    ap.add_argument("--aoi", type=Path)
    ap.add_argument("--model", type=Path, help="model/run dir (default: RUN/train)")
    args = ap.parse_args()
    pred = args.run / "predict" if (args.run / "predict").is_dir() else args.run
    model = args.model or (args.run / "train")
    mcfg = read_model_config(model)
    rows = []
    with tempfile.TemporaryDirectory(prefix="geoseg-quality-") as tmp:
        for name, over in steps(mcfg):
            model_dir = model
            if "_model_cfg" in over:  # the same model without its calibration block
                from shutil import copytree

                from geoseg.config import write_json
                from geoseg.train.model import resolve_model_dir

                model_dir = Path(tmp) / f"model_{name}"
                copytree(resolve_model_dir(model), model_dir)
                write_json(model_dir / "config.json", over.pop("_model_cfg"))
            step = Path(tmp) / name
            step.mkdir()
            gpkg = step / "instances.gpkg"
            res = vectorize(VectorizeConfig(raster=str(pred / "probabilities.tif"), out=str(gpkg),
                                            model=str(model_dir), **over))  # fmt: skip
            ev = evaluate(EvaluateConfig(predicted=str(pred / "classes.tif"), truth=str(args.truth),
                                         aoi=str(args.aoi) if args.aoi else None, instances=str(gpkg),
                                         out=str(step / "eval.json"), model=str(model_dir)))  # fmt: skip
            obj, ms = ev["object"], ev["object"].get("merges_splits", {})
            fg_iou = [ev["pixel"]["foreground"]["iou"]]
            rows.append({
                "step": name, "polygons": res["polygons"], "pixel_iou": fg_iou[0] if fg_iou else None,
                "precision": obj["precision"], "recall": obj["recall"], "f1": obj["f1"],
                "merges": ms.get("merges"), "splits": ms.get("splits"),
                "params": {k: res["postprocess"][k] for k in ("threshold", "min_area_m2", "core_boundary_max")},
            })  # fmt: skip
    print(f"{'step':<12} {'polygons':>8} {'pixel IoU':>9} {'P@0.5':>6} {'R@0.5':>6} {'F1@0.5':>6} "
          f"{'merges':>6} {'splits':>6}  params")  # fmt: skip
    for r in rows:

        def f(v: Any) -> str:
            return f"{v:.3f}" if isinstance(v, float) else str(v)

        print(f"{r['step']:<12} {r['polygons']:>8} {f(r['pixel_iou']):>9} {f(r['precision']):>6} {f(r['recall']):>6} "
              f"{f(r['f1']):>6} {f(r['merges']):>6} {f(r['splits']):>6}  {json.dumps(r['params'])}")  # fmt: skip
    print("(pixel IoU: classes.tif of the prediction, i.e. the threshold geoseg predict used)")


if __name__ == "__main__":
    main()
