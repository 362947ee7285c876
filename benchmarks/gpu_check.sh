#!/usr/bin/env bash
# GPU check: one bf16 training step of every registered method at its recipe's size
# (224 for the papers' recipes), ResNet-50 SimCLR images/s, and decode + views images/s on the
# CPU against on the GPU (views.decode_device: train, nvJPEG), as a compact table. Needs only
# PyTorch, torchvision, Pillow, numpy and PyYAML, not Ray or MLflow. Under 5 minutes on one GPU.
#   benchmarks/gpu_check.sh                      # full check on the first GPU
#   benchmarks/gpu_check.sh --methods simclr     # a subset
#   PYTHON=.venv/bin/python benchmarks/gpu_check.sh --tiny --device cpu   # toy sizes, no GPU
set -euo pipefail
cd "$(dirname "$0")/.."
exec timeout 290 "${PYTHON:-python3}" -m benchmarks.gpu_check "$@"
