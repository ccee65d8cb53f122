#!/usr/bin/env bash
# Short GPU checks of the PyTorch trainer (docs/training.md): CUDA fp32, bf16, fp16 and a
# 2-process data-parallel run, one line PASS/FAIL/SKIP each. Exits 0 with "no GPU" when
# torch sees no CUDA device; otherwise non-zero when any check fails.
# Usage: scripts/gpu-check.sh [python]   (default: .venv/bin/python, else python3)
set -u
cd "$(dirname "$0")/.."
PY="${1:-}"
if [ -z "$PY" ]; then
    if [ -x .venv/bin/python ]; then PY=.venv/bin/python; else PY=python3; fi
fi
export TF_CPP_MIN_LOG_LEVEL=3
gpus=$("$PY" -c "import torch; print(torch.cuda.device_count() if torch.cuda.is_available() else 0)" 2>/dev/null || echo 0)
if [ "$gpus" = "0" ]; then
    echo "no GPU: torch sees no CUDA device; nothing to check"
    exit 0
fi
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
failed=0
check() {  # name, then the train arguments
    local name=$1
    shift
    local t0=$SECONDS
    if "$PY" -m bnn_export train --epochs 1 --batch-size 128 --quiet --json -o "$work/$name" "$@" \
        >"$work/$name.out" 2>"$work/$name.err" &&
        "$PY" - "$work/$name" <<'PYEOF'
import json, sys
import numpy as np
from safetensors.numpy import load_file
run = sys.argv[1]
m = json.load(open(f"{run}/metrics.json"))
t = load_file(f"{run}/checkpoint.safetensors")
assert all(v.dtype == np.float32 for v in t.values() if v.dtype.kind == "f"), "non-fp32 tensors"
assert m["test_accuracy"] > 0.3, f"accuracy {m['test_accuracy']}"
PYEOF
    then
        echo "PASS $name ($((SECONDS - t0))s)"
    else
        echo "FAIL $name: $(tail -n 3 "$work/$name.err" | tr '\n' ' ')"
        failed=1
    fi
}
check cuda-fp32 --device cuda --precision fp32
if "$PY" -c "import torch, sys; sys.exit(0 if torch.cuda.is_bf16_supported() else 1)"; then
    check cuda-bf16 --device cuda --precision bf16
else
    echo "SKIP cuda-bf16: this GPU has no bfloat16"
fi
check cuda-fp16 --device cuda --precision fp16
if [ "$gpus" -ge 2 ]; then
    check cuda-2proc --device cuda --nproc 2
else
    echo "SKIP cuda-2proc: needs 2 GPUs (NCCL runs one process per GPU); checking 2 CPU processes"
    check cpu-2proc --device cpu --nproc 2
fi
exit $failed
