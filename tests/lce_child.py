"""Child process for LCE conversion tests (the converter can abort its process).

Usage: python -m tests.lce_child ARCH BINARIZER PAD_VALUE OUT.json
Builds the Larq model, freezes its quantized kernels (as bnn-export's LCE worker does),
converts it with ``larq_compute_engine.convert_keras_model``,
runs both on a random batch and writes the operator list (builtin or custom code) and
the largest logit difference as JSON.
"""

from __future__ import annotations

import json
import os
import sys

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")


def op_names(flatbuffer: bytes) -> list[str]:
    import tflite

    model = tflite.Model.GetRootAsModel(flatbuffer, 0)
    builtin = {v: k for k, v in vars(tflite.BuiltinOperator).items() if not k.startswith("_")}
    out: list[str] = []
    for s in range(model.SubgraphsLength()):
        graph = model.Subgraphs(s)
        for i in range(graph.OperatorsLength()):
            code = model.OperatorCodes(graph.Operators(i).OpcodeIndex())
            custom = code.CustomCode()
            if custom:
                out.append(custom.decode())
            else:
                out.append(builtin.get(max(code.BuiltinCode(), code.DeprecatedBuiltinCode()), "?"))
    return out


def _trained_like_batch_norm(model: object) -> None:
    """Random non-zero BN statistics, as after training. With fresh BN (bias 0) a binary
    conv sum of exactly 0 meets a sign; LCE's fused bitpacked output does not give it
    +1 as sign(0) = +1 does (seen with equal_bits' balanced filters on +1-padded
    borders), so fresh models would test that tie, not the conversion."""
    import numpy as np
    import tf_keras as keras

    rng = np.random.default_rng(1)
    for layer in model.layers:  # type: ignore[attr-defined]
        if isinstance(layer, keras.layers.BatchNormalization):
            n = layer.beta.shape[0]
            layer.beta.assign(rng.uniform(-0.5, 0.5, n))
            layer.moving_mean.assign(rng.uniform(-0.5, 0.5, n))
            layer.moving_variance.assign(rng.uniform(0.5, 2.0, n))


def main() -> None:
    arch_name, binarizer, pad_value, out = sys.argv[1:5]
    import larq_compute_engine as lce
    import numpy as np
    from larq_compute_engine.tflite.python.interpreter import Interpreter

    from bnn_export.binarizers import get
    from bnn_export.models import arch_spec
    from bnn_export.models.larq_build import (
        binary_layers,
        build_larq_model,
        freeze_quantized_kernels,
    )

    arch = arch_spec(arch_name, pad_value=float(pad_value))
    model = build_larq_model(arch, get(binarizer), seed=0)
    _trained_like_batch_norm(model)
    c, h, w = arch["kwargs"]["input_shape"]
    x = np.random.default_rng(0).standard_normal((4, h, w, c)).astype(np.float32)
    want = model(x, training=False).numpy()  # before freezing: freezing must not change it
    # as bnn-export's LCE worker does: quantized kernels become constants first (SiMaN's
    # per-epoch clipping computes its kernel in the graph, which LCE does not fold)
    freeze_quantized_kernels(model)
    flatbuffer = lce.convert_keras_model(model)
    got = Interpreter(flatbuffer, num_threads=1).predict(x)
    result = {
        "ops": op_names(flatbuffer),
        "binary_layers": len(binary_layers(model)),
        "max_abs_diff": float(np.abs(got - want).max()),
        "max_abs_logit": float(np.abs(want).max()),
    }
    with open(out, "w") as f:
        json.dump(result, f)


if __name__ == "__main__":
    main()
