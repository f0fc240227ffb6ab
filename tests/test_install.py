"""The base install on the runtimes devices have: what pip installs for each platform, and edgeseg
running where tflite-runtime is the only LiteRT interpreter. No test here uses the network.

**What pip resolves**: ``tests/side_envs.sh`` resolves the base install on PyPI at setup
(``tests/resolve_install.py``: a wheel built from a copy of this checkout, pip's dry runs with
each target's ``platform_machine`` in its environment markers, CPython 3.11 wheels) and records
what pip would install in ``.side-envs/install_resolution.json``. The tests read that record: a
missing one is a skip (a failure under CI's switch), one made for other dependencies than
pyproject.toml's a failure.

- x86-64 and aarch64 (Ubuntu 22.04, JetPack 6, Raspberry Pi OS 64-bit): one resolution, binary
  wheels for that platform's tags only: ai-edge-litert and no tflite-runtime.
- 32-bit Arm (Raspberry Pi OS 32-bit, Bookworm: armv7l, glibc 2.36; armv8l is 32-bit userland on
  a 64-bit CPU): PyPI has no armv7l wheels of NumPy or OpenCV, only their sources (Raspberry Pi
  OS's pip takes armv7l wheels of them from piwheels), so a binary-only resolution for armv7l
  stops at NumPy whatever edgeseg declares. Two resolutions stand for it: (1) "base", the whole
  base install with the board's markers, binary wheels for x86-64 as the stand-in platform:
  tflite-runtime 2.14, NumPy 1.x and an OpenCV that accepts it, together, and no ai-edge-litert;
  (2) "board", the tflite-runtime release that (1) chose, binary wheels for the board's tags
  only: PyPI has its armv7l wheel.

**What is packaged**: a wheel built here, offline, carries the runtime-support tables.

**What runs**: ``.side-envs/tflite-runtime`` (``tests/side_envs.sh``) is such a device's Python:
tflite-runtime 2.14.0, NumPy < 2, OpenCV, edgeseg without its dependencies, no TensorFlow and
no ai-edge-litert. A small model converted here runs there through ``edgeseg.runtime_tflite``
and gives the output that ai-edge-litert and Keras give here.
"""

from __future__ import annotations

import importlib.util
import json
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest
from packaging.version import Version

from tests.resolve_install import (
    FORMAT,
    WITH_AI_EDGE_LITERT,
    WITH_TFLITE_RUNTIME,
    StaleRecord,
    dependencies_sha256,
    read_record,
    write_record,
)
from tests.side_envs import MAKE, ROOT, SIDE_ENVS, side_python, unavailable

RECORD = SIDE_ENVS / "install_resolution.json"


@pytest.fixture(scope="module")
def resolution() -> dict:
    """The record of what pip installs from PyPI on each machine, made for pyproject.toml's
    current dependencies."""
    if not RECORD.is_file():
        unavailable(f"{RECORD} is missing: run `{MAKE}` to resolve the base install on PyPI")
    try:
        return read_record(RECORD)
    except StaleRecord as error:
        stale = str(error)
    pytest.fail(stale, pytrace=False)


def resolved(record: dict, machine: str, step: str = "base") -> dict:
    """{name: {"version", "wheel"}} of one resolution, after checking that pip read the
    markers with ``machine``."""
    resolution = record["machines"][machine][step]
    assert resolution is not None, f"{machine}: no {step} resolution in {RECORD}"
    assert resolution["platform_machine"] == machine, resolution["platform_machine"]
    return resolution["install"]


def version(item: dict) -> Version:
    return Version(item["version"])


# --- the record's reader --------------------------------------------------------------------------

PYPROJECT = """\
[project]
name = "edgeseg"
requires-python = ">=3.10"
dependencies = [
    "numpy>=1.26",
    "tflite-runtime>=2.14; platform_machine == 'armv7l'",
]
"""


def test_a_record_is_read_only_for_the_dependencies_it_was_resolved_for(tmp_path):
    pyproject = tmp_path / "pyproject.toml"
    pyproject.write_text(PYPROJECT)
    record = tmp_path / "install_resolution.json"
    write_record(record, {"format": FORMAT, "dependencies_sha256": dependencies_sha256(pyproject),
                          "date": "2025-01-01T00:00:00+00:00", "machines": {}})
    assert read_record(record, pyproject)["machines"] == {}

    # Comments and layout are not dependencies.
    pyproject.write_text("# the base install\n" + PYPROJECT.replace("    ", "  "))
    assert read_record(record, pyproject)["date"] == "2025-01-01T00:00:00+00:00"

    for changed in (PYPROJECT.replace("2.14", "2.13"), PYPROJECT.replace(">=3.10", ">=3.11")):
        assert changed != PYPROJECT
        pyproject.write_text(changed)
        with pytest.raises(StaleRecord, match="for other dependencies.*bash tests/side_envs.sh"):
            read_record(record, pyproject)

    pyproject.write_text(PYPROJECT)
    write_record(record, {"format": FORMAT + 1,
                          "dependencies_sha256": dependencies_sha256(pyproject)})
    with pytest.raises(StaleRecord, match="layout"):
        read_record(record, pyproject)


# --- what pip resolves ----------------------------------------------------------------------------

@pytest.mark.parametrize("machine", list(WITH_AI_EDGE_LITERT))
def test_platforms_with_ai_edge_litert_wheels_get_it(resolution, machine):
    install = resolved(resolution, machine)
    assert "ai-edge-litert" in install and "tflite-runtime" not in install, sorted(install)
    assert {"edgeseg", "numpy", "opencv-python"} <= set(install), sorted(install)
    assert machine in install["ai-edge-litert"]["wheel"]
    assert machine in install["numpy"]["wheel"]


@pytest.mark.parametrize("machine", WITH_TFLITE_RUNTIME)
def test_32_bit_arm_gets_tflite_runtime_with_numpy_1(resolution, machine):
    # (1) The board's markers; x86-64 wheels stand in for the armv7l ones PyPI lacks.
    install = resolved(resolution, machine, "base")
    assert "tflite-runtime" in install and "ai-edge-litert" not in install, sorted(install)
    assert {"edgeseg", "numpy", "opencv-python"} <= set(install), sorted(install)
    assert version(install["tflite-runtime"]) == Version("2.14.0")
    assert Version("1.26") <= version(install["numpy"]) < Version("2"), install["numpy"]["wheel"]
    # OpenCV 4.12 on requires NumPy 2.
    assert version(install["opencv-python"]) < Version("4.12")

    # (2) That tflite-runtime, for the board itself.
    board = resolved(resolution, machine, "board")["tflite-runtime"]
    assert board["version"] == install["tflite-runtime"]["version"], board
    assert "armv7l" in board["wheel"], board["wheel"]


# --- what is packaged -----------------------------------------------------------------------------

@pytest.fixture(scope="module")
def built(tmp_path_factory) -> tuple[Path, Path]:
    """A wheel of this checkout (built from a copy, so that the build leaves nothing here) and
    the copy it was built from, which has one more runtime-support table than the checkout.
    Offline: no index, and the build backend this environment has."""
    if importlib.util.find_spec("setuptools") is None:
        unavailable("setuptools is not installed here: building the wheel offline needs it "
                    "(pip install setuptools)")
    source = tmp_path_factory.mktemp("checkout") / "edgeseg"
    shutil.copytree(ROOT, source, ignore=shutil.ignore_patterns(
        ".git", ".venv", ".ci-venv", ".side-envs", "runs", ".whl", "build", "dist", "*.egg-info",
        "__pycache__", ".pytest_cache", ".ruff_cache"))
    probe = source / "edgeseg" / "runtime_support" / "package_data_probe.json"
    probe.parent.mkdir(exist_ok=True)
    probe.write_text("{}\n")
    out = tmp_path_factory.mktemp("wheel")
    run = subprocess.run([sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps",
                          "--no-index", "--no-build-isolation", "--wheel-dir", str(out),
                          str(source)],
                         capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, f"building a wheel of the checkout failed:\n{run.stderr[-3000:]}"
    (wheel,) = out.glob("edgeseg-*.whl")
    return wheel, source


@pytest.mark.slow
def test_the_wheel_carries_the_runtime_support_tables(built):
    wheel, source = built
    tables = {f"edgeseg/runtime_support/{path.name}"
              for path in (source / "edgeseg" / "runtime_support").glob("*.json")}
    with zipfile.ZipFile(wheel) as archive:
        packaged = {name for name in archive.namelist()
                    if name.startswith("edgeseg/runtime_support/")}
    assert "edgeseg/runtime_support/package_data_probe.json" in tables
    assert tables <= packaged, f"not in the wheel: {sorted(tables - packaged)}"


# --- edgeseg on tflite-runtime alone --------------------------------------------------------------

ON_TFLITE_RUNTIME = """
import importlib.util, json, sys
import numpy as np
import edgeseg
from edgeseg import runtime_tflite

model, image, out = sys.argv[1:4]
interpreter = runtime_tflite.load_interpreter(model, num_threads=1)
np.save(out, runtime_tflite.run_interpreter(interpreter, np.load(image)))
others = ("tensorflow", "ai_edge_litert", "keras")
print(json.dumps({
    "interpreter": runtime_tflite.interpreter_class().__module__,
    "numpy": np.__version__,
    "edgeseg": edgeseg.__file__,
    "installed": [name for name in others if importlib.util.find_spec(name) is not None],
    "imported": [name for name in others if name in sys.modules],
}))
"""


def small_model():
    """Two convolutions and a softmax, with Keras's random weights."""
    import keras

    inputs = keras.Input((16, 12, 3))
    x = keras.layers.Conv2D(8, 3, padding="same", activation="relu")(inputs)
    x = keras.layers.Conv2D(4, 1)(x)
    return keras.Model(inputs, keras.layers.Softmax()(x))


@pytest.mark.slow
def test_edgeseg_runs_on_tflite_runtime_alone(tmp_path):
    python = side_python("tflite-runtime", "tflite_runtime.interpreter, cv2, edgeseg")
    pytest.importorskip("tensorflow")
    pytest.importorskip("ai_edge_litert")
    from edgeseg.converters.tflite import convert_keras_to_tflite
    from edgeseg.runtime_tflite import interpreter_class, load_interpreter, run_interpreter
    from tests.helpers import keras_predict, random_images

    model = small_model()
    path = tmp_path / "small.tflite"
    path.write_bytes(convert_keras_to_tflite(model))
    image = random_images(1, 16, 12, seed=3)
    np.save(tmp_path / "image.npy", image)

    # From tmp_path: the side environment's edgeseg, not one found in the current folder.
    run = subprocess.run([str(python), "-c", ON_TFLITE_RUNTIME, str(path),
                          str(tmp_path / "image.npy"), str(tmp_path / "out.npy")],
                         capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert run.returncode == 0, run.stderr[-3000:]
    there = json.loads(run.stdout.strip().splitlines()[-1])
    assert there["interpreter"].startswith("tflite_runtime."), there
    assert Version(there["numpy"]) < Version("2"), there
    assert there["installed"] == [] and there["imported"] == [], there
    assert Path(there["edgeseg"]).is_relative_to(ROOT), there

    assert interpreter_class().__module__.startswith("ai_edge_litert."), interpreter_class()
    on_tflite_runtime = np.load(tmp_path / "out.npy")
    on_litert = run_interpreter(load_interpreter(path, num_threads=1), image)
    keras_output = keras_predict(model, image)
    assert on_tflite_runtime.shape == on_litert.shape == keras_output.shape == (1, 16, 12, 4)
    np.testing.assert_allclose(on_tflite_runtime, on_litert, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(on_tflite_runtime, keras_output, rtol=1e-4, atol=1e-5)
