"""Per-call time of the small kernels around the decode kernel in graph decoding (Llama-2-7B shape at 50%: 32 heads,
head_dim 128, 8 groups of 4 heads, r_k 128 / r_v 384 per group, fp16), replayed from a CUDA graph as the decoder
replays them:
  write   the new token's key latent, value latent and position at a device-held slot: three Tensor.scatter_
          (the twenty-fourth session's decoder) against kernels.slot_write.write_slots (one launch)
  merge   the splits' merge with the value up-projection (_merge_up_kernel) per MERGE_UP_BLOCK_D / MERGE_UP_BLOCK_R /
          MERGE_UP_WARPS, the splits the single-pass kernel writes at 32K
  fold_rows  the single-pass path's folded query rows (q rotated in the kernel) per FOLD_ROWS_RANK_BLOCK /
          FOLD_ROWS_WARPS
  merge_z the merge without it (_merge_splits_kernel, what run_latency_kernel.py times) per MERGE_BLOCK_RV /
          MERGE_WARPS, the splits at 16K and 32K
Usage (CUDA machine, repo root): PYTHONPATH=. python benchmarks/small_kernels_sweep.py OUT.json [batch ...]
The JSON's "best" holds the constants with the least time summed over the batches (merge_z: batch 1) among the
variants that agree with the default, and OUT.json.consts the same as NAME=VALUE,... for
benchmarks/graph_decode_ab.py.
"""
import itertools
import json
import sys

import torch

import kernels.latent_attention as la
from kernels.single_pass_ws import sp_chunks
from kernels.slot_write import write_slots
from palu.bench.latency import graph_replay
from palu.bench.timing import time_fn

H, D, G, GS, RK, RV = 32, 128, 8, 4, 128, 384
CALLS = 20  # calls per graph; a replay's time / CALLS is one call's time with its launch gap


def per_call_us(fn) -> float:
    """One call of fn (us) with its launch gap: the median of 20 replays of a graph of CALLS calls, over CALLS."""
    def calls() -> None:
        for _ in range(CALLS):
            fn()

    return time_fn(graph_replay(calls), 3, 20)["median_ms"] * 1e3 / CALLS


def write_rows(batch: int) -> dict:
    dev, slots = "cuda", 33024
    kb = torch.zeros(batch, slots, G * RK, dtype=torch.float16, device=dev)
    vb = torch.zeros(batch, slots, G * RV, dtype=torch.float16, device=dev)
    pb = torch.zeros(batch, slots, dtype=torch.int32, device=dev)
    k = torch.randn(batch, 1, G * RK, dtype=torch.float16, device=dev)
    v = torch.randn(batch, 1, G * RV, dtype=torch.float16, device=dev)
    pos = torch.randint(0, 1 << 20, (batch, 1), dtype=torch.int32, device=dev)
    slot = torch.randint(0, slots, (batch,), device=dev)

    def scatter():
        idx = slot.view(batch, 1)
        for buf, x in ((kb, k), (vb, v)):
            buf.scatter_(1, idx.view(batch, 1, 1).expand(x.shape), x)
        pb.scatter_(1, idx, pos)

    return {"scatter_x3_us": per_call_us(scatter),
            "write_slots_us": per_call_us(lambda: write_slots(slot, [(k, kb), (v, vb), (pos, pb.unsqueeze(-1))]))}


def merge_rows(batch: int) -> list:
    dev = "cuda"
    _, chunks = sp_chunks(32768, batch * G, torch.cuda.get_device_properties(0).multi_processor_count, None)
    splits = 2 * chunks
    part_m = torch.randn(batch, H, splits, device=dev)
    part_l = torch.rand(batch, H, splits, device=dev) + 1
    part_acc = torch.randn(batch, H, splits, RV, device=dev)
    up = torch.randn(G, GS * D, RV, dtype=torch.float16, device=dev) / 20
    ends = la.DecodeEnds(v_up=up, head_dim=D, gs=GS, n_rep=1)
    saved = (la.MERGE_UP_BLOCK_D, la.MERGE_UP_BLOCK_R, la.MERGE_UP_WARPS)
    check = la._merge(part_m, part_l, part_acc, torch.float32, ends)
    rows = []
    for block_d, block_r, warps in itertools.product((16, 32, 64), (64, 128, 512), (2, 4, 8)):
        la.MERGE_UP_BLOCK_D, la.MERGE_UP_BLOCK_R, la.MERGE_UP_WARPS = block_d, block_r, warps
        try:
            err = (la._merge(part_m, part_l, part_acc, torch.float32, ends) - check).abs().max().item()
            us = per_call_us(lambda: la._merge(part_m, part_l, part_acc, torch.float16, ends))
        except Exception as exc:  # e.g. out of registers / shared memory
            rows.append({"block_d": block_d, "block_r": block_r, "warps": warps, "error": str(exc)[:300]})
            continue
        rows.append({"block_d": block_d, "block_r": block_r, "warps": warps, "splits": splits, "us": us,
                     "max_abs_diff_vs_default": err})
        print(f"merge_up B={batch} splits={splits} block_d={block_d} block_r={block_r} warps={warps}: {us:.2f} us "
              f"(diff {err:.1e})", flush=True)
    la.MERGE_UP_BLOCK_D, la.MERGE_UP_BLOCK_R, la.MERGE_UP_WARPS = saved
    return rows


def merge_z_rows(batch: int) -> list:
    dev, rows = "cuda", []
    saved = (la.MERGE_BLOCK_RV, la.MERGE_WARPS)
    for seq_len in (16384, 32768):
        _, chunks = sp_chunks(seq_len, batch * G, torch.cuda.get_device_properties(0).multi_processor_count, None)
        splits = 2 * chunks
        part_m = torch.randn(batch, H, splits, device=dev)
        part_l = torch.rand(batch, H, splits, device=dev) + 1
        part_acc = torch.randn(batch, H, splits, RV, device=dev)
        check = la._merge(part_m, part_l, part_acc, torch.float32)
        for block_rv, warps in itertools.product((64, 128, 256), (2, 4, 8)):
            la.MERGE_BLOCK_RV, la.MERGE_WARPS = block_rv, warps
            err = (la._merge(part_m, part_l, part_acc, torch.float32) - check).abs().max().item()
            us = per_call_us(lambda: la._merge(part_m, part_l, part_acc, torch.float16))
            rows.append({"seq_len": seq_len, "splits": splits, "block_rv": block_rv, "warps": warps, "us": us,
                         "max_abs_diff_vs_default": err})
            print(f"merge_z B={batch} S={seq_len} splits={splits} block_rv={block_rv} warps={warps}: {us:.2f} us",
                  flush=True)
    la.MERGE_BLOCK_RV, la.MERGE_WARPS = saved
    return rows


def fold_rows_rows(batch: int) -> list:
    dev, rows = "cuda", []
    q = torch.randn(batch, H, D, dtype=torch.float16, device=dev)
    k_up = torch.randn(G, GS * D, RK, dtype=torch.float16, device=dev) / 11
    k_offsets = torch.arange(0, G + 1, dtype=torch.int32, device=dev) * RK
    cos, sin = torch.rand(batch, D, dtype=torch.float16, device=dev), torch.rand(batch, D, dtype=torch.float16,
                                                                                  device=dev)
    ends = la.DecodeEnds(q_cos=cos, q_sin=sin, rope_sb=D)

    def fold():
        return la._folded_rows(q, k_up, k_offsets, None, D ** -0.5, 1.0, GS, 1, D // 2, RK, interleave=True,
                               ends=ends)[0]

    saved = (la.FOLD_ROWS_RANK_BLOCK, la.FOLD_ROWS_WARPS)
    check = fold()
    for block, warps in itertools.product((0, 32, 64), (2, 4, 8)):
        la.FOLD_ROWS_RANK_BLOCK, la.FOLD_ROWS_WARPS = block, warps
        same = torch.equal(fold(), check)
        us = per_call_us(fold)
        rows.append({"rank_block": block, "warps": warps, "us": us, "equal_to_default": same})
        print(f"fold_rows B={batch} rank_block={block} warps={warps}: {us:.2f} us (equal {same})", flush=True)
    la.FOLD_ROWS_RANK_BLOCK, la.FOLD_ROWS_WARPS = saved
    return rows


def _fastest(per_batch: dict, keys: tuple, ok) -> dict:
    """The variant (its keys' values) measured at every batch with the least time summed over them, among rows
    where ok(row)."""
    total, count = {}, {}
    for rows in per_batch.values():
        for row in rows:
            if "us" in row and ok(row):
                key = tuple(row[k] for k in keys)
                total[key] = total.get(key, 0.0) + row["us"]
                count[key] = count.get(key, 0) + 1
    return dict(zip(keys, min((k for k in total if count[k] == len(per_batch)), key=total.get)))


def best_constants(result: dict) -> dict:
    fold = _fastest(result["fold_rows"], ("rank_block", "warps"), lambda r: r["equal_to_default"])
    up = _fastest(result["merge_up"], ("block_d", "block_r", "warps"), lambda r: r["max_abs_diff_vs_default"] < 1e-3)
    z = _fastest({b: [r for r in rows if r["seq_len"] == 16384] for b, rows in result["merge_z"].items()},
                 ("block_rv", "warps"), lambda r: r["max_abs_diff_vs_default"] < 1e-3) if result["merge_z"] else {}
    best = {"FOLD_ROWS_RANK_BLOCK": fold["rank_block"], "FOLD_ROWS_WARPS": fold["warps"],
            "MERGE_UP_BLOCK_D": up["block_d"], "MERGE_UP_BLOCK_R": up["block_r"], "MERGE_UP_WARPS": up["warps"]}
    if z:
        best.update({"MERGE_BLOCK_RV": z["block_rv"], "MERGE_WARPS": z["warps"]})
    return best


def main() -> int:
    out_path = sys.argv[1]
    batches = [int(b) for b in sys.argv[2:]] or [1, 2, 8]
    result = {"argv": sys.argv, "device": torch.cuda.get_device_name(), "calls_per_graph": CALLS,
              "defaults": {"MERGE_UP_BLOCK_D": la.MERGE_UP_BLOCK_D, "MERGE_UP_BLOCK_R": la.MERGE_UP_BLOCK_R,
                           "MERGE_UP_WARPS": la.MERGE_UP_WARPS, "MERGE_BLOCK_RV": la.MERGE_BLOCK_RV,
                           "MERGE_WARPS": la.MERGE_WARPS, "FOLD_ROWS_RANK_BLOCK": la.FOLD_ROWS_RANK_BLOCK,
                           "FOLD_ROWS_WARPS": la.FOLD_ROWS_WARPS}, "write": {}, "fold_rows": {}, "merge_up": {},
              "merge_z": {}}
    for b in batches:
        result["write"][b] = write_rows(b)
        print(f"write B={b}: {result['write'][b]}", flush=True)
    for b in batches:
        result["fold_rows"][b] = fold_rows_rows(b)
    for b in batches:
        result["merge_up"][b] = merge_rows(b)
        if b == 1:  # run_latency_kernel.py's roofline shapes (B = 1 at 16K)
            result["merge_z"][b] = merge_z_rows(b)
    result["best"] = best_constants(result)
    print(f"best: {result['best']}", flush=True)
    with open(out_path, "w") as f:
        json.dump(result, f, indent=2)
    with open(out_path + ".consts", "w") as f:
        f.write(",".join(f"{k}={v}" for k, v in result["best"].items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
