"""Minimal protobuf wire-format decoding of the few TensorFlow messages a checkpoint holds.

Only what the checkpoint formats use: varints, fixed32/fixed64 and length-delimited fields, with
repeated scalars packed or not. Every malformed input raises ``ProtoError`` (a ``ValueError``).
"""

import dataclasses

from converter._protobuf import (  # noqa: F401  (the readers of this package take them from here)
    FIXED32, FIXED64, LENGTH_DELIMITED, MAX_VARINT_BYTES, VARINT, read_varint, to_int64,
)
from converter._protobuf import WireError as ProtoError

FIXED_WIDTHS = {FIXED64: 8, FIXED32: 4}

# a dimension or extent length of -1 means "unknown" or "the whole dimension"
FULL_EXTENT = -1

# field numbers, from tensor_bundle.proto, tensor_shape.proto, tensor_slice.proto, versions.proto
# and saved_tensor_slice.proto
HEADER_NUM_SHARDS, HEADER_ENDIANNESS, HEADER_VERSION = 1, 2, 3
VERSION_PRODUCER, VERSION_MIN_CONSUMER, VERSION_BAD_CONSUMERS = 1, 2, 3
ENTRY_DTYPE, ENTRY_SHAPE, ENTRY_SHARD_ID, ENTRY_OFFSET, ENTRY_SIZE, ENTRY_CRC32C, ENTRY_SLICES = range(1, 8)
SHAPE_DIM, SHAPE_UNKNOWN_RANK = 2, 3
DIM_SIZE = 1
SLICE_EXTENT = 1
EXTENT_START, EXTENT_LENGTH = 1, 2
SAVED_META, SAVED_DATA = 1, 2
META_TENSOR = 1
SLICE_META_NAME, SLICE_META_SHAPE, SLICE_META_TYPE, SLICE_META_SLICE = 1, 2, 3, 4
SAVED_SLICE_NAME, SAVED_SLICE_SLICE, SAVED_SLICE_DATA = 1, 2, 3


def read_field(buf, pos):
    """Decode the field at ``pos`` of a memoryview: ``(field number, wire type, value, next position)``."""
    end = len(buf)
    key, pos = read_varint(buf, pos)
    number, wire = key >> 3, key & 7
    if number == 0:
        raise ProtoError("field number 0")
    if wire == VARINT:
        value, pos = read_varint(buf, pos)
    elif wire in FIXED_WIDTHS:
        width = FIXED_WIDTHS[wire]
        if pos + width > end:
            raise ProtoError("truncated fixed-width field")
        value = int.from_bytes(buf[pos : pos + width], "little")
        pos += width
    elif wire == LENGTH_DELIMITED:
        length, pos = read_varint(buf, pos)
        if pos + length > end:
            raise ProtoError("length-delimited field runs past the end of its message")
        value = buf[pos : pos + length]
        pos += length
    else:
        raise ProtoError(f"unsupported wire type {wire}")
    return number, wire, value, pos


def iter_fields(buf):
    """Yield ``(field number, wire type, value)``: an int, or a memoryview for length-delimited fields."""
    buf = memoryview(buf)
    pos = 0
    while pos < len(buf):
        number, wire, value, pos = read_field(buf, pos)
        yield number, wire, value


def _expect(wire, expected, what):
    if wire != expected:
        raise ProtoError(f"{what} has wire type {wire}, expected {expected}")


def parse_version(buf):
    """VersionDef -> (producer, min_consumer, bad_consumers)."""
    producer, min_consumer, bad = 0, 0, []
    for number, wire, value in iter_fields(buf):
        if number == VERSION_PRODUCER:
            _expect(wire, VARINT, "VersionDef.producer")
            producer = to_int64(value)
        elif number == VERSION_MIN_CONSUMER:
            _expect(wire, VARINT, "VersionDef.min_consumer")
            min_consumer = to_int64(value)
        elif number == VERSION_BAD_CONSUMERS:
            bad.extend(_varints(wire, value))
    return producer, min_consumer, tuple(bad)


@dataclasses.dataclass(frozen=True)
class BundleHeader:
    num_shards: int = 0
    endianness: int = 0
    min_consumer: int = 0
    bad_consumers: tuple = ()


def parse_header(buf):
    """BundleHeaderProto."""
    fields = {}
    for number, wire, value in iter_fields(buf):
        if number in (HEADER_NUM_SHARDS, HEADER_ENDIANNESS):
            _expect(wire, VARINT, "BundleHeaderProto field")
            fields[number] = to_int64(value)
        elif number == HEADER_VERSION:
            _expect(wire, LENGTH_DELIMITED, "BundleHeaderProto.version")
            fields[number] = parse_version(value)
    _, min_consumer, bad = fields.get(HEADER_VERSION, (0, 0, ()))
    return BundleHeader(
        fields.get(HEADER_NUM_SHARDS, 0), fields.get(HEADER_ENDIANNESS, 0), min_consumer, bad
    )


def parse_shape(buf):
    """TensorShapeProto -> tuple of dimension sizes."""
    dims = []
    for number, wire, value in iter_fields(buf):
        if number == SHAPE_DIM:
            _expect(wire, LENGTH_DELIMITED, "TensorShapeProto.dim")
            size = 0
            for dim_number, dim_wire, dim_value in iter_fields(value):
                if dim_number == DIM_SIZE:
                    _expect(dim_wire, VARINT, "Dim.size")
                    size = to_int64(dim_value)
            dims.append(size)
        elif number == SHAPE_UNKNOWN_RANK and value:
            raise ProtoError("tensor shape of unknown rank")
    if any(size < 0 for size in dims):
        raise ProtoError(f"tensor shape {tuple(dims)} has a negative dimension")
    return tuple(dims)


def parse_slice(buf):
    """TensorSliceProto -> tuple of (start, length) per dimension; length -1 means the whole dimension."""
    extents = []
    for number, wire, value in iter_fields(buf):
        if number == SLICE_EXTENT:
            _expect(wire, LENGTH_DELIMITED, "TensorSliceProto.extent")
            start, length = 0, FULL_EXTENT
            for ext_number, ext_wire, ext_value in iter_fields(value):
                if ext_number in (EXTENT_START, EXTENT_LENGTH):
                    _expect(ext_wire, VARINT, "Extent field")
                    if ext_number == EXTENT_START:
                        start = to_int64(ext_value)
                    else:
                        length = to_int64(ext_value)
            extents.append((start, length))
    return tuple(extents)


@dataclasses.dataclass(frozen=True)
class BundleEntry:
    dtype: int = 0
    shape: tuple = ()
    shard_id: int = 0
    offset: int = 0
    size: int = 0
    crc32c: int = 0
    slices: tuple = ()


def parse_entry(buf):
    """BundleEntryProto."""
    fields, slices = {}, []
    for number, wire, value in iter_fields(buf):
        if number in (ENTRY_DTYPE, ENTRY_SHARD_ID, ENTRY_OFFSET, ENTRY_SIZE):
            _expect(wire, VARINT, "BundleEntryProto field")
            fields[number] = to_int64(value)
        elif number == ENTRY_CRC32C:
            _expect(wire, FIXED32, "BundleEntryProto.crc32c")
            fields[number] = value
        elif number == ENTRY_SHAPE:
            _expect(wire, LENGTH_DELIMITED, "BundleEntryProto.shape")
            fields[number] = parse_shape(value)
        elif number == ENTRY_SLICES:
            _expect(wire, LENGTH_DELIMITED, "BundleEntryProto.slices")
            slices.append(parse_slice(value))
    entry = BundleEntry(
        dtype=fields.get(ENTRY_DTYPE, 0),
        shape=fields.get(ENTRY_SHAPE, ()),
        shard_id=fields.get(ENTRY_SHARD_ID, 0),
        offset=fields.get(ENTRY_OFFSET, 0),
        size=fields.get(ENTRY_SIZE, 0),
        crc32c=fields.get(ENTRY_CRC32C, 0),
        slices=tuple(slices),
    )
    if entry.offset < 0 or entry.size < 0 or entry.shard_id < 0:
        raise ProtoError("negative offset, size or shard id")
    return entry


@dataclasses.dataclass(frozen=True)
class SliceMeta:
    name: bytes
    shape: tuple
    dtype: int
    slices: tuple


def parse_saved_slices(buf):
    """SavedTensorSlices -> (list of SliceMeta or None, (name, slice, TensorProto bytes) or None)."""
    meta, data = None, None
    for number, wire, value in iter_fields(buf):
        if number == SAVED_META:
            _expect(wire, LENGTH_DELIMITED, "SavedTensorSlices.meta")
            meta = [_parse_slice_meta(tensor) for n, w, tensor in iter_fields(value) if n == META_TENSOR]
        elif number == SAVED_DATA:
            _expect(wire, LENGTH_DELIMITED, "SavedTensorSlices.data")
            data = _parse_saved_slice(value)
    return meta, data


def _parse_slice_meta(buf):
    name, shape, dtype, slices = b"", (), 0, []
    for number, wire, value in iter_fields(buf):
        if number == SLICE_META_NAME:
            _expect(wire, LENGTH_DELIMITED, "SavedSliceMeta.name")
            name = bytes(value)
        elif number == SLICE_META_SHAPE:
            _expect(wire, LENGTH_DELIMITED, "SavedSliceMeta.shape")
            shape = parse_shape(value)
        elif number == SLICE_META_TYPE:
            _expect(wire, VARINT, "SavedSliceMeta.type")
            dtype = to_int64(value)
        elif number == SLICE_META_SLICE:
            _expect(wire, LENGTH_DELIMITED, "SavedSliceMeta.slice")
            slices.append(parse_slice(value))
    return SliceMeta(name, shape, dtype, tuple(slices))


def _parse_saved_slice(buf):
    name, slice_, data = b"", (), None
    for number, wire, value in iter_fields(buf):
        if number == SAVED_SLICE_NAME:
            _expect(wire, LENGTH_DELIMITED, "SavedSlice.name")
            name = bytes(value)
        elif number == SAVED_SLICE_SLICE:
            _expect(wire, LENGTH_DELIMITED, "SavedSlice.slice")
            slice_ = parse_slice(value)
        elif number == SAVED_SLICE_DATA:
            _expect(wire, LENGTH_DELIMITED, "SavedSlice.data")
            data = value
    return name, slice_, data


def _varints(wire, value):
    if wire == VARINT:
        return [to_int64(value)]
    _expect(wire, LENGTH_DELIMITED, "packed varints")
    out, pos = [], 0
    while pos < len(value):
        number, pos = read_varint(value, pos)
        out.append(to_int64(number))
    return out
