"""TUI bench: time to the first frame on a 10,000 x 8 store, and idle CPU while a writer writes.

    python bench/tui_bench.py                  # 60 s idle window
    python bench/tui_bench.py --seconds 15     # shorter

Prints figures, asserts nothing. The idle figure is the CPU time (user + system, all threads)
of a separate process running the real app headless at 80x24, divided by the wall time of the
window: the fraction of one core it keeps busy while a writer adds a checkpoint every few
seconds, as a daemon would.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from grokwatch.seeding import add_pending, finish_next, seed_store
from grokwatch.store import Store
from grokwatch.ui.app import GrokwatchApp, create_app

SIZE = (80, 24)


def _cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


async def _first_frame_s(store: Path) -> tuple[float, float]:
    """Seconds from creating the app to the first frame drawn with the store's data, and to
    the checkpoint and alert tables being filled as well (done right after that frame)."""
    start = time.perf_counter()
    app = create_app(store, poll_s=0.5)
    assert isinstance(app, GrokwatchApp)
    async with app.run_test(size=SIZE) as pilot:
        while app.first_frame_at is None:
            await pilot.pause(0.005)
        await pilot.pause()
        tables = time.perf_counter() - start
        await pilot.press("q")
    return app.first_frame_at - start, tables


async def _idle_child(store: Path, seconds: float) -> dict[str, float]:
    app = create_app(store)
    assert isinstance(app, GrokwatchApp)
    async with app.run_test(size=SIZE) as pilot:
        while app.snapshots_seen < 1:
            await pilot.pause(0.05)
        seen = app.snapshots_seen
        cpu0, t0 = _cpu_s(), time.monotonic()
        await asyncio.sleep(seconds)  # the measurement window itself
        cpu1, t1 = _cpu_s(), time.monotonic()
        snapshots = app.snapshots_seen - seen
        await pilot.press("q")
    return {"cpu_s": cpu1 - cpu0, "wall_s": t1 - t0, "snapshots": snapshots}


def _idle(store: Path, run_id: int, groups: tuple[str, ...], seconds: float, every_s: float):
    child = subprocess.Popen(
        [sys.executable, __file__, "--child", str(store), "--seconds", str(seconds)],
        stdout=subprocess.PIPE,
        text=True,
    )
    writer = Store(store)
    step = 10_000_000
    writes = 0
    try:
        while child.poll() is None:
            step += 500
            add_pending(writer, run_id, step)
            finish_next(writer, run_id, groups)
            writer.beat(run_id, "/data/runs/olmoe-tiny", "cuda:0", time.time())
            writes += 1
            deadline = time.monotonic() + every_s
            while child.poll() is None and time.monotonic() < deadline:
                time.sleep(0.1)
    finally:
        writer.close()
    out, _ = child.communicate()
    result = json.loads(out.strip().splitlines()[-1])
    result["checkpoints_written"] = writes
    return result


def main() -> int:
    """Run the bench and print the figures."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=60.0, help="idle window (default 60)")
    parser.add_argument("--every", type=float, default=3.0, help="seconds between checkpoints")
    parser.add_argument("--checkpoints", type=int, default=10_000)
    parser.add_argument("--groups", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--child", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(asyncio.run(_idle_child(args.child, args.seconds))))
        return 0

    os.environ.setdefault("XDG_CONFIG_HOME", tempfile.mkdtemp())  # no user themes
    with tempfile.TemporaryDirectory() as folder:
        store = Path(folder) / "big.db"
        t = time.perf_counter()
        info = seed_store(store, "big", n_checkpoints=args.checkpoints, n_groups=args.groups)
        seed_s = time.perf_counter() - t
        size_mb = store.stat().st_size / 1e6
        print(
            f"store: {args.checkpoints} checkpoints x {args.groups} groups, "
            f"{size_mb:.1f} MB, seeded in {seed_s:.1f} s"
        )
        runs = [asyncio.run(_first_frame_s(store)) for _ in range(args.repeats)]
        frames, tables = [r[0] for r in runs], [r[1] for r in runs]
        print(
            f"first frame with data (open store + draw, 80x24): median"
            f" {statistics.median(frames):.2f} s, min {min(frames):.2f} s over {len(runs)} runs;"
            f" tables filled by {statistics.median(tables):.2f} s"
        )
        assert info.run_id is not None
        idle = _idle(store, info.run_id, info.groups, args.seconds, args.every)
        fraction = idle["cpu_s"] / idle["wall_s"]
        print(
            f"idle CPU over {idle['wall_s']:.0f} s while a writer added "
            f"{idle['checkpoints_written']} checkpoints (one every {args.every:g} s): "
            f"{fraction:.3f} of one core ({idle['cpu_s']:.2f} s CPU, "
            f"{idle['snapshots']} snapshots drawn)"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
