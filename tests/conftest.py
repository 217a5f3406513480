"""Fixtures shared by the daemon tests: checkpoint templates, a run directory, a probe file."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.helpers import build_templates, save_tokenizer, write_probe


@pytest.fixture(scope="module")
def templates(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    """Three complete tiny checkpoints (different seeds) that the writers copy from."""
    return build_templates(tmp_path_factory.mktemp("templates"))


@pytest.fixture
def run_dir(tmp_path: Path) -> Path:
    """An empty run directory with the tokenizer saved at its top, as training scripts do."""
    run = tmp_path / "run"
    run.mkdir()
    save_tokenizer(run)
    return run


@pytest.fixture
def probe(tmp_path: Path) -> Path:
    """Eight probe samples in two groups, outside the run directory."""
    return write_probe(tmp_path / "probe.jsonl")
