#!/usr/bin/env bash
# Training curves on the built-in synthetic data (300 train / 60 val scenes at 480x360), CPU.
# Writes runs/bench_{enet,unet}/ and benchmarks/results/train_synthetic_cpu.{json,md}.
set -euo pipefail
cd "$(dirname "$0")/.."
export TF_CPP_MIN_LOG_LEVEL=3
edgeseg train --model enet --data synthetic --size 240x180 --epochs 15 --lr 5e-3 \
    --out runs/bench_enet --quiet --resume
edgeseg train --model unet --data synthetic --size 240x180 --epochs 12 --batch 4 \
    --optimizer adam --lr 1e-3 --option filters=16 --out runs/bench_unet --quiet --resume
python benchmarks/summarise_training.py runs/bench_enet runs/bench_unet \
    --out benchmarks/results/train_synthetic_cpu
