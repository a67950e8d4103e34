"""The inference network inside a training graph: what runs between the input and the outputs.

A TF1 training graph holds the forward pass as training ran it: ``tf.cond`` on an ``is_training``
placeholder (``Switch``/``Merge``), dropout, identities, variable reads. This module walks back
from the outputs to the input, as TensorFlow would run the graph with every ``is_training``
placeholder fed False:

- identities and variable reads are looked through;
- a ``Switch`` passes its input on the port its predicate selects (a boolean placeholder is fed
  False; a boolean constant is what it is), and a ``Merge`` takes the input of the branch that runs;
- dropout (a mask drawn from a random op, multiplied or selected in, with its ``1 / keep_prob``
  scaling) is the identity;
- batch norm as arithmetic (``tf.nn.batch_normalization``, which TF-Slim's ``batch_norm(fused=False)``
  writes: ``x * inv + (beta - mean * inv)`` with ``inv = rsqrt(variance + epsilon) * gamma``) is one
  batch norm; where its mean and variance are the batch's (training mode), it runs at inference with
  the layer's moving statistics.

Every other node on the way becomes an ``ops.Op``; nodes that cannot be read are gathered as
problems, so one error names them all.
"""

import dataclasses

from converter.metagraph import ops
from converter.metagraph.reader import VARIABLE_OPS, Ref

PASS_THROUGH = ("Identity", "StopGradient", "PreventGradient", "Snapshot", "CheckNumerics", "EnsureShape")
VARIABLE_READS = ("ReadVariableOp",)
SWITCHES = ("Switch", "RefSwitch")
MERGES = ("Merge", "RefMerge")
VARIABLES = VARIABLE_OPS
CONSTANTS = ("Const",)
PLACEHOLDERS = ("Placeholder", "PlaceholderWithDefault")
FLOAT_INPUTS = ("float32", "float16", "float64")
# ops that only describe a tensor's shape: a dropout mask's randomness is searched above them, not past them
SHAPE_OPS = ("Shape", "ShapeN", "Size", "Rank")
# what a dropout multiplies its input by (or divides it by) to keep its expectation: 1 / keep_prob
DROPOUT_SCALES = {"Mul": (0, 1), "RealDiv": (0,), "Div": (0,), "Truediv": (0,)}
DROPOUT_SELECTS = ("SelectV2", "Select")
# what the walks above a dropout mask or a cond branch may visit before giving up
MASK_SEARCH_LIMIT = 64
BRANCH_SEARCH_LIMIT = 4096
# the ops whose logits input names the network's output, when the graph has no Softmax
LOSS_OPS = ("SoftmaxCrossEntropyWithLogits", "SparseSoftmaxCrossEntropyWithLogits")
GRADIENT_SCOPES = ("gradients",)
# ops that start a layer: a head begins where one reads a kernel the outputs do not
KERNEL_OPS = ("Conv2D", "MatMul")
# a head ends before these: what a loss or a Softmax does to logits
TERMINAL_OPS = ("Reshape",)
# tf.nn.batch_normalization's arithmetic: the sum that ends it, its products, the shift, the inverse deviation
SUMS = ("Add", "AddV2")
PRODUCT, SHIFT, NEGATED_SHIFT, INVERSE = "Mul", "Sub", "Neg", "Rsqrt"
INPUT_HINT = "pass --input with the tensor the network starts from (`ckpt-convert map --input NODE`)"
OUTPUT_HINT = "choose them with `ckpt-convert map --outputs NODE,...`"


@dataclasses.dataclass
class Network:
    """The inference network found in a graph."""

    graph: object  # reader.MetaGraph
    input: Ref
    outputs: list  # the outputs as named (Refs), which TensorFlow runs
    values: list  # each output's value in the network, after looking through pass-through ops
    ops: dict  # output Ref -> ops.Op (None where it cannot be read), in topological order (inputs first)
    inputs: dict  # output Ref -> its data inputs, resolved
    params: dict  # output Ref -> {role: ops.Variable | ops.Constant}
    flags: list  # boolean placeholders fed False at inference
    dropouts: dict  # dropout node -> the tensor it passes on at inference
    problems: list

    def shape(self, ref):
        """The recorded shape of tensor ``ref`` (a tuple with None for unknown sizes), or None."""
        return _shape(self.graph, ref)

    @property
    def consumers(self):
        """``{ref: [refs of the ops that take it]}`` within the network."""
        found = {}
        for ref, inputs in self.inputs.items():
            for source in inputs:
                found.setdefault(source, []).append(ref)
        return found


def _shape(graph, ref):
    shapes = graph.nodes[ref.node].output_shapes() if ref.node in graph.nodes else None
    if not shapes or ref.port >= len(shapes) or shapes[ref.port].dims is None:
        return None
    return shapes[ref.port].dims


def find_network(graph, input_ref=None, output_refs=None):
    """Walk ``graph`` back from its outputs to its input; returns a ``Network`` (problems listed in it).

    ``input_ref`` and ``output_refs`` (``Ref``s) default to the one float placeholder the outputs
    depend on and to the logits: what the graph's Softmax (or, without one, its cross-entropy loss)
    takes, then the logits of other losses, then the last tensor of every other head (a layer whose
    kernel the outputs do not read, followed forward to where the network's ops end).
    """
    walker = _Walker(graph, input_ref)
    if output_refs:
        outputs = []
        for ref in output_refs:
            if ref.node not in graph.nodes:
                walker.problems.append(f"--outputs: no node named {ref.node} in the graph")
            else:
                outputs.append(ref)
    else:
        outputs = walker.default_outputs()
    values = [walker.resolve(ref) for ref in outputs]
    for value in values:
        walker.visit(value)
    tried = set()
    while not output_refs and outputs and not walker.problems:
        # a head no Softmax or loss takes (InceptionV3's auxiliary logits in a graph built for inference);
        # one that does not come from the same input is another network's, and is left alone
        head = walker.other_head(values + list(tried))
        if head is None:
            break
        tried.add(walker.resolve(head))
        saved = walker.snapshot()
        walker.visit(walker.resolve(head))
        if walker.problems or walker.input != saved["input"]:
            walker.restore(saved)
            continue
        outputs.append(head)
        values.append(walker.resolve(head))
    if walker.input is None and not walker.problems:
        walker.problems.append(f"the outputs depend on no float placeholder; {INPUT_HINT}")
    return Network(graph, walker.input, outputs, values, walker.ops, walker.inputs, walker.params,
                   sorted(walker.flags), walker.dropouts, list(dict.fromkeys(walker.problems)))


class _Walker:
    def __init__(self, graph, input_ref):
        self.graph = graph
        self.input = input_ref
        self.problems = []
        self.flags = set()
        self.dropouts = {}
        self.ops, self.inputs, self.params = {}, {}, {}
        self._open = {}  # refs being walked above: ref -> op

    def snapshot(self):
        """What the walk has found so far, to restore where a further walk fails."""
        return {"input": self.input, "problems": list(self.problems), "flags": set(self.flags),
                "dropouts": dict(self.dropouts), "ops": dict(self.ops), "inputs": dict(self.inputs),
                "params": dict(self.params)}

    def restore(self, saved):
        self.input, self.problems, self.flags = saved["input"], saved["problems"], saved["flags"]
        self.dropouts, self.ops, self.inputs, self.params = saved["dropouts"], saved["ops"], saved["inputs"], \
            saved["params"]
        self._open = {}

    def _problem(self, node, message):
        self.problems.append(f"{node.op} {node.name}: {message}")

    # ------------------------------------------------------------------ outputs

    def default_outputs(self):
        # the logits the Softmax takes first, then any other logits a loss takes (an auxiliary head)
        softmax, losses = self._logits_of(("Softmax",)), self._logits_of(LOSS_OPS)
        if len(softmax) > 1:
            listed = ", ".join(str(ref) for ref in softmax)
            self.problems.append(f"several Softmax ops take different logits ({listed}); {OUTPUT_HINT}")
        found = softmax[:1] or losses[:1]
        if not found:
            self.problems.append(f"the graph has no Softmax and no softmax cross-entropy to find the logits by; "
                                 f"{OUTPUT_HINT}")
            return []
        values = {self.resolve(found[0])}
        for ref in losses:
            value = self.resolve(ref)
            if value not in values:
                values.add(value)
                found.append(ref)
        return found

    def other_head(self, values):
        """The end of a head the outputs do not reach: from a layer whose kernel no op read so far, forward
        through the network's ops to a tensor nothing else of the network takes; None when there is none."""
        read = {param.name for params in self.params.values() for param in params.values()
                if isinstance(param, ops.Variable)}
        for node in self.graph.nodes.values():
            if node.op not in KERNEL_OPS or _in_gradients(node.name) or len(node.data_inputs) < 2:
                continue
            kernel = self._source(node.data_inputs[1])
            if kernel is None or kernel.op not in VARIABLES or kernel.name in read:
                continue
            ref = Ref(node.name)
            while True:
                forward = [user for user, _ in self.graph.consumers.get(ref.node, [])
                           if not _in_gradients(user.name) and (user.op in ops.READERS or user.op in PASS_THROUGH)
                           and user.op not in TERMINAL_OPS]
                if not forward:
                    break
                ref = Ref(forward[0].name)
            if self.resolve(ref) not in values:
                return ref
        return None

    def _logits_of(self, op_types):
        found = []
        for node in self.graph.nodes.values():
            if node.op not in op_types or _in_gradients(node.name) or not node.data_inputs:
                continue
            ref = node.data_inputs[0]
            # slim.softmax reshapes the logits to [N, classes] (a no-op on logits) before the Softmax
            while ref.node in self.graph.nodes and self.graph.nodes[ref.node].op in PASS_THROUGH + ("Reshape",):
                source = self.graph.nodes[ref.node]
                if source.op == "Reshape" and len(_shape(self.graph, source.data_inputs[0]) or ()) != 2:
                    break
                ref = source.data_inputs[0]
            if ref not in found:
                found.append(ref)
        return found

    # ------------------------------------------------------------------ pass-through ops

    def resolve(self, ref):
        """The tensor ``ref`` is at inference once identities, conds and dropout are looked through."""
        for _ in range(len(self.graph.nodes) + 1):
            if ref == self.input or ref.node not in self.graph.nodes:
                return ref
            node = self.graph.nodes[ref.node]
            if node.op in PASS_THROUGH and node.data_inputs:
                ref = node.data_inputs[0]
            elif node.op in SWITCHES:
                live = self._switch_port(node)
                if live is None:
                    return ref
                if ref.port != live:
                    self._problem(node, f"the network takes output {ref.port} of this tf.cond Switch, which does "
                                        f"not run at inference")
                    return ref
                ref = node.data_inputs[0]
            elif node.op in MERGES:
                chosen = self._live_input(node)
                if chosen is None:
                    return ref
                ref = chosen
            else:
                passed = self._dropout(node)
                if passed is None:
                    return ref
                self.dropouts[node.name] = str(passed)
                ref = passed
        raise AssertionError("pass-through ops form a cycle")

    def _predicate(self, node):
        # the value a Switch's predicate has at inference: False for a boolean placeholder, a constant's value
        ref = node.data_inputs[1] if len(node.data_inputs) > 1 else None
        while ref is not None and ref.node in self.graph.nodes and self.graph.nodes[ref.node].op in PASS_THROUGH:
            ref = self.graph.nodes[ref.node].data_inputs[0]
        source = self.graph.nodes.get(ref.node) if ref is not None else None
        if source is not None and source.op in PLACEHOLDERS and source.attr("dtype") == "bool":
            self.flags.add(source.name)
            return False
        if source is not None and source.op in CONSTANTS:
            value = source.attr("value")
            if value is not None and value.value is not None and value.value.size == 1:
                return bool(value.value.reshape(()))
        self._problem(node, f"its tf.cond predicate {ref} is neither a boolean placeholder (is_training) nor a "
                            f"constant, so the branch that runs at inference is unknown")
        return None

    def _switch_port(self, node):
        value = self._predicate(node)
        return None if value is None else int(value)

    def _live_input(self, node):
        verdicts = [self._branch_runs(ref) for ref in node.data_inputs]
        live = [ref for ref, runs in zip(node.data_inputs, verdicts) if runs]
        if len(live) == 1:
            return live[0]
        self._problem(node, "cannot tell which input of this tf.cond Merge runs at inference")
        return None

    def _branch_runs(self, ref):
        # walk up a cond branch to the Switches it starts from: it runs where each passes on its live port
        stack, seen, verdict = [ref], set(), None
        while stack:
            current = stack.pop()
            node = self.graph.nodes.get(current.node)
            if node is None:
                continue
            if node.op in SWITCHES:
                live = self._switch_port(node)
                if live is None or current.port != live:
                    return False
                verdict = True
                continue
            if node.name in seen:
                continue
            seen.add(node.name)
            if len(seen) > BRANCH_SEARCH_LIMIT:
                return None
            stack += list(node.data_inputs) + [Ref(name) for name in node.control_inputs]
        return verdict

    def _dropout(self, node):
        # dropout at inference is its input: TF 2's select(mask, x * scale, 0), TF 1's (x / keep_prob) * mask
        inputs = node.data_inputs
        if node.op in DROPOUT_SELECTS and len(inputs) == 3 and self._mask(inputs[0]):
            kept = inputs[1] if not self._constant(inputs[1]) else inputs[2]
            return self._unscaled(kept, node)
        if node.op == "Mul" and len(inputs) == 2:
            for mask, kept in ((inputs[1], inputs[0]), (inputs[0], inputs[1])):
                if self._mask(mask):
                    return self._unscaled(kept, node)
        return None

    def _mask(self, ref):
        # a dropout mask: drawn from a random op, and computed from no data (only the data's shape)
        stack, seen, random = [ref], set(), False
        while stack:
            node = self.graph.nodes.get(stack.pop().node)
            if node is None or node.name in seen or node.op in SHAPE_OPS + CONSTANTS + VARIABLES:
                continue
            seen.add(node.name)
            if len(seen) > MASK_SEARCH_LIMIT or Ref(node.name) == self.input:
                return False
            if node.op in PLACEHOLDERS:
                shape = node.attr("shape")
                if getattr(shape, "dims", None) != ():
                    return False  # data, not a keep_prob
                continue
            random = random or "Random" in node.op or node.op == "TruncatedNormal"
            stack += list(node.data_inputs)
        return random

    def _constant(self, ref):
        node = self.graph.nodes.get(ref.node)
        return node is not None and node.op in CONSTANTS

    def _unscaled(self, ref, dropout):
        # the 1 / keep_prob scaling belongs to the dropout when nothing else takes the scaled tensor
        node = self.graph.nodes.get(ref.node)
        if node is None or node.op not in DROPOUT_SCALES:
            return ref
        # (the backward pass of a training graph takes it too: gradients are not inference)
        users = [user for user, _ in self.graph.consumers.get(node.name, [])
                 if user.op not in SHAPE_OPS and not _in_gradients(user.name)]
        if any(user is not dropout for user in users):
            return ref
        inputs = node.data_inputs
        for position in DROPOUT_SCALES[node.op]:
            other = inputs[1 - position]
            if self._scalar(other):
                return inputs[position]
        return ref

    def _scalar(self, ref):
        shape = _shape(self.graph, ref)
        node = self.graph.nodes.get(ref.node)
        return shape == () or (node is not None and node.op in CONSTANTS and node.attr("value") is not None
                               and len(node.attr("value").shape) == 0)

    # ------------------------------------------------------------------ the walk

    def visit(self, start):
        """Collect every op between ``start`` and the input, inputs before the ops that take them."""
        stack = [(start, False)]
        while stack:
            ref, done = stack.pop()
            if done:
                self.ops[ref] = self._open.pop(ref)
                continue
            if ref == self.input or ref in self.ops or ref in self._open:
                continue
            read = self._read(ref)
            if read is None:
                continue
            self._open[ref], self.inputs[ref] = read
            stack.append((ref, True))
            stack += [(source, False) for source in reversed(self.inputs[ref])]

    def _read(self, ref):
        # (op or None where it cannot be read, its resolved data inputs); None for the input and unknown nodes
        node = self.graph.nodes.get(ref.node)
        if node is None:
            self.problems.append(f"the graph takes {ref}, but has no node {ref.node}")
            return None
        if node.op in PLACEHOLDERS:
            self._placeholder(node, ref)
            return None
        try:
            op = self._unfused_batch_norm(node) or ops.read_op(node, lambda r: _shape(self.graph, r), self._constant_of)
        except ops.OpProblem as problem:
            self._problem(node, str(problem))
            # carry on above it, so that one error names every op that stands in the way
            return None, tuple(self.resolve(r) for r in node.data_inputs if not self._parameter(r))
        if ref.port != 0:
            self._problem(node, f"the network takes its output {ref.port}, which is not the computed map")
        self.params[ref] = {role: self.parameter(r, node, role) for role, r in op.params.items()}
        return op, tuple(self.resolve(r) for r in op.inputs)

    def _constant_of(self, ref):
        source = self._source(ref)
        return source is not None and source.op in CONSTANTS

    def _node(self, ref):
        return self.graph.nodes.get(ref.node) if ref.port == 0 else None

    def _unfused_batch_norm(self, node):
        # y = x * inv + (beta - mean * inv), inv = rsqrt(variance + epsilon) [* gamma]: one batch norm op
        if node.op not in SUMS or len(node.data_inputs) != 2:
            return None
        for product, shift in (node.data_inputs, node.data_inputs[::-1]):
            scaled = self._node(product)
            if scaled is None or scaled.op != PRODUCT or len(scaled.data_inputs) != 2:
                continue
            for data, inverse in (scaled.data_inputs, scaled.data_inputs[::-1]):
                deviation, centre = self._inverse(inverse), self._shift(shift, inverse)
                if deviation is not None and centre is not None:
                    return self._norm_op(node, data, deviation, centre)
        return None

    def _inverse(self, ref):
        # inv = rsqrt(variance + epsilon) [* gamma] -> (variance, epsilon, gamma or None, the sum's node)
        node, gamma = self._node(ref), None
        if node is not None and node.op == PRODUCT and len(node.data_inputs) == 2:
            for root, scale in (node.data_inputs, node.data_inputs[::-1]):
                if self._source(scale) is not None and getattr(self._node(root), "op", None) == INVERSE:
                    node, gamma = self._node(root), scale
                    break
        if node is None or node.op != INVERSE or len(node.data_inputs) != 1:
            return None
        total = self._node(node.data_inputs[0])
        if total is None or total.op not in SUMS or len(total.data_inputs) != 2:
            return None
        for position, (variance, epsilon) in enumerate((total.data_inputs, total.data_inputs[::-1])):
            value = self._scalar_value(epsilon)
            if value is not None:
                return variance, value, gamma, (total.name, position)
        return None

    def _shift(self, ref, inverse):
        # beta - mean * inv, or -(mean * inv) without beta -> (beta or None, mean, where the mean enters)
        node = self._node(ref)
        if node is None or node.op not in (SHIFT, NEGATED_SHIFT):
            return None
        beta, product = (node.data_inputs[0], node.data_inputs[1]) if node.op == SHIFT else (None, node.data_inputs[0])
        if beta is not None and self._source(beta) is None:
            return None
        scaled = self._node(product)
        if scaled is None or scaled.op != PRODUCT or inverse not in scaled.data_inputs:
            return None
        position = 1 - scaled.data_inputs.index(inverse)
        return beta, scaled.data_inputs[position], (scaled.name, position)

    def _scalar_value(self, ref):
        source = self._source(ref)
        tensor = source.attr("value") if source is not None and source.op in CONSTANTS else None
        if tensor is None or tensor.value is None or tensor.value.size != 1:
            return None
        return float(tensor.value.reshape(()))

    def _norm_op(self, node, data, deviation, centre):
        variance, epsilon, gamma, variance_input = deviation
        beta, mean, mean_input = centre
        statistics = {"moving_mean": mean, "moving_variance": variance}
        # in training mode the mean and variance are the batch's (tf.nn.moments of the map), not variables
        training = any(self._source(ref) is None or self._source(ref).op not in VARIABLES
                       for ref in statistics.values())
        params = {role: ref for role, ref in (("gamma", gamma), ("beta", beta)) if ref is not None}
        if not training:
            params.update(statistics)
        return ops.Op("batch_norm", node, (data,), params, {
            "epsilon": epsilon, "training": training, "unfused": True,
            "statistics": {"moving_mean": mean_input, "moving_variance": variance_input}})

    def _placeholder(self, node, ref):
        if self.input is None and node.attr("dtype") in FLOAT_INPUTS:
            self.input = ref
            return
        what = "another placeholder" if node.attr("dtype") in FLOAT_INPUTS else f"a {node.attr('dtype')} placeholder"
        self.problems.append(f"{node.op} {node.name}: the network also depends on {what} besides the input "
                             f"{self.input}; {INPUT_HINT}")

    def _parameter(self, ref):
        return self._source(ref) is not None

    def _source(self, ref):
        # the variable or constant a parameter input reads, through reads, identities and cond switches
        for _ in range(len(self.graph.nodes) + 1):
            node = self.graph.nodes.get(ref.node)
            if node is None:
                return None
            if node.op in VARIABLES or node.op in CONSTANTS:
                return node
            if node.op in PASS_THROUGH + VARIABLE_READS + SWITCHES and node.data_inputs:
                ref = node.data_inputs[0]
            elif node.op in MERGES:
                chosen = self._live_input(node)
                if chosen is None:
                    return None
                ref = chosen
            else:
                return None
        return None

    def parameter(self, ref, node, role):
        """The variable or constant that ``node``'s ``role`` input reads; None (and a problem) otherwise."""
        source = self._source(ref)
        if source is None:
            producer = self.graph.nodes.get(ref.node)
            what = f"{producer.op} {producer.name}" if producer else str(ref)
            self._problem(node, f"its {role} comes from {what}, which is neither a variable nor a constant")
            return None
        if source.op in CONSTANTS:
            tensor = source.attr("value")
            return ops.Constant(source.name, None if tensor is None else tensor.value)
        shape = source.attr("shape")
        return ops.Variable(source.name, getattr(shape, "dims", None))


def _in_gradients(name):
    return any(part in GRADIENT_SCOPES or part.startswith(GRADIENT_SCOPES[0] + "_") for part in name.split("/"))

