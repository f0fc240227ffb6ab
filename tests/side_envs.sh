#!/usr/bin/env bash
# Side environments that some tests run reference tools or a device's runtime in, beside the
# project's own:
#   .side-envs/cityscapes      the Cityscapes authors' evaluation (cityscapesscripts), whose iIoU
#                              code calls np.in1d, which NumPy 2.4 removed: it gets NumPy < 2.4.
#   .side-envs/tflite-runtime  a device that has only tflite-runtime, as 32-bit Arm boards do:
#                              tflite-runtime 2.14.0 (its last release), the NumPy < 2 it was
#                              built against, an OpenCV that accepts that NumPy (4.12 on needs
#                              NumPy 2) and edgeseg itself, editable and without its dependencies
#                              (here they would bring ai-edge-litert); no TensorFlow.
# and a record beside them:
#   .side-envs/install_resolution.json
#                              what pip installs from PyPI for the base install on x86_64,
#                              aarch64, armv7l and armv8l (tests/resolve_install.py), which
#                              tests/test_install.py checks offline; made again when
#                              pyproject.toml's dependencies change.
# Idempotent: an environment that already has what it is for, and a record made for the current
# dependencies, are left as they are.
set -euo pipefail
cd "$(dirname "$0")/.."
mkdir -p .side-envs

env=.side-envs/cityscapes
if ! "$env/bin/python" -c "import cityscapesscripts.evaluation.evalPixelLevelSemanticLabeling" 2>/dev/null; then
    rm -rf "$env"
    python3 -m venv "$env"
    "$env/bin/python" -m pip install -q --upgrade pip
    "$env/bin/python" -m pip install -q "numpy<2.4" cityscapesscripts
fi
echo "side environment ready: $env"

env=.side-envs/tflite-runtime
# -I: edgeseg as installed there (this checkout's, editable), not found in the current folder.
tflite_runtime_ready='
import importlib.util, os, sys
import cv2, edgeseg, numpy, tflite_runtime.interpreter
ours = edgeseg.__file__.startswith(os.path.join(sys.argv[1], ""))
present = [name for name in ("ai_edge_litert", "tensorflow") if importlib.util.find_spec(name)]
sys.exit(0 if ours and int(numpy.__version__.split(".")[0]) < 2 and not present else 1)
'
if ! "$env/bin/python" -I -c "$tflite_runtime_ready" "$PWD" 2>/dev/null; then
    rm -rf "$env"
    python3 -m venv "$env"
    "$env/bin/python" -m pip install -q --upgrade pip
    "$env/bin/python" -m pip install -q "numpy>=1.26,<2" "tflite-runtime==2.14.0" "opencv-python-headless>=4.8,<4.12"
    "$env/bin/python" -m pip install -q --no-deps -e .
fi
echo "side environment ready: $env"

record=.side-envs/install_resolution.json
if ! python3 tests/resolve_install.py --check "$record"; then
    python3 tests/resolve_install.py "$record"
fi
echo "install resolution ready: $record"
