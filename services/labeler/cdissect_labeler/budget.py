"""Scratch-memory budgets of the labeler's computations, in one place (small, so tests and CI
stay small; on CUDA the streaming PMI tiles may use ``GPU_SCRATCH_BYTES``)."""
from __future__ import annotations

DENSE_CHUNK_BYTES = 64 * 2**20      # per neuron chunk of a dense similarity function
SCRATCH_BYTES = 32 * 2**20          # per block of the streaming labeler
GPU_SCRATCH_BYTES = 2**30           # per concept tile of the streaming PMI scorer on CUDA


def neurons_per_chunk(rows_bytes: int, total: int, budget: int = DENSE_CHUNK_BYTES) -> int:
    """How many neurons fit the budget when each needs rows_bytes (at least 1, at most total)."""
    return max(1, min(total, budget // max(1, rows_bytes)))
