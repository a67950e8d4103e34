"""PyTorch outputs written with numpy alone: a ``torch.save``-compatible ``.pth`` and ``.safetensors``.

The ``.pth`` layout is torch's zip serialization (``torch/serialization.py``), stored uncompressed:

    archive/data/N          tensor N's raw little-endian bytes, the payload 64-byte aligned
    archive/data.pkl        pickle (protocol 2) of an OrderedDict ``{key: tensor}``; each tensor is
                            ``torch._utils._rebuild_tensor_v2(storage, 0, shape, stride, False, OrderedDict())``
                            and each storage a persistent id ``("storage", torch.<Type>Storage, "N", "cpu", numel)``
    archive/version         "3"; archive/byteorder "little"

Only globals that ``torch.load(..., weights_only=True)`` accepts appear in the pickle. Tensors are
read, transformed and written one at a time, so memory stays near the largest tensor.
"""

import collections
import struct
import zipfile

import ml_dtypes
import numpy as np

from converter.errors import ConvertError
from converter.writers.safetensors import save_safetensors

ARCHIVE = "archive"
# torch aligns each storage's bytes to 64 so that they can be memory-mapped in place
STORAGE_ALIGNMENT = 64
ZIP_VERSION = "3"
FORMAT_VERSION = "1"
BYTEORDER = "little"
# zip local file header: 30 fixed bytes, then the name and the extra field
LOCAL_HEADER_SIZE = 30
# zip extra-field id torch uses for its alignment padding
PADDING_EXTRA_ID = b"FB"
EXTRA_HEADER_SIZE = 4
# the zip64 extra field zipfile adds to a local header for large members; zipfile itself switches to
# zip64 above about 2 GiB, so members above 1 GiB always get it and the header length is known in advance
ZIP64_EXTRA_SIZE = 20
ZIP64_THRESHOLD = 1 << 30

# numpy dtype -> torch's legacy storage type (the name the unpickler resolves)
STORAGE_TYPES = {
    np.dtype(np.float32): "FloatStorage",
    np.dtype(np.float64): "DoubleStorage",
    np.dtype(np.float16): "HalfStorage",
    np.dtype(ml_dtypes.bfloat16): "BFloat16Storage",
    np.dtype(np.int64): "LongStorage",
    np.dtype(np.int32): "IntStorage",
    np.dtype(np.int16): "ShortStorage",
    np.dtype(np.int8): "CharStorage",
    np.dtype(np.uint8): "ByteStorage",
    np.dtype(np.bool_): "BoolStorage",
}
# the entry of the state dict's ``_metadata`` holding the port's provenance (converter.provenance)
PROVENANCE_KEY = "ckpt_convert"
# writer options the torch target understands; ``include_top=False`` is applied by the plan (no ``fc``)
OPTIONS = ("include_top",)
# --dtype names -> numpy dtypes that floating tensors are cast to
CAST_DTYPES = {"float16": np.dtype(np.float16), "bfloat16": np.dtype(ml_dtypes.bfloat16)}


def cast(array, dtype):
    """``array`` cast to ``dtype`` (a CAST_DTYPES name) if it is floating; other arrays unchanged."""
    if dtype is None:
        return array
    if dtype not in CAST_DTYPES:
        raise ConvertError(f"unknown dtype {dtype!r}; choose one of {', '.join(CAST_DTYPES)}")
    if np.issubdtype(array.dtype, np.floating) or array.dtype == CAST_DTYPES["bfloat16"]:
        # round to nearest even, as torch's Tensor.to does
        return array.astype(CAST_DTYPES[dtype])
    return array


def check(plan, path, *, dtype=None, **options):
    """The options this format takes, checked before writing and on a dry run."""
    _check_options(options)
    if dtype is not None and dtype not in CAST_DTYPES:
        raise ConvertError(f"unknown dtype {dtype!r}; choose one of {', '.join(CAST_DTYPES)}")


def _check_options(options):
    unknown = sorted(set(options) - set(OPTIONS))
    if unknown:
        raise ConvertError(f"option(s) {', '.join(unknown)} do not apply to the torch target; drop them")


class _Pickle:
    """Emits the few pickle opcodes (protocol 2) a state dict of tensors needs."""

    def __init__(self):
        self.out = bytearray(b"\x80\x02")  # PROTO 2

    def global_(self, module, name):
        self.out += b"c" + f"{module}\n{name}\n".encode()

    def string(self, text):
        data = text.encode()
        self.out += b"X" + struct.pack("<I", len(data)) + data  # BINUNICODE

    def integer(self, value):
        if 0 <= value < 1 << 31:
            self.out += b"J" + struct.pack("<i", value)  # BININT
        else:
            data = value.to_bytes((value.bit_length() + 8) // 8, "little", signed=True)
            self.out += b"\x8a" + bytes([len(data)]) + data  # LONG1

    def integers(self, items):
        self.out += b"("  # MARK
        for item in items:
            self.integer(item)
        self.out += b"t"  # TUPLE

    def empty_ordered_dict(self):
        self.global_("collections", "OrderedDict")
        self.out += b")R"  # EMPTY_TUPLE, REDUCE

    def tensor(self, key, storage_type, shape, stride, numel):
        self.global_("torch._utils", "_rebuild_tensor_v2")
        self.out += b"(("  # MARK args, MARK persistent id
        self.string("storage")
        self.global_("torch", storage_type)
        self.string(key)
        self.string("cpu")
        self.integer(numel)
        self.out += b"tQ"  # TUPLE, BINPERSID
        self.integer(0)  # storage offset
        self.integers(shape)
        self.integers(stride)
        self.out += b"\x89"  # NEWFALSE: requires_grad
        self.empty_ordered_dict()  # backward hooks
        self.out += b"tR"  # TUPLE, REDUCE

    def strings(self, mapping):
        self.out += b"}("  # EMPTY_DICT, MARK
        for key, value in mapping.items():
            self.string(key)
            if isinstance(value, dict):
                self.strings(value)
            else:
                self.string(value)
        self.out += b"u"  # SETITEMS

    def state_dict(self, tensors, metadata=None):
        self.empty_ordered_dict()
        self.out += b"("  # MARK
        for name, (key, storage_type, shape, stride, numel) in tensors.items():
            self.string(name)
            self.tensor(key, storage_type, shape, stride, numel)
        self.out += b"u"  # SETITEMS
        if metadata:
            # the OrderedDict's attribute ``_metadata``, set as pickle sets an instance's __dict__
            self.strings({"_metadata": metadata})
            self.out += b"b"  # BUILD
        self.out += b"."  # STOP
        return bytes(self.out)


def _contiguous_strides(shape):
    strides, step = [], 1
    for size in reversed(shape):
        strides.append(step)
        step *= size
    return tuple(reversed(strides))


def _aligned_member(name, size, offset):
    """A ZipInfo for ``name`` whose payload, written at ``offset``, starts on a STORAGE_ALIGNMENT boundary."""
    info = zipfile.ZipInfo(name, date_time=(1980, 1, 1, 0, 0, 0))
    info.compress_type = zipfile.ZIP_STORED
    info.file_size = size
    header = LOCAL_HEADER_SIZE + len(name.encode()) + EXTRA_HEADER_SIZE
    if size > ZIP64_THRESHOLD:
        header += ZIP64_EXTRA_SIZE
    padding = -(offset + header) % STORAGE_ALIGNMENT
    info.extra = PADDING_EXTRA_ID + struct.pack("<H", padding) + b"Z" * padding
    return info


def _write_member(archive, name, data):
    info = zipfile.ZipInfo(name, date_time=(1980, 1, 1, 0, 0, 0))
    archive.writestr(info, data, compress_type=zipfile.ZIP_STORED)


def save_pth(plan, read, path, *, dtype=None, **options):
    """Write ``plan``'s tensors as a ``.pth`` state dict that ``torch.load(path, weights_only=True)`` reads.

    Args:
        plan: a ``converter.mapping.Plan`` for the torch target.
        read: ``read(name) -> np.ndarray`` for checkpoint variables.
        path: the file to write (a temporary path: the caller renames it into place).
        dtype: ``float16`` or ``bfloat16`` casts floating tensors.

    Returns:
        ``{key: (dtype, shape)}`` of what was written.
    """
    _check_options(options)
    records, written = collections.OrderedDict(), {}
    with open(path, "wb") as file, zipfile.ZipFile(file, "w", zipfile.ZIP_STORED, allowZip64=True) as archive:
        for index, (name, value) in enumerate(plan.tensors(read)):
            value = cast(np.asarray(value), dtype)
            if value.dtype.newbyteorder("=") not in STORAGE_TYPES:
                raise ConvertError(f"{name}: dtype {value.dtype} has no torch storage type")
            data = np.asarray(value, dtype=value.dtype.newbyteorder("<"), order="C")
            key = str(index)
            member = _aligned_member(f"{ARCHIVE}/data/{key}", data.nbytes, file.tell())
            with archive.open(member, "w", force_zip64=data.nbytes > ZIP64_THRESHOLD) as out:
                out.write(memoryview(data.reshape(-1).view(np.uint8)))
            storage = STORAGE_TYPES[value.dtype.newbyteorder("=")]
            records[name] = (key, storage, data.shape, _contiguous_strides(data.shape), data.size)
            written[name] = (value.dtype.newbyteorder("="), data.shape)
        # the pickle goes last: it needs every tensor's dtype, known only once read
        metadata = {PROVENANCE_KEY: plan.provenance()} if plan.record else None
        _write_member(archive, f"{ARCHIVE}/data.pkl", _Pickle().state_dict(records, metadata))
        _write_member(archive, f"{ARCHIVE}/.format_version", FORMAT_VERSION)
        _write_member(archive, f"{ARCHIVE}/.storage_alignment", str(STORAGE_ALIGNMENT))
        _write_member(archive, f"{ARCHIVE}/byteorder", BYTEORDER)
        _write_member(archive, f"{ARCHIVE}/version", ZIP_VERSION)
    return written


def save_safetensors_state(plan, read, path, *, dtype=None, **options):
    """Write ``plan``'s tensors as ``.safetensors`` (loadable by ``safetensors.torch.load_file``).

    Same arguments and return value as ``save_pth``.
    """
    _check_options(options)
    tensors = [(name, cast(np.asarray(value), dtype)) for name, value in plan.tensors(read)]
    save_safetensors(tensors, path, metadata={"format": "pt", **plan.provenance()})
    return {name: (value.dtype, value.shape) for name, value in tensors}
