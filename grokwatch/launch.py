"""`grokwatch RUN_DIR` on a terminal: a headless daemon subprocess plus the TUI attached to it.

The daemon runs in its own process (its log goes next to the store), so the TUI process never
loads torch and a crash in either leaves the other's data intact. If another daemon already
watches the store, the TUI simply attaches to it.
"""

from __future__ import annotations

import fcntl
import os
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from grokwatch.config import Settings
from grokwatch.errors import GrokwatchError
from grokwatch.paths import resolve_store

STARTUP_DEADLINE_S = 60.0
STOP_DEADLINE_S = 8.0


def lock_is_held(store_path: Path) -> bool:
    """Whether some daemon currently holds this store's lock."""
    lock = Path(f"{store_path}.lock")
    if not lock.exists():
        return False
    fd = os.open(lock, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)
    return False


def daemon_command(settings: Settings, extra: Sequence[str] = ()) -> list[str]:
    """The command line of a headless daemon equivalent to these settings."""
    s = settings
    cmd = [sys.executable, "-m", "grokwatch", "watch", str(s.run_dir), "--headless"]
    options: list[tuple[str, object]] = [
        ("--probe", s.probe),
        ("--db", s.db),
        ("--device", s.device),
        ("--poll", s.poll),
        ("--ready-marker", s.ready_marker),
        ("--tau", s.tau),
        ("--max-tokens", s.max_tokens),
        ("--pair-bound", s.pair_bound),
        ("--batch-size", s.batch_size),
        ("--threads", s.threads),
        ("--on-alert", s.on_alert),
        ("--config", s.config),
    ]
    for flag, value in options:
        if value is not None:
            cmd += [flag, str(value)]
    if s.trust_remote_code:
        cmd.append("--trust-remote-code")
    if s.debug:
        cmd.append("--debug")
    return [*cmd, *extra]


def start_daemon(settings: Settings, store_path: Path) -> tuple[subprocess.Popen[bytes], Path]:
    """Start a headless daemon subprocess logging to `<store>.log`; wait until it beats."""
    from grokwatch.reader import Reader

    log_path = Path(f"{store_path}.log")
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with log_path.open("ab") as log:
        proc = subprocess.Popen(
            daemon_command(settings),
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,  # Ctrl+C in the TUI must not reach the daemon twice
        )
    deadline = time.monotonic() + STARTUP_DEADLINE_S
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            tail = log_path.read_text(errors="replace").strip().splitlines()[-1:] or ["no output"]
            raise GrokwatchError(f"daemon exited at start: {tail[0]} (log: {log_path})")
        if store_path.is_file():
            try:
                hb = Reader(store_path).heartbeat()
            except Exception:
                hb = None
            if hb is not None and hb.pid == proc.pid:
                break
        time.sleep(0.1)
    return proc, log_path


def stop_daemon(proc: subprocess.Popen[bytes]) -> int:
    """SIGTERM the daemon and wait for it (SIGKILL after a deadline)."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(STOP_DEADLINE_S)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    return proc.returncode or 0


def run_with_ui(settings: Settings, theme: str | None = None) -> int:
    """Watch with the TUI: start (or attach to) the daemon, run the app, stop what we started."""
    from grokwatch.ui.app import run_ui

    store_path = resolve_store(settings.run_dir.expanduser().resolve(), settings.db)
    if lock_is_held(store_path):
        print(f"grokwatch: a daemon already watches {store_path}; attaching", file=sys.stderr)
        return run_ui(store_path, theme=theme or settings.theme)
    proc, log_path = start_daemon(settings, store_path)
    try:
        code = run_ui(store_path, theme=theme or settings.theme)
    finally:
        stop_daemon(proc)
    print(f"grokwatch: daemon stopped; log in {log_path}; store {store_path}")
    return code
