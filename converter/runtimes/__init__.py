"""Runtimes that load and run ported files for the verifier, one module per framework.

Each module is a ``converter.backends.Runtime``, found through the format registry (``backends.FORMATS``),
with the same public names:

- ``describe(path, **options) -> str``: what runs the file, for the report;
- ``load_weights(path, plan=None) -> {key: np.ndarray}``: every tensor of the file under its key, in the
  file's dtype (a Keras 3 ``.weights.h5`` needs the plan to name its tensors);
- ``run(path, plan, images, *, device, **options) -> ({end point: np.ndarray}, device)``: the outputs
  on ``images`` (NHWC, as TF-Slim takes them), feature maps returned NHWC so that every backend
  compares with the reference in one layout.
"""

import numpy as np

from converter import graph, mapping

from converter.transforms import NCHW_TO_NHWC


def to_nhwc(outputs):
    """Feature maps (rank 4) from NCHW to NHWC; classifier outputs unchanged."""
    return {name: value.transpose(NCHW_TO_NHWC) if value.ndim == 4 else value for name, value in outputs.items()}


def end_point_modules(table):
    """``{end point: (module path, last layer's module path or None, input end point or None)}``.

    For torch modules named as the table's torch column: an end point is the module of its name
    where the model has one (``Mixed_5b``, ``AuxLogits``), or else the module of the last layer of its
    graph node (``Logits`` -> ``fc``); a node without layers (a pool) has none.
    """
    modules = {}
    for node in table.graph:
        if node.name not in table.facts.end_points:
            continue
        last = graph.last_layer(node)
        modules[node.name] = (node.name, last and table.layers[last].name("torch"), node.input)
    return modules


def width_option(plan, argument):
    """``{argument: multiplier}``: the width multiplier of a plan's checkpoint for a model's ``argument``.

    A table's ``width`` (``targets.keras.width``, ``targets.torch.torchvision.width``) names the argument of
    a third-party model that takes it (MobileNet's ``alpha``, torchvision's ``width_mult``); the multiplier is
    found from the checkpoint's channels by the table's reference network (``reference.network_options``).
    Empty where ``argument`` is None.
    """
    if argument is None:
        return {}
    from converter import reference

    table = plan.table
    # the checkpoint's names under the table's scope (an EMA shadow has its variable's shape)
    shapes = {f"{table.scope}/{entry.source[len(plan.root):].removesuffix(mapping.EMA_SUFFIX)}": entry.source_shape
              for entry in plan.entries if entry.source is not None}
    options = reference.network_options(table.architecture, shapes) or {}
    return {argument: options.get("depth_multiplier", 1.0)}


def as_float32(images):
    return np.ascontiguousarray(images, dtype=np.float32)
