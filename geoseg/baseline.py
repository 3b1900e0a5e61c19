"""A trivial baseline to measure the model against: a per-pixel colour classifier.

Quadratic logistic regression on the normalised band values of single pixels (no spatial context),
fitted on the training split of a tile dataset. It is what "a colour threshold, done properly"
achieves; the model must clearly beat it on held-out ground. Pure numpy, no extra dependency.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


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
        """A predict function ``(B, C, H, W) -> (B, K, H, W)`` probabilities for the predict stage."""

        def fn(batch: np.ndarray) -> np.ndarray:
            b, c, h, w = batch.shape
            p = self.predict_proba(np.moveaxis(batch, 1, -1).reshape(-1, c)).reshape(b, h, w)
            out = np.zeros((b, num_classes, h, w), np.float32)
            out[:, fg_class] = p
            out[:, 0] = 1 - p
            return out

        return fn
