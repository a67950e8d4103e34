"""The reference: TF-Slim's own network definition, run by TensorFlow on a checkpoint.

Every equivalence claim of ckpt-convert is measured against this module, never against our own
network code. It needs the ``tf`` extra (TensorFlow, tf-slim, tf-keras); nothing else in the
package imports it.
"""

import contextlib
import importlib
import inspect
import math
import sys
import time

import numpy as np

from converter import _warm, mapping
from converter.errors import ConvertError

PRELOAD_BEFORE_TENSORFLOW = ("torch", "triton")
EMA_SUFFIX = mapping.EMA_SUFFIX
MIN_DEPTH = 16


def preload_before_tensorflow():
    """Load torch and triton, where installed, before TensorFlow in this process.

    Their bundled native libraries and TensorFlow's clash when they load second: a segfault at
    import. A process that imports TensorFlow other than through this module calls this first.
    """
    for module in PRELOAD_BEFORE_TENSORFLOW:
        with contextlib.suppress(ImportError):
            importlib.import_module(module)


def import_tensorflow():
    """Import TensorFlow and tf-slim, working around tf-slim's import of ``tf_keras.legacy_tf_layers``.

    tf-slim's layers reach Keras-2 legacy layers under a module path that tf-keras 2.21 ships as
    ``tf_keras.src.legacy_tf_layers``; an alias in ``sys.modules`` lets the original code run unchanged.
    """
    preload_before_tensorflow()
    try:
        import tensorflow as tf
        import tf_keras.src.legacy_tf_layers as legacy_layers
    except ImportError as error:
        raise ConvertError(
            f"the TF-Slim reference needs TensorFlow ({error}); install it with: pip install 'ckpt-convert[tf]'"
        ) from None
    sys.modules.setdefault("tf_keras.legacy_tf_layers", legacy_layers)
    for name in ("base", "convolutional", "core", "normalization", "pooling"):
        sys.modules.setdefault(
            f"tf_keras.legacy_tf_layers.{name}", importlib.import_module(f"tf_keras.src.legacy_tf_layers.{name}")
        )
    import tf_slim

    tf.get_logger().setLevel("ERROR")
    return tf, tf_slim


def _slim_net(architecture):
    # the table's facts.reference names the tf-slim module, network function and arg_scope function
    table = mapping.load_table(architecture)
    spec = table.facts.reference
    if spec is None:
        raise ConvertError(f"mapping table {architecture!r} names no TF-Slim reference network (facts.reference)")
    module = importlib.import_module(spec["module"])
    return getattr(module, spec["network"]), getattr(module, spec["arg_scope"]), table


def _takes_depth_multiplier(network):
    return "depth_multiplier" in inspect.signature(network).parameters


def build_network(architecture, images, *, num_classes=1001, depth_multiplier=1.0, is_training=False, **options):
    """Build the TF-Slim network on ``images`` (an NHWC tensor) in the current graph.

    ``depth_multiplier`` reaches networks that take one (InceptionV3); for the others it must be 1.0.
    ``options`` go to the network function as they are (``scope``, ``create_aux_logits``).
    Returns ``(logits, end_points)`` as tf-slim returns them.
    """
    _, slim = import_tensorflow()
    network, arg_scope, _ = _slim_net(architecture)
    if _takes_depth_multiplier(network):
        options["depth_multiplier"] = depth_multiplier
    elif depth_multiplier != 1.0:
        raise ConvertError(f"TF-Slim's {architecture} takes no depth_multiplier")
    with slim.arg_scope(arg_scope()):
        return network(images, num_classes=num_classes, is_training=is_training, **options)


class _Network:
    """A TF-Slim network built once in its own graph and session; each checkpoint is restored into it."""

    def __init__(self, tf, graph, session, inputs, points):
        self.graph, self.session, self.inputs, self.points = graph, session, inputs, points
        self.variables = {v.op.name: v for v in graph.get_collection(tf.compat.v1.GraphKeys.GLOBAL_VARIABLES)}
        self.savers = {}  # (checkpoint name, variable name) pairs -> a Saver restoring exactly those

    def saver(self, tf, names):
        """A Saver restoring every variable of the network from the checkpoint names ``{ckpt name: variable name}``."""
        key = tuple(sorted(names.items()))
        if key not in self.savers:
            with self.graph.as_default():
                self.savers[key] = tf.compat.v1.train.Saver(
                    var_list={source: self.variables[name] for source, name in names.items()})
        return self.savers[key]

    def close(self):
        self.session.close()


_networks = _warm.cache(close=_Network.close)


def _network(architecture, shape, *, num_classes, depth_multiplier, device="/CPU:0", options=()):
    """The network for these settings (``shape`` is the input's ``(H, W, C)``), built on first use."""
    key = (architecture, tuple(shape), num_classes, depth_multiplier, device, tuple(sorted(options)))
    return _networks.get(key, lambda: _build(architecture, shape, num_classes, depth_multiplier, device, options))


def _build(architecture, shape, num_classes, depth_multiplier, device, options):
    tf, _ = import_tensorflow()
    graph = tf.Graph()
    with graph.as_default(), tf.device(device):
        inputs = tf.compat.v1.placeholder(tf.float32, [None, *shape])
        _, points = build_network(architecture, inputs, num_classes=num_classes, depth_multiplier=depth_multiplier,
                                  **dict(options))
    threads = _warm.threads() or 0  # 0: TensorFlow's default, every core
    config = tf.compat.v1.ConfigProto(allow_soft_placement=True, intra_op_parallelism_threads=threads,
                                      inter_op_parallelism_threads=threads)
    return _Network(tf, graph, tf.compat.v1.Session(graph=graph, config=config), inputs, points)


def variable_shapes(architecture, *, num_classes=1001, depth_multiplier=1.0, image_size=299, **options):
    """Names (without ``:0``) and shapes of the model variables TF-Slim creates for these settings.

    ``image_size`` is one side of a square input or ``(height, width)``; ``options`` go to the network
    function (``create_aux_logits``).
    """
    height, width = (image_size, image_size) if isinstance(image_size, int) else image_size
    key = (architecture, height, width, num_classes, depth_multiplier, tuple(sorted(options.items())))
    if key not in _shapes:
        network = _network(architecture, (height, width, 3), num_classes=num_classes,
                           depth_multiplier=depth_multiplier, options=tuple(options.items()))
        _shapes[key] = {name: tuple(v.shape.as_list()) for name, v in network.variables.items()}
    return dict(_shapes[key])


# variable shapes by network settings: kept after the network built to read them is dropped
_shapes = {}


def infer_depth_multiplier(architecture, checkpoint_shapes, *, num_classes=1001, image_size=299, **options):
    """Find the ``depth_multiplier`` a checkpoint was trained with, from its variable shapes.

    Every output channel count is ``max(int(base * multiplier), 16)``; each one above the minimum bounds the
    multiplier to ``[c / base, (c + 1) / base)``. The midpoint of the intersection of all bounds is
    returned; an empty intersection means the checkpoint is not this network. A network that takes
    no multiplier has 1.0.
    """
    if not _takes_depth_multiplier(_slim_net(architecture)[0]):
        return 1.0
    base_shapes = variable_shapes(architecture, num_classes=num_classes, image_size=image_size, **options)
    low, high = 0.0, math.inf
    for name, base_shape in base_shapes.items():
        shape = checkpoint_shapes.get(name)
        if shape is None or len(shape) != len(base_shape):
            continue
        # only output channels are depth(base); input channels may be sums of concatenated branches
        base, channels = base_shape[-1], shape[-1]
        if base == num_classes or channels <= MIN_DEPTH:
            continue
        low, high = max(low, channels / base), min(high, (channels + 1) / base)
    if not low < high:
        raise ConvertError(f"the checkpoint's channel counts fit no depth_multiplier of {architecture}")
    if high == math.inf or low <= 1.0 < high:
        return 1.0  # the full-size network: the one built to read the base shapes
    return (low + high) / 2


def network_options(architecture, shapes):
    """The reference network's options that give a checkpoint's shapes, where its module says how; else None.

    A module of ``facts.reference`` MAY define ``network_options(shapes, scope)``, ``shapes`` being
    ``{name: shape}`` under the table's scope: MobileNet's channels are rounded (``min_depth``,
    ``divisible_by``), so its width multiplier is found by the network's own rule, not by ``infer_depth_multiplier``.
    Needs no TensorFlow.
    """
    table = mapping.load_table(architecture)
    spec = table.facts.reference
    rule = spec and getattr(importlib.import_module(spec["module"]), "network_options", None)
    if rule is None:
        return None
    options = rule(shapes, scope=table.scope)
    if not options:
        raise ConvertError(f"the checkpoint's channel counts fit no width multiplier of {architecture}")
    return options


def tf_device(device):
    """TensorFlow's device string for ``device``: its first GPU for ``cuda`` where it sees one, else the CPU."""
    tf, _ = import_tensorflow()
    if device == "cuda" and tf.config.list_physical_devices("GPU"):
        return "/GPU:0"
    return "/CPU:0"


def run_reference(
    checkpoint,
    images,
    *,
    architecture="inception_v3",
    end_points=None,
    ema=False,
    depth_multiplier=None,
    device="cpu",
    scope=None,
    phases=None,
):
    """Run TF-Slim's network with the weights of ``checkpoint`` on ``images`` (NHWC, float32).

    Args:
        checkpoint: checkpoint path or prefix, read by TensorFlow itself.
        images: array ``[N, H, W, 3]`` in the network's input range, at the size the network runs at
            (TF-Slim sizes some layers to it: InceptionV3's auxiliary kernel).
        end_points: graph end points of the architecture's mapping table (default: its
            ``facts.end_points``); each is tf-slim's end_points entry that ``facts.reference.end_points``
            names, or the entry of the same name. Those of optional heads the checkpoint lacks are left out.
        ema: restore each variable from its ``/ExponentialMovingAverage`` shadow where one exists.
        depth_multiplier: inferred from the checkpoint's shapes when omitted; where the reference module
            gives ``network_options``, those options (the multiplier among them) are taken instead.
        device: ``cpu``, or ``cuda`` to run on TensorFlow's first GPU where it sees one.
        scope: which network, where the checkpoint holds several (``mapping.locate``).
        phases: a dict that gets the seconds of each step (``reference import``, ``reference build``: 0 where
            the network was kept from an earlier checkpoint, ``reference restore``, ``reference run``).

    Returns:
        ``{end_point: np.ndarray}``, in TF's NHWC layout, every class of the checkpoint's classifier.
    """
    phases = {} if phases is None else phases
    mark = time.perf_counter()
    tf, _ = import_tensorflow()
    phases["reference import"] = time.perf_counter() - mark
    mark = time.perf_counter()
    reader = tf.train.load_checkpoint(str(checkpoint))
    stored = {name: tuple(shape) for name, shape in reader.get_variable_to_shape_map().items()}
    _, _, table = _slim_net(architecture)
    spec = table.facts.reference
    # the network may sit under any scope or prefix (FlowerNet/..., tower_0/InceptionV3/...); tf-slim
    # builds it under its own scope, and each variable restores from the checkpoint's name for it
    root = mapping.locate(stored, table, scope=scope, path=str(checkpoint)).root
    own = f"{table.scope}/"
    checkpoint_shapes = {own + name[len(root):]: shape for name, shape in stored.items() if name.startswith(root)}
    heads = {head: any(name.startswith(f"{own}{head}/") for name in checkpoint_shapes)
             for head in spec.get("heads", {})}
    options = {spec["heads"][head]: present for head, present in heads.items()}
    if end_points is None:
        end_points = table.facts.end_points
    end_points = [name for name in end_points if heads.get(name, True)]
    classifier = f"{own}{spec['classifier']}/biases"
    if classifier in checkpoint_shapes:
        num_classes = checkpoint_shapes[classifier][0]
    elif mapping.TOP not in end_points:
        num_classes = 0  # a headless network (a detection checkpoint's backbone): built without its classifier
    else:
        raise ConvertError(f"{checkpoint}: no variable {root}{spec['classifier']}/biases; it is not a TF-Slim "
                           f"{architecture} checkpoint, or a headless one (--no-top)")
    slim_names = {name: spec.get("end_points", {}).get(name, name) for name in end_points}
    shaped = network_options(architecture, checkpoint_shapes)
    if shaped is not None:
        options.update(shaped)
        depth_multiplier = options.pop("depth_multiplier", 1.0)
    elif depth_multiplier is None:
        depth_multiplier = infer_depth_multiplier(
            architecture, checkpoint_shapes, num_classes=num_classes, image_size=tuple(images.shape[1:3]), **options
        )
    network = _network(architecture, images.shape[1:], num_classes=num_classes, depth_multiplier=depth_multiplier,
                       device=tf_device(device), options=tuple(options.items()))
    phases["reference build"] = time.perf_counter() - mark
    mark = time.perf_counter()
    names = {}
    for name, variable in network.variables.items():
        source = name + EMA_SUFFIX if ema and name + EMA_SUFFIX in checkpoint_shapes else name
        if checkpoint_shapes.get(source) != tuple(variable.shape.as_list()):
            raise ConvertError(
                f"{checkpoint}: variable {root}{source[len(own):]} is missing or has shape "
                f"{checkpoint_shapes.get(source)}, TF-Slim expects {tuple(variable.shape.as_list())} "
                f"at input size {images.shape[1]}x{images.shape[2]}"
            )
        names[root + source[len(own):]] = name
    # every variable of the network is restored: nothing of a checkpoint restored before survives
    with network.graph.as_default():
        network.saver(tf, names).restore(network.session, str(checkpoint))
        phases["reference restore"] = time.perf_counter() - mark
        mark = time.perf_counter()
        outputs = network.session.run({name: network.points[slim_names[name]] for name in end_points},
                                      {network.inputs: images})
        phases["reference run"] = time.perf_counter() - mark
    # end points tf-slim returns unsqueezed ([N, 1, 1, classes]), squeezed as the graph gives them
    squeeze = set(spec.get("squeeze", []))
    return {name: np.asarray(value)[:, 0, 0] if name in squeeze else np.asarray(value) for name, value in outputs.items()}
