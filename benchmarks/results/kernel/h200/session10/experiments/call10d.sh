#!/bin/bash
# Session 10, call d: fused3 ablations at 64K, then Nsight Compute of the full fused3 kernel
export PYTHONPATH=.:.exp/fused PYTHONUNBUFFERED=1
timeout 120 python .exp/fused/abl3.py 2>&1 | grep "^{" | tee $OUT/abl3.txt
timeout 150 ncu --profile-from-start off --clock-control none --set full -k regex:"ws_fused3" -o $OUT/ncu_fused3 \
    python .exp/fused/abl3.py ncu > $OUT/ncu_run.log 2>&1
echo "ncu rc=$?"; tail -2 $OUT/ncu_run.log
ncu -i $OUT/ncu_fused3.ncu-rep --page details > $OUT/ncu_fused3.txt 2>&1
ncu -i $OUT/ncu_fused3.ncu-rep --page source --csv --print-source sass > $OUT/ncu_fused3_source.csv 2>&1
rm -f $OUT/ncu_fused3.ncu-rep
grep -i "duration\|DRAM Through\|L2 Hit\|SM Frequency\|Issue Slots\|No Eligible\|Local Memory Spilling Req\|highest-utilized" $OUT/ncu_fused3.txt | head -20
