"""When a unit's label deserves little trust: the flags the report and analyses show.

The labeler scores each label by how well its CLIP score *simulates* the unit on held-out probe
images (results.json `quality`): the Pearson correlation between the label's CLIP score and the
unit's activation, with a 95% interval, and the AUPRC of the label for the unit's top images.
Correlation decides the flag because it passes both of NeuronEval's sanity tests ("missing
labels", "extra labels"; tests/unit/test_metric_sanity.py measures it on the shapes world), and
it is one scale for every model, CLIP and concept set: r² is the share of the unit's variance
the label explains.

A unit is *low* when its held-out correlation is below LOW_CORRELATION (the label explains under
4% of the variance; on three shapes-world probe sets no correct label scored below 0.24, while
69-82% of the reference selection's wrong labels of selective units scored below 0.2) or when
the 95% interval reaches 0 (too few held-out images to tell the label from none), and every unit
of a run whose held-out split has fewer than MIN_EVAL_IMAGES images is low (a strong correlation's
interval stays above 0 even on 8-13 images, but so few images cannot back any label; only the
reference selection runs on such a split, `cdissect run` warns). A unit constant on the held-out
images gets r = 0 and is low. *dead*: constant activation over the whole probe set (no label means anything).
Runs written before these scores carry only AUC and p: for them the old rule (AUC < 0.6 or
p > 0.01) still applies, so their reports keep working.
"""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from cdissect_common.evaluation import MIN_EVAL_IMAGES

from cdissect_cli.analyses.run_results import UnitResult

LOW_CORRELATION = 0.2
RULE_TEXT = (f"held-out correlation < {LOW_CORRELATION}, its 95% interval reaches 0, or fewer than "
             f"{MIN_EVAL_IMAGES} held-out images")
# Runs from before the simulation scores: AUC and the Mann-Whitney p decide.
LOW_AUC = 0.6
MAX_P_VALUE = 0.01
LEGACY_RULE_TEXT = f"AUC < {LOW_AUC} or p > {MAX_P_VALUE}"


def too_few_heldout(heldout_images: int | None) -> bool:
    """True when the held-out split is known and smaller than MIN_EVAL_IMAGES."""
    return heldout_images is not None and heldout_images < MIN_EVAL_IMAGES


def is_low_correlation(correlation: float, interval_low: float, heldout_images: int | None) -> bool:
    """The low rule on a correlation, the lower end of its 95% interval and the held-out split's size
    (None: unknown, not judged)."""
    return correlation < LOW_CORRELATION or interval_low <= 0.0 or too_few_heldout(heldout_images)


def is_low_confidence(unit: UnitResult) -> bool:
    """True when the unit's quality figures are present and fail the rule (dead units excluded)."""
    if unit.dead:
        return False
    if unit.correlation is not None:
        low = unit.correlation_interval[0] if unit.correlation_interval else unit.correlation
        return is_low_correlation(unit.correlation, low, unit.heldout_images)
    if unit.auc is not None and unit.auc < LOW_AUC:
        return True
    return unit.p_value is not None and unit.p_value > MAX_P_VALUE


def unit_flag(unit: UnitResult) -> str:
    """"dead", "low" (low-confidence), "unknown" (no quality figure) or "" (trusted)."""
    if unit.dead:
        return "dead"
    if is_low_confidence(unit):
        return "low"
    if unit.auc is None and unit.p_value is None and unit.correlation is None:
        return "unknown"
    return ""


def flag_reason(unit: UnitResult) -> str:
    """Why a unit carries its flag, in words (the report's tooltip)."""
    flag = unit_flag(unit)
    if flag == "dead":
        return "constant activation over the whole probe set"
    if flag == "unknown":
        return "no quality figure in this run"
    if unit.correlation is None:
        return f"legacy rule: {LEGACY_RULE_TEXT}" if flag else ""
    if too_few_heldout(unit.heldout_images):
        return (f"only {unit.heldout_images} held-out images (under {MIN_EVAL_IMAGES}): too few to back the "
                f"correlation; use a larger probe set")
    if unit.heldout_constant:
        return "constant on the held-out images: correlation 0, AUPRC at chance"
    if flag == "low":
        low = unit.correlation_interval[0] if unit.correlation_interval else unit.correlation
        if unit.correlation < LOW_CORRELATION:
            return f"held-out correlation {unit.correlation:.3f} < {LOW_CORRELATION}"
        return f"95% interval of the correlation reaches 0 (lower end {low:.3f})"
    return ""


def live_summary(dead: Sequence[bool], **scores: Sequence[float | None]) -> dict[str, float | None]:
    """Per layer, for each named score: "<name>_mean" and "<name>_median" over the live (not dead)
    units that have a value, None when none has. The one per-layer summary: results.json's layer
    `scores`, `compare`, `eval labels`, the report's layer table and the demo use it, so a dead
    unit's r = 0 never pulls a layer's figure down."""
    dead = [bool(d) for d in dead]
    out: dict[str, float | None] = {}
    for name, values in scores.items():
        if len(values) != len(dead):
            raise ValueError(f"{name} has {len(values)} values for {len(dead)} units")
        live = np.asarray([float(v) for v, d in zip(values, dead) if not d and v is not None], dtype=np.float64)
        out[f"{name}_mean"] = float(np.mean(live)) if live.size else None
        out[f"{name}_median"] = float(np.median(live)) if live.size else None
    return out
