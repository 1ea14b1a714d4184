"""Truth from attributes (AUC) and the label-quality scores, on small constructed cases."""
from __future__ import annotations

import numpy as np
import pytest

from cdissect_shapes.scores import score_run
from cdissect_shapes.truth import auc_matrix, average_ranks, unit_truths
from cdissect_shapes.world import ATTRIBUTES, FC_WORDS, PLANTED_WORDS


def _attributes(n: int, seed: int = 0) -> list[dict[str, str]]:
    rng = np.random.default_rng(seed)
    return [{k: v[rng.integers(len(v))] for k, v in ATTRIBUTES.items()} for _ in range(n)]


def test_average_ranks_share_ties() -> None:
    r = average_ranks(np.array([[3.0], [1.0], [3.0], [2.0]]))
    assert r[:, 0].tolist() == [3.5, 1.0, 3.5, 2.0]


def test_auc_matches_pairwise_definition() -> None:
    rng = np.random.default_rng(0)
    act = rng.normal(size=(40, 3))
    act[:5, 2] = 0.0  # ties
    ind = rng.random((40, 2)) < 0.4
    got = auc_matrix(act, ind)
    for k in range(3):
        for v in range(2):
            pos, neg = act[ind[:, v], k], act[~ind[:, v], k]
            pairs = (pos[:, None] > neg[None]).mean() + 0.5 * (pos[:, None] == neg[None]).mean()
            assert got[k, v] == pytest.approx(pairs)


def test_unit_truth_finds_the_planted_attribute() -> None:
    attrs = _attributes(300)
    red = np.array([a["colour"] == "red" for a in attrs], float)
    noise = np.array([a["background_kind"] == "noise" for a in attrs], float)
    rng = np.random.default_rng(1)
    act = np.stack([red + 0.1 * rng.random(300), noise * 2 + 0.3 * rng.random(300), rng.random(300)], 1)
    truths = unit_truths(act, attrs)
    assert (truths[0].word, truths[0].attribute) == ("red", "colour") and truths[0].auc == pytest.approx(1.0)
    assert truths[1].word == "noise" and truths[1].auc > 0.99
    assert truths[2].auc < 0.9  # a random unit is not selective


def test_missing_attribute_column_is_named() -> None:
    attrs = _attributes(10)
    del attrs[3]["texture"]
    with pytest.raises(KeyError, match="texture"):
        unit_truths(np.zeros((10, 1)), attrs)


def _case() -> tuple[dict, dict, list]:
    attrs = _attributes(200, seed=2)
    circle = np.array([a["shape"] == "circle" for a in attrs], float)
    large = np.array([a["size"] == "large" for a in attrs], float)
    rng = np.random.default_rng(3)
    conv = np.stack([circle + 0.05 * rng.random(200), large + 0.05 * rng.random(200),
                     rng.random(200), np.zeros(200)], 1)  # circle, large, unselective, dead
    fc_labels = [[w, "red", "noise"] for w in FC_WORDS]
    fc_labels[0] = ["square", "circle", "red"]  # circle unit: right only at rank 2
    fc_labels[1] = ["red", "blue", "star"]  # square unit: wrong in the top 3
    planted = [[w] for w in PLANTED_WORDS]
    planted[-1] = ["dotted", "striped"]
    labels = {"layer2": [["circle", "x"], ["red", "small", "large"], ["blue"], ["blue"]],
              "fc": fc_labels, "planted": planted}
    return labels, {"layer2": conv}, attrs


def test_score_run_counts_hits_against_truth() -> None:
    labels, acts, attrs = _case()
    s = score_run(labels, acts, attrs, final_layer="fc", planted_layer="planted")
    assert s["n_final"] == 18 and s["final_top1"] == pytest.approx(16 / 18)
    assert s["final_top3"] == pytest.approx(17 / 18)
    assert s["n_planted"] == 9 and s["planted_top1"] == pytest.approx(8 / 9)
    assert s["n_conv"] == 3 and s["n_conv_dead"] == 1 and s["n_conv_selective"] == 2
    assert s["conv_selective_top1"] == pytest.approx(0.5) and s["conv_selective_top3"] == pytest.approx(1.0)
    assert s["per_layer"]["layer2"]["n_selective"] == 2


def test_score_run_rejects_a_partial_final_layer() -> None:
    labels, acts, attrs = _case()
    labels["fc"] = labels["fc"][:5]
    with pytest.raises(ValueError, match="5 labelled units"):
        score_run(labels, acts, attrs, final_layer="fc", planted_layer="planted")
    with pytest.raises(KeyError, match="no labels"):
        score_run(labels, acts, attrs, final_layer="head", planted_layer=None)
