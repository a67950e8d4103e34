"""Named tensor transforms: how a slim tensor's layout becomes a target's.

Mapping tables name these (``transform: hwio_to_oihw``); nothing is inferred from rank, and nothing
is squeezed or reshaped to make shapes fit: each transform states the one input layout it accepts
and refuses any other. ``apply`` returns a view where numpy allows; writers copy once when writing.
"""

import dataclasses
from typing import Callable

import numpy as np

from converter.errors import MappingError

# TF kernels are [kh, kw, in, out] (HWIO); torch and ONNX convolutions want [out, in, kh, kw] (OIHW).
HWIO_TO_OIHW = (3, 2, 0, 1)
# a depthwise kernel, its channel and multiplier axes merged: [kh, kw, in * multiplier] -> [in * multiplier, kh, kw]
DEPTHWISE_HWO_TO_O1HW = (2, 0, 1)
# activations: TF-Slim's NHWC, torch's and ONNX's NCHW
NHWC_TO_NCHW = (0, 3, 1, 2)
NCHW_TO_NHWC = (0, 2, 3, 1)


@dataclasses.dataclass(frozen=True)
class Transform:
    """A layout change: ``shape`` maps an input shape to the output one (ValueError if it does not fit)."""

    name: str
    layouts: str
    shape: Callable[[tuple], tuple]
    apply: Callable[[np.ndarray], np.ndarray]


def _identity_shape(shape):
    return tuple(shape)


def _oihw_shape(shape):
    if len(shape) != 4:
        raise ValueError(f"expects a [kh, kw, in, out] kernel, got {list(shape)}")
    return tuple(shape[axis] for axis in HWIO_TO_OIHW)


def _conv1x1(shape):
    if len(shape) != 4 or tuple(shape[:2]) != (1, 1):
        raise ValueError(f"expects a [1, 1, in, out] kernel, got {list(shape)}")
    return shape[2], shape[3]


def _linear_shape(shape):
    fan_in, fan_out = _conv1x1(shape)
    return fan_out, fan_in


def _dense_shape(shape):
    if len(shape) != 2:
        raise ValueError(f"expects an [in, out] kernel, got {list(shape)}")
    return shape[1], shape[0]


def _conv_kernel(shape):
    if len(shape) != 4:
        raise ValueError(f"expects a [kh, kw, in, out] kernel, got {list(shape)}")
    return shape


def _linear_chw_shape(shape):
    kh, kw, fan_in, fan_out = _conv_kernel(shape)
    return fan_out, fan_in * kh * kw


def _dense_hwc_shape(shape):
    kh, kw, fan_in, fan_out = _conv_kernel(shape)
    return kh * kw * fan_in, fan_out


def _depthwise_shape(shape):
    if len(shape) != 4:
        raise ValueError(f"expects a [kh, kw, in, multiplier] depthwise kernel, got {list(shape)}")
    kh, kw, channels, multiplier = shape
    return channels * multiplier, 1, kh, kw


def _depthwise(a):
    # TF's depthwise output channel c * multiplier + m is input channel c through filter m: the C-order
    # merge of the last two axes; torch's and ONNX's grouped convolution (groups = in) take output
    # channel o from input channel o // multiplier, the same order
    kh, kw, channels, multiplier = a.shape
    return a.reshape(kh, kw, channels * multiplier).transpose(DEPTHWISE_HWO_TO_O1HW)[:, None]


def _linear_chw(a):
    # a VALID kh x kw convolution on a kh x kw map is a fully connected layer on the flattened map;
    # a channels-first flatten orders the map's values C, H, W, which OIHW flattened matches
    kh, kw, fan_in, fan_out = a.shape
    return a.transpose(HWIO_TO_OIHW).reshape(fan_out, fan_in * kh * kw)


def _dense_hwc(a):
    # a channels-last flatten orders the map's values H, W, C, which HWIO flattened over its first three axes matches
    kh, kw, fan_in, fan_out = a.shape
    return a.reshape(kh * kw * fan_in, fan_out)


TRANSFORMS = {
    t.name: t
    for t in (
        Transform("identity", "any -> the same", _identity_shape, lambda a: a),
        Transform("hwio_to_oihw", "[kh, kw, in, out] -> [out, in, kh, kw]", _oihw_shape,
                  lambda a: a.transpose(HWIO_TO_OIHW)),
        # a 1x1 convolution on a 1x1 map is a fully connected layer
        Transform("conv1x1_to_linear", "[1, 1, in, out] -> [out, in]", _linear_shape, lambda a: a[0, 0].T),
        Transform("conv1x1_to_dense", "[1, 1, in, out] -> [in, out]", _conv1x1, lambda a: a[0, 0]),
        # TF-Slim's fully_connected kernel: torch's Linear and ONNX's Gemm (transB) take [out, in]
        Transform("dense_to_linear", "[in, out] -> [out, in]", _dense_shape, lambda a: a.T),
        # a depthwise kernel (slim's separable_conv2d and depthwise layers) as a grouped convolution, groups = in
        Transform("depthwise_to_grouped_oihw", "[kh, kw, in, multiplier] -> [in * multiplier, 1, kh, kw] (groups = in)",
                  _depthwise_shape, _depthwise),
        # a kh x kw convolution on a kh x kw map (VGG's fc6) after a channels-first flatten (torch, ONNX)
        Transform("conv_to_linear_chw", "[kh, kw, in, out] -> [out, in * kh * kw] (C, H, W order)",
                  _linear_chw_shape, _linear_chw),
        # the same after a channels-last flatten (Keras)
        Transform("conv_to_dense_hwc", "[kh, kw, in, out] -> [kh * kw * in, out] (H, W, C order)",
                  _dense_hwc_shape, _dense_hwc),
    )
}


def get(name):
    """The transform called ``name``; MappingError naming the known ones otherwise."""
    try:
        return TRANSFORMS[name]
    except KeyError:
        raise MappingError(f"unknown transform {name!r}; known: {', '.join(sorted(TRANSFORMS))}") from None


def drop_class(array, axis, index):
    """``array`` without entry ``index`` along ``axis`` (TF-Slim's background class)."""
    return np.delete(array, index, axis=axis)
