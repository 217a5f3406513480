"""Themes: bundled files validate, user themes load, broken ones fall back with one toast."""
# ruff: noqa: F811  (pytest fixtures imported from tests.test_ui_support)

from __future__ import annotations

from pathlib import Path

import pytest

from grokwatch.errors import ConfigError
from grokwatch.seeding import seed_store
from grokwatch.ui.app import GrokwatchApp, create_app
from grokwatch.ui.theming import (
    DEFAULT_THEME,
    bundled_theme_dir,
    load_themes,
    parse_theme,
    theme_from_dict,
)
from tests.test_ui_support import (  # noqa: F401  (fixture)
    isolated_config,
    loaded,
    run_async,
    screen_text,
    wait_until,
)

GOOD = """
name = "solar"
dark = false
[colors]
primary = "#268BD2"
background = "#FDF6E3"
"""


def test_three_bundled_themes_validate(isolated_config: Path) -> None:
    folder = bundled_theme_dir()
    assert folder is not None
    assert {p.name for p in folder.glob("*.toml")} >= {"dark.toml", "light.toml", "lowcolor.toml"}
    themes = load_themes()
    assert themes.problems == []
    assert themes.names[:3] == ["grokwatch-dark", "grokwatch-light", "grokwatch-lowcolor"]
    lowcolor = parse_theme(folder / "lowcolor.toml")
    assert lowcolor.ansi and lowcolor.primary.startswith("ansi_")
    assert themes.resolve(None) == (DEFAULT_THEME, None)
    assert themes.resolve("light") == ("grokwatch-light", None)


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"name": "x"}, "a [colors] table with at least `primary`"),
        ({"colors": {"primary": "not-a-colour"}}, "is not a colour"),
        ({"colors": {"primary": "#fff", "glow": "#fff"}}, "unknown colour 'glow'"),
        ({"colors": {"primary": "#fff"}, "extra": 1}, "unknown key 'extra'"),
        ({"name": "Bad Name", "colors": {"primary": "#fff"}}, "lowercase"),
        ({"colors": {"primary": "#fff"}, "dark": "yes"}, "dark must be true or false"),
        ({"colors": {"primary": "#fff"}, "variables": {"a": 1}}, "[variables]"),
    ],
)
def test_theme_validation_errors_are_one_line(data: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=r"mytheme\.toml") as info:
        theme_from_dict(data, "mytheme.toml")
    assert message in str(info.value) and "\n" not in str(info.value)


def test_user_themes_join_the_cycle_and_broken_ones_are_reported(isolated_config: Path) -> None:
    folder = isolated_config / "themes"
    folder.mkdir(parents=True)
    (folder / "solar.toml").write_text(GOOD)
    (folder / "broken.toml").write_text("name = [unterminated")
    themes = load_themes()
    assert themes.names[-1] == "solar"
    assert len(themes.problems) == 1 and "broken.toml" in themes.problems[0]
    assert themes.resolve("solar") == ("solar", None)
    name, problem = themes.resolve("nonexistent")
    assert name == DEFAULT_THEME and problem is not None and "nonexistent" in problem


def test_broken_user_theme_falls_back_with_one_clear_toast(
    tmp_path: Path, isolated_config: Path
) -> None:
    folder = isolated_config / "themes"
    folder.mkdir(parents=True)
    (folder / "neon.toml").write_text('name = "neon"\n[colors]\nprimary = "#zz0000"\n')
    (folder / "other.toml").write_text("[colors]\nfoo = 1\n")
    info = seed_store(tmp_path / "n.db", "normal")

    async def scenario() -> None:
        app = create_app(info.path, theme="neon", clock=info.clock(), poll_s=0.05)
        assert isinstance(app, GrokwatchApp)
        async with app.run_test(size=(80, 24), notifications=True) as pilot:
            await loaded(pilot)
            assert app.theme == DEFAULT_THEME
            assert len(app.toast_log) == 1
            toast = app.toast_log[0]
            assert "neon.toml: colour primary = '#zz0000' is not a colour" in toast
            assert toast.endswith(f"(and 2 more). Using {DEFAULT_THEME}.")
            await wait_until(pilot, lambda: bool(app.screen.query("Toast")), "the toast")
            shown = [n.message for n in app._notifications]
            assert shown == [toast.removeprefix("theme: ")]
            assert "loss ↓ good" in screen_text(app)

    run_async(scenario())


def test_valid_user_theme_can_be_started_and_cycled(tmp_path: Path, isolated_config: Path) -> None:
    folder = isolated_config / "themes"
    folder.mkdir(parents=True)
    (folder / "solar.toml").write_text(GOOD)
    info = seed_store(tmp_path / "n.db", "normal")

    async def scenario() -> None:
        app = create_app(info.path, theme="solar", clock=info.clock(), poll_s=0.05)
        async with app.run_test(size=(80, 24)) as pilot:
            await loaded(pilot)
            assert app.theme == "solar" and app.toast_log == []  # type: ignore[attr-defined]
            await pilot.press("t")
            assert app.theme == "grokwatch-dark"

    run_async(scenario())
