"""Widgets that draw snapshots: header line, metric panels, tables, hints.

Widgets never read the store; the app hands each one the latest frozen `Snapshot`. Colours come
from component classes whose CSS uses theme variables only, so every theme (and the 16-colour
one) recolours everything.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from pathlib import PurePath
from typing import ClassVar

from rich.style import Style
from rich.text import Text
from textual.widget import Widget
from textual.widgets import Static

from grokwatch.ui import render
from grokwatch.ui.views import (
    AlertView,
    GroupLane,
    PathwayMetric,
    SeriesSet,
    Snapshot,
)

THEMED = frozenset(
    {"gw--good", "gw--bad", "gw--warn", "gw--muted", "gw--accent", "gw--spark", "gw--title"}
)
THEMED_CSS = """
Widget > .gw--good { color: $success; }
Widget > .gw--bad { color: $error; text-style: bold; }
Widget > .gw--warn { color: $warning; }
Widget > .gw--muted { color: $text-muted; }
Widget > .gw--accent { color: $accent; }
Widget > .gw--spark { color: $primary; }
Widget > .gw--title { color: $secondary; text-style: bold; }
HeaderBar, StatusLines, KeyHints, LanesSummary, CheckpointInfo, DetailBody, MetricPanel {
    text-wrap: nowrap; text-overflow: clip;
}
"""
STATE_STYLE = {"grokking": "good", "reversed": "bad", "memorized": "warn", "learning": "muted"}
STATUS_STYLE = {
    "done": "good",
    "failed": "bad",
    "vanished": "warn",
    "running": "accent",
    "pending": "muted",
    "seen": "muted",
    "superseded": "muted",
}
ALERT_STYLE = {
    "onset": "good",
    "reversal": "bad",
    "checkpoint_failed": "bad",
    "worker_down": "bad",
    "overdue": "warn",
    "memorized": "warn",
}


class Themed:
    """Mixin: rich styles from the `gw--*` component classes (theme variables only).

    Textual collects COMPONENT_CLASSES from widget bases only, so each themed widget class
    repeats `COMPONENT_CLASSES = set(THEMED)`.
    """

    def gw(self, name: str) -> Style:
        """The foreground style of one themed role (good, bad, warn, muted, accent, spark)."""
        widget: Widget = self  # type: ignore[assignment]
        return widget.get_component_rich_style(f"gw--{name}", partial=True)


def good_style(owner: Themed, delta: float | None, good: str) -> Style:
    """Green when a change goes the good way, red when it goes the other way."""
    if delta is None or not math.isfinite(delta) or delta == 0:
        return owner.gw("muted")
    improving = delta < 0 if good == "down" else delta > 0
    return owner.gw("good" if improving else "bad")


def arrow(good: str) -> str:
    """The good-direction label shown next to every metric."""
    return "↓ good" if good == "down" else "↑ good"


def daemon_label(snapshot: Snapshot, now: float) -> tuple[str, str]:
    """Daemon liveness in words, with the style role to draw it in."""
    beat = snapshot.heartbeat
    if beat is None:
        return "no daemon (review)", "muted"
    if beat.stopped_at is not None:
        return "○ daemon stopped", "warn"
    if beat.alive(now):
        return "● daemon alive", "good"
    return f"○ daemon stale {render.age(now - beat.beat_at)}", "bad"


class SnapshotText(Themed, Static):
    """A text widget drawn from the latest snapshot; ages refresh on every show()."""

    COMPONENT_CLASSES: ClassVar[set[str]] = set(THEMED)

    def __init__(self, clock: Callable[[], float], **kwargs: object) -> None:
        super().__init__(**kwargs)  # type: ignore[arg-type]
        self.clock = clock
        self.snapshot: Snapshot | None = None

    def show(self, snapshot: Snapshot | None) -> None:
        """Draw a snapshot (or refresh the ages of the current one)."""
        if snapshot is not None:
            self.snapshot = snapshot
        self.update(self._text())

    def _text(self) -> Text:
        raise NotImplementedError


class HeaderBar(SnapshotText):
    """One line: run dir, device, daemon, queue, age of the last checkpoint, done/failed."""

    def _text(self) -> Text:
        snap = self.snapshot
        width = max(20, self.size.width or 80)
        if snap is None or snap.state == "missing":
            return Text.assemble(
                ("waiting for the daemon to create the store  ", self.gw("warn")),
                (render.fit(snap.store_path if snap else "", width - 46), self.gw("muted")),
            )
        now = self.clock()
        daemon, daemon_role = daemon_label(snap, now)
        device = snap.heartbeat.device if snap.heartbeat else ""
        name = PurePath(snap.run_dir).name if snap.run_dir else PurePath(snap.store_path).stem
        # (text, style role, keep priority: lower numbers survive a narrow terminal longer)
        parts: list[tuple[str, str, int]] = [(name, "title", 3), (daemon, daemon_role, 0)]
        if snap.state == "empty":
            waiting = snap.error or "no run yet: waiting for the first checkpoint"
            parts.append((waiting, "warn" if snap.error else "muted", 1))
        else:
            last = (
                f"last {render.age(now - snap.last_done_at)} ago"
                if snap.last_done_at
                else "nothing done yet"
            )
            parts += [
                (device, "accent", 6),
                (f"queue {snap.queue_depth}", "muted" if snap.queue_depth == 0 else "warn", 5),
                (last, "muted", 4),
                (f"{snap.count('done')} done", "good", 2),
            ]
            if snap.count("failed"):
                parts.append((f"{snap.count('failed')} failed", "bad", 1))
        parts = [p for p in parts if p[0]]

        def length(items: list[tuple[str, str, int]]) -> int:
            return sum(len(p[0]) + 2 for p in items) - 2

        # The full run directory when everything fits with it (wide terminals), else its name.
        if snap.run_dir and length([(snap.run_dir, "", 0), *parts[1:]]) <= width:
            parts[0] = (snap.run_dir, "title", 3)
        while len(parts) > 1 and length(parts) > width:
            parts.remove(max(parts, key=lambda p: p[2]))
        text = Text(no_wrap=True, overflow="ellipsis")
        for i, (part, role, _) in enumerate(parts):
            if i:
                text.append("  ")
            text.append(part, style=self.gw(role))
        return text


class MetricPanel(Themed, Widget):
    """A global metric: title line with latest value, change, step range, then a sparkline."""

    COMPONENT_CLASSES: ClassVar[set[str]] = set(THEMED)

    DEFAULT_CSS = "MetricPanel { height: 1fr; min-height: 3; max-height: 10; }"
    WIDEN = 3  # with few checkpoints, each one gets up to this many columns

    def __init__(self, metric: str, label: str, good: str, **kwargs: object) -> None:
        super().__init__(**kwargs)  # type: ignore[arg-type]
        self.metric = metric
        self.label = label
        self.good = good
        self.series = SeriesSet()
        self.note = ""

    def show(self, series: SeriesSet, metric: PathwayMetric | None = None, note: str = "") -> None:
        """Draw a series; for the pathway panel, `metric` says which of the three to plot."""
        key = (metric.key if metric else self.metric, note)
        if series is self.series and key == (self.metric, self.note):
            return  # a heartbeat-only poll: nothing to redraw
        self.series = series
        if metric is not None:
            self.metric, self.label, self.good = metric.key, metric.label, metric.good
        self.note = note
        self.refresh()

    def render(self) -> Text:
        """Title line, then the sparkline rows (trainer loss on its own row when logged)."""
        width = max(10, self.size.width)
        height = max(1, self.size.height)
        values = self.series.values(self.metric)
        steps = self.series.steps
        latest = self.series.latest(self.metric)
        delta = self.series.delta(self.metric)
        out = Text(no_wrap=True, overflow="crop")
        out.append(self.label, style=self.gw("title"))
        out.append(" " + arrow(self.good), style=self.gw("muted"))
        pieces: list[tuple[str, Style]] = [
            (render.number(latest), Style(bold=True)),
            (f"Δ {render.signed(delta)}", good_style(self, delta, self.good)),
        ]
        if steps:
            pieces.append((f"steps {steps[0]}–{steps[-1]}", self.gw("muted")))
        trainer = self.metric == "loss" and self.series.has("trainer_loss")
        if trainer:
            pieces.append(
                (f"trainer {render.number(self.series.latest('trainer_loss'))}", self.gw("accent"))
            )
        scale = render.robust_scale(render.bucket(values, width))
        if scale.n_clipped:
            pieces.append((f"{scale.n_clipped} clipped", self.gw("muted")))
        if self.note:
            pieces.append((self.note, self.gw("warn")))
        used = out.cell_len
        for piece, style in pieces:
            if used + 2 + len(piece) <= width:
                out.append("  ")
                out.append(piece, style=style)
                used += 2 + len(piece)
        rows = height - 1
        if rows <= 0:
            return out
        if not steps:
            out.append("\n")
            out.append(render.fit("no checkpoint evaluated yet", width), style=self.gw("muted"))
            return out
        trainer_rows = 1 if trainer and rows >= 4 else 0
        for line in render.spark_rows(values, width, rows - trainer_rows, scale, self.WIDEN):
            out.append("\n")
            out.append(line, style=self.gw("spark"))
        if trainer_rows:
            # Same width and column stretch as the probe loss above, so the steps line up;
            # the accent colour matches "trainer" in the title line.
            out.append("\n")
            out.append(
                render.spark_line(self.series.values("trainer_loss"), width, widen=self.WIDEN),
                style=self.gw("accent"),
            )
        return out


class StatusLines(SnapshotText):
    """The latest step and the newest alert (two lines under the panels)."""

    def _text(self) -> Text:
        snap = self.snapshot
        width = max(20, self.size.width or 80)
        text = Text(no_wrap=True, overflow="crop")
        if snap is None or snap.state != "ready":
            text.append("latest step  –", style=self.gw("muted"))
            text.append("\nnewest alert  none", style=self.gw("muted"))
            return text
        now = self.clock()
        done = next((c for c in snap.checkpoints if c.status == "done"), None)
        text.append("latest step  ", style=self.gw("muted"))
        if done is None:
            text.append("none evaluated yet", style=self.gw("muted"))
        else:
            parts = [
                f"{done.step}",
                f"done {render.age(now - done.done_at) if done.done_at else '–'} ago",
                f"took {render.duration(done.total_s)}",
                f"{snap.count('done')} of {snap.n_checkpoints} checkpoints",
            ]
            text.append(render.join_fitting(parts, width - 13, "  ·  "), style=Style(bold=True))
        text.append("\nnewest alert ", style=self.gw("muted"))
        if not snap.alerts:
            text.append(" none", style=self.gw("muted"))
            return text
        for i, alert in enumerate(snap.alerts[: self.alert_lines]):
            if i:
                text.append("\n" + " " * 13)
            kind = f" {alert.kind}"
            text.append(kind, style=self.gw(ALERT_STYLE.get(alert.kind, "warn")))
            text.append(" " + render.fit(alert_summary(alert), width - 14 - len(kind)))
        return text

    @property
    def alert_lines(self) -> int:
        """One alert at 80x24; the five newest when the terminal is tall."""
        return 5 if self.app.has_class("-tall") else 1


def alert_summary(alert: AlertView) -> str:
    """`@step group: message` for one alert."""
    where = f"@{alert.step}" if alert.step is not None else ""
    # Messages often start with their group already ("math: grokging onset ...").
    named = alert.group and not alert.message.startswith(alert.group)
    group = f" {alert.group}:" if named else ""
    return f"{where}{group} {alert.message}".strip()


class KeyHints(Themed, Static):
    """The key hints line at the bottom; whole hints are dropped when the line is narrow."""

    COMPONENT_CLASSES: ClassVar[set[str]] = set(THEMED)

    def __init__(self, hints: Sequence[tuple[str, str]], **kwargs: object) -> None:
        super().__init__(**kwargs)  # type: ignore[arg-type]
        self.hints = list(hints)

    def on_resize(self) -> None:
        """Refit the hints to the new width."""
        self.update(self._text())

    def on_mount(self) -> None:
        """Draw once mounted (the width is known)."""
        self.update(self._text())

    def _text(self) -> Text:
        width = max(10, self.size.width or 80)
        text = Text(no_wrap=True, overflow="crop")
        used = 0
        for key, label in self.hints:
            piece = len(key) + 1 + len(label)
            if used and used + 2 + piece > width:
                break
            if used:
                text.append("  ")
                used += 2
            text.append(key, style=self.gw("accent"))
            text.append(" " + label, style=self.gw("muted"))
            used += piece
        return text


def lane_spark(table: Themed, series: SeriesSet, metric: str, good: str, width: int) -> Text:
    """`▁▂▅▇ 2.31` for one lane cell: a mini sparkline and the latest value."""
    text = Text(no_wrap=True)
    line = render.spark_line(series.values(metric), width, widen=2)
    text.append(line.ljust(width), table.gw("spark"))
    latest = series.latest(metric)
    text.append(
        " " + render.number(latest, 3).rjust(6), good_style(table, series.delta(metric), good)
    )
    return text


class LanesSummary(Themed, Static):
    """Group lanes as text under the panels when the terminal is tall enough."""

    COMPONENT_CLASSES: ClassVar[set[str]] = set(THEMED)

    def show(self, lanes: Sequence[GroupLane], pathway: PathwayMetric) -> None:
        """Draw one line per lane."""
        width = max(40, self.size.width or 120)
        text = Text(no_wrap=True, overflow="crop")
        text.append("groups", style=self.gw("title"))
        spark_w = max(6, min(30, (width - 40) // 3 - 8))
        for lane in lanes:
            text.append("\n")
            text.append(render.fit(lane.name, 14).ljust(15), style=self.gw("title"))
            state = lane.state or "–"
            text.append(state.ljust(11), style=self.gw(STATE_STYLE.get(state, "muted")))
            for metric, good in (
                ("loss", "down"),
                ("pathway_distance", "down"),
                (pathway.key, pathway.good),
            ):
                text.append(" ")
                text.append_text(lane_spark(self, lane.series, metric, good, spark_w))
        if not lanes:
            text.append("\nno group evaluated yet", style=self.gw("muted"))
        self.update(text)
