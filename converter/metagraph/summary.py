"""What a ``.meta`` graph holds, for people: its size, input, outputs, training switches and op counts."""

from converter._text import counted
from converter.errors import GraphError
from converter.metagraph import inference
from converter.metagraph.reader import read_meta_graph

# op counts shown in text; the JSON has them all
SHOWN_OPS = 12


def describe(meta_path):
    """``{path, nodes, tensorflow_version, input, input_shape, outputs, training_flags, batch_norms_in_training,
    dropouts, ops, problems}`` of the graph at ``meta_path``; a graph that cannot be read gives only
    ``path`` and ``problems``."""
    try:
        graph = read_meta_graph(meta_path)
        network = inference.find_network(graph)
    except GraphError as error:
        return {"path": str(meta_path), "problems": [str(error)]}
    training = [op.node.name for op in network.ops.values()
                if op is not None and op.kind == "batch_norm" and op.attrs["training"]]
    shape = network.shape(network.input) if network.input is not None else None
    return {
        "path": str(meta_path),
        "nodes": len(graph.nodes),
        "tensorflow_version": graph.tensorflow_version,
        "input": str(network.input) if network.input is not None else None,
        "input_shape": None if shape is None else [size if size is not None else -1 for size in shape],
        "outputs": [str(ref) for ref in network.outputs],
        "training_flags": list(network.flags),
        "batch_norms_in_training": len(training),
        "dropouts": len(network.dropouts),
        "ops": graph.op_counts(),
        "problems": list(network.problems),
    }


def render(summary):
    """The summary as lines of text."""
    lines = [f"graph {summary['path']}:"]
    if "nodes" not in summary:
        return lines + [f"  {problem}" for problem in summary["problems"]]
    shape = summary["input_shape"]
    shown = "x".join("?" if size == -1 else str(size) for size in shape) if shape else "shape not recorded"
    lines.append(f"  {counted(summary['nodes'], 'node')} (TensorFlow {summary['tensorflow_version'] or 'unknown'}); "
                 f"input {summary['input'] or '(not found)'} [{shown}]; outputs {', '.join(summary['outputs']) or '(not found)'}")
    lines.append(f"  at inference: {counted(len(summary['training_flags']), 'is_training placeholder')} fed False"
                 f"{' (' + ', '.join(summary['training_flags']) + ')' if summary['training_flags'] else ''}, "
                 f"{counted(summary['batch_norms_in_training'], 'batch norm')} in training mode, "
                 f"{counted(summary['dropouts'], 'dropout')}")
    ops = list(summary["ops"].items())
    lines.append("  ops: " + ", ".join(f"{op} {count}" for op, count in ops[:SHOWN_OPS])
                 + (f", ... ({len(ops) - SHOWN_OPS} more types)" if len(ops) > SHOWN_OPS else ""))
    lines += [f"  problem: {problem}" for problem in summary["problems"]]
    return lines
