"""From the ops of an inference network to the units of a mapping table's graph.

A *layer* unit is one TF-Slim layer: a convolution, a depthwise convolution (with the 1x1 pointwise
convolution of its scope after it: ``slim.separable_conv2d``) or a matrix multiplication, then what
TF-Slim puts after it in the same scope (biases, batch norm, ReLU or ReLU6), as long as nothing else
takes the intermediate tensors; or a batch norm of its own scope (``slim.batch_norm(scope=...)``,
ResNet-v2's ``preact``) with the activation after it. Batch norm run in training mode is rewritten
to inference: it normalizes by the layer's moving statistics (``<layer>/BatchNorm/moving_mean`` and
``moving_variance``, the variables TF-Slim keeps beside ``beta``). The other units are pools, global
pooling (``Mean``), flattening (``Squeeze``, ``Reshape``), explicit padding, a scale by a constant,
concatenation and residual sums (with the activation after them). A 1x1 convolution whose output
is squeezed to ``[N, classes]`` (TF-Slim's logits) becomes a flatten followed by a fully connected layer.
"""

import dataclasses

import numpy as np

from converter.metagraph import ops
from converter.metagraph.reader import Ref

SEPARATOR = "/"
# TF-Slim's names for a layer's variables, relative to the layer's scope
KERNEL = "weights"
DEPTHWISE_KERNEL, POINTWISE_KERNEL = "depthwise_weights", "pointwise_weights"
BIASES = "biases"
BATCH_NORM = "BatchNorm"
GAMMA, BETA, MOVING_MEAN, MOVING_VARIANCE = "gamma", "beta", "moving_mean", "moving_variance"
ACTIVATIONS = ("relu", "relu6")
# what may follow each op inside one layer (a conv after a depthwise one: its pointwise convolution)
FOLLOWERS = {"conv": ("bias_add", "batch_norm", *ACTIVATIONS), "matmul": ("bias_add", *ACTIVATIONS),
             "depthwise": ("conv", "bias_add", "batch_norm", *ACTIVATIONS),
             "bias_add": ("batch_norm", *ACTIVATIONS), "batch_norm": ACTIVATIONS, "relu": (), "relu6": ()}
# ops that start a layer
LAYER_OPS = ("conv", "matmul", "depthwise", "batch_norm")
# a layer's kernel as TF stores it: a convolution's, a 1x1 convolution on a 1x1 map, a fully connected one,
# a depthwise convolution's (alone or with its pointwise kernel); a batch norm alone has none
CONV, CONV1X1, DENSE, DEPTHWISE, SEPARABLE, NORM = "conv", "conv1x1", "dense", "depthwise", "separable", "batch_norm"
FORMS = {"conv": CONV, "matmul": DENSE, "depthwise": DEPTHWISE, "batch_norm": NORM}
FLATTEN_MAP = True  # [N, 1, 1, C] -> [N, C]
FLATTEN_HWC = "hwc"  # [N, H, W, C] -> [N, H*W*C] in TensorFlow's order


@dataclasses.dataclass
class Layer:
    """One TF-Slim layer, as the graph computes it."""

    scope: str  # the full variable scope of the layer (``Net/conv1``)
    form: str  # CONV, CONV1X1, DENSE, DEPTHWISE, SEPARABLE or NORM
    weights: ops.Variable | None  # the kernel (a depthwise layer's depthwise kernel); None for a batch norm alone
    biases: ops.Variable | None = None
    norm: dict | None = None  # {gamma, beta, moving_mean, moving_variance: Variable or None, epsilon, training}
    activation: str | None = None
    pointwise: ops.Variable | None = None  # a separable layer's 1x1 kernel
    stride: int = 1
    padding: str = "SAME"
    nodes: tuple = ()  # the TF nodes it was read from
    classes: bool = False  # its output is a network output (logits): its last dimension holds the classes


@dataclasses.dataclass
class Unit:
    """A step of the graph: a layer, or graph nodes of the schema (pools, flatten...), or a join of branches."""

    output: object  # the value it computes (a Ref, or a key of its own where a rewrite adds a value)
    inputs: tuple  # the values it takes
    nodes: list = dataclasses.field(default_factory=list)  # schema nodes of a single-input unit, in order
    layer: Layer | None = None
    join: str | None = None  # "concat" or "add" for a unit of several inputs
    activation: str | None = None  # after an add


def build_units(network, problems):
    """The units of ``network`` (an ``inference.Network``), in topological order; problems are appended."""
    ops_by_ref, consumers = network.ops, network.consumers
    outputs = set(network.values)
    claimed, units = set(), []
    for ref, op in ops_by_ref.items():
        if ref in claimed or op is None:
            continue
        params = network.params.get(ref, {})
        where = f"{op.node.op} {op.node.name}"
        if op.kind in LAYER_OPS:
            chain = _chain(ref, network, outputs)
            claimed.update(chain)
            layer = _layer(chain, network, problems)
            if layer is not None:
                units.append(Unit(chain[-1], network.inputs[ref], layer=layer))
        elif op.kind == "add":
            users = consumers.get(ref, [])
            after = ops_by_ref.get(users[0]) if ref not in outputs and len(users) == 1 else None
            activation = after.kind if after is not None and after.kind in ACTIVATIONS else None
            output = users[0] if activation else ref
            claimed.add(output)
            units.append(Unit(output, network.inputs[ref], join="add", activation=activation))
        elif op.kind == "concat":
            if _axis(params.get("axis"), network.shape(ref), where, problems):
                units.append(Unit(ref, network.inputs[ref], join="concat"))
        elif op.kind in ("bias_add", *ACTIVATIONS):
            source = network.inputs[ref][0] if network.inputs[ref] else None
            what = ops_by_ref.get(source).node.op if ops_by_ref.get(source) is not None else "the input"
            problems.append(f"{where}: a {op.kind.replace('_', ' ')} after {what} is not part of a layer "
                            f"(the table applies them only within a layer, and relu after a sum)")
        else:
            nodes = _nodes(op, ref, params, network, problems)
            if nodes is not None:
                units.append(Unit(ref, network.inputs[ref], nodes))
    units = _logits_as_linear(units, consumers, outputs)
    for unit in units:
        if unit.layer is not None and unit.output in outputs:
            unit.layer.classes = True
    return units


def _variable_scope(variable):
    return variable.name.rpartition(SEPARATOR)[0] if isinstance(variable, ops.Variable) else None


def norm_scope(op, params):
    """The scope a batch norm's variables lie under (``Net/conv1/BatchNorm``, ``Net/postnorm``), or None."""
    scopes = {_variable_scope(param) for param in params.values()} - {None}
    if not scopes and op.attrs.get("unfused"):
        # no variable read (training mode, no gamma or beta): the scope tf.nn.batch_normalization ran in
        scope, found, _ = op.node.name.rpartition("/batchnorm")
        return scope if found else None
    return scopes.pop() if len(scopes) == 1 else None


def _belongs(op, params, scope):
    # an op that follows a layer's op is the layer's where its variables lie under the layer's scope
    if op.kind == "batch_norm":
        return norm_scope(op, params) == f"{scope}/{BATCH_NORM}"
    if op.kind == "conv":
        return _variable_scope(params.get("weights")) == scope and params["weights"].name.endswith(
            SEPARATOR + POINTWISE_KERNEL) and op.attrs["stride"] == 1
    return True


def _chain(ref, network, outputs):
    chain, first = [ref], network.ops[ref]
    if first.kind == "batch_norm":
        scope = None
    else:
        scope = _variable_scope(next(iter(network.params[ref].values()), None))
    while chain[-1] not in outputs:
        users = network.consumers.get(chain[-1], [])
        follower = network.ops.get(users[0]) if len(users) == 1 else None
        if follower is None or follower.kind not in FOLLOWERS[network.ops[chain[-1]].kind]:
            break
        if follower.kind == "conv" and (first.kind != "depthwise" or len(chain) != 1):
            break  # only a separable layer's pointwise convolution, right after its depthwise one
        if first.kind != "batch_norm" and not _belongs(follower, network.params[users[0]], scope):
            break
        chain.append(users[0])
    return chain


def _layer(chain, network, problems):
    first = network.ops[chain[0]]
    where = f"{first.node.op} {first.node.name}"
    form = FORMS[first.kind]
    if form == NORM:
        scope = norm_scope(first, network.params[chain[0]])
        if scope is None:
            problems.append(f"{where}: a batch norm whose variables lie under no one scope")
            return None
        layer = Layer(scope, NORM, None, nodes=tuple(ref.node for ref in chain),
                      norm=_norm(first, network.params[chain[0]], f"{scope}/", network, problems))
    else:
        leaf = DEPTHWISE_KERNEL if form == DEPTHWISE else KERNEL
        weights = network.params[chain[0]].get(leaf)
        if not isinstance(weights, ops.Variable):
            problems.append(f"{where}: its kernel is not a variable of the checkpoint")
            return None
        scope, _, name = weights.name.rpartition(SEPARATOR)
        if name != leaf or not scope:
            problems.append(f"{where}: its kernel {weights.name} is not a TF-Slim layer's `{leaf}` variable")
            return None
        layer = Layer(scope, form, weights, nodes=tuple(ref.node for ref in chain), **(
            {"stride": first.attrs["stride"], "padding": first.attrs["padding"]} if first.kind != "matmul" else {}))
    for ref in chain[1:]:
        op = network.ops[ref]
        if op.kind == "conv":
            layer.form, layer.pointwise = SEPARABLE, network.params[ref]["weights"]
            if tuple(layer.pointwise.shape or (1, 1))[:2] != (1, 1):
                problems.append(f"{op.node.op} {op.node.name}: a pointwise convolution that is not 1x1 "
                                f"({layer.pointwise.name} {list(layer.pointwise.shape)})")
        elif op.kind == "bias_add":
            layer.biases = _own(network.params[ref].get("biases"), f"{layer.scope}/{BIASES}", op, problems)
        elif op.kind == "batch_norm":
            layer.norm = _norm(op, network.params[ref], f"{layer.scope}/{BATCH_NORM}/", network, problems)
        elif op.kind in ACTIVATIONS:
            layer.activation = op.kind
    return layer


def _own(variable, expected, op, problems):
    # a layer's parameter must be the variable TF-Slim names under the layer's scope
    if not isinstance(variable, ops.Variable) or variable.name != expected:
        got = variable.name if isinstance(variable, ops.Variable) else "a constant"
        problems.append(f"{op.node.op} {op.node.name}: reads {got} where TF-Slim's layer has {expected}")
        return None
    return variable


def _norm(op, params, prefix, network, problems):
    norm = {"epsilon": op.attrs["epsilon"], "training": op.node.name if op.attrs["training"] else None,
            "statistics": op.attrs.get("statistics") if op.attrs["training"] else None}
    elsewhere = sorted({param.name.rpartition(SEPARATOR)[0] for param in params.values()
                        if isinstance(param, ops.Variable) and not param.name.startswith(prefix)})
    if elsewhere:
        problems.append(f"{op.node.op} {op.node.name}: reads variables of {', '.join(elsewhere)}, where TF-Slim's "
                        f"batch norm keeps them under {prefix.rstrip(SEPARATOR)}")
        return None
    for role, fill in ((GAMMA, 1.0), (BETA, 0.0)):
        param = params.get(role)
        if param is None and op.attrs.get("unfused"):
            norm[role] = None  # tf.nn.batch_normalization without scale (or offset): none of it in the graph
        elif isinstance(param, ops.Constant):
            # scale=False / center=False: TF-Slim passes ones (zeros) for the parameter it does not train
            if param.value is None or not np.all(param.value == fill):
                problems.append(f"{op.node.op} {op.node.name}: its {role} is a constant other than {fill:g}")
            norm[role] = None
        else:
            norm[role] = _own(param, prefix + role, op, problems)
    variables = network.graph.variables
    for role in (MOVING_MEAN, MOVING_VARIANCE):
        expected = prefix + role
        if op.attrs["training"]:
            # training mode normalizes by the batch; inference uses the layer's moving statistics
            if expected not in variables:
                problems.append(f"{op.node.op} {op.node.name}: batch norm in training mode, and the graph has no "
                                f"{expected} to run it at inference")
            norm[role] = ops.Variable(expected, None)
        else:
            norm[role] = _own(params.get(role), expected, op, problems)
    return norm


def _constant(param, where, what, problems):
    if not isinstance(param, ops.Constant) or param.value is None:
        problems.append(f"{where}: its {what} is not a constant")
        return None
    return np.asarray(param.value)


def _axis(param, shape, where, problems):
    axis = _constant(param, where, "axis", problems)
    if axis is None:
        return False
    rank = len(shape) if shape is not None else ops.NHWC_RANK
    if int(axis) % rank != rank - 1:
        problems.append(f"{where}: joins on axis {int(axis)}, not on channels (the last axis)")
        return False
    return True


def _nodes(op, ref, params, network, problems):
    # the schema nodes of a single-input op; None (and a problem) where the schema cannot express it
    where = f"{op.node.op} {op.node.name}"
    source = network.inputs[ref][0]
    if op.kind in ("max_pool", "avg_pool"):
        node = {op.kind: op.attrs["kernel"]}
        if op.attrs["stride"] != 1:
            node["stride"] = op.attrs["stride"]
        if op.attrs["padding"] != "SAME":
            node["padding"] = op.attrs["padding"]
        return [node]
    if op.kind == "mean":
        axes = _constant(params.get("axes"), where, "axes", problems)
        if axes is None:
            return None
        if sorted(int(a) % ops.NHWC_RANK for a in np.ravel(axes)) != list(ops.SPATIAL_AXES):
            problems.append(f"{where}: a mean over axes {np.ravel(axes).tolist()} (global pooling is over 1 and 2)")
            return None
        return [{"avg_pool": "global"}] + ([] if op.attrs["keep_dims"] else [{"flatten": FLATTEN_MAP}])
    if op.kind == "squeeze":
        shape = network.shape(source)
        axes = op.attrs["axes"] or [axis for axis, size in enumerate(shape or ()) if size == 1]
        if sorted(a % ops.NHWC_RANK for a in axes) != list(ops.SPATIAL_AXES):
            problems.append(f"{where}: squeezes axes {op.attrs['axes']} (only [1, 2] of a 1x1 map flattens)")
            return None
        return [{"flatten": FLATTEN_MAP}]
    if op.kind == "reshape":
        return _reshape(op, network.shape(source), network.shape(ref), where, problems)
    if op.kind == "pad":
        return _pad(op, params, where, problems)
    if op.kind == "scale":
        factor = _constant(params.get("factor"), where, "factor", problems)
        if factor is None:
            return None
        if np.size(factor) != 1:
            problems.append(f"{where}: multiplies by a constant of shape {list(np.shape(factor))} (only a scalar "
                            f"factor is supported)")
            return None
        return [{"scale": float(str(np.float32(np.ravel(factor)[0])))}]
    problems.append(f"{where}: not supported here")
    return None


def _reshape(op, before, after, where, problems):
    if before is None or after is None or len(before) != ops.NHWC_RANK or len(after) != 2 \
            or None in before[1:] or after[1] != int(np.prod(before[1:])):
        problems.append(f"{where}: a reshape from {list(before or [])} to {list(after or [])} is not a flatten "
                        f"of a map (the graph records no shapes that say so)")
        return None
    return [{"flatten": FLATTEN_MAP if before[1:3] == (1, 1) else FLATTEN_HWC}]


def _pad(op, params, where, problems):
    amounts = _constant(params.get("paddings"), where, "paddings", problems)
    if amounts is None:
        return None
    if "constant" in params:
        value = _constant(params.get("constant"), where, "padding value", problems)
        if value is None or np.any(value != 0):
            problems.append(f"{where}: pads with a value other than 0")
            return None
    amounts = np.asarray(amounts).astype(int).tolist()
    if np.shape(amounts) != (4, 2) or amounts[0] != [0, 0] or amounts[3] != [0, 0] or min(map(min, amounts)) < 0:
        problems.append(f"{where}: pads {amounts} (the schema pads height and width only)")
        return None
    return [{"pad": [amounts[1], amounts[2]]}]


def _logits_as_linear(units, consumers, outputs):
    # conv 1x1 -> flatten of its 1x1 map is flatten -> fully connected: TF-Slim's logits as a classifier
    producers = {unit.output: unit for unit in units}
    rewritten, absorbed = [], set()
    for unit in units:
        if id(unit) in absorbed:
            continue
        layer = unit.layer
        users = consumers.get(unit.output, [])
        follower = producers.get(users[0]) if len(users) == 1 else None
        if (layer is None or layer.form != CONV or layer.norm is not None or layer.stride != 1
                or tuple(layer.weights.shape or ())[:2] != (1, 1) or unit.output in outputs
                or follower is None or follower.nodes != [{"flatten": FLATTEN_MAP}]):
            rewritten.append(unit)
            continue
        flat = Ref(f"{unit.output.node}/flattened")
        layer.form, layer.padding = CONV1X1, "SAME"
        rewritten += [Unit(flat, unit.inputs, [{"flatten": FLATTEN_MAP}]), Unit(follower.output, (flat,), layer=layer)]
        absorbed.add(id(follower))
    return rewritten
