"""Pairwise pathway edit distances within a group (method.md, 'Per group').

rapidfuzz's native, multi-threaded Levenshtein, never a Python DP loop; numpy + rapidfuzz only.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Sequence

import numpy as np
from rapidfuzz import process
from rapidfuzz.distance import Levenshtein

# Expert ids are >= 0, so -1 can never be confused with an expert in the expert-level sequence.
LAYER_BOUNDARY = -1

ExpertPath = tuple[tuple[int, ...], ...]
GroupDistances = tuple[float, float, float, tuple[float, ...], int]


def probe_seed(probe_hash: str, group: str) -> int:
    """Return a stable 63-bit seed derived from the probe hash and the group name."""
    # sha256 rather than hash(): Python salts str hashes per process, and the pairs must be
    # identical across restarts and machines.
    digest = hashlib.sha256(f"grokwatch-pairs\0{probe_hash}\0{group}".encode()).digest()
    return int.from_bytes(digest[:8], "little") >> 1


def _draw_distinct(bit_generator: np.random.PCG64, count: int, total: int) -> np.ndarray:
    """Draw `count` distinct integers from [0, total) in a numpy-version-independent way."""
    # Only the raw PCG64 stream is stable across numpy releases (Generator methods may change
    # algorithm), and the pairs must stay the same for the whole life of a run's store.
    drawn = np.empty(0, dtype=np.uint64)
    while True:
        raw = bit_generator.random_raw(max(2 * (count - drawn.size), 1024))
        # Modulo bias is below total / 2**64, i.e. nil for any realistic group.
        drawn = np.concatenate([drawn, raw % np.uint64(total)])
        _, first = np.unique(drawn, return_index=True)
        drawn = drawn[np.sort(first)]
        if drawn.size >= count:
            return drawn[:count].astype(np.int64)


def pair_sample(n: int, bound: int, seed: int) -> tuple[np.ndarray, np.ndarray] | None:
    """Return a fixed random set of C(bound, 2) pairs i<j (sorted), or None when n <= bound."""
    if bound < 2:
        raise ValueError(f"pair bound must be at least 2, got {bound}")
    if n <= bound:
        return None
    total = n * (n - 1) // 2
    need = bound * (bound - 1) // 2
    bit_generator = np.random.PCG64(seed)
    if need <= total // 2:
        linear = np.sort(_draw_distinct(bit_generator, need, total))
    else:
        # Just above the bound almost every pair is kept: draw the few to leave out instead,
        # which avoids a long coupon-collector tail.
        excluded = _draw_distinct(bit_generator, total - need, total)
        linear = np.setdiff1d(np.arange(total, dtype=np.int64), excluded, assume_unique=True)
    # Row i of the upper triangle starts at linear index i*n - i*(i+1)/2; exact integer unranking.
    rows = np.arange(n - 1, dtype=np.int64)
    row_start = rows * n - rows * (rows + 1) // 2
    first = np.searchsorted(row_start, linear, side="right") - 1
    second = linear - row_start[first] + first + 1
    return first, second


def expert_sequence(experts: ExpertPath) -> list[int]:
    """Return the expert-level form of a pathway: expert ids with LAYER_BOUNDARY between layers."""
    sequence: list[int] = []
    for layer_index, layer in enumerate(experts):
        if layer_index:
            sequence.append(LAYER_BOUNDARY)
        sequence.extend(layer)
    return sequence


def _pair_distances(
    items: Sequence[Sequence[object]],
    first: np.ndarray,
    second: np.ndarray,
    all_pairs: bool,
    workers: int,
) -> np.ndarray:
    """Levenshtein distance of items[first[p]] and items[second[p]] for every pair p, as int64."""
    if all_pairs:
        # Passing the same object as queries and choices lets rapidfuzz compute one triangle.
        matrix = process.cdist(
            items, items, scorer=Levenshtein.distance, dtype=np.int32, workers=workers
        )
        return matrix[first, second].astype(np.int64)
    # Sampled pairs: evaluate only those, never the full N x N matrix.
    queries = [items[i] for i in first.tolist()]
    choices = [items[j] for j in second.tolist()]
    values = process.cpdist(
        queries, choices, scorer=Levenshtein.distance, dtype=np.int32, workers=workers
    )
    return np.asarray(values, dtype=np.int64)


def group_distances(
    pathways: list[str],
    experts: list[ExpertPath],
    pair_bound: int,
    seed: int,
    workers: int = -1,
) -> GroupDistances:
    """Return (char, expert-level, normalised, per-layer) mean pair distances and the pair count."""
    n = len(pathways)
    if len(experts) != n:
        raise ValueError(f"{n} pathways but {len(experts)} expert lists")
    n_layers = len(experts[0]) if experts else 0
    if n < 2:
        nan = math.nan
        return nan, nan, nan, (nan,) * n_layers, 0
    if any(len(path) != n_layers for path in experts):
        raise ValueError("every pathway in a group must have the same number of layers")

    pairs = pair_sample(n, pair_bound, seed)
    all_pairs = pairs is None
    first, second = np.triu_indices(n, k=1) if pairs is None else pairs

    def distances(items: Sequence[Sequence[object]]) -> np.ndarray:
        return _pair_distances(items, first, second, all_pairs, workers)

    char = distances(pathways)
    expert_level = distances([expert_sequence(path) for path in experts])
    lengths = np.array([len(s) for s in pathways], dtype=np.int64)
    longer = np.maximum(lengths[first], lengths[second])
    # Pathways are never empty (each layer keeps >= 1 expert); guard anyway: two empty strings
    # are at distance 0.
    norm = np.divide(char, longer, out=np.zeros(char.shape, dtype=np.float64), where=longer > 0)

    layer_means = []
    for layer in range(n_layers):
        tokens = [",".join(map(str, path[layer])) for path in experts]
        layer_means.append(float(distances(tokens).mean()))

    return (
        float(char.mean()),
        float(expert_level.mean()),
        float(norm.mean()),
        tuple(layer_means),
        int(char.size),
    )
