"""`grokwatch demo`: train the example grokking MoE in a subprocess and watch it live.

The trainer and the monitor share the machine's cores: the trainer gets all but one, the
worker gets one, so both make progress on a 2-core laptop.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

from grokwatch.config import Settings
from grokwatch.errors import GrokwatchError

DEFAULT_DIR = Path("grokwatch-demo")
PROBE_NAME = "grokwatch-probe.jsonl"
DEMO_MARKER = "example-config.json"  # written by the example trainer into its run directory
PROBE_DEADLINE_S = 120.0


def trainer_command(
    directory: Path, steps: int | None, short: bool, threads: int | None
) -> list[str]:
    """The example trainer's command line."""
    cmd = [sys.executable, "-m", "grokwatch.example_trainer", str(directory)]
    if steps is not None:
        cmd += ["--steps", str(steps)]
    if short:
        cmd.append("--short")
    if threads is not None:
        cmd += ["--threads", str(threads)]
    return cmd


def _wait_for_probe(directory: Path, trainer: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + PROBE_DEADLINE_S
    while not (directory / PROBE_NAME).is_file():
        if trainer.poll() is not None:
            tail = log.read_text(errors="replace").strip().splitlines()[-1:] or ["no output"]
            raise GrokwatchError(f"example trainer failed: {tail[0]} (log: {log})")
        if time.monotonic() > deadline:
            raise GrokwatchError(f"{directory / PROBE_NAME}: the trainer wrote no probe; see {log}")
        time.sleep(0.1)


def run_demo(
    directory: Path | None = None,
    *,
    headless: bool = False,
    steps: int | None = None,
    short: bool = False,
    threads: int | None = None,
) -> int:
    """Run the example trainer and the monitor together; Ctrl+C stops both."""
    directory = (directory or DEFAULT_DIR).expanduser().resolve()
    run_dir, store = _fresh_demo_dir(directory)
    cores = os.cpu_count() or 2
    trainer_threads = threads or max(1, cores - 1)
    log = directory / "train.log"
    with log.open("wb") as out:
        trainer = subprocess.Popen(
            trainer_command(run_dir, steps, short, trainer_threads),
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
    settings = Settings(
        run_dir=run_dir,
        db=store,
        headless=headless,
        device="cpu",
        threads=1,
        settle_s=10.0,
        rescan_s=5.0,
    )
    print(f"grokwatch demo: training in {run_dir} (log: {log}); store {store}", flush=True)
    try:
        _wait_for_probe(run_dir, trainer, log)
        if headless:
            return _headless(settings, trainer)
        return _with_ui(settings, trainer)
    finally:
        if trainer.poll() is None:
            trainer.send_signal(signal.SIGTERM)
            try:
                trainer.wait(10)
            except subprocess.TimeoutExpired:
                trainer.kill()
                trainer.wait()


def _fresh_demo_dir(directory: Path) -> tuple[Path, Path]:
    """DIR/run for the trainer, DIR/grokwatch.db for the store; an earlier demo is replaced."""
    run_dir, store = directory / "run", directory / "grokwatch.db"
    if run_dir.exists():
        if not (run_dir / DEMO_MARKER).is_file() and any(run_dir.iterdir()):
            raise GrokwatchError(
                f"{run_dir}: exists and is not a grokwatch demo run; pick another DIR"
            )
        shutil.rmtree(run_dir)
    for stale in (store, Path(f"{store}-wal"), Path(f"{store}-shm")):
        stale.unlink(missing_ok=True)
    run_dir.mkdir(parents=True)
    return run_dir, store


def _headless(settings: Settings, trainer: subprocess.Popen[bytes]) -> int:
    from grokwatch.daemon import Daemon, run_daemon

    daemon = Daemon(settings)

    def finish_after_training() -> None:
        code = trainer.wait()
        if code != 0:
            print(f"grokwatch demo: trainer exited with code {code}", flush=True)
            daemon.stop_event.set()
        daemon.finish_when_idle.set()

    threading.Thread(target=finish_after_training, daemon=True).start()
    code = run_daemon(settings, daemon=daemon)
    if trainer.poll() not in (None, 0):
        return 1
    return code


def _with_ui(settings: Settings, trainer: subprocess.Popen[bytes]) -> int:
    from grokwatch.launch import start_daemon, stop_daemon
    from grokwatch.ui.app import run_ui

    assert settings.db is not None
    proc, _ = start_daemon(settings, settings.db)
    try:
        return run_ui(settings.db)
    finally:
        stop_daemon(proc)
