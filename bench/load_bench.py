"""Seconds per checkpoint: in-place reload_weights versus a full load_model (from_pretrained).

Builds N tiny-but-not-trivial OLMoE checkpoints (8 layers, hidden 256, 16 experts by default) in
a temporary directory, then times both ways of moving a worker onto each new checkpoint in the
same run, and prints the medians and their ratio.

    python bench/load_bench.py [--checkpoints 5] [--layers 8] [--hidden 256] [--experts 16]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path


def main(argv: list[str] | None = None) -> None:
    """Build the checkpoints, time both load paths on each, and print the comparison."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoints", type=int, default=5, help="checkpoints to time (N)")
    parser.add_argument("--layers", type=int, default=8)
    parser.add_argument("--hidden", type=int, default=256)
    parser.add_argument("--experts", type=int, default=16)
    parser.add_argument("--top-k", type=int, default=2)
    parser.add_argument("--device", default="cpu", help="auto|cpu|cuda|cuda:N")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    args = parser.parse_args(argv)

    import torch

    from grokwatch.loading import load_model, model_summary
    from grokwatch.tinymodels import save_tiny_checkpoint, tiny_olmoe_config
    from grokwatch.weightswap import reload_weights

    torch.set_num_threads(args.threads)
    config = tiny_olmoe_config(args.layers, args.hidden, args.experts, args.top_k)
    with tempfile.TemporaryDirectory(prefix="grokwatch-load-bench-") as root:
        # One more than timed: the first is the model the swaps start from.
        dirs = [
            save_tiny_checkpoint(Path(root) / f"checkpoint-{i}", config, seed=i)
            for i in range(args.checkpoints + 1)
        ]
        loaded = load_model(dirs[0], device=args.device)
        summary = model_summary(loaded.model)
        weight_bytes = sum(p.numel() * p.element_size() for p in loaded.model.parameters())

        reload_s: list[float] = []
        full_s: list[float] = []
        for directory in dirs[1:]:
            start = time.perf_counter()
            reload_weights(loaded, directory)
            reload_s.append(time.perf_counter() - start)
            start = time.perf_counter()
            load_model(directory, device=args.device)
            full_s.append(time.perf_counter() - start)

    reload_median_s = statistics.median(reload_s)
    full_median_s = statistics.median(full_s)
    print(
        f"model: {summary['model_type']} layers={summary['n_layers']} hidden={summary['hidden']} "
        f"experts={summary['n_experts']} top_k={summary['top_k']} params={summary['n_params']:,} "
        f"({weight_bytes / 2**20:.1f} MiB) device={loaded.device} threads={args.threads}"
    )
    print(f"checkpoints timed: {len(reload_s)}")
    print(f"reload_weights (in place) median s: {reload_median_s:.4f}")
    print(f"load_model (from_pretrained) median s: {full_median_s:.4f}")
    print(f"ratio load_model / reload_weights: {full_median_s / reload_median_s:.2f}x")


if __name__ == "__main__":
    main()
