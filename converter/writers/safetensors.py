"""The safetensors format, written with numpy alone, one tensor at a time.

Layout (https://github.com/huggingface/safetensors): an 8-byte little-endian header length N, an
N-byte UTF-8 JSON header ``{name: {"dtype", "shape", "data_offsets": [begin, end]}, "__metadata__":
{str: str}}`` padded with spaces to a multiple of 8, then the tensors' little-endian bytes, packed
with no gaps, offsets relative to the end of the header.
"""

import json
import struct

import ml_dtypes
import numpy as np

from converter.errors import ConvertError

# numpy dtype -> safetensors dtype name
DTYPES = {
    np.dtype(np.bool_): "BOOL",
    np.dtype(np.uint8): "U8",
    np.dtype(np.int8): "I8",
    np.dtype(np.uint16): "U16",
    np.dtype(np.int16): "I16",
    np.dtype(np.float16): "F16",
    np.dtype(ml_dtypes.bfloat16): "BF16",
    np.dtype(np.uint32): "U32",
    np.dtype(np.int32): "I32",
    np.dtype(np.float32): "F32",
    np.dtype(np.uint64): "U64",
    np.dtype(np.int64): "I64",
    np.dtype(np.float64): "F64",
}
HEADER_LENGTH_FORMAT = "<Q"
HEADER_ALIGNMENT = 8
METADATA_KEY = "__metadata__"


def _native(dtype):
    return dtype.newbyteorder("=") if dtype.byteorder in "<>" else dtype


def save_safetensors(tensors, path, metadata=None):
    """Write ``tensors`` (a dict, or an iterable of ``(name, array)``) to a safetensors file at ``path``.

    Arrays are streamed to the file one by one (memory-mapped inputs are never loaded whole).
    ``metadata`` is an optional ``{str: str}``. Writes ``path`` directly: wrap it in
    ``converter._atomic.atomic_output`` for an atomic write. Raises ConvertError naming every
    tensor with a dtype safetensors cannot hold, and duplicate or reserved names.
    """
    items = list(tensors.items() if hasattr(tensors, "items") else tensors)
    problems, seen = [], set()
    for name, array in items:
        if not isinstance(name, str) or name == METADATA_KEY or name in seen:
            problems.append(f"{name!r} (reserved, duplicate or not a string)")
        seen.add(name)
        if _native(np.asarray(array).dtype) not in DTYPES:
            problems.append(f"{name} ({np.asarray(array).dtype})")
    if metadata is not None and not all(isinstance(k, str) and isinstance(v, str) for k, v in metadata.items()):
        problems.append("metadata (keys and values must be strings)")
    if problems:
        raise ConvertError(
            f"{path}: cannot write as safetensors: {', '.join(problems)}; "
            f"safetensors holds {', '.join(DTYPES.values())} under unique names"
        )
    header, offset = {}, 0
    if metadata:
        header[METADATA_KEY] = dict(metadata)
    for name, array in items:
        array = np.asarray(array)
        header[name] = {
            "dtype": DTYPES[_native(array.dtype)],
            "shape": list(array.shape),
            "data_offsets": [offset, offset + array.nbytes],
        }
        offset += array.nbytes
    encoded = json.dumps(header, ensure_ascii=False, separators=(",", ":")).encode()
    encoded += b" " * (-len(encoded) % HEADER_ALIGNMENT)
    with open(path, "wb") as file:
        file.write(struct.pack(HEADER_LENGTH_FORMAT, len(encoded)))
        file.write(encoded)
        for _, array in items:
            array = np.asarray(array)
            if array.size:
                little = np.ascontiguousarray(array, dtype=array.dtype.newbyteorder("<"))
                file.write(memoryview(little.reshape(-1).view(np.uint8)))
