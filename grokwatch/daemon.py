"""The daemon: wires the watcher, the worker process, the heartbeat and the alert channels.

It holds the store's lock for its whole life, writes watcher decisions into the checkpoint
queue, keeps one worker process alive (restarting it, with a `worker_down` alert, if it dies),
delivers command and webhook alerts exactly once, and in headless mode prints one line per
checkpoint and alert. SIGINT/SIGTERM stop it within a few seconds.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import signal
import sys
import threading
import time
from pathlib import Path
from typing import Any, TextIO

from grokwatch.config import Settings
from grokwatch.errors import GrokwatchError
from grokwatch.paths import resolve_store
from grokwatch.reader import Reader
from grokwatch.store import DaemonLock, Store

log = logging.getLogger("grokwatch.daemon")
LOOP_S = 0.25
WORKER_STOP_S = 3.0
MAX_ATTEMPTS = 2  # a checkpoint that crashed the worker this often fails instead of looping
OVERDUE_CHECK_S = 30.0
QUICK_DEATH_S = 20.0  # a worker that dies sooner than this after start is crash-looping
RESTART_BACKOFF_MAX_S = 60.0


def _device_label(spec: str) -> str:
    # The daemon never imports torch; the worker reports the real device in the model summary.
    return spec


class Daemon:
    """One watch of one run directory into one store."""

    def __init__(self, settings: Settings, out: TextIO | None = None) -> None:
        self.settings = settings
        self.out = out or sys.stdout
        self.run_dir = settings.run_dir.expanduser().resolve()
        self.store_path = resolve_store(self.run_dir, settings.db)
        self.lock = DaemonLock(self.store_path)
        self.stop_event = threading.Event()
        # Set by `demo` when the trainer is done: exit once every checkpoint is final.
        self.finish_when_idle = threading.Event()
        self.started_at = time.time()
        self.worker: multiprocessing.process.BaseProcess | None = None
        self.store: Store | None = None
        self.watcher: Any = None
        self.run_id = -1
        self._last_overdue_check = 0.0
        self._printed_seq = 0
        self._previous_start: float | None = None
        self._failures: Any = None
        self._worker_started_at = 0.0
        self._quick_deaths = 0
        self._restart_at = 0.0
        self._dead_pid: int | None = None
        self.exit_code = 0

    # Setup ------------------------------------------------------------------------------

    def _open(self) -> None:
        from grokwatch.probe_sources import select_probe

        self.lock.acquire()
        self.store = store = Store(self.store_path)
        previous = store.conn.execute("SELECT started_at FROM heartbeat WHERE id = 1").fetchone()
        self._previous_start = previous[0] if previous else None
        stored = store.latest_run_for(str(self.run_dir))
        probe, how = select_probe(
            self.settings.probe, None, self.run_dir, stored["probe_jsonl"] if stored else None
        )
        self.run_id = store.ensure_run(
            str(self.run_dir),
            probe.hash,
            how,
            probe.to_jsonl(),
            len(probe.samples),
            self.settings.tau,
            self.settings.max_tokens,
            self.settings.pair_bound,
            settings=self.settings.public(),
        )
        requeued = store.requeue_running(self.run_id)
        self._say(
            f"grokwatch: watching {self.run_dir} -> {self.store_path} (run {self.run_id}, "
            f"probe: {how}, {len(probe.samples)} samples, {len(probe.groups)} groups)"
        )
        if requeued:
            self._say(f"grokwatch: {requeued} interrupted checkpoint(s) queued again")
        self._printed_seq = Reader(self.store_path).seq()
        self._beat()

    def _say(self, line: str) -> None:
        print(line, file=self.out, flush=True)

    def _beat(self, stopped: bool = False) -> None:
        assert self.store is not None
        w = self.worker
        self.store.beat(
            self.run_id,
            str(self.run_dir),
            _device_label(self.settings.device),
            self.started_at,
            worker_pid=w.pid if w is not None else None,
            worker_state="alive" if w is not None and w.is_alive() else "down",
            stopped=stopped,
        )

    # Watcher ----------------------------------------------------------------------------

    def _known_decisions(self) -> list[Any]:
        """The store's current entry per path, as the watcher's tracker resumes from them."""
        from grokwatch.checkpoints import Decision

        assert self.store is not None
        known = []
        for row in self.store.current_entries(self.run_id):
            if row.status in ("superseded", "vanished"):
                continue
            kind = row.status if row.status in ("seen", "failed") else "pending"
            known.append(Decision(kind, row.path, row.step, row.fingerprint, row.reason or ""))
        return known

    def _start_watcher(self) -> None:
        from grokwatch.watcher import Watcher

        watcher_store = Store(self.store_path)  # the watcher thread gets its own connection

        def on_decision(decision: Any) -> None:
            from grokwatch.analysis import failure_alert

            # A bare save_pretrained directory has no step: -1 sorts it first, shown as "-".
            step = decision.step if decision.step is not None else -1
            row_id = watcher_store.record_checkpoint(
                self.run_id,
                str(decision.path),
                step,
                decision.fingerprint or "",
                decision.kind,
                decision.reason or None,
            )
            if decision.kind == "failed" and row_id >= 0:
                watcher_store.add_alert(
                    self.run_id, failure_alert(step, str(decision.path), decision.reason, row_id)
                )
            elif decision.kind in ("vanished", "superseded"):
                self._say(f"step {step}: {decision.kind} ({decision.path})")

        s = self.settings
        self.watcher = Watcher(
            self.run_dir,
            on_decision,
            poll_s=s.poll,
            rescan_s=s.rescan_s,
            settle_s=s.settle_s,
            ready_marker=s.ready_marker,
            known=self._known_decisions(),
        )
        self.watcher.scan_now()
        self.watcher.start()

    # Worker -----------------------------------------------------------------------------

    def _start_worker(self) -> None:
        from grokwatch.worker import worker_main

        settings = {
            "device": self.settings.device,
            "batch_size": self.settings.batch_size,
            "threads": self.settings.threads,
            "trust_remote_code": self.settings.trust_remote_code,
            "max_memory_bytes": self.settings.max_memory_bytes,
            "memorization_eps": self.settings.memorization_eps,
            "detector": dict(self.settings.detector),
            "debug": self.settings.debug,
        }
        ctx = multiprocessing.get_context("spawn")
        self.worker = ctx.Process(
            target=worker_main,
            args=(str(self.store_path), self.run_id, settings, os.getpid()),
            name="grokwatch-worker",
            daemon=True,
        )
        self._worker_started_at = time.time()
        if threading.current_thread() is not threading.main_thread():
            self.worker.start()
            return
        # Ctrl+C signals the whole foreground group, the worker too, also while it boots and
        # before worker_main can ignore it (a KeyboardInterrupt traceback from its imports). An
        # ignored signal stays ignored across exec, so start it with SIGINT ignored; a Ctrl+C
        # in these few milliseconds is lost, and the next one stops the daemon.
        previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
        try:
            self.worker.start()
        finally:
            signal.signal(signal.SIGINT, previous)

    def _check_worker(self) -> None:
        from grokwatch.analysis import failure_alert, worker_down_alert
        from grokwatch.worker import WORKER_USAGE_EXIT

        assert self.store is not None
        w = self.worker
        if w is None or w.is_alive():
            return
        code = w.exitcode
        if code == WORKER_USAGE_EXIT:
            # The worker printed a usage error (e.g. --device names a GPU that is not there):
            # every checkpoint would fail alike, so stop instead of failing them all.
            self.exit_code = 2
            self.stop_event.set()
            return
        now = time.time()
        if self._dead_pid != w.pid:  # handle each death once
            self._dead_pid = w.pid
            reason = f"worker process exited with code {code}"
            self.store.add_alert(self.run_id, worker_down_alert(reason, now))
            running = self.store.conn.execute(
                "SELECT id, step, path, attempts FROM checkpoints"
                " WHERE run_id = ? AND status = 'running'",
                (self.run_id,),
            ).fetchall()
            for row in running:
                if row["attempts"] >= MAX_ATTEMPTS:
                    why = f"worker crashed {row['attempts']} times on it ({reason})"
                    alert = failure_alert(row["step"], row["path"], why, row["id"])
                    self.store.finish_checkpoint(row["id"], "failed", why, alert)
            self.store.requeue_running(self.run_id)
            quick = now - self._worker_started_at < QUICK_DEATH_S
            self._quick_deaths = self._quick_deaths + 1 if quick else 0
            # A worker that keeps dying at start would restart (and alert) every loop: back off.
            delay = 0.0
            if self._quick_deaths >= 3:
                delay = min(RESTART_BACKOFF_MAX_S, 2.0 ** (self._quick_deaths - 2))
            self._restart_at = now + delay
            self._say(
                f"grokwatch: {reason}; restarting it" + (f" in {delay:.0f} s" if delay else "")
            )
        if now >= self._restart_at:
            self._start_worker()

    def _stop_worker(self) -> None:
        w = self.worker
        if w is None:
            return
        if w.is_alive():
            w.terminate()
            w.join(WORKER_STOP_S)
        if w.is_alive():
            w.kill()
            w.join(WORKER_STOP_S)
        self.worker = None

    # Alerts -----------------------------------------------------------------------------

    def _deliver(self) -> None:
        from grokwatch.notify import FailureLog, run_command_hook, send_apprise

        assert self.store is not None
        if self._failures is None:
            self._failures = FailureLog()
        channels: list[tuple[str, Any]] = []
        if self.settings.on_alert:
            cmd = self.settings.on_alert
            channels.append(("command", lambda a: run_command_hook(cmd, a)))
        if self.settings.notify_urls:
            urls = self.settings.notify_urls
            channels.append(("apprise", lambda a: send_apprise(urls, a)))
        for channel, send in channels:
            for row in self.store.undelivered_alerts(self.run_id, channel):
                if self._previous_start is not None and row["created_at"] < self._previous_start:
                    # Older than the previous daemon: it had its chance; never flood on restart.
                    self.store.record_delivery(row["id"], channel, False, "skipped: old alert")
                    continue
                alert = dict(row) | {"group": row["grp"]}
                result = send(alert)
                self.store.record_delivery(row["id"], channel, result.ok, result.error)
                if self._failures.should_report(result):
                    state = "works again" if result.ok else f"failed: {result.error}"
                    self._say(f"grokwatch: alert channel {channel} {state}")

    def _check_overdue(self) -> None:
        from grokwatch.alerts import overdue_alert

        assert self.store is not None
        now = time.time()
        if self.settings.once or now - self._last_overdue_check < OVERDUE_CHECK_S:
            return
        self._last_overdue_check = now
        # When training wrote a checkpoint, not when we noticed it: checkpoints found at start
        # arrive in one burst, which says nothing about the run's rhythm.
        times = []
        for path, pending_at in self.store.arrivals(self.run_id):
            try:
                times.append(Path(path).stat().st_mtime)
            except OSError:
                times.append(pending_at)
        draft = overdue_alert(times, now)
        if draft is not None:
            self.store.add_alert(self.run_id, _draft_dict(draft))

    def _print_changes(self, reader: Reader) -> None:
        seq = reader.seq()
        if seq == self._printed_seq:
            return
        since = self._printed_seq
        self._printed_seq = seq
        for c in reader.checkpoints(self.run_id, since):
            if c["status"] == "done":
                g = [m for m in reader.metrics(self.run_id, since) if m["checkpoint_id"] == c["id"]]
                top = next((m for m in g if m["grp"] == "__all__"), None)
                if top:
                    self._say(
                        f"step {c['step']}: loss {_fmt(top['loss'])}  distance"
                        f" {_fmt(top['pathway_distance'])}  complexity {_fmt(top['complexity'])}"
                        f"  ({_fmt(c['total_s'])} s)"
                    )
            elif c["status"] == "failed":
                self._say(f"step {c['step']}: failed: {c['reason']}")
        for a in reader.alerts(self.run_id, since):
            group = f" [{a['grp']}]" if a["grp"] else ""
            self._say(f"ALERT {a['kind']}{group} step {a['step']}: {a['message']}")

    # Main loop --------------------------------------------------------------------------

    def _queue_idle(self) -> bool:
        assert self.store is not None
        counts = self.store.queue_counts(self.run_id)
        return not any(counts.get(s) for s in ("seen", "pending", "running"))

    def run(self) -> int:
        """Run until stopped (or, with --once, until every checkpoint reached a final state)."""
        self._open()
        reader = Reader(self.store_path)
        try:
            self._start_watcher()
            self._start_worker()
            last_beat = 0.0
            while not self.stop_event.is_set():
                now = time.time()
                if now - last_beat >= self.settings.heartbeat_s:
                    self._beat()
                    last_beat = now
                self._check_worker()
                self._deliver()
                self._check_overdue()
                self._print_changes(reader)
                finishing = self.settings.once or self.finish_when_idle.is_set()
                if finishing and self.watcher.wait_idle(0) and self._queue_idle():
                    break
                self.stop_event.wait(LOOP_S)
            self._print_changes(reader)
            self._deliver()
            return self.exit_code
        finally:
            self.close()
            reader.close()

    def close(self) -> None:
        """Stop the watcher and the worker, requeue interrupted work, release the lock."""
        if self.watcher is not None:
            self.watcher.stop()
            self.watcher = None
        self._stop_worker()
        if self.store is not None:
            self.store.requeue_running(self.run_id)
            self._beat(stopped=True)
            self.store.close()
            self.store = None
        self.lock.release()


def _fmt(value: Any) -> str:
    if value is None:
        return "-"
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def _draft_dict(draft: Any) -> dict[str, Any]:
    return {
        "kind": draft.kind,
        "step": draft.step,
        "group": draft.group,
        "message": draft.message,
        "evidence": draft.evidence,
        "dedupe_key": draft.dedupe_key,
    }


def run_daemon(settings: Settings, out: TextIO | None = None, daemon: Daemon | None = None) -> int:
    """Run the daemon in the foreground until SIGINT/SIGTERM (or --once is done)."""
    logging.basicConfig(
        level=logging.DEBUG if settings.debug else logging.WARNING,
        format="%(asctime)s %(name)s %(levelname)s %(message)s",
    )
    daemon = daemon or Daemon(settings, out)

    def _stop(signum: int, frame: Any) -> None:
        daemon.stop_event.set()

    previous = {s: signal.signal(s, _stop) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        return daemon.run()
    except GrokwatchError:
        raise
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)


def store_path_for(settings: Settings) -> Path:
    """The store a watch of these settings writes to."""
    return resolve_store(settings.run_dir.expanduser().resolve(), settings.db)
