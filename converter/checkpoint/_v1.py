"""V1 checkpoints: one table file of SavedTensorSlices (``saved_tensor_slice.proto``).

Entry ``""`` holds the metadata (every tensor's name, shape, dtype and slices); each slice's values
are a TensorProto under its ordered-code slice key, in typed ``*_val`` fields (as the V1 saver
writes them, see ``saved_tensor_slice_util.h``) or in ``tensor_content``.
"""

import math
import glob
import mmap
import pathlib

import numpy as np

from converter.checkpoint import _dtypes, _proto, _slices
from converter.checkpoint._table import Table
from converter.errors import CheckpointError

META_KEY = b""
TENSOR_CONTENT = 4  # TensorProto.tensor_content

# numpy dtype -> (TensorProto field number, how its elements are encoded)
FIXED, VARINT, BYTES = "fixed", "varint", "bytes"
VALUE_FIELDS = {
    np.dtype(np.float32): (5, FIXED),
    np.dtype(np.float64): (6, FIXED),
    np.dtype(np.int32): (7, VARINT),
    np.dtype(np.int16): (7, VARINT),
    np.dtype(np.int8): (7, VARINT),
    np.dtype(np.uint8): (7, VARINT),
    np.dtype(np.uint16): (7, VARINT),
    np.dtype(object): (8, BYTES),
    np.dtype(np.complex64): (9, FIXED),
    np.dtype(np.int64): (10, VARINT),
    np.dtype(np.bool_): (11, VARINT),
    np.dtype(np.complex128): (12, FIXED),
    _dtypes.NUMPY_DTYPES[19]: (13, VARINT),  # half_val holds the raw 16 bits of float16 ...
    _dtypes.NUMPY_DTYPES[14]: (13, VARINT),  # ... and of bfloat16
    np.dtype(np.uint32): (16, VARINT),
    np.dtype(np.uint64): (17, VARINT),
}
# the fixed-width wire representation of complex values is their float components
FIXED_COMPONENTS = {np.dtype(np.complex64): np.dtype("<f4"), np.dtype(np.complex128): np.dtype("<f8")}
# varint fields decode to uint64; this is the integer type the value bits are taken from
VARINT_SOURCE = {
    _dtypes.NUMPY_DTYPES[19]: np.dtype(np.uint16),
    _dtypes.NUMPY_DTYPES[14]: np.dtype(np.uint16),
}


def decode_varints(buf):
    """All varints in ``buf`` as a uint64 array (vectorised: values of up to 10 bytes each)."""
    data = np.frombuffer(buf, dtype=np.uint8)
    ends = np.flatnonzero(data < 0x80)
    if len(data) and (not len(ends) or ends[-1] != len(data) - 1):
        raise _proto.ProtoError("truncated packed varints")
    starts = np.concatenate(([0], ends[:-1] + 1))
    lengths = ends - starts + 1
    if len(lengths) and lengths.max() > _proto.MAX_VARINT_BYTES:
        raise _proto.ProtoError("varint longer than 10 bytes")
    out = np.zeros(len(ends), dtype=np.uint64)
    for byte in range(int(lengths.max()) if len(lengths) else 0):
        rows = lengths > byte
        out[rows] |= (data[starts[rows] + byte] & 0x7F).astype(np.uint64) << np.uint64(7 * byte)
    return out


def _parse(table, what, value):
    try:
        return _proto.parse_saved_slices(value)
    except _proto.ProtoError as error:
        raise CheckpointError(f"{table.path}: {what} does not parse ({error}): the file is corrupted") from error


class V1Checkpoint:
    """An open V1 checkpoint: one file, or the shards a glob pattern names (``model.ckpt-?????-of-00002``),
    memory-mapped; slices are looked up by their ordered-code keys."""

    format = "v1"

    def __init__(self, path):
        self.path = pathlib.Path(path)
        pattern = glob.escape(str(self.path.parent)) + "/" + self.path.name
        files = [self.path] if self.path.is_file() else sorted(glob.glob(pattern))
        if not files:
            raise self._error("no such file")
        self._buffers = []  # kept open for the tables' lifetime
        self._meta, self._slices, problems = {}, {}, []
        for file in files:
            table = self._open(pathlib.Path(file))
            for item in self._read_meta(table):
                name = item.name.decode("utf-8", "surrogateescape")
                known = self._meta.setdefault(name, item)
                if (known.shape, known.dtype) != (item.shape, item.dtype):
                    problems.append(f"'{name}' has a different shape or dtype in {file}")
                self._slices.setdefault(name, []).extend((extents, table) for extents in item.slices)
        problems += [
            f"'{name}' has unsupported dtype {_dtypes.describe(item.dtype)}"
            for name, item in self._meta.items()
            if _dtypes.numpy_dtype(item.dtype) is None
        ]
        if problems:
            raise self._error("; ".join(problems))

    def _open(self, path):
        try:
            with open(path, "rb") as file:
                size = file.seek(0, 2)
                buffer = mmap.mmap(file.fileno(), 0, access=mmap.ACCESS_READ) if size else b""
        except OSError as error:
            raise CheckpointError(f"{path}: cannot read ({error.strerror})") from error
        self._buffers.append(buffer)
        return Table(path, buffer)

    def _read_meta(self, table):
        value = table.get(META_KEY)
        meta = _parse(table, "the metadata", value)[0] if value is not None else None
        if meta is None:
            raise CheckpointError(f"{table.path}: no SavedTensorSlices metadata entry: not a V1 checkpoint")
        return meta

    def _error(self, problem):
        return CheckpointError(f"{self.path}: {problem}")

    def names(self):
        return list(self._meta)

    def describe(self, name):
        item = self._meta[name]
        dtype = _dtypes.numpy_dtype(item.dtype)
        if dtype == object:
            return dtype, item.shape, sum(len(value) for value in self.read(name).flat)
        return dtype, item.shape, math.prod(item.shape) * dtype.itemsize

    def read(self, name):
        item = self._meta[name]
        dtype = _dtypes.numpy_dtype(item.dtype)
        parts = [
            (extents, self._read_slice(name, item, extents, table, dtype)) for extents, table in self._slices[name]
        ]
        if len(parts) == 1 and parts[0][1].shape == item.shape:
            return parts[0][1]
        return _slices.assemble(item.shape, dtype, parts)

    def _read_slice(self, name, item, extents, table, dtype):
        shape = _slices.slice_shape(extents, item.shape)
        value = table.get(_slices.slice_key(item.name, extents))
        if value is None:
            problem = f"the data of '{name}' (slice {list(extents)}) is missing (corrupt file)"
            raise CheckpointError(f"{table.path}: {problem}")
        _, data = _parse(table, f"the entry of '{name}'", value)
        if data is None or data[0] != item.name or data[2] is None:
            raise CheckpointError(f"{table.path}: the entry for '{name}' holds no data for it (corrupt file)")
        array = self._tensor(name, data[2], dtype, math.prod(shape))
        return array.reshape(shape)

    def _tensor(self, name, proto, dtype, count):
        number, encoding = VALUE_FIELDS[dtype]
        chunks, content = [], None
        for field, wire, value in _proto.iter_fields(proto):
            if field == TENSOR_CONTENT and wire == _proto.LENGTH_DELIMITED:
                content = value
            elif field == number:
                chunks.append((wire, value))
        if content is not None and dtype != object:
            array = self._fixed([(_proto.LENGTH_DELIMITED, content)], dtype)
        elif encoding == FIXED:
            array = self._fixed(chunks, dtype)
        elif encoding == VARINT:
            array = self._varints(chunks, dtype)
        else:
            array = np.empty(len(chunks), dtype=object)
            array[:] = [bytes(value) for _, value in chunks]
            array.flags.writeable = False
        if array.size != count:
            raise self._error(f"'{name}' holds {array.size} values where its shape needs {count} (corrupt file)")
        return array

    def _fixed(self, chunks, dtype):
        wire_dtype = FIXED_COMPONENTS.get(dtype, dtype.newbyteorder("<"))
        if any(wire != _proto.LENGTH_DELIMITED for wire, _ in chunks):
            # unpacked repeated fixed-width values: each chunk is one decoded integer
            width = wire_dtype.itemsize
            raw = b"".join(
                value.to_bytes(width, "little") if isinstance(value, int) else bytes(value) for _, value in chunks
            )
            chunks = [(_proto.LENGTH_DELIMITED, memoryview(raw))]
        if len(chunks) == 1:
            data = chunks[0][1]  # one packed run: a view straight into the file
        else:
            data = b"".join(bytes(value) for _, value in chunks)
        if len(data) % dtype.itemsize:
            raise _proto.ProtoError("packed values of a partial element")
        return np.frombuffer(data, dtype=dtype)

    def _varints(self, chunks, dtype):
        parts = [
            decode_varints(value) if wire == _proto.LENGTH_DELIMITED else np.array([value], dtype=np.uint64)
            for wire, value in chunks
        ]
        values = np.concatenate(parts) if parts else np.zeros(0, dtype=np.uint64)
        source = VARINT_SOURCE.get(dtype)
        if source is not None:
            return values.astype(source).view(dtype)
        return values.astype(dtype) if dtype == np.bool_ else values.view(np.int64).astype(dtype)

    def close(self):
        # each map closes once the last array handed out (a view into it) is gone
        self._slices, self._buffers = {}, []
