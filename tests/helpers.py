"""Shared test helpers: a slow checkpoint writer, a deadline poller, and daemon subprocesses.

Tests synchronise only by polling the store (or a predicate) until a deadline; the pauses in the
writer pace it like a slow filesystem and never stand in for synchronisation.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar

T = TypeVar("T")

# Generous: two shared cores, and a fresh worker imports torch and transformers (seconds).
DEADLINE_S = 180.0
POLL_S = 0.02
REPO_ROOT = Path(__file__).resolve().parent.parent
WEIGHTS = "model.safetensors"
GROUPS = ("alpha", "beta")


# Polling ------------------------------------------------------------------------------------


def wait_for(
    predicate: Callable[[], T],
    timeout_s: float = DEADLINE_S,
    what: str = "a condition",
    interval_s: float = POLL_S,
) -> T:
    """Poll `predicate` until it returns something truthy (returned); fail at the deadline."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s:g} s waiting for {what}")
        time.sleep(interval_s)


def query(db: Path, sql: str, *args: Any) -> list[dict[str, Any]]:
    """Run one read-only query on a store (a fresh connection: always the latest commit)."""
    if not Path(db).is_file():
        return []
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=30)
    conn.row_factory = sqlite3.Row
    try:
        return [dict(r) for r in conn.execute(sql, args).fetchall()]
    except sqlite3.OperationalError:
        return []  # schema not created yet: the daemon is still starting
    finally:
        conn.close()


def checkpoints(db: Path) -> list[dict[str, Any]]:
    """Every checkpoint row of a store, in step then id order."""
    return query(db, "SELECT * FROM checkpoints ORDER BY step, id")


def statuses(db: Path) -> dict[int, list[str]]:
    """Step -> statuses of its rows (oldest first)."""
    out: dict[int, list[str]] = {}
    for row in checkpoints(db):
        out.setdefault(row["step"], []).append(row["status"])
    return out


def heartbeat(db: Path) -> dict[str, Any] | None:
    """The daemon's heartbeat row, if written."""
    rows = query(db, "SELECT * FROM heartbeat WHERE id = 1")
    return rows[0] if rows else None


def alerts(db: Path, kind: str | None = None) -> list[dict[str, Any]]:
    """Alerts of a store (of one kind), oldest first."""
    rows = query(db, "SELECT * FROM alerts ORDER BY id")
    return [r for r in rows if kind is None or r["kind"] == kind]


def all_final(db: Path, steps: Sequence[int]) -> bool:
    """Whether every step has a row and no row is seen, pending or running."""
    found = statuses(db)
    return all(s in found for s in steps) and not any(
        st in ("seen", "pending", "running") for sts in found.values() for st in sts
    )


# Models, probes and checkpoint writers ------------------------------------------------------


def tiny_config() -> Any:
    """The test model: OLMoE, 2 layers, hidden 32, 4 experts, top-2."""
    from grokwatch.tinymodels import tiny_olmoe_config

    return tiny_olmoe_config(num_layers=2, hidden_size=32, num_experts=4, top_k=2)


def build_templates(directory: Path, seeds: Sequence[int] = (0, 1, 2)) -> list[Path]:
    """Write one complete save_pretrained checkpoint per seed (the writer copies from these)."""
    import torch

    from grokwatch.tinymodels import save_tiny_checkpoint

    torch.set_num_threads(1)
    return [save_tiny_checkpoint(directory / f"seed{s}", tiny_config(), seed=s) for s in seeds]


def save_tokenizer(directory: Path) -> None:
    """Save the character tokenizer where the worker looks for it (the run directory)."""
    from grokwatch.tinymodels import build_tokenizer

    build_tokenizer().save_pretrained(directory)


def write_probe(path: Path, per_group: int = 4, groups: Sequence[str] = GROUPS) -> Path:
    """Write a small JSONL probe: `per_group` samples in each group."""
    lines = [
        json.dumps({"text": f"{g} sample {i}: the {g} quick brown fox {i * 7} jumps.", "group": g})
        for g in groups
        for i in range(per_group)
    ]
    path.write_text("\n".join(lines) + "\n")
    return path


def _chunks(data: bytes, n: int) -> list[bytes]:
    size = max(1, -(-len(data) // n))
    return [data[i : i + size] for i in range(0, len(data), size)]


def _slow_write(path: Path, data: bytes, pause_s: float, n_chunks: int) -> None:
    with open(path, "wb") as handle:
        for chunk in _chunks(data, n_chunks):
            handle.write(chunk)
            handle.flush()
            time.sleep(pause_s)


def wrong_tensors_shard() -> bytes:
    """A well-formed safetensors file that holds none of the model's tensors."""
    import numpy as np
    from safetensors.numpy import save

    return save({"unrelated.weight": np.zeros((8, 8), dtype=np.float32)})


def write_checkpoint(
    template: Path,
    target: Path,
    *,
    pause_s: float = 0.05,
    n_chunks: int = 4,
    corrupt: str | None = None,
    trainer_step: int | None = None,
) -> float:
    """Copy a checkpoint file by file with pauses like a real writer; return when it finished.

    Order: config.json, the small files, the weights in chunks (so a save_pretrained directory
    is complete with its last byte), and for Trainer directories (trainer_step set)
    optimizer.pt then trainer_state.json. `corrupt` is "truncated"
    (half the weights, then the writer dies), "garbage" (random bytes of the same size) or
    "wrong_tensors" (a valid safetensors file without the model's tensors).
    """
    target.mkdir(parents=True)
    names = sorted(p.name for p in template.iterdir() if p.is_file())
    order = ["config.json", *(n for n in names if n not in ("config.json", WEIGHTS)), WEIGHTS]
    for name in order:
        data = (template / name).read_bytes()
        if name == WEIGHTS and corrupt == "truncated":
            _slow_write(target / name, data[: len(data) // 2], pause_s, n_chunks)
            return time.time()  # the writer died mid-file
        if name == WEIGHTS and corrupt == "garbage":
            data = os.urandom(len(data))
        if name == WEIGHTS and corrupt == "wrong_tensors":
            data = wrong_tensors_shard()
        _slow_write(target / name, data, pause_s, n_chunks if name == WEIGHTS else 1)
    if trainer_step is not None:
        _slow_write(target / "optimizer.pt", b"\0" * 4096, pause_s, 2)
        state = {
            "global_step": trainer_step,
            "log_history": [{"step": trainer_step, "loss": 1.0 + 1.0 / trainer_step}],
        }
        (target / "trainer_state.json").write_text(json.dumps(state))
    return time.time()


def rotate(run_dir: Path, keep: int) -> list[Path]:
    """Delete all but the newest `keep` step directories, like save_total_limit; return them."""
    from grokwatch.checkpoints import step_from_name

    dirs = sorted(
        (p for p in run_dir.iterdir() if p.is_dir() and step_from_name(p.name) is not None),
        key=lambda p: step_from_name(p.name) or 0,
    )
    doomed = dirs[: max(0, len(dirs) - keep)]
    for path in doomed:
        shutil.rmtree(path)
    return doomed


# Daemon subprocesses ------------------------------------------------------------------------


def daemon_env(tmp: Path, **extra: str) -> dict[str, str]:
    """Environment for a daemon under test: short settle, private state/config dirs, offline."""
    env = dict(os.environ)
    env.update(
        {
            "GROKWATCH_SETTLE_S": "1",
            "GROKWATCH_HEARTBEAT_S": "0.5",
            "XDG_STATE_HOME": str(tmp / "state"),
            "XDG_CONFIG_HOME": str(tmp / "config"),
            "HF_HUB_OFFLINE": "1",
            "TRANSFORMERS_OFFLINE": "1",
            "TOKENIZERS_PARALLELISM": "false",
            "OMP_NUM_THREADS": "1",
            "PYTHONUNBUFFERED": "1",
        }
    )
    env.update(extra)
    return env


def daemon_args(
    run_dir: Path, db: Path, probe: Path | None, *extra: str, headless: bool = True
) -> list[str]:
    """The command line of a watch with the tiny test settings."""
    args = [sys.executable, "-m", "grokwatch", str(run_dir)]
    if headless:
        args.append("--headless")
    args += ["--db", str(db), "--device", "cpu", "--threads", "1", "--max-tokens", "32"]
    if probe is not None:
        args += ["--probe", str(probe)]
    return [*args, *extra]


class DaemonProcess:
    """A `python -m grokwatch RUN --headless` subprocess in its own session (group)."""

    def __init__(self, args: list[str], db: Path, env: dict[str, str], log_dir: Path) -> None:
        self.db = db
        log_dir.mkdir(parents=True, exist_ok=True)
        n = len(list(log_dir.glob("daemon-*.out")))
        self.out_path = log_dir / f"daemon-{n}.out"
        self.err_path = log_dir / f"daemon-{n}.err"
        with open(self.out_path, "wb") as out, open(self.err_path, "wb") as err:
            self.proc = subprocess.Popen(
                args,
                cwd=REPO_ROOT,
                env=env,
                stdout=out,
                stderr=err,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )

    @property
    def pid(self) -> int:
        """The daemon's pid."""
        return self.proc.pid

    def output(self) -> str:
        """Everything the daemon printed so far (stdout, then stderr)."""
        return self.out_path.read_text(errors="replace") + self.err_path.read_text(errors="replace")

    def heartbeat(self) -> dict[str, Any] | None:
        """This daemon's heartbeat row (None until it wrote one)."""
        hb = heartbeat(self.db)
        return hb if hb is not None and hb["pid"] == self.pid else None

    def worker_pid(self) -> int | None:
        """The pid of the daemon's live worker process, from the heartbeat."""
        hb = self.heartbeat()
        if hb is None or hb["worker_state"] != "alive" or hb["worker_pid"] is None:
            return None
        return int(hb["worker_pid"])

    def wait_ready(self, timeout_s: float = DEADLINE_S) -> int:
        """Wait until the daemon beats with a live worker; return the worker's pid."""

        def ready() -> int | None:
            if self.proc.poll() is not None:
                raise AssertionError(f"daemon exited {self.proc.returncode}: {self.output()}")
            return self.worker_pid()

        return wait_for(ready, timeout_s, "the daemon's heartbeat with a live worker")

    def signal(self, sig: int) -> None:
        """Send a signal to the daemon process only."""
        os.kill(self.pid, sig)

    def wait(self, timeout_s: float = DEADLINE_S) -> int:
        """Wait for the daemon to exit; return its exit code."""
        try:
            return self.proc.wait(timeout_s)
        except subprocess.TimeoutExpired:
            raise AssertionError(f"daemon still running after {timeout_s:g} s") from None

    def kill_group(self) -> None:
        """SIGKILL the daemon and everything in its session (its worker) if still running."""
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.pid, signal.SIGKILL)
        self.proc.wait(30)


def start_daemon(
    run_dir: Path,
    db: Path,
    probe: Path | None,
    *extra: str,
    tmp: Path,
    env: dict[str, str] | None = None,
) -> DaemonProcess:
    """Start a headless daemon subprocess on run_dir with the tiny test settings."""
    return DaemonProcess(
        daemon_args(run_dir, db, probe, *extra), db, env or daemon_env(tmp), tmp / "logs"
    )


def run_once(
    run_dir: Path,
    db: Path,
    probe: Path | None,
    *extra: str,
    tmp: Path,
    env: dict[str, str] | None = None,
    timeout_s: float = DEADLINE_S,
) -> subprocess.CompletedProcess[str]:
    """Run `grokwatch RUN --once` to completion and return the finished process."""
    return subprocess.run(
        daemon_args(run_dir, db, probe, "--once", *extra),
        cwd=REPO_ROOT,
        env=env or daemon_env(tmp),
        capture_output=True,
        text=True,
        timeout=timeout_s,
        stdin=subprocess.DEVNULL,
        check=False,
    )


def pid_alive(pid: int) -> bool:
    """Whether a process exists and is not a zombie."""
    try:
        with open(f"/proc/{pid}/stat") as handle:
            return handle.read().split(") ")[-1].split()[0] != "Z"
    except OSError:
        return False


def ignores_signal(pid: int, signum: int) -> bool:
    """Whether a process has a signal's disposition set to ignore (/proc/PID/status SigIgn)."""
    with open(f"/proc/{pid}/status") as handle:
        line = next(x for x in handle if x.startswith("SigIgn:"))
    return bool(int(line.split()[1], 16) & (1 << (signum - 1)))


def run_daemon_until_final(
    run_dir: Path, db: Path, probe: Path, steps: Sequence[int], *, tmp: Path, what: str
) -> None:
    """Start a daemon, wait until every listed step is final, stop it; it must exit 0."""
    daemon = start_daemon(run_dir, db, probe, tmp=tmp)
    try:
        daemon.wait_ready()
        wait_for(lambda: all_final(db, steps), what=what)
    finally:
        daemon.signal(signal.SIGTERM)
        code = daemon.wait()
    assert code == 0, daemon.output()
