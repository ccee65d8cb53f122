# bnn-export: `make demo` runs the main job, `make test` runs the test suite.
# Both install everything first (`make setup`), so they work on a fresh clone.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.bnn-export-installed
CONSTRAINTS := requirements/constraints.txt
DEMO_DIR ?= demo-out
BNN := $(VENV)/bin/bnn-export
export TF_USE_LEGACY_KERAS := 1
export TF_CPP_MIN_LOG_LEVEL := 3

ARM_ROOTFS ?= .cache/arm-rootfs
# pytest workers (pytest-xdist, whole files per worker): one per core, at most 4 (each
# imports torch, TensorFlow and OpenVINO); PYTEST_JOBS=0 runs in this process
PYTEST_JOBS ?= $(shell $(PYTHON) -c "import os; print(min(4, os.cpu_count() or 1))")

.PHONY: setup system-deps demo test test-avx2 test-arm lint typecheck pytest bench arm-bench clean

setup: system-deps $(STAMP)

system-deps:
	@bash scripts/install-system-deps.sh

NATIVE_SOURCES := setup.py $(wildcard runtime/*.c runtime/*.h runtime/*.cc)

$(STAMP): pyproject.toml $(CONSTRAINTS) $(NATIVE_SOURCES)
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	# onnxruntime C/C++ headers for our custom-op library (or set ORT_INCLUDE_DIR)
	bash scripts/fetch_ort_headers.sh
	$(PY) -m pip install -q --upgrade pip
	# torch 2.13.0 CPU from the wheel on disk first: a bare `torch` would pull CUDA.
	$(PY) -m pip install -q -c $(CONSTRAINTS) torch==2.13.0
	$(PY) -m pip install -q -c $(CONSTRAINTS) -e '.[all]'
	touch $(STAMP)

demo: setup
	rm -rf $(DEMO_DIR) && mkdir -p $(DEMO_DIR)
	$(BNN) train --model digits --dataset digits --binarizer ste --epochs 20 -o $(DEMO_DIR)/digits-ste
	$(BNN) convert $(DEMO_DIR)/digits-ste --format tflite -o $(DEMO_DIR)/digits-ste.tflite
	$(BNN) convert $(DEMO_DIR)/digits-ste --format onnx --target onnxruntime -o $(DEMO_DIR)/digits-ste.onnx
	$(BNN) convert $(DEMO_DIR)/digits-ste --format onnx --target openvino -o $(DEMO_DIR)/digits-ste-openvino.onnx
	$(BNN) bench $(DEMO_DIR)/digits-ste $(DEMO_DIR)/digits-ste.tflite $(DEMO_DIR)/digits-ste.onnx \
		$(DEMO_DIR)/digits-ste-openvino.onnx --reference $(DEMO_DIR)/digits-ste \
		--report $(DEMO_DIR)/report --min-agreement 0.995

lint: setup
	$(VENV)/bin/ruff check bnn_export tests
	$(VENV)/bin/ruff format --check bnn_export tests

typecheck: setup
	$(VENV)/bin/mypy

pytest: setup
	$(PY) -m pytest -q -n $(PYTEST_JOBS) --dist loadfile --durations=15 $(PYTEST_ARGS)

test: lint typecheck pytest

# `make test` as a machine without AVX-512 (e.g. AMD Zen 3) runs it: our binary kernels on
# their avx2 variant (also in subprocesses and the onnxruntime op), torch's oneDNN and
# OpenVINO (oneDNN and its own kernels) on AVX2 code paths. onnxruntime's own float kernels
# still use what this CPU has (docs/testing.md).
test-avx2:
	BNN_KERNEL=avx2 ONEDNN_MAX_CPU_ISA=AVX2 OV_CPU_MAX_ISA=AVX2 $(MAKE) test

# The .onnx device path on aarch64, emulated: builds (first time ~10 min, then cached) an
# aarch64 Debian userland in $(ARM_ROOTFS), installs bnn-export's sdist there and runs
# tests/test_arm_userland.py (needs root: debootstrap, chroot, binfmt_misc).
test-arm: setup
	bash scripts/build-arm-userland.sh $(ARM_ROOTFS)
	BNN_EXPORT_ARM_ROOTFS=$(abspath $(ARM_ROOTFS)) $(PY) -m pytest -q -rs tests/test_arm_userland.py $(PYTEST_ARGS)

# On an AVX-512 machine the kernel table runs twice: as it is, and as an AVX2-only CPU
# (our avx2 variant, OpenVINO limited to AVX2: oneDNN and its own kernels).
bench: setup
	$(PY) -m benchmarks.bench_kernels
	@if grep -q avx512_vpopcntdq /proc/cpuinfo 2>/dev/null; then \
	  echo "== as an AVX2-only CPU: BNN_KERNEL=avx2 ONEDNN_MAX_CPU_ISA=AVX2 OV_CPU_MAX_ISA=AVX2 =="; \
	  BNN_KERNEL=avx2 ONEDNN_MAX_CPU_ISA=AVX2 OV_CPU_MAX_ISA=AVX2 $(PY) -m benchmarks.bench_kernels; fi
	$(PY) -m benchmarks.bench_e2e
	$(PY) -m benchmarks.bench_modeled
	$(PY) -m benchmarks.bench_imagenet
	$(PY) -m benchmarks.bench_data
	$(PY) -m benchmarks.bench_train

# Static layer-level benchmark binaries for any ARM board (no Python, no onnxruntime):
# build/arm-bench/bnn_bench-aarch64 and bnn_bench-armhf from runtime/bench_main.c with the
# library's flags (-O3, bnn_neon.c with -mfpu=neon on armhf). Usage: docs/kernels.md.
ARM_BENCH_DIR := build/arm-bench
ARM_BENCH_CFLAGS := -std=c11 -O3 -ffp-contract=off -pthread -static -Iruntime
ARM_BENCH_SRC := runtime/bench_main.c runtime/bnn_core.c runtime/bnn_neon.c runtime/bnn.h runtime/bnn_internal.h

arm-bench: $(ARM_BENCH_DIR)/bnn_bench-aarch64 $(ARM_BENCH_DIR)/bnn_bench-armhf

$(ARM_BENCH_DIR)/bnn_bench-aarch64: $(ARM_BENCH_SRC)
	@command -v aarch64-linux-gnu-gcc >/dev/null || { echo "aarch64-linux-gnu-gcc missing: apt-get install gcc-aarch64-linux-gnu libc6-dev-arm64-cross (or make system-deps)"; exit 1; }
	mkdir -p $(ARM_BENCH_DIR)
	aarch64-linux-gnu-gcc $(ARM_BENCH_CFLAGS) runtime/bench_main.c runtime/bnn_core.c runtime/bnn_neon.c -o $@ -lm

$(ARM_BENCH_DIR)/bnn_bench-armhf: $(ARM_BENCH_SRC)
	@command -v arm-linux-gnueabihf-gcc >/dev/null || { echo "arm-linux-gnueabihf-gcc missing: apt-get install gcc-arm-linux-gnueabihf libc6-dev-armhf-cross (or make system-deps)"; exit 1; }
	mkdir -p $(ARM_BENCH_DIR)
	arm-linux-gnueabihf-gcc $(ARM_BENCH_CFLAGS) -mfpu=neon -c runtime/bnn_neon.c -o $(ARM_BENCH_DIR)/bnn_neon-armhf.o
	arm-linux-gnueabihf-gcc $(ARM_BENCH_CFLAGS) runtime/bench_main.c runtime/bnn_core.c $(ARM_BENCH_DIR)/bnn_neon-armhf.o -o $@ -lm

clean:
	rm -rf $(VENV) build *.egg-info $(DEMO_DIR) .pytest_cache .mypy_cache .ruff_cache
