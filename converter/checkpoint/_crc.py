"""CRC32C as TensorFlow stores it: masked, so a CRC of data holding CRCs is not degenerate."""

import google_crc32c

MASK_DELTA = 0xA282EAD8
UINT32 = 0xFFFFFFFF
# google_crc32c accepts only plain bytes, so large buffers are checksummed a cache-sized chunk at a time
CHUNK_BYTES = 1 << 20


def crc32c(data, crc=0):
    """CRC32C of a bytes-like object (memoryview or contiguous ndarray) without copying it whole."""
    view = memoryview(data).cast("B")
    for start in range(0, len(view), CHUNK_BYTES):
        crc = google_crc32c.extend(crc, bytes(view[start : start + CHUNK_BYTES]))
    return crc


def mask(crc):
    return ((((crc >> 15) | (crc << 17)) & UINT32) + MASK_DELTA) & UINT32


def unmask(masked):
    rotated = (masked - MASK_DELTA) & UINT32
    return ((rotated >> 17) | (rotated << 15)) & UINT32
