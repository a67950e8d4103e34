"""Mapping tables: YAML data that says where every slim variable goes in each target.

A table (schema: ``mappings/README.md``) is loaded and validated as a whole: every problem is
reported in one ``MappingError``. ``plan`` then binds a table to one checkpoint's variables and
checks everything before anything is written: unmapped source variables, rows the checkpoint
cannot fill, and shapes that disagree are all gathered into one error.
"""

import collections
import dataclasses
import functools
import importlib.resources
import pathlib

import numpy as np

from converter import _table_rules, _yaml, names, transforms
from converter.errors import ConvertError, MappingError, join_problems

SCHEMA = 1
TARGETS = ("torch", "keras", "onnx")
# how a row's target name and a kind's template key join
# targets whose rows name one layer per role (class): Keras keeps a conv and its batch norm apart
ROLE_TARGETS = ("keras",)
SEPARATORS = {"torch": ".", "keras": "/", "onnx": "/"}
COMPUTE_OPS = ("conv", "linear")
NODE_KINDS = ("layer", "max_pool", "avg_pool", "concat", "add", "nodes", "flatten", "pad")
NODE_OPTIONS = ("name", "scoped", "input", "stride", "padding", "activation")
# what may follow a node: a layer's from its kind's `compute.activation`, an `add`'s from its own option
ACTIVATIONS = ("relu",)
PADDINGS = ("SAME", "VALID")
# `flatten: true` takes a 1x1 map; `flatten: spatial` any map, in the order of the target's layout
FLATTENS = (True, "spatial")
REFERENCE_KEYS = ("module", "network", "arg_scope", "classifier")
FILL_DTYPES = ("float32", "int64")

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
    return sorted(p.name[: -len(".yaml")] for p in _builtin_dir().iterdir() if p.name.endswith(".yaml"))


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
class Table:
    """A validated mapping table."""

    path: pathlib.Path
    architecture: str
    scope: str
    detect: tuple
    facts: dict
    targets: dict
    kinds: dict
    layers: dict
    graph: list

    @property
    def num_classes(self):
        return self.facts["num_classes"]

    @property
    def background_class(self):
        return self.facts.get("background_class")

    def groups(self, target, *, aux=True):
        """Graph end points whose layers ``target`` leaves out (its ``skip``, plus ``optional`` without aux)."""
        spec = self.targets.get(target, {})
        return tuple(spec.get("skip", [])) + (() if aux else tuple(spec.get("optional", [])))

    def rows(self, target, *, skip=()):
        """Every target tensor of every layer, in table order, leaving out layers under ``skip`` groups."""
        rows = []
        left_out = group_layers(self.graph, skip)
        for layer, row in self.layers.items():
            if layer in left_out:
                continue
            kind = self.kinds[row["kind"]]
            for key, spec in kind.get(target, {}).items():
                rows.append(
                    Row(
                        layer=layer,
                        key=join_key(target, row[target], key),
                        source=spec.get("from"),
                        transform=spec.get("transform", "identity"),
                        classes=spec.get("classes"),
                        fill=spec.get("fill"),
                        fill_shape=tuple(spec.get("shape", ())),
                        dtype=spec.get("dtype"),
                    )
                )
        return rows


def inner_scope(node, scope):
    """The scope of layer references inside ``node``: its name, unless it has none or ``scoped: false``."""
    return f"{node['name']}/" if "name" in node and node.get("scoped", True) else scope


def group_layers(graph, groups):
    """The layers (scopes) used under the graph nodes named in ``groups``."""
    found = set()

    def walk(nodes, scope, inside):
        for node in nodes if isinstance(nodes, list) else ():
            if not isinstance(node, dict):
                continue
            hit = inside or node.get("name") in groups
            if hit and isinstance(node.get("layer"), str):
                found.add(scope + node["layer"])
            for branch in branches(node) + [node.get("nodes", [])]:
                walk(branch, inner_scope(node, scope), hit)

    walk(graph, "", False)
    return found


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
    data = _yaml.load(path, "mapping table", MappingError)
    try:
        problems = validate(data)
    except (TypeError, AttributeError, KeyError) as error:
        # a value of a type no rule expects (a list where a mapping belongs, ...): name it rather than crash
        raise MappingError(f"{path}: invalid mapping table: a value has the wrong type ({error}); "
                           f"see mappings/README.md for the schema") from None
    if problems:
        raise MappingError(f"{path}: invalid mapping table ({len(problems)} problems):\n  " + join_problems(problems))
    return Table(
        path=path,
        architecture=data["architecture"],
        scope=data["scope"],
        detect=tuple(data["detect"]),
        facts=data["facts"],
        targets=data.get("targets", {}),
        kinds=data["kinds"],
        layers=data["layers"],
        graph=data["graph"],
    )


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
    for target in targets:
        if target not in TARGETS:
            problems.append(f"targets: unknown target {target!r} (known: {', '.join(TARGETS)})")
    for name, kind in data["kinds"].items():
        problems += _validate_kind(name, kind)
    skips = {target: group_layers(data["graph"], spec.get("skip", [])) for target, spec in targets.items()
             if isinstance(spec, dict)}
    for layer, row in data["layers"].items():
        problems += _validate_row(layer, row, data["kinds"], skips)
    used = []
    names = set()
    problems += _validate_nodes(data["graph"], "", used, names, data["layers"])
    uses = collections.Counter(used)
    for layer in data["layers"]:
        if uses[layer] != 1:
            problems.append(f"layers: {layer} is used {uses[layer]} times in the graph (must be once)")
    classifier = (data["facts"].get("reference") or {}).get("classifier")
    if classifier is not None and classifier not in data["layers"]:
        problems.append(f"facts.reference.classifier: {classifier} is not a row of layers")
    for point in data["facts"].get("end_points", []):
        if point not in names:
            problems.append(f"facts.end_points: {point} is not a named graph node")
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
    return problems


def _validate_kind(name, kind):
    where = f"kinds.{name}"
    if not isinstance(kind, dict) or not isinstance(kind.get("params"), dict):
        return [f"{where} must be a mapping with `params`"]
    problems = []
    if not isinstance(kind.get("compute"), dict) or kind["compute"].get("op") not in COMPUTE_OPS:
        problems.append(f"{where}.compute.op must be one of {', '.join(COMPUTE_OPS)}")
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


def _validate_row(layer, row, kinds, skips):
    where = f"layers.{layer}"
    if not isinstance(row, dict) or row.get("kind") not in kinds:
        return [f"{where}: `kind` must name one of kinds ({', '.join(kinds)})"]
    problems = []
    kind = kinds[row["kind"]]
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


def _validate_nodes(nodes, scope, used, names, layers):
    problems = []
    for node in nodes:
        if not isinstance(node, dict):
            problems.append(f"graph{scope and ' ' + scope}: node {node!r} must be a mapping")
            continue
        kinds = [k for k in node if k in NODE_KINDS]
        extra = [k for k in node if k not in NODE_KINDS and k not in NODE_OPTIONS]
        if len(kinds) != 1 or extra:
            problems.append(f"graph: node {node} must have exactly one of {', '.join(NODE_KINDS)} (unknown: {extra})")
            continue
        if "input" in node and node["input"] not in names:
            problems.append(f"graph: input {node['input']!r} is not an earlier named node")
        if node.get("padding", "SAME") not in PADDINGS:
            problems.append(f"graph: padding {node['padding']!r} must be SAME or VALID")
        if "activation" in node and ("add" not in node or node["activation"] not in ACTIVATIONS):
            problems.append(f"graph: activation {node['activation']!r} must be one of "
                            f"{', '.join(ACTIVATIONS)}, on an add")
        if "pad" in node and not _is_pads(node["pad"]):
            problems.append(f"graph: pad {node['pad']!r} must be [[top, bottom], [left, right]] of non-negative ints")
        if "flatten" in node and node["flatten"] not in FLATTENS:
            problems.append(f"graph: flatten {node['flatten']!r} must be true (a 1x1 map) or spatial")
        if "scoped" in node and ("name" not in node or not isinstance(node["scoped"], bool)):
            problems.append(f"graph: scoped must be true or false, on a named node (got {node})")
        inner = inner_scope(node, scope)
        if "layer" in node:
            layer = scope + node["layer"]
            used.append(layer)
            if layer not in layers:
                problems.append(f"graph: layer {layer} has no row in layers")
        elif "concat" in node or "add" in node:
            branches = node.get("concat", node.get("add"))
            if not isinstance(branches, list) or not all(isinstance(b, list) for b in branches) or len(branches) < 2:
                which = "concat" if "concat" in node else "add"
                problems.append(f"graph: {which} needs a list of two or more branches")
                continue
            for branch in branches:
                problems += _validate_nodes(branch, inner, used, names, layers)
        elif "nodes" in node:
            problems += _validate_nodes(node["nodes"], inner, used, names, layers)
        if "name" in node:
            names.add(node["name"])
    return problems


def _is_pads(pads):
    def amounts(pair):
        return isinstance(pair, list) and len(pair) == 2 and all(isinstance(n, int) and n >= 0 for n in pair)

    return isinstance(pads, list) and len(pads) == 2 and all(amounts(pair) for pair in pads)


def branches(node):
    """The branches of a ``concat`` or ``add`` node (each a list of nodes on the node's input); [] otherwise."""
    return node.get("concat") or node.get("add") or []


def detect_architecture(names):
    """The built-in architecture whose ``detect`` variables all occur in ``names`` (under any prefix), or None."""
    names = list(names)
    for architecture in builtin_tables():
        table = load_table(architecture)
        if model_prefix(names, table) is not None:
            return architecture
    return None


def model_prefix(names, table):
    """The outer prefix before ``table.scope`` in ``names`` ('' for none), or None when the table does not match."""
    first = f"{table.scope}/{table.detect[0]}"
    present = set(names)
    for name in present:
        if name == first or name.endswith("/" + first):
            prefix = name[: -len(first)]
            if all(f"{prefix}{table.scope}/{d}" in present for d in table.detect):
                return prefix
    return None


@dataclasses.dataclass(frozen=True)
class Entry:
    """One tensor of the target file, bound to the checkpoint."""

    key: str
    source: str | None  # full checkpoint variable read, None for fills
    transform: str
    drop_class: tuple | None  # (axis, index) of the background class to drop
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


@dataclasses.dataclass
class Plan:
    """What a conversion will write, and what it leaves out."""

    table: Table
    target: str
    prefix: str
    entries: list
    skipped: dict  # reason -> checkpoint variable names left out on purpose
    dims: dict  # layer -> {dimension name: size}

    def tensors(self, read):
        """Yield ``(key, array)`` for every entry, reading sources lazily with ``read``."""
        for entry in self.entries:
            yield entry.key, entry.value(read)


def plan(shapes, table, target, *, ema=False, keep_background=False, aux=True, drop=(), strict=True, dtypes=None):
    """Bind ``table`` to a checkpoint's ``{name: shape}`` for ``target``; check everything first.

    Args:
        shapes: every variable of the checkpoint and its shape.
        ema: read ``/ExponentialMovingAverage`` shadows instead of raw values where present.
        keep_background: keep the background class (1001 classes) instead of dropping it.
        aux: keep the target's optional groups (the auxiliary head).
        drop: more graph end points to leave out (``("Logits",)`` for a headless model).
        strict: unmapped model variables are an error (otherwise listed in ``skipped``).
        dtypes: every variable's numpy dtype; when given, the variables the plan reads must be floating point.

    Returns:
        a ``Plan``; raises ``MappingError`` listing every problem at once.
    """
    prefix = model_prefix(shapes, table)
    if prefix is None:
        raise MappingError(
            f"the checkpoint is not {table.architecture}: it lacks {table.scope}/{table.detect[0]} "
            f"(pass --arch or --mapping for another architecture)"
        )
    if not any(kind.get(target) for kind in table.kinds.values()):
        raise MappingError(f"mapping {table.architecture} has no {target} target (its kinds give no {target} column)")
    for group in drop:
        if not group_layers(table.graph, (group,)):
            raise MappingError(f"mapping {table.architecture} has no layers under {group} to leave out "
                               f"(a headless output is not supported for it)")
    scope = f"{prefix}{table.scope}/"
    skip = table.groups(target, aux=aux) + tuple(drop)
    left_out = group_layers(table.graph, skip)
    problems, entries, dims = [], [], {}
    skipped = {"ema shadows": [], "optimizer slots": [], "training state": [], "left out": []}
    consumed = set()
    if ema and not any(name.endswith(EMA_SUFFIX) for name in shapes):
        raise MappingError("--ema: the checkpoint holds no /ExponentialMovingAverage shadows; drop --ema")
    for layer, row in table.layers.items():
        kind = table.kinds[row["kind"]]
        sources = {param: f"{scope}{layer}/{param}" for param in kind["params"]}
        if layer in left_out:
            skipped["left out"] += [s for s in sources.values() if s in shapes]
            consumed.update(sources.values())
            continue
        bound = {}
        for param, wanted in kind["params"].items():
            name = sources[param]
            if name not in shapes:
                problems.append(f"missing variable {name} (mapping row {layer}/{param})")
                continue
            consumed.add(name)
            shape = tuple(shapes[name])
            if len(shape) != len(wanted):
                problems.append(f"{name}: shape {list(shape)} does not fit {wanted}")
                continue
            for dim, size in zip(wanted, shape):
                fits = dim == size if isinstance(dim, int) else bound.setdefault(dim, size) == size
                if not fits:
                    problems.append(f"{name}: shape {list(shape)} disagrees on `{dim}` "
                                    f"({bound.get(dim, dim)} elsewhere in {layer})")
        dims[layer] = bound
    rows = table.rows(target, skip=skip)
    if not problems:
        background = None if keep_background else table.background_class
        for row in rows:
            entries.append(_entry(row, scope, shapes, dims[row.layer], ema, background, problems))
        consumed.update(entry.source for entry in entries if entry is not None)
        problems += _table_rules.entry_problems(table, rows, entries, shapes, scope, dtypes)
    for name in sorted(set(shapes) - consumed):
        role = _role(name, table.scope)
        if role == names.ROLE_EMA and name[: -len(EMA_SUFFIX)] in consumed:
            skipped["ema shadows"].append(name)
        elif role in SKIPPED_ROLES:
            skipped[SKIPPED_ROLES[role]].append(name)
        elif strict:
            problems.append(f"unmapped variable {name} (no row of {table.path.name} takes it; --lenient skips it)")
        else:
            skipped["left out"].append(name)
    if problems:
        raise MappingError(
            f"the checkpoint does not fit mapping {table.architecture} for {target} "
            f"({len(problems)} problems):\n  " + join_problems(problems)
        )
    return Plan(table, target, prefix, entries, {k: v for k, v in skipped.items() if v}, dims)


def _role(name, scope):
    try:
        return names.parse(name, model_scopes=[scope]).role
    except ConvertError:
        return None  # a name the parser cannot split is unmapped like any other


def _entry(row, scope, shapes, dims, ema, background, problems):
    if row.source is None:
        shape = tuple(dims[d] if isinstance(d, str) else d for d in row.fill_shape)
        return Entry(row.key, None, "identity", None, row.fill, row.dtype, None, shape)
    source = f"{scope}{row.layer}/{row.source}"
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
    return Entry(row.key, source, row.transform, drop, None, None, source_shape, shape)
