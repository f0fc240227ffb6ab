"""The layers of shared/DESIGN.md hold: import-linter's contracts (pyproject.toml) are kept.

``converters/`` and ``demos/`` are installed as ``edgeseg.converters`` and ``edgeseg.demos``
through a package-dir mapping that import-linter's graph builder does not follow, so the check
runs on a copy of the sources laid out as the installed package is.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
LAYOUT = {"edgeseg": "edgeseg", "converters": "edgeseg/converters", "demos": "edgeseg/demos"}


def installed_layout(destination: Path) -> Path:
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    for source, target in LAYOUT.items():
        shutil.copytree(ROOT / source, destination / target, ignore=ignore)
    return destination


def lint_imports(root: Path, config: Path) -> subprocess.CompletedProcess:
    linter = Path(sys.executable).with_name("lint-imports")
    return subprocess.run([str(linter), str(config)], cwd=root, capture_output=True, text=True,
                          env={**os.environ, "PYTHONPATH": str(root)}, timeout=300)


@pytest.fixture(scope="module")
def layout(tmp_path_factory):
    if importlib.util.find_spec("importlinter") is None:
        pytest.skip("import-linter is not installed: pip install -e '.[test]'")
    return installed_layout(tmp_path_factory.mktemp("layout"))


def test_the_layers_contract_is_kept(layout):
    result = lint_imports(layout, ROOT / "pyproject.toml")
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]
    assert "1 kept, 0 broken" in result.stdout


def test_the_contract_catches_an_upward_import_inside_a_function(layout, tmp_path):
    # A planted regression: core (edgeseg.metrics) importing the trainer inside a function.
    planted = installed_layout(tmp_path / "planted")
    metrics = planted / "edgeseg" / "metrics.py"
    metrics.write_text(metrics.read_text()
                       + "\n\ndef _planted():\n    from edgeseg.train import trainer  # noqa\n")
    result = lint_imports(planted, ROOT / "pyproject.toml")
    assert result.returncode != 0
    assert "edgeseg.metrics is not allowed to import edgeseg.train" in result.stdout
