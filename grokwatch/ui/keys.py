"""Every key of the TUI as the help screen lists it, the hint line, and the tab order."""

from __future__ import annotations

TABS = ("overview", "groups", "checkpoints", "alerts")
# Every key, as the help screen lists it (the app and screen bindings implement each one).
HELP_KEYS = (
    ("?", "this help"),
    ("q", "quit"),
    ("ctrl+p", "command palette"),
    ("t", "next theme"),
    ("c", "plot complexity / consistency / raw cosine"),
    ("/", "filter groups by name or state (esc clears)"),
    ("1 2 3 4", "overview, groups, checkpoints, alerts"),
    ("← →", "previous / next tab (newer / older in a detail)"),
    ("↑ ↓ j k", "move in a table, scroll a detail"),
    ("g G", "first / last row"),
    ("enter", "checkpoint detail (checkpoints tab)"),
    ("esc", "back, or clear the group filter"),
    ("r", "reload from the store now"),
)
HINTS = (
    ("?", "help"),
    ("q", "quit"),
    ("c", "metric"),
    ("t", "theme"),
    ("/", "filter"),
    ("1-4", "tabs"),
    ("⏎", "detail"),
    ("^p", "commands"),
)
