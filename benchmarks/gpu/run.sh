#!/usr/bin/env bash
# The GPU benchmark inside a short lease: ENet, SegNet and U-Net latency (batch 1, fp32 and bf16)
# at 640x360, 1280x720 and 1920x1080, ENet throughput at batch 8 and ENet training images / s at
# 480x360, on Keras 3's JAX backend (no TensorFlow), written as `edgeseg bench` rows.
#
#   bash benchmarks/gpu/run.sh --out results/gpu [--wheels .whl] [bench_jax options]
#   bash benchmarks/gpu/run.sh --quick --out /tmp/gpu-quick      # the same script on a CPU
#
# --wheels DIR installs the wheels in DIR (keras and what it needs, for a machine without a
# network) into a temporary folder put first on PYTHONPATH; see benchmarks/gpu/README.md.
# Then it runs bench_jax.py and `edgeseg bench report`, beside the ENet paper's rows, into
# OUT/report/. Other options go to bench_jax.py (--models, --sizes, --precisions, --runs,
# --budget-s).
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(cd "$here/../.." && pwd)"
python="${PYTHON:-python3}"
out=""
wheels=""
args=()
while [ $# -gt 0 ]; do
    case "$1" in
        --out) out="$2"; args+=("$1" "$2"); shift 2 ;;
        --out=*) out="${1#--out=}"; args+=("$1"); shift ;;
        --wheels) wheels="$2"; shift 2 ;;
        --wheels=*) wheels="${1#--wheels=}"; shift ;;
        *) args+=("$1"); shift ;;
    esac
done
if [ -z "$out" ]; then
    echo "run.sh needs --out DIR (the results and the report go there)" >&2
    exit 2
fi

if [ -n "$wheels" ]; then
    site="$(mktemp -d "${TMPDIR:-/tmp}/edgeseg-gpu-site.XXXXXX")"
    "$python" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir \
        --target "$site" "$wheels"/*.whl
    export PYTHONPATH="$site${PYTHONPATH:+:$PYTHONPATH}"
fi
# This checkout's edgeseg, installed or not.
export PYTHONPATH="$root${PYTHONPATH:+:$PYTHONPATH}"
export KERAS_BACKEND=jax
# No TensorFlow here: keep JAX from taking the whole GPU up front (the report and the
# fingerprint run beside it), and Python's output unbuffered so that a killed run shows its rows.
export XLA_PYTHON_CLIENT_PREALLOCATE="${XLA_PYTHON_CLIENT_PREALLOCATE:-false}"
export PYTHONUNBUFFERED=1

mkdir -p "$out"
start=$(date +%s)
status=0
"$python" "$here/bench_jax.py" "${args[@]}" || status=$?
# The report runs even after a failed measurement: the rows written so far are results.
"$python" -m edgeseg.cli bench report "$out/results.jsonl" --out "$out/report" \
    || "$python" -c "
import sys
from edgeseg.bench.report import merge_results, write_report
write_report(merge_results([sys.argv[1]]), sys.argv[2], plot=False)
print('report written without its plot (matplotlib is missing)')
" "$out/results.jsonl" "$out/report"
echo "run.sh: $(( $(date +%s) - start )) s; rows in $out/results.jsonl, report in $out/report/"
exit "$status"
