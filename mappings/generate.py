"""Generate the mapping tables of TF-Slim's ResNets from one description of the family; migrate tables.

A ResNet (``tf_slim.nets.resnet_v1``, ``resnet_v2``) is a stem, four blocks of bottleneck units that
repeat one template, and a classifier; only the number of units per block tells ResNet-50 from
ResNet-200. Written by hand, the 200-layer tables would be a thousand rows to get wrong, so they are
generated from the data below and committed, and the test suite fails where a committed table differs
from what this module generates. Each table is written in schema 2: its units are templates, each
block uses them once per unit (``for: {unit: [2, 22]}``), so a ResNet-200 is as long as a ResNet-50:

    python -m converter.mappings.generate            # rewrite every generated table
    python -m converter.mappings.generate --check    # name the tables that differ; exit 1 if any
    python -m converter.mappings.generate --migrate my.yaml -o my_v2.yaml   # a schema 1 table in schema 2

Edit this module, not the tables it writes.
"""

import argparse
import pathlib
import sys

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


def _unit(version):
    return f"bottleneck_v{version}"


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


def _blocks(depth, version):
    # the four blocks: a projection unit, identity units, and a last unit that strides (block4's does not)
    text = ""
    for block, (count, stride) in enumerate(zip(UNITS[depth], STRIDES), start=1):
        last = "strided_unit" if stride > 1 else "identity_unit"
        text += (f"  - name: block{block}\n    nodes:\n"
                 f"      - {{use: projection_unit, with: {{block: {block}, unit: 1}}}}\n"
                 f"      - {{use: identity_unit, with: {{block: {block}}}, for: {{unit: [2, {count - 1}]}}}}\n"
                 f"      - {{use: {last}, with: {{block: {block}, unit: {count}"
                 + (f", stride: {stride}" if stride > 1 else "") + "}}\n")
    return text


# ---------------------------------------------------------------------------------------------------
# ResNet-v1: conv -> batch norm (scale=True) -> ReLU everywhere but conv3 and the shortcut, whose ReLU
# follows the residual sum. Kinds from mappings/kinds.yaml: conv_bn (a trained gamma), logits.

V1_UNIT = """\
    - {layer: "unit_{unit}/bottleneck_v1/conv1", activation: relu, kind: conv_bn,
       torch: {conv: "layer{block}.{unit-1}.conv1", bn: "layer{block}.{unit-1}.bn1"}}
    - {layer: "unit_{unit}/bottleneck_v1/conv2", activation: relu, kind: conv_bn,
       torch: {conv: "layer{block}.{unit-1}.conv2", bn: "layer{block}.{unit-1}.bn2"}}
    - {layer: "unit_{unit}/bottleneck_v1/conv3", kind: conv_bn,
       torch: {conv: "layer{block}.{unit-1}.conv3", bn: "layer{block}.{unit-1}.bn3"}}
"""

V1_TEMPLATES = """\
# A unit (bottleneck_v1) adds its shortcut to conv1 -> conv2 -> conv3, then applies ReLU. Its layers' torch
# names are torchvision's (layer{block}.{unit - 1}.conv1 and bn1, ..., downsample.0 and .1).
templates:
  # a block's first unit: the channel count changes, so its shortcut is a 1x1 projection
  projection_unit:
    - activation: relu
      add:
        - - {layer: "unit_{unit}/bottleneck_v1/shortcut", kind: conv_bn,
             torch: {conv: "layer{block}.{unit-1}.downsample.0", bn: "layer{block}.{unit-1}.downsample.1"}}
        - - {use: residual}
  # the shortcut is the unit's input itself
  identity_unit:
    - activation: relu
      add:
        - []
        - - {use: residual}
  # a block's last unit carries its stride: conv2 pads explicitly, then convolves VALID
  # (resnet_utils.conv2d_same), and the shortcut subsamples (a 1x1 max pool with the stride)
  strided_unit:
    - activation: relu
      add:
        - - {max_pool: [1, 1], stride: "{stride}"}
        - - {layer: "unit_{unit}/bottleneck_v1/conv1", activation: relu, kind: conv_bn,
             torch: {conv: "layer{block}.{unit-1}.conv1", bn: "layer{block}.{unit-1}.bn1"}}
          - {pad: [[1, 1], [1, 1]]}
          - {layer: "unit_{unit}/bottleneck_v1/conv2", stride: "{stride}", padding: VALID, activation: relu,
             kind: conv_bn, torch: {conv: "layer{block}.{unit-1}.conv2", bn: "layer{block}.{unit-1}.bn2"}}
          - {layer: "unit_{unit}/bottleneck_v1/conv3", kind: conv_bn,
             torch: {conv: "layer{block}.{unit-1}.conv3", bn: "layer{block}.{unit-1}.bn3"}}
  # conv1 -> conv2 -> conv3 of a unit that does not stride
  residual:
""" + V1_UNIT

V1_GRAPH_HEAD = """\
# resnet_utils.conv2d_same with stride > 1 pads explicitly, (k - 1) // 2 before and the rest after
# whatever the input size (3 and 3 for the 7x7 conv1, 1 and 1 for 3x3), then convolves VALID; with
# stride 1 it is a 'SAME' convolution. pool1 is max_pool2d 3x3 stride 2 'SAME' (resnet_arg_scope).
# Each block is a projection unit, identity units, and a last unit that carries the block's stride.
graph:
  - {pad: [[3, 3], [3, 3]]}
  - {layer: conv1, stride: 2, padding: VALID, activation: relu, kind: conv_bn, torch: {conv: conv1, bn: bn1}}
  - {max_pool: [3, 3], stride: 2}                   # pool1
"""

LOGITS_NODE = """\
  - name: Logits                   # the classifier, which --no-top leaves out
    scoped: false                  # its layer keeps its own scope (logits)
    nodes:
      - {avg_pool: global}         # pool5: the mean over the map
      - {flatten: true}
      - {layer: logits, kind: logits, torch: fc}
"""
LOGITS_NODE_KERAS = LOGITS_NODE.replace("torch: fc}", "torch: fc, keras: {dense: predictions}}")


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
schema: 2
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

{V1_TEMPLATES}
{V1_GRAPH_HEAD}"""
    return text + _blocks(depth, 1) + LOGITS_NODE


# ---------------------------------------------------------------------------------------------------
# ResNet-v2 (pre-activation): every unit starts with a batch norm + ReLU (preact); conv3 and the
# projection shortcut have biases and no batch norm; nothing follows the residual sum; the stem's conv1
# has biases and no batch norm; a batch norm + ReLU (postnorm) follows block4. Kinds from
# mappings/kinds.yaml: norm (a batch norm alone), conv_bn, conv (with biases), logits.

V2_LAYERS = {
    # layer -> (its node's options, kind, torch name, keras roles and their names' suffix)
    "preact": ("activation: relu, ", "norm", '"layer{block}.{unit-1}.preact"', {"batch_normalization": "preact_bn"}),
    "shortcut": ("", "conv", '"layer{block}.{unit-1}.shortcut"', {"conv2d": "0_conv"}),
    "conv1": ("activation: relu, ", "conv_bn", '{conv: "layer{block}.{unit-1}.conv1", bn: "layer{block}.{unit-1}.bn1"}',
              {"conv2d": "1_conv", "batch_normalization": "1_bn"}),
    "conv2": ("activation: relu, ", "conv_bn", '{conv: "layer{block}.{unit-1}.conv2", bn: "layer{block}.{unit-1}.bn2"}',
              {"conv2d": "2_conv", "batch_normalization": "2_bn"}),
    "conv3": ("", "conv", '"layer{block}.{unit-1}.conv3"', {"conv2d": "3_conv"}),
}


def _keras_name(block, unit, layer):
    return f"conv{block + 1}_block{unit}_{layer}"


def _v2_layer(layer, keras, options=""):
    # a layer node of a resnet_v2 unit, with its row; keras names as keras.applications' ResNetV2 gives them
    activation, kind, torch, roles = V2_LAYERS[layer]
    names = ", ".join(f'{role}: "conv{{block+1}}_block{{unit}}_{suffix}"' for role, suffix in roles.items())
    return (f'{{layer: "unit_{{unit}}/bottleneck_v2/{layer}", {options}{activation}kind: {kind},\n'
            f'             torch: {torch}' + (f",\n             keras: {{{names}}}" if keras else "") + "}")


def _v2_templates(keras):
    """The templates of a resnet_v2 table: its units, their rows with names per target (keras where it has it)."""
    def layer(name, options=""):
        return _v2_layer(name, keras, options)
    return f"""\
# A unit (bottleneck_v2) starts with preact (batch norm + ReLU). Its residual branch is preact -> conv1 ->
# conv2 -> conv3; its shortcut is a projection of preact in a block's first unit, else the unit's *input*
# itself (subsampled by a 1x1 max pool in the strided last unit), never preact. Nothing follows the sum.
# Torch names follow torchvision's layout (layer{{block}}.{{unit - 1}}.conv1 and bn1, ...) with slim's names
# for what torchvision lacks (preact, shortcut){"; Keras names are keras.applications' (conv2_block1_1_conv)" if keras else ""}.
templates:
  # a block's first unit: preact feeds both branches
  projection_unit:
    - {layer("preact")}
    - add:
        - - {layer("shortcut")}
        - - {{use: residual}}
  identity_unit:
    - add:
        - []
        - - {layer("preact")}
          - {{use: residual}}
  # a block's last unit carries its stride: conv2 pads explicitly, then convolves VALID
  strided_unit:
    - add:
        - - {{max_pool: [1, 1], stride: "{{stride}}"}}
        - - {layer("preact")}
          - {layer("conv1")}
          - {{pad: [[1, 1], [1, 1]]}}
          - {layer("conv2", 'stride: "{stride}", padding: VALID, ')}
          - {layer("conv3")}
  # conv1 -> conv2 -> conv3 of a unit that does not stride
  residual:
    - {layer("conv1")}
    - {layer("conv2")}
    - {layer("conv3")}
"""


def _v2_graph_head(keras):
    return V2_GRAPH_HEAD.replace(", KERAS}", ", keras: {conv2d: conv1_conv}}" if keras else "}")


V2_GRAPH_HEAD = """\
# The stem's conv1 is resnet_utils.conv2d_same (7x7 stride 2: an explicit pad of 3 and 3, then VALID)
# with biases and nothing after it; pool1 is max_pool2d 3x3 stride 2 'SAME'. Each block is a projection
# unit, identity units, and a last unit that carries the block's stride (block4's does not). postnorm
# (batch norm + ReLU) follows block4, whose end point is the sum before it, as tf-slim's end_points give it.
graph:
  - {pad: [[3, 3], [3, 3]]}
  - {layer: conv1, stride: 2, padding: VALID, kind: conv, torch: conv1, KERAS}
  - {max_pool: [3, 3], stride: 2}                   # pool1
"""

V2_TORCH = """\
  torch:
    # the exact module only: torchvision's and timm's ResNets have no biases on conv3 and the shortcut
    # and stride a stage's first unit. Its keys follow torchvision's layout (conv1, layerN.M.convK and
    # bnK, fc) with slim's names for what torchvision lacks (layerN.M.preact, layerN.M.shortcut, postnorm).
    restrictions: ["no third-party torch model computes ResNet-v2: serve the exact module or ONNX"]
"""


def resnet_v2(depth):
    """The mapping table of TF-Slim's ``resnet_v2_<depth>``, as YAML text."""
    scope = f"resnet_v2_{depth}"
    application = KERAS.get(depth)
    released = f"the slim model zoo's {scope}.ckpt (2017-04-14) and its fine-tunes" if depth in RELEASED else \
        f"checkpoints trained with tf_slim.nets.resnet_v2.{scope} (the zoo released none)"
    keras = ""
    if application:
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
"""
    text = f"""\
# TF-Slim ResNet-v2-{depth} (tf_slim.nets.resnet_v2.{scope}, pre-activation) -> PyTorch (the exact module),
# {f"keras.applications.{application}, " if application else ""}and ONNX. Schema: mappings/README.md.
# Generated by mappings/generate.py (python -m converter.mappings.generate): edit the generator, not this file.
schema: 2
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

{_v2_templates(bool(application))}
{_v2_graph_head(bool(application))}"""
    text += _blocks(depth, 2)
    text += ("  - {name: postnorm, layer: postnorm, activation: relu, kind: norm, torch: postnorm"
             + (", keras: {batch_normalization: post_bn}" if application else "")
             + "}   # not an end point of tf-slim's; a headless port ends here\n")
    return text + (LOGITS_NODE_KERAS if application else LOGITS_NODE)


FAMILIES = {1: resnet_v1, 2: resnet_v2}
# every generated table: name -> (version, depth)
GENERATED = {f"resnet_v{version}_{depth}": (version, depth) for version in FAMILIES for depth in UNITS}


def generate(name):
    """The YAML text of the generated table ``name`` (``resnet_v2_152``)."""
    version, depth = GENERATED[name]
    return FAMILIES[version](depth)


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
