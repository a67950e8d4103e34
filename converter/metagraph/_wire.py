"""Protobuf wire-format decoding: the primitives the MetaGraphDef reader is built from.

Only the encoding itself (protobuf's "Encoding" spec): varints, fixed 32/64-bit values and
length-delimited fields, with repeated scalars packed or not. Every malformed input raises
``WireError`` (a ``ValueError``); the reader turns it into a one-line error naming the file.
"""

import struct

from converter._protobuf import (  # noqa: F401  (the wire types are this module's vocabulary too)
    FIXED32, FIXED64, LENGTH_DELIMITED, VARINT, WireError, read_varint, to_int64,
)

WIRE_NAMES = {VARINT: "varint", FIXED64: "fixed64", LENGTH_DELIMITED: "length-delimited", FIXED32: "fixed32"}
FIXED32_FLOAT = struct.Struct("<f")
FIXED64_DOUBLE = struct.Struct("<d")
# map<K, V> entries are messages with the key in field 1 and the value in field 2
MAP_KEY, MAP_VALUE = 1, 2


def fields(buf):
    """Yield ``(field number, wire type, value)`` of a message: an int, or a memoryview for length-delimited fields."""
    buf = memoryview(buf)
    pos, end = 0, len(buf)
    while pos < end:
        key, pos = read_varint(buf, pos)
        number, wire = key >> 3, key & 7
        if number == 0:
            raise WireError("field number 0")
        if wire == LENGTH_DELIMITED:
            length, pos = read_varint(buf, pos)
            if pos + length > end:
                raise WireError(f"field {number} runs past the end of its message")
            yield number, wire, buf[pos : pos + length]
            pos += length
        elif wire == VARINT:
            value, pos = read_varint(buf, pos)
            yield number, wire, value
        elif wire in (FIXED64, FIXED32):
            width = 8 if wire == FIXED64 else 4
            if pos + width > end:
                raise WireError(f"field {number} is a truncated fixed-width value")
            yield number, wire, int.from_bytes(buf[pos : pos + width], "little")
            pos += width
        else:
            raise WireError(f"field {number} has unsupported wire type {wire}")


def expect(number, wire, wanted, message):
    """Raise ``WireError`` unless field ``number`` of ``message`` has wire type ``wanted``."""
    if wire != wanted:
        raise WireError(f"{message} field {number} is {WIRE_NAMES.get(wire, wire)}, expected {WIRE_NAMES[wanted]}")


def text(value, what):
    """A length-delimited field as a UTF-8 string."""
    try:
        return str(value, "utf-8")
    except UnicodeDecodeError:
        raise WireError(f"{what} is not UTF-8 text") from None


def varints(wire, value, number, message):
    """A repeated varint field's values from one occurrence, packed or not."""
    if wire == VARINT:
        return [value]
    expect(number, wire, LENGTH_DELIMITED, message)
    out, pos = [], 0
    while pos < len(value):
        item, pos = read_varint(value, pos)
        out.append(item)
    return out


def fixed(wire, value, number, message, width):
    """A repeated fixed-width field's raw little-endian bytes from one occurrence, packed or not."""
    single = FIXED32 if width == 4 else FIXED64
    if wire == single:
        return value.to_bytes(width, "little")
    expect(number, wire, LENGTH_DELIMITED, message)
    if len(value) % width:
        raise WireError(f"{message} field {number}: packed length {len(value)} is not a multiple of {width}")
    return bytes(value)


def map_entry(buf, message):
    """One ``map<string, V>`` entry: ``(key, value bytes)``; the value is empty when absent."""
    key, value = "", b""
    for number, wire, item in fields(buf):
        if number == MAP_KEY:
            expect(number, wire, LENGTH_DELIMITED, message)
            key = text(item, f"{message} key")
        elif number == MAP_VALUE:
            expect(number, wire, LENGTH_DELIMITED, message)
            value = item
    return key, value
