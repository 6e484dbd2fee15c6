"""EXPERIMENT (session 10): scores, online softmax and p @ latent_v in one warp-specialized Gluon kernel for
sm_90, with separate key and value rings. The draft (fused_ws.py) loaded a tile's keys and values together into
two stages, one per consumer: each consumer waited a full load per tile (ncu: 24% of stall samples on the ready
barriers, DRAM 41%). Here the producer runs the key tiles LEAD tiles ahead of the value tiles; a consumer
releases a key tile right after its score wgmma and waits for the value tile only after the softmax, so the value
load overlaps the score work. Softmax state and P are padded to NP = 8 columns (the value wgmma's N).
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
NP = gl.constexpr(8)  # heads padded to the value wgmma's N


@gluon.jit
def _producer(lat_desc, val_desc, rows_desc, kbufs, vbufs, rows_smem, p_smem, kready, kempty, vready, vempty,
              rows_bar, b, rows_row0, k_off, v_off, lo, n_blocks, pos_ptr, kv_start, inv_freq_ptr, part_ptrs, split0,
              hi, ROLE: gl.constexpr, BLOCK_S: gl.constexpr, HP: gl.constexpr, HALF: gl.constexpr, RV: gl.constexpr,
              KST: gl.constexpr, VST: gl.constexpr, LEAD: gl.constexpr, ABLATE: gl.constexpr):
    """Rows once; then per step j: key tile j (after tile j - KST released it), value tile j - LEAD (after tile
    j - LEAD - VST released it). Empty barriers start released (parity 1)."""
    ND: gl.constexpr = rows_desc.block_type.shape[0]
    NDOT: gl.constexpr = HP * 2 * HALF // ND
    VB: gl.constexpr = val_desc.block_type.shape[2]
    NVB: gl.constexpr = RV // VB
    mbarrier.expect(rows_bar, NDOT * rows_desc.block_type.nbytes)
    for k in gl.static_range(NDOT):
        tma.async_copy_global_to_shared(rows_desc, [rows_row0 + k * ND, 0], rows_bar, rows_smem.index(k))
    for j in range(n_blocks + LEAD):
        if j < n_blocks:
            s = j % KST
            mbarrier.wait(kempty.index(s), ((j // KST) & 1) ^ 1)
            mbarrier.expect(kready.index(s), lat_desc.block_type.nbytes)
            tma.async_copy_global_to_shared(lat_desc, [b, lo + j * BLOCK_S, k_off], kready.index(s), kbufs.index(s))
        jv = j - LEAD
        if (jv >= 0) and (ABLATE != 1):
            sv = jv % VST
            mbarrier.wait(vempty.index(sv), ((jv // VST) & 1) ^ 1)
            mbarrier.expect(vready.index(sv), NVB * val_desc.block_type.nbytes)
            for k in gl.static_range(NVB):
                tma.async_copy_global_to_shared(val_desc, [b, lo + jv * BLOCK_S, v_off + k * VB], vready.index(sv),
                                                vbufs.index(sv * NVB + k))


@gluon.jit
def _consume(lat_desc, val_desc, rows_desc, kbufs, vbufs, rows_smem, p_smem, kready, kempty, vready, vempty,
             rows_bar, b, rows_row0, k_off, v_off, lo, n_blocks, pos_ptr, kv_start, inv_freq_ptr, part_ptrs, split0,
             hi, ROLE: gl.constexpr, BLOCK_S: gl.constexpr, HP: gl.constexpr, HALF: gl.constexpr, RV: gl.constexpr,
             KST: gl.constexpr, VST: gl.constexpr, LEAD: gl.constexpr, ABLATE: gl.constexpr):
    """One warpgroup: tiles ROLE, ROLE + 2, ...; writes split split0 + ROLE of the partials of its HP heads."""
    part_m_ptr, part_l_ptr, part_acc_ptr, h_stride_m, h_stride_acc = part_ptrs
    N: gl.constexpr = rows_desc.block_type.shape[0]
    HD: gl.constexpr = N // (2 * HALF)
    NDOT: gl.constexpr = HP // HD
    R: gl.constexpr = lat_desc.block_type.shape[2]
    VB: gl.constexpr = val_desc.block_type.shape[2]
    NVB: gl.constexpr = RV // VB
    s_layout: gl.constexpr = gl.NVMMADistributedLayout(version=[3, 0], warps_per_cta=[4, 1], instr_shape=[16, N, 16])
    o_layout: gl.constexpr = gl.NVMMADistributedLayout(version=[3, 0], warps_per_cta=[4, 1], instr_shape=[16, NP, 16])
    zero = gl.zeros((BLOCK_S, N), gl.float32, s_layout)
    zc, _ = gl.split(gl.reshape(zero, (BLOCK_S, HD, HALF, 2)))
    l3: gl.constexpr = zc.type.layout
    trig_l: gl.constexpr = gl.SliceLayout(1, l3)
    score_l: gl.constexpr = gl.SliceLayout(2, l3)  # (slot, head) and the padded (slot, NP)
    cols_l: gl.constexpr = gl.SliceLayout(0, score_l)
    slot_l: gl.constexpr = gl.SliceLayout(1, score_l)
    ocol_l: gl.constexpr = gl.SliceLayout(0, o_layout)
    freq = gl.arange(0, HALF, layout=gl.SliceLayout(0, trig_l))
    inv_freq = gl.load(inv_freq_ptr + freq)
    trig_slots = gl.arange(0, BLOCK_S, layout=gl.SliceLayout(1, trig_l))
    out_slots = gl.arange(0, BLOCK_S, layout=slot_l)
    heads = gl.arange(0, HD, layout=cols_l)
    cols = gl.arange(0, NP, layout=cols_l)
    p_buf = p_smem.index(ROLE)
    m_i = gl.full((NP,), float("-inf"), gl.float32, cols_l)
    l_i = gl.zeros((NP,), gl.float32, cols_l)
    accs = ()
    for k in gl.static_range(NVB):
        accs = accs + (gl.zeros((VB, NP), gl.float32, o_layout),)
    mbarrier.wait(rows_bar, 0)
    start = lo + ROLE * BLOCK_S
    pos = gl.load(pos_ptr + start + trig_slots, mask=start + trig_slots < hi, other=0)
    for j in range(ROLE, n_blocks, 2):
        sk = j % KST
        sv = j % VST
        start = lo + j * BLOCK_S
        slots = start + out_slots
        valid = (slots >= kv_start) & (slots < hi)
        mbarrier.wait(kready.index(sk), (j // KST) & 1)
        tile = kbufs.index(sk).reshape([BLOCK_S, R])
        s_pad = gl.full((BLOCK_S, NP), float("-inf"), gl.float32, score_l)
        for k in gl.static_range(NDOT):
            acc = warpgroup_mma(tile, rows_smem.index(k).permute((1, 0)), zero, use_acc=False, is_async=True)
            if k == 0:
                nstart = start + 2 * BLOCK_S
                pos_next = gl.load(pos_ptr + nstart + trig_slots, mask=nstart + trig_slots < hi, other=0)
                c, sn = _cos_sin(pos.to(gl.float32)[:, None] * inv_freq[None, :])
            acc = warpgroup_mma_wait(num_outstanding=0, deps=(acc, ))
            if k == NDOT - 1:
                mbarrier.arrive(kempty.index(sk), count=1)  # the key tile is read
            yc, ys = gl.split(gl.reshape(acc, (BLOCK_S, HD, HALF, 2)))
            sc = gl.sum(yc * c[:, None, :] + ys * sn[:, None, :], axis=2)  # (BLOCK_S, HD) log2 units
            for h in gl.static_range(HD):
                s_h = gl.sum(gl.where(heads[None, :] == h, sc, 0.0), axis=1)
                s_pad = gl.where(cols[None, :] == k * HD + h, s_h[:, None], s_pad)
        s_pad = gl.where(valid[:, None], s_pad, float("-inf"))
        # online softmax per padded head column (padding stays -inf: p = 0, alpha = 0 on zero columns)
        m_new = gl.maximum(m_i, gl.max(s_pad, axis=0))
        m_safe = gl.where(m_new == float("-inf"), 0.0, m_new)
        alpha = gl.exp2(m_i - m_safe)
        p = gl.exp2(s_pad - m_safe[None, :])
        l_i = l_i * alpha + gl.sum(p, axis=0)
        m_i = m_new
        alpha_o = gl.convert_layout(alpha, ocol_l)
        if ABLATE == 0:
            mbarrier.wait(vready.index(sv), (j // VST) & 1)
            p_buf.store(p.to(val_desc.dtype))
            fence_async_shared()
            gl.thread_barrier()  # every warp's rows of P written before the warpgroup's wgmma reads them
            new = ()
            for k in gl.static_range(NVB):
                a = warpgroup_mma(vbufs.index(sv * NVB + k).reshape([BLOCK_S, VB]).permute((1, 0)), p_buf,
                                  accs[k] * alpha_o[None, :], is_async=True)
                new = new + (a,)
            accs = warpgroup_mma_wait(num_outstanding=0, deps=new)
            mbarrier.arrive(vempty.index(sv), count=1)
        else:  # ablations: 1 no value loads or products, 2 value loads waited for but no products
            if ABLATE == 2:
                mbarrier.wait(vready.index(sv), (j // VST) & 1)
                mbarrier.arrive(vempty.index(sv), count=1)
            psum = gl.convert_layout(gl.sum(p, axis=0), ocol_l)
            new = ()
            for k in gl.static_range(NVB):
                new = new + (accs[k] * alpha_o[None, :] + psum[None, :],)
            accs = new
        pos = pos_next
    split = split0 + ROLE
    gl.store(part_m_ptr + cols * h_stride_m + split, m_i, mask=cols < HP)
    gl.store(part_l_ptr + cols * h_stride_m + split, l_i, mask=cols < HP)
    ch = gl.arange(0, VB, layout=gl.SliceLayout(1, o_layout))
    hc = gl.arange(0, NP, layout=ocol_l)
    for k in gl.static_range(NVB):
        gl.store(part_acc_ptr + hc[None, :] * h_stride_acc + split * RV + k * VB + ch[:, None], accs[k],
                 mask=(hc < HP)[None, :])


@gluon.jit
def _ws_fused3_kernel(lat_desc, val_desc, rows_desc, pos_ptr, pos_sb, kv_start_ptr, inv_freq_ptr,
                      part_m_ptr, part_l_ptr, part_acc_ptr, num_heads, num_splits, rank, rank_v, num_slots,
                      num_groups, batch_groups, chunk_len, head_splits,
                      HG: gl.constexpr, HP: gl.constexpr, HALF: gl.constexpr, RV: gl.constexpr,
                      BLOCK_S: gl.constexpr, KST: gl.constexpr, VST: gl.constexpr, LEAD: gl.constexpr,
                      ABLATE: gl.constexpr = 0):
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
    NVB: gl.constexpr = RV // val_desc.block_type.shape[2]
    kbufs = gl.allocate_shared_memory(lat_desc.dtype, [KST] + lat_desc.block_type.shape, lat_desc.layout)
    vbufs = gl.allocate_shared_memory(val_desc.dtype, [VST * NVB] + val_desc.block_type.shape, val_desc.layout)
    rows_smem = gl.allocate_shared_memory(rows_desc.dtype, [HP * 2 * HALF // rows_desc.block_type.shape[0]]
                                          + rows_desc.block_type.shape, rows_desc.layout)
    p_layout: gl.constexpr = gl.NVMMASharedLayout.get_default_for([BLOCK_S, NP], gl.float16)
    p_smem = gl.allocate_shared_memory(val_desc.dtype, [2, BLOCK_S, NP], p_layout)
    kready = gl.allocate_shared_memory(gl.int64, [KST, 1], mbarrier.MBarrierLayout())
    kempty = gl.allocate_shared_memory(gl.int64, [KST, 1], mbarrier.MBarrierLayout())
    vready = gl.allocate_shared_memory(gl.int64, [VST, 1], mbarrier.MBarrierLayout())
    vempty = gl.allocate_shared_memory(gl.int64, [VST, 1], mbarrier.MBarrierLayout())
    rows_bar = gl.allocate_shared_memory(gl.int64, [1], mbarrier.MBarrierLayout())
    for i in gl.static_range(KST):
        mbarrier.init(kready.index(i), count=1)
        mbarrier.init(kempty.index(i), count=1)
    for i in gl.static_range(VST):
        mbarrier.init(vready.index(i), count=1)
        mbarrier.init(vempty.index(i), count=1)
    mbarrier.init(rows_bar, count=1)
    pos_base = pos_ptr + b.to(gl.int64) * pos_sb
    k_off = g * rank
    v_off = g * rank_v
    split0 = chunk * 2
    gl.warp_specialize([
        (_consume, (lat_desc, val_desc, rows_desc, kbufs, vbufs, rows_smem, p_smem, kready, kempty, vready, vempty,
                    rows_bar, b, rows_row0, k_off, v_off, lo, n_blocks, pos_base, kv_start, inv_freq_ptr, part_ptrs,
                    split0, hi, 0, BLOCK_S, HP, HALF, RV, KST, VST, LEAD, ABLATE)),
        (_consume, (lat_desc, val_desc, rows_desc, kbufs, vbufs, rows_smem, p_smem, kready, kempty, vready, vempty,
                    rows_bar, b, rows_row0, k_off, v_off, lo, n_blocks, pos_base, kv_start, inv_freq_ptr, part_ptrs,
                    split0, hi, 1, BLOCK_S, HP, HALF, RV, KST, VST, LEAD, ABLATE)),
        (_producer, (lat_desc, val_desc, rows_desc, kbufs, vbufs, rows_smem, p_smem, kready, kempty, vready, vempty,
                     rows_bar, b, rows_row0, k_off, v_off, lo, n_blocks, pos_base, kv_start, inv_freq_ptr, part_ptrs,
                     split0, hi, 0, BLOCK_S, HP, HALF, RV, KST, VST, LEAD, ABLATE)),
    ], [4, 1], [232, 24])


def ws_fused3_decode(p: dict, fold_heads: int = 2, kst: int = 4, vst: int = 2, lead: int = 2, dot_cols: int = 256,
                     chunks: int = None, ranks: tuple = None, ablate: int = 0) -> torch.Tensor:
    """latent_decode_attention(**p) through the experimental fused kernel (fp16/bf16 plain latents, MHA, equal
    ranks, rank_v a multiple of VBOX). Returns z (B, H, RV) fp32. `ranks` (rank_k, rank_v per group) on the
    host, for CUDA-graph capture (reading the offsets would sync)."""
    from triton.experimental.gluon.nvidia.hopper import TensorDescriptor

    from kernels.latent_attention import _folded_rows, _merge, _partials

    q, k_fp, v_fp = p["q"], p["k_latent"].fp, p["v_latent"].fp
    batch, num_heads, head_dim = q.shape
    num_groups, gs = p["k_up"].shape[0], p["head_group_size"]
    rank, rank_v = ranks or (int(p["k_offsets"][1] - p["k_offsets"][0]), int(p["v_offsets"][1] - p["v_offsets"][0]))
    assert rank_v % VBOX == 0
    half = head_dim // 2
    num_slots = k_fp.shape[1]
    gdt = gl.float16 if q.dtype == torch.float16 else gl.bfloat16
    rows, _, _ = _folded_rows(q, p["k_up"], p["k_offsets"], None, p["sm_scale"], p["rope_scale"], gs, 1, half, rank,
                              interleave=True)
    rows2 = rows.view(-1, rank)
    cols = min(fold_heads * head_dim, dot_cols)
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
    _ws_fused3_kernel[(bgs * head_splits * chunks,)](
        lat_desc, val_desc, rows_desc, p["positions"], p["positions"].stride(0), p["kv_start"], p["inv_freq"],
        *parts, num_heads, 2 * chunks, rank, rank_v, num_slots, num_groups, bgs, chunk_len, head_splits,
        HG=gs, HP=fold_heads, HALF=half, RV=rank_v, BLOCK_S=BLOCK_S, KST=kst, VST=vst, LEAD=lead, ABLATE=ablate,
        num_warps=4, maxnreg=168)
    return _merge(*parts)
