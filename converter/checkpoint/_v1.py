"""V1 checkpoints: one table file of SavedTensorSlices (``saved_tensor_slice.proto``).

Entry ``""`` holds the metadata (every tensor's name, shape, dtype and slices); each slice's values
are a TensorProto under its ordered-code slice key, in typed ``*_val`` fields (as the V1 saver
writes them, see ``saved_tensor_slice_util.h``) or in ``tensor_content``.
"""

import math
import glob
import mmap

import numpy as np

from converter import storage
from converter.checkpoint import _dtypes, _proto, _repeated, _slices
from converter.checkpoint._table import Table
from converter.errors import CheckpointError, join_problems

META_KEY = b""
# problems named in one error before the rest are counted
SHOWN_PROBLEMS = 5
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
# the fewest bytes an element takes in an entry: a packed varint one, a string its tag and length
MIN_ELEMENT_BYTES = {VARINT: 1, BYTES: 2}
# the fixed-width wire representation of complex values is their float components
FIXED_COMPONENTS = {np.dtype(np.complex64): np.dtype("<f4"), np.dtype(np.complex128): np.dtype("<f8")}
# the wire type of one unpacked fixed-width element, by its width
UNPACKED_FIXED = {4: _proto.FIXED32, 8: _proto.FIXED64}


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
        self.path = storage.path(path)
        if storage.is_url(self.path):
            files = [self.path] if self.path.is_file() else self.path.parent.glob(self.path.name)
        else:
            pattern = glob.escape(str(self.path.parent)) + "/" + self.path.name
            files = [self.path] if self.path.is_file() else sorted(glob.glob(pattern))
        if not files:
            raise self._error("no such file")
        self.bytes_read = 0
        self._buffers = []  # kept open for the tables' lifetime
        self._meta, self._slices, problems = {}, {}, []
        for file in files:
            table = self._open(storage.path(file))
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
        problems += self._partition_problems()
        if problems:
            raise self._error(join_problems(problems, "; ", SHOWN_PROBLEMS))

    def _partition_problems(self):
        # every slice is its own entry: slices that tile their tensor never assemble into more than is stored
        problems = []
        for name, parts in self._slices.items():
            try:
                _slices.check_partition(name, [extents for extents, _ in parts], self._meta[name].shape)
            except _proto.ProtoError as error:
                problems.append(f"{error} (corrupt file)")
        return problems

    def _open(self, path):
        if storage.is_url(path):
            # a V1 file interleaves values with the table's keys: a conversion needs nearly all of it
            buffer = path.read_bytes()
            self.bytes_read += len(buffer)
            self._buffers.append(buffer)
            return Table(path, buffer)
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
        if dtype == object:  # strings: their stored size, without decoding them
            stored = (table.get(_slices.slice_key(item.name, extents)) for extents, table in self._slices[name])
            return dtype, item.shape, sum(len(value) for value in stored if value is not None)
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
        width = FIXED_COMPONENTS.get(dtype, dtype).itemsize
        # every element takes some bytes of the entry: a claim of more elements is refused unread
        least = width if encoding == FIXED else MIN_ELEMENT_BYTES[encoding]
        if count * least > len(proto):
            raise self._error(f"'{name}' claims {count} values in an entry of {len(proto)} bytes (corrupt file)")
        if encoding == BYTES:
            values, _ = _repeated.strings(proto, number)
            array = np.empty(len(values), dtype=object)
            array[:] = values
            array.flags.writeable = False
        else:
            wire = _proto.VARINT if encoding == VARINT else UNPACKED_FIXED[width]
            values, others = _repeated.packed(memoryview(proto), number, wire)
            content = others.get(TENSOR_CONTENT)
            if content is not None and content[0] == _proto.LENGTH_DELIMITED:
                array = _fixed(content[1], dtype)
            elif encoding == FIXED:
                array = _fixed(values, dtype)
            else:
                array = _repeated.varints(values, dtype)
        if array.size != count:
            raise self._error(f"'{name}' holds {array.size} values where its shape needs {count} (corrupt file)")
        return array

    def close(self):
        # each map closes once the last array handed out (a view into it) is gone
        self._slices, self._buffers = {}, []


def _fixed(data, dtype):
    """Packed fixed-width values: a view straight into the file where they are one run."""
    if len(data) % dtype.itemsize:
        raise _proto.ProtoError("packed values of a partial element")
    return np.frombuffer(data, dtype=dtype)
