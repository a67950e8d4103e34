"""TensorFlow ``DataType`` enum values (types.proto) and the numpy dtypes they read as."""

import ml_dtypes
import numpy as np

DT_STRING = 7
# reference types (DT_FLOAT_REF = 101, ...) are the base type plus this offset
REF_OFFSET = 100

# DataType enum value -> numpy dtype; strings read as object arrays of bytes
NUMPY_DTYPES = {
    1: np.dtype(np.float32),
    2: np.dtype(np.float64),
    3: np.dtype(np.int32),
    4: np.dtype(np.uint8),
    5: np.dtype(np.int16),
    6: np.dtype(np.int8),
    DT_STRING: np.dtype(object),
    8: np.dtype(np.complex64),
    9: np.dtype(np.int64),
    10: np.dtype(np.bool_),
    14: np.dtype(ml_dtypes.bfloat16),
    17: np.dtype(np.uint16),
    18: np.dtype(np.complex128),
    19: np.dtype(np.float16),
    22: np.dtype(np.uint32),
    23: np.dtype(np.uint64),
}

# names of the DataType values we know but cannot read, for error messages
UNSUPPORTED_NAMES = {
    0: "DT_INVALID",
    11: "DT_QINT8",
    12: "DT_QUINT8",
    13: "DT_QINT32",
    15: "DT_QINT16",
    16: "DT_QUINT16",
    20: "DT_RESOURCE",
    21: "DT_VARIANT",
}


def numpy_dtype(value):
    """The numpy dtype for a DataType enum value, or None if it cannot be read."""
    if value > REF_OFFSET:
        value -= REF_OFFSET
    return NUMPY_DTYPES.get(value)


def describe(value):
    """A DataType value as a readable name for error messages."""
    return UNSUPPORTED_NAMES.get(value, f"DataType {value}")


def supported_names():
    return ", ".join(sorted({str(dtype) if dtype != object else "string" for dtype in NUMPY_DTYPES.values()}))
