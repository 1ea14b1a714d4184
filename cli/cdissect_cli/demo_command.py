"""`cdissect demo`: the whole product path on the shapes world, scored against its known truth.

Generates (once, cached) a probe folder of the shapes world, runs exactly the `cdissect run`
path with the settings of `cdissect_shapes.demo.DEMO` (shapes CNN, shapes CLIP, the world's
concept set), then scores the labels with `cdissect_shapes.scores.score_run`: the final layer
and the planted units against their by-construction concepts, conv units against the attribute
that best separates their activations (read back from the run's activation artifacts).

Both label selections run by default (`--select` picks one): the reference's `similarity` and
`simulation`, on one connection (the local services start once); the second run reuses every
embedding and activation artifact of the first, so only the labeler works again, and its scores
read the same activation artifacts and manifest, which `DemoInputs` reads once per command. Beside the truth scores each run reports its labels' mean held-out
correlation per layer and the labeler stage's seconds.

Each selection also labels the latents of the shipped SAEs on one layer (`--features sae:PATH`):
a planted SAE whose latents are the fc readout per position (truth: the fc words) and a trained
one (truth: as conv units), so `sae_top1` can be set beside the conv units of that layer. Their
activations are computed once and reused by the second selection.
"""
from __future__ import annotations

import dataclasses
import json
import os
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Annotated, Any, Optional

import numpy as np
import typer
from cdissect_common.artifacts import get_arrays
from cdissect_common.manifest import load_manifest
from cdissect_common.store import ObjectStore
from rich.console import Console
from rich.table import Table

from cdissect_cli.analyses.quality import live_summary
from cdissect_cli.analyses.run_results import load_run
from cdissect_cli.cli_settings import cdissect_home, load_cli_settings
from cdissect_cli.connection import Connection
from cdissect_cli.errors import CliError, InputError
from cdissect_cli.jobspec import resolve_spec
from cdissect_cli.options import (
    DEFAULT_DEADLINE_S, ConfigOpt, ConnectionFlags, DeadlineOpt, RetryOpt, StoreOpt)
from cdissect_cli.pipeline import STAGE_LABELS
from cdissect_cli.results import LayerResult, RunResult
from cdissect_cli.run_command import execute_run, reuse_table
from cdissect_common.vocabulary import SELECTIONS, choices_text

SCORE_KEYS = ("final_top1", "final_top3", "planted_top1", "conv_selective_top1", "conv_selective_top3",
              "conv_top1", "conv_top3")
COUNT_KEYS = ("n_final", "n_planted", "n_conv", "n_conv_selective", "n_conv_dead")
SAE_KEYS = ("planted_sae_top1", "sae_top1", "sae_top3", "sae_selective_top1", "sae_selective_top3",
            "sae_layer_conv_selective_top1", "sae_layer_conv_top1")
SAE_COUNT_KEYS = ("n_sae", "n_sae_selective", "n_sae_dead", "n_sae_layer_conv_selective")
BOTH = "both"


def _shapes() -> tuple[dict, Any, Any]:
    """(DEMO settings, write_probe_folder, score_run) from the shapes world package (no torch)."""
    try:
        from cdissect_shapes.demo import DEMO
        from cdissect_shapes.generator import write_probe_folder
        from cdissect_shapes.scores import score_run
    except ImportError as err:
        raise CliError(f"the shapes world package is not installed ({err}); install shapes_world "
                       f"(make install) to run the demo") from err
    return DEMO, write_probe_folder, score_run


def demo_probe_folder(n_images: int, seed: int, write_probe_folder: Any) -> Path:
    """The cached probe folder of n shapes-world images; generated once into a temp dir, then renamed."""
    root = cdissect_home() / "demo"
    folder = root / f"shapes-{n_images}-seed{seed}"
    if (folder / "attributes.csv").is_file():
        return folder
    root.mkdir(parents=True, exist_ok=True)
    partial = root / f".{folder.name}.partial-{os.getpid()}"
    shutil.rmtree(partial, ignore_errors=True)
    write_probe_folder(partial, n_images, seed)
    try:
        os.rename(partial, folder)
    except OSError:
        shutil.rmtree(partial, ignore_errors=True)   # another demo finished the same folder first
        if not (folder / "attributes.csv").is_file():
            raise
    return folder


def _layer_activations(store: ObjectStore, activation_keys: Sequence[str]) -> np.ndarray:
    """[N, units] activations of a layer, concatenated from its per-shard artifacts in order."""
    parts = []
    for key in activation_keys:
        arrays = get_arrays(store, key)
        if len(arrays) != 1:
            raise CliError(f"activation artifact {key} holds {sorted(arrays)}; expected one array")
        parts.append(next(iter(arrays.values())))
    return np.concatenate(parts, axis=0)


class DemoInputs:
    """What the demo's scores read from the store, read once per command: a layer's activations
    per tuple of artifact keys and the probe attributes per dataset (both selections and their SAE
    runs score the same artifacts). The cached arrays are read-only."""

    def __init__(self, store: ObjectStore) -> None:
        self.store = store
        self._activations: dict[tuple[str, ...], np.ndarray] = {}
        self._attributes: dict[str, list[dict[str, str]]] = {}

    def activations(self, keys: Sequence[str]) -> np.ndarray:
        """[N, units] activations of a layer from its per-shard artifact keys (dataset order)."""
        keys = tuple(keys)
        if keys not in self._activations:
            array = _layer_activations(self.store, keys)
            array.setflags(write=False)
            self._activations[keys] = array
        return self._activations[keys]

    def attributes(self, dataset: str) -> list[dict[str, str]]:
        """The probe images' attributes in dataset order (from the dataset's manifest)."""
        if dataset not in self._attributes:
            self._attributes[dataset] = _attributes(self.store, dataset)
        return self._attributes[dataset]


def _labels_as_words(result: RunResult) -> dict[str, list[list[str]]]:
    return {layer.name: [[result.words[int(i)] for i in row if i >= 0] for row in layer.concept_ids]
            for layer in result.layers}


def _attributes(store: ObjectStore, dataset: str) -> list[dict[str, str]]:
    """The probe images' attributes, in dataset order, from the run's manifest."""
    manifest = load_manifest(store, dataset)
    attributes = [dict(entry.labels) for shard in manifest.shards for entry in shard.images]
    if not attributes or not all(attributes):
        raise CliError(f"the demo's probe set {dataset} carries no image attributes; delete "
                       f"{cdissect_home() / 'demo'} and rerun `cdissect demo` to regenerate it")
    return attributes


def score_labels(labels: dict[str, list[list[str]]], activation_keys: dict[str, Sequence[str]], dataset: str,
                 inputs: DemoInputs, settings: dict, score_run: Any) -> dict:
    """score_run over labelled layers: labels as words (best first), activations and attributes from the store."""
    special = {settings["final_layer"], settings.get("planted_layer")}
    activations = {name: inputs.activations(keys) for name, keys in activation_keys.items() if name not in special}
    return score_run(labels, activations, inputs.attributes(dataset), settings["final_layer"],
                     settings.get("planted_layer"))


def score_demo_run(result: RunResult, inputs: DemoInputs, settings: dict, score_run: Any) -> dict:
    """score_run over a finished run held in memory."""
    return score_labels(_labels_as_words(result), {layer.name: layer.activation_keys for layer in result.layers},
                        result.dataset["name"], inputs, settings, score_run)


def score_run_folder(run_dir: Path, store: ObjectStore, settings: dict, score_run: Any) -> dict:
    """score_run over a finished run folder (its results.json), e.g. one a cluster Job wrote."""
    run = load_run(run_dir)
    labels = {layer.name: [[word for word, _ in unit.top] for unit in layer.units] for layer in run.layers}
    return score_labels(labels, {layer.name: layer.activation_keys for layer in run.layers},
                        str(run.dataset.get("name", "")), DemoInputs(store), settings, score_run)


def _plain(value: Any) -> Any:
    """JSON-safe copy: NaN → None, numpy scalars → Python numbers, recursively."""
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, (np.floating, float)):
        return None if np.isnan(value) else float(value)
    if isinstance(value, np.integer):
        return int(value)
    return value


def _fmt(value: Any) -> str:
    return "n/a" if value is None or (isinstance(value, float) and np.isnan(value)) else f"{value:.3f}"


def heldout_correlation(result: RunResult) -> dict[str, float | None]:
    """Per layer: mean held-out correlation of the live units' labels (None without scores)."""
    return {layer.name: (live_summary(layer.dead, correlation=layer.heldout.correlation)["correlation_mean"]
                         if layer.heldout is not None else None) for layer in result.layers}


def sae_scores(base_spec: Any, settings: dict, conv_layer: dict, flags: ConnectionFlags, runs_dir: str | None,
               console: Console, show_progress: bool, connection: Any, inputs: DemoInputs) -> tuple[dict, list[str]]:
    """Label the planted and the trained SAE's latents on the SAE layer (on the open `connection`,
    with the base spec's selection); score them against the truth (store reads through `inputs`)."""
    from cdissect_shapes.scores import score_sae
    from cdissect_shapes.zoo import sae_path

    layer = settings["sae_layer"]
    out: dict = {}
    run_dirs = []
    for planted in (True, False):
        spec = dataclasses.replace(base_spec, layers=(layer,), features=f"sae:{sae_path(planted)}")
        outcome = execute_run(spec, flags, runs_dir, console, show_progress=show_progress,
                              connection=connection)
        labels = _labels_as_words(outcome.result)[layer]
        if planted:
            out["planted_sae_top1"] = score_sae(labels, None, None, planted=True)["top1"]
        else:
            acts = inputs.activations(outcome.result.layers[0].activation_keys)
            scores = score_sae(labels, acts, inputs.attributes(outcome.result.dataset["name"]), planted=False)
            out.update({"sae_top1": scores["top1"], "sae_top3": scores["top3"], "n_sae": scores["n"],
                        "sae_selective_top1": scores["selective_top1"], "sae_selective_top3": scores["selective_top3"],
                        "n_sae_selective": scores["n_selective"], "n_sae_dead": scores["n_dead"]})
        run_dirs.append(str(outcome.run_dir))
    out.update({"sae_layer_conv_selective_top1": conv_layer.get("selective_top1"),
                "sae_layer_conv_top1": conv_layer.get("top1"),
                "n_sae_layer_conv_selective": conv_layer.get("n_selective")})
    return out, run_dirs


def _demo_run(spec: Any, flags: ConnectionFlags, runs_dir: str | None, console: Console, show_progress: bool,
              settings: dict, score_run: Any, n_images: int, connection: Connection,
              inputs: DemoInputs) -> tuple[dict, Any]:
    """One run of the demo's job on the open `connection`, scored; (summary, outcome)."""
    outcome = execute_run(spec, flags, runs_dir, console, show_progress=show_progress,
                          connection=connection)
    scores = score_demo_run(outcome.result, inputs, settings, score_run)
    sae, sae_run_dirs = sae_scores(spec, settings, scores["per_layer"].get(settings["sae_layer"], {}), flags,
                                   runs_dir, console, show_progress=show_progress, connection=connection,
                                   inputs=inputs)
    scores.update(sae)
    summary = {"run_dir": str(outcome.run_dir), "report": str(outcome.report) if outcome.report else None,
               **{k: scores[k] for k in SCORE_KEYS}, **{k: scores[k] for k in COUNT_KEYS if k in scores},
               **{k: scores.get(k) for k in SAE_KEYS + SAE_COUNT_KEYS}, "sae_run_dirs": sae_run_dirs,
               "images": n_images, "select": spec.select,
               "heldout_correlation": heldout_correlation(outcome.result),
               "labels_seconds": outcome.result.timings.get(STAGE_LABELS)}
    (outcome.run_dir / "demo_scores.json").write_text(
        json.dumps(_plain({**summary, "per_layer": scores.get("per_layer", {})}), indent=1) + "\n")
    return summary, outcome


def demo(
    images: Annotated[Optional[int], typer.Option("--images", min=1, help="Probe images to generate "
                                                  "(default: the demo's full set).")] = None,
    select: Annotated[str, typer.Option("--select", help=f"Label selection(s) to run: {BOTH} | "
                                        f"{choices_text(SELECTIONS)}.")] = BOTH,
    as_json: Annotated[bool, typer.Option("--json", help="Print the scores as one JSON object (the default "
                                          "selection's keys at the top, the simulation's under "
                                          "\"simulation\").")] = False,
    runs_dir: Annotated[Optional[str], typer.Option(help="Where run folders go (env CDISSECT_RUNS_DIR).")] = None,
    config: ConfigOpt = None, store: StoreOpt = None,
    deadline: DeadlineOpt = DEFAULT_DEADLINE_S, retry_timeout: RetryOpt = None,
    no_progress: Annotated[bool, typer.Option("--no-progress", help="No progress bars.")] = False,
) -> None:
    """Run the whole pipeline offline on the shapes world and score its labels against the known truth."""
    console = Console(stderr=True)
    if select != BOTH and select not in SELECTIONS:
        raise InputError(f"--select {select!r} is not a selection; choose {BOTH} or one of: "
                         f"{', '.join(SELECTIONS)}")
    selections = SELECTIONS if select == BOTH else (select,)
    settings, write_probe_folder, score_run = _shapes()
    n_images = images or int(settings["n_images"])
    folder = demo_probe_folder(n_images, int(settings["seed"]), write_probe_folder)
    flags = ConnectionFlags(config=config, store=store, deadline_s=deadline, retry_s=retry_timeout)
    runs: dict[str, tuple[dict, Any]] = {}
    cli_settings = load_cli_settings(flags.config, runs_dir=runs_dir, **flags.overrides())
    with Connection(cli_settings, flags, console) as connection:        # one set of services for every run
        inputs = DemoInputs(connection.store)
        for mode in selections:
            spec = resolve_spec(None, {
                "target_model": settings["model"], "target_weights": settings.get("weights", ""),
                "layers": list(settings["layers"]), "probe_set": str(folder), "concept_set": settings["concept_set"],
                "clip_model": settings["clip_model"], "select": mode})
            runs[mode] = _demo_run(spec, flags, runs_dir, console, not no_progress and not as_json, settings,
                                   score_run, n_images, connection, inputs)
    default, simulation = SELECTIONS
    summary: dict[str, Any] = dict(runs[default][0]) if default in runs else {"images": n_images}
    if simulation in runs:
        summary[simulation] = runs[simulation][0]
    if as_json:
        typer.echo(json.dumps(_plain(summary)))
        return
    for mode, (_, outcome) in runs.items():
        console.print(reuse_table(outcome.result))
    table = Table(title="label quality against the shapes world's truth", show_edge=False)
    table.add_column("score")
    for mode in runs:
        table.add_column(f"{mode} selection", justify="right")
    table.add_column("units", justify="right")
    first = next(iter(runs.values()))[0]
    units = {"final": "n_final", "planted": "n_planted", "conv_selective": "n_conv_selective", "conv": "n_conv",
             "sae": "n_sae", "sae_selective": "n_sae_selective", "planted_sae": "n_final",
             "sae_layer_conv_selective": "n_sae_layer_conv_selective"}
    for key in SCORE_KEYS + SAE_KEYS:
        group = key.rsplit("_top", 1)[0]
        table.add_row(key, *(_fmt(run[0].get(key)) for run in runs.values()), str(first.get(units.get(group, ""), "")))
    for layer in first["heldout_correlation"]:
        table.add_row(f"held-out r {layer}", *(_fmt(run[0]["heldout_correlation"][layer])
                                                         for run in runs.values()), "")
    table.add_row("labeler stage (s)", *(_fmt(run[0]["labels_seconds"]) for run in runs.values()), "")
    Console().print(table)
    for mode, (_, outcome) in runs.items():
        typer.echo(f"run folder ({mode}): {outcome.run_dir}")
        if outcome.report is not None:
            typer.echo(f"report ({mode}): {outcome.report}")
