"""Offline ImageNet EfficientNet-Lite0 weights, first-conv adaptation, local checkpoints, offline failure."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import timm
import torch
import torch.nn.functional as F

from geoseg.errors import ModelError, OfflineError
from geoseg.train.model import build_model
from geoseg.train.weights import (
    LITE0_ENCODER,
    LITE0_STAGE_REPEATS,
    adapt_first_conv,
    apply_weights,
    lite0_timm_state_dict,
    lite0_weights_file,
    load_state_file,
    map_lite0_key,
)

# EfficientNet-Lite0 architecture (Tan & Le 2019; TF "lite" variant): stride of each stage's first block
STAGE_STRIDES = (1, 2, 2, 2, 1, 2, 1)
BN_EPS = 1e-3


def _original() -> dict[str, torch.Tensor]:
    return torch.load(lite0_weights_file(), map_location="cpu", weights_only=True)


def _same_pad(x: torch.Tensor, k: int, s: int) -> torch.Tensor:
    """TensorFlow 'SAME' padding (asymmetric: the extra pixel goes bottom/right)."""
    pads = []
    for size in (x.shape[-1], x.shape[-2]):
        out = math.ceil(size / s)
        total = max((out - 1) * s + k - size, 0)
        pads += [total // 2, total - total // 2]
    return F.pad(x, pads)


def _conv(x: torch.Tensor, w: torch.Tensor, stride: int = 1, groups: int = 1) -> torch.Tensor:
    return F.conv2d(_same_pad(x, w.shape[-1], stride), w, stride=stride, groups=groups)


def _bn(x: torch.Tensor, sd: dict[str, torch.Tensor], p: str) -> torch.Tensor:
    return F.batch_norm(x, sd[p + ".running_mean"], sd[p + ".running_var"], sd[p + ".weight"], sd[p + ".bias"],
                        training=False, eps=BN_EPS)  # fmt: skip


def reference_lite0(sd: dict[str, torch.Tensor], x: torch.Tensor) -> tuple[list[torch.Tensor], torch.Tensor]:
    """EfficientNet-Lite0 written from the paper with the ORIGINAL key names: (stage outputs, logits)."""
    x = F.relu6(_bn(_conv(x, sd["_conv_stem.weight"], 2), sd, "_bn0"))
    stage_out = []
    n = 0
    for stage, repeats in enumerate(LITE0_STAGE_REPEATS):
        for i in range(repeats):
            p = f"_blocks.{n}"
            stride = STAGE_STRIDES[stage] if i == 0 else 1
            inp = x
            if p + "._expand_conv.weight" in sd:
                x = F.relu6(_bn(_conv(x, sd[p + "._expand_conv.weight"]), sd, p + "._bn0"))
            dw = sd[p + "._depthwise_conv.weight"]
            x = F.relu6(_bn(_conv(x, dw, stride, groups=dw.shape[0]), sd, p + "._bn1"))
            x = _bn(_conv(x, sd[p + "._project_conv.weight"]), sd, p + "._bn2")
            if stride == 1 and inp.shape[1] == x.shape[1]:
                x = x + inp
            n += 1
        stage_out.append(x)
    x = F.relu6(_bn(_conv(x, sd["_conv_head.weight"]), sd, "_bn1"))
    logits = F.linear(x.mean((2, 3)), sd["_fc.weight"], sd["_fc.bias"])
    return stage_out, logits


@pytest.fixture(scope="module")
def original() -> dict[str, torch.Tensor]:
    return _original()


@pytest.fixture(scope="module")
def fixed_input() -> torch.Tensor:
    g = torch.Generator().manual_seed(0)
    return torch.randn(2, 3, 97, 83, generator=g)  # odd sizes exercise the asymmetric SAME padding


def test_mapping_is_one_to_one_and_tensors_unchanged(original: dict[str, torch.Tensor]) -> None:
    mapped = lite0_timm_state_dict()
    assert len(original) == len(mapped) == 296
    assert {map_lite0_key(k) for k in original} == set(mapped)
    for k, v in original.items():
        assert torch.equal(mapped[map_lite0_key(k)], v), k
    timm_model = timm.create_model("tf_efficientnet_lite0", pretrained=False)
    res = timm_model.load_state_dict(mapped, strict=True)
    assert not res.missing_keys and not res.unexpected_keys
    for k, v in timm_model.state_dict().items():
        assert torch.equal(v, mapped[k]), k


def test_timm_model_reproduces_the_original_network(original: dict, fixed_input: torch.Tensor) -> None:
    _, ref_logits = reference_lite0(original, fixed_input)
    model = timm.create_model("tf_efficientnet_lite0", pretrained=False).eval()
    model.load_state_dict(lite0_timm_state_dict(), strict=True)
    with torch.no_grad():
        logits = model(fixed_input)
    torch.testing.assert_close(logits, ref_logits, rtol=1e-5, atol=1e-5)
    assert ref_logits.abs().max() > 1  # a real ImageNet classifier, not zeros
    # the test can fail: timm's non-TF efficientnet_lite0 accepts the same keys but is a different network
    other = timm.create_model("efficientnet_lite0", pretrained=False).eval()
    other.load_state_dict(lite0_timm_state_dict(), strict=True)
    with torch.no_grad():
        assert (other(fixed_input) - ref_logits).abs().max() > 1e-2


def test_smp_encoder_features_equal_timm_and_reference(original: dict, fixed_input: torch.Tensor) -> None:
    model = build_model("unet", LITE0_ENCODER, 3, 2)
    info = apply_weights(model, LITE0_ENCODER, "imagenet", 3)
    assert info["tensors"] == 288 and info["parts"] == "encoder"
    feat_model = timm.create_model("tf_efficientnet_lite0", pretrained=False, features_only=True).eval()
    sub = {k: v for k, v in lite0_timm_state_dict().items() if k in feat_model.state_dict()}
    feat_model.load_state_dict(sub, strict=True)
    x = fixed_input[..., :96, :64]  # smp needs multiples of 32
    model.encoder.eval()
    with torch.no_grad():
        smp_feats = model.encoder(x)[1:]  # smp prepends the input itself
        timm_feats = feat_model(x)
        ref_stages, _ = reference_lite0(original, x)
    assert len(smp_feats) == len(timm_feats) == 5
    for a, b in zip(smp_feats, timm_feats, strict=True):
        assert torch.equal(a, b)
    # timm features_only taps stages 0, 1, 2, 4, 6 (strides 2..32)
    for a, ref in zip(smp_feats, [ref_stages[i] for i in (0, 1, 2, 4, 6)], strict=True):
        torch.testing.assert_close(a, ref, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("bands", [1, 4, 6])
def test_first_conv_adapted_like_smp(bands: int, original: dict) -> None:
    w3 = original["_conv_stem.weight"]
    model = build_model("unet", LITE0_ENCODER, bands, 2)
    apply_weights(model, LITE0_ENCODER, "imagenet", bands)
    w = model.encoder.model.conv_stem.weight.detach()
    assert w.shape == (32, bands, 3, 3)
    if bands == 1:
        assert torch.allclose(w[:, 0], w3.sum(1))
    else:
        for i in range(bands):
            assert torch.allclose(w[:, i], w3[:, i % 3] * 3 / bands)
    assert torch.equal(adapt_first_conv(w3, 3), w3)
    if bands == 6:  # RGB fed twice gives the RGB model's features: the adaptation keeps activation scale
        rgb = build_model("unet", LITE0_ENCODER, 3, 2)
        apply_weights(rgb, LITE0_ENCODER, "imagenet", 3)
        x = torch.randn(1, 3, 64, 64, generator=torch.Generator().manual_seed(1))
        with torch.no_grad():
            a = model.encoder.eval()(torch.cat([x, x], 1))[-1]
            b = rgb.encoder.eval()(x)[-1]
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)


def test_local_timm_checkpoint_with_wrappers_and_prefixes(tmp_path: Path) -> None:
    timm_model = timm.create_model("tf_efficientnet_lite0", pretrained=False)
    torch.nn.init.normal_(timm_model.conv_stem.weight)
    sd = {"module." + k: v for k, v in timm_model.state_dict().items()}
    path = tmp_path / "timm_ckpt.pth"
    torch.save({"epoch": 3, "state_dict": sd, "arch": "tf_efficientnet_lite0"}, path)
    assert set(load_state_file(path)) == set(timm_model.state_dict())
    model = build_model("fpn", LITE0_ENCODER, 3, 2)
    info = apply_weights(model, LITE0_ENCODER, str(path), 3)
    assert info["matched_as"] == "timm encoder" and info["tensors"] == 288
    assert torch.equal(model.encoder.model.conv_stem.weight, timm_model.conv_stem.weight)
    assert torch.equal(model.encoder.model.blocks[5][3].conv_pwl.weight, timm_model.blocks[5][3].conv_pwl.weight)
    # the packaged original file itself, by path, into a 4-band model
    m4 = build_model("unet", LITE0_ENCODER, 4, 2)
    apply_weights(m4, LITE0_ENCODER, str(lite0_weights_file()), 4)
    assert torch.allclose(m4.encoder.model.conv_stem.weight[:, 3], _original()["_conv_stem.weight"][:, 0] * 0.75)


def test_local_smp_model_with_other_class_count(tmp_path: Path) -> None:
    src = build_model("unet", "resnet18", 3, 5)
    torch.nn.init.normal_(src.decoder.blocks[0].conv1[0].weight)
    path = tmp_path / "model.pt"
    torch.save(src.state_dict(), path)
    dst = build_model("unet", "resnet18", 3, 2)
    info = apply_weights(dst, "resnet18", str(path), 3)
    assert info["parts"] == "encoder+decoder" and info["skipped"]  # head of 5 classes skipped
    assert torch.equal(dst.decoder.blocks[0].conv1[0].weight, src.decoder.blocks[0].conv1[0].weight)
    assert torch.equal(dst.encoder.layer4[1].conv2.weight, src.encoder.layer4[1].conv2.weight)


def test_weights_of_another_encoder_are_refused(tmp_path: Path) -> None:
    path = tmp_path / "resnet.pt"
    torch.save(build_model("unet", "resnet18", 3, 2).encoder.state_dict(), path)
    with pytest.raises(ModelError, match="encoder"):
        apply_weights(build_model("unet", LITE0_ENCODER, 3, 2), LITE0_ENCODER, str(path), 3)
    bad = tmp_path / "junk.pt"
    bad.write_bytes(b"not a torch file")
    with pytest.raises(ModelError, match="not a readable weights file"):
        load_state_file(bad)


def test_none_is_random_and_imagenet_is_not() -> None:
    a = build_model("unet", LITE0_ENCODER, 3, 2)
    apply_weights(a, LITE0_ENCODER, "none", 3)
    assert not torch.equal(a.encoder.model.conv_stem.weight, lite0_timm_state_dict()["conv_stem.weight"])


def test_imagenet_for_other_encoder_offline_is_one_line_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")  # nothing listens there: offline for sure
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    with pytest.raises(OfflineError) as err:
        apply_weights(build_model("unet", "resnet18", 3, 2), "resnet18", "imagenet", 3)
    msg = str(err.value)
    assert "\n" not in msg and "--weights PATH" in msg and "resnet18" in msg
