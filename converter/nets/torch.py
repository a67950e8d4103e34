"""A torch module built from a mapping table's ``graph``, ``layers`` and ``kinds`` and a plan's shapes.

It computes what TF-Slim computes, not what torchvision's re-implementation does: TensorFlow's
``SAME`` padding (asymmetric when the stride is 2), average pooling that excludes the padding, and
batch norm with the table's epsilon. Its ``state_dict`` keys are the plan's torch keys (the table's
``torch`` column), so a converted ``.pth`` loads into it with ``strict=True`` for any depth multiplier
and class count. ``forward`` returns every named end point (maps NCHW).

Nothing here knows InceptionV3: the module tree and the forward pass are read from the table.
"""

import functools
import math

import torch
import torch.nn.functional as F
from torch import nn

from converter import graph, mapping
from converter._tf_rules import same_padding
from converter.errors import MappingError

# TF-Slim's own parameter names: the layer op's kernel and bias, and the scope of its batch norm
KERNEL = "weights"
BIAS = "biases"
BATCH_NORM_SCOPE = "BatchNorm/"
# what follows a layer's op, by the table's ``compute.activation``
ACTIVATIONS = {None: None, "relu": F.relu, "relu6": F.relu6}
NCHW_CHANNELS = 1
NCHW_SPATIAL = (2, 3)


def default_device():
    """``cuda`` when a GPU is present, else ``cpu``."""
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def _pads(x, kernel, stride, padding):
    if padding != "SAME":
        return (0, 0), (0, 0)
    height, width = x.shape[NCHW_SPATIAL[0]], x.shape[NCHW_SPATIAL[1]]
    return same_padding(height, kernel[0], stride), same_padding(width, kernel[1], stride)


def _pad(x, pads, value=0.0):
    (top, bottom), (left, right) = pads
    if top == bottom == left == right == 0:
        return x
    # F.pad takes the last dimension first
    return F.pad(x, (left, right, top, bottom), value=value)


class _Layer:
    """One slim layer: its op module, optional batch norm and activation, with the graph node's stride and padding."""

    def __init__(self, op, norm, activation, stride, padding):
        self.op, self.norm, self.activation = op, norm, activation
        self.stride, self.padding = stride, padding

    def __call__(self, x, points):
        if isinstance(self.op, nn.Conv2d):
            pads = _pads(x, self.op.kernel_size, self.stride, self.padding)
            if pads[0][0] == pads[0][1] and pads[1][0] == pads[1][1]:
                # symmetric: let the convolution pad, saving a copy
                x = F.conv2d(x, self.op.weight, self.op.bias, self.stride, (pads[0][0], pads[1][0]))
            else:
                x = F.conv2d(_pad(x, pads), self.op.weight, self.op.bias, self.stride)
        else:
            x = self.op(x)
        if self.norm is not None:
            x = self.norm(x)
        return self.activation(x) if self.activation is not None else x


class _Depthwise:
    """A depthwise convolution with TensorFlow's padding, then ``tail``: a separable layer's pointwise
    convolution, batch norm and activation."""

    def __init__(self, conv, tail, stride, padding):
        self.conv, self.tail = conv, tail
        self.stride, self.padding = stride, padding

    def __call__(self, x, points):
        conv = self.conv
        x = _pad(x, _pads(x, conv.kernel_size, self.stride, self.padding))
        return self.tail(F.conv2d(x, conv.weight, conv.bias, self.stride, groups=conv.groups), points)


class _MaxPool:
    def __init__(self, kernel, stride, padding):
        self.kernel, self.stride, self.padding = tuple(kernel), stride, padding

    def __call__(self, x, points):
        # TF pads max pooling with -inf: padding never wins
        x = _pad(x, _pads(x, self.kernel, self.stride, self.padding), value=-math.inf)
        return F.max_pool2d(x, self.kernel, self.stride)


class _AvgPool:
    def __init__(self, kernel, stride, padding):
        self.kernel, self.stride, self.padding = tuple(kernel), stride, padding

    def __call__(self, x, points):
        pads = _pads(x, self.kernel, self.stride, self.padding)
        if pads == ((0, 0), (0, 0)):
            return F.avg_pool2d(x, self.kernel, self.stride)
        # TF averages over the window's inputs only: divide by how many of them lie inside the map
        sums = F.avg_pool2d(_pad(x, pads), self.kernel, self.stride)
        inside = _pad(torch.ones_like(x[:1, :1]), pads)
        return sums / F.avg_pool2d(inside, self.kernel, self.stride)


class _Reduced:
    # TF-Slim's _reduced_kernel_size_for_small_input: a pool's window shrinks to a map smaller than it
    def __init__(self, pool):
        self.pool = pool

    def __call__(self, x, points):
        kernel = tuple(min(k, n) for k, n in zip(self.pool.kernel, x.shape[NCHW_SPATIAL[0]:]))
        return type(self.pool)(kernel, self.pool.stride, self.pool.padding)(x, points)


def _global_avg_pool(x, points):
    return x.mean(dim=NCHW_SPATIAL, keepdim=True)


def _flatten(x, points):
    if x.shape[NCHW_SPATIAL[0]] != 1 or x.shape[NCHW_SPATIAL[1]] != 1:
        raise ValueError(f"flatten expects a 1x1 map, got {tuple(x.shape)} (the input size differs from the table's)")
    return torch.flatten(x, 1)


def _flatten_spatial(x, points):
    # channels first: C, H, W order, which the following row's transform (conv_to_linear_chw) matches
    return torch.flatten(x, 1)


def _flatten_hwc(x, points):
    # TensorFlow's order (H, W, C), in which the following fully connected kernel ([in, out]) was trained
    return torch.flatten(x.permute(0, 2, 3, 1), 1)


FLATTENS = {True: _flatten, "spatial": _flatten_spatial, "hwc": _flatten_hwc}


class _Concat:
    def __init__(self, branches):
        self.branches = branches

    def __call__(self, x, points):
        return torch.cat([_run(branch, x, points) for branch in self.branches], dim=NCHW_CHANNELS)


class _Add:
    # a residual sum: each branch runs on the input (an empty branch is the input), then the activation
    def __init__(self, branches, activation):
        self.branches, self.activation = branches, activation

    def __call__(self, x, points):
        total = functools.reduce(torch.add, [_run(branch, x, points) for branch in self.branches])
        return self.activation(total) if self.activation is not None else total


class _Pad:
    # explicit zero padding, as tf.pad before a VALID convolution (TF-Slim's resnet conv2d_same)
    def __init__(self, pads):
        self.pads = tuple(tuple(p) for p in pads)

    def __call__(self, x, points):
        return _pad(x, self.pads)


class _Scale:
    # the map multiplied by a constant (a graph's `Mul` by a scalar), in the map's dtype as TensorFlow does
    def __init__(self, factor):
        self.factor = factor

    def __call__(self, x, points):
        return x * torch.tensor(self.factor, dtype=x.dtype, device=x.device)


class _Sequence:
    def __init__(self, steps):
        self.steps = steps

    def __call__(self, x, points):
        return _run(self.steps, x, points)


def _run(steps, x, points):
    for name, source, step in steps:
        if source is not None:
            x = points[source]
        x = step(x, points)
        if name is not None:
            points[name] = x
    return x


class SlimNet(nn.Module):
    """A TF-Slim network as a torch module; ``forward(images NCHW) -> {end point: tensor}``."""

    def __init__(self, plan):
        super().__init__()
        self.table = plan.table
        self.end_points = []
        self.output = None  # an end point's name: forward returns that tensor alone (``load`` sets the logits)
        entries = {entry.key: entry for entry in plan.entries}
        self._steps = self._compile(plan.table.graph, "", plan, entries)

    def _module(self, path, factory):
        parent = self
        *parents, leaf = path.split(".")
        for part in parents:
            if not hasattr(parent, part):
                parent.add_module(part, nn.Module())
            parent = getattr(parent, part)
        module = factory()
        parent.add_module(leaf, module)
        return module

    def _layer(self, layer, node, plan, entries):
        table = self.table
        row = table.layers[layer]
        kind = row.kind
        if kind.compute.op == mapping.BATCH_NORM_OP:
            return self._batch_norm_layer(layer, node, plan, entries)
        compute = kind.compute
        if compute.op in mapping.OP_KERNELS:
            return self._depthwise_layer(layer, node, plan, entries)
        # the op and its batch norm are the modules holding the tensors taken from slim's kernel and BatchNorm/*
        op_keys = kind.sources("torch", KERNEL)
        norm_prefixes = {tensor.key.rpartition(".")[0] for tensor in kind.column("torch")
                         if (tensor.source or "").startswith(BATCH_NORM_SCOPE)}
        if len(op_keys) != 1 or (compute.batch_norm and len(norm_prefixes) != 1):
            raise MappingError(f"{table.path}: kind {kind.name} must take one torch tensor from `{KERNEL}` "
                               f"and, with batch_norm, its BatchNorm/* tensors into one module")
        # module paths from the joined keys: a row names one module prefix or a module per role
        op_key = row.key("torch", op_keys[0], plan.dims[layer])
        weight = entries[op_key]
        bias = BIAS in kind.params
        if compute.op == "conv":
            out_channels, in_channels, kh, kw = weight.shape  # torch's OIHW
            factory = functools.partial(nn.Conv2d, in_channels, out_channels, (kh, kw), bias=bias)
        else:
            out_features, in_features = weight.shape
            factory = functools.partial(nn.Linear, in_features, out_features, bias=bias)
        op = self._module(op_key.rpartition(".")[0], factory)
        norm = None
        if compute.batch_norm:
            epsilon = mapping.batch_norm_epsilon(table, kind)
            norm_key = row.key("torch", norm_prefixes.pop() + ".weight", plan.dims[layer])
            norm = self._module(norm_key.rpartition(".")[0],
                                functools.partial(nn.BatchNorm2d, weight.shape[0], eps=epsilon))
        return _Layer(op, norm, self._activation(kind), node.stride, node.padding)

    def _activation(self, kind):
        activation = kind.compute.activation
        if activation not in ACTIVATIONS:
            raise MappingError(f"{self.table.path}: kind {kind.name}: unknown activation {activation!r}")
        return ACTIVATIONS[activation]

    def _batch_norm_layer(self, layer, node, plan, entries):
        # a layer that is a batch norm alone (ResNet-v2's preact, postnorm): one BatchNorm2d holding every tensor
        table = self.table
        row = table.layers[layer]
        kind = row.kind
        keys = [row.key("torch", tensor.key, plan.dims[layer]) for tensor in kind.column("torch")]
        modules = {key.rpartition(".")[0] for key in keys}
        sized = [entries[key].shape for key in keys if entries[key].source is not None]
        if len(modules) != 1 or not sized or any(len(shape) != 1 for shape in sized):
            raise MappingError(f"{table.path}: kind {kind.name} (op batch_norm) must map its params to the "
                               f"tensors of one torch module, each a vector of channels (got {', '.join(keys)})")
        activation = self._activation(kind)
        norm = self._module(modules.pop(), functools.partial(nn.BatchNorm2d, sized[0][0],
                                                             eps=mapping.batch_norm_epsilon(table, kind)))
        return _Layer(norm, None, activation, node.stride, node.padding)

    def _depthwise_layer(self, layer, node, plan, entries):
        # slim's depthwise convolution (groups = its input channels) and, for a separable layer, the 1x1
        # pointwise convolution after it; the biases follow the last of them, as TensorFlow adds them
        table, row = self.table, self.table.layers[layer]
        kind = row.kind
        compute, dims = kind.compute, plan.dims[layer]

        def key_of(param):
            keys = kind.sources("torch", param)
            if len(keys) != 1:
                raise MappingError(f"{table.path}: kind {kind.name} must take one torch tensor from `{param}`")
            return row.key("torch", keys[0], dims)

        kernels = [key_of(param) for param in mapping.OP_KERNELS[compute.op]]
        bias = BIAS in kind.params and key_of(BIAS)
        if bias and bias.rpartition(".")[0] != kernels[-1].rpartition(".")[0]:
            raise MappingError(f"{table.path}: kind {kind.name}: the biases follow the last convolution of a "
                               f"{compute.op} layer: take them into {kernels[-1].rpartition('.')[0]}.bias")
        depthwise = entries[kernels[0]]
        kh, kw, channels, multiplier = depthwise.source_shape
        if depthwise.shape != (channels * multiplier, 1, kh, kw):
            raise MappingError(f"{table.path}: kind {kind.name}: {kernels[0]} has shape {list(depthwise.shape)}; "
                               f"a depthwise convolution of {depthwise.source} needs [in * multiplier, 1, kh, kw] "
                               f"(transform depthwise_to_grouped_oihw)")
        outputs = channels * multiplier
        convs = [self._module(kernels[0].rpartition(".")[0], functools.partial(
            nn.Conv2d, channels, outputs, (kh, kw), groups=channels, bias=bool(bias) and len(kernels) == 1))]
        if len(kernels) > 1:
            pointwise = entries[kernels[1]]
            if len(pointwise.shape) != 4 or pointwise.shape[1:] != (outputs, 1, 1):
                raise MappingError(f"{table.path}: kind {kind.name}: {kernels[1]} has shape "
                                   f"{list(pointwise.shape)}; the pointwise convolution after {outputs} depthwise "
                                   f"channels needs [out, {outputs}, 1, 1] (transform hwio_to_oihw)")
            out_channels, in_channels = pointwise.shape[:2]
            convs.append(self._module(kernels[1].rpartition(".")[0], functools.partial(
                nn.Conv2d, in_channels, out_channels, 1, bias=bool(bias))))
        norm = None
        if compute.batch_norm:
            norm_key = key_of(BATCH_NORM_SCOPE + "moving_mean").rpartition(".")[0]
            norm = self._module(norm_key, functools.partial(nn.BatchNorm2d, convs[-1].out_channels,
                                                            eps=mapping.batch_norm_epsilon(table, kind)))
        activation = self._activation(kind)
        # the pointwise convolution is 1x1, stride 1, VALID (tf.nn.separable_conv2d): no padding to add
        tail = _Layer(convs[1] if len(convs) > 1 else nn.Identity(), norm, activation, 1, "VALID")
        return _Depthwise(convs[0], tail, node.stride, node.padding)

    def _compile(self, nodes, scope, plan, entries):
        steps = []
        for node in nodes:
            if not plan.keeps(node, scope):
                continue  # a group the plan leaves out (--no-aux, a headless model, a target's skip)
            step = _step(node, self, scope, plan, entries)
            if isinstance(node, graph.Pool) and node.reduced:
                step = _Reduced(step)
            if node.name is not None:
                self.end_points.append(node.name)
            steps.append((node.name, node.input, step))
        return steps

    def forward(self, images):
        """Every named end point for ``images`` (NCHW, in the table's input range); ``self.output`` alone if set."""
        points = {}
        # TF computes convolutions in full float32; cuDNN's TF32 would drift by about 1e-3
        with torch.backends.cudnn.flags(enabled=True, allow_tf32=False):
            _run(self._steps, images, points)
        return points if self.output is None else points[self.output]


# the step of each node type: one emitter per converter.graph node class
@functools.singledispatch
def _step(node, net, scope, plan, entries):
    raise MappingError(f"{net.table.path}: the exact torch module has no step for graph node {type(node).__name__}")


@_step.register
def _(node: graph.Layer, net, scope, plan, entries):
    return net._layer(scope + node.layer, node, plan, entries)


@_step.register
def _(node: graph.MaxPool, net, scope, plan, entries):
    return _MaxPool(node.window, node.stride, node.padding)


@_step.register
def _(node: graph.AvgPool, net, scope, plan, entries):
    return _global_avg_pool if node.is_global else _AvgPool(node.window, node.stride, node.padding)


@_step.register
def _(node: graph.Concat, net, scope, plan, entries):
    inner = node.inner_scope(scope)
    return _Concat([net._compile(branch, inner, plan, entries) for branch in node.branches])


@_step.register
def _(node: graph.Add, net, scope, plan, entries):
    if node.activation not in ACTIVATIONS:
        raise MappingError(f"{net.table.path}: add: unknown activation {node.activation!r}")
    inner = node.inner_scope(scope)
    return _Add([net._compile(branch, inner, plan, entries) for branch in node.branches], ACTIVATIONS[node.activation])


@_step.register
def _(node: graph.Pad, net, scope, plan, entries):
    return _Pad(node.pads)


@_step.register
def _(node: graph.Scale, net, scope, plan, entries):
    return _Scale(node.factor)


@_step.register
def _(node: graph.Sequence, net, scope, plan, entries):
    return _Sequence(net._compile(node.nodes, node.inner_scope(scope), plan, entries))


@_step.register
def _(node: graph.Flatten, net, scope, plan, entries):
    return FLATTENS[node.order]


def build(plan, state_dict=None, device=None):
    """A ``SlimNet`` for ``plan`` in eval mode on ``device`` (default: a GPU when present).

    ``state_dict`` (from ``torch.load``, ``safetensors.torch.load_file`` or the plan itself) is loaded
    with ``strict=True``: a missing, extra or misshapen tensor is an error.
    """
    net = SlimNet(plan)
    if state_dict is not None:
        net.load_state_dict(state_dict, strict=True)
    return net.eval().to(device or default_device())


def plan_state_dict(plan, read):
    """The plan's tensors as a torch state dict, reading checkpoint variables with ``read``."""
    return {key: torch.from_numpy(value.copy()) for key, value in plan.tensors(read)}


def load(path, *, end_points=False, device="cpu", mapping=None):
    """The exact TF-semantics module of a ``.pth`` or ``.safetensors`` port, rebuilt from the file alone.

    The file's provenance record (``converter.provenance``) names the mapping table and the shapes
    of the checkpoint variables it was made from; no checkpoint is read.

    Args:
        path: a torch port written by ``ckpt-convert``.
        end_points: False: ``forward`` returns the logits (or, for a headless port, its last end point);
            True: every end point, ``{name: tensor}`` (maps NCHW).
        device: where the module lives (default ``cpu``).
        mapping: the user's mapping table, where the file was made with one that has since moved.

    Returns:
        a ``SlimNet`` in eval mode, its weights loaded with ``strict=True``. Raises ``ConvertError`` for a
        file without a torch provenance record or whose table has changed since.
    """
    from converter import provenance
    from converter.errors import ConvertError
    from converter.runtimes.torch import _load_state

    state = _load_state(torch, path)
    record = provenance.read(path)
    if not record:
        raise ConvertError(f"{path}: records no provenance (written by another tool or an older ckpt-convert); "
                           f"convert the checkpoint again, or build(plan, state_dict) from the checkpoint's plan")
    try:
        plan = provenance.plan_of(record, provenance.table_of(record, mapping))
    except ConvertError as error:
        raise ConvertError(f"{path}: {error}") from None
    net = SlimNet(plan)
    try:
        net.load_state_dict(state, strict=True)
    except RuntimeError as error:
        raise ConvertError(f"{path}: does not load into the module its record describes ({' '.join(str(error).split())})") \
            from None
    if not end_points:
        net.output = net.end_points[-1] if "Logits" not in net.end_points else "Logits"
    return net.eval().to(device)
