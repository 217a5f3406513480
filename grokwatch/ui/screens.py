"""Pushed screens: the key help, and the detail of one checkpoint."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import ClassVar

from rich.style import Style
from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import Vertical, VerticalScroll
from textual.screen import ModalScreen, Screen
from textual.widgets import Static

from grokwatch.ui import render
from grokwatch.ui.views import ALL, CheckpointDetail
from grokwatch.ui.widgets import STATUS_STYLE, THEMED, KeyHints, Themed


class HelpScreen(ModalScreen[None]):
    """Every key the app understands, from the same table the bindings are built from."""

    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("escape", "app.pop_screen", "Close", show=False),
        Binding("question_mark", "app.pop_screen", "Close", show=False),
        # A modal screen hides the app's bindings; quitting must still work from here.
        Binding("q", "app.quit", "Quit", show=False),
    ]
    DEFAULT_CSS = """
    HelpScreen { align: center middle; }
    HelpScreen > Vertical {
        width: 64; max-width: 100%; height: auto; max-height: 100%;
        border: round $primary; background: $surface; padding: 0 1;
    }
    HelpScreen #help-title { color: $secondary; text-style: bold; }
    HelpScreen #help-foot { color: $text-muted; }
    """

    def __init__(self, keys: Sequence[tuple[str, str]]) -> None:
        super().__init__()
        self.keys = list(keys)

    def compose(self) -> ComposeResult:
        """A title, two columns of keys, and how to close."""
        width = max(len(k) for k, _ in self.keys) + 2
        text = Text()
        for i, (key, label) in enumerate(self.keys):
            if i:
                text.append("\n")
            text.append(key.ljust(width), style="bold")
            text.append(label)
        with Vertical():
            yield Static("grokwatch keys", id="help-title")
            yield Static(text, id="help-keys")
            yield Static("? or esc closes this help; q quits", id="help-foot")


class DetailBody(Themed, Static):
    """Per-layer distances, the expert-usage heatmap and a few sample pathways."""

    COMPONENT_CLASSES: ClassVar[set[str]] = set(THEMED)

    def show(self, detail: CheckpointDetail | None, message: str = "") -> None:
        """Draw one checkpoint's detail (or a message while loading)."""
        width = max(40, self.size.width or 80)
        if detail is None:
            self.update(Text(message or "loading…", style=self.gw("muted")))
            return
        out = Text(no_wrap=True, overflow="crop")
        self._summary(out, detail, width)
        self._layers(out, detail, width)
        self._usage(out, detail, width)
        self._samples(out, detail, width)
        self.update(out)

    def _heading(self, out: Text, title: str) -> None:
        out.append("\n\n" if out.plain else "")
        out.append(title, style=self.gw("title"))

    def _summary(self, out: Text, detail: CheckpointDetail, width: int) -> None:
        ck = detail.checkpoint
        status = str(ck["status"])
        out.append(f"checkpoint step {ck['step']}  ", style=Style(bold=True))
        out.append(status, style=self.gw(STATUS_STYLE.get(status, "muted")))
        out.append("\n")
        out.append(render.fit(str(ck["path"]), width), style=self.gw("muted"))
        if ck.get("reason"):
            out.append("\n")
            out.append(render.fit(f"reason: {ck['reason']}", width), style=self.gw("bad"))
        timings = [
            f"{name} {render.duration(ck.get(key))}"
            for name, key in (
                ("load", "load_s"),
                ("forward", "forward_s"),
                ("distance", "distance_s"),
                ("total", "total_s"),
            )
            if ck.get(key) is not None
        ]
        if ck.get("peak_mem_bytes"):
            timings.append(f"peak memory {render.size_bytes(ck['peak_mem_bytes'])}")
        if timings:
            out.append("\n")
            out.append(render.join_fitting(timings, width, "  ·  "))

    def _layers(self, out: Text, detail: CheckpointDetail, width: int) -> None:
        self._heading(out, "Pathway distance per MoE layer")
        rows = [(g, d) for g, d in detail.layer_distances if d]
        if not rows:
            out.append("\nno per-layer distances stored", style=self.gw("muted"))
            return
        n_layers = max(len(d) for _, d in rows)
        groups = [g for g, _ in rows]
        col_w = 9
        shown = max(1, min(len(groups), (width - 8 - 22) // col_w))
        out.append("\n" + "layer".ljust(7), style=self.gw("muted"))
        for g in groups[:shown]:
            label = "all" if g == ALL else g
            out.append(render.fit(label, col_w - 1).rjust(col_w), style=self.gw("muted"))
        overall = dict(rows).get(ALL, rows[0][1])
        top = max((v for v in overall if math.isfinite(v)), default=1.0) or 1.0
        bar_w = max(4, min(30, width - 7 - shown * col_w - 2))
        for layer in range(n_layers):
            out.append("\n" + f"L{layer}".ljust(7))
            for _, values in rows[:shown]:
                value = values[layer] if layer < len(values) else math.nan
                out.append(render.number(value, 4).rjust(col_w))
            value = overall[layer] if layer < len(overall) else math.nan
            filled = 0 if not math.isfinite(value) else round(value / top * bar_w)
            out.append("  " + "█" * filled, style=self.gw("spark"))
        if shown < len(groups):
            out.append(
                f"\n{len(groups) - shown} more groups not shown at this width",
                style=self.gw("muted"),
            )

    def _usage(self, out: Text, detail: CheckpointDetail, width: int) -> None:
        self._heading(out, "Expert usage per layer (mean routing weight, darker = more)")
        if not detail.expert_usage:
            out.append("\nno per-sample values stored for this checkpoint", style=self.gw("muted"))
            return
        n_experts = len(detail.expert_usage[0])
        cells = min(n_experts, width - 16)
        if cells < n_experts:
            out.append(
                f"\n{n_experts} experts, {math.ceil(n_experts / cells)} per cell (max)",
                style=self.gw("muted"),
            )
        for layer, weights in enumerate(detail.expert_usage):
            out.append("\n" + f"L{layer}".ljust(5))
            out.append(render.shade_row(weights, cells), style=self.gw("spark"))
            out.append(f"  max {render.number(max(weights), 2)}", style=self.gw("muted"))

    def _samples(self, out: Text, detail: CheckpointDetail, width: int) -> None:
        self._heading(out, f"Sample pathways ({len(detail.samples)} of {detail.n_samples})")
        if not detail.samples:
            out.append("\nnone stored", style=self.gw("muted"))
            return
        for s in detail.samples:
            head = (
                f"#{s.index:<4} {render.fit(s.group, 10):<10} loss {render.number(s.loss, 3):>6}  "
            )
            out.append("\n" + head, style=self.gw("muted"))
            out.append(render.fit_at(s.pathway, width - len(head), "-"))


class DetailScreen(Screen[None]):
    """One checkpoint in depth; left/right step to the neighbouring checkpoints."""

    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("escape", "app.pop_screen", "Back", show=False),
        Binding("backspace", "app.pop_screen", "Back", show=False),
        Binding("j", "scroll(1)", "Down", show=False),
        Binding("k", "scroll(-1)", "Up", show=False),
        Binding("down", "scroll(1)", "Down", show=False),
        Binding("up", "scroll(-1)", "Up", show=False),
        Binding("g", "top", "Top", show=False),
        Binding("G", "bottom", "Bottom", show=False),
        Binding("left", "neighbour(-1)", "Newer", show=False),
        Binding("right", "neighbour(1)", "Older", show=False),
    ]
    DEFAULT_CSS = """
    DetailScreen #detail-scroll { height: 1fr; padding: 0 1; scrollbar-gutter: stable; }
    DetailScreen KeyHints { dock: bottom; height: 1; background: $panel; padding: 0 1; }
    """

    def __init__(self, checkpoint_id: int) -> None:
        super().__init__()
        self.checkpoint_id = checkpoint_id

    def compose(self) -> ComposeResult:
        """A scrolling body and the hints."""
        with VerticalScroll(id="detail-scroll"):
            yield DetailBody(id="detail-body")
        yield KeyHints(
            [
                ("esc", "back"),
                ("←/→", "newer/older"),
                ("j/k", "scroll"),
                ("g/G", "top/end"),
                ("q", "quit"),
            ]
        )

    def on_mount(self) -> None:
        """Ask the app to load the detail in a worker."""
        self.query_one(DetailBody).show(None)
        self.app.load_detail(self.checkpoint_id)  # type: ignore[attr-defined]

    def show(self, detail: CheckpointDetail | None) -> None:
        """Draw a loaded detail."""
        message = "" if detail is not None else "this checkpoint is no longer in the store"
        self.query_one(DetailBody).show(detail, message)

    def action_scroll(self, lines: int) -> None:
        """Scroll the body by lines."""
        scroll = self.query_one("#detail-scroll", VerticalScroll)
        scroll.scroll_relative(y=lines, animate=False)

    def action_top(self) -> None:
        """Scroll to the top."""
        self.query_one("#detail-scroll", VerticalScroll).scroll_home(animate=False)

    def action_bottom(self) -> None:
        """Scroll to the end."""
        self.query_one("#detail-scroll", VerticalScroll).scroll_end(animate=False)

    def action_neighbour(self, offset: int) -> None:
        """Show the newer (-1) or older (+1) checkpoint."""
        other = self.app.neighbour_checkpoint(self.checkpoint_id, offset)  # type: ignore[attr-defined]
        if other is not None:
            self.checkpoint_id = other
            self.query_one(DetailBody).show(None)
            self.app.load_detail(other)  # type: ignore[attr-defined]
