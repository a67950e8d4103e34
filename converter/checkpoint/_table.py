"""Reading TensorFlow's LevelDB-style immutable tables (``tensorflow/core/lib/io/``).

A table is a sequence of blocks (sorted key/value entries with shared-prefix compression), each
followed by a 1-byte compression type and a masked CRC32C; an index block maps a separator key to
each data block; a 48-byte footer points at the index. Both V2 ``.index`` files and V1 checkpoints
are tables.
"""

import bisect
import collections
import struct

import cramjam

from converter import storage
from converter.checkpoint import _crc
from converter.checkpoint._proto import read_varint
from converter.errors import CheckpointError

TABLE_MAGIC = 0xDB4775248B80FB57
FOOTER_SIZE = 48
MAGIC_SIZE = 8
BLOCK_TRAILER_SIZE = 5  # compression type byte + masked CRC32C
RESTART_SIZE = 4
NO_COMPRESSION = 0
SNAPPY_COMPRESSION = 1
# Snappy's densest element (a 3-byte copy of 64 bytes) bounds the expansion of a valid block,
# so a larger stated length is corruption, not a reason to allocate.
SNAPPY_MAX_EXPANSION = 22
SNAPPY_SLACK = 64
# parsed data blocks kept per table: enough for the slices of one tensor, few enough that
# decompressed blocks never add up to a second copy of a checkpoint
BLOCK_CACHE_SIZE = 16


def has_table_magic(path):
    """Whether the file at ``path`` ends with the table magic number."""
    if storage.is_url(path):
        return _remote_table_magic(path)
    try:
        with open(path, "rb") as file:
            file.seek(0, 2)
            if file.tell() < FOOTER_SIZE:
                return False
            file.seek(-MAGIC_SIZE, 2)
            return int.from_bytes(file.read(MAGIC_SIZE), "little") == TABLE_MAGIC
    except OSError:
        return False


def _remote_table_magic(path):
    try:
        size = path.stat().st_size
        if size < FOOTER_SIZE:
            return False
        return int.from_bytes(path.read_range(size - MAGIC_SIZE, size), "little") == TABLE_MAGIC
    except OSError:
        return False


class Table:
    """An immutable sorted table over a bytes-like buffer (bytes or a read-only mmap)."""

    def __init__(self, path, buffer):
        self.path = path
        self._buf = memoryview(buffer)
        size = len(self._buf)
        if size < FOOTER_SIZE:
            raise self._error(f"only {size} bytes, shorter than a table footer (truncated?)")
        footer = self._buf[size - FOOTER_SIZE :]
        if int.from_bytes(footer[FOOTER_SIZE - MAGIC_SIZE :], "little") != TABLE_MAGIC:
            raise self._error("bad magic number: not a TensorFlow checkpoint table, or truncated")
        _metaindex, pos = self._handle(footer, 0)
        index_handle, _ = self._handle(footer, pos)
        index = list(self._entries(self._block(*index_handle), "index block"))
        self._index_keys = [key for key, _ in index]
        self._index_handles = [self._handle(value, 0)[0] for _, value in index]
        self._blocks = collections.OrderedDict()

    def _error(self, problem):
        return CheckpointError(f"{self.path}: {problem}")

    def _handle(self, buf, pos):
        offset, pos = read_varint(buf, pos)
        size, pos = read_varint(buf, pos)
        return (offset, size), pos

    def _block(self, offset, size):
        """The contents of one block, its CRC checked and decompressed."""
        end = offset + size + BLOCK_TRAILER_SIZE
        if end > len(self._buf) - FOOTER_SIZE:
            raise self._error(f"block at offset {offset} runs past the end of the file (truncated?)")
        contents = self._buf[offset : offset + size + 1]  # the checksum covers the type byte too
        (stored,) = struct.unpack_from("<I", self._buf, offset + size + 1)
        if _crc.unmask(stored) != _crc.crc32c(contents):
            raise self._error(f"block at offset {offset} fails its CRC32C check: the file is corrupted; copy it again")
        kind = contents[size]
        if kind == NO_COMPRESSION:
            return contents[:size]
        if kind == SNAPPY_COMPRESSION:
            return self._snappy(contents[:size], offset)
        raise self._error(f"block at offset {offset} has unknown compression type {kind}")

    def _snappy(self, data, offset):
        expected, _ = read_varint(data, 0)
        if expected > SNAPPY_MAX_EXPANSION * len(data) + SNAPPY_SLACK:
            raise self._error(f"Snappy block at offset {offset} claims an impossible size {expected}")
        try:
            out = bytes(cramjam.snappy.decompress_raw(bytes(data)))
        except cramjam.DecompressionError as error:
            raise self._error(f"Snappy block at offset {offset} does not decompress ({error})") from error
        if len(out) != expected:
            raise self._error(f"Snappy block at offset {offset} decompresses to the wrong size")
        return memoryview(out)

    def _entries(self, block, what):
        """Yield (key, value) of one block; values are memoryviews into the block."""
        if len(block) < RESTART_SIZE:
            raise self._error(f"{what} is too short")
        (num_restarts,) = struct.unpack_from("<I", block, len(block) - RESTART_SIZE)
        limit = len(block) - RESTART_SIZE * (num_restarts + 1)
        if limit < 0:
            raise self._error(f"{what} has a corrupt restart array")
        key, pos = b"", 0
        while pos < limit:
            shared, pos = read_varint(block, pos)
            unshared, pos = read_varint(block, pos)
            value_size, pos = read_varint(block, pos)
            if shared > len(key) or pos + unshared + value_size > limit:
                raise self._error(f"{what} has a corrupt entry at byte {pos}")
            key = key[:shared] + bytes(block[pos : pos + unshared])
            pos += unshared
            yield key, block[pos : pos + value_size]
            pos += value_size

    def _data_block(self, number):
        """(keys, values) of data block ``number``, parsed once."""
        block = self._blocks.get(number)
        if block is None:
            entries = list(self._entries(self._block(*self._index_handles[number]), "data block"))
            block = self._blocks[number] = ([key for key, _ in entries], [value for _, value in entries])
            if len(self._blocks) > BLOCK_CACHE_SIZE:
                self._blocks.popitem(last=False)
        else:
            self._blocks.move_to_end(number)
        return block

    def items(self):
        """Yield every (key, value) in key order."""
        for number in range(len(self._index_handles)):
            yield from zip(*self._data_block(number))

    def get(self, key):
        """The value stored under ``key`` (a memoryview), or None."""
        number = bisect.bisect_left(self._index_keys, key)
        if number == len(self._index_keys):
            return None
        keys, values = self._data_block(number)
        found = bisect.bisect_left(keys, key)
        return values[found] if found < len(keys) and keys[found] == key else None
