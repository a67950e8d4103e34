"""A mapping table (schema: ``mappings/README.md``) from the units of a recovered network.

The graph of units is a DAG; the table's ``graph`` is a tree of sequences whose ``concat`` and
``add`` branches start from one value. Each join's branches start from its immediate dominator
(the last value every path from the input to the join passes through), so the tree follows the
DAG; a value needed again later (an auxiliary head's input) is named and taken with ``input``.

Names: a layer's row is its slim scope relative to the model scope (``Mixed_5b/Branch_0/Conv2d_0a_1x1``);
its torch module is that scope with ``.`` for ``/`` (each part made a valid module name), holding
``conv``, ``bn`` or ``fc``; its ONNX initializers are its slim variable names relative to the model scope.
"""

import re

from converter.metagraph import units as unit_module

SEPARATOR = "/"
TORCH_SEPARATOR = "."
# names a torch module may not take for a child: torch.nn.Module's own attributes, the exact module's
TORCH_RESERVED = frozenset((
    "T_destination", "add_module", "apply", "bfloat16", "buffers", "call_super_init", "children", "compile", "cpu",
    "cuda", "double", "dump_patches", "eval", "extra_repr", "float", "forward", "get_buffer", "get_extra_state",
    "get_parameter", "get_submodule", "half", "ipu", "load_state_dict", "modules", "mtia", "named_buffers",
    "named_children", "named_modules", "named_parameters", "parameters", "register_backward_hook",
    "register_buffer", "register_forward_hook", "register_forward_pre_hook", "register_full_backward_hook",
    "register_full_backward_pre_hook", "register_load_state_dict_post_hook", "register_load_state_dict_pre_hook",
    "register_module", "register_parameter", "register_state_dict_post_hook", "register_state_dict_pre_hook",
    "requires_grad_", "set_extra_state", "set_submodule", "share_memory", "state_dict", "to", "to_empty", "train",
    "training", "type", "xpu", "zero_grad", "table", "end_points",
))
TORCH_ROLES = {unit_module.CONV: "conv", unit_module.CONV1X1: "fc", unit_module.DENSE: "fc",
               unit_module.DEPTHWISE: "depthwise", unit_module.SEPARABLE: "pointwise"}
NORM_ROLE = "bn"
DEPTHWISE_ROLE = "depthwise"
# the table's compute op of each layer form
COMPUTE_OPS = {unit_module.CONV: "conv", unit_module.CONV1X1: "linear", unit_module.DENSE: "linear",
               unit_module.DEPTHWISE: "depthwise", unit_module.SEPARABLE: "separable", unit_module.NORM: "batch_norm"}
NAMES = {unit_module.CONV: ["conv"], unit_module.CONV1X1: ["linear", "1x1"], unit_module.DENSE: ["linear"],
         unit_module.DEPTHWISE: ["depthwise"], unit_module.SEPARABLE: ["separable"], unit_module.NORM: ["bn"]}
BN_TARGETS = {unit_module.GAMMA: "weight", unit_module.BETA: "bias", unit_module.MOVING_MEAN: "running_mean",
              unit_module.MOVING_VARIANCE: "running_var"}
BN_FILLS = {unit_module.GAMMA: 1.0, unit_module.BETA: 0.0}
NOT_A_NAME = re.compile(r"[^A-Za-z0-9_]")
# the transform from TF's kernel to torch's and ONNX's, by the layer's kernel form
TRANSFORMS = {unit_module.CONV: "hwio_to_oihw", unit_module.CONV1X1: "conv1x1_to_linear",
              unit_module.DENSE: "dense_to_linear"}
KERNEL_DIMS = {unit_module.CONV: ["kh", "kw", "in"], unit_module.CONV1X1: [1, 1, "in"], unit_module.DENSE: ["in"]}
CLASSES, OUT = "classes", "out"
DEFAULT_STRIDE, DEFAULT_PADDING = 1, "SAME"


def torch_name(scope):
    """A slim scope as a torch module path: ``/`` -> ``.``, each part a valid, unreserved module name."""
    parts = []
    for part in scope.split(SEPARATOR):
        part = NOT_A_NAME.sub("_", part) or "_"
        if part in TORCH_RESERVED or part.startswith("_"):
            part += "_"
        parts.append(part)
    return TORCH_SEPARATOR.join(parts)


def model_root(layers):
    """The scope the layers share, ending in ``/`` ('' for none), short of every layer's own scope."""
    paths = [layer.scope.split(SEPARATOR) for layer in layers]
    if not paths:
        return ""
    shared = []
    for parts in zip(*[path[:-1] for path in paths]):
        if len(set(parts)) != 1:
            break
        shared.append(parts[0])
    return SEPARATOR.join(shared) + SEPARATOR if shared else ""


def kind_of(layer, epsilon=None):
    """``(name, spec)`` of the table kind that describes ``layer``; ``epsilon``, where given, is the kind's own
    (a batch norm whose epsilon is not the table's)."""
    out = CLASSES if layer.classes else OUT
    form = layer.form
    marks = {"classes": 0} if layer.classes else {}
    params, torch, onnx = {}, {}, {}
    name = list(NAMES[form])
    compute = {"op": COMPUTE_OPS[form]}
    if form in (unit_module.DEPTHWISE, unit_module.SEPARABLE):
        last = form == unit_module.DEPTHWISE
        # [kh, kw, in, multiplier] -> [in * multiplier, 1, kh, kw]: a grouped convolution, groups = in
        params[unit_module.DEPTHWISE_KERNEL] = ["kh", "kw", "in", "multiplier"]
        depthwise = {"from": unit_module.DEPTHWISE_KERNEL, "transform": "depthwise_to_grouped_oihw"}
        torch[f"{DEPTHWISE_ROLE}.weight"], onnx[unit_module.DEPTHWISE_KERNEL] = dict(depthwise), dict(depthwise)
        if last:
            out = "depthwise"  # in * multiplier channels: the kernel's output, as a size of its own
        else:
            # [1, 1, in * multiplier, out] -> [out, in * multiplier, 1, 1]
            params[unit_module.POINTWISE_KERNEL] = [1, 1, "depthwise", out]
            pointwise = {"from": unit_module.POINTWISE_KERNEL, "transform": "hwio_to_oihw", **marks}
            torch["pointwise.weight"], onnx[unit_module.POINTWISE_KERNEL] = pointwise, dict(pointwise)
    elif form != unit_module.NORM:
        params[unit_module.KERNEL] = KERNEL_DIMS[form] + [out]
        kernel = {"from": unit_module.KERNEL, "transform": TRANSFORMS[form], **marks}
        torch[f"{TORCH_ROLES[form]}.weight"], onnx[unit_module.KERNEL] = kernel, dict(kernel)
    if layer.biases is not None:
        params[unit_module.BIASES] = [out]
        torch[f"{TORCH_ROLES[form]}.bias"] = {"from": unit_module.BIASES, **marks}
        onnx[unit_module.BIASES] = {"from": unit_module.BIASES, **marks}
        name.append("bias")
    if layer.norm is not None:
        channels, prefix = ("channels", "") if form == unit_module.NORM else (out, f"{unit_module.BATCH_NORM}/")
        if form != unit_module.NORM:
            compute["batch_norm"] = True
            name.append("bn")
        for param, target in BN_TARGETS.items():
            key = prefix + param
            if layer.norm.get(param) is not None:
                params[key] = [channels]
                torch[f"{NORM_ROLE}.{target}"] = {"from": key}
                onnx[key] = {"from": key}
            else:
                torch[f"{NORM_ROLE}.{target}"] = {"fill": BN_FILLS[param], "shape": [channels]}
                onnx[key] = {"fill": BN_FILLS[param], "shape": [channels]}
                name.append(f"no{param}")
        torch[f"{NORM_ROLE}.num_batches_tracked"] = {"fill": 0, "shape": [], "dtype": "int64"}
        if epsilon is not None:
            compute["epsilon"] = epsilon
            name.append(f"eps{epsilon:g}")
    if layer.activation:
        compute["activation"] = layer.activation
        name.append(layer.activation)
    if layer.classes:
        name.append("classes")
    return "_".join(name), {"compute": compute, "params": params, "torch": torch, "onnx": onnx}


class GraphEmitter:
    """Emits the table's graph tree from units; ``names`` gives each named value its end point name."""

    def __init__(self, units, input_value, root):
        self.units = {unit.output: unit for unit in units}
        self.input = input_value
        self.root = root
        self.emitted = {}  # value -> the graph node (dict) that computes it
        self.names = {}  # value -> its name, once named
        self.taken = set()
        self._dominators(units)

    def _dominators(self, units):
        # immediate dominators over the DAG of values, units in topological order
        self.idom, self.depth = {self.input: None}, {self.input: 0}
        for unit in units:
            if any(value not in self.depth for value in unit.inputs):
                continue  # takes a value that does not reach the input: reported by the caller
            common = unit.inputs[0]
            for value in unit.inputs[1:]:
                common = self._common(common, value)
            self.idom[unit.output], self.depth[unit.output] = common, self.depth[common] + 1

    def _common(self, a, b):
        while a != b:
            if self.depth[a] >= self.depth[b]:
                a = self.idom[a]
            else:
                b = self.idom[b]
        return a

    def name(self, value, name=None):
        """Name the graph node computing ``value`` (an end point, or a value taken again later)."""
        if value in self.names:
            return self.names[value]
        node = self.emitted[value]
        if name is None:
            base = getattr(value, "node", str(value))
            name = base[len(self.root):] if base.startswith(self.root) else base
        candidate, index = name, 1
        while candidate in self.taken:
            index += 1
            candidate = f"{name}_{index}"
        self.taken.add(candidate)
        node["name"], node["scoped"] = candidate, False
        self.names[value] = candidate
        return candidate

    def emit(self, value, base):
        """The nodes computing ``value`` from ``base`` (the value their sequence starts from)."""
        chain = []
        while value != base and value not in self.emitted and value in self.units \
                and self.units[value].join is None:
            chain.append(value)
            value = self.units[value].inputs[0]
        if value == base:
            sequence = []
        elif value in self.emitted:
            sequence = [{"input": self.name(value), "nodes": []}]
        else:
            sequence = self._join(value, base)
        for item in reversed(chain):
            nodes = self._unit_nodes(self.units[item])
            if len(sequence) == 1 and set(sequence[0]) == {"input", "nodes"} and not sequence[0]["nodes"]:
                nodes[0] = {"input": sequence[0]["input"], **nodes[0]}
                sequence = []
            sequence += nodes
            self.emitted[item] = nodes[-1]
        return sequence

    def _join(self, value, base):
        unit = self.units[value]
        start = self.idom[value]
        sequence = self.emit(start, base)
        node = {unit.join: [self.emit(branch, start) for branch in unit.inputs]}
        if unit.activation:
            node["activation"] = unit.activation
        sequence.append(node)
        self.emitted[value] = node
        return sequence

    def _unit_nodes(self, unit):
        if unit.layer is None:
            return [dict(node) for node in unit.nodes]
        node = {"layer": unit.layer.scope[len(self.root):]}
        if unit.layer.form in (unit_module.CONV, unit_module.DEPTHWISE, unit_module.SEPARABLE):
            if unit.layer.stride != DEFAULT_STRIDE:
                node["stride"] = unit.layer.stride
            if unit.layer.padding != DEFAULT_PADDING:
                node["padding"] = unit.layer.padding
        return [node]


def build_graph(units, input_value, values, end_points, root):
    """The table's ``graph`` computing ``values`` (the first is the default output), named ``end_points``.

    Returns ``(graph, problems)``.
    """
    emitter = GraphEmitter(units, input_value, root)
    problems = [f"{value} does not depend on the input {input_value}" for value in values
                if value not in emitter.depth]
    if problems:
        return [], problems
    primary = emitter.emit(values[0], input_value)
    emitter.name(values[0], end_points[0])
    others = []
    for value, name in zip(values[1:], end_points[1:]):
        if value in emitter.emitted:
            emitter.name(value, name)
            continue
        sequence = emitter.emit(value, input_value)
        if not sequence or "input" not in sequence[0]:
            problems.append(f"output {name} shares no layer with {end_points[0]}; recover them one at a time")
            continue
        emitter.name(value, name)
        others.append(sequence)
    return _splice(primary, others, emitter), problems


def _splice(primary, others, emitter):
    # the default output's node comes last (writers take the graph's last node as the output), so the
    # other outputs' nodes go before the first top-level node they do not depend on
    if not others:
        return primary
    taken = {node["input"] for sequence in others for node in _walk(sequence) if "input" in node}
    last = max((index for index, node in enumerate(primary)
                if any(inner.get("name") in taken for inner in _walk([node]))), default=-1)
    extra = [node for sequence in others for node in sequence]
    if last + 1 >= len(primary):
        # they take the default output itself: it comes last again as a reference to it
        return primary + extra + [{"input": primary[-1]["name"], "nodes": []}]
    resumed = dict(primary[last + 1])
    if "input" not in resumed:
        previous = [value for value, node in emitter.emitted.items() if node is primary[last]]
        resumed = {"input": emitter.name(previous[0]), **resumed}
    return primary[: last + 1] + extra + [resumed] + primary[last + 2:]


def _walk(nodes):
    for node in nodes:
        yield node
        for branch in node.get("concat") or node.get("add") or []:
            yield from _walk(branch)
        yield from _walk(node.get("nodes", []))
