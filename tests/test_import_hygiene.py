"""Only the worker side imports torch/transformers; only grokwatch.ui imports textual."""

from __future__ import annotations

import subprocess
import sys

import pytest

HEADLESS_MODULES = [
    "grokwatch.cli",
    "grokwatch.config",
    "grokwatch.store",
    "grokwatch.reader",
    "grokwatch.export",
    "grokwatch.status",
    "grokwatch.daemon",
    "grokwatch.launch",
    "grokwatch.demo",
    "grokwatch.watcher",
    "grokwatch.checkpoints",
    "grokwatch.probe",
    "grokwatch.probe_sources",
    "grokwatch.metrics",
    "grokwatch.onset",
    "grokwatch.memorization",
    "grokwatch.alerts",
    "grokwatch.notify",
    "grokwatch.analysis",
]


@pytest.mark.parametrize("module", HEADLESS_MODULES)
def test_module_loads_neither_torch_nor_textual(module):
    code = (
        f"import sys, {module}\n"
        "bad = [m for m in ('torch', 'transformers', 'textual') if m in sys.modules]\n"
        "assert not bad, bad\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-2000:]


def test_cli_help_loads_neither_torch_nor_textual():
    code = (
        "import sys\n"
        "from click.testing import CliRunner\n"
        "from grokwatch.cli import main\n"
        "r = CliRunner().invoke(main, ['--help'])\n"
        "assert r.exit_code == 0, r.output\n"
        "bad = [m for m in ('torch', 'transformers', 'textual') if m in sys.modules]\n"
        "assert not bad, bad\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-2000:]
