"""Where things live: the store of a run directory, the user's config and theme folders."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

from grokwatch.errors import UsageError

STORE_SUFFIXES = (".db", ".sqlite", ".sqlite3")


def state_dir() -> Path:
    """The user's state directory for grokwatch stores ($XDG_STATE_HOME/grokwatch)."""
    base = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(base) / "grokwatch"


def config_dir() -> Path:
    """The user's config directory for grokwatch ($XDG_CONFIG_HOME/grokwatch)."""
    base = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(base) / "grokwatch"


def default_store_path(run_dir: str | Path) -> Path:
    """Store path for a run directory: `<dirname>-<short hash of the absolute path>.db`."""
    absolute = Path(run_dir).expanduser().resolve()
    digest = hashlib.sha256(str(absolute).encode()).hexdigest()[:10]
    name = absolute.name or "root"
    return state_dir() / f"{name}-{digest}.db"


def looks_like_store(target: str | Path) -> bool:
    """Whether a command-line target names a store file rather than a run directory."""
    p = Path(target)
    return p.suffix in STORE_SUFFIXES and not p.is_dir()


def resolve_store(target: str | Path | None, db: str | Path | None = None) -> Path:
    """Resolve `RUN_DIR|DB` (+ optional --db) to the store path, the same way for every command."""
    if db is not None:
        return Path(db).expanduser()
    target = Path(target if target is not None else ".")
    if looks_like_store(target):
        return target.expanduser()
    return default_store_path(target)


def existing_store(target: str | Path | None, db: str | Path | None = None) -> Path:
    """Resolve a store that must already exist; a one-line error says how to create it."""
    path = resolve_store(target, db)
    if not path.is_file():
        shown = target if target is not None else "."
        raise UsageError(
            f"{path}: no grokwatch store for {shown}; run `grokwatch {shown}` first or pass --db"
        )
    return path
