"""Partitioned variables: slice keys (TensorFlow's ordered-code encoding) and reassembly.

A slice of tensor ``name`` is stored under ``EncodeTensorNameSlice(name, slice)``
(``saved_tensor_slice_util.cc``): NumIncreasing(0), String(name), NumIncreasing(rank), then
SignedNumIncreasing(start), SignedNumIncreasing(length) per dimension, length -1 for "all".
"""

import math
import numpy as np

from converter.checkpoint._proto import FULL_EXTENT, ProtoError

# ordered_code.cc: 0x00 and 0xff are escaped inside strings; a string ends with 0x00 0x01
_STRING_ESCAPES = {0x00: b"\x00\xff", 0xFF: b"\xff\x00"}
_STRING_END = b"\x00\x01"
_SIGNED_ONE_BYTE_LIMIT = 64
_SIGNED_MAX_LENGTH = 10
_SIGNED_BITS_PER_BYTE = 7


def _num_increasing(value):
    payload = value.to_bytes((value.bit_length() + 7) // 8, "big") if value else b""
    return bytes([len(payload)]) + payload


def _string(data):
    if not any(byte in _STRING_ESCAPES for byte in data):
        return data + _STRING_END
    return b"".join(_STRING_ESCAPES.get(byte, bytes([byte])) for byte in data) + _STRING_END


def _signed_num_increasing(value):
    magnitude = ~value if value < 0 else value
    if magnitude < _SIGNED_ONE_BYTE_LIMIT:
        return bytes([(0x80 ^ value) & 0xFF])
    # length grows one byte per 7 payload bits; its header is that many leading one-bits,
    # XORed over the sign-extended big-endian value
    length = magnitude.bit_length() // _SIGNED_BITS_PER_BYTE + 1
    encoded = bytearray((value % (1 << (8 * _SIGNED_MAX_LENGTH))).to_bytes(_SIGNED_MAX_LENGTH, "big")[-length:])
    header = ((1 << length) - 1) << (16 - length)
    encoded[0] ^= header >> 8
    encoded[1] ^= header & 0xFF
    return bytes(encoded)


def slice_key(name, extents):
    """The table key of one slice of tensor ``name`` (bytes) with ``extents`` ((start, length) per dim)."""
    parts = [_num_increasing(0), _string(name), _num_increasing(len(extents))]
    for start, length in extents:
        parts.append(_signed_num_increasing(start))
        parts.append(_signed_num_increasing(length))
    return b"".join(parts)


def slice_shape(extents, shape):
    """The shape of a slice, checked to lie inside the full ``shape``."""
    if len(extents) != len(shape):
        raise ProtoError(f"slice of rank {len(extents)} for a tensor of rank {len(shape)}")
    out = []
    for (start, length), dim in zip(extents, shape):
        size = dim if length == FULL_EXTENT else length
        if start < 0 or size < 0 or start + size > dim or (length == FULL_EXTENT and start != 0):
            raise ProtoError(f"slice {extents} lies outside the tensor shape {shape}")
        out.append(size)
    return tuple(out)


def check_partition(name, extents_list, shape):
    """Check, from the index alone, that the slices of tensor ``name`` can tile ``shape``.

    Each slice lies inside the shape, none is listed twice, and their element counts add up to the
    tensor's. Slices of distinct stored bytes then never assemble into more than the bytes stored,
    so a crafted index cannot make a reader allocate what its files do not hold.
    """
    if len(set(extents_list)) != len(extents_list):
        raise ProtoError(f"'{name}' lists one of its slices twice")
    counts = [math.prod(slice_shape(extents, shape)) for extents in extents_list]
    if sum(counts) != math.prod(shape):
        raise ProtoError(f"the slices of '{name}' hold {sum(counts)} elements of a tensor of {math.prod(shape)}")


def assemble(shape, dtype, parts):
    """A full read-only tensor from ``(extents, array)`` parts that must cover it exactly once."""
    total = math.prod(shape)
    covered = sum(part.size for _, part in parts)
    if covered != total:
        raise ProtoError(f"slices hold {covered} elements of a tensor of {total}")
    out = np.empty(shape, dtype)
    filled = np.zeros(shape, bool)  # equal counts can still overlap and leave a gap: check every element
    for extents, part in parts:
        region = tuple(slice(start, start + size) for (start, _), size in zip(extents, part.shape))
        if filled[region].any():
            raise ProtoError(f"slices overlap at {[start for start, _ in extents]}")
        filled[region] = True
        out[region] = part
    out.flags.writeable = False
    return out
