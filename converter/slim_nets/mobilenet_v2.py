"""TF-Slim MobileNet V2 (tensorflow/models ``research/slim/nets/mobilenet/mobilenet_v2.py``) with tf_slim layers.

The network (``V2_DEF``): ``Conv`` (3x3, stride 2), 17 inverted residual blocks ``expanded_conv``,
``expanded_conv_1`` ... ``expanded_conv_16`` (``conv_blocks.expanded_conv``: a 1x1 ``expand`` to
6x the input channels, left out where that is not more than the input's, as in the first block; a
3x3 ``depthwise`` convolution, 'SAME'; a 1x1 linear ``project``; the input added back, without an
activation, where the stride is 1 and the channels agree), ``Conv_1`` (1x1 to 1280), then
``Logits``: an average pool over the whole map and ``Conv2d_1c_1x1`` with biases, squeezed. Every
convolution but the logits has batch norm (center and scale, epsilon 0.001) and ReLU6, except
``project`` (linear). Channels are ``_make_divisible(d * depth_multiplier, 8)``; with
``finegrain_classification_mode`` (the zoo's 0.35 and 0.5) ``Conv_1`` keeps 1280 below 1.0.
"""

import functools

from converter.slim_nets._widths import find_multiplier

SCOPE = "MobilenetV2"
DIVISIBLE_BY = 8
MIN_DEPTH = 8
EXPANSION = 6
BATCH_NORM_EPSILON = 0.001
BATCH_NORM_DECAY = 0.997
FIRST = (2, 32)
# (stride, output depth at multiplier 1.0) of expanded_conv, expanded_conv_1, ... expanded_conv_16
BLOCKS = ((1, 16), (2, 24), (1, 24), (2, 32), (1, 32), (1, 32), (2, 64), (1, 64), (1, 64), (1, 64),
          (1, 96), (1, 96), (1, 96), (2, 160), (1, 160), (1, 160), (1, 320))
# the first block expands by 1 (divisible by 1), which is no expansion: it has no `expand` layer
FIRST_EXPANSION = 1
LAST = 1280
KERNEL = [3, 3]


def make_divisible(value, divisor=DIVISIBLE_BY, min_value=None):
    """slim's ``_make_divisible``: the nearest multiple of ``divisor``, at least ``min_value``, not 10% below."""
    min_value = divisor if min_value is None else min_value
    rounded = max(min_value, int(value + divisor / 2) // divisor * divisor)
    if rounded < 0.9 * value:
        rounded += divisor
    return int(rounded)


def block_name(index):
    """The scope of block ``index`` (from 0): ``expanded_conv``, ``expanded_conv_1``, ..."""
    return "expanded_conv" if index == 0 else f"expanded_conv_{index}"


def depths(depth_multiplier, finegrain_classification_mode=False):
    """Output channels of every convolution with weights, by scope, at ``depth_multiplier``."""
    def depth(channels):
        return make_divisible(channels * depth_multiplier, DIVISIBLE_BY, MIN_DEPTH)

    found = {"Conv": depth(FIRST[1])}
    previous = found["Conv"]
    for index, (_, channels) in enumerate(BLOCKS):
        name = block_name(index)
        inner = previous * FIRST_EXPANSION if index == 0 else make_divisible(previous * EXPANSION, DIVISIBLE_BY)
        if inner > previous:
            found[f"{name}/expand"] = inner
        found[f"{name}/project"] = previous = depth(channels)
    last = LAST / depth_multiplier if finegrain_classification_mode and depth_multiplier < 1 else LAST
    found["Conv_1"] = depth(last)
    return found


def network_options(shapes, scope=SCOPE):
    """The options of ``mobilenet`` that give a checkpoint's ``{name: shape}`` (names under ``scope``).

    The multiplier must give every layer's channels; ``Conv_1`` kept at 1280 below 1.0 says the network
    was built in ``finegrain_classification_mode``. Returns ``{}`` when no multiplier fits.
    """
    channels = {layer: shapes[f"{scope}/{layer}/weights"][-1] for layer in depths(1.0)
                if f"{scope}/{layer}/weights" in shapes}
    for finegrain in (False, True):
        multiplier = find_multiplier(functools.partial(depths, finegrain_classification_mode=finegrain), channels)
        if multiplier is not None:
            return {"depth_multiplier": multiplier, **({"finegrain_classification_mode": True} if finegrain else {})}
    return {}


def training_scope(is_training=False, weight_decay=0.00004, stddev=0.09, bn_decay=BATCH_NORM_DECAY):
    """slim's ``mobilenet.training_scope`` with V2_DEF's defaults: batch norm with gamma, ReLU6, 'SAME'."""
    from converter.reference import import_tensorflow

    tf, slim = import_tensorflow()
    initializer = tf.compat.v1.truncated_normal_initializer(stddev=stddev)
    with slim.arg_scope([slim.conv2d, slim.fully_connected, slim.separable_conv2d], weights_initializer=initializer,
                        normalizer_fn=slim.batch_norm, activation_fn=tf.nn.relu6), \
            slim.arg_scope([slim.conv2d, slim.separable_conv2d], padding="SAME"), \
            slim.arg_scope([slim.batch_norm], center=True, scale=True, decay=bn_decay,
                           epsilon=BATCH_NORM_EPSILON, is_training=is_training), \
            slim.arg_scope([slim.conv2d], weights_regularizer=slim.l2_regularizer(weight_decay)), \
            slim.arg_scope([slim.separable_conv2d], weights_regularizer=None) as scope:
        return scope


def _expanded_conv(tf, slim, net, index, stride, expanded, channels):
    # conv_blocks.expanded_conv with V2_DEF's defaults: expand (where it widens), depthwise, linear project,
    # then the input added back where the shapes allow (no activation after the sum)
    inputs = net
    with tf.compat.v1.variable_scope(block_name(index)):
        if expanded is not None:
            net = slim.conv2d(net, expanded, [1, 1], stride=1, scope="expand")
        net = slim.separable_conv2d(net, None, KERNEL, depth_multiplier=1, stride=stride, scope="depthwise")
        net = slim.conv2d(net, channels, [1, 1], stride=1, activation_fn=tf.identity, scope="project")
        if stride == 1 and net.shape[3] == inputs.shape[3]:
            net = net + inputs
        return tf.identity(net, name="output")


def mobilenet(inputs, num_classes=1001, depth_multiplier=1.0, scope=SCOPE, finegrain_classification_mode=False,
              is_training=False):
    """MobileNet V2 on ``inputs`` (NHWC in [-1, 1]); returns ``(logits, end_points)`` as slim's does.

    End points as slim's ``mobilenet_base``: ``layer_1`` (``Conv``) to ``layer_19`` (``Conv_1``), then
    ``global_pool`` and ``Logits``. ``num_classes`` 0 or None returns the pooled features.
    """
    from converter.reference import import_tensorflow

    tf, slim = import_tensorflow()
    if depth_multiplier <= 0:
        raise ValueError("multiplier is not greater than zero.")
    channels = depths(depth_multiplier, finegrain_classification_mode)
    end_points = {}
    with tf.compat.v1.variable_scope(scope, "Mobilenet", [inputs]):
        with slim.arg_scope([slim.batch_norm, slim.dropout], is_training=is_training):
            net = slim.conv2d(inputs, channels["Conv"], KERNEL, stride=FIRST[0], scope="Conv")
            end_points["layer_1"] = net
            for index, (stride, _) in enumerate(BLOCKS):
                name = block_name(index)
                net = _expanded_conv(tf, slim, net, index, stride, channels.get(f"{name}/expand"),
                                     channels[f"{name}/project"])
                end_points[f"layer_{index + 2}"] = net
            net = slim.conv2d(net, channels["Conv_1"], [1, 1], stride=1, scope="Conv_1")
            end_points[f"layer_{len(BLOCKS) + 2}"] = net
            with tf.compat.v1.variable_scope("Logits"):
                height, width = net.get_shape().as_list()[1:3]
                net = tf.nn.avg_pool2d(net, ksize=[1, height, width, 1], strides=[1, 1, 1, 1], padding="VALID")
                end_points["global_pool"] = net
                if not num_classes:
                    return net, end_points
                net = slim.dropout(net, scope="Dropout", is_training=is_training)
                logits = slim.conv2d(net, num_classes, [1, 1], activation_fn=None, normalizer_fn=None,
                                     biases_initializer=tf.compat.v1.zeros_initializer(), scope="Conv2d_1c_1x1")
                logits = tf.identity(tf.squeeze(logits, [1, 2]), name="output")
        end_points["Logits"] = logits
        end_points["Predictions"] = tf.nn.softmax(logits, name="Predictions")
    return logits, end_points
