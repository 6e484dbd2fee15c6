#!/bin/bash
# Session 10, call g: every GPU test (eight processes), then the single-pass variant sweep (64K, B=8, 4K) and
# run_latency_kernel at B=1 on the shipped tree
set -uo pipefail
export PYTHONUNBUFFERED=1 PYTHONPATH=.
OUT=$OUT RES=$OUT/res timeout 330 bash benchmarks/gpu_kernels.sh tests_all > $OUT/tests_all.txt 2>&1
grep -h "passed\|failed" $OUT/res/tests_*.log | tail -n 16
grep -h "^FAILED" $OUT/res/tests_*.log | head
timeout 140 python3 benchmarks/fold_heads_sweep.py $OUT/sweep_sp.json single_pass_ws "65536,1,16;65536,8,16;4096,1,16" > $OUT/sweep.log 2>&1
echo "sweep rc=$?"; grep "^S=" $OUT/sweep.log
K="python3 run_latency_kernel.py --total_rank 1024 --total_rank_v 3072 --num_heads 32 --head_dim 128 --group_size 4"
timeout 100 $K --target_seq_lens 4096 16384 65536 262144 --batch_size 1 --output_json $OUT/b1_fp16.json 2>&1 | grep "^| " > $OUT/b1_fp16.md; cat $OUT/b1_fp16.md
