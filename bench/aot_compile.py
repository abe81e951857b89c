"""Ahead-of-time compilation of Triton kernels for a CUDA target that this machine need not have:
what the benchmarks' `--aot ARCH` reports (registers, spills, global load/store widths per kernel).

Triton compiles a kernel for a GPUTarget with no GPU present (its bundled ptxas turns PTX into a
cubin); cuobjdump reads the cubin's resource usage. `compile_kernel` mirrors the launcher's
specialisation of the arguments, so the report describes the code a real launch would run.
"""

import os
import re
import shutil
import subprocess
import tempfile
from pathlib import Path

# "cp.async.cg.shared.global [ %r26 + 0 ], [ %rd13 + 0 ], 0x10, %r27;": the opcode and the bytes
# it copies
ASYNC_COPY = re.compile(r"(cp\.async\.\w+\.shared\.global)\s+\[[^\]]*\],\s*\[[^\]]*\],\s*"
                        r"(0x[0-9a-f]+|\d+)")
EXIT_AOT_UNAVAILABLE = 3  # exit status of --aot where this Triton cannot compile for CUDA


class AOTUnavailable(Exception):
    """This Triton cannot compile for CUDA ahead of time here (not a fault of the kernels)."""


class Compiler:
    """Compiles @triton.jit functions for `arch` ("sm_90", ...) and reads their resources.

    Raises AOTUnavailable where this Triton has no CUDA backend or cannot find cuobjdump (and, from
    `compile`, ptxas)."""

    def __init__(self, arch: str):
        import triton
        import triton.backends
        from triton.backends.compiler import GPUTarget

        if "nvidia" not in triton.backends.backends:
            raise AOTUnavailable(f"this Triton ({triton.__version__}) has no CUDA backend")
        # cuobjdump where Triton looks for it ($TRITON_CUOBJDUMP_PATH, then its bundled copy), else
        # on the PATH.
        bundled = Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / "cuobjdump"
        candidates = [os.environ.get("TRITON_CUOBJDUMP_PATH"), str(bundled),
                      shutil.which("cuobjdump")]
        self.cuobjdump = next((p for p in candidates if p and os.access(p, os.X_OK)), None)
        if self.cuobjdump is None:
            raise AOTUnavailable("cannot find cuobjdump (set TRITON_CUOBJDUMP_PATH)")
        self.arch = arch
        self.target = GPUTarget("cuda", int(arch.removeprefix("sm_")), 32)

    def compile(self, fn, args: dict, constexprs: dict, num_warps: int, num_stages=None):
        """Compile `fn` for the target. `args`: its runtime arguments by name, a pointer as its
        Triton type ("*bf16") and an int as a representative value; `constexprs`: the tl.constexpr
        arguments; num_stages None: Triton's default. Like the launcher: pointers 16-byte
        aligned, ints divisible by 16 marked so, an int equal to 1 made a constant; strides (names
        starting "stride") are i64."""
        import triton
        from triton.compiler import ASTSource

        signature, attrs, constants = {}, {}, dict(constexprs)
        for i, name in enumerate(fn.arg_names):
            value = args.get(name)
            if name in constants:
                signature[name] = "constexpr"
            elif isinstance(value, str):
                signature[name], attrs[(i,)] = value, [["tt.divisibility", 16]]
            elif value == 1:
                signature[name], constants[name] = "constexpr", 1
            else:
                signature[name] = "i64" if name.startswith("stride") else "i32"
                if value % 16 == 0:
                    attrs[(i,)] = [["tt.divisibility", 16]]
        source = ASTSource(fn, signature, constexprs=constants, attrs=attrs)
        options = {"num_warps": num_warps}
        if num_stages is not None:
            options["num_stages"] = num_stages
        try:
            return triton.compile(source, target=self.target, options=options)
        # Triton's words for a missing ptxas (any version): "Cannot find ptxas..."
        except RuntimeError as e:
            if str(e).startswith("Cannot find"):
                raise AOTUnavailable(str(e)) from e
            raise

    def resources(self, compiled) -> dict:
        """registers and stack bytes (spills) from cuobjdump; the distinct global load and store
        instructions of the PTX, whole opcodes (ld.global.v4.b32: 16-byte loads), and its
        asynchronous copies from global to shared memory (cp.async: how tl.dot's pipelined operand
        loads arrive, which therefore do not show as ld.global)."""
        with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
            f.write(compiled.asm["cubin"])
            f.flush()
            text = subprocess.run([self.cuobjdump, "--dump-resource-usage", f.name],
                                  capture_output=True, text=True, check=True).stdout
        registers, stack = re.search(r"REG:(\d+).*?STACK:(\d+)", text).groups()
        ptx = compiled.asm["ptx"]
        return {"registers": int(registers), "stack_bytes": int(stack),
                "global_loads": sorted(set(re.findall(r"ld\.global[.\w:]*", ptx))),
                "global_stores": sorted(set(re.findall(r"st\.global[.\w:]*", ptx))),
                "async_copies": sorted({f"{m[1]} {int(m[2], 0)}B"
                                        for m in re.finditer(ASYNC_COPY, ptx)})}
