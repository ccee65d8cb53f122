"""The export graph: a framework-neutral list of layers that converters consume.

A PyTorch model is traced with ``torch.fx`` (binary layers kept whole) and every node
is mapped, by the op table (``convert/ops``), to a ``Node`` holding the op's typed
attributes with numpy parameters in NCHW / OIHW layout. Binary layers carry what their
binarizer exports (``WeightExport``, ``ActivationExport``), so converters never see
binarizer names. Anything the table does not cover is refused with an error naming the
layer.
"""

from __future__ import annotations

import dataclasses
import operator
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import fx, nn

from bnn_export.binarizers.exports import ActivationExport
from bnn_export.convert.ops import OPS, NoAttrs, Op, get_op
from bnn_export.convert.ops.base import BATCH, BatchSize, Call, TensorArg
from bnn_export.convert.ops.float_layers import BatchNormAttrs
from bnn_export.errors import BnnExportError
from bnn_export.models.layers import _BinaryBase

__all__ = ["OPS", "Graph", "Node", "fold_bn", "fuse_rsign", "graph_from_torch", "infer_shapes"]


@dataclass
class Node:
    """One op applied to the outputs of ``inputs`` (node names); ``attrs`` is an instance
    of the op's ``attrs_type`` (a frozen dataclass, checked here; typed access:
    ``node.definition.attrs(node)``), ``module`` the PyTorch module it was traced from."""

    name: str
    op: str
    inputs: list[str]
    attrs: Any = field(default_factory=NoAttrs)
    module: str | None = None

    def __post_init__(self) -> None:
        expected = get_op(self.op).attrs_type
        if not isinstance(self.attrs, expected):
            raise BnnExportError(
                f"node {self.name!r}: op {self.op!r} takes {expected.__name__} attributes, "
                f"got {type(self.attrs).__name__}"
            )

    @property
    def definition(self) -> Op[Any]:
        return OPS[self.op]

    @property
    def label(self) -> str:
        """The name to report: the PyTorch module's, else the node's."""
        return self.module or self.name


@dataclass
class Graph:
    nodes: list[Node]
    output: str
    input_shape: tuple[int, int, int]  # C, H, W
    meta: dict[str, Any] = field(default_factory=dict)

    def node(self, name: str) -> Node:
        for n in self.nodes:
            if n.name == name:
                return n
        raise KeyError(name)

    def consumers(self, name: str) -> list[Node]:
        return [n for n in self.nodes if name in n.inputs]

    def binary_nodes(self) -> list[Node]:
        return [n for n in self.nodes if n.definition.binary]

    def bit_ratios(self) -> dict[str, float]:
        """Fraction of +1 weights of each binary layer, keyed by module name."""
        return {n.label: float((n.attrs.weights.bits == 1).mean()) for n in self.binary_nodes()}

    def shapes(self) -> dict[str, tuple[int, ...]]:
        """Per-node output shapes for batch 1 (run through numpy shape rules)."""
        return infer_shapes(self)


class _Tracer(fx.Tracer):
    """Keeps binary layers and the ops' leaf modules (``Op.leaf``: RSign, RPReLU) whole."""

    def __init__(self) -> None:
        super().__init__()
        self.record_stack_traces = True  # where a refused call is in the user's source
        self.leaves = tuple(m for op in OPS.values() if op.leaf for m in op.modules)

    def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
        return isinstance(m, (_BinaryBase, *self.leaves)) or super().is_leaf_module(m, qualname)


def _module_op(name: str, m: nn.Module) -> tuple[Op[Any], Any]:
    """The one op of the table that claims module ``m``, with its attributes."""
    for op in OPS.values():
        if isinstance(m, op.modules) and (attrs := op.from_module(name, m)) is not None:
            return op, attrs
    raise BnnExportError(
        f"layer {name!r} of type {type(m).__name__} cannot be exported",
        hint="supported: " + ", ".join(op.pattern for op in OPS.values() if op.pattern),
    )


def _function_op(call: Call) -> tuple[Op[Any], Any] | None:
    """The one op of the table that claims a traced call, if any."""
    for op in OPS.values():
        claims = (
            call.target in op.methods
            if isinstance(call.target, str)
            else call.target in op.functions
        )
        if claims and (attrs := op.from_call(call)) is not None:
            return op, attrs
    return None


def _where(n: fx.Node) -> str:
    """Where a traced call is in the user's model: the module it is in and its source."""
    parts = []
    stack = n.meta.get("nn_module_stack") or {}
    if stack:
        path, cls = list(stack.values())[-1]
        parts.append(f"in module {path!r} ({getattr(cls, '__name__', cls)})")
    else:
        parts.append("in the model's forward")
    lines = str(n.meta.get("stack_trace") or "").splitlines()
    for i, line in enumerate(lines):
        line = line.strip()
        if line.startswith("File ") and "/torch/" not in line:
            code = lines[i + 1].strip() if i + 1 < len(lines) else ""
            loc = line.removeprefix("File ").replace('"', "")
            parts.append(f"at {loc}" + (f": `{code}`" if code else ""))
            break
    return " ".join(parts)


def _constant(traced: fx.GraphModule, target: str) -> torch.Tensor:
    value: Any = traced
    for part in target.split("."):
        value = getattr(value, part)
    if not isinstance(value, torch.Tensor):
        raise BnnExportError(f"attribute {target!r} of the model is not a tensor")
    return value.detach()


def _static(v: Any) -> bool:
    """Whether a traced value is known at export time (no graph tensor, no batch size)."""
    if isinstance(v, TensorArg | BatchSize):
        return False
    if isinstance(v, list | tuple):
        return all(_static(x) for x in v)
    if isinstance(v, dict):
        return all(_static(x) for x in v.values())
    return True


def _shape_of(t: TensorArg) -> tuple[Any, ...]:
    return (BATCH, *t.shape[1:])


def _shape_call(n: fx.Node, args: list[Any], kwargs: dict[str, Any]) -> tuple[bool, Any]:
    """``x.size()``, ``x.size(i)``, ``x.shape``, ``x.dim()``, and indexing the shape:
    (True, value) where ``n`` is one of those on a graph tensor."""
    first = args[0] if args else None
    if isinstance(first, TensorArg):
        if n.op == "call_method" and n.target == "size":
            dim = args[1] if len(args) > 1 else kwargs.get("dim")
            shape = _shape_of(first)
            return True, shape if dim is None else shape[dim]
        if n.op == "call_method" and n.target == "dim":
            return True, len(first.shape)
        if n.op == "call_function" and n.target is getattr and args[1] == "shape":
            return True, _shape_of(first)
    if (
        n.op == "call_function"
        and n.target is operator.getitem
        and isinstance(first, tuple)
        and any(isinstance(v, BatchSize) for v in first)
    ):
        return True, first[args[1]]
    return False, None


def _to_call_value(v: Any) -> Any:
    """Constant tensors as float32 numpy for ``Call`` (ops never see torch tensors)."""
    if isinstance(v, torch.Tensor):
        return v.detach().cpu().numpy().astype(np.float32)
    if isinstance(v, list):
        return [_to_call_value(x) for x in v]
    if isinstance(v, tuple):
        return tuple(_to_call_value(x) for x in v)
    if isinstance(v, dict):
        return {k: _to_call_value(x) for k, x in v.items()}
    return v


def graph_from_torch(model: nn.Module, input_shape: tuple[int, int, int]) -> Graph:
    """Trace a PyTorch model (eval mode) into an export graph.

    Calls on constants alone (parameters, buffers: ``self.scale.view(1, -1, 1, 1)``) are
    computed here; shape arithmetic (``x.size(0)``, ``x.shape``) is followed with the
    batch size symbolic. RSign modules are fused into the binary layers they feed
    (``fuse_rsign``). Anything else the table does not take is refused, naming the op,
    where it is in the model and what is supported.
    """
    model.eval()
    try:
        traced = fx.GraphModule(model, _Tracer().trace(model))
    except (torch.fx.proxy.TraceError, TypeError, RuntimeError) as exc:
        raise BnnExportError(f"cannot trace the model for export: {exc}") from None
    modules = dict(traced.named_modules())
    c, h, w = (int(v) for v in input_shape)
    nodes: list[Node] = []
    shapes: dict[str, tuple[int, ...]] = {}
    env: dict[str, Any] = {}  # fx node -> TensorArg, or a value known at export time
    output = ""

    def value(a: Any) -> Any:
        return fx.node.map_arg(a, lambda x: env[x.name])

    def add(node: Node) -> None:
        inputs = [shapes[i] for i in node.inputs] or [(1, c, h, w)]
        shapes[node.name] = node.definition.out_shape(node, inputs)
        nodes.append(node)
        env[node.name] = TensorArg(node.name, shapes[node.name])

    for n in traced.graph.nodes:
        if n.op == "placeholder":
            if nodes:
                raise BnnExportError(f"the model takes more than one input ({n.name})")
            add(Node(n.name, "input", []))
        elif n.op == "get_attr":
            env[n.name] = _constant(traced, n.target)
        elif n.op == "call_module":
            op, attrs = _module_op(n.target, modules[n.target])
            args = [a for a in value(n.args) if isinstance(a, TensorArg)]
            add(Node(n.name, op.name, [a.name for a in args], attrs, module=n.target))
        elif n.op in ("call_function", "call_method"):
            args, kwargs = list(value(n.args)), dict(value(n.kwargs))
            is_shape, result = _shape_call(n, args, kwargs)
            if is_shape:
                env[n.name] = result
                continue
            if _static(args) and _static(kwargs):  # constants only: computed now
                with torch.no_grad():
                    if n.op == "call_method":
                        env[n.name] = getattr(args[0], n.target)(*args[1:], **kwargs)
                    else:
                        env[n.name] = n.target(*args, **kwargs)
                continue
            call = Call(n.target, _to_call_value(tuple(args)), _to_call_value(kwargs), _where(n))
            if not (found := _function_op(call)):
                supported = ", ".join(
                    op.pattern for op in OPS.values() if op.functions or op.methods
                )
                raise BnnExportError(
                    f"operation {call.label} ({n.name}) {call.where} cannot be exported",
                    hint=f"supported functions and methods: {supported}; modules: "
                    + ", ".join(op.pattern for op in OPS.values() if op.modules),
                )
            op, attrs = found
            add(Node(n.name, op.name, [t.name for t in call.tensors], attrs))
        elif n.op == "output":
            out = value(n.args[0])
            if not isinstance(out, TensorArg):
                raise BnnExportError(
                    f"the model's output must be one tensor, got {type(out).__name__}"
                )
            output = out.name
    graph = Graph(nodes, output, (c, h, w))
    fuse_rsign(graph)
    infer_shapes(graph)  # validates the wiring
    return graph


def fuse_rsign(graph: Graph) -> None:
    """Fold every RSign (sign(x - threshold[c])) into the binary layers it feeds: their
    activation becomes ``threshold`` (bit = +1 where x >= threshold[c]; x - t >= 0 is
    exactly x >= t in IEEE floats) and the RSign node disappears. An RSign feeding
    anything else, or a binary layer whose activation is not a plain sign, is refused."""
    for rsign in [n for n in graph.nodes if n.op == "rsign"]:
        consumers = graph.consumers(rsign.name)
        if rsign.name == graph.output or not consumers:
            raise BnnExportError(
                f"RSign {rsign.label!r} is the model's output or feeds nothing; an RSign "
                "is exported only as the threshold of the binary layers it feeds"
            )
        for m in consumers:
            if not m.definition.binary:
                raise BnnExportError(
                    f"RSign {rsign.label!r} feeds {m.label!r} ({m.definition.pattern or m.op}),"
                    " not a binary layer; an RSign is exported only as the threshold of "
                    "the binary layers it feeds",
                    hint="feed its output only to BinaryConv2d / BinaryLinear layers",
                )
            if m.attrs.activation.kind != "sign":
                raise BnnExportError(
                    f"RSign {rsign.label!r} feeds binary layer {m.label!r}, whose binarizer's "
                    f"activation is {m.attrs.activation.kind!r}, not a plain sign; the "
                    "threshold cannot be fused into it",
                    hint="use a binarizer whose activation is a plain sign (ste, irnet, "
                    "equal_bits, gwt) after an RSign",
                )
        threshold = rsign.attrs.threshold
        for m in consumers:
            act = ActivationExport("threshold", threshold=threshold.copy())
            m.attrs = dataclasses.replace(m.attrs, activation=act)
            m.inputs = [rsign.inputs[0] if i == rsign.name else i for i in m.inputs]
        graph.nodes.remove(rsign)


def _affine_step(op: str, reverse: bool, v: np.ndarray) -> tuple[np.ndarray, np.ndarray] | None:
    """u = op(x, v) as u = p * x + q (per channel), or None when it is not affine in x."""
    one, zero = np.ones_like(v), np.zeros_like(v)
    if op == "Add":
        return one, v
    if op == "Sub":
        return (-one, v) if reverse else (one, -v)
    if op == "Mul":
        return v, zero
    if op == "Div" and not reverse:
        return 1.0 / v, zero
    return None


def fold_affine_into_thresholds(graph: Graph) -> Graph:
    """A copy of ``graph`` in which every chain of per-channel constant arithmetic
    (``x * s + b``, ``x - c``, batch norm, ...; through identities and flattens) that
    feeds only a binary layer binarizing with a sign or a threshold is folded into that
    layer's threshold: bit = +1 where s x + b >= t becomes x >= (t - b) / s, or x <= (t - b) / s
    for s < 0 (``ActivationExport.below``); a chain with a zero scale stays. The chain's
    arithmetic and identity nodes go (its flattens stay). An RPReLU at the chain's source
    (or feeding the layer directly) gives its final ``+ zeta`` to the threshold too and
    stays as ``prelu(x - gamma)``.

    For OpenVINO: its CPU plugin fuses an activation, such per-channel Multiply/Add and the
    binarizing FakeQuantize into the preceding convolution's post-ops and then binarizes
    wrongly (found by tests/test_fuzz_export.py, openvino 2026.4: conv -> PReLU / ReLU6 ->
    x * s + b -> 1x1 binary conv, every output off); with the chain folded into
    FakeQuantize's per-channel range (and, for s < 0, its output range reversed) it
    computes right. The thresholds are rounded to float32 once, so a value within an ulp
    of one may binarize the other way than s x + b computed in float32 does (as for any
    threshold; RSign's x - t >= 0 is exactly x >= t)."""
    shapes = graph.shapes()
    by_name = {n.name: n for n in graph.nodes}
    removed: set[str] = set()
    replaced: dict[str, Node] = {}

    def feeds_only_its_consumer(name: str) -> bool:
        return name != graph.output and len(graph.consumers(name)) == 1

    for b in graph.binary_nodes():
        act = b.attrs.activation
        if act.kind not in ("sign", "threshold") or not b.inputs:
            continue
        features = shapes[b.inputs[0]][1]  # of the layer's input: channels, or [N, F]'s F
        # bit input = scale * u + shift, per feature, with u the tensor reached so far;
        # index: the channel of u each feature reads (a flatten maps F onto C x H x W)
        scale, shift = np.ones(features), np.zeros(features)
        index = np.arange(features)
        src, chain = b.inputs[0], []
        while True:
            p = by_name.get(src)
            if (
                p is None
                or p.op not in ("const_arith", "bn", "identity", "flatten")
                or not feeds_only_its_consumer(src)
            ):
                break
            if p.op == "flatten":  # kept; the constants before it are per channel
                u = shapes[p.inputs[0]] if p.inputs else (1, *graph.input_shape)
                index = index // int(np.prod(u[2:], dtype=np.int64))
            elif p.op == "const_arith":
                v = np.asarray(p.attrs.value, np.float64)
                step = _affine_step(p.attrs.op, p.attrs.reverse, v if v.ndim == 0 else v[index])
                if step is None:
                    break
                mul, add = step  # u = mul * x + add
                scale, shift = scale * mul, scale * add + shift
            elif p.op == "bn":  # batch norm (evaluation): u = a x + b per channel
                a, bias = (np.asarray(v, np.float64) for v in p.attrs.folded())
                scale, shift = scale * a[index], scale * bias[index] + shift
            chain.append(p)
            src = p.inputs[0] if p.inputs else ""
        # ReActNet's RPReLU ends in + zeta per channel, the same per-channel Add before
        # FakeQuantize: its zeta folds too (the node stays, with zeta 0 and no Add)
        r = by_name.get(src)
        rprelu = (
            r
            if r is not None
            and r.op == "rprelu"
            and feeds_only_its_consumer(src)
            and np.any(r.attrs.zeta != 0)
            else None
        )
        if rprelu is not None:
            shift = scale * np.asarray(rprelu.attrs.zeta, np.float64)[index] + shift
        else:  # a flatten nearest the source ends the chain unless constants lie beyond it
            while chain and chain[-1].op == "flatten":
                chain.pop()
        if not (rprelu is not None or any(p.op in ("const_arith", "bn") for p in chain)) or not (
            np.all(scale != 0) and np.all(np.isfinite(scale))
        ):
            continue
        t = np.zeros(features) if act.threshold is None else act.threshold.astype(np.float64)
        threshold = ((t - shift) / scale).astype(np.float32)
        if not np.all(np.isfinite(threshold)):
            continue
        below = scale < 0  # s x + b >= t with s < 0: x <= (t - b) / s
        activation = ActivationExport(
            "threshold", threshold=threshold, below=below if below.any() else None
        )
        if rprelu is not None:
            zeta = np.zeros_like(rprelu.attrs.zeta)
            replaced[rprelu.name] = dataclasses.replace(
                rprelu, attrs=dataclasses.replace(rprelu.attrs, zeta=zeta)
            )
        # the chain's flattens stay, rewired past the constants that go
        upstream = list(chain[-1].inputs) if chain else list(b.inputs)
        for p in reversed(chain):
            if p.op == "flatten":
                replaced[p.name] = dataclasses.replace(p, inputs=upstream)
                upstream = [p.name]
            else:
                removed.add(p.name)
        replaced[b.name] = dataclasses.replace(
            b, inputs=upstream, attrs=dataclasses.replace(b.attrs, activation=activation)
        )
    if not replaced:
        return graph
    nodes = [replaced.get(n.name, n) for n in graph.nodes if n.name not in removed]
    return Graph(nodes, graph.output, graph.input_shape, dict(graph.meta))


def infer_shapes(graph: Graph) -> dict[str, tuple[int, ...]]:
    """Output shape of every node for a batch of one (NCHW), by each op's shape rule."""
    shapes: dict[str, tuple[int, ...]] = {}
    for n in graph.nodes:
        inputs = [shapes[i] for i in n.inputs] or [(1, *graph.input_shape)]
        shapes[n.name] = n.definition.out_shape(n, inputs)
    return shapes


def fold_bn(bn: Node) -> tuple[np.ndarray, np.ndarray]:
    """Batch norm as y = x * scale + shift (per channel)."""
    attrs: BatchNormAttrs = bn.attrs
    return attrs.folded()
