"""Recover a mapping table from a checkpoint's ``.meta`` graph, without TensorFlow.

    data = recover_data("model.ckpt.meta")                 # the table as YAML-ready data
    table = recover_table("model.ckpt.meta")               # a validated converter.mapping.Table

The inference network is found between the input placeholder and the logits (``inference``),
grouped into TF-Slim layers and graph units (``units``), and written out as a table of today's
schema (``table``): ``kinds``, ``layers``, ``graph`` and facts, with ``facts.meta_graph`` saying
how TensorFlow runs the same network for ``verify``. Anything the schema cannot express is an
error naming every op and node in the way, raised once.
"""

import pathlib

import numpy as np

from converter import mapping, storage
from converter.errors import GraphError
from converter.metagraph import inference, ops, table as table_module, units as unit_module
from converter.metagraph.reader import parse_ref, read_meta_graph

META_SUFFIX = ".meta"
DEFAULT_END_POINT = "Logits"
# TF-Slim's inception preprocessing; a graph fed by a placeholder does not state its range
DEFAULT_RANGE = [-1.0, 1.0]
DEFAULT_SIZE = 224


def meta_beside(checkpoint):
    """The ``.meta`` graph a ``tf.train.Saver`` wrote beside ``checkpoint`` (a prefix or V1 file), or None."""
    path = storage.path(str(checkpoint) + META_SUFFIX)
    return path if path.is_file() else None


def _refs(text, what):
    if text is None:
        return None
    names = [part.strip() for part in (text.split(",") if isinstance(text, str) else text) if str(part).strip()]
    try:
        return [parse_ref(str(name)) for name in names]
    except ValueError as error:
        raise GraphError(f"{what}: {error}") from None


def _epsilon(value):
    return float(str(np.float32(value)))  # as the graph wrote it: 0.001, not 0.0010000000474974513


def _table_epsilon(layers):
    # the epsilon most batch norms take is the table's; the others are their kinds' own
    counts = {}
    for layer in layers:
        if layer.norm is not None:
            epsilon = _epsilon(layer.norm["epsilon"])
            counts[epsilon] = counts.get(epsilon, 0) + 1
    return max(sorted(counts), key=counts.get) if counts else None


def recover_data(meta_path, *, input_node=None, outputs=None, input_range=None):
    """The mapping table of the network in ``meta_path``, as data (``mapping.validate`` accepts it).

    Args:
        meta_path: the ``.meta`` file (a MetaGraphDef).
        input_node: the tensor the network starts from (``images``, ``batch:0``); by default the one
            float placeholder the outputs depend on.
        outputs: tensors to output (names, or a comma-separated string); by default the logits, what
            the graph's Softmax takes. The first is the default output; end points are named after them.
        input_range: ``[low, high]`` of the network's input; the graph does not state it, so without it
            TF-Slim's [-1, 1] is assumed, and the table says so (``facts.preprocessing``).

    Raises ``GraphError`` naming every op and node the schema cannot express, and the fix.
    """
    meta_path = pathlib.Path(meta_path)
    graph = read_meta_graph(meta_path)
    input_refs = _refs(input_node, "--input")
    if input_refs is not None and len(input_refs) != 1:
        raise GraphError(f"--input takes one tensor, got {input_node!r}")
    if input_refs and input_refs[0].node not in graph.nodes:
        raise GraphError(f"{meta_path}: --input {input_node}: no node of that name in the graph")
    network = inference.find_network(graph, input_refs[0] if input_refs else None, _refs(outputs, "--outputs"))
    problems = list(network.problems)
    units = unit_module.build_units(network, problems) if not problems else []
    layers = [unit.layer for unit in units if unit.layer is not None]
    if not problems and not layers:
        problems.append("the network between the input and the outputs has no layer with variables")
    if problems:
        _fail(meta_path, problems)
    root = table_module.model_root(layers)
    end_points = _end_points(network, outputs, root)
    graph_nodes, graph_problems = table_module.build_graph(units, network.input, network.values, end_points, root)
    epsilon = _table_epsilon(layers)
    kinds, rows, problems = _kinds_and_rows(layers, root, epsilon)
    problems += graph_problems
    if problems:
        _fail(meta_path, problems)
    data = {
        "schema": mapping.SCHEMA,
        "architecture": f"recovered from {meta_path.name}",
        "description": f"the network of {meta_path.name} (inputs {network.input}, outputs "
                       f"{', '.join(map(str, network.outputs))}), recovered by ckpt-convert"
                       + ("" if input_range else "; its input range [-1, 1] is assumed (map --input-range sets it)"),
        "scope": root.rstrip(table_module.SEPARATOR).rpartition(table_module.SEPARATOR)[2],
        "detect": _detect(layers, root),
        "facts": _facts(network, layers, end_points, epsilon, input_range),
        "targets": {"torch": {"models": ["the exact module (converter.nets.torch.build)"]}, "onnx": {}},
        "kinds": kinds,
        "graph": graph_nodes,
        "layers": rows,
    }
    problems = mapping.validate(data)
    if problems:
        raise AssertionError(f"recovered an invalid table: {problems}")
    return data


def recover_table(meta_path, **options):
    """``recover_data`` as a ``converter.mapping.Table`` whose path is the ``.meta`` file."""
    return table_from_data(meta_path, recover_data(meta_path, **options))


def table_from_data(meta_path, data):
    """A ``converter.mapping.Table`` of recovered ``data``, its path the ``.meta`` file it came from."""
    return mapping.table_from_data(pathlib.Path(meta_path), data)


def _fail(meta_path, problems):
    problems = list(dict.fromkeys(problems))
    hint = ""
    if any(problem.endswith(ops.UNKNOWN_OP) for problem in problems):
        hint = f"(an op that is not supported may be input pipeline or preprocessing before the network: " \
               f"{inference.INPUT_HINT})"
    if len(problems) == 1:
        raise GraphError(f"{meta_path}: cannot recover the network: {problems[0]}" + (f" {hint}" if hint else ""))
    raise GraphError(f"{meta_path}: cannot recover the network ({len(problems)} problems):\n  "
                     + "\n  ".join(problems) + (f"\n{hint}" if hint else ""))


def _end_points(network, outputs, root):
    # named after the outputs, relative to the model scope; the logits found by default are `Logits`
    names = []
    for index, ref in enumerate(network.outputs):
        text = str(ref)
        if index == 0 and not outputs:
            names.append(DEFAULT_END_POINT)
        else:
            names.append(text[len(root):] if text.startswith(root) and len(text) > len(root) else text)
    return names


def _kinds_and_rows(layers, root, epsilon):
    kinds, rows, problems, modules = {}, {}, [], {}
    for layer in layers:
        own = _epsilon(layer.norm["epsilon"]) if layer.norm is not None else epsilon
        name, spec = table_module.kind_of(layer, own if own != epsilon else None)
        while name in kinds and kinds[name] != spec:
            name += "_"
        kinds[name] = spec
        scope = layer.scope[len(root):]
        if scope in rows:
            problems.append(f"layer {layer.scope} is computed twice (nodes {', '.join(layer.nodes)})")
            continue
        torch = table_module.torch_name(scope)
        for module in [torch] + [f"{torch}.{key.partition('.')[0]}" for key in spec["torch"]]:
            if modules.get(module, layer.scope) != layer.scope:
                problems.append(f"layers {modules[module]} and {layer.scope} both need the torch module {module}")
            modules[module] = layer.scope
        rows[scope] = {"kind": name, "torch": torch, "onnx": scope}
    return kinds, rows, problems


def _detect(layers, root):
    # the first and the last layer's kernel (a batch norm alone: its moving mean)
    names = []
    for layer in (layers[0], layers[-1]):
        variable = layer.weights if layer.weights is not None else layer.norm[unit_module.MOVING_MEAN]
        names.append(variable.name[len(root):])
    return list(dict.fromkeys(names))


def _facts(network, layers, end_points, epsilon, input_range):
    shape = network.shape(network.input) or (None, None, None, None)
    height, width, channels = (tuple(shape[1:4]) + (None,) * 3)[:3] if len(shape) == 4 else (None, None, None)
    stated = height is not None and width is not None
    classifier = next((layer for layer in layers if layer.classes), None)
    classes = classifier.weights.shape[-1] if classifier is not None and classifier.weights.shape else 0
    facts = {
        "num_classes": int(classes),
        "background_class": None,
        "input": {"height": int(height or DEFAULT_SIZE), "width": int(width or DEFAULT_SIZE),
                  "channels": int(channels or 3), "range": [float(v) for v in (input_range or DEFAULT_RANGE)]},
        "preprocessing": ("the input range was given to `ckpt-convert map --input-range`" if input_range else
                          "the graph does not state the input range; TF-Slim's [-1, 1] is assumed "
                          "(`ckpt-convert map --input-range LOW,HIGH` sets it)")
                         + ("" if stated else f"; nor its input size ({DEFAULT_SIZE} assumed, --input-size sets it)"),
    }
    if epsilon is not None:
        facts["batch_norm_epsilon"] = epsilon
    facts["end_points"] = list(end_points)
    facts["meta_graph"] = {
        "input": str(network.input),
        "outputs": {name: str(ref) for name, ref in zip(end_points, network.outputs)},
        "training_flags": list(network.flags),
        "batch_norms": {layer.norm["training"]: [layer.norm[unit_module.MOVING_MEAN].name,
                                                 layer.norm[unit_module.MOVING_VARIANCE].name]
                        for layer in layers if layer.norm is not None and layer.norm["training"]
                        and not layer.norm["statistics"]},
        "dropouts": dict(network.dropouts),
    }
    # a training-mode batch norm written as arithmetic: the inputs that take the batch's statistics
    statistics = {f"{node}:{position}": layer.norm[role].name
                  for layer in layers if layer.norm is not None and layer.norm["training"] and layer.norm["statistics"]
                  for role, (node, position) in layer.norm["statistics"].items()}
    if statistics:
        facts["meta_graph"]["statistics"] = statistics
    return facts
