"""DRAFT (not in the repo; compile-checked only, never run): scores, online softmax and p @ latent_v in one
warp-specialized Gluon kernel for sm_90. Extends kernels/fold_scores_ws.py: the producer also loads the
group's value tile (64 slots x RV) into each ring stage; each consumer warpgroup keeps its own softmax
state and acc^T (RV, NP) += V^T (RV, 64) @ P^T (64, NP) (NP = heads padded to 8, P^T written to shared
memory), and writes one split of partials (m, l, acc) at the end; kernels.latent_attention._merge
combines the 2 * chunks splits. HP * D <= 256 (one score wgmma per tile), equal key and value ranks.
"""
import torch
import triton
from triton.experimental import gluon
from triton.experimental.gluon import language as gl
from triton.experimental.gluon.language.nvidia.hopper import (fence_async_shared, mbarrier, tma, warpgroup_mma,
                                                               warpgroup_mma_wait)

from kernels.fold_scores_ws import _cos_sin

BLOCK_S = 64
VBOX = 128  # value channels per TMA box (box dims must be powers of two)


@gluon.jit
def _producer(lat_desc, val_desc, rows_desc, kbufs, vbufs, rows_smem, p_smem, ready, empty, rows_bar, b, rows_row0,
              k_off, v_off, lo, n_blocks, pos_ptr, kv_start, inv_freq_ptr, part_ptrs, split0, hi,
              ROLE: gl.constexpr, BLOCK_S: gl.constexpr, HP: gl.constexpr, HALF: gl.constexpr, RV: gl.constexpr,
              NUM_STAGES: gl.constexpr, ABLATE: gl.constexpr):
    NVB: gl.constexpr = RV // val_desc.block_type.shape[2]
    VB: gl.constexpr = val_desc.block_type.shape[2]
    mbarrier.expect(rows_bar, rows_desc.block_type.nbytes)
    tma.async_copy_global_to_shared(rows_desc, [rows_row0, 0], rows_bar, rows_smem)
    for j in range(n_blocks):
        s = j % NUM_STAGES
        mbarrier.wait(empty.index(s), ((j // NUM_STAGES) & 1) ^ 1)
        if ABLATE == 1:
            mbarrier.expect(ready.index(s), lat_desc.block_type.nbytes)
        else:
            mbarrier.expect(ready.index(s), lat_desc.block_type.nbytes + NVB * val_desc.block_type.nbytes)
        tma.async_copy_global_to_shared(lat_desc, [b, lo + j * BLOCK_S, k_off], ready.index(s), kbufs.index(s))
        for k in gl.static_range(NVB if ABLATE != 1 else 0):
            # one (1, 64, VB) buffer per box (shared-memory shapes must be powers of two: RV = 384 is not)
            tma.async_copy_global_to_shared(val_desc, [b, lo + j * BLOCK_S, v_off + k * VB], ready.index(s),
                                            vbufs.index(s * NVB + k))


@gluon.jit
def _consume(lat_desc, val_desc, rows_desc, kbufs, vbufs, rows_smem, p_smem, ready, empty, rows_bar, b, rows_row0,
             k_off, v_off, lo, n_blocks, pos_ptr, kv_start, inv_freq_ptr, part_ptrs, split0, hi,
             ROLE: gl.constexpr, BLOCK_S: gl.constexpr, HP: gl.constexpr, HALF: gl.constexpr, RV: gl.constexpr,
             NUM_STAGES: gl.constexpr, ABLATE: gl.constexpr):
    part_m_ptr, part_l_ptr, part_acc_ptr, h_stride_m, h_stride_acc = part_ptrs
    N: gl.constexpr = HP * 2 * HALF
    R: gl.constexpr = lat_desc.block_type.shape[2]
    NP: gl.constexpr = 8 if HP < 8 else HP
    s_layout: gl.constexpr = gl.NVMMADistributedLayout(version=[3, 0], warps_per_cta=[4, 1], instr_shape=[16, N, 16])
    o_layout: gl.constexpr = gl.NVMMADistributedLayout(version=[3, 0], warps_per_cta=[4, 1], instr_shape=[16, NP, 16])
    zero = gl.zeros((BLOCK_S, N), gl.float32, s_layout)
    zc, _ = gl.split(gl.reshape(zero, (BLOCK_S, HP, HALF, 2)))
    l3: gl.constexpr = zc.type.layout
    trig_l: gl.constexpr = gl.SliceLayout(1, l3)
    score_l: gl.constexpr = gl.SliceLayout(2, l3)
    head_l: gl.constexpr = gl.SliceLayout(0, score_l)  # (HP,) per-head softmax state
    col_l: gl.constexpr = gl.SliceLayout(0, o_layout)  # (NP,) columns of acc^T
    freq = gl.arange(0, HALF, layout=gl.SliceLayout(0, trig_l))
    inv_freq = gl.load(inv_freq_ptr + freq)
    trig_slots = gl.arange(0, BLOCK_S, layout=gl.SliceLayout(1, trig_l))
    out_slots = gl.arange(0, BLOCK_S, layout=gl.SliceLayout(1, score_l))
    # one-hot (HP, NP) in l3's (head, frequency) slice: pads p (64, HP) to (64, NP) in registers
    l2: gl.constexpr = gl.SliceLayout(0, l3)
    hp_idx = gl.arange(0, HP, layout=gl.SliceLayout(1, l2))
    np_idx = gl.arange(0, NP, layout=gl.SliceLayout(0, l2))
    eye = (hp_idx[:, None] == np_idx[None, :]).to(gl.float32)  # (HP, NP)
    rows_t = rows_smem.permute((1, 0))
    p_buf = p_smem.index(ROLE)
    m_i = gl.full((HP,), float("-inf"), gl.float32, head_l)
    l_i = gl.zeros((HP,), gl.float32, head_l)
    VB: gl.constexpr = val_desc.block_type.shape[2]
    NVB: gl.constexpr = RV // VB
    accs = ()
    for k in gl.static_range(NVB):
        accs = accs + (gl.zeros((VB, NP), gl.float32, o_layout),)
    mbarrier.wait(rows_bar, 0)
    start = lo + ROLE * BLOCK_S
    pos = gl.load(pos_ptr + start + trig_slots, mask=start + trig_slots < hi, other=0)
    for j in range(ROLE, n_blocks, 2):
        s = j % NUM_STAGES
        start = lo + j * BLOCK_S
        mbarrier.wait(ready.index(s), (j // NUM_STAGES) & 1)
        sacc = warpgroup_mma(kbufs.index(s).reshape([BLOCK_S, R]), rows_t, zero, use_acc=False, is_async=True)
        nstart = start + 2 * BLOCK_S
        pos_next = gl.load(pos_ptr + nstart + trig_slots, mask=nstart + trig_slots < hi, other=0)
        c, sn = _cos_sin(pos.to(gl.float32)[:, None] * inv_freq[None, :])
        sacc = warpgroup_mma_wait(num_outstanding=0, deps=(sacc, ))
        yc, ys = gl.split(gl.reshape(sacc, (BLOCK_S, HP, HALF, 2)))
        score = gl.sum(yc * c[:, None, :] + ys * sn[:, None, :], axis=2)  # (BLOCK_S, HP) log2 units
        slots = start + out_slots
        score = gl.where(((slots >= kv_start) & (slots < hi))[:, None], score, float("-inf"))
        # online softmax over the tile's slots (the max and sum cross the warpgroup's warps)
        m_new = gl.maximum(m_i, gl.max(score, axis=0))
        m_safe = gl.where(m_new == float("-inf"), 0.0, m_new)
        alpha = gl.exp2(m_i - m_safe)
        p = gl.exp2(score - m_safe[None, :])
        l_i = l_i * alpha + gl.sum(p, axis=0)
        m_i = m_new
        p_pad = gl.sum(p[:, :, None] * eye[None, :, :], axis=1)  # (BLOCK_S, NP), zero past HP
        alpha_h = gl.convert_layout(alpha, gl.SliceLayout(1, l2))
        alpha_pad = gl.convert_layout(gl.sum(alpha_h[:, None] * eye, axis=0), col_l)
        if ABLATE == 0:
            p_buf.store(p_pad.to(gl.float16))
            fence_async_shared()
            gl.thread_barrier()  # every warp's P^T rows written before the warpgroup's wgmma reads them
            new = ()
            for k in gl.static_range(NVB):
                a = accs[k] * alpha_pad[None, :]
                a = warpgroup_mma(vbufs.index(s * NVB + k).reshape([BLOCK_S, VB]).permute((1, 0)), p_buf, a,
                                  is_async=True)
                new = new + (a,)
            accs = warpgroup_mma_wait(num_outstanding=0, deps=new)
        else:
            new = ()
            for k in gl.static_range(NVB):
                new = new + (accs[k] * alpha_pad[None, :] + gl.convert_layout(gl.sum(p_pad, axis=0), col_l)[None, :],)
            accs = new
        mbarrier.arrive(empty.index(s), count=1)
        pos = pos_next
    # partials of split split0 + ROLE for the program's HP heads
    split = split0 + ROLE
    hm = gl.arange(0, HP, layout=head_l)
    gl.store(part_m_ptr + hm * h_stride_m + split, m_i)
    gl.store(part_l_ptr + hm * h_stride_m + split, l_i)
    ch = gl.arange(0, VB, layout=gl.SliceLayout(1, o_layout))
    hc = gl.arange(0, NP, layout=col_l)
    for k in gl.static_range(NVB):
        gl.store(part_acc_ptr + hc[None, :] * h_stride_acc + split * RV + k * VB + ch[:, None], accs[k],
                 mask=(hc < HP)[None, :])


@gluon.jit
def _ws_fused_kernel(lat_desc, val_desc, rows_desc, pos_ptr, pos_sb, kv_start_ptr, inv_freq_ptr,
                     part_m_ptr, part_l_ptr, part_acc_ptr, num_heads, num_splits, rank, rank_v, num_slots, num_groups,
                     batch_groups, chunk_len, head_splits,
                     HG: gl.constexpr, HP: gl.constexpr, HALF: gl.constexpr, RV: gl.constexpr, BLOCK_S: gl.constexpr,
                     NUM_STAGES: gl.constexpr, ABLATE: gl.constexpr = 0):
    """Grid (B * G * head_splits * chunks,); part_*: (B, H, num_splits = 2 * chunks[, RV]) fp32."""
    pid = gl.program_id(0)
    bg = pid % batch_groups
    hsplit = (pid // batch_groups) % head_splits
    chunk = pid // (batch_groups * head_splits)
    g = bg % num_groups
    b = bg // num_groups
    h0 = hsplit * HP
    lo = chunk * chunk_len
    hi = gl.minimum(lo + chunk_len, num_slots)
    n_blocks = gl.cdiv(hi - lo, BLOCK_S)
    kv_start = gl.load(kv_start_ptr + b)
    rows_row0 = (bg * HG + h0) * 2 * HALF
    head0 = (b * num_heads + g * HG + h0).to(gl.int64)
    part_ptrs = (part_m_ptr + head0 * num_splits, part_l_ptr + head0 * num_splits,
                 part_acc_ptr + head0 * num_splits * RV, num_splits, num_splits * RV)
    kbufs = gl.allocate_shared_memory(lat_desc.dtype, [NUM_STAGES] + lat_desc.block_type.shape, lat_desc.layout)
    vbufs = gl.allocate_shared_memory(val_desc.dtype, [NUM_STAGES * (RV // val_desc.block_type.shape[2])]
                                      + val_desc.block_type.shape, val_desc.layout)
    rows_smem = gl.allocate_shared_memory(rows_desc.dtype, rows_desc.block_type.shape, rows_desc.layout)
    p_layout: gl.constexpr = gl.NVMMASharedLayout.get_default_for([BLOCK_S, 8 if HP < 8 else HP], gl.float16)
    p_smem = gl.allocate_shared_memory(gl.float16, [2, BLOCK_S, 8 if HP < 8 else HP], p_layout)
    ready = gl.allocate_shared_memory(gl.int64, [NUM_STAGES, 1], mbarrier.MBarrierLayout())
    empty = gl.allocate_shared_memory(gl.int64, [NUM_STAGES, 1], mbarrier.MBarrierLayout())
    rows_bar = gl.allocate_shared_memory(gl.int64, [1], mbarrier.MBarrierLayout())
    for i in gl.static_range(NUM_STAGES):
        mbarrier.init(ready.index(i), count=1)
        mbarrier.init(empty.index(i), count=1)
    mbarrier.init(rows_bar, count=1)
    pos_base = pos_ptr + b.to(gl.int64) * pos_sb
    k_off = g * rank
    v_off = g * rank_v
    split0 = chunk * 2
    gl.warp_specialize([
        (_consume, (lat_desc, val_desc, rows_desc, kbufs, vbufs, rows_smem, p_smem, ready, empty, rows_bar, b,
                    rows_row0, k_off, v_off, lo, n_blocks, pos_base, kv_start, inv_freq_ptr, part_ptrs, split0, hi,
                    0, BLOCK_S, HP, HALF, RV, NUM_STAGES, ABLATE)),
        (_consume, (lat_desc, val_desc, rows_desc, kbufs, vbufs, rows_smem, p_smem, ready, empty, rows_bar, b,
                    rows_row0, k_off, v_off, lo, n_blocks, pos_base, kv_start, inv_freq_ptr, part_ptrs, split0, hi,
                    1, BLOCK_S, HP, HALF, RV, NUM_STAGES, ABLATE)),
        (_producer, (lat_desc, val_desc, rows_desc, kbufs, vbufs, rows_smem, p_smem, ready, empty, rows_bar, b,
                     rows_row0, k_off, v_off, lo, n_blocks, pos_base, kv_start, inv_freq_ptr, part_ptrs, split0, hi,
                     0, BLOCK_S, HP, HALF, RV, NUM_STAGES, ABLATE)),
    ], [4, 1], [232, 24])


def ws_fused_decode(p: dict, fold_heads: int = 2, stages: int = 2, chunks: int = None, ablate: int = 0,
                    ranks: tuple = None) -> torch.Tensor:
    """latent_decode_attention(**p) through the draft fused kernel (fp16/bf16 plain latents, MHA, equal ranks,
    rank_v a multiple of VBOX). Returns z (B, H, RV) fp32."""
    from triton.experimental.gluon.nvidia.hopper import TensorDescriptor

    from kernels.latent_attention import LOG2E, _folded_rows, _merge, _partials

    q, k_fp, v_fp = p["q"], p["k_latent"].fp, p["v_latent"].fp
    batch, num_heads, head_dim = q.shape
    num_groups, gs = p["k_up"].shape[0], p["head_group_size"]
    # host ranks given by the caller inside a CUDA-graph capture (reading the offsets would sync)
    rank, rank_v = ranks or (int(p["k_offsets"][1] - p["k_offsets"][0]), int(p["v_offsets"][1] - p["v_offsets"][0]))
    assert rank_v % VBOX == 0
    half = head_dim // 2
    num_slots = k_fp.shape[1]
    gdt = gl.float16 if q.dtype == torch.float16 else gl.bfloat16
    rows, _, _ = _folded_rows(q, p["k_up"], p["k_offsets"], None, p["sm_scale"], p["rope_scale"], gs, 1, half, rank,
                              interleave=True)
    rows2 = rows.view(-1, rank)
    cols = fold_heads * head_dim
    lat_desc = TensorDescriptor(k_fp, list(k_fp.shape), list(k_fp.stride()), [1, BLOCK_S, rank],
                                gl.NVMMASharedLayout.get_default_for([1, BLOCK_S, rank], gdt))
    val_desc = TensorDescriptor(v_fp, list(v_fp.shape), list(v_fp.stride()), [1, BLOCK_S, VBOX],
                                gl.NVMMASharedLayout.get_default_for([1, BLOCK_S, VBOX], gdt))
    rows_desc = TensorDescriptor(rows2, list(rows2.shape), list(rows2.stride()), [cols, rank],
                                 gl.NVMMASharedLayout.get_default_for([cols, rank], gdt))
    head_splits = gs // fold_heads
    bgs = batch * num_groups
    sms = torch.cuda.get_device_properties(q.device).multi_processor_count
    blocks = triton.cdiv(num_slots, BLOCK_S)
    chunks = chunks or max(1, min(blocks, sms // (bgs * head_splits)))
    chunk_len = triton.cdiv(blocks, chunks) * BLOCK_S
    chunks = triton.cdiv(num_slots, chunk_len)
    parts = _partials(batch, num_heads, 2 * chunks, rank_v, q.device)
    parts[0].fill_(float("-inf"))  # a consumer with no tile still writes -inf / 0 (defensive)
    _ws_fused_kernel[(bgs * head_splits * chunks,)](
        lat_desc, val_desc, rows_desc, p["positions"], p["positions"].stride(0), p["kv_start"], p["inv_freq"],
        *parts, num_heads, 2 * chunks, rank, rank_v, num_slots, num_groups, bgs, chunk_len, head_splits,
        HG=gs, HP=fold_heads, HALF=half, RV=rank_v, BLOCK_S=BLOCK_S, NUM_STAGES=stages, ABLATE=ablate, num_warps=4, maxnreg=168)
    return _merge(*parts)
