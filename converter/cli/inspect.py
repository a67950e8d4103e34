"""``ckpt-convert inspect``: a checkpoint's variables grouped by TF-Slim scope, with sizes and totals.

``build_report`` turns a checkpoint into plain data (the ``--json`` output); ``render_text`` prints
that data for people. Neither reads a tensor's values, and nothing here imports TensorFlow, torch or Keras.
"""

import json
import math
import re

import click

from converter import mapping, names
from converter._text import counted, size
from converter.checkpoint import open_checkpoint
from converter.cli import debug_option
from converter.errors import MappingError, VariableNameError
from converter.metagraph import recover, summary

SCHEMA = 1
UNKNOWN_ARCHITECTURE = "unknown"
KIND_SLIM = "slim"
KIND_TF2 = "tf2"
FORMAT_TF2 = "tf2"

# SlimName.role values, plus roles for names the parser rejects and for TF2 entries
ROLE_UNRECOGNISED = "unrecognised"
ROLE_OBJECT = "object"
ROLE_OBJECT_GRAPH = "object_graph"
# roles with a totals bucket of their own; every other role counts under "other"
TOTAL_BUCKETS = (names.ROLE_MODEL, names.ROLE_EMA, names.ROLE_SLOT)
TOTAL_KEYS = ("all", *TOTAL_BUCKETS, "other")
# scope levels of the groups, outermost first; each adds one SlimName part to the scope path
LEVELS = (("model", "model_scope"), ("block", "block"), ("branch", "branch"), ("layer", "layer"))
SLIM_PARTS = ("prefix", "model_scope", "block", "branch", "layer", "parameter")

TF2_ATTRIBUTE = re.compile(r"(?P<object>.+)/\.ATTRIBUTES/(?P<attribute>[^/]+)")
TF2_SLOT = re.compile(r"(?P<variable>.+)/\.OPTIMIZER_SLOT/(?P<optimizer>[^/]+)/(?P<slot>[^/]+)")
OBJECT_GRAPH_KEY = "_CHECKPOINTABLE_OBJECT_GRAPH"

# dtype names as users read them; numpy's "object" is how the reader returns strings
DTYPE_NAMES = {"object": "string"}
INDENT = "  "


def _empty_totals():
    return {key: {"variables": 0, "parameters": 0, "bytes": 0} for key in TOTAL_KEYS}


def _add(totals, variable):
    bucket = variable["role"] if variable["role"] in TOTAL_BUCKETS else "other"
    for key in ("all", bucket):
        totals[key]["variables"] += 1
        totals[key]["parameters"] += variable["parameters"]
        totals[key]["bytes"] += variable["bytes"]


def _variable(info):
    """The fields every variable entry has, whatever its kind."""
    entry = {
        "name": info.name,
        "role": None,
        "shape": list(info.shape),
        "dtype": DTYPE_NAMES.get(info.dtype.name, info.dtype.name),
        "parameters": math.prod(info.shape),
        "bytes": info.nbytes,
        "ema": False,
        "slot": None,
        "suffixes": [],
        "kernel_hint": None,
        "object_path": None,
        "problem": None,
    }
    entry.update(dict.fromkeys(SLIM_PARTS))
    return entry


def _parse(name, model_scopes):
    """The SlimName, trying the detected table's model scope first; VariableNameError if neither parse works."""
    if model_scopes:
        try:
            return names.parse(name, model_scopes)
        except VariableNameError:
            pass  # not under the table's scope: the default rule may still read it
    return names.parse(name)


def _slim_variable(info, model_scopes):
    entry = _variable(info)
    try:
        parsed = _parse(info.name, model_scopes)
    except VariableNameError as error:
        entry.update(role=ROLE_UNRECOGNISED, problem=str(error))
        return entry
    entry.update({part: getattr(parsed, part) for part in SLIM_PARTS})
    entry.update(
        role=parsed.role,
        ema=parsed.is_ema,
        slot=parsed.slot,
        suffixes=list(parsed.suffixes),
        kernel_hint=list(parsed.kernel_hint) if parsed.kernel_hint else None,
    )
    return entry


def _tf2_variable(info):
    entry = _variable(info)
    if info.name == OBJECT_GRAPH_KEY:
        entry["role"] = ROLE_OBJECT_GRAPH
        return entry
    attribute = TF2_ATTRIBUTE.fullmatch(info.name)
    entry["object_path"] = attribute["object"] if attribute else info.name
    slot = TF2_SLOT.fullmatch(entry["object_path"])
    entry["role"] = names.ROLE_SLOT if slot else ROLE_OBJECT
    entry["slot"] = slot["slot"] if slot else None
    return entry


def _groups(variables):
    """Totals per scope (model scope, block, branch, layer) over the variables the parser placed in a layer."""
    groups = {}
    for variable in variables:
        if variable["layer"] is None:
            continue
        path = [variable["prefix"]] if variable["prefix"] else []
        for level, part in LEVELS:
            if variable[part] is None:
                continue
            path.append(variable[part])
            scope = "/".join(path)
            group = groups.setdefault(scope, {"scope": scope, "level": level, "totals": _empty_totals()})
            _add(group["totals"], variable)
    return list(groups.values())


def _decisions(found, infos):
    # what a conversion would decide from this checkpoint (classes, heads, input size), from shapes alone
    if len({network.root for network in found}) != 1:
        return []
    table = mapping.load_table(found[0].architecture)
    shapes = {info.name: info.shape for info in infos}
    try:
        plan = mapping.plan(shapes, table, next(iter(table.targets)), strict=False)
    except MappingError as error:
        return [{"topic": "problem", "text": str(error).splitlines()[0]}]
    return [{"topic": topic, "text": text} for topic, text in plan.decisions()]


def build_report(path):
    """Describe the checkpoint at ``path`` as plain data (the ``--json`` output; keys in the command help).

    Reads the index only. Raises CheckpointError when ``path`` is not a readable checkpoint, MappingError
    when a built-in mapping table is invalid.
    """
    with open_checkpoint(path, index_only=True) as checkpoint:
        infos = [checkpoint.info(name) for name in checkpoint.names()]
        checkpoint_path, checkpoint_format = str(checkpoint.path), checkpoint.format
        bytes_read = checkpoint.bytes_read
    kind = KIND_TF2 if checkpoint_format == FORMAT_TF2 else KIND_SLIM
    found = mapping.networks([info.name for info in infos]) if kind == KIND_SLIM else []
    architecture = found[0].architecture if found else None
    model_scopes = list(dict.fromkeys(network.scope for network in found)) or None
    if kind == KIND_TF2:
        variables = [_tf2_variable(info) for info in infos]
    else:
        variables = [_slim_variable(info, model_scopes) for info in infos]
    totals = _empty_totals()
    for variable in variables:
        _add(totals, variable)
    meta = recover.meta_beside(checkpoint_path)
    return {
        "schema": SCHEMA,
        "path": checkpoint_path,
        "format": checkpoint_format,
        "bytes_read": bytes_read,
        "kind": kind,
        "architecture": architecture or UNKNOWN_ARCHITECTURE,
        "networks": [{"architecture": n.architecture, "scope": str(n), "prefix": n.prefix} for n in found],
        "decisions": _decisions(found, infos),
        "totals": totals,
        "groups": _groups(variables),
        "variables": variables,
        "graph": summary.describe(meta) if meta is not None else None,
    }


def _summary(totals):
    variables, parameters, nbytes = totals["variables"], totals["parameters"], totals["bytes"]
    return (f"{counted(variables, 'variable')}, {counted(parameters, 'parameter')}, "
            f"{counted(nbytes, 'byte')} ({size(nbytes)})")


def _flags(variable):
    flags = []
    if variable["ema"]:
        flags.append("ema")
    if variable["slot"]:
        flags.append(f"slot {variable['slot']}")
    if variable["role"] not in (*TOTAL_BUCKETS, ROLE_OBJECT):
        flags.append(variable["role"])
    return f"  [{', '.join(flags)}]" if flags else ""


def _problem(variable):
    # the line already shows the name
    return variable["problem"].removeprefix(f"variable {variable['name']!r}: ")


def _rows(report):
    """``(indent, label, variable or group totals)`` in display order."""
    rows, shown = [], set()
    groups = {group["scope"]: group for group in report["groups"]}
    for variable in report["variables"]:
        if variable["layer"] is None:
            continue
        path = [variable["prefix"]] if variable["prefix"] else []
        depth = 0
        for _, part in LEVELS:
            if variable[part] is None:
                continue
            path.append(variable[part])
            scope = "/".join(path)
            if scope not in shown:
                shown.add(scope)
                label = scope if depth == 0 else variable[part]
                rows.append((depth, label, groups[scope]["totals"]))
            depth += 1
        label = "/".join([variable["parameter"], *variable["suffixes"]])
        rows.append((depth, label, variable))
    others = [v for v in report["variables"] if v["layer"] is None]
    if others:
        label = "objects" if report["kind"] == KIND_TF2 else "outside any layer"
        rows.append((0, label, None))
        rows += [(1, v["object_path"] or v["name"], v) for v in others]
    return rows


def render_text(report):
    """The report as aligned lines of text."""
    header = f"{report['path']}: {report['format']} checkpoint"
    if report["kind"] == KIND_TF2:
        header += ", TF2 object-based (not TF-Slim): variables are listed by object path"
    else:
        header += f", architecture {report['architecture']}"
        networks = report["networks"]
        if len(networks) > 1:
            header += "; networks: " + ", ".join(f"{n['scope']} ({n['architecture']})" for n in networks) + \
                      " (convert picks one with --scope)"
        header += "".join(f"\n  {d['topic']}: {d['text']}" for d in report["decisions"])
    rows = _rows(report)
    width = max((len(INDENT * depth + label) for depth, label, _ in rows), default=0)
    lines = [header, ""]
    for depth, label, item in rows:
        text = (INDENT * depth + label).ljust(width)
        if item is None:
            lines.append(text.rstrip())
        elif "name" in item:
            shape = "[" + ", ".join(map(str, item["shape"])) + "]"
            line = f"{text}  {shape:<20} {item['dtype']:<8} {item['parameters']:>12,} {size(item['bytes']):>10}"
            problem = f"  {_problem(item)}" if item["problem"] else ""
            lines.append(line + _flags(item) + problem)
        else:
            model = item["model"]
            lines.append(f"{text}  model: {counted(model['parameters'], 'parameter')} in {counted(model['variables'], 'variable')}")
    lines += ["", "totals:"]
    for key in TOTAL_KEYS:
        lines.append(f"{INDENT}{key + ':':<7} {_summary(report['totals'][key])}")
    if report["graph"] is not None:
        lines += [""] + summary.render(report["graph"])
    return "\n".join(lines)


@click.command(
    name="inspect",
    help=f"""List the variables of the checkpoint PATH, grouped by TF-Slim scope, with sizes and totals.

    PATH is a checkpoint prefix, its .index or data file, a V1 checkpoint file, or a directory with a
    `checkpoint` state file, local or in a bucket (s3://, gs://). Only the index is read: the data
    files need not be there. EMA shadows, optimizer slots, global_step and names
    that are not TF-Slim names are flagged; the architecture is the mapping table whose detect
    variables are all present ("{UNKNOWN_ARCHITECTURE}" if none). TF2 object-based checkpoints are
    reported as such, by object path.

    \b
    --json prints one object (schema {SCHEMA}); every key is always present:
      schema        {SCHEMA}
      path          the checkpoint read
      format        "v2" | "v1" | "tf2"
      bytes_read    bytes read from the checkpoint's files (the index alone)
      kind          "slim" | "tf2"
      architecture  a mapping table name, or "{UNKNOWN_ARCHITECTURE}"
      networks      [{{architecture, scope, prefix}}]: each network found, under
                    whatever scope (FlowerNet) and outer prefix (tower_0/) it has
      decisions     [{{topic, text}}]: what a conversion decides from the
                    checkpoint (network, classes and background rule, heads,
                    input size, variables not converted)
      totals        {{all|model|ema|slot|other: {{variables, parameters, bytes}}}};
                    other = global_step, optimizer and learning-rate variables,
                    unrecognised names, TF2 objects
      groups        [{{scope, level: model|block|branch|layer, totals}}], scope =
                    "[prefix/]model_scope[/block][/branch][/layer]"
      variables     [{{name, role, shape, dtype, parameters, bytes, prefix,
                    model_scope, block, branch, layer, parameter, suffixes, ema,
                    slot, kernel_hint, object_path, problem}}]
                    role: model | ema | slot | global_step | optimizer |
                    learning_rate | unrecognised (problem says why) | object |
                    object_graph (TF2); kernel_hint comes from the name only
      graph         null, or the .meta graph beside the checkpoint: {{path, nodes,
                    tensorflow_version, input, input_shape, outputs,
                    training_flags, batch_norms_in_training, dropouts,
                    ops: {{op: count}}, problems}} (without TensorFlow)
    """,
)
@click.argument("path", type=click.Path())
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON (keys above).")
@debug_option
def command(path, as_json, debug):
    report = build_report(path)
    click.echo(json.dumps(report, indent=2) if as_json else render_text(report))
