"""Run an artifact locally: one ``Runner`` per runtime, all taking NCHW float32 batches.

- ``onnxruntime``: an .onnx with our custom ops (or standard ops only) in onnxruntime.
- ``openvino``: an .onnx of the openvino target, compiled for CPU with a static batch of 1
  (BinaryConvolution does not support dynamic shapes).
- ``lce``: a .tflite in Larq Compute Engine's interpreter (NHWC inside).
- ``torch``: a bnn-export checkpoint (the reference).
"""

from __future__ import annotations

import functools
import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from bnn_export.errors import BnnExportError

RUNTIMES = ("onnxruntime", "openvino", "lce", "torch")


@functools.cache
def openvino_core() -> Any:
    """The process's one ``openvino.Core``, created on first use and kept until exit.

    One Core per process is not only cheaper: OpenVINO's CPU plugin gives the calling thread
    its own signal stack (``sigaltstack``) when it first compiles, and a Core destroyed while
    a younger one is alive puts back a stack that is already freed. The next signal with a
    handler on the main thread (e.g. SIGCHLD once a torch ``DataLoader`` has had workers)
    then kills the process with SIGSEGV (tests/test_runners_openvino.py reproduces it).

    ``ONEDNN_MAX_CPU_ISA`` (e.g. ``AVX2``, to run as a CPU without AVX-512 would) caps only
    the oneDNN part of OpenVINO's CPU plugin; its own kernels (BinaryConvolution,
    FakeQuantize) read ``OV_CPU_MAX_ISA``. Half-capped, the plugin mixes 8- and 16-channel
    blocked layouts and can fail to compile ("unsupported reorder case"), and its binary
    convolution still runs AVX-512 code. Where only the oneDNN variable is set, the Core is
    created with ``OV_CPU_MAX_ISA`` set to the same value.
    """
    isa = os.environ.get("ONEDNN_MAX_CPU_ISA")
    if isa and not os.environ.get("OV_CPU_MAX_ISA"):
        os.environ["OV_CPU_MAX_ISA"] = isa
    import openvino as ov

    return ov.Core()


def openvino_runtime_kernels(compiled: Any) -> list[tuple[str, str]]:
    """(layer type, kernel) of every node of a compiled OpenVINO model's runtime graph, in
    execution order, e.g. ``("BinaryConvolution", "jit_avx2_u1")``."""
    kernels = []
    for op in compiled.get_runtime_model().get_ordered_ops():
        rt = op.get_rt_info()
        kernels.append((rt["layerType"].astype(str), rt["primitiveType"].astype(str)))
    return kernels


@dataclass
class Runner:
    name: str
    version: str
    num_threads: int
    input_shape: tuple[int, ...]  # C, H, W
    init_seconds: float = 0.0
    info: dict[str, Any] = field(default_factory=dict)

    def predict_one(self, x: np.ndarray) -> np.ndarray:
        """Logits for a batch of one [1, C, H, W]."""
        raise NotImplementedError

    def predict(self, x: np.ndarray, batch_size: int = 64) -> np.ndarray:
        """Logits for [N, C, H, W]."""
        self.check_input(x)
        return np.concatenate([self.predict_one(x[i : i + 1]) for i in range(len(x))])

    def check_input(self, x: np.ndarray) -> None:
        if x.dtype != np.float32:
            raise BnnExportError(f"input dtype {x.dtype} given; the model takes float32")
        if tuple(x.shape[1:]) != tuple(self.input_shape):
            raise BnnExportError(
                f"input shape {tuple(x.shape[1:])} does not match the model's input "
                f"{tuple(self.input_shape)} (C, H, W)",
                hint="pass a dataset whose images the model was exported for (--dataset)",
            )


class OnnxRuntimeRunner(Runner):
    def __init__(self, model: bytes, *, num_threads: int = 1) -> None:
        import onnxruntime as ort

        from bnn_export.runtime.onnx_session import onnx_session

        t0 = time.perf_counter()
        self.session = onnx_session(model, num_threads=num_threads)
        shape = self.session.get_inputs()[0].shape[1:]
        super().__init__(
            "onnxruntime",
            ort.__version__,
            num_threads,
            tuple(int(s) for s in shape),
            init_seconds=time.perf_counter() - t0,
        )
        self.input_name = self.session.get_inputs()[0].name
        from bnn_export.runtime.native import KernelError, available_kernels, kernel_name

        # the BinaryConv2d kernel variant in use (the op library shares the kernel library)
        try:
            self.info["bnn_kernel"] = kernel_name()
        except KernelError as exc:  # BNN_KERNEL names a variant this CPU or build lacks
            raise BnnExportError(
                str(exc),
                hint=f"unset BNN_KERNEL or set it to one of: auto, {', '.join(available_kernels())}",
            ) from None

    def predict_one(self, x: np.ndarray) -> np.ndarray:
        return np.asarray(self.session.run(None, {self.input_name: x})[0])

    def predict(self, x: np.ndarray, batch_size: int = 64) -> np.ndarray:
        self.check_input(x)
        out = [self.predict_one(x[i : i + batch_size]) for i in range(0, len(x), batch_size)]
        return np.concatenate(out)

    def outputs(self, x: np.ndarray) -> dict[str, np.ndarray]:
        """Every graph output by name, for the batch ``x`` (tests: exposed accumulators)."""
        self.check_input(x)
        names = [o.name for o in self.session.get_outputs()]
        return dict(zip(names, self.session.run(names, {self.input_name: x}), strict=True))


class OpenVinoRunner(Runner):
    def __init__(self, model: bytes, *, num_threads: int = 1) -> None:
        import openvino as ov

        t0 = time.perf_counter()
        core = openvino_core()
        ov_model = core.read_model(model, b"")
        shape = [int(d.get_length()) for d in ov_model.inputs[0].get_partial_shape()[1:]]
        ov_model.reshape([1, *shape])
        config: dict[str, Any] = {
            "INFERENCE_PRECISION_HINT": "f32",
            "INFERENCE_NUM_THREADS": int(num_threads),
        }
        snippets = "default"
        try:
            self.compiled = core.compile_model(ov_model, "CPU", config)
        except RuntimeError:
            # OpenVINO's CPU "snippets" subgraph compiler fails on some small graphs with one
            # thread ("Layout rank can't be larger than tensor rank"; found by
            # tests/test_fuzz_export.py); the same graph compiles with snippets disabled
            snippets = "disabled"
            try:
                self.compiled = core.compile_model(
                    ov_model, "CPU", {**config, "SNIPPETS_MODE": "DISABLE"}
                )
            except RuntimeError as exc:
                last = [line for line in str(exc).splitlines() if line.strip()][-1:]
                raise BnnExportError(
                    f"OpenVINO could not compile the model: {' '.join(last)}",
                    hint="run the onnxruntime target instead (--runtime onnxruntime)",
                ) from None
        self.request = self.compiled.create_infer_request()
        super().__init__(
            "openvino",
            ov.__version__,
            num_threads,
            tuple(shape),
            init_seconds=time.perf_counter() - t0,
        )
        ops = [layer for layer, _ in openvino_runtime_kernels(self.compiled)]
        self.info["runtime_ops"] = {t: ops.count(t) for t in sorted(set(ops))}
        if snippets != "default":
            self.info["snippets"] = snippets

    def predict_one(self, x: np.ndarray) -> np.ndarray:
        return np.asarray(self.request.infer({0: x})[0]).copy()

    def outputs(self, x: np.ndarray) -> dict[str, np.ndarray]:
        """Every graph output by name, for the batch ``x`` (run one sample at a time)."""
        self.check_input(x)
        per_sample = [self.request.infer({0: x[i : i + 1]}) for i in range(len(x))]
        out = {}
        for port in self.compiled.outputs:  # a port may carry several tensor names
            value = np.concatenate([np.asarray(r[port]).copy() for r in per_sample])
            out.update({name: value for name in port.get_names()})
        return out


class LceRunner(Runner):
    def __init__(
        self, flatbuffer: bytes, *, num_threads: int = 1, indirect_bgemm: bool = False
    ) -> None:
        import larq_compute_engine as lce
        from larq_compute_engine.tflite.python.interpreter import Interpreter

        t0 = time.perf_counter()
        self.interpreter = Interpreter(
            flatbuffer,
            num_threads=num_threads,
            use_reference_bconv=False,
            use_indirect_bgemm=indirect_bgemm,
            use_xnnpack=False,
        )
        h, w, c = self.interpreter.input_shapes[0][1:]
        super().__init__(
            "lce",
            getattr(lce, "__version__", "0.16.0"),
            num_threads,
            (c, h, w),
            init_seconds=time.perf_counter() - t0,
        )

    def predict_one(self, x: np.ndarray) -> np.ndarray:
        return np.asarray(self.interpreter.predict(np.transpose(x, (0, 2, 3, 1)))).reshape(1, -1)


class TorchRunner(Runner):
    def __init__(self, checkpoint: str | Path, *, num_threads: int = 1) -> None:
        import torch

        from bnn_export.checkpoint import load_checkpoint
        from bnn_export.models.torch_build import torch_model_from_checkpoint

        t0 = time.perf_counter()
        torch.set_num_threads(num_threads)
        self.checkpoint = load_checkpoint(checkpoint)
        self.model = torch_model_from_checkpoint(self.checkpoint)
        shape = tuple(self.checkpoint.arch["kwargs"]["input_shape"])
        super().__init__(
            "torch", torch.__version__, num_threads, shape, init_seconds=time.perf_counter() - t0
        )

    def predict_one(self, x: np.ndarray) -> np.ndarray:
        import torch

        with torch.no_grad():
            return np.asarray(self.model(torch.from_numpy(x)).numpy())

    def predict(self, x: np.ndarray, batch_size: int = 256) -> np.ndarray:
        from bnn_export.models.evaluation import predict

        self.check_input(x)
        return predict(self.model, x, batch_size)


def onnx_target(model_bytes: bytes) -> str:
    """The bnn-export target recorded in an .onnx file's metadata ('' if none)."""
    import onnx

    model = onnx.load_from_string(model_bytes)
    return {p.key: p.value for p in model.metadata_props}.get("bnn_export_target", "")


def open_runner(path: str | Path, *, runtime: str = "auto", num_threads: int = 1) -> Runner:
    """A runner for an artifact file, picking the runtime from its kind when ``auto``."""
    from bnn_export.artifacts import read_artifact

    p = Path(path)
    if p.is_dir() or p.suffix == ".safetensors":
        if runtime not in ("auto", "torch"):
            raise BnnExportError(f"{str(p)!r} is a checkpoint; it runs with --runtime torch")
        return TorchRunner(p, num_threads=num_threads)
    kind, data = read_artifact(p)
    if kind == "tflite":
        if runtime not in ("auto", "lce"):
            raise BnnExportError(f"{str(p)!r} is a .tflite file; it runs with --runtime lce")
        return LceRunner(data, num_threads=num_threads)
    if runtime == "auto":
        runtime = "openvino" if onnx_target(data) == "openvino" else "onnxruntime"
    if runtime == "openvino":
        return OpenVinoRunner(data, num_threads=num_threads)
    if runtime == "onnxruntime":
        return OnnxRuntimeRunner(data, num_threads=num_threads)
    raise BnnExportError(
        f"{str(p)!r} is an .onnx file; it runs with --runtime onnxruntime or openvino"
    )


def describe(runner: Runner) -> dict[str, Any]:
    return {
        "name": runner.name,
        "version": runner.version,
        "threads": runner.num_threads,
        **({"info": json.loads(json.dumps(runner.info))} if runner.info else {}),
    }
