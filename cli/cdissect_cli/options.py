"""Typer option declarations shared by several commands (connection, store, timeouts).

Every connection option defaults to None so that an unset flag falls through to the
`CDISSECT_*` environment, then the config file (see `cli_settings.load_cli_settings`).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Optional

import typer
from cdissect_common import evaluation
from cdissect_common.vocabulary import SELECTIONS, choices_text

CONNECTION = "Connection"
LABELS = "Label selection and scores"
# How a target model takes a user's checkpoint (run --model, layers MODEL): a checkpoint holds the
# weights, not the network, so its architecture is named in front of it.
MODEL_CHECKPOINT_HELP = ("ARCH:/path/to/checkpoint for your own weights of a known architecture, e.g. "
                         "resnet50:/ckpt/r50.pth (a checkpoint holds weights, not the network)")

ConfigOpt = Annotated[Optional[Path], typer.Option(
    "--config", help="YAML config file (default: CDISSECT_CONFIG or ~/.config/cdissect/config.yaml).",
    rich_help_panel=CONNECTION)]
StoreOpt = Annotated[Optional[str], typer.Option(
    "--store", help="Object store URL: file:///folder or s3://bucket (env CDISSECT_STORE).",
    rich_help_panel=CONNECTION)]
EmbedderOpt = Annotated[Optional[str], typer.Option(
    "--embedder", help="Embedder endpoint(s), comma-separated host:port (env CDISSECT_EMBEDDER); "
                       "none = local services.", rich_help_panel=CONNECTION)]
ActivationsOpt = Annotated[Optional[str], typer.Option(
    "--activations", help="Activations endpoint(s), comma-separated (env CDISSECT_ACTIVATIONS).",
    rich_help_panel=CONNECTION)]
LabelerOpt = Annotated[Optional[str], typer.Option(
    "--labeler", help="Labeler endpoint(s), comma-separated (env CDISSECT_LABELER).",
    rich_help_panel=CONNECTION)]
DeadlineOpt = Annotated[float, typer.Option(
    "--deadline", min=0.1, help="Deadline of each shard RPC in seconds (model loading included).",
    rich_help_panel=CONNECTION)]
RetryOpt = Annotated[Optional[float], typer.Option(
    "--retry-timeout", min=0.0,
    help="How long to keep retrying a call that fails with UNAVAILABLE/DEADLINE_EXCEEDED, in seconds from the "
         "failure (env CDISSECT_RETRY_TIMEOUT; default 90). Local services get the same budget for the store.",
    rich_help_panel=CONNECTION)]

SelectOpt = Annotated[Optional[str], typer.Option(
    "--select", help=f"{choices_text(SELECTIONS)}: the similarity's top-1 (the reference, default) or its top "
                     f"candidates re-ranked by correlation on the selection split.", rich_help_panel=LABELS)]
CandidatesOpt = Annotated[Optional[int], typer.Option(
    "--candidates", help=f"--select simulation: similarity top-N re-ranked (default {evaluation.SIMULATION_CANDIDATES}).",
    rich_help_panel=LABELS)]
RankPenaltyOpt = Annotated[Optional[float], typer.Option(
    "--rank-penalty", help=f"--select simulation: correlation a candidate must gain per place it climbs "
                           f"(default {evaluation.SIMULATION_RANK_PENALTY}; 0 = pure correlation).",
    rich_help_panel=LABELS)]
EvalFractionOpt = Annotated[Optional[float], typer.Option(
    "--eval-fraction", help=f"Share of the probe set held out for correlation/AUPRC, in (0, "
                            f"{evaluation.MAX_EVAL_FRACTION}] (default {evaluation.EVAL_FRACTION}).",
    rich_help_panel=LABELS)]
EvalSeedOpt = Annotated[Optional[int], typer.Option(
    "--eval-seed", help=f"Seed of the held-out split (default {evaluation.EVAL_SEED}).", rich_help_panel=LABELS)]
AuprcAlphaOpt = Annotated[Optional[float], typer.Option(
    "--auprc-alpha", help=f"Top share of held-out images that are a unit's AUPRC positives, at least the "
                          f"function's own top set (default {evaluation.AUPRC_ALPHA}).", rich_help_panel=LABELS)]


def selection_overrides(select: str | None, candidates: int | None, rank_penalty: float | None,
                        eval_fraction: float | None, eval_seed: int | None,
                        auprc_alpha: float | None) -> dict[str, Any]:
    """The label-selection flags as job-spec overrides (None = not given)."""
    return {"select": select, "candidates": candidates, "rank_penalty": rank_penalty,
            "eval_fraction": eval_fraction, "eval_seed": eval_seed, "auprc_alpha": auprc_alpha}


DEFAULT_DEADLINE_S = 900.0


@dataclass(frozen=True)
class ConnectionFlags:
    """The connection flags of one command invocation, as given (None = not given)."""

    config: Path | None = None
    store: str | None = None
    embedder: str | None = None
    activations: str | None = None
    labeler: str | None = None
    deadline_s: float = DEFAULT_DEADLINE_S
    retry_s: float | None = None  # None: the retry_timeout setting

    def overrides(self) -> dict[str, Any]:
        """Setting overrides for the common config loader."""
        return {"store": self.store, "embedder": self.embedder, "activations": self.activations,
                "labeler": self.labeler, "retry_timeout": self.retry_s}
