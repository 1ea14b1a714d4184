"""One dissection run, stage by stage, over the services (the orchestration of `cdissect run`).

  probe set   → registered manifest in the store (reused when unchanged)
  target      → the user's files (checkpoint, model folder, SAE) uploaded by digest, then
                CheckActivations: model, layers and features are checked on one probe image
                before any embedding or activation is computed (bad input fails here, exit 2)
  concepts    → EmbedConcepts: one text-embedding artifact
  per shard   → EmbedImageShard and ComputeShardActivations (all layers in one pass), both
                services at once, spread over all their endpoints
  per layer   → LabelLayer over the shard refs in dataset order
  results     → the labels artifacts (top concepts, top images, dead, quality) as a RunResult

Every stage counts how many of its artifacts already existed, which is what a rerun reports.
Nothing here decides where services run: it gets dispatchers and a store from `connection`.
"""
from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np
from cdissect.v1 import activations_pb2, embedder_pb2, labeler_pb2
from cdissect_common.artifacts import get_arrays
from cdissect_common.config import DEFAULTS
from cdissect_common.evaluation import (EVAL_FRACTION, EVAL_SEED, MIN_EVAL_IMAGES, check_heldout_split,
                                       heldout_count)
from cdissect_common.manifest import manifest_key
from cdissect_common.store import ObjectStore
from cdissect_common.vocabulary import SIMILARITY_DEFAULTS

from cdissect_cli.datasets import ensure_dataset, skipped_names
from cdissect_cli.dispatch import ShardDispatcher, ShardTask
from cdissect_cli.errors import CliError, InputError
from cdissect_cli.jobspec import JobSpec
from cdissect_cli.progress import RunProgress
from cdissect_cli.results import HeldOutQuality, LayerResult, RunResult
from cdissect_cli.user_inputs import ModelArgs, clip_args, features_message, model_files

STAGE_DATASET = "probe set"
STAGE_TEXT = "text embeddings"
STAGE_IMAGES = "image embeddings"
STAGE_ACTS = "activations"
STAGE_LABELS = "labels"


@dataclass
class ConceptWords:
    """The concept list a run labels with."""

    name: str
    sha256: str
    words: list[str]


def load_concepts(concept_set: str) -> ConceptWords:
    """Load a concept set by name or path through `cdissect_cli.concepts`, with a clear error."""
    from cdissect_cli.concepts import load_concept_set

    try:
        concepts = load_concept_set(concept_set)
    except (ValueError, LookupError, OSError) as err:
        raise InputError(str(err)) from err
    words = list(concepts.words)
    if not words:
        raise InputError(f"concept set {concept_set!r} has no concepts (only blank lines); put one concept per "
                         f"line, or use a shipped set (`cdissect concepts`)")
    return ConceptWords(name=concepts.name, sha256=concepts.sha256, words=words)


def _text_task(spec: JobSpec, clip: ModelArgs, concepts: ConceptWords) -> ShardTask:
    request = embedder_pb2.EmbedConceptsRequest(
        model=clip.model, model_file=clip.file, concepts=concepts.words, prompt_templates=list(spec.prompt_templates),
        precision=spec.clip_precision)
    return ShardTask(what=f"text embeddings of concept set {concepts.name!r} ({len(concepts.words)} concepts)",
                     call=lambda stub, timeout: stub.EmbedConcepts(request, timeout=timeout))


def activations_template(spec: JobSpec, store: ObjectStore) -> Any:
    """The activation request of the job without its shard; the user's files are uploaded by digest."""
    model, files = model_files(store, spec.target_model, spec.target_weights)
    request = activations_pb2.ComputeShardActivationsRequest(
        model=model, weights=spec.target_weights, layers=list(spec.layers), pooling=spec.pooling,
        token_pooling=spec.token_pooling, on_bad_image=spec.on_bad_image, model_files=files)
    if spec.features:
        request.features.CopyFrom(features_message(store, spec.features, spec.layers[0]))
    return request


def check_target(spec: JobSpec, template: Any, activations: ShardDispatcher) -> Any:
    """CheckActivations before any work: a bad model, layer, checkpoint or SAE is refused as
    INVALID_ARGUMENT, which ShardFailure reports as bad input (exit 2)."""
    task = ShardTask(what=f"checking target {spec.target_model!r} (layers {','.join(spec.layers)})",
                     call=lambda stub, timeout: stub.CheckActivations(template, timeout=timeout))
    return activations.call_one(task)


def _shard_tasks(spec: JobSpec, clip: ModelArgs, manifest: Any, progress: RunProgress,
                 template: Any) -> tuple[list[ShardTask], list[ShardTask]]:
    """Image-embedding and activation tasks, one each per shard."""
    image_tasks, act_tasks = [], []
    n = len(manifest.shards)
    for shard in manifest.shards:
        label = f"shard {shard.index + 1}/{n} of dataset {manifest.name!r}"
        image_request = embedder_pb2.EmbedImageShardRequest(
            model=clip.model, model_file=clip.file, shard=shard, precision=spec.clip_precision,
            on_bad_image=spec.on_bad_image)
        act_request = activations_pb2.ComputeShardActivationsRequest()
        act_request.CopyFrom(template)
        act_request.shard.CopyFrom(shard)
        image_tasks.append(ShardTask(
            what=f"image embeddings of {label}",
            call=lambda stub, timeout, r=image_request: stub.EmbedImageShard(r, timeout=timeout),
            on_done=lambda resp: progress.advance(STAGE_IMAGES, reused=resp.reused)))
        act_tasks.append(ShardTask(
            what=f"activations ({spec.target_model}: {','.join(spec.layers)}) of {label}",
            call=lambda stub, timeout, r=act_request: stub.ComputeShardActivations(r, timeout=timeout),
            on_done=lambda resp: progress.advance(STAGE_ACTS, reused=resp.reused >= len(spec.layers))))
    return image_tasks, act_tasks


def _eval_split_chosen(spec: JobSpec) -> bool:
    """True when the job sets its own held-out split (not the defaults)."""
    return (spec.eval_fraction, spec.eval_seed) != (EVAL_FRACTION, EVAL_SEED)


def small_split_note(spec: JobSpec, num_images: int) -> str | None:
    """The warning for a reference run (default split) on a probe set too small for a held-out split
    of MIN_EVAL_IMAGES: it still labels as the reference does, and every unit is flagged low
    (``analyses.quality``: the low rule counts the split's size)."""
    heldout = heldout_count(num_images, spec.eval_fraction, spec.eval_seed)
    if heldout >= MIN_EVAL_IMAGES:
        return None
    return (f"note: only {heldout} of the {num_images} probe images are held out (fraction {spec.eval_fraction}); "
            f"correlation and AUPRC need at least {MIN_EVAL_IMAGES}, so this run's scores are too uncertain to "
            f"trust and its units are flagged low. Use a larger probe set for meaningful scores")


def check_sizes(spec: JobSpec, num_images: int) -> None:
    """Parameters that need more probe images than there are fail here, before any RPC, naming the fix.

    A held-out split under MIN_EVAL_IMAGES is an error for `--select simulation` and for a job that
    chose its own split; the reference selection with the default split still runs (small_split_note)."""
    if spec.top_images > num_images:
        raise InputError(f"top_images={spec.top_images} exceeds the {num_images} images of probe set "
                         f"{spec.probe_set!r}; lower --top-images or use a larger probe set")
    top_k = spec.similarity_params.get("top_k", SIMILARITY_DEFAULTS[spec.similarity_function].get("top_k"))
    if top_k is not None and top_k > num_images:
        raise InputError(f"{spec.similarity_function} top_k={int(top_k)} exceeds the {num_images} images of probe "
                         f"set {spec.probe_set!r}; pass --param top_k=N with N <= {num_images}, or use a larger "
                         f"probe set")
    heldout = heldout_count(num_images, spec.eval_fraction, spec.eval_seed)
    if heldout < MIN_EVAL_IMAGES and (spec.select == "simulation" or _eval_split_chosen(spec)):
        try:
            check_heldout_split(num_images, spec.eval_fraction, spec.eval_seed)
        except ValueError as err:
            raise InputError(str(err)) from None
    if spec.select == "simulation" and top_k is not None and top_k > num_images - heldout:
        raise InputError(f"{spec.similarity_function} top_k={int(top_k)} exceeds the {num_images - heldout} images "
                         f"of the selection split ({num_images} minus {heldout} held out); lower --eval-fraction or "
                         f"pass --param top_k=N with N <= {num_images - heldout}")


def _check_skips(image_responses: list[Any], act_responses: list[Any]) -> None:
    """No service may drop an image of a registered shard: its rows would no longer be the manifest's.

    Current services refuse such a shard instead; an older service reports a skip, caught here.
    """
    for index, (img, act) in enumerate(zip(image_responses, act_responses)):
        if img.skipped_images or act.skipped_images:
            raise CliError(f"shard {index + 1}: a service skipped {max(img.skipped_images, act.skipped_images)} "
                           f"image(s) that registration accepted, so the rows would not match the probe set; "
                           f"update the services to this cdissect version and rerun")


def run_pipeline(spec: JobSpec, store: ObjectStore, dispatcher: Callable[[str], ShardDispatcher],
                 progress: RunProgress, max_image_pixels: int = DEFAULTS["max_image_pixels"]) -> RunResult:
    """Run every stage for `spec`; returns the labelled layers with artifact keys and reuse counts.

    Which images are skipped is decided once, when the probe set is registered; every row of
    every array then belongs to the manifest's image at that index.
    """
    started = time.monotonic()
    concepts = load_concepts(spec.concept_set)

    progress.stage(STAGE_DATASET, 1)
    manifest, dataset_reused = ensure_dataset(store, spec.probe_set, spec.shard_size, spec.on_bad_image,
                                              max_image_pixels)
    progress.advance(STAGE_DATASET, reused=dataset_reused)
    progress.done(STAGE_DATASET)
    check_sizes(spec, int(manifest.num_images))
    clip = clip_args(store, spec.clip_model)  # the user's files go up first (the target's: the template)
    note = small_split_note(spec, int(manifest.num_images))
    if note:
        progress.console.print(note, style="yellow", markup=False)
    template = activations_template(spec, store)
    check_target(spec, template, dispatcher("activations"))

    embedder, activations, labeler = dispatcher("embedder"), dispatcher("activations"), dispatcher("labeler")
    stop = threading.Event()
    progress.stage(STAGE_TEXT, 1)
    progress.stage(STAGE_IMAGES, len(manifest.shards))
    progress.stage(STAGE_ACTS, len(manifest.shards))
    image_tasks, act_tasks = _shard_tasks(spec, clip, manifest, progress, template)
    text_task = _text_task(spec, clip, concepts)
    text_task.on_done = lambda resp: progress.advance(STAGE_TEXT, reused=resp.reused)
    pool = ThreadPoolExecutor(max_workers=3, thread_name_prefix="stage")
    try:
        text_future = pool.submit(embedder.run, [text_task], stop)
        image_future = pool.submit(embedder.run, image_tasks, stop)
        act_future = pool.submit(activations.run, act_tasks, stop)
        errors = []
        for future in (text_future, image_future, act_future):
            try:
                future.result()
            except Exception as err:  # noqa: BLE001 - the first real failure is raised below
                errors.append(err)
    except BaseException:
        stop.set()  # an interrupt: start nothing new, retry nothing, let the caller stop services
        pool.shutdown(wait=False, cancel_futures=True)
        raise
    pool.shutdown(wait=True)
    if errors:
        real = [e for e in errors if "another part of the run failed" not in str(e)]
        raise (real or errors)[0]
    text_response = text_future.result()[0]
    image_responses, act_responses = image_future.result(), act_future.result()
    for stage in (STAGE_TEXT, STAGE_IMAGES, STAGE_ACTS):
        progress.done(stage)
    _check_skips(image_responses, act_responses)

    image_refs = [r.embeddings for r in image_responses]
    progress.stage(STAGE_LABELS, len(spec.layers))
    label_tasks = []
    for layer_index, layer in enumerate(spec.layers):
        act_refs = [r.activations[layer_index] for r in act_responses]
        request = labeler_pb2.LabelLayerRequest(
            layer=layer, image_embeddings=image_refs, text_embeddings=text_response.embeddings,
            activations=act_refs, similarity=spec.similarity_proto(), top_concepts=spec.top_concepts,
            top_images=spec.top_images, precision=spec.clip_precision, selection=spec.selection_proto(),
            evaluation=spec.evaluation_proto())
        label_tasks.append(ShardTask(
            what=f"labels of layer {layer!r} ({len(act_refs)} shards)",
            call=lambda stub, timeout, r=request: stub.LabelLayer(r, timeout=timeout),
            on_done=lambda resp: progress.advance(STAGE_LABELS, reused=resp.reused)))
    label_responses = labeler.run(label_tasks, stop)
    progress.done(STAGE_LABELS)

    layers = [_layer_result(store, layer, resp, [r.activations[i] for r in act_responses], image_refs,
                            text_response.embeddings)
              for i, (layer, resp) in enumerate(zip(spec.layers, label_responses))]
    timings = progress.timings()
    timings["total"] = round(time.monotonic() - started, 3)
    dataset = {"name": manifest.name, "digest": manifest.digest, "num_images": int(manifest.num_images),
               "store_url": store.url, "manifest_key": manifest_key(manifest.name),
               "shards": len(manifest.shards),
               "skipped_images": int(manifest.info.get("skipped_images", "0") or 0),
               "skipped_names": skipped_names(manifest)}
    uploaded = {"clip_model": clip.file_record()} if clip.file is not None else {}
    return RunResult(spec=spec, dataset=dataset, concepts_name=concepts.name, concepts_sha256=concepts.sha256,
                     words=concepts.words, layers=layers, timings=timings, reused=progress.summary(),
                     user_files=uploaded)


LABEL_ARRAYS = ("concept_ids", "scores", "top_images", "dead", "quality_auc", "quality_p", "similarity_rank",
                *HeldOutQuality.ARRAYS)


def _layer_result(store: ObjectStore, layer: str, response: Any, act_refs: list[Any], image_refs: list[Any],
                  text_ref: Any) -> LayerResult:
    """One layer's labels, read from the labels artifact the labeler stored (digest verified).

    The artifact (not the inline summary) is the source, because it also carries the labeler's
    per-unit quality figures: AUC and p-value of the label separating the unit's top images, and
    the held-out simulation scores (correlation with its interval, AUPRC).
    """
    arrays = get_arrays(store, response.labels)
    missing = [name for name in LABEL_ARRAYS if name not in arrays]
    if missing:
        raise CliError(f"the labels artifact {response.labels.key} of layer {layer!r} lacks {', '.join(missing)}; "
                       f"the labeler and the CLI run different versions: update both")
    return LayerResult(name=layer, labels_key=response.labels.key, activation_keys=[r.key for r in act_refs],
                       image_embedding_keys=[r.key for r in image_refs], text_embedding_key=text_ref.key,
                       concept_ids=np.asarray(arrays["concept_ids"]), scores=np.asarray(arrays["scores"]),
                       top_images=np.asarray(arrays["top_images"]), dead=np.asarray(arrays["dead"]),
                       quality_auc=np.asarray(arrays["quality_auc"], dtype=np.float64),
                       quality_p=np.asarray(arrays["quality_p"], dtype=np.float64),
                       similarity_rank=np.asarray(arrays["similarity_rank"]),
                       heldout=HeldOutQuality.from_arrays(arrays, int(response.heldout_images)))
