"""Devices of the torch-running services: names (cpu, cuda, cuda:N, auto), default batch sizes, and
the last step of the prefetch pipeline (stacking, pinned memory, non-blocking copies).

cdissect_common never imports torch at import time (the CLI depends on this package and must
stay torch-free), so torch is imported inside the functions, which only the services call.
"""
from __future__ import annotations

import ctypes
import logging
import threading
from typing import Any

log = logging.getLogger("cdissect.devices")


def resolve_device(device: Any) -> Any:
    """A torch.device for a name ('auto' or None: CUDA when available, else CPU).

    Asking for CUDA on a machine without it is an error that names the fix, not a silent
    fallback: a run that was meant for a GPU should not quietly take hours on a CPU.
    """
    import torch

    if isinstance(device, torch.device):
        return device
    text = str(device or "auto").strip().lower()
    if text == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if text.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"device {device!r} requested but CUDA is not available here; use 'cpu' or 'auto'")
    try:
        return torch.device(text)
    except RuntimeError as exc:
        raise ValueError(f"unknown device {device!r}; use 'cpu', 'cuda', 'cuda:N' or 'auto'") from exc


# Images per forward pass when CDISSECT_BATCH_SIZE is not set, by device type: a CPU gains
# nothing from larger batches; a GPU needs hundreds of images in flight to keep busy (ViT-B/16
# fp16 or ResNet-50 at 256 images take a few GiB).
DEFAULT_BATCH_SIZES = {"cpu": 64, "cuda": 256}


def default_batch_size(device: Any) -> int:
    """The default images per forward pass on ``device`` (a torch.device or a name)."""
    kind = getattr(device, "type", None) or str(device).split(":")[0]
    return DEFAULT_BATCH_SIZES.get(kind, DEFAULT_BATCH_SIZES["cpu"])


class DeviceBatch:
    """A batch of prepared images on its way to the device (made by ``BatchCollator``).

    On CPU it is just the stacked tensor. On CUDA the images were stacked into page-locked
    host memory and copied to the device with a non-blocking copy on a side stream, on the
    prefetch assembler thread, so the copy overlaps the forward pass of the batch before;
    ``tensor()`` makes the caller's stream wait for that copy and returns the device tensor.
    """

    def __init__(self, data: Any, ready: Any = None, host: Any = None) -> None:
        self.data = data
        self.ready = ready
        self.host = host  # the pinned source, kept alive until the copy is known to be done

    def __len__(self) -> int:
        return int(self.data.shape[0])

    def tensor(self) -> Any:
        """The batch on the device, safe to use on the current stream."""
        if self.ready is not None:
            import torch

            stream = torch.cuda.current_stream(self.data.device)
            stream.wait_event(self.ready)
            self.data.record_stream(stream)  # the allocator must not reuse it before this stream is done
            self.ready = self.host = None
        return self.data


class BatchCollator:
    """``collate`` for ``prefetch.prefetched_batches``: a list of [3, H, W] tensors -> ``DeviceBatch``.

    On CPU: ``torch.stack`` (the same tensor as the serial path). On CUDA: stacked into pinned
    memory and copied with ``non_blocking=True`` on a dedicated stream (see ``DeviceBatch``).
    """

    def __init__(self, device: Any) -> None:
        import torch

        self.device = resolve_device(device)
        self.cuda = self.device.type == "cuda"
        self.stream = torch.cuda.Stream(self.device) if self.cuda else None

    def __call__(self, tensors: list[Any]) -> DeviceBatch:
        import torch

        if not self.cuda:
            return DeviceBatch(torch.stack(tensors))
        first = tensors[0]
        host = torch.empty((len(tensors), *first.shape), dtype=first.dtype, pin_memory=True)
        torch.stack(tensors, out=host)
        with torch.cuda.stream(self.stream):
            data = host.to(self.device, non_blocking=True)
            ready = torch.cuda.Event()
            ready.record(self.stream)
        return DeviceBatch(data, ready, host)


_OPENMP_LIBRARIES = ("libgomp", "libiomp", "libomp")
_openmp: list[Any] = []  # [the OpenMP runtime torch loaded, or None], looked up once
_openmp_lock = threading.Lock()


def _openmp_runtime() -> Any:
    with _openmp_lock:
        if not _openmp:
            path = None
            try:
                with open("/proc/self/maps") as maps:
                    path = next((line.split()[-1] for line in maps
                                 if any(name in line.rsplit("/", 1)[-1] for name in _OPENMP_LIBRARIES)), None)
            except OSError:
                pass
            try:
                _openmp.append(ctypes.CDLL(path) if path else None)
            except OSError:
                _openmp.append(None)
        return _openmp[0]


def one_torch_thread() -> None:
    """Make torch's CPU kernels called from this thread run on this thread alone.

    For the prefetch workers: they prepare one image each, in parallel, so each must not also
    fan its small tensor ops (ToTensor, Normalize, resize) out over every core. On a busy
    machine that fan-out cost 10-40 ms per image instead of 0.3-1.5 ms (each op waits for
    helper threads the scheduler has not run). ``torch.set_num_threads(1)`` would not do:
    it also becomes the default of every thread started later, such as the gRPC handler threads
    that run the forward passes. OpenMP's own ``omp_set_num_threads`` sets the calling thread's
    value only. torch initialises a thread's value at its first call, so that call comes first.
    Without an OpenMP runtime in the process (another torch build) this does nothing.
    """
    import torch

    torch.get_num_threads()  # torch's per-thread initialisation, which would otherwise undo this later
    runtime = _openmp_runtime()
    if runtime is None:
        log.debug("no OpenMP runtime found; prefetch workers use torch's default thread count")
        return
    runtime.omp_set_num_threads(1)
