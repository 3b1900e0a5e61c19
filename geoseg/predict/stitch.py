"""Blended sliding-window inference, streamed strip by strip (model-agnostic core).

``predict_row_range`` reads a scene's row range as row blocks (each input row read once, in a prefetch
thread), cuts the windows of one strip out of an in-memory row buffer, runs
``predict_fn(batch (B, C, T, T) float32 normalised) -> probabilities (B, K, T, T)`` (torch tensors
on ``device``), accumulates ``weight * p`` and ``weight`` in float64, and hands finished rows to
``on_rows`` as soon as no later window can touch them.

Memory: the input buffer holds ``tile`` rows and the accumulator at most ``tile + stride`` rows,
both over the plan's column range, so memory is O(tile x width x (C + K)), independent of the scene
height, and no full-scene array is ever allocated.

Exactness: batches never span strips, and a pixel's contributions are summed in the same
(row-major window) order whichever row range, worker or resume point computes it, so single-process,
distributed and resumed runs give bit-identical outputs. Division by the float64 weight sum
reproduces the identity model's float32 input exactly.
"""

from __future__ import annotations

import math
import queue
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import numpy as np
import torch

from geoseg.predict.plan import RowRange, ScenePlan

PredictFn = Callable[[torch.Tensor], torch.Tensor]
#: reader(row0, row1) -> (data float32 (C, h, width) normalised, keep bool (h, width)); rows may
#: extend past the scene (then they are filled with 0 / False); width = ScenePlan input width
RowReader = Callable[[int, int], tuple[np.ndarray, np.ndarray]]

NODATA_U8 = 255


@dataclass(frozen=True)
class RowsOut:
    """Finished output rows ``[row0, row0 + h)`` over plan columns ``[col_lo, col_lo + w)``."""

    row0: int
    col0: int
    probs: np.ndarray  # (K, h, w) uint8 (round(p*254), 255 nodata) or float32 (NaN nodata)
    classes: np.ndarray  # (h, w) uint8 argmax, 255 nodata


def input_width(plan: ScenePlan) -> int:
    """Columns of the input row buffer: enough for every window of the plan (may pass the scene edge)."""
    return max(max(s.cols) for s in plan.strips) + plan.tile - plan.col_lo


def split_batches(n: int, batch_size: int) -> list[int]:
    """Split ``n`` windows into ``ceil(n / batch_size)`` batches of near-equal size."""
    nb = max(1, math.ceil(n / max(1, batch_size)))
    base, extra = divmod(n, nb)
    return [base + (1 if i < extra else 0) for i in range(nb) if base + (1 if i < extra else 0) > 0]


def range_strips(plan: ScenePlan, row_range: RowRange, emit_from: int = 0) -> list[int]:
    """Indices of the strips to run for ``row_range`` when rows below ``emit_from`` are already written."""
    lo = max(row_range.row_lo, emit_from)
    return [i for i in row_range.strips if plan.strips[i].row + plan.tile > lo]


def row_blocks(plan: ScenePlan, strips: list[int]) -> list[tuple[int, int]]:
    """The input row ranges read for ``strips`` in order: each input row is read once."""
    out: list[tuple[int, int]] = []
    bottom = -1
    for i in strips:
        r = plan.strips[i].row
        r0 = max(bottom, r)
        r1 = r + plan.tile
        if r1 > r0:
            out.append((r0, r1))
        bottom = r1
    return out


class StripAccumulator:
    """Fixed-capacity float64 buffers of ``sum(w * p)``, ``sum(w)`` and the keep mask over scene rows.

    Holds at most ``capacity`` consecutive scene rows (``tile`` is enough: rows are popped up to the
    next strip before the next strip's rows are added). Allocated once: no per-strip growth.
    """

    def __init__(self, k: int, width: int, height_limit: int, device: torch.device, capacity: int) -> None:
        self.k, self.width, self.height_limit, self.capacity = k, width, height_limit, capacity
        self.top, self.n = 0, 0
        self.acc = torch.zeros((k, capacity, width), dtype=torch.float64, device=device)
        self.wsum = torch.zeros((capacity, width), dtype=torch.float64, device=device)
        self.keep = torch.zeros((capacity, width), dtype=torch.bool, device=device)

    @property
    def bottom(self) -> int:
        return self.top + self.n

    def extend(self, row0: int, keep: torch.Tensor) -> None:
        """Append rows ``[row0, row0 + h)`` (clipped to the scene) with their keep mask."""
        h = min(keep.shape[0], self.height_limit - row0)
        if h <= 0:
            return
        if self.n == 0:
            self.top = row0
        elif row0 != self.bottom:
            raise RuntimeError(f"accumulator rows must be contiguous: {row0} != {self.bottom}")
        if self.n + h > self.capacity:
            raise RuntimeError(f"accumulator over capacity: {self.n} + {h} > {self.capacity} rows")
        n = self.n
        self.acc[:, n : n + h] = 0
        self.wsum[n : n + h] = 0
        self.keep[n : n + h] = keep[:h, : self.width].to(self.keep.device)
        self.n += h

    def add(self, probs: torch.Tensor, row: int, cols: list[int], col0: int, weight: torch.Tensor) -> None:
        """Accumulate windows ``probs[b]`` at scene ``(row, cols[b])`` (``col0`` = buffer's first column)."""
        t = probs.shape[-1]
        r = row - self.top
        h = min(t, self.n - r)
        for b, c in enumerate(cols):
            cc = c - col0
            w = min(t, self.width - cc)
            if h <= 0 or w <= 0:
                continue
            wt = weight[:h, :w]
            self.acc[:, r : r + h, cc : cc + w] += probs[b, :, :h, :w].to(torch.float64) * wt
            self.wsum[r : r + h, cc : cc + w] += wt

    def pop(self, upto: int, fn: Callable[[int, torch.Tensor, torch.Tensor, torch.Tensor], None]) -> None:
        """Call ``fn(row0, acc, wsum, keep)`` on rows ``[top, min(upto, bottom))``, then drop them."""
        m = max(0, min(upto, self.bottom) - self.top)
        if m == 0:
            return
        fn(self.top, self.acc[:, :m], self.wsum[:m], self.keep[:m])
        rest = self.n - m
        if rest:  # move the held rows to the front (at most tile - stride rows)
            self.acc[:, :rest] = self.acc[:, m : m + rest].clone()
            self.wsum[:rest] = self.wsum[m : m + rest].clone()
            self.keep[:rest] = self.keep[m : m + rest].clone()
        self.top += m
        self.n = rest


def finalize(
    acc: torch.Tensor, wsum: torch.Tensor, keep: torch.Tensor, float_output: bool, col_chunk: int = 2048
) -> tuple[np.ndarray, np.ndarray]:
    """Normalised probabilities and argmax classes for finished rows, as numpy.

    Probabilities are ``acc / wsum`` rounded to float32; uint8 output is ``round(p * 254)`` of the
    float32 value clipped to [0, 1] (255 = nodata); float output has NaN as nodata. Classes are
    the argmax of the float32 probabilities (first on ties), 255 = nodata. Works in column chunks
    so temporaries stay small.
    """
    k, h, w = acc.shape
    probs = np.empty((k, h, w), np.float32 if float_output else np.uint8)
    classes = np.empty((h, w), np.uint8)
    for c0 in range(0, w, col_chunk):
        c1 = min(c0 + col_chunk, w)
        ws = wsum[:, c0:c1]
        kp = keep[:, c0:c1] & (ws > 0)
        p = (acc[:, :, c0:c1] / ws.clamp_min(1e-300)).to(torch.float32)
        cls = p.argmax(0).to(torch.uint8)
        cls[~kp] = NODATA_U8
        if float_output:
            p[:, ~kp] = float("nan")
            q = p
        else:
            q = torch.round(p.clamp_(0.0, 1.0).mul_(254.0)).to(torch.uint8)
            q[:, ~kp] = NODATA_U8
        probs[:, :, c0:c1] = q.cpu().numpy()
        classes[:, c0:c1] = cls.cpu().numpy()
    return probs, classes


class _Prefetch:
    """Reads the row blocks in a background thread (GDAL releases the GIL), ``depth`` ahead."""

    _END = object()

    def __init__(self, reader: RowReader, blocks: list[tuple[int, int]], depth: int = 1) -> None:
        self._q: queue.Queue[object] = queue.Queue(maxsize=depth)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._work, args=(reader, blocks), daemon=True)
        self._thread.start()

    def _work(self, reader: RowReader, blocks: list[tuple[int, int]]) -> None:
        try:
            for r0, r1 in blocks:
                if self._stop.is_set():
                    return
                data, keep = reader(r0, r1)
                self._put((r0, r1, data, keep))
            self._put(self._END)
        except BaseException as e:  # handed to the consumer
            self._put(e)

    def _put(self, item: object) -> None:
        while not self._stop.is_set():
            try:
                self._q.put(item, timeout=0.1)
                return
            except queue.Full:
                continue

    def __iter__(self) -> Iterator[tuple[int, int, np.ndarray, np.ndarray]]:
        while True:
            item = self._q.get()
            if item is self._END:
                return
            if isinstance(item, BaseException):
                raise item
            yield item  # type: ignore[misc]

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)


def predict_row_range(
    plan: ScenePlan,
    row_range: RowRange,
    reader: RowReader,
    predict_fn: PredictFn,
    on_rows: Callable[[RowsOut], None],
    *,
    num_classes: int,
    weight: np.ndarray,
    batch_size: int = 8,
    device: str | torch.device = "cpu",
    float_output: bool = False,
    emit_from: int = 0,
    on_windows: Callable[[int], None] | None = None,
    on_done: Callable[[int], None] | None = None,
) -> int:
    """Predict ``row_range`` of ``plan`` and emit its finished rows (those ``>= emit_from``) in order.

    ``on_rows`` receives each finished block of rows (only rows inside the range, over the plan's
    columns); rows no window covers are never emitted (they are nodata). ``on_done(rows_done)`` is
    called after each strip once every row below ``rows_done`` was emitted (a resume point: pass it
    back as ``emit_from``). Returns the number of windows predicted.
    """
    device = torch.device(device)
    tile = plan.tile
    emit_lo, emit_hi = max(row_range.row_lo, emit_from), row_range.row_hi
    strips = range_strips(plan, row_range, emit_from)
    if not strips or emit_lo >= emit_hi:
        return 0
    win = input_width(plan)
    acc_width = plan.col_hi - plan.col_lo
    acc = StripAccumulator(num_classes, acc_width, plan.grid.height, device, capacity=tile)
    wt = torch.from_numpy(np.ascontiguousarray(weight, dtype=np.float64)).to(device)
    blocks = row_blocks(plan, strips)
    buf: torch.Tensor | None = None  # (C, tile, win) input rows [buf_top, buf_top + buf_n)
    buf_top, buf_n = 0, 0
    n_done = 0

    def emit_rows(row0: int, a: torch.Tensor, w: torch.Tensor, k: torch.Tensor) -> None:
        lo, hi = max(row0, emit_lo), min(row0 + w.shape[0], emit_hi)
        if hi > lo:
            probs, classes = finalize(a[:, lo - row0 : hi - row0], w[lo - row0 : hi - row0],
                                      k[lo - row0 : hi - row0], float_output)  # fmt: skip
            on_rows(RowsOut(lo, plan.col_lo, probs, classes))

    def emit(upto: int) -> None:
        acc.pop(upto, emit_rows)

    prefetch = _Prefetch(reader, blocks)
    it = iter(prefetch)
    try:
        for n, i in enumerate(strips):
            strip = plan.strips[i]
            r = strip.row
            # advance the input buffer to rows [r, r + tile): keep the overlap rows, read the new ones
            if r >= buf_top + buf_n:
                buf_n = 0
            elif buf is not None and r > buf_top:
                keep_n = buf_top + buf_n - r
                buf[:, :keep_n] = buf[:, r - buf_top : r - buf_top + keep_n].clone()
                buf_n = keep_n
            buf_top = r
            while buf_top + buf_n < r + tile:
                r0, r1, data, keep = next(it)
                if r0 != buf_top + buf_n:
                    raise RuntimeError(f"row blocks out of order: got {r0}, expected {buf_top + buf_n}")
                if buf is None:
                    buf = torch.zeros((data.shape[0], tile, win), dtype=torch.float32, device=device)
                buf[:, buf_n : buf_n + (r1 - r0)] = torch.from_numpy(data).to(device, non_blocking=True)
                buf_n += r1 - r0
                if acc.n and r0 != acc.bottom and r0 < plan.grid.height:
                    emit(acc.bottom)  # gap in rows: everything held is final
                acc.extend(r0, torch.from_numpy(np.ascontiguousarray(keep, dtype=bool)))
            assert buf is not None
            # run the strip's windows in balanced batches (never across strips: bit-identical results)
            cols = list(strip.cols)
            start = 0
            for size in split_batches(len(cols), batch_size):
                bc = cols[start : start + size]
                start += size
                x = torch.stack([buf[:, :tile, c - plan.col_lo : c - plan.col_lo + tile] for c in bc])
                with torch.no_grad():
                    p = predict_fn(x)
                if p.shape[0] != len(bc) or p.shape[1] != num_classes or tuple(p.shape[2:]) != (tile, tile):
                    raise RuntimeError(
                        f"predict_fn returned shape {tuple(p.shape)}, "
                        f"expected ({len(bc)}, {num_classes}, {tile}, {tile})"
                    )
                acc.add(p, r, bc, plan.col_lo, wt)
                n_done += len(bc)
                if on_windows is not None:
                    on_windows(len(bc))
            nxt = min(plan.strips[strips[n + 1]].row if n + 1 < len(strips) else emit_hi, emit_hi)
            emit(nxt)
            if on_done is not None and nxt > emit_lo:
                on_done(nxt)
    finally:
        prefetch.close()
    return n_done
