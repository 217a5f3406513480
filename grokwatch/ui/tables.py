"""Tables: group lanes, checkpoints and alerts, with keyboard navigation.

Rows are updated in place from snapshots; cell colours come from the `gw--*` component
classes, so a theme change redraws them (the app calls `show` again).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import PurePath
from typing import ClassVar

from rich.text import Text
from textual.binding import Binding, BindingType
from textual.widgets import DataTable, Static

from grokwatch.ui import render
from grokwatch.ui.views import AlertView, CheckpointView, GroupLane, PathwayMetric
from grokwatch.ui.widgets import (
    ALERT_STYLE,
    STATE_STYLE,
    STATUS_STYLE,
    THEMED,
    Themed,
    lane_spark,
)


class GwTable(Themed, DataTable):
    """A row-cursor table with j/k, g/G, and left/right switching tabs."""

    COMPONENT_CLASSES: ClassVar[set[str]] = set(THEMED)

    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("j", "cursor_down", "Down", show=False),
        Binding("k", "cursor_up", "Up", show=False),
        Binding("g", "first", "First", show=False),
        Binding("G", "last", "Last", show=False),
        Binding("left", "app.previous_tab", "Previous tab", show=False),
        Binding("right", "app.next_tab", "Next tab", show=False),
    ]

    def __init__(self, **kwargs: object) -> None:
        super().__init__(cursor_type="row", zebra_stripes=False, **kwargs)  # type: ignore[arg-type]

    def action_first(self) -> None:
        """Move to the first row."""
        if self.row_count:
            self.move_cursor(row=0)

    def action_last(self) -> None:
        """Move to the last row."""
        if self.row_count:
            self.move_cursor(row=self.row_count - 1)

    def styled(self, text: str, role: str) -> Text:
        """Cell text in a themed role."""
        return Text(text, style=self.gw(role), no_wrap=True)


class LanesTable(GwTable):
    """One row per data group: size, mini sparklines of loss, distance and the pathway metric."""

    def on_mount(self) -> None:
        """Columns are fixed; the sparkline width follows the table width."""
        self.lanes: tuple[GroupLane, ...] = ()
        self.pathway = PathwayMetric("complexity", "complexity", "down")

    def show(self, lanes: Sequence[GroupLane], pathway: PathwayMetric) -> None:
        """Redraw every lane (there are only a handful) when any of them changed."""
        if tuple(lanes) == self.lanes and pathway == self.pathway and self.columns:
            return
        self.lanes = tuple(lanes)
        self.pathway = pathway
        self._rebuild()

    def on_resize(self) -> None:
        """Sparklines widen with the terminal."""
        if getattr(self, "lanes", None):
            self._rebuild()

    def restyle(self) -> None:
        """Forget what is drawn, so the next `show` redraws in the current theme's colours."""
        self.clear(columns=True)

    def _rebuild(self) -> None:
        width = max(40, self.size.width or 80)
        name_w = min(14, max([5, *(len(lane.name) for lane in self.lanes)]))
        # group, n, state and three (spark + value) columns, 2 cells of padding each.
        spark_w = max(4, min(40, (width - (name_w + 2) - 5 - 11 - 3 * 9 - 2) // 3))
        # Few checkpoints: keep each sparkline (and its value) compact rather than padded.
        n_points = max((len(lane.series.steps) for lane in self.lanes), default=0)
        if n_points:
            spark_w = min(spark_w, max(8, n_points * max(1, min(2, spark_w // n_points))))
        row = self.cursor_row
        self.clear(columns=True)
        self.add_column("group", key="group")
        self.add_column("n", key="n")
        self.add_column("state", key="state")
        self.add_column("loss ↓", key="loss")
        self.add_column("distance ↓", key="distance")
        self.add_column(
            f"{self.pathway.label} {'↓' if self.pathway.good == 'down' else '↑'}", key="pathway"
        )
        for lane in self.lanes:
            state = lane.state or "–"
            self.add_row(
                self.styled(render.fit(lane.name, name_w), "title"),
                Text(str(lane.n_samples), justify="right"),
                self.styled(state, STATE_STYLE.get(state, "muted")),
                lane_spark(self, lane.series, "loss", "down", spark_w),
                lane_spark(self, lane.series, "pathway_distance", "down", spark_w),
                lane_spark(self, lane.series, self.pathway.key, self.pathway.good, spark_w),
                key=lane.name,
            )
        if self.row_count:
            self.move_cursor(row=min(row, self.row_count - 1))


class CheckpointTable(GwTable):
    """Newest checkpoints first: step, age, status, loss, distance, pathway metric, seconds."""

    def __init__(self, clock: Callable[[], float], **kwargs: object) -> None:
        super().__init__(**kwargs)
        self.clock = clock
        self.views: dict[int, CheckpointView] = {}
        self.pathway = PathwayMetric("complexity", "complexity", "down")
        self._ages: dict[int, str] = {}

    def show(self, checkpoints: Sequence[CheckpointView], pathway: PathwayMetric) -> None:
        """Update changed rows in place, add new ones, drop ones that left the window."""
        if pathway != self.pathway or not self.columns:
            self.pathway = pathway
            self.views = {}
            self.clear(columns=True)
            for label, key in (
                ("step", "step"),
                ("age", "age"),
                ("status", "status"),
                ("loss", "loss"),
                ("distance", "distance"),
                (pathway.label, "pathway"),
                ("secs", "secs"),
                ("reason", "reason"),
            ):
                self.add_column(label, key=key)
        wanted = {c.id: c for c in checkpoints}
        for gone in [i for i in self.views if i not in wanted]:
            self.remove_row(str(gone))
            del self.views[gone]
            self._ages.pop(gone, None)
        added = False
        for view in checkpoints:
            old = self.views.get(view.id)
            if old == view:
                continue
            cells = self._cells(view)
            if old is None:
                self.add_row(*cells.values(), key=str(view.id))
                added = True
            else:
                for column, value in cells.items():
                    self.update_cell(str(view.id), column, value)
            self.views[view.id] = view
        if added:
            self.sort("step", key=lambda step: -int(step.plain), reverse=False)

    def _cells(self, view: CheckpointView) -> dict[str, Text]:
        age = self._age(view)
        self._ages[view.id] = age
        # The app's width: this table may be on a hidden tab, with no size of its own yet.
        reason_w = max(10, self.app.size.width - 66)
        return {
            "step": Text(str(view.step), justify="right"),
            "age": self.styled(age, "muted"),
            "status": self.styled(view.status, STATUS_STYLE.get(view.status, "muted")),
            "loss": Text(render.number(view.loss), justify="right"),
            "distance": Text(render.number(view.pathway_distance), justify="right"),
            "pathway": Text(render.number(view.metric(self.pathway.key)), justify="right"),
            "secs": Text(render.duration(view.total_s), justify="right"),
            "reason": self.styled(render.fit(view.reason or "", reason_w), "muted"),
        }

    def restyle(self) -> None:
        """Forget what is drawn, so the next `show` redraws in the current theme's colours."""
        self.clear(columns=True)
        self.views = {}
        self._ages = {}

    def on_resize(self) -> None:
        """Refit the failure reasons to the new width."""
        for cid, view in self.views.items():
            if view.reason:
                self.update_cell(str(cid), "reason", self._cells(view)["reason"])

    def _age(self, view: CheckpointView) -> str:
        stamp = view.done_at if view.done_at is not None else view.seen_at
        return render.age(self.clock() - stamp) if stamp else "–"

    def refresh_ages(self) -> None:
        """Rewrite only the age cells whose text changed (cheap enough to run every few s)."""
        for cid, view in self.views.items():
            age = self._age(view)
            if self._ages.get(cid) != age:
                self._ages[cid] = age
                self.update_cell(str(cid), "age", self.styled(age, "muted"))

    def selected_id(self) -> int | None:
        """The checkpoint id under the cursor."""
        if not self.row_count:
            return None
        key = self.coordinate_to_cell_key((self.cursor_row, 0)).row_key
        return int(key.value) if key.value is not None else None

    def neighbour_id(self, checkpoint_id: int, offset: int) -> int | None:
        """The checkpoint `offset` rows away from one (for stepping through details)."""
        try:
            index = self.get_row_index(str(checkpoint_id)) + offset
        except Exception:
            return None
        if 0 <= index < self.row_count:
            key = self.coordinate_to_cell_key((index, 0)).row_key
            return int(key.value) if key.value is not None else None
        return None


class CheckpointInfo(Themed, Static):
    """The highlighted checkpoint's path and full failure reason, under the table."""

    COMPONENT_CLASSES: ClassVar[set[str]] = set(THEMED)

    def show(self, view: CheckpointView | None) -> None:
        """Describe one checkpoint in a line (enter opens its detail)."""
        width = max(20, self.size.width or 80)
        if view is None:
            self.update("")
            return
        name = PurePath(view.path).name
        text = Text(no_wrap=True, overflow="crop")
        text.append(name + "  ", style=self.gw("title"))
        text.append(view.status, style=self.gw(STATUS_STYLE.get(view.status, "muted")))
        rest = width - len(name) - len(view.status) - 2
        if view.reason:
            text.append(": " + render.fit(view.reason, rest - 2), style=self.gw("muted"))
        elif rest > 24:
            text.append("  enter: detail", style=self.gw("muted"))
        self.update(text)


class AlertTable(GwTable):
    """The alert log, newest first."""

    def restyle(self) -> None:
        """Forget what is drawn, so the next `show` redraws in the current theme's colours."""
        self._shown: tuple[int, ...] | None = None

    def show(self, alerts: Sequence[AlertView], clock: Callable[[], float]) -> None:
        """Rebuild when alerts changed (a few hundred rows at most)."""
        if not self.columns:
            for label in ("step", "kind", "group", "age", "message"):
                self.add_column(label, key=label)
        if getattr(self, "_shown", None) == tuple(a.id for a in alerts):
            return
        self._shown = tuple(a.id for a in alerts)
        self.clear()
        width = self.size.width or 80
        now = clock()
        for alert in alerts:
            self.add_row(
                Text("" if alert.step is None else str(alert.step), justify="right"),
                self.styled(alert.kind, ALERT_STYLE.get(alert.kind, "warn")),
                self.styled(alert.group or "–", "title"),
                self.styled(render.age(now - alert.created_at), "muted"),
                Text(render.fit(alert.message, max(20, width - 46))),
                key=str(alert.id),
            )
