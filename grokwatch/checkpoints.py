"""What a checkpoint is, its step, and when it is complete (design.md, "Checkpoint completeness").

Pure and testable: no threads, no store, no torch. safetensors headers are parsed by hand (8-byte
little-endian header length, then a JSON header) so the daemon never imports torch.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any, Literal

from grokwatch.errors import CheckpointVanished

Verdict = Literal["complete", "incomplete", "corrupt"]
DecisionKind = Literal["seen", "pending", "failed", "vanished", "superseded"]

CONFIG = "config.json"
TRAINER_STATE = "trainer_state.json"
# The safetensors library refuses larger headers; a bigger length prefix means garbage.
MAX_HEADER_BYTES = 100_000_000

_STEP_RE = re.compile(
    r"(?:^|[-_.=])(?:checkpoint|ckpt|global_step|step|iteration|iter)[-_=]?(\d+)$", re.IGNORECASE
)
_TRAINER_NAME_RE = re.compile(r"^checkpoint-\d+$")
_SHARD_RE = re.compile(
    r"^(?P<prefix>.+)-(?P<index>\d{5})-of-(?P<total>\d{5})\.(?P<ext>safetensors|bin)$"
)
_TEMPORARY_RE = re.compile(
    r"^(?:tmp|temp)(?:[-_.]|$)|[-_.](?:tmp|temp|partial|incomplete)$", re.IGNORECASE
)
# Files of an HF checkpoint worth watching when the candidate is the run directory itself, whose
# other files (logs, event files) change all the time.
_CHECKPOINT_FILE_RE = re.compile(
    r"^(?:config\.json|generation_config\.json|trainer_state\.json|training_args\.bin"
    r"|.*\.safetensors|.*\.index\.json|pytorch_model.*\.bin|tokenizer.*|special_tokens_map\.json"
    r"|vocab.*|merges\.txt|optimizer.*|scheduler.*|scaler\.pt|rng_state.*\.pth)$"
)
_TRAINER_SIDE_RE = re.compile(r"^(?:optimizer.*\.pt|scheduler\.pt|rng_state.*\.pth)$")
_ZIP_LOCAL_MAGIC = b"PK\x03\x04"
_ZIP_END_MAGIC = b"PK\x05\x06"
_ZIP_END_SEARCH_BYTES = 65_557  # end record (22 bytes) plus the longest zip comment


@dataclass(frozen=True)
class FileStat:
    """Size and mtime of one file, named relative to its checkpoint directory."""

    path: str
    size: int
    mtime_ns: int


@dataclass(frozen=True)
class Observation:
    """One scan of one candidate directory."""

    path: str
    step: int | None
    files: tuple[FileStat, ...]  # every file whose change means "still being written"
    verdict: Verdict
    reason: str  # one line: "incomplete: model.safetensors is 3.1 MB of 6.2 MB"
    fingerprint: str  # weight/config files only: changes iff the content was rewritten


@dataclass(frozen=True)
class Decision:
    """One change of a checkpoint's state, reported by the watcher to the store.

    `seen` opens a new entry for its path; every other kind applies to the path's current entry
    (the tracker holds at most one per path). `pending` means complete and handed off: running,
    done and failed-by-the-worker are the store's business. `step` and `fingerprint` are the
    latest known; a `superseded` decision carries the fingerprint of the content it retires.
    """

    kind: DecisionKind
    path: str
    step: int | None
    fingerprint: str
    reason: str


def format_bytes(n_bytes: int) -> str:
    """Format a byte count in decimal units with one decimal ("3.1 MB", "512 B")."""
    if n_bytes < 1000:
        return f"{n_bytes} B"
    value = n_bytes / 1000
    for unit in ("KB", "MB", "GB"):
        if value < 1000:
            return f"{value:.1f} {unit}"
        value /= 1000
    return f"{value:.1f} TB"


def step_from_name(name: str) -> int | None:
    """Return the step a directory name encodes (checkpoint-1200, global_step1200, iter_0001200)."""
    match = _STEP_RE.search(name)
    return int(match.group(1)) if match else None


def step_of(path: Path) -> int | None:
    """Return the step from the directory name, else trainer_state.json's global_step, else None."""
    step = step_from_name(path.name)
    if step is not None:
        return step
    try:
        state = json.loads((path / TRAINER_STATE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    global_step = state.get("global_step") if isinstance(state, dict) else None
    return global_step if isinstance(global_step, int) and global_step >= 0 else None


def is_temporary_name(name: str) -> bool:
    """Whether a directory name marks a staging area (tmp-checkpoint-5, x.partial, hidden)."""
    return name.startswith(".") or bool(_TEMPORARY_RE.search(name))


def looks_like_checkpoint(path: Path) -> bool:
    """Whether a directory holds config.json or model weights, or is named like checkpoint-N."""
    if step_from_name(path.name) is not None:
        return True
    try:
        names = os.listdir(path)
    except OSError:
        return False
    return any(
        name == CONFIG
        or (name.startswith("model") and name.endswith(".safetensors"))
        or (name.startswith("pytorch_model") and name.endswith(".bin"))
        for name in names
    )


def subdirectories(path: Path) -> list[Path]:
    """List subdirectories that may hold checkpoints (no symlinks, hidden or staging dirs)."""
    # A symlink such as `latest -> checkpoint-N` would count one checkpoint twice.
    try:
        entries = list(os.scandir(path))
    except OSError:
        return []
    return sorted(
        Path(e.path)
        for e in entries
        if e.is_dir(follow_symlinks=False) and not is_temporary_name(e.name)
    )


def sort_key(path: Path, step: int | None) -> tuple[bool, int, str]:
    """Order checkpoints by step (unknown steps last), then by path."""
    return (step is None, step or 0, str(path))


def find_candidates(run_dir: Path) -> list[Path]:
    """Return run_dir if it holds config.json, plus checkpoint-like subdirs up to depth 2.

    A candidate's own subdirectories are not searched (DeepSpeed's checkpoint-N/global_stepN
    holds optimizer shards, not a second checkpoint). Sorted by step, then path.
    """
    found: list[Path] = []
    if (run_dir / CONFIG).is_file():
        found.append(run_dir)
    for child in subdirectories(run_dir):
        if looks_like_checkpoint(child):
            found.append(child)
        else:
            found.extend(g for g in subdirectories(child) if looks_like_checkpoint(g))
    return sorted(found, key=lambda p: sort_key(p, step_of(p)))


def _list_files(
    path: Path, *, only_checkpoint_files: bool, ready_marker: str | None
) -> dict[str, os.stat_result]:
    """Map relative name -> stat of the files that matter, one subdirectory level deep.

    Raises CheckpointVanished when the directory itself is gone.
    """
    try:
        entries = list(os.scandir(path))
    except (FileNotFoundError, NotADirectoryError) as exc:
        raise CheckpointVanished(f"{path}: directory is gone") from exc
    stats: dict[str, os.stat_result] = {}
    for entry in entries:
        name = entry.name
        hidden = name.startswith(".") and name != ready_marker
        try:
            if entry.is_dir():
                if only_checkpoint_files or hidden:
                    continue
                # DeepSpeed writes optimizer shards into a subdirectory before trainer_state.json:
                # their growth keeps the checkpoint alive.
                for sub in os.scandir(entry.path):
                    if sub.is_file() and not sub.name.startswith("."):
                        stats[f"{name}/{sub.name}"] = os.stat(sub.path)
            elif entry.is_file() and not hidden:
                if only_checkpoint_files and not (
                    _CHECKPOINT_FILE_RE.match(name) or name == ready_marker
                ):
                    continue
                stats[name] = os.stat(entry.path)
        except FileNotFoundError:
            continue  # removed between listing and stat: absent from this observation
    return stats


@lru_cache(maxsize=4096)
def _safetensors_problem(
    file_path: str, name: str, size: int, mtime_ns: int, inode: int
) -> tuple[Verdict, str] | None:
    """Check one safetensors file against its own header; memoised per (size, mtime, inode).

    OSError propagates, so that a read error is never cached.
    """
    del mtime_ns, inode  # cache key only: a rewritten file gets a fresh check
    return read_safetensors_header(file_path, name, size)[1]


def read_safetensors_header(
    file_path: str, name: str, size: int
) -> tuple[dict[str, Any] | None, tuple[Verdict, str] | None]:
    """Parse a safetensors header and check the file size it implies: (header, problem).

    The one check both the watcher (is it complete?) and the loader (can it load?) use; the
    problem's reason starts with `name`. OSError propagates.
    """
    if size < 8:
        return None, (
            "incomplete",
            f"{name} is {format_bytes(size)}, its header is not written yet",
        )
    with open(file_path, "rb") as handle:
        header_len = int.from_bytes(handle.read(8), "little")
        if header_len == 0:
            # A zero prefix is a not-yet-written page (sparse or NFS), never a real header.
            return None, ("incomplete", f"{name} header is not written yet")
        if header_len > MAX_HEADER_BYTES:
            return None, ("corrupt", f"{name} header does not parse (length prefix {header_len})")
        if size < 8 + header_len:
            need = format_bytes(8 + header_len)
            return None, ("incomplete", f"{name} is {format_bytes(size)} of at least {need}")
        raw = handle.read(header_len)
    try:
        header = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        return None, ("corrupt", f"{name} header does not parse (not JSON)")
    if not isinstance(header, dict):
        return None, ("corrupt", f"{name} header does not parse (not a JSON object)")
    data_bytes = 0
    for key, info in header.items():
        if key == "__metadata__":
            continue
        offsets = info.get("data_offsets") if isinstance(info, dict) else None
        if not (
            isinstance(offsets, list)
            and len(offsets) == 2
            and all(isinstance(o, int) for o in offsets)
            and 0 <= offsets[0] <= offsets[1]
        ):
            return None, (
                "corrupt",
                f"{name} header does not parse (tensor {key!r} has no data_offsets)",
            )
        data_bytes = max(data_bytes, offsets[1])
    expected = 8 + header_len + data_bytes
    if size < expected:
        return None, ("incomplete", f"{name} is {format_bytes(size)} of {format_bytes(expected)}")
    if size > expected:
        described = format_bytes(expected)
        return None, (
            "corrupt",
            f"{name} is {format_bytes(size)} but its header describes {described}",
        )
    return header, None


@lru_cache(maxsize=1024)
def _pickle_problem(
    file_path: str, name: str, size: int, mtime_ns: int, inode: int
) -> tuple[Verdict, str] | None:
    """Check a torch pickle: only a zip archive (torch >= 1.6) has an end record to look for."""
    del mtime_ns, inode
    if size == 0:
        return "incomplete", f"{name} is empty"
    with open(file_path, "rb") as handle:
        if handle.read(4) != _ZIP_LOCAL_MAGIC:
            return None  # legacy pickle: nothing to check but size stability
        handle.seek(max(0, size - _ZIP_END_SEARCH_BYTES))
        tail = handle.read()
    if _ZIP_END_MAGIC not in tail:
        return (
            "incomplete",
            f"{name} is {format_bytes(size)}, its zip end record is not written yet",
        )
    return None


def _read_problem(name: str, exc: OSError) -> tuple[Verdict, str]:
    """A file that cannot be read yet is incomplete: it may be mid-rotation or mid-chmod."""
    if isinstance(exc, FileNotFoundError):
        return "incomplete", f"{name} disappeared during the check"
    return "incomplete", f"cannot read {name} ({exc.strerror or exc})"


def _read_json(file_path: Path, name: str, size: int) -> tuple[object, tuple[Verdict, str] | None]:
    """Parse a small JSON file: empty is incomplete (just created), unparsable is corrupt."""
    if size == 0:
        return None, ("incomplete", f"{name} is empty")
    try:
        return json.loads(file_path.read_text(encoding="utf-8")), None
    except OSError as exc:
        return None, _read_problem(name, exc)
    except (UnicodeDecodeError, ValueError) as exc:
        detail = str(exc).split(":")[0]
        return None, ("corrupt", f"{name} does not parse ({detail})")


def _is_weight_file(name: str) -> bool:
    return "/" not in name and (
        name.endswith(".safetensors")
        or (name.startswith("pytorch_model") and name.endswith(".bin"))
    )


def _is_index_file(name: str) -> bool:
    return "/" not in name and name.endswith((".safetensors.index.json", ".bin.index.json"))


def _is_content_file(name: str) -> bool:
    return name == CONFIG or _is_weight_file(name) or _is_index_file(name)


def _fingerprint(stats: dict[str, os.stat_result]) -> str:
    digest = hashlib.sha256()
    for name in sorted(stats):
        if _is_content_file(name):
            digest.update(f"{name}\0{stats[name].st_size}\0{stats[name].st_mtime_ns}\n".encode())
    return digest.hexdigest()[:16]


def _problems(
    path: Path, stats: dict[str, os.stat_result], ready_marker: str | None
) -> list[tuple[Verdict, str]]:
    """Every reason this directory is not (yet) a complete checkpoint, in reporting order."""
    found: list[tuple[Verdict, str]] = []
    weights = sorted(n for n in stats if _is_weight_file(n))
    indexes = sorted(n for n in stats if _is_index_file(n))
    if CONFIG not in stats:
        # Files, none of them an HF checkpoint's: DeepSpeed, DCP or Megatron output.
        foreign = stats and not any(_CHECKPOINT_FILE_RE.match(n) for n in stats)
        hint = " (not a Hugging Face checkpoint? convert it first)" if foreign else ""
        found.append(("incomplete", f"{CONFIG} missing{hint}"))
    else:
        config, problem = _read_json(path / CONFIG, CONFIG, stats[CONFIG].st_size)
        if problem is None and not isinstance(config, dict):
            problem = ("corrupt", f"{CONFIG} does not parse (not a JSON object)")
        if problem:
            found.append(problem)
    if not weights and not indexes:
        found.append(("incomplete", "no weights yet (model.safetensors or pytorch_model.bin)"))
    for index_name in indexes:
        index, problem = _read_json(path / index_name, index_name, stats[index_name].st_size)
        weight_map = index.get("weight_map") if isinstance(index, dict) else None
        if problem is None and not isinstance(weight_map, dict):
            problem = ("corrupt", f"{index_name} does not parse (no weight_map)")
        if problem:
            found.append(problem)
            continue
        for shard in sorted(set(map(str, weight_map.values()))):
            if shard not in stats:
                found.append(("incomplete", f"{shard} missing (named in {index_name})"))
    # save_pretrained writes the index after the shards: shards without it are mid-save.
    for name in weights:
        match = _SHARD_RE.match(name)
        if match:
            index_name = f"{match['prefix']}.{match['ext']}.index.json"
            if index_name not in stats:
                found.append(("incomplete", f"{index_name} missing (written after the shards)"))
                break
    for name in weights:
        st = stats[name]
        check = _safetensors_problem if name.endswith(".safetensors") else _pickle_problem
        try:
            problem = check(str(path / name), name, st.st_size, st.st_mtime_ns, st.st_ino)
        except OSError as exc:
            problem = _read_problem(name, exc)
        if problem:
            found.append(problem)
    trainer_dir = _TRAINER_NAME_RE.match(path.name) or any(_TRAINER_SIDE_RE.match(n) for n in stats)
    if trainer_dir:
        if TRAINER_STATE not in stats:
            found.append(("incomplete", f"{TRAINER_STATE} missing (the Trainer writes it last)"))
        else:
            size = stats[TRAINER_STATE].st_size
            _, problem = _read_json(path / TRAINER_STATE, TRAINER_STATE, size)
            if problem:
                # Written last and tiny: a bad one is a write in progress, not a bad checkpoint.
                found.append(("incomplete", problem[1]))
    if ready_marker and ready_marker not in stats:
        found.append(("incomplete", f"ready marker {ready_marker} missing"))
    return found


def observe(
    path: Path, ready_marker: str | None = None, *, run_dir: Path | None = None
) -> Observation:
    """Scan one candidate directory: stats, config, index and safetensors headers -> a verdict.

    `run_dir` equal to `path` means the run directory itself is the checkpoint: only checkpoint
    files count there, since logs beside it change all the time. Raises CheckpointVanished when
    the directory is gone.
    """
    path = Path(path)
    is_run_dir = run_dir is not None and Path(run_dir) == path
    stats = _list_files(path, only_checkpoint_files=is_run_dir, ready_marker=ready_marker)
    files = tuple(FileStat(n, stats[n].st_size, stats[n].st_mtime_ns) for n in sorted(stats))
    problems = _problems(path, stats, ready_marker)
    corrupt = [msg for verdict, msg in problems if verdict == "corrupt"]
    verdict: Verdict
    if corrupt:
        verdict, reason = "corrupt", f"corrupt: {corrupt[0]}"
    elif problems:
        verdict, reason = "incomplete", f"incomplete: {problems[0][1]}"
    else:
        weights = [n for n in stats if _is_weight_file(n)]
        total = sum(stats[n].st_size for n in weights)
        what = weights[0] if len(weights) == 1 else f"{len(weights)} weight files"
        verdict, reason = "complete", f"complete: {what}, {format_bytes(total)}"
    return Observation(str(path), step_of(path), files, verdict, reason, _fingerprint(stats))


def is_settled(prev: Observation | None, cur: Observation) -> bool:
    """Whether two consecutive checks saw the same files with the same sizes and mtimes."""
    return prev is not None and prev.path == cur.path and prev.files == cur.files


def _written_file(old: Observation, new: Observation, *, content_only: bool) -> str | None:
    """Name the first file that is new or changed since `old`; removals alone do not count."""
    before = {f.path: f for f in old.files}
    for f in new.files:
        if before.get(f.path) != f and (not content_only or _is_content_file(f.path)):
            return f.path
    return None


@dataclass
class _Entry:
    path: str
    state: Literal["seen", "pending", "failed"]
    step: int | None
    fingerprint: str
    last: Observation | None  # None right after restore(): the next observation is the baseline
    changed_at: float  # tracker clock when the current file state was first observed


@dataclass
class Tracker:
    """Per-directory decisions from observations and a clock passed in (pure: no I/O, no time).

    `settle_s`: a seen checkpoint unchanged this long without becoming complete fails.
    `confirm_s`: the two matching checks that make a complete (or corrupt) verdict final must
    be at least this far apart, so that two checks a millisecond apart do not count as stable.
    """

    settle_s: float = 60.0
    confirm_s: float = 0.0
    _entries: dict[str, _Entry] = field(default_factory=dict, init=False, repr=False)

    def update(self, obs: Observation, now: float) -> list[Decision]:
        """Feed one observation; return the state changes it causes (often none)."""
        entry = self._entries.get(obs.path)
        if entry is None:
            return [self._open(obs, now)]
        if entry.last is None:
            if entry.state != "seen" and obs.fingerprint != entry.fingerprint:
                return self._supersede(entry, obs, now, "content changed while unwatched")
            entry.last, entry.changed_at = obs, now
            entry.step = obs.step if obs.step is not None else entry.step
            return []
        if entry.state == "pending":
            if obs.fingerprint == entry.fingerprint:
                entry.last = obs
                return []
            # Files only removed: a rotation (rmtree) in progress, not a rewrite.
            name = _written_file(entry.last, obs, content_only=True)
            return self._supersede(entry, obs, now, f"{name} was rewritten") if name else []
        if entry.state == "failed":
            # A file written after the failure: the writer was slow, not dead, and the new
            # state deserves its own decision.
            name = _written_file(entry.last, obs, content_only=False)
            return (
                self._supersede(entry, obs, now, f"{name} changed after it failed") if name else []
            )
        return self._judge(entry, obs, now)

    def newer_completed(self, step: int) -> list[Decision]:
        """Fail every seen, not-complete checkpoint older than a step that just completed."""
        out = []
        for entry in self._entries.values():
            if (
                entry.state == "seen"
                and entry.step is not None
                and entry.step < step
                and entry.last is not None
                and entry.last.verdict != "complete"
            ):
                reason = f"{entry.last.reason}; a newer checkpoint (step {step}) completed"
                out.append(self._fail(entry, reason))
        return out

    def vanish(self, path: str) -> list[Decision]:
        """The directory is gone: seen and handed-off entries vanish; failed ones stay failed."""
        entry = self._entries.pop(path, None)
        if entry is None or entry.state == "failed":
            return []
        return [
            Decision("vanished", path, entry.step, entry.fingerprint, "vanished: directory is gone")
        ]

    def restore(self, decision: Decision) -> None:
        """Resume from the last decision a store holds for a path (seen, pending or failed)."""
        if decision.kind not in ("seen", "pending", "failed"):
            raise ValueError(f"cannot restore a {decision.kind!r} decision: it closed its entry")
        self._entries[decision.path] = _Entry(
            decision.path, decision.kind, decision.step, decision.fingerprint, None, float("-inf")
        )

    def state(self, path: str) -> str | None:
        """Return "seen", "pending" or "failed" for a tracked path, else None."""
        entry = self._entries.get(path)
        return entry.state if entry else None

    def paths(self, state: str | None = None) -> list[str]:
        """Tracked paths (in one state, if given), ordered by step."""
        chosen = [(p, e) for p, e in self._entries.items() if state is None or e.state == state]
        return [p for p, e in sorted(chosen, key=lambda pe: sort_key(Path(pe[0]), pe[1].step))]

    def _open(self, obs: Observation, now: float) -> Decision:
        # Never decide on a first sight: readiness needs a second, matching check.
        self._entries[obs.path] = _Entry(obs.path, "seen", obs.step, obs.fingerprint, obs, now)
        return Decision("seen", obs.path, obs.step, obs.fingerprint, obs.reason)

    def _supersede(self, entry: _Entry, obs: Observation, now: float, why: str) -> list[Decision]:
        old = Decision("superseded", obs.path, entry.step, entry.fingerprint, f"superseded: {why}")
        return [old, self._open(obs, now)]

    def _fail(self, entry: _Entry, reason: str) -> Decision:
        entry.state = "failed"
        return Decision("failed", entry.path, entry.step, entry.fingerprint, reason)

    def _judge(self, entry: _Entry, obs: Observation, now: float) -> list[Decision]:
        if not is_settled(entry.last, obs):
            entry.last, entry.changed_at, entry.fingerprint = obs, now, obs.fingerprint
            entry.step = obs.step if obs.step is not None else entry.step
            return []
        entry.last = obs
        stable_s = now - entry.changed_at
        if obs.verdict == "complete":
            if stable_s < self.confirm_s:
                return []
            entry.state = "pending"
            out = [Decision("pending", obs.path, entry.step, entry.fingerprint, obs.reason)]
            if entry.step is not None:
                out.extend(self.newer_completed(entry.step))
            return out
        if obs.verdict == "corrupt":
            return [self._fail(entry, obs.reason)] if stable_s >= self.confirm_s else []
        if stable_s >= self.settle_s:
            return [self._fail(entry, f"{obs.reason}, unchanged for {self.settle_s:g} s")]
        return []
