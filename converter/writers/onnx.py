"""The ONNX format: the whole network of a mapping table's ``graph``, with a checkpoint's weights.

ONNX weights mean nothing without a graph, so this writer builds one from the table (``graph``,
``layers``, ``kinds``) and the plan's shapes, with TF-Slim's semantics made explicit: the graph runs
in NCHW; TensorFlow's 'SAME' padding becomes explicit pads where they are the same at every input
size (stride 1) and ``auto_pad: SAME_UPPER`` on strided windows, which the runtime computes as
TensorFlow does for the size it is given; average pooling excludes padding
(``count_include_pad=0``); batch norm uses the table's epsilon. Needs the ``onnx`` package only.
"""

import dataclasses
import functools
import math
import pathlib

import ml_dtypes
import numpy as np

import converter
from converter import graph, input_size, mapping
from converter._tf_rules import SAME, VALID, output_size, same_padding
from converter.errors import ConvertError
from converter.transforms import NCHW_TO_NHWC, NHWC_TO_NCHW
from converter.writers import _onnx_stream

# Opset 17 (2022) is deployable on every maintained runtime (onnxruntime >= 1.12, TensorRT >= 8.6,
# OpenVINO); later opsets change the ops written here only by adding types or attributes left unset.
DEFAULT_OPSET = 17
# The supported range: 13 (2020) is the oldest the tests cover, which every maintained runtime
# runs; 28 is the newest the pinned onnx defines and onnxruntime 1.32 runs.
MIN_OPSET = 13
MAX_OPSET = 28
OPSETS = range(MIN_OPSET, MAX_OPSET + 1)

NCHW = "nchw"
NHWC = "nhwc"
LAYOUTS = (NCHW, NHWC)
CHANNEL_AXIS = 1  # in the NCHW graph

DTYPES = ("float32", "float16")
# a floating-point type numpy does not count as one; the graph computes in DTYPES
BFLOAT16 = np.dtype(ml_dtypes.bfloat16)
INPUT_NAME = "input"
BATCH_DIM = "batch"
# ONNX's auto_pad that computes TensorFlow's 'SAME' pads from the input size (the odd one at the end)
SAME_UPPER = "SAME_UPPER"
HEIGHT_DIM, WIDTH_DIM = "height", "width"

# Slim's variable names under a layer scope (tf_slim.layers), which the table's onnx column keeps:
# the ONNX op input each feeds. A batch norm's inputs in BatchNormalization's order.
WEIGHTS = "weights"
BIASES = "biases"
BATCH_NORM = ("BatchNorm/gamma", "BatchNorm/beta", "BatchNorm/moving_mean", "BatchNorm/moving_variance")
KNOWN_PARAMS = (WEIGHTS, BIASES, *BATCH_NORM)
# a layer that is a batch norm alone (compute.op batch_norm: ResNet-v2's preact, postnorm) keeps slim's
# names directly under its scope, in BatchNormalization's order
NORM_PARAMS = ("gamma", "beta", "moving_mean", "moving_variance")
ACTIVATIONS = {"relu": "Relu", "relu6": "Clip"}
# the bounds of an activation run as Clip: relu6 is min(max(x, 0), 6)
CLIP_BOUNDS = {"relu6": (0.0, 6.0)}

# options meant for the plan, which reach every writer
PLAN_OPTIONS = ("include_top",)

GLOBAL = graph.GLOBAL
POOLS = {graph.MaxPool: "MaxPool", graph.AvgPool: "AveragePool"}


def _import_onnx():
    try:
        import onnx
    except ImportError:
        raise ConvertError("writing ONNX needs the onnx package: pip install 'ckpt-convert[onnx]'") from None
    return onnx


@dataclasses.dataclass
class _Value:
    """A tensor of the graph: its name and static shape (NCHW or [N, features], batch as None)."""

    name: str
    shape: tuple


class _GraphBuilder:
    """Builds the ONNX nodes of a table's graph, checking every shape on the way."""

    def __init__(self, onnx, plan, tensors, reserved, dtype="float32"):
        self.onnx = onnx
        self.dtype = np.dtype(dtype)
        self.plan = plan
        self.table = plan.table
        self.tensors = tensors  # initializer name -> its shape and dtype in the model (_Declared)
        self.used = set()
        self.nodes = []
        self.names = set(reserved)  # value names no node output may take
        self.points = {}  # end point -> _Value

    def _unique(self, name):
        candidate, index = name, 0
        while candidate in self.names:
            index += 1
            candidate = f"{name}_{index}"
        self.names.add(candidate)
        return candidate

    def op(self, op, inputs, name, shape, **attributes):
        """Append node ``op`` under a unique ``name`` (also its output's); returns the output."""
        name = self._unique(name)
        self.nodes.append(self.onnx.helper.make_node(op, inputs, [name], name=name, **attributes))
        return _Value(name, shape)

    def _initializer(self, layer, name):
        if name not in self.tensors:
            raise ConvertError(f"ONNX: layer {layer} needs tensor {name}, which the plan does not write")
        self.used.add(name)
        return name, self.tensors[name].shape

    def _vector(self, layer, name, size):
        name, shape = self._initializer(layer, name)
        if shape != (size,):
            raise ConvertError(f"ONNX: {name} has shape {list(shape)}; the weights of layer {layer} give {size} channels")
        return name

    def build(self, source):
        self.sequence(self.table.graph, source, "")
        unused = sorted(set(self.tensors) - self.used)
        if unused:
            raise ConvertError(f"ONNX: the graph uses no layer for {len(unused)} tensors of the plan: {', '.join(unused)}")
        return self.points

    def sequence(self, nodes, value, scope):
        """The output of ``nodes`` run one after the other on ``value``, recording named nodes' outputs."""
        for node in nodes:
            if not self.plan.keeps(node, scope):
                continue  # a group the plan leaves out (the auxiliary head, a dropped classifier)
            if node.input is not None:
                if node.input not in self.points:
                    raise ConvertError(f"ONNX: graph node {node.name or node} takes {node.input}, which is left out")
                value = self.points[node.input]
            value = _emit(node, self, value, scope)
            if node.name is not None:
                self.points[node.name] = value
        return value

    def concat(self, branches, inner):
        spatial = {b.shape[2:] for b in branches}
        if len(spatial) != 1:
            raise ConvertError(f"ONNX: concat in {inner or 'the graph'} joins maps of sizes {sorted(spatial)}")
        channels = sum(b.shape[CHANNEL_AXIS] for b in branches)
        return self.op("Concat", [b.name for b in branches], f"{inner}concat",
                       (None, channels, *branches[0].shape[2:]), axis=CHANNEL_AXIS)

    def flatten(self, order, value, inner):
        # flatten: true is [N, 1, 1, C] -> [N, C], the same in NCHW and NHWC; `spatial` flattens any
        # map in this graph's NCHW order (C, H, W), which the next row's transform (conv_to_linear_chw) matches
        if len(value.shape) != 4 or (order is graph.FLATTEN_1X1 and value.shape[2:] != (1, 1)):
            raise ConvertError(f"ONNX: flatten in {inner or 'the graph'} needs a 1x1 map, got shape {value.shape[1:]}")
        if order == graph.FLATTEN_HWC:  # TensorFlow's order: the map back to NHWC first
            value = self.op("Transpose", [value.name], f"{inner}Flatten/to_nhwc",
                            (None, *(value.shape[axis] for axis in NCHW_TO_NHWC[1:])), perm=list(NCHW_TO_NHWC))
        return self.op("Flatten", [value.name], f"{inner}Flatten", (None, math.prod(value.shape[1:])), axis=1)

    def add(self, node, value, inner):
        # a residual sum of the branches (an empty branch is the input), then the node's activation
        branches = [self.sequence(branch, value, inner) for branch in node.branches]
        shapes = {b.shape[1:] for b in branches}
        if len(shapes) != 1:
            raise ConvertError(f"ONNX: add in {inner or 'the graph'} sums maps of shapes {sorted(shapes)}")
        total = branches[0]
        for branch in branches[1:]:
            total = self.op("Add", [total.name, branch.name], f"{inner}add", total.shape)
        return self._activate(total, node.activation, inner)

    def _activate(self, value, activation, scope):
        # the activation a layer's kind or an add node names; none leaves the value as it is
        if not activation:
            return value
        if activation not in ACTIVATIONS:
            raise ConvertError(f"ONNX: unknown activation {activation!r} (known: {', '.join(ACTIVATIONS)})")
        inputs = [value.name]
        if activation in CLIP_BOUNDS:
            inputs += [self._scalar(bound, f"{scope}{activation}/{side}").name
                       for bound, side in zip(CLIP_BOUNDS[activation], ("min", "max"))]
        return self.op(ACTIVATIONS[activation], inputs, f"{scope}{activation.capitalize()}", value.shape)

    def _scalar(self, number, name):
        # a constant scalar in the model's dtype
        return self.op("Constant", [], name, (), value=self.onnx.numpy_helper.from_array(
            np.array(number, dtype=self.dtype)))

    def scale(self, factor, value, scope):
        # the map multiplied by a constant (a graph's `Mul` by a scalar)
        return self.op("Mul", [value.name, self._scalar(factor, f"{scope}scale/factor").name], f"{scope}scale",
                       value.shape)

    def pad(self, pads, value, scope):
        # explicit zero padding (tf.pad); ONNX order: every axis's begin, then every axis's end
        (top, bottom), (left, right) = pads
        _, channels, height, width = _feature_map(value, f"pad in {scope or 'the graph'}")
        amounts = self.op("Constant", [], f"{scope}Pad/paddings", (8,), value=self.onnx.numpy_helper.from_array(
            np.array([0, 0, top, left, 0, 0, bottom, right], dtype=np.int64)))
        return self.op("Pad", [value.name, amounts.name], f"{scope}Pad",
                       (None, channels, height + top + bottom, width + left + right))

    def pool(self, op, kernel, value, stride, padding, scope):
        _, channels, height, width = _feature_map(value, f"{op} in {scope or 'the graph'}")
        if kernel == GLOBAL:
            return self.op(f"Global{op}", [value.name], f"{scope}{op}", (None, channels, 1, 1))
        attributes = self._window(kernel, (height, width), stride, padding)
        if op == "AveragePool":
            attributes["count_include_pad"] = 0  # TF's SAME average excludes the padding
        shape = (None, channels, *self._spatial(kernel, (height, width), stride, padding, scope + op))
        return self.op(op, [value.name], f"{scope}{op}", shape, **attributes)

    @staticmethod
    def _window(kernel, size, stride, padding):
        if padding == SAME and input_size.same_pads_vary(kernel, stride) and input_size.runtime_pads(kernel, stride):
            # TensorFlow's 'SAME' at every input size: the runtime computes the pads, the extra one at the end
            return {"kernel_shape": list(kernel), "strides": [stride, stride], "auto_pad": SAME_UPPER}
        pads = [0, 0, 0, 0]  # ONNX order: h_begin, w_begin, h_end, w_end
        if padding == SAME:
            (pads[0], pads[2]), (pads[1], pads[3]) = (same_padding(n, k, stride) for n, k in zip(size, kernel))
        return {"kernel_shape": list(kernel), "strides": [stride, stride], "pads": pads}

    @staticmethod
    def _spatial(kernel, size, stride, padding, where):
        out = tuple(output_size(n, k, stride, padding) for n, k in zip(size, kernel))
        if min(out) < 1:
            raise ConvertError(f"ONNX: {where}: a {list(kernel)} window does not fit a {list(size)} map")
        return out

    def layer(self, layer, value, stride, padding):
        if layer not in self.plan.dims:
            raise ConvertError(f"ONNX: the graph needs layer {layer}, which the plan leaves out")
        row = self.table.layers[layer]
        scope = self.plan.scopes.get(layer, layer)  # the checkpoint's name where the table's carries sizes
        kind = row.kind
        prefix = mapping.bind_name(row.name("onnx"), self.plan.dims[layer])
        params = {tensor.key: f"{prefix}{mapping.SEPARATORS['onnx']}{tensor.key}" for tensor in kind.column("onnx")}
        if kind.compute.op == mapping.BATCH_NORM_OP:
            return self._batch_norm_layer(layer, row, kind, params, value, scope)
        if kind.compute.op in mapping.OP_KERNELS:
            return self._depthwise_layer(layer, row, scope, params, value, stride, padding)
        unknown = sorted(set(params) - set(KNOWN_PARAMS))
        if unknown or WEIGHTS not in params:
            raise ConvertError(
                f"ONNX: kind {kind.name} has onnx tensors {sorted(params)}; this writer knows "
                f"{', '.join(KNOWN_PARAMS)} and needs {WEIGHTS}"
            )
        compute = kind.compute
        weights, shape = self._initializer(layer, params[WEIGHTS])
        conv = compute.op == "conv"
        if conv and (len(value.shape) != 4 or len(shape) != 4 or shape[1] != value.shape[CHANNEL_AXIS]):
            raise ConvertError(
                f"ONNX: {weights} has shape {list(shape)}; a convolution on {value.shape[CHANNEL_AXIS]} "
                f"channels needs [out, {value.shape[CHANNEL_AXIS]}, kh, kw] (OIHW: transform hwio_to_oihw)"
            )
        if not conv and (len(value.shape) != 2 or len(shape) != 2 or shape[1] != value.shape[1]):
            raise ConvertError(
                f"ONNX: {weights} has shape {list(shape)}; a linear layer on {list(value.shape[1:])} "
                f"needs [out, in] on a flat input (transform conv1x1_to_linear, a flatten before it)"
            )
        inputs = [value.name, weights]
        if BIASES in params:
            inputs.append(self._vector(layer, params[BIASES], shape[0]))
        if conv:
            kernel = shape[2:]
            size = value.shape[2:]
            out = (None, shape[0], *self._spatial(kernel, size, stride, padding, layer))
            value = self.op("Conv", inputs, f"{scope}/Conv2D", out, **self._window(kernel, size, stride, padding))
        else:
            value = self.op("Gemm", inputs, f"{scope}/Gemm", (None, shape[0]), transB=1)
        if compute.batch_norm:
            if not all(key in params for key in BATCH_NORM):
                raise ConvertError(f"ONNX: kind {kind.name} has batch norm but not every one of {', '.join(BATCH_NORM)}")
            norm = [self._vector(layer, params[key], value.shape[CHANNEL_AXIS]) for key in BATCH_NORM]
            value = self.op("BatchNormalization", [value.name, *norm], f"{scope}/BatchNorm", value.shape,
                             epsilon=mapping.batch_norm_epsilon(self.table, kind))
        return self._activate(value, compute.activation, f"{scope}/")

    def _batch_norm_layer(self, layer, row, kind, params, value, scope):
        # BatchNormalization with the table's epsilon on the layer's input, then the kind's activation
        if sorted(params) != sorted(NORM_PARAMS):
            raise ConvertError(f"ONNX: kind {kind.name} (op batch_norm) has onnx tensors {sorted(params)}; "
                               f"it needs exactly {', '.join(NORM_PARAMS)}")
        if len(value.shape) != 4:
            raise ConvertError(f"ONNX: layer {layer} normalizes a map; its input has shape {list(value.shape[1:])}")
        norm = [self._vector(layer, params[key], value.shape[CHANNEL_AXIS]) for key in NORM_PARAMS]
        value = self.op("BatchNormalization", [value.name, *norm], f"{scope}/BatchNorm", value.shape,
                        epsilon=mapping.batch_norm_epsilon(self.table, kind))
        return self._activate(value, kind.compute.activation, f"{scope}/")

    def _depthwise_layer(self, layer, row, scope, params, value, stride, padding):
        # slim's depthwise convolution as a grouped Conv (group = its input channels) and, for a separable
        # layer, the 1x1 pointwise Conv after it (stride 1, VALID: tf.nn.separable_conv2d); the biases
        # follow the last of them, then batch norm and the activation
        kind = row.kind
        compute = kind.compute
        kernels = mapping.OP_KERNELS[compute.op]
        unknown = sorted(set(params) - {*kernels, BIASES, *BATCH_NORM})
        if unknown or not all(key in params for key in kernels):
            raise ConvertError(f"ONNX: kind {kind.name} has onnx tensors {sorted(params)}; a {compute.op} "
                               f"layer takes {', '.join(kernels)}, and {BIASES} or {', '.join(BATCH_NORM)}")
        channels = value.shape[CHANNEL_AXIS]
        weights, shape = self._initializer(layer, params[kernels[0]])
        if len(value.shape) != 4 or len(shape) != 4 or shape[1] != 1 or shape[0] % channels:
            raise ConvertError(f"ONNX: {weights} has shape {list(shape)}; a depthwise convolution on {channels} "
                               f"channels needs [{channels} * multiplier, 1, kh, kw] "
                               f"(transform depthwise_to_grouped_oihw)")
        last = len(kernels) == 1
        inputs = [value.name, weights] + ([self._vector(layer, params[BIASES], shape[0])]
                                          if last and BIASES in params else [])
        kernel, size = shape[2:], value.shape[2:]
        out = (None, shape[0], *self._spatial(kernel, size, stride, padding, layer))
        name = f"{scope}/depthwise" if last else f"{scope}/separable_conv2d/depthwise"
        value = self.op("Conv", inputs, name, out, group=channels, **self._window(kernel, size, stride, padding))
        if not last:
            weights, shape = self._initializer(layer, params[kernels[1]])
            if len(shape) != 4 or shape[1] != value.shape[CHANNEL_AXIS] or shape[2:] != (1, 1):
                raise ConvertError(f"ONNX: {weights} has shape {list(shape)}; the pointwise convolution on "
                                   f"{value.shape[CHANNEL_AXIS]} channels needs [out, {value.shape[CHANNEL_AXIS]}, "
                                   f"1, 1] (OIHW: transform hwio_to_oihw)")
            inputs = [value.name, weights] + ([self._vector(layer, params[BIASES], shape[0])]
                                              if BIASES in params else [])
            value = self.op("Conv", inputs, f"{scope}/separable_conv2d", (None, shape[0], *value.shape[2:]),
                            **self._window((1, 1), value.shape[2:], 1, VALID))
        if compute.batch_norm:
            if not all(key in params for key in BATCH_NORM):
                raise ConvertError(f"ONNX: kind {kind.name} has batch norm but not every one of "
                                   f"{', '.join(BATCH_NORM)}")
            norm = [self._vector(layer, params[key], value.shape[CHANNEL_AXIS]) for key in BATCH_NORM]
            value = self.op("BatchNormalization", [value.name, *norm], f"{scope}/BatchNorm", value.shape,
                            epsilon=mapping.batch_norm_epsilon(self.table, kind))
        return self._activate(value, compute.activation, f"{scope}/")


def _feature_map(value, where):
    """The NCHW shape of ``value``; a flat [N, features] value (after a flatten) has no map to pool or pad."""
    if len(value.shape) != 4:
        raise ConvertError(f"ONNX: {where} needs a feature map, but its input has shape {list(value.shape[1:])}; "
                           "check the graph's order")
    return value.shape


# the ONNX nodes of each graph node type: one emitter per converter.graph node class
@functools.singledispatch
def _emit(node, builder, value, scope):
    raise ConvertError(f"ONNX: no emitter for graph node {type(node).__name__}")


@_emit.register
def _(node: graph.Layer, builder, value, scope):
    return builder.layer(scope + node.layer, value, node.stride, node.padding)


@_emit.register
def _(node: graph.Pool, builder, value, scope):
    op = POOLS[type(node)]
    kernel = GLOBAL if node.is_global else node.window_for(value.shape[2:])
    return builder.pool(op, kernel, value, node.stride, node.padding, scope)


@_emit.register
def _(node: graph.Concat, builder, value, scope):
    inner = node.inner_scope(scope)
    return builder.concat([builder.sequence(branch, value, inner) for branch in node.branches], inner)


@_emit.register
def _(node: graph.Add, builder, value, scope):
    return builder.add(node, value, node.inner_scope(scope))


@_emit.register
def _(node: graph.Pad, builder, value, scope):
    return builder.pad(node.pads, value, scope)


@_emit.register
def _(node: graph.Scale, builder, value, scope):
    return builder.scale(node.factor, value, scope)


@_emit.register
def _(node: graph.Sequence, builder, value, scope):
    return builder.sequence(node.nodes, value, node.inner_scope(scope))


@_emit.register
def _(node: graph.Flatten, builder, value, scope):
    return builder.flatten(node.order, value, node.inner_scope(scope))


def _default_output(table, points):
    # the graph's last node; without it (a headless plan), the end point that node takes as input,
    # or the end point before it
    last = table.graph[-1]
    if last.name in points:
        return last.name
    if last.input in points:
        return last.input
    before = [node.name for node in table.graph[:-1] if node.name in points]
    if last.input is None and before and before[-1] == list(points)[-1]:
        return before[-1]
    raise ConvertError("ONNX: the plan leaves out the graph's output; name end points with --outputs")


def _check_options(onnx, opset, input_layout, dtype, options):
    # include_top is the plan's business (a headless plan drops the classifier); None is "not given"
    unknown = sorted(key for key, value in options.items() if key not in PLAN_OPTIONS and value is not None)
    if unknown:
        raise ConvertError(f"ONNX: unknown options {', '.join(unknown)}")
    if opset is None:
        opset = DEFAULT_OPSET
    if isinstance(opset, bool) or not isinstance(opset, int) or opset not in OPSETS:
        raise ConvertError(f"ONNX: opset {opset!r} is not supported; use {MIN_OPSET} to {MAX_OPSET} (default {DEFAULT_OPSET})")
    if opset > onnx.defs.onnx_opset_version():
        raise ConvertError(f"ONNX: opset {opset} is newer than the installed onnx package "
                           f"({onnx.__version__}, opset {onnx.defs.onnx_opset_version()}); upgrade onnx")
    if input_layout not in LAYOUTS:
        raise ConvertError(f"ONNX: input layout {input_layout!r} is not one of {', '.join(LAYOUTS)}")
    dtype = "float32" if dtype is None else str(dtype)
    if dtype not in DTYPES:
        raise ConvertError(f"ONNX: dtype {dtype} is not supported; use one of {', '.join(DTYPES)}")
    return opset, dtype


def check(plan, path, *, dtype=None, opset=None, input_layout=NCHW, outputs=None, external_data=None,
          external_data_path=None, **options):
    """The options this format takes (opset, layout, dtype), checked before writing and on a dry run."""
    _check_options(_import_onnx(), opset, input_layout, dtype, options)


@dataclasses.dataclass
class _Declared:
    """An initializer before its data is read: what the graph is built and checked with."""

    shape: tuple
    dtype: np.dtype


def _floating(dtype):
    return np.issubdtype(dtype, np.floating) or dtype == BFLOAT16


def _declared(plan, dtype):
    # each entry's shape in the file and its dtype there: floating tensors (every checkpoint variable
    # the plan reads, and floating fills) in the model's dtype
    declared = {}
    for entry in plan.entries:
        kind = np.dtype(entry.dtype or "float32") if entry.source is None else np.dtype(np.float32)
        declared[entry.key] = _Declared(tuple(entry.shape), np.dtype(dtype) if _floating(kind) else kind)
    return declared


def _cast(tensors, dtype):
    # the plan's tensors as the model stores them, one at a time
    for key, array in tensors:
        floating = _floating(array.dtype)
        yield key, np.ascontiguousarray(array, dtype=dtype if floating else array.dtype)


def build_model(plan, read, *, dtype=None, opset=None, input_layout=NCHW, outputs=None, **options):
    """Build the ONNX ``ModelProto`` of ``plan`` (target ``onnx``) with tensors read by ``read``.

    Args and errors as ``save_onnx``; returns the checked model (every tensor in memory) without writing it.
    """
    onnx = _import_onnx()
    model, dtypes = _declared_model(onnx, plan, dtype=dtype, opset=opset, input_layout=input_layout, outputs=outputs,
                                    **options)
    initializers = {tensor.name: tensor for tensor in model.graph.initializer}
    for key, array in _cast(plan.tensors(read), _model_dtype(dtype)):
        tensor = initializers[key]
        if tuple(array.shape) != tuple(tensor.dims) or array.dtype != dtypes[key]:
            raise ConvertError(f"ONNX: tensor {key} read as {array.dtype} {list(array.shape)}, "
                               f"declared {dtypes[key]} {list(tensor.dims)}")
        tensor.CopyFrom(onnx.numpy_helper.from_array(array, key))
    return model


def _model_dtype(dtype):
    return "float32" if dtype is None else str(dtype)


def _declared_model(onnx, plan, *, dtype=None, opset=None, input_layout=NCHW, outputs=None, **options):
    """The checked model of ``plan`` with every initializer declared (name, shape, type) but no data yet,
    and each initializer's numpy dtype."""
    opset, dtype = _check_options(onnx, opset, input_layout, dtype, options)
    if plan.target != "onnx":
        raise ConvertError(f"ONNX: the plan is for target {plan.target!r}; plan for 'onnx'")
    table = plan.table
    tensors = _declared(plan, dtype)
    spec = table.facts.input
    height, width, channels = *plan.input_size.hw, spec.channels
    # the graph is checked at the plan's input size; where every pad is either constant or computed by
    # the runtime (auto_pad), the input's height and width stay symbolic: one model for every size it takes
    dynamic = not input_size.pads_depend_on_size(table, plan.dims)
    declared = (HEIGHT_DIM, WIDTH_DIM) if dynamic else (height, width)
    elem_type = onnx.helper.np_dtype_to_tensor_dtype(np.dtype(dtype))
    # the input's and end points' names are the graph's interface; no inner node may take them
    builder = _GraphBuilder(onnx, plan, tensors, reserved=[INPUT_NAME, *graph.named(table.graph)], dtype=dtype)
    if input_layout == NHWC:
        graph_input = onnx.helper.make_tensor_value_info(INPUT_NAME, elem_type, [BATCH_DIM, *declared, channels])
        source = builder.op("Transpose", [INPUT_NAME], "input/to_nchw", (None, channels, height, width),
                             perm=list(NHWC_TO_NCHW))
    else:
        graph_input = onnx.helper.make_tensor_value_info(INPUT_NAME, elem_type, [BATCH_DIM, channels, *declared])
        source = _Value(INPUT_NAME, (None, channels, height, width))
    points = builder.build(source)

    wanted = [_default_output(table, points)] + ([outputs] if isinstance(outputs, str) else list(outputs or []))
    missing = [name for name in wanted if name not in points]
    if missing:
        raise ConvertError(
            f"ONNX: no end point {', '.join(missing)} in this model; known: {', '.join(points)}"
        )
    graph_outputs = []
    for name in dict.fromkeys(sorted(wanted, key=list(points).index)):
        value = points[name]
        if input_layout == NHWC and len(value.shape) == 4:
            builder.nodes.append(onnx.helper.make_node("Transpose", [value.name], [name], name=f"{name}/to_nhwc",
                                                       perm=list(NCHW_TO_NHWC)))
            shape = [value.shape[0], *(value.shape[axis] for axis in NCHW_TO_NHWC[1:])]
        else:
            builder.nodes.append(onnx.helper.make_node("Identity", [value.name], [name], name=f"{name}/output"))
            shape = list(value.shape)
        shape[0] = BATCH_DIM
        if dynamic and len(shape) == 4:
            spatial = (1, 2) if input_layout == NHWC else (2, 3)
            for axis, dim in zip(spatial, (HEIGHT_DIM, WIDTH_DIM)):
                shape[axis] = f"{name}_{dim}"
        graph_outputs.append(onnx.helper.make_tensor_value_info(name, elem_type, shape))

    initializers = [_onnx_stream.declare(onnx, key, found.shape, found.dtype) for key, found in tensors.items()]
    model_graph = onnx.helper.make_graph(builder.nodes, table.architecture, [graph_input], graph_outputs, initializers)
    operator_set = onnx.helper.make_opsetid("", opset)
    model = onnx.helper.make_model(
        model_graph,
        opset_imports=[operator_set],
        ir_version=onnx.helper.find_min_ir_version_for([operator_set]),
        producer_name="ckpt-convert",
        producer_version=converter.__version__,
        doc_string=f"TF-Slim {table.architecture}; input {input_layout.upper()} {dtype} "
                   f"in range {list(spec.range)}",
    )
    onnx.helper.set_model_props(model, {
        **plan.provenance(),
        "input_layout": input_layout,
        "input_range": str(list(spec.range)),
        "background_class": "dropped" if plan.background.dropped else "kept",
        "input_size_dynamic": str(dynamic).lower(),
    })
    try:
        onnx.checker.check_model(_onnx_stream.checkable(onnx, model), full_check=True)
    except onnx.checker.ValidationError as error:
        raise ConvertError(f"ONNX: the written model does not check: {str(error).splitlines()[0]}") from None
    return model, {key: found.dtype for key, found in tensors.items()}


def save_onnx(plan, read, path, *, dtype=None, external_data=None, external_data_path=None, **options):
    """Write the network of ``plan`` with its weights as an ONNX model at ``path``.

    Args:
        plan: a ``converter.mapping.Plan`` for target ``onnx``.
        read: ``read(name) -> np.ndarray`` for a checkpoint variable.
        path: the file to write (the caller makes the write atomic).
        dtype: ``"float32"`` (default) or ``"float16"`` for initializers, compute, input and outputs.
        opset: ONNX opset, ``MIN_OPSET``..``MAX_OPSET``; default ``DEFAULT_OPSET``.
        input_layout: ``"nchw"`` (default) or ``"nhwc"`` (TF-style input; maps are output NHWC too).
        outputs: end points to output besides the default (``Logits``), e.g. ``["Mixed_7c"]``.
        external_data: the name of a file beside ``path`` to hold the weights (ONNX's external-data
            layout); by default they are inline, and a model past protobuf's 2 GB limit needs this.
        external_data_path: where to write that file now, when not at its name beside ``path`` (a temporary
            file the caller renames).

    The weights are read, cast and written one tensor at a time (``converter.writers._onnx_stream``).
    Raises ConvertError for an unsupported option or a table/plan the graph cannot be built from.
    """
    onnx = _import_onnx()
    model, dtypes = _declared_model(onnx, plan, dtype=dtype, **options)
    tensors = _cast(plan.tensors(read), _model_dtype(dtype))
    path = pathlib.Path(path)
    if external_data is None:
        size = _onnx_stream.inline_size(onnx, model, dtypes)
        if size > _onnx_stream.MAX_INLINE_BYTES:
            raise ConvertError(f"ONNX: the model takes {size / 1e9:.2f} GB, past protobuf's 2 GB limit on one "
                               f"file; pass --external-data to write its weights to a file beside it")
        with open(path, "wb") as handle:
            _onnx_stream.write_inline(onnx, model, tensors, dtypes, handle)
        return
    data_path = pathlib.Path(external_data_path) if external_data_path else path.parent / external_data
    with open(data_path, "wb") as data_handle, open(path, "wb") as handle:
        _onnx_stream.write_external(onnx, model, tensors, dtypes, handle, data_handle, external_data)
