"""``ckpt-convert map CHECKPOINT -o net.yaml``: the mapping table of the network in a checkpoint's ``.meta`` graph."""

import math
import pathlib

import click
import yaml

from converter import mapping, table_schema
from converter._atomic import atomic_output
from converter._text import counted
from converter.checkpoint import open_checkpoint
from converter.cli import debug_option
from converter.errors import CheckpointError, GraphError, MappingError
from converter.metagraph import recover


class _TableDumper(yaml.SafeDumper):
    """YAML as the built-in tables are written: a layer row, a tensor's spec or a list of sizes on one line."""


def _scalar_or_sizes(value):
    return not isinstance(value, (dict, list)) or (isinstance(value, list) and not any(
        isinstance(item, (dict, list)) for item in value))


def _flow_if_flat(dumper, data):
    flat = all(_scalar_or_sizes(value) for value in data.values())
    return dumper.represent_mapping("tag:yaml.org,2002:map", data.items(), flow_style=flat and bool(data))


def _flow_list_if_flat(dumper, data):
    flat = all(not isinstance(value, (dict, list)) for value in data)
    return dumper.represent_sequence("tag:yaml.org,2002:seq", data, flow_style=flat)


_TableDumper.add_representer(dict, _flow_if_flat)
_TableDumper.add_representer(list, _flow_list_if_flat)


def dump(data, source):
    """The table ``data`` (the expanded form) as YAML text in schema 2, with a header saying where it came from."""
    header = (f"# Recovered by ckpt-convert from {source} (a TF1 MetaGraphDef): review it, then convert with\n"
              f"# `--mapping` this file. Schema: mappings/README.md.\n")
    return header + yaml.dump(table_schema.compact(data), Dumper=_TableDumper, sort_keys=False, width=120)


def _meta_and_checkpoint(path):
    path = pathlib.Path(path)
    if path.name.endswith(recover.META_SUFFIX):
        return path, pathlib.Path(str(path)[: -len(recover.META_SUFFIX)])
    with open_checkpoint(path) as ckpt:
        checkpoint = pathlib.Path(ckpt.path)
    meta = recover.meta_beside(checkpoint)
    if meta is None:
        raise GraphError(f"{checkpoint}: no {checkpoint.name}{recover.META_SUFFIX} beside it; TF1's Saver writes "
                         f"one with every checkpoint (pass the .meta file itself if it lies elsewhere)")
    return meta, checkpoint


def _check_against(checkpoint, table):
    # the checkpoint the graph was saved with must fill every row; what else it holds is said, not refused
    try:
        with open_checkpoint(checkpoint) as ckpt:
            shapes = {name: ckpt.info(name).shape for name in ckpt.names()}
    except CheckpointError as error:
        click.echo(f"note: the table is not checked against a checkpoint ({error})", err=True)
        return None
    try:
        return mapping.plan(shapes, table, "torch", strict=False)
    except MappingError as error:
        raise MappingError(f"{checkpoint}: the checkpoint does not fit the network of its .meta graph: "
                           f"{str(error).partition(': ')[2] or error}") from None


def _range(text):
    if text is None:
        return None
    try:
        low, high = (float(part) for part in text.split(","))
    except ValueError:
        raise click.BadParameter(f"{text!r}: give LOW,HIGH, e.g. 0,255 or -1,1", param_hint="--input-range") from None
    if not (math.isfinite(low) and math.isfinite(high) and low < high):
        raise click.BadParameter(f"{text!r}: LOW must be below HIGH, both finite", param_hint="--input-range")
    return [low, high]


@click.command("map")
@click.argument("checkpoint", type=click.Path(path_type=pathlib.Path))
@click.option("-o", "--output", type=click.Path(path_type=pathlib.Path, dir_okay=False),
              help="Write the table here (.yaml). Default: print it.")
@click.option("--input", "input_node", metavar="NODE",
              help="The tensor the network starts from (a graph fed by a queue or an iterator, or with "
                   "preprocessing in it). Default: the float placeholder the outputs depend on.")
@click.option("--outputs", metavar="NODE,...",
              help="The tensors to output, the first the default one. Default: the logits the graph's Softmax "
                   "takes, and any other logits a loss takes.")
@click.option("--input-range", metavar="LOW,HIGH", callback=lambda ctx, param, value: _range(value),
              help="The range of the network's input, which the graph does not state (default: TF-Slim's "
                   "[-1, 1], and the table says it is assumed); e.g. 0,255.")
@click.option("--force", is_flag=True, help="Overwrite an existing output file.")
@debug_option
def command(checkpoint, output, input_node, outputs, input_range, force, debug):
    """Recover the network of CHECKPOINT's .meta graph (or a .meta file) as a mapping table.

    The .meta is read without TensorFlow. The table describes the network at inference: batch norm
    that the graph runs in training mode uses the layer's moving statistics, tf.cond on is_training
    takes its inference branch, dropout is the identity. Convert with it: --mapping net.yaml.
    """
    meta, weights = _meta_and_checkpoint(checkpoint)
    data = recover.recover_data(meta, input_node=input_node, outputs=outputs, input_range=input_range)
    plan = _check_against(weights, recover.table_from_data(meta, data))
    text = dump(data, meta.name)
    if output is None:
        click.echo(text, nl=False)
        return
    if output.suffix not in (".yaml", ".yml"):
        raise click.BadParameter(f"{output}: a mapping table is a .yaml file", param_hint="-o")
    with atomic_output(output, force) as temp:
        temp.write_text(text)
    graph_facts = data["facts"]["meta_graph"]
    click.echo(f"wrote {output}: {counted(len(data['layers']), 'layer')}, {counted(len(data['kinds']), 'kind')}, from {meta}")
    click.echo(f"input: {graph_facts['input']} ({data['facts']['input']['height']}x{data['facts']['input']['width']}"
               f"x{data['facts']['input']['channels']})")
    click.echo("outputs: " + ", ".join(f"{name} = {node}" for name, node in graph_facts["outputs"].items()))
    training = len(graph_facts["batch_norms"]) + len(graph_facts.get("statistics", {})) // 2
    click.echo(f"at inference: {counted(training, 'batch norm')} in training mode run with their moving "
               f"statistics, {counted(len(graph_facts['dropouts']), 'dropout')} removed, is_training placeholders fed False: "
               f"{', '.join(graph_facts['training_flags']) or 'none'}")
    if plan is not None:
        for topic, sentence in plan.decisions():
            if topic != "network":
                click.echo(f"{topic}: {sentence}")
