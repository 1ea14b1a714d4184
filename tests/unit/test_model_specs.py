"""Model strings and feature strings, split the same way by the CLI and the activations service."""
from __future__ import annotations

from pathlib import Path

import pytest

from cdissect_cli.errors import InputError, SpecError
from cdissect_cli.jobspec import resolve_spec
from cdissect_cli.user_inputs import FeatureSpec, features_message, model_files, parse_features
from cdissect_common.model_specs import CLIP, HF, TIMM, ZOO, ModelSpec, parse_model
from cdissect_common.store import open_store


@pytest.mark.parametrize("model, weights, want", [
    ("resnet50", "", ModelSpec(ZOO, "resnet50")),
    ("resnet50:/p/ckpt.pth", "", ModelSpec(ZOO, "resnet50", "/p/ckpt.pth")),
    ("timm:convnext_tiny", "", ModelSpec(TIMM, "convnext_tiny")),
    ("timm:resnet50.a1_in1k", "none", ModelSpec(TIMM, "resnet50.a1_in1k", "", "none")),
    ("timm:vit_small:/p/w.safetensors", "", ModelSpec(TIMM, "vit_small", "/p/w.safetensors")),
    ("timm:vit_small", "./w.safetensors", ModelSpec(TIMM, "vit_small", "./w.safetensors")),
    ("hf:facebook/dinov2-small", "", ModelSpec(HF, "facebook/dinov2-small")),
    ("hf:facebook/dinov2-small", "v1.0", ModelSpec(HF, "facebook/dinov2-small", "", "v1.0")),
    ("hf:/models/dino", "", ModelSpec(HF, "", "/models/dino")),
    ("hf:./dino", "", ModelSpec(HF, "", "./dino")),
    ("clip:ViT-B/16", "", ModelSpec(CLIP, "ViT-B/16")),
    ("clip:/p/clip.pt", "", ModelSpec(CLIP, "", "/p/clip.pt")),
    ("clip:open_clip:ViT-B-32:laion2b_s34b_b79k", "", ModelSpec(CLIP, "open_clip:ViT-B-32:laion2b_s34b_b79k")),
    ("clip:open_clip:ViT-B-32:/p/oc.bin", "", ModelSpec(CLIP, "open_clip:ViT-B-32", "/p/oc.bin")),
])
def test_parse_model(model: str, weights: str, want: ModelSpec) -> None:
    assert parse_model(model, weights) == want


def test_model_string_replaces_the_users_path() -> None:
    assert parse_model("timm:vit_small:/p/w.safetensors").model_string("/cache/x/w.safetensors") == \
        "timm:vit_small:/cache/x/w.safetensors"
    assert parse_model("hf:./dino").model_string("/cache/f") == "hf:/cache/f"
    assert parse_model("clip:open_clip:ViT-B-32:/p/oc.bin").model_string("/c/oc.bin") == "clip:open_clip:ViT-B-32:/c/oc.bin"
    assert parse_model("hf:./dino").is_folder and not parse_model("timm:x:/p.pt").is_folder


def test_parse_model_errors() -> None:
    with pytest.raises(ValueError, match="empty model name"):
        parse_model(" ")
    with pytest.raises(ValueError, match="no model"):
        parse_model("timm:")
    with pytest.raises(ValueError, match="already names its weights"):
        parse_model("timm:x:/p/a.pt", "/p/b.pt")


@pytest.mark.parametrize("model", ["/ckpt/r50.pth", "r50.pth", "~/ckpt/r50.pt", "./r50.safetensors", ":/ckpt/r50.pth"])
def test_a_checkpoint_without_its_architecture_is_refused_naming_the_form(model: str) -> None:
    """`--model /path/x.pth` used to reach the service and come back as "unknown target model"."""
    path = model.lstrip(":")
    with pytest.raises(ValueError) as info:
        parse_model(model)
    message = str(info.value)
    assert f"{path!r} is a checkpoint file without its architecture" in message
    assert f"resnet50:{path}" in message and "cdissect models" in message
    with pytest.raises(SpecError, match="without its architecture"):
        resolve_spec(overrides={"target_model": model})
    assert parse_model("resnet50", path) == ModelSpec(ZOO, "resnet50", path)     # --weights PATH names it


def test_parse_features() -> None:
    assert parse_features("sae:/p/sae.safetensors") == FeatureSpec("sae", "/p/sae.safetensors")
    assert parse_features("sae:/p/sae.safetensors:topk=32") == FeatureSpec("sae", "/p/sae.safetensors", "topk", 32)
    assert parse_features("sae:x.safetensors:jumprelu") == FeatureSpec("sae", "x.safetensors", "jumprelu")
    for bad in ("sae:", "pca:/p/x", "/p/sae.safetensors"):
        with pytest.raises(SpecError, match="sae:/path/to/sae.safetensors"):
            parse_features(bad)


def test_features_need_exactly_one_layer() -> None:
    spec = resolve_spec(None, {"layers": "layer3", "features": "sae:/p/sae.safetensors"})
    assert spec.features == "sae:/p/sae.safetensors" and spec.to_proto().features == spec.features
    assert "features: sae:/p/sae.safetensors" in spec.to_yaml()
    with pytest.raises(SpecError, match="exactly one layer, but 2 are given"):
        resolve_spec(None, {"layers": "layer3,layer4", "features": "sae:/p/sae.safetensors"})
    with pytest.raises(SpecError, match="exactly one layer, but 5"):
        resolve_spec(None, {"features": "sae:/p/sae.safetensors"})  # the five default layers


def _safetensors(path: Path) -> Path:
    """A small real safetensors file (user files must be in a checkpoint format)."""
    import numpy as np
    from safetensors.numpy import save_file

    save_file({"weight": np.zeros((2, 2), dtype=np.float32)}, str(path))
    return path


def test_user_files_are_uploaded_once_by_digest(tmp_path: Path) -> None:
    store = open_store(f"file://{tmp_path / 'store'}")
    ckpt = _safetensors(tmp_path / "w.safetensors")
    model, files = model_files(store, f"timm:vit_small:{ckpt}")
    assert model == f"timm:vit_small:{ckpt}" and [f.name for f in files] == ["w.safetensors"]
    stored = store.list("userfiles/")
    again = model_files(store, f"timm:vit_small:{ckpt}")[1]
    assert again[0].ref.key == files[0].ref.key and store.list("userfiles/") == stored  # nothing new
    assert files[0].ref.key in stored
    folder = tmp_path / "dino"
    (folder / "sub").mkdir(parents=True)
    for name in ("config.json", "model.safetensors", "sub/preprocessor_config.json"):
        (folder / name).write_text(name)
    assert [f.name for f in model_files(store, f"hf:{folder}")[1]] == \
        ["config.json", "model.safetensors", "sub/preprocessor_config.json"]
    assert [f.name for f in model_files(store, f"hf:{folder}", configs_only=True)[1]] == \
        ["config.json", "sub/preprocessor_config.json"]
    assert model_files(store, f"timm:vit_small:{ckpt}", configs_only=True) == ("timm:vit_small", [])
    assert model_files(store, "resnet50") == ("resnet50", [])
    zoo_model, zoo_files = model_files(store, "resnet50", str(ckpt))  # --weights /path: zoo checkpoints go up too
    assert zoo_model == "resnet50" and zoo_files[0].ref.key == files[0].ref.key


def test_paths_not_on_this_machine_are_server_paths_but_an_sae_must_be_here(tmp_path: Path) -> None:
    store = open_store(f"file://{tmp_path / 'store'}")
    from cdissect_cli.errors import CliError

    # A target path that is not here is sent as a path on the service's machine (its model_dirs).
    assert model_files(store, "timm:vit_small:/no/such.safetensors") == ("timm:vit_small:/no/such.safetensors", [])
    (tmp_path / "folder.pth").mkdir()
    with pytest.raises(CliError, match="is not a file") as err:
        model_files(store, f"timm:vit_small:{tmp_path / 'folder.pth'}")
    assert err.value.exit_code == 2
    with pytest.raises(CliError, match="SAE file .* is not a file"):
        features_message(store, "sae:/no/sae.safetensors", "layer3")


def test_a_local_file_that_is_not_a_checkpoint_is_refused_before_it_is_sent(tmp_path: Path) -> None:
    """Checked by its first bytes (cdissect_common.checkpoint_format): exit 2 naming the user's own
    file, instead of an upload and a service error about a cached copy."""
    store = open_store(f"file://{tmp_path / 'store'}")
    notes = tmp_path / "notes.pth"
    notes.write_text("my notes\n")
    for call in (lambda: model_files(store, f"timm:vit_small:{notes}"), lambda: model_files(store, f"resnet18:{notes}"),
                 lambda: model_files(store, "resnet18", str(notes)),
                 lambda: features_message(store, f"sae:{notes}", "layer3")):
        with pytest.raises(InputError) as info:
            call()
        assert f"{notes} is not a checkpoint" in str(info.value) and "starts with text: 'my notes'" in str(info.value)
    assert store.list("userfiles") == []


def test_saelens_cfg_next_to_the_file_names_the_activation(tmp_path: Path) -> None:
    store = open_store(f"file://{tmp_path / 'store'}")
    sae = _safetensors(tmp_path / "sae_weights.safetensors")
    (tmp_path / "cfg.json").write_text('{"activation_fn_str": "topk", "activation_fn_kwargs": {"k": 16}}')
    msg = features_message(store, f"sae:{sae}", "blocks[3]")
    assert (msg.kind, msg.layer, msg.activation, msg.k, msg.file.name) == ("sae", "blocks[3]", "topk", 16,
                                                                          "sae_weights.safetensors")
    assert features_message(store, f"sae:{sae}:relu", "blocks[3]").activation == "relu"


def test_the_shared_modules_import_no_torch() -> None:
    import subprocess
    import sys

    code = ("import sys, cdissect_common.model_specs, cdissect_common.clip_checkpoints; "
            "print('torch' in sys.modules, 'clip' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.split() == ["False", "False"]
