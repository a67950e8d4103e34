"""Protobuf's wire format, the primitives every reader of TensorFlow's messages shares.

Only the encoding itself (protobuf's "Encoding" spec): wire types, varints and their int64
reading. The checkpoint reader (``converter.checkpoint._proto``) and the MetaGraphDef reader
(``converter.metagraph._wire``) build their messages on these; a malformed input raises
``WireError`` (a ``ValueError``), which each reader turns into a one-line error naming its file.
The ONNX writer (``converter.writers._onnx_stream``) writes field keys and lengths with them.
"""

# wire types
VARINT = 0
FIXED64 = 1
LENGTH_DELIMITED = 2
FIXED32 = 5

MAX_VARINT_BYTES = 10
INT64_SIGN = 1 << 63
UINT64_RANGE = 1 << 64


class WireError(ValueError):
    """Bytes that are not a well-formed protobuf message."""


def read_varint(buf, pos):
    """Decode the varint at ``pos``; return ``(value, next position)``."""
    byte = buf[pos] if pos < len(buf) else _truncated()
    if byte < 0x80:  # most varints are one byte: tags, small ints, short lengths
        return byte, pos + 1
    result, shift = 0, 0
    while True:
        if pos >= len(buf):
            _truncated()
        byte = buf[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        if byte < 0x80:
            return result, pos
        shift += 7
        if shift >= 7 * MAX_VARINT_BYTES:
            raise WireError("varint longer than 10 bytes")


def _truncated():
    raise WireError("truncated varint")


def to_int64(value):
    """A decoded varint as the two's-complement int64 it encodes."""
    value %= UINT64_RANGE
    return value - UINT64_RANGE if value >= INT64_SIGN else value


def encode_varint(value):
    """The varint bytes of a non-negative ``value``."""
    out = bytearray()
    while value >= 0x80:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def tag(field, wire_type):
    """The key bytes that start field number ``field`` of ``wire_type``."""
    return encode_varint(field << 3 | wire_type)


def length_prefix(field, size):
    """The key and length of a length-delimited field whose payload is ``size`` bytes."""
    return tag(field, LENGTH_DELIMITED) + encode_varint(size)
