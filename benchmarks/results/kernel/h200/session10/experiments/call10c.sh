#!/bin/bash
# Session 10, call c: fused3 (separate key/value rings) correctness and timing
export PYTHONPATH=.:.exp/fused PYTHONUNBUFFERED=1
timeout 100 python .exp/fused/run3.py correct 2>&1 | grep -v "Warning\|warn" | tail -12 | tee $OUT/run3_correct.txt
grep -q rel_errs $OUT/run3_correct.txt && timeout 300 python .exp/fused/run3.py time 2>&1 | grep -v "Warning\|warn" | tail -12 | tee $OUT/run3_time.txt
