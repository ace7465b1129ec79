#!/usr/bin/env bash
# The GPU checks of the model and training issues, in one run (a lent H100/H200; see the README).
# Writes each benchmark's output under ${OUT:-benchmarks/out}.
set -uo pipefail
out=${OUT:-benchmarks/out}; mkdir -p "$out"
export PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader | tee "$out/device.txt"
timeout 150 python3 benchmarks/unet.py --config paper --device cuda --dtype bfloat16 --batch 8 --size 96 \
    --repeats 10 2>&1 | grep -v "kept in float32" | tee "$out/unet_paper.txt"
# The training step at the paper's per-GPU batch (16) without checkpointing, then the largest batch with it.
timeout 120 python3 benchmarks/train_step.py --config paper --device cuda --dtype bfloat16 --batch 16 \
    --size 96 --repeats 6 --warmup 2 2>&1 | tee "$out/train_step_paper_b16.txt"
if [ "${FULL:-0}" = 1 ]; then
  timeout 330 python3 benchmarks/train_step.py --config paper --device cuda --dtype bfloat16 --grad-checkpointing \
      --batch auto --candidates 16,32,48,64,96 --size 96 --repeats 6 --warmup 2 2>&1 | tee "$out/train_step_paper.txt"
fi
