"""The watcher with real watchdog observers on temp dirs; synchronised by polling with deadlines."""

from __future__ import annotations

import json
import shutil
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import save as safetensors_bytes
from watchdog.events import FileClosedNoWriteEvent, FileModifiedEvent, FileOpenedEvent

from grokwatch.checkpoints import Decision, observe
from grokwatch.watcher import Watcher

DEADLINE_S = 30.0  # generous: the machine is shared; tests wait on conditions, not on time


class Recorder:
    """Collects decisions from the watcher's thread and waits for conditions on them."""

    def __init__(self) -> None:
        self.decisions: list[Decision] = []
        self._cond = threading.Condition()
        self.marks: list[tuple[Decision, bool]] = []
        self.flag = threading.Event()  # set by a writer; each decision records its state

    def __call__(self, decision: Decision) -> None:
        with self._cond:
            self.decisions.append(decision)
            self.marks.append((decision, self.flag.is_set()))
            self._cond.notify_all()

    def wait_for(self, predicate: Callable[[list[Decision]], bool], what: str) -> None:
        """Block until the decisions so far satisfy `predicate`; fail the test at the deadline."""
        deadline = time.monotonic() + DEADLINE_S
        with self._cond:
            while not predicate(self.decisions):
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    pytest.fail(f"timed out waiting for {what}; got {self.summary()}")
                self._cond.wait(remaining)

    def wait_kind(self, kind: str, path: Path) -> Decision:
        """Wait for the first decision of a kind about a path and return it."""
        self.wait_for(lambda ds: any(d.kind == kind and d.path == str(path) for d in ds), kind)
        return next(d for d in self.decisions if d.kind == kind and d.path == str(path))

    def of(self, path: Path) -> list[str]:
        """Return the kinds reported for one path, in order."""
        with self._cond:
            return [d.kind for d in self.decisions if d.path == str(path)]

    def summary(self) -> list[tuple[str, str, str]]:
        """Return (kind, directory name, reason) of every decision, for failure messages."""
        return [(d.kind, Path(d.path).name, d.reason) for d in self.decisions]


def shard_bytes(seed: int = 0, n: int = 128) -> bytes:
    """Return a small real safetensors file's bytes."""
    rng = np.random.default_rng(seed)
    return safetensors_bytes({"w": rng.standard_normal((n, n)).astype(np.float32)})


def write_complete(directory: Path, seed: int = 0) -> Path:
    """Write a complete checkpoint (with trainer_state.json where the name asks for one)."""
    directory.mkdir(parents=True)
    (directory / "config.json").write_text(json.dumps({"model_type": "olmoe"}))
    (directory / "model.safetensors").write_bytes(shard_bytes(seed))
    if "checkpoint-" in directory.name:
        (directory / "trainer_state.json").write_text(json.dumps({"global_step": 1}))
    return directory


@pytest.fixture
def make_watcher() -> Iterator[Callable[..., tuple[Watcher, Recorder]]]:
    watchers: list[Watcher] = []

    def make(run_dir: Path, **kwargs: object) -> tuple[Watcher, Recorder]:
        recorder = Recorder()
        options: dict = {"settle_s": 0.5, "debounce_s": 0.1, "rescan_s": 30.0, **kwargs}
        watcher = Watcher(run_dir, recorder, **options)
        watchers.append(watcher)
        return watcher, recorder

    yield make
    for watcher in watchers:
        watcher.stop()


def test_checkpoint_written_file_by_file_is_pending_once_after_the_last_file(
    tmp_path: Path, make_watcher: Callable[..., tuple[Watcher, Recorder]]
) -> None:
    # settle_s is long against the writer's pauses: an unfinished checkpoint must not fail.
    watcher, recorder = make_watcher(tmp_path, settle_s=10.0)
    watcher.start()
    ckpt = tmp_path / "checkpoint-100"
    shard_names = ["model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors"]

    def writer() -> None:
        # The sleeps pace the writer like a slow filesystem; nothing synchronises on them.
        ckpt.mkdir()
        (ckpt / "config.json").write_text(json.dumps({"model_type": "olmoe"}))
        time.sleep(0.3)
        for i, name in enumerate(shard_names):
            data = shard_bytes(seed=i, n=256)
            with open(ckpt / name, "wb") as handle:
                for start in range(0, len(data), len(data) // 4):
                    handle.write(data[start : start + len(data) // 4])
                    handle.flush()
                    time.sleep(0.25)
        index = {"metadata": {}, "weight_map": {f"w{i}": n for i, n in enumerate(shard_names)}}
        (ckpt / "model.safetensors.index.json").write_text(json.dumps(index))
        time.sleep(0.3)
        (ckpt / "optimizer.pt").write_bytes(b"\0" * 1000)
        time.sleep(0.3)
        recorder.flag.set()  # from here on, pending is allowed
        (ckpt / "trainer_state.json").write_text(json.dumps({"global_step": 100}))

    thread = threading.Thread(target=writer)
    thread.start()
    pending = recorder.wait_kind("pending", ckpt)
    thread.join()
    assert pending.step == 100
    assert pending.fingerprint == observe(ckpt).fingerprint
    watcher.scan_now()  # one more full scan must not report it again
    assert recorder.of(ckpt) == ["seen", "pending"]
    assert all(flag for d, flag in recorder.marks if d.kind == "pending")


def test_ready_marker_gates_pending(
    tmp_path: Path, make_watcher: Callable[..., tuple[Watcher, Recorder]]
) -> None:
    ckpt = write_complete(tmp_path / "step_4")
    watcher, recorder = make_watcher(tmp_path, settle_s=3600.0, ready_marker="DONE")
    watcher.start()
    seen = recorder.wait_kind("seen", ckpt)
    assert seen.reason == "incomplete: ready marker DONE missing"
    recorder.flag.set()
    (ckpt / "DONE").touch()
    recorder.wait_kind("pending", ckpt)
    assert all(flag for d, flag in recorder.marks if d.kind == "pending")


def test_truncated_shard_fails_after_settle(
    tmp_path: Path, make_watcher: Callable[..., tuple[Watcher, Recorder]]
) -> None:
    watcher, recorder = make_watcher(tmp_path)
    watcher.start()
    ckpt = tmp_path / "step_7"
    ckpt.mkdir()
    (ckpt / "config.json").write_text("{}")
    data = shard_bytes()
    (ckpt / "model.safetensors").write_bytes(data[: len(data) // 3])
    failed = recorder.wait_kind("failed", ckpt)
    assert failed.step == 7
    assert failed.reason.startswith("incomplete: model.safetensors is ")
    assert failed.reason.endswith(", unchanged for 0.5 s")
    assert recorder.of(ckpt) == ["seen", "failed"]


def test_garbage_shard_fails_at_once(
    tmp_path: Path, make_watcher: Callable[..., tuple[Watcher, Recorder]]
) -> None:
    # The settle period exceeds the test deadline: a failure can only come from the header.
    watcher, recorder = make_watcher(tmp_path, settle_s=3600.0)
    watcher.start()
    ckpt = tmp_path / "step_8"
    ckpt.mkdir()
    (ckpt / "config.json").write_text("{}")
    (ckpt / "model.safetensors").write_bytes(b"garbage, not safetensors\n" * 200)
    failed = recorder.wait_kind("failed", ckpt)
    assert failed.reason.startswith("corrupt: model.safetensors header does not parse")


def test_existing_checkpoints_reported_in_step_order(
    tmp_path: Path, make_watcher: Callable[..., tuple[Watcher, Recorder]]
) -> None:
    for step in (100, 3, 20):
        write_complete(tmp_path / f"checkpoint-{step}", seed=step)
    watcher, recorder = make_watcher(tmp_path)
    watcher.start()
    recorder.wait_for(lambda ds: sum(d.kind == "pending" for d in ds) == 3, "three pending")
    for kind in ("seen", "pending"):
        steps = [d.step for d in recorder.decisions if d.kind == kind]
        assert steps == [3, 20, 100], kind


def test_rotation_is_vanished(
    tmp_path: Path, make_watcher: Callable[..., tuple[Watcher, Recorder]]
) -> None:
    old = write_complete(tmp_path / "checkpoint-1")
    watcher, recorder = make_watcher(tmp_path)
    watcher.start()
    recorder.wait_kind("pending", old)
    new = write_complete(tmp_path / "checkpoint-2", seed=2)
    recorder.wait_kind("pending", new)
    shutil.rmtree(old)
    vanished = recorder.wait_kind("vanished", old)
    assert vanished.reason == "vanished: directory is gone"
    assert recorder.of(new) == ["seen", "pending"]


def test_polling_mode(
    tmp_path: Path, make_watcher: Callable[..., tuple[Watcher, Recorder]]
) -> None:
    watcher, recorder = make_watcher(tmp_path, poll_s=0.2)
    watcher.start()
    assert watcher.wait_idle(DEADLINE_S)
    ckpt = write_complete(tmp_path / "step_5")
    recorder.wait_kind("pending", ckpt)
    (ckpt / "model.safetensors").write_bytes(shard_bytes(seed=1, n=64))  # a resumed run
    recorder.wait_for(lambda ds: [d.kind for d in ds].count("pending") == 2, "second pending")
    assert recorder.of(ckpt) == ["seen", "pending", "superseded", "seen", "pending"]
    shutil.rmtree(ckpt)
    recorder.wait_kind("vanished", ckpt)


def test_once_flow_without_thread(
    tmp_path: Path, make_watcher: Callable[..., tuple[Watcher, Recorder]]
) -> None:
    good = write_complete(tmp_path / "step_1")
    bad = tmp_path / "step_2"
    bad.mkdir()
    (bad / "config.json").write_text("{}")  # no weights, ever
    watcher, recorder = make_watcher(tmp_path)
    watcher.scan_now()
    assert watcher.wait_idle(DEADLINE_S)
    assert recorder.of(good) == ["seen", "pending"]
    assert recorder.of(bad) == ["seen", "failed"]


def test_newer_checkpoint_fails_a_stalled_one(
    tmp_path: Path, make_watcher: Callable[..., tuple[Watcher, Recorder]]
) -> None:
    stalled = tmp_path / "step_1"
    stalled.mkdir()
    (stalled / "config.json").write_text("{}")
    (stalled / "model.safetensors").write_bytes(shard_bytes()[:100])
    write_complete(tmp_path / "step_2")
    watcher, recorder = make_watcher(tmp_path, settle_s=3600.0)
    watcher.start()
    failed = recorder.wait_kind("failed", stalled)
    assert failed.reason.endswith("; a newer checkpoint (step 2) completed")


def test_restart_with_known_decisions(
    tmp_path: Path, make_watcher: Callable[..., tuple[Watcher, Recorder]]
) -> None:
    kept = write_complete(tmp_path / "step_1")
    fingerprint = observe(kept).fingerprint
    known = [
        Decision("pending", str(kept), 1, fingerprint, "complete"),
        Decision("seen", str(tmp_path / "step_2"), 2, "fp", "incomplete"),  # rotated meanwhile
    ]
    watcher, recorder = make_watcher(tmp_path, known=known)
    watcher.scan_now()
    assert recorder.of(kept) == []
    assert recorder.of(tmp_path / "step_2") == ["vanished"]


def test_published_by_rename(
    tmp_path: Path, make_watcher: Callable[..., tuple[Watcher, Recorder]]
) -> None:
    watcher, recorder = make_watcher(tmp_path)
    watcher.start()
    assert watcher.wait_idle(DEADLINE_S)
    staging = write_complete(tmp_path / "tmp-checkpoint-5")
    final = staging.rename(tmp_path / "checkpoint-5")
    recorder.wait_kind("pending", final)
    watcher.scan_now()
    assert [(d.kind, d.path) for d in recorder.decisions] == [
        ("seen", str(final)),
        ("pending", str(final)),
    ]


def test_reads_do_not_prompt_and_writes_map_to_their_checkpoint(tmp_path: Path) -> None:
    watcher = Watcher(tmp_path, lambda d: None, debounce_s=0.1)
    ckpt = tmp_path / "checkpoint-5"
    watcher._prompt(FileOpenedEvent(str(ckpt / "model.safetensors")))
    watcher._prompt(FileClosedNoWriteEvent(str(ckpt / "model.safetensors")))
    assert watcher._due == {}
    writes = {
        ckpt / "model.safetensors": ckpt,
        ckpt / "global_step5" / "optim_states.pt": ckpt,  # DeepSpeed subdirectory
        tmp_path / "sweep" / "step_9" / "config.json": tmp_path / "sweep" / "step_9",
        tmp_path / "final" / "config.json": tmp_path / "final",
        tmp_path / "config.json": tmp_path,
    }
    for path, key in writes.items():
        watcher._prompt(FileModifiedEvent(str(path)))
        assert key in watcher._due, path
    watcher._prompt(FileModifiedEvent("/elsewhere/config.json"))
    assert len(watcher._due) == len(set(writes.values()))


def test_stop_is_prompt_and_leaves_no_threads(
    tmp_path: Path, make_watcher: Callable[..., tuple[Watcher, Recorder]]
) -> None:
    write_complete(tmp_path / "step_1")
    for options in ({}, {"poll_s": 0.2}):
        before = set(threading.enumerate())
        watcher, recorder = make_watcher(tmp_path, **options)
        watcher.start()
        recorder.wait_for(lambda ds: len(ds) > 0, "a first decision")
        started = set(threading.enumerate()) - before
        assert started
        watcher.stop()  # joins with a 2 s limit: a thread still alive means stop was not prompt
        assert not [t for t in started if t.is_alive()], options


def test_missing_run_dir_is_a_clear_error(tmp_path: Path) -> None:
    from grokwatch.errors import UsageError

    watcher = Watcher(tmp_path / "nope", lambda d: None)
    with pytest.raises(UsageError, match="no such directory"):
        watcher.start()
