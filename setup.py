"""Build step for bnn-export's native runtime (metadata lives in pyproject.toml).

`pip install -e .` / `pip install .` compile:
  * bnn_export/runtime/_lib/libbnn_kernels.so  - the binary-conv kernels (always)
  * bnn_export/runtime/_lib/libbnn_ort.so      - the onnxruntime custom-op library, only
    when onnxruntime C/C++ headers are found: $ORT_INCLUDE_DIR, else
    build/ort-headers/include (filled by scripts/fetch_ort_headers.sh), else
    ort-headers/include (present in an sdist, see below).
Kernel sources by machine: x86-64 AVX2/AVX-512 variants, aarch64 NEON, 32-bit ARM NEON.
Environment: CC / CXX pick the compilers (default cc / c++).

`python setup.py sdist` (or `python -m build --sdist`) ships runtime/ (MANIFEST.in) and
copies the onnxruntime headers it builds with into the sdist as ort-headers/ (with their
COPYRIGHT file), so `pip install bnn-export-*.tar.gz` on a device (e.g. an aarch64
Raspberry Pi) builds both libraries without any other download. It refuses to make an sdist
without the headers: run scripts/fetch_ort_headers.sh first.
"""

from __future__ import annotations

import os
import platform
import shutil
import subprocess
import sys
from pathlib import Path

from setuptools import Command, Distribution, setup
from setuptools.command.build_py import build_py
from setuptools.command.sdist import sdist

ROOT = Path(__file__).resolve().parent
RUNTIME = ROOT / "runtime"
LIB_DIR = ROOT / "bnn_export" / "runtime" / "_lib"
OBJ_DIR = ROOT / "build" / "native"
# Headers shipped inside an sdist (the folder name in the release tree).
SDIST_ORT_HEADERS = "ort-headers"
KERNEL_LIB = "libbnn_kernels.so"
ORT_LIB = "libbnn_ort.so"

COMMON_CFLAGS = [
    "-std=c11",
    "-O3",
    "-fPIC",
    "-ffp-contract=off",
    "-fvisibility=hidden",
    "-pthread",
    "-Wall",
]
X86_SOURCES = {
    "bnn_core.c": [],
    "bnn_avx2.c": ["-mavx2", "-mpopcnt"],
    "bnn_avx512.c": ["-mavx512f", "-mavx512vl", "-mavx512bw", "-mavx512vpopcntdq"],
}
ARM64_SOURCES = {"bnn_core.c": [], "bnn_neon.c": []}
# 32-bit ARM: NEON is optional there, so only the NEON file gets -mfpu=neon (checked at
# run time through AT_HWCAP)
ARM32_SOURCES = {"bnn_core.c": [], "bnn_neon.c": ["-mfpu=neon"]}


def _log(msg: str) -> None:
    print(f"[bnn-native] {msg}", file=sys.stderr, flush=True)


def _run(cmd: list[str]) -> None:
    _log(" ".join(cmd))
    subprocess.run(cmd, check=True)


def _sources() -> dict[str, list[str]]:
    machine = platform.machine().lower()
    if machine in ("x86_64", "amd64"):
        return X86_SOURCES
    if machine in ("aarch64", "arm64"):
        return ARM64_SOURCES
    if machine.startswith("armv7") or machine.startswith("armv8l"):
        return ARM32_SOURCES
    return {"bnn_core.c": []}


def find_ort_include() -> Path | None:
    env = os.environ.get("ORT_INCLUDE_DIR")
    candidates = [Path(env)] if env else []
    candidates.append(ROOT / "build" / "ort-headers" / "include")
    candidates.append(ROOT / SDIST_ORT_HEADERS / "include")
    for c in candidates:
        if (c / "onnxruntime_lite_custom_op.h").is_file():
            return c
        if (c / "onnxruntime" / "onnxruntime_lite_custom_op.h").is_file():
            return c / "onnxruntime"
    if env:
        raise RuntimeError(
            f"ORT_INCLUDE_DIR={env} has no onnxruntime_lite_custom_op.h; point it at the "
            "include/ directory of an onnxruntime release (>= 1.17)"
        )
    return None


def build_native() -> list[Path]:
    """Compile the native libraries into LIB_DIR; returns the files built."""
    cc = os.environ.get("CC", "cc")
    cxx = os.environ.get("CXX", "c++")
    OBJ_DIR.mkdir(parents=True, exist_ok=True)
    LIB_DIR.mkdir(parents=True, exist_ok=True)
    objs = []
    for src, flags in _sources().items():
        obj = OBJ_DIR / (Path(src).stem + ".o")
        _run([cc, *COMMON_CFLAGS, *flags, "-c", str(RUNTIME / src), "-o", str(obj)])
        objs.append(str(obj))
    kernel = LIB_DIR / KERNEL_LIB
    _run([cc, "-shared", "-pthread", f"-Wl,-soname,{KERNEL_LIB}", "-o", str(kernel), *objs])
    built = [kernel]

    ort_lib = LIB_DIR / ORT_LIB
    include = find_ort_include()
    if include is None:
        if ort_lib.exists():
            ort_lib.unlink()
        _log(
            "onnxruntime headers not found: built the kernel library only. For the "
            "onnxruntime custom-op library run `bash scripts/fetch_ort_headers.sh` (or set "
            "ORT_INCLUDE_DIR) and reinstall."
        )
        return built
    _run(
        [
            cxx,
            "-std=c++17",
            "-O2",
            "-fPIC",
            "-shared",
            "-fvisibility=hidden",
            "-Wall",
            f"-I{include}",
            f"-I{RUNTIME}",
            str(RUNTIME / "ort_ops.cc"),
            "-o",
            str(ort_lib),
            f"-L{LIB_DIR}",
            "-l:" + KERNEL_LIB,
            "-Wl,-rpath,$ORIGIN",
            "-pthread",
        ]
    )
    built.append(ort_lib)
    return built


class BuildNative(Command):
    description = "compile the bnn native kernel and onnxruntime op libraries"
    user_options: list[tuple[str, str | None, str]] = []

    def initialize_options(self) -> None:
        pass

    def finalize_options(self) -> None:
        pass

    def run(self) -> None:
        build_native()


class BuildPyWithNative(build_py):
    def run(self) -> None:
        built = build_native()
        super().run()
        if not getattr(self, "editable_mode", False):
            dest = Path(self.build_lib) / "bnn_export" / "runtime" / "_lib"
            dest.mkdir(parents=True, exist_ok=True)
            for f in built:
                shutil.copy2(f, dest / f.name)


class SdistWithOrtHeaders(sdist):
    """An sdist that builds the onnxruntime op library anywhere: it carries the headers."""

    def make_release_tree(self, base_dir: str, files: list[str]) -> None:
        super().make_release_tree(base_dir, files)
        include = find_ort_include()
        if include is None:
            raise RuntimeError(
                "an sdist must carry the onnxruntime headers (so that a device can build "
                "libbnn_ort.so): run `bash scripts/fetch_ort_headers.sh` or set "
                "ORT_INCLUDE_DIR, then build the sdist again"
            )
        dest = Path(base_dir) / SDIST_ORT_HEADERS
        if dest.exists():
            shutil.rmtree(dest)
        shutil.copytree(include, dest / "include")
        notice = include.parent / "COPYRIGHT"
        if notice.is_file():
            shutil.copy2(notice, dest / "COPYRIGHT")
        else:
            (dest / "COPYRIGHT").write_text(
                f"onnxruntime headers copied from {include}; ONNX Runtime is MIT licensed "
                "(https://github.com/microsoft/onnxruntime/blob/main/LICENSE).\n"
            )
        _log(f"sdist: onnxruntime headers from {include} -> {SDIST_ORT_HEADERS}/include")


class NativeDistribution(Distribution):
    """The wheel carries native libraries: tag it for the platform, not py3-none-any."""

    def has_ext_modules(self) -> bool:
        return True


setup(
    cmdclass={
        "build_py": BuildPyWithNative,
        "build_native": BuildNative,
        "sdist": SdistWithOrtHeaders,
    },
    distclass=NativeDistribution,
)
