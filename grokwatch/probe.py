"""Probe files: reading, validating, grouping and hashing (no tokenizer here).

A probe is a fixed list of training samples. JSONL lines carry `text` (or `prompt` and
`completion`) and an optional `group`; a plain text file holds one sample per line.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from grokwatch.errors import ProbeError
from grokwatch.results import DEFAULT_GROUP

RESERVED_PREFIX = "__"


@dataclass(frozen=True)
class ProbeSample:
    """One training sample; with `prompt` set, loss counts the completion tokens only."""

    text: str
    group: str = DEFAULT_GROUP
    prompt: str | None = None  # text == prompt + completion when set

    @property
    def completion_only(self) -> bool:
        """Whether this sample's loss counts completion tokens only."""
        return self.prompt is not None


@dataclass(frozen=True)
class Probe:
    """An ordered, immutable probe set with a content hash."""

    samples: tuple[ProbeSample, ...]
    source: str  # file path, or "bundled"

    @property
    def hash(self) -> str:
        """Short content hash: the same texts and groups in the same order give the same hash."""
        h = hashlib.sha256()
        for s in self.samples:
            h.update(json.dumps([s.text, s.group, s.prompt]).encode())
        return h.hexdigest()[:16]

    @property
    def groups(self) -> list[str]:
        """Group names in order of first appearance."""
        return list(dict.fromkeys(s.group for s in self.samples))

    def to_jsonl(self) -> str:
        """Serialise to JSONL (the form stored with a run)."""
        return "".join(json.dumps(_sample_record(s)) + "\n" for s in self.samples)


def _sample_record(s: ProbeSample) -> dict[str, str]:
    if s.prompt is not None:
        return {"prompt": s.prompt, "completion": s.text[len(s.prompt) :], "group": s.group}
    return {"text": s.text, "group": s.group}


def _sample_from_record(record: object, where: str) -> ProbeSample:
    if not isinstance(record, dict):
        raise ProbeError(f"{where}: expected a JSON object with a 'text' field")
    group = record.get("group", DEFAULT_GROUP)
    if group is None:
        group = DEFAULT_GROUP
    if not isinstance(group, str) or not group:
        raise ProbeError(f"{where}: 'group' must be a non-empty string")
    if group.startswith(RESERVED_PREFIX):
        raise ProbeError(f"{where}: group names starting with '__' are reserved; rename {group!r}")
    if "prompt" in record or "completion" in record:
        prompt, completion = record.get("prompt"), record.get("completion")
        if not isinstance(prompt, str) or not isinstance(completion, str):
            raise ProbeError(f"{where}: 'prompt' and 'completion' must both be strings")
        return ProbeSample(text=prompt + completion, group=group, prompt=prompt)
    text = record.get("text")
    if not isinstance(text, str):
        raise ProbeError(f"{where}: missing string field 'text' (or 'prompt' + 'completion')")
    if not text.strip():
        raise ProbeError(f"{where}: empty 'text'; remove the line")
    return ProbeSample(text=text, group=group)


def parse_probe_lines(lines: Iterable[str], source: str, jsonl: bool) -> Probe:
    """Parse probe lines (JSONL or plain text); errors name the source and line number."""
    samples: list[ProbeSample] = []
    for lineno, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        where = f"{source}:{lineno}"
        if jsonl:
            try:
                record = json.loads(line)
            except json.JSONDecodeError as exc:
                raise ProbeError(
                    f"{where}: not valid JSON ({exc.msg}); fix or remove the line"
                ) from None
            samples.append(_sample_from_record(record, where))
        else:
            samples.append(ProbeSample(text=line.rstrip("\n")))
    if not samples:
        raise ProbeError(f"{source}: probe file has no samples; add lines of JSONL with 'text'")
    return Probe(samples=tuple(samples), source=source)


def load_probe(path: str | Path) -> Probe:
    """Read a probe file: `.jsonl`/`.json` as JSONL, anything else as one sample per line."""
    path = Path(path)
    if not path.is_file():
        raise ProbeError(f"{path}: probe file not found; pass an existing file with --probe")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise ProbeError(
            f"{path}: probe file is not UTF-8 text; convert it or pick another file"
        ) from None
    first = next((ln for ln in text.splitlines() if ln.strip()), "")
    jsonl = path.suffix in {".jsonl", ".json", ".ndjson"} or first.lstrip().startswith("{")
    return parse_probe_lines(text.splitlines(), str(path), jsonl=jsonl)
