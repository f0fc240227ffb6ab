"""The CI switch (conftest.py): with EDGESEG_REQUIRE_ALL=1, a skip for a missing part that CI
installs is a failure; other skips (TensorRT, a GPU) stay skips."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

TESTS = '''
import pytest

def test_needs_jax():
    pytest.skip("could not import 'jax': No module named 'jax'")

def test_needs_tensorrt():
    pytest.skip("TensorRT is not installed (needs an NVIDIA GPU)")

def test_passes():
    assert True
'''
MODULE_SKIP = '''
import pytest
pytest.skip("cityscapesscripts side environment missing", allow_module_level=True)

def test_never_runs():
    pass
'''


def run_pytest(folder: Path, switch: str | None) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "EDGESEG_REQUIRE_ALL"}
    env["KERAS_BACKEND"] = "jax"  # the copied conftest then has no TensorFlow to start
    if switch is not None:
        env["EDGESEG_REQUIRE_ALL"] = switch
    return subprocess.run([sys.executable, "-m", "pytest", "-q", "-rs", "-p", "no:cacheprovider",
                           str(folder)], cwd=folder, capture_output=True, text=True, env=env,
                          timeout=120)


def test_required_skips_fail_only_with_the_switch(tmp_path):
    shutil.copy(ROOT / "conftest.py", tmp_path / "conftest.py")
    (tmp_path / "test_parts.py").write_text(TESTS)
    relaxed = run_pytest(tmp_path, None)
    assert relaxed.returncode == 0, relaxed.stdout
    assert "1 passed, 2 skipped" in relaxed.stdout
    strict = run_pytest(tmp_path, "1")
    assert strict.returncode == 1, strict.stdout
    assert "1 failed, 1 passed, 1 skipped" in strict.stdout
    assert "skipped because of 'jax', which CI installs" in strict.stdout
    assert "TensorRT is not installed" in strict.stdout  # still a skip, listed by -rs


def test_a_module_skipped_for_a_required_part_is_a_collection_error(tmp_path):
    shutil.copy(ROOT / "conftest.py", tmp_path / "conftest.py")
    (tmp_path / "test_module_skip.py").write_text(MODULE_SKIP)
    assert "1 skipped" in run_pytest(tmp_path, None).stdout
    strict = run_pytest(tmp_path, "1")
    assert strict.returncode != 0
    assert "skipped because of 'cityscapesscripts', which CI installs" in strict.stdout
