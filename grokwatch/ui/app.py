"""The grokwatch TUI: a read-only, live view of one store.

`create_app` is the one factory used by the CLI and by the tests. A thread worker polls the
store through `StoreModel` and only posts messages; the handlers here change widgets. The UI
never imports torch or transformers (a subprocess test checks it).
"""

from __future__ import annotations

import argparse
import functools
import os
import sys
import threading
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import ClassVar

from textual import on, work
from textual.app import App, ComposeResult, SystemCommand
from textual.binding import Binding, BindingType
from textual.containers import Vertical
from textual.css.query import NoMatches
from textual.screen import Screen
from textual.widgets import DataTable, Input, TabbedContent, TabPane
from textual.worker import get_current_worker

from grokwatch.ui.keys import HELP_KEYS, HINTS, TABS
from grokwatch.ui.messages import DetailLoaded, PollFailed, StoreChanged
from grokwatch.ui.model import StoreModel
from grokwatch.ui.screens import DetailScreen, HelpScreen
from grokwatch.ui.tables import AlertTable, CheckpointInfo, CheckpointTable, LanesTable
from grokwatch.ui.theming import ThemeSet, load_themes, problem_toast
from grokwatch.ui.views import (
    PATHWAY_METRICS,
    AlertView,
    PathwayMetric,
    Snapshot,
    filter_groups,
)
from grokwatch.ui.widgets import (
    THEMED_CSS,
    HeaderBar,
    KeyHints,
    LanesSummary,
    MetricPanel,
    StatusLines,
    alert_summary,
)

MAX_TOASTS_PER_POLL = 3


def _until_teardown(method: Callable[[GrokwatchApp], None]) -> Callable[[GrokwatchApp], None]:
    """Timers and after-refresh callbacks can fire while the app tears its widgets down."""

    @functools.wraps(method)
    def guarded(self: GrokwatchApp) -> None:
        try:
            method(self)
        except NoMatches:
            if self.is_running and self.return_code is None:  # not shutting down: a real bug
                raise

    return guarded


class GrokwatchApp(App[int]):
    """Live sparklines, group lanes, checkpoints and alerts of one grokwatch store."""

    TITLE = "grokwatch"
    CSS = (
        THEMED_CSS
        + """
    Screen { background: $background; }
    HeaderBar { dock: top; height: 1; background: $panel; padding: 0 1; }
    KeyHints { dock: bottom; height: 1; background: $panel; padding: 0 1; }
    TabbedContent { height: 1fr; }
    TabPane { padding: 0 1; }
    #overview-body { height: 1fr; }
    MetricPanel { margin-bottom: 1; }
    LanesSummary { display: none; height: auto; margin-bottom: 1; }
    .-tall LanesSummary { display: block; }
    StatusLines { height: auto; }
    #filter { dock: top; display: none; margin-bottom: 1; }
    #filter.-active { display: block; }
    GwTable { height: 1fr; }
    CheckpointInfo { dock: bottom; height: 1; }
    """
    )
    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("question_mark", "help", "Help"),
        Binding("q", "quit", "Quit"),
        # A monitor is stopped like any terminal program; Textual's default only hints.
        Binding("ctrl+c", "quit", "Quit", show=False, priority=True),
        Binding("t", "cycle_theme", "Theme"),
        Binding("c", "cycle_metric", "Metric"),
        Binding("slash", "filter", "Filter"),
        Binding("escape", "escape", "Back", show=False),
        Binding("r", "reload", "Reload", show=False),
        Binding("left", "previous_tab", "Previous tab", show=False),
        Binding("right", "next_tab", "Next tab", show=False),
        *[
            Binding(str(i + 1), f"show_tab('{tab}')", tab.title(), show=False)
            for i, tab in enumerate(TABS)
        ],
    ]

    def __init__(
        self,
        store_path: Path,
        run_id: int | None = None,
        theme: str | None = None,
        clock: Callable[[], float] = time.time,
        poll_s: float = 0.5,
    ) -> None:
        super().__init__()
        self.store_path = Path(store_path)
        self.clock = clock
        self.poll_s = poll_s
        self.model = StoreModel(self.store_path, run_id=run_id)
        self.snapshot: Snapshot | None = None
        self.snapshots_seen = 0
        self.toast_log: list[str] = []  # every toast raised, oldest first
        self.pathway_index = 0
        self.group_filter = ""
        self._tables_primed = False
        self.first_frame_at: float | None = None  # perf_counter when data was first drawn
        self._wake = threading.Event()
        self._stop = threading.Event()
        self.themes: ThemeSet = load_themes()
        for t in self.themes.themes:
            self.register_theme(t)
        name, problem = self.themes.resolve(theme)
        # A broken file explains a missing name, so file problems come first.
        problems = self.themes.problems + ([problem] if problem else [])
        self._theme_problem = problem_toast(problems, name)
        self.theme = name

    # Layout -----------------------------------------------------------------------------

    def compose(self) -> ComposeResult:
        """Header line, the four tabs, the key hints."""
        yield HeaderBar(self.clock, id="header")
        with TabbedContent(initial="overview", id="tabs"):
            with TabPane("Overview", id="overview"), Vertical(id="overview-body"):
                yield MetricPanel("loss", "loss", "down", id="panel-loss")
                yield MetricPanel(
                    "pathway_distance", "pathway distance", "down", id="panel-distance"
                )
                yield MetricPanel("complexity", "complexity", "down", id="panel-pathway")
                yield LanesSummary(id="lanes-summary")
                yield StatusLines(self.clock, id="status")
            with TabPane("Groups", id="groups"):
                yield Input(placeholder="filter groups (name or state); esc clears", id="filter")
                yield LanesTable(id="lanes")
            with TabPane("Checkpoints", id="checkpoints"):
                yield CheckpointTable(self.clock, id="checkpoint-table")
                yield CheckpointInfo(id="checkpoint-info")
            with TabPane("Alerts", id="alerts"):
                yield AlertTable(id="alert-table")
        yield KeyHints(HINTS, id="hints")

    def on_mount(self) -> None:
        """Start polling, the age timers, and say once if a theme could not be used."""
        self.query_one(HeaderBar).show(None)
        self.query_one(StatusLines).show(None)
        self.query_one(CheckpointTable).show((), self.pathway)
        self.query_one(AlertTable).show((), self.clock)
        self.theme_changed_signal.subscribe(self, lambda _: self.call_after_refresh(self._restyle))
        if self._theme_problem:
            self._toast(self._theme_problem, title="theme", severity="warning")
        self.set_interval(1.0, self._tick_ages)
        self.set_interval(5.0, self._tick_table_ages)
        self._poll_loop()

    def on_unmount(self) -> None:
        """Let the poller thread finish promptly."""
        self._stop.set()
        self._wake.set()

    def on_resize(self) -> None:
        """Show the group lanes under the panels when there is room."""
        self.set_class(self.size.height >= 40, "-tall")
        if self.snapshot is not None:
            self.call_after_refresh(self._redraw)

    @property
    def pathway(self) -> PathwayMetric:
        """The pathway metric plotted now."""
        return PATHWAY_METRICS[self.pathway_index]

    # Polling ----------------------------------------------------------------------------

    @work(thread=True, exclusive=True, group="poll", exit_on_error=False)
    def _poll_loop(self) -> None:
        """Poll the store until the app stops; only posts messages, never touches widgets."""
        worker = get_current_worker()
        last_error = ""
        while not worker.is_cancelled and not self._stop.is_set():
            try:
                snapshot = self.model.poll()
                last_error = ""
            except Exception as exc:  # a bad read must not end the monitor: report, retry
                snapshot = None
                if str(exc) != last_error:
                    last_error = str(exc)
                    self.post_message(PollFailed(last_error))
            if snapshot is not None:
                self.post_message(StoreChanged(snapshot))
            self._wake.wait(self.poll_s)
            self._wake.clear()
        self.model.close()

    def on_store_changed(self, message: StoreChanged) -> None:
        """Draw a new snapshot; toast, ring and notify for alerts that are new."""
        self.snapshot = message.snapshot
        self.snapshots_seen += 1
        if self.first_frame_at is None and message.snapshot.state == "ready":
            # Registered before the table priming below, so it runs right after the frame.
            self.call_after_refresh(self._mark_first_frame)
        self._redraw()
        if message.snapshot.new_alerts:
            self._announce(message.snapshot.new_alerts)

    def on_poll_failed(self, message: PollFailed) -> None:
        """Show a read error once; polling continues."""
        self._toast(
            f"reading {self.store_path.name} failed: {message.error}",
            title="store",
            severity="error",
        )

    @_until_teardown
    def _restyle(self) -> None:
        """Tables keep styled cells: redraw them in the new theme's colours."""
        for table in (LanesTable, CheckpointTable, AlertTable):
            self.query_one(table).restyle()
        self._redraw()

    @_until_teardown
    def _redraw(self) -> None:
        snap = self.snapshot
        if snap is None:
            return
        self.query_one(HeaderBar).show(snap)
        self.query_one(StatusLines).show(snap)
        self.query_one("#panel-loss", MetricPanel).show(snap.overall)
        self.query_one("#panel-distance", MetricPanel).show(snap.overall)
        note = (
            "L=2: consistency ≡ 1"
            if (self.pathway.key != "raw_cosine" and snap.consistency_constant)
            else ""
        )
        self.query_one("#panel-pathway", MetricPanel).show(snap.overall, self.pathway, note)
        lanes = filter_groups(snap.groups, self.group_filter)
        self.query_one(LanesTable).show(lanes, self.pathway)
        if self.has_class("-tall"):
            self.query_one(LanesSummary).show(lanes, self.pathway)
        tabs = self.query_one(TabbedContent)
        if self._tables_primed or tabs.active in ("checkpoints", "alerts"):
            self._prime_tables()
        else:
            # Filling hundreds of table rows costs more than the whole first screen; do it
            # right after that screen is drawn (or at once if its tab is opened first).
            self.call_after_refresh(self._prime_tables)
        tabs.get_tab("alerts").label = f"Alerts {len(snap.alerts)}" if snap.alerts else "Alerts"
        label = f"Groups {len(lanes)}/{len(snap.groups)}" if self.group_filter else "Groups"
        tabs.get_tab("groups").label = label

    def _mark_first_frame(self) -> None:
        self.first_frame_at = time.perf_counter()

    @_until_teardown
    def _prime_tables(self) -> None:
        snap = self.snapshot
        if snap is None:
            return
        self._tables_primed = True
        self.query_one(CheckpointTable).show(snap.checkpoints, self.pathway)
        self.query_one(AlertTable).show(snap.alerts, self.clock)

    @_until_teardown
    def _tick_ages(self) -> None:
        self.query_one(HeaderBar).show(None)
        self.query_one(StatusLines).show(None)

    @_until_teardown
    def _tick_table_ages(self) -> None:
        self.query_one(CheckpointTable).refresh_ages()

    # Alerts -----------------------------------------------------------------------------

    def _announce(self, alerts: Iterable[AlertView]) -> None:
        alerts = list(alerts)
        for alert in alerts[:MAX_TOASTS_PER_POLL]:
            severity = (
                "error"
                if alert.kind in ("reversal", "checkpoint_failed", "worker_down")
                else "warning"
            )
            self._toast(alert_summary(alert), title=alert.kind, severity=severity)
        if len(alerts) > MAX_TOASTS_PER_POLL:
            self._toast(
                f"and {len(alerts) - MAX_TOASTS_PER_POLL} more alerts (tab 4)", title="alerts"
            )
        self.bell()
        first = alerts[0]
        self._desktop_notification(f"grokwatch: {first.kind}", alert_summary(first))

    def _toast(self, message: str, title: str = "", severity: str = "information") -> None:
        self.toast_log.append(f"{title}: {message}" if title else message)
        self.notify(message, title=title, severity=severity, timeout=8)  # type: ignore[arg-type]

    def _desktop_notification(self, title: str, body: str) -> None:
        """OSC 9/777 escape to the real terminal (works over SSH and through tmux)."""
        try:
            from grokwatch.notify import osc_notification  # written alongside; optional here
        except ImportError:
            return
        data = osc_notification(title, body, tmux=bool(os.environ.get("TMUX")))
        if isinstance(data, bytes):
            data = data.decode("utf-8", "replace")
        # Same path as App.bell(): the driver owns the terminal while the app runs.
        if data and not self.is_headless and self._driver is not None:
            self._driver.write(data)

    # Detail -----------------------------------------------------------------------------

    def load_detail(self, checkpoint_id: int) -> None:
        """Read one checkpoint's detail in a thread worker."""
        self._detail_worker(checkpoint_id)

    @work(thread=True, exclusive=True, group="detail", exit_on_error=False)
    def _detail_worker(self, checkpoint_id: int) -> None:
        self.post_message(DetailLoaded(checkpoint_id, self.model.detail(checkpoint_id)))

    def on_detail_loaded(self, message: DetailLoaded) -> None:
        """Hand a loaded detail to the detail screen that asked for it."""
        screen = self.screen
        if isinstance(screen, DetailScreen) and screen.checkpoint_id == message.checkpoint_id:
            screen.show(message.detail)

    @on(DataTable.RowHighlighted, "#checkpoint-table")
    def _checkpoint_highlighted(self, event: DataTable.RowHighlighted) -> None:
        table = self.query_one(CheckpointTable)
        view = table.views.get(int(event.row_key.value)) if event.row_key.value else None
        self.query_one(CheckpointInfo).show(view)

    def neighbour_checkpoint(self, checkpoint_id: int, offset: int) -> int | None:
        """The checkpoint shown `offset` rows away in the table."""
        return self.query_one(CheckpointTable).neighbour_id(checkpoint_id, offset)

    @on(DataTable.RowSelected, "#checkpoint-table")
    def _open_detail(self, event: DataTable.RowSelected) -> None:
        if event.row_key.value is not None:
            self.push_screen(DetailScreen(int(event.row_key.value)))

    # Actions ----------------------------------------------------------------------------

    def action_help(self) -> None:
        """Show every key."""
        if not isinstance(self.screen, HelpScreen):
            self.push_screen(HelpScreen(HELP_KEYS))

    async def action_quit(self) -> None:
        """Stop the poller and exit with status 0."""
        self._stop.set()
        self._wake.set()
        self.exit(0)

    def action_cycle_theme(self) -> None:
        """Switch to the next grokwatch theme (bundled, then the user's)."""
        names = self.themes.names
        index = names.index(self.theme) if self.theme in names else -1
        self.theme = names[(index + 1) % len(names)]

    def action_cycle_metric(self) -> None:
        """Plot complexity, then consistency, then raw cosine."""
        self.pathway_index = (self.pathway_index + 1) % len(PATHWAY_METRICS)
        self._redraw()

    def action_filter(self) -> None:
        """Open the group filter on the groups tab."""
        self.action_show_tab("groups")
        box = self.query_one("#filter", Input)
        box.add_class("-active")
        # Focus once the box is displayed; a hidden widget cannot take focus.
        self.call_after_refresh(box.focus)

    def action_escape(self) -> None:
        """Clear the group filter and close its box."""
        box = self.query_one("#filter", Input)
        if box.value or box.has_class("-active"):
            box.value = ""
            box.remove_class("-active")
            self.query_one(LanesTable).focus()

    def action_reload(self) -> None:
        """Poll now instead of waiting for the next tick."""
        self._wake.set()

    def action_show_tab(self, tab: str) -> None:
        """Activate a tab and focus its table."""
        self.query_one(TabbedContent).active = tab
        self._focus_tab(tab)

    def action_previous_tab(self) -> None:
        """The tab to the left (wrapping)."""
        self._step_tab(-1)

    def action_next_tab(self) -> None:
        """The tab to the right (wrapping)."""
        self._step_tab(1)

    def _step_tab(self, offset: int) -> None:
        current = self.query_one(TabbedContent).active
        index = TABS.index(current) if current in TABS else 0
        self.action_show_tab(TABS[(index + offset) % len(TABS)])

    def _focus_tab(self, tab: str) -> None:
        target = {"groups": LanesTable, "checkpoints": CheckpointTable, "alerts": AlertTable}
        if tab in target:
            self.query_one(target[tab]).focus()
        else:
            self.set_focus(None)

    @on(TabbedContent.TabActivated)
    def _tab_activated(self, event: TabbedContent.TabActivated) -> None:
        if event.pane.id in ("checkpoints", "alerts") and not self._tables_primed:
            self._prime_tables()
        if event.pane.id:
            self._focus_tab(event.pane.id)

    @on(Input.Changed, "#filter")
    def _filter_changed(self, event: Input.Changed) -> None:
        self.group_filter = event.value
        self._redraw()

    @on(Input.Submitted, "#filter")
    def _filter_submitted(self) -> None:
        self.query_one(LanesTable).focus()

    def get_system_commands(self, screen: Screen) -> Iterable[SystemCommand]:
        """Palette entries for every action, plus Textual's own."""
        yield from super().get_system_commands(screen)
        yield SystemCommand("Help: keys", "Show every key", self.action_help)
        yield SystemCommand(
            "Pathway metric: next", "Complexity, consistency, raw cosine", self.action_cycle_metric
        )
        yield SystemCommand("Theme: next", "Cycle the grokwatch themes", self.action_cycle_theme)
        yield SystemCommand("Filter groups", "Filter lanes by name or state", self.action_filter)
        yield SystemCommand("Reload", "Read the store now", self.action_reload)
        for tab in TABS:
            yield SystemCommand(
                f"Show {tab}", f"Switch to the {tab} tab", lambda tab=tab: self.action_show_tab(tab)
            )


def create_app(
    store_path: Path,
    run_id: int | None = None,
    theme: str | None = None,
    clock: Callable[[], float] = time.time,
    poll_s: float = 0.5,
) -> App:
    """The TUI for one store; the CLI and the tests both build it here."""
    return GrokwatchApp(store_path, run_id=run_id, theme=theme, clock=clock, poll_s=poll_s)


def run_ui(store_path: Path, run_id: int | None = None, theme: str | None = None) -> int:
    """Run the TUI on the terminal until the user quits; returns the exit code."""
    app = create_app(store_path, run_id=run_id, theme=theme)
    result = app.run()
    return int(result or app.return_code or 0)


def main(argv: list[str] | None = None) -> int:
    """`python -m grokwatch.ui.app STORE [--run ID] [--theme NAME]`."""
    parser = argparse.ArgumentParser(prog="python -m grokwatch.ui", description=main.__doc__)
    parser.add_argument("store", type=Path, help="the grokwatch SQLite store")
    parser.add_argument("--run", type=int, default=None, help="run id (default: the latest)")
    parser.add_argument("--theme", default=None, help="theme name or file stem")
    args = parser.parse_args(argv)
    return run_ui(args.store, run_id=args.run, theme=args.theme)


if __name__ == "__main__":
    sys.exit(main())
