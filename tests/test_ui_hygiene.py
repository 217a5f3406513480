"""The UI process never loads torch or transformers, and finds its bundled themes."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import grokwatch
from grokwatch.ui.theming import bundled_theme_dir, load_themes

REPO = Path(grokwatch.__file__).resolve().parent.parent


def test_importing_the_ui_loads_neither_torch_nor_transformers() -> None:
    code = (
        "import grokwatch.ui.app, sys; "
        "assert 'torch' not in sys.modules and 'transformers' not in sys.modules, "
        "sorted(m for m in sys.modules if m.startswith(('torch', 'transformers')))"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=REPO
    )
    assert result.returncode == 0, result.stderr


def test_creating_the_app_and_seeding_load_neither(tmp_path: Path) -> None:
    code = (
        "import sys; from pathlib import Path; "
        "from grokwatch.seeding import seed_store; from grokwatch.ui.app import create_app; "
        f"info = seed_store(Path({str(tmp_path / 'n.db')!r}), 'normal'); "
        "app = create_app(info.path); "
        "app._desktop_notification('grokwatch: onset', 'math'); "  # imports grokwatch.notify
        "assert 'torch' not in sys.modules and 'transformers' not in sys.modules"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=REPO
    )
    assert result.returncode == 0, result.stderr


def test_bundled_themes_are_found_inside_an_installed_package(tmp_path: Path) -> None:
    # The wheel maps the top-level themes/ folder to grokwatch/themes/; emulate that layout.
    package = tmp_path / "site" / "grokwatch"
    (package / "themes").mkdir(parents=True)
    for theme in (REPO / "themes").glob("*.toml"):
        (package / "themes" / theme.name).write_text(theme.read_text())
    assert bundled_theme_dir() == REPO / "themes"  # a checkout
    assert bundled_theme_dir(package) == package / "themes"  # an installed wheel
    found = load_themes(user_dir=tmp_path / "none", bundled_dir=bundled_theme_dir(package))
    assert found.names[:3] == ["grokwatch-dark", "grokwatch-light", "grokwatch-lowcolor"]
