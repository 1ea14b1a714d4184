"""Score cdissect's neuron labels against the shapes world's truth (numpy only, no torch).

Final layer: fc unit i's truth is its class word (FC_WORDS[i]) by construction. Planted layer:
unit i's truth is PLANTED_WORDS[i] by construction. Every other layer ("conv"): the truth is the
attribute value whose indicator best separates the unit's activations (truth.unit_truths);
"selective" units are those whose truth AUC is >= SELECTIVE_AUC. Dead units (constant
activation) have no truth and are left out of the conv scores. Sparse-autoencoder latents
(score_sae) are scored the same way: a planted SAE's latent i against FC_WORDS[i], a trained
SAE's latents as conv units.
"""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from .truth import unit_truths
from .world import FC_WORDS, PLANTED_WORDS

SELECTIVE_AUC = 0.9


def _hits(labels: Sequence[Sequence[str]], truths: Sequence[str], k: int) -> list[bool]:
    return [t in list(lab)[:k] for lab, t in zip(labels, truths)]


def _check_layer(layer: str, labels: dict[str, list[list[str]]], units: int | None = None) -> list[list[str]]:
    if layer not in labels:
        raise KeyError(f"layer {layer!r} has no labels; labelled layers: {', '.join(labels) or '(none)'}")
    lab = labels[layer]
    if units is not None and len(lab) != units:
        raise ValueError(f"layer {layer!r} has {len(lab)} labelled units but its truth has {units}; "
                         f"label the whole layer")
    if any(len(words) == 0 for words in lab):
        raise ValueError(f"layer {layer!r} has a unit without any label word")
    return lab


def _mean(x: list[bool]) -> float:
    return float(np.mean(x)) if x else float("nan")


def _truth_scores(layer: str, labels: dict[str, list[list[str]]], activations: np.ndarray,
                  attributes: list[dict[str, str]]) -> tuple[list[bool], list[bool], list[bool], list[bool], dict]:
    """Hits of one layer's labels against the attribute truth of its units (alive, then selective).

    Returns (top1 hits, top3 hits) of alive units, the same of selective units, and the layer's summary.
    """
    act = np.asarray(activations)
    lab = _check_layer(layer, labels, act.shape[1] if act.ndim == 2 else None)
    alive = act.max(0) > act.min(0)
    truths = unit_truths(act, attributes)
    words = [t.word for t in truths]
    h1, h3 = _hits(lab, words, 1), _hits(lab, words, 3)
    selective = [bool(a) and t.auc >= SELECTIVE_AUC for a, t in zip(alive, truths)]
    l1 = [h for h, a in zip(h1, alive) if a]
    l3 = [h for h, a in zip(h3, alive) if a]
    s1 = [h for h, s in zip(h1, selective) if s]
    s3 = [h for h, s in zip(h3, selective) if s]
    summary = {"top1": _mean(l1), "top3": _mean(l3), "n": len(l1), "selective_top1": _mean(s1),
               "selective_top3": _mean(s3), "n_selective": len(s1), "n_dead": int((~alive).sum())}
    return l1, l3, s1, s3, summary


def score_sae(labels: list[list[str]], activations: np.ndarray | None, attributes: list[dict[str, str]] | None,
              planted: bool) -> dict:
    """Label quality of SAE latents of one layer: labels per latent (top-k words, best first).

    planted: latent i's truth is FC_WORDS[i] (the fc readout per position); returns top1, top3, n.
    Otherwise the latents are scored as conv units (truth from their [N, latents] activations):
    top1/top3 of alive latents, selective_top1/3, n, n_selective, n_dead.
    """
    if planted:
        lab = _check_layer("planted SAE", {"planted SAE": labels}, len(FC_WORDS))
        return {"top1": _mean(_hits(lab, FC_WORDS, 1)), "top3": _mean(_hits(lab, FC_WORDS, 3)), "n": len(lab)}
    if activations is None or attributes is None:
        raise ValueError("a trained SAE is scored against the attribute truth: pass its activations and attributes")
    return _truth_scores("SAE", {"SAE": labels}, activations, attributes)[4]


def score_run(labels: dict[str, list[list[str]]], activations: dict[str, np.ndarray],
              attributes: list[dict[str, str]], final_layer: str, planted_layer: str | None) -> dict:
    """Label-quality scores of one run on a shapes-world probe set.

    labels: layer -> per unit its top-k words, best first. activations: layer -> [N, units]
    pooled activations in probe order (needed for the conv layers). attributes: the probe set's
    attribute dicts in the same order. Returns final_top1/3, planted_top1, conv_top1/3,
    conv_selective_top1/3, the counts n_final, n_planted, n_conv, n_conv_selective, n_conv_dead,
    and per_layer (layer -> its own top1/top3/n, and selective figures for conv layers).
    """
    fc = _check_layer(final_layer, labels, len(FC_WORDS))
    final1, final3 = _hits(fc, FC_WORDS, 1), _hits(fc, FC_WORDS, 3)
    per_layer: dict[str, dict] = {final_layer: {"top1": _mean(final1), "top3": _mean(final3), "n": len(fc)}}
    planted1: list[bool] = []
    if planted_layer:
        pl = _check_layer(planted_layer, labels, len(PLANTED_WORDS))
        planted1 = _hits(pl, PLANTED_WORDS, 1)
        per_layer[planted_layer] = {"top1": _mean(planted1), "top3": _mean(_hits(pl, PLANTED_WORDS, 3)), "n": len(pl)}

    conv1: list[bool] = []
    conv3: list[bool] = []
    sel1: list[bool] = []
    sel3: list[bool] = []
    dead = 0
    for layer in labels:
        if layer in (final_layer, planted_layer):
            continue
        if layer not in activations:
            raise KeyError(f"layer {layer!r} is labelled but has no activations; pass its [N, units] array")
        l1, l3, s1, s3, per_layer[layer] = _truth_scores(layer, labels, activations[layer], attributes)
        conv1 += l1
        conv3 += l3
        sel1 += s1
        sel3 += s3
        dead += per_layer[layer]["n_dead"]

    return {
        "final_top1": _mean(final1), "final_top3": _mean(final3),
        "planted_top1": _mean(planted1),
        "conv_selective_top1": _mean(sel1), "conv_selective_top3": _mean(sel3),
        "conv_top1": _mean(conv1), "conv_top3": _mean(conv3),
        "n_final": len(final1), "n_planted": len(planted1), "n_conv": len(conv1),
        "n_conv_selective": len(sel1), "n_conv_dead": dead,
        "per_layer": per_layer,
    }
