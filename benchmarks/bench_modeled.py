"""Modeled throughput of the binary-conv kernels' hottest inner loop, per ISA and core.

Compiles each kernel variant with the flags setup.py builds it with (read from setup.py),
takes the innermost loop of its `-S` output that holds the most popcount instructions,
and runs LLVM's `llvm-mca` (Debian `llvm-19`) on it for the cores of that ISA:

  avx2         x86-64 (gcc)                 znver3, alderlake
  avx512       x86-64 (gcc)                 icelake-server, znver4 (no AVX-512 in znver3
                                            or alderlake)
  neon         aarch64 (aarch64-linux-gnu-gcc) cortex-a53, cortex-a55, cortex-a72,
                                            neoverse-n1
  neon-armhf   32-bit ARM (arm-linux-gnueabihf-gcc, Thumb-2) cortex-a72 (LLVM has no
                                            ARM32 scheduling model of the others)

With avx2, OpenVINO's AVX2 BinaryConvolution inner step (its op sequence, written out in
``openvino_avx2_loop``) is modeled on the same cores, and the ratio printed: how much
faster our AVX2 loop is than OpenVINO's at both loops' modeled speed.

Printed per (variant, core), in cycles per 512 binary MACs (one MAC = one xor'ed bit):
  mca        llvm-mca's steady-state cycles per loop iteration, scaled
  mca-bound  llvm-mca's block reciprocal throughput (its busiest resource), scaled
  pipe-bound vector ops of the loop / the core's vector pipes for this width, scaled
             (a plain op count: it ignores that some ops run on fewer pipes)
Binary MACs per iteration come from the popcount instructions in the loop: `cnt` (NEON,
bits of its register), `vpopcntq` (bits of its register), `vpshufb` ymm (the AVX2 nibble
lookup: 2 per 256 bits, so 128 each).

A model, not a measurement: it says how close the loop is to what the core could do,
nothing about memory, the code around the loop, or real clocks.

Run: python -m benchmarks.bench_modeled [--variant NAME ...] [--rev GIT_REV]
  --rev models the runtime/ sources of a git revision (e.g. a before/after table).
Tools missing (llvm-mca-19, a cross compiler) are reported with the Debian package to
install (`make system-deps` installs them all); nothing crashes.
"""

from __future__ import annotations

import argparse
import ast
import os
import platform
import re
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
RUNTIME = ROOT / "runtime"
ITERATIONS = 300
MCA_PACKAGE = "llvm-19"


@dataclass(frozen=True)
class Variant:
    name: str
    source: str  # file in runtime/
    flags_table: str  # setup.py dict holding its per-file flags
    arch: str  # platform.machine() values that compile it natively: first one
    native_machines: tuple[str, ...]
    cross_cc: str
    cross_package: str
    mtriple: str
    cpus: tuple[str, ...]


VARIANTS = {
    "avx2": Variant(
        "avx2",
        "bnn_avx2.c",
        "X86_SOURCES",
        "x86_64",
        ("x86_64", "amd64"),
        "x86_64-linux-gnu-gcc",
        "gcc-x86-64-linux-gnu",
        "x86_64-linux-gnu",
        ("znver3", "alderlake"),
    ),
    "avx512": Variant(
        "avx512",
        "bnn_avx512.c",
        "X86_SOURCES",
        "x86_64",
        ("x86_64", "amd64"),
        "x86_64-linux-gnu-gcc",
        "gcc-x86-64-linux-gnu",
        "x86_64-linux-gnu",
        ("icelake-server", "znver4"),
    ),
    "neon": Variant(
        "neon",
        "bnn_neon.c",
        "ARM64_SOURCES",
        "aarch64",
        ("aarch64", "arm64"),
        "aarch64-linux-gnu-gcc",
        "gcc-aarch64-linux-gnu",
        "aarch64-linux-gnu",
        ("cortex-a53", "cortex-a55", "cortex-a72", "neoverse-n1"),
    ),
    "neon-armhf": Variant(
        "neon-armhf",
        "bnn_neon.c",
        "ARM32_SOURCES",
        "armv7l",
        ("armv7l", "armv8l"),
        "arm-linux-gnueabihf-gcc",
        "gcc-arm-linux-gnueabihf",
        "armv7-linux-gnueabihf",  # switched to thumbv7 when gcc emits Thumb-2
        ("cortex-a72",),
    ),
}

#: vector pipes per core for full-width ops of the variant (128-bit NEON, 256-bit AVX2,
#: 512-bit AVX-512); Cortex-A53/A55 issue one 128-bit ASIMD op per cycle
PIPES = {
    "znver3": 4,
    "alderlake": 3,
    "icelake-server": 2,
    "znver4": 2,  # 512-bit ops: two 256-bit halves through the 4 pipes
    "cortex-a53": 1,
    "cortex-a55": 1,
    "cortex-a72": 2,
    "neoverse-n1": 2,
}


class ToolMissing(Exception):
    """A tool the model needs is not installed; the message names the package."""


@dataclass
class Loop:
    lines: list[str]  # instructions (and the loop label), ready for llvm-mca
    bmac: int  # binary MACs per iteration
    vec_ops: int  # vector ops (not pure loads/stores)


@dataclass
class Row:
    variant: str
    cpu: str
    compiler: str
    mca: float  # cycles per 512 bMAC
    mca_bound: float
    pipe_bound: float
    insts: int
    vec_ops: int
    bmac: int


def setup_flags() -> dict[str, Any]:
    """COMMON_CFLAGS and the per-file flag tables of setup.py (literal assignments)."""
    tree = ast.parse((ROOT / "setup.py").read_text())
    out: dict[str, Any] = {}
    for node in tree.body:
        if isinstance(node, ast.Assign) and len(node.targets) == 1:
            target = node.targets[0]
            if isinstance(target, ast.Name) and target.id in (
                "COMMON_CFLAGS",
                "X86_SOURCES",
                "ARM64_SOURCES",
                "ARM32_SOURCES",
            ):
                out[target.id] = ast.literal_eval(node.value)
    return out


def find_mca() -> str:
    env = os.environ.get("LLVM_MCA")
    if env:
        return env
    for cand in ("llvm-mca-19", "/usr/lib/llvm-19/bin/llvm-mca"):
        if shutil.which(cand) or Path(cand).is_file():
            return cand
    other = shutil.which("llvm-mca")
    hint = f" ({other} is another LLVM version: its models differ)" if other else ""
    raise ToolMissing(
        f"llvm-mca-19 not found{hint}: install the Debian package {MCA_PACKAGE} "
        f"(apt-get install {MCA_PACKAGE}, or `make system-deps`), or set LLVM_MCA"
    )


def find_cc(v: Variant) -> str:
    if platform.machine().lower() in v.native_machines:
        return os.environ.get("CC", "cc")
    if shutil.which(v.cross_cc):
        return v.cross_cc
    raise ToolMissing(
        f"{v.cross_cc} not found: install the Debian package {v.cross_package} "
        "(`make system-deps` installs the ARM ones)"
    )


def compile_asm(v: Variant, cc: str, src_dir: Path) -> str:
    flags = setup_flags()
    common = [str(f) for f in flags["COMMON_CFLAGS"]]
    per_file = [str(f) for f in flags[v.flags_table][v.source]]
    cmd = [cc, *common, *per_file, f"-I{src_dir}", "-S", "-o", "-", str(src_dir / v.source)]
    res = subprocess.run(cmd, capture_output=True, text=True)
    if res.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed:\n{res.stderr}")
    return res.stdout


_LABEL = re.compile(r"^\s*([A-Za-z0-9_.$]+):")
_BRANCH = re.compile(
    r"^\s*(b\.?\w*|cbn?z|tbn?z|j\w+|loop\w*|bne|beq|bgt|blt|bge|ble|bhi|bls|bcc|bcs)\s+"
    r"(?:[^,]*,\s*)*([A-Za-z0-9_.$]+)\s*$"
)
_POPCOUNT = (
    (re.compile(r"^\s*cnt\s+v\d+\.16b"), 128),
    (re.compile(r"^\s*cnt\s+v\d+\.8b"), 64),
    (re.compile(r"^\s*vcnt\.8\s+q"), 128),
    (re.compile(r"^\s*vcnt\.8\s+d"), 64),
    (re.compile(r"^\s*vpopcntq\s+.*%zmm"), 512),
    (re.compile(r"^\s*vpopcntq\s+.*%ymm"), 256),
    (re.compile(r"^\s*vpshufb\s+.*%ymm"), 128),
)
_VECTOR = re.compile(r"%[yzx]mm|\bv\d+\.\d*[bhsd]\b|\bq\d+\b|\bd\d+\b|\bv\d+\b")
_MEMONLY = re.compile(
    r"^\s*(ld[1-4]r?|ldn?p|ldr|ldur|st[1-4]|stn?p|str|stur|vld\d|vst\d|vldr|vstr|"
    r"vmovdq[au]\d*|vmovup[sd]|vmovap[sd]|vpbroadcast[bwdq]|vbroadcasts[sd]|vbroadcasti128|vbroadcasti32x4|vbroadcasti64x4)\b"
)


def _clean(asm: str) -> list[str]:
    """Instruction and label lines, comments and directives dropped."""
    out = []
    for raw in asm.splitlines():
        line = re.sub(r"(//|@).*$", "", raw) if not raw.lstrip().startswith("#") else ""
        line = line.rstrip()
        if not line.strip():
            continue
        s = line.strip()
        if s.startswith(".") and not _LABEL.match(s):
            continue  # directive
        out.append(s)
    return out


def _memory_only(inst: str) -> bool:
    if not _MEMONLY.match(inst):
        return False
    # x86 register-to-register moves/broadcasts are ALU ops; a memory operand has "("
    if inst.startswith(("vmov", "vpbroadcast", "vbroadcast")):
        return "(" in inst
    return True


def extract_loop(asm: str) -> Loop:
    """The innermost backward-branch loop holding the most popcount instructions."""
    lines = _clean(asm)
    labels: dict[str, int] = {}
    for i, s in enumerate(lines):
        m = _LABEL.match(s)
        if m:
            labels[m.group(1)] = i
    loops = []
    for j, s in enumerate(lines):
        m = _BRANCH.match(s)
        if not m:
            continue
        target = m.group(2)
        if re.fullmatch(r"\d+b", target):  # numeric local label, backward
            num = target[:-1]
            starts = [i for i, t in enumerate(lines[:j]) if t == f"{num}:"]
            if starts:
                loops.append((starts[-1], j))
        elif target in labels and labels[target] < j:
            loops.append((labels[target], j))
    inner = [
        (i, j)
        for (i, j) in loops
        if not any(i <= i2 and j2 <= j and (i2, j2) != (i, j) for (i2, j2) in loops)
    ]
    best: Loop | None = None
    for i, j in inner:
        body = lines[i : j + 1]
        insts = [s for s in body if not _LABEL.match(s)]
        bmac = sum(n for s in insts for rx, n in _POPCOUNT if rx.match(s))
        if bmac == 0:
            continue
        vec = sum(1 for s in insts if _VECTOR.search(s) and not _memory_only(s))
        # llvm-mca wants named labels: 1: / 1b -> .Lmca1
        fixed = [re.sub(r"^(\d+):$", r".Lmca\1:", s) for s in body]
        fixed = [re.sub(r"\s(\d+)[bf]$", r" .Lmca\1", s) for s in fixed]
        cand = Loop(fixed, bmac, vec)
        if best is None or cand.bmac > best.bmac:
            best = cand
    if best is None:
        raise RuntimeError("no inner loop with popcount instructions found in the -S output")
    return best


def run_mca(mca: str, mtriple: str, cpu: str, loop: Loop) -> tuple[float, float]:
    """(cycles per iteration, block reciprocal throughput) from llvm-mca."""
    with tempfile.NamedTemporaryFile("w", suffix=".s", delete=False) as f:
        f.write("\n".join(loop.lines) + "\n")
        path = f.name
    try:
        res = subprocess.run(
            [mca, f"-mtriple={mtriple}", f"-mcpu={cpu}", f"-iterations={ITERATIONS}", path],
            capture_output=True,
            text=True,
        )
    finally:
        os.unlink(path)
    if res.returncode != 0:
        raise RuntimeError(f"llvm-mca -mcpu={cpu} failed: {res.stderr.strip()[:500]}")
    cycles = re.search(r"Total Cycles:\s+(\d+)", res.stdout)
    rthr = re.search(r"Block RThroughput:\s+([\d.]+)", res.stdout)
    if not cycles or not rthr:
        raise RuntimeError(f"unexpected llvm-mca output:\n{res.stdout[:500]}")
    return int(cycles.group(1)) / ITERATIONS, float(rthr.group(1))


#: OpenVINO's AVX2 BinaryConvolution, for comparison. Its JIT kernel (intel_cpu plugin,
#: bin_conv.cpp) keeps 32 input channels of 8 output channels in a ymm (OIhw8o32i weights)
#: and, per (output pixel, 8-channel block, 32 input channels), broadcasts the pixel's 32
#: input bits once per pixel and runs: weight load, vpxor, vandps + vpsrld + vandps (nibble
#: split), 2 vpshufb (nibble popcount table), vpaddb, vpmaddubsw + vpmaddwd (bytes to
#: 32-bit lanes), vpaddd into the accumulator; on AVX2 it unrolls 2 pixels x 4 blocks.
#: Written here from that op list (not its code), as one step of its kw/ic loop.
OPENVINO_AVX2_CPUS = ("znver3", "alderlake")


def openvino_avx2_loop() -> Loop:
    """OpenVINO's AVX2 binary-conv inner step (2 pixels x 4 blocks x 256 bMAC), as a Loop."""
    body = []
    for px in range(2):
        body.append(f"vpbroadcastd {4 * px}(%rsi), %ymm0")
        for blk in range(4):
            acc = f"%ymm{1 + 2 * blk + px}"
            body += [
                f"vmovups {32 * blk}(%rdx), %ymm10",
                "vpxor %ymm0, %ymm10, %ymm10",
                "vandps %ymm10, %ymm13, %ymm11",
                "vpsrld $4, %ymm10, %ymm10",
                "vandps %ymm13, %ymm10, %ymm10",
                "vpshufb %ymm10, %ymm12, %ymm10",
                "vpshufb %ymm11, %ymm12, %ymm11",
                "vpaddb %ymm11, %ymm10, %ymm10",
                "vpmaddubsw %ymm14, %ymm10, %ymm10",
                "vpmaddwd %ymm15, %ymm10, %ymm10",
                f"vpaddd %ymm10, {acc}, {acc}",
            ]
    body += ["addq $128, %rdx", "addq $8, %rsi", "decq %rcx", "jnz .Lov"]
    return extract_loop(".Lov:\n" + "\n".join(body) + "\n")


def model_loop(name: str, loop: Loop, mtriple: str, cpus: tuple[str, ...], cc: str) -> list[Row]:
    """One row per core for an extracted loop."""
    mca = find_mca()
    scale = 512.0 / loop.bmac
    rows = []
    for cpu in cpus:
        cyc, rthr = run_mca(mca, mtriple, cpu, loop)
        rows.append(
            Row(
                name,
                cpu,
                cc,
                cyc * scale,
                rthr * scale,
                loop.vec_ops / PIPES[cpu] * scale,
                sum(1 for s in loop.lines if not _LABEL.match(s)),
                loop.vec_ops,
                loop.bmac,
            )
        )
    return rows


def openvino_comparison(rows: list[Row]) -> tuple[list[Row], list[str]]:
    """OpenVINO's AVX2 loop modeled on the avx2 variant's cores, and per core how many
    times faster our avx2 loop models (the AVX2-only machine's ceiling on 'ours vs
    OpenVINO' for a kernel that runs at its loop's speed)."""
    ref = model_loop(
        "openvino-avx2", openvino_avx2_loop(), "x86_64-linux-gnu", OPENVINO_AVX2_CPUS, "-"
    )
    ours = {r.cpu: r.mca for r in rows if r.variant == "avx2"}
    lines = [
        f"avx2 vs OpenVINO's AVX2 loop on {r.cpu}: {r.mca / ours[r.cpu]:.2f}x faster (modeled)"
        for r in ref
        if r.cpu in ours
    ]
    return ref, lines


def _sources_at(rev: str, dst: Path) -> Path:
    for name in ("bnn_internal.h", "bnn.h", "bnn_avx2.c", "bnn_avx512.c", "bnn_neon.c"):
        text = subprocess.run(
            ["git", "-C", str(ROOT), "show", f"{rev}:runtime/{name}"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        (dst / name).write_text(text)
    return dst


def model_variant(
    name: str, rev: str | None = None, cpus: tuple[str, ...] | None = None
) -> list[Row]:
    """Rows for one variant (raises ToolMissing when a tool is not installed)."""
    v = VARIANTS[name]
    find_mca()  # a missing llvm-mca is reported before anything is compiled
    cc = find_cc(v)
    with tempfile.TemporaryDirectory() as tmp:
        src = _sources_at(rev, Path(tmp)) if rev else RUNTIME
        asm = compile_asm(v, cc, src)
    mtriple = v.mtriple
    if name == "neon-armhf" and re.search(r"^\s*\.thumb", asm, re.M):
        mtriple = "thumbv7-linux-gnueabihf"
    return model_loop(name, extract_loop(asm), mtriple, cpus or v.cpus, Path(cc).name)


def mca_version() -> str:
    try:
        out = subprocess.run([find_mca(), "--version"], capture_output=True, text=True).stdout
    except (ToolMissing, OSError):
        return "?"
    m = re.search(r"LLVM version ([\d.]+)", out)
    return m.group(1) if m else "?"


def format_rows(rows: list[Row]) -> str:
    head = (
        f"{'variant':<13} {'core':<15} {'mca':>6} {'mca-bound':>9} {'pipe-bound':>10}   "
        "loop: insts, vector ops, bMAC/iter"
    )
    out = [head]
    for r in rows:
        out.append(
            f"{r.variant:<13} {r.cpu:<15} {r.mca:>6.2f} {r.mca_bound:>9.2f} {r.pipe_bound:>10.2f}"
            f"   {r.insts}, {r.vec_ops}, {r.bmac}"
        )
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--variant", action="append", choices=sorted(VARIANTS))
    ap.add_argument("--rev", help="model runtime/ as of this git revision")
    args = ap.parse_args(argv)
    names = args.variant or list(VARIANTS)
    print(
        f"\n## Modeled inner loops (llvm-mca {mca_version()}, cycles per 512 binary MACs"
        f"{', runtime/ at ' + args.rev if args.rev else ''}; lower is better)"
    )
    rows: list[Row] = []
    notes = []
    for name in names:
        try:
            rows += model_variant(name, args.rev)
        except ToolMissing as e:
            notes.append(f"skipped {name}: {e}")
        except (RuntimeError, subprocess.CalledProcessError) as e:
            notes.append(f"failed {name}: {e}")
    comparison: list[str] = []
    if any(r.variant == "avx2" for r in rows):
        try:
            ref, comparison = openvino_comparison(rows)
            rows += ref
        except (ToolMissing, RuntimeError) as e:
            notes.append(f"failed openvino-avx2: {e}")
    if rows:
        print(format_rows(rows))
    for line in comparison:
        print(line)
    for n in notes:
        print(n)
    return 0


if __name__ == "__main__":
    sys.exit(main())
