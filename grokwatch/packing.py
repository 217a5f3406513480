"""Compact storage of per-sample values: integer arrays in a compressed npz blob.

Pathways are not stored as strings: per sample and layer only the kept expert ids, as uint16
with per-layer counts, which is ~10x smaller than the strings before compression.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class SampleArrays:
    """Per-sample values of one checkpoint, unpacked."""

    index: np.ndarray  # [N] int32 probe sample index
    loss: np.ndarray  # [N] float32
    consistency: np.ndarray  # [N] float32, NaN when flagged
    raw_cosine: np.ndarray  # [N] float32
    counts: np.ndarray  # [N, L] uint8 experts kept per layer
    expert_ids: np.ndarray  # [sum(counts)] uint16, row-major by sample then layer
    memorized_since: np.ndarray  # [N] int64, -1 when not memorized
    expert_usage: np.ndarray  # [L, K] float32 mean routing weight

    def experts(self, row: int) -> tuple[tuple[int, ...], ...]:
        """Kept expert ids per layer of one sample."""
        offsets = np.concatenate([[0], np.cumsum(self.counts.reshape(-1).astype(np.int64))])
        n_layers = self.counts.shape[1]
        start = row * n_layers
        return tuple(
            tuple(int(e) for e in self.expert_ids[offsets[start + i] : offsets[start + i + 1]])
            for i in range(n_layers)
        )

    def pathway(self, row: int) -> str:
        """The pathway string of one sample ("3,1,5-9,1-...")."""
        return "-".join(",".join(str(e) for e in layer) for layer in self.experts(row))


def pack_samples(
    index: Sequence[int],
    loss: Sequence[float],
    consistency: Sequence[float],
    raw_cosine: Sequence[float],
    experts: Sequence[Sequence[Sequence[int]]],
    memorized_since: Sequence[int],
    expert_usage: np.ndarray,
) -> bytes:
    """Pack one checkpoint's per-sample values into a compressed blob."""
    n_layers = len(experts[0]) if experts else 0
    counts = np.array([[len(layer) for layer in s] for s in experts], dtype=np.uint8).reshape(
        len(experts), n_layers
    )
    flat = [e for s in experts for layer in s for e in layer]
    buffer = io.BytesIO()
    np.savez_compressed(
        buffer,
        index=np.asarray(index, dtype=np.int32),
        loss=np.asarray(loss, dtype=np.float32),
        consistency=np.asarray(consistency, dtype=np.float32),
        raw_cosine=np.asarray(raw_cosine, dtype=np.float32),
        counts=counts,
        expert_ids=np.asarray(flat, dtype=np.uint16),
        memorized_since=np.asarray(memorized_since, dtype=np.int64),
        expert_usage=np.asarray(expert_usage, dtype=np.float32),
    )
    return buffer.getvalue()


def unpack_samples(blob: bytes) -> SampleArrays:
    """Unpack a blob written by pack_samples."""
    with np.load(io.BytesIO(blob)) as data:
        return SampleArrays(**{name: data[name] for name in SampleArrays.__dataclass_fields__})
