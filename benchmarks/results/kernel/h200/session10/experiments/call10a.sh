#!/bin/bash
# Session 10, call a: first GPU run of the draft fused kernel (correctness, then timing)
export PYTHONPATH=.:.exp/fused
nvidia-smi --query-gpu=name,clocks.max.sm --format=csv | tee $OUT/gpu.txt
for cfg in "2 2" "1 3"; do
  set -- $cfg
  timeout 90 python .exp/fused/run_fused.py correct $1 $2 2>&1 | tail -20 | tee -a $OUT/correct.txt
done
for cfg in "2 2" "1 3"; do
  set -- $cfg
  timeout 150 python .exp/fused/run_fused.py time $1 $2 2>&1 | grep -v Warning | tail -20 | tee -a $OUT/time.txt
done
