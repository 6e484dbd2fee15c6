#!/bin/bash
# Session 10, call b: ablations of the draft fused kernel at 64K, then Nsight Compute of it
export PYTHONPATH=.:.exp/fused PYTHONUNBUFFERED=1
timeout 150 python .exp/fused/run_fused.py ablate 2 2 2>&1 | grep "^{" | tee $OUT/ablate.txt
timeout 150 ncu --profile-from-start off --clock-control none --set full -k regex:"ws_fused" -o $OUT/ncu_fused \
    python .exp/fused/run_fused.py ncu 2 2 > $OUT/ncu_run.log 2>&1
echo "ncu rc=$?"; tail -3 $OUT/ncu_run.log
ncu -i $OUT/ncu_fused.ncu-rep --page details > $OUT/ncu_fused.txt 2>&1
ncu -i $OUT/ncu_fused.ncu-rep --page source --csv --print-source sass > $OUT/ncu_fused_source.csv 2>&1
rm -f $OUT/ncu_fused.ncu-rep
grep -i "duration\|Throughput\|Pipe\|Issue Slots\|Warp Cycles\|Eligible\|SM Frequency\|L2 Hit\|Stall" $OUT/ncu_fused.txt | head -40
