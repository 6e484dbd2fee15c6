"""Compile kernels for a GPU target on a machine without that GPU (or any GPU), never running them.

What a build needs from the machine is its target (architecture, warp size), a device index and a
stream; Triton's compiler and ptxas do the rest on the CPU. :func:`compile_only` stands in for the
driver and turns every kernel launch inside it into a compile, so a host function (descriptors, grid,
constexprs) builds exactly what it would launch. Tests use it to catch compile errors and shared-memory
estimates gone wrong on CI (the Gluon kernels need sm_90); tuning uses :func:`resource_usage`
(registers, stack, spills) to compare variants before spending device time.

It replaces process-wide state (Triton's active driver, ``JITFunction.run``): run it in a process of its
own, without ``TRITON_INTERPRET`` (the interpreter never compiles).
"""
from __future__ import annotations

import contextlib
import os
import re
import subprocess
import tempfile
from typing import Iterator

import triton
from triton.backends.compiler import GPUTarget
from triton.runtime import driver
from triton.runtime.jit import JITFunction


class _CompileOnlyDriver:
    """The part of Triton's driver a compile reads: the target, a device index, a stream."""

    def __init__(self, target: GPUTarget) -> None:
        self.target = target

    def get_current_device(self) -> int:
        return 0

    def get_current_stream(self, device=None) -> int:
        return 0

    def get_current_target(self) -> GPUTarget:
        return self.target

    def get_active_torch_device(self):
        import torch

        return torch.device("cpu")


@contextlib.contextmanager
def compile_only(capability: int = 90, warp_size: int = 32) -> Iterator[list]:
    """Within the block every ``kernel[grid](...)`` compiles for CUDA sm_<capability> and returns without
    running; yields the list of compiled kernels, in launch order. Tensors may live on the CPU (only
    their dtypes, strides and pointer alignment are read)."""
    if os.environ.get("TRITON_INTERPRET", "0") not in ("", "0"):
        raise RuntimeError("compile_only needs TRITON_INTERPRET unset: the interpreter never compiles")
    built: list = []
    original = JITFunction.run

    def run(self, *args, grid, warmup, **kwargs):
        kernel = original(self, *args, grid=grid, warmup=True, **kwargs)
        built.append(kernel)
        return kernel

    previous = driver._active  # None until first used; reset_active() would create a CUDA driver (none here)
    driver.set_active(_CompileOnlyDriver(GPUTarget("cuda", capability, warp_size)))
    JITFunction.run = run
    try:
        yield built
    finally:
        JITFunction.run = original
        driver._active = previous


def set_constant(module, name: str, value) -> None:
    """Set a kernel module's constant for a variant (offline builds, benchmarks/fold_heads_sweep.py): a Gluon
    ``gl.constexpr`` global stays one, since a kernel reads it as a compile-time value."""
    old = getattr(module, name)
    setattr(module, name, type(old)(value) if type(old).__name__ == "constexpr" else value)


_FIELDS = ("REG", "STACK", "SHARED", "LOCAL")


def _cuobjdump(kernel, option: str) -> str:
    """What the cuobjdump bundled with Triton prints for a compiled CUDA kernel's cubin with ``option``."""
    tool = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", "cuobjdump")
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "kernel.cubin")
        with open(path, "wb") as f:
            f.write(kernel.asm["cubin"])
        return subprocess.run([tool, option, path], capture_output=True, text=True, check=True).stdout


def resource_usage(kernel) -> dict:
    """{'name', 'shared' (bytes the launch reserves), 'regs', 'stack', 'local' (per thread, bytes)} of a
    compiled CUDA kernel, read from its cubin with the cuobjdump bundled with Triton."""
    text = _cuobjdump(kernel, "-res-usage")
    found = {k: int(v) for k, v in re.findall(r"\b(" + "|".join(_FIELDS) + r"):(\d+)", text)}
    missing = [k for k in _FIELDS if k not in found]
    if missing:
        raise RuntimeError(f"cuobjdump -res-usage printed no {missing}: {text!r}")
    return {"name": kernel.metadata.name, "shared": int(kernel.metadata.shared), "regs": found["REG"],
            "stack": found["STACK"], "local": found["LOCAL"]}


_INSTRUCTION = re.compile(r"^\s+/\*([0-9a-f]{4,})\*/\s+(.*?)\s*;", re.M)


def sass(kernel) -> str:
    """The SASS of a compiled CUDA kernel (cuobjdump -sass)."""
    return _cuobjdump(kernel, "-sass")


def partition_loops(sass_text: str) -> list[dict]:
    """Per warp-specialized partition of a SASS listing (the code between two setmaxnreg instructions, USETMAXREG,
    in address order), its longest loop: the most instructions from a backward branch's target to the branch.
    [{'instructions' (the partition's), 'loop' (the loop's), 'ops' ({opcode: count in the loop}, most first)}]
    for the partitions that have a loop. Where the time of a warp-specialized kernel goes per tile, without a GPU:
    one loop iteration is one tile."""
    code = [(int(a, 16), text) for a, text in _INSTRUCTION.findall(sass_text)]
    cuts = [i for i, (_, text) in enumerate(code) if "USETMAXREG" in text] + [len(code)]
    out = []
    for lo, hi in zip(cuts, cuts[1:]):
        part = code[lo:hi]
        where = {addr: i for i, (addr, _) in enumerate(part)}
        best = None
        for i, (addr, text) in enumerate(part):
            m = re.search(r"\bBRA\b.*?0x([0-9a-f]+)", text)
            if m and int(m.group(1), 16) < addr and int(m.group(1), 16) in where:
                start = where[int(m.group(1), 16)]
                if best is None or i - start > best[1] - best[0]:
                    best = (start, i)
        if best is not None:
            ops: dict = {}
            for _, text in part[best[0]:best[1] + 1]:
                op = re.sub(r"^@!?U?P[T0-9]+\s+", "", text).split()[0].split(".")[0]
                ops[op] = ops.get(op, 0) + 1
            out.append({"instructions": len(part), "loop": best[1] - best[0] + 1,
                        "ops": dict(sorted(ops.items(), key=lambda kv: -kv[1]))})
    return out
