"""Compile kernels/single_pass_ws.py for sm_90 locally: shared memory, spills. Env HP, HALF, RK, RV, TL, ER, COLS, DT."""
import os, subprocess, sys, tempfile
sys.path.insert(0, "/work/main")
import triton
from triton.backends.compiler import GPUTarget
from triton.experimental.gluon._runtime import GluonASTSource
from triton.experimental.gluon import language as gl
import kernels.single_pass_ws as S
E = lambda k, d: int(os.environ.get(k, d))
HP, HALF, RK, RV, BS = E("HP", 4), E("HALF", 64), E("RK", 128), E("RV", 384), 64
DT = os.environ.get("DT", "fp16"); gdt = gl.float16 if DT == "fp16" else gl.bfloat16
N = min(max(E("COLS", S.SP_DOT_COLS), 2 * HALF), HP * 2 * HALF)
VB, VST = S.sp_value_box(RV), S.sp_value_stages(RV)
kl = gl.NVMMASharedLayout.get_default_for([1, BS, RK], gdt)
vl = gl.NVMMASharedLayout.get_default_for([1, BS, VB], gdt)
rl = gl.NVMMASharedLayout.get_default_for([N, RK], gdt)
sig = dict(lat_desc=f"tensordesc<{DT}[1, {BS}, {RK}],{kl!r}>", val_desc=f"tensordesc<{DT}[1, {BS}, {VB}],{vl!r}>",
           rows_desc=f"tensordesc<{DT}[{N}, {RK}],{rl!r}>", pos_ptr="*i32", pos_sb="i32", kv_start_ptr="*i32",
           inv_freq_ptr="*fp32", part_m_ptr="*fp32", part_l_ptr="*fp32", part_acc_ptr="*fp32", num_heads="i32",
           num_splits="i32", rank="i32", rank_v="i32", num_slots="i32", num_groups="i32", batch_groups="i32",
           chunk_len="i32", head_splits="i32", HG="constexpr", HP="constexpr", HALF="constexpr", RV="constexpr",
           BLOCK_S="constexpr", KST="constexpr", VST="constexpr", THREAD_L="constexpr")
consts = dict(HG=max(HP, E("HG", 4)), HP=HP, HALF=HALF, RV=RV, BLOCK_S=BS, KST=S.SP_KEY_STAGES, VST=VST,
              THREAD_L=bool(E("TL", 1)))
src = GluonASTSource(fn=S._ws_single_pass_kernel, signature=sig, constexprs=consts,
                     attrs={(i,): [["tt.divisibility", 16]] for i in (3, 5, 6, 7, 8, 9)})
c = triton.compile(src, target=GPUTarget("cuda", 90, 32), options={"num_warps": 4, "maxnreg": S.SP_MAXNREG})
with tempfile.TemporaryDirectory() as d:
    open(f"{d}/k.cubin", "wb").write(c.asm["cubin"])
    nv = os.path.join(os.path.dirname(triton.__file__), "backends/nvidia/bin/cuobjdump")
    sass = subprocess.run([nv, "--dump-sass", f"{d}/k.cubin"], capture_output=True, text=True).stdout
    res = subprocess.run([nv, "--dump-resource-usage", f"{d}/k.cubin"], capture_output=True, text=True).stdout
est = S.sp_shared_bytes(HP, 2 * HALF, RK, RV, 2)
print(dict(HP=HP, HALF=HALF, RK=RK, RV=RV, N=N, TL=consts["THREAD_L"], DT=DT),
      "shared", c.metadata.shared, "est", est, "limit ok", c.metadata.shared <= S.SP_SMEM_LIMIT,
      "LDL", sass.count("LDL"), "BAR", sass.count(" BAR."), [l.strip()[:32] for l in res.splitlines() if "REG" in l])
