"""What one op of the export graph is: the ``Op`` base class and the table of ops.

An op is defined once, as a subclass of ``Op`` registered with ``@register``: the PyTorch
code it is traced from (``modules`` / ``functions`` and ``from_module`` /
``from_function``), its typed attributes (a frozen dataclass, ``attrs_type``), its output
shape for a batch of one, its ONNX emission and its Keras emission. The tracer
(``graph.graph_from_torch``), the shape rules (``graph.infer_shapes``) and both emitters
(``onnx_export.to_onnx``, ``keras_export.build_keras_model``) only look ops up in
``OPS``, so adding an op is adding one definition.

Emission gets an emitter object (``onnx_export.OnnxEmitter``, ``keras_export.
KerasEmitter``) that knows the tensors built so far; Keras emission reaches TensorFlow
only through it (``e.keras``, ``e.tf``, ``e.lq``), so importing the table never imports
TensorFlow (nor onnx: the ONNX emitter holds the protobuf helpers).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass, is_dataclass
from typing import TYPE_CHECKING, Any, ClassVar, Generic, TypeVar, cast

import numpy as np
import torch
from torch import nn

from bnn_export.errors import BnnExportError

if TYPE_CHECKING:
    from bnn_export.convert.graph import Node
    from bnn_export.convert.keras_export import KerasEmitter
    from bnn_export.convert.onnx_export import OnnxEmitter

Shape = tuple[int, ...]
A = TypeVar("A")


@dataclass(frozen=True, eq=False)
class OpAttrs:
    """Base of every op's attributes (a frozen dataclass per op): fields, not keys."""

    def __getitem__(self, key: str) -> Any:
        raise TypeError(
            f"{type(self).__name__} is a dataclass: read attrs.{key}, not attrs[{key!r}]"
            + (
                " (the PyTorch module name is node.module, or node.label)"
                if key == "module"
                else ""
            )
        )


@dataclass(frozen=True, eq=False)
class NoAttrs(OpAttrs):
    """The attributes of an op that has none."""


class Op(ABC, Generic[A]):
    """One op of the export graph (see the module docstring). ``A``: its attributes."""

    #: the key of the op in ``OPS`` and ``Node.op``
    name: ClassVar[str]
    #: the frozen dataclass of its attributes (``Node.attrs``)
    attrs_type: ClassVar[type] = NoAttrs
    #: the PyTorch code it is traced from, in words (error hints)
    pattern: ClassVar[str] = ""
    #: module types, functions and tensor methods (names, e.g. ``"view"``) the tracer
    #: offers to ``from_module`` / ``from_call``
    modules: ClassVar[tuple[type[nn.Module], ...]] = ()
    functions: ClassVar[tuple[Callable[..., Any], ...]] = ()
    methods: ClassVar[tuple[str, ...]] = ()
    #: the tracer keeps ``modules`` whole (leaf modules, like binary layers), not traced into
    leaf: ClassVar[bool] = False
    #: a binary layer (``Graph.binary_nodes``)
    binary: ClassVar[bool] = False

    def attrs(self, node: Node) -> A:
        """The node's attributes, typed (``Node`` checked their type when it was made)."""
        return cast(A, node.attrs)

    def from_module(self, name: str, m: nn.Module) -> A | None:
        """The attributes of module ``m`` (an instance of one of ``modules``), or None when
        ``m`` is not this op; raises BnnExportError for a variant that cannot be exported."""
        return None

    def from_function(self, target: Callable[..., Any], inputs: int) -> A | None:
        """The attributes of a call of ``target`` (one of ``functions``) on ``inputs``
        tensors, or None when the call is not this op (ops that need the call's other
        arguments override ``from_call`` instead)."""
        return None

    def from_call(self, call: Call) -> A | None:
        """The attributes of a traced call (a function of ``functions`` or a method of
        ``methods``), or None when the call is not this op; raises BnnExportError for a
        variant that cannot be exported. Default: ``from_function`` for functions."""
        if isinstance(call.target, str):
            return None
        return self.from_function(call.target, len(call.tensors))

    @abstractmethod
    def out_shape(self, node: Node, inputs: list[Shape]) -> Shape:
        """Output shape for a batch of one (NCHW / NC) from the input shapes; raises
        BnnExportError when the inputs do not fit."""

    @abstractmethod
    def to_onnx(self, node: Node, e: OnnxEmitter) -> str:
        """Emit the ONNX nodes of ``node``; returns its output tensor name (raise
        BnnExportError to refuse a target)."""

    @abstractmethod
    def to_keras(self, node: Node, e: KerasEmitter) -> Any:
        """Build the tf-keras layers of ``node``; returns its output tensor (raise
        BnnExportError to refuse)."""

    def check_keras(self, node: Node) -> None:
        """Refuse what TFLite cannot express, cheaply (no TensorFlow import)."""


class BatchSize:
    """The batch dimension in a traced shape computation (``x.size(0)``, ``x.shape[0]``):
    unknown at export time (the exported models take any batch)."""

    def __repr__(self) -> str:
        return "N"


BATCH = BatchSize()


@dataclass(frozen=True)
class TensorArg:
    """A tensor argument of a traced call: the graph node that computes it, and its shape
    for a batch of one."""

    name: str
    shape: Shape


@dataclass(frozen=True)
class Call:
    """A traced function or method call, for ``Op.from_call``: ``args`` / ``kwargs`` as
    traced, with graph tensors as ``TensorArg``, constant tensors (parameters, buffers and
    what is computed from them alone) as float32 numpy arrays, shapes with ``BATCH``."""

    target: Any  # the function, or the method's name
    args: tuple[Any, ...]
    kwargs: dict[str, Any]
    where: str = ""  # where in the user's model (module path, source line), for messages

    @property
    def tensors(self) -> list[TensorArg]:
        """The tensor arguments, in order (lists such as ``torch.cat``'s flattened)."""
        out: list[TensorArg] = []

        def walk(v: Any) -> None:
            if isinstance(v, TensorArg):
                out.append(v)
            elif isinstance(v, list | tuple):
                for item in v:
                    walk(item)
            elif isinstance(v, dict):
                for item in v.values():
                    walk(item)

        walk(self.args)
        walk(self.kwargs)
        return out

    def arg(self, index: int, key: str, default: Any = None) -> Any:
        """Argument ``index`` (positional) or ``key`` (keyword), else ``default``."""
        if index < len(self.args):
            return self.args[index]
        return self.kwargs.get(key, default)

    @property
    def label(self) -> str:
        """The callee, in words."""
        if isinstance(self.target, str):
            return f"Tensor.{self.target}"
        module = getattr(self.target, "__module__", None) or ""
        name = getattr(self.target, "__name__", str(self.target))
        if module in ("_operator", "operator"):
            return f"operator.{name}"
        if module.startswith("torch"):
            return f"{module}.{name}".replace("torch.nn.functional", "F")
        return f"torch.{name}" if "built-in method" in repr(self.target) else name

    def refuse(self, why: str) -> BnnExportError:
        """The error for a variant of a supported call that cannot be exported."""
        return BnnExportError(f"{self.label} {self.where}: {why}".replace("  ", " "))


#: every op, by name, in registration order
OPS: dict[str, Op[Any]] = {}


def register(cls: type[Op[A]]) -> type[Op[A]]:
    """Class decorator: add an op to ``OPS`` (its name must be new, its attributes a
    frozen dataclass)."""
    name = cls.name
    if name in OPS:
        raise ValueError(
            f"op {name!r} is defined twice ({type(OPS[name]).__name__}, {cls.__name__})"
        )
    params = getattr(cls.attrs_type, "__dataclass_params__", None)
    if not (is_dataclass(cls.attrs_type) and issubclass(cls.attrs_type, OpAttrs)) or not (
        params and params.frozen
    ):
        raise TypeError(f"op {name!r}: attrs_type must be a frozen dataclass (an OpAttrs)")
    OPS[name] = cls()
    return cls


def unregister(name: str) -> None:
    """Remove an op from the table (tests that define a temporary op)."""
    OPS.pop(name, None)


def get_op(name: str) -> Op[Any]:
    try:
        return OPS[name]
    except KeyError:
        raise BnnExportError(f"unknown export op {name!r}; valid: {', '.join(OPS)}") from None


def to_numpy(t: torch.Tensor | None) -> np.ndarray | None:
    return None if t is None else t.detach().cpu().numpy().astype(np.float32)


def pair(v: Any) -> tuple[int, int]:
    if isinstance(v, str):
        raise BnnExportError(f"string padding {v!r} is not supported; use explicit integers")
    return (int(v), int(v)) if isinstance(v, int) else (int(v[0]), int(v[1]))
