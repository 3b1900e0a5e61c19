"""Augmentation (albumentations 2) on *normalised* float32 tiles, applied identically to image and mask.

Images reach the transforms already normalised by the dataset's band statistics (``(x - mean) / std``, any
band count, any source dtype), as ``(H, W, C)`` float32; masks are ``(H, W)`` uint8 with ``ignore_index``
(255) for ignore. Geometric transforms use nearest-neighbour for masks, so ignore pixels stay ``ignore_index``
and pixels that enter the tile from outside (affine borders) become ``ignore_index``; the image is filled with 0
there (= the band mean). Importing this module sets ``cv2.setNumThreads(0)`` (fork safety, see below).
Brightness/contrast is :class:`NormalisedBrightnessContrast`, because albumentations'
``RandomBrightnessContrast`` clips float images to [0, 1], which would destroy normalised data.
"""

from __future__ import annotations

from typing import Any

import albumentations as A
import cv2
import numpy as np

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


def build_train_transform(*, ignore_index: int = 255, affine: bool = True, seed: int | None = None) -> A.Compose:
    """Flips, 90° rotations, mild scale/rotate (p=0.3), brightness/contrast; mask fill = ``ignore_index``."""
    ops: list[Any] = [
        A.HorizontalFlip(p=0.5),
        A.VerticalFlip(p=0.5),
        A.RandomRotate90(p=0.5),
    ]
    if affine:
        ops.append(
            A.Affine(
                scale=(0.9, 1.1),
                rotate=(-15, 15),
                interpolation=1,  # cv2.INTER_LINEAR for the image
                mask_interpolation=0,  # cv2.INTER_NEAREST: class ids and ignore survive
                border_mode=0,  # cv2.BORDER_CONSTANT
                fill=0.0,
                fill_mask=ignore_index,
                p=0.3,
            )
        )
    ops.append(NormalisedBrightnessContrast(0.2, 0.2, p=0.5))
    return A.Compose(ops, seed=seed)
