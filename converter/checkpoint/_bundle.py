"""V2 tensor bundles: ``<prefix>.index`` (a table of BundleEntryProto) + ``<prefix>.data-NNNNN-of-MMMMM``.

Layout per ``tensorflow/core/util/tensor_bundle/tensor_bundle.{cc,proto}``. Entry ``""`` is the
BundleHeaderProto; every other entry names a tensor (or, under an ordered-code key, one slice of a
partitioned tensor whose full entry lists its ``slices``). Data files hold raw little-endian bytes.
"""

import contextlib
import math
import mmap
import struct

import numpy as np

from converter import storage
from converter.checkpoint import _crc, _dtypes, _proto, _slices
from converter.checkpoint._table import Table
from converter.errors import CheckpointError, join_problems

INDEX_SUFFIX = ".index"
HEADER_KEY = b""
LITTLE_ENDIAN = 0
SUPPORTED_VERSION = 1  # kTensorBundleVersion
OBJECT_GRAPH_KEY = "_CHECKPOINTABLE_OBJECT_GRAPH"
LENGTH_CHECKSUM_SIZE = 4
UINT32_MAX = 0xFFFFFFFF
COPY_ALL_SHARDS = "copy every data file next to the .index file"
CORRUPT_DATA = "the data file is corrupted; copy it again"
# problems named in one error before the rest are counted
SHOWN_PROBLEMS = 5


def data_filename(prefix, shard, num_shards):
    """``<prefix>.data-00000-of-00001`` (naming.cc)."""
    return storage.path(f"{prefix}.data-{shard:05d}-of-{num_shards:05d}")


def index_filename(prefix):
    return storage.path(f"{prefix}{INDEX_SUFFIX}")


class Bundle:
    """An open V2 bundle: the index parsed, data shards memory-mapped (remote ones read by ranges) on first use.

    ``index_only`` opens the index without its data shards (listing and describing work; reading
    does not): what ``inspect`` needs, and all it fetches from a store.
    """

    def __init__(self, prefix, index_only=False):
        self.prefix = storage.path(prefix)
        self.index_path = index_filename(self.prefix)
        self.index_only = index_only
        try:
            buffer = self.index_path.read_bytes()
        except OSError as error:
            raise CheckpointError(f"{self.index_path}: cannot read ({error.strerror or error})") from error
        self.bytes_read = len(buffer)
        self.bytes_stored = len(buffer)
        table = Table(self.index_path, buffer)
        raw = dict(table.items())
        if HEADER_KEY not in raw:
            raise self._error("no bundle header entry: not a V2 checkpoint index")
        header = self._parse(_proto.parse_header, HEADER_KEY, raw.pop(HEADER_KEY))
        self._check_header(header)
        self.num_shards = header.num_shards
        entries = {key: self._parse(_proto.parse_entry, key, value) for key, value in raw.items()}
        slice_keys = {
            _slices.slice_key(key, extents) for key, entry in entries.items() for extents in entry.slices
        }
        self._entries = entries
        # full entries only: a partitioned tensor's slices hide behind its full entry
        self._full = {key.decode("utf-8", "surrogateescape"): key for key in entries if key not in slice_keys}
        self._maps = {}
        self._check_entries()
        self._check_claims()
        self.format = "tf2" if OBJECT_GRAPH_KEY in self._full else "v2"

    def _error(self, problem, path=None):
        return CheckpointError(f"{path or self.index_path}: {problem}")

    def _parse(self, parser, key, value):
        try:
            return parser(value)
        except _proto.ProtoError as error:
            name = key.decode("utf-8", "replace") or "(header)"
            problem = f"entry '{name}' does not parse ({error}): the index is corrupted; copy it again"
            raise self._error(problem) from error

    def _check_header(self, header):
        if header.endianness != LITTLE_ENDIAN:
            raise self._error("big-endian checkpoint; only little-endian bundles are supported")
        if header.num_shards < 1:
            raise self._error(f"header says {header.num_shards} data shards (corrupt index)")
        if header.min_consumer > SUPPORTED_VERSION or SUPPORTED_VERSION in header.bad_consumers:
            raise self._error("written by a newer TensorFlow bundle format version than this reader supports")

    def _check_entries(self):
        problems, used = [], set()
        for name, key in self._full.items():
            entry = self._entries[key]
            if _dtypes.numpy_dtype(entry.dtype) is None:
                problems.append(f"'{name}' has unsupported dtype {_dtypes.describe(entry.dtype)}")
            for shard in self._shards_of(key):
                if shard >= self.num_shards:
                    problems.append(f"'{name}' is in shard {shard} of {self.num_shards} (corrupt index)")
                else:
                    used.add(shard)
        # once per shard: for a remote checkpoint each look is a request
        missing = set() if self.index_only else {
            shard for shard in used if not data_filename(self.prefix, shard, self.num_shards).is_file()}
        if missing:
            names = ", ".join(data_filename(self.prefix, s, self.num_shards).name for s in sorted(missing))
            problems.append(f"missing data shard {names}; {COPY_ALL_SHARDS}")
        self._raise(problems)

    def _raise(self, problems, path=None):
        if problems:
            raise self._error(join_problems(problems, "; ", SHOWN_PROBLEMS), path)

    def _check_claims(self):
        """Bound what reading can allocate by what the data files hold, from the index and file sizes alone.

        A partitioned tensor's slices must tile it (``_slices.check_partition``), every entry's bytes
        must lie inside its data file, and no two entries may claim the same bytes: TensorFlow writes
        each tensor once, so shared bytes are a crafted index, not a checkpoint.
        """
        claims, problems = {}, []  # claims: shard -> [(offset, end, name)]
        for name, key in self._full.items():
            entry = self._entries[key]
            parts = [self._entries[_slices.slice_key(key, extents)] for extents in entry.slices] or [entry]
            try:
                if entry.slices:
                    _slices.check_partition(name, entry.slices, entry.shape)
            except _proto.ProtoError as error:
                problems.append(f"{error} (corrupt index)")
            for part in parts:
                if part.size:
                    claims.setdefault(part.shard_id, []).append((part.offset, part.offset + part.size, name))
        self._raise(problems)
        for shard, ranges in sorted(claims.items()):
            if self.index_only:  # no data file to measure: overlapping claims are still a crafted index
                self._raise(_overlaps(sorted(ranges), math.inf))
                continue
            path = data_filename(self.prefix, shard, self.num_shards)
            size = path.stat().st_size
            self.bytes_stored += size
            self._raise(_overlaps(sorted(ranges), size), path)

    def _shards_of(self, key):
        entry = self._entries[key]
        if not entry.slices:
            return {entry.shard_id}
        shards = set()
        for extents in entry.slices:
            part = self._entries.get(_slices.slice_key(key, extents))
            if part is None:
                raise self._error(f"slice {extents} of '{key.decode('utf-8', 'replace')}' has no entry")
            shards.add(part.shard_id)
        return shards

    def names(self):
        return list(self._full)

    def describe(self, name):
        """(numpy dtype, shape, nbytes) of a full entry."""
        key = self._full[name]
        entry = self._entries[key]
        dtype = _dtypes.numpy_dtype(entry.dtype)
        if dtype == object:  # strings: their stored size
            parts = [self._entries[_slices.slice_key(key, extents)] for extents in entry.slices] or [entry]
            return dtype, entry.shape, sum(part.size for part in parts)
        return dtype, entry.shape, math.prod(entry.shape) * dtype.itemsize

    def read(self, name):
        key = self._full[name]
        entry = self._entries[key]
        dtype = _dtypes.numpy_dtype(entry.dtype)
        if not entry.slices:
            return self._read_entry(name, entry, dtype, entry.shape)
        parts = []
        for extents in entry.slices:
            part_entry = self._entries[_slices.slice_key(key, extents)]
            shape = _slices.slice_shape(extents, entry.shape)
            if part_entry.dtype != entry.dtype:
                raise self._error(f"a slice of '{name}' has a different dtype from the tensor (corrupt index)")
            parts.append((extents, self._read_entry(name, part_entry, dtype, shape)))
        return _slices.assemble(entry.shape, dtype, parts)

    def _parts(self, name):
        key = self._full[name]
        entry = self._entries[key]
        return [self._entries[_slices.slice_key(key, extents)] for extents in entry.slices] or [entry]

    def prefetch(self, names):
        """Fetch the bytes of ``names`` from remote data shards in few requests, several at once."""
        ranges = {}
        for name in names:
            for part in self._parts(name):
                ranges.setdefault(part.shard_id, []).append((part.offset, part.size))
        for shard, wanted in sorted(ranges.items()):
            _, buffer = self._map(shard)
            if isinstance(buffer, storage.RangedFile):
                with _counted(self, buffer):
                    buffer.prefetch(wanted)

    def _map(self, shard):
        if self.index_only:
            raise self._error("opened from its index alone; open it with its data files to read tensors")
        if shard not in self._maps:
            path = data_filename(self.prefix, shard, self.num_shards)
            if storage.is_url(path):
                self._maps[shard] = (path, storage.RangedFile(path, path.stat().st_size))
                return self._maps[shard]
            try:
                with open(path, "rb") as file:
                    size = file.seek(0, 2)
                    # an empty file cannot be mapped; it can only hold empty tensors
                    buffer = mmap.mmap(file.fileno(), 0, access=mmap.ACCESS_READ) if size else b""
            except OSError as error:
                raise self._error(f"cannot read ({error.strerror}); {COPY_ALL_SHARDS}", path) from error
            self._maps[shard] = (path, buffer)
        return self._maps[shard]

    def _read_entry(self, name, entry, dtype, shape):
        count = math.prod(shape)
        if dtype != object and entry.size != count * dtype.itemsize:
            raise self._error(
                f"'{name}' is stored as {entry.size} bytes but shape {shape} of {dtype} needs "
                f"{count * dtype.itemsize} (corrupt index)"
            )
        path, buffer = self._map(entry.shard_id)
        if entry.offset + entry.size > len(buffer):
            raise self._error(f"'{name}' lies past the end of the data file (truncated?)", path)
        if isinstance(buffer, storage.RangedFile):
            with _counted(self, buffer):
                view = buffer.read(entry.offset, entry.size)
        else:
            view = memoryview(buffer)[entry.offset : entry.offset + entry.size]
            self.bytes_read += entry.size
        if dtype == object:
            return self._read_strings(name, path, view, count, entry, shape)
        actual = _crc.crc32c(view)
        if actual != _crc.unmask(entry.crc32c):
            raise self._error(
                f"tensor '{name}' fails its CRC32C check (stored {_crc.unmask(entry.crc32c):#010x}, "
                f"computed {actual:#010x}): {CORRUPT_DATA}",
                path,
            )
        return np.frombuffer(view, dtype=dtype, count=count).reshape(shape)

    def _read_strings(self, name, path, view, count, entry, shape):
        # [varint64 length]*count [masked crc32c of the lengths] [bytes]*count; the entry's crc32c
        # covers each length as a uint32 (uint64 if larger), the length checksum and the bytes
        if count > len(view):  # every string takes at least its one-byte length
            raise self._error(f"string tensor '{name}' has more elements than stored bytes (corrupt index)", path)
        values = np.empty(count, dtype=object)
        if entry.size == 0:
            if count:
                raise self._error(f"string tensor '{name}' has no stored bytes (corrupt index)", path)
            return values.reshape(shape)
        lengths, pos, crc = [], 0, 0
        for _ in range(count):
            length, pos = _proto.read_varint(view, pos)
            lengths.append(length)
            crc = _crc.crc32c(struct.pack("<I" if length <= UINT32_MAX else "<Q", length), crc)
        if pos + LENGTH_CHECKSUM_SIZE + sum(lengths) != len(view):
            raise self._error(f"string tensor '{name}' has inconsistent lengths (corrupt file)", path)
        crc = _crc.crc32c(view[pos : pos + LENGTH_CHECKSUM_SIZE], crc)
        pos += LENGTH_CHECKSUM_SIZE
        for i, length in enumerate(lengths):
            values[i] = bytes(view[pos : pos + length])
            pos += length
        crc = _crc.crc32c(view[pos - sum(lengths) : pos], crc)
        if crc != _crc.unmask(entry.crc32c):
            raise self._error(f"tensor '{name}' fails its CRC32C check: {CORRUPT_DATA}", path)
        values.flags.writeable = False
        return values.reshape(shape)

    def close(self):
        for _, buffer in self._maps.values():
            if isinstance(buffer, mmap.mmap):
                try:
                    buffer.close()
                except BufferError:
                    pass  # arrays handed out still view it; it closes when the last one goes
        self._maps.clear()


@contextlib.contextmanager
def _counted(bundle, ranged):
    """Adds what RangedFile ``ranged`` fetches inside the block to the bundle's ``bytes_read``."""
    before = ranged.bytes_read
    try:
        yield
    finally:
        bundle.bytes_read += ranged.bytes_read - before


def _overlaps(ranges, size):
    """Problems of sorted ``(offset, end, name)`` claims on one data file of ``size`` bytes."""
    problems, past, last_end, last_name = [], [], 0, None
    for offset, end, name in ranges:
        if end > size:
            past.append(name)
        elif offset < last_end:
            sharing = f"slices of '{name}'" if name == last_name else f"'{last_name}' and '{name}'"
            problems.append(f"{sharing} claim the same bytes of the data file (corrupt index)")
        if end > last_end:
            last_end, last_name = end, name
    if past:
        problems.insert(0, f"'{past[0]}'{f' and {len(past) - 1} more entries' if len(past) > 1 else ''} lie past "
                           f"the end of the data file ({size} bytes): it is truncated; copy it again")
    return list(dict.fromkeys(problems))  # one line per pair of tensors, not per slice
