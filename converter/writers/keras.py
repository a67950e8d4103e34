"""Keras weights written with h5py alone: the legacy ``.h5`` layout and Keras 3's ``.weights.h5``.

Both layouts come from the plan's ``keras`` keys (``conv2d_5/kernel``: a layer name, then a weight)
and the table's ``targets.keras.order``, the layers with weights in ``model.layers`` order
(``mappings/README.md``, "Keras layer names").

Legacy ``.h5``, the layout of the ``keras.applications`` weight files, which Keras loads by position
(``keras.applications.InceptionV3(weights=PATH)`` or ``model.load_weights(PATH)``):

    /                       attrs ``layer_names`` (the layers in model order), ``backend``, ``keras_version``
    /<layer>                attr ``weight_names`` (``<layer>/<weight>:0``, in the layer's weight order)
    /<layer>/<layer>/<weight>:0     one dataset per weight

The loader pairs the N-th name of ``layer_names`` with the N-th layer of ``model.layers`` that has
weights; layer names themselves are not compared. An attribute over HDF5's 64 KiB object-header
limit is split into ``<name>0``, ``<name>1``, ... as Keras does.

Keras 3 ``.weights.h5`` (``model.load_weights(PATH)``), keyed by class and index, not by name:

    /vars                                   the model's own variables (none)
    /layers/<class>[_<k>]/vars              attr ``name``; the k-th layer of that class in model order
    /layers/<class>[_<k>]/vars/<i>          its i-th variable, in the layer's variable order

Layers without variables (activations, pools) need no group in either layout.
``<class>`` is the snake_case class name (``conv2d``, ``batch_normalization``, ``dense``), which the
table gives as the role of each layer; ``_<k>`` is left out for k = 0.
"""

import collections
import contextlib

import ml_dtypes
import numpy as np

from converter import mapping
from converter.errors import ConvertError, MappingError, join_problems

TARGET = "keras"
# the Keras release these layouts were checked against (setup.cfg's keras extra); loaders read it only
# to recognise Keras 1 files, which need their weights converted
KERAS_VERSION = "3.15.1"
BACKEND = "tensorflow"
# HDF5 keeps attributes in the object header; Keras splits larger string lists into numbered chunks
HDF5_OBJECT_HEADER_LIMIT = 64512
# TensorFlow variable names end in the output index; the keras.applications files keep it
WEIGHT_SUFFIX = ":0"
# Keras layer class (snake_case, a role in the table) -> its variables in the order the layer creates
# them, which is the order of both layouts (for these classes trainable ones come first, as the legacy
# layout wants); a layer may lack some (no bias, no gamma). Ordered here, not by the table's keys.
VARIABLES = {
    "conv2d": ("kernel", "bias"),
    "depthwise_conv2d": ("depthwise_kernel", "bias"),
    "batch_normalization": ("gamma", "beta", "moving_mean", "moving_variance"),
    "dense": ("kernel", "bias"),
}
# --dtype names -> numpy dtypes that floating tensors are cast to
CAST_DTYPES = {"float16": np.dtype(np.float16), "bfloat16": np.dtype(ml_dtypes.bfloat16)}
BFLOAT16 = CAST_DTYPES["bfloat16"]
# HDF5 has no bfloat16: Keras 3 stores it as opaque 2-byte data with this attribute; the legacy loader cannot
LEGACY_DTYPES = ("float16",)
WEIGHTS_DTYPES = ("float16", "bfloat16")


def _h5py():
    try:
        import h5py
    except ImportError:
        raise ConvertError(
            "writing Keras weights needs h5py; install it with: pip install 'ckpt-convert[keras]'"
        ) from None
    return h5py


@contextlib.contextmanager
def _hdf5_file(h5py, path):
    """A new HDF5 file built in memory, then written to ``path`` by Python.

    HDF5 meets a failed write (a full disk) deep in its cache, where h5py turns it into a
    RuntimeError or, on closing, a crash; Python's own write raises an OSError naming the reason.
    """
    with h5py.File(str(path), "w", driver="core", backing_store=False) as file:
        yield file
        file.flush()
        image = file.id.get_file_image()
    with open(path, "wb") as out:
        out.write(image)


def check(plan, path, *, dtype=None, **options):
    """What the Keras layouts constrain (layer order, full-size channels, dtype), before writing or on a dry run."""
    legacy = not str(path).endswith(".weights.h5")
    _caster(dtype, LEGACY_DTYPES if legacy else WEIGHTS_DTYPES, "legacy .h5" if legacy else ".weights.h5")
    ordered_layers(plan)


def save_h5(plan, read, path, *, dtype=None, **options):
    """Write ``plan`` as Keras's legacy HDF5 weights, loaded by position like the keras.applications files.

    Args:
        plan: a ``converter.mapping.Plan`` for the ``keras`` target.
        read: ``read(name) -> np.ndarray``, a checkpoint variable.
        path: the file to write.
        dtype: ``float16`` to cast floating tensors; None keeps them.
        options: the convert options (``include_top``); the plan already leaves out what they drop.
    """
    cast = _caster(dtype, LEGACY_DTYPES, "legacy .h5")
    layers = ordered_layers(plan)
    h5py = _h5py()
    with _hdf5_file(h5py, path) as f:
        _set_strings(f, "layer_names", [name for name, _, _ in layers])
        f.attrs["backend"] = BACKEND.encode()
        f.attrs["keras_version"] = KERAS_VERSION.encode()
        _set_provenance(f, plan)
        for name, _, entries in layers:
            group = f.create_group(name)
            weight_names = [entry.key + WEIGHT_SUFFIX for entry in entries]
            _set_strings(group, "weight_names", weight_names)
            for weight_name, entry in zip(weight_names, entries):
                value = cast(entry.value(read))
                if value.dtype == BFLOAT16:
                    raise ConvertError(f"{entry.source}: bfloat16, which the legacy .h5 layout cannot hold; "
                                       f"pass --dtype float16 or write a .weights.h5 file")
                group.create_dataset(weight_name, data=value)


def save_weights_h5(plan, read, path, *, dtype=None, **options):
    """Write ``plan`` as a Keras 3 ``.weights.h5`` file for ``model.load_weights``.

    Args: as ``save_h5``; ``dtype`` may also be ``bfloat16`` (stored as Keras stores it).
    """
    cast = _caster(dtype, WEIGHTS_DTYPES, ".weights.h5")
    layers = ordered_layers(plan)
    h5py = _h5py()
    counts = {}
    with _hdf5_file(h5py, path) as f:
        _set_provenance(f, plan)
        f.create_group("vars")
        root = f.create_group("layers")
        for name, role, entries in layers:
            index = counts.get(role, 0)
            counts[role] = index + 1
            group = root.create_group(role if index == 0 else f"{role}_{index}").create_group("vars")
            group.attrs["name"] = name
            for i, entry in enumerate(entries):
                value = cast(entry.value(read))
                if value.dtype == BFLOAT16:
                    dataset = group.create_dataset(str(i), data=value)
                    dataset.attrs["dtype"] = "bfloat16"
                else:
                    group.create_dataset(str(i), data=value)


def _set_provenance(f, plan):
    # how the port was made (converter.provenance), as root attributes Keras does not read
    if plan.record:
        for key, value in plan.provenance().items():
            f.attrs[key] = value.encode()


def ordered_layers(plan):
    """The plan's Keras layers in ``model.layers`` order, checked against the table first.

    Returns:
        ``[(name, role, [Entry, ...])]``: each layer's name, its role (snake_case class) and its
        entries in the order ``VARIABLES`` gives for the class. Raises ``MappingError`` for a
        checkpoint whose sizes differ from ``targets.keras.dims``, then one listing every problem of
        the table: a layer missing from ``targets.keras.order`` or listed twice, a name no row gives,
        a variable its class does not have.
    """
    if plan.target != TARGET:
        raise ConvertError(f"a {plan.target} plan cannot be written as Keras weights; plan for {TARGET}")
    table = plan.table
    spec = table.targets.get(TARGET)
    where = table.path.name
    _check_dims(plan, spec.dims if spec is not None else {})
    problems = []
    order = spec.order if spec is not None else None
    if order is None:
        raise MappingError(f"{where}: targets.{TARGET}.order is missing; it lists the layers with weights "
                           f"in model.layers order (mappings/README.md)")
    roles = {}  # layer name -> role, from every row of the table
    for row in table.layers.values():
        for role, name in (row.name(TARGET) or {}).items():
            roles[name] = role
    layers = {}  # layer name -> its entries
    for entry in plan.entries:
        name, _, _ = entry.key.partition("/")
        layers.setdefault(name, []).append(entry)
    listed = collections.Counter(order)
    problems += [f"targets.{TARGET}.order lists {name} {count} times" for name, count in sorted(listed.items())
                 if count > 1]
    problems += [f"targets.{TARGET}.order: {name} is no row's keras name" for name in order if name not in roles]
    problems += [f"keras layer {name} is not in targets.{TARGET}.order" for name in layers if name not in listed]
    for name, entries in layers.items():
        known = VARIABLES.get(roles.get(name), ())
        problems += [f"{entry.key}: not a variable of Keras class {roles.get(name)} (known classes: "
                     f"{', '.join(VARIABLES)})" for entry in entries if _variable(entry) not in known]
    if problems:
        raise MappingError(f"{where}: cannot write Keras weights ({len(problems)} problems):\n  "
                           + join_problems(problems))
    ordered = []
    for name in order:
        if name in layers:
            variables = VARIABLES[roles[name]]
            ordered.append((name, roles[name], sorted(layers[name], key=lambda e: variables.index(_variable(e)))))
    return ordered


def _variable(entry):
    return entry.key.partition("/")[2]


def _check_dims(plan, required):
    """MappingError naming every layer whose sizes differ from those the target's models build."""
    mismatches = list(mapping.dims_mismatches(plan, required).values())
    if mismatches:
        models = ", ".join(plan.table.targets[TARGET].models or [TARGET])
        raise MappingError(
            f"{models} builds only full-size networks (depth_multiplier 1.0), and this checkpoint's channels "
            f"differ as a depth-multiplied one's do: {'; '.join(mismatches)}; --to torch and --to onnx keep its sizes"
        )


def _set_strings(group, name, strings):
    """Store a list of strings as Keras does: one attribute, or numbered chunks under the header limit."""
    data = np.array([s.encode() for s in strings])
    if data.itemsize > HDF5_OBJECT_HEADER_LIMIT:
        raise ConvertError(f"a name is longer than HDF5's {HDF5_OBJECT_HEADER_LIMIT}-byte attribute limit: {name}")
    parts = [data]
    while any(part.nbytes > HDF5_OBJECT_HEADER_LIMIT for part in parts):
        parts = np.array_split(data, len(parts) + 1)
    if len(parts) == 1:
        group.attrs[name] = data
        return
    for i, part in enumerate(parts):
        group.attrs[f"{name}{i}"] = part


def _caster(dtype, allowed, layout):
    if dtype is None:
        return np.asarray
    if dtype not in allowed:
        raise ConvertError(f"the Keras {layout} layout cannot hold {dtype}; choose one of {', '.join(allowed)}")
    target = CAST_DTYPES[dtype]

    def cast(array):
        array = np.asarray(array)
        if np.issubdtype(array.dtype, np.floating) or array.dtype == BFLOAT16:
            return array.astype(target)
        return array

    return cast
