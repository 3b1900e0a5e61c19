"""A trivial baseline to measure the model against: a per-pixel colour classifier.

Quadratic logistic regression on the normalised band values of single pixels (no spatial context),
fitted on the training split of a tile dataset. It is what "a colour threshold, done properly"
achieves; the model must clearly beat it on held-out ground. Pure numpy, no extra dependency.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from geoseg.classes import ClassTable
from geoseg.config import StageConfig
from geoseg.errors import ConfigError


def _features(x: np.ndarray) -> np.ndarray:
    """``(N, C)`` normalised pixels -> ``(N, F)``: bias, linear and quadratic terms."""
    n, c = x.shape
    cols = [np.ones((n, 1), np.float32), x]
    for i in range(c):
        for j in range(i, c):
            cols.append((x[:, i] * x[:, j])[:, None])
    return np.concatenate(cols, axis=1).astype(np.float32)


@dataclass(frozen=True)
class ColourClassifier:
    """Binary foreground/background logistic model on one pixel's normalised bands."""

    weights: np.ndarray  # (F,)
    threshold: float = 0.5

    @classmethod
    def fit(cls, x: np.ndarray, y: np.ndarray, *, iters: int = 25, l2: float = 1e-3) -> ColourClassifier:
        """Fit by Newton's method (IRLS). ``x``: ``(N, C)`` normalised pixels, ``y``: ``(N,)`` in {0, 1}.

        Classes are re-weighted to equal total weight so a rare foreground is not ignored.
        """
        f = _features(x.astype(np.float32)).astype(np.float64)
        y = y.astype(np.float64)
        pos = max(y.mean(), 1e-6)
        sw = np.where(y > 0, 0.5 / pos, 0.5 / max(1 - pos, 1e-6))
        w = np.zeros(f.shape[1])
        for _ in range(iters):
            p = 1 / (1 + np.exp(-np.clip(f @ w, -30, 30)))
            grad = f.T @ (sw * (p - y)) / len(y) + l2 * w
            h = (f * (sw * p * (1 - p))[:, None]).T @ f / len(y) + l2 * np.eye(len(w))
            step = np.linalg.solve(h, grad)
            w -= step
            if np.abs(step).max() < 1e-6:
                break
        return cls(w.astype(np.float32))

    def predict_proba(self, x: np.ndarray) -> np.ndarray:
        """``(N, C)`` -> ``(N,)`` foreground probability."""
        z = _features(x.astype(np.float32)) @ self.weights
        return (1 / (1 + np.exp(-np.clip(z, -30, 30)))).astype(np.float32)

    def predict_fn(self, num_classes: int, fg_class: int = 1):
        """A predict function, torch ``(B, C, H, W)`` -> ``(B, K, H, W)`` probabilities, for the predict stage."""
        import torch

        def fn(batch: torch.Tensor) -> torch.Tensor:
            b, c, h, w = batch.shape
            x = batch.detach().cpu().float().numpy()
            p = self.predict_proba(np.moveaxis(x, 1, -1).reshape(-1, c)).reshape(b, h, w)
            out = np.zeros((b, num_classes, h, w), np.float32)
            out[:, fg_class] = p
            out[:, 0] = 1 - p
            return torch.from_numpy(out)

        return fn


@dataclass(frozen=True)
class BaselineConfig(StageConfig):
    """Options of the pipeline's ``baseline`` stage (no CLI of its own).

    Fits :class:`ColourClassifier` on pixels of the dataset's *train* tiles (normalised with the
    model's statistics), predicts ``scenes`` over ``aoi`` through the ordinary predict stage and
    evaluates against ``truth`` exactly like the model: same grid, same vectorizer, same metrics.
    """

    dataset: str
    model: str
    scenes: tuple[str, ...]
    truth: str
    out: str
    aoi: str | None = None
    threshold: float = 0.5
    min_area: float | None = None  # m²; default: derived from the label objects (never the model's calibration)
    max_pixels: int = 200_000
    seed: int = 0

    def validate(self) -> None:
        """Range checks (ConfigError naming the option), so ``geoseg run`` refuses bad ones up front."""
        if not self.scenes:
            raise ConfigError("give at least one scene")
        if not 0 < self.threshold < 1:
            raise ConfigError(f"--threshold must be between 0 and 1, got {self.threshold!r}")
        if self.min_area is not None and self.min_area < 0:
            raise ConfigError(f"--min-area must be >= 0 m², got {self.min_area!r}")
        if self.max_pixels < 1:
            raise ConfigError(f"--max-pixels must be >= 1, got {self.max_pixels!r}")


def training_pixels(
    dataset: str | Path,
    mean: np.ndarray,
    std: np.ndarray,
    *,
    boundary_class: int | None,
    max_pixels: int = 200_000,
    seed: int = 0,
) -> tuple[np.ndarray, np.ndarray]:
    """Normalised ``(N, C)`` pixels and ``(N,)`` 0/1 targets from the train tiles of a dataset.

    Ignore (255) and boundary pixels are left out. Memory: one tile at a time plus the sample.
    """
    import geopandas as gpd
    import zarr

    dataset = Path(dataset)
    tiles = gpd.read_file(dataset / "tiles.gpkg", layer="tiles")
    idx = sorted(int(i) for i in tiles.loc[tiles["split"] == "train", "index"])
    store = str(dataset / "tiles.zarr")
    images = zarr.open_array(store, path="images", mode="r")
    masks = zarr.open_array(store, path="masks", mode="r")
    rng = np.random.default_rng(seed)
    per_tile = max(1, max_pixels // max(len(idx), 1))
    xs, ys = [], []
    for i in idx:
        img = np.asarray(images[i], dtype=np.float32)
        m = np.asarray(masks[i])
        ok = (m != 255) if boundary_class is None else (m != 255) & (m != boundary_class)
        rr, cc = np.nonzero(ok)
        if len(rr) == 0:
            continue
        pick = rng.choice(len(rr), size=min(per_tile, len(rr)), replace=False)
        px = img[:, rr[pick], cc[pick]].T
        xs.append((px - mean) / std)
        ys.append((m[rr[pick], cc[pick]] > 0).astype(np.uint8))
    if not xs:
        from geoseg.errors import EmptyResultError

        raise EmptyResultError(f"{dataset}: no labelled pixels in the train tiles to fit the baseline on")
    return np.concatenate(xs), np.concatenate(ys)


def run(config: BaselineConfig) -> dict[str, Any]:
    """Fit, predict and evaluate the colour baseline; returns the evaluation result."""
    from geoseg import evaluate
    from geoseg.config import write_json
    from geoseg.modeldir import read_model_config
    from geoseg.predict.run import PredictConfig
    from geoseg.predict.run import run as predict_run

    mcfg = read_model_config(config.model)
    mean = np.asarray(mcfg["normalisation"]["mean"], np.float32)
    std = np.asarray(mcfg["normalisation"]["std"], np.float32)
    boundary = mcfg.get("boundary_class")
    x, y = training_pixels(
        config.dataset, mean, std, boundary_class=boundary, max_pixels=config.max_pixels, seed=config.seed
    )
    clf = ColourClassifier.fit(x, y)
    fgs = list(ClassTable.from_model_config(mcfg).foreground)
    fg = fgs[0]
    out = Path(config.out)
    pred_dir = out / "predict"
    from geoseg.postprocess import DEFAULTS, derived_min_area_m2

    derived = derived_min_area_m2(mcfg.get("objects"), mcfg.get("resolution_m"), fgs)[0]
    min_area = derived if config.min_area is None else config.min_area
    predict_run(  # the model's calibration is for the model: the baseline gets the uncalibrated defaults
        PredictConfig(
            scenes=tuple(config.scenes),
            model=config.model,
            out=str(pred_dir),
            aoi=config.aoi,
            threshold=config.threshold,
            min_area=min_area,
            fill_holes=derived,
            core_boundary_max=DEFAULTS["core_boundary_max"],
            progress=False,
        ),
        predict_fn=clf.predict_fn(int(mcfg["num_classes"]), fg),
    )
    result = evaluate.run(
        evaluate.EvaluateConfig(predicted=str(pred_dir), truth=config.truth, aoi=config.aoi, out=str(out / "eval.json"))
    )
    info = {
        "kind": "quadratic logistic regression on single-pixel colour",
        "train_pixels": len(y),
        "train_foreground_share": float(y.mean()),
        "weights": clf.weights.tolist(),
        "config": config,
    }
    write_json(out / "baseline.json", info)
    return result
