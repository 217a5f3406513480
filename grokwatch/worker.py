"""The worker process: claims pending checkpoints, evaluates them, commits one transaction each.

It runs in its own (spawned) process so torch and CUDA never load in the daemon or the TUI,
and so an out-of-memory error or a corrupt checkpoint kills a job, not the monitor. The forward
pass of checkpoint t+1 overlaps the CPU-bound distances and the write of checkpoint t: a single
finishing thread keeps the writes in step order.
"""

from __future__ import annotations

import ctypes
import json
import logging
import os
import signal
import sys
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

from grokwatch.errors import CheckpointError, CheckpointVanished, GrokwatchError, UsageError
from grokwatch.probe import parse_probe_lines
from grokwatch.store import CheckpointRow, Store

log = logging.getLogger("grokwatch.worker")
IDLE_POLL_S = 0.3
PR_SET_PDEATHSIG = 1
# Exit code of a worker that cannot run at all (a usage error such as a missing GPU): the daemon
# stops with exit code 2 instead of restarting it or failing every checkpoint with that reason.
WORKER_USAGE_EXIT = 2


def _die_with_parent(parent_pid: int) -> None:
    """Ask Linux to SIGTERM us when the daemon dies; elsewhere the main loop checks getppid()."""
    if sys.platform.startswith("linux"):
        try:
            libc = ctypes.CDLL("libc.so.6", use_errno=True)
            libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
        except OSError:
            pass
    if os.getppid() != parent_pid:
        os._exit(0)


def trainer_loss(checkpoint_dir: str | Path, step: int) -> float | None:
    """The training loss the HF Trainer logged last at or before `step` (free signal)."""
    path = Path(checkpoint_dir) / "trainer_state.json"
    try:
        history = json.loads(path.read_text()).get("log_history", [])
    except (OSError, ValueError, AttributeError):
        return None
    losses = [
        (h.get("step", 0), h["loss"])
        for h in history
        if isinstance(h, dict) and isinstance(h.get("loss"), (int, float))
    ]
    before = [loss for s, loss in losses if s <= step]
    return float(before[-1]) if before else None


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    return text if isinstance(exc, GrokwatchError) else f"{type(exc).__name__}: {text}"[:300]


class Worker:
    """Evaluates the pending checkpoints of one run."""

    def __init__(self, store_path: str, run_id: int, settings: dict[str, Any]) -> None:
        from grokwatch.engine import Engine

        self.store_path = store_path
        self.run_id = run_id
        self.settings = settings
        self.store = Store(store_path)
        run = self.store.conn.execute("SELECT * FROM runs WHERE id = ?", (run_id,)).fetchone()
        self.probe = parse_probe_lines(run["probe_jsonl"].splitlines(), "stored probe", jsonl=True)
        self.engine = Engine(
            self.probe,
            device=settings.get("device", "auto"),
            tau=run["tau"],
            max_tokens=run["max_tokens"],
            pair_bound=run["pair_bound"],
            batch_size=settings.get("batch_size", 16),
            trust_remote_code=bool(settings.get("trust_remote_code")),
            max_memory_bytes=settings.get("max_memory_bytes"),
            workers=settings.get("threads") or -1,
            tokenizer_dir=run["run_dir"],
        )
        self._finisher = ThreadPoolExecutor(1, thread_name_prefix="grokwatch-finish")
        self._finish_store: Store | None = None
        self._in_flight: Future[None] | None = None
        self._model_recorded = False
        self._analyser: Any = None
        self.stop_event = threading.Event()

    def _finish_conn(self) -> Store:
        # The finishing thread gets its own connection: sqlite3 connections are not shared.
        if self._finish_store is None:
            self._finish_store = Store(self.store_path)
        return self._finish_store

    def _drain(self) -> None:
        if self._in_flight is not None:
            self._in_flight.result()
            self._in_flight = None

    def run(self, parent_pid: int | None = None) -> None:
        """Claim and evaluate checkpoints until stopped or orphaned."""
        while not self.stop_event.is_set():
            if parent_pid is not None and os.getppid() != parent_pid:
                break
            row = self.store.claim_next(self.run_id)
            if row is None:
                self._drain()
                self.stop_event.wait(IDLE_POLL_S)
                continue
            self.evaluate(row)
        self._drain()

    def evaluate(self, row: CheckpointRow) -> None:
        """Run one claimed checkpoint's forward pass and queue its finishing stage."""
        started = time.perf_counter()
        path = Path(row.path)
        try:
            if not path.is_dir():
                raise CheckpointVanished(f"{path}: directory vanished before evaluation")
            forward = self.engine.forward(path)
        except BaseException as exc:
            if isinstance(exc, KeyboardInterrupt | SystemExit):
                raise
            vanished = isinstance(exc, CheckpointVanished) or not path.is_dir()
            if isinstance(exc, MemoryError) or "out of memory" in str(exc).lower():
                reason = f"out of memory: {_one_line(exc)}; lower --batch-size or --max-tokens"
            else:
                reason = _one_line(exc)
            if vanished:
                reason = f"{path}: directory vanished during evaluation"
            self._drain()
            self._fail(row, "vanished" if vanished else "failed", reason)
            return
        self._drain()
        loss = trainer_loss(path, row.step)
        self._in_flight = self._finisher.submit(self._finish, row, forward, started, loss)

    def _fail(self, row: CheckpointRow, status: str, reason: str) -> None:
        from grokwatch.analysis import failure_alert

        log.warning("step %s %s: %s", row.step, status, reason)
        alert = failure_alert(row.step, row.path, reason, row.id) if status == "failed" else None
        self.store.finish_checkpoint(row.id, status, reason, alert)

    def _finish(self, row: CheckpointRow, forward: Any, started: float, loss: float | None) -> None:
        from grokwatch.analysis import RunAnalyser
        from grokwatch.onset import DetectorConfig

        store = self._finish_conn()
        if self._analyser is None:
            self._analyser = RunAnalyser(
                store,
                self.run_id,
                len(self.probe.samples),
                fixed_eps=self.settings.get("memorization_eps"),
                config=DetectorConfig(**(self.settings.get("detector") or {})),
            )
        try:
            metrics = self.engine.metrics(forward)
            if not self._model_recorded:
                store.set_run_model(
                    self.run_id,
                    metrics.model_summary,
                    forward.encoded.dropped,
                    forward.encoded.loss_definition,
                )
                self._model_recorded = True
            result = self._analyser.analyse(row.step, metrics, loss)
            timings = {
                **metrics.timings_s,
                "total_s": time.perf_counter() - started,
                "peak_mem_bytes": metrics.peak_mem_bytes,
                "trainer_loss": loss,
            }
            written = store.write_result(
                row.id,
                result.metric_rows,
                result.sample_payload,
                len(metrics.samples),
                timings,
                result.alerts,
            )
            if written is None:
                self._analyser.forget_last(row.step)
                log.info("step %s was superseded during evaluation; result dropped", row.step)
            else:
                log.info("step %s done in %.1f s", row.step, timings["total_s"])
        except (CheckpointError, GrokwatchError, ValueError, RuntimeError) as exc:
            self._fail_in(store, row, _one_line(exc))

    def _fail_in(self, store: Store, row: CheckpointRow, reason: str) -> None:
        from grokwatch.analysis import failure_alert

        log.warning("step %s failed: %s", row.step, reason)
        store.finish_checkpoint(
            row.id, "failed", reason, failure_alert(row.step, row.path, reason, row.id)
        )


def worker_main(store_path: str, run_id: int, settings: dict[str, Any], parent_pid: int) -> None:
    """Entry point of the spawned worker process."""
    _die_with_parent(parent_pid)
    logging.basicConfig(
        level=logging.DEBUG if settings.get("debug") else logging.WARNING,
        format="%(asctime)s worker %(levelname)s %(message)s",
    )
    threads = settings.get("threads")
    import torch

    from grokwatch.loading import resolve_device

    if threads:
        torch.set_num_threads(int(threads))
    try:
        resolve_device(str(settings.get("device") or "auto"))
    except UsageError as exc:
        print(f"grokwatch: error: {exc}", file=sys.stderr, flush=True)
        sys.exit(WORKER_USAGE_EXIT)
    worker = Worker(store_path, run_id, settings)

    def _stop(signum: int, frame: Any) -> None:
        worker.stop_event.set()

    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the daemon decides when we stop
    worker.run(parent_pid)
