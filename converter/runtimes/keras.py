"""Run ported Keras weight files in the ``keras.applications`` model they were written for."""

import pathlib

from converter import mapping
from converter.errors import ConvertError
from converter.runtimes import width_option
from converter.writers.keras import VARIABLES, WEIGHT_SUFFIX, ordered_layers

WEIGHTS_SUFFIX = ".weights.h5"


def describe(path, **_):
    return "keras.applications"


def _h5py():
    try:
        import h5py
    except ImportError:
        raise ConvertError("reading a Keras port needs h5py: pip install 'ckpt-convert[keras]'") from None
    return h5py


def load_weights(path, plan=None):
    """Every tensor of a legacy ``.h5`` (keyed ``layer/variable``) or, given the plan, a ``.weights.h5``."""
    h5py = _h5py()
    with h5py.File(path, "r") as f:
        if str(path).endswith(WEIGHTS_SUFFIX):
            return _load_keras3(f, plan)
        weights = {}
        for layer in _strings(f.attrs, "layer_names"):
            group = f[layer]
            for name in _strings(group.attrs, "weight_names"):
                weights[name.removesuffix(WEIGHT_SUFFIX)] = group[name][()]
        return weights


def _strings(attrs, name):
    # Keras splits long string lists into numbered attributes (name0, name1, ...)
    if name in attrs:
        values = list(attrs[name])
    else:
        values, i = [], 0
        while f"{name}{i}" in attrs:
            values += list(attrs[f"{name}{i}"])
            i += 1
    return [v.decode() if isinstance(v, bytes) else str(v) for v in values]


def _load_keras3(f, plan):
    # groups are named by class and index in model.layers, datasets by position within the layer:
    # the plan's layer order (the writer's) says which slim tensor each one must hold
    if plan is None:
        raise ConvertError(f"{f.filename}: reading a .weights.h5 file needs the mapping plan")
    weights, counts = {}, {}
    for name, role, entries in ordered_layers(plan):
        index = counts.get(role, 0)
        counts[role] = index + 1
        group = f"layers/{role if index == 0 else f'{role}_{index}'}/vars"
        stored = f[group] if group in f else {}
        present = [v for v in VARIABLES[role] if f"{name}/{v}" in {e.key for e in entries}]
        for i, variable in enumerate(present):
            if str(i) in stored:
                weights[f"{name}/{variable}"] = stored[str(i)][()]
    return weights


def run(path, plan, images, *, device="cpu", **_):
    """Load ``path`` into ``keras.applications`` (as the table names it) and return its end points."""
    try:
        import keras
    except ImportError:
        raise ConvertError("running a Keras port needs keras: pip install 'ckpt-convert[keras]'") from None
    spec = plan.table.targets["keras"]
    classifier = spec.classifier or spec.end_points[mapping.TOP]
    include_top = plan.holds(mapping.TOP)
    classes = next((e.shape[-1] for e in plan.entries if e.key == f"{classifier}/bias"), 1000)
    application = getattr(keras.applications, spec.application)
    try:
        model = application(weights=None, include_top=include_top, classes=classes, classifier_activation=None,
                            input_shape=(*plan.input_size.hw, plan.table.facts.input.channels),
                            **width_option(plan, spec.width))
        model.load_weights(str(pathlib.Path(path)))
    except (ValueError, KeyError) as error:
        raise ConvertError(f"{path}: does not load into keras.applications.{spec.application} "
                           f"({str(error).splitlines()[0]})") from None
    names = [point for point, layer in spec.end_points.items() if layer in {l.name for l in model.layers}]
    probe = keras.Model(model.inputs, [model.get_layer(spec.end_points[p]).output for p in names])
    values = probe.predict(images, verbose=0, batch_size=len(images))
    return dict(zip(names, (v for v in values))), _device(keras)


def _device(keras):
    import tensorflow as tf

    return "cuda" if tf.config.list_physical_devices("GPU") else "cpu"
