"""A plain (non-editable) install of the wheel carries themes, the bundled probe and the demo."""

from __future__ import annotations

import subprocess
import sys
import sysconfig
import venv
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("wheel")
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            str(ROOT),
            "--no-deps",
            "--no-build-isolation",
            "-q",
            "-w",
            str(out),
        ],
        check=True,
        capture_output=True,
    )
    return next(out.glob("grokwatch-*.whl"))


def test_wheel_contains_package_data(wheel):
    names = zipfile.ZipFile(wheel).namelist()
    assert "grokwatch/data/bundled_probe.jsonl" in names
    assert any(n.startswith("grokwatch/themes/") and n.endswith(".toml") for n in names), names
    assert "grokwatch/example_trainer.py" in names
    assert any(n.startswith("grokwatch/examples/modular_grokking/") for n in names)


def test_installed_wheel_works_outside_the_checkout(wheel, tmp_path):
    env_dir = tmp_path / "venv"
    venv.create(env_dir, with_pip=True)
    python = env_dir / "bin" / "python"
    # Dependencies come from this interpreter's site-packages (no network); grokwatch itself
    # only from the wheel, which we install without deps into the fresh environment.
    purelib = sysconfig.get_paths()["purelib"]
    site = subprocess.run(
        [python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout.strip()
    (Path(site) / "deps.pth").write_text(purelib + "\n")
    subprocess.run(
        [python, "-m", "pip", "install", "-q", "--no-deps", "--no-index", str(wheel)],
        check=True,
        capture_output=True,
    )
    code = (
        "import grokwatch, importlib.resources as r, pathlib\n"
        "assert 'site-packages' in grokwatch.__file__ and 'venv' in grokwatch.__file__\n"
        "from grokwatch.probe_sources import bundled_probe\n"
        "assert len(bundled_probe().samples) >= 48\n"
        "themes = [p.name for p in r.files('grokwatch.themes').iterdir()]\n"
        "assert len([t for t in themes if t.endswith('.toml')]) >= 3, themes\n"
        "import grokwatch.example_trainer\n"
        "print('ok')\n"
    )
    result = subprocess.run(
        [python, "-c", code], cwd=tmp_path, capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stderr[-3000:]
    help_out = subprocess.run(
        [env_dir / "bin" / "grokwatch", "demo", "--help"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        check=False,
    )
    assert help_out.returncode == 0 and "grokking" in help_out.stdout
