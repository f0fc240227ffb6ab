"""Device fingerprints from fake /proc, /sys, /etc and /var trees."""

import importlib.metadata
import json
import subprocess
import sys

from edgeseg.bench.fingerprint import device_fingerprint
from edgeseg.bench.report import device_label
from tests.bench.fake_devices import fake_orin, fake_x86


def test_jetson_orin_tree(tmp_path):
    root = fake_orin(tmp_path)
    fingerprint = device_fingerprint(proc_root=root, sys_root=root)
    assert fingerprint["jetson_model"] == "NVIDIA Jetson Orin Nano Developer Kit"
    assert fingerprint["board"] == fingerprint["jetson_model"]
    assert fingerprint["cpu_model"] == "Cortex-A78AE"
    assert fingerprint["cpu_cores"] == 6
    assert fingerprint["mem_total_mb"] == round(7802212 / 1024)
    # The mode nvpmodel saved (0) wins over the configured default (1).
    assert fingerprint["power_mode"] == "15W"
    assert fingerprint["power_mode_source"] == "/var/lib/nvpmodel/status"
    assert fingerprint["os"] == "Ubuntu 22.04.4 LTS"
    assert fingerprint["gpu_name"] is None and fingerprint["gpu_count"] == 0
    assert device_label(fingerprint) == "Jetson Orin Nano (15W)"


def test_jetson_clocks_read_from_sysfs(tmp_path):
    assert device_fingerprint(proc_root=tmp_path, sys_root=fake_orin(tmp_path / "none"))[
        "jetson_clocks"] is None  # no cpufreq in the tree: unknown, not "off"
    held = device_fingerprint(proc_root=tmp_path, sys_root=fake_orin(tmp_path / "on", clocks_held=True))
    assert held["jetson_clocks"] == "on"
    assert held["clocks"] == {"state": "on", "cpu_min_khz": 1510400, "cpu_max_khz": 1510400,
                              "gpu_min_hz": 624750000, "gpu_max_hz": 624750000}
    scaling = device_fingerprint(proc_root=tmp_path, sys_root=fake_orin(tmp_path / "off", clocks_held=False))
    assert scaling["jetson_clocks"] == "off" and scaling["clocks"]["gpu_min_hz"] == 306000000
    board = fake_orin(tmp_path / "label", clocks_held=True)
    assert device_label(device_fingerprint(proc_root=board, sys_root=board)) == (
        "Jetson Orin Nano (15W, jetson_clocks)")


def test_jetson_without_saved_mode_reports_the_configured_default(tmp_path):
    root = fake_orin(tmp_path, saved_mode=None)
    fingerprint = device_fingerprint(proc_root=root, sys_root=root)
    assert fingerprint["power_mode"] == "7W"
    assert fingerprint["power_mode_source"] == "/etc/nvpmodel.conf default"


def test_x86_tree_with_and_without_an_nvidia_driver(tmp_path):
    gpu_root = fake_x86(tmp_path / "gpu", gpu=True)
    fingerprint = device_fingerprint(proc_root=gpu_root, sys_root=gpu_root)
    assert fingerprint["cpu_model"] == "Intel(R) Xeon(R) Platinum 8481C CPU @ 2.70GHz"
    assert fingerprint["cpu_cores"] == 4
    assert fingerprint["mem_total_mb"] == round(65849012 / 1024)
    assert fingerprint["gpu_name"] == "NVIDIA H100 80GB HBM3"
    assert fingerprint["gpu_driver"] == "535.104.05"
    assert fingerprint["jetson_model"] is None and fingerprint["power_mode"] is None
    assert device_label(fingerprint) == "NVIDIA H100 80GB HBM3 / 535.104.05"

    cpu_root = fake_x86(tmp_path / "cpu", gpu=False)
    fingerprint = device_fingerprint(proc_root=cpu_root, sys_root=cpu_root)
    assert fingerprint["gpu_name"] is None and fingerprint["gpu_driver"] is None
    assert device_label(fingerprint) == "Intel Xeon Platinum 8481C x4"


def test_empty_tree_gives_nones_not_errors(tmp_path):
    fingerprint = device_fingerprint(proc_root=tmp_path, sys_root=tmp_path)
    assert fingerprint["cpu_cores"] is None and fingerprint["mem_total_mb"] is None
    assert fingerprint["board"] is None and fingerprint["gpu_name"] is None
    assert isinstance(device_label(fingerprint), str)


def test_package_versions_come_from_metadata_without_importing_tensorflow():
    code = (
        "import sys, json; from edgeseg.bench import device_fingerprint; "
        "print(json.dumps(device_fingerprint()['packages'])); "
        "assert 'tensorflow' not in sys.modules, 'tensorflow was imported'"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    packages = json.loads(result.stdout)
    assert packages["numpy"] == importlib.metadata.version("numpy")
    try:
        assert packages["tensorflow"] == importlib.metadata.version("tensorflow")
    except importlib.metadata.PackageNotFoundError:
        assert packages["tensorflow"] is None


def test_nvidia_gpus_parse_nvidia_smi_and_fall_back_for_old_drivers(monkeypatch):
    import edgeseg.bench.fingerprint as fingerprint

    asked = []

    def smi(output_with_cap, output_without):
        def run(command):
            asked.append(command[1])
            return output_with_cap if "compute_cap" in command[1] else output_without
        return run

    monkeypatch.setattr(fingerprint, "_run", smi(
        "NVIDIA H200, 570.86.15, 143771, 9.0\nNVIDIA A100-SXM4-80GB, 570.86.15, [N/A], 8.0\n",
        None))
    assert fingerprint.nvidia_gpus() == [
        {"name": "NVIDIA H200", "driver": "570.86.15", "memory_mib": 143771,
         "compute_capability": "9.0"},
        {"name": "NVIDIA A100-SXM4-80GB", "driver": "570.86.15", "memory_mib": None,
         "compute_capability": "8.0"},
    ]
    # A driver whose nvidia-smi has no compute_cap field fails that query: asked without it.
    asked.clear()
    monkeypatch.setattr(fingerprint, "_run", smi(None, "Tesla K80, 470.82.01, 11441\n"))
    assert fingerprint.nvidia_gpus() == [{"name": "Tesla K80", "driver": "470.82.01",
                                          "memory_mib": 11441, "compute_capability": None}]
    assert asked == ["--query-gpu=name,driver_version,memory.total,compute_cap",
                     "--query-gpu=name,driver_version,memory.total"]
    monkeypatch.setattr(fingerprint, "_run", smi(None, None))  # no nvidia-smi
    assert fingerprint.nvidia_gpus() == []
