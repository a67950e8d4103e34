"""Mapping table schema 2: the compact form of a table, expanded into the form ``mapping`` reads.

A table file (``mappings/README.md``) says once what a machine can derive: ONNX names are the slim
scopes, Keras names follow Keras' creation counter, kinds come from a shared library
(``mappings/kinds.yaml``), a layer's activation sits on its graph node, and ``targets.keras.order``
follows from the graph. ``expand`` turns such a file into the expanded form (every name, kind and
order written out), which is what ``converter.mapping`` validates and what ports record a hash of
(``digest``): two files that mean the same table expand to the same form and hash the same.
"""

import copy
import functools
import hashlib
import importlib.resources
import json
import re
import sys

import yaml

from converter.errors import MappingError, join_problems

DIGEST_SIZE = 16
# the parts of an expanded table that say what it means (its description and file path do not)
MEANING = ("architecture", "scope", "detect", "detect_absent", "outside", "facts", "targets", "graph")


def canonical(data):
    """The meaning of an expanded table (its validated data) as plain data, kinds inlined into their rows.

    Kind names are labels: a row holds its kind's definition, so renaming a kind changes nothing.
    """
    meaning = {key: data.get(key, {} if key == "targets" else []) for key in MEANING}
    meaning["layers"] = {layer: {**{k: v for k, v in row.items() if k != "kind"}, "kind": data["kinds"][row["kind"]]}
                         for layer, row in data["layers"].items()}
    return meaning


def digest(data):
    """blake2b (128-bit, hex) of an expanded table's canonical form as sorted, compact JSON.

    A loaded ``mapping.Table`` keeps it as ``table.digest``.
    """
    text = json.dumps(canonical(data), sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.blake2b(text.encode("utf-8"), digest_size=DIGEST_SIZE).hexdigest()


SCHEMA = 2
# the expanded form's schema: what ``converter.mapping`` validates (a file of schema 1 is that form already)
EXPANDED = 1
TARGETS = ("torch", "keras", "onnx")
TOP_KEYS = ("schema", "architecture", "description", "scope", "detect", "detect_absent", "outside", "facts",
            "targets", "kinds", "templates", "graph", "layers")
ROW_KEYS = ("kind",) + TARGETS
NODE_KEYS = ("layer", "max_pool", "avg_pool", "concat", "add", "nodes", "flatten", "pad", "scale",
             "name", "scoped", "input", "stride", "padding", "activation", "reduced")
ACTIVATIONS = ("relu", "relu6")
# a row's default name per target, from its key (the layer's slim scope)
DEFAULT_NAMES = {"onnx": lambda key: key, "torch": lambda key: key.replace("/", ".")}
KERAS_SEPARATOR = "/"
LIBRARY = "kinds.yaml"
MIGRATE = "python -m converter.mappings.generate --migrate"
USE_KEYS = ("use", "with", "for")
# a `{name}` or `{name+1}` in a template's strings: a variable of its `use`, plus or minus a constant
REFERENCE = re.compile(r"\{(\w+)([+-]\d+)?\}")
MAX_REPEAT = 4096  # values one `for` range may take
MAX_NESTING = 8  # templates using templates
MAX_EXPANDED = 100_000  # graph nodes the templates of one table may make


@functools.lru_cache(maxsize=None)
def library():
    """The shared kinds (``mappings/kinds.yaml``): name -> kind, as a table's own ``kinds`` would give them."""
    from converter import _yaml

    path = importlib.resources.files("converter.mappings") / LIBRARY
    data = _yaml.load(path, "kind library", MappingError)
    if not isinstance(data, dict) or not isinstance(data.get("kinds"), dict):
        raise MappingError(f"{path}: the kind library must be a mapping with `kinds`")
    return data["kinds"]


def read(path):
    """The expanded form of the table file ``path`` (schema 1 or 2), as ``converter.mapping`` validates it."""
    from converter import _yaml

    return expand(_yaml.load(path, "mapping table", MappingError), path)


_NOTED = set()


def expand(data, path):
    """The expanded form (schema 1) of parsed table ``data`` read from ``path``.

    A schema 2 table is expanded; a schema 1 table is the expanded form already and is returned as it
    is, with a one-line note on stderr naming the command that migrates the file. Anything else is
    returned unchanged for ``mapping.validate`` to report. Raises ``MappingError`` naming the file and
    every key of a schema 2 table that cannot expand.
    """
    schema = data.get("schema") if isinstance(data, dict) else None
    if isinstance(schema, int) and not isinstance(schema, bool) and schema not in (EXPANDED, SCHEMA):
        raise MappingError(f"{path}: schema {schema} is not supported (this version reads schema {SCHEMA}, "
                           f"and schema {EXPANDED} as it is)")
    if schema not in (EXPANDED, SCHEMA):
        return data
    if data["schema"] == EXPANDED:
        if str(path) not in _NOTED:
            _NOTED.add(str(path))
            print(f"note: {path} is a schema 1 mapping table, read as it is; `{MIGRATE} {path}` writes it in "
                  f"schema 2", file=sys.stderr)
        return data
    problems = []
    expanded = _expand(data, problems)
    if problems:
        if len(problems) == 1:
            raise MappingError(f"{path}: {problems[0]}")
        raise MappingError(f"{path}: invalid mapping table ({len(problems)} problems):\n  " + join_problems(problems))
    return expanded


def _expand(data, problems):
    for key in data:
        if key not in TOP_KEYS:
            problems.append(f"unknown key {key!r} at the top level (schema 2 has {', '.join(TOP_KEYS)})")
    shapes = (("targets", dict, {}), ("kinds", dict, {}), ("templates", dict, {}), ("layers", dict, {}),
              ("graph", list, None))
    for key, kind, default in shapes:
        if not isinstance(data.get(key, default), kind):
            problems.append(f"`{key}` must be a {'mapping' if kind is dict else 'list'}")
    if problems:
        return None
    targets = data.get("targets", {})
    own = data.get("kinds", {})
    for name, kind in own.items():
        if isinstance(kind, dict) and isinstance(kind.get("compute"), dict) and "activation" in kind["compute"]:
            problems.append(f"kinds.{name}.compute.activation: schema 2 puts a layer's activation on its graph "
                            f"node ({{layer: ..., activation: {kind['compute']['activation']}}})")
    made_nodes = [0]
    graph = _instantiate(data["graph"], data.get("templates", {}), {}, "graph", 0, made_nodes, problems)
    if made_nodes[0] > MAX_EXPANDED:
        problems.append(f"graph: its templates make {made_nodes[0]} nodes, more than {MAX_EXPANDED}")
        return None
    activations, inline = {}, {}
    _strip_activations(graph, "", "graph", activations, inline, problems)
    given = data.get("layers", {})
    for key in inline:
        if key in given:
            problems.append(f"layers.{key}: given both in `layers` and on its graph node; give it once")
    rows = {**given, **inline}
    skipped = {target: _layers_under(graph, (spec or {}).get("skip", []) if isinstance(spec, dict) else [])
               for target, spec in targets.items()}
    kinds, layers, counters = {}, {}, {}
    made = {}  # expanded kind name -> (kind, activation) it stands for
    for key, row in rows.items():
        where = f"layers.{key}"
        if not isinstance(row, dict):
            problems.append(f"{where}: a row must be a mapping (kind, and names per target)")
            continue
        unknown = [name for name in row if name not in ROW_KEYS]
        if unknown:
            problems.append(f"{where}: unknown key {unknown[0]!r} (a row has {', '.join(ROW_KEYS)})")
        name = row.get("kind")
        kind = (own[name] if name in own else library().get(name)) if isinstance(name, str) else None
        if not isinstance(name, str):
            problems.append(f"{where}.kind: `kind` must name one of kinds, not {name!r}")
            continue
        if kind is None and name not in own:
            problems.append(f"{where}.kind: unknown kind {name!r} (neither the table's kinds nor "
                            f"mappings/{LIBRARY} has it)")
            continue
        if not isinstance(kind, dict) or not isinstance(kind.get("keras", {}), dict):
            problems.append(f"kinds.{name}: must be a mapping (compute, params, and a mapping per target)")
            continue
        activation = activations.get(key)
        full = f"{name}_{activation}" if activation else name
        if made.setdefault(full, (name, activation)) != (name, activation) or (full != name and full in own):
            problems.append(f"{where}: kind {name} with activation {activation} expands to kind {full}, "
                            f"which another kind of the table is named; rename one")
            continue
        if full not in kinds:
            kinds[full] = _kind(kind, activation, targets)
        layers[key] = _row(key, row, full, kinds[full], targets, skipped, counters, problems)
    if problems:
        return None
    expanded = {key: value for key, value in data.items() if key != "templates"}
    expanded.update(schema=EXPANDED, kinds=kinds, layers=layers, graph=graph)
    keras = targets.get("keras")
    if isinstance(keras, dict) and "order" not in keras:
        try:
            order = keras_order(graph, layers, kinds, keras.get("skip", []))
        except (KeyError, TypeError, AttributeError):
            return expanded  # a graph that does not resolve (an unknown end point or layer): validate names it
        expanded["targets"] = {**targets, "keras": {**keras, "order": order}}
    return expanded


def _strip_activations(nodes, scope, where, activations, inline, problems):
    # moves each layer node's `activation` into ``activations`` (layer key -> activation) and a row given on
    # it (kind and names) into ``inline``, checking node keys
    if not isinstance(nodes, list):
        return
    for index, node in enumerate(nodes):
        if not isinstance(node, dict):
            continue
        at = f"{where}[{index}]" + (f" ({node['name']})" if isinstance(node.get("name"), str) else "")
        allowed = NODE_KEYS + (ROW_KEYS if isinstance(node.get("layer"), str) else ())
        unknown = [key for key in node if key not in allowed]
        if unknown:
            problems.append(f"{at}: unknown key {unknown[0]!r} in a graph node (a node has {', '.join(NODE_KEYS)})")
        if isinstance(node.get("layer"), str) and "activation" in node:
            activation = node.pop("activation")
            if activation not in ACTIVATIONS:
                problems.append(f"{at}: activation {activation!r} of layer {node['layer']} is not one of "
                                f"{', '.join(ACTIVATIONS)}")
            activations[scope + node["layer"]] = activation
        if isinstance(node.get("layer"), str) and any(key in node for key in ROW_KEYS):
            row = {key: node.pop(key) for key in ROW_KEYS if key in node}
            if scope + node["layer"] in inline:
                problems.append(f"{at}: layer {scope + node['layer']} has a row on two graph nodes")
            inline[scope + node["layer"]] = row
        inner = f"{node['name']}/" if isinstance(node.get("name"), str) and node.get("scoped", True) else scope
        for key in ("concat", "add"):
            for number, branch in enumerate(node[key] if isinstance(node.get(key), list) else []):
                _strip_activations(branch, inner, f"{at}.{key}[{number}]", activations, inline, problems)
        _strip_activations(node.get("nodes"), inner, f"{at}.nodes", activations, inline, problems)


def _instantiate(nodes, templates, bound, where, depth, made, problems):
    # ``nodes`` with every `use` node replaced by its template's nodes, once per value of its `for` variable
    if not isinstance(nodes, list):
        return nodes
    out = []
    for index, node in enumerate(nodes):
        at = f"{where}[{index}]"
        if not isinstance(node, dict):
            out.append(node)
        elif "use" in node:
            out += _use(node, templates, bound, at, depth, made, problems)
        else:
            at += f" ({node['name']})" if isinstance(node.get("name"), str) else ""
            node = dict(node)
            for key in ("concat", "add"):
                if isinstance(node.get(key), list):
                    node[key] = [_instantiate(branch, templates, bound, f"{at}.{key}[{number}]", depth, made,
                                              problems) for number, branch in enumerate(node[key])]
            if "nodes" in node:
                node["nodes"] = _instantiate(node["nodes"], templates, bound, f"{at}.nodes", depth, made, problems)
            made[0] += 1
            out.append(node)
    return out


def _use(node, templates, bound, at, depth, made, problems):
    # the nodes a `use` node stands for: its template's, with its variables' values put in
    extra = [key for key in node if key not in USE_KEYS]
    name = node["use"]
    given, loop = node.get("with", {}), node.get("for", {})
    if extra:
        problems.append(f"{at}: unknown key {extra[0]!r} in a `use` node (it has {', '.join(USE_KEYS)})")
    elif not isinstance(name, str) or not isinstance(templates.get(name), list):
        known = ", ".join(sorted(templates)) or "none"
        problems.append(f"{at}.use: unknown template {name!r} (the table's templates: {known})")
    elif not isinstance(given, dict) or not all(_is_value(value) for value in given.values()):
        problems.append(f"{at}.with: must map variable names to integers or strings")
    elif not isinstance(loop, dict) or len(loop) > 1 or not all(_is_range(value) for value in loop.values()):
        problems.append(f"{at}.for: must give one variable and its range [first, last] (integers, first <= last, "
                        f"at most {MAX_REPEAT} values), e.g. {{unit: [2, 5]}}")
    elif depth >= MAX_NESTING:
        problems.append(f"{at}: templates used more than {MAX_NESTING} deep (does template {name} use itself?)")
    else:
        variable, (first, last) = next(iter(loop.items()), (None, (None, None)))
        out = []
        for value in range(first, last + 1) if variable else [None]:
            values = {**bound, **given, **({variable: value} if variable else {})}
            body = _substitute(templates[name], values)
            out += _instantiate(body, templates, values, f"templates.{name}", depth + 1, made, problems)
            if made[0] > MAX_EXPANDED:
                break
        return out
    return []


def _is_value(value):
    return isinstance(value, (int, str)) and not isinstance(value, bool)


def _is_range(value):
    return (isinstance(value, list) and len(value) == 2 and all(isinstance(n, int) and not isinstance(n, bool)
                                                                for n in value)
            and 0 <= value[1] - value[0] < MAX_REPEAT)


def _substitute(value, values):
    # a copy of a template's ``value`` with `{name}` and `{name+N}` references to ``values`` filled in; a string
    # that is one reference alone takes the value itself (an integer stays one); other braces stay (`{kh}`)
    if isinstance(value, dict):
        return {_substitute(key, values): _substitute(item, values) for key, item in value.items()}
    if isinstance(value, list):
        return [_substitute(item, values) for item in value]
    if not isinstance(value, str):
        return value

    def fill(match):
        name, offset = match.group(1), match.group(2)
        if name not in values:
            return match.group(0)
        if offset and isinstance(values[name], int):
            return str(values[name] + int(offset))
        return match.group(0) if offset else str(values[name])

    whole = REFERENCE.fullmatch(value)
    if whole and whole.group(1) in values and not whole.group(2):
        return values[whole.group(1)]
    return REFERENCE.sub(fill, value)


def _layers_under(graph, names):
    # layer keys under the graph nodes named in ``names``
    found = set()

    def walk(nodes, scope, inside):
        for node in nodes if isinstance(nodes, list) else ():
            if not isinstance(node, dict):
                continue
            hit = inside or node.get("name") in names
            if hit and isinstance(node.get("layer"), str):
                found.add(scope + node["layer"])
            inner = f"{node['name']}/" if isinstance(node.get("name"), str) and node.get("scoped", True) else scope
            for branch in _branches(node) + [node.get("nodes")]:
                walk(branch, inner, hit)

    walk(graph, "", False)
    return found


def _branches(node):
    joined = node.get("concat") or node.get("add")
    return joined if isinstance(joined, list) else []


def _kind(kind, activation, targets):
    # a kind of the expanded form: its activation in `compute`, its columns for the table's targets only
    kind = copy.deepcopy(kind)
    for target in TARGETS:
        if target not in targets:
            kind.pop(target, None)
    if activation and isinstance(kind.get("compute"), dict):
        kind["compute"]["activation"] = activation
    return kind


def roles(kind):
    """The Keras layers (roles: ``conv2d``, ``batch_normalization``) a kind's keras column names, in its order."""
    found = []
    for key in kind.get("keras") or {}:
        role = key.partition(KERAS_SEPARATOR)[0]
        if role not in found:
            found.append(role)
    return found


def keras_name(role, count):
    """The name Keras gives the ``count``-th layer (from 0) of class ``role`` a model creates: conv2d, conv2d_1..."""
    return f"{role}_{count}" if count else role


def _row(key, row, kind_name, kind, targets, skipped, counters, problems):
    # a row of the expanded form: the kind's expanded name, and a name per target, derived where not given
    expanded = {"kind": kind_name}
    for target in TARGETS:
        if target not in targets or key in skipped.get(target, ()):
            if target in row:
                expanded[target] = row[target]
            continue
        if target in kind and target != "keras" and target not in row:
            expanded[target] = DEFAULT_NAMES[target](key)
        elif target == "keras" and kind.get("keras"):
            given = row.get("keras", {})
            if not isinstance(given, dict):
                problems.append(f"layers.{key}.keras: must map roles (Keras classes) to layer names")
                continue
            names = {}
            for role in roles(kind):
                if role in given:
                    names[role] = given[role]
                else:
                    names[role] = keras_name(role, counters.get(role, 0))
                    counters[role] = counters.get(role, 0) + 1
            expanded["keras"] = names
        elif target in row:
            expanded[target] = row[target]
    return expanded


def keras_order(graph, layers, kinds, skip=()):
    """``targets.keras.order``: the Keras layers with weights in ``model.layers`` order.

    A functional Keras model lists its layers by depth (the longest path to the output), deepest first,
    and layers of one depth in the order a depth-first walk from the output meets them, taking each
    layer's inputs in order (``keras.src.ops.function.map_graph``). The graph is read as Keras builds
    such a network: a layer is one Keras layer per role of its kind, then an activation layer; a pool,
    pad, flatten or scale one layer; a concat or add one layer after its branches.
    """
    operations = []  # (inputs, Keras layer name or None)

    def new(inputs, name=None):
        operations.append((inputs, name))
        return len(operations) - 1

    points = {}

    def run(nodes, x, scope):
        for node in nodes:
            if node.get("name") in skip:
                continue
            x = one(node, points[node["input"]] if "input" in node else x, scope)
            if "name" in node:
                points[node["name"]] = x
        return x

    def one(node, x, scope):
        inner = f"{node['name']}/" if "name" in node and node.get("scoped", True) else scope
        if "layer" in node:
            row = layers[scope + node["layer"]]
            kind = kinds[row["kind"]]
            for role in roles(kind):
                x = new([x], row["keras"][role])
            return new([x]) if kind["compute"].get("activation") else x
        if "concat" in node or "add" in node:
            x = new([run(branch, x, inner) for branch in node.get("concat") or node.get("add")])
            return new([x]) if node.get("activation") else x
        if "nodes" in node:
            return run(node["nodes"], x, inner)
        return new([x])

    output = run(graph, new([]), "")
    depth = {output: 0}
    for operation in range(output, -1, -1):
        if operation in depth:
            for source in operations[operation][0]:
                depth[source] = max(depth.get(source, 0), depth[operation] + 1)
    index, stack = {}, [output]
    while stack:
        operation = stack.pop()
        if operation not in index:
            index[operation] = len(index)
            stack.extend(reversed(operations[operation][0]))
    ordered = sorted(depth, key=lambda operation: (-depth[operation], index[operation]))
    return [operations[operation][1] for operation in ordered if operations[operation][1]]


def compact(data):
    """Schema 2 data of a valid expanded table ``data``, which ``expand`` turns back into the same table.

    Kinds the library has are referenced by name, the others kept (named without their activation where
    that names no other kind); activations move to the layers' graph nodes; names a target derives by
    default, and a ``targets.keras.order`` that the graph gives, are left out.
    """
    targets = data.get("targets", {})
    names, own = {}, {}
    for name, kind in data["kinds"].items():
        activation = kind["compute"].get("activation")
        base = _kind(kind, None, targets)
        base["compute"].pop("activation", None)
        found = next((known for known, shared in library().items() if _kind(shared, None, targets) == base), None)
        if found is None:
            found = name.removesuffix(f"_{activation}") if activation else name
            if own.get(found, base) != base or (found != name and found in data["kinds"]):
                found = name
            own[found] = base
        names[name] = found
    graph = copy.deepcopy(data["graph"])
    activations = {layer: data["kinds"][row["kind"]]["compute"].get("activation")
                   for layer, row in data["layers"].items()}
    _put_activations(graph, "", activations)
    skipped = {target: _layers_under(graph, (spec or {}).get("skip", [])) for target, spec in targets.items()}
    layers, counters = {}, {}
    for key, row in data["layers"].items():
        kind = data["kinds"][row["kind"]]
        short = {"kind": names[row["kind"]]}
        for target, name in row.items():
            derived = target in targets and key not in skipped.get(target, ()) and target in kind
            if target == "kind" or (derived and target != "keras" and name == DEFAULT_NAMES[target](key)):
                continue
            if derived and target == "keras":
                given = {}
                for role in roles(kind):
                    if name[role] == keras_name(role, counters.get(role, 0)):
                        counters[role] = counters.get(role, 0) + 1
                    else:
                        given[role] = name[role]
                if given:
                    short["keras"] = given
                continue
            short[target] = name
        layers[key] = short
    compacted = {**data, "schema": SCHEMA, "kinds": own, "graph": graph, "layers": layers}
    keras = targets.get("keras")
    if keras and keras.get("order") == keras_order(data["graph"], data["layers"], data["kinds"], keras.get("skip", [])):
        compacted["targets"] = {**targets, "keras": {key: value for key, value in keras.items() if key != "order"}}
    if not own:
        del compacted["kinds"]
    return compacted


def _put_activations(nodes, scope, activations):
    for node in nodes:
        if "layer" in node and activations.get(scope + node["layer"]):
            node["activation"] = activations[scope + node["layer"]]
        inner = f"{node['name']}/" if "name" in node and node.get("scoped", True) else scope
        for branch in (node.get("concat") or node.get("add") or []) + [node.get("nodes") or []]:
            _put_activations(branch, inner, activations)


SECTION = re.compile(r"^([A-Za-z_][\w-]*):")
REGENERATED = ("kinds", "graph", "layers")
ROW_WIDTH = 120


def dump(data, original=None):
    """The YAML text of schema 2 table ``data`` (``compact``'s).

    ``original``: the text of the file it was migrated from, whose sections other than ``kinds``,
    ``graph`` and ``layers`` are kept as they were written, comments and all (less a
    ``targets.keras.order`` that ``data`` leaves out); the others are written anew.
    """
    header, sections = _sections(original or "")
    text = header
    for key, value in data.items():
        if key in REGENERATED:
            text += _leading_comments(sections.get(key, "")) + _dump_section(key, value, sections.get("kinds", ""))
        elif key == "schema":
            text += f"schema: {SCHEMA}\n"
        elif key in sections:
            kept = sections[key]
            if key == "targets" and "order" not in (value.get("keras") or {}):
                kept = _without_order(kept)
            text += kept
        else:
            text += yaml.safe_dump({key: value}, sort_keys=False, default_flow_style=None, width=ROW_WIDTH,
                                   allow_unicode=True)
    return text


def _sections(text):
    # (text before the first top-level key, {key: its text with the comments just above it})
    lines = text.splitlines(keepends=True)
    starts = []
    for number, line in enumerate(lines):
        match = SECTION.match(line)
        if match:
            start = number
            while start > (starts[-1][1] + 1 if starts else 0) and lines[start - 1].startswith("#"):
                start -= 1
            starts.append((match.group(1), number, start))
    if not starts:
        return "", {}
    header = "".join(lines[: starts[0][2]])
    sections = {}
    for index, (key, _, start) in enumerate(starts):
        end = starts[index + 1][2] if index + 1 < len(starts) else len(lines)
        sections[key] = "".join(lines[start:end])
    return header, sections


def _leading_comments(section):
    lines = section.splitlines(keepends=True)
    comments = []
    for line in lines:
        if not line.startswith("#"):
            break
        comments.append(line)
    return "".join(comments)


def _without_order(section):
    # the targets section without `keras.order` (a flow list over one or more lines) and its comment
    lines = section.splitlines(keepends=True)
    for number, line in enumerate(lines):
        if line.strip().startswith("order:"):
            indent = len(line) - len(line.lstrip())
            end = number + 1
            while end < len(lines) and lines[end].strip() and (
                    len(lines[end]) - len(lines[end].lstrip()) > indent
                    or (len(lines[end]) - len(lines[end].lstrip()) == indent and lines[end].lstrip().startswith("- "))):
                end += 1  # a flow list's further lines, or a block list's items (which YAML may not indent)
            start = number
            while start > 0 and lines[start - 1].strip().startswith("#") and \
                    len(lines[start - 1]) - len(lines[start - 1].lstrip()) == indent:
                start -= 1
            return "".join(lines[:start] + lines[end:])
    return section


def _flow(value):
    # one line of YAML: a flow collection, or a scalar (quoted where YAML needs it)
    text = yaml.safe_dump(value, default_flow_style=True, width=float("inf"), sort_keys=False, allow_unicode=True)
    return text.removesuffix("...\n").strip()


def _dump_section(key, value, kinds_text):
    if key == "layers":
        width = max((len(_flow(layer)) for layer in value), default=0) + 1
        return "layers:\n" + "".join(f"  {(_flow(layer) + ':').ljust(width)} {_flow(row)}\n"
                                     for layer, row in value.items()) + "\n"
    if key == "graph":
        return "graph:\n" + "".join(_node(node, 2) for node in value) + "\n"
    blocks = _kind_blocks(kinds_text)
    text = "kinds:\n"
    for name, kind in value.items():
        text += blocks.get(name) or _indent(yaml.safe_dump({name: kind}, sort_keys=False, default_flow_style=None,
                                                           width=ROW_WIDTH), 2)
        text += "\n"
    return text


def _node(node, indent):
    # a graph node: one flow line where it fits, else its keys one per line and its branches nested
    pad = " " * indent
    line = f"{pad}- {_flow(node)}\n"
    if len(line) <= ROW_WIDTH or not any(key in node for key in ("concat", "add", "nodes")):
        return line
    text, first = "", True
    for key, value in node.items():
        lead = f"{pad}- " if first else f"{pad}  "
        first = False
        if key in ("concat", "add"):
            text += f"{lead}{key}:\n"
            for branch in value:
                flow = f"{pad}    - {_flow(branch)}\n"
                if len(flow) <= ROW_WIDTH:
                    text += flow
                else:
                    text += f"{pad}    -\n" + "".join(_node(child, indent + 6) for child in branch)
        elif key == "nodes":
            text += f"{lead}nodes:\n" + "".join(_node(child, indent + 4) for child in value)
        else:
            text += f"{lead}{key}: {_flow(value)}\n"
    return text


def _kind_blocks(text):
    # the kinds of a schema 1 file's text as written, without their activation: name -> block, under the
    # kind's name and under that name less its activation (`conv_bn_relu` -> `conv_bn`) where no kind has it
    blocks, name, lines, inside = {}, None, [], False
    for line in text.splitlines(keepends=True):
        if not inside:
            inside = line.rstrip() == "kinds:"
            continue
        match = re.match(r"^  ([\w-]+):\s*$", line)
        if match or not (line.startswith("   ") or not line.strip()):
            if name:
                blocks[name] = "".join(lines).rstrip("\n") + "\n"
            name, lines = (match.group(1), [line]) if match else (None, [])
        elif name:
            lines.append(line)
    if name:
        blocks[name] = "".join(lines).rstrip("\n") + "\n"
    found, stripped = {}, {}
    for name, block in blocks.items():
        activation = re.search(r"compute: \{.*?activation: (\w+)", block)
        if activation:
            block = re.sub(r",? activation: \w+", "", block, count=1)
            short = name.removesuffix(f"_{activation.group(1)}")
            stripped[short] = block.replace(f"  {name}:", f"  {short}:", 1)
        found[name] = block
    return {**stripped, **found}


def _indent(text, spaces):
    return "".join(" " * spaces + line if line.strip() else line for line in text.splitlines(keepends=True))


def migrate(path):
    """The schema 2 text of the schema 1 table file ``path`` (comments of the sections kept are kept)."""
    from converter import _yaml, mapping

    data = _yaml.load(path, "mapping table", MappingError)
    if not isinstance(data, dict) or data.get("schema") != EXPANDED:
        raise MappingError(f"{path}: not a schema {EXPANDED} mapping table (its `schema` is "
                           f"{data.get('schema') if isinstance(data, dict) else None!r}); nothing to migrate")
    problems = mapping.validate(data)
    if problems:
        raise MappingError(f"{path}: invalid mapping table, fix it first ({len(problems)} problems):\n  "
                           + join_problems(problems))
    return dump(compact(data), _yaml.read_text(path, "mapping table", MappingError))
