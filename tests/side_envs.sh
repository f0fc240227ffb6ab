#!/usr/bin/env bash
# Side environments that some tests run reference tools in, beside the project's own:
#   .side-envs/cityscapes  the Cityscapes authors' evaluation (cityscapesscripts), whose iIoU code
#                          calls np.in1d, which NumPy 2.4 removed: it gets NumPy < 2.4.
# Idempotent: an environment that already imports its package is left as it is.
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
echo "side environments ready: $env"
