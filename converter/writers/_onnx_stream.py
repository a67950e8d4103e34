"""Write an ONNX ``ModelProto`` whose initializers' bytes are streamed into the file one at a time.

The model is built and checked with every initializer declared but empty (name, dims, type); its
bytes are then written in protobuf's field order, each initializer's ``raw_data`` taken from the
checkpoint as it is read, so memory holds one tensor at a time rather than the model and its copies.
Protobuf's length prefixes need each message's size before its bytes: a tensor's is known from its
shape and type, so every prefix is written ahead of the data. The bytes are those that
``ModelProto.SerializeToString`` gives for the same model.

Beyond ``MAX_INLINE_BYTES`` (protobuf's 2 GiB limit on one message) or on request, the weights go
to one external data file beside the model instead (ONNX's external-data layout: each initializer
names the file, its offset and length; offsets aligned to ``EXTERNAL_ALIGNMENT``).
"""

import numpy as np

from converter._protobuf import length_prefix
from converter.errors import ConvertError

# field numbers (onnx.proto)
MODEL_GRAPH = 7
GRAPH_INITIALIZER = 5
TENSOR_RAW_DATA = 9
# one protobuf message may not pass 2 GiB; the graph's nodes and names take the rest of the margin
PROTOBUF_LIMIT = 2**31
MAX_INLINE_BYTES = PROTOBUF_LIMIT - (64 << 20)
# external data offsets aligned as onnx's own external-data writer does for memory mapping
EXTERNAL_ALIGNMENT = 4096


def declare(onnx, name, shape, dtype):
    """An initializer with its name, dims and type but no data yet."""
    return onnx.TensorProto(name=name, dims=list(shape), data_type=onnx.helper.np_dtype_to_tensor_dtype(dtype))


def checkable(onnx, model):
    """A copy of ``model`` that ``onnx.checker`` checks in full without the data: each declared
    initializer becomes a graph input of its type and shape, which shape inference reads the same way."""
    copy = onnx.ModelProto()
    copy.CopyFrom(model)
    inputs = [onnx.helper.make_tensor_value_info(tensor.name, tensor.data_type, list(tensor.dims))
              for tensor in copy.graph.initializer]
    copy.graph.ClearField("initializer")
    copy.graph.input.extend(inputs)
    return copy


def _split(message, field):
    """``message``'s bytes before field number ``field`` and after it (protobuf writes fields in number order)."""
    before, after = type(message)(), type(message)()
    before.CopyFrom(message)
    after.CopyFrom(message)
    for descriptor, _ in message.ListFields():
        if descriptor.number <= field:
            after.ClearField(descriptor.name)
        if descriptor.number >= field:
            before.ClearField(descriptor.name)
    return before.SerializeToString(), after.SerializeToString()


def _checked(key, array, tensor, dtype):
    # the bytes read must be what the graph was checked with
    if tuple(array.shape) != tuple(tensor.dims) or array.dtype != dtype:
        raise ConvertError(f"ONNX: tensor {key} read as {array.dtype} {list(array.shape)}, "
                           f"declared {dtype} {list(tensor.dims)}")
    return np.ascontiguousarray(array)


def _bytes(array):
    # the array's own buffer, little-endian as ONNX's raw_data is
    return memoryview(array.astype(array.dtype.newbyteorder("<"), copy=False).reshape(-1)).cast("B")


def inline_size(onnx, model, dtypes):
    """The bytes of ``model`` with its declared initializers' data inline."""
    graph_size = len(_graph_without_initializers(onnx, model).SerializeToString())
    graph_size += sum(_tensor_record_size(onnx, tensor, dtypes[tensor.name]) for tensor in model.graph.initializer)
    return graph_size


def _graph_without_initializers(onnx, model):
    graph = onnx.GraphProto()
    graph.CopyFrom(model.graph)
    graph.ClearField("initializer")
    return graph


def _tensor_record_size(onnx, tensor, dtype):
    nbytes = int(np.prod(tensor.dims, dtype=np.int64)) * dtype.itemsize
    payload = len(tensor.SerializeToString()) + len(length_prefix(TENSOR_RAW_DATA, nbytes)) + nbytes
    return len(length_prefix(GRAPH_INITIALIZER, payload)) + payload


def write_inline(onnx, model, tensors, dtypes, handle):
    """Write ``model`` to ``handle``, the data of each declared initializer from ``tensors`` (``(key, array)`` pairs, in order)."""
    model_before, model_after = _split(model, MODEL_GRAPH)
    graph_before, graph_after = _split(_graph_without_initializers(onnx, model), GRAPH_INITIALIZER)
    declared = list(model.graph.initializer)
    records = [tensor.SerializeToString() for tensor in declared]
    sizes = []
    for tensor, record in zip(declared, records):
        nbytes = int(np.prod(tensor.dims, dtype=np.int64)) * dtypes[tensor.name].itemsize
        sizes.append((len(record) + len(length_prefix(TENSOR_RAW_DATA, nbytes)) + nbytes, nbytes))
    graph_size = len(graph_before) + len(graph_after) + sum(len(length_prefix(GRAPH_INITIALIZER, payload)) + payload
                                                            for payload, _ in sizes)
    handle.write(model_before)
    handle.write(length_prefix(MODEL_GRAPH, graph_size))
    handle.write(graph_before)
    pending = iter(zip(declared, records, sizes))
    for key, array in tensors:
        tensor, record, (payload, nbytes) = next(pending)
        if key != tensor.name:
            raise ConvertError(f"ONNX: tensor {key} read where {tensor.name} was declared")
        array = _checked(key, array, tensor, dtypes[key])
        handle.write(length_prefix(GRAPH_INITIALIZER, payload))
        handle.write(record)
        handle.write(length_prefix(TENSOR_RAW_DATA, nbytes))
        handle.write(_bytes(array))
    if next(pending, None) is not None:
        raise ConvertError("ONNX: fewer tensors read than the graph declares")
    handle.write(graph_after)
    handle.write(model_after)


def write_external(onnx, model, tensors, dtypes, handle, data_handle, location):
    """Write each tensor's data to ``data_handle`` (the file ``location`` names beside the model), then the model."""
    declared = {tensor.name: tensor for tensor in model.graph.initializer}
    offset = 0
    for key, array in tensors:
        tensor = declared.get(key)
        if tensor is None:
            raise ConvertError(f"ONNX: tensor {key} read, but the graph declares none of that name")
        array = _checked(key, array, tensor, dtypes[key])
        padding = -offset % EXTERNAL_ALIGNMENT
        data_handle.write(b"\0" * padding)
        offset += padding
        data_handle.write(_bytes(array))
        tensor.data_location = onnx.TensorProto.EXTERNAL
        del tensor.external_data[:]
        for name, value in (("location", location), ("offset", str(offset)), ("length", str(array.nbytes))):
            entry = tensor.external_data.add()
            entry.key, entry.value = name, value
        offset += array.nbytes
    handle.write(model.SerializeToString())
