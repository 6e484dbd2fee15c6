#!/bin/bash
# Session 10, call h: the Gluon single-pass tests on the final kernel (boxes released after the last wgmma),
# the once-failing case four more times, then run_latency_kernel B=1 on the final tree
set -uo pipefail
export PYTHONUNBUFFERED=1 PYTHONPATH=.
timeout 130 python3 -m pytest -q -p no:cacheprovider -m gpu tests/kernels/test_single_pass_ws.py > $OUT/tests_sp.log 2>&1
echo "tests_sp rc=$?" | tee -a $OUT/tests_sp.log; tail -3 $OUT/tests_sp.log
for i in 1 2 3 4; do
  timeout 30 python3 -m pytest -q -p no:cacheprovider tests/kernels/test_single_pass_ws.py -k "64-2-32-512" 2>&1 | tail -1 | tee -a $OUT/repeat.log
done
K="python3 run_latency_kernel.py --total_rank 1024 --total_rank_v 3072 --num_heads 32 --head_dim 128 --group_size 4"
timeout 70 $K --target_seq_lens 4096 65536 262144 --batch_size 1 --output_json $OUT/b1_fp16.json 2>&1 | grep "^| " > $OUT/b1_fp16.md; cat $OUT/b1_fp16.md
