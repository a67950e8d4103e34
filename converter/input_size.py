"""Input sizes: which input sizes a checkpoint's network takes, by TensorFlow's shape rules over the graph.

TF-Slim networks are convolutional, but not every input size fits every checkpoint: a layer that
TF-Slim sized to the map it saw when the checkpoint was trained (InceptionV3's auxiliary
``Conv2d_2a_{kh}x{kw}``, shrunk below 5x5 for inputs under 299) only reaches the 1x1 map its
``flatten`` needs at sizes near the training size, and VGG's ``fc6`` is a VALID 7x7 convolution that
needs the 7x7 map of a 224 input. Walking the graph with the checkpoint's own kernel sizes says which
sizes fit and, where one does not, why.
"""

import dataclasses
import functools
import math

from converter import graph, mapping

# a kind's kernel dimensions, by name in its params ([kh, kw, in, out])
KERNEL_DIMS = ("kh", "kw")
# ops that slide a window over the map: a depthwise kernel's kh x kw (a separable layer's pointwise
# convolution after it is 1x1, stride 1, VALID, and keeps the size)
CONVOLUTIONS = ("conv", *mapping.OP_KERNELS)
# how far above the table's default size inference looks for sizes that fit
SEARCH_FACTOR = 2
# inferred sizes are the roundest that fit: a multiple of the first of these that any fitting size is
ROUND = (32, 16, 8)
# the reason of a size given on the command line (or as ``input_size=``)
FLAG = "--input-size"


class SizeError(ValueError):
    """The input size does not fit the network; the message says where and why."""


@dataclasses.dataclass(frozen=True)
class _Flat:
    """A flattened map: the spatial size it had, for a layer that consumes it whole (VGG's fc6)."""

    spatial: tuple


@dataclasses.dataclass(frozen=True)
class InputSize:
    """The input size a plan uses, and why."""

    height: int
    width: int
    reason: str

    @property
    def hw(self):
        return self.height, self.width

    def __str__(self):
        return f"{self.height}x{self.width}"

    def given(self):
        """How a size someone chose reads in an error: ``--input-size 224x224``, ``input size 224x224 (REASON)``."""
        return f"{FLAG} {self}" if self.reason == FLAG else f"input size {self} ({self.reason})"


def parse(text):
    """``"224"`` or ``"224x192"`` (height x width) -> ``(224, 224)`` / ``(224, 192)``; ValueError otherwise."""
    parts = str(text).lower().split("x")
    if len(parts) not in (1, 2) or not all(part.isdigit() and int(part) > 0 for part in parts):
        raise ValueError(f"input size {text!r} must be H or HxW in pixels (224, 224x192)")
    height = int(parts[0])
    return height, int(parts[-1])


def kernels(table, dims):
    """``{layer: (kh, kw)}`` for every bound layer whose kind has kernel dimensions."""
    found = {}
    for layer, bound in dims.items():
        if all(dim in bound for dim in KERNEL_DIMS):
            found[layer] = tuple(bound[dim] for dim in KERNEL_DIMS)
    return found


def check(table, dims, size):
    """Raise ``SizeError`` when the network of ``table``, with the layers bound in ``dims``, cannot take ``size``."""
    _Walk(table, dims).run(tuple(size))


def fitting(table, dims, *, limit=None):
    """Square sizes from 1 to ``limit`` (default: twice the table's default) that fit, ascending."""
    spec = table.facts.input
    limit = limit or SEARCH_FACTOR * max(spec.height, spec.width)
    walk = _Walk(table, dims)
    return [size for size in range(1, limit + 1) if walk.fits((size, size))]


def infer(table, dims):
    """The input size for a checkpoint: the table's default where it fits, else one the checkpoint allows.

    After the default, the table's ``facts.input.sizes`` are tried in order, then the largest fitting
    size below the default that is a multiple of the largest of ``ROUND`` it can be (training sizes
    are round numbers: 160, 192). Raises ``SizeError`` when no size fits.
    """
    spec = table.facts.input
    default = (spec.height, spec.width)
    walk = _Walk(table, dims)
    try:
        walk.run(default)
        return InputSize(*default, f"the table's default for {table.architecture}")
    except SizeError as error:
        ruled_out = str(error)
    sizes = fitting(table, dims)
    if not sizes:
        raise SizeError(f"no input size up to {SEARCH_FACTOR}x the default fits this checkpoint "
                        f"(at {default[0]}x{default[1]}: {ruled_out})")
    preferred = [s for s in spec.sizes if s in sizes]
    below = [s for s in sizes if s <= default[0]] or sizes
    rounded = next(([s for s in below if s % step == 0] for step in ROUND if any(s % step == 0 for s in below)), below)
    chosen = preferred[0] if preferred else rounded[-1]
    spans = _spans(sizes)
    return InputSize(chosen, chosen, f"inferred from the checkpoint: at the default {default[0]}x{default[1]} "
                                     f"{ruled_out}; sizes {spans} fit; --input-size picks another")


def _spans(sizes):
    runs, start = [], sizes[0]
    for previous, size in zip(sizes, sizes[1:] + [None]):
        if size != previous + 1:
            runs.append(f"{start}-{previous}" if start != previous else str(start))
            start = size
    return ", ".join(runs)


def _window(size, kernel, stride, padding, where):
    # TensorFlow's output size of a convolution or pool along one axis
    if padding == "SAME":
        return math.ceil(size / stride)
    if size < kernel:
        raise SizeError(f"{where} (a VALID {kernel}-wide window) sees a map {size} wide")
    return (size - kernel) // stride + 1


class _Walk:
    """The spatial size at every node for one input size; raises SizeError where a node cannot take it."""

    def __init__(self, table, dims):
        self.table = table
        self.dims = dims
        self.kernels = kernels(table, dims)

    def fits(self, size):
        try:
            self.run(size)
        except SizeError:
            return False
        return True

    def run(self, size):
        if min(size) < 1:
            raise SizeError(f"input size {size[0]}x{size[1]} is empty")
        self.nodes(self.table.graph, tuple(size), "", {})

    def nodes(self, nodes, value, scope, points):
        for node in nodes:
            if not graph.kept(node, scope, self.dims):
                continue  # a group the checkpoint or plan leaves out constrains nothing
            if node.input is not None:
                value = points[node.input]
            value = _size(node, self, value, scope, points)
            if node.name is not None:
                points[node.name] = value
        return value

    def layer(self, layer, value, stride, padding):
        kernel = self.kernels.get(layer)
        op = self.table.kind_of(layer).compute.op
        if op == mapping.BATCH_NORM_OP:
            return value  # a batch norm alone keeps the size of what it normalizes
        if op in CONVOLUTIONS:
            if isinstance(value, _Flat):
                raise SizeError(f"{layer} convolves a flattened input")
            return self.spatial(value, kernel or (1, 1), stride, padding, layer)
        # a fully connected layer: on a flat input; one with a kernel consumes the whole map it flattened
        if not isinstance(value, _Flat):
            raise SizeError(f"{layer} needs a flattened input, got a {value[0]}x{value[1]} map")
        if kernel is not None and kernel != value.spatial:
            raise SizeError(f"{layer} is a VALID {kernel[0]}x{kernel[1]} convolution on the map, which is "
                            f"{value.spatial[0]}x{value.spatial[1]} at this input size")
        return _Flat((1, 1))

    @staticmethod
    def spatial(value, kernel, stride, padding, where):
        if isinstance(value, _Flat):
            raise SizeError(f"{where} pools a flattened input")
        height = _window(value[0], kernel[0], stride, padding, where)
        width = _window(value[1], kernel[1], stride, padding, where)
        return height, width


# the size after each node type: one function per converter.graph node class
@functools.singledispatch
def _size(node, walk, value, scope, points):
    raise TypeError(f"no input-size rule for graph node {type(node).__name__}")


@_size.register
def _(node: graph.Layer, walk, value, scope, points):
    return walk.layer(scope + node.layer, value, node.stride, node.padding)


@_size.register
def _(node: graph.Pool, walk, value, scope, points):
    if node.is_global:
        return (1, 1)
    kernel = node.window if isinstance(value, _Flat) else node.window_for(value)
    return walk.spatial(value, tuple(kernel), node.stride, node.padding, f"{scope}pool")


@_size.register
def _(node: graph.Scale, walk, value, scope, points):
    return value


@_size.register
def _(node: graph.Pad, walk, value, scope, points):
    (top, bottom), (left, right) = node.pads
    return value[0] + top + bottom, value[1] + left + right


@_size.register
def _(node: graph.Flatten, walk, value, scope, points):
    if node.order is graph.FLATTEN_1X1 and value != (1, 1):
        where = scope.rstrip("/") or "the graph"
        raise SizeError(f"{where} flattens a {value[0]}x{value[1]} map where it needs 1x1")
    return _Flat(value)


@_size.register
def _(node: graph.Sequence, walk, value, scope, points):
    return walk.nodes(node.nodes, value, node.inner_scope(scope), points)


@_size.register(graph.Concat)
@_size.register(graph.Add)
def _(node, walk, value, scope, points):
    inner = node.inner_scope(scope)
    outputs = {walk.nodes(branch, value, inner, points) if branch else value for branch in node.branches}
    if len(outputs) > 1:
        raise SizeError(f"{node.name or scope or 'a node'}: its branches give maps of different sizes "
                        f"({', '.join(sorted(map(str, outputs)))})")
    return outputs.pop()


def same_pads_vary(kernel, stride):
    """Whether TensorFlow's 'SAME' pads of this window change with the input size: a stride over 1 and a kernel over 1."""
    return stride > 1 and max(kernel) > 1


def runtime_pads(kernel, stride):
    """Whether a runtime's 'SAME_UPPER' computes TensorFlow's 'SAME' pads for this window at every size.

    They agree where the kernel is at least the stride; below it TensorFlow clips a negative total
    pad at zero, which not every runtime does.
    """
    return min(kernel) >= stride


def pads_depend_on_size(table, dims):
    """Whether a graph needs a fixed input size: a ``reduced`` window (it shrinks with the map), or a 'SAME'
    window whose pads vary with the size and that a runtime cannot pad as TensorFlow does (``runtime_pads``)."""
    bound = kernels(table, dims)
    for node, scope in graph.walk(table.graph):
        if isinstance(node, graph.Pool) and node.reduced:
            return True  # its window is the map's size where that is smaller: a model per input size
        if not isinstance(node, (graph.Layer, graph.Pool)) or node.padding != graph.SAME:
            continue
        kernel = bound.get(scope + node.layer, (1, 1)) if isinstance(node, graph.Layer) else node.window
        if kernel != graph.GLOBAL and same_pads_vary(kernel, node.stride) and not runtime_pads(kernel, node.stride):
            return True
    return False
