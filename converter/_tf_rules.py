"""TensorFlow's shape rules for convolutions and pools, shared by every graph interpreter."""

import math

SAME = "SAME"
VALID = "VALID"


def output_size(size, kernel, stride, padding):
    """One output dimension: SAME keeps ``ceil(size / stride)``, VALID only the windows that fit."""
    return math.ceil(size / stride) if padding == SAME else math.ceil((size - kernel + 1) / stride)


def same_padding(size, kernel, stride):
    """TensorFlow's ``SAME`` padding of one dimension: ``(before, after)``, the odd pixel after."""
    total = max((output_size(size, kernel, stride, SAME) - 1) * stride + kernel - size, 0)
    return total // 2, total - total // 2
