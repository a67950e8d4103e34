"""The TensorFlow ops a recovered network may hold, one reader per op type.

A reader turns one ``NodeDef`` on the inference path into an ``Op``: its kind, its data inputs
(tensors computed from the network's input) and its parameters (variables or constants), with
the attributes checked against what the mapping-table schema can express. Readers are registered
by op type; registering a type twice is an error, and an op type without a reader is reported
with the node that holds it.
"""

import dataclasses

import numpy as np

NHWC = "NHWC"
PADDINGS = ("SAME", "VALID")
# NHWC axes: the spatial ones and the channel one
SPATIAL_AXES = (1, 2)
NHWC_RANK = 4
UNKNOWN_OP = "this op type is not supported"
# ops with a reason of their own
NOT_SUPPORTED = {
    "SpaceToBatchND": "a dilated (atrous, rate > 1) convolution as TensorFlow runs it; dilations are not supported",
    "BatchToSpaceND": "a dilated (atrous, rate > 1) convolution as TensorFlow runs it; dilations are not supported",
    "If": "tf.cond as a function call (TF 2's control flow) is not supported; TF 1's Switch/Merge is",
    "StatelessIf": "tf.cond as a function call (TF 2's control flow) is not supported; TF 1's Switch/Merge is",
    "FusedBatchNormGrad": "a gradient op on the path: choose the forward pass's outputs with --outputs",
}


@dataclasses.dataclass(frozen=True)
class Variable:
    """A parameter read from a variable of the checkpoint."""

    name: str
    shape: tuple | None


@dataclasses.dataclass(frozen=True)
class Constant:
    """A parameter given by a constant of the graph (value None where the graph's constant is too large)."""

    node: str
    value: np.ndarray | None = dataclasses.field(compare=False)


@dataclasses.dataclass
class Op:
    """One op of the inference network: ``kind``, the TF node, data inputs, parameters and attributes."""

    kind: str
    node: object  # reader.Node
    inputs: tuple  # data inputs (Refs), before resolving pass-through ops
    params: dict = dataclasses.field(default_factory=dict)  # role -> input Ref (resolved to Variable/Constant later)
    attrs: dict = dataclasses.field(default_factory=dict)


class OpProblem(ValueError):
    """The node cannot be part of a recovered network; the message says why (and what would fix it)."""


READERS = {}


def reader(*op_types):
    """Register the decorated function as the reader of ``op_types``; a type registered twice is an error."""

    def register(function):
        for op_type in op_types:
            if op_type in READERS:
                raise ValueError(f"op type {op_type} already has a reader ({READERS[op_type].__name__})")
            READERS[op_type] = function
        return function

    return register


def read_op(node, shapes, constant=lambda ref: False):
    """The ``Op`` for ``node``; ``shapes(ref)`` gives a tensor's recorded shape (a tuple or None), ``constant(ref)``
    whether the tensor is a constant of the graph.

    Raises ``OpProblem`` for an op type without a reader or attributes the schema cannot express.
    """
    if node.op in NOT_SUPPORTED:
        raise OpProblem(NOT_SUPPORTED[node.op])
    function = READERS.get(node.op)
    if function is None:
        raise OpProblem(UNKNOWN_OP)
    return function(node, shapes, constant)


def _nhwc(node):
    layout = node.attr("data_format", NHWC)
    if layout != NHWC:
        raise OpProblem(f"data_format {layout} (only NHWC is supported)")


def _window(node, key):
    # [1, h, w, 1] -> (h, w); the schema has one stride for both axes
    values = node.attr(key)
    if not isinstance(values, list) or len(values) != NHWC_RANK or values[0] != 1 or values[3] != 1:
        raise OpProblem(f"{key} {values} is not [1, h, w, 1]")
    return values[1], values[2]


def _stride(node):
    height, width = _window(node, "strides")
    if height != width:
        raise OpProblem(f"strides {height}x{width} differ per axis (the schema takes one stride)")
    return height


def _padding(node):
    padding = node.attr("padding")
    if padding not in PADDINGS:
        raise OpProblem(f"padding {padding!r} (only SAME and VALID are supported)")
    return padding


def _split(node, data, params):
    # the node's data inputs by position: those that carry the map, and the named parameters
    inputs = node.data_inputs
    if len(inputs) != len(data) + len(params):
        raise OpProblem(f"has {len(inputs)} inputs, expected {len(data) + len(params)}")
    return tuple(inputs[i] for i in data), {role: inputs[i] for role, i in params.items()}


def _undilated(node):
    dilations = node.attr("dilations", [1, 1, 1, 1])
    if any(d != 1 for d in dilations):
        raise OpProblem(f"dilations {dilations} (only 1 is supported)")


def _convolution(node, kind, kernel):
    # a 2-D convolution of input 0 by the kernel variable at input 1 (slim's `kernel` parameter)
    _nhwc(node)
    _undilated(node)
    data, params = _split(node, (0,), {kernel: 1})
    return Op(kind, node, data, params, {"stride": _stride(node), "padding": _padding(node)})


@reader("Conv2D")
def _conv(node, shapes, constant):
    return _convolution(node, "conv", "weights")


@reader("DepthwiseConv2dNative")
def _depthwise(node, shapes, constant):
    return _convolution(node, "depthwise", "depthwise_weights")


@reader("MatMul")
def _matmul(node, shapes, constant):
    if node.attr("transpose_a", False) or node.attr("transpose_b", False):
        raise OpProblem("a transposed MatMul (TF-Slim's fully_connected multiplies [N, in] by [in, out])")
    data, params = _split(node, (0,), {"weights": 1})
    return Op("matmul", node, data, params)


@reader("BiasAdd", "BiasAddV1")
def _bias_add(node, shapes, constant):
    _nhwc(node)
    data, params = _split(node, (0,), {"biases": 1})
    return Op("bias_add", node, data, params)


@reader("FusedBatchNorm", "FusedBatchNormV2", "FusedBatchNormV3")
def _batch_norm(node, shapes, constant):
    _nhwc(node)
    data, params = _split(node, (0,), {"gamma": 1, "beta": 2, "moving_mean": 3, "moving_variance": 4})
    return Op("batch_norm", node, data, params,
              {"epsilon": float(node.attr("epsilon", 1e-4)), "training": bool(node.attr("is_training", True))})


@reader("Relu", "Relu6")
def _relu(node, shapes, constant):
    data, _ = _split(node, (0,), {})
    return Op(node.op.lower(), node, data)


@reader("Mul")
def _mul(node, shapes, constant):
    # a map times a constant (the graph's `x * 0.5`); dropout's masks are looked through before this
    inputs = node.data_inputs
    factors = [position for position, ref in enumerate(inputs) if constant(ref)]
    if len(inputs) != 2 or len(factors) != 1:
        raise OpProblem("a product of two computed tensors (only a multiplication by a constant is supported)")
    data, params = _split(node, (1 - factors[0],), {"factor": factors[0]})
    return Op("scale", node, data, params)


@reader("MaxPool", "AvgPool")
def _pool(node, shapes, constant):
    _nhwc(node)
    data, _ = _split(node, (0,), {})
    kind = "max_pool" if node.op == "MaxPool" else "avg_pool"
    return Op(kind, node, data, {}, {"kernel": list(_window(node, "ksize")), "stride": _stride(node),
                                     "padding": _padding(node)})


@reader("ConcatV2", "Concat")
def _concat(node, shapes, constant):
    inputs = node.data_inputs
    if node.op == "ConcatV2":
        data, axis = inputs[:-1], inputs[-1]
    else:
        axis, data = inputs[0], inputs[1:]
    if len(data) < 2:
        raise OpProblem("joins fewer than two tensors")
    return Op("concat", node, tuple(data), {"axis": axis})


@reader("Add", "AddV2")
def _add(node, shapes, constant):
    data, _ = _split(node, (0, 1), {})
    return Op("add", node, data)


@reader("AddN")
def _add_n(node, shapes, constant):
    if len(node.data_inputs) < 2:
        raise OpProblem("sums fewer than two tensors")
    return Op("add", node, node.data_inputs)


@reader("Squeeze")
def _squeeze(node, shapes, constant):
    data, _ = _split(node, (0,), {})
    return Op("squeeze", node, data, {}, {"axes": list(node.attr("squeeze_dims", []))})


@reader("Reshape")
def _reshape(node, shapes, constant):
    data, params = _split(node, (0,), {"shape": 1})
    return Op("reshape", node, data, params)


@reader("Mean")
def _mean(node, shapes, constant):
    data, params = _split(node, (0,), {"axes": 1})
    return Op("mean", node, data, params, {"keep_dims": bool(node.attr("keep_dims", False))})


@reader("Pad", "PadV2")
def _pad(node, shapes, constant):
    roles = {"paddings": 1, "constant": 2} if node.op == "PadV2" else {"paddings": 1}
    data, params = _split(node, (0,), roles)
    return Op("pad", node, data, params)
