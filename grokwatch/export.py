"""`grokwatch export`: the stored history as CSV or JSONL, with the columns of design.md.

These column names are a contract users script against: add columns at the end, never rename.
"""

from __future__ import annotations

import csv
import io
import json
import math
from collections.abc import Iterable, Iterator
from typing import Any, TextIO

from grokwatch.errors import UsageError
from grokwatch.reader import Reader

COLUMNS: dict[str, tuple[str, ...]] = {
    "metrics": (
        "step",
        "group",
        "n_samples",
        "n_flagged",
        "n_memorized",
        "loss",
        "trainer_loss",
        "pathway_distance",
        "pathway_distance_expert",
        "pathway_distance_norm",
        "layer_distances",
        "consistency",
        "complexity",
        "raw_cosine",
        "state",
        "tau",
        "definition",
    ),
    "samples": (
        "step",
        "sample",
        "group",
        "loss",
        "pathway",
        "consistency",
        "raw_cosine",
        "memorized_since",
    ),
    "checkpoints": (
        "step",
        "path",
        "status",
        "reason",
        "seen_at",
        "done_at",
        "load_s",
        "forward_s",
        "distance_s",
        "total_s",
        "peak_mem_bytes",
    ),
    "alerts": ("id", "step", "kind", "group", "message", "evidence", "created_at"),
}


def _clean(value: Any) -> Any:
    """NaN and infinities become None (empty in CSV, null in JSONL)."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if hasattr(value, "item"):  # numpy scalars
        return _clean(value.item())
    return value


def _metrics(reader: Reader, run_id: int) -> Iterator[dict[str, Any]]:
    for r in reader.metrics(run_id):
        yield {**r, "group": r["grp"], "layer_distances": [_clean(v) for v in r["layer_distances"]]}


def _samples(reader: Reader, run_id: int) -> Iterator[dict[str, Any]]:
    probe = reader.probe_texts(run_id)
    groups = [p.get("group") or "default" for p in probe]
    for row in reader.sample_rows(run_id):
        arrays = reader.sample_arrays(row["checkpoint_id"])
        if arrays is None:
            continue
        for i, index in enumerate(arrays.index.tolist()):
            since = int(arrays.memorized_since[i])
            yield {
                "step": row["step"],
                "sample": index,
                "group": groups[index] if index < len(groups) else "default",
                "loss": float(arrays.loss[i]),
                "pathway": arrays.pathway(i),
                "consistency": float(arrays.consistency[i]),
                "raw_cosine": float(arrays.raw_cosine[i]),
                "memorized_since": since if since >= 0 else None,
            }


def _checkpoints(reader: Reader, run_id: int) -> Iterator[dict[str, Any]]:
    yield from reader.checkpoints(run_id)


def _alerts(reader: Reader, run_id: int) -> Iterator[dict[str, Any]]:
    for r in reader.alerts(run_id):
        yield {**r, "group": r["grp"]}


_ROWS = {
    "metrics": _metrics,
    "samples": _samples,
    "checkpoints": _checkpoints,
    "alerts": _alerts,
}


def export_rows(reader: Reader, table: str, run_id: int | None = None) -> Iterator[dict[str, Any]]:
    """Rows of one exported table with exactly its contract columns (NaN as None)."""
    if table not in COLUMNS:
        raise UsageError(f"unknown table {table!r}; choose one of {', '.join(COLUMNS)}")
    if run_id is None:
        run_id = reader.latest_run_id()
        if run_id is None:
            return
    elif reader.run(run_id) is None:
        known = ", ".join(str(r["id"]) for r in reader.runs()) or "none"
        raise UsageError(f"{reader.path}: no run {run_id}; runs in this store: {known}")
    columns = COLUMNS[table]
    for row in _ROWS[table](reader, run_id):
        yield {c: _clean(row.get(c)) for c in columns}


def write_rows(rows: Iterable[dict[str, Any]], table: str, fmt: str, out: TextIO) -> int:
    """Write rows as CSV (with a header) or JSONL; returns the number of rows."""
    columns = COLUMNS[table]
    count = 0
    if fmt == "csv":
        writer = csv.DictWriter(out, fieldnames=columns, lineterminator="\n")
        writer.writeheader()
        for row in rows:
            writer.writerow(
                {
                    k: json.dumps(v) if isinstance(v, (list, dict)) else ("" if v is None else v)
                    for k, v in row.items()
                }
            )
            count += 1
    elif fmt == "jsonl":
        for row in rows:
            out.write(json.dumps(row) + "\n")
            count += 1
    else:
        raise UsageError(f"unknown format {fmt!r}; choose csv or jsonl")
    return count


def export_text(reader: Reader, table: str, fmt: str = "csv", run_id: int | None = None) -> str:
    """Convenience for notebooks and tests: the whole export as a string."""
    buffer = io.StringIO()
    write_rows(export_rows(reader, table, run_id), table, fmt, buffer)
    return buffer.getvalue()
