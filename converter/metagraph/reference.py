"""The reference for a network recovered from a ``.meta`` graph: that graph, run by TensorFlow.

TensorFlow imports the ``MetaGraphDef`` saved beside the checkpoint
(``tf.compat.v1.train.import_meta_graph``), restores the checkpoint into it with the graph's own
variables, and runs it at the table's output nodes (``facts.meta_graph``) on the input batch, with
every ``is_training`` placeholder fed False. Where the graph has no such switch, the ops it runs
only in training are set to what they compute at inference before import, as the table records:
each training-mode batch norm normalizes by its layer's moving statistics (``is_training=False``;
where the batch norm is arithmetic, the inputs that take the batch's mean and variance take the
moving ones), and each dropout passes its input on. Needs the ``tf`` extra; nothing else imports this module.
"""

import pathlib

from converter._text import counted
from converter.errors import ConvertError
from converter.metagraph import recover

EMA_SUFFIX = "/ExponentialMovingAverage"
FLOAT = 1  # DataType DT_FLOAT
READ_SUFFIX = "/read_at_inference"
# the batch norm's inputs that carry its statistics (x, scale, offset, mean, variance)
MEAN_INPUT, VARIANCE_INPUT = 3, 4


def meta_graph_for(checkpoint, table):
    """The ``.meta`` graph a recovered table's reference runs: the table's own, else the one beside the checkpoint."""
    path = pathlib.Path(table.path)
    if path.name.endswith(recover.META_SUFFIX):
        return path
    found = recover.meta_beside(checkpoint)
    if found is None:
        raise ConvertError(f"{checkpoint}: the table {path.name} was recovered from a .meta graph, and verify runs "
                           f"that graph: put it beside the checkpoint as {pathlib.Path(str(checkpoint)).name}"
                           f"{recover.META_SUFFIX}")
    return found


def describe(table):
    """What the reference runs and changes, one sentence."""
    spec = table.facts.meta_graph
    parts = [f"{name} = {node}" for name, node in spec["outputs"].items()]
    changes = []
    if spec["training_flags"]:
        changes.append(f"{', '.join(spec['training_flags'])} fed False")
    if spec["batch_norms"] or spec.get("statistics"):
        count = len(spec["batch_norms"]) + len(spec.get("statistics", {})) // 2
        changes.append(f"{counted(count, 'training-mode batch norm')} run with their moving statistics")
    if spec["dropouts"]:
        changes.append(f"{counted(len(spec['dropouts']), 'dropout')} pass their input on")
    return (f"the .meta graph run by TensorFlow at {', '.join(parts)} from {spec['input']}"
            + (f"; {'; '.join(changes)}" if changes else ""))


def _tensor_name(text):
    return text if ":" in text else f"{text}:0"


def _at_inference(tf, proto, spec):
    # rewrite, in TensorFlow's own MetaGraphDef, what the graph runs only in training
    nodes = {node.name: node for node in proto.graph_def.node}
    rewired = {tuple(key.rsplit(":", 1)): variable for key, variable in spec.get("statistics", {}).items()}
    missing = [name for name in [*spec["batch_norms"], *spec["dropouts"], *(node for node, _ in rewired)]
               if name not in nodes]
    if missing:
        raise ConvertError(f"the .meta graph has no node {', '.join(missing)} that the table names; "
                           f"recover the table from this graph again (ckpt-convert map)")
    for name, statistics in spec["batch_norms"].items():
        node = nodes[name]
        node.attr["is_training"].b = False
        for position, variable in zip((MEAN_INPUT, VARIANCE_INPUT), statistics):
            node.input[position] = _read(proto, nodes, variable)
    for (name, position), variable in rewired.items():
        nodes[name].input[int(position)] = _read(proto, nodes, variable)
    for name, source in spec["dropouts"].items():
        node = nodes[name]
        dtype = node.attr["T"].type
        node.op = "Identity"
        del node.input[:]
        node.input.append(source)
        for key in list(node.attr):
            del node.attr[key]
        node.attr["T"].type = dtype


def _read(proto, nodes, variable):
    # a float tensor of the variable's value: a read of a resource variable, an identity of a reference one
    name = variable + READ_SUFFIX
    if name not in nodes:
        if variable not in nodes:
            raise ConvertError(f"the .meta graph has no variable {variable}")
        resource = nodes[variable].op == "VarHandleOp"
        read = proto.graph_def.node.add(name=name, op="ReadVariableOp" if resource else "Identity")
        read.input.append(variable)
        read.attr["dtype" if resource else "T"].type = FLOAT
        nodes[name] = read
    return name


def run(checkpoint, table, images, *, ema=False, device="cpu"):
    """The table's end points computed by the ``.meta`` graph on ``images`` (NHWC), by TensorFlow.

    Returns ``{end point: np.ndarray}`` in TF's layout, every class of the classifier.
    """
    from converter import reference

    tf, _ = reference.import_tensorflow()
    spec = table.facts.meta_graph
    meta = meta_graph_for(checkpoint, table)
    proto = tf.compat.v1.MetaGraphDef()
    proto.ParseFromString(meta.read_bytes())
    _at_inference(tf, proto, spec)
    stored = set(tf.train.load_checkpoint(str(checkpoint)).get_variable_to_shape_map())
    with tf.Graph().as_default() as graph, tf.device(reference.tf_device(device)):
        try:
            tf.compat.v1.train.import_meta_graph(proto, clear_devices=True)
        except (ValueError, KeyError, tf.errors.OpError) as error:
            raise ConvertError(f"{meta}: TensorFlow cannot import this graph ({str(error).splitlines()[0]})") from None
        variables = {}
        for variable in tf.compat.v1.global_variables():
            name = variable.op.name
            if ema and name.endswith(EMA_SUFFIX):
                continue  # the shadow's value goes into the variable it shadows, which the network reads
            source = name + EMA_SUFFIX if ema and name + EMA_SUFFIX in stored else name
            if source in stored:
                variables[source] = variable
        config = tf.compat.v1.ConfigProto(allow_soft_placement=True)
        with tf.compat.v1.Session(graph=graph, config=config) as session:
            tf.compat.v1.train.Saver(var_list=variables).restore(session, str(checkpoint))
            feeds = {graph.get_tensor_by_name(_tensor_name(spec["input"])): images}
            for flag in spec["training_flags"]:
                feeds[graph.get_tensor_by_name(_tensor_name(flag))] = False
            fetches = {name: graph.get_tensor_by_name(_tensor_name(node)) for name, node in spec["outputs"].items()}
            return session.run(fetches, feeds)
