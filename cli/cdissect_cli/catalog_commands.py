"""Discovery commands: `models`, `layers MODEL`, `concepts [NAME]`, `datasets add|list`.

Models and layers are asked of the services (the CLI never loads a model: no torch here);
concept sets are read with `cdissect_cli.concepts`; datasets live in the object store.
"""
from __future__ import annotations

from typing import Annotated, Any, Optional

import typer
from cdissect.v1 import activations_pb2, common_pb2
from cdissect_common.vocabulary import BAD_IMAGE_POLICIES, choices_text
from rich.console import Console
from rich.table import Table

from cdissect_cli.cli_settings import load_cli_settings
from cdissect_cli.connection import Connection
from cdissect_cli.datasets import dataset_summary, register_source
from cdissect_cli.dispatch import ShardTask
from cdissect_cli.errors import InputError
from cdissect_cli.jobspec import DEFAULT_SHARD_SIZE
from cdissect_cli.options import (
    ActivationsOpt, ConfigOpt, ConnectionFlags, EmbedderOpt, RetryOpt, StoreOpt)
from cdissect_cli.options import MODEL_CHECKPOINT_HELP
from cdissect_cli.user_inputs import model_files

datasets_app = typer.Typer(no_args_is_help=True, help="Register and list probe sets in the object store.")


def _connect(flags: ConnectionFlags, need: tuple[str, ...], open_store: bool = False) -> Connection:
    settings = load_cli_settings(flags.config, **flags.overrides())
    return Connection(settings, flags, Console(stderr=True), need=need, open_object_store=open_store)


def _ask(connection: Connection, service: str, what: str, call: Any) -> Any:
    """One unary RPC with the run's deadline and retries; failures name service and cause."""
    return connection.dispatcher(service).call_one(ShardTask(what=what, call=call))


MODEL_FAMILIES = (
    "timm:NAME[.TAG]      any timm architecture (pretrained weights, --weights none, or timm:NAME:/path/ckpt.safetensors)",
    "hf:ORG/NAME          any Hugging Face image model id (--weights REVISION or none), or hf:/path/to/folder",
    "clip:NAME            the image tower of any CLIP listed below (clip:open_clip:ARCH:TAG, clip:/path/clip.pt)",
)


def models(
    every: Annotated[bool, typer.Option("--all", help="Every name, e.g. all timm architectures and tags "
                                        "(thousands), not just a sensible subset.")] = False,
    config: ConfigOpt = None, embedder: EmbedderOpt = None, activations: ActivationsOpt = None,
    retry_timeout: RetryOpt = None,
) -> None:
    """Target models (activations service) and CLIP models (embedder service) that can be used by name."""
    flags = ConnectionFlags(config=config, embedder=embedder, activations=activations, deadline_s=60.0,
                            retry_s=retry_timeout)
    with _connect(flags, ("activations", "embedder")) as connection:
        targets = _ask(connection, "activations", "listing target models",
                       lambda stub, t: stub.ListModels(common_pb2.ListModelsRequest(all=every), timeout=t))
        clips = _ask(connection, "embedder", "listing CLIP models",
                     lambda stub, t: stub.ListModels(common_pb2.ListModelsRequest(), timeout=t))
    console = Console()
    for title, reply in (("target models (--model)", targets), ("CLIP models (--clip-model)", clips)):
        console.print(f"[bold]{title}[/bold]" + (f"  (served: {reply.served})" if reply.served else ""))
        for name in reply.models:
            console.print(f"  {name}", highlight=False)
    console.print("[bold]target families[/bold]")
    for line in MODEL_FAMILIES:
        console.print(f"  {line}", highlight=False)
    if not every:
        console.print("[dim]a subset of timm and open_clip names is shown: `cdissect models --all` lists every one[/dim]")
    console.print("[dim]your own checkpoint: --model ARCH:/path/to/checkpoint (the architecture above that it was "
                  "saved from), --clip-model /path/to/checkpoint[/dim]")


def layers(
    model: Annotated[str, typer.Argument(help=f"Target model name, or {MODEL_CHECKPOINT_HELP}.")],
    weights: Annotated[str, typer.Option(help="Weights enum name, DEFAULT, none, or a checkpoint file of MODEL.")] = "",
    config: ConfigOpt = None, activations: ActivationsOpt = None, retry_timeout: RetryOpt = None,
) -> None:
    """Layer names of a target model (usable in --layers), with their output shapes.

    Built from the architecture alone (random weights): no weights are downloaded.
    """
    from cdissect_common import model_specs

    flags = ConnectionFlags(config=config, activations=activations, deadline_s=300.0, retry_s=retry_timeout)
    try:
        spec = model_specs.parse_model(model, weights)
    except ValueError as err:
        raise InputError(str(err)) from err
    uploads = bool(spec.path)  # a checkpoint of any family travels through the store
    with _connect(flags, ("activations",), open_store=uploads) as connection:
        sent, files = model_files(connection.store, model, weights, configs_only=True) if uploads else (model, [])
        request = activations_pb2.ListLayersRequest(model=sent, weights=weights if sent == model else "",
                                                    model_files=files)
        reply = _ask(connection, "activations", f"listing the layers of {model!r}",
                     lambda stub, t: stub.ListLayers(request, timeout=t))
    table = Table(title=f"layers of {model}", show_edge=False)
    for column in ("layer", "kind", "output shape"):
        table.add_column(column)
    for info in reply.layers:
        table.add_row(info.name, info.kind, "x".join(str(d) for d in info.output_shape))
    Console().print(table)


def _concepts_api() -> Any:
    from cdissect_cli import concepts

    return concepts


def concepts(name: Annotated[Optional[str], typer.Argument(help="Concept set name or file.")] = None) -> None:
    """List the shipped concept sets, or show one: counts, dropped blank lines, duplicates."""
    api = _concepts_api()
    console = Console()
    if name is None:
        table = Table(title="concept sets (--concept-set NAME, or a file path)", show_edge=False)
        for column in ("name", "concepts", "blank lines dropped", "duplicates"):
            table.add_column(column)
        for set_name in api.available_concept_sets():
            cs = api.load_concept_set(set_name)
            table.add_row(set_name, str(len(cs.words)), str(cs.dropped_blank), str(len(cs.duplicates)))
        console.print(table)
        return
    try:
        cs = api.load_concept_set(name)
    except (ValueError, LookupError, OSError) as err:
        raise InputError(str(err)) from err
    console.print(f"[bold]{cs.name}[/bold]  sha256 {cs.sha256[:12]}", highlight=False)
    console.print(f"concepts: {len(cs.words)}   blank lines dropped: {cs.dropped_blank}   "
                  f"duplicates: {len(cs.duplicates)}")
    if cs.duplicates:
        shown = [f"{word!r} (entries {first + 1} and {repeat + 1})" for word, first, repeat in cs.duplicates[:10]]
        console.print("duplicated: " + ", ".join(shown) + (" ..." if len(cs.duplicates) > 10 else ""),
                      highlight=False)
    console.print("first: " + ", ".join(cs.words[:10]), highlight=False)


@datasets_app.command("add")
def datasets_add(
    name: Annotated[str, typer.Argument(help="Name to register the probe set under.")],
    source: Annotated[str, typer.Argument(help="Image folder (class subfolders allowed) or a built-in probe "
                                          "set name (broden, imagenet_val, ...).")],
    shard_size: Annotated[int, typer.Option(min=1, help="Images per shard.")] = DEFAULT_SHARD_SIZE,
    on_bad_image: Annotated[str, typer.Option(help=f"{choices_text(BAD_IMAGE_POLICIES)} unreadable images.")] = "error",
    config: ConfigOpt = None, store: StoreOpt = None,
) -> None:
    """Register a probe set: image shards and a manifest in the object store."""
    if on_bad_image not in BAD_IMAGE_POLICIES:
        raise InputError(f"--on-bad-image must be one of {', '.join(BAD_IMAGE_POLICIES)}, got {on_bad_image!r}")
    flags = ConnectionFlags(config=config, store=store)
    with _connect(flags, (), open_store=True) as connection:
        manifest, reused = register_source(connection.store, name, source, shard_size, on_bad_image,
                                           connection.settings.max_image_pixels)
        summary = dataset_summary(connection.store, manifest.name)
    verb = "unchanged" if reused else "registered"
    typer.echo(f"{verb} dataset {summary['name']}: {summary['images']} images in {summary['shards']} shard(s)"
               + (f", {summary['skipped']} unreadable image(s) skipped: {', '.join(summary['skipped_names'])}"
                  if summary["skipped"] else "")
               + f" (store {connection.store_url})")


@datasets_app.command("list")
def datasets_list(config: ConfigOpt = None, store: StoreOpt = None) -> None:
    """The probe sets registered in the object store."""
    from cdissect_common.manifest import list_datasets

    flags = ConnectionFlags(config=config, store=store)
    with _connect(flags, (), open_store=True) as connection:
        names = list_datasets(connection.store)
        rows = [dataset_summary(connection.store, n) for n in names]
    if not rows:
        typer.echo(f"no datasets registered in {connection.store_url}; add one with `cdissect datasets add NAME PATH`")
        return
    table = Table(title=f"datasets in {connection.store_url}", show_edge=False)
    for column in ("name", "images", "shards", "skipped", "source", "digest"):
        table.add_column(column)
    for row in rows:
        table.add_row(*(str(row[c]) for c in ("name", "images", "shards", "skipped", "source", "digest")))
    Console(width=200).print(table)


__all__ = ["datasets_app", "models", "layers", "concepts"]
