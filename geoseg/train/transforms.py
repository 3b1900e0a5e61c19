"""Augmentation (albumentations 2) on *normalised* float32 tiles, applied identically to image and mask.

Images reach the transforms already normalised by the dataset's band statistics (``(x - mean) / std``, any
band count, any source dtype), as ``(H, W, C)`` float32; masks are ``(H, W)`` uint8 with ``ignore_index``
(255) for ignore. Geometric transforms use nearest-neighbour for masks, so ignore pixels stay ``ignore_index``
and pixels that enter the tile from outside (affine borders) become ``ignore_index``; the image is filled with 0
there (= the band mean). Importing this module sets ``cv2.setNumThreads(0)`` (fork safety, see below).
Brightness/contrast is :class:`NormalisedBrightnessContrast`, because albumentations'
``RandomBrightnessContrast`` clips float images to [0, 1], which would destroy normalised data; for the same
reason the colour jitter (:class:`PerBandGainOffset`, :class:`GreyAxisHueSaturation`) is written here.

Recipes (:data:`RECIPES`, ``geoseg train --augment-recipe``), each adding to the one before:

* ``basic``: flips, 90° rotations, mild affine (scale 0.9-1.1, rotate ±15°, p=0.3), brightness/contrast.
* ``colour``: + per-band gain/offset (any band count) + hue rotation / saturation about the grey axis (3 bands).
* ``scale``: ``basic`` with the mild affine replaced by scale jitter over a factor of two each way
  (scale 0.5-2, half the draws below 1, rotate ±15°, p=0.5): ground resolution x0.5..x2.
* ``full``: ``colour`` + ``scale``.

``channel_shuffle`` adds albumentations' ``ChannelShuffle`` to any recipe. :func:`describe` gives the exact
pipeline (``A.to_dict``) for run.json.
"""

from __future__ import annotations

from typing import Any

import albumentations as A
import cv2
import numpy as np

from geoseg.errors import ConfigError

# OpenCV's thread pool does not survive fork: a process that ran a parallel cv2 call and then forks DataLoader
# workers deadlocks in the workers' next cv2 call. Sequential OpenCV avoids that (and the workers already
# parallelise over tiles).
cv2.setNumThreads(0)


class NormalisedBrightnessContrast(A.ImageOnlyTransform):
    """``x * alpha + beta`` on a normalised image: contrast about the band mean, brightness in units of std.

    ``alpha`` uniform in ``[1 - contrast_limit, 1 + contrast_limit]``, ``beta`` in ``[-brightness_limit,
    brightness_limit]``; the same for all bands; no clipping.
    """

    def __init__(self, brightness_limit: float = 0.2, contrast_limit: float = 0.2, p: float = 0.5) -> None:
        super().__init__(p=p)
        self.brightness_limit = float(brightness_limit)
        self.contrast_limit = float(contrast_limit)

    def get_params(self) -> dict[str, Any]:
        return {
            "alpha": 1.0 + self.py_random.uniform(-self.contrast_limit, self.contrast_limit),
            "beta": self.py_random.uniform(-self.brightness_limit, self.brightness_limit),
        }

    def apply(self, img: np.ndarray, alpha: float = 1.0, beta: float = 0.0, **params: Any) -> np.ndarray:
        return (img * np.float32(alpha) + np.float32(beta)).astype(np.float32, copy=False)

    def get_transform_init_args_names(self) -> tuple[str, ...]:
        return ("brightness_limit", "contrast_limit")


class PerBandGainOffset(A.ImageOnlyTransform):
    """``x_c * gain_c + offset_c`` per band on a normalised image (any band count; no clipping).

    ``gain_c`` uniform in ``gain`` (about the band mean), ``offset_c`` uniform in ``offset`` (units of the band's
    std), drawn independently per band: shifts the colour balance, not only the brightness.
    """

    def __init__(
        self, gain: tuple[float, float] = (0.8, 1.2), offset: tuple[float, float] = (-0.2, 0.2), p: float = 0.5
    ) -> None:
        super().__init__(p=p)
        self.gain = (float(gain[0]), float(gain[1]))
        self.offset = (float(offset[0]), float(offset[1]))

    def get_params_dependent_on_data(self, params: dict[str, Any], data: dict[str, Any]) -> dict[str, Any]:
        n = int(data["image"].shape[-1]) if data["image"].ndim == 3 else 1
        return {
            "gains": np.array([self.py_random.uniform(*self.gain) for _ in range(n)], dtype=np.float32),
            "offsets": np.array([self.py_random.uniform(*self.offset) for _ in range(n)], dtype=np.float32),
        }

    def apply(self, img: np.ndarray, gains: Any = None, offsets: Any = None, **params: Any) -> np.ndarray:
        if gains is None:
            return img
        return (img * gains + offsets).astype(np.float32, copy=False)

    def get_transform_init_args_names(self) -> tuple[str, ...]:
        return ("gain", "offset")


def grey_axis_matrix(hue_deg: float, saturation: float) -> np.ndarray:
    """3x3 map on linear RGB: rotate by ``hue_deg`` about the grey axis r=g=b, then scale chroma by ``saturation``.

    The channel mean (the grey component) is unchanged; hue 0 and saturation 1 give the identity.
    """
    u = np.full(3, 1.0 / np.sqrt(3.0))
    t = np.deg2rad(hue_deg)
    cross = np.array([[0.0, -u[2], u[1]], [u[2], 0.0, -u[0]], [-u[1], u[0], 0.0]])
    grey = np.outer(u, u)
    rot = np.cos(t) * np.eye(3) + np.sin(t) * cross + (1.0 - np.cos(t)) * grey
    return grey + saturation * (rot - grey)


class GreyAxisHueSaturation(A.ImageOnlyTransform):
    """Hue rotation + saturation change of a normalised 3-band RGB image, done exactly in normalised space.

    In the dataset's own units ``x = std * z + mean`` a hue rotation about the grey axis and a saturation scale
    are one linear map ``M`` (:func:`grey_axis_matrix`), so on normalised bands it is the affine map
    ``z' = S^-1 M S z + S^-1 (M - I) mean`` (``S = diag(std)``): no conversion to 0..1 (the dtype's range is
    not needed), no clipping, one 3x3 product per pixel. Images with another band count pass unchanged.
    """

    def __init__(
        self,
        mean: tuple[float, ...] | list[float],
        std: tuple[float, ...] | list[float],
        hue_deg: float = 30.0,
        saturation: tuple[float, float] = (0.6, 1.4),
        p: float = 0.5,
    ) -> None:
        super().__init__(p=p)
        self.mean = [float(v) for v in mean]
        self.std = [float(v) for v in std]
        self.hue_deg = float(hue_deg)
        self.saturation = (float(saturation[0]), float(saturation[1]))

    def get_params(self) -> dict[str, Any]:
        return {
            "hue": self.py_random.uniform(-self.hue_deg, self.hue_deg),
            "sat": self.py_random.uniform(*self.saturation),
        }

    def apply(self, img: np.ndarray, hue: float = 0.0, sat: float = 1.0, **params: Any) -> np.ndarray:
        if img.ndim != 3 or img.shape[-1] != 3 or len(self.mean) != 3:
            return img
        m = grey_axis_matrix(hue, sat)
        s = np.asarray(self.std, dtype=np.float64)
        mu = np.asarray(self.mean, dtype=np.float64)
        a = m * s[None, :] / s[:, None]  # S^-1 M S
        b = (m @ mu - mu) / s
        out = img.reshape(-1, 3) @ a.T.astype(np.float32) + b.astype(np.float32)
        return out.reshape(img.shape).astype(np.float32, copy=False)

    def get_transform_init_args_names(self) -> tuple[str, ...]:
        return ("mean", "std", "hue_deg", "saturation")


RECIPES = ("basic", "colour", "scale", "full")
DEFAULT_RECIPE = "basic"


def build_train_transform(
    recipe: str = DEFAULT_RECIPE,
    *,
    mean: Any = None,
    std: Any = None,
    channel_shuffle: bool = False,
    ignore_index: int = 255,
    seed: int | None = None,
) -> A.Compose:
    """The named recipe (module doc) as one ``A.Compose``; mask fill = ``ignore_index``, nearest for masks.

    ``mean``/``std``: the dataset's per-band statistics (source units), needed for the hue/saturation step of
    ``colour``/``full`` on 3-band data; without them (or with another band count) that step is left out.
    """
    if recipe not in RECIPES:
        raise ConfigError(f"--augment-recipe {recipe!r}: use one of {', '.join(RECIPES)}")
    colour, scale = recipe in ("colour", "full"), recipe in ("scale", "full")
    ops: list[Any] = [
        A.HorizontalFlip(p=0.5),
        A.VerticalFlip(p=0.5),
        A.RandomRotate90(p=0.5),
    ]
    ops.append(
        A.Affine(
            scale=(0.5, 2.0) if scale else (0.9, 1.1),
            balanced_scale=scale,  # half the draws zoom out (coarser ground resolution), half zoom in
            keep_ratio=scale,  # scale jitter is isotropic (a ground resolution); the mild one stays as it was
            rotate=(-15, 15),
            interpolation=1,  # cv2.INTER_LINEAR for the image
            mask_interpolation=0,  # cv2.INTER_NEAREST: class ids and ignore survive
            border_mode=0,  # cv2.BORDER_CONSTANT
            fill=0.0,
            fill_mask=ignore_index,
            p=0.5 if scale else 0.3,
        )
    )
    ops.append(NormalisedBrightnessContrast(0.2, 0.2, p=0.5))
    if colour:
        ops.append(PerBandGainOffset((0.8, 1.2), (-0.2, 0.2), p=0.5))
        if mean is not None and std is not None and len(mean) == 3:
            ops.append(GreyAxisHueSaturation(list(mean), list(std), hue_deg=30.0, saturation=(0.6, 1.4), p=0.5))
    if channel_shuffle:
        ops.append(A.ChannelShuffle(p=0.5))
    return A.Compose(ops, seed=seed)


def describe(transform: A.Compose | None, recipe: str, channel_shuffle: bool = False) -> dict[str, Any]:
    """run.json's record of the augmentation: recipe name + the exact pipeline (``A.to_dict``), or ``none``."""
    if transform is None:
        return {"recipe": "none", "channel_shuffle": False, "pipeline": None}
    return {"recipe": recipe, "channel_shuffle": channel_shuffle, "pipeline": A.to_dict(transform)}
