"""Read a TF1 ``MetaGraphDef`` (``model.ckpt.meta``) without TensorFlow.

    graph = read_meta_graph("model.ckpt.meta")
    node = graph.nodes["InceptionV3/Conv2d_1a_3x3/Conv2D"]
    node.op, node.inputs, node.attr("strides"), node.attr("padding")    # "Conv2D", (...), [1, 2, 2, 1], "VALID"

The file is parsed straight from protobuf's wire format with the field numbers of TensorFlow's
``meta_graph.proto``, ``graph.proto``, ``node_def.proto``, ``attr_value.proto``, ``tensor.proto``,
``tensor_shape.proto`` and ``saver.proto``. Nodes (name, op, inputs, device) are read at once; a
node's attributes are decoded when first asked for, so a training graph of tens of thousands of
nodes reads in a fraction of a second. Every malformed input, whenever it is met, raises
``GraphError`` naming the file.
"""

import dataclasses
import functools
import pathlib
import re

import ml_dtypes
import numpy as np

from converter import storage
from converter.errors import GraphError
from converter.metagraph import _wire as wire
from converter.metagraph._wire import FIXED32, FIXED64, LENGTH_DELIMITED, VARINT, WireError

# MetaGraphDef (meta_graph.proto)
META_INFO, META_GRAPH, META_SAVER, META_COLLECTIONS = 1, 2, 3, 4
INFO_VERSION, INFO_STRIPPED_OPS, INFO_TAGS, INFO_TF_VERSION, INFO_TF_GIT_VERSION = 1, 2, 4, 5, 6
OP_LIST_OP, OP_DEF_NAME = 1, 1
# CollectionDef: a oneof of lists, each holding its items in field 1
COLLECTION_KINDS = {1: "node_list", 2: "bytes_list", 3: "int64_list", 4: "float_list", 5: "any_list"}
LIST_VALUE = 1
# SaverDef (saver.proto)
SAVER_FIELDS = {1: "filename_tensor_name", 2: "save_tensor_name", 3: "restore_op_name", 4: "max_to_keep",
                5: "sharded", 6: "keep_checkpoint_every_n_hours", 7: "version"}
SAVER_TEXT = (1, 2, 3)
SAVER_VERSIONS = {0: "LEGACY", 1: "V1", 2: "V2"}
# GraphDef (graph.proto), VersionDef (versions.proto)
GRAPH_NODE, GRAPH_LIBRARY, GRAPH_VERSIONS = 1, 2, 4
VERSION_PRODUCER = 1
# NodeDef (node_def.proto)
NODE_NAME, NODE_OP, NODE_INPUT, NODE_DEVICE, NODE_ATTR = 1, 2, 3, 4, 5
# AttrValue (attr_value.proto): the oneof's fields; ListValue uses the same numbers for its lists
ATTR_LIST, ATTR_S, ATTR_I, ATTR_F, ATTR_B, ATTR_TYPE, ATTR_SHAPE, ATTR_TENSOR = 1, 2, 3, 4, 5, 6, 7, 8
ATTR_PLACEHOLDER, ATTR_FUNC = 9, 10
LIST_FUNC = 9
NAME_ATTR_LIST_NAME = 1
# TensorShapeProto (tensor_shape.proto)
SHAPE_DIM, SHAPE_UNKNOWN_RANK = 2, 3
DIM_SIZE = 1
UNKNOWN_SIZE = -1
# TensorProto (tensor.proto)
TENSOR_DTYPE, TENSOR_SHAPE, TENSOR_CONTENT = 1, 2, 4
# typed value fields: field -> (wire width: "varint" or bytes per item, how the numbers read)
TENSOR_VALUES = {
    5: (4, "<f4"),     # float_val
    6: (8, "<f8"),     # double_val
    7: (VARINT, None),  # int_val: int32, int16, int8, uint8, uint16
    9: (4, "<f4"),     # scomplex_val, real and imaginary parts interleaved
    10: (VARINT, None),  # int64_val
    11: (VARINT, None),  # bool_val
    12: (8, "<f8"),    # dcomplex_val
    13: (VARINT, None),  # half_val: the 16 bits of each float16 or bfloat16
    16: (VARINT, None),  # uint32_val
    17: (VARINT, None),  # uint64_val
}
TENSOR_STRINGS = 8

# DataType (types.proto): enum value -> name; reference types are the base type + 100
DTYPES = {
    1: "float32", 2: "float64", 3: "int32", 4: "uint8", 5: "int16", 6: "int8", 7: "string", 8: "complex64",
    9: "int64", 10: "bool", 11: "qint8", 12: "quint8", 13: "qint32", 14: "bfloat16", 15: "qint16", 16: "quint16",
    17: "uint16", 18: "complex128", 19: "float16", 20: "resource", 21: "variant", 22: "uint32", 23: "uint64",
}
REF_OFFSET = 100
REF_SUFFIX = "_ref"
# the numpy dtypes constants are decoded to (others keep their dtype name and no value)
NUMPY_DTYPES = {name: np.dtype(name) for name in (
    "float32", "float64", "int32", "uint8", "int16", "int8", "complex64", "int64", "bool", "uint16",
    "complex128", "float16", "uint32", "uint64")} | {"bfloat16": np.dtype(ml_dtypes.bfloat16)}
# 16-bit floats travel as their bits in half_val
HALF_BITS = np.dtype("<u2")
# constants are decoded up to this many elements; larger ones (an embedded weight) keep value None
MAX_CONSTANT_ELEMENTS = 1 << 22

# a node's name and op as TensorFlow allows them (node_def.proto; ops may be functions of the library)
NODE_NAME_PATTERN = re.compile(r"[A-Za-z0-9.][A-Za-z0-9_./>-]*")
OP_PATTERN = re.compile(r"[A-Za-z0-9_.>-]+")
CONTROL_PREFIX = "^"
VARIABLE_OPS = ("VariableV2", "Variable", "VarHandleOp")
PORT_SEPARATOR = ":"


@dataclasses.dataclass(frozen=True)
class Shape:
    """A tensor shape as the graph states it: ``dims`` None for an unknown rank, a dimension None for an unknown size."""

    dims: tuple | None

    @property
    def rank(self):
        return None if self.dims is None else len(self.dims)

    @property
    def fully_known(self):
        return self.dims is not None and all(size is not None for size in self.dims)

    def __str__(self):
        if self.dims is None:
            return "<unknown>"
        return "[" + ", ".join("?" if size is None else str(size) for size in self.dims) + "]"


@dataclasses.dataclass(frozen=True)
class Tensor:
    """A constant tensor: its dtype name, shape, and values (None where too large or of a type not decoded)."""

    dtype: str
    shape: tuple
    value: np.ndarray | None = dataclasses.field(compare=False, repr=False)


@dataclasses.dataclass(frozen=True)
class Ref:
    """A node's output: ``name:port`` (``name`` alone is port 0)."""

    node: str
    port: int = 0

    def __str__(self):
        return self.node if self.port == 0 else f"{self.node}{PORT_SEPARATOR}{self.port}"


def parse_ref(text):
    """``"name:1"`` -> ``Ref("name", 1)``; ``"name"`` -> port 0. A control input (``^name``) is refused."""
    if text.startswith(CONTROL_PREFIX):
        raise ValueError(f"{text} is a control input, not a tensor")
    name, colon, port = text.rpartition(PORT_SEPARATOR)
    if colon and port.isdigit():
        return Ref(name, int(port))
    return Ref(text, 0)


@dataclasses.dataclass(frozen=True)
class Collection:
    """One collection: its list kind (``node_list``, ``bytes_list``, ``int64_list``, ``float_list``, ``any_list``) and items."""

    kind: str
    values: tuple


@dataclasses.dataclass(frozen=True)
class SaverDef:
    """How the graph's ``tf.train.Saver`` saves and restores."""

    filename_tensor_name: str = ""
    save_tensor_name: str = ""
    restore_op_name: str = ""
    max_to_keep: int = 0
    sharded: bool = False
    keep_checkpoint_every_n_hours: float = 0.0
    version: str = "LEGACY"


class Node:
    """One NodeDef: name, op, inputs as written (``x``, ``x:1``, ``^x``), device, and lazily decoded attributes."""

    __slots__ = ("name", "op", "inputs", "device", "_entries", "_attrs_by_key", "_decoded", "_path")

    def __init__(self, name, op, inputs, device, entries, path):
        self.name, self.op, self.inputs, self.device = name, op, inputs, device
        self._entries = entries  # the attr map's entries as bytes, split into keys on first use
        self._attrs_by_key = None
        self._decoded = {}
        self._path = path

    @property
    def _attrs(self):
        # key -> AttrValue bytes
        if self._attrs_by_key is None:
            try:
                self._attrs_by_key = dict(wire.map_entry(entry, "NodeDef.attr") for entry in self._entries)
            except WireError as error:
                raise GraphError(f"{self._path}: not a readable MetaGraphDef (node {self.name}: {error})") from None
        return self._attrs_by_key

    @property
    def data_inputs(self):
        """The tensors the node computes on, in order, as ``Ref``s."""
        return tuple(parse_ref(text) for text in self.inputs if not text.startswith(CONTROL_PREFIX))

    @property
    def control_inputs(self):
        """Names of the nodes that must run first (``^name`` inputs)."""
        return tuple(text[1:] for text in self.inputs if text.startswith(CONTROL_PREFIX))

    @property
    def attr_names(self):
        return tuple(self._attrs)

    def has_attr(self, key):
        return key in self._attrs

    def attr(self, key, default=None):
        """Attribute ``key`` as Python data (str, int, float, bool, dtype name, Shape, Tensor, list), or ``default``."""
        if key not in self._attrs:
            return default
        if key not in self._decoded:
            try:
                self._decoded[key] = _attr_value(self._attrs[key])
            except WireError as error:
                raise GraphError(f"{self._path}: not a readable MetaGraphDef (node {self.name}, "
                                 f"attribute {key}: {error})") from None
        return self._decoded[key]

    def attrs(self):
        """Every attribute, decoded: ``{key: value}``."""
        return {key: self.attr(key) for key in self._attrs}

    def output_shapes(self):
        """The shapes of the node's outputs where the graph records them (``_output_shapes``), else None."""
        shapes = self.attr("_output_shapes")
        return shapes if isinstance(shapes, list) and all(isinstance(s, Shape) for s in shapes) else None

    def __repr__(self):
        return f"<Node {self.name} {self.op}>"


@dataclasses.dataclass
class MetaGraph:
    """A parsed MetaGraphDef."""

    path: pathlib.Path
    nodes: dict  # name -> Node, in graph order
    collections: dict  # name -> Collection
    saver: SaverDef | None
    tensorflow_version: str
    tags: tuple
    stripped_ops: tuple  # the op names meta_info_def lists
    producer: int  # the GraphDef producer version
    functions: int  # functions in the graph's library

    def node(self, name):
        """The node called ``name``; GraphError naming the file where there is none."""
        try:
            return self.nodes[name]
        except KeyError:
            raise GraphError(f"{self.path}: no node named {name!r} in the graph") from None

    @functools.cached_property
    def consumers(self):
        """``{node name: [(consumer node, input index), ...]}`` over data inputs."""
        found = {}
        for node in self.nodes.values():
            for index, ref in enumerate(node.data_inputs):
                found.setdefault(ref.node, []).append((node, index))
        return found

    @functools.cached_property
    def variables(self):
        """``{variable name: Shape}`` of the graph's variables (reference and resource ones)."""
        return {node.name: node.attr("shape") for node in self.nodes.values() if node.op in VARIABLE_OPS}

    def op_counts(self):
        """``{op: how many nodes}``, most frequent first."""
        counts = {}
        for node in self.nodes.values():
            counts[node.op] = counts.get(node.op, 0) + 1
        return dict(sorted(counts.items(), key=lambda item: (-item[1], item[0])))


def read_meta_graph(path):
    """Parse the MetaGraphDef at ``path``; GraphError naming the file when it cannot be read or is not one."""
    path = storage.path(path)
    try:
        data = path.read_bytes()
    except OSError as error:
        raise GraphError(f"{path}: cannot read ({error.strerror or error})") from None
    if not data:
        raise GraphError(f"{path}: empty file, not a MetaGraphDef")
    try:
        return _meta_graph(path, data)
    except (WireError, RecursionError, OverflowError, MemoryError) as error:
        detail = " ".join(str(error).split()) or type(error).__name__
        raise GraphError(f"{path}: not a readable MetaGraphDef ({detail})") from None


def _meta_graph(path, data):
    fields = {}
    for number, kind, value in wire.fields(data):
        if number in (META_INFO, META_GRAPH, META_SAVER, META_COLLECTIONS):
            wire.expect(number, kind, LENGTH_DELIMITED, "MetaGraphDef")
            fields.setdefault(number, []).append(value)
    if len(fields.get(META_INFO, ())) > 1 or META_GRAPH not in fields:
        # a GraphDef repeats field 1 (its nodes) where a MetaGraphDef has one meta_info_def
        raise WireError("no graph_def: the file is not a MetaGraphDef (a frozen GraphDef .pb is not read here)")
    nodes, producer, functions = _graph(path, fields[META_GRAPH][-1])
    if not nodes:
        raise WireError("its graph_def has no nodes")
    info = _meta_info(fields[META_INFO][-1]) if META_INFO in fields else {}
    saver = _saver(fields[META_SAVER][-1]) if META_SAVER in fields else None
    collections = dict(_collection_entry(entry) for entry in fields.get(META_COLLECTIONS, ()))
    return MetaGraph(path, nodes, collections, saver, info.get("tensorflow_version", ""), tuple(info.get("tags", ())),
                     tuple(info.get("stripped_ops", ())), producer, functions)


def _collection_entry(buf):
    name, entry = wire.map_entry(buf, "collection_def")
    return name, _collection(entry)


def _meta_info(buf):
    info = {"tags": [], "stripped_ops": []}
    for number, kind, value in wire.fields(buf):
        if number in (INFO_VERSION, INFO_TF_VERSION, INFO_TF_GIT_VERSION, INFO_TAGS):
            wire.expect(number, kind, LENGTH_DELIMITED, "MetaInfoDef")
            item = wire.text(value, "MetaInfoDef text")
            if number == INFO_TAGS:
                info["tags"].append(item)
            elif number == INFO_TF_VERSION:
                info["tensorflow_version"] = item
        elif number == INFO_STRIPPED_OPS and kind == LENGTH_DELIMITED:
            info["stripped_ops"] = _op_names(value)
    return info


def _op_names(buf):
    # field 2 of MetaInfoDef is the stripped OpList; the first MetaGraphDefs (2016) held any_info bytes
    # there: information only, so what does not read as an OpList is left out rather than refused
    names = []
    try:
        for number, kind, op in wire.fields(buf):
            if number == OP_LIST_OP and kind == LENGTH_DELIMITED:
                names += [wire.text(name, "OpDef.name") for n, k, name in wire.fields(op)
                          if n == OP_DEF_NAME and k == LENGTH_DELIMITED]
    except WireError:
        return []
    return names


def _collection(buf):
    kind, values = None, []
    for number, wire_type, value in wire.fields(buf):
        if number not in COLLECTION_KINDS:
            continue
        wire.expect(number, wire_type, LENGTH_DELIMITED, "CollectionDef")
        kind = COLLECTION_KINDS[number]
        for item_number, item_wire, item in wire.fields(value):
            if item_number != LIST_VALUE:
                continue
            if kind == "node_list":
                wire.expect(item_number, item_wire, LENGTH_DELIMITED, "NodeList")
                values.append(wire.text(item, "NodeList value"))
            elif kind in ("bytes_list", "any_list"):
                wire.expect(item_number, item_wire, LENGTH_DELIMITED, kind)
                values.append(bytes(item))
            elif kind == "int64_list":
                values += [wire.to_int64(v) for v in wire.varints(item_wire, item, item_number, kind)]
            else:
                values += np.frombuffer(wire.fixed(item_wire, item, item_number, kind, 4), "<f4").tolist()
    return Collection(kind or "empty", tuple(values))


def _saver(buf):
    found = {}
    for number, kind, value in wire.fields(buf):
        field = SAVER_FIELDS.get(number)
        if field is None:
            continue
        if number in SAVER_TEXT:
            wire.expect(number, kind, LENGTH_DELIMITED, "SaverDef")
            found[field] = wire.text(value, f"SaverDef.{field}")
        elif field == "keep_checkpoint_every_n_hours":
            wire.expect(number, kind, FIXED32, "SaverDef")
            found[field] = float(np.frombuffer(value.to_bytes(4, "little"), "<f4")[0])
        else:
            wire.expect(number, kind, VARINT, "SaverDef")
            found[field] = bool(value) if field == "sharded" else wire.to_int64(value)
    if "version" in found:
        found["version"] = SAVER_VERSIONS.get(found["version"], str(found["version"]))
    return SaverDef(**found)


def _graph(path, buf):
    nodes, producer, functions = {}, 0, 0
    for number, kind, value in wire.fields(buf):
        if number == GRAPH_NODE:
            wire.expect(number, kind, LENGTH_DELIMITED, "GraphDef")
            node = _node(path, value)
            if node.name in nodes:
                raise WireError(f"two nodes are named {node.name}")
            nodes[node.name] = node
        elif number == GRAPH_VERSIONS:
            wire.expect(number, kind, LENGTH_DELIMITED, "GraphDef")
            for version_number, version_kind, version in wire.fields(value):
                if version_number == VERSION_PRODUCER:
                    wire.expect(version_number, version_kind, VARINT, "VersionDef")
                    producer = wire.to_int64(version)
        elif number == GRAPH_LIBRARY:
            wire.expect(number, kind, LENGTH_DELIMITED, "GraphDef")
            functions = sum(1 for _ in wire.fields(value))
    return nodes, producer, functions


def _node(path, buf):
    # the hot loop of reading a graph (a training graph has tens of thousands of nodes): NodeDef's fields
    # are all length-delimited, decoded inline; attribute entries are kept as bytes until asked for
    name = op = device = ""
    inputs, attrs = [], []
    pos, end = 0, len(buf)
    while pos < end:
        key = buf[pos]
        pos += 1
        if key >= 0x80:
            key, pos = wire.read_varint(buf, pos - 1)
        number, kind = key >> 3, key & 7
        if kind != LENGTH_DELIMITED:
            if number in (NODE_NAME, NODE_OP, NODE_INPUT, NODE_DEVICE, NODE_ATTR):
                wire.expect(number, kind, LENGTH_DELIMITED, "NodeDef")
            pos = _skip(buf, pos, number, kind)
            continue
        if pos >= end:
            raise WireError("truncated NodeDef")
        length = buf[pos]
        pos += 1
        if length >= 0x80:
            length, pos = wire.read_varint(buf, pos - 1)
        stop = pos + length
        if stop > end:
            raise WireError(f"NodeDef field {number} runs past the end of its message")
        if number == NODE_INPUT:
            inputs.append(wire.text(buf[pos:stop], "NodeDef.input"))
        elif number == NODE_ATTR:
            attrs.append(buf[pos:stop])
        elif number == NODE_NAME:
            name = wire.text(buf[pos:stop], "NodeDef.name")
        elif number == NODE_OP:
            op = wire.text(buf[pos:stop], "NodeDef.op")
        elif number == NODE_DEVICE:
            device = wire.text(buf[pos:stop], "NodeDef.device")
        pos = stop
    if not NODE_NAME_PATTERN.fullmatch(name):
        raise WireError(f"a node has the name {name[:80]!r}, which TensorFlow does not allow")
    if not OP_PATTERN.fullmatch(op):
        raise WireError(f"node {name} has the op {op[:80]!r}, which TensorFlow does not allow")
    return Node(name, op, tuple(inputs), device, attrs, path)


def _skip(buf, pos, number, kind):
    # a field of another wire type that NodeDef does not define (a newer TensorFlow's): step over it
    if kind == VARINT:
        return wire.read_varint(buf, pos)[1]
    width = {FIXED64: 8, FIXED32: 4}.get(kind)
    if width is None or pos + width > len(buf):
        raise WireError(f"NodeDef field {number} has wire type {kind}")
    return pos + width


def dtype_name(value):
    """A DataType enum value as a name: ``float32``, ``float32_ref``, or ``DataType 99``."""
    if value > REF_OFFSET and value - REF_OFFSET in DTYPES:
        return DTYPES[value - REF_OFFSET] + REF_SUFFIX
    return DTYPES.get(value, f"DataType {value}")


def _attr_value(buf):
    value = None
    for number, kind, item in wire.fields(buf):
        if number == ATTR_LIST:
            wire.expect(number, kind, LENGTH_DELIMITED, "AttrValue")
            value = _attr_list(item)
        elif number in (ATTR_S, ATTR_PLACEHOLDER):
            wire.expect(number, kind, LENGTH_DELIMITED, "AttrValue")
            value = _string(item)
        elif number == ATTR_I:
            wire.expect(number, kind, VARINT, "AttrValue")
            value = wire.to_int64(item)
        elif number == ATTR_F:
            wire.expect(number, kind, FIXED32, "AttrValue")
            value = float(np.frombuffer(item.to_bytes(4, "little"), "<f4")[0])
        elif number == ATTR_B:
            wire.expect(number, kind, VARINT, "AttrValue")
            value = bool(item)
        elif number == ATTR_TYPE:
            wire.expect(number, kind, VARINT, "AttrValue")
            value = dtype_name(item)
        elif number == ATTR_SHAPE:
            wire.expect(number, kind, LENGTH_DELIMITED, "AttrValue")
            value = parse_shape(item)
        elif number == ATTR_TENSOR:
            wire.expect(number, kind, LENGTH_DELIMITED, "AttrValue")
            value = parse_tensor(item)
        elif number == ATTR_FUNC:
            wire.expect(number, kind, LENGTH_DELIMITED, "AttrValue")
            value = _function_name(item)
    return value


def _string(item):
    # attribute strings are bytes in the proto; those that are text (padding, data_format) read as str
    try:
        return str(item, "utf-8")
    except UnicodeDecodeError:
        return bytes(item)


def _function_name(buf):
    for number, kind, item in wire.fields(buf):
        if number == NAME_ATTR_LIST_NAME:
            wire.expect(number, kind, LENGTH_DELIMITED, "NameAttrList")
            return wire.text(item, "NameAttrList.name")
    return ""


def _attr_list(buf):
    # a ListValue fills one of its lists; the list that has items is the value ([] when all are empty)
    lists = {}
    for number, kind, item in wire.fields(buf):
        found = lists.setdefault(number, [])
        if number == ATTR_S:
            wire.expect(number, kind, LENGTH_DELIMITED, "ListValue")
            found.append(_string(item))
        elif number in (ATTR_I, ATTR_B, ATTR_TYPE):
            values = wire.varints(kind, item, number, "ListValue")
            found += [wire.to_int64(v) if number == ATTR_I else bool(v) if number == ATTR_B else dtype_name(v)
                      for v in values]
        elif number == ATTR_F:
            found += np.frombuffer(wire.fixed(kind, item, number, "ListValue", 4), "<f4").tolist()
        elif number == ATTR_SHAPE:
            wire.expect(number, kind, LENGTH_DELIMITED, "ListValue")
            found.append(parse_shape(item))
        elif number == ATTR_TENSOR:
            wire.expect(number, kind, LENGTH_DELIMITED, "ListValue")
            found.append(parse_tensor(item))
        elif number == LIST_FUNC:
            wire.expect(number, kind, LENGTH_DELIMITED, "ListValue")
            found.append(_function_name(item))
    return next((values for values in lists.values() if values), [])


def parse_shape(buf):
    """TensorShapeProto -> ``Shape``."""
    dims, unknown_rank = [], False
    for number, kind, item in wire.fields(buf):
        if number == SHAPE_DIM:
            wire.expect(number, kind, LENGTH_DELIMITED, "TensorShapeProto")
            size = 0
            for dim_number, dim_kind, dim_value in wire.fields(item):
                if dim_number == DIM_SIZE:
                    wire.expect(dim_number, dim_kind, VARINT, "Dim")
                    size = wire.to_int64(dim_value)
            if size < UNKNOWN_SIZE:
                raise WireError(f"a tensor shape has the dimension {size}")
            dims.append(None if size == UNKNOWN_SIZE else size)
        elif number == SHAPE_UNKNOWN_RANK:
            wire.expect(number, kind, VARINT, "TensorShapeProto")
            unknown_rank = bool(kind == VARINT and item)
    if unknown_rank and dims:
        raise WireError("a tensor shape has dimensions and an unknown rank")
    return Shape(None if unknown_rank else tuple(dims))


def parse_tensor(buf):
    """TensorProto -> ``Tensor``, its values decoded from ``tensor_content`` or the typed ``*_val`` fields."""
    dtype, shape, content, typed, strings = 0, Shape(()), None, {}, []
    for number, kind, item in wire.fields(buf):
        if number == TENSOR_DTYPE:
            wire.expect(number, kind, VARINT, "TensorProto")
            dtype = item
        elif number == TENSOR_SHAPE:
            wire.expect(number, kind, LENGTH_DELIMITED, "TensorProto")
            shape = parse_shape(item)
        elif number == TENSOR_CONTENT:
            wire.expect(number, kind, LENGTH_DELIMITED, "TensorProto")
            content = bytes(item)
        elif number == TENSOR_STRINGS:
            wire.expect(number, kind, LENGTH_DELIMITED, "TensorProto")
            strings.append(bytes(item))
        elif number in TENSOR_VALUES:
            width, _ = TENSOR_VALUES[number]
            chunk = typed.setdefault(number, [])
            if width == VARINT:
                chunk += wire.varints(kind, item, number, "TensorProto")
            else:
                chunk.append(wire.fixed(kind, item, number, "TensorProto", width))
    if not shape.fully_known:
        raise WireError(f"a constant tensor has the shape {shape}")
    name = dtype_name(dtype)
    return Tensor(name, shape.dims, _tensor_value(name, shape.dims, content, typed, strings))


def _tensor_value(name, dims, content, typed, strings):
    size = int(np.prod(dims, dtype=np.float64))
    if size > MAX_CONSTANT_ELEMENTS:
        return None
    if name == "string":
        values = np.array(strings + [b""] * (not strings), dtype=object)
        return _fill(values, size, dims)
    dtype = NUMPY_DTYPES.get(name)
    if dtype is None:
        return None
    if content is not None:
        if len(content) != size * dtype.itemsize:
            raise WireError(f"a {name} constant of shape {list(dims)} holds {len(content)} bytes")
        layout = HALF_BITS if name == "bfloat16" else dtype.newbyteorder("<")
        return np.frombuffer(content, layout).view(dtype).reshape(dims).copy()
    for number, chunk in typed.items():
        width, layout = TENSOR_VALUES[number]
        if width == VARINT:
            values = np.array([_integer(v, number) for v in chunk], dtype=np.int64 if number != 17 else np.uint64)
            if name in ("float16", "bfloat16"):
                values = values.astype(HALF_BITS).view(dtype)
        else:
            values = np.frombuffer(b"".join(chunk), layout)
            if name in ("complex64", "complex128"):
                values = values[0::2] + 1j * values[1::2]
        return _fill(values.astype(dtype), size, dims)
    return np.zeros(dims, dtype)


def _integer(value, number):
    # int_val and int64_val are signed; bool_val, half_val, uint32_val and uint64_val are not
    return wire.to_int64(value) if number in (7, 10) else value


def _fill(values, size, dims):
    # TensorProto version 0: fewer values than elements repeat the last one to fill the shape
    if len(values) > size:
        raise WireError(f"a constant of shape {list(dims)} holds {len(values)} values")
    if len(values) < size:
        values = np.concatenate([values, np.repeat(values[-1:], size - len(values))]) if len(values) else \
            np.zeros(size, values.dtype)
    return values.reshape(dims)
