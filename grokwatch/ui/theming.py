"""Themes: bundled TOML files from `themes/`, user themes from the config directory, validated.

A theme file names Textual's base colours (and optional extra CSS variables); every colour the
UI draws comes from these variables. A broken user theme is skipped with a one-line problem
that the app shows once as a toast; the bundled dark theme is the fallback for everything.

File format (`themes/dark.toml`):

    name = "grokwatch-dark"     # what `--theme` and `t` use; the file stem works too
    dark = true
    ansi = false                # true: use the terminal's own 16 colours (ansi_* names)
    [colors]                    # primary is required; any Textual colour syntax
    primary = "#5DA9E9"
    ...
    [variables]                 # optional extra Textual CSS variables
    footer-key-foreground = "#E5A55D"
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import tomllib
from textual.color import Color, ColorParseError
from textual.theme import Theme

import grokwatch
from grokwatch.errors import ConfigError
from grokwatch.paths import config_dir

DEFAULT_THEME = "grokwatch-dark"
COLOR_KEYS = (
    "primary",
    "secondary",
    "accent",
    "warning",
    "error",
    "success",
    "foreground",
    "background",
    "surface",
    "panel",
    "boost",
)
TOP_KEYS = ("name", "description", "dark", "ansi", "colors", "variables")
TEXT_STYLES = {"bold", "dim", "italic", "underline", "reverse", "strike", "none"}
_NAME = re.compile(r"^[a-z0-9][a-z0-9-]{0,39}$")

# Used only when the bundled files cannot be found (a broken install), so the app still starts.
FALLBACK = Theme(
    name=DEFAULT_THEME,
    primary="#5DA9E9",
    secondary="#8F7AE5",
    accent="#E5A55D",
    warning="#E5C07B",
    error="#E06C75",
    success="#7BC67B",
    foreground="#D8DEE9",
    background="#0F1419",
    surface="#151B23",
    panel="#1E2630",
    dark=True,
)


@dataclass
class ThemeSet:
    """The usable themes in cycling order, their aliases, and what went wrong loading others."""

    themes: list[Theme] = field(default_factory=list)
    aliases: dict[str, str] = field(default_factory=dict)  # file stem -> theme name
    problems: list[str] = field(default_factory=list)

    @property
    def names(self) -> list[str]:
        """Theme names in cycling order."""
        return [t.name for t in self.themes]

    def resolve(self, requested: str | None) -> tuple[str, str | None]:
        """The theme to start with, and a problem line when the requested one is unknown."""
        if not requested:
            return self._default(), None
        name = self.aliases.get(requested, requested)
        if name in self.names:
            return name, None
        return self._default(), f"theme {requested!r} not found"

    def _default(self) -> str:
        return DEFAULT_THEME if DEFAULT_THEME in self.names else self.names[0]


def bundled_theme_dir(package: Path | None = None) -> Path | None:
    """The bundled themes: inside the installed package, else the checkout's `themes/`."""
    package = package or Path(grokwatch.__file__).resolve().parent
    for candidate in (package / "themes", package.parent / "themes"):
        if candidate.is_dir() and any(candidate.glob("*.toml")):
            return candidate
    return None


def user_theme_dir() -> Path:
    """Where users put their own themes."""
    return config_dir() / "themes"


def parse_theme(path: Path) -> Theme:
    """Read and validate one theme file; raise ConfigError naming the file and the fix."""
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError(f"{path}: not a readable TOML theme ({exc}); fix or remove it") from None
    return theme_from_dict(data, path)


def theme_from_dict(data: dict[str, Any], path: Path | str = "<theme>") -> Theme:
    """Build a Textual theme from parsed TOML, checking every key and colour."""
    unknown = sorted(set(data) - set(TOP_KEYS))
    if unknown:
        raise ConfigError(f"{path}: unknown key {unknown[0]!r}; allowed: {', '.join(TOP_KEYS)}")
    name = data.get("name", Path(str(path)).stem)
    if not isinstance(name, str) or not _NAME.match(name):
        raise ConfigError(f"{path}: name must be lowercase letters, digits and dashes")
    colors = data.get("colors")
    if not isinstance(colors, dict) or "primary" not in colors:
        raise ConfigError(f"{path}: a [colors] table with at least `primary` is required")
    bad = sorted(set(colors) - set(COLOR_KEYS))
    if bad:
        raise ConfigError(f"{path}: unknown colour {bad[0]!r}; allowed: {', '.join(COLOR_KEYS)}")
    variables = data.get("variables", {})
    if not isinstance(variables, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in variables.items()
    ):
        raise ConfigError(f"{path}: [variables] must map names to colour strings")
    for key, value in [*colors.items(), *variables.items()]:
        if not isinstance(value, str):
            raise ConfigError(f'{path}: colour {key!r} must be a string like "#5DA9E9"')
        if key.endswith("text-style"):
            if not set(value.split()) <= TEXT_STYLES:
                raise ConfigError(
                    f"{path}: {key} = {value!r}; use {', '.join(sorted(TEXT_STYLES))}"
                )
            continue
        try:
            Color.parse(value)
        except ColorParseError:
            raise ConfigError(f"{path}: colour {key} = {value!r} is not a colour") from None
    for flag in ("dark", "ansi"):
        if flag in data and not isinstance(data[flag], bool):
            raise ConfigError(f"{path}: {flag} must be true or false")
    theme = Theme(
        name=name,
        dark=data.get("dark", True),
        ansi=data.get("ansi", False),
        variables=dict(variables),
        **colors,
    )
    try:
        theme.to_color_system().generate()
    except Exception as exc:  # Textual's own checks: report them in the same one-line form
        raise ConfigError(f"{path}: Textual rejected the theme ({exc})") from None
    return theme


def load_themes(user_dir: Path | None = None, bundled_dir: Path | None = None) -> ThemeSet:
    """Bundled themes first (dark, light, lowcolor), then valid user themes, with problems."""
    result = ThemeSet()
    bundled_dir = bundled_dir or bundled_theme_dir()
    order = {"dark": 0, "light": 1, "lowcolor": 2}
    files = (
        sorted(bundled_dir.glob("*.toml"), key=lambda p: (order.get(p.stem, 9), p.stem))
        if (bundled_dir)
        else []
    )
    for path in files:
        try:
            _add(result, path, parse_theme(path))
        except ConfigError as exc:
            result.problems.append(f"bundled {exc}")
    if not result.themes:
        result.themes.append(FALLBACK)
    user_dir = user_dir if user_dir is not None else user_theme_dir()
    if user_dir.is_dir():
        for path in sorted(user_dir.glob("*.toml")):
            try:
                _add(result, path, parse_theme(path))
            except ConfigError as exc:
                result.problems.append(str(exc))
    return result


def _add(result: ThemeSet, path: Path, theme: Theme) -> None:
    # A user theme with a bundled theme's name replaces it in place.
    for i, existing in enumerate(result.themes):
        if existing.name == theme.name:
            result.themes[i] = theme
            break
    else:
        result.themes.append(theme)
    result.aliases.setdefault(path.stem, theme.name)


def problem_toast(problems: list[str], fallback: str) -> str | None:
    """One message for every theme problem, so a user sees a single clear toast."""
    if not problems:
        return None
    more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
    return f"{problems[0]}{more}. Using {fallback}."
