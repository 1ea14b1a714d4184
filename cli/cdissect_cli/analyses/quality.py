"""When a unit's label deserves little trust: the flags the report and analyses show.

The labeler gives each unit a quality figure (results.json `quality: {auc, p_value}`): the AUC
with which the label's CLIP image-text score separates the unit's top-activating probe images
from the rest, and the one-sided Mann-Whitney p-value of that separation. Unlike the raw
similarity (soft-WPMI has no fixed range, it depends on model and concept-set size), AUC means
the same everywhere: 0.5 is chance, 1.0 is perfect separation.

A unit is *low-confidence* when AUC < LOW_AUC or p > MAX_P_VALUE; it is *dead* when its
activation is constant over the probe set (then no label means anything).
"""
from __future__ import annotations

from cdissect_cli.analyses.run_results import UnitResult

LOW_AUC = 0.6
MAX_P_VALUE = 0.01
RULE_TEXT = f"AUC < {LOW_AUC} or p > {MAX_P_VALUE}"


def is_low_confidence(unit: UnitResult) -> bool:
    """True when the unit's quality figure is present and fails the rule (dead units excluded)."""
    if unit.dead:
        return False
    if unit.auc is not None and unit.auc < LOW_AUC:
        return True
    return unit.p_value is not None and unit.p_value > MAX_P_VALUE


def unit_flag(unit: UnitResult) -> str:
    """"dead", "low" (low-confidence), "unknown" (no quality figure) or "" (trusted)."""
    if unit.dead:
        return "dead"
    if is_low_confidence(unit):
        return "low"
    if unit.auc is None and unit.p_value is None:
        return "unknown"
    return ""
