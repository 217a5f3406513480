"""Pilot tests: every screen and key of the TUI on seeded stores with a frozen clock."""
# ruff: noqa: F811  (pytest fixtures imported from tests.test_ui_support)

from __future__ import annotations

from collections.abc import Callable

import pytest
from textual.command import CommandPalette
from textual.widgets import Input, TabbedContent

from grokwatch.seeding import SeedInfo, seed_store
from grokwatch.ui.app import GrokwatchApp, create_app
from grokwatch.ui.keys import HELP_KEYS
from grokwatch.ui.messages import DetailLoaded, StoreChanged
from grokwatch.ui.screens import DetailScreen, HelpScreen
from grokwatch.ui.tables import AlertTable, CheckpointInfo, CheckpointTable, LanesTable
from grokwatch.ui.widgets import MetricPanel
from tests.test_ui_support import (  # noqa: F401  (fixtures)
    SIZES,
    isolated_config,
    loaded,
    run_async,
    screen_text,
    seeded_stores,
    wait_until,
)

Seeds = Callable[[str], SeedInfo]


def _app(info: SeedInfo, **kwargs: object) -> GrokwatchApp:
    app = create_app(info.path, clock=info.clock(), poll_s=0.05, **kwargs)  # type: ignore[arg-type]
    assert isinstance(app, GrokwatchApp)
    return app


@pytest.mark.parametrize("size", SIZES)
def test_first_screen_shows_header_panels_latest_step_alert_and_hints(
    seeded_stores: Seeds, size: tuple[int, int]
) -> None:
    info = seeded_stores("alerting")

    async def scenario() -> None:
        app = _app(info)
        async with app.run_test(size=size) as pilot:
            await loaded(pilot)
            lines = screen_text(app).splitlines()
            assert len(lines) == size[1]
            header = lines[0].strip()
            # The full run directory fits here; the failed-checkpoint test shows the short form.
            expected = (
                "/data/runs/olmoe-tiny  ● daemon alive  cuda:0  queue 1  last 42s ago  24 done"
            )
            assert header == expected
            text = "\n".join(lines)
            for label in ("loss ↓ good", "pathway distance ↓ good", "complexity ↓ good"):
                assert label in text
            assert "steps 500–12000" in text
            assert "trainer 1.470" in text
            assert "latest step  12000" in text
            assert "newest alert  reversal @11500 science: consistency reversed" in text
            assert lines[-1].strip().startswith("? help  q quit  c metric  t theme")
            assert ("groups" in text and "grokking" in text) == (size[1] >= 40)

    run_async(scenario())


@pytest.mark.parametrize(
    ("width", "header"),
    [
        (80, "olmoe-tiny  ● daemon alive  cuda:0  queue 1  last 11m ago  24 done  1 failed"),
        # Narrower: whole parts go, least important first (device, then queue), never words.
        (64, "olmoe-tiny  ● daemon alive  last 11m ago  24 done  1 failed"),
    ],
)
def test_header_drops_whole_parts_never_words(
    seeded_stores: Seeds, width: int, header: str
) -> None:
    info = seeded_stores("failed")

    async def scenario() -> None:
        app = _app(info)
        async with app.run_test(size=(width, 24)) as pilot:
            await loaded(pilot)
            assert screen_text(app).splitlines()[0].strip() == header
            newest = next(ln for ln in screen_text(app).splitlines() if "newest alert" in ln)
            assert newest.rstrip().endswith("…")
            assert "checkpoint_failed @12500 checkpoint-12500" in newest

    run_async(scenario())


@pytest.mark.parametrize("size", SIZES)
def test_help_lists_every_key_and_closes(seeded_stores: Seeds, size: tuple[int, int]) -> None:
    info = seeded_stores("normal")

    async def scenario() -> None:
        app = _app(info)
        async with app.run_test(size=size) as pilot:
            await loaded(pilot)
            await pilot.press("question_mark")
            assert isinstance(app.screen, HelpScreen)
            text = screen_text(app)
            for key, label in HELP_KEYS:
                assert key in text and label in text, (key, label)
            await pilot.press("escape")
            assert not isinstance(app.screen, HelpScreen)
            await pilot.press("question_mark")
            await pilot.press("question_mark")
            assert not isinstance(app.screen, HelpScreen)

    run_async(scenario())


@pytest.mark.parametrize("screen_keys", [(), ("question_mark",), ("3", "enter")])
def test_q_quits_with_status_0_from_any_screen(seeded_stores: Seeds, screen_keys: tuple) -> None:
    info = seeded_stores("normal")

    async def scenario() -> None:
        app = _app(info)
        async with app.run_test(size=(80, 24)) as pilot:
            await loaded(pilot)
            await pilot.press(*screen_keys)
            await pilot.press("q")
            await wait_until(pilot, lambda: app.return_code is not None, "the app to exit")
        assert app.return_code == 0

    run_async(scenario())


def test_t_cycles_bundled_themes_and_redraws(seeded_stores: Seeds) -> None:
    info = seeded_stores("alerting")

    async def scenario() -> None:
        app = _app(info)
        async with app.run_test(size=(80, 24)) as pilot:
            await loaded(pilot)
            assert app.theme == "grokwatch-dark"
            seen = []
            for _ in range(3):
                await pilot.press("t")
                seen.append(app.theme)
                await wait_until(pilot, lambda: "loss ↓ good" in screen_text(app), "a redraw")
                if app.theme == "grokwatch-lowcolor":
                    # Cells styled before the switch are redrawn in the terminal's palette.
                    await wait_until(pilot, lambda: _status_cell_is_ansi(app), "16-colour cells")
            assert seen == ["grokwatch-light", "grokwatch-lowcolor", "grokwatch-dark"]

    run_async(scenario())


def _status_cell_is_ansi(app: GrokwatchApp) -> bool:
    table = app.query_one(CheckpointTable)
    if table.row_count < 2:
        return False
    color = table.get_row_at(1)[2].style.color
    return color is not None and color.number is not None and color.number < 16


def test_lowcolor_theme_uses_terminal_palette(seeded_stores: Seeds) -> None:
    info = seeded_stores("alerting")

    async def scenario() -> None:
        app = _app(info, theme="lowcolor")
        async with app.run_test(size=(80, 24)) as pilot:
            await loaded(pilot)
            assert app.theme == "grokwatch-lowcolor"
            panel = app.query_one("#panel-loss", MetricPanel)
            for role in ("good", "bad", "spark", "title"):
                color = panel.gw(role).color
                assert color is not None and color.number is not None and color.number < 16

    run_async(scenario())


def test_c_cycles_complexity_consistency_raw_cosine_everywhere(seeded_stores: Seeds) -> None:
    info = seeded_stores("normal")

    async def scenario() -> None:
        app = _app(info)
        async with app.run_test(size=(200, 60)) as pilot:
            await loaded(pilot)
            expected = [
                ("consistency ↑ good", "consistency"),
                ("raw cosine ↑ good", "raw cosine"),
                ("complexity ↓ good", "complexity"),
            ]
            table = app.query_one(CheckpointTable)
            lanes = app.query_one(LanesTable)

            def label(widget: CheckpointTable | LanesTable) -> str:
                return str(widget.ordered_columns[widget.get_column_index("pathway")].label)

            for panel_label, column in expected:
                await pilot.press("c")
                await wait_until(
                    pilot, lambda p=panel_label: p in screen_text(app), f"the {panel_label} panel"
                )
                await wait_until(pilot, lambda c=column: label(table) == c, f"the {column} column")
                assert label(lanes).startswith(column)

    run_async(scenario())


def test_number_keys_and_arrows_switch_tabs_and_focus_tables(seeded_stores: Seeds) -> None:
    info = seeded_stores("alerting")

    async def scenario() -> None:
        app = _app(info)
        async with app.run_test(size=(80, 24)) as pilot:
            await loaded(pilot)
            tabs = app.query_one(TabbedContent)
            await pilot.press("2")
            assert tabs.active == "groups" and isinstance(app.focused, LanesTable)
            assert "grokking" in screen_text(app)
            await pilot.press("right")
            assert tabs.active == "checkpoints" and isinstance(app.focused, CheckpointTable)
            await pilot.press("right")
            assert tabs.active == "alerts" and isinstance(app.focused, AlertTable)
            await pilot.press("left")
            assert tabs.active == "checkpoints"
            await pilot.press("4")
            assert tabs.active == "alerts"
            await pilot.press("1")
            assert tabs.active == "overview"
            await pilot.press("left")
            assert tabs.active == "alerts"
            assert str(tabs.get_tab("alerts").label) == "Alerts 3"

    run_async(scenario())


def test_arrows_jk_and_gG_move_in_tables(seeded_stores: Seeds) -> None:
    info = seeded_stores("normal")

    async def scenario() -> None:
        app = _app(info)
        async with app.run_test(size=(80, 24)) as pilot:
            await loaded(pilot)
            await pilot.press("3")
            table = app.query_one(CheckpointTable)
            assert table.cursor_row == 0
            await pilot.press("j", "j", "down")
            assert table.cursor_row == 3
            await pilot.press("k", "up")
            assert table.cursor_row == 1
            await pilot.press("G")
            assert table.cursor_row == table.row_count - 1 == 24
            await pilot.press("g")
            assert table.cursor_row == 0
            await pilot.press("2", "G")
            assert app.query_one(LanesTable).cursor_row == 3

    run_async(scenario())


def test_checkpoint_table_newest_first_with_pending_row(seeded_stores: Seeds) -> None:
    info = seeded_stores("normal")

    async def scenario() -> None:
        app = _app(info)
        async with app.run_test(size=(80, 24)) as pilot:
            await loaded(pilot)
            await pilot.press("3")
            lines = screen_text(app).splitlines()
            header = next(i for i, ln in enumerate(lines) if "status" in ln and "step" in ln)
            assert lines[header + 1].split()[:3] == ["12500", "22s", "pending"]
            assert lines[header + 2].split()[:3] == ["12000", "42s", "done"]

    run_async(scenario())


def test_slash_filters_group_lanes_and_escape_clears(seeded_stores: Seeds) -> None:
    info = seeded_stores("alerting")

    async def scenario() -> None:
        app = _app(info)
        async with app.run_test(size=(80, 24)) as pilot:
            await loaded(pilot)
            await pilot.press("slash")
            box = app.query_one("#filter", Input)
            await wait_until(pilot, lambda: app.focused is box, "the filter box")
            await pilot.press("s", "c", "i")
            lanes = app.query_one(LanesTable)
            await wait_until(pilot, lambda: lanes.row_count == 1, "the filter to apply")
            assert "science" in screen_text(app) and "math" not in screen_text(app)
            await pilot.press("enter")
            assert app.focused is lanes
            await pilot.press("escape")
            await wait_until(pilot, lambda: lanes.row_count == 4, "the filter to clear")
            await pilot.press("slash")
            await wait_until(pilot, lambda: app.focused is box, "the filter box again")
            await pilot.press("g", "r", "o", "k")  # states match too
            await wait_until(pilot, lambda: lanes.row_count == 1, "a state filter")
            await pilot.press("escape")
            assert lanes.row_count == 4 and box.value == ""

    run_async(scenario())


@pytest.mark.parametrize("size", SIZES)
def test_enter_opens_checkpoint_detail_and_arrows_step(
    seeded_stores: Seeds, size: tuple[int, int]
) -> None:
    info = seeded_stores("normal")

    async def scenario() -> None:
        app = _app(info)
        async with app.run_test(size=size) as pilot:
            await loaded(pilot)
            await pilot.press("3", "j", "enter")
            assert isinstance(app.screen, DetailScreen)
            await wait_until(pilot, lambda: "Sample pathways" in screen_text(app), "the detail")
            text = screen_text(app)
            assert "checkpoint step 12000  done" in text
            assert "Pathway distance per MoE layer" in text
            assert "layer" in text and "all" in text and "math" in text
            if size[1] >= 40:
                assert "Expert usage per layer" in text
                assert any(ch in text for ch in "░▒▓█")
            await pilot.press("right")
            await wait_until(
                pilot, lambda: "checkpoint step 11500" in screen_text(app), "the older one"
            )
            await pilot.press("G", "g", "j", "k", "left")
            await wait_until(
                pilot, lambda: "checkpoint step 12000" in screen_text(app), "the newer one"
            )
            await pilot.press("escape")
            assert not isinstance(app.screen, DetailScreen)

    run_async(scenario())


def test_failed_checkpoint_shows_status_and_full_reason(seeded_stores: Seeds) -> None:
    info = seeded_stores("failed")

    async def scenario() -> None:
        app = _app(info)
        async with app.run_test(size=(80, 24)) as pilot:
            await loaded(pilot)
            await pilot.press("3", "j")
            info_line = app.query_one(CheckpointInfo)
            await wait_until(pilot, lambda: "failed" in screen_text(app), "the failed row")
            last_rows = screen_text(app).splitlines()[-2]
            assert "checkpoint-12500  failed: incomplete: model.safetensors is 3.1 MB" in last_rows
            assert info_line.display
            await pilot.press("enter")
            await wait_until(pilot, lambda: "reason: incomplete" in screen_text(app), "reason")
            assert "no per-sample values stored" in screen_text(app)

    run_async(scenario())


def test_ctrl_p_palette_runs_grokwatch_commands(seeded_stores: Seeds) -> None:
    info = seeded_stores("normal")

    async def scenario() -> None:
        app = _app(info)
        async with app.run_test(size=(80, 24)) as pilot:
            await loaded(pilot)
            await pilot.press("ctrl+p")
            assert isinstance(app.screen, CommandPalette)
            await pilot.press(*"pathway metric")
            await wait_until(
                pilot, lambda: "Pathway metric: next" in screen_text(app), "the command"
            )
            await pilot.press("enter")
            await wait_until(pilot, lambda: app.pathway.key == "consistency", "the command")

    run_async(scenario())


def test_alert_log_is_newest_first(seeded_stores: Seeds) -> None:
    info = seeded_stores("alerting")

    async def scenario() -> None:
        app = _app(info)
        async with app.run_test(size=(80, 24)) as pilot:
            await loaded(pilot)
            await pilot.press("4")
            rows = [ln.split()[:2] for ln in screen_text(app).splitlines() if "@" not in ln]
            kinds = [r[1] for r in rows if len(r) == 2 and r[0].isdigit()]
            assert kinds == ["reversal", "onset", "memorized"]
            assert app.toast_log == []  # history is not announced again

    run_async(scenario())


def test_waits_for_the_daemon_to_create_the_store(tmp_path) -> None:
    path = tmp_path / "later.db"

    async def scenario() -> None:
        app = create_app(path, poll_s=0.05, clock=lambda: 1_700_013_854.68)
        async with app.run_test(size=(80, 24)) as pilot:
            await loaded(pilot)
            assert "waiting for the daemon to create the store" in screen_text(app)
            seed_store(path, "normal")
            await wait_until(pilot, lambda: "olmoe-tiny" in screen_text(app), "the new store")
            assert "latest step  12000" in screen_text(app)

    run_async(scenario())


def test_empty_store_says_no_run_yet(seeded_stores: Seeds) -> None:
    info = seeded_stores("empty")

    async def scenario() -> None:
        app = _app(info)
        async with app.run_test(size=(80, 24)) as pilot:
            await loaded(pilot)
            text = screen_text(app)
            assert "no run yet: waiting for the first checkpoint" in text
            assert "no checkpoint evaluated yet" in text

    run_async(scenario())


def test_unknown_run_id_says_so(seeded_stores: Seeds) -> None:
    info = seeded_stores("normal")

    async def scenario() -> None:
        app = _app(info, run_id=7)
        async with app.run_test(size=(80, 24)) as pilot:
            await loaded(pilot)
            assert "run 7 is not in this store" in screen_text(app).splitlines()[0]

    run_async(scenario())


def test_stale_daemon_shows_in_header(seeded_stores: Seeds) -> None:
    info = seeded_stores("normal")

    async def scenario() -> None:
        app = create_app(info.path, clock=lambda: info.now + 3600, poll_s=0.05)
        async with app.run_test(size=(80, 24)) as pilot:
            await loaded(pilot)
            assert "○ daemon stale 1h" in screen_text(app).splitlines()[0]

    run_async(scenario())


def test_reload_key_polls_now(seeded_stores: Seeds) -> None:
    info = seeded_stores("normal")

    async def scenario() -> None:
        app = create_app(info.path, clock=info.clock(), poll_s=30.0)
        async with app.run_test(size=(80, 24)) as pilot:
            await loaded(pilot)
            assert isinstance(app, GrokwatchApp)
            app.model._seq = -1  # force a re-read so the poll produces a snapshot
            before = app.snapshots_seen
            await pilot.press("r")
            await wait_until(pilot, lambda: app.snapshots_seen > before, "the reload")

    run_async(scenario())


def test_workers_only_post_messages_in_order(seeded_stores: Seeds) -> None:
    """The poller posts StoreChanged, the detail worker DetailLoaded; handlers draw them."""
    info = seeded_stores("normal")
    seen: list[str] = []

    def hook(message: object) -> None:
        if isinstance(message, StoreChanged | DetailLoaded):
            seen.append(type(message).__name__)

    async def scenario() -> None:
        app = _app(info)
        async with app.run_test(size=(80, 24), message_hook=hook) as pilot:
            await loaded(pilot)
            await pilot.press("3", "j", "enter")
            await wait_until(pilot, lambda: "DetailLoaded" in seen, "the detail message")

    run_async(scenario())
    assert seen[0] == "StoreChanged" and seen.count("DetailLoaded") == 1


def test_ctrl_c_quits_like_q(seeded_stores: Seeds) -> None:
    info = seeded_stores("normal")

    async def scenario() -> None:
        app = _app(info)
        async with app.run_test(size=(80, 24)) as pilot:
            await loaded(pilot)
            await pilot.press("ctrl+c")
            await wait_until(pilot, lambda: app.return_code is not None, "the app to exit")
        assert app.return_code == 0

    run_async(scenario())
