#!/bin/bash
# Session 10, call f: GPU tests of the Gluon single-pass kernel and the fold-ws kernel (two processes), then
# the variant sweep and run_latency_kernel on the shipped tree
set -uo pipefail
export PYTHONUNBUFFERED=1 PYTHONPATH=.
nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.sm,clocks.mem --format=csv > $OUT/device.txt
timeout 260 python3 -m pytest -q -p no:cacheprovider tests/kernels/test_single_pass_ws.py > $OUT/tests_sp.log 2>&1 &
P1=$!
timeout 260 python3 -m pytest -q -p no:cacheprovider tests/kernels/test_fold_scores_ws.py > $OUT/tests_ws.log 2>&1 &
P2=$!
wait $P1; echo "tests_sp rc=$?" | tee -a $OUT/tests_sp.log; tail -5 $OUT/tests_sp.log
wait $P2; echo "tests_ws rc=$?" | tee -a $OUT/tests_ws.log; tail -3 $OUT/tests_ws.log
grep -q "failed\|error" $OUT/tests_sp.log && { grep -E "^FAILED|Error|assert" $OUT/tests_sp.log | head -20; exit 1; }
timeout 200 python3 benchmarks/fold_heads_sweep.py $OUT/sweep_sp.json single_pass_ws > $OUT/sweep.log 2>&1
echo "sweep rc=$?"; grep "^S=" $OUT/sweep.log
K="python3 run_latency_kernel.py --total_rank 1024 --total_rank_v 3072 --num_heads 32 --head_dim 128 --group_size 4"
timeout 120 $K --target_seq_lens 4096 16384 65536 262144 --batch_size 1 --output_json $OUT/b1_fp16.json 2>&1 | grep "^| " > $OUT/b1_fp16.md; cat $OUT/b1_fp16.md
