#!/bin/bash
# Session 10, call e: fused4 (value ring in boxes, four heads per program) correctness and timing
export PYTHONPATH=.:.exp/fused PYTHONUNBUFFERED=1
timeout 100 python .exp/fused/run4.py correct 2>&1 | grep -v "Warning\|warn" | tail -12 | tee $OUT/run4_correct.txt
grep -q rel_errs $OUT/run4_correct.txt && timeout 240 python .exp/fused/run4.py time 2>&1 | grep -v "Warning\|warn" | tail -12 | tee $OUT/run4_time.txt
