"""Checkpoint completeness, step parsing and the Tracker state machine (no threads, fake clock)."""

from __future__ import annotations

import json
import os
import zipfile
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import save as safetensors_bytes

from grokwatch.checkpoints import (
    Decision,
    FileStat,
    Observation,
    Tracker,
    find_candidates,
    format_bytes,
    is_settled,
    observe,
    step_of,
)
from grokwatch.errors import CheckpointVanished


def shard_bytes(seed: int = 0, n: int = 64) -> bytes:
    """Return a small real safetensors file's bytes."""
    rng = np.random.default_rng(seed)
    return safetensors_bytes({"w": rng.standard_normal((n, n)).astype(np.float32)})


def write_checkpoint(
    directory: Path,
    *,
    shards: int = 1,
    trainer_state: bool = False,
    step: int | None = None,
    seed: int = 0,
) -> Path:
    """Write config.json and safetensors weights (one file, or shards plus their index)."""
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "config.json").write_text(json.dumps({"model_type": "olmoe"}))
    if shards == 1:
        (directory / "model.safetensors").write_bytes(shard_bytes(seed))
    else:
        names = [f"model-{i:05d}-of-{shards:05d}.safetensors" for i in range(1, shards + 1)]
        for i, name in enumerate(names):
            (directory / name).write_bytes(shard_bytes(seed + i))
        index = {"metadata": {}, "weight_map": {f"layer{i}.w": n for i, n in enumerate(names)}}
        (directory / "model.safetensors.index.json").write_text(json.dumps(index))
    if trainer_state:
        state = {"global_step": step or 0, "log_history": []}
        (directory / "trainer_state.json").write_text(json.dumps(state))
    return directory


# step parsing and candidates ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "step"),
    [
        ("checkpoint-1200", 1200),
        ("step_1200", 1200),
        ("step1200", 1200),
        ("step-1200", 1200),
        ("global_step1200", 1200),
        ("iter_0001200", 1200),
        ("ckpt_7", 7),
        ("epoch=3-step=1200", 1200),
        ("final", None),
        ("checkpoint-best", None),
        ("steps", None),
    ],
)
def test_step_from_directory_name(tmp_path: Path, name: str, step: int | None) -> None:
    path = tmp_path / name
    path.mkdir()
    assert step_of(path) == step


def test_step_falls_back_to_trainer_state(tmp_path: Path) -> None:
    latest = write_checkpoint(tmp_path / "latest", trainer_state=True, step=350)
    assert step_of(latest) == 350
    assert step_of(tmp_path) is None  # a bare run dir has neither
    named = write_checkpoint(tmp_path / "checkpoint-20", trainer_state=True, step=350)
    assert step_of(named) == 20  # the name wins


def test_find_candidates(tmp_path: Path) -> None:
    run = tmp_path / "run"
    write_checkpoint(run)  # the run dir itself holds config.json
    write_checkpoint(run / "checkpoint-10")
    (run / "checkpoint-10" / "global_step10").mkdir()  # DeepSpeed shards: not a checkpoint
    write_checkpoint(run / "checkpoint-2")
    (run / "checkpoint-30").mkdir()  # named like one: a candidate before any file lands
    (run / "final").mkdir()
    (run / "final" / "model.safetensors").write_bytes(shard_bytes())
    write_checkpoint(run / "sweep" / "step_5")  # depth 2
    write_checkpoint(run / "a" / "b" / "step_6")  # depth 3: too deep
    (run / "logs").mkdir()
    write_checkpoint(run / "tmp-checkpoint-40")  # staging dirs
    write_checkpoint(run / "checkpoint-41.partial")
    write_checkpoint(run / "temperature_0.7" / "step_4")  # not a staging dir
    write_checkpoint(run / ".hidden-50")
    (run / "latest").symlink_to(run / "checkpoint-10")

    found = find_candidates(run)
    assert found == [
        run / "checkpoint-2",
        run / "temperature_0.7" / "step_4",
        run / "sweep" / "step_5",
        run / "checkpoint-10",
        run / "checkpoint-30",
        run,
        run / "final",
    ]


# observe ------------------------------------------------------------------------------------


def test_complete_single_file(tmp_path: Path) -> None:
    ckpt = write_checkpoint(tmp_path / "step_3")
    obs = observe(ckpt)
    assert (obs.verdict, obs.step, obs.path) == ("complete", 3, str(ckpt))
    assert obs.reason.startswith("complete: model.safetensors, ")
    assert {f.path for f in obs.files} == {"config.json", "model.safetensors"}


def test_complete_sharded(tmp_path: Path) -> None:
    obs = observe(write_checkpoint(tmp_path / "step_3", shards=3))
    assert obs.verdict == "complete"
    assert obs.reason.startswith("complete: 3 weight files, ")


def test_truncated_file_is_incomplete_with_sizes(tmp_path: Path) -> None:
    ckpt = write_checkpoint(tmp_path / "step_1")
    data = shard_bytes(n=512)  # ~1 MB
    (ckpt / "model.safetensors").write_bytes(data[: len(data) // 2])
    obs = observe(ckpt)
    assert obs.verdict == "incomplete"
    half, full = format_bytes(len(data) // 2), format_bytes(len(data))
    assert obs.reason == f"incomplete: model.safetensors is {half} of {full}"


def test_partial_header_is_incomplete(tmp_path: Path) -> None:
    ckpt = write_checkpoint(tmp_path / "step_1")
    data = shard_bytes()
    for cut in (0, 5, 8, 20):
        (ckpt / "model.safetensors").write_bytes(data[:cut])
        assert observe(ckpt).verdict == "incomplete", cut
    (ckpt / "model.safetensors").write_bytes(b"\0" * 4096)  # preallocated, not yet written
    assert observe(ckpt).verdict == "incomplete"


def test_garbage_file_is_corrupt(tmp_path: Path) -> None:
    ckpt = write_checkpoint(tmp_path / "step_1", shards=3)
    (ckpt / "model-00002-of-00003.safetensors").write_bytes(b"not a safetensors file\n" * 100)
    obs = observe(ckpt)
    assert obs.verdict == "corrupt"
    assert obs.reason.startswith("corrupt: model-00002-of-00003.safetensors header does not parse")
    # A plausible length prefix followed by non-JSON is corrupt too.
    (ckpt / "model-00002-of-00003.safetensors").write_bytes((16).to_bytes(8, "little") + b"x" * 64)
    assert observe(ckpt).reason.startswith("corrupt: model-00002-of-00003.safetensors header")


def test_file_longer_than_its_header_says_is_corrupt(tmp_path: Path) -> None:
    ckpt = write_checkpoint(tmp_path / "step_1")
    with open(ckpt / "model.safetensors", "ab") as handle:
        handle.write(b"\0" * 100)
    obs = observe(ckpt)
    assert obs.verdict == "corrupt"
    assert "but its header describes" in obs.reason


def test_index_naming_a_missing_shard(tmp_path: Path) -> None:
    ckpt = write_checkpoint(tmp_path / "step_1", shards=2)
    (ckpt / "model-00002-of-00002.safetensors").unlink()
    obs = observe(ckpt)
    assert obs.verdict == "incomplete"
    assert obs.reason == (
        "incomplete: model-00002-of-00002.safetensors missing "
        "(named in model.safetensors.index.json)"
    )


def test_shards_without_their_index_are_incomplete(tmp_path: Path) -> None:
    ckpt = write_checkpoint(tmp_path / "step_1", shards=2)
    (ckpt / "model.safetensors.index.json").unlink()
    obs = observe(ckpt)
    assert obs.verdict == "incomplete"
    assert "model.safetensors.index.json missing" in obs.reason


def test_bad_index_is_corrupt(tmp_path: Path) -> None:
    ckpt = write_checkpoint(tmp_path / "step_1", shards=2)
    (ckpt / "model.safetensors.index.json").write_text("{ nope")
    assert observe(ckpt).reason.startswith("corrupt: model.safetensors.index.json does not parse")


def test_config_checks(tmp_path: Path) -> None:
    ckpt = write_checkpoint(tmp_path / "step_1")
    (ckpt / "config.json").unlink()
    assert observe(ckpt).reason == "incomplete: config.json missing"
    (ckpt / "config.json").write_text("")
    assert observe(ckpt).reason == "incomplete: config.json is empty"
    (ckpt / "config.json").write_text("{ half")
    assert observe(ckpt).reason.startswith("corrupt: config.json does not parse")


def test_foreign_checkpoint_gets_a_hint(tmp_path: Path) -> None:
    ckpt = tmp_path / "global_step10"
    ckpt.mkdir()
    (ckpt / "mp_rank_00_model_states.pt").write_bytes(b"x")
    assert observe(ckpt).reason == (
        "incomplete: config.json missing (not a Hugging Face checkpoint? convert it first)"
    )


def test_no_weights_yet(tmp_path: Path) -> None:
    ckpt = tmp_path / "step_1"
    ckpt.mkdir()
    (ckpt / "config.json").write_text("{}")
    assert observe(ckpt).reason.startswith("incomplete: no weights yet")


def test_trainer_dir_needs_trainer_state(tmp_path: Path) -> None:
    ckpt = write_checkpoint(tmp_path / "checkpoint-100")
    obs = observe(ckpt)
    assert obs.verdict == "incomplete"
    assert obs.reason == "incomplete: trainer_state.json missing (the Trainer writes it last)"
    (ckpt / "trainer_state.json").write_text(json.dumps({"global_step": 100}))
    assert observe(ckpt).verdict == "complete"


def test_optimizer_files_make_a_trainer_dir(tmp_path: Path) -> None:
    ckpt = write_checkpoint(tmp_path / "latest")
    assert observe(ckpt).verdict == "complete"
    (ckpt / "optimizer.pt").write_bytes(b"x" * 10)
    assert "trainer_state.json missing" in observe(ckpt).reason


def test_ready_marker(tmp_path: Path) -> None:
    ckpt = write_checkpoint(tmp_path / "step_1")
    obs = observe(ckpt, ready_marker="READY")
    assert obs.reason == "incomplete: ready marker READY missing"
    (ckpt / "READY").touch()
    obs = observe(ckpt, ready_marker="READY")
    assert obs.verdict == "complete"
    assert "READY" in {f.path for f in obs.files}
    hidden = write_checkpoint(tmp_path / "step_2")
    (hidden / ".done").touch()
    assert observe(hidden, ready_marker=".done").verdict == "complete"


def test_pickle_checkpoint_counts(tmp_path: Path) -> None:
    ckpt = tmp_path / "step_1"
    ckpt.mkdir()
    (ckpt / "config.json").write_text("{}")
    weights = ckpt / "pytorch_model.bin"
    with zipfile.ZipFile(weights, "w") as archive:  # torch.save's format, without torch
        archive.writestr("archive/data.pkl", b"\x80\x02}q\x00." * 100)
    obs = observe(ckpt)
    assert (obs.verdict, obs.reason.split(",")[0]) == ("complete", "complete: pytorch_model.bin")
    data = weights.read_bytes()
    weights.write_bytes(data[: len(data) - 30])  # the end record is the last thing written
    assert observe(ckpt).verdict == "incomplete"
    weights.write_bytes(b"\x80\x02legacy pickle")  # no structure to check: size stability only
    assert observe(ckpt).verdict == "complete"


def test_fingerprint_tracks_weights_not_trainer_state(tmp_path: Path) -> None:
    ckpt = write_checkpoint(tmp_path / "checkpoint-1", trainer_state=True)
    first = observe(ckpt)
    (ckpt / "trainer_state.json").write_text(json.dumps({"global_step": 1, "x": 1}))
    second = observe(ckpt)
    assert second.fingerprint == first.fingerprint
    assert second.files != first.files  # but it still counts for stability
    (ckpt / "model.safetensors").write_bytes(shard_bytes(seed=9))
    os.utime(ckpt / "model.safetensors", ns=(1, 1))
    assert observe(ckpt).fingerprint != first.fingerprint


def test_run_dir_candidate_ignores_logs_and_subdirs(tmp_path: Path) -> None:
    write_checkpoint(tmp_path)
    (tmp_path / "train.log").write_text("step 1\n")
    write_checkpoint(tmp_path / "checkpoint-5", trainer_state=True)
    names = {f.path for f in observe(tmp_path, run_dir=tmp_path).files}
    assert names == {"config.json", "model.safetensors"}


def test_subdirectory_files_count_for_stability(tmp_path: Path) -> None:
    ckpt = write_checkpoint(tmp_path / "checkpoint-5")
    (ckpt / "global_step5").mkdir()
    (ckpt / "global_step5" / "zero_pp_rank_0_mp_rank_00_optim_states.pt").write_bytes(b"x")
    names = {f.path for f in observe(ckpt).files}
    assert "global_step5/zero_pp_rank_0_mp_rank_00_optim_states.pt" in names


def test_observe_a_missing_directory_raises_vanished(tmp_path: Path) -> None:
    with pytest.raises(CheckpointVanished):
        observe(tmp_path / "checkpoint-1")


def test_format_bytes() -> None:
    assert [format_bytes(n) for n in (0, 999, 3_100_000, 6_200_000_000)] == [
        "0 B",
        "999 B",
        "3.1 MB",
        "6.2 GB",
    ]


# Tracker: fake observations, fake clock ------------------------------------------------------


def obs(
    path: str = "/run/checkpoint-100",
    verdict: str = "complete",
    size: int = 100,
    *,
    step: int | None = 100,
    mtime_ns: int = 1,
    fingerprint: str | None = None,
    extra: tuple[FileStat, ...] = (),
    reason: str | None = None,
) -> Observation:
    """Build an observation from fake stat records."""
    files = (FileStat("config.json", 10, 1), FileStat("model.safetensors", size, mtime_ns), *extra)
    reason = (
        reason
        or {
            "complete": "complete: model.safetensors, 100 B",
            "incomplete": f"incomplete: model.safetensors is {size} B of 200 B",
            "corrupt": "corrupt: model.safetensors header does not parse",
        }[verdict]
    )
    return Observation(path, step, files, verdict, reason, fingerprint or f"fp-{size}-{mtime_ns}")


def kinds(decisions: list[Decision]) -> list[str]:
    """Return the kinds of some decisions."""
    return [d.kind for d in decisions]


def test_complete_needs_two_matching_checks() -> None:
    tracker = Tracker(settle_s=60.0)
    assert kinds(tracker.update(obs(), 0.0)) == ["seen"]
    [pending] = tracker.update(obs(), 1.0)
    assert pending == Decision(
        "pending", "/run/checkpoint-100", 100, "fp-100-1", "complete: model.safetensors, 100 B"
    )
    assert tracker.update(obs(), 2.0) == []
    assert tracker.state("/run/checkpoint-100") == "pending"


def test_changing_files_are_never_pending() -> None:
    tracker = Tracker(settle_s=60.0)
    tracker.update(obs(mtime_ns=1), 0.0)
    assert tracker.update(obs(mtime_ns=2), 1.0) == []
    assert tracker.update(obs(mtime_ns=3), 2.0) == []
    assert kinds(tracker.update(obs(mtime_ns=3), 3.0)) == ["pending"]


def test_confirm_gap_between_the_two_checks() -> None:
    tracker = Tracker(settle_s=60.0, confirm_s=0.5)
    tracker.update(obs(), 0.0)
    assert tracker.update(obs(), 0.1) == []
    assert kinds(tracker.update(obs(), 0.6)) == ["pending"]


def test_stable_corrupt_fails_at_once() -> None:
    tracker = Tracker(settle_s=60.0)
    tracker.update(obs(verdict="corrupt"), 0.0)
    [failed] = tracker.update(obs(verdict="corrupt"), 0.5)
    assert (failed.kind, failed.reason) == (
        "failed",
        "corrupt: model.safetensors header does not parse",
    )


def test_stable_incomplete_fails_after_settle() -> None:
    tracker = Tracker(settle_s=60.0)
    tracker.update(obs(verdict="incomplete", size=50), 0.0)
    assert tracker.update(obs(verdict="incomplete", size=60), 10.0) == []  # still growing
    assert tracker.update(obs(verdict="incomplete", size=60), 69.0) == []
    [failed] = tracker.update(obs(verdict="incomplete", size=60), 70.0)
    assert failed.kind == "failed"
    assert failed.reason == "incomplete: model.safetensors is 60 B of 200 B, unchanged for 60 s"
    assert tracker.update(obs(verdict="incomplete", size=60), 200.0) == []


def test_newer_completed_fails_older_seen() -> None:
    tracker = Tracker(settle_s=60.0)
    old = "/run/checkpoint-100"
    tracker.update(obs(old, "incomplete", 50), 0.0)
    tracker.update(obs("/run/checkpoint-150", "complete", step=150), 0.0)  # not yet confirmed
    tracker.update(obs("/run/latest", "incomplete", 50, step=None), 0.0)
    new = "/run/checkpoint-200"
    tracker.update(obs(new, step=200), 1.0)
    decisions = tracker.update(obs(new, step=200), 2.0)
    assert [(d.kind, d.path) for d in decisions] == [("pending", new), ("failed", old)]
    assert decisions[1].reason == (
        "incomplete: model.safetensors is 50 B of 200 B; a newer checkpoint (step 200) completed"
    )
    assert tracker.state("/run/checkpoint-150") == "seen"  # complete: goes pending on its own
    assert tracker.state("/run/latest") == "seen"  # no step: nothing to compare


def test_rewrite_after_pending_supersedes() -> None:
    tracker = Tracker()
    tracker.update(obs(size=100), 0.0)
    tracker.update(obs(size=100), 1.0)
    decisions = tracker.update(obs(size=120, mtime_ns=5), 2.0)
    assert kinds(decisions) == ["superseded", "seen"]
    assert decisions[0].fingerprint == "fp-100-1"
    assert decisions[0].reason == "superseded: model.safetensors was rewritten"
    assert decisions[1].fingerprint == "fp-120-5"
    [pending] = tracker.update(obs(size=120, mtime_ns=5), 3.0)
    assert (pending.kind, pending.fingerprint) == ("pending", "fp-120-5")


def test_non_content_change_after_pending_is_ignored() -> None:
    tracker = Tracker()
    tracker.update(obs(), 0.0)
    tracker.update(obs(), 1.0)
    later = obs(extra=(FileStat("trainer_state.json", 5, 9),))  # same fingerprint
    assert tracker.update(later, 2.0) == []


def test_failed_then_writer_resumes() -> None:
    tracker = Tracker(settle_s=5.0)
    tracker.update(obs(verdict="incomplete", size=50), 0.0)
    assert kinds(tracker.update(obs(verdict="incomplete", size=50), 6.0)) == ["failed"]
    decisions = tracker.update(obs(size=200, mtime_ns=2), 7.0)
    assert kinds(decisions) == ["superseded", "seen"]
    assert decisions[0].reason == "superseded: model.safetensors changed after it failed"
    assert kinds(tracker.update(obs(size=200, mtime_ns=2), 8.0)) == ["pending"]


def test_vanish() -> None:
    tracker = Tracker(settle_s=1.0)
    tracker.update(obs("/r/step_1"), 0.0)
    tracker.update(obs("/r/step_2"), 0.0)
    tracker.update(obs("/r/step_2"), 1.0)
    tracker.update(obs("/r/step_3", "corrupt"), 0.0)
    tracker.update(obs("/r/step_3", "corrupt"), 1.0)
    assert [(d.kind, d.reason) for d in tracker.vanish("/r/step_1")] == [
        ("vanished", "vanished: directory is gone")
    ]
    assert kinds(tracker.vanish("/r/step_2")) == ["vanished"]
    assert tracker.vanish("/r/step_3") == []  # failed stays failed
    assert tracker.vanish("/r/never") == []
    assert kinds(tracker.update(obs("/r/step_1"), 5.0)) == ["seen"]  # reappeared: a new entry


def test_rotation_in_progress_is_not_a_rewrite() -> None:
    tracker = Tracker(settle_s=1.0)
    tracker.update(obs("/r/step_1"), 0.0)
    tracker.update(obs("/r/step_1"), 1.0)
    half_deleted = Observation(
        "/r/step_1", 1, (FileStat("config.json", 10, 1),), "incomplete", "incomplete", "fp-x"
    )
    assert tracker.update(half_deleted, 2.0) == []  # rmtree removes files one by one
    assert kinds(tracker.vanish("/r/step_1")) == ["vanished"]
    tracker.update(obs("/r/step_2", "corrupt"), 0.0)
    tracker.update(obs("/r/step_2", "corrupt"), 1.0)
    assert tracker.update(replace(half_deleted, path="/r/step_2"), 2.0) == []  # failed: same


def test_step_learned_later_is_reported() -> None:
    tracker = Tracker()
    [seen] = tracker.update(obs("/r/latest", "incomplete", step=None), 0.0)
    assert seen.step is None
    tracker.update(obs("/r/latest", step=42, mtime_ns=2), 1.0)
    [pending] = tracker.update(obs("/r/latest", step=42, mtime_ns=2), 2.0)
    assert pending.step == 42


def test_restore_resumes_without_repeating() -> None:
    tracker = Tracker()
    tracker.restore(Decision("pending", "/r/step_1", 1, "fp-100-1", "complete"))
    tracker.restore(Decision("pending", "/r/step_2", 2, "fp-old", "complete"))
    tracker.restore(Decision("seen", "/r/step_3", 3, "fp-x", "incomplete"))
    assert tracker.update(obs("/r/step_1", step=1), 0.0) == []
    assert kinds(tracker.update(obs("/r/step_2", step=2), 0.0)) == ["superseded", "seen"]
    assert tracker.update(obs("/r/step_3", step=3), 0.0) == []  # baseline
    assert kinds(tracker.update(obs("/r/step_3", step=3), 1.0)) == ["pending"]
    with pytest.raises(ValueError):
        tracker.restore(Decision("vanished", "/r/step_4", 4, "fp", "vanished"))


def test_is_settled() -> None:
    assert not is_settled(None, obs())
    assert is_settled(obs(), obs())
    assert not is_settled(obs(), obs(mtime_ns=2))
    assert not is_settled(obs("/a"), obs("/b"))
    assert not is_settled(obs(), obs(extra=(FileStat("READY", 0, 1),)))
