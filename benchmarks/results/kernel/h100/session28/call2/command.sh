export PYTHONPATH=. PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,clocks.max.sm --format=csv > $OUT/device.txt; cat $OUT/device.txt
timeout 100 python3 -m pytest -q -p no:cacheprovider -m gpu -rf tests/kernels/test_latent_down.py > $OUT/t_latent_down.log 2>&1 &
timeout 150 python3 -m pytest -q -p no:cacheprovider -m gpu -rf --durations=5 tests/test_graph_decode.py -k "fused or unfolded" > $OUT/t_graph_decode.log 2>&1
wait; tail -n 4 $OUT/t_*.log
timeout 120 python3 benchmarks/graph_decode_ab.py $OUT/ab.json "" "DECODE_PDL=True" "gd.FUSED_DOWN=False" --batch_size 1 2 2>&1 | grep "ms per token"
timeout 90 python3 run_latency_kernel.py --total_rank 1024 --total_rank_v 3072 --num_heads 32 --head_dim 128 --group_size 4 --target_seq_lens 4096 16384 65536 262144 --batch_size 1 --output_json $OUT/kernel_fp16.json > $OUT/kernel_fp16.log 2>&1; cat $OUT/kernel_fp16.md
