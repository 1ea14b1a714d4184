"""`cdissect run`: resolve the job, run the pipeline on the services, write the run folder.

`execute_run` is the one code path of a dissection; `cdissect demo` calls it too. The Typer
command only turns flags into a JobSpec and connection settings.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.console import Console
from cdissect_common.vocabulary import (BAD_IMAGE_POLICIES, POOLINGS, PRECISIONS, SIMILARITY_FUNCTIONS,
                                        TOKEN_POOLINGS, choices_text)
from rich.table import Table

from cdissect_cli.cli_settings import load_cli_settings
from cdissect_cli.connection import Connection
from cdissect_cli.dispatch import ShardFailure
from cdissect_cli.errors import CliError
from cdissect_cli.jobspec import JobSpec, load_spec_file, parse_param_flags, resolve_spec
from cdissect_cli.options import (
    DEFAULT_DEADLINE_S, ActivationsOpt, AuprcAlphaOpt, CandidatesOpt, ConfigOpt, ConnectionFlags,
    DeadlineOpt, EmbedderOpt, EvalFractionOpt, EvalSeedOpt, LabelerOpt, RankPenaltyOpt, RetryOpt, SelectOpt, StoreOpt,
    selection_overrides)
from cdissect_cli.options import MODEL_CHECKPOINT_HELP
from cdissect_cli.pipeline import run_pipeline
from cdissect_cli.progress import RunProgress
from cdissect_cli.results import RunResult, new_run_dir, write_run_folder

JOB = "Job"


@dataclass
class RunOutcome:
    """What a finished run produced."""

    run_dir: Path
    report: Path | None
    result: RunResult


def write_report_soft(run_dir: Path, console: Console) -> Path | None:
    """The teammate-owned HTML report; a missing or failing report is a note, not a failed run."""
    try:
        from cdissect_cli.report import write_report
    except ImportError as err:
        console.print(f"note: the HTML report is not available in this build ({err}); "
                      f"results are in descriptions.csv and results.json", style="yellow", markup=False)
        return None
    try:
        return Path(write_report(run_dir))
    except Exception as err:  # noqa: BLE001 - results are written; the report can be regenerated
        console.print(f"note: writing report.html failed ({type(err).__name__}: {err}); "
                      f"regenerate it with `cdissect report {run_dir}`", style="yellow", markup=False)
        return None


def reuse_table(result: RunResult) -> Table:
    """Per stage: how many artifacts were computed and how many reused."""
    table = Table(title="artifacts per stage", show_edge=False)
    for column in ("stage", "total", "computed", "reused", "seconds"):
        table.add_column(column, justify="left" if column == "stage" else "right")
    for stage, counts in result.reused.items():
        table.add_row(stage, str(counts["total"]), str(counts["computed"]), str(counts["reused"]),
                      f"{result.timings.get(stage, 0.0):.1f}")
    return table


def execute_run(spec: JobSpec, flags: ConnectionFlags, runs_dir: str | None, console: Console,
                show_progress: bool = True, connection: Connection | None = None) -> RunOutcome:
    """Run `spec` end to end and write its run folder; returns the folder and the result.

    Without `connection` the run opens its own and closes it; an open `connection` passed in is
    used and left open (its owner closes it: the demo runs all its jobs, and reads their
    artifacts, on one set of services).
    """
    settings = load_cli_settings(flags.config, runs_dir=runs_dir, **flags.overrides())
    owned = connection is None
    if owned:
        connection = Connection(settings, flags, console)
        connection.__enter__()
    try:
        with RunProgress(console=console, enabled=show_progress) as progress:
            try:
                result = run_pipeline(spec, connection.store, connection.dispatcher, progress,
                                      settings.max_image_pixels)
            except ShardFailure as err:
                note = connection.exit_note(err.service)
                if note is None:
                    raise
                raise CliError(f"{err}\n{note}") from err
        console.print(f"services: {connection.describe()}", style="dim", markup=False)
        run_dir = new_run_dir(Path(settings.runs_dir).expanduser(), spec.target_model)
        write_run_folder(run_dir, result)
        report = write_report_soft(run_dir, console)
    finally:
        if owned:
            connection.close()
    return RunOutcome(run_dir=run_dir, report=report, result=result)


def run(
    spec_file: Annotated[Optional[Path], typer.Option("--spec", help="YAML job spec; flags override its values.",
                                                      rich_help_panel=JOB)] = None,
    model: Annotated[Optional[str], typer.Option("--model", "-m", help=f"Target model: a name (resnet50, "
                                                 f"timm:NAME, hf:ORG/NAME, clip:NAME; default: resnet50), or "
                                                 f"{MODEL_CHECKPOINT_HELP}.", rich_help_panel=JOB)] = None,
    weights: Annotated[Optional[str], typer.Option(help="Target weights: enum name, DEFAULT, none, an hf: revision, "
                                                   "or a checkpoint file of the --model architecture.",
                                                   rich_help_panel=JOB)] = None,
    features: Annotated[Optional[str], typer.Option(help="Units from a sparse autoencoder on the one layer: "
                                                    "sae:/path/sae.safetensors[:relu|:jumprelu|:topk=K].",
                                                    rich_help_panel=JOB)] = None,
    layers: Annotated[Optional[str], typer.Option(help="Comma-separated layers (default: conv1,layer1,layer2,"
                                                  "layer3,layer4).", rich_help_panel=JOB)] = None,
    probe_set: Annotated[Optional[str], typer.Option("--probe-set", "--dataset", help="Registered dataset, "
                                                     "built-in probe set or image folder (default: broden).",
                                                     rich_help_panel=JOB)] = None,
    concept_set: Annotated[Optional[str], typer.Option("--concept-set", "--concepts", help="Concept set name or "
                                                       "file (default: 20k).", rich_help_panel=JOB)] = None,
    clip_model: Annotated[Optional[str], typer.Option("--clip-model", help="CLIP model name or checkpoint path "
                                                      "(default: ViT-B/16).", rich_help_panel=JOB)] = None,
    similarity: Annotated[Optional[str], typer.Option(help=f"{choices_text(SIMILARITY_FUNCTIONS)} "
                                                      "(default: soft_wpmi).",
                                                      rich_help_panel=JOB)] = None,
    param: Annotated[Optional[list[str]], typer.Option("--param", help="Similarity parameter name=value "
                                                       "(repeatable), e.g. top_k=100.", rich_help_panel=JOB)] = None,
    pooling: Annotated[Optional[str], typer.Option(help=f"{choices_text(POOLINGS)} (default: avg).",
                                                   rich_help_panel=JOB)] = None,
    token_pooling: Annotated[Optional[str], typer.Option(help=f"{choices_text(TOKEN_POOLINGS)} (default: cls).",
                                                         rich_help_panel=JOB)] = None,
    clip_precision: Annotated[Optional[str], typer.Option(help=f"{choices_text(PRECISIONS)} (default: float32).",
                                                          rich_help_panel=JOB)] = None,
    target_precision: Annotated[Optional[str], typer.Option(help="float32 | bfloat16: the target's forward pass "
                                                            "under bf16 autocast, for speed on GPUs (default: "
                                                            "float32).", rich_help_panel=JOB)] = None,
    prompt_template: Annotated[Optional[list[str]], typer.Option("--prompt-template", help="e.g. 'a photo of {}' "
                                                                 "(repeatable; default: raw concepts).",
                                                                 rich_help_panel=JOB)] = None,
    top_concepts: Annotated[Optional[int], typer.Option(help="Concepts kept per unit (default: 5).",
                                                        rich_help_panel=JOB)] = None,
    top_images: Annotated[Optional[int], typer.Option(help="Top images kept per unit (default: 10).",
                                                      rich_help_panel=JOB)] = None,
    on_bad_image: Annotated[Optional[str], typer.Option(help=f"{choices_text(BAD_IMAGE_POLICIES)} (default: error).",
                                                        rich_help_panel=JOB)] = None,
    shard_size: Annotated[Optional[int], typer.Option(help="Images per shard when a folder is registered "
                                                      "(default: 1000).", rich_help_panel=JOB)] = None,
    select: SelectOpt = None, candidates: CandidatesOpt = None, rank_penalty: RankPenaltyOpt = None,
    eval_fraction: EvalFractionOpt = None, eval_seed: EvalSeedOpt = None, auprc_alpha: AuprcAlphaOpt = None,
    runs_dir: Annotated[Optional[str], typer.Option(help="Where run folders go (env CDISSECT_RUNS_DIR; "
                                                    "default: runs).")] = None,
    config: ConfigOpt = None, store: StoreOpt = None, embedder: EmbedderOpt = None,
    activations: ActivationsOpt = None, labeler: LabelerOpt = None,
    deadline: DeadlineOpt = DEFAULT_DEADLINE_S, retry_timeout: RetryOpt = None,
    no_progress: Annotated[bool, typer.Option("--no-progress", help="No progress bars.")] = False,
) -> None:
    """Label every unit of the chosen layers with a concept; write descriptions.csv, results.json, report.html."""
    console = Console(stderr=True)
    file_values = load_spec_file(spec_file) if spec_file else None
    spec = resolve_spec(file_values, {
        "target_model": model, "target_weights": weights, "layers": layers, "probe_set": probe_set,
        "concept_set": concept_set, "clip_model": clip_model, "similarity_function": similarity,
        "similarity_params": parse_param_flags(param), "pooling": pooling, "token_pooling": token_pooling,
        "clip_precision": clip_precision, "target_precision": target_precision,
        "prompt_templates": prompt_template, "top_concepts": top_concepts,
        "top_images": top_images, "on_bad_image": on_bad_image, "shard_size": shard_size, "features": features,
        **selection_overrides(select, candidates, rank_penalty, eval_fraction, eval_seed, auprc_alpha)})
    flags = ConnectionFlags(config=config, store=store, embedder=embedder, activations=activations,
                            labeler=labeler, deadline_s=deadline, retry_s=retry_timeout)
    outcome = execute_run(spec, flags, runs_dir, console, show_progress=not no_progress)
    console.print(reuse_table(outcome.result))
    units = sum(layer.units for layer in outcome.result.layers)
    console.print(f"labelled {units} units in {len(outcome.result.layers)} layer(s)")
    skipped = outcome.result.dataset.get("skipped_names", [])
    if skipped:
        shown = ", ".join(skipped[:20]) + (f" ... ({len(skipped) - 20} more)" if len(skipped) > 20 else "")
        console.print(f"skipped {len(skipped)} unreadable image(s) of the probe set (on_bad_image=skip): {shown}",
                      style="yellow", highlight=False, markup=False)
    typer.echo(f"run folder: {outcome.run_dir}")
    if outcome.report is not None:
        typer.echo(f"report: {outcome.report}")
