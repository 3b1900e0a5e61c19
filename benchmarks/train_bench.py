"""Benchmark ``geoseg train``: is the input pipeline fast enough to keep the device busy, and how fast does it train?

Writes a synthetic tile dataset (``--tiles`` tiles of ``--tile-size``², ``--bands`` bands of ``--dtype``, in the
tile-dataset contract) to a temporary directory, then measures with exactly the code ``geoseg train`` runs
(``TileDataset`` + albumentations + ``TileSampler`` + ``make_loader``; ``loop.train_one_epoch``):

* **loader**: samples/s of iterating the training DataLoader alone (zarr read, normalisation, augmentation,
  collation, pinned memory on CUDA) with ``--workers`` workers, workers already started;
* **step**: samples/s of the training step alone (forward, CE + Dice loss, backward, AdamW) on one batch
  already on the device -- the baseline, measured in the same run;
* **ratio = loader / step** (target >= 1.5: the device never waits for data);
* **train**: tiles/s of the real loop (loader and step together) over the same number of steps.

On CPU the training step is also timed with and without ``channels_last`` (``--channels-last`` / ``--no-channels-last``
times just one); the better one is used for the end-to-end figure.

    .venv/bin/python benchmarks/train_bench.py                                   # CPU: 256², batch 8
    .venv/bin/python benchmarks/train_bench.py --device cuda --amp --tile-size 512 --batch-size 16 --tiles 512
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import torch

from geoseg.train import loop
from geoseg.train.dataset import TileDataset, TileSampler, read_dataset
from geoseg.train.losses import build_loss
from geoseg.train.model import build_model
from geoseg.train.run import default_workers, make_loader
from geoseg.train.synthetic import write_tile_dataset
from geoseg.train.transforms import build_train_transform


def _sync(rt: loop.Runtime) -> None:
    if rt.device.type == "cuda":
        torch.cuda.synchronize(rt.device)


def time_loader(loader: torch.utils.data.DataLoader, sampler: TileSampler, epochs: int) -> float:
    """Samples/s over ``epochs`` passes (one warm-up pass first, so worker start-up is excluded)."""
    for _ in loader:
        pass
    n, t0 = 0, time.perf_counter()
    for e in range(epochs):
        sampler.set_epoch(e + 1)
        for x, _ in loader:
            n += x.shape[0]
    return n / (time.perf_counter() - t0)


def time_step(
    model: torch.nn.Module, batch: tuple[torch.Tensor, torch.Tensor], rt: loop.Runtime, steps: int, warmup: int
) -> float:
    """Samples/s of forward + loss + backward + AdamW on one fixed on-device batch."""
    crit = build_loss("ce", dice_weight=1.0)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    scaler = loop.make_scaler(rt)
    x, y = loop.to_device(*batch, rt)
    model.train()
    for i in range(warmup + steps):
        if i == warmup:
            _sync(rt)
            t0 = time.perf_counter()
        loop.train_step(model, x, y, crit, opt, scaler, rt)
    _sync(rt)
    return steps * x.shape[0] / (time.perf_counter() - t0)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--tile-size", type=int, default=256)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--tiles", type=int, default=64, help="tiles in the synthetic dataset")
    ap.add_argument("--bands", type=int, default=3)
    ap.add_argument("--dtype", default="uint8", choices=["uint8", "uint16"])
    ap.add_argument("--steps", type=int, default=8, help="timed training steps")
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--amp", action=argparse.BooleanOptionalAction, default=None, help="bf16 (fp16 if unsupported)")
    ap.add_argument("--channels-last", action=argparse.BooleanOptionalAction, default=None, help="default: compare")
    ap.add_argument("--workers", type=int, default=None, help="DataLoader workers (default min(4, CPUs))")
    ap.add_argument("--arch", default="unet")
    ap.add_argument("--encoder", default="tu-tf_efficientnet_lite0")
    args = ap.parse_args()

    rt = loop.resolve_runtime(args.device, args.amp, args.channels_last)
    workers = default_workers() if args.workers is None else args.workers
    print(f"device {rt.describe()}, workers {workers}, CPUs {os.cpu_count()}, torch threads {torch.get_num_threads()}")
    print(f"tiles {args.tiles} x {args.bands} x {args.tile_size}² {args.dtype}, batch {args.batch_size}, "
          f"{args.arch} + {args.encoder}")  # fmt: skip
    with tempfile.TemporaryDirectory(prefix="train_bench_") as tmp:
        t0 = time.perf_counter()
        data = write_tile_dataset(Path(tmp) / "data", n_train=args.tiles, n_val=1, tile=args.tile_size,
                                  channels=args.bands, dtype=args.dtype)  # fmt: skip
        print(f"synthetic dataset written in {time.perf_counter() - t0:.1f} s")
        ds = read_dataset(data)
        tiles = TileDataset(ds.zarr_path, ds.train_rows, ds.mean, ds.std, num_classes=ds.num_classes,
                            transform=build_train_transform(seed=0))  # fmt: skip
        per_epoch = min(len(tiles), args.steps * args.batch_size)
        sampler = TileSampler(len(tiles), num_samples=per_epoch, seed=0)
        loader = make_loader(tiles, sampler, args.batch_size, workers, rt, drop_last=True)
        loader_sps = time_loader(loader, sampler, epochs=2)

        model = build_model(args.arch, args.encoder, ds.in_channels, ds.num_classes).to(rt.device)
        batch = next(iter(loader))
        results = {}
        variants = [True, False] if args.channels_last is None and rt.device.type == "cpu" else [rt.channels_last]
        for cl in variants:
            rt_cl = loop.Runtime(rt.device, rt.amp_dtype, cl)
            model.to(memory_format=torch.channels_last if cl else torch.contiguous_format)
            results[cl] = time_step(model, batch, rt_cl, args.steps, args.warmup)
        best_cl = max(results, key=lambda k: results[k])
        step_sps = results[best_cl]
        rt_best = loop.Runtime(rt.device, rt.amp_dtype, best_cl)
        model.to(memory_format=torch.channels_last if best_cl else torch.contiguous_format)
        crit = build_loss("ce", dice_weight=1.0)
        opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0)
        scaler = loop.make_scaler(rt_best)
        sampler.set_epoch(10)
        loop.train_one_epoch(model, loader, crit, opt, sched, scaler, rt_best, max_steps=args.warmup)
        sampler.set_epoch(11)
        _sync(rt_best)
        tr = loop.train_one_epoch(model, loader, crit, opt, sched, scaler, rt_best)
        train_sps = tr["samples"] / tr["seconds"]

    for cl, sps in results.items():
        print(f"step  channels_last={cl!s:5}: {sps:8.2f} samples/s ({args.batch_size / sps:.3f} s/step)")
    print(f"loader ({workers} workers):      {loader_sps:8.2f} samples/s")
    print(f"ratio loader / step:          {loader_sps / step_sps:8.2f}   (target >= 1.5)")
    print(f"training throughput:          {train_sps:8.2f} tiles/s of {args.tile_size}² "
          f"(loader + step, channels_last={best_cl})")  # fmt: skip


if __name__ == "__main__":
    main()
