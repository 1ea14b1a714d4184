"""timm, Hugging Face and CLIP-tower targets: built offline from configs, hub caches made on the spot,
token layouts with registers, architecture-only builds, fail-fast offline errors, and identities
(model id, checkpoint digest) that follow the revision and the weights."""
from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path

import pytest
import torch
from PIL import Image
from safetensors.torch import save_file

from cdissect_activations.checkpoints import CheckpointError
from cdissect_activations.pooling import TokenLayout
from cdissect_activations.zoo import available_models, load_target
from cdissect_common.downloads import DownloadError
from tests.conftest import write_openai_clip_checkpoint
from tests.unit.test_clip_backends import tiny_open_clip_arch  # noqa: F401 (a fixture)


def fake_hub_repo(cache: Path, repo: str, commit: str, files: dict[str, bytes]) -> Path:
    """A repository in the Hugging Face hub cache layout (blobs by digest, a snapshot, refs/main)."""
    root = cache / f"models--{repo.replace('/', '--')}"
    snapshot = root / "snapshots" / commit
    snapshot.mkdir(parents=True, exist_ok=True)
    (root / "blobs").mkdir(exist_ok=True)
    (root / "refs").mkdir(exist_ok=True)
    for name, data in files.items():
        blob = root / "blobs" / hashlib.sha256(data).hexdigest()
        blob.write_bytes(data)
        (snapshot / name).symlink_to(Path("..") / ".." / "blobs" / blob.name)
    (root / "refs" / "main").write_text(commit)
    return snapshot


def _state_bytes(state: dict, tmp: Path) -> bytes:
    path = tmp / "state.safetensors"
    save_file({k: v.contiguous() for k, v in state.items()}, str(path))
    return path.read_bytes()


def _tiny_dinov2_registers(folder: Path, seed: int = 0) -> Path:
    from transformers import BitImageProcessor, Dinov2WithRegistersConfig, Dinov2WithRegistersModel

    config = Dinov2WithRegistersConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                                       intermediate_size=64, image_size=56, patch_size=14, num_register_tokens=4)
    torch.manual_seed(seed)
    Dinov2WithRegistersModel(config).save_pretrained(folder)
    BitImageProcessor(size={"shortest_edge": 64}, crop_size={"height": 56, "width": 56}).save_pretrained(folder)
    return folder


def _batch(target, n: int = 2) -> torch.Tensor:
    return torch.stack([target.preprocess(Image.new("RGB", (90, 70), (40 * i, 90, 30))) for i in range(n)])


# --- timm -------------------------------------------------------------------------------------

def test_timm_random_vit_with_a_register_and_no_cls_token() -> None:
    target = load_target("timm:test_vit2", "none")
    assert target.model_id == "timm:test_vit2:random-init:0" and target.checkpoint_sha256 == "random-init:0"
    assert target.layout == TokenLayout(cls=False, registers=1, tokens=101)  # 10x10 patches + 1 register
    assert id(target.model.patch_embed) in target.channels_last  # dynamic-size patch embedding is NHWC
    x = _batch(target)
    assert x.shape == (2, 3, 160, 160)  # timm's data config for the model
    out = target.recorder(["blocks[2]", "patch_embed"], "avg", "patch_mean").record(x)
    with torch.no_grad():
        tokens = target.model.blocks[:3](target.model._pos_embed(target.model.patch_embed(x)))
    assert torch.allclose(out["blocks[2]"], tokens[:, 1:].mean(1), atol=1e-5)  # the register is left out
    assert out["patch_embed"].shape == (2, 64)
    with pytest.raises(ValueError, match="no CLS token"):
        target.recorder(["blocks[2]"], "avg", "cls").record(x)


def test_timm_pretrained_weights_from_the_hub_cache_follow_the_revision(tmp_path: Path, offline_weights_cache: Path
                                                                       ) -> None:
    import timm

    hub = offline_weights_cache / "huggingface"
    states = []
    for commit, seed in (("a" * 40, 1), ("b" * 40, 2)):
        torch.manual_seed(seed)
        state = timm.create_model("test_vit2").state_dict()
        fake_hub_repo(hub, "timm/test_vit2.r160_in1k", commit, {"model.safetensors": _state_bytes(state, tmp_path)})
        target = load_target("timm:test_vit2")
        assert target.model_id == f"timm:test_vit2:timm/test_vit2.r160_in1k@{commit}"
        blob = hashlib.sha256((hub / "models--timm--test_vit2.r160_in1k" / "snapshots" / commit /
                               "model.safetensors").read_bytes()).hexdigest()
        assert target.checkpoint_sha256 == blob
        assert torch.equal(target.model.state_dict()["blocks.0.mlp.fc1.weight"], state["blocks.0.mlp.fc1.weight"])
        states.append((target.model_id, target.checkpoint_sha256))
    assert states[0][0] != states[1][0] and states[0][1] != states[1][1]
    assert load_target("timm:test_vit2").model_id == states[1][0]  # the same revision: the same identity


def test_timm_pretrained_offline_fails_fast_naming_the_folder(offline_weights_cache: Path) -> None:
    start = time.monotonic()
    with pytest.raises(DownloadError) as err:
        load_target("timm:test_resnet")
    assert time.monotonic() - start < 15
    message = str(err.value)
    assert str(offline_weights_cache / "huggingface") in message and "timm/test_resnet.r160_in1k" in message
    assert "--weights none" in message and "timm:test_resnet:/path/to/weights.safetensors" in message


def test_timm_user_checkpoint_loads_and_a_foreign_one_is_refused(tmp_path: Path) -> None:
    import timm

    torch.manual_seed(5)
    state = timm.create_model("test_vit2").state_dict()
    path = tmp_path / "mine.safetensors"
    save_file({k: v.contiguous() for k, v in state.items()}, str(path))
    target = load_target(f"timm:test_vit2:{path}")
    assert target.checkpoint_sha256 == hashlib.sha256(path.read_bytes()).hexdigest()
    assert torch.equal(target.model.state_dict()["head.weight"], state["head.weight"])
    other = tmp_path / "resnet.safetensors"
    save_file({k: v.contiguous() for k, v in timm.create_model("test_resnet").state_dict().items()}, str(other))
    with pytest.raises(CheckpointError, match="do not fit VisionTransformer.*missing"):
        load_target(f"timm:test_vit2:{other}")


def test_unknown_timm_names_list_the_closest() -> None:
    with pytest.raises(LookupError, match="Closest: convnext_tiny") as err:
        load_target("timm:convnext_tinny", "none")
    assert "cdissect models --all" in str(err.value)
    with pytest.raises(LookupError, match="tags of resnet50: .*resnet50.a1_in1k"):
        load_target("timm:resnet50.no_such_tag")


# --- Hugging Face -----------------------------------------------------------------------------

def test_hf_folder_with_registers_pools_cls_mean_and_patches(tmp_path: Path) -> None:
    folder = _tiny_dinov2_registers(tmp_path / "dino")
    target = load_target(f"hf:{folder}")
    assert target.layout == TokenLayout(cls=True, registers=4, tokens=21)  # 4x4 patches at 56 px
    assert target.model_id == "hf:folder@local" and len(target.checkpoint_sha256) == 64
    x = _batch(target, 3)
    assert x.shape == (3, 3, 56, 56)
    with torch.no_grad():
        hidden = target.model(x, output_hidden_states=True).hidden_states[2]  # after encoder.layer[1]
    for token_pooling, want in (("cls", hidden[:, 0]), ("patch_mean", hidden[:, 5:].mean(1)),
                                ("mean", torch.cat([hidden[:, :1], hidden[:, 5:]], 1).mean(1))):
        got = target.recorder(["encoder.layer[1]"], "avg", token_pooling).record(x)["encoder.layer[1]"]
        assert torch.allclose(got, want, atol=1e-5), token_pooling


def test_hf_folder_digest_follows_its_files(tmp_path: Path) -> None:
    one = load_target(f"hf:{_tiny_dinov2_registers(tmp_path / 'a', seed=0)}")
    same = load_target(f"hf:{_tiny_dinov2_registers(tmp_path / 'b', seed=0)}")
    other = load_target(f"hf:{_tiny_dinov2_registers(tmp_path / 'c', seed=1)}")
    assert one.checkpoint_sha256 == same.checkpoint_sha256 != other.checkpoint_sha256


def test_hf_hub_cache_revision_is_part_of_the_identity(tmp_path: Path, offline_weights_cache: Path) -> None:
    ids = []
    for commit, seed in (("c" * 40, 0), ("d" * 40, 1)):
        folder = _tiny_dinov2_registers(tmp_path / commit, seed)
        files = {p.name: p.read_bytes() for p in folder.iterdir()}
        fake_hub_repo(offline_weights_cache / "huggingface", "someorg/tiny-dino", commit, files)
        target = load_target("hf:someorg/tiny-dino")
        assert target.model_id == f"hf:someorg/tiny-dino@{commit}"
        ids.append((target.model_id, target.checkpoint_sha256))
    assert ids[0] != ids[1]
    random = load_target("hf:someorg/tiny-dino", "none")
    assert random.model_id == "hf:someorg/tiny-dino:random-init:0"


def test_hf_offline_names_the_folder_and_close_names(offline_weights_cache: Path) -> None:
    start = time.monotonic()
    with pytest.raises(DownloadError) as err:
        load_target("hf:facebook/dinov2-smal")
    assert time.monotonic() - start < 15
    assert str(offline_weights_cache / "huggingface") in str(err.value)
    assert "Closest: facebook/dinov2-small" in str(err.value)
    with pytest.raises(LookupError, match="ORG/NAME"):
        load_target("hf:not-a-model-id")


def test_hf_folder_problems_are_explained(tmp_path: Path) -> None:
    folder = _tiny_dinov2_registers(tmp_path / "dino")
    (folder / "preprocessor_config.json").unlink()
    with pytest.raises(CheckpointError, match="preprocessor_config.json"):
        load_target(f"hf:{folder}")
    config = json.loads((folder / "config.json").read_text())
    config["hidden_size"] = 48
    (folder / "config.json").write_text(json.dumps(config))
    with pytest.raises(CheckpointError):
        load_target(f"hf:{folder}")
    with pytest.raises(CheckpointError, match="no config.json"):
        load_target(f"hf:{tmp_path}")


# --- CLIP image towers and architecture-only builds ---------------------------------------------

def test_clip_tower_target_from_an_openai_checkpoint(tmp_path: Path) -> None:
    from clip.model import CLIP

    path = write_openai_clip_checkpoint(tmp_path / "vit.pt", config=(32, 32, 2, 64, 16, 77, 49408, 64, 1, 1))
    target = load_target(f"clip:{path}")
    assert target.model_id == "clip-visual:openai-clip:file:vit.pt" and type(target.model).__name__ == "VisionTransformer"
    assert target.layout == TokenLayout(cls=True, registers=0, tokens=5) and target.seq_first
    x = _batch(target)
    out = target.recorder(["transformer.resblocks[1]"], "avg", "patch_mean").record(x)
    visual = target.model
    with torch.no_grad():
        h = visual.conv1(x).flatten(2).transpose(1, 2)
        h = torch.cat([visual.class_embedding.expand(2, 1, -1), h], 1) + visual.positional_embedding
        h = visual.transformer(visual.ln_pre(h).permute(1, 0, 2)).permute(1, 0, 2)  # sequence-first inside
    assert torch.allclose(out["transformer.resblocks[1]"], h[:, 1:].mean(1), atol=1e-5)
    assert isinstance(CLIP, type)


def test_open_clip_tower_target_is_batch_first_and_follows_its_checkpoint(tiny_open_clip_arch: str,  # noqa: F811
                                                                          tmp_path: Path) -> None:
    target = load_target(f"clip:open_clip:{tiny_open_clip_arch}")
    assert target.model_id == f"clip-visual:open_clip:{tiny_open_clip_arch}:random-init:0"
    assert target.layout == TokenLayout(cls=True, registers=0, tokens=5) and not target.seq_first
    x = _batch(target)
    cls = target.recorder(["transformer.resblocks[0]"], "avg", "cls").record(x)["transformer.resblocks[0]"]
    patches = target.recorder(["transformer.resblocks[0]"], "avg", "patch_mean").record(x)["transformer.resblocks[0]"]
    assert cls.shape == patches.shape == (2, 64) and not torch.allclose(cls, patches)
    import open_clip

    model = open_clip.create_model(tiny_open_clip_arch)
    path = tmp_path / "oc.pt"
    torch.save(model.state_dict(), path)
    loaded = load_target(f"clip:open_clip:{tiny_open_clip_arch}:{path}")
    assert loaded.checkpoint_sha256 == hashlib.sha256(path.read_bytes()).hexdigest()
    assert torch.equal(loaded.model.conv1.weight, model.visual.conv1.weight)


def test_architecture_only_builds_need_no_weights(offline_weights_cache: Path) -> None:
    for name, layer, units in (("resnet18", "layer4", 512), ("resnet18_places", "fc", 365),
                               ("vit_b_16", "encoder", 768), ("clip:ViT-B/16", "transformer.resblocks[11]", 768),
                               ("clip:RN50", "layer4", 2048), ("timm:test_convnext", "stages[1]", 32)):
        target = load_target(name, architecture_only=True)
        out = target.recorder([layer]).record(_batch(target, 1))
        assert out[layer].shape == (1, units), name
    assert not any(p.is_file() for p in offline_weights_cache.rglob("*"))
    with pytest.raises(DownloadError):
        load_target("resnet18")  # the weights themselves still need the network


def test_available_models_show_each_family() -> None:
    names = available_models()
    for expected in ("resnet50", "timm:convnext_tiny", "timm:resnet50.a1_in1k", "hf:facebook/dinov2-small",
                     "clip:ViT-B/16", "clip:shapes-clip"):
        assert expected in names
    every = available_models(every=True)
    assert len(every) > len(names) + 1000 and "timm:vit_small_patch14_reg4_dinov2.lvd142m" in every
