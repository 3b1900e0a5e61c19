"""End-to-end `geoseg train` on tiny synthetic datasets (CPU): learning, outputs, resume, bad input, DDP."""

from __future__ import annotations

import csv
import json
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
import zarr

from geoseg.cli import main
from geoseg.errors import ConfigError
from geoseg.train.model import CONFIG_KEYS, load_model, read_model_config
from geoseg.train.run import CHECKPOINT, TrainConfig, run

FAST = {"batch_size": 4, "workers": 0, "progress": False}


@pytest.mark.slow
def test_training_learns_and_writes_a_complete_run(make_dataset: Callable[..., Path], tmp_path: Path) -> None:
    data = make_dataset(n_train=12, n_val=4)
    out = tmp_path / "run"
    res = run(TrainConfig(dataset=data, out=out, epochs=3, **{**FAST, "workers": 2}))
    losses = [h["train_loss"] for h in res.history]
    assert losses[-1] < 0.8 * losses[0], losses  # learnable pattern: the loss goes down
    mious = [h["miou"] for h in res.history]
    assert max(mious) > 0.3 and res.best_miou == max(mious)
    assert res.best_epoch == int(np.argmax(mious)) + 1

    model, cfg = load_model(out, "cpu")
    assert all(k in cfg for k in CONFIG_KEYS)
    assert cfg["in_channels"] == 3 and cfg["num_classes"] == 3 and cfg["tile_size"] == 64
    assert [c["id"] for c in cfg["classes"]] == [0, 1, 2] and cfg["classes"][1]["color"] == "#e31a1c"
    assert cfg["bands"] == ["red", "green", "blue"] and cfg["resolution_m"] == 0.5
    assert cfg["date_range"] == ["2024-05-01", "2024-05-01"] and Path(cfg["dataset"]) == data.resolve()
    ds_json = json.loads((data / "dataset.json").read_text())
    assert cfg["normalisation"]["mean"] == pytest.approx([b["mean"] for b in ds_json["bands"]])
    assert cfg["normalisation"]["std"] == pytest.approx([b["std"] for b in ds_json["bands"]])
    assert cfg["epoch"] == res.best_epoch and cfg["val_miou"] == pytest.approx(res.best_miou)
    assert read_model_config(out / "model")["encoder"] == "tu-tf_efficientnet_lite0"
    with torch.no_grad():
        assert model(torch.zeros(1, 3, 64, 64)).shape == (1, 3, 64, 64)

    with open(out / "metrics.csv") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 3 * 3 and {r["class"] for r in rows} == {"background", "building", "pond"}
    last_iou = [float(r["iou"]) for r in rows if r["epoch"] == "3" and r["class_id"] != "0"]
    assert np.mean(last_iou) == pytest.approx(res.history[-1]["miou"], abs=1e-5)
    assert (out / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    info = json.loads((out / "run.json").read_text())
    assert info["status"] == "complete" and info["epochs_completed"] == 3 and info["best"]["epoch"] == res.best_epoch
    assert info["runtime"]["device"] == "cpu" and info["weights"]["source"].startswith("imagenet")
    assert not list(out.glob(".*"))  # no temporary leftovers


def _tamper(path: Path) -> None:
    """Mark the checkpoint so that a resumed run provably continues from it rather than starting over."""
    ck = torch.load(path, map_location="cpu", weights_only=True)
    ck["history"][0]["train_loss"] = 123.0
    ck["model"]["encoder.model.bn1.num_batches_tracked"] = torch.tensor(1000)
    ck["optimizer"]["state"][0]["step"] = torch.tensor(1000.0)
    torch.save(ck, path)


@pytest.mark.slow
def test_resume_continues_from_the_saved_epoch(make_dataset: Callable[..., Path], tmp_path: Path) -> None:
    data = make_dataset(n_train=8, n_val=2)
    out = tmp_path / "run"
    run(TrainConfig(dataset=data, out=out, epochs=1, max_steps_per_epoch=2, **FAST))
    ck1 = torch.load(out / CHECKPOINT, map_location="cpu", weights_only=True)
    assert ck1["epoch"] == 1 and ck1["scheduler"]["last_epoch"] == 2
    _tamper(out / CHECKPOINT)
    with pytest.raises(ConfigError, match="--resume"):
        run(TrainConfig(dataset=data, out=out, epochs=2, max_steps_per_epoch=2, **FAST))
    res = run(TrainConfig(dataset=data, out=out, epochs=2, max_steps_per_epoch=2, resume=True, **FAST))
    assert [h["epoch"] for h in res.history] == [1, 2] and res.history[0]["train_loss"] == 123.0
    ck2 = torch.load(out / CHECKPOINT, map_location="cpu", weights_only=True)
    assert ck2["epoch"] == 2
    assert int(ck2["model"]["encoder.model.bn1.num_batches_tracked"]) == 1002  # 2 more steps on restored model
    assert float(ck2["optimizer"]["state"][0]["step"]) == 1002.0  # optimizer state restored
    assert ck2["scheduler"]["last_epoch"] == 4  # scheduler continued
    with open(out / "metrics.csv") as f:
        assert sorted({r["epoch"] for r in csv.DictReader(f)}) == ["1", "2"]
    again = run(TrainConfig(dataset=data, out=out, epochs=2, resume=True, **FAST))  # complete: nothing to do
    assert again.epochs_completed == 2 and again.history == res.history
    with pytest.raises(ConfigError, match="encoder"):
        run(TrainConfig(dataset=data, out=out, epochs=3, resume=True, encoder="resnet18", weights="none", **FAST))


@pytest.mark.slow
def test_killed_run_leaves_loadable_model_and_resumes(make_dataset: Callable[..., Path], tmp_path: Path) -> None:
    data = make_dataset(n_train=8, n_val=2)
    out = tmp_path / "run"
    args = [sys.executable, "-m", "geoseg.cli", "train", str(data), "--out", str(out), "--epochs", "50",
            "--batch-size", "4", "--workers", "0", "--no-progress", "--weights", "none"]  # fmt: skip
    proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + 120
        while not (out / CHECKPOINT).exists() and time.time() < deadline and proc.poll() is None:
            time.sleep(0.2)
        time.sleep(1.5)  # somewhere inside a later epoch or a write
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    assert (out / CHECKPOINT).exists()
    load_model(out, "cpu")  # never corrupt
    done = torch.load(out / CHECKPOINT, map_location="cpu", weights_only=True)["epoch"]
    assert 1 <= done < 50
    res = run(TrainConfig(dataset=data, out=out, epochs=done + 1, resume=True, weights="none", **FAST))
    assert res.epochs_completed == done + 1


def test_training_without_val_keeps_the_last_epoch_and_warns_once(
    make_dataset: Callable[..., Path], tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    data = make_dataset("noval", n_train=4, n_val=0)
    out = tmp_path / "run"
    with caplog.at_level("WARNING", logger="geoseg"):
        res = run(TrainConfig(dataset=data, out=out, epochs=2, weights="none", max_steps_per_epoch=1, **FAST))
    warned = [r for r in caplog.records if r.levelname == "WARNING" and "validation" in r.getMessage()]
    assert len(warned) == 1 and "keeping the last epoch" in warned[0].getMessage()
    assert res.epochs_completed == 2 and res.best_epoch == 2
    _, cfg = load_model(out, "cpu")
    assert cfg["epoch"] == 2 and cfg["kept"] == "last"
    info = json.loads((out / "run.json").read_text())
    assert info["status"] == "complete" and info["best"]["epoch"] == 2 and info["dataset"]["tiles"]["val"] == 0
    with open(out / "metrics.csv") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 2 * 3 and all(r["val_loss"] == "" and r["iou"] == "" for r in rows)
    assert all(r["train_loss"] != "" for r in rows)
    assert (out / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def _error_line(capsys: pytest.CaptureFixture[str], argv: list[str]) -> str:
    code = main(argv)
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2, err
    assert len(err) == 1 and err[0].startswith("geoseg: error: "), err
    return err[0]


def test_bad_inputs_exit_2_with_one_line(
    make_dataset: Callable[..., Path],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    out = str(tmp_path / "run")
    assert "not found" in _error_line(capsys, ["train", str(tmp_path / "nope"), "--out", out])
    empty = make_dataset("empty", n_train=2, n_val=1)
    g = zarr.open_group(str(empty / "tiles.zarr"), mode="w")
    g.create_array("images", shape=(0, 3, 64, 64), chunks=(1, 3, 64, 64), dtype="uint8")
    g.create_array("masks", shape=(0, 64, 64), chunks=(1, 64, 64), dtype="uint8")
    assert "empty" in _error_line(capsys, ["train", str(empty), "--out", out])
    ok = make_dataset("ok", n_train=4, n_val=2)
    if not torch.cuda.is_available():
        assert "no CUDA GPU" in _error_line(capsys, ["train", str(ok), "--out", out, "--device", "cuda"])
    assert "valid: " in _error_line(capsys, ["train", str(ok), "--out", out, "--arch", "segformer9"])
    assert "valid: " in _error_line(capsys, ["train", str(ok), "--out", out, "--loss", "hinge"])
    odd = make_dataset("odd", n_train=4, n_val=2, tile=48)
    assert "multiple of 32" in _error_line(capsys, ["train", str(odd), "--out", out])
    bad = make_dataset("badmask", n_train=4, n_val=2)
    masks = zarr.open_group(str(bad / "tiles.zarr"), mode="r+")["masks"]
    masks[:, 0, 0] = 7  # a class id dataset.json does not list, read inside a DataLoader worker
    argv = ["train", str(bad), "--out", out, "--weights", "none", "--workers", "2", "--no-progress"]
    assert "class id 7" in _error_line(capsys, argv)
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")  # nothing listens there: offline for sure
    line = _error_line(capsys, ["train", str(ok), "--out", out, "--encoder", "resnet18"])
    assert "--weights PATH" in line
    assert not (tmp_path / "run" / "model").exists()


def test_multiband_uint16_focal_boundary_balanced(make_dataset: Callable[..., Path], tmp_path: Path) -> None:
    data = make_dataset(channels=5, dtype="uint16", boundary_class=3, n_train=6, n_val=2)
    out = tmp_path / "run"
    res = run(TrainConfig(dataset=data, out=out, arch="fpn", epochs=1, max_steps_per_epoch=1, loss="focal",
                          balance_kinds=True, augment=True, **FAST))  # fmt: skip
    cfg = read_model_config(out)
    assert cfg["in_channels"] == 5 and cfg["num_classes"] == 4 and cfg["boundary_class"] == 3
    assert cfg["arch"] == "fpn" and len(cfg["normalisation"]["mean"]) == 5 and cfg["dtype"] == "uint16"
    assert cfg["score"]["class_ids"] == [1, 2]
    assert len(res.history[0]["classes"]["iou"]) == 4


@pytest.mark.slow
def test_torchrun_ddp_on_cpu(make_dataset: Callable[..., Path], tmp_path: Path) -> None:
    data = make_dataset(n_train=8, n_val=3)
    out = tmp_path / "ddp"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--master_port=29577",
           "-m", "geoseg.cli", "train", str(data), "--out", str(out), "--epochs", "1", "--batch-size", "2",
           "--max-steps-per-epoch", "2", "--device", "cpu", "--workers", "0", "--no-progress"]  # fmt: skip
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    info = json.loads((out / "run.json").read_text())
    assert info["runtime"]["world_size"] == 2 and info["status"] == "complete"
    support = info["last"]["classes"]["support"]
    assert sum(support) == sum(  # every val pixel counted exactly once over the two ranks
        int((zarr.open_group(str(data / "tiles.zarr"), mode="r")["masks"][i] != 255).sum()) for i in range(8, 11)
    )
    load_model(out, "cpu")


def test_keep_last_exports_the_final_epoch(make_dataset: Callable[..., Path], tmp_path: Path) -> None:
    data = make_dataset(n_train=8, n_val=4)
    res = run(TrainConfig(dataset=data, out=tmp_path / "run", epochs=2, keep="last", **FAST))
    _, cfg = load_model(tmp_path / "run", "cpu")
    assert cfg["epoch"] == 2 and cfg["kept"] == "last"
    assert cfg["val_miou"] == pytest.approx(res.history[-1]["miou"])
    with pytest.raises(ConfigError, match="--keep"):
        TrainConfig(dataset=data, out=tmp_path / "x", keep="worst")
