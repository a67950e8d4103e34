"""The types and ranges of a mapping table's values, and what a plan adds once a checkpoint is bound.

``mapping.validate`` checks a table's structure (kinds, rows, graph references); the functions here
check every value it relies on is of the type and in the range ``mappings/README.md`` gives, so that
no later stage meets a string where it counts, a negative window or an axis a tensor lacks.
``entry_problems`` checks a plan's entries against the checkpoint: one key per target tensor,
floating-point sources, fills no larger than the checkpoint's own tensors, class axes and the
background class inside the tensors they index.
"""

import collections
import math

import ml_dtypes
import numpy as np

# a network input side larger than any classifier or detector takes; windows, strides and pads
# never need more than the map they slide over
MAX_SIDE = 4096
MAX_CHANNELS = 16
# classifier heads of a few thousand classes are common, ten million is not a classifier
MAX_CLASSES = 10_000_000
FLOAT32_MAX = float(np.finfo(np.float32).max)
INT64_RANGE = (-(1 << 63), (1 << 63) - 1)
COMPUTE_OPS = ("conv", "linear")
ACTIVATIONS = ("relu", "relu6")
TARGETS = ("torch", "keras", "onnx")
TARGET_LISTS = ("models", "skip", "optional", "restrictions", "order")
THIRD_PARTY = ("torchvision", "timm")
POOLS = ("max_pool", "avg_pool")
GLOBAL = "global"
# the floating-point types a TensorFlow checkpoint stores weights in; a layer computes with them
SOURCE_DTYPES = {np.dtype(np.float16), np.dtype(ml_dtypes.bfloat16), np.dtype(np.float32), np.dtype(np.float64)}


def _is_int(value, low=None, high=None):
    # YAML's true and false are Python ints too: they are not counts
    return (isinstance(value, int) and not isinstance(value, bool)
            and (low is None or value >= low) and (high is None or value <= high))


def _is_number(value):
    # every number of a table ends up in a float32 tensor or attribute; ints compare without conversion
    return (isinstance(value, (int, float)) and not isinstance(value, bool) and not value != value
            and abs(value) <= FLOAT32_MAX)


def _is_strings(value):
    return isinstance(value, list) and all(isinstance(item, str) for item in value)


def _is_string_map(value):
    return isinstance(value, dict) and all(isinstance(item, str) for item in value.values())


def _is_dims(value):
    # {layer: {dimension: size}}, sizes a model builds
    return isinstance(value, dict) and all(isinstance(sizes, dict) and all(_is_int(size, 1) for size in sizes.values())
                                           for sizes in value.values())


def _short(value):
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def value_problems(data):
    """Every value of table ``data`` (a dict with the top-level keys typed) of the wrong type or out of range."""
    problems = []
    if not data["detect"] or not all(isinstance(item, str) and item for item in data["detect"]):
        problems.append("detect must list one or more variable names")
    # a kind with an epsilon of its own needs none from the facts
    problems += _facts(data["facts"], any(isinstance(kind, dict) and isinstance(kind.get("compute"), dict)
                                          and kind["compute"].get("batch_norm") and "epsilon" not in kind["compute"]
                                          for kind in data["kinds"].values()))
    targets = data.get("targets", {})
    if isinstance(targets, dict):
        for target, spec in targets.items():
            problems += _target(target, spec)
    for name, kind in data["kinds"].items():
        problems += _kind(name, kind)
    for layer, row in data["layers"].items():
        problems += _row(layer, row)
    named = collections.Counter()
    problems += _nodes(data["graph"], "graph", named)
    problems += [f"graph: {count} nodes are named {name} (each end point needs its own)"
                 for name, count in named.items() if count > 1]
    return problems


def _facts(facts, batch_norm):
    problems = []
    if not _is_int(facts.get("num_classes"), 1, MAX_CLASSES):
        problems.append(f"facts.num_classes must be an integer from 1 to {MAX_CLASSES:,}")
    background = facts.get("background_class")
    classes = facts.get("num_classes")
    if background is not None and not (_is_int(background, 0) and _is_int(classes) and background < classes):
        problems.append(f"facts.background_class must be null or a class index below num_classes "
                        f"(got {_short(background)})")
    spec = facts.get("input")
    if isinstance(spec, dict):
        for key, high in (("height", MAX_SIDE), ("width", MAX_SIDE), ("channels", MAX_CHANNELS)):
            if not _is_int(spec.get(key), 1, high):
                problems.append(f"facts.input.{key} must be an integer from 1 to {high}")
        bounds = spec.get("range", [-1.0, 1.0])
        if not (isinstance(bounds, list) and len(bounds) == 2 and all(map(_is_number, bounds))
                and bounds[0] < bounds[1]):
            problems.append(f"facts.input.range must be [low, high], two numbers, low below high (got {_short(bounds)})")
    epsilon = facts.get("batch_norm_epsilon")
    if (batch_norm or epsilon is not None) and not (_is_number(epsilon) and epsilon > 0):
        problems.append("facts.batch_norm_epsilon must be a positive number where a kind has batch_norm")
    if not _is_strings(facts.get("end_points", [])):
        problems.append("facts.end_points must list graph node names")
    reference = facts.get("reference")
    if isinstance(reference, dict):
        if not _is_string_map(reference.get("end_points", {})):
            problems.append("facts.reference.end_points must map end points to names")
        if not _is_strings(reference.get("squeeze", [])):
            problems.append("facts.reference.squeeze must list end points")
    for key in ("preprocessing", "description"):
        if key in facts and not isinstance(facts[key], str):
            problems.append(f"facts.{key} must be text")
    return problems


def _target(target, spec):
    where = f"targets.{target}"
    if not isinstance(spec, dict):
        return [f"{where} must be a mapping (`{target}: {{}}` when there is nothing to say)"]
    problems = [f"{where}.{key} must be a list of names" for key in TARGET_LISTS
                if key in spec and not _is_strings(spec[key])]
    for key in ("application", "width", "classifier"):
        if key in spec and not isinstance(spec[key], str):
            problems.append(f"{where}.{key} must be a name")
    if not _is_string_map(spec.get("end_points", {})):
        problems.append(f"{where}.end_points must map end points to names")
    if not _is_dims(spec.get("dims", {})):
        problems.append(f"{where}.dims must map layers to {{dimension: size}}")
    for model in THIRD_PARTY:
        if model in spec:
            entry = spec[model]
            if not (isinstance(entry, dict) and isinstance(entry.get("model"), str)
                    and isinstance(entry.get("options", {}), dict) and isinstance(entry.get("aux", ""), str)
                    and isinstance(entry.get("width", ""), str) and _is_string_map(entry.get("end_points", {}))):
                problems.append(f"{where}.{model} must give model (a name), and may give options (a mapping), "
                                f"aux and width (names) and end_points (a mapping)")
            elif not _is_dims(entry.get("dims", {})):
                problems.append(f"{where}.{model}.dims must map layers to {{dimension: size}}")
    return problems


def _kind(name, kind):
    where = f"kinds.{name}"
    if not isinstance(kind, dict):
        return []  # mapping.validate names it
    problems = []
    compute = kind.get("compute")
    if isinstance(compute, dict):
        if not isinstance(compute.get("batch_norm", False), bool):
            problems.append(f"{where}.compute.batch_norm must be true or false")
        if compute.get("activation") not in (None, *ACTIVATIONS):
            problems.append(f"{where}.compute.activation must be one of {', '.join(ACTIVATIONS)}")
        if "epsilon" in compute and not (_is_number(compute["epsilon"]) and compute["epsilon"] > 0
                                         and (compute.get("batch_norm") or compute.get("op") == "batch_norm")):
            problems.append(f"{where}.compute.epsilon must be a positive number, on a kind with a batch norm")
    params = kind.get("params")
    if isinstance(params, dict):
        for param, dims in params.items():
            if not (isinstance(dims, list) and all(isinstance(d, str) or _is_int(d, 1) for d in dims)):
                problems.append(f"{where}.params.{param} must list dimension names or sizes")
    for target in TARGETS:
        column = kind.get(target, {})
        if not isinstance(column, dict):
            problems.append(f"{where}.{target} must map target tensors to `from` or `fill`")
            continue
        for key, spec in column.items():
            problems += _tensor(f"{where}.{target}.{key}", spec)
    return problems


def _tensor(where, spec):
    if not isinstance(spec, dict):
        return []  # mapping.validate names it
    problems = []
    for key in ("from", "transform", "dtype"):
        if key in spec and not isinstance(spec[key], str):
            problems.append(f"{where}: {key} must be a name (got {_short(spec[key])})")
    if "classes" in spec and not _is_int(spec["classes"], 0):
        problems.append(f"{where}: classes must be an axis of the target tensor (0, 1, ...)")
    if "fill" in spec:
        fill, integer = spec["fill"], spec.get("dtype") == "int64"
        if integer and not _is_int(fill, *INT64_RANGE) or not _is_number(fill):
            problems.append(f"{where}: fill must be a finite number{', an integer' if integer else ''} "
                            f"(got {_short(fill)})")
        shape = spec.get("shape")
        if not (isinstance(shape, list) and all(isinstance(d, str) or _is_int(d, 0, MAX_CLASSES) for d in shape)):
            problems.append(f"{where}: a fill's shape must list dimension names or sizes (got {_short(shape)})")
    return problems


def _row(layer, row):
    if not isinstance(row, dict):
        return []  # mapping.validate names it
    problems = []
    for target in TARGETS:
        name = row.get(target)
        if name is not None and not (isinstance(name, str) or _is_string_map(name)):
            problems.append(f"layers.{layer}.{target} must be a name or a mapping of role to name")
    return problems


def _nodes(nodes, where, named):
    if not isinstance(nodes, list):
        return [f"{where} must be a list of nodes"]
    problems = []
    for node in nodes:
        if isinstance(node, dict):
            problems += _node(node, where, named)
    return problems


def _node(node, where, named):
    problems = []
    for key in ("name", "layer", "input", "padding"):
        if key in node and not isinstance(node[key], str):
            problems.append(f"{where}: {key} {_short(node[key])} must be a name")
    if isinstance(node.get("name"), str):
        named[node["name"]] += 1
        where = f"{where} {node['name']}"
    if "stride" in node and not _is_int(node["stride"], 1, MAX_SIDE):
        problems.append(f"{where}: stride {_short(node['stride'])} must be an integer from 1 to {MAX_SIDE}")
    for pool in POOLS:
        if pool in node:
            window = node[pool]
            if not (window == GLOBAL and pool == "avg_pool" or isinstance(window, list) and len(window) == 2
                    and all(_is_int(size, 1, MAX_SIDE) for size in window)):
                problems.append(f"{where}: {pool} {_short(window)} must be [height, width], from 1 to {MAX_SIDE}"
                                + (", or global" if pool == "avg_pool" else ""))
    if "scale" in node and not _is_number(node["scale"]):
        problems.append(f"{where}: scale {_short(node['scale'])} must be a finite number")
    pads = node.get("pad")
    if isinstance(pads, list) and any(isinstance(pair, list) and any(_is_int(n) and n > MAX_SIDE for n in pair)
                                      for pair in pads):
        problems.append(f"{where}: pad {_short(pads)} pads more than {MAX_SIDE}")
    for key in ("concat", "add"):
        if key in node and isinstance(node[key], list):
            for branch in node[key]:
                problems += _nodes(branch, where, named)
    if "nodes" in node:
        problems += _nodes(node["nodes"], where, named)
    return problems


def entry_problems(table, rows, entries, shapes, layer_scopes, dtypes=None):
    """Problems of a plan's entries (one per row of ``rows``; None where the row failed) for the checkpoint.

    Args:
        table: the mapping table; ``layer_scopes``: each layer's full scope in the checkpoint
            (``tower_0/Net/AuxLogits/Conv2d_2a_3x3/``).
        shapes, dtypes: ``{variable: shape}`` and, when given, ``{variable: numpy dtype}`` of the checkpoint.

    Returns:
        messages: target keys given twice, sources that are not floating point, fills larger than
        the layer's own tensors, class axes outside the target tensor, background classes outside
        the classes.
    """
    problems = []
    keys = collections.Counter(entry.key for entry in entries if entry is not None)
    for key, count in keys.items():
        if count > 1:
            layers = sorted({row.layer for row, entry in zip(rows, entries) if entry is not None and entry.key == key})
            problems.append(f"target key {key} is given {count} times (layers {', '.join(layers)}); "
                            f"each target tensor needs its own name")
    largest = {}  # layer -> elements of its largest checkpoint tensor
    for row in rows:
        if row.layer not in largest:
            params = table.kind_of(row.layer).params
            scope = layer_scopes[row.layer]
            sizes = [math.prod(shapes[f"{scope}{p}"]) for p in params if f"{scope}{p}" in shapes]
            largest[row.layer] = max([1, *sizes])
    for row, entry in zip(rows, entries):
        if entry is not None:
            problems += _entry_problems(row, entry, largest[row.layer], dtypes)
    return problems


def _entry_problems(row, entry, largest, dtypes):
    problems = []
    if entry.source is None:
        if math.prod(entry.shape) > largest:
            problems.append(f"{entry.key}: a fill of shape {list(entry.shape)} is larger than any tensor of layer "
                            f"{row.layer} ({largest} elements); check its `shape`")
        return problems
    dtype = (dtypes or {}).get(entry.source)
    if dtype is not None and dtype not in SOURCE_DTYPES:
        problems.append(f"{entry.source}: its dtype is {'string' if dtype == object else dtype}, where layer "
                        f"weights are floating point (float32); is the mapping row right?")
    if row.classes is not None and row.classes >= len(entry.shape):
        problems.append(f"{entry.key}: classes axis {row.classes} of a tensor of rank {len(entry.shape)}")
    elif entry.drop_class is not None:
        axis, index = entry.drop_class
        if index > entry.shape[axis]:  # the shape already lacks the dropped class
            problems.append(f"{entry.source}: background_class {index} is not one of its {entry.shape[axis] + 1} "
                            f"classes; pass --keep-background or fix facts.background_class")
    return problems
