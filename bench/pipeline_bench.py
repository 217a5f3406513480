"""Pipeline latency: a checkpoint becoming complete -> its metrics committed, stage by stage.

Runs the real daemon (`python -m grokwatch RUN --headless`, default settings, bundled probe) on
a temporary run directory, writes N OLMoE checkpoints into it file by file, each after the
previous one is committed (so no checkpoint waits behind another), and reads the timings back
from the store:

- detect: writer finished the last file -> `pending` row (debounce + the two-check rule)
- queue: pending -> claimed by the worker
- load, forward, distances: the worker's own timings
- write: the rest until the commit (per-checkpoint analysis + the one transaction)

Then, in this process on the same checkpoints, the Engine's in-place weight swap against a
full from_pretrained per checkpoint (median load seconds and their ratio), and the store's
growth per checkpoint. Prints figures; asserts nothing.

    python bench/pipeline_bench.py [--checkpoints 6] [--layers 4] [--hidden 128] [--experts 16]
        [--max-tokens 256] [--device auto] [--threads 1]
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parent.parent
DEADLINE_S = 600.0
POLL_S = 0.02
CHUNKS = 8  # the weights file is written in this many flushed pieces


def _rows(db: Path, sql: str, *args: Any) -> list[dict[str, Any]]:
    if not db.is_file():
        return []
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=30)
    conn.row_factory = sqlite3.Row
    try:
        return [dict(r) for r in conn.execute(sql, args).fetchall()]
    except sqlite3.OperationalError:
        return []
    finally:
        conn.close()


def _wait(predicate: Any, what: str, proc: subprocess.Popen[bytes]) -> Any:
    deadline = time.monotonic() + DEADLINE_S
    while not (value := predicate()):
        if proc.poll() is not None:
            raise SystemExit(f"pipeline_bench: the daemon exited ({proc.returncode}) {what}")
        if time.monotonic() > deadline:
            raise SystemExit(f"pipeline_bench: timed out waiting for {what}")
        time.sleep(POLL_S)
    return value


def _write_like_a_trainer(source: Path, target: Path) -> float:
    """Copy a save_pretrained directory file by file, in flushed chunks; return when done."""
    target.mkdir()
    names = sorted(p.name for p in source.iterdir())
    weights = [n for n in names if n.endswith(".safetensors")]
    # config first and weights last, as save_pretrained does: complete with the last byte.
    order = ["config.json", *(n for n in names if n not in ["config.json", *weights]), *weights]
    for name in order:
        data = (source / name).read_bytes()
        step = max(1, -(-len(data) // CHUNKS))
        with open(target / name, "wb") as handle:
            for start in range(0, len(data), step):
                handle.write(data[start : start + step])
                handle.flush()
    return time.time()


def _bytes_on_disk(db: Path) -> tuple[int, int]:
    """(.db + -wal file bytes, logical database bytes: page_count x page_size, WAL included)."""
    wal = Path(f"{db}-wal")
    files = db.stat().st_size + (wal.stat().st_size if wal.exists() else 0)
    pages = _rows(db, "SELECT page_count * page_size AS n FROM pragma_page_count, pragma_page_size")
    return files, int(pages[0]["n"]) if pages else 0


def _median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


def run_pipeline(args: argparse.Namespace, root: Path, sources: list[Path]) -> dict[str, Any]:
    """Run the daemon over the checkpoints one by one; return per-stage latencies and sizes."""
    run_dir = root / "run"
    run_dir.mkdir()
    db = root / "bench.db"
    env = dict(os.environ, XDG_STATE_HOME=str(root / "state"), XDG_CONFIG_HOME=str(root / "cfg"))
    cmd = [sys.executable, "-m", "grokwatch", str(run_dir), "--headless", "--db", str(db)]
    cmd += ["--device", args.device, "--max-tokens", str(args.max_tokens)]
    if args.threads:
        cmd += ["--threads", str(args.threads)]
    log = (root / "daemon.log").open("wb")
    proc = subprocess.Popen(
        cmd, cwd=REPO_ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
    )
    complete_at: dict[int, float] = {}
    sizes: list[tuple[int, int]] = []
    try:
        _wait(
            lambda: _rows(db, "SELECT worker_pid FROM heartbeat WHERE worker_pid > 0"),
            "its heartbeat",
            proc,
        )
        for i, source in enumerate(sources):
            step = (i + 1) * 100
            complete_at[step] = _write_like_a_trainer(source, run_dir / f"step_{step}")
            _wait(
                lambda step=step: _rows(
                    db,
                    "SELECT 1 FROM checkpoints WHERE step = ? AND status IN"
                    " ('done', 'failed', 'vanished')",
                    step,
                ),
                f"step {step} to finish",
                proc,
            )
            sizes.append(_bytes_on_disk(db))
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        log.close()
    rows = _rows(db, "SELECT * FROM checkpoints ORDER BY step")
    failed = [r for r in rows if r["status"] != "done"]
    if failed:
        raise SystemExit(f"pipeline_bench: not done: {[(r['step'], r['reason']) for r in failed]}")
    payloads = _rows(db, "SELECT n_samples, length(payload) AS n_bytes FROM sample_values")
    run = _rows(db, "SELECT model_summary, n_probe_samples FROM runs")[0]
    return {
        "rows": rows,
        "complete_at": complete_at,
        "sizes": sizes,
        "payloads": payloads,
        "run": run,
        "log": (root / "daemon.log").read_text(errors="replace"),
    }


def compare_loading(args: argparse.Namespace, sources: list[Path]) -> dict[str, list[float]]:
    """Load seconds per checkpoint: the Engine reusing its model vs from_pretrained each time."""
    import torch

    from grokwatch.engine import Engine
    from grokwatch.probe_sources import bundled_probe

    if args.threads:
        torch.set_num_threads(args.threads)
    out: dict[str, list[float]] = {}
    for label, reuse in (("in_place", True), ("from_pretrained", False)):
        engine = Engine(
            bundled_probe(), device=args.device, max_tokens=args.max_tokens, reuse_model=reuse
        )
        seconds = []
        for source in sources:
            result = engine.forward(source)
            seconds.append(result.timings_s["load_s"])
            assert result.reloaded_in_place == (reuse and source != sources[0])
        out[label] = seconds[1:]  # the first checkpoint is a full load either way
    return out


def main(argv: list[str] | None = None) -> None:
    """Build the checkpoints, run the pipeline and the load comparison, print the figures."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoints", type=int, default=6)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--hidden", type=int, default=128)
    parser.add_argument("--experts", type=int, default=16)
    parser.add_argument("--top-k", type=int, default=2)
    parser.add_argument("--max-tokens", type=int, default=256)
    parser.add_argument("--device", default="auto", help="auto|cpu|cuda|cuda:N")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    args = parser.parse_args(argv)

    import torch

    from grokwatch.tinymodels import save_tiny_checkpoint, tiny_olmoe_config

    if args.threads:
        torch.set_num_threads(args.threads)
    root = Path(tempfile.mkdtemp(prefix="grokwatch-pipeline-bench-"))
    try:
        config = tiny_olmoe_config(args.layers, args.hidden, args.experts, args.top_k)
        sources = [
            save_tiny_checkpoint(root / "sources" / f"seed{i}", config, seed=i)
            for i in range(args.checkpoints)
        ]
        weights_bytes = sum(f.stat().st_size for f in sources[0].glob("*.safetensors"))
        pipeline = run_pipeline(args, root, sources)
        loads = compare_loading(args, sources)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    report(args, pipeline, loads, weights_bytes)


def report(
    args: argparse.Namespace,
    pipeline: dict[str, Any],
    loads: dict[str, list[float]],
    weights_bytes: int,
) -> None:
    """Print the figures."""
    rows = pipeline["rows"]
    complete = pipeline["complete_at"]
    stages: dict[str, list[float]] = {
        k: [] for k in ("detect", "queue", "load", "forward", "distances", "write", "total")
    }
    for r in rows:
        work = r["load_s"] + r["forward_s"] + r["distance_s"]
        stages["detect"].append(r["pending_at"] - complete[r["step"]])
        stages["queue"].append(r["started_at"] - r["pending_at"])
        stages["load"].append(r["load_s"])
        stages["forward"].append(r["forward_s"])
        stages["distances"].append(r["distance_s"])
        stages["write"].append(r["done_at"] - r["started_at"] - work)
        stages["total"].append(r["done_at"] - complete[r["step"]])
    warm = {k: v[1:] for k, v in stages.items()}  # the first includes the worker's cold start
    weights_mb = weights_bytes / 1e6
    print(
        f"pipeline_bench: OLMoE {args.layers} layers, hidden {args.hidden}, {args.experts} experts"
        f" top-{args.top_k} ({weights_mb:.1f} MB safetensors), bundled probe"
        f" ({pipeline['run']['n_probe_samples']} samples), max {args.max_tokens} tokens,"
        f" device {args.device}, threads {args.threads or 'default'}, {len(rows)} checkpoints"
    )
    print("latency from complete (writer's last byte) to metrics committed, seconds")
    print(f"  {'stage':<10} {'median':>8} {'median, warm':>13} {'first':>8}")
    for name, values in stages.items():
        print(
            f"  {name:<10} {_median(values):>8.3f} {_median(warm[name]):>13.3f} {values[0]:>8.3f}"
        )
    in_place, full = _median(loads["in_place"]), _median(loads["from_pretrained"])
    n_loads = len(loads["in_place"])
    print(
        f"weight loading per checkpoint (Engine, same checkpoints, median of {n_loads}):"
        f" in-place {in_place:.3f} s, from_pretrained {full:.3f} s,"
        f" ratio from_pretrained/in-place {full / in_place:.1f}x"
    )
    files = [f for f, _ in pipeline["sizes"]]
    logical = [n for _, n in pipeline["sizes"]]
    payloads = pipeline["payloads"]
    per_sample = [p["n_bytes"] / p["n_samples"] for p in payloads]
    n = len(files)

    def per_checkpoint(sizes: list[int]) -> float:
        return (sizes[-1] - sizes[0]) / max(1, n - 1)

    print(
        f"store growth per checkpoint: .db + -wal files {per_checkpoint(files) / 1e3:.1f} kB"
        f" ({files[0] / 1e3:.0f} kB after the first, {files[-1] / 1e3:.0f} kB after {n});"
        f" logical pages {per_checkpoint(logical) / 1e3:.1f} kB"
        f" ({logical[0] / 1e3:.0f} -> {logical[-1] / 1e3:.0f} kB)"
    )
    print(
        f"per-sample payload: median {_median(per_sample):.0f} B"
        f" ({_median([p['n_bytes'] for p in payloads]) / 1e3:.1f} kB compressed per checkpoint"
        f" of {payloads[0]['n_samples']} samples)"
    )


if __name__ == "__main__":
    main()
