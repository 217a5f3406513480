"""Benchmark of the pathway-distance engine against a pure-Python DP and the `editdistance` package.

Run from the repository root: python -m bench.metrics_bench
Prints one table: all-pairs character-level pathway distance for N=256 and N=1024 synthetic
OLMoE-like pathways (16 layers, K=64, ~8 experts kept per layer at tau=0.7), seconds and
speed-ups. Timings depend on the machine and its load; nothing here asserts on them.
"""

from __future__ import annotations

import os
import random
import time
from collections.abc import Callable, Sequence

import editdistance
import numpy as np
from rapidfuzz import process
from rapidfuzz.distance import Levenshtein

from grokwatch.metrics import group_distances, pathway_experts, pathway_string

N_LAYERS = 16
N_EXPERTS = 64
TAU = 0.7
SIZES = (256, 1024)
NAIVE_PAIRS = 60  # pure-Python DP pairs timed per size, then scaled to all pairs
EDITDISTANCE_BUDGET_S = 30.0


def synthetic_pathways(n: int, seed: int) -> tuple[list[str], list[tuple[tuple[int, ...], ...]]]:
    """Return n seeded OLMoE-like pathways (strings and expert ids) from noisy mean routings."""
    rng = np.random.default_rng(seed)
    # A shared per-layer preference plus per-sample noise: samples of one group share experts
    # without being identical, as mean routing distributions of one domain do.
    base_logits = rng.normal(0.0, 1.0, size=(N_LAYERS, N_EXPERTS))
    sample_logits = base_logits + rng.normal(0.0, 0.8, size=(n, N_LAYERS, N_EXPERTS))
    scaled = 1.5 * sample_logits  # sharpness tuned so ~8 experts exceed tau=0.7
    weights = np.exp(scaled - scaled.max(axis=-1, keepdims=True))
    routing = weights / weights.sum(axis=-1, keepdims=True)
    experts = pathway_experts(routing, TAU)
    return [pathway_string(path) for path in experts], experts


def naive_levenshtein(a: str, b: str) -> int:
    """Textbook O(|a||b|) dynamic programme in pure Python: the baseline to beat."""
    previous = list(range(len(b) + 1))
    for i, x in enumerate(a, start=1):
        current = [i]
        for j, y in enumerate(b, start=1):
            current.append(min(previous[j] + 1, current[j - 1] + 1, previous[j - 1] + (x != y)))
        previous = current
    return previous[-1]


def all_pairs(n: int) -> list[tuple[int, int]]:
    """Every pair i<j of n items."""
    return [(i, j) for i in range(n) for j in range(i + 1, n)]


def time_loop(
    distance: Callable[[str, str], int], pathways: Sequence[str], pairs: Sequence[tuple[int, int]]
) -> tuple[float, float]:
    """Return (seconds, mean distance) of a Python loop of `distance` over the given pairs."""
    started_s = time.perf_counter()
    total = 0
    for i, j in pairs:
        total += distance(pathways[i], pathways[j])
    return time.perf_counter() - started_s, total / len(pairs)


def bench_pathway_distance() -> None:
    """Print the engine vs naive DP vs editdistance table for N=256 and N=1024."""
    print(
        f"pathway distance, all pairs i<j, char-level Levenshtein; L={N_LAYERS}, K={N_EXPERTS}, "
        f"tau={TAU}; {os.cpu_count()} CPU cores visible, rapidfuzz workers=-1"
    )
    rows = []
    notes = []
    for n in SIZES:
        pathways, experts = synthetic_pathways(n, seed=n)
        pairs = all_pairs(n)
        mean_kept = np.mean([len(layer) for path in experts for layer in path])
        mean_len = np.mean([len(s) for s in pathways])

        started_s = time.perf_counter()
        engine = group_distances(pathways, experts, pair_bound=n, seed=0, workers=-1)
        engine_s = time.perf_counter() - started_s

        started_s = time.perf_counter()
        matrix = process.cdist(
            pathways, pathways, scorer=Levenshtein.distance, dtype=np.int32, workers=-1
        )
        char_only_s = time.perf_counter() - started_s
        upper = np.triu_indices(n, k=1)
        char_only_mean = float(matrix[upper].mean())

        subset = random.Random(n).sample(pairs, NAIVE_PAIRS)
        naive_subset_s, _ = time_loop(naive_levenshtein, pathways, subset)
        naive_s = naive_subset_s * len(pairs) / len(subset)
        notes.append(
            f"N={n}: naive DP timed on {len(subset)} random pairs "
            f"({naive_subset_s:.1f} s), scaled to {len(pairs)} pairs"
        )

        probe = pairs[:: max(1, len(pairs) // 2000)]
        probe_s, _ = time_loop(editdistance.eval, pathways, probe)
        if probe_s * len(pairs) / len(probe) <= EDITDISTANCE_BUDGET_S:
            editdistance_s, editdistance_mean = time_loop(editdistance.eval, pathways, pairs)
            notes.append(f"N={n}: editdistance looped over all {len(pairs)} pairs")
        else:
            subset = random.Random(n + 1).sample(pairs, len(pairs) // 10)
            subset_s, editdistance_mean = time_loop(editdistance.eval, pathways, subset)
            editdistance_s = subset_s * len(pairs) / len(subset)
            notes.append(
                f"N={n}: editdistance timed on {len(subset)} random pairs, scaled to {len(pairs)}"
            )
        agree = abs(char_only_mean - engine[0]) < 1e-9
        notes.append(
            f"N={n}: mean kept experts/layer {mean_kept:.1f}, mean pathway length {mean_len:.0f} "
            f"chars, D={engine[0]:.1f} (editdistance: {editdistance_mean:.1f}), "
            f"D_expert={engine[1]:.1f}, D_norm={engine[2]:.3f}; engine == cdist: {agree}"
        )
        rows.append((n, len(pairs), engine_s, char_only_s, editdistance_s, naive_s))

    header = (
        f"{'N':>5} {'pairs':>7} | {'engine s':>9} {'cdist s':>8} {'editdist s':>10} "
        f"{'naive DP s':>10} | {'DP/engine':>9} {'DP/cdist':>9} {'ed/cdist':>8}"
    )
    print(header)
    print("-" * len(header))
    for n, n_pairs, engine_s, char_only_s, editdistance_s, naive_s in rows:
        print(
            f"{n:>5} {n_pairs:>7} | {engine_s:>9.3f} {char_only_s:>8.3f} {editdistance_s:>10.2f} "
            f"{naive_s:>10.0f} | {naive_s / engine_s:>8.0f}x {naive_s / char_only_s:>8.0f}x "
            f"{editdistance_s / char_only_s:>7.1f}x"
        )
    print(
        "engine = grokwatch.metrics.group_distances (char + expert-level + normalised + 16 "
        "per-layer means); cdist = the char-level part alone (one rapidfuzz process.cdist)."
    )
    for note in notes:
        print("  " + note)

    n = 1024
    pathways, experts = synthetic_pathways(n, seed=n)
    started_s = time.perf_counter()
    sampled = group_distances(pathways, experts, pair_bound=512, seed=7, workers=-1)
    sampled_s = time.perf_counter() - started_s
    print(
        f"engine at the default pair bound 512 on N={n}: {sampled[4]} sampled pairs "
        f"(cpdist), {sampled_s:.3f} s, D={sampled[0]:.1f}"
    )


def bench_forward(n_samples: int = 64, repeats: int = 3) -> None:
    """Forward seconds per sample on a tiny OLMoE: batched (16) vs one sample at a time."""
    import torch

    from grokwatch.encoding import encode_probe
    from grokwatch.probe_sources import bundled_probe
    from grokwatch.routing import run_forward
    from grokwatch.tinymodels import build_tiny_model, build_tokenizer, tiny_config

    torch.set_num_threads(1)
    model = build_tiny_model(tiny_config("olmoe"), seed=0)
    probe = bundled_probe()
    encoded = encode_probe(build_tokenizer(), probe, max_tokens=256)
    rows = min(n_samples, len(encoded.kept))
    subset = type(encoded)(
        **{
            **encoded.__dict__,
            "input_ids": encoded.input_ids[:rows],
            "loss_masks": encoded.loss_masks[:rows],
            "kept": encoded.kept[:rows],
        }
    )
    results = {}
    for label, batch in (("batched (16)", 16), ("one at a time", 1)):
        times = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            run_forward(model, subset, batch_size=batch, device="cpu")
            times.append(time.perf_counter() - t0)
        results[label] = float(np.median(times)) / rows
    print(f"forward pass, tiny OLMoE (tiny_config('olmoe')), {rows} bundled-probe samples,")
    print(f"  max 256 tokens, 1 thread, median of {repeats}:")
    for label, per_sample in results.items():
        print(f"  {label:<14} {per_sample * 1000:8.2f} ms/sample")
    ratio = results["one at a time"] / results["batched (16)"]
    print(f"  batched speed-up: {ratio:.1f}x")


def main() -> None:
    """Run every bench section."""
    bench_pathway_distance()
    print()
    bench_forward()


if __name__ == "__main__":
    main()
