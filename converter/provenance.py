"""What a port records about how it was made: one provenance record, written into every output.

The record is a flat ``{str: str}`` (``FIELDS``), the same for every format:

- ``.safetensors``: the header's ``__metadata__``;
- ONNX: the model's ``metadata_props``;
- ``.h5`` and ``.weights.h5``: attributes of the root group;
- ``.pth``: ``state_dict._metadata["ckpt_convert"]``, the attribute torch's own ``state_dict()`` uses
  for per-module versions: ``torch.load(weights_only=True)`` reads it and ``load_state_dict`` ignores
  a key that names no module, so the file still loads strictly into torchvision and timm.

``verify`` reads the record so that a port needs no flags (``options``, ``agree``), and
``converter.nets.torch.load`` rebuilds the exact module from it (``plan_of``).
"""

import json
import pathlib
import struct

from converter import __version__, graph
from converter import input_size as sizes
from converter import mapping as tables
from converter import storage, table_schema
from converter.errors import ConvertError
from converter.options import FLAGS, Options

# the entry of a .pth state dict's ``_metadata`` that holds the record
PTH_KEY = "ckpt_convert"
# the most of a .safetensors header read for its metadata
MAX_HEADER = 1 << 26
TRUE, FALSE = "true", "false"
# what each field says; every output has every field but source_shapes (torch outputs only)
FIELDS = {
    "ckpt_convert_version": "the ckpt-convert version that wrote the file",
    "target": "torch, keras or onnx",
    "architecture": "the mapping table's architecture",
    "table": "the mapping table: a built-in name, or the path of the user's table or .meta graph",
    "table_blake2b": "blake2b (128-bit) of the table's canonical expanded form (converter.table_schema.digest)",
    "checkpoint": "the source checkpoint's path (absolute)",
    "checkpoint_blake2b": "blake2b (128-bit) over the checkpoint's files (index and data shards, or the V1 file)",
    "scope": "the network's scope in the checkpoint",
    "ema": "true where the /ExponentialMovingAverage shadows were read",
    "background": "the background rule applied (released count, fine-tune, --keep-background, ...)",
    "background_option": "auto, keep or drop: the option the port was made with",
    "classes": "the port's class count (None when headless)",
    "heads": "each optional head and what was done with it (AuxLogits=kept)",
    "aux": "auto (heads kept where the checkpoint has them) or false (--no-aux)",
    "include_top": "false for a headless port (--no-top)",
    "dtype": "float32, float16 or bfloat16: the floating tensors' dtype",
    "input_layout": "nchw or nhwc: the layout the model takes",
    "input_range": "the input's value range, [low, high]",
    "input_size": "HxW the network was planned at",
    "end_points": "the end points the model outputs, comma-separated, in graph order",
    "strict": "false where variables no row takes were left out (--lenient)",
    "source_shapes": "torch: JSON {checkpoint variable relative to the scope: shape} of every variable read",
}
# the input layout each target's model takes where the writer has no option for it
LAYOUTS = {"torch": "nchw", "keras": "nhwc", "onnx": "nchw"}
# the ``Options`` fields ``verify`` takes from a record besides the table (their flags: ``options.FLAGS``),
# and what a disagreement between ports names
RECORDED_OPTIONS = ("ema", "aux", "input_size", "include_top")
LABELS = {"ema": "EMA settings", "aux": "auxiliary heads", "input_size": "input sizes", "include_top": "classifiers",
          "arch": "architectures"}


# path -> {size, mtime_ns, digest} of the checkpoint files hashed in this process: a file whose size and
# mtime are unchanged is not read again (a batch worker converts to several targets and verifies each)
_FILE_DIGESTS = {}


def checkpoint_hash(checkpoint):
    """The checkpoint's content hash: the one ``batch`` keys its outputs on (file names and their digests)."""
    from converter.batch import checkpoint_files, content_hash

    digest, entries = content_hash(checkpoint_files(checkpoint), _FILE_DIGESTS)
    _FILE_DIGESTS.update(entries)
    return digest


def table_name(table):
    """How a record names a table: a built-in's architecture, else the file's path."""
    path = pathlib.Path(table.path).resolve()
    if table.architecture in tables.builtin_tables() and \
            pathlib.Path(tables.load_table(table.architecture).path).resolve() == path:
        return table.architecture
    return str(path)


def end_points(plan):
    """The table's end points the plan holds, in graph order."""
    return [node.name for node, scope in graph.walk(plan.table.graph)
            if node.name in plan.table.facts.end_points and plan.keeps(node, scope)]


def make(plan, *, checkpoint, options):
    """The record of a port of ``checkpoint`` made by ``plan`` with ``options`` (an ``Options``, ``ema`` resolved)."""
    table = plan.table
    spec = table.facts.input
    points = end_points(plan)
    if plan.target == "onnx":
        # the ONNX model outputs its last end point and those --outputs names
        wanted = set(options.outputs or ()) | {points[-1]} if points else set()
        points = [name for name in points if name in wanted]
    elif plan.target == "keras":
        points = points[-1:]
    record = dict(plan.provenance())
    record.update({
        "ckpt_convert_version": __version__,
        "target": plan.target,
        "table": table_name(table),
        "table_blake2b": table.digest,
        "checkpoint": str(checkpoint) if storage.is_url(checkpoint) else str(pathlib.Path(checkpoint).resolve()),
        "checkpoint_blake2b": checkpoint_hash(checkpoint),
        "ema": TRUE if options.ema else FALSE,
        "background_option": options.background,
        "aux": "auto" if options.aux else FALSE,
        "include_top": TRUE if options.include_top else FALSE,
        "dtype": options.dtype or "float32",
        "input_layout": options.input_layout or LAYOUTS[plan.target],
        "input_range": json.dumps(list(spec.range)),
        "end_points": ",".join(points),
        "strict": TRUE if options.strict else FALSE,
    })
    if plan.target == "torch":
        record["source_shapes"] = json.dumps(_source_shapes(plan), separators=(",", ":"))
    if plan.target == "onnx":
        from converter.writers.onnx import DEFAULT_OPSET

        record["opset"] = str(options.opset or DEFAULT_OPSET)
    return record


def _source_shapes(plan):
    # every checkpoint variable the plan reads, relative to the network's root, without the EMA suffix
    shapes = {}
    for entry in plan.entries:
        if entry.source is None:
            continue
        name = entry.source.removesuffix(tables.EMA_SUFFIX)
        shapes[name[len(plan.root):]] = list(entry.source_shape)
    return shapes


def read(path):
    """The record a port holds (``{}`` for a file that records none or cannot be read)."""
    path = pathlib.Path(path)
    name = path.name
    try:
        if name.endswith(".safetensors"):
            return _read_safetensors(path)
        if name.endswith(".onnx"):
            return _read_onnx(path)
        if name.endswith(".h5"):
            return _read_h5(path)
        if name.endswith(".pth"):
            return _read_pth(path)
    except (OSError, ValueError, KeyError, TypeError, AttributeError, struct.error, RuntimeError):
        return {}
    return {}


def _strings(mapping):
    return {str(k): str(v) for k, v in mapping.items()} if isinstance(mapping, dict) else {}


def _read_safetensors(path):
    with open(path, "rb") as f:
        (size,) = struct.unpack("<Q", f.read(8))
        metadata = json.loads(f.read(min(size, MAX_HEADER))).get("__metadata__")
    return _strings(metadata)


def _read_onnx(path):
    try:
        import onnx
        from google.protobuf.message import DecodeError
    except ImportError:
        return {}
    try:
        model = onnx.load(str(path), load_external_data=False)
    except DecodeError:
        return {}
    return {prop.key: prop.value for prop in model.metadata_props}


def _read_h5(path):
    try:
        import h5py
    except ImportError:
        return {}
    with h5py.File(path, "r") as f:
        return {key: (value.decode() if isinstance(value, bytes) else str(value))
                for key, value in f.attrs.items() if key in FIELDS}


def _read_pth(path):
    try:
        import torch
    except ImportError:
        return {}
    import pickle

    try:
        state = torch.load(str(path), map_location="cpu", weights_only=True, mmap=True)
    except (pickle.UnpicklingError, EOFError):
        return {}
    return _strings((getattr(state, "_metadata", None) or {}).get(PTH_KEY))


def options(record):
    """The ``verify`` keyword arguments a record implies (only those it holds).

    ``background`` is left out on purpose: ``verify`` derives the class correspondence from the
    class counts, and a port that drops a class must be declared by the user (``--drop-background``).
    """
    found = {}
    if record.get("table"):
        found["mapping" if pathlib.Path(record["table"]).is_absolute() else "arch"] = record["table"]
    if "ema" in record:
        found["ema"] = record["ema"] == TRUE
    if "aux" in record:
        found["aux"] = record["aux"] != FALSE
    if record.get("input_size"):
        try:
            found["input_size"] = sizes.parse(record["input_size"])
        except ValueError:
            pass  # a damaged record: the port's own checks judge the file
    if "include_top" in record:
        found["include_top"] = record["include_top"] != FALSE
    return found


def shown(option, value):
    """An option's value as a record (and a message) writes it: ``299x299``, ``true``, ``false``."""
    return _shown(option, value)


def _shown(option, value):
    if option == "input_size" and value is not None:
        return "x".join(map(str, value))
    if option == "aux":
        return "false" if value is False else "auto"
    if option == "include_top":
        return "false" if value is False else "true"
    return str(value).lower() if isinstance(value, bool) else str(value)


def _flag(option, value):
    return {"ema": "--ema" if value else "no --ema", "aux": "--no-aux" if value is False else "no --no-aux",
            "include_top": "--no-top" if value is False else "no --no-top"}.get(
        option, f"{FLAGS.get(option, option)} {_shown(option, value)}")


def agree(records, given):
    """The options a set of ports was made with, checked against the options ``given`` explicitly.

    ``records`` maps a file name to its record (``read``); ``given`` holds only the options the user
    passed (``arch``, ``mapping``, ``ema``, ``aux``, ``input_size``, ``include_top``). Returns the options to
    verify with: the given ones, completed from the records. Raises ``ConvertError`` naming the
    option and the files where the ports disagree with each other or with a flag.
    """
    implied = {name: options(record) for name, record in records.items() if record}
    merged, problems = dict(given), []
    architectures = {name: record.get("architecture") for name, record in records.items() if record.get("architecture")}
    if len(set(architectures.values())) > 1:
        listed = ", ".join(f"{name} {arch}" for name, arch in architectures.items())
        problems.append(f"the ports are of different architectures ({listed}); verify them separately")
    elif given.get("arch") and architectures and given["arch"] not in architectures.values():
        problems.append(f"--arch {given['arch']}, but {', '.join(architectures)} "
                        f"{'is' if len(architectures) == 1 else 'are'} {next(iter(architectures.values()))}")
    if not given.get("arch") and not given.get("mapping") and not problems:
        tables_named = {found.get("arch") or found.get("mapping") for found in implied.values()} - {None}
        if len(tables_named) == 1:
            named = tables_named.pop()
            if not pathlib.Path(named).is_absolute():
                merged["arch"] = named
            elif pathlib.Path(named).is_file():
                merged["mapping"] = named
    for option in RECORDED_OPTIONS:
        values = {name: found[option] for name, found in implied.items() if option in found}
        if not values:
            continue
        shown = {_shown(option, value) for value in values.values()}
        if len(shown) > 1:
            listed = ", ".join(f"{name} {_flag(option, value)}" for name, value in values.items())
            problems.append(f"the ports were made with different {LABELS[option]} ({listed}); verify them separately")
            continue
        value = next(iter(values.values()))
        if option not in given:
            merged[option] = value
        elif _shown(option, given[option]) != _shown(option, value) and not _compatible(option, records, values):
            problems.append(f"{_flag(option, given[option])} given, but {', '.join(values)} "
                            f"{'was' if len(values) == 1 else 'were'} made with {_flag(option, value)}")
    if problems:
        raise ConvertError("; ".join(problems) + " (pass the options the files were made with, or none)")
    return merged


def _compatible(option, records, values):
    # --no-aux given for ports that hold no auxiliary head (the checkpoint had none): the same port
    return option == "aux" and not any("=kept" in records[name].get("heads", "") for name in values)


def plan_of(record, table):
    """The torch plan a record describes, for rebuilding the exact module without the checkpoint."""
    if record.get("target") != "torch" or "source_shapes" not in record:
        raise ConvertError("the file records no torch plan (source_shapes); it was not written by "
                           "ckpt-convert --to torch, or by an older version: convert it again")
    shapes = {name: tuple(shape) for name, shape in json.loads(record["source_shapes"]).items()}
    found = options(record)
    chosen = Options(background=record.get("background_option", tables.BACKGROUND_AUTO),
                     aux=found.get("aux", True), include_top=found.get("include_top", True),
                     input_size=found.get("input_size"))
    return tables.plan(shapes, table, "torch", **chosen.plan_arguments())


def table_of(record, mapping=None):
    """The mapping table a record names (``mapping`` overrides it), checked against the recorded hash."""
    name = mapping or record.get("table") or record.get("architecture")
    if not name:
        raise ConvertError("the file records no mapping table; pass mapping=")
    from converter.convert import table_for

    if not str(name).endswith((".yaml", ".yml", ".meta")) and not pathlib.Path(name).is_absolute():
        table = tables.load_table(name)
    else:
        if not pathlib.Path(name).is_file():
            raise ConvertError(f"the file was made with the mapping table {name}, which is not there; "
                               f"pass its new path (mapping=, or --mapping)")
        table = table_for([], mapping=name)
    recorded = record.get("table_blake2b")
    if recorded and mapping is None and table.digest != recorded:
        raise ConvertError(f"the mapping table {name} changed since the file was written "
                           f"(blake2b {recorded}, now {table.digest}); convert the checkpoint again")
    return table
