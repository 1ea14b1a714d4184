"""The Labeler gRPC servicer: adapts LabelLayer to ``streaming.StreamingLabeler`` and
EvaluateLabels to ``heldout.HeldOutRows``.

The layer's shard artifacts (image embeddings and activations, dataset order) are read one
shard at a time and fed to the streaming labeler, so the [images × concepts] matrix is never
held. The labels (``LayerLabels.to_arrays()``) are stored under a key made of every input
digest and parameter (selection and held-out split included); an existing labels artifact is
returned at once with ``reused=true``. EvaluateLabels scores given labels on the held-out split
of the same shards and answers inline (nothing is stored).
"""
from __future__ import annotations

import logging

import grpc
import numpy as np

from cdissect.v1 import common_pb2, labeler_pb2, labeler_pb2_grpc
from cdissect_common import artifacts, evaluation
from cdissect_common.errors import failed_precondition, invalid_argument
from cdissect_common.server import Registration, ServiceRuntime
from cdissect_common.vocabulary import PRECISIONS, SELECTIONS
from cdissect_labeler import similarity
from cdissect_labeler.heldout import HeldOutRows
from cdissect_labeler.intake import RunningRange, checked_tensor, normalise_embeddings
from cdissect_labeler.labels import LayerLabels
from cdissect_labeler.quality import quality_positive_count
from cdissect_labeler.streaming import StreamingLabeler

log = logging.getLogger("cdissect.labeler")
SERVICE = "labeler"
DEFAULT_FUNCTION = "soft_wpmi"
DEFAULT_TOP_CONCEPTS = 5
DEFAULT_TOP_IMAGES = 10


def _array(arrays: dict[str, np.ndarray], name: str, ref: common_pb2.ArtifactRef) -> np.ndarray:
    if name in arrays:
        return arrays[name]
    if len(arrays) == 1:
        return next(iter(arrays.values()))
    raise failed_precondition(f"artifact {ref.key} holds {sorted(arrays)}, not {name!r}; pass the refs the "
                              f"embedder/activations services returned")


def _selection(message: labeler_pb2.LabelSelection) -> dict:
    """select, and for simulation its candidates and rank_penalty, from the request (unset: the defaults);
    bad values: INVALID_ARGUMENT. The similarity selection uses neither, so they are not part of its
    labels key."""
    mode = message.mode or SELECTIONS[0]
    if mode not in SELECTIONS:
        raise invalid_argument(f"unknown selection {mode!r}; use one of {', '.join(SELECTIONS)}")
    try:
        candidates = evaluation.check_candidates(
            message.candidates if message.HasField("candidates") else evaluation.SIMULATION_CANDIDATES)
        penalty = evaluation.check_rank_penalty(
            message.rank_penalty if message.HasField("rank_penalty") else evaluation.SIMULATION_RANK_PENALTY)
    except ValueError as exc:
        raise invalid_argument(str(exc)) from None
    if mode != "simulation":
        return {"select": mode}
    return {"select": mode, "candidates": candidates, "rank_penalty": round(penalty, 7)}


def _evaluation(message: labeler_pb2.HeldOutEvaluation) -> dict:
    """eval_fraction, eval_seed, auprc_alpha from the request (unset: the defaults)."""
    try:
        fraction = evaluation.check_eval_fraction(
            message.fraction if message.HasField("fraction") else evaluation.EVAL_FRACTION)
        alpha = evaluation.check_alpha(message.alpha if message.HasField("alpha") else evaluation.AUPRC_ALPHA)
    except ValueError as exc:
        raise invalid_argument(str(exc)) from None
    if message.seed < 0:
        raise invalid_argument(f"the held-out split seed must be ≥ 0, got {message.seed}")
    # float32 on the wire: round so that 0.2 keys and scores as 0.2
    return {"eval_fraction": round(fraction, 7), "eval_seed": int(message.seed), "auprc_alpha": round(alpha, 7)}


def _check_shard_refs(images: list, acts: list, *extra: common_pb2.ArtifactRef) -> None:
    """Both shard lists present, equally long, every ref with a digest."""
    if not images or not acts:
        raise invalid_argument("image_embeddings and activations must each list the layer's shard artifacts "
                               "(one per shard, dataset order)")
    if len(images) != len(acts):
        raise invalid_argument(f"{len(images)} image-embedding shards but {len(acts)} activation shards; send "
                               f"one of each per dataset shard, in the same order")
    for ref in [*images, *acts, *extra]:
        if not ref.sha256:
            raise invalid_argument(f"artifact ref {ref.key or '(no key)'} has no sha256; pass the refs the "
                                   f"services returned")


def _num_images(images: list) -> int | None:
    """The probe set's size from the image refs' shapes, when every ref carries one."""
    return sum(int(r.shape[0]) for r in images) if all(len(r.shape) == 2 for r in images) else None


def _check_split_size(num_images: int | None, ev: dict) -> None:
    """A held-out split under MIN_EVAL_IMAGES fails before any shard is read."""
    if num_images is not None:
        try:
            evaluation.check_heldout_split(num_images, ev["eval_fraction"], ev["eval_seed"])
        except ValueError as exc:
            raise invalid_argument(str(exc)) from None


class LabelerServicer(labeler_pb2_grpc.LabelerServicer):
    """LabelLayer over the streaming labeler, EvaluateLabels over the held-out rows; no model to
    load, so it serves at once."""

    def __init__(self, runtime: ServiceRuntime) -> None:
        self.runtime = runtime
        self.settings = runtime.settings
        self.device = self.settings.device

    def _read(self, ref: common_pb2.ArtifactRef, name: str, what: str) -> np.ndarray:
        if not ref.key:
            raise invalid_argument(f"{what} has no key; pass the ArtifactRef a service returned")
        with self.runtime.metrics.stage("store_read"):
            arrays = artifacts.get_arrays(self.runtime.store, ref)
        array = _array(arrays, name, ref)
        self.runtime.metrics.add_bytes("read", array.nbytes)
        return array

    def LabelLayer(self, request: labeler_pb2.LabelLayerRequest,
                   context: grpc.ServicerContext) -> labeler_pb2.LabelLayerResponse:
        """Label every unit of one layer; returns the labels artifact and an inline summary."""
        layer = request.layer.strip()
        if not layer:
            raise invalid_argument("no layer name given; set 'layer' (it is recorded with the labels)")
        images, acts = list(request.image_embeddings), list(request.activations)
        _check_shard_refs(images, acts, request.text_embeddings)
        if not request.text_embeddings.key:
            raise invalid_argument("text_embeddings is missing; pass the ref EmbedConcepts returned")
        function = request.similarity.function or DEFAULT_FUNCTION
        params = dict(sorted(request.similarity.params.items()))
        try:
            resolved = similarity.resolve_params(function, params)
        except (ValueError, TypeError) as exc:
            raise invalid_argument(str(exc)) from None
        top_concepts = request.top_concepts or DEFAULT_TOP_CONCEPTS
        top_images = request.top_images or DEFAULT_TOP_IMAGES
        if top_concepts < 0 or top_images < 0:
            raise invalid_argument("top_concepts and top_images must be positive")
        precision = self._precision(request.precision)
        selection, ev = _selection(request.selection), _evaluation(request.evaluation)
        num_images = _num_images(images)
        if selection["select"] == "simulation":    # the reference selection labels small probe sets as before
            _check_split_size(num_images, ev)

        key = artifacts.content_key(
            "labels", layer=layer, image_embeddings=[r.sha256 for r in images], activations=[r.sha256 for r in acts],
            text_embeddings=request.text_embeddings.sha256, function=function,
            params={k: resolved[k] for k in sorted(resolved)}, top_concepts=top_concepts, top_images=top_images,
            precision=precision, **selection, **ev)
        existing = artifacts.find_artifact(self.runtime.store, key)
        if existing is not None:
            labels = LayerLabels.from_arrays(artifacts.get_arrays(self.runtime.store, existing))
            self.runtime.metrics.shard("reused")
            return labeler_pb2.LabelLayerResponse(labels=existing, units=_summary(labels), reused=True,
                                                  heldout_images=_heldout_images(existing))

        text = self._read(request.text_embeddings, artifacts.EMBEDDINGS, "text_embeddings")
        try:
            labeler = StreamingLabeler(function, params, text, device=self.device, precision=precision,
                                       num_images=num_images, max_top_images=max(100, top_images),
                                       **selection, **ev)
        except ValueError as exc:
            raise invalid_argument(str(exc)) from None
        log.info("LabelLayer %s: %d shards, %d concepts, %s, select=%s", layer, len(images), text.shape[0], function,
                 selection["select"])
        for i, (img, act) in enumerate(self._shards(images, acts)):
            with self.runtime.device_lock, self.runtime.metrics.stage("label_add_shard"):
                try:
                    labeler.add_shard(img, act)
                except ValueError as exc:
                    raise failed_precondition(f"shard {i}: {exc}") from None
            self.runtime.metrics.add_images(int(img.shape[0]))
        with self.runtime.device_lock, self.runtime.metrics.stage("label_finish"):
            try:
                labels = labeler.finish(top_concepts=top_concepts, top_images=top_images)
            except ValueError as exc:
                raise invalid_argument(str(exc)) from None
        producer = {"service": SERVICE, "layer": layer, "function": function, "precision": precision,
                    "code_version": artifacts.CODE_VERSION["labels"], "units": str(labels.num_units),
                    "select": selection["select"], "heldout_images": str(labeler.heldout_images)}
        with self.runtime.metrics.stage("store_write"):
            ref = artifacts.put_arrays(self.runtime.store, key, labels.to_arrays(), producer, primary="concept_ids")
        self.runtime.metrics.shard("computed")
        return labeler_pb2.LabelLayerResponse(labels=ref, units=_summary(labels), reused=False,
                                              heldout_images=labeler.heldout_images)

    def EvaluateLabels(self, request: labeler_pb2.EvaluateLabelsRequest,
                       context: grpc.ServicerContext) -> labeler_pb2.EvaluateLabelsResponse:
        """Score one label per unit on the layer's held-out split: correlation, AUPRC, AUC and p."""
        layer = request.layer.strip() or "(unnamed layer)"
        images, acts = list(request.image_embeddings), list(request.activations)
        _check_shard_refs(images, acts, request.text_embeddings)
        if not request.text_embeddings.key:
            raise invalid_argument("text_embeddings is missing; pass the ref EmbedConcepts returned for the label texts")
        precision = self._precision(request.precision)
        ev = _evaluation(request.evaluation)
        function = request.similarity.function or DEFAULT_FUNCTION
        try:
            params = similarity.resolve_params(function, dict(request.similarity.params.items()))
        except (ValueError, TypeError) as exc:
            raise invalid_argument(str(exc)) from None
        num_images = _num_images(images)
        _check_split_size(num_images, ev)
        text_raw = self._read(request.text_embeddings, artifacts.EMBEDDINGS, "text_embeddings")
        label_ids = np.asarray(request.label_ids, dtype=np.int64)
        if label_ids.size and (label_ids.max() >= text_raw.shape[0] or label_ids.min() < -1):
            raise invalid_argument(f"label_ids must be -1 or rows of the {text_raw.shape[0]} text embeddings, got "
                                   f"values {int(label_ids.min())}..{int(label_ids.max())}")
        device = similarity.resolve_device(self.device)
        try:
            text = normalise_embeddings(checked_tensor(text_raw, "text_embeddings", 2), device, precision)
            rows = HeldOutRows(ev["eval_fraction"], ev["eval_seed"], device, precision)
        except ValueError as exc:
            raise invalid_argument(str(exc)) from None
        value_range = RunningRange()
        for i, (img, act) in enumerate(self._shards(images, acts)):
            with self.runtime.device_lock, self.runtime.metrics.stage("evaluate_add_shard"):
                try:
                    I, A = checked_tensor(img, "image_embeddings", 2), checked_tensor(act, "activations", 2)
                    if A.shape[1] != label_ids.size:
                        raise ValueError(f"the layer has {A.shape[1]} units but label_ids lists {label_ids.size}; "
                                         f"send one label id per unit (-1 for none)")
                    if I.shape[1] != text.shape[1]:
                        raise ValueError(f"image embeddings have dimension {I.shape[1]} but the label embeddings "
                                         f"{text.shape[1]}; embed both with the run's CLIP")
                except ValueError as exc:
                    raise failed_precondition(f"shard {i}: {exc}") from None
                rows.add_shard(I, A)
                value_range.add(A)
            self.runtime.metrics.add_images(int(img.shape[0]))
        n_total = rows.seen
        _check_split_size(n_total, ev)
        share = quality_positive_count(function, params, n_total) / n_total
        n_pos = evaluation.positives_count(rows.n, ev["auprc_alpha"], share)
        with self.runtime.device_lock, self.runtime.metrics.stage("evaluate_finish"):
            scores, auc, pval = rows.score(text, label_ids, n_pos, with_auc=True)
        dead = value_range.dead().cpu().numpy()
        units = [labeler_pb2.UnitScores(
            unit=k, labelled=bool(label_ids[k] >= 0), correlation=float(scores.correlation[k]),
            correlation_low=float(scores.correlation_low[k]), correlation_high=float(scores.correlation_high[k]),
            auprc=float(scores.auprc[k]), auprc_base=float(scores.auprc_base[k]), auc=float(auc[k]),
            p_value=float(pval[k]), dead=bool(dead[k]), heldout_constant=bool(scores.constant[k]))
            for k in range(label_ids.size)]
        log.info("EvaluateLabels %s: %d units, %d held-out images", layer, label_ids.size, rows.n)
        return labeler_pb2.EvaluateLabelsResponse(units=units, heldout_images=rows.n, positives=n_pos)

    def _precision(self, value: str) -> str:
        precision = value or PRECISIONS[0]
        if precision not in PRECISIONS:
            raise invalid_argument(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
        return precision

    def _shards(self, images: list, acts: list):
        """(image embeddings, activations) of each shard in order, read one shard at a time."""
        for i, (img_ref, act_ref) in enumerate(zip(images, acts)):
            img = self._read(img_ref, artifacts.EMBEDDINGS, f"image_embeddings[{i}]")
            act = self._read(act_ref, artifacts.ACTIVATIONS, f"activations[{i}]")
            if img.shape[0] != act.shape[0]:
                raise failed_precondition(
                    f"shard {i}: {img.shape[0]} image embeddings but {act.shape[0]} activation rows; both must come "
                    f"from the same shard of a registered probe set")
            yield img, act

    def warmup(self) -> None:
        """Run a tiny labelling on the device so the first real call pays no start-up cost."""
        rng = np.random.default_rng(0)
        text = rng.normal(size=(3, 8)).astype(np.float32)
        labeler = StreamingLabeler(DEFAULT_FUNCTION, {"top_k": 2}, text, device=self.device, num_images=40)
        labeler.add_shard(rng.normal(size=(40, 8)).astype(np.float32), rng.normal(size=(40, 2)).astype(np.float32))
        labeler.finish(top_concepts=1, top_images=1)
        self.runtime.metrics.set_model_loaded(True)


def _summary(labels: LayerLabels) -> list[labeler_pb2.UnitLabel]:
    return [labeler_pb2.UnitLabel(unit=k, concept_ids=labels.concept_ids[k].tolist(),
                                  scores=labels.scores[k].tolist(), top_images=labels.top_images[k].tolist(),
                                  dead=bool(labels.dead[k]), correlation=float(labels.correlation[k]),
                                  auprc=float(labels.auprc[k])) for k in range(labels.num_units)]


def _heldout_images(ref: common_pb2.ArtifactRef) -> int:
    """The held-out count a stored labels artifact was scored on (its producer metadata)."""
    try:
        return int(ref.producer.get("heldout_images", "0"))
    except ValueError:
        return 0


def registrations(runtime: ServiceRuntime) -> tuple[list[Registration], LabelerServicer]:
    """The servicers of this service, for ``run_service``."""
    servicer = LabelerServicer(runtime)
    full_name = labeler_pb2.DESCRIPTOR.services_by_name["Labeler"].full_name
    return [Registration(servicer, labeler_pb2_grpc.add_LabelerServicer_to_server, full_name)], servicer
