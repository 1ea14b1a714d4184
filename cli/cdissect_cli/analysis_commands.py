"""The report and analysis commands: `report`, `eval final-layer`, `eval labels`, `explain compose`,
`analyze weights`, `compare`. `register(app)` adds them to the `cdissect` Typer app.

Every command reads a finished run folder and writes into it (report.html + assets/,
analyses/); none recomputes CLIP embeddings or activations. Commands that need vectors reach
the services the way `cdissect run` does (configured endpoints, `cdissect up`, or local
services started for the command), through `cdissect_cli.connection.Connection`.
"""
from __future__ import annotations

import contextlib
import dataclasses
from pathlib import Path
from typing import Annotated, Any, Iterator, Optional

import typer
from cdissect_common.model_specs import split_checkpoint
from rich.console import Console
from rich.table import Table

from cdissect_cli.analyses import compare as compare_mod
from cdissect_cli.analyses.quality import RULE_TEXT
from cdissect_cli.analyses.run_results import RunResults, analyses_dir, load_run
from cdissect_cli.errors import InputError
from cdissect_cli.options import (DEFAULT_DEADLINE_S, ConfigOpt, ConnectionFlags,
                                  DeadlineOpt, EmbedderOpt, LabelerOpt, RetryOpt, StoreOpt)

RunDirArg = Annotated[Path, typer.Argument(help="A finished run folder (holds results.json).")]
LayerOpt = Annotated[str, typer.Option("--layer", help="Layer name as in the run (e.g. fc, layer4).")]

eval_app = typer.Typer(no_args_is_help=True, help="Evaluate labels against known names.")
explain_app = typer.Typer(no_args_is_help=True, help="Explain units beyond one word.")
analyze_app = typer.Typer(no_args_is_help=True, help="Relate labels to the network's structure.")


def _console() -> Console:
    return Console(stderr=True)


@contextlib.contextmanager
def _services(run: RunResults, flags: ConnectionFlags, need: tuple[str, ...], console: Console,
              with_store: bool) -> Iterator[tuple[Any, RunResults]]:
    """(a Connection to the services in `need`, the run); with_store uses the run's store unless
    --store is given. A run whose CLIP was a local file but recorded no upload (older runs) gets
    it uploaded now, so the embedder never has to open a path of this machine."""
    from cdissect_cli.cli_settings import load_cli_settings
    from cdissect_cli.connection import Connection
    from cdissect_cli.user_inputs import clip_args

    upload_clip = "embedder" in need and run.clip_file is None and split_checkpoint(run.clip_model)[1] is not None
    with_store = with_store or upload_clip
    overrides = flags.overrides()
    if with_store and not overrides.get("store"):
        overrides["store"] = run.store_url or None
    settings = load_cli_settings(flags.config, **overrides)
    with Connection(settings, flags, console, need=need, open_object_store=with_store) as connection:
        if upload_clip:
            clip = clip_args(connection.store, run.clip_model, console)
            if clip.file is not None:
                run = dataclasses.replace(run, user_files={**run.user_files, "clip_model": clip.file_record()})
        yield connection, run


def _report_hint(run_dir: Path) -> None:
    """Tell the user how to see the new outputs in the report."""
    _console().print(f"[dim]`cdissect report {run_dir}` links these outputs from the HTML report[/dim]")


def _stub(connection, service: str):
    """A stub of a service (on its first endpoint; gRPC spreads calls over that endpoint's replicas)."""
    return connection.stub(service)


def report(run_dir: RunDirArg,
           no_images: Annotated[bool, typer.Option("--no-images", help="Skip the top-image thumbnails "
                                                   "(no object-store access).")] = False) -> None:
    """Write RUN_DIR/report.html (+ assets/) from a finished run; open it in any browser, offline."""
    from cdissect_cli.report import write_report

    path = write_report(run_dir, images=not no_images)
    typer.echo(str(path))


def final_layer(run_dir: RunDirArg, layer: LayerOpt = "fc",
                class_names: Annotated[str, typer.Option(
                    "--class-names", help="File with one class name per line (unit order), or a shipped "
                                          "list: imagenet, places365, ...")] = "imagenet",
                no_embed: Annotated[bool, typer.Option("--no-embed", help="Accuracy only: skip the cosine "
                                                       "metrics (no services needed).")] = False,
                nameable_only: Annotated[bool, typer.Option(
                    "--nameable-only", help="Score only units whose class some concept of the run's set "
                    "names (the paper's Table 2: 267 of 365 Places classes with Broden labels).")] = False,
                sentence_model: Annotated[Optional[str], typer.Option(
                    "--sentence-model", help="Sentence-embedding model for the second cosine, e.g. "
                    "sentence:/path/to/all-mpnet-base-v2 (default: sentence:all-mpnet-base-v2 when the "
                    "embedder can load it, else sentence:all-MiniLM-L6-v2).")] = None,
                config: ConfigOpt = None, embedder: EmbedderOpt = None, deadline: DeadlineOpt = DEFAULT_DEADLINE_S,
                retry_timeout: RetryOpt = None) -> None:
    """Top-1/top-5 accuracy of "label == class name" and mean label-class cosine (paper Tables 2/3)."""
    from cdissect_cli.analyses.class_names import load_class_names
    from cdissect_cli.analyses.final_layer import add_cosines, accuracy, write_final_layer
    from cdissect_cli.analyses.service_calls import SENTENCE_MODELS

    console = _console()
    run = load_run(run_dir)
    result = accuracy(run.layer(layer), load_class_names(class_names),
                      run.concept_words if nameable_only else None)
    if not no_embed:
        flags = ConnectionFlags(config=config, embedder=embedder, deadline_s=deadline, retry_s=retry_timeout)
        with _services(run, flags, ("embedder",), console, with_store=False) as (connection, run):
            add_cosines(result, _stub(connection, "embedder"), run.clip_model,
                        [sentence_model] if sentence_model else SENTENCE_MODELS, clip_file=run.clip_file)
    scored = f"{result.units} of {result.classes} units (nameable classes)" if nameable_only else f"{result.units} units"
    table = Table(title=f"final layer {layer}: {scored} vs {class_names}")
    table.add_column("metric")
    table.add_column("value", justify="right")
    table.add_row("top-1 accuracy", f"{100 * result.top1:.2f}% ({result.top1_hits}/{result.units})")
    table.add_row("top-5 accuracy", f"{100 * result.top5:.2f}% ({result.top5_hits}/{result.units})")
    if result.clip_cos_mean is not None:
        table.add_row(f"mean cos, CLIP {result.clip_model}", f"{result.clip_cos_mean:.4f}")
    if result.sentence_cos_mean is not None:
        table.add_row(f"mean cos, {result.sentence_model}", f"{result.sentence_cos_mean:.4f}")
    elif not no_embed:
        table.add_row("mean cos, sentence model", "unavailable: " + "; ".join(result.sentence_unavailable))
    Console().print(table)
    for path in write_final_layer(run_dir, result):
        typer.echo(str(path))
    _report_hint(run_dir)


def eval_labels(run_dir: RunDirArg,
                labels: Annotated[Optional[Path], typer.Option(
                    "--labels", help="CSV with columns layer,unit,description (another method's or run's "
                                     "descriptions); default: the run's own descriptions.csv.")] = None,
                config: ConfigOpt = None, store: StoreOpt = None, embedder: EmbedderOpt = None,
                labeler: LabelerOpt = None, deadline: DeadlineOpt = DEFAULT_DEADLINE_S,
                retry_timeout: RetryOpt = None) -> None:
    """Score any labels on the run's stored embeddings and activations: held-out correlation and AUPRC."""
    from cdissect_cli.analyses.eval_labels import read_labels, score_labels, write_eval_labels

    console = _console()
    run = load_run(run_dir)
    source = labels if labels is not None else Path(run_dir) / "descriptions.csv"
    wanted = read_labels(source)
    flags = ConnectionFlags(config=config, store=store, embedder=embedder, labeler=labeler,
                            deadline_s=deadline, retry_s=retry_timeout)
    with _services(run, flags, ("embedder", "labeler"), console, with_store=True) as (connection, run):
        rows, summary = score_labels(run, wanted, connection.store, _stub(connection, "embedder"),
                                     _stub(connection, "labeler"), deadline_s=deadline)
    table = Table(title=f"labels of {source} scored on {run.run_dir.name}'s held-out images")
    for column in ("layer", "units", "held-out images", "corr mean", "corr median", "AUPRC mean",
                   "AUPRC median", "low", "dead"):
        table.add_column(column, justify="left" if column == "layer" else "right")

    def num(value: float | None) -> str:
        return "—" if value is None else f"{value:.3f}"

    for layer, s in summary.items():
        table.add_row(layer, str(s["units_scored"]), str(s["heldout_images"]), num(s["correlation_mean"]),
                      num(s["correlation_median"]), num(s["auprc_mean"]), num(s["auprc_median"]), str(s["low"]),
                      str(s["dead"]))
    Console().print(table)
    name = "run" if labels is None else Path(labels).stem
    for path in write_eval_labels(run_dir, name, str(source), rows, summary):
        typer.echo(str(path))
    _report_hint(run_dir)


def compose(run_dir: RunDirArg, layer: LayerOpt,
            units: Annotated[Optional[str], typer.Option(
                "--units", help="Comma-separated unit indices (default: every unit of the layer).")] = None,
            top: Annotated[int, typer.Option("--top", min=1, help="Top concepts per unit to pair "
                                             "(paper: 100, i.e. 10,000 candidates per unit).")] = 100,
            config: ConfigOpt = None, store: StoreOpt = None, embedder: EmbedderOpt = None,
            labeler: LabelerOpt = None, deadline: DeadlineOpt = DEFAULT_DEADLINE_S,
            retry_timeout: RetryOpt = None) -> None:
    """Two-word explanations: pairs of each unit's top concepts, re-scored; the top-2 per unit."""
    from cdissect_cli.analyses.compose import explain_units, write_compose

    console = _console()
    run = load_run(run_dir)
    try:
        chosen = [int(u) for u in units.split(",") if u.strip()] if units else None
    except ValueError as err:
        raise InputError(f"--units must be comma-separated integers, got {units!r}.") from err
    layer_units = run.layer(layer)       # an unknown layer or unit fails before any service starts
    for unit in chosen or []:
        layer_units.unit(unit)
    flags = ConnectionFlags(config=config, store=store, embedder=embedder, labeler=labeler,
                            deadline_s=deadline, retry_s=retry_timeout)
    with _services(run, flags, ("embedder", "labeler"), console, with_store=True) as (connection, run):
        rows = explain_units(run, layer, chosen, top, connection.store, _stub(connection, "embedder"),
                             _stub(connection, "labeler"),
                             progress=lambda done, total: console.print(f"[dim]unit {done}/{total}[/dim]"))
    table = Table(title=f"compositional explanations, {layer} (top {top} concepts paired)")
    for column in ("unit", "label", "best composed", "second"):
        table.add_column(column)
    for row in rows:
        cells = [f"{w} ({s:.3f})" for w, s in row.best] + ["", ""]
        table.add_row(str(row.unit), row.label, cells[0], cells[1])
    Console().print(table)
    for path in write_compose(run_dir, layer, top, rows):
        typer.echo(str(path))
    _report_hint(run_dir)


def weights(run_dir: RunDirArg,
            from_layer: Annotated[str, typer.Option("--from", help="Input layer (e.g. layer4).")],
            to_layer: Annotated[str, typer.Option("--to", help="Output layer (e.g. fc).")],
            weights_file: Annotated[Path, typer.Option(
                "--weights", help="[out, in] weight matrix as .safetensors or .npy. Export e.g. with: "
                "python -c \"import torchvision as tv; from safetensors.torch import save_file; "
                "m = tv.models.resnet50(weights='DEFAULT'); "
                "save_file({'weight': m.fc.weight.detach().contiguous()}, 'fc.safetensors')\"")],
            tensor: Annotated[Optional[str], typer.Option("--tensor", help="Tensor name inside a "
                                                          "safetensors file with several.")] = None,
            class_names: Annotated[Optional[str], typer.Option(
                "--class-names", help="Compare with these names instead of the output layer's labels "
                                      "(as the paper does for fc: imagenet).")] = None,
            config: ConfigOpt = None, embedder: EmbedderOpt = None, deadline: DeadlineOpt = DEFAULT_DEADLINE_S,
            retry_timeout: RetryOpt = None) -> None:
    """Weights vs concepts: label similarity of connected units against weight size, with a plot."""
    from cdissect_cli.analyses.class_names import load_class_names
    from cdissect_cli.analyses.weights import analyze_weights, load_weight_matrix, write_weights

    console = _console()
    run = load_run(run_dir)
    matrix = load_weight_matrix(weights_file, tensor)
    names = load_class_names(class_names) if class_names else None
    if names is None:
        run.layer(to_layer)  # unknown layer: fail before starting services
    flags = ConnectionFlags(config=config, embedder=embedder, deadline_s=deadline, retry_s=retry_timeout)
    with _services(run, flags, ("embedder",), console, with_store=False) as (connection, run):
        result = analyze_weights(run, from_layer, to_layer, matrix, _stub(connection, "embedder"), names)
    table = Table(title=f"weights {from_layer} -> {to_layer} {result.shape}: mean CLIP cos of labels")
    table.add_column("top-k weights", justify="right")
    table.add_column("mean cos", justify="right")
    for k, value in zip(result.ks, result.mean_cos_top_k):
        table.add_row(str(k), f"{value:.4f}")
    Console().print(table)
    if result.pearson_weight_cos is not None:
        typer.echo(f"Pearson(weight, cos) = {result.pearson_weight_cos:.4f} (p = {result.pearson_weight_cos_p:.2g})")
    if result.pearson_similarity_max_weight is not None:
        typer.echo(f"Pearson(label similarity, largest outgoing weight) = "
                   f"{result.pearson_similarity_max_weight:.4f} (p = {result.pearson_similarity_max_weight_p:.2g})")
    for path in write_weights(run_dir, result):
        typer.echo(str(path))
    _report_hint(run_dir)


def compare(a: Annotated[Path, typer.Argument(help="Descriptions CSV (or run folder).")],
            b: Annotated[Optional[Path], typer.Argument(help="Second CSV (or run folder).")] = None,
            reference: Annotated[Optional[str], typer.Option(
                "--reference", help="Compare A with a shipped released result instead of B: "
                                    + ", ".join(compare_mod.REFERENCE_FILES))] = None,
            out: Annotated[Optional[Path], typer.Option(
                "--out", help="JSON output (default: A's run folder analyses/compare.json when A is "
                              "a run folder, else compare.json here).")] = None,
            show_changes: Annotated[int, typer.Option("--show-changes", min=0,
                                                      help="Changed labels to list per layer.")] = 5) -> None:
    """Label agreement and |Δ similarity| per layer between two result files."""
    if (b is None) == (reference is None):
        raise InputError("give either a second CSV B or --reference NAME (not both, not neither).")
    other = compare_mod.reference_csv(reference) if reference else b
    result = compare_mod.compare_files(a, other)
    table = Table(title=f"{a}  vs  {reference or other}")
    for column in ("layer", "matched", "agreement", "|Δsim| mean", "median", "max", "only in A", "only in B"):
        table.add_column(column, justify="right" if column != "layer" else "left")

    def num(value: float | None) -> str:
        return "—" if value is None else f"{value:.4g}"

    for layer in result.layers:
        table.add_row(layer.layer, str(layer.matched), f"{100 * layer.agreement:.2f}%",
                      num(layer.abs_delta_mean), num(layer.abs_delta_median), num(layer.abs_delta_max),
                      str(len(layer.only_in_a)), str(len(layer.only_in_b)))
    Console().print(table)
    if any(layer.scores_a or layer.scores_b for layer in result.layers):
        Console().print(_scores_table(result))
    for layer in result.layers:
        for change in layer.label_changes[:show_changes]:
            typer.echo(f"{layer.layer} unit {change['unit']}: {change['a']!r} -> {change['b']!r}")
    if out is None:
        out = (analyses_dir(a) / "compare.json") if Path(a).is_dir() else Path("compare.json")
    typer.echo(str(compare_mod.write_comparison(result, out)))


def _scores_table(result: compare_mod.Comparison) -> Table:
    """Held-out correlation and AUPRC (mean / median) of A and B per layer: one scale across runs."""
    table = Table(title="label scores, mean / median (held-out correlation, AUPRC; — = the file has none)")
    for column in ("layer", "corr A", "corr B", "AUPRC A", "AUPRC B"):
        table.add_column(column, justify="right" if column != "layer" else "left")

    def pair(scores: dict | None, name: str) -> str:
        if not scores or f"{name}_mean" not in scores:
            return "—"
        return f"{scores[f'{name}_mean']:.3f} / {scores[f'{name}_median']:.3f}"

    for layer in result.layers:
        table.add_row(layer.layer, pair(layer.scores_a, "correlation"), pair(layer.scores_b, "correlation"),
                      pair(layer.scores_a, "auprc"), pair(layer.scores_b, "auprc"))
    return table


def register(app: typer.Typer) -> None:
    """Add report, eval final-layer, explain compose, analyze weights and compare to `app`."""
    app.command("report", help=f"Write the HTML report of a run (low-confidence: {RULE_TEXT}).")(report)
    eval_app.command("final-layer")(final_layer)
    eval_app.command("labels")(eval_labels)
    explain_app.command("compose")(compose)
    analyze_app.command("weights")(weights)
    app.add_typer(eval_app, name="eval")
    app.add_typer(explain_app, name="explain")
    app.add_typer(analyze_app, name="analyze")
    app.command("compare")(compare)
