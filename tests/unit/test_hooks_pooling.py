"""Hooks and pooling: values equal a direct computation, all layers come from one forward pass."""
from __future__ import annotations

import pytest
import torch
import torchvision
from torch import nn

from cdissect_activations.hooks import LayerRecorder
from cdissect_activations.pooling import first_tensor, pool


@pytest.fixture(scope="module")
def resnet() -> nn.Module:
    torch.manual_seed(0)
    return torchvision.models.resnet18().eval()


@pytest.fixture(scope="module")
def small_vit() -> nn.Module:
    """torchvision's ViT class at a small size: same module layout as vit_b_16, fast on CPU."""
    torch.manual_seed(0)
    return torchvision.models.VisionTransformer(image_size=32, patch_size=8, num_layers=2, num_heads=2,
                                                hidden_dim=16, mlp_dim=32).eval()


def test_pool_conv_maps_avg_and_max() -> None:
    x = torch.randn(3, 5, 4, 6)
    assert torch.allclose(pool(x, "avg"), x.reshape(3, 5, -1).mean(-1))
    assert torch.equal(pool(x, "max"), x.reshape(3, 5, -1).max(-1).values)


def test_pool_tokens_cls_mean_patch_mean() -> None:
    x = torch.randn(2, 7, 4)
    for mode in ("avg", "max"):  # the reference takes CLS in both pool modes
        assert torch.equal(pool(x, mode, "cls"), x[:, 0])
    assert torch.allclose(pool(x, "avg", "mean"), x.sum(1) / 7)
    assert torch.allclose(pool(x, "avg", "patch_mean"), x[:, 1:].sum(1) / 6)


def test_pool_2d_unchanged_and_float32() -> None:
    x = torch.randn(4, 9, dtype=torch.float64)
    out = pool(x)
    assert out.dtype == torch.float32 and torch.allclose(out, x.float())


def test_pool_rejects_bad_names_and_ranks() -> None:
    with pytest.raises(ValueError, match="avg, max"):
        pool(torch.randn(1, 2, 3, 3), "mean")
    with pytest.raises(ValueError, match="cls, mean, patch_mean"):
        pool(torch.randn(1, 2, 3), "avg", "first")
    with pytest.raises(ValueError, match="5-D"):
        pool(torch.randn(1, 2, 3, 3, 3))
    with pytest.raises(ValueError, match="patch_mean"):
        pool(torch.randn(2, 1, 3), token_pooling="patch_mean")


def test_first_tensor_of_tuples_and_non_tensors() -> None:
    t = torch.randn(2, 3)
    assert first_tensor((t, torch.zeros(1))) is t
    with pytest.raises(TypeError, match="not a tensor"):
        first_tensor({"out": t}, layer="head")


def test_recorder_matches_direct_resnet_computation(resnet: nn.Module) -> None:
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        conv1 = resnet.conv1(x)
        h = resnet.maxpool(resnet.relu(resnet.bn1(conv1)))
        l4 = resnet.layer4(resnet.layer3(resnet.layer2(resnet.layer1(h))))
        fc = resnet.fc(torch.flatten(resnet.avgpool(l4), 1))
    with LayerRecorder(resnet, ["conv1", "layer4", "fc"], pooling="avg") as rec:
        avg = rec.record(x)
    with LayerRecorder(resnet, ["conv1", "layer4"], pooling="max") as rec:
        mx = rec.record(x)
    assert torch.allclose(avg["conv1"], conv1.mean((2, 3)), atol=1e-5)
    assert (conv1 < 0).any(), "conv1 is hooked before BN/ReLU, so it has negative values"
    assert torch.allclose(avg["layer4"], l4.mean((2, 3)), atol=1e-5)
    assert torch.allclose(avg["fc"], fc, atol=1e-4)
    assert torch.allclose(mx["conv1"], conv1.amax((2, 3)), atol=1e-5)
    assert torch.allclose(mx["layer4"], l4.amax((2, 3)), atol=1e-5)


def test_recorder_token_pooling_matches_encoder_output(small_vit: nn.Module) -> None:
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        tokens = small_vit._process_input(x)
        tokens = torch.cat([small_vit.class_token.expand(2, -1, -1), tokens], dim=1)
        encoded = small_vit.encoder(tokens)
    for mode, expected in (("cls", encoded[:, 0]), ("mean", encoded.mean(1)), ("patch_mean", encoded[:, 1:].mean(1))):
        with LayerRecorder(small_vit, ["encoder"], token_pooling=mode) as rec:
            assert torch.allclose(rec.record(x)["encoder"], expected, atol=1e-5), mode


def test_tuple_output_uses_first_element(small_vit: nn.Module) -> None:
    # nn.MultiheadAttention returns (output, weights)
    name = "encoder.layers.encoder_layer_0.self_attention"
    with LayerRecorder(small_vit, [name]) as rec:
        out = rec.record(torch.randn(3, 3, 32, 32))
    assert out[name].shape == (3, 16)


def test_all_layers_in_one_forward_and_hooks_removed(resnet: nn.Module) -> None:
    calls = []
    counter = resnet.register_forward_pre_hook(lambda *_: calls.append(1))
    layers = ["conv1", "layer1", "layer2[1].conv2", "layer3", "layer4", "fc"]
    try:
        with LayerRecorder(resnet, layers) as rec:
            out = rec.record(torch.randn(1, 3, 32, 32))
            assert len(resnet.layer4._forward_hooks) == 1
    finally:
        counter.remove()
    assert calls == [1]
    assert list(out) == layers
    assert all(len(m._forward_hooks) == 0 for m in resnet.modules())


def test_record_without_context_cleans_up(resnet: nn.Module) -> None:
    out = LayerRecorder(resnet, ["layer2"]).record(torch.randn(1, 3, 32, 32))
    assert out["layer2"].shape == (1, 128)
    assert len(resnet.layer2._forward_hooks) == 0


def test_recorder_casts_input_and_returns_float32() -> None:
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.Flatten(), nn.LazyLinear(2)).double()
    model(torch.randn(1, 3, 8, 8, dtype=torch.float64))  # materialise the lazy layer
    out = LayerRecorder(model, ["[0]", "[3]"]).record(torch.randn(2, 3, 8, 8))
    assert out["[0]"].shape == (2, 4) and out["[3]"].shape == (2, 2)
    assert all(v.dtype == torch.float32 for v in out.values())


class _WithSpareHead(nn.Module):
    """`spare` is a registered submodule that forward never calls."""

    def __init__(self) -> None:
        super().__init__()
        self.used = nn.Linear(4, 4)
        self.spare = nn.Linear(4, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.used(x)


def test_unused_layer_and_bad_input_are_explained(resnet: nn.Module) -> None:
    model = _WithSpareHead()
    with pytest.raises(RuntimeError, match="not called"):
        LayerRecorder(model, ["spare"]).record(torch.randn(1, 1, 1, 4))  # Linear acts on the last dim
    with pytest.raises(ValueError, match=r"\[B, 3, H, W\]"):
        LayerRecorder(resnet, ["fc"]).record(torch.randn(3, 32, 32))
    with pytest.raises(ValueError, match="avg, max"):
        LayerRecorder(resnet, ["fc"], pooling="median")


def test_channels_last_swin_stages_pool_over_space() -> None:
    torch.manual_seed(0)
    swin = torchvision.models.SwinTransformer(patch_size=[4, 4], embed_dim=8, depths=[1, 1], num_heads=[1, 1],
                                              window_size=[2, 2], num_classes=5).eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        stem = swin.features[0][0](x)              # [B, C, H, W]
        nhwc = swin.norm(swin.features(x))         # [B, H, W, C]
    layers = ["features[0][0]", "features", "norm", "permute", "features[1][0].mlp"]
    with LayerRecorder(swin, layers, pooling="max") as rec:
        out = rec.record(x)
    assert torch.allclose(out["features[0][0]"], stem.amax((2, 3)), atol=1e-5)
    assert torch.allclose(out["norm"], nhwc.amax((1, 2)), atol=1e-5)
    assert torch.allclose(out["permute"], out["norm"])
    assert out["features"].shape == (2, 16) and out["features[1][0].mlp"].shape == (2, 8)


def test_channels_last_inside_convnext_block_only() -> None:
    from torchvision.models.convnext import CNBlockConfig, ConvNeXt

    torch.manual_seed(0)  # convnext_tiny's layout at a small width
    model = ConvNeXt([CNBlockConfig(8, 16, 1), CNBlockConfig(16, None, 1)], num_classes=3).eval()
    block = model.features[1][0]
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        inner = block.block[:4](model.features[0](x))  # conv, permute, norm, linear: [B, H, W, 4C]
    with LayerRecorder(model, ["features[1][0].block[3]", "features[1][0]"]) as rec:
        out = rec.record(x)
    assert torch.allclose(out["features[1][0].block[3]"], inner.mean((1, 2)), atol=1e-5)
    assert out["features[1][0]"].shape == (1, 8)


def test_module_called_several_times_is_refused_with_alternatives() -> None:
    """A Bottleneck's one relu runs 3 times per forward: no single output, so no silent last call."""
    from cdissect_activations.hooks import RepeatedLayerError

    torch.manual_seed(0)
    model = torchvision.models.resnet50().eval()
    with pytest.raises(RepeatedLayerError) as info:
        LayerRecorder(model, ["layer1[0].conv3", "layer1[0].relu"]).record(torch.randn(1, 3, 32, 32))
    message = str(info.value)
    assert "'layer1[0].relu' runs 3 times in one forward pass" in message
    assert "'layer1[0]'" in message and "'layer1[0].conv1'" in message
    assert all(len(m._forward_hooks) == 0 for m in model.modules())
    # the stem's relu runs once: recorded as before
    assert LayerRecorder(model, ["relu"]).record(torch.randn(1, 3, 32, 32))["relu"].shape == (1, 64)
