"""Read TensorFlow checkpoints without TensorFlow: V2 bundles, V1 files, TF2 object-based ones.

    with open_checkpoint("model.ckpt") as ckpt:
        for name in ckpt:
            array = ckpt.read(name)     # read-only, a view into the file where possible

Listing reads only the index; reading a tensor touches only its bytes and checks its CRC32C.
A path may be an ``s3://`` or ``gs://`` URL (``converter.storage``): the index is fetched, then only
the byte ranges of the tensors read (``prefetch`` fetches many at once).
Every problem with the input raises ``CheckpointError`` naming the file.
"""

import dataclasses
import struct

import cramjam
import numpy as np

from converter._text import counted
from converter.checkpoint import _bundle, _paths, _v1
from converter.errors import CheckpointError

__all__ = ["Checkpoint", "TensorInfo", "open_checkpoint"]

# what malformed bytes can raise inside the parsers; turned into CheckpointError at the boundary
_CORRUPTION = (ValueError, IndexError, KeyError, struct.error, OverflowError, cramjam.DecompressionError)
# TensorFlow names are a few hundred bytes at most; a longer one is a crafted index, and no output
# format holds every length (a zip member name, as in .npz, is at most 65,535 bytes)
MAX_NAME_BYTES = 1 << 15
SHOWN_NAMES = 3


@dataclasses.dataclass(frozen=True)
class TensorInfo:
    """One variable: name, numpy dtype (object for strings), shape, and size in bytes."""

    name: str
    dtype: np.dtype
    shape: tuple
    nbytes: int


class _Boundary:
    """Turns parser errors on corrupt input into one-line CheckpointErrors naming the file."""

    def __init__(self, path):
        self.path = path

    def __enter__(self):
        return self

    def __exit__(self, kind, error, traceback):
        if isinstance(error, MemoryError):
            # every allocation is bounded by the bytes the files hold: this is a large checkpoint on a small machine
            raise CheckpointError(f"{self.path}: not enough memory to read it; use a machine with more") from error
        if isinstance(error, _CORRUPTION):
            detail = " ".join(str(error).split()) or kind.__name__  # one line, whatever the parser said
            raise CheckpointError(f"{self.path}: corrupt checkpoint ({detail})") from error
        if isinstance(error, OSError):
            raise CheckpointError(f"{self.path}: cannot read ({error.strerror or error})") from error
        return False


class Checkpoint:
    """An open checkpoint; use ``open_checkpoint`` to make one."""

    def __init__(self, source, path):
        self._source = source
        self.path = path
        self.format = source.format
        self._names = sorted(source.names())
        _check_names(self._names, path)
        self._known = set(self._names)
        self._closed = False

    def names(self):
        """Sorted variable names (a partitioned variable once, under its full name)."""
        return list(self._names)

    def _check_name(self, name):
        self._check_open()
        if name not in self._known:
            raise CheckpointError(f"{self.path}: no variable named '{name}'; list them with `ckpt-convert inspect`")

    def info(self, name):
        """The TensorInfo of variable ``name``."""
        self._check_name(name)
        with _Boundary(self.path):
            dtype, shape, nbytes = self._source.describe(name)
        return TensorInfo(name, dtype, tuple(shape), nbytes)

    def read(self, name):
        """Variable ``name`` as a read-only numpy array, checked against its stored CRC32C."""
        self._check_name(name)
        with _Boundary(self.path):
            array = self._source.read(name)
        if array.flags.writeable:
            array.flags.writeable = False
        return array

    def prefetch(self, names):
        """Fetch the bytes of variables ``names`` ahead of reading them, where the checkpoint is remote.

        Their byte ranges are coalesced and fetched several at a time; a local checkpoint needs nothing.
        """
        self._check_open()
        prefetch = getattr(self._source, "prefetch", None)
        if prefetch is not None:
            unknown = [name for name in names if name not in self._known]
            if unknown:
                self._check_name(unknown[0])
            with _Boundary(self.path):
                prefetch(names)

    @property
    def bytes_read(self):
        """Bytes read from the checkpoint's files so far: its index and the tensors' bytes."""
        return self._source.bytes_read

    @property
    def bytes_stored(self):
        """Bytes the checkpoint's files hold (the index alone for a checkpoint opened with ``index_only``)."""
        return getattr(self._source, "bytes_stored", self._source.bytes_read)

    def _check_open(self):
        if self._closed:
            raise CheckpointError(f"{self.path}: the checkpoint is closed; read inside its `with` block")

    def close(self):
        """Release the file maps (arrays already read stay valid)."""
        self._closed = True
        self._source.close()

    def __contains__(self, name):
        return name in self._known

    def __iter__(self):
        return iter(self._names)

    def __len__(self):
        return len(self._names)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
        return False

    def __repr__(self):
        return f"<Checkpoint {self.format} {self.path} ({counted(len(self), 'variable')})>"


def _name_problem(name):
    try:
        size = len(name.encode("utf-8"))
    except UnicodeEncodeError:
        return "is not valid UTF-8"
    if "\0" in name:
        return "holds a NUL character"
    return f"is {size} bytes long (the limit is {MAX_NAME_BYTES})" if size > MAX_NAME_BYTES else None


def _check_names(names, path):
    """TensorFlow writes names as UTF-8 text; any other is a corrupt or crafted index that no output can name."""
    bad = [(name, problem) for name in names if (problem := _name_problem(name))]
    if bad:
        shown = "; ".join(f"variable {ascii(name[:60])} {problem}" for name, problem in bad[:SHOWN_NAMES])
        more = f"; and {len(bad) - SHOWN_NAMES} more" if len(bad) > SHOWN_NAMES else ""
        raise CheckpointError(f"{path}: {shown}{more} (corrupt index)")


def open_checkpoint(path, index_only=False):
    """Open a checkpoint given a prefix, ``.index``/data file, V1 file or directory (or an ``s3://``/``gs://`` URL).

    ``index_only``: a V2 checkpoint is opened from its ``.index`` alone, without its data shards, for
    listing and describing its variables (reading one raises CheckpointError). Returns a Checkpoint.
    """
    with _Boundary(path):
        kind, resolved = _paths.resolve(path)
        source = _bundle.Bundle(resolved, index_only) if kind == "v2" else _v1.V1Checkpoint(resolved)
        return Checkpoint(source, resolved)
