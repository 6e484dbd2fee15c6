#!/usr/bin/env bash
# One device call of kernel + latency measurements (H100/H200). Usage (repo root, CUDA machine):
#   OUT=<dir> bash benchmarks/gpu_kernels.sh <part>...
#   kernel     run_latency_kernel.py: B=1 at 4K-256K, B=8 at 64K, 4-bit at 64K (fp16, 32x128, 50% ranks)
#   attention  run_latency_attention.py, one module, CUDA graph and eager, 4K/16K/64K, B=1/8, fp16 and 4-bit
#   model      whole 32-layer model at 32K: B=1/2 fp16 latents (5 rounds, --rounds), the same in one CUDA graph per
#              step (model_graph: fp16 3 rounds, 4-bit), and the largest batch with 4-bit latents
#   model_graph  only the CUDA-graph part of "model"
#   sweep      benchmarks/fold_heads_sweep.py: fold heads per program / warps vs reconstruction, per shape
#   sweep_tiles  the same script: latent tiles in flight and slots per tile of the default fold program
#   sweep_cols   the same script: value channels per value-kernel program (quantized and fp latents)
#   sweep_splits  the same script: the single-pass kernels' slot splits (and two heads per program) at 4K and 16K
#   sweep_fold_rows  the same script: rank columns per fold-rows program (FOLD_ROWS_RANK_BLOCK), 4K-64K
#   sweep_single_pass  the same script: the single-pass kernel's variants (heads, block, stages, warps) vs the default
#   single_pass  before the Gluon single-pass kernel becomes the default (SP_AUTO): its GPU tests five times (its
#              race was intermittent), the named decode paths against torch, kernel and module timings with it
#   sp_regs    the single-pass kernel at 64K (B=1, 8) per consumer register split, one process each (SP_CONSUMER_REGS;
#              the splits and their order from $SP_REGS, default "232 240 224 248")
#   quant_auto  the quantized Gluon single-pass kernel (the default of "auto" for quantized latents, SPQ_AUTO): one
#              GPU test as a smoke test, 4-bit kernel timings with it (B=1 4K-256K, B=8 64K) and with the Triton
#              kernels (--fused_kernel fold), the module step, then its GPU tests and the quantized auto-path tests
#              (thirteenth session; its calls 1 and 6 ran an earlier part, quant_single_pass, folded into this one)
#   quant_gpu  the quantized kernel's GPU tests (its file in four processes, the quantized auto-path tests, the
#              backends agreeing), then run_latency_kernel.py per width in $QUANT_BITS (default "4 2": B=1 at 4K, 64K,
#              256K; B=8 at 64K) (sixteenth session)
#   clocks     benchmarks/clock_probe.py (SDPA, then the fused kernel, 3 s each back to back, 64K at B=1 and 8) with
#              nvidia-smi sampling SM clock, power and throttle reasons every 100 ms ($OUT/clocks.csv)
#   profile    benchmarks/profile_step.py: per-kernel device time of one module step at 4K and 64K
#   profile_model  the same for the whole model's step at 32K, B=1 and 2 (--scope decoder: Palu's GraphDecoder step)
#   graph_decode  run_latency_attention.py --scope model --graph_decode at 32K (fp16 and 4-bit), its GPU tests
#   small_kernels  benchmarks/small_kernels_sweep.py (slot writes; fold rows, merge and merge-up launch constants, B=1
#              and 2), then benchmarks/graph_decode_ab.py: the graphed static baseline and Palu's graph decoding at 32K
#              with the default constants and with the sweep's fastest, one process; the slot-write GPU tests
#   latent_down  the fused key / value down-projection and store (kernels.latent_down): its GPU tests and the graph
#              decoder's, benchmarks/latent_down_sweep.py (B=1, 2, 8 against cuBLAS + slot write), then
#              benchmarks/graph_decode_ab.py at 32K: defaults (the fused launch), without it, with it at the sweep's
#              fastest constants
#   down_pdl   the fused down-projection (gd.FUSED_DOWN) and programmatic dependent launch (DECODE_PDL): GPU tests,
#              whole-model A/B at 32K (defaults, fused launch off, PDL on), the decode call with and without DECODE_PDL
#   ncu        Nsight Compute (--set full) of one 64K decode call per width in $NCU_BITS (default "16 4"): details and
#              per-instruction stalls of its kernels (on sm_90: the Gluon single-pass kernel, fp16 or quantized, and
#              the merge)
#   spq_variants  4-bit: the quantized single-pass kernel per set of its constants ($SPQ_VARIANTS, e.g.
#              "SPQ_ROWS_PER_TILE=1,SPQ_CONSUMER_REGS=232"; wu.NAME=V for kernels.word_unpack), one process and
#              Triton cache each ($SPQ_VARIANT_S s each, default 120; shapes $SPQ_SHAPES), run_latency_kernel.py
#              4-bit (SDPA in the same call), then its GPU tests;
#              spq_reg_keys: the same over SPQ_REG_KEYS=<each of $SPQ_VARIANTS> (fourteenth session)
#   variant_tests  the single-pass kernels' GPU tests (fp16 file; quantized: fp16 at two shapes, options, launches;
#              backends agreeing) with module constants $VARIANT_CONSTS set (benchmarks/pytest_constants.py; a
#              Triton cache of their own), in parallel under $VARIANT_TEST_S s (default 280)
#   spq_ablate  where the 4-bit kernel's time goes: benchmarks/ablations/spq_time_split.patch applied to a copy of
#              the tree (never to the tree), then each ablation set of $SPQ_ABLATE (default: none, no value unpacking,
#              no key unpacking, int8 score wgmmas, half the score wgmmas, no RoPE, no unpacking at all) built at once
#              (one Triton cache each) and timed one at a time (fold_heads_sweep.py single_pass_ws_only at 64K and
#              16K, B=1; every ablated output is wrong by design), $OUT/spq_ablate_<name>.json
#   attention_int4  the module step with 4-bit latents only (the second line of "attention")
#   smoke      a few fp16 decode-kernel GPU tests and the autotuned benchmark shape, under a time limit
#   tests_all  every GPU test, thirteen pytest processes in parallel (logs tests_*.log; $TESTS_ALL_S s each, default
#              540; with $VARIANT_CONSTS set, under those module constants as variant_tests)
#   tests_single_pass  the GPU tests of both single-pass kernels, the backends agreeing (generate() too) and the
#              named decode paths, eight processes at once ($TESTS_ALL_S s each, default 400; $VARIANT_CONSTS as
#              tests_all)
#   tests      the GPU tests of the decode kernels (tests/kernels/test_latent_attention.py)
#   tests2     the other GPU tests (quantization kernel, launch heuristics, backend agreement)
#   tests3     generate() on the GPU: latent cache vs simulated (full-size) cache, same tokens
# Results go to $RES (default $OUT/res) and, after each part, into $OUT/results.tgz (the device tool
# returns at most 8 files); the log goes to $OUT/gpu.log as it is written.
set -uo pipefail
export PYTHONUNBUFFERED=1 TRITON_PRINT_AUTOTUNING=1 PYTHONPATH=.${PYTHONPATH:+:$PYTHONPATH}
OUT=${OUT:?set OUT to the results directory}
RES=${RES:-/tmp/palu_res}
mkdir -p "$OUT" "$RES"
LOG="$OUT/gpu.log"
run() { echo "+ $*" | tee -a "$LOG"; "$@" 2>&1 | tee -a "$LOG"; }
gpu_pytest() {  # <time limit in s>: sets P to a GPU pytest command, under $VARIANT_CONSTS when set (then with a
  # Triton cache of those constants: a Gluon build keyed on another value of a constexpr global must not be reused)
  if [ -n "${VARIANT_CONSTS:-}" ]; then
    P="env TRITON_CACHE_DIR=/tmp/triton_variant_${VARIANT_CONSTS//[=,.]/_} timeout $1 python3"
    P="$P benchmarks/pytest_constants.py $VARIANT_CONSTS --"
  else
    P="timeout $1 python3 -m pytest"
  fi
  P="$P -q -p no:cacheprovider -m gpu -rf"
}
nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.sm,clocks.mem --format=csv | tee "$RES/device.txt"
OUT_SAVED=$OUT; OUT=$RES  # every part below writes under $RES
attention_int4() {  # [time limit in s]
  run ${1:+timeout $1} python3 run_latency_attention.py --prompt_len 4096 65536 --batch_size 1 8 --palu --lt_bits 4 \
      --cuda_graph --reps 50 --output_json "$OUT/attention_int4_cudagraph.json"
}
model_graph() {  # the whole model with every layer's step in one CUDA graph (the host out of the measure), 32K
  run python3 run_latency_attention.py --scope model --prompt_len 32768 --batch_size 1 2 --palu --cuda_graph --reps 20 \
      --warmup 3 --rounds 3 --output_json "$OUT/model_fp16_cudagraph.json"
  run python3 run_latency_attention.py --scope model --prompt_len 32768 --batch_size 1 2 --palu --lt_bits 4 --cuda_graph \
      --reps 20 --warmup 3 --output_json "$OUT/model_int4_cudagraph.json"
}
maxbatch_int4() {
  run python3 run_latency_attention.py --scope model --prompt_len 32768 --batch_size 1 --palu --lt_bits 4 --reps 3 \
      --warmup 1 --find_max_batch --output_json "$OUT/model_int4_maxbatch.json"
}
quant_file_tests() {  # <pytest command> <log prefix>: the quantized kernel's test file in four processes, in the
  # background (in one it took more than 430 s on an H200, eighteenth session)
  local Q=tests/kernels/test_single_pass_ws_quant.py
  $1 $Q -k "gpu_single_pass_ws_quant and fp16 and (2bit or 8bit)" > "$OUT/$2_fp16_a.log" 2>&1 &
  $1 $Q -k "gpu_single_pass_ws_quant and fp16 and 4bit" > "$OUT/$2_fp16_b.log" 2>&1 &
  $1 $Q -k "gpu_single_pass_ws_quant and bf16" > "$OUT/$2_bf16.log" 2>&1 &
  $1 $Q -k "options or launches or auto_follows" > "$OUT/$2_options.log" 2>&1 &
}
quant_tests() {  # <time limit in s> [generate]: the quantized kernel's GPU tests (its file in four processes),
  # the quantized auto-path tests and the backends agreeing (with "generate": their generate test too), in parallel
  local T="timeout $1 python3 -m pytest -q -p no:cacheprovider -m gpu -rf --durations=5"
  quant_file_tests "$T" tests_quant
  $T tests/kernels/test_latent_attention.py -k "gpu_quantized or gpu_options" > "$OUT/tests_quant_auto.log" 2>&1 &
  $T tests/test_backends_agree.py -k "not generate" > "$OUT/tests_quant_backends.log" 2>&1 &
  if [ "${2:-}" = generate ]; then
    $T tests/test_backends_agree.py -k generate > "$OUT/tests_quant_generate.log" 2>&1 &
  fi
  wait
  for f in "$OUT"/tests_quant_*.log; do echo "== $f"; tail -n 3 "$f"; done | tee -a "$LOG"
}
K="python3 run_latency_kernel.py --total_rank 1024 --total_rank_v 3072 --num_heads 32 --head_dim 128 --group_size 4"
for part in "$@"; do case $part in
kernel)
  run $K --target_seq_lens 4096 16384 65536 262144 --batch_size 1 --output_json "$OUT/b1_fp16.json"
  run $K --target_seq_lens 65536 --batch_size 8 --output_json "$OUT/b8_fp16.json"
  run $K --target_seq_lens 16384 65536 --batch_size 1 --bits 4 --output_json "$OUT/b1_4bit.json"
  ;;
model_graph)
  model_graph
  ;;
maxbatch)
  maxbatch_int4
  ;;
attention_int4)
  attention_int4
  ;;
attention_quick)
  run python3 run_latency_attention.py --prompt_len 4096 65536 --batch_size 1 --palu --cuda_graph --reps 50 \
      --output_json "$OUT/attention_fp16_cudagraph.json"
  ;;
sweep)
  run timeout 300 python3 benchmarks/fold_heads_sweep.py "$OUT/fold_heads_sweep.json" heads
  ;;
sweep_cols)
  run timeout 300 python3 benchmarks/fold_heads_sweep.py "$OUT/value_cols_sweep.json" value_cols
  ;;
sweep_single_pass)
  run timeout 400 python3 benchmarks/fold_heads_sweep.py "$OUT/single_pass_sweep.json" single_pass
  ;;
sweep_splits)  # shapes from $SPLIT_SHAPES (seq_len,batch,bits;...), else the script's
  run timeout 200 python3 benchmarks/fold_heads_sweep.py "$OUT/sweep_splits.json" splits "${SPLIT_SHAPES:-}"
  ;;
sweep_fold_rows)
  run timeout 200 python3 benchmarks/fold_heads_sweep.py "$OUT/sweep_fold_rows.json" fold_rows
  ;;
sweep_tiles)
  run timeout 200 python3 benchmarks/fold_heads_sweep.py "$OUT/fold_tiles_sweep.json" tiles
  ;;
clocks)  # SM clock and power sampled every 100 ms while SDPA and the fused kernel run back to back (64K, B=1, 8)
  nvidia-smi --query-gpu=timestamp,clocks.sm,clocks.mem,power.draw,clocks_event_reasons.active --format=csv \
      -lms 100 > "$OUT/clocks.csv" &
  SMI=$!
  sleep 1
  for b in 1 8; do run timeout 60 python3 benchmarks/clock_probe.py 65536 $b 3 | tee -a "$OUT/clock_probe.jsonl"; done
  kill $SMI
  ;;
profile)
  run timeout 240 python3 benchmarks/profile_step.py 4096 65536 --output_json "$OUT/profile_step_fp16.json"
  ;;
graph_decode)  # whole model at 32K through palu.graph_decode (fp16 and 4-bit latents) vs the eager and graphed baselines,
  # then the graph decoder's GPU tests
  run timeout 240 python3 run_latency_attention.py --scope model --graph_decode --palu --prompt_len 32768 --batch_size 1 2 \
      --reps 20 --warmup 3 --output_json "$OUT/model_graph_decode.json"
  run timeout 200 python3 run_latency_attention.py --scope model --graph_decode --palu --lt_bits 4 --prompt_len 32768 \
      --batch_size 1 2 --reps 20 --warmup 3 --output_json "$OUT/model_graph_decode_int4.json"
  run timeout 120 python3 -m pytest -q -p no:cacheprovider -m gpu -rf tests/test_graph_decode.py
  ;;
small_kernels)
  run timeout 200 python3 benchmarks/small_kernels_sweep.py "$OUT/small_kernels.json" 1 2
  C=""; [ -f "$OUT/small_kernels.json.consts" ] && C="@$OUT/small_kernels.json.consts"
  run timeout 240 python3 benchmarks/graph_decode_ab.py "$OUT/graph_decode_ab.json" "" $C
  run timeout 60 python3 -m pytest -q -p no:cacheprovider -m gpu -rf tests/kernels/test_slot_write.py
  ;;
latent_down)
  run timeout 150 python3 -m pytest -q -p no:cacheprovider -m gpu -rf tests/kernels/test_latent_down.py \
      tests/test_graph_decode.py
  run timeout 200 python3 benchmarks/latent_down_sweep.py "$OUT/latent_down.json" --batch_size 1 2 8
  C=""; [ -f "$OUT/latent_down.json.consts" ] && C="@$OUT/latent_down.json.consts"
  run timeout 220 python3 benchmarks/graph_decode_ab.py "$OUT/graph_decode_ab.json" "" "gd.FUSED_DOWN=False" $C
  ;;
down_pdl)  # the fused down-projection and programmatic dependent launch in ~6 min (a short device budget): the GPU
  # tests of both (three processes at once), the whole-model A/B at 32K (defaults, gd.FUSED_DOWN off, DECODE_PDL on), the decode
  # call with and without DECODE_PDL at $PDL_SHAPES (fold_heads_sweep.py shapes; empty: skipped). Shorter: $GD_TESTS_K
  # (a -k filter of the graph decoder's tests), $AB_BATCH (the A/B's batch sizes, default "1 2")
  timeout 120 python3 -m pytest -q -p no:cacheprovider -m gpu -rf tests/kernels/test_latent_down.py \
      > "$OUT/tests_latent_down.log" 2>&1 &
  timeout 120 python3 -m pytest -q -p no:cacheprovider -m gpu -rf tests/kernels/test_single_pass_ws.py \
      -k programmatic > "$OUT/tests_pdl.log" 2>&1 &
  run timeout 240 python3 -m pytest -q -p no:cacheprovider -m gpu -rf tests/test_graph_decode.py \
      ${GD_TESTS_K:+-k "$GD_TESTS_K"}
  wait; tail -n 3 "$OUT/tests_latent_down.log" "$OUT/tests_pdl.log" | tee -a "$LOG"
  run timeout 170 python3 benchmarks/graph_decode_ab.py "$OUT/graph_decode_ab.json" "" "gd.FUSED_DOWN=False" \
      "DECODE_PDL=True" --batch_size ${AB_BATCH:-1 2}
  [ "${PDL_SHAPES-x}" = "" ] || run timeout 80 python3 benchmarks/fold_heads_sweep.py "$OUT/pdl_kernel.json" pdl \
      "${PDL_SHAPES:-16384,1,16;65536,1,16}"
  ;;
profile_model)  # per-kernel device time and launches of the whole model's step at 32K, B=1 and 2 (fp16 latents):
  # the baseline's static step and Palu's GraphDecoder step (eager; its graphs replay the same kernels)
  for b in 1 2; do
    run timeout 300 python3 benchmarks/profile_step.py 32768 --scope decoder --batch_size $b --steps 5 \
        --output_json "$OUT/profile_model_b$b.json"
  done
  ;;
ncu)  # the counters need a Firecracker machine (gVisor refuses them); reports are large: text pages only
  for bits in ${NCU_BITS:-16 4}; do
    run timeout 120 ncu --profile-from-start off --clock-control none --set full \
        -k regex:"single_pass|fold_scores|softmax_v_split|merge" -o "$OUT/ncu_64k_$bits" \
        python3 benchmarks/ncu_decode.py 65536 1 $bits
    ncu -i "$OUT/ncu_64k_$bits.ncu-rep" --page details > "$OUT/ncu_64k_$bits.txt" 2>&1
    ncu -i "$OUT/ncu_64k_$bits.ncu-rep" --page source --csv --print-source sass > "$OUT/ncu_64k_${bits}_source.csv" 2>&1
    rm -f "$OUT/ncu_64k_$bits.ncu-rep"
  done
  ;;
kernel_quick)
  run $K --target_seq_lens 4096 65536 --batch_size 1 --output_json "$OUT/b1_fp16.json"
  ;;
attention)
  run python3 run_latency_attention.py --prompt_len 4096 16384 65536 --batch_size 1 8 --palu --cuda_graph --reps 50 \
      --output_json "$OUT/attention_fp16_cudagraph.json"
  attention_int4
  ;;
model)
  # five rounds, each with a fresh model and cache and every other one Palu first: one run's median moved more between
  # calls than the kernels changed it (nineteenth session: the baseline 83 and 106 ms per token at batch 1)
  run python3 run_latency_attention.py --scope model --prompt_len 32768 --batch_size 1 2 --palu --reps 20 --warmup 3 \
      --rounds 5 --output_json "$OUT/model_fp16.json"
  model_graph
  maxbatch_int4
  ;;
single_pass)
  for i in 1 2 3 4 5; do
    run timeout 240 python3 -m pytest -q -p no:cacheprovider -m gpu -rf tests/kernels/test_single_pass_ws.py
  done
  run timeout 300 python3 -m pytest -q -p no:cacheprovider -m gpu -rf tests/test_backends_agree.py -k named_decode_path
  run $K --target_seq_lens 4096 16384 65536 262144 --batch_size 1 --fused_kernel single_pass_ws \
      --output_json "$OUT/b1_fp16_single_pass.json"
  run $K --target_seq_lens 65536 --batch_size 8 --fused_kernel single_pass_ws --output_json "$OUT/b8_fp16_single_pass.json"
  run python3 run_latency_attention.py --prompt_len 4096 65536 --batch_size 1 8 --palu --cuda_graph --reps 50 \
      --fused_kernel single_pass_ws --output_json "$OUT/attention_fp16_cudagraph_single_pass.json"
  ;;
quant_auto)
  run timeout 120 python3 -m pytest -q -x -p no:cacheprovider -m gpu -rf tests/kernels/test_single_pass_ws_quant.py \
      -k "gpu_single_pass_ws_quant and 128-4-128-384 and 4bit- and fp16" || exit 1
  run timeout 150 $K --target_seq_lens 4096 16384 65536 262144 --batch_size 1 --bits 4 --output_json "$OUT/b1_4bit.json"
  run timeout 100 $K --target_seq_lens 65536 --batch_size 8 --bits 4 --output_json "$OUT/b8_4bit.json"
  run timeout 100 $K --target_seq_lens 4096 65536 --batch_size 1 --bits 4 --fused_kernel fold \
      --output_json "$OUT/b1_4bit_fold.json"
  attention_int4 150
  quant_tests 280 generate
  ;;
quant_gpu)
  quant_tests ${QUANT_TEST_S:-300}
  for bits in ${QUANT_BITS:-4 2}; do
    run timeout 150 $K --target_seq_lens 4096 65536 262144 --batch_size 1 --bits $bits \
        --output_json "$OUT/b1_${bits}bit.json"
    run timeout 100 $K --target_seq_lens 65536 --batch_size 8 --bits $bits --output_json "$OUT/b8_${bits}bit.json"
  done
  ;;
sp_regs)
  i=0
  for regs in ${SP_REGS:-232 240 224 248}; do
    i=$((i + 1))
    run timeout 150 python3 benchmarks/fold_heads_sweep.py "$OUT/sp_regs_${regs}_run$i.json" single_pass_ws_only "" \
        sp.SP_CONSUMER_REGS=$regs
  done
  ;;
spq_reg_keys|spq_variants)  # the quantized single-pass kernel per variant of its constants, one process and Triton
  # cache each: spq_variants takes $SPQ_VARIANTS as NAME=VALUE[,NAME=VALUE] of kernels.single_pass_ws_quant,
  # spq_reg_keys as values of SPQ_REG_KEYS (fourteenth session); then run_latency_kernel.py 4-bit (SDPA in the
  # same call; SPQ_KERNEL_S=0 skips it) and the quantized kernel's GPU tests ($SPQ_TESTS; SPQ_TEST_S=0 skips them)
  i=0
  if [ "$part" = spq_reg_keys ]; then default="1 0 1 0"; else default="SPQ_ROWS_PER_TILE=0 SPQ_ROWS_PER_TILE=1"; fi
  for v in ${SPQ_VARIANTS-$default}; do  # (set but empty: no variants)
    i=$((i + 1))
    if [ "$part" = spq_reg_keys ]; then v="SPQ_REG_KEYS=$v"; fi
    tag=${v//[=,.]/_}
    consts=""  # NAME=V of kernels.single_pass_ws_quant, or a prefixed one (wu.NAME=V: kernels.word_unpack)
    for c in ${v//,/ }; do case ${c%%=*} in *.*) consts+=",$c" ;; *) consts+=",spq.$c" ;; esac; done
    TRITON_CACHE_DIR="/tmp/triton_spq_$tag" run timeout ${SPQ_VARIANT_S:-120} python3 benchmarks/fold_heads_sweep.py \
        "$OUT/spq_${tag}_run$i.json" single_pass_ws_only "${SPQ_SHAPES:-65536,1,4;65536,8,4;4096,1,4}" \
        "${consts#,}"
  done
  if [ "${SPQ_KERNEL_S:-100}" != 0 ]; then
    run timeout ${SPQ_KERNEL_S:-100} $K --target_seq_lens ${SPQ_KERNEL_LENS:-65536} --batch_size 1 --bits 4 \
        --output_json "$OUT/b1_4bit.json"
  fi
  if [ "${SPQ_TEST_S:-240}" != 0 ]; then
    run timeout ${SPQ_TEST_S:-240} python3 -m pytest -q -x -p no:cacheprovider -m gpu -rf \
        tests/kernels/test_single_pass_ws_quant.py -k "${SPQ_TESTS:-4bit}"
  fi
  ;;
variant_tests)
  : "${VARIANT_CONSTS:?set VARIANT_CONSTS to NAME=VALUE[,NAME=VALUE] (e.g. sp.SP_P_SPLIT=True)}"
  gpu_pytest ${VARIANT_TEST_S:-280}
  $P tests/kernels/test_single_pass_ws.py > "$OUT/variant_tests_sp.log" 2>&1 &
  Q=tests/kernels/test_single_pass_ws_quant.py
  $P $Q -k "fp16 and (128-4-128-384 or 64-2-64-128)" > "$OUT/variant_tests_spq_shapes.log" 2>&1 &
  $P $Q -k "options or launches" > "$OUT/variant_tests_spq_options.log" 2>&1 &
  $P tests/test_backends_agree.py -k "64-1 or generate" > "$OUT/variant_tests_backends.log" 2>&1 &
  wait
  tail -n 3 "$OUT"/variant_tests_*.log | tee -a "$LOG"
  ;;
smoke)
  run timeout 180 python3 -m pytest -q -x -p no:cacheprovider tests/kernels -k "gpu_shapes and 128-fp16 or autotuned" || exit 1
  ;;
tests_all)  # all GPU tests as thirteen pytest processes at once (compilation is CPU-bound): 161 in ~250 s (H200, 16
  # cores, ninth session, seven processes; the single-pass kernels' and the named decode paths' are new since)
  gpu_pytest ${TESTS_ALL_S:-540}
  T="$P --durations=5"
  L=tests/kernels/test_latent_attention.py
  $T $L -k "gpu_shapes and fp16" > "$OUT/tests_shapes_fp16.log" 2>&1 &
  $T $L -k "gpu_shapes and bf16" > "$OUT/tests_shapes_bf16.log" 2>&1 &
  $T $L -k "gpu_quantized or autotuned" > "$OUT/tests_quantized.log" 2>&1 &
  $T $L tests/kernels/test_quantize.py -k "gpu_options or gpu_single_pass or test_quantize" \
      > "$OUT/tests_options_quantize.log" 2>&1 &
  $T tests/test_backends_agree.py -k "64-1" > "$OUT/tests_backends_a.log" 2>&1 &
  $T tests/test_backends_agree.py -k "128-2 or generate" > "$OUT/tests_backends_b.log" 2>&1 &
  $T tests/kernels/test_fold_scores_ws.py > "$OUT/tests_gluon.log" 2>&1 &
  $T tests/kernels/test_single_pass_ws.py > "$OUT/tests_gluon_single_pass.log" 2>&1 &
  $T tests/test_backends_agree.py -k named_decode_path > "$OUT/tests_backends_named.log" 2>&1 &
  quant_file_tests "$T" tests_gluon_single_pass_quant
  wait
  for f in "$OUT"/tests_*.log; do echo "== $f"; tail -n 2 "$f"; done | tee -a "$LOG"
  ;;
tests_single_pass)  # the GPU tests of both single-pass kernels and of the paths that take them (backends agreeing,
  # generate(), named decode paths), eight pytest processes at once ($TESTS_ALL_S s each; $VARIANT_CONSTS as tests_all)
  gpu_pytest ${TESTS_ALL_S:-400}
  T="$P --durations=5"
  $T tests/kernels/test_single_pass_ws.py > "$OUT/tests_sp_fp16.log" 2>&1 &
  quant_file_tests "$T" tests_sp_quant
  # the backend agreement in two processes: in one, 11 of its 17 tests ran in 330 s (nineteenth session)
  $T tests/test_backends_agree.py -k "64-1" > "$OUT/tests_sp_backends_a.log" 2>&1 &
  $T tests/test_backends_agree.py -k "not 64-1 and not named_decode_path" > "$OUT/tests_sp_backends_b.log" 2>&1 &
  $T tests/test_backends_agree.py -k named_decode_path > "$OUT/tests_sp_backends_named.log" 2>&1 &
  wait
  for f in "$OUT"/tests_sp_*.log; do echo "== $f"; tail -n 2 "$f"; done | tee -a "$LOG"
  ;;
tests)  # the latent-attention sweep alone took more than 330 s on an H200 (fourth session): two parts
  run timeout 420 python3 -m pytest -q -p no:cacheprovider -m gpu tests/kernels/test_latent_attention.py -rf --durations=10
  ;;
tests2)  # 34 of these 35 ran in 420 s (fifth session): the generate test has a part of its own
  run timeout 420 python3 -m pytest -q -p no:cacheprovider -m gpu tests/kernels/test_quantize.py \
      tests/kernels/test_launch_heuristics.py tests/test_backends_agree.py -k "not generate" -rf --durations=10
  ;;
spq_ablate)  # name=CONSTANTS ... (constants as fold_heads_sweep.py takes them; "-" for none)
  tree=/tmp/spq_ablate_tree
  rm -rf "$tree" && mkdir -p "$tree" && tar cf - --exclude=./.git --exclude=./.venv --exclude=./benchmarks/results . | tar xf - -C "$tree"
  python3 benchmarks/ablations/apply_patch.py benchmarks/ablations/spq_time_split.patch "$tree" || exit 1
  sets=${SPQ_ABLATE:-"none=- no_value_unpack=spq.SPQ_ABL_VDEQ=True no_key_unpack=sp.SP_ABL_KEYS=True
    int8_scores=sp.SP_ABL_KEYS=True,sp.SP_ABL_INT8=True half_score_mma=sp.SP_ABL_HALF_MMA=True
    no_rope=sp.SP_ABL_ROPE=True no_unpack=spq.SPQ_ABL_VDEQ=True,sp.SP_ABL_KEYS=True"}
  for s in $sets; do  # builds, all at once (compiling is CPU-bound); these timings are not kept
    c=${s#*=}; [ "$c" = - ] && c=""
    (cd "$tree" && TRITON_CACHE_DIR="/tmp/triton_abl_${s%%=*}" timeout ${SPQ_ABLATE_BUILD_S:-200} python3 \
        benchmarks/fold_heads_sweep.py "/tmp/abl_warm_${s%%=*}.json" single_pass_ws_only "16384,1,4" "$c" \
        > "$OUT/spq_ablate_build_${s%%=*}.log" 2>&1) &
  done
  wait
  for s in $sets; do
    c=${s#*=}; [ "$c" = - ] && c=""
    (cd "$tree" && TRITON_CACHE_DIR="/tmp/triton_abl_${s%%=*}" run timeout ${SPQ_ABLATE_S:-90} python3 \
        benchmarks/fold_heads_sweep.py "$OUT/spq_ablate_${s%%=*}.json" single_pass_ws_only \
        "${SPQ_ABLATE_SHAPES:-65536,1,4;16384,1,4}" "$c")
  done
  ;;
tests3)
  run timeout 420 python3 -m pytest -q -p no:cacheprovider -m gpu tests/test_backends_agree.py -k generate -rf \
      --durations=10
  ;;
*) echo "unknown part $part" >&2; exit 2 ;;
esac; tar czf "$OUT_SAVED/results.tgz" -C "$RES" .; done
