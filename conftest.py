"""The CI switch: with ``EDGESEG_REQUIRE_ALL=1`` (set by .ci/run), a test skipped because
something .ci/run installs is missing fails instead, so a broken install cannot pass as skips.

What .ci/run installs is :data:`REQUIRED`; a skip whose reason names one of them fails. Skips
for what no CI machine here has (TensorRT, an NVIDIA GPU) stay skips. Developers who lack a
part run without the switch and see the skips, with their reasons, in ``-rs``.
"""

from __future__ import annotations

import os
import re

import pytest

REQUIRED = (
    "tensorflow", "keras", "tf_keras", "tensorflow_model_optimization", "tfmot", "onnx",
    "onnxruntime", "tf2onnx", "jax", "pycocotools", "mediapipe", "matplotlib", "PIL",
    "cityscapesscripts", "import-linter", "importlinter", "ruff", "ai_edge_litert",
)
_REQUIRED = re.compile(r"(?<![\w-])(" + "|".join(re.escape(name) for name in REQUIRED)
                       + r")(?![\w-])", re.IGNORECASE)


def pytest_configure(config):
    # TensorFlow's start-up notices would otherwise fill the log of the first test that loads it.
    from edgeseg.quiet import import_tensorflow_quietly

    import_tensorflow_quietly()


def _required_all() -> bool:
    return os.environ.get("EDGESEG_REQUIRE_ALL", "") not in ("", "0", "false", "no")


def skip_reason(report) -> str:
    longrepr = report.longrepr
    if isinstance(longrepr, tuple) and len(longrepr) == 3:
        return str(longrepr[2])
    return str(longrepr)


def _fail_if_required(report) -> None:
    if not (_required_all() and report.skipped):
        return
    if hasattr(report, "wasxfail"):
        return
    reason = skip_reason(report)
    missing = _REQUIRED.search(reason)
    if missing:
        report.outcome = "failed"
        report.longrepr = (f"EDGESEG_REQUIRE_ALL: skipped because of {missing.group(1)!r}, "
                           f"which CI installs, so the install is broken: {reason}")


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    _fail_if_required(outcome.get_result())


@pytest.hookimpl(hookwrapper=True)
def pytest_make_collect_report(collector):
    outcome = yield
    _fail_if_required(outcome.get_result())
