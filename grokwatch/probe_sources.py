"""Where a run's probe set comes from: a user's file, the run, the bundled set, or a corpus sample.

`select_probe` applies the order of the design card; `make_probe` streams a training corpus once
and keeps a uniform sample of up to N examples per group (reservoir sampling, bounded memory).
"""

from __future__ import annotations

import gzip
import json
import logging
import os
import random
from collections.abc import Iterator
from functools import lru_cache
from importlib import resources
from pathlib import Path
from typing import Any, Generic, TypeVar

from grokwatch.errors import ProbeError, UsageError
from grokwatch.probe import RESERVED_PREFIX, Probe, load_probe, parse_probe_lines
from grokwatch.results import DEFAULT_GROUP

BUNDLED_NOTE = "bundled probe, not your training data"
BUNDLED_RESOURCE = ("data", "bundled_probe.jsonl")
RUN_DIR_PROBE_NAME = "grokwatch-probe.jsonl"
STORED_HOW = "stored with the run"
JSONL_SUFFIXES = frozenset({".jsonl", ".json", ".ndjson"})
# A group field with this many distinct values is an id, not a domain; refusing early also keeps
# memory bounded (per_group samples are held for every group).
MAX_GROUPS = 1000
# The probe reads at most --max-tokens tokens per sample, so a "paragraph" that runs on for
# megabytes (a text file with hardly any blank lines) is cut rather than held whole.
MAX_SAMPLE_CHARS = 1_000_000

log = logging.getLogger(__name__)

T = TypeVar("T")


# Probe selection -----------------------------------------------------------------------------


@lru_cache(maxsize=1)
def bundled_probe() -> Probe:
    """Load the multi-domain probe shipped inside the package (works from a wheel)."""
    resource = resources.files("grokwatch").joinpath(*BUNDLED_RESOURCE)
    text = resource.read_text(encoding="utf-8")
    return parse_probe_lines(text.splitlines(), "bundled", jsonl=True)


def select_probe(
    explicit: Path | None,
    config_probe: Path | None,
    run_dir: Path,
    stored_jsonl: str | None,
) -> tuple[Probe, str]:
    """Pick the run's probe (flag, config, run dir, stored with the run, bundled); say which."""
    if explicit is not None:
        return load_probe(explicit), f"--probe {explicit}"
    if config_probe is not None:
        return load_probe(config_probe), f"probe {config_probe} from the config"
    in_run_dir = Path(run_dir) / RUN_DIR_PROBE_NAME
    if in_run_dir.is_file():
        return load_probe(in_run_dir), f"{RUN_DIR_PROBE_NAME} in the run directory"
    if stored_jsonl and stored_jsonl.strip():
        try:
            stored = parse_probe_lines(stored_jsonl.splitlines(), "stored", jsonl=True)
        except ProbeError as exc:
            raise ProbeError(
                f"the probe stored with the run is unreadable ({exc}); "
                "pass --probe FILE to start a new run"
            ) from None
        bundled = bundled_probe()
        # A run started on the bundled set must keep saying so after a restart.
        if stored.hash == bundled.hash:
            return bundled, BUNDLED_NOTE
        return stored, STORED_HOW
    return bundled_probe(), BUNDLED_NOTE


# Reservoir sampling --------------------------------------------------------------------------


class GroupReservoirs(Generic[T]):
    """A uniform sample of up to `per_group` items per group, from one pass over a stream."""

    def __init__(self, per_group: int, seed: int) -> None:
        self.per_group = per_group
        self._rng = random.Random(seed)
        self._seen: dict[str, int] = {}
        self._kept: dict[str, list[tuple[int, T]]] = {}
        self._position = 0

    def offer(self, group: str, item: T) -> None:
        """Consider one item of a group; it replaces a kept one with probability per_group/seen."""
        seen = self._seen.get(group, 0)
        kept = self._kept.setdefault(group, [])
        entry = (self._position, item)
        self._position += 1
        self._seen[group] = seen + 1
        if seen < self.per_group:
            kept.append(entry)
            return
        slot = self._rng.randrange(seen + 1)
        if slot < self.per_group:
            kept[slot] = entry

    @property
    def groups(self) -> int:
        """Number of distinct groups offered so far."""
        return len(self._seen)

    @property
    def held(self) -> int:
        """Number of items held now (at most per_group per group, whatever the stream length)."""
        return sum(len(kept) for kept in self._kept.values())

    def seen(self, group: str) -> int:
        """Number of items of a group offered so far."""
        return self._seen.get(group, 0)

    def samples(self) -> dict[str, list[T]]:
        """Kept items per group: groups by first appearance, items in stream order."""
        return {
            g: [item for _, item in sorted(kept, key=lambda e: e[0])]
            for g, kept in self._kept.items()
        }


# Corpus reading ------------------------------------------------------------------------------


def _corpus_lines(corpus: Path) -> Iterator[tuple[int, str]]:
    """Yield (line number, line without its newline), decoding each line so errors can name it."""
    opener: Any = gzip.open if corpus.suffix == ".gz" else open
    try:
        with opener(corpus, "rb") as handle:
            for lineno, raw in enumerate(handle, start=1):
                try:
                    line = raw.decode("utf-8")
                except UnicodeDecodeError:
                    raise ProbeError(
                        f"{corpus}:{lineno}: not UTF-8 text; convert the corpus to UTF-8 "
                        "(e.g. iconv -t utf-8) or remove the line"
                    ) from None
                if lineno == 1:
                    line = line.removeprefix("\ufeff")
                yield lineno, line.rstrip("\r\n")
    except (gzip.BadGzipFile, EOFError) as exc:
        raise ProbeError(f"{corpus}: not a readable gzip file ({exc}); recompress it") from None
    except OSError as exc:
        raise UsageError(f"{corpus}: cannot read the corpus ({exc.strerror or exc})") from None


def _lookup(record: dict[str, Any], field: str) -> Any:
    """A record's field; a dotted name such as `meta.domain` reaches into nested objects."""
    if field in record:
        return record[field]
    value: Any = record
    for part in field.split("."):
        if not isinstance(value, dict) or part not in value:
            return None
        value = value[part]
    return value


def _group_of(record: dict[str, Any], group_field: str, where: str) -> str:
    value = _lookup(record, group_field)
    if value is None:
        return DEFAULT_GROUP
    if isinstance(value, bool) or not isinstance(value, (str, int)):
        raise ProbeError(
            f"{where}: field {group_field!r} holds a {type(value).__name__}, not a name; "
            "group by a field that names a domain (--group-field)"
        )
    group = str(value).strip() or DEFAULT_GROUP
    if group.startswith(RESERVED_PREFIX):
        raise ProbeError(
            f"{where}: group {group!r} starts with '__', which is reserved; "
            "rename it in the corpus or group by another field (--group-field)"
        )
    return group


def _probe_record(record: dict[str, Any], text_field: str) -> dict[str, str] | None:
    """The probe's form of a corpus record (prompt/completion kept), or None when it has no text."""
    prompt, completion = record.get("prompt"), record.get("completion")
    if isinstance(prompt, str) and isinstance(completion, str):
        # Loss counts completion tokens only, so an empty completion measures nothing.
        return {"prompt": prompt, "completion": completion} if completion.strip() else None
    text = _lookup(record, text_field)
    if isinstance(text, str) and text.strip():
        return {"text": text}
    return None


def _sample_jsonl(
    lines: Iterator[tuple[int, str]],
    corpus: Path,
    reservoirs: GroupReservoirs[dict[str, str]],
    group_field: str,
    text_field: str,
) -> None:
    skipped = 0
    first_skipped: tuple[int, list[str]] | None = None
    for lineno, line in lines:
        if not line.strip():
            continue
        where = f"{corpus}:{lineno}"
        try:
            record = json.loads(line)
        except json.JSONDecodeError as exc:
            hint = (
                " (a JSON array: write one object per line, e.g. jq -c '.[]')"
                if line.lstrip().startswith("[")
                else ""
            )
            raise ProbeError(
                f"{where}: not valid JSON ({exc.msg}){hint}; fix or remove the line"
            ) from None
        if not isinstance(record, dict):
            raise ProbeError(f"{where}: expected a JSON object per line; fix or remove the line")
        sample = _probe_record(record, text_field)
        if sample is None:
            skipped += 1
            if first_skipped is None:
                first_skipped = (lineno, list(record)[:8])
            continue
        group = _group_of(record, group_field, where)
        if reservoirs.seen(group) == 0 and reservoirs.groups >= MAX_GROUPS:
            raise ProbeError(
                f"{where}: field {group_field!r} has more than {MAX_GROUPS} distinct values; "
                "group by a field that names a domain (--group-field)"
            )
        sample["group"] = group
        reservoirs.offer(group, sample)
    if reservoirs.groups == 0 and first_skipped is not None:
        lineno, keys = first_skipped
        fields = ", ".join(map(repr, keys)) or "no fields"
        raise ProbeError(
            f"{corpus}:{lineno}: no line has a non-empty string field {text_field!r} "
            f"(or 'prompt' + 'completion'); this line has {fields}; "
            "name the text field with --text-field"
        )
    if first_skipped is not None:
        # Real corpora mix record kinds; leaving some out is fine, but never silently.
        log.warning(
            "%s: skipped %d lines without a non-empty %r (first: line %d)",
            corpus,
            skipped,
            text_field,
            first_skipped[0],
        )


def _sample_text(
    lines: Iterator[tuple[int, str]],
    per_group: int,
    seed: int,
) -> GroupReservoirs[dict[str, str]]:
    # Whether the file is one sample per line or paragraphs is known only at the end, so one pass
    # fills both reservoirs, each with its own generator seeded alike (same picks as a lone pass).
    by_line: GroupReservoirs[dict[str, str]] = GroupReservoirs(per_group, seed)
    by_paragraph: GroupReservoirs[dict[str, str]] = GroupReservoirs(per_group, seed)
    paragraph: list[str] = []
    paragraph_chars = 0
    blank_after_text = False
    has_paragraphs = False

    def flush() -> None:
        if paragraph:
            by_paragraph.offer(
                DEFAULT_GROUP, {"text": "\n".join(paragraph), "group": DEFAULT_GROUP}
            )
            paragraph.clear()

    for _lineno, line in lines:
        if not line.strip():
            flush()
            paragraph_chars = 0
            blank_after_text = by_line.groups > 0
            continue
        has_paragraphs = has_paragraphs or blank_after_text
        blank_after_text = False
        by_line.offer(DEFAULT_GROUP, {"text": line, "group": DEFAULT_GROUP})
        if paragraph_chars < MAX_SAMPLE_CHARS:
            kept = line[: MAX_SAMPLE_CHARS - paragraph_chars]
            paragraph.append(kept)
            paragraph_chars += len(kept) + 1
    flush()
    return by_paragraph if has_paragraphs else by_line


# Probe making --------------------------------------------------------------------------------


def _check_paths(corpus: Path, out: Path, per_group: int) -> None:
    if per_group < 1:
        raise UsageError(f"--per-group must be at least 1 (got {per_group})")
    if not corpus.exists():
        raise UsageError(f"{corpus}: corpus not found; pass an existing JSONL or text file")
    if corpus.is_dir():
        raise UsageError(f"{corpus}: is a directory; pass a JSONL or text file as the corpus")
    if out.is_dir():
        raise UsageError(f"{out}: is a directory; pass a file name with -o")
    if out.resolve() == corpus.resolve() or (out.exists() and os.path.samefile(out, corpus)):
        raise UsageError(f"{out}: is the corpus itself; write the probe to another file with -o")


def _write_atomically(out: Path, text: str) -> None:
    """Write via a temporary file and rename, so a failure never leaves half a probe file."""
    out.parent.mkdir(parents=True, exist_ok=True)
    # A named file (not mkstemp's 0600) so the probe gets the user's usual permissions.
    tmp = out.with_name(f".{out.name}.{os.getpid()}.tmp")
    try:
        tmp.write_text(text, encoding="utf-8")
        os.replace(tmp, out)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def make_probe(
    corpus: Path,
    out: Path,
    per_group: int = 64,
    group_field: str = "group",
    text_field: str = "text",
    seed: int = 0,
) -> dict[str, int]:
    """Sample up to `per_group` examples per group from a JSONL/text corpus into a probe file."""
    corpus, out = Path(corpus), Path(out)
    _check_paths(corpus, out, per_group)
    lines = _corpus_lines(corpus)
    first = next(((n, ln) for n, ln in lines if ln.strip()), None)
    if first is None:
        raise ProbeError(
            f"{corpus}: corpus is empty; pass JSONL with a 'text' field "
            "or text with one sample per line"
        )
    stream = _chain_first(first, lines)
    base_suffix = Path(corpus.stem).suffix if corpus.suffix == ".gz" else corpus.suffix
    if base_suffix in JSONL_SUFFIXES or first[1].lstrip().startswith("{"):
        reservoirs: GroupReservoirs[dict[str, str]] = GroupReservoirs(per_group, seed)
        _sample_jsonl(stream, corpus, reservoirs, group_field, text_field)
    else:
        reservoirs = _sample_text(stream, per_group, seed)
    samples = reservoirs.samples()
    text = "".join(json.dumps(record) + "\n" for records in samples.values() for record in records)
    # Parse what is about to be written, so the file is known to load as a probe.
    parse_probe_lines(text.splitlines(), str(out), jsonl=True)
    _write_atomically(out, text)
    return {group: len(records) for group, records in samples.items()}


def _chain_first(
    first: tuple[int, str], rest: Iterator[tuple[int, str]]
) -> Iterator[tuple[int, str]]:
    yield first
    yield from rest
