"""Mapping tables: YAML data that says where every slim variable goes in each target.

A table (schema: ``mappings/README.md``) is loaded and validated as a whole: every problem is
reported in one ``MappingError``. ``plan`` then binds a table to one checkpoint's variables and
checks everything before anything is written: unmapped source variables, rows the checkpoint
cannot fill, and shapes that disagree are all gathered into one error.
"""

import collections
import dataclasses
import fnmatch
import functools
import importlib.resources
import pathlib
import re

import numpy as np

from converter import _table_rules, _yaml, graph, names, table_schema, transforms
from converter.errors import ConvertError, MappingError, join_problems

SCHEMA = 1
TARGETS = ("torch", "keras", "onnx")
# how a row's target name and a kind's template key join
# targets whose rows name one layer per role (class): Keras keeps a conv and its batch norm apart
ROLE_TARGETS = ("keras",)
SEPARATORS = {"torch": ".", "keras": "/", "onnx": "/"}
# `batch_norm`: a layer that is a batch norm alone (ResNet-v2's preact and postnorm), its params the norm's own
COMPUTE_OPS = ("conv", "linear", "batch_norm", "depthwise", "separable")
BATCH_NORM_OP = "batch_norm"
# the slim variables a depthwise op's kind must take (their names differ from conv's `weights`): a
# depthwise convolution's kernel, and for a separable one also the 1x1 pointwise kernel applied after it
DEPTHWISE_KERNEL, POINTWISE_KERNEL = "depthwise_weights", "pointwise_weights"
OP_KERNELS = {"depthwise": (DEPTHWISE_KERNEL,), "separable": (DEPTHWISE_KERNEL, POINTWISE_KERNEL)}
NODE_KINDS = tuple(graph.PARSERS)
NODE_OPTIONS = ("name", "scoped", "input", "stride", "padding", "activation", "reduced")
# what may follow a node: a layer's from its kind's `compute.activation`, an `add`'s from its own option
ACTIVATIONS = ("relu", "relu6")
PADDINGS = ("SAME", "VALID")
# `flatten: true` takes a 1x1 map; `flatten: spatial` any map, in the order of the target's layout;
# `flatten: hwc` any map, in TensorFlow's order (H, W, C) in every target
FLATTENS = (True, "spatial", "hwc")
REFERENCE_KEYS = ("module", "network", "arg_scope", "classifier")
FILL_DTYPES = ("float32", "int64")
# a size in a layer scope's name, bound to a dimension of its tensors: Conv2d_2a_{kh}x{kw}
SIZE_FIELD = re.compile(r"\{(\w+)\}")

EMA_SUFFIX = names.SEPARATOR + names.EMA_SUFFIX
# what a variable the table does not take is, by the name parser's role
SKIPPED_ROLES = {
    names.ROLE_SLOT: "optimizer slots",
    "global_step": "training state",
    "optimizer": "training state",
    "learning_rate": "training state",
}


def _builtin_dir():
    return importlib.resources.files("converter.mappings")


def builtin_tables():
    """Names of the mapping tables shipped with the package."""
    return sorted(p.name[: -len(".yaml")] for p in _builtin_dir().iterdir()
                  if p.name.endswith(".yaml") and p.name != table_schema.LIBRARY)


@dataclasses.dataclass(frozen=True)
class Row:
    """One target tensor of one layer: taken from a slim variable, or a fill."""

    layer: str  # slim layer scope, relative to the model scope
    key: str  # name in the target file
    source: str | None  # slim parameter under the layer (``weights``, ``BatchNorm/beta``...), None for fills
    transform: str
    classes: int | None  # axis of the target tensor that holds the classes
    fill: float | None
    fill_shape: tuple  # dimension names or sizes, bound per layer by ``plan``
    dtype: str | None


@dataclasses.dataclass(frozen=True)
class Tensor:
    """One target tensor of a kind (``kinds.NAME.<target>.KEY``): from a slim parameter, or a fill."""

    key: str  # joined to a row's target name (``conv.weight``, ``conv2d/kernel``)
    source: str | None  # the kind's param it is taken from (``weights``, ``BatchNorm/beta``); None for a fill
    transform: str = "identity"
    classes: int | None = None  # axis that holds the classes
    fill: float | None = None
    shape: tuple = ()  # a fill's dimension names or sizes
    dtype: str | None = None


@dataclasses.dataclass(frozen=True)
class Compute:
    """What a kind computes (``kinds.NAME.compute``)."""

    op: str  # one of COMPUTE_OPS
    batch_norm: bool = False
    activation: str | None = None
    epsilon: float | None = None  # the kind's own batch norm epsilon, else the table's


@dataclasses.dataclass(frozen=True)
class Kind:
    """A layer kind: its slim params (``{param: (dimension name or size, ...)}``), op and target tensors."""

    name: str
    params: dict
    compute: Compute
    columns: dict  # target -> {key: Tensor}, in the table's order

    def column(self, target):
        """The target tensors of ``target`` in the table's order (empty where the kind has none)."""
        return tuple(self.columns.get(target, {}).values())

    def sources(self, target, param):
        """The keys of ``target``'s tensors taken from slim param ``param``."""
        return [tensor.key for tensor in self.column(target) if tensor.source == param]

    @property
    def dims(self):
        """Every dimension name its params bind."""
        return {dim for shape in self.params.values() for dim in shape if isinstance(dim, str)}


@dataclasses.dataclass(frozen=True)
class LayerRow:
    """A row of ``layers``: a slim layer scope, its kind and its name in each target."""

    layer: str
    kind: Kind
    names: dict  # target -> a prefix, or {role: layer name}

    def name(self, target):
        """The row's ``target`` name (a prefix or ``{role: name}``), None where it has none."""
        return self.names.get(target)

    def key(self, target, key, dims=None):
        """The target key of a kind's ``key`` in this row, sizes in it bound from ``dims``."""
        joined = join_key(target, self.names[target], key)
        return bind_name(joined, dims) if dims is not None else joined


@dataclasses.dataclass(frozen=True)
class InputSpec:
    """``facts.input``: the default size, channels and value range the network takes."""

    height: int
    width: int
    channels: int
    range: tuple = (-1.0, 1.0)
    mean: tuple | None = None
    sizes: tuple = ()


@dataclasses.dataclass(frozen=True)
class Facts:
    """``facts``: what is true of the architecture."""

    num_classes: int
    background_class: int | None
    input: InputSpec
    end_points: tuple
    batch_norm_epsilon: float | None
    preprocessing: str | None
    reference: dict | None  # module, network, arg_scope, classifier, end_points, squeeze, heads
    meta_graph: dict | None  # a table recovered from a .meta: what its reference needs

    @property
    def classifier(self):
        """The layer whose class count is the checkpoint's (``reference.classifier``), or None."""
        return (self.reference or {}).get("classifier")


@dataclasses.dataclass(frozen=True)
class Model:
    """A third-party model a target's output loads into (``targets.torch.torchvision``, ``...timm``)."""

    library: str
    model: str
    options: dict
    aux: str | None  # the option that builds the auxiliary head
    width: str | None  # the option that takes the width multiplier
    end_points: dict  # end point -> module path
    dims: dict  # {layer: {dimension: size}} it builds


@dataclasses.dataclass(frozen=True)
class Target:
    """``targets.<target>``: what the table says of one target."""

    name: str
    skip: tuple = ()  # groups the target never has
    optional: tuple = ()  # groups kept where the checkpoint has them
    order: tuple | None = None  # keras: layers with weights in model.layers order
    models: tuple = ()
    restrictions: tuple = ()
    drift: str = ""
    application: str | None = None
    width: str | None = None
    classifier: str | None = None
    end_points: dict = dataclasses.field(default_factory=dict)
    dims: dict = dataclasses.field(default_factory=dict)
    third_party: dict = dataclasses.field(default_factory=dict)  # library -> Model


@dataclasses.dataclass(frozen=True)
class Table:
    """A validated mapping table, parsed once into typed parts (``table_from_data``)."""

    path: pathlib.Path
    architecture: str
    scope: str
    detect: tuple
    detect_absent: tuple  # variables whose presence rules the architecture out (a deeper network)
    facts: Facts
    targets: dict  # target -> Target
    kinds: dict  # name -> Kind
    layers: dict  # layer scope -> LayerRow
    graph: tuple  # converter.graph nodes
    outside: tuple = ()  # scope patterns under the root that are not the network (a detector's extra layers)
    digest: str = ""  # blake2b of the table's meaning (``table_schema.digest``): the same whatever its layout

    @property
    def num_classes(self):
        return self.facts.num_classes

    @property
    def background_class(self):
        return self.facts.background_class

    def kind_of(self, layer):
        """The ``Kind`` of a table layer."""
        return self.layers[layer].kind

    def groups(self, target):
        """Graph end points whose layers ``target`` never has (its ``skip``)."""
        spec = self.targets.get(target)
        return spec.skip if spec is not None else ()

    def group_layers(self, groups):
        """The layers under the graph nodes named in ``groups``."""
        return graph.group_layers(self.graph, groups)

    def rows(self, target, *, skip=()):
        """Every target tensor of every layer, in table order, leaving out layers under ``skip`` groups."""
        rows = []
        left_out = self.group_layers(skip)
        for layer, row in self.layers.items():
            if layer in left_out:
                continue
            for tensor in row.kind.column(target):
                rows.append(
                    Row(
                        layer=layer,
                        key=row.key(target, tensor.key),
                        source=tensor.source,
                        transform=tensor.transform,
                        classes=tensor.classes,
                        fill=tensor.fill,
                        fill_shape=tensor.shape,
                        dtype=tensor.dtype,
                    )
                )
        return rows


def join_key(target, name, key):
    """A target tensor's key: a row's target ``name`` (a prefix, or ``{role: name}``) joined to a kind's ``key``."""
    if isinstance(name, dict):  # {role: layer name}: the key's first component names the role
        role, _, rest = key.partition(SEPARATORS[target])
        return f"{name[role]}{SEPARATORS[target]}{rest}"
    return f"{name}{SEPARATORS[target]}{key}"


def load_table(name_or_path):
    """Load and validate a mapping table: a built-in architecture name or a path to a YAML file."""
    path = pathlib.Path(name_or_path)
    if path.suffix not in (".yaml", ".yml"):
        return _load_builtin(str(name_or_path))
    return _load_file(path)


@functools.lru_cache(maxsize=None)
def _load_builtin(name):
    # shipped tables do not change while the process runs: detection and every command share one load
    builtin = _builtin_dir() / f"{name}.yaml"
    if not builtin.is_file():
        raise MappingError(f"no mapping table {name!r}; built-in: {', '.join(builtin_tables())}, or pass a .yaml path")
    return _load_file(pathlib.Path(str(builtin)))


def _load_file(path):
    data = table_schema.read(path)  # a schema 2 file expanded into the form validated here
    problems = validate(data)
    if problems:
        raise MappingError(f"{path}: invalid mapping table ({len(problems)} problems):\n  " + join_problems(problems))
    return table_from_data(path, data)


def table_from_data(path, data):
    """A ``Table`` of validated table ``data`` (parsed YAML, or a recovered graph's), read from ``path``."""
    kinds = {name: _kind(name, kind) for name, kind in data["kinds"].items()}
    return Table(
        path=path,
        architecture=data["architecture"],
        scope=data["scope"],
        detect=tuple(data["detect"]),
        detect_absent=tuple(data.get("detect_absent", ())),
        outside=tuple(data.get("outside", ())),
        facts=_facts(data["facts"]),
        targets={target: _target(target, spec) for target, spec in data.get("targets", {}).items()},
        kinds=kinds,
        layers={layer: LayerRow(layer, kinds[row["kind"]], {t: row[t] for t in TARGETS if row.get(t) is not None})
                for layer, row in data["layers"].items()},
        graph=graph.parse(data["graph"]),
        digest=table_schema.digest(data),
    )


def _kind(name, kind):
    compute = kind["compute"]
    columns = {target: {key: Tensor(key, spec.get("from"), spec.get("transform", "identity"), spec.get("classes"),
                                    spec.get("fill"), tuple(spec.get("shape", ())), spec.get("dtype"))
                        for key, spec in kind[target].items()}
               for target in TARGETS if kind.get(target)}
    return Kind(name, {param: tuple(dims) for param, dims in kind["params"].items()},
                Compute(compute["op"], bool(compute.get("batch_norm", False)), compute.get("activation"),
                        compute.get("epsilon")), columns)


def _facts(facts):
    spec = facts["input"]
    return Facts(
        num_classes=facts["num_classes"],
        background_class=facts.get("background_class"),
        input=InputSpec(spec["height"], spec["width"], spec["channels"], tuple(spec.get("range", (-1.0, 1.0))),
                        tuple(spec["mean"]) if spec.get("mean") is not None else None, tuple(spec.get("sizes", ()))),
        end_points=tuple(facts.get("end_points") or ()),
        batch_norm_epsilon=facts.get("batch_norm_epsilon"),
        preprocessing=facts.get("preprocessing"),
        reference=facts.get("reference"),
        meta_graph=facts.get("meta_graph"),
    )


def _target(target, spec):
    third_party = {library: Model(library, model["model"], dict(model.get("options", {})), model.get("aux"),
                                  model.get("width"), dict(model.get("end_points", {})), dict(model.get("dims", {})))
                   for library, model in spec.items() if library in _table_rules.THIRD_PARTY}
    order = spec.get("order")
    return Target(target, tuple(spec.get("skip", ())), tuple(spec.get("optional", ())),
                  tuple(order) if order is not None else None, tuple(spec.get("models", ())),
                  tuple(spec.get("restrictions", ())), spec.get("drift", ""), spec.get("application"),
                  spec.get("width"), spec.get("classifier"), dict(spec.get("end_points", {})),
                  dict(spec.get("dims", {})), third_party)


def validate(data):
    """Every problem of a parsed table, as messages (empty when valid)."""
    if not isinstance(data, dict):
        return ["the table must be a mapping at the top level"]
    problems = []
    for key, kind in (("schema", int), ("architecture", str), ("scope", str), ("detect", list),
                      ("facts", dict), ("kinds", dict), ("layers", dict), ("graph", list)):
        if not isinstance(data.get(key), kind):
            problems.append(f"`{key}` must be a {kind.__name__}")
    if problems:
        return problems
    if data["schema"] != SCHEMA:
        problems.append(f"schema {data['schema']} is not supported (this version reads schema {SCHEMA})")
    targets = data.get("targets", {})
    shapes = ((targets, dict, "`targets` must be a mapping"),
              (data["facts"].get("input", {}), dict, "facts.input must be a mapping"),
              (data["facts"].get("end_points", []), list, "facts.end_points must be a list"))
    problems += [message for value, kind, message in shapes if not isinstance(value, kind)]
    problems += _table_rules.value_problems(data) if not problems else []
    if problems:
        return problems  # what follows relies on every value having its type
    problems += _validate_facts(data["facts"])
    absent = data.get("detect_absent", [])
    if not isinstance(absent, list) or not all(isinstance(name, str) for name in absent):
        problems.append("`detect_absent` must be a list of variable names")
    elif set(absent) & set(data["detect"]):
        repeated = ", ".join(sorted(set(absent) & set(data["detect"])))
        problems.append(f"`detect_absent` repeats `detect` variables: {repeated} (a network cannot have and lack them)")
    outside = data.get("outside", [])
    if not isinstance(outside, list) or not all(isinstance(pattern, str) and pattern for pattern in outside):
        problems.append("`outside` must be a list of scope patterns (fnmatch: `layer_19_*`)")
    for target, spec in targets.items():
        if target not in TARGETS:
            problems.append(f"targets: unknown target {target!r} (known: {', '.join(TARGETS)})")
        elif isinstance(spec, dict) and not isinstance(spec.get("drift", ""), str):
            problems.append(f"targets.{target}.drift must be a sentence saying why the target's model drifts")
    for name, kind in data["kinds"].items():
        problems += _validate_kind(name, kind)
    normed = [name for name, kind in data["kinds"].items() if _has_batch_norm(kind)
              and "epsilon" not in kind["compute"]]
    epsilon = data["facts"].get("batch_norm_epsilon")
    if normed and (not isinstance(epsilon, (int, float)) or isinstance(epsilon, bool) or epsilon <= 0):
        problems.append(f"facts.batch_norm_epsilon must be a positive number: kinds {', '.join(normed)} "
                        f"have a batch norm")
    # the references between rows and nodes are checked on the parsed graph (the nodes that parse)
    graph_problems, buildable = _validate_nodes(data["graph"])
    problems += graph_problems
    nodes = graph.parse(buildable)
    skips = {target: graph.group_layers(nodes, spec.get("skip", [])) for target, spec in targets.items()
             if isinstance(spec, dict)}
    for layer, row in data["layers"].items():
        problems += _validate_row(layer, row, data["kinds"], skips)
    problems += _reference_problems(nodes, data["layers"], data["facts"])
    reference = data["facts"].get("reference")
    classifier = reference.get("classifier") if isinstance(reference, dict) else None
    if isinstance(classifier, str) and classifier not in data["layers"]:
        problems.append(f"facts.reference.classifier: {classifier} is not a row of layers")
    return problems


def _validate_facts(facts):
    problems = []
    if not isinstance(facts.get("num_classes"), int):
        problems.append("facts.num_classes must be an integer")
    background = facts.get("background_class")
    if background is not None and not isinstance(background, int):
        problems.append("facts.background_class must be an integer or null")
    spec = facts.get("input", {})
    for key in ("height", "width", "channels"):
        if not isinstance(spec.get(key), int):
            problems.append(f"facts.input.{key} must be an integer")
    sizes = spec.get("sizes", [])
    if not isinstance(sizes, list) or not all(isinstance(s, int) and not isinstance(s, bool) and s > 0 for s in sizes):
        problems.append("facts.input.sizes must be a list of positive integers")
    mean = spec.get("mean")
    if mean is not None and (not isinstance(mean, list) or len(mean) != spec.get("channels")
                             or not all(isinstance(m, (int, float)) for m in mean)):
        problems.append("facts.input.mean must give one number per channel")
    reference = facts.get("reference")
    if reference is not None:
        if not isinstance(reference, dict) or not all(isinstance(reference.get(k), str) for k in REFERENCE_KEYS):
            problems.append(f"facts.reference must give {', '.join(REFERENCE_KEYS)} as strings")
        elif not isinstance(reference.get("end_points", {}), dict):
            problems.append("facts.reference.end_points must map graph end points to tf-slim's end_points keys")
        elif not set(reference.get("squeeze", [])) <= set(facts.get("end_points") or []):
            problems.append("facts.reference.squeeze must list end points")
        elif not isinstance(reference.get("heads", {}), dict) or not all(
                point in (facts.get("end_points") or []) and isinstance(option, str)
                for point, option in reference.get("heads", {}).items()):
            problems.append("facts.reference.heads must map end points to the network option that builds each")
    return problems


def batch_norm_epsilon(table, kind):
    """The epsilon of ``kind``'s batch norm: its ``compute.epsilon``, else the table's ``facts.batch_norm_epsilon``."""
    epsilon = kind.compute.epsilon
    return float(epsilon if epsilon is not None else table.facts.batch_norm_epsilon)


def _has_batch_norm(kind):
    compute = kind.get("compute") if isinstance(kind, dict) else None
    return isinstance(compute, dict) and (compute.get("batch_norm") or compute.get("op") == BATCH_NORM_OP)


def _validate_kind(name, kind):
    where = f"kinds.{name}"
    if not isinstance(kind, dict) or not isinstance(kind.get("params"), dict):
        return [f"{where} must be a mapping with `params`"]
    problems = []
    if not isinstance(kind.get("compute"), dict) or kind["compute"].get("op") not in COMPUTE_OPS:
        problems.append(f"{where}.compute.op must be one of {', '.join(COMPUTE_OPS)}")
    elif kind["compute"]["op"] == BATCH_NORM_OP and kind["compute"].get("batch_norm"):
        problems.append(f"{where}: op batch_norm is the batch norm itself; drop `batch_norm: true`")
    else:
        problems += _validate_kernels(where, kind)
    dims = {d for shape in kind["params"].values() for d in shape if isinstance(d, str)}
    for target in TARGETS:
        for key, spec in kind.get(target, {}).items():
            at = f"{where}.{target}.{key}"
            if not isinstance(spec, dict) or ("from" in spec) == ("fill" in spec):
                problems.append(f"{at}: needs exactly one of `from` and `fill`")
                continue
            if "from" in spec and spec["from"] not in kind["params"]:
                problems.append(f"{at}: `from: {spec['from']}` is not in params")
            if spec.get("transform", "identity") not in transforms.TRANSFORMS:
                problems.append(f"{at}: unknown transform {spec['transform']!r}")
            if "fill" in spec:
                unknown = [d for d in spec.get("shape", []) if isinstance(d, str) and d not in dims]
                if unknown or "shape" not in spec:
                    problems.append(f"{at}: a fill needs a `shape` of params dimensions or sizes")
                if spec.get("dtype", "float32") not in FILL_DTYPES:
                    problems.append(f"{at}: fill dtype must be one of {', '.join(FILL_DTYPES)}")
    return problems


def _validate_kernels(where, kind):
    # a depthwise or separable op names its kernels in params; what it computes depends on which is which
    op = kind["compute"]["op"]
    missing = [param for param in OP_KERNELS.get(op, ()) if param not in kind["params"]]
    return [f"{where}: a {op} op takes slim's {', '.join(missing)}: add {'them' if len(missing) > 1 else 'it'} "
            f"to params"] if missing else []


def _validate_row(layer, row, kinds, skips):
    # skips: {target: the layers its `skip` groups leave out}
    where = f"layers.{layer}"
    if not isinstance(row, dict) or not isinstance(row.get("kind"), str) or row["kind"] not in kinds:
        return [f"{where}: `kind` must name one of kinds ({', '.join(kinds)})"]
    problems = []
    kind = kinds[row["kind"]]
    if not isinstance(kind, dict) or not isinstance(kind.get("params"), dict):
        return []  # the kind's own problem is named under kinds
    dims = {d for shape in kind["params"].values() if isinstance(shape, list) for d in shape if isinstance(d, str)}
    for name in [layer] + [row[t] for t in TARGETS if isinstance(row.get(t), str)]:
        unknown = sorted(set(SIZE_FIELD.findall(name)) - dims)
        if unknown:
            problems.append(f"{where}: {name} names sizes {', '.join(unknown)} that are no dimension of kind {row['kind']}")
    for target in TARGETS:
        if not kind.get(target):
            continue
        name = row.get(target)
        if name is None:
            if layer not in skips.get(target, ()):
                problems.append(f"{where}: no {target} name (and the layer is not in targets.{target}.skip)")
            continue
        if isinstance(name, dict):
            roles = {key.partition(SEPARATORS[target])[0] for key in kind[target]}
            if roles - set(name):
                problems.append(f"{where}.{target}: missing roles {', '.join(sorted(roles - set(name)))}")
        elif target in ROLE_TARGETS:
            problems.append(f"{where}.{target} must map each role (a {target} layer class) to a layer name")
        elif not isinstance(name, str):
            problems.append(f"{where}.{target} must be a name or a mapping of role to name")
    return problems


def _validate_nodes(nodes, within=""):
    """Each node's own problems, and the nodes ``graph.parse`` can build (their branches alike): the
    references of those are checked too, so one run names every problem."""
    problems, buildable = [], []
    for node in nodes:
        if not isinstance(node, dict):
            problems.append(f"graph{within and ' ' + within}: node {node!r} must be a mapping")
            continue
        kinds = [k for k in node if k in NODE_KINDS]
        extra = [k for k in node if k not in NODE_KINDS and k not in NODE_OPTIONS]
        if len(kinds) != 1 or extra:
            problems.append(f"graph: node {node} must have exactly one of {', '.join(NODE_KINDS)} (unknown: {extra})")
            continue
        if node.get("padding", "SAME") not in PADDINGS:
            problems.append(f"graph: padding {node['padding']!r} must be SAME or VALID")
        if "activation" in node and ("add" not in node or node["activation"] not in ACTIVATIONS):
            problems.append(f"graph: activation {node['activation']!r} must be one of "
                            f"{', '.join(ACTIVATIONS)}, on an add")
        if "reduced" in node and (node["reduced"] is not True or not isinstance(node.get("max_pool",
                                                                                       node.get("avg_pool")), list)):
            problems.append(f"graph: reduced must be true, on a pool with a [kh, kw] window (got {node})")
        if "flatten" in node and node["flatten"] not in FLATTENS:
            problems.append(f"graph: flatten {node['flatten']!r} must be true (a 1x1 map), spatial or hwc")
        if "scoped" in node and ("name" not in node or not isinstance(node["scoped"], bool)):
            problems.append(f"graph: scoped must be true or false, on a named node (got {node})")
        if "pad" in node and not _is_pads(node["pad"]):
            problems.append(f"graph: pad {node['pad']!r} must be [[top, bottom], [left, right]] of non-negative ints")
            continue
        inside = node.get("name", within)
        if "concat" in node or "add" in node:
            which = "concat" if "concat" in node else "add"
            branches = node[which]
            if not isinstance(branches, list) or not all(isinstance(b, list) for b in branches) or len(branches) < 2:
                problems.append(f"graph: {which} needs a list of two or more branches")
                continue
            built = [_validate_nodes(branch, inside) for branch in branches]
            problems += [problem for found, _ in built for problem in found]
            node = {**node, which: [branch for _, branch in built]}
        elif "nodes" in node:
            found, inner = _validate_nodes(node["nodes"], inside)
            problems += found
            node = {**node, "nodes": inner}
        buildable.append(node)
    return problems, buildable


def _reference_problems(nodes, layers, facts):
    """What the parsed graph ``nodes`` refers to: each row of ``layers`` used by exactly one layer node,
    each ``input`` a node named before it, each end point of ``facts`` a named node."""
    problems, uses, names = [], collections.Counter(), set()

    def visit(nodes, scope):
        for node in nodes:
            if node.input is not None and node.input not in names:
                problems.append(f"graph: input {node.input!r} is not an earlier named node")
            if isinstance(node, graph.Layer):
                uses[scope + node.layer] += 1
                if scope + node.layer not in layers:
                    problems.append(f"graph: layer {scope + node.layer} has no row in layers")
            for branch in node.parts():
                visit(branch, node.inner_scope(scope))
            if node.name is not None:  # named once the node is complete: nothing inside it may take its output
                names.add(node.name)

    visit(nodes, "")
    problems += [f"layers: {layer} is used {uses[layer]} times in the graph (must be once)"
                 for layer in layers if uses[layer] != 1]
    problems += [f"facts.end_points: {point} is not a named graph node" for point in facts.get("end_points", [])
                 if point not in names]
    return problems


def _is_pads(pads):
    def amounts(pair):
        return isinstance(pair, list) and len(pair) == 2 and all(isinstance(n, int) and n >= 0 for n in pair)

    return isinstance(pads, list) and len(pads) == 2 and all(amounts(pair) for pair in pads)


def class_end_points(table):
    """The graph end points whose output holds the classes: those whose layers bind a ``classes`` dimension."""
    found = set()
    for node, scope in graph.walk(table.graph):
        if node.name in table.facts.end_points:
            for layer in graph.layers(node, scope):
                if any(CLASSES_DIM in shape for shape in table.kind_of(layer).params.values()):
                    found.add(node.name)
    return found


@dataclasses.dataclass(frozen=True)
class Network:
    """Where a table's network sits in a checkpoint."""

    architecture: str
    root: str  # everything before the layer scopes: "tower_0/FlowerNet/"; "" for a network saved without a scope

    @property
    def scope(self):
        """The model scope the network was built with (``FlowerNet``); '' without one."""
        return self.root.rstrip(names.SEPARATOR).rpartition(names.SEPARATOR)[2]

    @property
    def prefix(self):
        """Scopes a training script put around the network (``tower_0/``); '' for none."""
        return self.root[: len(self.root.rstrip(names.SEPARATOR)) - len(self.scope)]

    def __str__(self):
        return self.root.rstrip(names.SEPARATOR) or "(no scope)"


def find_networks(variables, table):
    """Every ``Network`` of ``table`` in a checkpoint: each root under which all its ``detect`` variables occur
    and none of its ``detect_absent`` ones (a deeper ResNet holds every variable of a shallower one).

    The root is found from the variables themselves, so a network built with another ``scope=``
    (``FlowerNet/...``) or under an outer prefix (``tower_0/InceptionV3/...``) is found like the zoo's.
    """
    present = set(variables)
    first = table.detect[0]
    roots = set()
    for name in present:
        if name != first and not name.endswith(names.SEPARATOR + first):
            continue
        root = name[: len(name) - len(first)]
        if all(root + variable in present for variable in table.detect) and \
                not any(root + variable in present for variable in table.detect_absent):
            roots.add(root)
    return [Network(table.architecture, root) for root in sorted(roots)]


def _pick(networks, scope):
    if scope is None:
        return networks
    scope = scope.strip(names.SEPARATOR)
    return [n for n in networks if str(n) == scope or str(n).endswith(names.SEPARATOR + scope)]


def networks(variables):
    """Every network of every built-in table among a checkpoint's ``variables``, the tables' own scopes first.

    Where several tables fit one root (VGG-19 holds every variable VGG-16's ``detect`` names), the network
    there is the table's whose rows take the most of the root's variables (``most_complete``).
    """
    found = []
    for architecture in builtin_tables():
        table = load_table(architecture)
        found += [(network.scope != table.scope, network.root, network)
                  for network in find_networks(variables, table)]
    found = [item for item in found if item[2] in most_complete([item[2] for item in found], variables)]
    return [network for _, _, network in sorted(found, key=lambda item: item[:2])]


def most_complete(found, variables):
    """Of ``found`` networks, at each root those whose tables' rows take the most variables under it."""
    names = set(variables)
    taken = {}
    for network in found:
        rivals = [other for other in found if other.root == network.root]
        taken[network] = _taken(names, load_table(network.architecture), network.root) if len(rivals) > 1 else 0
    return [network for network in found
            if taken[network] == max(taken[other] for other in found if other.root == network.root)]


def _taken(names, table, root):
    # how many of the variables under root the table's layer rows take (a name pattern matched as plan binds it)
    relative = [name[len(root):] for name in names if name.startswith(root)]
    count = 0
    for layer, row in table.layers.items():
        scope, _ = _resolve(layer, row.kind, relative, [])
        if scope is not None:
            count += sum(f"{root}{scope}/{param}" in names for param in row.kind.params)
    return count


def detect_architecture(variables):
    """The built-in architecture of the network among ``variables`` (under any scope or prefix), or None."""
    found = networks(list(variables))
    return found[0].architecture if found else None


def locate(variables, table=None, *, scope=None, path="the checkpoint"):
    """The one network of ``table`` (or, without one, of any built-in table) in a checkpoint.

    ``scope`` picks a network by its root or model scope (``tower_1/InceptionV3``, ``FlowerNet``) where
    the checkpoint holds several. Raises ``MappingError`` naming every candidate and the flag to use.
    """
    variables = list(variables)
    if table is not None:
        found = _pick(find_networks(variables, table), scope)
        what = f"{table.architecture} (its {table.detect[0]} under any scope)"
    else:
        found = _pick(networks(variables), scope)
        what = f"any built-in table ({', '.join(builtin_tables())})"
    roots = list(dict.fromkeys(network.root for network in found))
    if not found:
        within = f" under --scope {scope}" if scope is not None else ""
        hint = "pass --arch or --mapping for another architecture" if table is not None else \
            "pass --arch or --mapping my_table.yaml"
        raise MappingError(f"{path}: no network of {what} found{within}; {hint}")
    if len(roots) > 1:
        listed = ", ".join(f"{network} ({network.architecture})" for network in found)
        raise MappingError(f"{path} holds {len(roots)} networks: {listed}; pick one with --scope NAME")
    if len(found) > 1:
        listed = ", ".join(network.architecture for network in found)
        raise MappingError(f"{path}: the network under {found[0]} fits {listed} alike; pick one with --arch")
    return found[0]


# the background-class rule: decided by the checkpoint's class count, or forced by a flag
BACKGROUND_AUTO, BACKGROUND_KEEP, BACKGROUND_DROP = "auto", "keep", "drop"
BACKGROUND_RULES = (BACKGROUND_AUTO, BACKGROUND_KEEP, BACKGROUND_DROP)
CLASSES_DIM = "classes"


@dataclasses.dataclass(frozen=True)
class Background:
    """What happens to TF-Slim's background class in a port, and why."""

    index: int | None  # the class dropped; None when every class is kept
    classes: int | None  # classes of the checkpoint's classifier; None without one
    rule: str  # "released count", "fine-tune", "--keep-background", "--drop-background", "none", "headless"
    reason: str

    @property
    def dropped(self):
        return self.index is not None

    @property
    def port_classes(self):
        """Classes the port has."""
        return None if self.classes is None else self.classes - self.dropped

    def to_dict(self):
        return {"classes": self.classes, "port_classes": self.port_classes, "dropped": self.index,
                "rule": self.rule, "reason": self.reason}


def decide_background(table, classes, rule=BACKGROUND_AUTO):
    """The background decision for a checkpoint whose classifier has ``classes`` classes (None: no classifier).

    ``auto`` drops the table's ``background_class`` only when ``classes`` is the table's released
    count (``facts.num_classes``): a fine-tune to another count keeps every class. Raises MappingError
    for a rule the checkpoint cannot take.
    """
    if rule not in BACKGROUND_RULES:
        raise MappingError(f"background rule {rule!r} must be one of {', '.join(BACKGROUND_RULES)}")
    index, released, arch = table.background_class, table.num_classes, table.architecture
    if classes is None:
        return Background(None, None, "headless", "no classifier in the port")
    if rule == BACKGROUND_KEEP:
        return Background(None, classes, "--keep-background", f"all {classes} classes kept (--keep-background)")
    if rule == BACKGROUND_DROP:
        if index is None or not 0 <= index < classes or classes < 2:
            raise MappingError(f"--drop-background: {arch} has no background class to drop from {classes} classes "
                               f"(drop the flag)")
        return Background(index, classes, "--drop-background",
                          f"class {index} dropped as background (--drop-background): {classes - 1} of {classes} kept")
    if index is None:
        return Background(None, classes, "none", f"all {classes} classes kept: {arch} has no background class")
    if classes == released:
        return Background(index, classes, "released count",
                          f"class {index} dropped as background: {classes} classes is {arch}'s released count "
                          f"({classes - 1} kept; --keep-background keeps it)")
    return Background(None, classes, "fine-tune",
                      f"all {classes} classes kept: not {arch}'s released {released}, so a fine-tune without a "
                      f"background class (--drop-background drops class {index})")


@dataclasses.dataclass(frozen=True)
class Entry:
    """One tensor of the target file, bound to the checkpoint."""

    key: str
    source: str | None  # full checkpoint variable read, None for fills
    transform: str
    drop_class: tuple | None  # (axis, index) of the background class to drop
    classes: int | None  # axis of the target tensor that holds the classes
    fill: float | None
    dtype: str | None
    source_shape: tuple | None
    shape: tuple  # in the target file

    def value(self, read):
        """The target tensor, reading the source with ``read(name) -> np.ndarray``."""
        if self.source is None:
            return np.full(self.shape, self.fill, dtype=self.dtype or "float32")
        value = transforms.get(self.transform).apply(read(self.source))
        if self.drop_class is not None:
            value = transforms.drop_class(value, *self.drop_class)
        return value


# what the plan says of an optional group (the auxiliary head)
HEAD_KEPT, HEAD_ABSENT, HEAD_LEFT_OUT = "kept", "absent from the checkpoint", "left out (--no-aux)"
# skipped-variable reasons for variables no row takes
UNMAPPED, OUTSIDE = "unmapped", "outside the network"
# the classifier's end point, which --no-top leaves out
TOP = "Logits"


@dataclasses.dataclass
class Plan:
    """What a conversion will write, and what it leaves out."""

    table: Table
    target: str
    network: Network
    entries: list
    skipped: dict  # reason -> checkpoint variable names left out on purpose
    dims: dict  # layer -> {dimension name: size}, for every layer the port holds
    scopes: dict  # layer -> its scope in the checkpoint where the name carries sizes (Conv2d_2a_{kh}x{kw})
    background: Background
    heads: dict  # optional group -> HEAD_KEPT, HEAD_ABSENT or HEAD_LEFT_OUT
    input_size: "input_size.InputSize"
    record: dict = dataclasses.field(default_factory=dict)  # the rest of the port's provenance (converter.provenance)

    @property
    def root(self):
        return self.network.root

    def keeps(self, node, scope=""):
        """Whether the port holds graph ``node`` (at ``scope``): every layer under it is in the plan
        (``graph.kept``); the one rule by which every writer, module and runtime leaves groups out."""
        return graph.kept(node, scope, self.dims)

    def holds(self, end_point):
        """Whether the port holds the named graph node ``end_point``."""
        found = graph.named(self.table.graph).get(end_point)
        return found is not None and self.keeps(*found)

    def source_scope(self, layer):
        """A table layer's full scope in the checkpoint (``tower_0/FlowerNet/AuxLogits/Conv2d_2a_3x3``)."""
        return self.root + self.scopes.get(layer, layer)

    def tensors(self, read):
        """Yield ``(key, array)`` for every entry, reading sources lazily with ``read``."""
        for entry in self.entries:
            yield entry.key, entry.value(read)

    def outside(self):
        """Variables outside the network (and unmapped ones in it), grouped by scope: ``{scope: [names]}``."""
        groups = {}
        for reason in (OUTSIDE, UNMAPPED):
            for name in self.skipped.get(reason, []):
                groups.setdefault(_group_of(name, self.root, self.table.outside), []).append(name)
        return groups

    def decisions(self):
        """What the plan decided from the checkpoint, one ``(topic, sentence)`` per decision."""
        network = self.network
        lines = [("network", f"{network.scope or '(no scope)'} ({self.table.architecture})"
                             + (f" under {network.prefix}" if network.prefix else ""))]
        lines.append(("classes", self.background.reason))
        for group, status in self.heads.items():
            lines.append(("head", f"{group} {status}"))
        lines.append(("input", f"{self.input_size} ({self.input_size.reason})"))
        facts = self.table.facts
        if facts.meta_graph is not None and facts.preprocessing:
            low, high = facts.input.range
            lines.append(("input range", f"[{low:g}, {high:g}]: {facts.preprocessing}"))
        for scope, found in self.outside().items():
            lines.append(("not converted", f"{len(found)} variable{'s' if len(found) != 1 else ''} under {scope}/ "
                                           f"(no row of {self.table.path.name} takes them)"))
        return lines

    def provenance(self):
        """The decisions a port records about itself, as ``{str: str}`` (file metadata)."""
        return {
            "architecture": self.table.architecture,
            "scope": str(self.network),
            "background": self.background.rule,
            "classes": str(self.background.port_classes),
            "heads": ",".join(f"{group}={status}" for group, status in self.heads.items()),
            "input_size": str(self.input_size),
            **self.record,
        }

    def to_dict(self):
        """The decisions as data, for reports."""
        return {
            "scope": str(self.network),
            "background": self.background.to_dict(),
            "heads": dict(self.heads),
            "input_size": [self.input_size.height, self.input_size.width],
            "input_size_reason": self.input_size.reason,
            "outside": {scope: len(found) for scope, found in self.outside().items()},
        }


def _outside_scope(name, root, patterns):
    # the scope under the root that one of the table's `outside` patterns takes (a detector's extra layer), or None
    if not name.startswith(root):
        return None
    first = name[len(root):].partition(names.SEPARATOR)[0]
    return root + first if any(fnmatch.fnmatchcase(first, pattern) for pattern in patterns) else None


def _group_of(name, root, patterns=()):
    # inside the network: the layer scope; outside: down to the first component where it leaves the root
    # (or, for a scope the table puts outside, that scope)
    parts = name.split(names.SEPARATOR)
    extra = _outside_scope(name, root, patterns)
    if extra is not None:
        return extra
    if name.startswith(root):
        return names.SEPARATOR.join(parts[:-1]) or name
    shared = root.split(names.SEPARATOR)
    depth = 0
    while depth < len(parts) - 1 and parts[depth] == shared[depth]:
        depth += 1
    return names.SEPARATOR.join(parts[: depth + 1])


def layer_pattern(layer):
    """A regular expression for a layer scope whose name carries sizes (``Conv2d_2a_{kh}x{kw}``), or None."""
    if "{" not in layer:
        return None
    pattern = re.escape(layer)
    for dim in SIZE_FIELD.findall(layer):
        pattern = pattern.replace(re.escape("{" + dim + "}"), f"(?P<{dim}>[0-9]+)", 1)
    return re.compile(pattern)


def _resolve(layer, kind, relative, problems):
    # the checkpoint's scope of a table layer and the sizes its name gives: (scope, {dim: size}) or (None, {})
    pattern = layer_pattern(layer)
    if pattern is None:
        return layer, {}
    first = names.SEPARATOR + next(iter(kind.params))
    found = {}
    for name in relative:
        match = pattern.fullmatch(name[: -len(first)]) if name.endswith(first) else None
        if match:
            found[match.group(0)] = {dim: int(size) for dim, size in match.groupdict().items()}
    if len(found) > 1:
        problems.append(f"several scopes match the table's {layer}: {', '.join(sorted(found))}")
    if len(found) != 1:
        return None, {}
    return next(iter(found.items()))


def _bind(table, shapes, root):
    """Every table layer the checkpoint holds: its scope, dimension sizes and problems."""
    relative = [name[len(root):] for name in shapes if name.startswith(root)]
    scopes, dims, present, problems = {}, {}, {}, {}
    for layer, row in table.layers.items():
        kind = row.kind
        found = problems.setdefault(layer, [])
        scope, bound = _resolve(layer, kind, relative, found)
        if scope is None:
            present[layer] = []
            continue
        scopes[layer] = scope
        named = dict(bound)
        sources = {param: f"{root}{scope}/{param}" for param in kind.params}
        present[layer] = [source for source in sources.values() if source in shapes]
        missing = [param for param, source in sources.items() if source not in shapes]
        if missing:
            found.append(f"missing variable{'s' if len(missing) > 1 else ''} {root}{scope}/"
                         f"{{{', '.join(missing)}}}" if len(missing) > 1 else f"missing variable {sources[missing[0]]}")
        for param, wanted in kind.params.items():
            name = sources[param]
            if name not in shapes:
                continue
            shape = tuple(shapes[name])
            if len(shape) != len(wanted):
                found.append(f"{name}: shape {list(shape)} does not fit {list(wanted)}")
                continue
            for dim, size in zip(wanted, shape):
                if isinstance(dim, int):
                    fits = dim == size
                else:
                    fits = bound.setdefault(dim, size) == size
                if not fits:
                    said = "its scope name says" if dim in named else "elsewhere in the layer:"
                    found.append(f"{name}: shape {list(shape)} disagrees on `{dim}` ({said} {bound.get(dim, dim)})")
        dims[layer] = bound
    return scopes, dims, present, problems


def plan(shapes, table, target, *, ema=False, background=BACKGROUND_AUTO, aux=None, drop=(), strict=True,
         scope=None, input_size=None, dtypes=None):
    """Bind ``table`` to a checkpoint's ``{name: shape}`` for ``target``; check everything first.

    Args:
        shapes: every variable of the checkpoint and its shape.
        ema: read ``/ExponentialMovingAverage`` shadows instead of raw values where present.
        background: ``auto`` (drop the background class only at the table's released class count),
            ``keep`` or ``drop``.
        aux: the target's optional groups (the auxiliary head): None keeps them where the checkpoint
            has them, False leaves them out, True requires them.
        drop: more graph end points to leave out (``("Logits",)`` for a headless model).
        strict: variables no row takes are an error (otherwise listed in ``skipped``).
        scope: which network, where the checkpoint holds several (see ``locate``).
        input_size: ``(height, width)`` (from ``--input-size``), or an ``input_size.InputSize`` that says
            where it comes from; by default inferred from the checkpoint (``input_size.infer``).
        dtypes: every variable's numpy dtype; when given, the variables the plan reads must be floating point.

    Returns:
        a ``Plan``; raises ``MappingError`` listing every problem at once.
    """
    network = locate(shapes, table, scope=scope)
    if not any(kind.column(target) for kind in table.kinds.values()):
        raise MappingError(f"mapping {table.architecture} has no {target} target (its kinds give no {target} column)")
    for group in drop:
        if not table.group_layers((group,)):
            raise MappingError(f"mapping {table.architecture} has no layers under {group} to leave out "
                               f"(a headless output is not supported for it)")
    if ema and not any(name.endswith(EMA_SUFFIX) for name in shapes):
        raise MappingError("--ema: the checkpoint holds no /ExponentialMovingAverage shadows; drop --ema")
    root = network.root
    scopes, found_dims, present, layer_problems = _bind(table, shapes, root)
    heads, optional, problems = _heads(table, target, present, aux)
    left_out = table.group_layers(table.groups(target) + optional + tuple(drop))
    headless = _headless(table, present, left_out)
    if headless:
        problems.append(f"the checkpoint has no {TOP} ({', '.join(root + layer for layer in sorted(headless))}): "
                        f"a headless network, as a detection checkpoint's backbone; --no-top converts it without")
    dims, consumed = {}, set()
    for layer in table.layers:
        consumed.update(present[layer])
        if layer in left_out or layer in headless:
            continue
        if not present[layer] and not layer_problems[layer]:
            problems.append(f"missing layer {root}{layer} (mapping row {layer})")
        problems += layer_problems[layer]
        if layer in found_dims:
            dims[layer] = found_dims[layer]
    decided = None
    if not problems:
        # the checkpoint's class count decides; a port without any classifier layer has no classes to decide
        holds_classes = any(CLASSES_DIM in bound for bound in dims.values())
        classes = _classes(table, found_dims, problems) if holds_classes else None
        try:
            decided = decide_background(table, classes, background)
        except MappingError as error:
            problems.append(str(error))
    size = None
    if not problems:
        size = _input_size(table, found_dims, dims, input_size, problems)
    entries = []
    if not problems:
        index = decided.index
        rows = table.rows(target, skip=table.groups(target) + optional + tuple(drop))
        for row in rows:
            entries.append(_entry(row, root, scopes[row.layer], shapes, dims[row.layer], ema, index, problems))
        consumed.update(entry.source for entry in entries if entry is not None)
        layer_scopes = {layer: f"{root}{scope}/" for layer, scope in scopes.items()}
        problems += _table_rules.entry_problems(table, rows, entries, shapes, layer_scopes, dtypes)
    skipped = _skipped(shapes, consumed, network, table, strict, problems)
    left = sorted(name for layer in left_out for name in present[layer])
    if left:
        skipped["left out"] = left
    problems = list(dict.fromkeys(problems))
    if problems:
        raise MappingError(
            f"the checkpoint does not fit mapping {table.architecture} for {target} "
            f"({len(problems)} problem{'s' if len(problems) != 1 else ''}):\n  " + join_problems(problems)
        )
    patterned = {layer: scope for layer, scope in scopes.items() if scope != layer}
    return Plan(table, target, network, entries, skipped, dims, patterned, decided, heads, size)


def _headless(table, present, left_out):
    # the classifier's layers where the checkpoint holds none of them and the plan keeps them: one problem, not one per layer
    top = table.group_layers((TOP,)) - left_out
    if not top or any(present[layer] for layer in top) or not any(present.values()):
        return set()
    return top


def _heads(table, target, present, aux):
    # each optional group of the target: kept where the checkpoint has all of it, left out where it has none
    heads, optional, problems = {}, [], []
    for group in (table.targets[target].optional if target in table.targets else ()):
        layers = sorted(table.group_layers((group,)))
        holding = [layer for layer in layers if present[layer]]
        if aux is False:
            heads[group] = HEAD_LEFT_OUT
            optional.append(group)
        elif not holding:
            if aux:
                problems.append(f"the checkpoint has no {group} (none of its variables); drop the request for it")
            heads[group] = HEAD_ABSENT
            optional.append(group)
        elif len(holding) < len(layers):
            missing = [layer for layer in layers if not present[layer]]
            problems.append(f"{group} is incomplete: no variables for {', '.join(missing)} "
                            f"(--no-aux leaves the head out)")
        else:
            heads[group] = HEAD_KEPT
    return heads, tuple(optional), problems


def _classes(table, dims, problems):
    # the checkpoint's class count: the classifier's (facts.reference.classifier), else any layer's `classes`
    counts = {layer: bound[CLASSES_DIM] for layer, bound in dims.items() if CLASSES_DIM in bound}
    classifier = table.facts.classifier
    if len(set(counts.values())) > 1:
        listed = ", ".join(f"{layer} {count}" for layer, count in counts.items())
        problems.append(f"the classifier layers disagree on the class count ({listed})")
    if classifier in counts:
        return counts[classifier]
    return next(iter(counts.values()), None)


def _input_size(table, found_dims, dims, wanted, problems):
    from converter import input_size as sizes

    if wanted is not None and not isinstance(wanted, sizes.InputSize):
        wanted = sizes.InputSize(*wanted, sizes.FLAG)
    try:
        if wanted is None:
            # a property of the checkpoint: every layer it holds counts, also those this target leaves out
            return sizes.infer(table, found_dims)
        sizes.check(table, dims, wanted.hw)
        return wanted
    except sizes.SizeError as error:
        given = "" if wanted is None else f"{wanted.given()}: "
        problems.append(f"{given}{table.architecture} cannot take that input size: {error}")
        return None


def _skipped(shapes, consumed, network, table, strict, problems):
    skipped = {"ema shadows": [], "optimizer slots": [], "training state": [], UNMAPPED: [], OUTSIDE: []}
    unmapped = {}
    for name in sorted(set(shapes) - consumed):
        role = _role(name, network.scope or table.scope)
        if role == names.ROLE_EMA and name[: -len(EMA_SUFFIX)] in consumed:
            skipped["ema shadows"].append(name)
        elif role in SKIPPED_ROLES:
            skipped[SKIPPED_ROLES[role]].append(name)
        else:
            inside = name.startswith(network.root) and _outside_scope(name, network.root, table.outside) is None
            reason = UNMAPPED if inside else OUTSIDE
            skipped[reason].append(name)
            unmapped.setdefault((reason, _group_of(name, network.root, table.outside)), []).append(name)
    if strict:
        for (reason, scope), found in unmapped.items():
            shown = ", ".join(name.rpartition(names.SEPARATOR)[2] if reason == UNMAPPED else name
                              for name in found[:3]) + (", ..." if len(found) > 3 else "")
            if reason == UNMAPPED and len(found) == 1:
                problems.append(f"unmapped variable {found[0]} (no row of {table.path.name} takes it; "
                                f"--lenient skips it)")
            elif reason == UNMAPPED:
                problems.append(f"unmapped variables under {scope}/ ({shown}): no row of {table.path.name} takes them "
                                f"(--lenient skips them)")
            else:
                problems.append(f"{len(found)} variable{'s' if len(found) != 1 else ''} outside the network under "
                                f"{scope}/ ({shown}): --lenient converts without them; "
                                f"`ckpt-convert dump --unmapped` exports them")
    return {reason: found for reason, found in skipped.items() if found}


def _role(name, scope):
    try:
        return names.parse(name, model_scopes=[scope]).role
    except ConvertError:
        return None  # a name the parser cannot split is unmapped like any other


def dims_mismatches(plan, required):
    """Where ``plan``'s sizes differ from ``required`` (``{layer: {dim: size}}``, what a model builds).

    Returns ``{layer: phrase}``; layers the plan leaves out (the classifier of a headless port) are not compared.
    """
    mismatches = {}
    for layer, dims in required.items():
        bound = plan.dims.get(layer)
        if bound is None:
            continue
        wrong = [f"{dim} {bound.get(dim)} (needs {size})" for dim, size in dims.items() if bound.get(dim) != size]
        if wrong:
            mismatches[layer] = f"{plan.source_scope(layer)} {', '.join(wrong)}"
    return mismatches


def bind_name(name, dims):
    """A table name with sizes in it (``AuxLogits/Conv2d_2a_{kh}x{kw}``) filled from a layer's bound ``dims``."""
    return name.format_map(dims) if "{" in name else name


def _entry(row, root, scope, shapes, dims, ema, background, problems):
    key = bind_name(row.key, dims)
    if row.source is None:
        shape = tuple(dims[d] if isinstance(d, str) else d for d in row.fill_shape)
        return Entry(key, None, "identity", None, None, row.fill, row.dtype, None, shape)
    source = f"{root}{scope}/{row.source}"
    if ema and source + EMA_SUFFIX in shapes:
        source += EMA_SUFFIX
    source_shape = tuple(shapes[source])
    try:
        shape = transforms.get(row.transform).shape(source_shape)
    except ValueError as error:
        problems.append(f"{source}: {row.transform} {error}")
        return None
    drop = None
    if row.classes is not None and background is not None:
        drop = (row.classes, background)
        shape = tuple(size - 1 if axis == row.classes else size for axis, size in enumerate(shape))
    return Entry(key, source, row.transform, drop, row.classes, None, None, source_shape, shape)
