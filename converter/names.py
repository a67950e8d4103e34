"""The scope-name parser: a TF-Slim variable name split into the parts a mapping table talks about.

A TF-Slim variable name is a ``/``-separated path::

    [outer prefix/] model scope / [block/] [Branch_N/] layer / [BatchNorm/] parameter [/ suffixes]

    tower_0/InceptionV3/Mixed_6c/Branch_2/Conv2d_0d_7x1/BatchNorm/beta/ExponentialMovingAverage
    resnet_v1_50/block1/unit_1/bottleneck_v1/conv1/BatchNorm/gamma/Momentum
    vgg_16/fc6/weights

- **outer prefix**: scopes a training script put around the network (``tower_0``, ``model``...).
- **model scope**: the network's own scope (``InceptionV3``, ``resnet_v1_50``, ``vgg_16``...).
- **block**: every scope between the model scope and the branch or layer (``Mixed_6c``,
  ``block1/unit_1/bottleneck_v1``, ``AuxLogits``); absent for stem layers.
- **branch**: a ``Branch_N`` scope inside a block.
- **layer**: the scope that owns the parameters (``Conv2d_0d_7x1``, ``conv1``, ``fc6``). Inception-style
  layer scopes read ``<op>_<index>_<kernel>``: ``Conv2d_0d_7x1`` is op ``Conv2d``, index ``0d``, kernel
  hint ``(7, 1)``. **The kernel hint is only a hint: the tensor's shape decides.** TF-Slim's own names
  lie: InceptionV3's ``Mixed_6a/Branch_0/Conv2d_1a_1x1`` holds a 3x3 kernel.
- **parameter**: the variable under the layer: ``weights``, ``biases``, ``BatchNorm/beta``...
- **suffixes**: an EMA shadow (``/ExponentialMovingAverage``) and/or an optimizer slot (``/RMSProp``,
  ``/RMSProp_1``, ``/Momentum``, ``/Adam``, ``/Adam_1``...), in the order they appear.

Variables outside any layer (``global_step``, Adam's ``beta1_power``, a ``learning_rate`` variable) parse
with ``kind`` saying what they are and no model scope or layer.

Which component is the model scope: callers that know it (a mapping table's ``scope``) pass
``model_scopes``. Without it, leading components that match ``OUTER_PREFIX`` are outer prefixes, as long as
a model scope and a layer remain; the first other component is the model scope.
"""

import dataclasses
import re

from converter.errors import VariableNameError

SEPARATOR = "/"

# one scope component: what TensorFlow allows in a name scope
COMPONENT = re.compile(r"[A-Za-z0-9_.\-]+")
# "weights:0" names a variable's output tensor, not the variable
TENSOR_SUFFIX = re.compile(r":\d+$")
# TF2 object-based checkpoints name variables by object path, not by scope
TF2_OBJECT_PATH = re.compile(r"(^|/)(\.ATTRIBUTES|\.OPTIMIZER_SLOT)(/|$)|^_CHECKPOINTABLE_OBJECT_GRAPH$")

# scopes that training scripts put around the network
OUTER_PREFIX = re.compile(r"(?:tower|clone|replica|gpu|worker|shard)_?\d+|model|module|net|network")
BRANCH = re.compile(r"Branch_\d+")
# Inception-style layer scope: Conv2d_0d_7x1, Conv_1_0c_5x5 (op "Conv_1": "Conv" made unique by TF),
# MaxPool_3a_3x3, Conv2d_1x1 (Inception-ResNet: no index)
LAYER_SCOPE = re.compile(
    r"(?P<op>[A-Za-z][A-Za-z0-9]*?(?:_\d+)?)(?:_(?P<index>\d+[a-z]))?(?:_(?P<kernel>(?P<h>\d+)x(?P<w>\d+)))?"
)
# scopes that wrap a normalizer's parameters under a layer
NORMALIZER = re.compile(r"BatchNorm|LayerNorm|GroupNorm|InstanceNorm")
PARAMETER = re.compile(
    r"weights|biases|depthwise_weights|pointwise_weights|kernel|bias|beta|gamma|moving_mean|moving_variance"
)

EMA_SUFFIX = "ExponentialMovingAverage"
EMA = re.compile(EMA_SUFFIX)
# an optimizer's slot: the optimizer's name, then "_1", "_2"... for its second, third... slot
SLOT = re.compile(r"(?P<optimizer>RMSProp|Momentum|Adam|Adagrad|AdagradDA|ProximalAdagrad|Ftrl|Adadelta|Nadam|AdamW|LARS)(?:_\d+)?")

KIND_MODEL = "model"
# variables that belong to no layer: kind -> pattern of the last component
NON_LAYER_VARIABLES = {
    "global_step": re.compile(r"global_step"),
    "optimizer": re.compile(r"beta[12]_power(?:_\d+)?"),
    "learning_rate": re.compile(r"learning_rate(?:_\d+)?|lr"),
}

# SlimName.role values besides the non-layer kinds
ROLE_MODEL = "model"
ROLE_EMA = "ema"
ROLE_SLOT = "slot"


@dataclasses.dataclass(frozen=True)
class SlimName:
    """One variable name split into its parts; joining the parts that are not None gives ``name`` back."""

    name: str
    kind: str  # KIND_MODEL or a key of NON_LAYER_VARIABLES
    prefix: str | None  # outer prefix, "tower_0" or "model/tower_0"
    model_scope: str | None
    block: str | None  # "Mixed_6c", "block1/unit_1/bottleneck_v1"
    branch: str | None  # "Branch_2"
    layer: str | None  # "Conv2d_0d_7x1"
    parameter: str  # "weights", "BatchNorm/beta"; the variable itself for non-layer kinds ("global_step")
    suffixes: tuple = ()  # ("ExponentialMovingAverage",), ("RMSProp_1",), ...
    op: str | None = None  # "Conv2d" for Conv2d_0d_7x1; the layer itself where it has no <op>_<index> form
    index: str | None = None  # "0d"
    kernel_hint: tuple | None = None  # (7, 1): from the name only; the tensor's shape decides

    def __str__(self):
        return self.name

    @property
    def layer_path(self):
        """The layer scope relative to the model scope (``Mixed_6c/Branch_2/Conv2d_0d_7x1``); None off-layer."""
        parts = [part for part in (self.block, self.branch, self.layer) if part is not None]
        return SEPARATOR.join(parts) if parts else None

    @property
    def base_name(self):
        """The checkpoint entry this one shadows or serves: ``name`` without EMA and slot suffixes."""
        if not self.suffixes:
            return self.name
        return self.name[: -len(SEPARATOR.join(self.suffixes)) - 1]

    @property
    def local_name(self):
        """What the network itself calls the variable: ``base_name`` without the outer prefix."""
        return self.base_name[len(self.prefix) + 1 :] if self.prefix else self.base_name

    @property
    def is_ema(self):
        return EMA_SUFFIX in self.suffixes

    @property
    def slot(self):
        """The optimizer slot suffix (``RMSProp_1``), or None."""
        return next((suffix for suffix in self.suffixes if SLOT.fullmatch(suffix)), None)

    @property
    def optimizer(self):
        """The optimizer owning the slot (``RMSProp`` for ``RMSProp_1``), or None."""
        slot = self.slot
        return SLOT.fullmatch(slot).group("optimizer") if slot else None

    @property
    def normalizer(self):
        """``BatchNorm`` for ``BatchNorm/beta``; None for parameters directly under the layer."""
        head, _, _ = self.parameter.rpartition(SEPARATOR)
        return head or None

    @property
    def is_model_variable(self):
        """A layer parameter the network reads: not an EMA shadow, not a slot, not global_step."""
        return self.kind == KIND_MODEL and not self.suffixes

    @property
    def role(self):
        """``slot`` for any optimizer slot (even an EMA of one), else ``ema``, else ``model`` or the kind."""
        if self.slot:
            return ROLE_SLOT
        if self.is_ema:
            return ROLE_EMA
        return ROLE_MODEL if self.kind == KIND_MODEL else self.kind


def _fail(name, problem):
    raise VariableNameError(f"variable {name!r}: {problem}")


def _split(name):
    if not isinstance(name, str) or not name:
        _fail(name, "empty name")
    if TF2_OBJECT_PATH.search(name):
        _fail(name, "a TF2 object-based path, not a TF-Slim scope name")
    components = name.split(SEPARATOR)
    if not all(components):
        _fail(name, "empty scope component (leading, trailing or doubled '/')")
    if TENSOR_SUFFIX.search(components[-1]):
        _fail(name, "a tensor name, not a variable name: drop the ':N' output suffix")
    for component in components:
        if not COMPONENT.fullmatch(component):
            _fail(name, f"component {component!r} has characters outside [A-Za-z0-9_.-]")
    return components


def _strip_suffixes(name, components):
    suffixes = []
    while components and (EMA.fullmatch(components[-1]) or SLOT.fullmatch(components[-1])):
        suffix = components.pop()
        pattern = EMA if EMA.fullmatch(suffix) else SLOT
        if any(pattern.fullmatch(seen) for seen in suffixes):
            _fail(name, f"two {'EMA' if pattern is EMA else 'optimizer slot'} suffixes")
        suffixes.insert(0, suffix)
    if not components:
        _fail(name, "a suffix with no variable")
    return tuple(suffixes)


def _find_model_scope(name, scopes, model_scopes):
    """Index range ``(start, end)`` of the model scope within ``scopes``."""
    if model_scopes is None:
        start = 0
        # keep at least a model scope and a layer
        while len(scopes) - start > 2 and OUTER_PREFIX.fullmatch(scopes[start]):
            start += 1
        return start, start + 1
    matches = []
    for scope in model_scopes:
        wanted = scope.split(SEPARATOR)
        matches += [
            (start, -len(wanted))
            for start in range(len(scopes) - len(wanted) + 1)
            if scopes[start : start + len(wanted)] == wanted
        ]
    if not matches:
        _fail(name, f"not under the model scope {' or '.join(map(repr, model_scopes))}")
    start, negative_length = min(matches)  # leftmost, then longest
    return start, start - negative_length


def parse(name, model_scopes=None):
    """Split a TF-Slim variable name into its parts.

    Args:
        name: a variable name as a TF1 checkpoint stores it (no ``:0``).
        model_scopes: names the model scope may have (``("InceptionV3",)``; a scope may span components,
            ``"model/InceptionV3"``). The leftmost match wins; components before it are the outer prefix.
            Without it, see the module docstring.

    Returns:
        A ``SlimName``.

    Raises:
        VariableNameError: the name is empty, has an empty or invalid component, is a TF2 object path, has
            a parameter with no layer or an unknown parameter, or lies under none of ``model_scopes``.
    """
    components = _split(name)
    suffixes = _strip_suffixes(name, components)
    last = components[-1]
    for kind, pattern in NON_LAYER_VARIABLES.items():
        if pattern.fullmatch(last):
            prefix = SEPARATOR.join(components[:-1]) or None
            return SlimName(name, kind, prefix, None, None, None, None, last, suffixes)

    if not PARAMETER.fullmatch(last):
        _fail(name, f"{last!r} is not a layer parameter such as weights, biases or BatchNorm/beta")
    parameter_start = len(components) - 1
    if parameter_start > 0 and NORMALIZER.fullmatch(components[parameter_start - 1]):
        parameter_start -= 1
    scopes = components[:parameter_start]
    if model_scopes is None and len(scopes) < 2:
        _fail(name, "a parameter with no layer scope (a model scope and a layer scope must lie above it)")
    model_start, model_end = _find_model_scope(name, scopes, model_scopes)
    inner = scopes[model_end:]
    if not inner:
        _fail(name, "a parameter with no layer scope under the model scope")

    branch_at = max((i for i, scope in enumerate(inner[:-1]) if BRANCH.fullmatch(scope)), default=None)
    if branch_at is None:
        block, branch, layer = inner[:-1], None, inner[-1:]
    else:
        block, branch, layer = inner[:branch_at], inner[branch_at], inner[branch_at + 1 :]

    op, index, kernel_hint = layer[-1], None, None
    match = LAYER_SCOPE.fullmatch(layer[-1])
    if match and (match["index"] or match["kernel"]):
        op, index = match["op"], match["index"]
        kernel_hint = (int(match["h"]), int(match["w"])) if match["kernel"] else None

    def joined(parts):
        return SEPARATOR.join(parts) or None

    return SlimName(
        name=name,
        kind=KIND_MODEL,
        prefix=joined(scopes[:model_start]),
        model_scope=joined(scopes[model_start:model_end]),
        block=joined(block),
        branch=branch,
        layer=joined(layer),
        parameter=SEPARATOR.join(components[parameter_start:]),
        suffixes=suffixes,
        op=op,
        index=index,
        kernel_hint=kernel_hint,
    )


def parse_all(names, model_scopes=None):
    """Parse every name; gather every malformed one and raise once.

    Returns:
        ``{name: SlimName}`` in the order of ``names``.

    Raises:
        VariableNameError: naming how many names failed and the first few problems.
    """
    parsed, problems = {}, []
    for name in names:
        try:
            parsed[name] = parse(name, model_scopes)
        except VariableNameError as error:
            problems.append(str(error))
    if problems:
        shown = "; ".join(problems[:3]) + (f"; and {len(problems) - 3} more" if len(problems) > 3 else "")
        total = len(parsed) + len(problems)
        raise VariableNameError(f"{len(problems)} of {total} names are not TF-Slim names: {shown}")
    return parsed
