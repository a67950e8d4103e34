"""TF-Slim MobileNet V1 (tensorflow/models ``research/slim/nets/mobilenet_v1.py``) with tf_slim layers.

The network: ``Conv2d_0`` (3x3, stride 2), then 13 depthwise-separable pairs ``Conv2d_N_depthwise``
(a 3x3 depthwise convolution, ``depthwise_weights`` ``[3, 3, C, 1]``) and ``Conv2d_N_pointwise`` (1x1),
every one 'SAME' (``use_explicit_padding=False``) with batch norm (center and scale, epsilon 0.001,
no biases) and ReLU6; then ``Logits/AvgPool_1a``, a VALID average pool of stride 2 whose 7x7 window
shrinks to a smaller map, and ``Logits/Conv2d_1c_1x1`` with biases, squeezed to ``[N, classes]``.
Channels are ``max(int(d * depth_multiplier), min_depth)``, min_depth 8.
"""

from converter.slim_nets._widths import find_multiplier

SCOPE = "MobilenetV1"
MIN_DEPTH = 8
BATCH_NORM_EPSILON = 0.001
BATCH_NORM_DECAY = 0.9997
# (stride, depth at multiplier 1.0) of Conv2d_0 and of each separable pair Conv2d_1 to Conv2d_13
CONV = (2, 32)
SEPARABLE = ((1, 64), (2, 128), (1, 128), (2, 256), (1, 256), (2, 512),
             (1, 512), (1, 512), (1, 512), (1, 512), (1, 512), (2, 1024), (1, 1024))
KERNEL = [3, 3]
POOL = [7, 7]


def depths(depth_multiplier, min_depth=MIN_DEPTH):
    """Output channels of every layer with weights, by scope, at ``depth_multiplier``."""
    found = {"Conv2d_0": max(int(CONV[1] * depth_multiplier), min_depth)}
    for index, (_, channels) in enumerate(SEPARABLE, start=1):
        found[f"Conv2d_{index}_pointwise"] = max(int(channels * depth_multiplier), min_depth)
    return found


def network_options(shapes, scope=SCOPE):
    """The options of ``mobilenet_v1`` that give a checkpoint's ``{name: shape}`` (names under ``scope``).

    Returns ``{"depth_multiplier": m}``, or ``{}`` when no multiplier fits (``variable`` errors say where).
    """
    channels = {layer: shapes[f"{scope}/{layer}/weights"][-1] for layer in depths(1.0)
                if f"{scope}/{layer}/weights" in shapes}
    multiplier = find_multiplier(depths, channels)
    return {} if multiplier is None else {"depth_multiplier": multiplier}


def mobilenet_v1_arg_scope(is_training=False, weight_decay=0.00004, stddev=0.09):
    """slim's ``mobilenet_v1_arg_scope``: batch norm (center, scale, epsilon 0.001) and ReLU6 after every conv."""
    from converter.reference import import_tensorflow

    tf, slim = import_tensorflow()
    batch_norm = {"center": True, "scale": True, "decay": BATCH_NORM_DECAY, "epsilon": BATCH_NORM_EPSILON,
                  "is_training": is_training}
    initializer = tf.compat.v1.truncated_normal_initializer(stddev=stddev)
    with slim.arg_scope([slim.conv2d, slim.separable_conv2d], weights_initializer=initializer,
                        activation_fn=tf.nn.relu6, normalizer_fn=slim.batch_norm):
        with slim.arg_scope([slim.batch_norm], **batch_norm):
            with slim.arg_scope([slim.conv2d], weights_regularizer=slim.l2_regularizer(weight_decay)):
                with slim.arg_scope([slim.separable_conv2d], weights_regularizer=None) as scope:
                    return scope


def _reduced_kernel(net, kernel):
    # slim's _reduced_kernel_size_for_small_input: the window no larger than a static map
    height, width = net.get_shape().as_list()[1:3]
    if height is None or width is None:
        return kernel
    return [min(height, kernel[0]), min(width, kernel[1])]


def mobilenet_v1(inputs, num_classes=1001, dropout_keep_prob=0.999, is_training=False, min_depth=MIN_DEPTH,
                 depth_multiplier=1.0, spatial_squeeze=True, global_pool=False, scope=SCOPE):
    """MobileNet V1 on ``inputs`` (NHWC in [-1, 1]); returns ``(logits, end_points)`` as slim's does.

    End points: ``Conv2d_0``, ``Conv2d_N_depthwise``, ``Conv2d_N_pointwise``, ``AvgPool_1a``, ``Logits``
    (squeezed where ``spatial_squeeze``). ``num_classes`` 0 or None returns the pooled features.
    """
    from converter.reference import import_tensorflow

    tf, slim = import_tensorflow()
    if depth_multiplier <= 0:
        raise ValueError("depth_multiplier is not greater than zero")
    channels = depths(depth_multiplier, min_depth)
    end_points = {}
    with tf.compat.v1.variable_scope(scope, "MobilenetV1", [inputs]):
        with slim.arg_scope([slim.batch_norm, slim.dropout], is_training=is_training), \
                slim.arg_scope([slim.conv2d, slim.separable_conv2d], padding="SAME"):
            net = slim.conv2d(inputs, channels["Conv2d_0"], KERNEL, stride=CONV[0], scope="Conv2d_0")
            end_points["Conv2d_0"] = net
            for index, (stride, _) in enumerate(SEPARABLE, start=1):
                name = f"Conv2d_{index}"
                net = slim.separable_conv2d(net, None, KERNEL, depth_multiplier=1, stride=stride,
                                            scope=f"{name}_depthwise")
                end_points[f"{name}_depthwise"] = net
                net = slim.conv2d(net, channels[f"{name}_pointwise"], [1, 1], stride=1, scope=f"{name}_pointwise")
                end_points[f"{name}_pointwise"] = net
        with tf.compat.v1.variable_scope("Logits"):
            if global_pool:
                net = tf.reduce_mean(net, [1, 2], keepdims=True, name="global_pool")
                end_points["global_pool"] = net
            else:
                net = slim.avg_pool2d(net, _reduced_kernel(net, POOL), padding="VALID", scope="AvgPool_1a")
                end_points["AvgPool_1a"] = net
            if not num_classes:
                return net, end_points
            net = slim.dropout(net, keep_prob=dropout_keep_prob, is_training=is_training, scope="Dropout_1b")
            logits = slim.conv2d(net, num_classes, [1, 1], activation_fn=None, normalizer_fn=None,
                                 scope="Conv2d_1c_1x1")
            if spatial_squeeze:
                logits = tf.squeeze(logits, [1, 2], name="SpatialSqueeze")
        end_points["Logits"] = logits
        end_points["Predictions"] = tf.nn.softmax(logits, name="Predictions")
    return logits, end_points
