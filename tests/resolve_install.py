"""What pip installs from PyPI for edgeseg's base install on each target machine: resolved at setup
by ``tests/side_envs.sh`` (which may use the network) and written to one record that
``tests/test_install.py`` checks offline.

A wheel built from a copy of this checkout is resolved against PyPI alone, local indexes and pip
configuration left out. pip evaluates environment markers against the interpreter that runs it,
whatever ``--platform`` says (pypa/pip#11664): on an x86-64 machine ``pip install --dry-run
--platform linux_armv7l`` reads ``platform_machine`` as x86_64 and would test the wheels' tags,
never the markers that choose the interpreter. So pip runs here with ``platform.machine()``
answering the target's machine, which is where its markers read it; the record keeps the
``platform_machine`` each report's ``environment`` shows. Wheels are for CPython 3.11 throughout.

- x86_64 and aarch64: one resolution ("base"), binary wheels for that platform's tags only.
- armv7l and armv8l: PyPI has no armv7l wheels of NumPy or OpenCV (Raspberry Pi OS's pip takes
  them from piwheels), so two: "base", the whole base install with the board's markers and x86-64
  wheels as the stand-in platform; "board", the tflite-runtime release that "base" chose, binary
  wheels for the board's tags only.

The record names the dependencies it was resolved for (``dependencies_sha256``), so that a
record made for other dependencies is refused rather than passed as current.

Usage::

    python tests/resolve_install.py OUT.json          resolve on PyPI and write OUT.json
    python tests/resolve_install.py --check OUT.json  exit 0 when OUT.json is current, else 1
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timezone
from importlib.metadata import version as installed_version
from pathlib import Path

try:
    import tomllib
except ImportError:  # Python 3.10
    import tomli as tomllib

ROOT = Path(__file__).resolve().parents[1]
PYPROJECT = ROOT / "pyproject.toml"
MAKE = "bash tests/side_envs.sh"
FORMAT = 1  # the record's layout; a record of another layout is refused like a stale one

PYPI = "https://pypi.org/simple"
PYTHON = "3.11"

# pip, with the marker environment's platform_machine set to its first argument.
PIP_FOR_MACHINE = """
import platform, runpy, sys
machine = sys.argv.pop(1)
platform.machine = lambda: machine
sys.argv[0] = "pip"
runpy.run_module("pip", run_name="__main__", alter_sys=True)
"""


def platform_tags(arch: str, glibc_minor: int) -> list[str]:
    """``--platform`` options for a Linux with glibc 2.<glibc_minor> on ``arch``: pip widens
    only the legacy manylinux tags by itself, not the glibc-versioned ones."""
    tags = [f"manylinux_2_{minor}_{arch}" for minor in range(glibc_minor, 16, -1)]
    tags += [f"manylinux2014_{arch}", f"linux_{arch}"]
    return [option for tag in tags for option in ("--platform", tag)]


BINARY_ONLY = ["--only-binary=:all:", "--python-version", PYTHON]
X86_64 = [*BINARY_ONLY, *platform_tags("x86_64", 35)]  # Ubuntu 22.04
AARCH64 = [*BINARY_ONLY, *platform_tags("aarch64", 36)]  # Raspberry Pi OS 64-bit, Bookworm
ARMV7L = [*BINARY_ONLY, *platform_tags("armv7l", 36)]  # Raspberry Pi OS 32-bit, Bookworm

WITH_AI_EDGE_LITERT = {"x86_64": X86_64, "aarch64": AARCH64}
WITH_TFLITE_RUNTIME = ("armv7l", "armv8l")


# --- the record -----------------------------------------------------------------------------------

class StaleRecord(ValueError):
    """A record resolved for other dependencies than pyproject.toml's, or of another layout."""


def dependencies_sha256(pyproject: Path = PYPROJECT) -> str:
    """sha256 of what pip resolves from pyproject.toml's ``[project]``: ``dependencies`` and
    ``requires-python``, as parsed (comments and layout do not count)."""
    project = tomllib.loads(pyproject.read_text())["project"]
    resolved = {"dependencies": project.get("dependencies", []),
                "requires-python": project.get("requires-python")}
    return hashlib.sha256(json.dumps(resolved, sort_keys=True).encode()).hexdigest()


def read_record(path: Path, pyproject: Path = PYPROJECT) -> dict:
    """The record at ``path``, when it was resolved for ``pyproject``'s dependencies.

    Raises:
        FileNotFoundError: there is no record.
        StaleRecord: it was made for other dependencies or in another layout; the message says
            how to make it again.
    """
    record = json.loads(Path(path).read_text())
    current = dependencies_sha256(pyproject)
    if record.get("format") != FORMAT:
        raise StaleRecord(f"{path} has layout {record.get('format')!r}, this checkout reads "
                          f"layout {FORMAT}; run `{MAKE}` to resolve the base install again")
    if record.get("dependencies_sha256") != current:
        raise StaleRecord(
            f"{path} was resolved on {record.get('date')} for other dependencies (sha256 "
            f"{str(record.get('dependencies_sha256'))[:12]}...) than {pyproject.name}'s now "
            f"({current[:12]}...); run `{MAKE}` to resolve them again")
    return record


def write_record(path: Path, record: dict) -> None:
    """Writes ``record`` as JSON to ``path`` whole or not at all (a temporary file, renamed)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(handle, "w") as file:
            json.dump(record, file, indent=1, sort_keys=True)
            file.write("\n")
        os.chmod(temporary, 0o644)  # mkstemp's file is its owner's alone
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


# --- resolving on PyPI ----------------------------------------------------------------------------

def canonical_name(name: str) -> str:
    """A project name as PEP 503 normalizes it (``tflite_runtime`` -> ``tflite-runtime``)."""
    return re.sub(r"[-_.]+", "-", name).lower()


def build_wheel(folder: Path) -> Path:
    """A wheel of this checkout, built from a copy so that the build leaves nothing here."""
    source = folder / "checkout" / "edgeseg"
    shutil.copytree(ROOT, source, ignore=shutil.ignore_patterns(
        ".git", ".venv", ".ci-venv", ".side-envs", "runs", ".whl", "build", "dist", "*.egg-info",
        "__pycache__", ".pytest_cache", ".ruff_cache"))
    out = folder / "wheel"
    run = subprocess.run([sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps",
                          "--wheel-dir", str(out), str(source)],
                         capture_output=True, text=True, timeout=600)
    if run.returncode != 0:
        raise RuntimeError(f"building a wheel of the checkout failed:\n{run.stderr[-3000:]}")
    (wheel,) = out.glob("edgeseg-*.whl")
    return wheel


def resolve(machine: str, requirements: list[str], options: list[str], folder: Path) -> dict:
    """What ``pip install --dry-run`` of ``requirements`` from PyPI installs where
    ``platform_machine`` is ``machine``: the ``platform_machine`` pip's report shows and
    {name: {"version", "wheel"}} of what it would install."""
    folder.mkdir(parents=True)
    report = folder / "report.json"
    run = subprocess.run(
        [sys.executable, "-c", PIP_FOR_MACHINE, machine, "--isolated", "install", "--dry-run",
         "--quiet", "--ignore-installed", "--index-url", PYPI, "--report", str(report),
         "--target", str(folder / "target"), *options, *requirements],
        capture_output=True, text=True, timeout=600,
    )
    if run.returncode != 0:
        raise RuntimeError(f"pip could not resolve {requirements} for platform_machine {machine} "
                           f"({' '.join(options)}):\n{run.stderr[-3000:]}")
    result = json.loads(report.read_text())
    return {
        "platform_machine": result["environment"]["platform_machine"],
        "requirements": [Path(r).name if r.endswith(".whl") else r for r in requirements],
        "options": options,
        "install": {canonical_name(item["metadata"]["name"]): {
            "version": item["metadata"]["version"],
            "wheel": item["download_info"]["url"].rsplit("/", 1)[-1],
        } for item in result["install"]},
    }


def resolve_machine(machine: str, wheel: Path, folder: Path) -> dict:
    """The resolutions for ``machine`` ("base", and "board" for 32-bit Arm)."""
    if machine in WITH_AI_EDGE_LITERT:
        return {"base": resolve(machine, [str(wheel)], WITH_AI_EDGE_LITERT[machine],
                                folder / machine / "base")}
    # x86-64 wheels stand in for the armv7l ones of NumPy and OpenCV that PyPI lacks.
    base = resolve(machine, [str(wheel)], X86_64, folder / machine / "base")
    runtime = base["install"].get("tflite-runtime")
    board = None if runtime is None else resolve(
        machine, [f"tflite-runtime=={runtime['version']}"], [*ARMV7L, "--no-deps"],
        folder / machine / "board")
    return {"base": base, "board": board}


def resolve_all() -> dict:
    """The record: every machine's resolutions, with what they were made for and with."""
    with tempfile.TemporaryDirectory(prefix="edgeseg-resolve-") as temporary:
        folder = Path(temporary)
        wheel = build_wheel(folder)
        machines = [*WITH_AI_EDGE_LITERT, *WITH_TFLITE_RUNTIME]
        with ThreadPoolExecutor(len(machines)) as pool:
            results = pool.map(lambda machine: resolve_machine(machine, wheel, folder), machines)
            resolved = dict(zip(machines, results, strict=True))
        return {
            "format": FORMAT,
            "dependencies_sha256": dependencies_sha256(),
            "pip": installed_version("pip"),
            "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "index": PYPI,
            "python_version": PYTHON,
            "wheel": wheel.name,
            "machines": resolved,
        }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("out", type=Path, help="the record, JSON")
    parser.add_argument("--check", action="store_true",
                        help="resolve nothing: exit 0 when the record is current, else 1")
    args = parser.parse_args(argv)
    if args.check:
        try:
            read_record(args.out)
        except (FileNotFoundError, json.JSONDecodeError, StaleRecord) as error:
            print(f"install resolution to redo: {error}", file=sys.stderr)
            return 1
        return 0
    write_record(args.out, resolve_all())
    return 0


if __name__ == "__main__":
    sys.exit(main())
