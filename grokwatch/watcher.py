"""Notice checkpoints: watchdog events prompt debounced scans; periodic scans decide too.

Events are only a prompt: every decision comes from observing a directory (checkpoints.observe)
and feeding the Tracker. No store here: decisions go to a callback on the watcher's thread.

Polling mode (`poll_s`) runs no observer at all, just a full scan every poll_s. watchdog's
PollingObserver would stat every file of the tree (optimizer and DeepSpeed shards of every old
checkpoint) each interval and then still need our scan to decide; our scan touches only the
checkpoint files of candidate directories and reuses parsed headers, so it is the cheaper
choice on the network filesystems that polling is for, and one thread fewer.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable, Iterable
from pathlib import Path

from watchdog.events import (
    DirCreatedEvent,
    DirDeletedEvent,
    DirMovedEvent,
    EventsLostEvent,
    FileAttribEvent,
    FileClosedEvent,
    FileClosedNoWriteEvent,
    FileCreatedEvent,
    FileDeletedEvent,
    FileModifiedEvent,
    FileMovedEvent,
    FileOpenedEvent,
    FileSystemEvent,
    FileSystemEventHandler,
)
from watchdog.observers import Observer
from watchdog.observers.api import BaseObserver

from grokwatch.checkpoints import (
    CONFIG,
    Decision,
    Tracker,
    find_candidates,
    is_temporary_name,
    looks_like_checkpoint,
    observe,
    sort_key,
    step_from_name,
    step_of,
    subdirectories,
)
from grokwatch.errors import CheckpointVanished, UsageError

log = logging.getLogger(__name__)

# Open and close-no-write are left out: the worker's own reads would flood us. Subscribing only
# to these also keeps inotify from queueing the others at all.
_EVENT_FILTER: list[type[FileSystemEvent]] = [
    FileCreatedEvent,
    FileModifiedEvent,
    FileAttribEvent,
    FileClosedEvent,
    FileDeletedEvent,
    FileMovedEvent,
    DirCreatedEvent,
    DirDeletedEvent,
    DirMovedEvent,
    EventsLostEvent,
]
_IGNORED_EVENTS = (FileOpenedEvent, FileClosedNoWriteEvent)
_MAX_DEBOUNCES = 10  # a file written for minutes still gets a scan every 10 debounce periods
_MAX_RECHECK_S = 2.0
_FALLBACK_POLL_S = 10.0  # when inotify cannot be set up (watch limit reached)


class _Prompter(FileSystemEventHandler):
    """Forwards every watchdog event to the watcher, on the observer's thread."""

    def __init__(self, prompt: Callable[[FileSystemEvent], None]) -> None:
        super().__init__()
        self._prompt = prompt

    def dispatch(self, event: FileSystemEvent) -> None:
        """Hand the event over; all filtering and mapping happens in the watcher."""
        self._prompt(event)


class Watcher:
    """Watches a run directory and reports checkpoint decisions through `on_decision`.

    `on_decision` runs on the watcher's thread (the caller's, for scan_now and an unstarted
    wait_idle) while scans wait for it: keep it cheap. It should not raise; an exception is
    logged and counted in `callback_errors`, and the decision is not repeated.
    `known` restores the tracker from the store's last decision per path (seen, pending or
    failed), so a restart reports only what changed and notices what vanished meanwhile.
    """

    def __init__(
        self,
        run_dir: Path,
        on_decision: Callable[[Decision], None],
        *,
        poll_s: float | None = None,
        rescan_s: float = 30.0,
        settle_s: float = 60.0,
        debounce_s: float = 0.5,
        ready_marker: str | None = None,
        clock: Callable[[], float] = time.monotonic,
        known: Iterable[Decision] = (),
    ) -> None:
        # abspath, not resolve(): event paths are reported under the path as it was watched.
        self.run_dir = Path(os.path.abspath(run_dir))
        self._on_decision = on_decision
        self._poll_s = poll_s
        self._full_scan_s = poll_s if poll_s is not None else rescan_s
        self._debounce_s = debounce_s
        # Seen checkpoints are re-observed this often: fine enough for settle timeouts, soon
        # enough that a complete one is confirmed within seconds even with a long settle_s.
        self._recheck_s = max(debounce_s, min(settle_s / 10, _MAX_RECHECK_S), 0.05)
        self._ready_marker = ready_marker
        self._clock = clock
        self._tracker = Tracker(settle_s=settle_s, confirm_s=min(debounce_s, settle_s))
        for decision in known:
            self._tracker.restore(decision)
        # _scan_lock serialises scans (tracker + callbacks); _cond guards the prompt queue and
        # wakes the loop and wait_idle().
        self._scan_lock = threading.RLock()
        self._cond = threading.Condition()
        self._due: dict[Path, tuple[float, float]] = {}  # key -> (first prompt, due)
        self._full_requested = False
        self._busy = 0
        self._scans_done = 0
        self._stop = threading.Event()
        self._observer: BaseObserver | None = None
        self._thread: threading.Thread | None = None
        # Snapshots swapped after each scan, read by other threads without the scan lock.
        self._tracked: frozenset[str] = frozenset(self._tracker.paths())
        self._unsettled: frozenset[str] = frozenset(self._tracker.paths("seen"))
        self.callback_errors = 0

    # public API -------------------------------------------------------------------------

    def start(self) -> None:
        """Start the observer (unless polling) and the watcher thread, which scans first."""
        if self._thread is not None:
            return
        self._check_run_dir()
        self._stop.clear()
        if self._poll_s is None:
            self._start_observer()
        self._thread = threading.Thread(target=self._run, name="grokwatch-watcher", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stop the observer and the watcher thread, joining each within about 2 s."""
        self._stop.set()
        with self._cond:
            self._cond.notify_all()
        observer, self._observer = self._observer, None
        if observer is not None:
            observer.stop()
            observer.join(timeout=2.0)
        thread, self._thread = self._thread, None
        if thread is not None:
            thread.join(timeout=2.0)

    def scan_now(self) -> None:
        """Scan the whole tree synchronously, reporting decisions in step order."""
        self._check_run_dir()
        self._full_scan()

    def wait_idle(self, timeout_s: float) -> bool:
        """Wait until every candidate is decided (none in 'seen'); False on timeout.

        Without a running thread (`--once` may only call scan_now) the caller's thread does the
        re-checks that make settle timeouts fire.
        """
        deadline = self._clock() + timeout_s
        while True:
            running = self._thread is not None and self._thread.is_alive()
            if not running:
                if self._scans_done == 0:
                    self.scan_now()
                else:
                    self._recheck()
            with self._cond:
                if self._idle():
                    return True
                remaining_s = deadline - self._clock()
                if remaining_s <= 0:
                    return False
                self._cond.wait(min(remaining_s, self._recheck_s))

    # threads ----------------------------------------------------------------------------

    def _check_run_dir(self) -> None:
        if not self.run_dir.is_dir():
            raise UsageError(
                f"{self.run_dir}: no such directory; "
                "pass the directory your training saves checkpoints into"
            )

    def _start_observer(self) -> None:
        observer = Observer(timeout=0.2)
        try:
            observer.schedule(
                _Prompter(self._prompt),
                str(self.run_dir),
                recursive=True,
                event_filter=_EVENT_FILTER,
            )
            observer.start()
        except OSError as exc:
            self._full_scan_s = min(self._full_scan_s, _FALLBACK_POLL_S)
            log.warning(
                "%s: cannot watch for file events (%s); scanning every %g s instead "
                "(raise fs.inotify.max_user_watches, or pass --poll)",
                self.run_dir,
                exc,
                self._full_scan_s,
            )
            return
        self._observer = observer

    def _prompt(self, event: FileSystemEvent) -> None:
        """Queue a debounced scan of the checkpoint directory an event touched."""
        if isinstance(event, _IGNORED_EVENTS):
            return
        now = self._clock()
        with self._cond:
            if isinstance(event, EventsLostEvent):
                self._full_requested = True  # the kernel queue overflowed: trust nothing
                self._cond.notify_all()
                return
            for raw in (event.src_path, getattr(event, "dest_path", "")):
                key = self._key_for(os.fsdecode(raw), event.is_directory) if raw else None
                if key is None:
                    continue
                first, _ = self._due.get(key, (now, now))
                cap = first + _MAX_DEBOUNCES * self._debounce_s
                if key not in self._due:
                    self._cond.notify_all()  # a later due time never needs an earlier wake-up
                self._due[key] = (first, min(now + self._debounce_s, cap))

    def _key_for(self, path: str, is_directory: bool) -> Path | None:
        """Map an event path to the directory to scan: the checkpoint dir at depth 1 or 2."""
        directory = Path(path) if is_directory else Path(path).parent
        try:
            parts = directory.relative_to(self.run_dir).parts
        except ValueError:
            return None
        if not parts:
            return self.run_dir
        first = self.run_dir / parts[0]
        if len(parts) == 1 or str(first) in self._tracked or step_from_name(parts[0]) is not None:
            return first
        return first / parts[1]

    def _run(self) -> None:
        self._guarded(self._full_scan)
        next_full = self._clock() + self._full_scan_s
        next_recheck = self._clock() + self._recheck_s
        while not self._stop.is_set():
            with self._cond:
                now = self._clock()
                wake = min([next_full, next_recheck, *(due for _, due in self._due.values())])
                if not self._full_requested and wake > now:
                    self._cond.wait(wake - now)
                if self._stop.is_set():
                    break
                now = self._clock()
                full = self._full_requested or now >= next_full
                keys = list(self._due) if full else [k for k, v in self._due.items() if v[1] <= now]
                for key in keys:
                    del self._due[key]
                self._full_requested = False
                self._busy += 1  # popped prompts are not idle until their scan has run
            try:
                if full:
                    self._guarded(self._full_scan)
                    next_full = self._clock() + self._full_scan_s
                else:
                    for key in keys:
                        self._guarded(lambda key=key: self._scan_key(key))
                if self._clock() >= next_recheck:
                    self._guarded(self._recheck)
                    next_recheck = self._clock() + self._recheck_s
            finally:
                with self._cond:
                    self._busy -= 1
                    self._cond.notify_all()

    def _guarded(self, scan: Callable[[], None]) -> None:
        """Run a scan; an unexpected error is logged and must not end the watcher thread."""
        try:
            scan()
        except Exception:
            log.exception("%s: scan failed; retrying at the next scan", self.run_dir)

    def _idle(self) -> bool:
        """Called under _cond: scanned once, nothing queued or running, no checkpoint in 'seen'."""
        return (
            self._scans_done > 0
            and not self._due
            and not self._full_requested
            and self._busy == 0
            and not self._unsettled
        )

    # scans ------------------------------------------------------------------------------

    def _full_scan(self) -> None:
        with self._scan_lock:
            tracked = [Path(p) for p in self._tracker.paths()]
            targets = set(find_candidates(self.run_dir)) | {p for p in tracked if p.is_dir()}
            self._apply(targets, [p for p in tracked if not p.is_dir()])
            self._scans_done += 1

    def _scan_key(self, key: Path) -> None:
        """Scan the candidates at or under one prompted directory, and notice vanished ones."""
        with self._scan_lock:
            if key == self.run_dir:
                # Root-level events: only the run directory itself can be a checkpoint here.
                inside = [key] if str(key) in self._tracked else []
                targets = {key} if (key / CONFIG).is_file() or inside else set()
            else:
                inside = [Path(p) for p in self._tracker.paths() if _within(Path(p), key)]
                targets = {p for p in inside if p.is_dir()}
                if key.is_dir() and not key.is_symlink() and not is_temporary_name(key.name):
                    if looks_like_checkpoint(key):
                        targets.add(key)
                    elif key.parent == self.run_dir:
                        targets.update(c for c in subdirectories(key) if looks_like_checkpoint(c))
            self._apply(targets, [p for p in inside if not p.is_dir()])
            self._note_fleeting(key, inside)

    def _note_fleeting(self, key: Path, inside: list[Path]) -> None:
        """Record a checkpoint that appeared and was deleted before any scan could see it.

        Rotation (save_total_limit) can remove a directory within one debounce of its
        creation; the history must still list every checkpoint the run wrote.
        """
        if key == self.run_dir or inside or os.path.lexists(key) or is_temporary_name(key.name):
            return
        step = step_from_name(key.name)
        if step is None:
            return
        reason = "vanished: appeared and was deleted before it was complete"
        self._report([Decision("vanished", str(key), step, "", reason)])

    def _recheck(self) -> None:
        """Re-observe checkpoints still in 'seen', so settle timeouts fire without events."""
        with self._scan_lock:
            self._apply({Path(p) for p in self._tracker.paths("seen")}, [])

    def _apply(self, targets: Iterable[Path], gone: Iterable[Path]) -> None:
        """Observe targets in step order, feed the tracker, report decisions (scan lock held)."""
        for path in gone:
            self._report(self._tracker.vanish(str(path)))
        for path in sorted(targets, key=lambda p: sort_key(p, step_of(p))):
            try:
                obs = observe(path, self._ready_marker, run_dir=self.run_dir)
            except CheckpointVanished:
                self._report(self._tracker.vanish(str(path)))
                continue
            self._report(self._tracker.update(obs, self._clock()))
            if obs.verdict == "complete" and self._tracker.state(str(path)) == "seen":
                # Looks complete: confirm after one debounce rather than at the next recheck,
                # which cuts the detect latency from seconds to about the debounce.
                self._schedule_confirm(path)
        self._tracked = frozenset(self._tracker.paths())
        self._unsettled = frozenset(self._tracker.paths("seen"))

    def _schedule_confirm(self, path: Path) -> None:
        if self._thread is None:
            return  # without the thread, wait_idle's re-checks confirm it
        now = self._clock()
        with self._cond:
            if path not in self._due:
                self._due[path] = (now, now + self._debounce_s)
                self._cond.notify_all()

    def _report(self, decisions: list[Decision]) -> None:
        for decision in decisions:
            log.debug("%s %s: %s", decision.kind, decision.path, decision.reason)
            try:
                self._on_decision(decision)
            except Exception:
                self.callback_errors += 1
                log.exception("%s: decision callback failed for %s", decision.path, decision.kind)


def _within(path: Path, directory: Path) -> bool:
    return path == directory or directory in path.parents
