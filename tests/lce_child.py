"""Child process for LCE conversion tests (the converter can abort its process).

Usage: python -m tests.lce_child ARCH BINARIZER PAD_VALUE OUT.json
Builds the Larq model, converts it with ``larq_compute_engine.convert_keras_model`` and
writes the list of its operators (builtin code or custom code) as JSON.
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


def main() -> None:
    arch_name, binarizer, pad_value, out = sys.argv[1:5]
    import larq_compute_engine as lce

    from bnn_export.binarizers import get
    from bnn_export.models import arch_spec
    from bnn_export.models.larq_build import binary_layers, build_larq_model

    model = build_larq_model(arch_spec(arch_name, pad_value=float(pad_value)), get(binarizer))
    flatbuffer = lce.convert_keras_model(model)
    result = {"ops": op_names(flatbuffer), "binary_layers": len(binary_layers(model))}
    with open(out, "w") as f:
        json.dump(result, f)


if __name__ == "__main__":
    main()
