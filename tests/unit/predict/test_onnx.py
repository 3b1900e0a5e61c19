"""ONNX export (checked against PyTorch) and ``predict --engine onnx`` (same stitching, ONNX Runtime)."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from geoseg.errors import ModelError
from geoseg.predict.run import PredictConfig, run
from geoseg.testing import write_scene, xy_image

pytest.importorskip("onnxruntime")
onnx = pytest.importorskip("onnx")
pytestmark = pytest.mark.slow  # two ONNX exports of the Unet: ~30 s each on a loaded 2-core machine


@pytest.fixture(scope="module")
def exported(real_model: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, float]:
    from geoseg.export import export_onnx

    res = export_onnx(real_model, tmp_path_factory.mktemp("onnx") / "m.onnx")
    return res.out, res.max_abs_diff


def test_export_embeds_config_and_agrees_with_torch(exported: tuple[Path, float], real_model: Path) -> None:
    from geoseg.export import onnx_session, read_onnx_config
    from geoseg.train.model import load_model

    path, diff = exported
    assert 0.0 <= diff <= 1e-4
    side = json.loads(path.with_name("m.onnx.json").read_text())
    assert side["onnx_export"]["max_abs_diff"] == diff and side["onnx_export"]["opset"] == 17
    proto = onnx.load(str(path))
    meta = {m.key: m.value for m in proto.metadata_props}
    net, cfg = load_model(real_model)
    assert json.loads(meta["geoseg_config"])["classes"] == cfg["classes"]
    assert read_onnx_config(path)["tile_size"] == 64
    sess = onnx_session(path)
    for shape in [(3, 3, 64, 64), (1, 3, 64, 128)]:  # dynamic batch and spatial size
        x = torch.randn(*shape)
        with torch.no_grad():
            ref = net(x).numpy()
        got = sess.run(None, {"input": x.numpy()})[0]
        assert got.shape == ref.shape
        p_ref, p_got = torch.softmax(torch.from_numpy(ref), 1), torch.softmax(torch.from_numpy(got), 1)
        assert float((p_got - p_ref).abs().max()) <= 1e-4
        assert np.abs(got - ref).max() <= 1e-3 * max(1.0, float(np.abs(ref).max()))


def test_predict_engine_onnx_matches_torch(exported: tuple[Path, float], real_model: Path, tmp_path: Path) -> None:
    import rasterio

    scene = tmp_path / "s.tif"
    write_scene(scene, xy_image(150, 170, 3, "uint16"))
    base = PredictConfig(
        scenes=(str(scene),), model=str(real_model), out=str(tmp_path / "torch"), bbox="-180,-90,180,90",
        batch_size=4, device="cpu", progress=False, vectorize=False,
    )  # fmt: skip
    run(base)
    run(replace(base, out=str(tmp_path / "onnx_file"), engine="onnx", model=str(exported[0])))
    res = run(replace(base, out=str(tmp_path / "onnx_run"), engine="onnx"))  # run dir: exported on the fly
    assert res.scenes[0].windows > 4

    def probs(d: str) -> np.ndarray:
        with rasterio.open(tmp_path / d / "probabilities.tif") as ds:
            return ds.read().astype(int)

    ref = probs("torch")
    for d in ("onnx_file", "onnx_run"):
        got = probs(d)
        assert np.abs(got - ref).max() <= 1  # within one uint8 probability step
    assert json.loads((tmp_path / "onnx_run" / "run.json").read_text())["config"]["engine"] == "onnx"
    with pytest.raises(ModelError, match="needs --engine onnx"):
        run(replace(base, out=str(tmp_path / "bad"), model=str(exported[0])))
