"""Alert decisions: state changes and run events become alert drafts with dedupe keys (pure).

A draft's `dedupe_key` names the thing alerted on, not the moment: the store keeps one alert per
key (UNIQUE (run_id, dedupe_key)), so a replay after a restart or a retried write never alerts
twice. Kinds and fields are those of design.md's alerts export.
"""

from __future__ import annotations

import itertools
import math
import statistics
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from grokwatch.onset import GroupState
from grokwatch.results import ALL_GROUP

ALERT_KINDS = ("memorized", "onset", "reversal", "overdue", "checkpoint_failed", "worker_down")

_STATE_ALERT = {"memorized": "memorized", "grokking": "onset", "reversed": "reversal"}
_SIGNAL_LABEL = {
    "pathway_distance": "pathway distance",
    "consistency": "consistency",
    "raw_cosine": "raw cosine",
}


@dataclass(frozen=True)
class AlertDraft:
    """An alert before the store gives it an id; `dedupe_key` makes it unique per run."""

    kind: str
    step: int | None
    group: str  # a group name, "__all__", or "" for run-wide alerts
    message: str  # one line
    evidence: dict[str, Any] = field(default_factory=dict)  # JSON-safe
    dedupe_key: str = ""

    def as_dict(self) -> dict[str, Any]:
        """The fields as the store's add_alert / write_result expect them."""
        return {
            "kind": self.kind,
            "step": self.step,
            "group": self.group,
            "message": self.message,
            "evidence": self.evidence,
            "dedupe_key": self.dedupe_key,
        }


def _group_label(group: str) -> str:
    return "all groups" if group == ALL_GROUP else f"group {group}"


def _signal_phrase(name: str, evidence: dict[str, Any], reverse: bool) -> str:
    label = _SIGNAL_LABEL.get(name, name)
    direction = evidence.get("direction", "")
    if reverse:
        direction = {"falling": "rising", "rising": "falling"}.get(direction, direction)
    p_key = "p_reverse" if reverse else "p_value"
    parts = [f"{label} {direction}"]
    change, p_value = evidence.get("change"), evidence.get(p_key)
    details = []
    if isinstance(change, int | float):
        details.append(f"{change:+.3g}")
    if isinstance(p_value, int | float):
        details.append(f"p={p_value:.2g}")
    if details:
        parts.append(f"({', '.join(details)})")
    return " ".join(parts)


def _fired_phrase(state: GroupState, reverse: bool) -> str:
    signals = state.evidence.get("signals", {})
    fired = state.evidence.get("fired", [])
    return "; ".join(_signal_phrase(name, signals.get(name, {}), reverse) for name in fired)


def _state_message(kind: str, group: str, state: GroupState) -> str:
    where = _group_label(group)
    window = state.evidence.get("window")
    if kind == "memorized":
        fraction = state.evidence.get("memorized_fraction")
        share = f"{fraction:.0%}" if isinstance(fraction, int | float) else "enough"
        return f"{where}: memorized at step {state.step}, {share} of samples memorized, loss flat"
    if kind == "onset":
        lag = state.evidence.get("lag_steps")
        flat = (
            f", loss flat since step {state.plateau_step}" if state.plateau_step is not None else ""
        )
        lag_text = f" (lag {lag} steps)" if lag is not None else ""
        return (
            f"{where}: grokking onset at step {state.step}{flat}{lag_text}; "
            f"{_fired_phrase(state, reverse=False)} over the last {window} checkpoints"
        )
    return (
        f"{where}: reversal at step {state.step}; "
        f"{_fired_phrase(state, reverse=True)} over the last {window} checkpoints"
    )


def state_change_alerts(
    group: str, prev: GroupState | None, cur: GroupState, step: int | None = None
) -> list[AlertDraft]:
    """Alerts for a group's state change at one checkpoint (none when the state held).

    memorized -> `memorized`, grokking -> `onset`, reversed -> `reversal`; a return to learning
    alerts nothing. The dedupe key is kind, group and the step the state began, so the same
    state never alerts twice, also when a restart replays the history.
    """
    if prev is not None and prev.state == cur.state:
        return []
    kind = _STATE_ALERT.get(cur.state)
    if kind is None:
        return []
    at_step = cur.step if step is None else int(step)
    evidence = {"state": cur.state, "since_step": cur.since_step, **cur.evidence}
    return [
        AlertDraft(
            kind=kind,
            step=at_step,
            group=group,
            message=_state_message(kind, group, cur),
            evidence=evidence,
            dedupe_key=f"{kind}:{group}:{cur.since_step}",
        )
    ]


def replay_alerts(group: str, states: Sequence[GroupState]) -> list[AlertDraft]:
    """All alerts a sequence of states (e.g. onset.replay) implies, oldest first."""
    drafts: list[AlertDraft] = []
    prev: GroupState | None = None
    for state in states:
        drafts.extend(state_change_alerts(group, prev, state))
        prev = state
    return drafts


def overdue_alert(
    done_times_s: Sequence[float],
    now_s: float,
    factor: float = 3.0,
    min_intervals: int = 3,
    last_step: int | None = None,
) -> AlertDraft | None:
    """An `overdue` alert when no checkpoint arrived for `factor` x the median interval.

    done_times_s are the times checkpoints arrived (any order); it needs at least
    `min_intervals` intervals to know the rhythm. One alert per silence: the key is the last
    arrival, so the next checkpoint re-arms it.
    """
    times = sorted(float(t) for t in done_times_s if math.isfinite(float(t)))
    if len(times) < min_intervals + 1:
        return None
    median_s = statistics.median(b - a for a, b in itertools.pairwise(times))
    if median_s <= 0:
        return None
    silent_s = now_s - times[-1]
    if silent_s <= factor * median_s:
        return None
    after = f" after step {last_step}" if last_step is not None else ""
    return AlertDraft(
        kind="overdue",
        step=last_step,
        group="",
        message=(
            f"no new checkpoint{after} for {_duration(silent_s)}, "
            f"{silent_s / median_s:.1f}x the median interval of {_duration(median_s)}"
        ),
        evidence={
            "silent_s": round(silent_s, 3),
            "median_interval_s": round(median_s, 3),
            "factor": factor,
            "last_done_s": times[-1],
        },
        dedupe_key=f"overdue:{times[-1]:.3f}",
    )


def _duration(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


def checkpoint_failed_alert(
    step: int | None, path: str, reason: str, checkpoint_id: int | None = None
) -> AlertDraft:
    """A `checkpoint_failed` alert; one per checkpoint row (id when given, else path + step)."""
    reason_line = " ".join(str(reason).split())
    name = f"step {step}" if step is not None else str(path)
    identity = str(checkpoint_id) if checkpoint_id is not None else f"{path}@{step}"
    return AlertDraft(
        kind="checkpoint_failed",
        step=step,
        group="",
        message=f"checkpoint {name} failed: {reason_line}",
        evidence={"path": str(path), "reason": reason_line},
        dedupe_key=f"checkpoint_failed:{identity}",
    )


def worker_down_alert(reason: str, since_s: float) -> AlertDraft:
    """A `worker_down` alert for the worker process lost at `since_s` (epoch seconds)."""
    reason_line = " ".join(str(reason).split())
    return AlertDraft(
        kind="worker_down",
        step=None,
        group="",
        message=f"worker process down: {reason_line}",
        evidence={"reason": reason_line, "since_s": since_s},
        dedupe_key=f"worker_down:{since_s:.3f}",
    )
