"""Fake /proc, /sys, /etc and /var trees of a Jetson Orin Nano and of x86 machines."""

from pathlib import Path

ORIN_CPU = """processor\t: {i}
model name\t: ARMv8 Processor rev 1 (v8l)
BogoMIPS\t: 62.50
Features\t: fp asimd evtstrm aes pmull sha1 sha2 crc32 atomics fphp asimdhp cpuid
CPU implementer\t: 0x41
CPU architecture: 8
CPU variant\t: 0x3
CPU part\t: 0xd42
CPU revision\t: 1
"""

NVPMODEL_CONF = """# power models of the Orin Nano
< POWER_MODEL ID=0 NAME=15W >
CPU_ONLINE CORE_0 1
GPU MAX_FREQ 624750000
< POWER_MODEL ID=1 NAME=7W >
CPU_ONLINE CORE_4 0
< PM_CONFIG DEFAULT=1 >
"""

XEON_CPU = """processor\t: {i}
vendor_id\t: GenuineIntel
model name\t: Intel(R) Xeon(R) Platinum 8481C CPU @ 2.70GHz
cpu cores\t: 4
"""


def write(root: Path, relative: str, content: str | bytes) -> None:
    path = root / relative
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        path.write_text(content)


def fake_orin(root: Path, saved_mode: str | None = "pmode:0000\nfmode:quiet\n",
              clocks_held: bool | None = None) -> Path:
    write(root, "proc/cpuinfo", "\n".join(ORIN_CPU.format(i=i) for i in range(6)))
    write(root, "proc/meminfo", "MemTotal:        7802212 kB\nMemFree:  1000 kB\n")
    write(root, "proc/device-tree/model", b"NVIDIA Jetson Orin Nano Developer Kit\x00")
    write(root, "etc/nvpmodel.conf", NVPMODEL_CONF)
    write(root, "etc/os-release", 'NAME="Ubuntu"\nPRETTY_NAME="Ubuntu 22.04.4 LTS"\n')
    if saved_mode:
        write(root, "var/lib/nvpmodel/status", saved_mode)
    if clocks_held is not None:  # the sysfs files jetson_clocks sets (Orin Nano's figures)
        for i in range(6):
            cpufreq = f"sys/devices/system/cpu/cpu{i}/cpufreq"
            write(root, f"{cpufreq}/cpuinfo_max_freq", "1510400\n")
            write(root, f"{cpufreq}/scaling_min_freq", "1510400\n" if clocks_held else "115200\n")
        gpu = "sys/class/devfreq/17000000.ga10b"
        write(root, f"{gpu}/max_freq", "624750000\n")
        write(root, f"{gpu}/min_freq", "624750000\n" if clocks_held else "306000000\n")
    return root


def fake_x86(root: Path, gpu: bool) -> Path:
    write(root, "proc/cpuinfo", "\n".join(XEON_CPU.format(i=i) for i in range(4)))
    write(root, "proc/meminfo", "MemTotal:       65849012 kB\n")
    write(root, "etc/os-release", 'PRETTY_NAME="Debian GNU/Linux 12 (bookworm)"\n')
    if gpu:
        write(
            root,
            "proc/driver/nvidia/version",
            "NVRM version: NVIDIA UNIX x86_64 Kernel Module  535.104.05  Sat Aug 19 01:15:15 UTC "
            "2023\nGCC version:  gcc version 12.2.0 (Debian 12.2.0-14)\n",
        )
        write(
            root,
            "proc/driver/nvidia/gpus/0000:01:00.0/information",
            "Model: \t\t NVIDIA H100 80GB HBM3\nIRQ:   \t\t 42\n",
        )
    return root
