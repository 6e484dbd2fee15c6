#!/usr/bin/env bash
# One device call's worth of GPU work (H100): GPU tests, attention/model latency, memory, max batch.
# Usage (on the GPU machine, repo root): OUT=<dir> bash benchmarks/gpu_suite.sh
set -uo pipefail
export PYTHONUNBUFFERED=1
OUT=${OUT:-benchmarks/results/latency}
mkdir -p "$OUT"
run() { echo "+ $*"; "$@" 2>&1 | tee -a "$OUT/suite.log"; }  # no grep: it buffers, and a killed run loses its output
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$OUT/device.txt"
run python3 -m pytest -q -p no:cacheprovider tests/test_backends_agree.py
# Attention module, one decode step, Llama-2-7B shape, 50% of K+V kept (rank_k 1024, rank_v 3072, 4 heads/group)
run python3 run_latency_attention.py --prompt_len 4096 16384 65536 --batch_size 1 8 --palu --output_json "$OUT/attention_fp16.json"
run python3 run_latency_attention.py --prompt_len 4096 16384 65536 --batch_size 1 8 --palu --lt_bits 4 --output_json "$OUT/attention_int4.json"
# Whole model (32 layers, random weights), decode at 32K
run python3 run_latency_attention.py --scope model --prompt_len 32768 --batch_size 1 2 --palu --reps 20 --output_json "$OUT/model_fp16.json"
run python3 run_latency_attention.py --scope model --prompt_len 32768 --batch_size 1 --palu --lt_bits 4 --reps 10 --find_max_batch --output_json "$OUT/model_int4_maxbatch.json"
# Memory at 30% compression (70% of K+V dims kept) with 4-bit latents
run python3 run_latency_attention.py --scope model --prompt_len 32768 --batch_size 1 --palu --lt_bits 4 --rank_k 1792 --rank_v 3968 --reps 5 --output_json "$OUT/model_int4_70pct.json"
