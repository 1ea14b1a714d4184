"""Smoke runs of both shapes-world trainers (a few steps, the loss falls) and the CLIP file format."""
from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from cdissect_shapes.captions import caption_text, positives, sample_caption
from cdissect_shapes.clip_trainer import (ClipTrainConfig, build_tiny_clip, multi_positive_loss,
                                          save_openai_checkpoint, train_clip)
from cdissect_shapes.cnn_trainer import CnnTrainConfig, train_cnn


def test_captions_are_true_of_their_image() -> None:
    rng = np.random.default_rng(0)
    attrs = {"shape": "star", "colour": "red", "texture": "dotted", "size": "small", "hpos": "left",
             "vpos": "top", "background": "gray", "background_kind": "noise"}
    for _ in range(50):
        cons, text = sample_caption(attrs, rng)
        assert all(attrs[k] == v for k, v in cons)
        assert all(v in text.split() for _, v in cons)
    assert caption_text((("colour", "red"), ("shape", "star")), article=True) == "a red star"
    other = dict(attrs, colour="blue")
    assert positives([attrs, other], [(("colour", "red"),), (("shape", "star"),)]).tolist() == [[True, True],
                                                                                                [False, True]]


def test_multi_positive_loss_prefers_matching_pairs() -> None:
    pos = torch.tensor([[True, False], [True, True]])
    good = torch.tensor([[10.0, -10.0], [10.0, 10.0]])
    bad = torch.tensor([[-10.0, 10.0], [10.0, -10.0]])
    assert multi_positive_loss(good, pos) < multi_positive_loss(bad, pos)


@pytest.mark.slow
def test_clip_trainer_loss_falls_and_resumes(tmp_path: Path) -> None:
    torch.set_num_threads(2)
    cfg = ClipTrainConfig(steps=6, batch_size=24, warmup=2, log_every=100, checkpoint_every=3)
    _, losses = train_clip(cfg, log=lambda s: None)
    assert np.mean(losses[-2:]) < np.mean(losses[:2])
    # an interrupted run resumed from its checkpoint ends where the uninterrupted one does
    state = tmp_path / "state.pt"
    train_clip(replace(cfg, steps=6), checkpoint=state, log=lambda s: None)
    resumed, resumed_losses = train_clip(cfg, checkpoint=state, log=lambda s: None)
    assert resumed_losses == pytest.approx(losses)


@pytest.mark.slow
def test_cnn_trainer_loss_falls() -> None:
    torch.set_num_threads(2)
    cfg = CnnTrainConfig(steps=14, batch_size=32, warmup=2, log_every=100, eval_every=0)
    _, losses = train_cnn(cfg, log=lambda s: None)
    assert np.mean(losses[-4:]) < np.mean(losses[:3])


@pytest.mark.slow
def test_saved_clip_is_an_openai_archive_that_clip_load_rebuilds(tmp_path: Path) -> None:
    import clip

    model = build_tiny_clip(seed=1).eval()
    path = save_openai_checkpoint(model, tmp_path / "c.pt")
    archive = torch.jit.load(str(path), map_location="cpu")
    assert {p.dtype for n, p in archive.named_parameters() if n.endswith("conv1.weight")} == {torch.float16}
    loaded, preprocess = clip.load(str(path), device="cpu", jit=False)
    assert loaded.visual.input_resolution == 64
    assert loaded.transformer.resblocks[0].attn.num_heads == 1 and len(loaded.transformer.resblocks) == 2
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        a = model.encode_image(x)
        b = loaded.encode_image(x)
        text = clip.tokenize(["red", "a striped star"])
        ta, tb = model.encode_text(text), loaded.encode_text(text)
    assert torch.allclose(a, b, atol=2e-2, rtol=2e-2) and torch.allclose(ta, tb, atol=2e-2, rtol=2e-2)
    # same weights -> same fp16 tensors (bytes differ within one process: TorchScript mangles
    # the class name of a second trace)
    again = torch.jit.load(str(save_openai_checkpoint(model, tmp_path / "again.pt")), map_location="cpu")
    assert all(torch.equal(p, q) for p, q in zip(archive.state_dict().values(), again.state_dict().values()))


def test_a_later_clip_phase_starts_from_the_given_weights() -> None:
    start = build_tiny_clip(seed=5).state_dict()
    model, losses = train_clip(ClipTrainConfig(steps=0), init_state=start, log=lambda s: None)
    assert losses == []
    assert all(torch.equal(v, start[k]) for k, v in model.state_dict().items())

