"""Generate the mapping tables of TF-Slim's ResNets from one description of the family; migrate tables.

A ResNet (``tf_slim.nets.resnet_v1``, ``resnet_v2``) is a stem, four blocks of bottleneck units that
repeat one template, and a classifier; only the number of units per block tells ResNet-50 from
ResNet-200. Written by hand, the 200-layer tables would be a thousand rows to get wrong, so they are
generated from the data below and committed, and the test suite fails where a committed table differs
from what this module generates. The data below spells out each table in the expanded form (schema 1:
every kind, name and order written out); the file written is its schema 2 form
(``converter.table_schema.compact``: kinds from ``kinds.yaml``, derived names and order left out):

    python -m converter.mappings.generate            # rewrite every generated table
    python -m converter.mappings.generate --check    # name the tables that differ; exit 1 if any
    python -m converter.mappings.generate --migrate my.yaml -o my_v2.yaml   # a schema 1 table in schema 2

Edit this module, not the tables it writes.
"""

import argparse
import pathlib
import sys

import yaml

HERE = pathlib.Path(__file__).resolve().parent
# units per block of tf-slim's resnet_v1_<depth> and resnet_v2_<depth> (resnet_v1.py, resnet_v2.py)
UNITS = {50: (3, 4, 6, 3), 101: (3, 4, 23, 3), 152: (3, 8, 36, 3), 200: (3, 24, 36, 3)}
# each block strides its last unit (resnet_v1_block, resnet_v2_block); block4 does not stride
STRIDES = (2, 2, 2, 1)
# torchvision's ResNets have resnet_v1's keys and shapes (another network: see the tables' targets)
TORCHVISION = {50: "resnet50", 101: "resnet101", 152: "resnet152"}
# keras.applications' ResNetV2 models, whose weights were ported from slim's resnet_v2 checkpoints
KERAS = {50: "ResNet50V2", 101: "ResNet101V2", 152: "ResNet152V2"}
# slim's model zoo released these (resnet_v1: converted from the original models; resnet_v2: 2017-04-14)
RELEASED = (50, 101, 152)
END_POINTS = ("block1", "block3", "block4", "Logits")
# the keras layers of a resnet_v2 unit, in model.layers order (Keras's topological order); 0_conv is
# the projection shortcut of a block's first unit
KERAS_UNIT_ORDER = ("preact_bn", "1_conv", "1_bn", "2_conv", "2_bn", "0_conv", "3_conv")
ORDER_WIDTH = 110  # wrap targets.keras.order's flow list at this column


def _unit(version):
    return f"bottleneck_v{version}"


def _units(depth):
    """``(block, unit, projection, stride)`` for every unit, in network order (block and unit from 1)."""
    for block, (count, stride) in enumerate(zip(UNITS[depth], STRIDES), start=1):
        for unit in range(1, count + 1):
            # the first unit of a block changes the channel count, so its shortcut is a 1x1 projection
            yield block, unit, unit == 1, stride if unit == count else 1


def _detect(version, depth):
    # the last unit of every block, and the unit after it: a deeper ResNet holds every variable of a shallower one
    name = _unit(version)
    present = [f"block{b}/unit_{n}/{name}/conv3/weights" for b, n in enumerate(UNITS[depth], start=1)]
    absent = [f"block{b}/unit_{n + 1}/{name}/conv3/weights" for b, n in enumerate(UNITS[depth], start=1)]
    return ("detect:\n" + "".join(f"  - {v}\n" for v in present + ["logits/biases"])
            + "detect_absent:\n" + "".join(f"  - {v}\n" for v in absent))


def _reference(version, depth):
    scope = f"resnet_v{version}_{depth}"
    points = [f"{p}: {scope}/{p.lower() if p == 'Logits' else p}" for p in END_POINTS]
    return f"""\
  reference:
    module: tf_slim.nets.resnet_v{version}
    network: {scope}
    arg_scope: resnet_arg_scope
    classifier: logits             # its biases give the checkpoint's class count
    end_points: {{{", ".join(points[:-1])},
                 {points[-1]}}}
    squeeze: [Logits]              # tf-slim's resnets return their logits as [N, 1, 1, classes]
"""


def _wrap(items, indent, width=ORDER_WIDTH):
    # a YAML flow list broken into lines of at most ``width`` columns
    lines, line = [], "["
    for i, item in enumerate(items):
        piece = item + ("]" if i == len(items) - 1 else ",")
        if len(line) + len(piece) + 1 + indent > width and line != "[":
            lines.append(line)
            line = " " + piece
        else:
            line += ("" if line == "[" else " ") + piece
    lines.append(line)
    return ("\n" + " " * indent).join(lines)


def _flow(value):
    # a YAML flow value: a name, or a mapping (of role to name) in one line
    if isinstance(value, dict):
        return "{" + ", ".join(f"{key}: {_flow(item)}" for key, item in value.items()) + "}"
    return value


def _row(kind, torch, onnx, keras=None):
    # one row of `layers`: its kind and its name per target; keras only where the table has that target
    return _flow({"kind": kind, "torch": torch, "onnx": onnx, **({"keras": keras} if keras else {})})


def _rows(rows):
    # the layers section: one flow mapping per layer, keys aligned
    width = max(len(layer) for layer, _ in rows) + 2
    return "layers:\n" + "".join(f"  {(layer + ':').ljust(width)} {row}\n" for layer, row in rows)


def _residual_branch(version, block_unit, stride, preact):
    # conv1 -> conv2 (resnet_utils.conv2d_same: with a stride, an explicit pad then VALID) -> conv3
    prefix = f"{block_unit}/{_unit(version)}"
    nodes = [f"{{layer: {prefix}/preact}}"] if preact else []
    nodes.append(f"{{layer: {prefix}/conv1}}")
    if stride > 1:
        nodes += ["{pad: [[1, 1], [1, 1]]}", f"{{layer: {prefix}/conv2, stride: {stride}, padding: VALID}}"]
    else:
        nodes.append(f"{{layer: {prefix}/conv2}}")
    nodes.append(f"{{layer: {prefix}/conv3}}")
    return "[" + ", ".join(nodes) + "]"


def _shortcut(version, block_unit, projection, stride):
    if projection:
        options = f", stride: {stride}" if stride > 1 else ""
        return f"[{{layer: {block_unit}/{_unit(version)}/shortcut{options}}}]"
    # resnet_utils.subsample: the input itself, or a 1x1 max pool with the stride
    return f"[{{max_pool: [1, 1], stride: {stride}}}]" if stride > 1 else "[]"


def _kind_of_shortcut(projection, stride):
    return "projection shortcut" if projection else ("subsampled shortcut" if stride > 1 else "identity shortcut")


CONV_BN_PARAMS = """\
    params:
      weights: [kh, kw, in, out]
      BatchNorm/gamma: [out]
      BatchNorm/beta: [out]
      BatchNorm/moving_mean: [out]
      BatchNorm/moving_variance: [out]
    torch:
      conv.weight: {from: weights, transform: hwio_to_oihw}      # [kh, kw, in, out] -> [out, in, kh, kw]
      bn.weight: {from: BatchNorm/gamma}
      bn.bias: {from: BatchNorm/beta}
      bn.running_mean: {from: BatchNorm/moving_mean}
      bn.running_var: {from: BatchNorm/moving_variance}
      bn.num_batches_tracked: {fill: 0, shape: [], dtype: int64}
"""
KERAS_CONV_BN = """\
    keras:
      conv2d/kernel: {from: weights}                             # [kh, kw, in, out] both sides
      batch_normalization/gamma: {from: BatchNorm/gamma}
      batch_normalization/beta: {from: BatchNorm/beta}
      batch_normalization/moving_mean: {from: BatchNorm/moving_mean}
      batch_normalization/moving_variance: {from: BatchNorm/moving_variance}
"""
ONNX_CONV_BN = """\
    onnx:
      weights: {from: weights, transform: hwio_to_oihw}          # [kh, kw, in, out] -> [out, in, kh, kw]
      BatchNorm/gamma: {from: BatchNorm/gamma}
      BatchNorm/beta: {from: BatchNorm/beta}
      BatchNorm/moving_mean: {from: BatchNorm/moving_mean}
      BatchNorm/moving_variance: {from: BatchNorm/moving_variance}
"""


def _conv_bn_kind(name, comment, compute, keras=False):
    """A kind of slim.conv2d + slim.batch_norm(scale=True): no conv bias, a trained gamma (YAML text)."""
    return (f"  {name}:\n    # {comment}\n    compute: {compute}\n" + CONV_BN_PARAMS
            + (KERAS_CONV_BN if keras else "") + ONNX_CONV_BN)


# ---------------------------------------------------------------------------------------------------
# ResNet-v1: conv -> batch norm (scale=True) -> ReLU everywhere but conv3 and the shortcut, whose ReLU
# follows the residual sum

V1_LOGITS_KIND = """\

  logits:
    # slim.conv2d 1x1 with biases on the globally pooled 1x1 map, no batch norm, no activation
    compute: {op: linear}
    params:
      weights: [1, 1, in, classes]
      biases: [classes]
    torch:
      weight: {from: weights, transform: conv1x1_to_linear, classes: 0}    # [1, 1, in, classes] -> [classes, in]
      bias: {from: biases, classes: 0}
    onnx:
      weights: {from: weights, transform: conv1x1_to_linear, classes: 0}   # [1, 1, in, classes] -> [classes, in]
      biases: {from: biases, classes: 0}
"""

V1_KINDS = (
    "kinds:\n"
    + _conv_bn_kind(
        "conv_bn_relu",
        "slim.conv2d + slim.batch_norm(scale=True): no conv bias, a trained gamma; ReLU after",
        "{op: conv, batch_norm: true, activation: relu}")
    + "\n"
    + _conv_bn_kind(
        "conv_bn",
        "the same without the ReLU (a unit's conv3 and projection shortcut: the ReLU follows the sum)",
        "{op: conv, batch_norm: true}")
    + V1_LOGITS_KIND
)

V1_GRAPH_HEAD = """\
# resnet_utils.conv2d_same with stride > 1 pads explicitly, (k - 1) // 2 before and the rest after
# whatever the input size (3 and 3 for the 7x7 conv1, 1 and 1 for 3x3), then convolves VALID; with
# stride 1 it is a 'SAME' convolution. pool1 is max_pool2d 3x3 stride 2 'SAME' (resnet_arg_scope).
# A unit (bottleneck_v1) adds its shortcut to conv1 -> conv2 -> conv3, then applies ReLU; the block's
# stride is on its last unit, whose shortcut subsamples (a 1x1 max pool with the stride).
graph:
  - {pad: [[3, 3], [3, 3]]}
  - {layer: conv1, stride: 2, padding: VALID}
  - {max_pool: [3, 3], stride: 2}                   # pool1
"""

LOGITS_NODE = """\
  - name: Logits                   # the classifier, which --no-top leaves out
    scoped: false                  # its layer keeps its own scope (logits)
    nodes:
      - {avg_pool: global}         # pool5: the mean over the map
      - {flatten: true}
      - {layer: logits}
"""


def resnet_v1(depth):
    """The mapping table of TF-Slim's ``resnet_v1_<depth>``, as YAML text."""
    scope = f"resnet_v1_{depth}"
    model = TORCHVISION.get(depth)
    released = f"the slim model zoo's {scope}.ckpt and its fine-tunes" if depth in RELEASED else \
        f"checkpoints trained with tf_slim.nets.resnet_v1.{scope} (the zoo released none)"
    if model:
        torch = f"""\
  torch:
    # torchvision's {model} has the same keys and shapes but another network: it strides the first
    # unit of each stage (slim: the last), and pads its stem max pool 1 on every side (slim: 'SAME',
    # 0 before and 1 after). The weights load into it and compute something else.
    models: ["torchvision.models.{model}() loads it (same keys) but computes another network"]
    restrictions: ["torchvision's {model} is another network (strides, stem pool padding): serve the exact module or ONNX"]
    torchvision:
      model: {model}
      end_points: {{block1: layer1, block3: layer3, block4: layer4, Logits: fc}}
"""
    else:
        torch = """\
  # the exact module, its keys laid out as torchvision's ResNets (which stop at resnet152)
  torch: {}
"""
    text = f"""\
# TF-Slim ResNet-v1-{depth} (tf_slim.nets.resnet_v1.{scope}) -> PyTorch (the exact module; keys as
# torchvision's ResNets) and ONNX. Schema: mappings/README.md.
# Generated by mappings/generate.py (python -m converter.mappings.generate): edit the generator, not this file.
schema: 1
architecture: {scope}
description: TF-Slim ResNet-v1-{depth}, {released}
scope: {scope}

# Variables (relative to the scope) whose presence identifies this architecture: the last unit of each
# block; and those whose presence rules it out: the unit after it (a deeper ResNet's).
{_detect(1, depth)}
facts:
  num_classes: 1000
  background_class: null         # the released resnet_v1 checkpoints have the 1000 ImageNet classes
  # slim's resnet_v1 models are trained with vgg_preprocessing: RGB in [0, 255] minus the channel means
  input: {{height: 224, width: 224, channels: 3, range: [-123.68, 151.06], mean: [123.68, 116.78, 103.94]}}
  preprocessing: "RGB in [0, 255] minus the means [123.68, 116.78, 103.94]; no [-1, 1] scaling"
  batch_norm_epsilon: 0.00001    # resnet_arg_scope: epsilon 1e-5, scale=True (a trained gamma)
  end_points: [{", ".join(END_POINTS)}]
{_reference(1, depth)}
targets:
{torch}  onnx: {{}}

{V1_KINDS}
{V1_GRAPH_HEAD}"""
    rows = [("conv1", _row("conv_bn_relu", {"conv": "conv1", "bn": "bn1"}, "conv1"))]
    blocks = {}
    for block, unit, projection, stride in _units(depth):
        prefix = f"block{block}/unit_{unit}/{_unit(1)}"
        module = f"layer{block}.{unit - 1}"
        lines = blocks.setdefault(block, [])
        lines.append(f"      - activation: relu   # {_kind_of_shortcut(projection, stride)}\n"
                     f"        add:\n"
                     f"          - {_shortcut(1, f'unit_{unit}', projection, stride)}\n"
                     f"          - {_residual_branch(1, f'unit_{unit}', stride, preact=False)}\n")
        if projection:
            torch = {"conv": f"{module}.downsample.0", "bn": f"{module}.downsample.1"}
            rows.append((f"{prefix}/shortcut", _row("conv_bn", torch, f"{prefix}/shortcut")))
        for conv in (1, 2, 3):
            torch = {"conv": f"{module}.conv{conv}", "bn": f"{module}.bn{conv}"}
            kind = "conv_bn" if conv == 3 else "conv_bn_relu"
            rows.append((f"{prefix}/conv{conv}", _row(kind, torch, f"{prefix}/conv{conv}")))
    for block, lines in blocks.items():
        text += f"  - name: block{block}\n    nodes:\n" + "".join(lines)
    rows.append(("logits", _row("logits", "fc", "logits")))
    return text + LOGITS_NODE + "\n" + _rows(rows)


# ---------------------------------------------------------------------------------------------------
# ResNet-v2 (pre-activation): every unit starts with a batch norm + ReLU (preact); conv3 and the
# projection shortcut have biases and no batch norm; nothing follows the residual sum; the stem's conv1
# has biases and no batch norm; a batch norm + ReLU (postnorm) follows block4

V2_NORM_AND_LOGITS_KINDS = """\

  norm_relu:
    # slim.batch_norm(scale=True) + ReLU on its own (preact, postnorm): its variables lie directly under
    # the layer's scope (preact/gamma, not preact/BatchNorm/gamma)
    compute: {op: batch_norm, activation: relu}
    params:
      gamma: [channels]
      beta: [channels]
      moving_mean: [channels]
      moving_variance: [channels]
    torch:
      weight: {from: gamma}
      bias: {from: beta}
      running_mean: {from: moving_mean}
      running_var: {from: moving_variance}
      num_batches_tracked: {fill: 0, shape: [], dtype: int64}
    keras:
      batch_normalization/gamma: {from: gamma}
      batch_normalization/beta: {from: beta}
      batch_normalization/moving_mean: {from: moving_mean}
      batch_normalization/moving_variance: {from: moving_variance}
    onnx:
      gamma: {from: gamma}
      beta: {from: beta}
      moving_mean: {from: moving_mean}
      moving_variance: {from: moving_variance}

  logits:
    # slim.conv2d 1x1 with biases on the globally pooled 1x1 map, no batch norm, no activation
    compute: {op: linear}
    params:
      weights: [1, 1, in, classes]
      biases: [classes]
    torch:
      weight: {from: weights, transform: conv1x1_to_linear, classes: 0}    # [1, 1, in, classes] -> [classes, in]
      bias: {from: biases, classes: 0}
    keras:
      dense/kernel: {from: weights, transform: conv1x1_to_dense, classes: 1}  # [1, 1, in, classes] -> [in, classes]
      dense/bias: {from: biases, classes: 0}
    onnx:
      weights: {from: weights, transform: conv1x1_to_linear, classes: 0}   # [1, 1, in, classes] -> [classes, in]
      biases: {from: biases, classes: 0}
"""

V2_CONV_BIAS_KIND = """\
  conv_bias:
    # slim.conv2d with biases, no batch norm, no activation (normalizer_fn=None, activation_fn=None):
    # the stem's conv1, a unit's conv3 and its projection shortcut
    compute: {op: conv}
    params:
      weights: [kh, kw, in, out]
      biases: [out]
    torch:
      weight: {from: weights, transform: hwio_to_oihw}           # [kh, kw, in, out] -> [out, in, kh, kw]
      bias: {from: biases}
    keras:
      conv2d/kernel: {from: weights}                             # [kh, kw, in, out] both sides
      conv2d/bias: {from: biases}
    onnx:
      weights: {from: weights, transform: hwio_to_oihw}          # [kh, kw, in, out] -> [out, in, kh, kw]
      biases: {from: biases}
"""

V2_KINDS = (
    "kinds:\n"
    + V2_CONV_BIAS_KIND
    + "\n"
    + _conv_bn_kind(
        "conv_bn_relu",
        "slim.conv2d + slim.batch_norm(scale=True): no conv bias, a trained gamma; ReLU after (conv1, conv2)",
        "{op: conv, batch_norm: true, activation: relu}", keras=True)
    + V2_NORM_AND_LOGITS_KINDS
)

V2_GRAPH_HEAD = """\
# The stem's conv1 is resnet_utils.conv2d_same (7x7 stride 2: an explicit pad of 3 and 3, then VALID)
# with biases and nothing after it; pool1 is max_pool2d 3x3 stride 2 'SAME'. A unit (bottleneck_v2)
# starts with preact (batch norm + ReLU). Its residual branch is preact -> conv1 -> conv2 -> conv3; its
# shortcut is a projection of preact in a block's first unit, else the unit's *input* itself (subsampled
# by a 1x1 max pool in the strided last unit), never preact. Nothing follows the sum. postnorm (batch
# norm + ReLU) follows block4, whose end point is the sum before it, as tf-slim's end_points give it.
graph:
  - {pad: [[3, 3], [3, 3]]}
  - {layer: conv1, stride: 2, padding: VALID}
  - {max_pool: [3, 3], stride: 2}                   # pool1
"""

V2_TORCH = """\
  torch:
    # the exact module only: torchvision's and timm's ResNets have no biases on conv3 and the shortcut
    # and stride a stage's first unit. Its keys follow torchvision's layout (conv1, layerN.M.convK and
    # bnK, fc) with slim's names for what torchvision lacks (layerN.M.preact, layerN.M.shortcut, postnorm).
    restrictions: ["no third-party torch model computes ResNet-v2: serve the exact module or ONNX"]
"""


def _without_keras(kinds):
    # the kinds of a table without a Keras target: every `keras` column (a key and its indented entries) dropped
    lines, dropping = [], False
    for line in kinds.splitlines(keepends=True):
        if line == "    keras:\n":
            dropping = True
        elif dropping and not line.startswith("      "):
            dropping = False
        if not dropping:
            lines.append(line)
    return "".join(lines)


def _keras_name(block, unit, layer):
    return f"conv{block + 1}_block{unit}_{layer}"


def resnet_v2(depth):
    """The mapping table of TF-Slim's ``resnet_v2_<depth>``, as YAML text."""
    scope = f"resnet_v2_{depth}"
    application = KERAS.get(depth)
    released = f"the slim model zoo's {scope}.ckpt (2017-04-14) and its fine-tunes" if depth in RELEASED else \
        f"checkpoints trained with tf_slim.nets.resnet_v2.{scope} (the zoo released none)"
    units = list(_units(depth))
    keras = ""
    if application:
        order = ["conv1_conv"]
        for block, unit, projection, _ in units:
            order += [_keras_name(block, unit, layer) for layer in KERAS_UNIT_ORDER
                      if layer != "0_conv" or projection]
        order += ["post_bn", "predictions"]
        last = UNITS[depth]
        points = (f"{{block1: {_keras_name(1, last[0], 'out')}, block3: {_keras_name(3, last[2], 'out')}, "
                  f"block4: {_keras_name(4, last[3], 'out')}, Logits: predictions}}")
        keras = f"""\
  keras:
    models: [keras.applications.{application}]
    application: {application}
    # its stem pool is ZeroPadding2D((1, 1)) then a VALID 3x3 max pool: zeros where TF-Slim's 'SAME' pool
    # pads with -inf (ResNet-v2's conv1 has no ReLU, so a zero can win at the border), and 1 before where
    # TF-Slim pads 0 wherever conv1's map is even (inputs of 4k or 4k + 3 pixels), shifting every window by
    # one pixel. Everything else computes TF-Slim's network (tests/test_resnets.py); its batch norm
    # epsilon is 1.001e-5 (slim: 1e-5), which moves nothing measurably.
    drift: "keras.applications.{application} zero-pads its stem max pool 1 on every side, where TF-Slim's 'SAME' pool pads with -inf and, at inputs of 4k or 4k + 3 pixels (224, 299), only after: close, not equivalent"
    end_points: {points}   # -> keras layer
    # Layers with weights, by name, in `model.layers` order: the stem's conv1_conv, then per unit
    # preact_bn, 1_conv, 1_bn, 2_conv, 2_bn, 0_conv (a block's first unit: the projection shortcut), 3_conv,
    # then post_bn and predictions. The legacy .h5 loader matches layers by this position, the
    # .weights.h5 loader by class and index in it.
    order: {_wrap(order, 11)}
"""
    text = f"""\
# TF-Slim ResNet-v2-{depth} (tf_slim.nets.resnet_v2.{scope}, pre-activation) -> PyTorch (the exact module),
# {f"keras.applications.{application}, " if application else ""}and ONNX. Schema: mappings/README.md.
# Generated by mappings/generate.py (python -m converter.mappings.generate): edit the generator, not this file.
schema: 1
architecture: {scope}
description: TF-Slim ResNet-v2-{depth}, {released}
scope: {scope}

# Variables (relative to the scope) whose presence identifies this architecture: the last unit of each
# block; and those whose presence rules it out: the unit after it (a deeper ResNet's).
{_detect(2, depth)}
facts:
  num_classes: 1001
  background_class: 0            # trained on slim's 1001-class ImageNet, class 0 "background"; Keras's ResNetV2 has 1000
  # The released checkpoints were trained and evaluated with inception_preprocessing at 299x299 (slim's
  # README: "ResNet V2 models use Inception pre-processing and input image size of 299"). Slim's
  # preprocessing_factory maps resnet_v2 to vgg_preprocessing, which fine-tunes run with default flags took.
  input: {{height: 299, width: 299, channels: 3, range: [-1.0, 1.0]}}
  preprocessing: "RGB scaled to [-1, 1] (inception_preprocessing, as the released checkpoints); fine-tunes trained with slim's default flags took vgg_preprocessing (RGB minus the channel means)"
  batch_norm_epsilon: 0.00001    # resnet_arg_scope: epsilon 1e-5, scale=True (a trained gamma)
  end_points: [{", ".join(END_POINTS)}]
{_reference(2, depth)}
targets:
{V2_TORCH}{keras}  onnx: {{}}

{V2_KINDS if application else _without_keras(V2_KINDS)}
{V2_GRAPH_HEAD}"""
    def keras(**roles):  # a row's keras layers by role, where the table has a Keras target
        return roles if application else None

    rows = [("conv1", _row("conv_bias", "conv1", "conv1", keras(conv2d="conv1_conv")))]
    blocks = {}
    for block, unit, projection, stride in units:
        prefix = f"block{block}/unit_{unit}/{_unit(2)}"
        module = f"layer{block}.{unit - 1}"
        lines = blocks.setdefault(block, [])
        branch = f"unit_{unit}"
        if projection:  # preact feeds both branches
            lines.append(f"      - {{layer: {branch}/{_unit(2)}/preact}}\n")
        lines.append(f"      - add:               # {_kind_of_shortcut(projection, stride)}\n"
                     f"          - {_shortcut(2, branch, projection, stride)}\n"
                     f"          - {_residual_branch(2, branch, stride, preact=not projection)}\n")
        name = {layer: _keras_name(block, unit, layer) for layer in KERAS_UNIT_ORDER}
        rows.append((f"{prefix}/preact", _row("norm_relu", f"{module}.preact", f"{prefix}/preact",
                                              keras(batch_normalization=name["preact_bn"]))))
        if projection:
            rows.append((f"{prefix}/shortcut", _row("conv_bias", f"{module}.shortcut", f"{prefix}/shortcut",
                                                    keras(conv2d=name["0_conv"]))))
        for conv in (1, 2):
            torch = {"conv": f"{module}.conv{conv}", "bn": f"{module}.bn{conv}"}
            rows.append((f"{prefix}/conv{conv}", _row("conv_bn_relu", torch, f"{prefix}/conv{conv}", keras(
                conv2d=name[f"{conv}_conv"], batch_normalization=name[f"{conv}_bn"]))))
        rows.append((f"{prefix}/conv3", _row("conv_bias", f"{module}.conv3", f"{prefix}/conv3",
                                             keras(conv2d=name["3_conv"]))))
    for block, lines in blocks.items():
        text += f"  - name: block{block}\n    nodes:\n" + "".join(lines)
    text += "  - {name: postnorm, layer: postnorm}     # not an end point of tf-slim's; a headless port ends here\n"
    rows.append(("postnorm", _row("norm_relu", "postnorm", "postnorm", keras(batch_normalization="post_bn"))))
    rows.append(("logits", _row("logits", "fc", "logits", keras(dense="predictions"))))
    return text + LOGITS_NODE + "\n" + _rows(rows)


FAMILIES = {1: resnet_v1, 2: resnet_v2}
# every generated table: name -> (version, depth)
GENERATED = {f"resnet_v{version}_{depth}": (version, depth) for version in FAMILIES for depth in UNITS}


def expanded(name):
    """The YAML text of the generated table ``name`` (``resnet_v2_152``) in the expanded form (schema 1)."""
    version, depth = GENERATED[name]
    return FAMILIES[version](depth)


def generate(name):
    """The YAML text of the generated table ``name`` (``resnet_v2_152``), in schema 2."""
    from converter import table_schema

    text = expanded(name)
    return table_schema.dump(table_schema.compact(yaml.safe_load(text)), text)


def stale(directory=HERE):
    """Names of the generated tables whose file in ``directory`` differs from what ``generate`` gives."""
    return [name for name in GENERATED
            if not (directory / f"{name}.yaml").is_file() or (directory / f"{name}.yaml").read_text() != generate(name)]


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--check", action="store_true", help="write nothing; exit 1 if a committed table differs")
    parser.add_argument("--out", type=pathlib.Path, default=HERE, help="directory of the tables (default: this one)")
    parser.add_argument("--migrate", type=pathlib.Path, metavar="FILE",
                        help="write the schema 1 table FILE in schema 2 (to stdout, or to --output) and nothing else")
    parser.add_argument("-o", "--output", type=pathlib.Path, help="with --migrate: the file to write")
    parser.add_argument("--force", action="store_true", help="with --migrate: overwrite --output if it exists")
    args = parser.parse_args(argv)
    if args.migrate:
        return _migrate(args.migrate, args.output, args.force)
    if args.check:
        differing = stale(args.out)
        for name in differing:
            print(f"{args.out / name}.yaml differs from what mappings/generate.py generates; rerun it", file=sys.stderr)
        return 1 if differing else 0
    for name in GENERATED:
        (args.out / f"{name}.yaml").write_text(generate(name))
        print(f"wrote {args.out / name}.yaml")
    return 0


def _migrate(path, output, force):
    from converter import _atomic, table_schema
    from converter.errors import ConvertError

    try:
        text = table_schema.migrate(path)
        if output is None:
            sys.stdout.write(text)
            return 0
        with _atomic.atomic_output(output, force) as temp:
            temp.write_text(text)
    except ConvertError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    print(f"wrote {output} (schema 2)", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
