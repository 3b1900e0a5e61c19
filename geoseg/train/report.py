"""``metrics.csv`` and ``curves.png`` from the per-epoch history (both rewritten atomically each epoch, via
:func:`geoseg.io.output.atomic_path`).

History record per epoch: ``{"epoch", "train_loss", "val_loss", "miou", "lr", "seconds", "samples_per_s",
"classes": {"iou": [...], "precision": [...], "recall": [...], "f1": [...], "support": [...]}}`` (lists indexed
by class id; NaN where undefined).
"""

from __future__ import annotations

import csv
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from geoseg.io.output import atomic_path

CSV_COLUMNS = (
    "epoch", "class_id", "class", "iou", "precision", "recall", "f1", "support",
    "train_loss", "val_loss", "miou", "lr", "seconds",
)  # fmt: skip


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return "" if math.isnan(v) else f"{v:.6g}"
    return str(v)


def write_metrics_csv(path: str | Path, history: Sequence[dict[str, Any]], classes: Sequence[dict[str, Any]]) -> Path:
    """One row per epoch per class (``classes`` as in the model config); epoch-level columns repeated per row."""
    path = Path(path)
    with atomic_path(path) as tmp, open(tmp, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(CSV_COLUMNS)
        for rec in history:
            per = rec["classes"]
            for c in classes:
                i = int(c["id"])
                row = [rec["epoch"], i, c["name"]]
                row += [per[k][i] for k in ("iou", "precision", "recall", "f1")]
                row += [int(per["support"][i])]
                row += [rec[k] for k in ("train_loss", "val_loss", "miou", "lr", "seconds")]
                w.writerow([_fmt(x) for x in row])
    return path


def plot_curves(path: str | Path, history: Sequence[dict[str, Any]], classes: Sequence[dict[str, Any]]) -> Path:
    """Two panels: train/val loss, and per-class + selection mIoU, against epoch (matplotlib Agg, no pyplot)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    path = Path(path)
    epochs = [r["epoch"] for r in history]
    fig = Figure(figsize=(11, 4.2), dpi=100)
    FigureCanvasAgg(fig)
    ax1, ax2 = fig.subplots(1, 2)
    ax1.plot(epochs, [r["train_loss"] for r in history], "o-", label="train")
    ax1.plot(epochs, [r["val_loss"] for r in history], "s-", label="validation")
    ax1.set(xlabel="epoch", ylabel="loss", title="Loss")
    ax1.grid(alpha=0.3)
    ax1.legend()
    for c in classes:
        i = int(c["id"])
        color = c.get("color") or None
        if color and color.lower() in ("#000000", "#ffffff"):
            color = None
        ax2.plot(epochs, [r["classes"]["iou"][i] for r in history], ".-", color=color, label=f"{c['name']} ({i})")
    ax2.plot(epochs, [r["miou"] for r in history], "k-", lw=2.5, label="mIoU (selection)")
    ax2.set(xlabel="epoch", ylabel="IoU", title="Validation IoU", ylim=(0, 1))
    ax2.grid(alpha=0.3)
    ax2.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png")
    return path
