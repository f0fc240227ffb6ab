"""A quiet start: TensorFlow's start-up notices never reach the user; real errors still do."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from edgeseg.quiet import filtered_native_stderr, is_noise

NOISE = [
    "WARNING: All log messages before absl::InitializeLog() is called are written to STDERR\n",
    "I0000 00:00:1796234672.116184    2412 port.cc:153] oneDNN custom operations are on. You may "
    "see slightly different numerical results\n",
    "I0000 00:00:1796234672.117020    2412 cudart_stub.cc:31] Could not find cuda drivers on your "
    "machine, GPU will not be used.\n",
    "E0000 00:00:1796234979.662864    5645 cuda_platform.cc:52] failed call to cuInit: INTERNAL: "
    "CUDA error: Failed call to cuInit: UNKNOWN ERROR (303)\n",
    "To enable the following instructions: AVX2 AVX512F FMA, in other operations, rebuild "
    "TensorFlow with the appropriate compiler flags.\n",
]
REAL = [
    "E0000 00:00:1796234979.662864    5645 op_kernel.cc:1857] OP_REQUIRES failed at "
    "conv_ops.cc:1010 : RESOURCE_EXHAUSTED: OOM when allocating tensor\n",
    "F0000 00:00:1.0    1 check.cc:1] Check failed: shape mismatch\n",
    "edgeseg train: error: mask x.png has label 37\n",
]


def test_noise_patterns_match_only_the_start_up_notices():
    assert all(is_noise(line) for line in NOISE)
    assert not any(is_noise(line) for line in REAL)


def test_native_stderr_keeps_real_errors_in_order(capfd):
    with filtered_native_stderr():
        for line in [NOISE[0], REAL[0], NOISE[3], REAL[1]]:
            os.write(2, line.encode())  # as native code writes: to the descriptor
    err = capfd.readouterr().err
    assert err == REAL[0] + REAL[1]


@pytest.mark.slow
def test_a_command_that_loads_tensorflow_starts_quietly():
    pytest.importorskip("tensorflow")
    env = {k: v for k, v in os.environ.items() if k != "TF_CPP_MIN_LOG_LEVEL"}
    result = subprocess.run([sys.executable, "-m", "edgeseg.cli", "info", "enet", "--size",
                             "64x48"], capture_output=True, text=True, env=env, timeout=300)
    assert result.returncode == 0, result.stderr
    assert "parameters     372,208" in result.stdout
    assert result.stderr == "", result.stderr
