"""A mapping table's ``graph`` as typed nodes: one frozen class per node type, one walk, one rule for groups.

``parse`` turns the table's graph (a list of YAML mappings, checked by ``mapping.validate``) into
nodes once; every consumer (the plan, the exact torch module, the ONNX writer, the runtimes, the
input-size walk, provenance) reads these nodes, not the YAML. A backend handles a node type in one
emitter registered by node class (``functools.singledispatch``): adding a node op means a class here,
its ``parse`` entry, and one emitter per backend (``ARCHITECTURE.md``).

The layers under a named node are the group that ``skip``, ``optional`` and ``--no-top`` leave out;
``layers`` gives them for any node, resolved against the node's scope (``scoped: false`` keeps its
layers' own scopes), and ``kept`` says whether a plan holds a node: every layer under it is in the plan.
"""

import dataclasses

SAME, VALID = "SAME", "VALID"
DEFAULT_STRIDE = 1
DEFAULT_PADDING = SAME
GLOBAL = "global"
# `flatten: true` takes a 1x1 map; `spatial` any map, in the order of the target's layout; `hwc` TensorFlow's order
FLATTEN_1X1, FLATTEN_SPATIAL, FLATTEN_HWC = True, "spatial", "hwc"


@dataclasses.dataclass(frozen=True)
class Node:
    """What every node has: an optional end-point ``name`` (a scope unless ``scoped`` is false) and ``input``."""

    name: str | None = dataclasses.field(default=None, kw_only=True)
    scoped: bool = dataclasses.field(default=True, kw_only=True)
    input: str | None = dataclasses.field(default=None, kw_only=True)

    def inner_scope(self, scope):
        """The scope of layer references inside this node: its name, unless it has none or ``scoped: false``."""
        return f"{self.name}/" if self.name is not None and self.scoped else scope

    def parts(self):
        """The node lists under this node, each run on the node's input (a sequence has one)."""
        return ()


@dataclasses.dataclass(frozen=True)
class Layer(Node):
    """``layer: SCOPE``: a row of ``layers`` (relative to the enclosing scope), with its window's stride and padding."""

    layer: str
    stride: int = DEFAULT_STRIDE
    padding: str = DEFAULT_PADDING


@dataclasses.dataclass(frozen=True)
class Pool(Node):
    """``max_pool`` or ``avg_pool``: a ``(kh, kw)`` window or ``global``; ``reduced`` shrinks it to a smaller map."""

    window: tuple | str
    stride: int = DEFAULT_STRIDE
    padding: str = DEFAULT_PADDING
    reduced: bool = False

    @property
    def is_global(self):
        return self.window == GLOBAL

    def window_for(self, size):
        """The window on a map of ``(height, width)``: a ``reduced`` one no larger than the map."""
        if self.reduced:
            return tuple(min(k, n) for k, n in zip(self.window, size))
        return self.window


@dataclasses.dataclass(frozen=True)
class MaxPool(Pool):
    """``max_pool: [kh, kw]``: TensorFlow pads with -inf."""


@dataclasses.dataclass(frozen=True)
class AvgPool(Pool):
    """``avg_pool: [kh, kw] | global``: TensorFlow's average excludes the padding."""


@dataclasses.dataclass(frozen=True)
class Sequence(Node):
    """``nodes: [NODE, ...]``: one node after the other."""

    nodes: tuple

    def parts(self):
        return (self.nodes,)


@dataclasses.dataclass(frozen=True)
class Concat(Node):
    """``concat: [BRANCH, ...]``: each branch on the node's input, outputs joined on channels."""

    branches: tuple

    def parts(self):
        return self.branches


@dataclasses.dataclass(frozen=True)
class Add(Node):
    """``add: [BRANCH, ...]``: each branch on the node's input (an empty one is the input), outputs summed,
    then ``activation`` (None, ``relu`` or ``relu6``)."""

    branches: tuple
    activation: str | None = None

    def parts(self):
        return self.branches


@dataclasses.dataclass(frozen=True)
class Pad(Node):
    """``pad: [[top, bottom], [left, right]]``: explicit zero padding (``tf.pad``)."""

    pads: tuple


@dataclasses.dataclass(frozen=True)
class Scale(Node):
    """``scale: FACTOR``: the map multiplied by a constant, in the map's dtype."""

    factor: float


@dataclasses.dataclass(frozen=True)
class Flatten(Node):
    """``flatten: true | spatial | hwc`` (``FLATTEN_1X1``, ``FLATTEN_SPATIAL``, ``FLATTEN_HWC``)."""

    order: bool | str


def _options(node):
    return {"name": node.get("name"), "scoped": node.get("scoped", True), "input": node.get("input")}


def _window(node):
    return dict(stride=node.get("stride", DEFAULT_STRIDE), padding=node.get("padding", DEFAULT_PADDING))


def _pool(cls, key):
    def make(node):
        window = node[key]
        return cls(window if window == GLOBAL else tuple(window), **_window(node),
                   reduced=bool(node.get("reduced", False)), **_options(node))

    return make


# the YAML key that gives a node its type -> how that node is built from its mapping
PARSERS = {
    "layer": lambda node: Layer(node["layer"], **_window(node), **_options(node)),
    "max_pool": _pool(MaxPool, "max_pool"),
    "avg_pool": _pool(AvgPool, "avg_pool"),
    "concat": lambda node: Concat(tuple(parse(branch) for branch in node["concat"]), **_options(node)),
    "add": lambda node: Add(tuple(parse(branch) for branch in node["add"]), node.get("activation"),
                            **_options(node)),
    "nodes": lambda node: Sequence(parse(node["nodes"]), **_options(node)),
    "pad": lambda node: Pad(tuple(tuple(pair) for pair in node["pad"]), **_options(node)),
    "scale": lambda node: Scale(node["scale"], **_options(node)),
    "flatten": lambda node: Flatten(node["flatten"], **_options(node)),
}


def parse(nodes):
    """Typed nodes of a validated graph (``mapping.validate``: each node has exactly one of ``PARSERS``' keys)."""
    return tuple(PARSERS[next(key for key in PARSERS if key in node)](node) for node in nodes)


def walk(nodes, scope=""):
    """Every node under ``nodes`` with the scope its layer references are relative to: ``(node, scope)``, depth first."""
    for node in nodes:
        yield node, scope
        inner = node.inner_scope(scope)
        for branch in node.parts():
            yield from walk(branch, inner)


def layers(node, scope=""):
    """The layers (scopes relative to the model scope) under ``node``, in graph order."""
    return [at + child.layer for child, at in walk((node,), scope) if isinstance(child, Layer)]


def named(nodes):
    """``{end point: (node, scope)}`` of every named node under ``nodes``."""
    return {node.name: (node, scope) for node, scope in walk(nodes) if node.name is not None}


def group_layers(nodes, groups):
    """The layers under the nodes named in ``groups`` (the groups a plan leaves out), as a set."""
    found = set()
    for node, scope in walk(nodes):
        if node.name in groups:
            found.update(layers(node, scope))
    return found


def kept(node, scope, planned):
    """Whether a plan holding the layers ``planned`` holds ``node``: a named node (a group) where every
    layer under it is planned, whether or not its layers share its scope (``scoped: false``).

    A node without layers (a pool, a flatten) is held; so is an unnamed node, whose missing layer is
    an error of the plan, not a group left out (``--no-aux``, ``--no-top``, a target's ``skip``).
    """
    return node.name is None or all(layer in planned for layer in layers(node, scope))


def last_layer(node, scope=""):
    """The last layer a node's output comes from (the last branch's last layer), or None for a node without one."""
    if isinstance(node, Layer):
        return scope + node.layer
    branches = node.parts()
    if not branches or not branches[-1]:
        return None
    return last_layer(branches[-1][-1], node.inner_scope(scope))
