"""The shipped shapes-world models: digests, the OpenAI-format CLIP, the target CNN and its units."""
from __future__ import annotations

from importlib.metadata import entry_points
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from cdissect_shapes import zoo
from cdissect_shapes.concepts import concept_set_path, concept_words, expected_words
from cdissect_shapes.generator import render_batch
from cdissect_shapes.target_model import ShapesCNN
from cdissect_shapes.truth import auc_matrix
from cdissect_shapes.world import FC_WORDS, PLANTED_WORDS, WORD_TO_ATTRIBUTE


def test_shipped_files_match_sha256sums() -> None:
    sums = zoo.shipped_sums()
    assert set(sums) == {zoo.CLIP_FILE, zoo.CNN_FILE, zoo.SAE_FILE, zoo.PLANTED_SAE_FILE}
    assert (zoo.WEIGHTS_DIR / zoo.SAE_FILE).stat().st_size < 500_000  # small enough to ship
    for name, digest in sums.items():
        assert zoo.file_sha256(zoo.WEIGHTS_DIR / name) == digest, f"{name} differs from SHA256SUMS"


def test_entry_points_name_the_shapes_models() -> None:
    targets = {e.name: e for e in entry_points(group="cdissect.targets")}
    clips = {e.name: e for e in entry_points(group="cdissect.clip_models")}
    assert targets["shapes_cnn"].load() is zoo.load_target
    assert clips["shapes-clip"].load() is zoo.clip_checkpoint


@pytest.mark.slow
def test_shipped_clip_loads_through_clip_load_and_knows_single_words() -> None:
    import clip

    model, preprocess = clip.load(zoo.clip_checkpoint(), device="cpu", jit=False)
    assert model.visual.input_resolution == 64
    images, attrs = render_batch(48, np.random.default_rng(99))
    x = torch.stack([preprocess(Image.fromarray(im)) for im in images])
    with torch.no_grad():
        img = torch.nn.functional.normalize(model.encode_image(x), dim=-1)
        for key, words in (("shape", ["circle", "square", "triangle", "star", "cross", "heart"]),
                           ("colour", ["red", "green", "blue", "yellow", "purple", "orange", "white", "black"]),
                           ("texture", ["solid", "striped", "dotted", "checkered"])):
            txt = torch.nn.functional.normalize(model.encode_text(clip.tokenize(words)), dim=-1)
            pred = (img @ txt.T).argmax(1).tolist()
            acc = np.mean([words[p] == a[key] for p, a in zip(pred, attrs)])
            assert acc >= 0.85, f"{key} zero-shot accuracy {acc:.2f}"


def test_load_target_runs_and_exposes_the_documented_layers() -> None:
    model, preprocess = zoo.load_target(None)
    assert not model.training
    images, _ = render_batch(4, np.random.default_rng(5))
    x = torch.stack([preprocess(Image.fromarray(im)) for im in images])
    assert x.shape == (4, 3, 64, 64)
    seen = {}
    hooks = [getattr(model, n).register_forward_hook(lambda m, i, o, n=n: seen.__setitem__(n, o))
             for n in ("conv1", "layer1", "layer2", "layer3", "fc", "planted")]
    with torch.no_grad():
        out = model(x)
        again = model(x)
    for h in hooks:
        h.remove()
    assert torch.equal(out, again) and out.shape == (4, len(FC_WORDS))
    assert seen["planted"].shape == (4, len(PLANTED_WORDS))
    assert all(seen[n].ndim == 4 for n in ("conv1", "layer1", "layer2", "layer3"))
    assert zoo.load_target("")[0].state_dict()["fc.weight"].equal(model.state_dict()["fc.weight"])


def test_shipped_cnn_heads_are_accurate_on_fresh_images() -> None:
    from cdissect_shapes.cnn_trainer import head_accuracy

    acc = head_accuracy(zoo.load_target(None)[0], n=250, seed=4242)
    assert min(acc.values()) >= 0.95, acc


def test_load_target_names_a_bad_weights_file(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="not found"):
        zoo.load_target(str(tmp_path / "nope.safetensors"))
    from safetensors.torch import save_file

    save_file({"w": torch.zeros(2)}, str(tmp_path / "other.safetensors"))
    with pytest.raises(ValueError, match="ShapesCNN"):
        zoo.load_target(str(tmp_path / "other.safetensors"))


def test_planted_units_detect_their_words_by_construction() -> None:
    images, attrs = render_batch(300, np.random.default_rng(11))
    from cdissect_shapes.target_model import images_to_tensor

    with torch.no_grad():
        act = ShapesCNN().planted(images_to_tensor(images)).numpy()  # no training involved
    ind = np.stack([[a[WORD_TO_ATTRIBUTE[w]] == w for a in attrs] for w in PLANTED_WORDS], 1)
    aucs = np.diag(auc_matrix(act, ind))
    assert aucs.min() > 0.85, dict(zip(PLANTED_WORDS, aucs.round(3)))


def test_concept_set_holds_every_world_word() -> None:
    assert concept_words() == expected_words()
    assert concept_set_path().read_text().endswith("\n")


def _layer3(model: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    return model.layer3(model.layer2(model.layer1(model.relu(model.bn1(model.conv1(x))))))


def test_planted_sae_latents_are_the_fc_readout_per_position() -> None:
    from cdissect_activations.sae import encode_pooled, load_sae

    model, preprocess = zoo.load_target(None)
    sae = load_sae(zoo.sae_path(planted=True))
    assert (sae.d_in, sae.d_sae, sae.activation) == (96, len(FC_WORDS), "relu")
    images, _ = render_batch(16, np.random.default_rng(11))
    x = torch.stack([preprocess(Image.fromarray(im)) for im in images])
    with torch.no_grad():
        h = _layer3(model, x)
        latents = encode_pooled(sae, h.flatten(2).transpose(1, 2), "mean")
        logits = model(x)
    offset = sae.b_enc - model.fc.bias
    assert torch.allclose(offset, offset[0].expand_as(offset))  # one offset keeps the readout linear
    assert torch.allclose(latents, logits + offset, atol=1e-4)


def test_trained_sae_reads_layer3_and_reconstructs_it() -> None:
    from safetensors.torch import load_file

    from cdissect_activations.sae import encode, load_sae

    sae = load_sae(zoo.sae_path())
    assert (sae.d_in, sae.activation) == (96, "relu") and 128 <= sae.d_sae <= 1024
    decoder = load_file(zoo.sae_path())["W_dec"]
    model, preprocess = zoo.load_target(None)
    images, _ = render_batch(32, np.random.default_rng(12))
    with torch.no_grad():
        rows = _layer3(model, torch.stack([preprocess(Image.fromarray(im)) for im in images]))
        rows = rows.flatten(2).transpose(1, 2).reshape(-1, 96)
        codes = encode(sae, rows)
        recon = codes @ decoder + sae.b_dec
    explained = 1 - float((recon - rows).pow(2).sum() / (rows - rows.mean(0)).pow(2).sum())
    assert explained > 0.9
    assert float((codes > 0).float().sum(1).mean()) < sae.d_sae / 3  # sparse


def test_sae_trainer_quick_run_writes_both_files_and_sums(tmp_path: Path) -> None:
    from cdissect_shapes import sae_trainer

    assert sae_trainer.main(["--quick", "--out", str(tmp_path)]) == 0
    sums = zoo.shipped_sums(tmp_path)
    assert set(sums) == {zoo.SAE_FILE, zoo.PLANTED_SAE_FILE}
    for name, digest in sums.items():
        assert zoo.file_sha256(tmp_path / name) == digest
