"""Repeated scalar protobuf fields decoded with numpy, packed or not.

A V1 checkpoint stores a tensor's values as one repeated field of a TensorProto. Writers pack them
(one length-delimited run), but protobuf also allows one tagged field per element, and any mix of
the two; decoding those one Python object at a time costs tens of bytes and a microsecond per
element. Here every occurrence of the field is gathered into one packed byte string, runs of
unpacked elements found and stripped of their keys with array operations, and varints decoded a
bounded chunk at a time: memory stays a small multiple of the bytes stored, time linear.
"""

import numpy as np

from converter.checkpoint import _proto

CONTINUATION = 0x80
PAYLOAD = 0x7F
BITS_PER_BYTE = 7
# elements examined at once when following a run of unpacked fields: small first, for short runs,
# then doubled up to a bound that keeps the index arrays small
FIRST_WINDOW = 64
MAX_WINDOW = 1 << 16
# packed varint bytes decoded at once
DECODE_CHUNK = 1 << 20


def packed(buf, number, wire):
    """Every element of repeated field ``number`` of message ``buf``, in packed form, and the other fields.

    Args:
        buf: the message (a memoryview).
        number: the repeated field.
        wire: its unpacked wire type: ``VARINT``, ``FIXED32`` or ``FIXED64``.

    Returns:
        ``(values, others)``: ``values`` the field's elements as one packed byte string (a view into
        ``buf`` when the message holds a single packed run), ``others`` maps every other field
        number to its last ``(wire type, value)``.
    """
    data = np.frombuffer(buf, dtype=np.uint8)
    pieces, others, pos = [], {}, 0
    while pos < len(buf):
        key, value_at = _proto.read_varint(buf, pos)
        if key >> 3 == number and key & 7 == wire:
            piece, pos = _run(data, pos, value_at - pos, wire)
            pieces.append(piece)
            continue
        field, field_wire, value, pos = _proto.read_field(buf, pos)
        if field != number:
            others[field] = (field_wire, value)
        elif field_wire == _proto.LENGTH_DELIMITED:
            pieces.append(value)
        else:
            raise _proto.ProtoError(f"field {number} has wire type {field_wire}, expected {wire}")
    if len(pieces) == 1 and isinstance(pieces[0], memoryview):
        return pieces[0], others
    values = bytearray()
    for piece in pieces:
        values += memoryview(piece)
    return memoryview(values), others


def strings(buf, number):
    """The elements of repeated bytes field ``number`` of ``buf`` (a list of bytes), and the other fields."""
    values, others = [], {}
    for field, wire, value in _proto.iter_fields(buf):
        if field != number:
            others[field] = (wire, value)
        elif wire == _proto.LENGTH_DELIMITED:
            values.append(bytes(value))
        else:
            raise _proto.ProtoError(f"field {number} has wire type {wire}, expected {_proto.LENGTH_DELIMITED}")
    return values, others


def varints(buf, dtype):
    """The packed varints of ``buf`` as ``dtype`` (their low bits, as protobuf casts), decoded in chunks."""
    data = np.frombuffer(buf, dtype=np.uint8)
    if len(data) and data[-1] >= CONTINUATION:
        raise _proto.ProtoError("truncated packed varints")
    out = np.empty(int(np.count_nonzero(data < CONTINUATION)), dtype=dtype)
    pos, done = 0, 0
    while pos < len(data):
        # cut the chunk after its last complete varint
        chunk = data[pos : pos + DECODE_CHUNK]
        ends = np.flatnonzero(chunk < CONTINUATION)
        if not len(ends):
            raise _proto.ProtoError("varint longer than 10 bytes")
        values = _decode(chunk, np.concatenate(([0], ends[:-1] + 1)), ends)
        out[done : done + len(values)] = _cast(values, dtype)
        done += len(values)
        pos += int(ends[-1]) + 1
    return out


def _cast(values, dtype):
    # protobuf's int32/int64 fields hold two's complement; bool is any non-zero value; 16-bit
    # floats travel as their raw bits in an int field
    if dtype == np.bool_:
        return values != 0
    if dtype.kind in "iu":
        return values.view(np.int64).astype(dtype)
    return values.astype(np.uint16).view(dtype)


def _decode(data, starts, ends):
    """The varints of ``data`` spanning ``starts[i]..ends[i]`` (inclusive) as uint64."""
    lengths = ends - starts + 1
    if len(lengths) and lengths.max() > _proto.MAX_VARINT_BYTES:
        raise _proto.ProtoError("varint longer than 10 bytes")
    out = np.zeros(len(ends), dtype=np.uint64)
    for byte in range(int(lengths.max()) if len(lengths) else 0):
        rows = lengths > byte
        out[rows] |= (data[starts[rows] + byte] & PAYLOAD).astype(np.uint64) << np.uint64(BITS_PER_BYTE * byte)
    return out


def _run(data, start, key_size, wire):
    """The elements of the run of unpacked fields at ``start`` in packed form, and where the run ends."""
    key = data[start : start + key_size]
    follow = _varint_run if wire == _proto.VARINT else _fixed_run
    pieces, pos, window = [], start, FIRST_WINDOW
    while True:
        piece, end, more = follow(data, pos, key, window, wire)
        pieces.append(piece)
        if not more:
            break
        pos, window = end, min(2 * window, MAX_WINDOW)
    if end == start:
        raise _proto.ProtoError("truncated repeated field")
    return np.concatenate(pieces), end


def _fixed_run(data, start, key, window, wire):
    # fixed-width elements sit at a constant stride: the run is the rows that start with the key
    stride = len(key) + _proto.FIXED_WIDTHS[wire]
    available = (len(data) - start) // stride
    rows = data[start : start + min(window, available) * stride].reshape(-1, stride)
    matches = (rows[:, : len(key)] == key).all(axis=1)
    count = len(rows) if matches.all() else int(np.argmin(matches))
    more = count == len(rows) < available  # every row matched and more follow: the run may go on
    return rows[:count, len(key) :].reshape(-1), start + count * stride, more


def _varint_run(data, start, key, window, wire):
    # split the window into varints (each ends on a byte below 0x80); while the run lasts, keys
    # and values alternate, so the run is the pairs whose key is this field's
    limit = min(len(data), start + window * (len(key) + _proto.MAX_VARINT_BYTES))
    ends = np.flatnonzero(data[start:limit] < CONTINUATION) + start
    starts = np.concatenate(([start], ends[:-1] + 1))
    pairs = len(ends) // 2
    key_starts = starts[0 : 2 * pairs : 2]
    matches = ends[0 : 2 * pairs : 2] - key_starts + 1 == len(key)
    for offset, byte in enumerate(key):
        matches &= data[np.minimum(key_starts + offset, len(data) - 1)] == byte
    count = pairs if matches.all() else int(np.argmin(matches))
    end = int(ends[2 * count - 1]) + 1 if count else start
    keep = np.ones(end - start, dtype=bool)  # the run's bytes less its keys: the values, packed
    keep[(key_starts[:count, None] - start + np.arange(len(key))).reshape(-1)] = False
    return data[start:end][keep], end, count == pairs and limit < len(data)
