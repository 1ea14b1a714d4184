"""NeuronEval's sanity tests of the label-quality metrics, run on the shapes world's attribute indicators.

Set-up as in NeuronEval (Oikarinen, Yan & Weng, ICML 2025): a unit's activation over the probe
images and a concept vector c, here the 0/1 indicator of an attribute value (or of a conjunction
of values) over the same images. A metric passes

- "extra labels" when the unit's true concept c scores higher than a broader label c ∪ c'
  (c' a sibling: another value of the last attribute of the conjunction);
- "missing labels" when a unit built as a union c ∪ c' scores higher with the union than with
  either part;

by more than ε = 0.001 of the metric's range (NeuronEval's ε; the range is 2 for correlation,
1 for AUPRC and AUC), and we ask it for every unit tested.

The metrics are cdissect's own code: correlation and AUPRC from ``simulation.heldout_scores``
(what the labeler reports and the low flag uses), AUC from ``quality.label_quality`` (the figure
that used to decide the flag). Positives for AUPRC and AUC are the unit's top images: for ideal
0/1 units their active images (NeuronEval's alpha=False), for real units their top 100 of 3000
(soft-WPMI's top_k share).

What this measures on 3000 images of the world (seed 2026), and asserts:
- ideal units of single attribute values and of 2- to 4-attribute conjunctions: correlation and
  AUPRC pass both tests for every unit;
- AUC passes "missing labels" for every unit, and "extra labels" only while the broader label
  adds enough images: its decrease is (added images) / (2 × images outside the unit's top set),
  under ε once c' holds fewer than 0.2% of the probe set. On the world's single values (≥ 8% of
  the images each) it passes; for 4-attribute conjunctions (median 0.3%, like an ImageNet class or
  a word of a 20k concept set) it passes "extra labels" for only 73% of the units (for none whose
  sibling is rarer than 0.2%; 2 and 3 attributes: 99.6% and 97.9%). That is the reason for the
  switch: a flag on AUC cannot tell a label from a broader one when concepts are rare, which they
  are in real concept sets;
- the shipped CNN's planted units (real units, concept by construction) and unions of two of them:
  correlation passes both tests for every unit.
"""
from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch

from cdissect_labeler.quality import label_quality
from cdissect_labeler.simulation import heldout_scores, top_rows
from cdissect_shapes.generator import render_batch
from cdissect_shapes.target_model import images_to_tensor
from cdissect_shapes.world import ATTRIBUTES, PLANTED_WORDS, WORD_TO_ATTRIBUTE
from cdissect_shapes.zoo import load_target

N_IMAGES = 3000
SEED = 2026
EPS = 0.001
RANGE = {"correlation": 2.0, "auprc": 1.0, "auc": 1.0}
KEYS = ("shape", "colour", "texture", "size", "hpos", "vpos", "background", "background_kind")
pytestmark = pytest.mark.slow        # renders 3000 images and runs the planted units (~8 s of CPU)


@pytest.fixture(scope="module")
def world() -> dict:
    """Attributes of 3000 images of the world (one array per attribute), the shipped CNN's planted
    units on them, and the ideal-unit tests of each conjunction level."""
    images, attributes = render_batch(N_IMAGES, np.random.default_rng(SEED))
    model, _ = load_target()
    with torch.no_grad():
        planted = torch.cat([model.planted(images_to_tensor(images[s:s + 500])) for s in range(0, N_IMAGES, 500)])
    columns = {k: np.array([a[k] for a in attributes]) for k in KEYS}
    return {"attributes": columns, "planted": planted.numpy().astype(np.float64),
            "ideal": {level: ideal_tests(columns, level) for level in (1, 2, 3, 4)}}


def indicator(columns: dict[str, np.ndarray], conditions: tuple[tuple[str, str], ...]) -> np.ndarray:
    """0/1 float vector: which images have every (attribute, value) of conditions."""
    return np.logical_and.reduce([columns[k] == v for k, v in conditions]).astype(np.float64)


def scores(unit: np.ndarray, concepts: list[np.ndarray], n_positives: int) -> dict[str, list[float]]:
    """Each metric of one unit [N] against each concept vector [N], with the unit's top n_positives."""
    acts = np.repeat(unit[:, None], len(concepts), axis=1)
    labels = np.stack(concepts, axis=1)
    column = np.arange(len(concepts))
    held = heldout_scores(acts, labels, column, n_positives)
    positives = top_rows(acts, n_positives).T
    auc, _ = label_quality(labels, column, positives)
    return {"correlation": held.correlation.tolist(), "auprc": held.auprc.tolist(), "auc": auc.tolist()}


def decrease(truth: dict[str, list[float]], index_truth: int, index_other: int) -> dict[str, float]:
    """Normalised score drop from the true label to another one, per metric."""
    return {m: (v[index_truth] - v[index_other]) / RANGE[m] for m, v in truth.items()}


def ideal_tests(attributes: dict[str, np.ndarray], level: int, count: int = 240) -> tuple[dict, dict, np.ndarray]:
    """Extra- and missing-labels decreases of ideal units (the indicator itself) of `level`-attribute
    conjunctions, drawn at random; also [count, 2]: the share of the probe set the unit's concept
    holds and the share the broader label adds."""
    rng = np.random.default_rng(level)
    combos = list(itertools.combinations(KEYS, level))
    extra: dict[str, list[float]] = {m: [] for m in RANGE}
    missing: dict[str, list[float]] = {m: [] for m in RANGE}
    shares: list[tuple[float, float]] = []
    while len(shares) < count:
        keys = combos[rng.integers(len(combos))]
        values = [ATTRIBUTES[k][rng.integers(len(ATTRIBUTES[k]))] for k in keys]
        siblings = [v for v in ATTRIBUTES[keys[-1]] if v != values[-1]]
        sibling = siblings[rng.integers(len(siblings))]
        c = indicator(attributes, tuple(zip(keys, values)))
        c2 = indicator(attributes, tuple(zip(keys, values[:-1] + [sibling])))
        if c.sum() < 2 or c2.sum() < 1:
            continue
        union = np.maximum(c, c2)
        truth = scores(c, [c, union], int(c.sum()))                 # extra labels: the unit is c
        for m, v in decrease(truth, 0, 1).items():
            extra[m].append(v)
        as_union = scores(union, [union, c, c2], int(union.sum()))  # missing labels: the unit is c ∪ c'
        for m in RANGE:
            missing[m].append(min(decrease(as_union, 0, 1)[m], decrease(as_union, 0, 2)[m]))
        shares.append((c.mean(), c2.mean()))
    return extra, missing, np.asarray(shares)


def pass_rate(values: list[float]) -> float:
    return float(np.mean(np.asarray(values) > EPS))


@pytest.mark.parametrize("level", [1, 2, 3, 4])
def test_correlation_and_auprc_pass_both_tests_on_ideal_units(world: dict, level: int) -> None:
    extra, missing, _ = world["ideal"][level]
    for metric in ("correlation", "auprc"):
        assert pass_rate(extra[metric]) == 1.0, (metric, "extra labels", min(extra[metric]))
        assert pass_rate(missing[metric]) == 1.0, (metric, "missing labels", min(missing[metric]))
    assert pass_rate(missing["auc"]) == 1.0


def test_auc_passes_extra_labels_for_frequent_values_and_fails_for_rare_concepts(world: dict) -> None:
    extra, _, shares = world["ideal"][1]
    assert pass_rate(extra["auc"]) == 1.0 and shares[:, 1].min() > 0.08   # single values: ≥ 8% of the images
    extra, _, shares = world["ideal"][4]
    auc, added = np.asarray(extra["auc"]), shares[:, 1]
    # The decrease is the added images over twice the images outside the unit's top set ...
    assert auc == pytest.approx(added / (2 * (1 - shares[:, 0])), abs=1e-9)
    # ... so it fails whenever the broader label adds under 0.2% of the probe set, and overall.
    rare = added < 2 * EPS
    assert rare.sum() >= 50 and np.all(auc[rare] <= EPS)
    assert pass_rate(extra["auc"]) < 0.9
    assert pass_rate(extra["correlation"]) == 1.0 and pass_rate(extra["auprc"]) == 1.0


def test_correlation_passes_both_tests_on_the_planted_units(world: dict) -> None:
    attributes, planted = world["attributes"], world["planted"]
    n_pos = math.ceil(N_IMAGES * 100 / 3000)
    extra = []
    for k, word in enumerate(PLANTED_WORDS):
        key = WORD_TO_ATTRIBUTE[word]
        c = indicator(attributes, ((key, word),))
        for other in ATTRIBUTES[key]:
            if other != word:
                broader = np.maximum(c, indicator(attributes, ((key, other),)))
                extra.append(decrease(scores(planted[:, k], [c, broader], n_pos), 0, 1)["correlation"])
    missing = []
    colours = [k for k, w in enumerate(PLANTED_WORDS) if WORD_TO_ATTRIBUTE[w] == "colour"]
    for i, j in itertools.combinations(colours, 2):
        z = [(planted[:, u] - planted[:, u].mean()) / planted[:, u].std() for u in (i, j)]
        unit = np.maximum(z[0], z[1])
        ci = indicator(attributes, (("colour", PLANTED_WORDS[i]),))
        cj = indicator(attributes, (("colour", PLANTED_WORDS[j]),))
        got = scores(unit, [np.maximum(ci, cj), ci, cj], n_pos)
        missing.append(min(decrease(got, 0, 1)["correlation"], decrease(got, 0, 2)["correlation"]))
    assert len(extra) == 8 * 7 + 3 and len(missing) == 28
    assert pass_rate(extra) == 1.0, min(extra)
    assert pass_rate(missing) == 1.0, min(missing)
