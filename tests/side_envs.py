"""The side environments that ``tests/side_envs.sh`` makes under ``.side-envs/``, for tests that
run a reference tool or a device's runtime beside the project's own environment."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path
from typing import NoReturn

import pytest

ROOT = Path(__file__).resolve().parents[1]
SIDE_ENVS = ROOT / ".side-envs"
MAKE = "bash tests/side_envs.sh"


def ci_requires_all() -> bool:
    """Whether CI's switch is on (``EDGESEG_REQUIRE_ALL``, read as conftest.py reads it): then
    what CI sets up must be there, and its absence is a failure, not a skip."""
    return os.environ.get("EDGESEG_REQUIRE_ALL", "") not in ("", "0", "false", "no")


def unavailable(reason: str) -> NoReturn:
    """Skips the test for want of what ``reason`` names, or fails it under CI's switch."""
    if ci_requires_all():
        pytest.fail(f"EDGESEG_REQUIRE_ALL: {reason}", pytrace=False)
    pytest.skip(reason)


def side_python(name: str, imports: str | None = None, python: str | None = None) -> Path:
    """The Python of the side environment ``.side-envs/<name>``; a skip (a failure under CI's
    switch, as ``.ci/run`` makes them) that says how to make it when it is missing.

    Args:
        name: the environment's folder under ``.side-envs``.
        imports: what the environment is for, as an import statement lists it
            (``"cityscapesscripts.evaluation.evalPixelLevelSemanticLabeling"``); checked by
            importing it there.
        python: another interpreter to use instead, e.g. from an environment variable; None or
            "": the side environment's.
    """
    path = Path(python) if python else SIDE_ENVS / name / "bin" / "python"
    needs = f" (for {imports})" if imports else ""
    make = f"run `{MAKE}` to make .side-envs/{name}"
    if not path.is_file():
        what = (f"the interpreter given for the {name} side environment{needs}" if python else
                f"the {name} side environment{needs}")
        unavailable(f"{what} is missing: {path} does not exist; {make}")
    if imports:
        # Run from the interpreter's folder: what it has installed, not this checkout's edgeseg.
        probe = subprocess.run([str(path), "-c", f"import {imports}"], capture_output=True,
                               text=True, timeout=120, cwd=path.parent)
        if probe.returncode != 0:
            last = (probe.stderr.strip().splitlines() or ["(no message)"])[-1]
            unavailable(f"{path} cannot import {imports}: {last}; {make}")
    return path
