"""`grokwatch status`: heartbeat, queue, last checkpoint, latest metrics per group, alerts."""

from __future__ import annotations

import math
import time
from typing import Any

from grokwatch.errors import UsageError
from grokwatch.reader import Reader


def _age(seconds: float | None) -> str:
    if seconds is None:
        return "never"
    seconds = max(0.0, seconds)
    if seconds < 90:
        return f"{seconds:.0f} s ago"
    if seconds < 5400:
        return f"{seconds / 60:.0f} min ago"
    if seconds < 172800:
        return f"{seconds / 3600:.1f} h ago"
    return f"{seconds / 86400:.1f} d ago"


def _num(value: Any, fmt: str = ".4g") -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    return format(value, fmt)


def collect_status(reader: Reader, run_id: int | None = None, now: float | None = None) -> dict:
    """Everything `status` shows, as plain data (the --json output)."""
    now = time.time() if now is None else now
    run = reader.run(run_id)
    if run is None and run_id is not None:
        known = ", ".join(str(r["id"]) for r in reader.runs()) or "none"
        raise UsageError(f"{reader.path}: no run {run_id}; runs in this store: {known}")
    hb = reader.heartbeat()
    status: dict[str, Any] = {
        "store": str(reader.path),
        "daemon": None,
        "run": None,
        "queue": {},
        "last_checkpoint": None,
        "groups": [],
        "alerts": [],
    }
    if hb is not None:
        status["daemon"] = {
            "alive": hb.alive(now),
            "pid": hb.pid,
            "host": hb.host,
            "device": hb.device,
            "started_at": hb.started_at,
            "last_beat_at": hb.beat_at,
            "worker_state": hb.worker_state,
            "stopped_at": hb.stopped_at,
        }
    if run is None:
        return status
    rid = run["id"]
    status["run"] = {
        "id": rid,
        "run_dir": run["run_dir"],
        "probe_source": run["probe_source"],
        "probe_hash": run["probe_hash"],
        "n_probe_samples": run["n_probe_samples"],
        "tau": run["tau"],
        "definition": run["definition"],
    }
    status["queue"] = reader.queue_counts(rid)
    checkpoints = reader.checkpoints(rid)
    done = [c for c in checkpoints if c["status"] == "done"]
    if done:
        last = max(done, key=lambda c: c["done_at"] or 0.0)
        status["last_checkpoint"] = {
            "step": last["step"],
            "path": last["path"],
            "done_at": last["done_at"],
            "total_s": last["total_s"],
        }
        latest_step = max(c["step"] for c in done)
        status["groups"] = [
            {
                k: m[k]
                for k in (
                    "n_samples",
                    "loss",
                    "pathway_distance",
                    "complexity",
                    "consistency",
                    "raw_cosine",
                    "n_memorized",
                    "state",
                )
            }
            | {"group": m["grp"], "step": latest_step}
            for m in sorted(reader.metrics(rid), key=lambda m: m["grp"] == "__all__")
            if m["step"] == latest_step
        ]
    status["alerts"] = [
        {k: a[k] for k in ("id", "step", "kind", "message", "created_at")} | {"group": a["grp"]}
        for a in reader.alerts(rid)[-5:][::-1]
    ]
    return status


def format_status(status: dict, now: float | None = None) -> str:
    """Human-readable status, a few lines."""
    now = time.time() if now is None else now
    lines = [f"store   {status['store']}"]
    d = status["daemon"]
    if d is None:
        lines.append("daemon  never ran on this store")
    else:
        state = "alive" if d["alive"] else ("stopped" if d["stopped_at"] else "stale")
        lines.append(
            f"daemon  {state}: pid {d['pid']} on {d['host']}, {d['device']},"
            f" last beat {_age(now - d['last_beat_at'])}"
        )
    run = status["run"]
    if run is None:
        lines.append("run     none yet")
        return "\n".join(lines) + "\n"
    lines.append(
        f"run     #{run['id']} {run['run_dir']} (probe: {run['probe_source']},"
        f" {run['n_probe_samples']} samples, tau {run['tau']})"
    )
    queue = ", ".join(f"{k} {v}" for k, v in sorted(status["queue"].items())) or "empty"
    lines.append(f"queue   {queue}")
    last = status["last_checkpoint"]
    if last:
        lines.append(
            f"last    step {last['step']} done {_age(now - (last['done_at'] or now))}"
            f" in {_num(last['total_s'], '.1f')} s"
        )
        lines.append(
            f"  {'group':<14} {'n':>5} {'loss':>8} {'distance':>9} {'complexity':>10}"
            f" {'memorized':>9}  state"
        )
        for g in status["groups"]:
            lines.append(
                f"  {g['group']:<14} {g['n_samples']:>5} {_num(g['loss']):>8}"
                f" {_num(g['pathway_distance']):>9} {_num(g['complexity']):>10}"
                f" {_num(g['n_memorized'], 'd') if g['n_memorized'] is not None else '-':>9}"
                f"  {g['state'] or '-'}"
            )
    if status["alerts"]:
        lines.append("alerts")
        for a in status["alerts"]:
            group = f" [{a['group']}]" if a["group"] else ""
            lines.append(f"  step {a['step']} {a['kind']}{group}: {a['message']}")
    return "\n".join(lines) + "\n"
