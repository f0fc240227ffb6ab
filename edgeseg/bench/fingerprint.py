"""What a benchmark ran on: CPU, memory, GPU and driver, Jetson board and power mode, packages.

Everything is read from plain files (``/proc``, ``/sys``, ``/etc``, ``/var``) and, on the real
machine, from ``nvidia-smi`` and ``nvpmodel -q`` when they are on the PATH. The roots are
parameters so that a test can hand over a fake tree; nothing here imports TensorFlow (package
versions come from ``importlib.metadata``).
"""

from __future__ import annotations

import importlib.metadata
import os
import platform
import re
import shutil
import socket
import subprocess
from pathlib import Path

# Distributions whose versions decide a benchmark's numbers. Each entry lists the names a
# package is published under (the first one installed wins).
PACKAGES = {
    "tensorrt": ("tensorrt", "tensorrt-cu12", "tensorrt-cu11"),
    "ai_edge_litert": ("ai-edge-litert", "ai-edge-litert-nightly"),
    "tflite_runtime": ("tflite-runtime",),
    "onnxruntime": ("onnxruntime", "onnxruntime-gpu"),
    "tensorflow": ("tensorflow", "tensorflow-cpu", "tensorflow-aarch64"),
    "keras": ("keras",),
    "numpy": ("numpy",),
    "opencv": ("opencv-python", "opencv-python-headless", "opencv-contrib-python"),
}

# ARM "CPU part" numbers of the cores found on edge boards (implementer 0x41 = Arm, 0x4e =
# NVIDIA), from the Arm and NVIDIA technical reference manuals.
ARM_CPU_PARTS = {
    ("0x41", "0xd03"): "Cortex-A53",
    ("0x41", "0xd04"): "Cortex-A35",
    ("0x41", "0xd05"): "Cortex-A55",
    ("0x41", "0xd07"): "Cortex-A57",
    ("0x41", "0xd08"): "Cortex-A72",
    ("0x41", "0xd09"): "Cortex-A73",
    ("0x41", "0xd0a"): "Cortex-A75",
    ("0x41", "0xd0b"): "Cortex-A76",
    ("0x41", "0xd0c"): "Neoverse-N1",
    ("0x41", "0xd0d"): "Cortex-A77",
    ("0x41", "0xd40"): "Neoverse-V1",
    ("0x41", "0xd41"): "Cortex-A78",
    ("0x41", "0xd42"): "Cortex-A78AE",
    ("0x41", "0xd44"): "Cortex-X1",
    ("0x41", "0xd46"): "Cortex-A510",
    ("0x41", "0xd47"): "Cortex-A710",
    ("0x41", "0xd4f"): "Neoverse-V2",
    ("0x4e", "0x004"): "NVIDIA Carmel",
}

COMMAND_TIMEOUT_S = 10


def device_fingerprint(
    proc_root: str | os.PathLike = "/",
    sys_root: str | os.PathLike = "/",
    run_commands: bool | None = None,
) -> dict:
    """A description of this machine, as a JSON-ready dict.

    Args:
        proc_root: the root under which ``proc/cpuinfo``, ``proc/meminfo``,
            ``proc/device-tree/model`` and ``proc/driver/nvidia/...`` are read.
        sys_root: the root for the other system files: ``sys/firmware/devicetree/base/model``,
            ``etc/os-release``, ``etc/nvpmodel.conf``, ``var/lib/nvpmodel/status``.
        run_commands: whether to ask ``nvidia-smi`` and ``nvpmodel -q``; by default only when
            both roots are ``/`` (a fake tree must not be mixed with the real machine's GPU).

    Returns:
        keys ``hostname``, ``os``, ``kernel``, ``arch``, ``python``, ``cpu_model``,
        ``cpu_cores``, ``mem_total_mb``, ``gpu_name``, ``gpu_driver``, ``gpu_count``, ``board``
        (device-tree model, e.g. a Jetson or Raspberry Pi; None on PCs), ``jetson_model``,
        ``power_mode``, ``power_mode_source`` and ``packages`` (name -> version or None).
        Whatever cannot be found is None.
    """
    proc = Path(proc_root)
    system = Path(sys_root)
    if run_commands is None:
        run_commands = Path(proc_root) == Path("/") and Path(sys_root) == Path("/")

    cpuinfo = _read(proc / "proc/cpuinfo") or ""
    board = _read_device_tree_model(proc / "proc/device-tree/model") or _read_device_tree_model(
        system / "sys/firmware/devicetree/base/model"
    )
    jetson_model = board if board and "jetson" in board.lower() else None
    gpus = nvidia_gpus() if run_commands else []
    gpu_name, gpu_driver = (gpus[0]["name"], gpus[0]["driver"]) if gpus else (None, None)
    if gpu_driver is None:
        gpu_driver = driver_from_proc(proc)
    if gpu_name is None:
        gpu_name = _gpu_name_from_proc(proc)
    power_mode, power_mode_source = (None, None)
    clocks = None
    if jetson_model or (system / "etc/nvpmodel.conf").is_file():
        power_mode, power_mode_source = _power_mode(system, run_commands)
        clocks = jetson_clocks(system)

    return {
        "hostname": socket.gethostname(),
        "os": _os_name(system),
        "kernel": platform.release(),
        "arch": platform.machine(),
        "python": platform.python_version(),
        "cpu_model": _cpu_model(cpuinfo, board),
        "cpu_cores": _cpu_cores(cpuinfo, real=run_commands),
        "mem_total_mb": _mem_total_mb(_read(proc / "proc/meminfo") or ""),
        "gpu_name": gpu_name,
        "gpu_driver": gpu_driver,
        "gpu_count": len(gpus) if gpus else (1 if gpu_name else 0),
        "board": board,
        "jetson_model": jetson_model,
        "power_mode": power_mode,
        "power_mode_source": power_mode_source,
        "jetson_clocks": clocks["state"] if clocks else None,
        "clocks": clocks,
        "packages": package_versions(),
    }


def package_versions() -> dict[str, str | None]:
    """Installed versions of the inference packages, without importing them."""
    versions = {}
    for key, names in PACKAGES.items():
        versions[key] = None
        for name in names:
            try:
                versions[key] = importlib.metadata.version(name)
                break
            except importlib.metadata.PackageNotFoundError:
                continue
    return versions


# --- readers ------------------------------------------------------------------------------------


def _read(path: Path) -> str | None:
    try:
        return path.read_text(errors="replace")
    except OSError:
        return None


def _read_device_tree_model(path: Path) -> str | None:
    # Device-tree strings end with a NUL byte.
    try:
        text = path.read_bytes().split(b"\0", 1)[0].decode(errors="replace").strip()
    except OSError:
        return None
    return text or None


def _cpuinfo_values(cpuinfo: str, key: str) -> list[str]:
    values = []
    for line in cpuinfo.splitlines():
        name, sep, value = line.partition(":")
        if sep and name.strip().lower() == key.lower():
            values.append(value.strip())
    return values


def _cpu_model(cpuinfo: str, board: str | None) -> str | None:
    """x86: "model name"; ARM: the core names from "CPU part", else "Hardware" or the board."""
    names = _cpuinfo_values(cpuinfo, "model name")
    if names and not names[0].startswith("ARMv"):
        return names[0]
    implementers = _cpuinfo_values(cpuinfo, "CPU implementer")
    parts = _cpuinfo_values(cpuinfo, "CPU part")
    if parts:
        cores = []
        for i, part in enumerate(parts):
            implementer = implementers[i] if i < len(implementers) else "0x41"
            core = ARM_CPU_PARTS.get((implementer.lower(), part.lower()), f"ARM part {part}")
            if core not in cores:
                cores.append(core)
        return " + ".join(cores)
    hardware = _cpuinfo_values(cpuinfo, "Hardware")
    if hardware:
        return hardware[0]
    if names:
        return names[0]
    return board or platform.processor() or None


def _cpu_cores(cpuinfo: str, real: bool) -> int | None:
    count = len(_cpuinfo_values(cpuinfo, "processor"))
    if count:
        return count
    return os.cpu_count() if real else None


def _mem_total_mb(meminfo: str) -> int | None:
    match = re.search(r"^MemTotal:\s*(\d+)\s*kB", meminfo, re.MULTILINE)
    return round(int(match.group(1)) / 1024) if match else None


def _os_name(system: Path) -> str:
    release = _read(system / "etc/os-release") or ""
    match = re.search(r'^PRETTY_NAME="?([^"\n]*)"?', release, re.MULTILINE)
    return match.group(1) if match else platform.platform()


def _run(command: list[str]) -> str | None:
    if shutil.which(command[0]) is None:
        return None
    try:
        result = subprocess.run(
            command, capture_output=True, text=True, timeout=COMMAND_TIMEOUT_S, check=False
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return result.stdout if result.returncode == 0 else None


def nvidia_gpus() -> list[dict]:
    """The GPUs ``nvidia-smi`` lists, in its order: ``{"name", "driver", "memory_mib",
    "compute_capability"}`` ("9.0"; None from drivers whose nvidia-smi predates the field, or
    where a figure is "[N/A]"). [] without nvidia-smi."""
    for fields in ("name,driver_version,memory.total,compute_cap",
                   "name,driver_version,memory.total"):  # drivers before 510 lack compute_cap
        output = _run(["nvidia-smi", f"--query-gpu={fields}", "--format=csv,noheader,nounits"])
        if output is not None:
            break
    gpus = []
    for line in (output or "").splitlines():
        # From the right: a GPU's name may hold a comma, the figures do not.
        name, driver, memory, *capability = (v.strip() for v in line.rsplit(",", fields.count(",")))
        if name:
            gpus.append({"name": name, "driver": driver,
                         "memory_mib": int(memory) if memory.isdigit() else None,
                         "compute_capability": capability[0] if capability and
                         capability[0][:1].isdigit() else None})
    return gpus


def driver_from_proc(proc: Path = Path("/")) -> str | None:
    """The NVIDIA kernel driver's version from ``proc/driver/nvidia/version`` under ``proc``."""
    # "NVRM version: NVIDIA UNIX x86_64 Kernel Module  535.104.05  Sat Aug 19 ..." (desktop) or
    # "NVRM version: NVIDIA UNIX Open Kernel Module for aarch64  540.4.0  Release Build ..."
    text = _read(proc / "proc/driver/nvidia/version") or ""
    match = re.search(r"Kernel Module(?:\s+for\s+\S+)?\s+(\d+(?:\.\d+)+)", text)
    return match.group(1) if match else None


def _gpu_name_from_proc(proc: Path) -> str | None:
    gpus = proc / "proc/driver/nvidia/gpus"
    try:
        entries = sorted(gpus.iterdir())
    except OSError:
        return None
    for entry in entries:
        match = re.search(r"^Model:\s*(.+)$", _read(entry / "information") or "", re.MULTILINE)
        if match:
            return match.group(1).strip()
    return None


def _khz(path: Path) -> int | None:
    text = _read(path)
    try:
        return int(text.split()[0]) if text else None
    except ValueError:
        return None


def jetson_clocks(system: Path) -> dict | None:
    """Whether ``jetson_clocks`` holds this Jetson's clocks at their maximum, read from sysfs
    (no root needed): it sets every CPU's ``scaling_min_freq`` to its ``cpuinfo_max_freq`` and
    the GPU's devfreq ``min_freq`` to its ``max_freq``; nvpmodel alone lets them scale down.

    Returns ``{"state": "on" | "off", "cpu_min_khz", "cpu_max_khz", "gpu_min_hz",
    "gpu_max_hz"}`` (the first CPU's and the GPU's figures), or None where sysfs shows no
    CPU frequency scaling.
    """
    cpus = sorted((system / "sys/devices/system/cpu").glob("cpu[0-9]*/cpufreq"))
    pairs = [(_khz(c / "scaling_min_freq"), _khz(c / "cpuinfo_max_freq")) for c in cpus]
    pairs = [(low, high) for low, high in pairs if low and high]
    if not pairs:
        return None
    gpu_low = gpu_high = None
    for devfreq in sorted((system / "sys/class/devfreq").glob("*")):
        if re.search(r"gpu|gv11b|ga10b|gp10b", devfreq.name):
            gpu_low, gpu_high = _khz(devfreq / "min_freq"), _khz(devfreq / "max_freq")
            break
    held = all(low >= high for low, high in pairs) and (
        gpu_low is None or gpu_high is None or gpu_low >= gpu_high)
    return {"state": "on" if held else "off", "cpu_min_khz": pairs[0][0],
            "cpu_max_khz": pairs[0][1], "gpu_min_hz": gpu_low, "gpu_max_hz": gpu_high}


def _power_mode(system: Path, run_commands: bool) -> tuple[str | None, str | None]:
    """Jetson power mode: ``nvpmodel -q``, else the saved mode, else the configured default."""
    if run_commands:
        match = re.search(r"NV Power Mode:\s*(\S+)", _run(["nvpmodel", "-q"]) or "")
        if match:
            return match.group(1), "nvpmodel -q"
    conf = _read(system / "etc/nvpmodel.conf") or ""
    names = {
        int(mode): name
        for mode, name in re.findall(r"<\s*POWER_MODEL\s+ID=(\d+)\s+NAME=(\S+?)\s*>", conf)
    }
    # nvpmodel saves the mode last set as "pmode:0002"; it overrides the configured default.
    status = re.search(r"pmode:(\d+)", _read(system / "var/lib/nvpmodel/status") or "")
    if status:
        mode = int(status.group(1))
        return names.get(mode, f"mode {mode}"), "/var/lib/nvpmodel/status"
    default = re.search(r"<\s*PM_CONFIG\s+DEFAULT=(\d+)\s*>", conf)
    if default:
        mode = int(default.group(1))
        return names.get(mode, f"mode {mode}"), "/etc/nvpmodel.conf default"
    return None, None

