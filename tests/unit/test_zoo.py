"""Target zoo: every named model builds, weights load through the real code paths, errors help.

No download happens: weight files are random weights written by the test in the published
formats and placed where the downloader would put them (the cache folder); "offline" is a proxy
on a closed loopback port, so the fail-fast path is exercised even on a machine with network.
"""
from __future__ import annotations

import hashlib
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torchvision
from PIL import Image

from cdissect_activations.checkpoints import CheckpointError
from cdissect_activations.hooks import LayerRecorder
from cdissect_activations.layers import UnknownLayerError, display_name, parse_layer_path
from cdissect_activations.zoo import (
    PLACES365_URL, UnknownModelError, available_models, list_layers, load_target,
    places365_checkpoint_path, resolve_layer, state_dict_sha256, torchvision_weights_path,
)
from cdissect_common.downloads import DownloadError


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _same_weights(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


# (model, input size, {layer: units}); ViTs need their 224 input, the others take a small one.
ZOO_CASES = [
    ("resnet18", 32, {"conv1": 64, "layer1": 64, "layer4": 512, "fc": 1000}),
    ("resnet34", 32, {"layer3": 256, "layer4": 512}),
    ("resnet50", 32, {"conv1": 64, "layer1": 256, "layer2": 512, "layer3": 1024, "layer4": 2048, "fc": 1000}),
    ("resnet101", 32, {"layer4": 2048, "layer4[2].conv3": 2048}),
    ("resnet152", 32, {"layer3": 1024, "fc": 1000}),
    ("vit_b_16", 224, {"encoder": 768, "encoder.layers.encoder_layer_10.mlp[1]": 3072}),
    ("vit_b_32", 224, {"encoder": 768, "heads": 1000}),
    ("convnext_tiny", 32, {"features[5]": 384, "features[7]": 768, "classifier": 1000}),
    ("efficientnet_b0", 32, {"features[3]": 40, "features[8]": 1280, "classifier[1]": 1000}),
]


@pytest.mark.slow
@pytest.mark.parametrize("name,size,units", ZOO_CASES, ids=[c[0] for c in ZOO_CASES])
def test_zoo_model_builds_random_and_hooks_its_layers(name: str, size: int, units: dict[str, int]) -> None:
    target = load_target(name, "none", device="cpu")
    assert not target.model.training
    assert target.checkpoint_sha256 == "random-init:0"
    assert target.model_id == f"torchvision:{name}:random-init:0"
    with LayerRecorder(target.model, list(units)) as rec:
        out = rec.record(torch.randn(1, 3, size, size))
    assert {k: tuple(v.shape) for k, v in out.items()} == {k: (1, u) for k, u in units.items()}
    assert all(v.dtype == torch.float32 for v in out.values())


def test_random_preprocess_is_imagenet_at_224() -> None:
    target = load_target("resnet18", "none")
    x = target.preprocess(Image.new("L", (300, 260), 128))  # grey input: converted to RGB
    assert x.shape == (3, 224, 224)
    mean = torch.tensor([0.485, 0.456, 0.406])
    std = torch.tensor([0.229, 0.224, 0.225])
    assert torch.allclose(x[:, 0, 0], (128 / 255 - mean) / std, atol=1e-5)


def test_random_init_is_seeded_and_leaves_global_rng_alone() -> None:
    torch.manual_seed(1)
    a = load_target("resnet18", "none").model
    after_a = torch.rand(1)
    torch.manual_seed(2)
    b = load_target("resnet18", "none").model
    assert _same_weights(a, b)
    torch.manual_seed(1)
    torch.rand(1)  # a real draw would differ if load_target had consumed the global generator
    torch.manual_seed(1)
    assert torch.equal(torch.rand(1), after_a)


@pytest.mark.slow
def test_random_init_identical_in_another_process() -> None:
    code = ("from cdissect_activations.zoo import load_target, state_dict_sha256;"
            "print(state_dict_sha256(load_target('resnet18', 'none').model))")
    other = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True)
    assert other.stdout.strip().splitlines()[-1] == state_dict_sha256(load_target("resnet18", "none").model)


def _write_places365_checkpoint(path: Path) -> torch.nn.Module:
    """Random ResNet-18/365 saved like the Places365 release: DataParallel keys in a dict."""
    torch.manual_seed(7)
    model = torchvision.models.resnet18(num_classes=365)
    state = {"module." + k: v for k, v in model.state_dict().items()}
    state["not_from_data_parallel.weight"] = torch.ones(3)  # dropped, as the reference does
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"epoch": 90, "arch": "resnet18", "best_prec1": 54.7, "state_dict": state}, path)
    return model


def test_places365_checkpoint_loads_from_the_download_location(offline_weights_cache: Path) -> None:
    path = places365_checkpoint_path()
    assert path.parent.parent == offline_weights_cache and path.name == Path(PLACES365_URL).name
    reference = _write_places365_checkpoint(path)
    target = load_target("resnet18_places")
    assert _same_weights(target.model, reference)
    assert target.model.fc.out_features == 365
    assert target.checkpoint_sha256 == _sha(path)
    assert target.model_id == "resnet18_places:places365"
    x = target.preprocess(Image.new("RGB", (320, 256), (255, 0, 0)))
    assert x.shape == (3, 224, 224)
    assert torch.allclose(x[:, 100, 100], (torch.tensor([1.0, 0, 0]) - torch.tensor([0.485, 0.456, 0.406]))
                          / torch.tensor([0.229, 0.224, 0.225]), atol=1e-5)


def test_places365_offline_error_names_url_and_cache_path(offline_weights_cache: Path) -> None:
    with pytest.raises(DownloadError) as err:
        load_target("resnet18_places")
    assert PLACES365_URL in str(err.value) and str(places365_checkpoint_path()) in str(err.value)
    assert not list(places365_checkpoint_path().parent.glob("*.part"))  # no partial file left


def test_torchvision_weights_load_from_cache_with_reference_default(offline_weights_cache: Path) -> None:
    enum = torchvision.models.ResNet18_Weights.IMAGENET1K_V1
    path = torchvision_weights_path(enum)
    path.parent.mkdir(parents=True)
    torch.manual_seed(3)
    reference = torchvision.models.resnet18()
    torch.save(reference.state_dict(), path)
    target = load_target("resnet18")  # "" = the reference's choice: IMAGENET1K_V1
    assert _same_weights(target.model, reference)
    assert (target.weights_name, target.model_id) == ("IMAGENET1K_V1", "torchvision:resnet18:IMAGENET1K_V1")
    assert target.checkpoint_sha256 == _sha(path)
    assert target.preprocess(Image.new("RGB", (300, 300))).shape == (3, 224, 224)


def test_reference_default_vs_torchvision_default_offline(offline_weights_cache: Path) -> None:
    with pytest.raises(DownloadError) as v1:
        load_target("resnet50", "")
    assert torchvision.models.ResNet50_Weights.IMAGENET1K_V1.url in str(v1.value)
    with pytest.raises(DownloadError) as default:
        load_target("resnet50", "DEFAULT")
    assert torchvision.models.ResNet50_Weights.IMAGENET1K_V2.url in str(default.value)
    assert str(offline_weights_cache / "torchvision") in str(default.value)


def test_user_checkpoint_in_model_string(tmp_path: Path) -> None:
    torch.manual_seed(4)
    reference = torchvision.models.resnet18()
    ckpt = tmp_path / "finetuned.pth"
    torch.save({"state_dict": {"module." + k: v for k, v in reference.state_dict().items()}}, ckpt)
    target = load_target(f"resnet18:{ckpt}")
    assert _same_weights(target.model, reference)
    assert target.model_id == "torchvision:resnet18:file:finetuned.pth"
    assert target.checkpoint_sha256 == _sha(ckpt)


def test_user_checkpoint_as_safetensors(tmp_path: Path) -> None:
    from safetensors.torch import save_file

    torch.manual_seed(5)
    reference = torchvision.models.resnet18()
    ckpt = tmp_path / "weights.safetensors"
    save_file({k: v.contiguous() for k, v in reference.state_dict().items()}, str(ckpt))
    assert _same_weights(load_target("resnet18", str(ckpt)).model, reference)


class _RunsCode:
    """Unpickling this object would create a marker file: a stand-in for malicious code."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


def test_unsafe_pickle_is_refused_without_running_it(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    ckpt = tmp_path / "evil.pth"
    torch.save({"state_dict": {"conv1.weight": torch.zeros(1)}, "payload": _RunsCode(marker)}, ckpt)
    with pytest.raises(CheckpointError, match="could execute code"):
        load_target(f"resnet18:{ckpt}")
    assert not marker.exists()


def test_checkpoint_for_wrong_architecture_is_explained(tmp_path: Path) -> None:
    ckpt = tmp_path / "r18.pth"
    torch.save(torchvision.models.resnet18().state_dict(), ckpt)
    with pytest.raises(CheckpointError, match="do not fit"):
        load_target("resnet50", str(ckpt))


def test_available_models_and_unknown_model() -> None:
    names = available_models()
    for expected in ("resnet18", "resnet152", "vit_b_16", "convnext_tiny", "efficientnet_b0", "resnet18_places"):
        assert expected in names
    with pytest.raises(UnknownModelError, match="resnet50"):
        load_target("resnet05", "none")


def test_unknown_weights_name_lists_choices() -> None:
    with pytest.raises(ValueError, match="IMAGENET1K_V2"):
        load_target("resnet50", "IMAGENET1K_V9")


@pytest.fixture(scope="module")
def resnet50() -> torch.nn.Module:
    return load_target("resnet50", "none").model


def test_layer_paths_resolve_in_both_syntaxes(resnet50: torch.nn.Module) -> None:
    model = resnet50
    conv3 = model.layer4[2].conv3
    assert resolve_layer(model, "layer4[2].conv3") is conv3
    assert resolve_layer(model, "layer4.2.conv3") is conv3
    assert resolve_layer(model, "layer4[-1].conv3") is conv3
    assert parse_layer_path("features[43]") == ["features", 43]
    assert display_name("encoder.layers.encoder_layer_10.mlp.1") == "encoder.layers.encoder_layer_10.mlp[1]"
    infos = list_layers(model)
    assert infos[0].name == "conv1" and infos[0].kind == "Conv2d"
    assert all(resolve_layer(model, info.name) is not None for info in infos)
    with pytest.raises(ValueError, match="not a module path"):
        resolve_layer(model, "layer4; import os")


def test_unknown_layer_lists_close_names(resnet50: torch.nn.Module) -> None:
    model = resnet50
    with pytest.raises(UnknownLayerError) as err:
        resolve_layer(model, "layer4[2].conv4", model_name="resnet50")
    message = str(err.value)
    assert "layer4[2].conv3" in message and "cdissect layers resnet50" in message
    assert isinstance(err.value, LookupError) and isinstance(err.value, ValueError)
    with pytest.raises(UnknownLayerError, match="layer4"):
        LayerRecorder(model, ["layer5"])
